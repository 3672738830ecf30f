"""PNG plots: each function writes a readable PNG, tolerates missing metrics, rejects bad shapes."""

import math

import matplotlib.image as mpimg
import matplotlib.pyplot as plt
import numpy as np
import pytest

from ep_jax.app.plots import layer_sizes, plot_curves, plot_network, plot_weight_tiles

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
