"""PyTorch references for the throughput suite: one EP training step, three ways.

Every reference runs the same math as the JAX step of ``ep_jax.bench`` (Hopfield energy,
hard sigmoid, free phase from zeros, nudged phase, EP update with per-layer SGD), with the same
shapes and step counts, on CUDA when torch sees one, else on the CPU. ``step(x, y)`` does one
training step in place; ``sync()`` waits for the device; ``params()`` returns numpy
``(weights (fan_in, fan_out), biases)``.

* ``Seed001Ref`` -- seed 001 as written (``tests/reference/seed001.py``, the faithful port): the
  body of its training loop: ``free_phase`` (autograd with ``create_graph=True`` at every step),
  a random sign of beta, ``weakly_clamped_phase`` (which restarts from zeros: the seed's bug),
  ``compute_gradients`` (back-propagates through the whole unrolled trajectory: the seed's
  other bug) and ``update_parameters``. The relaxation is the same as ep_jax's; the update is
  not (see ``tests/test_parity_torch.py``); the timed work is the seed's.
* ``Seed002Ref`` -- seed 002's library style (``tests/reference/seed002.py``): the energy object
  recomputes ``E`` after every state change, ``u_relax`` takes Euler steps with one
  ``backward()`` per step (and a host sync per step for its norm), ``w_get_gradients`` /
  ``w_optimize`` make the contrastive update through a ``torch.optim.SGD`` with one parameter
  group per layer, and the nudged phase continues from the free state. Adapted to compute the
  suite's math (noted, nothing else changed): (1) the port's ``RestrictedHopfield`` with
  ``phi`` = the hard sigmoid ``torch.clamp(u, 0, 1)`` for every layer: its 1/2 u^2 equals
  seed 001's 1/2 rho(u)^2 (and has the same gradient, torch's clamp passing it on the closed
  interval) as long as the states stay in [0, 1], which (2) a projection ``clamp_(0, 1)`` after
  each Euler step guarantees (seed 001's and ep_jax's ``project="clip01"``); (3) the cost is
  ep_jax's ``beta * ||u_L - y||^2`` (seed 002's ``SquaredError`` has a 1/2); (4) the states
  start from zeros (the library's ``reset_state`` draws them from a normal); (5) ``tol=0`` so
  ``u_relax`` runs exactly its ``n_relax`` steps (the suite's fixed step counts).
* ``TorchBest`` -- the fastest plain PyTorch written for the same math: hand-derived state
  gradients (no autograd), ``torch.no_grad``, the clamped input product rho(x) W_0 + b_0 once per
  training step and shared by both phases, rho skipped on states known to lie in [0, 1]
  (the states start at zero and every step projects), fused ``addmm``/``lerp``/in-place
  ``clamp_``, and the EP update as in-place ``addmm_`` with the input layer's weight gradient as
  the single product rho(x)^T (s_beta - s_0). It implements every solver of the suite
  (``gd``, ``gd-tol``, ``fp-sync``, ``fp-async``). ``compile=True`` wraps the per-step kernels
  in ``torch.compile`` (``make_torch_best`` falls back to eager and reports why if compiling
  fails).

``check_references`` runs all three against the JAX step on a tiny net (used by
``benchmarks/suite.py`` before timing and by ``tests/test_bench_suite.py``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import torch

from ep_jax import bench
from ep_jax.energies import make_energy
from ep_jax.solvers import relax
from tests.reference import seed001, seed002

TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float64": torch.float64}


def torch_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _tensor(a, dtype, device):
    """A fresh copy (never a view of the caller's numpy array: the references update in place)."""
    return torch.tensor(np.array(a, np.float32), dtype=dtype, device=device)


class _Ref:
    """Common parts: device, dtype, the random sign of beta (numpy, as seed 001)."""

    name = "ref"

    def __init__(self, dtype: str, device: str | None, beta: float, random_sign: bool, seed: int):
        self.device = device or torch_device()
        self.dtype = TORCH_DTYPES[dtype]
        self.beta = float(beta)
        self.random_sign = random_sign
        self.rng = np.random.RandomState(seed)

    def signed_beta(self) -> float:
        if not self.random_sign:
            return self.beta
        return (2 * self.rng.randint(0, 2) - 1) * self.beta  # seed 001: np.random.randint(0, 2)

    def sync(self) -> None:
        sync(self.device)

    def inputs(self, x, y):
        """Device tensors of a numpy batch: x in the ref's dtype, y as int64 labels."""
        return (_tensor(x, self.dtype, self.device),
                torch.as_tensor(np.asarray(y, np.int64), device=self.device))


# ------------------------------------------------------------------------------------------
# (a) seed 001 as written
# ------------------------------------------------------------------------------------------
class Seed001Ref(_Ref):
    name = "seed001"

    def __init__(self, weights, biases, *, t_free, t_nudged, epsilon=0.5, beta=0.5, alphas,
                 dtype="float32", device=None, random_sign=True, seed=0):
        super().__init__(dtype, device, beta, random_sign, seed)
        self.net = seed001.EquilibriumPropagationNetwork.from_params(
            weights, biases, device=self.device, dtype=self.dtype)
        self.t_free, self.t_nudged, self.epsilon = t_free, t_nudged, epsilon
        self.alphas = list(alphas)

    def step(self, x, y):
        """The body of seed 001's training loop (minus its progress-bar ``net.measure``)."""
        net = self.net
        layers_free = net.free_phase(x, self.t_free, self.epsilon)
        beta = self.signed_beta()
        layers_clamped = net.weakly_clamped_phase(x, y, self.t_nudged, self.epsilon, beta)
        weight_grads, bias_grads = net.compute_gradients(layers_free, layers_clamped, beta)
        net.update_parameters(weight_grads, bias_grads, self.alphas)

    def free(self, x):
        return self.net.free_phase(x, self.t_free, self.epsilon)[1:]

    def params(self):
        return ([w.detach().float().cpu().numpy() for w in self.net.weights],
                [b.detach().float().cpu().numpy() for b in self.net.biases])


# ------------------------------------------------------------------------------------------
# (b) seed 002's library style
# ------------------------------------------------------------------------------------------
def hard_sigmoid(u):
    return torch.clamp(u, 0.0, 1.0)


class SquaredErrorNoHalf(seed002.CEnergy):
    """ADAPTED: ep_jax's (and seed 001's) squared error, beta * ||u_L - y||^2 (seed 002: a 1/2)."""

    def compute_energy(self, u_last):
        return self.beta * torch.sum((u_last - self.target) ** 2, dim=1)


class ProjectedHopfield(seed002.RestrictedHopfield):
    """The port's ``RestrictedHopfield``; ``u_step`` is seed 002's with one added line (ADAPTED):
    the projection ``clamp_(0, 1)`` of each updated layer (seed 001 / ``project="clip01"``)."""

    def u_step(self, dt, tau):
        self.zero_grad()
        batch_E = torch.sum(self.E)
        batch_E.backward()
        with torch.no_grad():
            du_norm = 0
            for i in range(self.n_layers):
                if not self.clamp_du[i]:
                    du = self.u[i].grad
                    self.u[i] -= dt / tau * du
                    self.u[i].clamp_(0.0, 1.0)  # ADAPTED: the projection
                    du_norm += float(torch.mean(torch.norm(du, dim=1)))
        self.update_energy()
        return du_norm


class Seed002Ref(_Ref):
    name = "seed002"

    def __init__(self, weights, biases, *, t_free, t_nudged, epsilon=0.5, beta=0.5, alphas,
                 dtype="float32", device=None, random_sign=True, seed=0, batch_size=1):
        super().__init__(dtype, device, beta, random_sign, seed)
        sizes = [np.shape(weights[0])[0]] + [np.shape(w)[1] for w in weights]
        self.sizes = sizes
        seed002.config.device = self.device  # the library's lib.config.device
        with torch.random.fork_rng(devices=[]):  # its constructor draws Linear init and states
            self.model = ProjectedHopfield(sizes, SquaredErrorNoHalf(beta), batch_size,
                                           [hard_sigmoid] * len(sizes), dtype=self.dtype)
        self.model.set_params([np.array(w) for w in weights], [np.array(v) for v in biases])
        groups = [{"params": [layer.weight, layer.bias], "lr": a}
                  for layer, a in zip(self.model.W, alphas)]
        self.optimizer = torch.optim.SGD(groups, lr=alphas[0])
        self.t_free, self.t_nudged, self.epsilon = t_free, t_nudged, epsilon

    def _zero_states(self, x):
        """ADAPTED: the free phase starts from zeros (the library's reset_state: randn)."""
        m = self.model
        m.u = [x] + [torch.zeros(x.shape[0], n, device=self.device, dtype=self.dtype,
                                 requires_grad=True) for n in self.sizes[1:]]

    def inputs(self, x, y):
        xt, yt = super().inputs(x, y)
        onehot = torch.nn.functional.one_hot(yt, self.sizes[-1]).to(self.dtype)
        return xt, onehot

    def _free_phase(self, x):
        m = self.model
        m.c_energy.set_target(None)
        self._zero_states(x)
        m.update_energy()
        m.u_relax(self.epsilon, self.t_free, 0.0, 1.0)

    def step(self, x, y_onehot):
        """Free phase, gradients, nudged phase (from the free state), gradients, w_optimize."""
        m = self.model
        self._free_phase(x)
        free_grads = m.w_get_gradients()
        m.c_energy.beta = self.signed_beta()
        m.set_C_target(y_onehot)
        m.u_relax(self.epsilon, self.t_nudged, 0.0, 1.0)
        nudged_grads = m.w_get_gradients()
        m.w_optimize(free_grads, nudged_grads, self.optimizer)

    def free(self, x):
        self._free_phase(x)
        return self.model.u[1:]

    def params(self):
        return ([layer.weight.detach().float().cpu().numpy().T for layer in self.model.W],
                [layer.bias.detach().float().cpu().numpy() for layer in self.model.W])


# ------------------------------------------------------------------------------------------
# (c) the fastest plain PyTorch for the same math
# ------------------------------------------------------------------------------------------
SOLVERS = ("gd", "gd-tol", "fp-sync", "fp-async")


def _fields(s, drive, W, b, layers):
    """h_l = rho(s_{l-1}) W_{l-1} + b_{l-1} + rho(s_{l+1}) W_l^T for the 0-based free ``layers``
    (rho(s) = s: every state is in [0, 1]); layer 0's input part is the hoisted ``drive``."""
    L = len(s)
    out = {}
    for l in layers:
        h = drive if l == 0 else torch.addmm(b[l], s[l - 1], W[l])
        if l + 1 < L:
            h = torch.addmm(h, s[l + 1], W[l + 1].t())
        out[l] = h
    return out


def gd_step(s, drive, W, b, y, beta2, eps: float, nudged: bool):
    """s <- clip(s - eps dF/ds), dF/ds_l = s_l - h_l (+ 2 beta (s_L - y) on the output)."""
    L = len(s)
    h = _fields(s, drive, W, b, range(L))
    new = []
    for l in range(L):
        if l == L - 1 and nudged:
            g = (s[l] - h[l]) + beta2 * (s[l] - y)
            new.append(torch.add(s[l], g, alpha=-eps).clamp_(0.0, 1.0))
        else:
            new.append(torch.lerp(s[l], h[l], eps).clamp_(0.0, 1.0))  # s - eps (s - h), exactly
    return new


def fp_update(s, drive, W, b, y, beta2, kappa, nudged: bool, layers):
    """s_l <- rho(h_l) for ``layers``; the nudged output by the majoriser of ep_jax's FixedPoint."""
    L = len(s)
    h = _fields(s, drive, W, b, layers)
    new = list(s)
    for l in layers:
        if l == L - 1 and nudged:
            v = (h[l] - beta2 * (s[l] - y) + kappa * s[l]) / (1 + kappa)
            new[l] = v.clamp_(0.0, 1.0)
        else:
            new[l] = torch.clamp(h[l], 0.0, 1.0)
    return new


def fp_step(s, drive, W, b, y, beta2, kappa, nudged: bool, order: str):
    L = len(s)
    if order == "synchronous":
        return fp_update(s, drive, W, b, y, beta2, kappa, nudged, range(L))
    # asynchronous: even layers (1-based), then odd ones from the updated even layers
    s = fp_update(s, drive, W, b, y, beta2, kappa, nudged, range(1, L, 2))
    return fp_update(s, drive, W, b, y, beta2, kappa, nudged, range(0, L, 2))


def update_norm(new, old):
    sq = sum(torch.sum((a - c) ** 2, dim=1) for a, c in zip(new, old))
    return torch.sqrt(torch.max(sq))


class TorchBest(_Ref):
    name = "torch_best"

    def __init__(self, weights, biases, *, t_free, t_nudged, epsilon=0.5, beta=0.5, alphas,
                 dtype="float32", device=None, random_sign=True, seed=0, solver="gd",
                 tol=None, compile=False):
        super().__init__(dtype, device, beta, random_sign, seed)
        if solver not in SOLVERS:
            raise ValueError(f"solver: expected one of {SOLVERS}, received {solver!r}")
        self.W = [_tensor(w, self.dtype, self.device) for w in weights]
        self.b = [_tensor(v, self.dtype, self.device) for v in biases]
        self.sizes = [self.W[0].shape[0]] + [w.shape[1] for w in self.W]
        self.t_free, self.t_nudged, self.epsilon = t_free, t_nudged, float(epsilon)
        self.alphas = [float(a) for a in alphas]
        self.solver, self.tol = solver, tol
        self.kappa = 2.0 * abs(self.beta)  # |beta| * curvature of the squared error (2)
        self.last_steps = (0, 0)
        self._gd, self._fp = gd_step, fp_step
        self.compiled = False
        if compile:
            # dynamic=False: one graph per shape; the step counts stay Python loops (no unrolling)
            self._gd = torch.compile(gd_step, dynamic=False)
            self._fp = torch.compile(fp_step, dynamic=False)
            self.compiled = True

    def _one(self, s, drive, y, beta2, nudged):
        if self.solver in ("gd", "gd-tol"):
            return self._gd(s, drive, self.W, self.b, y, beta2, self.epsilon, nudged)
        order = "synchronous" if self.solver == "fp-sync" else "asynchronous"
        return self._fp(s, drive, self.W, self.b, y, beta2, self.kappa, nudged, order)

    def relax(self, s, drive, steps, y=None, beta=0.0):
        nudged = y is not None
        beta2 = 2.0 * beta  # d/ds beta ||s - y||^2 = 2 beta (s - y)
        if self.solver != "gd-tol":
            for _ in range(steps):
                s = self._one(s, drive, y, beta2, nudged)
            return s, steps
        for i in range(steps):  # a host sync per step: the plain-PyTorch tolerance loop
            new = self._one(s, drive, y, beta2, nudged)
            res = float(update_norm(new, s))
            s = new
            if not res > self.tol:
                return s, i + 1
        return s, steps

    def drive(self, x):
        """rho(x), rho(x) W_0 + b_0: once per training step, shared by both phases."""
        r0 = torch.clamp(x, 0.0, 1.0)
        return r0, torch.addmm(self.b[0], r0, self.W[0])

    def zeros(self, x):
        return [torch.zeros(x.shape[0], n, device=self.device, dtype=self.dtype)
                for n in self.sizes[1:]]

    @torch.no_grad()
    def free(self, x):
        _, drive = self.drive(x)
        s, n = self.relax(self.zeros(x), drive, self.t_free)
        self.last_steps = (n, 0)
        return s

    @torch.no_grad()
    def step(self, x, y):
        """Free phase, nudged phase from the free state, EP update with per-layer SGD."""
        r0, drive = self.drive(x)
        y1 = torch.nn.functional.one_hot(y, self.sizes[-1]).to(self.dtype)
        s0, n0 = self.relax(self.zeros(x), drive, self.t_free)
        beta = self.signed_beta()
        s1, n1 = self.relax(s0, drive, self.t_nudged, y1, beta)
        self.last_steps = (n0, n1)
        # grad = -(1 / (beta B)) (r_a^T r_a' - r_b^T r_b'); W <- W - alpha grad
        c = 1.0 / (beta * x.shape[0])
        for l, (W, bias, a) in enumerate(zip(self.W, self.b, self.alphas)):
            d = s1[l] - s0[l]
            if l == 0:
                W.addmm_(r0.t(), d, alpha=a * c)  # the input layer: one product
            else:
                W.addmm_(s1[l - 1].t(), s1[l], alpha=a * c).addmm_(s0[l - 1].t(), s0[l], alpha=-a * c)
            bias.add_(d.sum(0), alpha=a * c)

    def params(self):
        return ([w.float().cpu().numpy() for w in self.W], [v.float().cpu().numpy() for v in self.b])


REFERENCES = {"seed001": Seed001Ref, "seed002": Seed002Ref, "torch_best": TorchBest}


def make_torch_best(*args, compile=False, **kwargs):
    """``TorchBest``; with ``compile=True`` returns ``(ref, None)`` or ``(eager ref, reason)``
    if ``torch.compile`` is unavailable (the suite records the reason, never stops)."""
    try:
        return TorchBest(*args, compile=compile, **kwargs), None
    except Exception as e:  # a compile failure must never stop the suite
        if not compile:
            raise
        return TorchBest(*args, compile=False, **kwargs), f"{type(e).__name__}: {e}"


# ------------------------------------------------------------------------------------------
# Numerical agreement with the JAX step (run by benchmarks/suite.py and tests/test_bench_suite.py)
# ------------------------------------------------------------------------------------------
def ref_kwargs(row: bench.Row) -> dict:
    """The keyword arguments that make a reference run a ``bench.Row``'s step."""
    return dict(t_free=row.t_free, t_nudged=row.t_nudged, epsilon=bench.EPSILON, beta=bench.BETA,
                alphas=bench.alphas_for(row.sizes), dtype=row.dtype)


def check_references(sizes=(12, 9, 7, 4), batch=5, t_free=6, t_nudged=3, seed=0) -> dict:
    """One training step from the same params and batch with a fixed +beta (rule ``ep``): the
    updated parameters of ``torch_best`` (every solver) and ``seed002`` must equal the JAX
    step's; seed 001 (its update differentiates through the trajectory and restarts the
    nudged phase from zeros, by design of the seed) must give the same free and
    nudged-from-zeros states. Returns the worst relative differences, float32."""
    rng = np.random.default_rng(seed)
    weights, _ = bench.init_params(sizes, seed)
    biases = [rng.uniform(-0.1, 0.3, n).astype(np.float32) for n in sizes[1:]]
    x = rng.uniform(0, 1, (batch, sizes[0])).astype(np.float32)
    y = rng.integers(0, sizes[-1], batch)
    out = {}

    def rel(a, b):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))

    for solver in bench.SOLVERS:
        row = bench.Row(tuple(sizes), batch, t_free, t_nudged, solver=solver)
        energy, phases, tx = bench.row_setup(row)
        step = bench.make_training_step(energy, "ep", phases, tx)
        p = bench.jax_params(weights, biases, "float32")
        new, _, _, _ = step(p, tx.init(p), jax.random.PRNGKey(0), jnp.asarray(x),
                            jnp.asarray(y, jnp.int32))
        dj = [np.asarray(new[f"layer_{l}"]["kernel"]) - weights[l] for l in range(len(weights))]
        bj = [np.asarray(new[f"layer_{l}"]["bias"]) for l in range(len(weights))]
        names = ("torch_best", "seed002") if solver == "gd" else ("torch_best",)
        for name in names:
            kw = dict(ref_kwargs(row), random_sign=False)
            ref = (TorchBest(weights, biases, solver=solver, tol=bench.TOL, **kw)
                   if name == "torch_best" else Seed002Ref(weights, biases, batch_size=batch, **kw))
            ref.step(*ref.inputs(x, y))
            w_t, b_t = ref.params()
            out[f"{name}/{solver}/weight_update"] = max(
                rel(w_t[l] - weights[l], dj[l]) for l in range(len(weights)))
            out[f"{name}/{solver}/bias"] = max(rel(b_t[l], bj[l]) for l in range(len(weights)))
    # seed 001: the relaxations
    energy = make_energy("hopfield", sizes)
    p = bench.jax_params(weights, biases, "float32")
    xj, yj = jnp.asarray(x), jnp.asarray(y, jnp.int32)
    s_free, _ = relax(energy, p, xj, energy.zeros_state(xj), solver=bench.make_solver("gd", t_free))
    s_nz, _ = relax(energy, p, xj, energy.zeros_state(xj), target=yj, beta=bench.BETA,
                    solver=bench.make_solver("gd", t_nudged))
    ref = Seed001Ref(weights, biases, random_sign=False,
                     **ref_kwargs(bench.Row(tuple(sizes), batch, t_free, t_nudged)))
    xt, yt = ref.inputs(x, y)
    free_t = ref.net.free_phase(xt, t_free, bench.EPSILON)[1:]
    nudged_t = ref.net.weakly_clamped_phase(xt, yt, t_nudged, bench.EPSILON, bench.BETA)[1:]
    out["seed001/gd/free_state"] = max(rel(a.detach().cpu().numpy(), b) for a, b in zip(free_t, s_free))
    out["seed001/gd/nudged_from_zeros_state"] = max(
        rel(a.detach().cpu().numpy(), b) for a, b in zip(nudged_t, s_nz))
    return out
