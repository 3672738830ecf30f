"""The fastest plain PyTorch convolutional EP training step, for the conv rows of the throughput
suite (``benchmarks/suite.py --suite conv-cpu``) and the parity test ``tests/test_conv_bench.py``.

The energy is ep_jax's ``ConvHopfield`` (``ep_jax/energies/conv_hopfield.py``; Laborieux et al.
2021, Scellier et al. 2023), with rho the hard sigmoid on the free layers and the identity on
the input:

    E = 1/2 sum_l ||rho(s_l)||^2 - sum_conv <rho(s_{l+1}), P(conv(W_l, rho(s_l)) + b_l)>
        - sum_dense <rho(s_{l+1}), flat(rho(s_l)) W_l + b_l>,      P = max-pool (window = stride)

and the cost is either a softmax readout C = CE(softmax(flat(s_L) W_r + b_r), y) or the
squared error beta ||s_L - y||^2.

Everything is derived by hand (``torch.no_grad``, no autograd in the timed step):

* fixed-point sweeps ``s_l <- rho(h_l)`` with the field
  ``h_l = P(conv(W_{l-1}, s_{l-1}) + b_{l-1}) + conv_transpose(unpool(s_{l+1}; idx_{l+1}), W_l)``:
  the feedback is the gradient of <s_{l+1}, P(c)> in s_l, i.e. ``max_unpool2d`` of s_{l+1} with
  the pool's argmax indices (from the forward conv of the same sweep) followed by the
  transposed convolution; one ``conv2d`` and one ``conv_transpose2d`` per connection and sweep;
* the input layer's drive ``P(conv(W_0, x) + b_0)`` is loop-invariant: computed once per
  training step and shared by the three phases;
* states start at zero and every sweep ends in a hard sigmoid, so rho(s) = s is skipped;
* the nudged output layer uses ep_jax ``FixedPoint``'s majoriser:
  ``s_L <- rho((h - beta dC/ds_L + k s_L) / (1 + k))``, k = |beta| x the cost's curvature bound
  (0 for the softmax readout, whose update is then the plain ``rho(h - beta dC/ds_L)``);
* synchronous sweeps (all layers from the old state) or asynchronous ones (even layers, then
  odd layers from the updated even ones; 1-based, layer 0 the input), as ``FixedPoint``;
* symmetric EP (Laborieux et al. 2021): free phase from zeros, nudged phases at +beta and
  -beta from the free state, and

      g = 1/(2 beta) [dF/dtheta(s^+, beta) - dF/dtheta(s^-, -beta)],  F = E + beta C,

  with dE/dW_l = -mean_b conv_weight_grad(s_l, unpool(s_{l+1})) (``torch.nn.grad.conv2d_weight``),
  dE/db_l = -mean_b sum_space s_{l+1}, the input layer as the single product of x with the
  unpooled difference s_1^+ - s_1^- (its pool indices are those of the hoisted drive), and the
  readout's cross-entropy gradient 1/2 (dC/dW_r(s^+) + dC/dW_r(s^-)).

``update="autograd"`` instead takes the parameter gradient by autograd of E (and of C) once per
phase (``torch.autograd.grad``); ``compile=True`` wraps the sweep in ``torch.compile``. Layouts:
torch runs NCHW / OIHW; ``from_jax_params`` and ``grads_to_jax`` convert explicitly from and to
ep_jax's NHWC / HWIO (dense kernels' rows: ep_jax flattens maps as (H, W, C), torch as (C, H, W)).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.nn.functional as F

COSTS = ("readout", "squared_error")
ORDERS = ("synchronous", "asynchronous")
UPDATES = ("hand", "autograd")


@dataclasses.dataclass(frozen=True)
class Conv:
    """A conv connection into the next layer: ``channels`` out, ``kernel`` x ``kernel``,
    ``stride``, ``padding``, then a max-pool of window = stride ``pool`` (1: none)."""

    channels: int
    kernel: int
    stride: int = 1
    padding: int = 0
    pool: int = 1


def conv_out(size: int, c: Conv) -> int:
    return (size + 2 * c.padding - c.kernel) // c.stride + 1


def layer_shapes(in_shape, conv, dense) -> list:
    """Per layer (0 = input): ``(C, H, W)`` of maps, ``(n,)`` of dense layers; and per conv
    connection the pre-pool size ``(H', W')``."""
    h, w, c = in_shape
    shapes, prepool = [(c, h, w)], []
    for cv in conv:
        ho, wo = conv_out(h, cv), conv_out(w, cv)
        if ho < cv.pool or wo < cv.pool:
            raise ValueError(f"conv: a layer's output {ho}x{wo} is smaller than its pool {cv.pool}")
        prepool.append((ho, wo))
        h, w, c = ho // cv.pool, wo // cv.pool, cv.channels
        shapes.append((c, h, w))
    for n in dense:
        shapes.append((n,))
    return shapes, prepool


class TorchConvEP:
    """One symmetric-EP training step of a convolutional Hopfield net, in plain PyTorch.

    Args:
      in_shape: ``(H, W, C)`` of the input (as ep_jax).
      conv: ``Conv`` connections (input -> layer 1 -> ...), then ``dense`` layer sizes.
      params: ep_jax-layout parameters (numpy): ``{"layer_i": {"kernel", "bias"}}`` with HWIO
        conv kernels and (fan_in, fan_out) dense kernels, plus ``"readout"`` for the readout cost.
      cost: ``"readout"`` (softmax cross-entropy of a linear readout of the last layer) or
        ``"squared_error"`` (||s_L - onehot(y)||^2).
      t_free, t_nudged: fixed-point sweeps of the free phase and of each nudged phase.
      beta: nudging strength (> 0); the nudged phases use +beta and -beta.
      order: ``"synchronous"`` or ``"asynchronous"``.
      cost_curvature: L of the majoriser (``ep_jax.costs.cost_curvature``): 0 for the readout,
        2 for the squared error.
      lrs: per-parameter-group SGD rates ``{"layer_i": lr, "readout": lr}`` (default 0.0:
        ``step`` then leaves the parameters as they are and only computes the gradients).
      update: ``"hand"`` (derived products) or ``"autograd"`` (autograd of E and C per phase).
      compile: wrap the sweep in ``torch.compile`` (raises if that fails; see ``make``).
      channels_last: keep maps in torch's channels-last memory format (oneDNN's preferred one).
    """

    def __init__(self, in_shape, conv, dense, params, *, cost="readout", t_free=10, t_nudged=3,
                 beta=0.5, order="synchronous", cost_curvature=None, lrs=None, update="hand",
                 compile=False, channels_last=False, dtype=torch.float32, device="cpu"):
        if cost not in COSTS:
            raise ValueError(f"cost: expected one of {COSTS}, received {cost!r}")
        if order not in ORDERS:
            raise ValueError(f"order: expected one of {ORDERS}, received {order!r}")
        if update not in UPDATES:
            raise ValueError(f"update: expected one of {UPDATES}, received {update!r}")
        if not beta > 0:
            raise ValueError(f"beta: expected > 0, received {beta}")
        self.conv, self.dense = tuple(conv), tuple(dense)
        self.in_shape = tuple(in_shape)
        self.shapes, self.prepool = layer_shapes(in_shape, self.conv, self.dense)
        self.n_conv, self.L = len(self.conv), len(self.shapes) - 1
        self.cost, self.order, self.update = cost, order, update
        self.t_free, self.t_nudged, self.beta = int(t_free), int(t_nudged), float(beta)
        if cost_curvature is None:
            cost_curvature = 0.0 if cost == "readout" else 2.0
        self.kappa = abs(self.beta) * float(cost_curvature)
        self.dtype, self.device = dtype, device
        self.mf = torch.channels_last if channels_last else torch.contiguous_format
        self.W, self.b, self.Wr, self.br = self.from_jax_params(params)
        self.lrs = dict(lrs or {})
        self._sweep = self.sweep
        self.compiled = False
        if compile:
            self._sweep = torch.compile(self.sweep, dynamic=False)
            self.compiled = True

    # ---- layouts --------------------------------------------------------------------------
    def _t(self, a):
        return torch.tensor(np.array(a, np.float32), dtype=self.dtype, device=self.device)

    def _flat_rows_to_torch(self, k, l):
        """Dense kernel rows of ep_jax's (H, W, C) flattening of layer ``l`` -> torch's (C, H, W)."""
        c, h, w = self.shapes[l]
        return np.asarray(k).reshape(h, w, c, -1).transpose(2, 0, 1, 3).reshape(c * h * w, -1)

    def _flat_rows_to_jax(self, k, l):
        c, h, w = self.shapes[l]
        return np.asarray(k).reshape(c, h, w, -1).transpose(1, 2, 0, 3).reshape(c * h * w, -1)

    def from_jax_params(self, params):
        W, b = [], []
        for l in range(self.L):
            k = np.asarray(params[f"layer_{l}"]["kernel"], np.float32)
            if l < self.n_conv:  # HWIO -> OIHW
                w = self._t(k.transpose(3, 2, 0, 1)).contiguous(memory_format=self.mf)
            else:
                w = self._t(self._flat_rows_to_torch(k, l) if len(self.shapes[l]) == 3 else k)
            W.append(w)
            b.append(self._t(params[f"layer_{l}"]["bias"]))
        Wr = br = None
        if self.cost == "readout":
            k = np.asarray(params["readout"]["kernel"], np.float32)
            Wr = self._t(self._flat_rows_to_torch(k, self.L) if len(self.shapes[-1]) == 3 else k)
            br = self._t(params["readout"]["bias"])
        return W, b, Wr, br

    def grads_to_jax(self, gW, gb, gWr=None, gbr=None) -> dict:
        out = {}
        for l in range(self.L):
            g = gW[l].detach().float().cpu().numpy()
            if l < self.n_conv:
                g = g.transpose(2, 3, 1, 0)  # OIHW -> HWIO
            elif len(self.shapes[l]) == 3:
                g = self._flat_rows_to_jax(g, l)
            out[f"layer_{l}"] = {"kernel": g, "bias": gb[l].detach().float().cpu().numpy()}
        if gWr is not None:
            g = gWr.detach().float().cpu().numpy()
            if len(self.shapes[-1]) == 3:
                g = self._flat_rows_to_jax(g, self.L)
            out["readout"] = {"kernel": g, "bias": gbr.detach().float().cpu().numpy()}
        return out

    def inputs(self, x, y):
        """NHWC numpy ``x`` -> an NCHW tensor; labels -> int64."""
        xt = self._t(np.asarray(x, np.float32).transpose(0, 3, 1, 2)).contiguous(memory_format=self.mf)
        return xt, torch.as_tensor(np.asarray(y, np.int64), device=self.device)

    @staticmethod
    def state_to_jax(s) -> list:
        return [v.detach().float().cpu().numpy().transpose(0, 2, 3, 1) if v.dim() == 4
                else v.detach().float().cpu().numpy() for v in s]

    # ---- the pieces of a sweep ---------------------------------------------------------------
    def _conv_fwd(self, l, s_l):
        """P(conv(W_l, s_l) + b_l) and the pool's argmax indices (None without a pool)."""
        cv = self.conv[l]
        c = F.conv2d(s_l, self.W[l], self.b[l], stride=cv.stride, padding=cv.padding)
        if cv.pool == 1:
            return c, None
        return F.max_pool2d(c, cv.pool, return_indices=True)

    def _unpool(self, l, s_up, idx):
        """The max-pool's transpose: s_{l+1} routed to the argmax of each window; ``idx="tie"``
        (every window of the pre-pool map is constant: its input is exactly zero) spreads it
        evenly over the window, the subgradient ep_jax's reshape + max pool takes at ties."""
        cv = self.conv[l]
        if idx is None:
            return s_up
        if isinstance(idx, str):
            g = F.interpolate(s_up, scale_factor=cv.pool, mode="nearest") / cv.pool ** 2
            ph, pw = self.prepool[l]
            return F.pad(g, (0, pw - g.shape[-1], 0, ph - g.shape[-2]))
        return F.max_unpool2d(s_up, idx, cv.pool, output_size=self.prepool[l])

    def _conv_back(self, l, s_up, idx):
        """d/ds_l <s_{l+1}, P(conv(W_l, s_l) + b_l)> = conv^T(W_l, unpool(s_{l+1}; idx))."""
        cv = self.conv[l]
        g = self._unpool(l, s_up, idx)
        _, h, w = self.shapes[l]
        ph, pw = self.prepool[l]
        op = (h + 2 * cv.padding - ((ph - 1) * cv.stride + cv.kernel),
              w + 2 * cv.padding - ((pw - 1) * cv.stride + cv.kernel))
        return F.conv_transpose2d(g, self.W[l], stride=cv.stride, padding=cv.padding,
                                  output_padding=op)

    def _flat(self, l, s_l):
        return s_l.reshape(s_l.shape[0], -1) if len(self.shapes[l]) == 3 else s_l

    def _dense_fwd(self, l, s_l):
        return torch.addmm(self.b[l], self._flat(l, s_l), self.W[l])

    def _dense_back(self, l, s_up):
        g = s_up @ self.W[l].t()
        return g.reshape(s_up.shape[0], *self.shapes[l]) if len(self.shapes[l]) == 3 else g

    def _fwd(self, l, s_l, zero=False):
        """Connection l's bottom-up input and pool indices; ``zero``: s_l is exactly zero (the
        first sweep from the zero state), every pool window then ties (see ``_unpool``)."""
        if l >= self.n_conv:
            return self._dense_fwd(l, s_l), None
        p, idx = self._conv_fwd(l, s_l)
        return p, ("tie" if zero and idx is not None else idx)

    def _back(self, l, s_up, idx):
        return self._conv_back(l, s_up, idx) if l < self.n_conv else self._dense_back(l, s_up)

    def _cost_grad(self, s_L, y):
        """dC/ds_L per example: readout (softmax(z) - onehot(y)) W_r^T; squared error 2 (s - y)."""
        if self.cost == "squared_error":
            return 2.0 * (s_L - y)
        z = torch.addmm(self.br, s_L.reshape(s_L.shape[0], -1), self.Wr)
        p = torch.softmax(z, dim=1)
        p[torch.arange(p.shape[0], device=p.device), y] -= 1.0
        return (p @ self.Wr.t()).reshape(s_L.shape)

    def _update_layers(self, s, drive, layers, y, beta, known=None, zero=()):
        """s_l <- rho(h_l) for the 1-based ``layers``, all from ``s``; ``known``: forward
        products already computed from the same inputs (reused, not redone); ``zero``: layers
        whose state is exactly zero. Returns the new state and the forward products
        ``{connection k: (P(conv(W_k, s_k) + b_k), idx)}``."""
        L = self.L
        need = sorted({l - 1 for l in layers if l >= 2} | {l for l in layers if l < L})
        fwd = {k: (known[k] if known and k in known else self._fwd(k, s[k - 1], k in zero))
               for k in need}
        new = list(s)
        for l in layers:
            if l == 1:  # the shared drive: never written to
                h = drive.clone() if l == L else drive + self._back(l, s[l], fwd[l][1])
            else:  # a fresh forward product, used once as a field: updated in place
                h = fwd[l - 1][0]
                if l < L:
                    h = h.add_(self._back(l, s[l], fwd[l][1]))
            if l == L and y is not None:
                out = s[L - 1]
                h = (h - beta * self._cost_grad(out, y) + self.kappa * out) / (1.0 + self.kappa)
            new[l - 1] = self.rho(h)
        return new, fwd

    @staticmethod
    def rho(h):
        """The hard sigmoid of the free layers (in place: ``h`` is a fresh field)."""
        return h.clamp_(0.0, 1.0)

    def sweep(self, s, drive, y=None, beta=0.0, from_zeros=False):
        """One fixed-point sweep (``self.order``); ``y``: the nudged phase's targets;
        ``from_zeros``: ``s`` is the zero state (the free phase's first sweep)."""
        L = self.L
        zero = tuple(range(1, L + 1)) if from_zeros else ()
        if self.order == "synchronous":
            return self._update_layers(s, drive, range(1, L + 1), y, beta, zero=zero)[0]
        s, fwd = self._update_layers(s, drive, range(2, L + 1, 2), y, beta, zero=zero)
        # the products out of odd layers read states the first half did not change: reuse them
        odd = {k: v for k, v in fwd.items() if k % 2 == 1}
        zero = tuple(l for l in zero if l % 2 == 1)
        return self._update_layers(s, drive, range(1, L + 1, 2), y, beta, odd, zero)[0]

    def input_drive(self, x):
        """P(conv(W_0, x) + b_0) (input activation: identity) and its pool indices: once per step."""
        return self._fwd(0, x)

    def zeros(self, x):
        B = x.shape[0]
        return [torch.zeros(B, *shp, dtype=self.dtype, device=self.device).contiguous(
                    memory_format=self.mf if len(shp) == 3 else torch.contiguous_format)
                for shp in self.shapes[1:]]

    def relax(self, s, drive, steps, y=None, beta=0.0, from_zeros=False):
        for i in range(steps):
            if i == 0 and from_zeros:  # eager: its tie handling runs once per step
                s = self.sweep(s, drive, y, beta, True)
            else:
                s = self._sweep(s, drive, y, beta)
        return s

    def _target(self, y):
        if self.cost == "readout":
            return y
        n = self.shapes[-1][0]
        return F.one_hot(y, n).to(self.dtype)

    @torch.no_grad()
    def phases(self, x, y):
        """(free, +beta nudged, -beta nudged) states and the input drive with its indices."""
        drive, idx0 = self.input_drive(x)
        yt = self._target(y)
        s0 = self.relax(self.zeros(x), drive, self.t_free, from_zeros=True)
        sp = self.relax(s0, drive, self.t_nudged, yt, self.beta)
        sm = self.relax(s0, drive, self.t_nudged, yt, -self.beta)
        return s0, sp, sm, (drive, idx0)

    # ---- the parameter gradient -----------------------------------------------------------------
    def _readout_grads(self, s_L, y):
        """Batch-mean dC/dW_r, dC/db_r of the readout's cross-entropy at ``s_L``."""
        B = s_L.shape[0]
        f = s_L.reshape(B, -1)
        p = torch.softmax(torch.addmm(self.br, f, self.Wr), dim=1)
        p[torch.arange(B, device=p.device), y] -= 1.0
        return f.t() @ p / B, p.sum(0) / B

    def grads_hand(self, x, y, sp, sm, idx0):
        """g = 1/(2 beta) [dF/dtheta(s^+, beta) - dF/dtheta(s^-, -beta)], batch means, by hand."""
        c = -0.5 / (self.beta * x.shape[0])  # dE/dtheta = -(coupling grad) / batch
        gW, gb = [], []
        for l in range(self.L):
            if l == 0:  # one product: the pool indices of the (fixed) input drive are shared
                d = sp[0] - sm[0]
                if l < self.n_conv:
                    gW.append(c * self._conv_wgrad(0, x, d, idx0))
                else:
                    gW.append(c * (self._flat(0, x).t() @ d))
                gb.append(c * self._bias_sum(d))
                continue
            gp = self._wgrad(l, sp[l - 1], sp[l])
            gm = self._wgrad(l, sm[l - 1], sm[l])
            gW.append(c * (gp - gm))
            gb.append(c * (self._bias_sum(sp[l]) - self._bias_sum(sm[l])))
        if self.cost != "readout":
            return gW, gb, None, None
        wp, bp = self._readout_grads(sp[-1], y)
        wm, bm = self._readout_grads(sm[-1], y)
        return gW, gb, 0.5 * (wp + wm), 0.5 * (bp + bm)

    @staticmethod
    def _bias_sum(s_up):
        return s_up.sum(dim=(0, 2, 3)) if s_up.dim() == 4 else s_up.sum(0)

    def _conv_wgrad(self, l, s_l, s_up, idx):
        cv = self.conv[l]
        g = self._unpool(l, s_up, idx)
        return torch.nn.grad.conv2d_weight(s_l, self.W[l].shape, g, stride=cv.stride,
                                           padding=cv.padding)

    def _wgrad(self, l, s_l, s_up):
        """sum_b d/dW_l <s_{l+1}, P(conv(W_l, s_l) + b_l)> at (s_l, s_{l+1})."""
        if l < self.n_conv:
            _, idx = self._conv_fwd(l, s_l)  # the argmax at this state
            return self._conv_wgrad(l, s_l, s_up, idx)
        return self._flat(l, s_l).t() @ s_up

    def energy(self, W, b, s, x):
        """E(s) summed over the batch, differentiable in ``W``, ``b`` and ``s`` (autograd path
        and the self-check of the hand-derived fields)."""
        r = [x] + [torch.clamp(v, 0.0, 1.0) for v in s]
        e = 0.5 * sum((v * v).sum() for v in r[1:])
        for l in range(self.L):
            if l < self.n_conv:
                cv = self.conv[l]
                z = F.conv2d(r[l], W[l], b[l], stride=cv.stride, padding=cv.padding)
                if cv.pool > 1:
                    z = F.max_pool2d(z, cv.pool)
            else:
                z = torch.addmm(b[l], self._flat(l, r[l]), W[l])
            e = e - (r[l + 1] * z).sum()
        return e

    def readout_cost(self, Wr, br, s_L, y):
        """Batch-mean softmax cross-entropy of the readout (autograd path)."""
        z = torch.addmm(br, s_L.reshape(s_L.shape[0], -1), Wr)
        return F.cross_entropy(z, y)

    def grads_autograd(self, x, y, sp, sm):
        """The same gradient by autograd of E (and C) once per nudged phase."""
        B = x.shape[0]
        W = [w.detach().requires_grad_(True) for w in self.W]
        b = [v.detach().requires_grad_(True) for v in self.b]
        with torch.enable_grad():
            phi = (self.energy(W, b, sp, x) - self.energy(W, b, sm, x)) * (0.5 / (self.beta * B))
            g = torch.autograd.grad(phi, W + b)
        gW, gb = list(g[:self.L]), list(g[self.L:])
        if self.cost != "readout":
            return gW, gb, None, None
        Wr, br = self.Wr.detach().requires_grad_(True), self.br.detach().requires_grad_(True)
        with torch.enable_grad():
            c = 0.5 * (self.readout_cost(Wr, br, sp[-1], y) + self.readout_cost(Wr, br, sm[-1], y))
            gWr, gbr = torch.autograd.grad(c, (Wr, br))
        return gW, gb, gWr, gbr

    @torch.no_grad()
    def gradients(self, x, y):
        """``(states, grads)``: the three phases' states and the symmetric-EP gradient (torch
        layouts: lists gW, gb and the readout's gWr, gbr)."""
        s0, sp, sm, (_, idx0) = self.phases(x, y)
        if self.update == "hand":
            g = self.grads_hand(x, y, sp, sm, idx0)
        else:
            g = self.grads_autograd(x, y, sp, sm)
        return (s0, sp, sm), g

    @torch.no_grad()
    def step(self, x, y):
        """One training step: the phases, the gradient, plain SGD with ``lrs`` in place."""
        _, (gW, gb, gWr, gbr) = self.gradients(x, y)
        for l in range(self.L):
            a = self.lrs.get(f"layer_{l}", 0.0)
            if a:
                self.W[l].add_(gW[l], alpha=-a)
                self.b[l].add_(gb[l], alpha=-a)
        a = self.lrs.get("readout", 0.0)
        if a and gWr is not None:
            self.Wr.add_(gWr, alpha=-a)
            self.br.add_(gbr, alpha=-a)

    def sync(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()


def make(*args, compile=False, **kwargs):
    """``(TorchConvEP, None)``, or with ``compile=True`` and a failing ``torch.compile`` (at
    construction or on a first step run by the caller) ``(eager ref, reason)``."""
    try:
        return TorchConvEP(*args, compile=compile, **kwargs), None
    except Exception as e:  # noqa: BLE001 -- torch.compile may be unavailable on this machine
        if not compile:
            raise
        return TorchConvEP(*args, compile=False, **kwargs), f"{type(e).__name__}: {e}"


def set_threads(n: int) -> int:
    """torch's intra-op threads = ``n`` (the cores JAX uses); returns what torch reports."""
    torch.set_num_threads(max(1, int(n)))
    return torch.get_num_threads()


def conv_layers(spec) -> tuple:
    """``Conv`` connections from ``(channels, kernel, stride, padding, pool)`` tuples."""
    return tuple(Conv(*c) for c in spec)


# ------------------------------------------------------------------------------------------
# Agreement with the JAX step (run by benchmarks/suite.py before timing, and by the tests)
# ------------------------------------------------------------------------------------------
def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def compare_with_jax(in_shape=(8, 8, 3), conv=((4, 3, 1, 1, 2), (8, 3, 1, 0, 2)), dense=(),
                     readout_classes=10, batch=4, t_free=6, t_nudged=3, order="synchronous",
                     updates=UPDATES, seed=0) -> dict:
    """One symmetric-EP gradient from the same parameters and batch in ep_jax (ConvHopfield,
    FixedPoint, ``ep-symmetric``; NHWC / HWIO) and here (NCHW / OIHW, converted explicitly),
    for each of the torch ``updates``: ``{"<update>/<what>": worst relative difference}`` of
    the free, +beta and -beta states and of the gradient (float32). ``readout_classes=0``
    uses the squared error on the last (dense) layer."""
    import jax
    import jax.numpy as jnp

    from ep_jax.costs import SoftmaxReadout, cost_curvature, squared_error
    from ep_jax.energies import conv_hopfield
    from ep_jax.rules import Phases, get_rule
    from ep_jax.solvers import FixedPoint

    energy = conv_hopfield(in_shape, conv, dense=dense, readout_classes=readout_classes)
    params = energy.init_params(jax.random.PRNGKey(seed + 1))
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, (batch,) + tuple(in_shape)).astype(np.float32)
    y = rng.integers(0, readout_classes or dense[-1], batch)
    cost = SoftmaxReadout(head="readout") if readout_classes else squared_error
    phases = Phases(0.5, free=FixedPoint(t_free, order=order),
                    nudged=FixedPoint(t_nudged, order=order), cost=cost)
    rule = get_rule("ep-symmetric")
    grads, res = jax.jit(lambda p, x_, y_: rule(energy, p, x_, y_, "zeros", phases=phases))(
        params, jnp.asarray(x), jnp.asarray(y, jnp.int32))
    out = {}
    for update in updates:
        ref = TorchConvEP(in_shape, conv_layers(conv), dense, jax.tree.map(np.asarray, params),
                          cost="readout" if readout_classes else "squared_error", t_free=t_free,
                          t_nudged=t_nudged, beta=0.5, order=order, update=update,
                          cost_curvature=cost_curvature(cost))
        (s0, sp, sm), g = ref.gradients(*ref.inputs(x, y))
        gt = ref.grads_to_jax(*g)
        for name, st, sj in (("free_state", s0, res.free_state), ("plus_state", sp, res.nudged_state),
                             ("minus_state", sm, res.second_state)):
            out[f"{update}/{name}"] = max(_rel(a, b) for a, b in zip(ref.state_to_jax(st), sj))
        out[f"{update}/gradient"] = max(_rel(gt[k][leaf], grads[k][leaf])
                                        for k in grads for leaf in grads[k])
    return out


CHECKS = {  # (order, cost) -> compare_with_jax keywords
    ("synchronous", "readout"): {},
    ("asynchronous", "squared_error"): {"order": "asynchronous", "dense": (10,), "readout_classes": 0},
}


def check_conv_references(quick: bool = False) -> dict:
    """``compare_with_jax`` for both sweep orders, both costs (the readout of the last map; the
    squared error of a dense output layer) and both update paths (``quick``: the synchronous
    readout net only): ``{"order/cost/update/what": relative difference}``."""
    out = {}
    for (order, cost), kw in CHECKS.items():
        if quick and order != "synchronous":
            continue
        for k, v in compare_with_jax(**kw).items():
            out[f"{order}/{cost}/{k}"] = v
    return out
