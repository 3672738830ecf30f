"""PNG plots: each function writes a readable PNG, tolerates missing metrics, rejects bad shapes."""

import math

import matplotlib.image as mpimg
import matplotlib.pyplot as plt
import numpy as np
import pytest

from ep_jax.app import plots
from ep_jax.app.plots import (
    layer_sizes,
    plot_credit,
    plot_curves,
    plot_network,
    plot_relaxation,
    plot_weight_tiles,
    relaxation_trace,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path, min_px=100, max_px=4000):
    """``path`` holds a PNG that matplotlib reads back with a sensible size and some contrast."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    image = mpimg.imread(path)
    assert image.ndim == 3 and image.shape[2] in (3, 4)
    assert min_px <= image.shape[0] <= max_px and min_px <= image.shape[1] <= max_px
    assert image[..., :3].std() > 0.01  # not a blank canvas
    return image


def make_params(sizes, rng):
    return {
        f"layer_{l}": {
            "kernel": rng.normal(size=(sizes[l], sizes[l + 1])),
            "bias": 0.3 * rng.normal(size=sizes[l + 1]),
        }
        for l in range(len(sizes) - 1)
    }


@pytest.fixture(autouse=True)
def no_open_figures():
    before = set(plt.get_fignums())
    yield
    assert set(plt.get_fignums()) == before, "a plot function left a pyplot figure open"


@pytest.fixture
def figures(monkeypatch):
    """What each plot drew, read from its Figure just before it is saved and cleared: the title,
    each axes' title, labels and x ticks within view, colour-bar labels and image data."""
    seen = []
    save = plots._save

    def capture(fig, path, dpi=100):
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        FigureCanvasAgg(fig).draw()
        axes = []
        for ax in fig.axes:
            lo, hi = sorted(ax.get_xlim())
            axes.append({
                "title": ax.get_title(), "xlabel": ax.get_xlabel(), "ylabel": ax.get_ylabel(),
                "xticks": [t for t in ax.get_xticks() if lo <= t <= hi],
                "colorbar": ax.get_label() == "<colorbar>",
                "images": [np.ma.filled(im.get_array().astype(float), np.nan) for im in ax.images],
                "clim": [im.get_clim() for im in ax.images],
                "lines": [l.get_ydata() for l in ax.lines],
            })
        seen.append({"suptitle": fig._suptitle.get_text() if fig._suptitle else "", "axes": axes})
        return save(fig, path, dpi)

    monkeypatch.setattr(plots, "_save", capture)
    return seen


def assert_readable(fig, panels_need_ylabel=True):
    """A title, and every data panel with a title and labelled axes."""
    assert fig["suptitle"].strip()
    for ax in fig["axes"]:
        if ax["colorbar"]:
            assert ax["ylabel"].strip() or ax["xlabel"].strip(), "colour bar without a label"
            continue
        assert ax["title"].strip() or ax["xlabel"].strip()
        assert ax["xlabel"].strip(), ax
        if panels_need_ylabel:
            assert ax["ylabel"].strip(), ax


# ---------------------------------------------------------------------------------------------
# layer_sizes


def test_layer_sizes_chain(rng):
    assert layer_sizes(make_params((2, 8, 2), rng)) == (2, 8, 2)
    assert layer_sizes(make_params((784, 500, 500, 10), rng)) == (784, 500, 500, 10)
    # Order comes from the index, not the string order of the keys ("layer_10" < "layer_2").
    sizes = tuple(range(2, 14))
    params = make_params(sizes, rng)
    assert layer_sizes(dict(reversed(list(params.items())))) == sizes


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda p: p["layer_1"].update(kernel=np.zeros((7, 2))), r"layer_1.*fan_in 7.*fan_out 8"),
        (lambda p: p["layer_1"].update(bias=np.zeros(3)), r"layer_1.*bias"),
        (lambda p: p["layer_0"].update(kernel=np.zeros(16)), r"layer_0.*2-D"),
        (lambda p: p.pop("layer_0"), r"layer_0 \.\. layer_0"),
        (lambda p: p.update(dense=p.pop("layer_1")), r"'dense'"),
        (lambda p: p.clear(), r"at least one layer"),
    ],
)
def test_layer_sizes_rejects_broken_chain(rng, mutate, match):
    params = make_params((2, 8, 2), rng)
    mutate(params)
    with pytest.raises(ValueError, match=match):
        layer_sizes(params)


# ---------------------------------------------------------------------------------------------
# plot_curves


def ep_metrics(n_epochs=12):
    return [
        {
            "epoch": e,
            "train_error": 0.5 * 0.6**e,
            "test_error": 0.55 * 0.65**e,
            "train_energy": -2.0 - 0.1 * e,
            "test_energy": -1.9 - 0.1 * e,
            "train_cost": 0.3 / e,
            "test_cost": 0.32 / e,
        }
        for e in range(1, n_epochs + 1)
    ]


