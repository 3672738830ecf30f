"""PNG plots a training run leaves in its output directory.

Pictures after the diagnostics of the seed notebook (000), each with a title, labelled axes and
units, epochs on integer ticks:

* :func:`plot_curves`: energy, cost and error (%) per epoch, train and test, from the rows of a
  ``metrics.jsonl``;
* :func:`plot_weight_tiles`: first-layer receptive fields as image tiles (MNIST, digits, CIFAR),
  as the change from the initial weights when those are given, on one shared, symmetric,
  labelled colour scale;
* :func:`plot_relaxation`: a relaxation step by step (:func:`relaxation_trace`): each example's
  residual (update norm) against the step and the fraction of examples converged;
* :func:`plot_credit`: residual EP's credit diagnostics Gamma_l and rho_l per epoch
  (``ep_jax.credit``), for one run or several (e.g. a run and its random-targets control);
* :func:`plot_network`: a small net (XOR 2-8-2, 2-4-1) as a graph: edges coloured by the sign
  of the weight and as wide as its magnitude, nodes filled by activation, biases as labels.

Inputs are numpy-like (jax arrays go through ``np.asarray``). Figures are built with the
object-oriented :class:`matplotlib.figure.Figure` API on an Agg canvas, never through
``pyplot``: no global figure registry to leak from in long runs, no GUI backend needed, and
nothing changes the caller's backend. Every function returns the :class:`pathlib.Path` written.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.collections import LineCollection
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

__all__ = [
    "layer_sizes", "plot_credit", "plot_curves", "plot_network", "plot_relaxation",
    "plot_weight_tiles", "relaxation_trace",
]

PathLike = str | os.PathLike

_POSITIVE = "tab:blue"
_NEGATIVE = "tab:red"
_LAYER_KEY = re.compile(r"layer_(\d+)")
# Half-transparent white behind labels that sit on top of edges.
_LABEL_BOX = {"boxstyle": "round,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.7}


def _save(fig: Figure, path: PathLike, dpi: int = 100) -> Path:
    """Render ``fig`` to ``path`` as PNG (creating parent folders) and free its artists."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)  # attach an Agg canvas explicitly: independent of the active backend
    try:
        # format="png" pins the file type even when the name has another (or no) suffix.
        fig.savefig(path, format="png", dpi=dpi, facecolor="white")
    finally:
        fig.clear()
    return path


# --------------------------------------------------------------------------------------------
# Parameters


def layer_sizes(params: Mapping[str, Mapping[str, Any]]) -> tuple[int, ...]:
    """Layer sizes ``(n_0, n_1, ..., n_L)`` of a parameter dict, checking that the chain is sound.

    Args:
      params: ``{"layer_l": {"kernel": (n_l, n_{l+1}), "bias": (n_{l+1},)}}`` for
        ``l = 0 .. L-1``; ``bias`` may be absent.

    Returns:
      The sizes of the input, hidden and output layers.

    Raises:
      ValueError: no layers, names that are not exactly ``layer_0 .. layer_{L-1}``, a kernel that
        is not 2-D, a bias of the wrong shape, or a kernel whose fan-in differs from the previous
        kernel's fan-out (the message names the layer).
    """
    if not params:
        raise ValueError("params: expected at least one layer ('layer_0'), received none")
    indices = []
    for name in params:
        match = _LAYER_KEY.fullmatch(str(name))
        if match is None:
            raise ValueError(f"params: unexpected key {name!r}, expected 'layer_<index>'")
        indices.append(int(match.group(1)))
    if sorted(indices) != list(range(len(indices))):
        raise ValueError(
            f"params: layer names must be layer_0 .. layer_{len(indices) - 1} without gaps, "
            f"received {sorted(params)}"
        )
    sizes: list[int] = []
    for l in range(len(indices)):
        name = f"layer_{l}"
        layer = params[name]
        if "kernel" not in layer:
            raise ValueError(f"params[{name!r}]: missing 'kernel'")
        shape = np.shape(layer["kernel"])
        if len(shape) != 2:
            raise ValueError(
                f"params[{name!r}]['kernel']: expected 2-D (fan_in, fan_out), received shape {shape}"
            )
        n_in, n_out = int(shape[0]), int(shape[1])
        if sizes and n_in != sizes[-1]:
            raise ValueError(
                f"params[{name!r}]['kernel']: fan_in {n_in} does not match the fan_out {sizes[-1]} "
                f"of layer_{l - 1} (kernel shape {shape})"
            )
        if "bias" in layer and np.shape(layer["bias"]) != (n_out,):
            raise ValueError(
                f"params[{name!r}]['bias']: expected shape ({n_out},), received {np.shape(layer['bias'])}"
            )
        if not sizes:
            sizes.append(n_in)
        sizes.append(n_out)
    return tuple(sizes)


