"""``gradcheck``: how close a learning rule's gradient is to the exact gradient.

A small random net is relaxed to a tight tolerance; the rule's estimate is compared with the
implicit-differentiation gradient (``exact.implicit_gradient``) and with BPTT through the unrolled
relaxation (``exact.bptt_gradient``). With the hard sigmoid (the default, the seeds' energy as
is), states are projected onto [0, 1] and the implicit solve is restricted to the units strictly
inside the box (the active set); smooth activations run unprojected.

The random net is put in a regime where units are not all saturated: kernels are Glorot-uniform
times ``weight_scale`` and biases are drawn from ``bias_range`` (defaults: 0.5 and (0.3, 0.7) for
the hard sigmoid, (-0.2, 0.2) otherwise).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Optional

import jax
import jax.numpy as jnp

from ep_jax.energies import make_energy
from ep_jax.exact import bptt_gradient, compare, implicit_gradient
from ep_jax.rules import Phases, get_rule
from ep_jax.solvers import GradientDescent, check_stats, relax


@dataclasses.dataclass(frozen=True)
class GradcheckConfig:
    energy: str = "hopfield"
    rule: str = "ep-symmetric"
    beta: float = 1e-3
    sizes: tuple = (6, 5, 4, 3)
    activation: Optional[str] = "hard_sigmoid"  # None: the energy's own default
    batch: int = 5
    seed: int = 0
    x64: bool = True
    step_size: float = 0.5
    tol: Optional[float] = None  # default: 1e-12 in float64, 1e-6 in float32
    max_steps: int = 20000
    weight_scale: float = 0.5
    bias_range: Optional[tuple] = None
    cost: str = "squared_error"
    points: Optional[int] = None  # ep-holomorphic's N (None: the rule's default)
    # "bfloat16" | "float16": also run the rule in float32 and in this precision on the same
    # float32 problem (ep_jax.precision) and report both against float32 and the exact gradient.
    precision: str = "float32"
    # conv_hopfield only (``sizes`` is then unused): input (H, W, C), conv layers
    # (channels, kernel, stride, padding, pool), dense layers after the last map.
    in_shape: tuple = (6, 6, 1)
    conv: tuple = ((3, 3, 1, 1, 2),)
    dense: tuple = (4,)


# Free and positive sweeps given to seed 000's schemes (its XOR run uses 1 and 1).
SEED000_SWEEPS = (20, 4)
# Free steps of the bptt rule (a fixed count): enough for the small nets checked here to settle.
BPTT_RULE_STEPS = 400


def random_problem(energy, key, *, batch=5, dtype=jnp.float64, weight_scale=0.5, bias_range=(0.3, 0.7)):
    """Params, inputs x ~ U[0, 1) and labels for a random net in a non-saturated regime.

    Kernels are Glorot-uniform times ``weight_scale``; biases are U(``bias_range``).
    """
    k_p, k_b, k_x, k_y = jax.random.split(key, 4)
    params = energy.init_params(k_p, dtype)
    # One input: a layered net's (n_in,), a conv net's (H, W, C); labels index the output.
    in_shape = tuple(getattr(energy, "in_shape", None) or (energy.sizes[0],))
    bias_keys = jax.random.split(k_b, len(params))
    params = {
        name: {
            "kernel": weight_scale * p["kernel"],
            "bias": jax.random.uniform(bk, p["bias"].shape, dtype, *bias_range),
        }
        for bk, (name, p) in zip(bias_keys, sorted(params.items()))
    }
    x = jax.random.uniform(k_x, (batch,) + in_shape, dtype)
    n_out = jax.eval_shape(lambda: energy.output(energy.zeros_state(x))).shape[-1]
    y = jax.random.randint(k_y, (batch,), 0, n_out)
    return params, x, y


def gradcheck(cfg: GradcheckConfig) -> dict:
    """Runs the check described in the module docstring and returns a JSON-able dict."""
    from ep_jax.costs import get_cost

    check_precision(cfg)
    if cfg.x64 and not jax.config.jax_enable_x64:
        jax.config.update("jax_enable_x64", True)
    dtype = jnp.float64 if cfg.x64 else jnp.float32
    tol = cfg.tol if cfg.tol is not None else (1e-12 if cfg.x64 else 1e-6)
    act = {} if cfg.activation is None else {"activation": cfg.activation}  # None: the energy's default
    if cfg.energy == "conv_hopfield":
        energy = make_energy(cfg.energy, cfg.in_shape, conv=cfg.conv, dense=cfg.dense, **act)
    else:
        energy = make_energy(cfg.energy, cfg.sizes, **act)
    activations = getattr(energy, "activation", ())
    activations = (activations,) if isinstance(activations, str) else tuple(activations)
    # conv_hopfield's box activations (hard and shifted hard sigmoid) keep states in [0, 1] too
    hard = "hard_sigmoid" in activations or (cfg.energy == "conv_hopfield" and energy.identity_on_unit_box)
    # conv_hopfield's 1/2 rho(s)^2 has a stationary point only for fields in rho's range: keep
    # them near 1/2 for smooth activations too.
    bias_range = cfg.bias_range or ((0.3, 0.7) if hard or cfg.energy == "conv_hopfield" else (-0.2, 0.2))
    project = "clip01" if hard else None
    cost = get_cost(cfg.cost)

    k_problem, k_rule = jax.random.split(jax.random.PRNGKey(cfg.seed))
    params, x, y = random_problem(
        energy, k_problem, batch=cfg.batch, dtype=dtype, weight_scale=cfg.weight_scale,
        bias_range=bias_range,
    )

    tight = GradientDescent(cfg.step_size, cfg.max_steps, tol=tol, project=project)
    phases = Phases(beta=cfg.beta, free=tight, nudged=tight, cost=cost)
    if cfg.rule.startswith("seed000-"):  # the seed's schemes run fixed sweep counts, no tolerance
        phases = phases._replace(free=tight._replace(max_steps=SEED000_SWEEPS[0], tol=None),
                                 nudged=tight._replace(max_steps=SEED000_SWEEPS[1], tol=None))
    if cfg.rule == "bptt":  # reverse-mode needs a fixed number of free steps, not a tolerance
        phases = phases._replace(free=tight._replace(max_steps=BPTT_RULE_STEPS, tol=None))
    rule = get_rule(cfg.rule)
    if cfg.points is not None:
        if cfg.rule != "ep-holomorphic":
            raise ValueError(f"points: only rule 'ep-holomorphic' takes points, received rule {cfg.rule!r}")
        rule = functools.partial(rule, points=cfg.points)
    grads, res = jax.jit(lambda p: rule(energy, p, x, y, "zeros", phases=phases, key=k_rule))(params)
    for st, where in ((res.free_stats, "rule's free phase"), (res.nudged_stats, "rule's nudged phase")):
        check_stats(st, where=where)  # heuristic rules (seed 000's sweeps) need not converge

    # The exact gradient belongs to the energy, not to the rule: its own tight free equilibrium.
    s_star, star_stats = jax.jit(
        lambda p: relax(energy, p, x, energy.zeros_state(x), solver=tight, cost=cost)
    )(params)
    check_stats(star_stats, require_converged=True, where="free phase of the exact gradient")
    g_imp, info = implicit_gradient(
        energy, params, x, y, s_star, cost=cost, bounds=(0.0, 1.0) if hard else None
    )
    # Enough unrolled steps for BPTT to reach the same equilibrium as the tolerance run.
    bptt_steps = max(200, 2 * int(star_stats.steps))
    g_bptt = jax.jit(
        lambda p: bptt_gradient(
            energy, p, x, y, energy.zeros_state(x),
            solver=GradientDescent(cfg.step_size, bptt_steps, project=project), cost=cost,
        )
    )(params)

    vs_imp, vs_bptt, bptt_imp = compare(grads, g_imp), compare(grads, g_bptt), compare(g_bptt, g_imp)
    reduced = precision_rows(cfg, energy, rule, phases, params, x, y, k_rule, g_imp)
    return {
        **reduced,
        "energy": cfg.energy,
        "rule": cfg.rule,
        "beta": cfg.beta,
        "beta_used": float(res.beta),
        "activation": activations[-1] if activations else cfg.activation,
        "points": cfg.points,
        **({"in_shape": list(cfg.in_shape), "conv": [list(c) for c in cfg.conv],
            "dense": list(cfg.dense)} if cfg.energy == "conv_hopfield" else {"sizes": list(cfg.sizes)}),
        "batch": cfg.batch,
        "dtype": jnp.dtype(dtype).name,
        "seed": cfg.seed,
        "rel_error": vs_imp["rel_error"],
        "cosine": vs_imp["cosine"],
        "rel_error_bptt": vs_bptt["rel_error"],
        "cosine_bptt": vs_bptt["cosine"],
        "bptt_vs_implicit_rel_error": bptt_imp["rel_error"],
        "grad_norm_exact": vs_imp["norm_reference"],
        "free_steps": int(star_stats.steps),
        "free_residual": float(star_stats.residual),
        "rule_free_converged": bool(res.free_stats.converged),
        "rule_nudged_converged": bool(res.nudged_stats.converged),
        "bptt_steps": bptt_steps,
        "stationarity": float(info.stationarity),
        "hessian_min_eigenvalue": float(info.min_eigenvalue),
        "active_fraction": float(info.active_fraction),
    }


def check_precision(cfg: GradcheckConfig):
    """The ``Precision`` of ``cfg``, checked before any work: a reduced one needs ``x64`` (the
    exact gradient in float64) and a rule it supports."""
    from ep_jax.precision import Precision

    policy = Precision.parse(cfg.precision)
    if policy.reduced:
        policy.check_rule(cfg.rule)
        if not cfg.x64:
            raise ValueError(
                f"x64: --precision {cfg.precision} compares with the float64 exact gradient; "
                "expected x64=True (--x64), received False"
            )
    return policy


def precision_rows(cfg: GradcheckConfig, energy, rule, phases, params, x, y, key, g_exact) -> dict:
    """The rule in float32 and in ``cfg.precision`` on the same float32 problem ({} for float32).

    The float32 run uses the float32 tolerance (``cfg.tol`` or 1e-6); the reduced one the
    tightest tolerance its states resolve (``Precision.resolution``; seed 000's schemes are
    refused, see ``Precision.check_rule``). Returns ``cosine_vs_float32`` and
    ``rel_error_vs_float32`` (reduced vs float32 estimate), and ``rel_error`` / ``cosine`` of
    each against the float64 exact gradient (``*_float32``, ``*_<precision>``).
    """
    policy = check_precision(cfg)
    if not policy.reduced:
        return {}
    f32 = jnp.float32
    p32 = jax.tree.map(lambda a: a.astype(f32), params)
    x32 = x.astype(f32)
    tol32 = cfg.tol if cfg.tol is not None else 1e-6
    tol_low = max(tol32, policy.resolution)
    policy.check_tolerance(tol_low)

    def run(en, tol, label):
        # Fixed step counts (seed 000's sweeps, BPTT) stay fixed; tolerances become ``tol``.
        def with_tol(solver):
            return solver if solver.tol is None else solver._replace(tol=tol)

        ph = phases._replace(free=with_tol(phases.free), nudged=with_tol(phases.nudged))
        g, res = jax.jit(lambda p: rule(en, p, x32, y, "zeros", phases=ph, key=key))(p32)
        for st, where in ((res.free_stats, "free phase"), (res.nudged_stats, "nudged phase")):
            check_stats(st, where=f"rule's {where} in {label}")
        return jax.tree.map(lambda a: a.astype(jnp.float64), g), res

    g32, res32 = run(energy, tol32, "float32")
    g_low, res_low = run(policy.wrap(energy), tol_low, cfg.precision)
    vs32, low_exact, f32_exact = compare(g_low, g32), compare(g_low, g_exact), compare(g32, g_exact)
    name = cfg.precision
    return {
        "precision": name,
        "cosine_vs_float32": vs32["cosine"],
        "rel_error_vs_float32": vs32["rel_error"],
        f"rel_error_{name}": low_exact["rel_error"],
        f"cosine_{name}": low_exact["cosine"],
        "rel_error_float32": f32_exact["rel_error"],
        "cosine_float32": f32_exact["cosine"],
        f"tol_{name}": tol_low,
        "tol_float32": tol32,
        f"free_steps_{name}": int(jnp.max(res_low.free_stats.steps)),
        "free_steps_float32": int(jnp.max(res32.free_stats.steps)),
    }