def test_plot_curves_full_run(tmp_path):
    out = plot_curves(ep_metrics(), tmp_path / "curves.png")
    assert out == tmp_path / "curves.png"
    image = assert_png(out)
    assert image.shape[1] > 2 * image.shape[0]  # three panels side by side


def test_plot_curves_missing_keys_nans_and_nones(tmp_path):
    # A backprop run: no energy at all; a NaN and a None in error, cost only on train.
    rows = [
        {"epoch": 1, "train_error": 0.4, "test_error": float("nan"), "train_cost": 0.2},
        {"epoch": 2, "train_error": None, "test_error": 0.3, "train_cost": np.float32(0.1)},
        {"epoch": 3, "train_error": 0.2, "test_error": 0.25, "train_cost": float("inf")},
    ]
    assert_png(plot_curves(rows, tmp_path / "sub" / "dir" / "curves.png", title="backprop"))


def test_plot_curves_degenerate_inputs(tmp_path):
    assert_png(plot_curves([], tmp_path / "empty.png"))  # every panel "n/a"
    assert_png(plot_curves([{"epoch": 1, "train_error": 0.1}], tmp_path / "one.png"))
    # Zero error (never log-scaled) and values all within a decade.
    rows = [{"epoch": e, "train_error": 0.0, "test_error": 0.05 + 0.01 * e} for e in range(3)]
    assert_png(plot_curves(rows, tmp_path / "zero.png"))


# ---------------------------------------------------------------------------------------------
# plot_weight_tiles


@pytest.mark.parametrize(
    "image_shape, n_hidden, max_tiles",
    [((28, 28), 500, 100), ((8, 8), 10, 100), ((32, 32, 3), 30, 16), ((28, 28), 1, 100)],
)
def test_plot_weight_tiles(tmp_path, rng, image_shape, n_hidden, max_tiles):
    kernel = rng.normal(size=(math.prod(image_shape), n_hidden))
    out = plot_weight_tiles(kernel, image_shape, tmp_path / "tiles.png", max_tiles=max_tiles, title="w")
    assert_png(out)


def test_plot_weight_tiles_rgb_is_colour(tmp_path, rng):
    image = mpimg.imread(plot_weight_tiles(rng.normal(size=(3072, 4)), (32, 32, 3), tmp_path / "c.png"))
    rgb = image[..., :3]
    assert np.abs(rgb[..., 0] - rgb[..., 1]).max() > 0.2  # not grey


def test_plot_weight_tiles_tolerates_nan_and_constant_tiles(tmp_path, rng):
    kernel = rng.normal(size=(64, 6))
    kernel[:, 0] = 0.0
    kernel[:, 1] = np.nan
    kernel[5, 2] = np.nan
    assert_png(plot_weight_tiles(kernel, (8, 8), tmp_path / "nan.png"))
    rgb_kernel = np.ones((3072, 2))
    assert_png(plot_weight_tiles(rgb_kernel, (32, 32, 3), tmp_path / "flat.png"), min_px=50)