# --------------------------------------------------------------------------------------------
# Training curves


def _series(metrics: Sequence[Mapping[str, Any]], key: str, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """``(epochs, values)`` of ``key`` over the rows holding a finite value for it."""
    xs, ys = [], []
    for i, row in enumerate(metrics):
        value = row.get(key)
        if value is None:
            continue
        value = float(np.asarray(value))
        if not math.isfinite(value):
            continue
        epoch = row.get("epoch")
        xs.append(float(np.asarray(epoch)) if epoch is not None else float(i))
        ys.append(scale * value)
    return np.asarray(xs), np.asarray(ys)


def plot_curves(
    metrics: Sequence[Mapping[str, Any]], path: PathLike, title: str | None = None
) -> Path:
    """Energy, cost and error (%) per epoch, train and test, side by side.

    Args:
      metrics: one mapping per epoch (the rows of a ``metrics.jsonl``), each with ``"epoch"`` and
        any of ``train_energy``, ``test_energy``, ``train_cost``, ``test_cost``, ``train_error``,
        ``test_error`` (error as a fraction; drawn in %). ``None`` and non-finite values are
        skipped; a quantity absent from every row (e.g. energy for a backprop run) leaves its
        panel with an "n/a" note.
      path: where to write the PNG.
      title: figure title; by default "training curves".

    Returns:
      ``path`` as a :class:`pathlib.Path`.
    """
    fig = Figure(figsize=(15, 4), layout="constrained")
    axes = fig.subplots(1, 3)
    panels = (("Energy", "energy", 1.0, "E at the free equilibrium (batch mean)"),
              ("Cost", "cost", 1.0, "C of the free output (batch mean)"),
              ("Error (%)", "error", 100.0, "classification error (%)"))
    for ax, (label, stem, scale, ylabel) in zip(axes, panels):
        ax.set_title(label)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        plotted = []
        epochs = []
        unit = "%" if stem == "error" else ""
        for split, style, color in (("train", "-", "tab:blue"), ("test", "--", "tab:orange")):
            x, y = _series(metrics, f"{split}_{stem}", scale)
            if y.size == 0:
                continue
            # Markers keep a one- or few-epoch run visible; they'd only clutter long runs.
            ax.plot(x, y, style, color=color, marker="o" if y.size <= 30 else None, markersize=3,
                    label=f"{split} (last {y[-1]:.4g}{unit})")
            plotted.append(y)
            epochs.append(x)
        if not plotted:
            ax.text(0.5, 0.5, "n/a", transform=ax.transAxes, ha="center", va="center",
                    fontsize=14, color="gray")
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        x_all = np.concatenate(epochs)
        if x_all.min() == x_all.max():  # one epoch: give the integer locator a range to tick
            ax.set_xlim(x_all.min() - 1, x_all.max() + 1)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        if stem == "error":
            values = np.concatenate(plotted)
            # Log only when it helps: every value > 0 and more than a decade between extremes.
            if values.min() > 0 and np.log10(values.max() / values.min()) > 1:
                ax.set_yscale("log")
    fig.suptitle(title or "training curves")
    return _save(fig, path)


# --------------------------------------------------------------------------------------------
# Weight tiles


def plot_credit(runs: Mapping[str, Sequence[Mapping[str, Any]]], path: PathLike,
                title: str | None = None) -> Path:
    """Gamma_l (per-example mean and batch-level) and rho_l against the epoch, one line per layer
    and one line style per run.

    Args:
      runs: ``{label: metrics rows}``; rows with a ``"credit"`` dict (``CreditReport.to_dict``)
        are drawn, others skipped.
      path: where to write the PNG.
      title: figure title.
    """
    fig = Figure(figsize=(18, 4.5), layout="constrained")
    axes = fig.subplots(1, 3)
    styles = ["-", "--", ":", "-."]
    cmap = colormaps["viridis"]
    for ax, key, label in (
        (axes[0], "gamma_per_layer", "Γ_l: mean_b cos(EP credit, ∂L/∂h_l)"),
        (axes[1], "gamma_batch_per_layer", "Γ_l over the batch (gradient-norm weighted)"),
        (axes[2], "rho_per_layer", "ρ_l: perturbation correlation"),
    ):
        for i, (name, rows) in enumerate(runs.items()):
            rows = [r for r in rows if "credit" in r]
            if not rows:
                continue
            epochs = np.array([r["epoch"] for r in rows])
            if key not in rows[0]["credit"]:
                continue
            values = np.array([r["credit"][key] for r in rows])  # (epochs, layers)
            n = values.shape[1]
            for l in range(n):
                ax.plot(epochs, values[:, l], styles[i % len(styles)],
                        color=cmap(l / max(n - 1, 1)), marker="o" if len(epochs) <= 30 else None,
                        markersize=3, label=f"{name}: h_{l}")
        ax.set_title(label)
        ax.set_xlabel("epoch")
        ax.set_ylabel("correlation (1 = the backprop credit)" if key == "rho_per_layer"
                      else "cosine (1 = the backprop credit)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7, ncol=2 if len(ax.lines) > 6 else 1)
            # One epoch: give the integer locator a range, or it ticks at 0.945, 0.95, ...
            lo, hi = ax.get_xlim()
            if hi - lo < 2:
                mid = round((lo + hi) / 2)
                ax.set_xlim(mid - 1, mid + 1)
    fig.suptitle(title or "credit diagnostics per layer")
    return _save(fig, path)


def plot_weight_tiles(
    kernel: Any,
    image_shape: Sequence[int],
    path: PathLike,
    max_tiles: int = 100,
    title: str | None = None,
    initial: Any = None,
) -> Path:
    """First-layer weights as images: hidden unit ``j``'s tile is ``kernel[:, j]`` reshaped.

    With ``initial`` (the kernel at initialisation), each tile shows the *change* ``W - W_init``:
    what training learned, which random initial weights otherwise hide. Every tile shares one
    colour scale, symmetric around 0 (red negative, blue positive, white 0) and labelled by a
    colour bar, so tiles can be compared with each other. RGB tiles (CIFAR) map each channel
    onto the same shared scale (mid-grey = 0; the range is in the caption).

    Args:
      kernel: ``(n_in, n_hidden)`` first-layer kernel, ``n_in == prod(image_shape)``.
      image_shape: ``(H, W)`` for grayscale (``(28, 28)`` MNIST, ``(8, 8)`` digits) or
        ``(H, W, 3)`` for RGB (``(32, 32, 3)`` CIFAR); ``(H, W, 1)`` counts as grayscale.
      path: where to write the PNG.
      max_tiles: draw the first ``min(max_tiles, n_hidden)`` units, in a near-square grid.
      title: figure title; by default says what is shown and how many units.
      initial: the kernel at initialisation, the shape of ``kernel``; ``None`` draws the
        weights themselves.

    Returns:
      ``path`` as a :class:`pathlib.Path`.

    Raises:
      ValueError: ``kernel`` is not 2-D, ``image_shape`` is not ``(H, W)``/``(H, W, 1|3)``, its
        product differs from ``kernel.shape[0]``, ``initial`` has another shape, or
        ``max_tiles < 1``.
    """
    kernel = np.asarray(kernel, dtype=np.float64)
    image_shape = tuple(int(d) for d in image_shape)
    if kernel.ndim != 2:
        raise ValueError(f"kernel: expected 2-D (n_in, n_hidden), received shape {kernel.shape}")
    if len(image_shape) not in (2, 3) or (len(image_shape) == 3 and image_shape[2] not in (1, 3)):
        raise ValueError(f"image_shape: expected (H, W) or (H, W, 1|3), received {image_shape}")
    expected = math.prod(image_shape)
    if expected != kernel.shape[0]:
        raise ValueError(
            f"image_shape {image_shape} needs n_in = {expected} inputs, but the kernel has "
            f"n_in = {kernel.shape[0]} rows (kernel shape {kernel.shape})"
        )
    if max_tiles < 1:
        raise ValueError(f"max_tiles: expected >= 1, received {max_tiles}")
    if initial is not None:
        initial = np.asarray(initial, dtype=np.float64)
        if initial.shape != kernel.shape:
            raise ValueError(
                f"initial: expected the kernel's shape {kernel.shape}, received {initial.shape}"
            )
        kernel = kernel - initial
    rgb = len(image_shape) == 3 and image_shape[2] == 3
    n_hidden = kernel.shape[1]
    n = min(max_tiles, n_hidden)
    cols = max(1, math.ceil(math.sqrt(n)))
    rows = max(1, math.ceil(n / cols))
    shown = kernel[:, :n]
    finite = shown[np.isfinite(shown)]  # a diverged run may hold NaNs: scale on what's left
    vmax = float(np.abs(finite).max()) if finite.size else 0.0
    vmax = vmax if vmax > 0 else 1.0
    # One mosaic image and one imshow: 100 separate axes take ~1 s to draw, the mosaic ~0.1 s.
    # Separators are NaN (drawn white).
    h, w = image_shape[:2]
    channels = 3 if rgb else 1
    mosaic = np.full((rows * (h + 1) + 1, cols * (w + 1) + 1, channels), np.nan)
    for j in range(n):
        tile = kernel[:, j].reshape(h, w, -1)[..., :channels]
        if rgb:  # the shared symmetric scale onto [0, 1]: 0.5 (grey) is no weight / no change
            tile = np.clip(np.nan_to_num(0.5 + 0.5 * tile / vmax, nan=0.5), 0.0, 1.0)
        r, c = divmod(j, cols)
        mosaic[1 + r * (h + 1): 1 + r * (h + 1) + h, 1 + c * (w + 1): 1 + c * (w + 1) + w] = tile
    what = "change from initialisation, W - W_init" if initial is not None else "weight W"
    tile_in = min(1.2, 12.0 / max(rows, cols))  # keep the figure within ~12 inches a side
    fig = Figure(figsize=(cols * tile_in + 1.4, rows * tile_in + 0.9), layout="constrained")
    ax = fig.subplots()
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlabel(f"{n} of {n_hidden} hidden units, one {h}x{w} tile each (pixels of the input image)",
                  fontsize=8)
    if rgb:
        ax.imshow(np.where(np.isnan(mosaic), 1.0, mosaic), interpolation="nearest")
        ax.set_title(f"RGB channels on one scale: grey = 0, full colour = +-{vmax:.3g} ({what})",
                     fontsize=8)
    else:
        cmap = colormaps["RdBu"].with_extremes(bad="white")
        image = ax.imshow(np.ma.masked_invalid(mosaic[..., 0]), cmap=cmap, vmin=-vmax, vmax=vmax,
                          interpolation="nearest")
        fig.colorbar(image, ax=ax, shrink=0.8, label=f"{what} (shared scale)")
    default = ("first-layer weights: change from initialisation" if initial is not None
               else "first-layer weights")
    fig.suptitle(title if title is not None else default)
    return _save(fig, path)


# --------------------------------------------------------------------------------------------
# Relaxation


def relaxation_trace(energy, params, x, solver, *, state0: Any = "zeros",
                     steps: int | None = None) -> np.ndarray:
    """Each example's residual at every step of a free relaxation, step by step.

    Re-runs the relaxation ``relax`` performs (same solver steps, same input drive, the same
    first-step-outside-the-box rule) as a ``lax.scan`` that records
    ``||s_{t+1, b} - s_{t, b}||`` for every step ``t`` and example ``b`` (``relax`` itself keeps
    only the last residual: the plotting path pays for the trace, not training).

    Args:
      energy: any ``ep_jax.energies.Energy``.
      params: its parameters.
      x: the clamped inputs, ``(batch, ...)``.
      solver: the solver to trace (e.g. a learner's ``eval_solver``).
      state0: ``"zeros"``, ``"feedforward"`` or a state.
      steps: steps to run (default ``solver.max_steps``); the trace does not stop at the
        solver's tolerance, so the plot shows where each example crosses it.

    Returns:
      ``(steps, batch)`` float64 array of per-example update norms.
    """
    import jax
    import jax.numpy as jnp

    from ep_jax.costs import squared_error
    from ep_jax.solvers.base import Problem, example_sq_norms

    steps = int(solver.max_steps if steps is None else steps)
    if steps < 1:
        raise ValueError(f"steps: expected >= 1, received {steps}")
    s0 = energy.init_state(params, x, state0)
    box = solver.keeps_in_box(energy)

    @jax.jit
    def trace(params, x, s0):
        problem = Problem(energy, params, x, None, 0.0, squared_error, energy.input_drive(params, x))

        def one(carry, in_box):
            s, ss = carry
            s_new, ss = solver.step(problem, s, ss, in_box=in_box)
            return (s_new, ss), jnp.sqrt(example_sq_norms(s_new, s))

        carry, first = one((s0, solver.init(problem, s0)), False)
        _, rest = jax.lax.scan(lambda c, _: one(c, box), carry, None, length=steps - 1)
        return jnp.concatenate([first[None], rest], axis=0)

    return np.asarray(jax.device_get(trace(params, x, s0)), dtype=np.float64)


def plot_relaxation(residuals: Any, path: PathLike, tol: float | None = None,
                    title: str | None = None) -> Path:
    """A relaxation per example: residual against step, and the fraction converged.

    Args:
      residuals: ``(steps, batch)`` update norms (:func:`relaxation_trace`).
      path: where to write the PNG.
      tol: the solver's tolerance: drawn as a line, and "converged" means residual ``<= tol``
        (without one, the right panel shows the residual's quantiles instead).
      title: figure title; by default "relaxation".

    Returns:
      ``path`` as a :class:`pathlib.Path`.

    Raises:
      ValueError: ``residuals`` is not 2-D with at least one step and one example.
    """
    r = np.asarray(residuals, dtype=np.float64)
    if r.ndim != 2 or r.shape[0] < 1 or r.shape[1] < 1:
        raise ValueError(f"residuals: expected (steps, batch) with both >= 1, received shape {r.shape}")
    steps = np.arange(1, r.shape[0] + 1)
    fig = Figure(figsize=(12, 4), layout="constrained")
    left, right = fig.subplots(1, 2)
    # Zero residuals (an exact fixed point) have no place on a log axis: floor them for drawing.
    positive = r[np.isfinite(r) & (r > 0)]
    floor = positive.min() / 10 if positive.size else 1e-12
    shown = np.where(np.isfinite(r), np.maximum(r, floor), np.nan)
    left.plot(steps, shown, color="tab:blue", alpha=max(0.15, min(0.8, 4 / r.shape[1])), lw=1)
    left.plot(steps, np.nanmedian(shown, axis=1), color="black", lw=2, label="median")
    if tol is not None:
        left.axhline(tol, color="tab:red", ls="--", label=f"tolerance {tol:g}")
    if np.any(r == 0):  # say so: a flat line at the bottom is an exact fixed point, not a stall
        left.axhline(floor, color="gray", lw=0.5, label=f"exactly 0 (drawn at {floor:.0e})")
    left.set_yscale("log")
    left.set_xlabel("relaxation step")
    left.set_ylabel("residual ||s_{t+1} - s_t|| per example")
    left.set_title(f"residual of {r.shape[1]} examples")
    left.legend(fontsize=8)
    if tol is not None:
        converged = np.mean(np.where(np.isfinite(r), r <= tol, False), axis=1)
        right.plot(steps, 100 * converged, color="tab:green", lw=2)
        right.set_ylim(-2, 102)
        right.set_ylabel("examples converged (%)")
        right.set_title(f"converged (residual <= {tol:g}): {100 * converged[-1]:.0f}% at the last step")
    else:
        for q, style in ((0.5, "-"), (0.9, "--"), (1.0, ":")):
            right.plot(steps, np.nanquantile(shown, q, axis=1), style, color="tab:purple",
                       label=f"{int(100 * q)}th percentile" if q < 1 else "max")
        right.set_yscale("log")
        right.set_ylabel("residual (quantiles over examples)")
        right.set_title("no tolerance: residual quantiles")
        right.legend(fontsize=8)
    right.set_xlabel("relaxation step")
    for ax in (left, right):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
    fig.suptitle(title or "relaxation")
    return _save(fig, path)


# --------------------------------------------------------------------------------------------
# Network graph


def _layer_names(n_layers: int) -> list[str]:
    hidden = [f"hidden {i}" if n_layers > 3 else "hidden" for i in range(1, n_layers - 1)]
    return ["input", *hidden, "output"]


def plot_network(
    params: Mapping[str, Mapping[str, Any]],
    path: PathLike,
    activations: Sequence[Any] | None = None,
    max_units: int = 64,
    title: str | None = None,
    edge_labels: bool | None = None,
) -> Path:
    """A small network as a graph: layers in columns, one edge per weight.

    Edges are blue for positive and red for negative weights, their width proportional to
    ``|w| / max|w|`` over the whole net. Non-input nodes are labelled with their bias
    (``b=0.12``). With ``activations``, nodes are filled by activation value (viridis, with a
    colourbar) and show it; without, they are left white.

    Args:
      params: ``{"layer_l": {"kernel": (n_l, n_{l+1}), "bias": (n_{l+1},)}}``.
      path: where to write the PNG.
      activations: optional, one 1-D array per layer *including the input*, e.g. one example's
        ``(x[i], s_1[i], ..., s_L[i])``.
      max_units: refuse nets with more units than this in total (the drawing would be
        unreadable); callers can catch the ``ValueError`` and skip the plot.
      title: figure title; by default the architecture, e.g. ``network 2-8-2``.
      edge_labels: write each weight's value on its edge; by default only when the net has at
        most 20 edges.

    Returns:
      ``path`` as a :class:`pathlib.Path`.

    Raises:
      ValueError: the net has more than ``max_units`` units, the kernels don't chain (see
        :func:`layer_sizes`), or ``activations`` doesn't match the layer sizes.
    """
    sizes = layer_sizes(params)
    total = sum(sizes)
    if total > max_units:
        raise ValueError(f"network too large to draw: {total} units > max_units={max_units}")
    n_layers = len(sizes)
    layers = [params[f"layer_{l}"] for l in range(n_layers - 1)]
    kernels = [np.asarray(layer["kernel"], dtype=np.float64) for layer in layers]
    biases = [np.asarray(layer["bias"], dtype=np.float64) if "bias" in layer else None for layer in layers]
    acts = None
    if activations is not None:
        if len(activations) != n_layers:
            raise ValueError(
                f"activations: expected {n_layers} arrays (one per layer, input included), "
                f"received {len(activations)}"
            )
        acts = []
        for l, (a, n) in enumerate(zip(activations, sizes)):
            a = np.asarray(a, dtype=np.float64)
            if a.size != n:
                raise ValueError(
                    f"activations[{l}]: expected {n} values for layer {l}, received shape {a.shape}"
                )
            acts.append(a.reshape(n))

    # Geometry: columns one unit apart, units spread over [-1, 1] in the tallest column.
    widest = max(sizes)
    height_in = min(12.0, max(3.5, 0.55 * widest + 1.5))
    width_in = max(5.0, 2.3 * n_layers + (1.5 if acts is not None else 0.5))
    spacing = 2.0 / max(widest - 1, 1)
    pos = [
        np.stack([np.full(n, float(l)), ((n - 1) / 2 - np.arange(n)) * spacing], axis=1)
        for l, n in enumerate(sizes)
    ]
    # Node size in points from the vertical room per unit (axes span ~80% of the figure height).
    room_pt = 0.8 * height_in * 72 * spacing / (2.0 + spacing)
    diameter = float(np.clip(0.55 * room_pt, 6.0, 24.0))
    fontsize = float(np.clip(0.35 * room_pt, 5.0, 8.0))

    fig = Figure(figsize=(width_in, height_in), layout="constrained")
    ax = fig.subplots()
    ax.set_axis_off()
    ax.set_xlim(-0.4, n_layers - 0.6)
    ax.set_ylim(-1 - spacing / 2 - 0.15, 1 + spacing / 2 + 0.15)

    # Edges.
    w_all = np.concatenate([k.ravel() for k in kernels])
    finite = w_all[np.isfinite(w_all)]
    w_max = float(np.abs(finite).max()) if finite.size else 0.0
    segments, colors, widths, values, fractions = [], [], [], [], []
    for l, k in enumerate(kernels):
        for i in range(k.shape[0]):
            for j in range(k.shape[1]):
                w = k[i, j]
                segments.append([pos[l][i], pos[l + 1][j]])
                values.append(w)
                # Where along the edge its value label goes: spread by target unit, since all
                # midpoints of a dense layer meet in one spot (the seed's labels piled up there).
                fractions.append(0.2 + 0.4 * j / (k.shape[1] - 1) if k.shape[1] > 1 else 0.35)
                if not np.isfinite(w):
                    colors.append("gray")
                    widths.append(0.5)
                    continue
                colors.append(_POSITIVE if w >= 0 else _NEGATIVE)
                widths.append(0.3 + 3.7 * abs(w) / w_max if w_max > 0 else 0.3)
    ax.add_collection(LineCollection(segments, colors=colors, linewidths=widths, alpha=0.75, zorder=1))
    if edge_labels is None:
        edge_labels = len(segments) <= 20
    if edge_labels:
        for (p, q), w, t in zip(segments, values, fractions):
            at = p + t * (q - p)
            ax.text(*at, f"{w:.2f}", fontsize=fontsize - 1, ha="center", va="center", zorder=2,
                    bbox=_LABEL_BOX)

    # Nodes.
    norm = cmap = None
    if acts is not None:
        a_all = np.concatenate(acts)
        a_fin = a_all[np.isfinite(a_all)]
        lo, hi = (float(a_fin.min()), float(a_fin.max())) if a_fin.size else (0.0, 1.0)
        if hi <= lo:  # all equal: widen so the colormap still has a range
            lo, hi = lo - 0.5, hi + 0.5
        norm, cmap = Normalize(lo, hi), colormaps["viridis"]
    for l, n in enumerate(sizes):
        xy = pos[l]
        face = cmap(norm(acts[l])) if acts is not None else "white"
        ax.scatter(xy[:, 0], xy[:, 1], s=diameter**2, c=face, edgecolors="black", linewidths=0.8, zorder=3)
        if acts is not None and diameter >= 14:
            for (x, y), a in zip(xy, acts[l]):
                # Dark text on the bright end of viridis, light text on the dark end.
                ink = "black" if norm(a) > 0.55 else "white"
                ax.text(x, y, f"{a:.2f}", fontsize=fontsize - 2, ha="center", va="center", color=ink,
                        zorder=4)
        if l > 0 and biases[l - 1] is not None:
            below = room_pt >= diameter + 2.2 * fontsize  # room under the node, else to its right
            for (x, y), b in zip(xy, biases[l - 1]):
                offset = (0, -(diameter / 2 + 1)) if below else (diameter / 2 + 2, 0)
                ax.annotate(f"b={b:.2f}", (x, y), xytext=offset, textcoords="offset points",
                            ha="center" if below else "left", va="top" if below else "center",
                            fontsize=fontsize, zorder=4,
                            bbox=_LABEL_BOX)
    names = _layer_names(n_layers)
    for l, n in enumerate(sizes):
        ax.text(l, 1 + spacing / 2 + 0.1, f"{names[l]} ({n})", ha="center", va="bottom", fontsize=9)

    legend = [
        Line2D([], [], color=_POSITIVE, lw=2, label="w > 0"),
        Line2D([], [], color=_NEGATIVE, lw=2, label="w < 0"),
    ]
    ax.legend(handles=legend, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=2, fontsize=8,
              frameon=False, title=f"width ∝ |w|, max |w| = {w_max:.3g}", title_fontsize=8)
    if acts is not None:
        fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, label="activation", shrink=0.8)
    fig.suptitle(title if title is not None else "network " + "-".join(map(str, sizes)))
    return _save(fig, path)