def test_plot_weight_tiles_shape_mismatch(tmp_path, rng):
    with pytest.raises(ValueError, match=r"image_shape \(28, 28\).*784.*64"):
        plot_weight_tiles(rng.normal(size=(64, 10)), (28, 28), tmp_path / "bad.png")
    with pytest.raises(ValueError, match="image_shape"):
        plot_weight_tiles(rng.normal(size=(64, 10)), (4, 4, 4), tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()


# ---------------------------------------------------------------------------------------------
# plot_network


def test_plot_network_xor_with_and_without_activations(tmp_path, rng):
    params = make_params((2, 8, 2), rng)
    plain = assert_png(plot_network(params, tmp_path / "plain.png"))
    states = [np.array([0.0, 1.0]), rng.random(8), rng.random(2)]
    coloured = assert_png(plot_network(params, tmp_path / "act.png", activations=states, title="XOR"))
    assert coloured.shape[1] > plain.shape[1]  # room for the activation colourbar


def test_plot_network_small_and_deep(tmp_path, rng):
    assert_png(plot_network(make_params((2, 4, 1), rng), tmp_path / "241.png", edge_labels=True))
    deep = make_params((4, 20, 20, 3), rng)
    acts = [rng.random(n) for n in (4, 20, 20, 3)]
    assert_png(plot_network(deep, tmp_path / "deep.png", activations=acts))


def test_plot_network_accepts_jax_arrays_and_2d_activation_rows(tmp_path, rng):
    jnp = pytest.importorskip("jax.numpy")
    params = {
        k: {n: jnp.asarray(v) for n, v in layer.items()} for k, layer in make_params((2, 3, 1), rng).items()
    }
    acts = [jnp.ones((1, 2)), jnp.zeros(3), jnp.full((1,), 0.5)]
    assert_png(plot_network(params, tmp_path / "jax.png", activations=acts))


def test_plot_network_too_large(tmp_path, rng):
    with pytest.raises(ValueError, match=r"network too large to draw: 794 units > max_units=64"):
        plot_network(make_params((784, 10), rng), tmp_path / "big.png")
    with pytest.raises(ValueError, match=r"12 units > max_units=11"):
        plot_network(make_params((2, 8, 2), rng), tmp_path / "big.png", max_units=11)
    assert not (tmp_path / "big.png").exists()


def test_plot_network_errors(tmp_path, rng):
    params = make_params((2, 8, 2), rng)
    params["layer_1"]["kernel"] = np.zeros((4, 2))
    with pytest.raises(ValueError, match=r"layer_1.*fan_in 4"):
        plot_network(params, tmp_path / "broken.png")
    params = make_params((2, 8, 2), rng)
    with pytest.raises(ValueError, match=r"expected 3 arrays"):
        plot_network(params, tmp_path / "x.png", activations=[np.zeros(2), np.zeros(8)])
    with pytest.raises(ValueError, match=r"activations\[1\].*8 values"):
        plot_network(params, tmp_path / "x.png", activations=[np.zeros(2), np.zeros(7), np.zeros(2)])


# ---------------------------------------------------------------------------------------------
# Readability: titles, labels, units, integer epoch axes


@pytest.mark.parametrize("n_epochs", [1, 3, 12])
def test_curves_have_titles_labels_and_integer_epoch_ticks(tmp_path, figures, n_epochs):
    plot_curves(ep_metrics(n_epochs), tmp_path / "c.png")
    (fig,) = figures
    assert_readable(fig)
    assert any("%" in ax["ylabel"] for ax in fig["axes"])  # the error's unit
    for ax in fig["axes"]:
        assert ax["xticks"] and all(float(t).is_integer() for t in ax["xticks"]), ax["xticks"]


@pytest.mark.parametrize("n_epochs", [1, 4])
def test_credit_epoch_axis_is_integer_even_for_one_epoch(tmp_path, figures, n_epochs):
    rows = [{"epoch": e, "credit": {"gamma_per_layer": [0.9, 0.8], "gamma_batch_per_layer": [0.95, 0.9],
                                    "rho_per_layer": [0.7, 0.6]}} for e in range(1, n_epochs + 1)]
    plot_credit({"run": rows}, tmp_path / "credit.png")
    (fig,) = figures
    assert_readable(fig)
    for ax in fig["axes"]:
        assert ax["xticks"] and all(float(t).is_integer() for t in ax["xticks"]), ax["xticks"]


# ---------------------------------------------------------------------------------------------
# Weights: the change from initialisation on one shared, symmetric, labelled scale


def test_weight_tiles_show_the_change_from_init_on_one_shared_scale(tmp_path, rng, figures):
    init = rng.normal(size=(64, 4))
    delta = np.zeros((64, 4))
    delta[:, 0] = 0.5 * rng.normal(size=64)  # a unit that learned a lot
    delta[:, 1] = 0.01 * rng.normal(size=64)  # one that barely moved: must look faint, not rescaled
    assert_png(plot_weight_tiles(init + delta, (8, 8), tmp_path / "w.png", initial=init))
    (fig,) = figures
    image_ax = next(ax for ax in fig["axes"] if ax["images"] and not ax["colorbar"])
    mosaic, (lo, hi) = image_ax["images"][0], image_ax["clim"][0]
    assert -lo == hi == pytest.approx(np.abs(delta).max())  # symmetric, shared, the largest change
    tile = lambda j: mosaic[1:9, 1 + 9 * j: 9 + 9 * j]  # noqa: E731
    np.testing.assert_allclose(tile(0), delta[:, 0].reshape(8, 8), atol=1e-12)
    np.testing.assert_allclose(tile(1), delta[:, 1].reshape(8, 8), atol=1e-12)  # not stretched
    np.testing.assert_allclose(tile(2), 0.0, atol=1e-12)
    bars = [ax for ax in fig["axes"] if ax["colorbar"]]
    assert len(bars) == 1 and "change from initialisation" in bars[0]["ylabel"]
    assert "change from initialisation" in fig["suptitle"]


def test_weight_tiles_without_init_label_the_weights_and_reject_a_wrong_init(tmp_path, rng, figures):
    kernel = rng.normal(size=(64, 3))
    plot_weight_tiles(kernel, (8, 8), tmp_path / "w.png")
    bar = next(ax for ax in figures[0]["axes"] if ax["colorbar"])
    assert "weight" in bar["ylabel"] and "change" not in bar["ylabel"]
    with pytest.raises(ValueError, match=r"initial: expected the kernel's shape \(64, 3\), received \(64, 2\)"):
        plot_weight_tiles(kernel, (8, 8), tmp_path / "bad.png", initial=kernel[:, :2])


# ---------------------------------------------------------------------------------------------
# Relaxation


def small_net(beta_tol=1e-4, steps=80):
    import jax

    import ep_jax as ep

    energy = ep.hopfield((12, 10, 3))
    params = energy.init_params(jax.random.PRNGKey(0))
    x = jax.random.uniform(jax.random.PRNGKey(1), (6, 12), dtype=jax.numpy.float32)
    return ep, energy, params, x, ep.GradientDescent(0.5, steps, tol=beta_tol, project="clip01")


def test_relaxation_trace_is_the_relaxation_relax_runs():
    ep, energy, params, x, solver = small_net()
    trace = relaxation_trace(energy, params, x, solver)
    assert trace.shape == (solver.max_steps, 6)
    _, stats = ep.relax(energy, params, x, energy.zeros_state(x), solver=solver)
    # relax stops at the first step whose largest per-example update is within the tolerance.
    first = int(np.argmax(trace.max(axis=1) <= solver.tol)) + 1
    assert bool(stats.converged) and int(stats.steps) == first
    np.testing.assert_allclose(trace[first - 1].max(), float(stats.residual), rtol=1e-5)
    # Without a tolerance, the last residual of a fixed-step run.
    fixed = solver._replace(tol=None, max_steps=7)
    _, stats = ep.relax(energy, params, x, energy.zeros_state(x), solver=fixed)
    np.testing.assert_allclose(relaxation_trace(energy, params, x, fixed)[-1].max(),
                               float(stats.residual), rtol=1e-5)
    with pytest.raises(ValueError, match="steps: expected >= 1, received 0"):
        relaxation_trace(energy, params, x, solver, steps=0)


def test_plot_relaxation_draws_residuals_and_converged_fraction(tmp_path, figures):
    residuals = np.array([[1.0, 1.0], [1e-2, 1e-5], [1e-5, 0.0]])  # a zero: an exact fixed point
    assert_png(plot_relaxation(residuals, tmp_path / "r.png", tol=1e-4, title="relax"))
    (fig,) = figures
    assert_readable(fig)
    left, right = fig["axes"]
    np.testing.assert_allclose(right["lines"][0], [0.0, 50.0, 100.0])  # % converged per step
    for ax in (left, right):
        assert all(float(t).is_integer() for t in ax["xticks"])
    assert_png(plot_relaxation(residuals, tmp_path / "no_tol.png"))  # quantiles instead
    assert_readable(figures[1])
    with pytest.raises(ValueError, match=r"residuals: expected \(steps, batch\).*\(3,\)"):
        plot_relaxation(np.ones(3), tmp_path / "bad.png")


def test_a_training_run_writes_weight_change_and_relaxation_plots(tmp_path, monkeypatch):
    from ep_jax.app.config import TrainConfig
    from ep_jax.app.data import Dataset
    from ep_jax.app.train import train

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 40).astype(np.int32)
    x = np.clip(rng.uniform(0.1, 0.9, (3, 12))[y] + 0.05 * rng.normal(size=(40, 12)), 0, 1)
    data = Dataset(x[:30].astype(np.float32), y[:30], x[30:].astype(np.float32), y[30:], "blobs",
                   (4, 3), 3)
    seen = {}
    original = plots.plot_weight_tiles

    def spy(kernel, image_shape, path, **kw):
        seen.update(kernel=np.asarray(kernel), initial=kw.get("initial"))
        return original(kernel, image_shape, path, **kw)

    monkeypatch.setattr(plots, "plot_weight_tiles", spy)
    cfg = TrainConfig().with_overrides(preset="tiny", dataset="blobs", hidden=(5,), epochs=1,
                                       batch_size=10, free_steps=5, nudged_steps=2,
                                       eval_max_steps=20, checkpoint_every=0)
    summary = train(cfg, data=data, out_dir=tmp_path / "run", quiet=True)
    names = {p.rsplit("/", 1)[-1] for p in summary["plots"]}
    assert {"curves.png", "weights.png", "relaxation.png"} <= names
    assert seen["initial"] is not None and seen["initial"].shape == seen["kernel"].shape
    assert not np.array_equal(seen["initial"], seen["kernel"])  # training moved the weights
    assert_png(tmp_path / "run" / "relaxation.png")
