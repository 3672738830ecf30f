"""PyTorch reference port of seed 000 (``000_e0e19c9d96180d01.txt``).

Seed 000 is a PyTorch notebook of four energy-based learning schemes behind one
``Network`` class with pluggable negative / positive phases:

=============  ===============  ==================  ======================
scheme         negative phase   positive phase      relaxation of pos.
=============  ===============  ==================  ======================
CHL            ``chl_neg``      ``chl_pos``         ``relax(reverse=True)``
EP             ``ep_neg``       ``ep_pos``          ``relax`` (forward)
first step     (none given)     ``first_step_pos``  none
PC-Nudge       ``pcnudge_neg``  ``pcnudge_pos``     ``relax`` (forward)
=============  ===============  ==================  ======================

This module reproduces the notebook's code line by line (same math, same
operation order, same quirks) so that it can serve as the ground truth of the
parity tests (``tests/test_seed000.py``).

Dropped (not part of the algorithms / cannot run headless): the ipywidgets
sliders and ``display`` cell, ``plot_weights_verbose`` (networkx/matplotlib
graph) and the curves plot in ``Network.train`` (``plot=True`` raises here).
``run_xor_trial`` is kept (without widgets; ``plot`` must be False).

Deviations from the seed -- test hooks only, marked ``# HOOK``:

1. ``Network.from_params(external_world, hyper, neg_phase, pos_phase,
   weights, biases, persistent=None, activation=torch.sigmoid, relax_fn=None,
   dtype=torch.float32)``: runs the seed constructor inside
   ``torch.random.fork_rng`` (the global RNG is not consumed) and installs the
   given numpy arrays.
2. ``Network.set_params(weights, biases, dtype=torch.float32)``:
   ``weights[i]`` of shape ``(n_i, n_{i+1})`` (the seed's layout, = ep_jax's
   ``kernel``); ``biases`` either in the seed's layout (``L + 1`` arrays, one
   per layer *including the input*) or in ep_jax's layout (``L`` arrays, the
   bias of free layer ``l`` = ep_jax ``layer_{l-1}/bias``; the seed's input
   bias ``biases[0]`` is then left at zero).
3. ``Network.set_persistent(states, dtype=torch.float32)``: the persistent
   per-example states, one ``(size_dataset, n_l)`` array per free layer.
4. The positive phases store the exact tensors they add to the parameters in
   ``network.last_updates = {"weights": [...], "biases": [...]}``
   (``biases[i]`` is the increment of the seed's ``biases[i + 1]``).  The
   increments are computed by the seed's expressions and then added in place
   exactly as in the seed, so the numbers are unchanged.
5. ``ExternalWorld(x, y, dtype=torch.float32)``: dtype of ``x`` (the seed:
   float32), and ``y_onehot`` is cast to ``x``'s dtype (the seed: ``.float()``,
   the same in float32), so float64 runs are possible.

Quirks of the seed, preserved on purpose (also marked ``# QUIRK``):

* ``hyper["activation"]`` is never read: the constructor takes ``activation``
  as a keyword (default ``torch.sigmoid``) and ``run_xor_trial`` does not pass
  it, so the XOR experiment runs with the *sigmoid*, not the ReLU it lists.
* ``energy_fn=None``: ``Network.energy`` returns ``torch.tensor(0.)``, so
  ``measure`` always reports E = 0.  No scheme minimises an energy; the
  dynamics are the explicit sweeps below.
* ``biases`` has one entry per layer *including the input* (``biases[0]``,
  size ``n_in``); ``biases[0]`` is never used and never updated (it is only
  drawn by the plot).  ``biases[k]`` (k >= 1) is the bias of layer k, i.e.
  ep_jax's ``layer_{k-1}/bias``.
* ``normalize(h) = (h - min_b h) / (max_b h - min_b h + 1e-5) - mean_b h``:
  per unit over the *batch* (examples interact), and it subtracts the mean of
  the raw ``h``, not of the rescaled values.  For a unit that is constant over
  the batch it returns ``-h``.  ``Network.normalize`` and the module-level
  ``normalize`` are the same function.
* Negative phases (``chl_neg``/``ep_neg``/``pcnudge_neg``): bottom-up
  (Gauss-Seidel) sweeps; hidden layer k reads the *new* layer k-1 and the
  *old* layer k+1; its own old value is not used (except by PC-Nudge).  The
  output layer is the plain feed-forward ``act(s_{L-1} W + b)`` of the new top
  hidden layer, not normalised.  EP's and PC-Nudge's "free" phase is already
  nudged: ``out -= beta * (out - y_onehot)``.
* PC-Nudge: ``error = layers[k] - pred`` and ``normalize(pred + error)``:
  the prediction cancels (up to rounding), so hidden layers are just the
  re-normalised old states; the input reaches the hidden layers only through
  float rounding.  From zero states the hidden layers stay exactly 0.
* ``relax`` (positive phases of EP / PC-Nudge, forward): the same hidden
  sweep as ``chl_neg``, and the output is *clamped* to ``y_onehot`` (after
  the sweep, so in the first sweep the top hidden layer still reads the old,
  free output).  ``clamped`` (its last argument) is never used.
* ``relax(reverse=True)`` (CHL's positive phase): top-down; layer k reads the
  just-updated layer k+1 and ``network.layers[k-1]`` -- the *free* state,
  not the relaxing one -- so every sweep computes the same thing: any number
  of sweeps >= 1 gives the result of one.
* Updates (all positive phases): the delta rule
  ``W_i += alpha_i * layers_i^T (clamped_{i+1} - free_{i+1}) / batch_size``,
  ``b_{i+1} += alpha_i * mean_b(clamped_{i+1} - free_{i+1})`` with the *free*
  presynaptic layer (``layers_0 = x``), not CHL's product difference;
  ``batch_size`` is ``hyper["batch_size"]``, not the batch's size.
* ``first_step_pos``: ``delta = act(out - beta (act(out) - y)) - act(out)``
  with ``out = layers[-2] W_{L-1} + b_L`` is the *output's* delta (shape
  ``(B, n_out)``) and is added to *every* layer: ``biases[i+1] += ... mean(0)``
  and ``weights[i] += layers_i^T delta / B``.  This only type-checks when
  every free layer has the output's size (or when ``n_out == 1``, which torch
  broadcasts over every unit); otherwise torch raises a ``RuntimeError``
  *after* having updated the layers before the failing one.  ``steps`` is
  ignored.  The seed pairs it with no negative phase; ``chl_neg`` (the
  un-nudged free sweep) makes ``act(out)`` equal to the free output.
* ``measure``: error = not (argmax == y and top-1 - top-2 > 1e-3) via
  ``topk(2)`` (needs ``n_out >= 2``); it reads ``network.layers``, i.e. the
  persistent states of the last mini-batch after its negative phase.
* ``update_mini_batch_index`` / ``network.layers`` are *views* of the
  persistent tensors; the positive phases never write the persistent states.
* ``forward`` starts from the first ``B`` rows of the persistent states
  (whatever ``self.index`` is) but the negative phase writes back at rows
  ``self.index * batch_size`` (test-time forward overwrites training
  particles).  ``backward`` passes ``clamped`` as ``relax``'s positional
  ``reverse`` argument (a truthy list: always the top-down sweep).
* ``train`` returns the mean of the last 4 epochs' error, in percent.
* ``run_xor_trial``: the two "bias" sliders ``b0, b1`` are written into
  ``weights[1]`` (shape (2, 1)); no bias is set, ``weights[2]`` keeps its
  random init.
"""

import numpy as np
import torch
import torch.nn.functional as F


class Network:
    def __init__(self, name, external_world, hyper,
                 neg_phase, pos_phase,
                 activation=torch.sigmoid, energy_fn=None, relax_fn=None):
        self.external_world = external_world
        self.hyper = hyper
        sizes = [external_world.x.shape[1]] + hyper["hidden_sizes"] + [hyper.get("output_size", len(torch.unique(external_world.y)))]
        # QUIRK: one bias per layer including the input; biases[0] is never used.
        self.biases = [torch.zeros(s) for s in sizes]
        self.weights = [torch.empty((a, b)).uniform_(-np.sqrt(6/(a+b)), np.sqrt(6/(a+b))) for a, b in zip(sizes[:-1], sizes[1:])]
        self.persistent = [torch.zeros(external_world.size_dataset, s) for s in sizes[1:]]
        self.batch_size = hyper["batch_size"]
        self.index = 0
        # QUIRK: hyper["activation"] is never read; the keyword default is sigmoid.
        self.activation = activation
        self.energy_fn = energy_fn
        self.neg_phase = neg_phase
        self.pos_phase = pos_phase
        self.relax_fn = relax_fn
        if("beta" in hyper):
            self.beta = hyper["beta"]

    # ------------------------------------------------------------------
    # HOOKS (not in the seed): deterministic parameters and states.
    # ------------------------------------------------------------------
    @classmethod
    def from_params(cls, external_world, hyper, neg_phase, pos_phase, weights, biases,
                    persistent=None, activation=torch.sigmoid, relax_fn=None,
                    dtype=torch.float32, name="reference"):
        """The seed constructor (under ``fork_rng``) followed by ``set_params`` /
        ``set_persistent``."""
        with torch.random.fork_rng(devices=[]):
            net = cls(name, external_world, hyper, neg_phase, pos_phase,
                      activation=activation, relax_fn=relax_fn)
        net.set_params(weights, biases, dtype=dtype)
        if persistent is not None:
            net.set_persistent(persistent, dtype=dtype)
        elif dtype != torch.float32:
            net.persistent = [p.to(dtype) for p in net.persistent]
        return net

    def set_params(self, weights, biases, dtype=torch.float32):
        """``weights[i]``: (n_i, n_{i+1}); ``biases``: L + 1 arrays (seed layout,
        biases[0] = the unused input bias) or L arrays (ep_jax layout: the bias of
        free layers 1..L; the seed's biases[0] is then zeros)."""
        sizes = [self.weights[0].shape[0]] + [w.shape[1] for w in self.weights]
        if len(weights) != len(self.weights):
            raise ValueError(f"expected {len(self.weights)} weight arrays, received {len(weights)}")
        new_w = []
        for i, w in enumerate(weights):
            w = np.asarray(w)
            if w.shape != (sizes[i], sizes[i + 1]):
                raise ValueError(f"weights[{i}]: expected shape {(sizes[i], sizes[i + 1])}, received {w.shape}")
            new_w.append(torch.tensor(w, dtype=dtype))
        if len(biases) == len(sizes) - 1:
            biases = [np.zeros(sizes[0])] + list(biases)
        if len(biases) != len(sizes):
            raise ValueError(f"expected {len(sizes)} (seed layout) or {len(sizes) - 1} bias arrays, "
                             f"received {len(biases)}")
        new_b = []
        for k, b in enumerate(biases):
            b = np.asarray(b)
            if b.shape != (sizes[k],):
                raise ValueError(f"biases[{k}]: expected shape {(sizes[k],)}, received {b.shape}")
            new_b.append(torch.tensor(b, dtype=dtype))
        self.weights, self.biases = new_w, new_b
        return self

    def set_persistent(self, states, dtype=torch.float32):
        """The persistent states, one (size_dataset, n_l) array per free layer."""
        if len(states) != len(self.persistent):
            raise ValueError(f"expected {len(self.persistent)} state arrays, received {len(states)}")
        new = []
        for l, (p, s) in enumerate(zip(self.persistent, states), start=1):
            s = np.asarray(s)
            if s.shape != tuple(p.shape):
                raise ValueError(f"layer {l}: expected shape {tuple(p.shape)}, received {s.shape}")
            new.append(torch.tensor(s, dtype=dtype))
        self.persistent = new
        return self

    # ------------------------------------------------------------------
    # Seed methods.
    # ------------------------------------------------------------------
    def update_mini_batch_index(self, i):
        b = self.batch_size
        self.index = i
        self.x = self.external_world.x[i*b:(i+1)*b]
        self.y = self.external_world.y[i*b:(i+1)*b]
        # HOOK: ``.to(self.x.dtype)`` instead of the seed's ``.float()`` (the same in float32;
        # lets float64 runs multiply y_onehot by float64 weights in CHL's backward sweep).
        self.y_onehot = F.one_hot(self.y, num_classes=self.weights[-1].shape[1]).to(self.x.dtype)
        # QUIRK: views of the persistent tensors.
        self.layers = [self.x] + [p[i*b:(i+1)*b] for p in self.persistent]

    def normalize(self, x):
        # QUIRK: per unit over the batch; subtracts the mean of the raw x.
        return (x - x.min(0)[0]) / (x.max(0)[0] - x.min(0)[0] + 1e-5) - x.mean(0)

    def energy(self, layers):
        # QUIRK: energy_fn is None in every scheme of the seed -> E = 0.
        return self.energy_fn(layers, self.weights, self.biases) if self.energy_fn else torch.tensor(0.)

    def cost(self, layers):
        return ((layers[-1] - self.y_onehot) ** 2).sum(1)

    def measure(self):
        E = self.energy(self.layers).mean().item()
        C = self.cost(self.layers).mean().item()
        # QUIRK: top-2 margin error; topk(2) needs n_out >= 2.
        top_vals, top_idxs = self.layers[-1].topk(2, dim=1)
        err = (~((top_idxs[:,0] == self.y) & (top_vals[:,0] - top_vals[:,1] > 1e-3))).float().mean().item()
        return E, C, err

    def forward(self, batch, iters):
        self.x, self.y = batch
        self.y_onehot = F.one_hot(self.y, num_classes=self.weights[-1].shape[1]).to(self.x.dtype)  # HOOK (as above)
        # QUIRK: first B rows, but the negative phase writes at self.index * batch_size.
        self.layers = [self.x] + [p[:self.x.size(0)] for p in self.persistent]
        self.neg_phase(self, iters)
        return self.measure()

    def backward(self, output, iters=10, clamped=[-1]):  # noqa: B006 (the seed's default)
        layers = self.layers.copy(); layers[-1] = output
        # QUIRK: ``clamped`` lands in relax's positional ``reverse`` argument.
        layers = self.relax_fn(self, layers, iters, clamped) if self.relax_fn else layers
        s, e = self.index * self.batch_size, (self.index + 1) * self.batch_size
        for i, l in enumerate(layers[1:]):
            self.persistent[i][s:e] = l.detach()
        self.layers = [self.x] + [p[s:e] for p in self.persistent]
        return layers[0]

    def train(self, plot=False):
        if plot:
            raise NotImplementedError("plotting is not part of the reference port")
        hist = {"Energy": [], "Cost": [], "Error": []}
        EPOCHS = self.hyper["n_epochs"]
        ALPHAS = self.hyper["alphas"]
        for epoch in range(EPOCHS):
            for i in range(self.external_world.size_dataset // self.batch_size):
                self.update_mini_batch_index(i)
                self.neg_phase(self, self.hyper["n_it_neg"])
                self.pos_phase(self, self.hyper["n_it_pos"], *ALPHAS)
            E, C, err = self.measure()
            hist["Energy"].append(E)
            hist["Cost"].append(C)
            hist["Error"].append(err * 100)
        self.hist = hist  # HOOK: keep the history
        # QUIRK: mean of the last 4 epochs, in percent.
        return np.mean(hist["Error"][-4:])


# ---------- Activation / Normalization ----------
def normalize(x):
    return (x - x.min(0)[0]) / (x.max(0)[0] - x.min(0)[0] + 1e-5) - x.mean(0)


# ---------- Relaxation Dynamics (for CHL/EP/PC) ----------
def relax(network, layers, iters, reverse=False, clamped=None):
    # QUIRK: ``clamped`` is never used.
    for _ in range(iters):
        new = [layers[-1]] if reverse else [layers[0]]
        rng = range(len(layers)-2, 0, -1) if reverse else range(1, len(layers)-1)
        for k in rng:
            # QUIRK (reverse): the lower layer is network.layers[k-1], the free state,
            # so every reverse sweep computes the same thing.
            a = network.layers[k-1] if reverse else new[-1]
            b = new[-1] if reverse else layers[k+1]
            w1, w2 = network.weights[k - 1], network.weights[k]
            try:
                h = network.activation(a @ w1 + b @ w2.T + network.biases[k])
            except RuntimeError as e:
                if 'mat1 and mat2 shapes cannot be multiplied' in str(e):
                    raise RuntimeError(f"Shape mismatch at layer {k}: a={a.shape}, w1={w1.shape}, b={b.shape}, w2.T={w2.T.shape}") from e
                else:
                    raise
            new.append(normalize(h))
        # QUIRK (forward): the output is clamped to y after the sweep.
        new.append(network.layers[0] if reverse else network.y_onehot)
        layers = list(reversed(new)) if reverse else [network.x] + new[1:]
    return layers


# ---------- CHL ----------
def chl_neg(network, steps):
    layers = [x.clone() for x in network.layers]
    for _ in range(steps):
        new = [layers[0]]
        for k in range(1, len(layers) - 1):
            h = network.activation(
                new[-1] @ network.weights[k - 1] +
                layers[k + 1] @ network.weights[k].T +
                network.biases[k]
            )
            new.append(network.normalize(h))
        out = network.activation(new[-1] @ network.weights[-1] + network.biases[-1])
        new.append(out)
        layers = [layers[0]] + new[1:]
    s, e = network.index * network.batch_size, (network.index + 1) * network.batch_size
    for i, l in enumerate(layers[1:]):
        network.persistent[i][s:e] = l.detach()
    network.layers = [network.x] + [p[s:e] for p in network.persistent]


def chl_pos(network, steps, *alphas):
    clamped = relax(network, network.layers[:-1] + [network.y_onehot], steps, reverse=True)
    network.last_clamped = clamped  # HOOK
    network.last_updates = {"weights": [], "biases": []}  # HOOK
    for i, delta in enumerate([c - o for c, o in zip(clamped[1:], network.layers[1:])]):
        if i + 1 < len(network.biases):
            db = alphas[i] * delta.mean(0)  # HOOK: named increment (seed: in the += line)
            network.biases[i + 1] += db
            network.last_updates["biases"].append(db)  # HOOK
        if i < len(network.weights):
            # QUIRK: the free presynaptic layer; divided by hyper batch_size.
            dw = alphas[i] * network.layers[i].T @ delta / network.batch_size
            network.weights[i] += dw
            network.last_updates["weights"].append(dw)  # HOOK


# ---------- Equilibrium Propagation (EP) ----------
def ep_neg(network, steps):
    layers = [x.clone() for x in network.layers]
    for _ in range(steps):
        new = [layers[0]]
        for k in range(1, len(layers) - 1):
            h = network.activation(
                new[-1] @ network.weights[k - 1] +
                layers[k + 1] @ network.weights[k].T +
                network.biases[k]
            )
            new.append(network.normalize(h))
        out = network.activation(new[-1] @ network.weights[-1] + network.biases[-1])
        # QUIRK: the "free" phase is nudged.
        out -= network.beta * (out - network.y_onehot)
        new.append(out)
        layers = [layers[0]] + new[1:]
    s, e = network.index * network.batch_size, (network.index + 1) * network.batch_size
    for i, l in enumerate(layers[1:]):
        network.persistent[i][s:e] = l.detach()
    network.layers = [network.x] + [p[s:e] for p in network.persistent]


def ep_pos(network, steps, *alphas):
    clamped = relax(network, network.layers, steps)
    network.last_clamped = clamped  # HOOK
    network.last_updates = {"weights": [], "biases": []}  # HOOK
    for i, delta in enumerate([c - o for c, o in zip(clamped[1:], network.layers[1:])]):
        if i + 1 < len(network.biases):
            db = alphas[i] * delta.mean(0)  # HOOK: named increment (seed: in the += line)
            network.biases[i + 1] += db
            network.last_updates["biases"].append(db)  # HOOK
        if i < len(network.weights):
            # QUIRK: the free presynaptic layer; divided by hyper batch_size.
            dw = alphas[i] * network.layers[i].T @ delta / network.batch_size
            network.weights[i] += dw
            network.last_updates["weights"].append(dw)  # HOOK


# ---------- First-Step Gradient Approximation ----------
def first_step_pos(network, steps, *alphas):
    # QUIRK: ``steps`` is ignored.
    layers = [x.clone() for x in network.layers]
    out = layers[-2] @ network.weights[-1] + network.biases[-1]
    nudged = network.activation(out - network.beta * (network.activation(out) - network.y_onehot))
    network.last_nudged_output = nudged  # HOOK
    delta = nudged - network.activation(out)
    network.last_updates = {"weights": [], "biases": []}  # HOOK
    for i in range(len(network.weights)):
        # QUIRK: the output's delta (B, n_out) is added to every layer: only
        # type-checks when n_{i+1} == n_out (or n_out == 1, broadcast).
        if i + 1 < len(network.biases):
            db = alphas[i] * delta.mean(0)
            network.biases[i + 1] += db
            network.last_updates["biases"].append(db)  # HOOK
        dw = alphas[i] * network.layers[i].T @ delta / network.batch_size
        network.weights[i] += dw
        network.last_updates["weights"].append(dw)  # HOOK


# ---------- PC-Nudge ----------
def pcnudge_neg(network, steps):
    layers = [x.clone() for x in network.layers]
    for _ in range(steps):
        new = [layers[0]]
        for k in range(1, len(layers) - 1):
            pred = network.activation(new[-1] @ network.weights[k - 1] + network.biases[k])
            # QUIRK: pred + error == layers[k] up to rounding.
            error = layers[k] - pred
            new.append(network.normalize(pred + error))
        out = network.activation(new[-1] @ network.weights[-1] + network.biases[-1])
        out -= network.beta * (out - network.y_onehot)
        new.append(out)
        layers = [layers[0]] + new[1:]
    s, e = network.index * network.batch_size, (network.index + 1) * network.batch_size
    for i, l in enumerate(layers[1:]):
        network.persistent[i][s:e] = l.detach()
    network.layers = [network.x] + [p[s:e] for p in network.persistent]


def pcnudge_pos(network, steps, *alphas):
    clamped = relax(network, network.layers, steps)
    network.last_clamped = clamped  # HOOK
    network.last_updates = {"weights": [], "biases": []}  # HOOK
    for i, delta in enumerate([c - o for c, o in zip(clamped[1:], network.layers[1:])]):
        if i + 1 < len(network.biases):
            db = alphas[i] * delta.mean(0)  # HOOK: named increment (seed: in the += line)
            network.biases[i + 1] += db
            network.last_updates["biases"].append(db)  # HOOK
        if i < len(network.weights):
            # QUIRK: the free presynaptic layer; divided by hyper batch_size.
            dw = alphas[i] * network.layers[i].T @ delta / network.batch_size
            network.weights[i] += dw
            network.last_updates["weights"].append(dw)  # HOOK


# The four schemes as (negative phase, positive phase).  QUIRK: the seed gives
# the first-step rule no negative phase; chl_neg (un-nudged) is the natural one.
SCHEMES = {
    "chl": (chl_neg, chl_pos),
    "ep": (ep_neg, ep_pos),
    "first-step": (chl_neg, first_step_pos),
    "pc-nudge": (pcnudge_neg, pcnudge_pos),
}


# ---------- Data ----------
class ExternalWorld:
    def __init__(self, x_values, y_values, dtype=torch.float32):  # HOOK: dtype
        self.x = torch.tensor(x_values, dtype=dtype)
        self.y = torch.tensor(y_values, dtype=torch.int64)
        self.size_dataset = len(self.x)


xor_x = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float32)
xor_y = np.array([0, 1, 1, 0], dtype=np.int64)
xor_world = ExternalWorld(xor_x, xor_y)

XOR_HYPER = {
    "hidden_sizes": [2, 1],
    "output_size": 2,
    "batch_size": 4,
    "n_epochs": 20,
    "n_it_neg": 1,
    "n_it_pos": 1,
    "alphas": [0.1, 0.1, 0.01],
    "beta": 0.1,
    "activation": torch.relu,  # QUIRK: never read
}


def run_xor_trial(w0, w1, w2, w3, b0, b1, plot=False):
    init = torch.tensor([w0, w1, w2, w3, b0, b1])
    xor_net = Network(
        name="xor_trial",
        external_world=xor_world,
        hyper=dict(XOR_HYPER),
        neg_phase=ep_neg,
        pos_phase=ep_pos,
        relax_fn=relax
    )

    with torch.no_grad():
        xor_net.weights[0][:] = init[0:4].reshape(2, 2)
        # QUIRK: the "bias" sliders b0, b1 set weights[1]; weights[2] stays random.
        xor_net.weights[1][:] = init[4:6].reshape(2, 1)

    error = xor_net.train(plot=plot)
    print("Final XOR Error:", error)
    xor_net.update_mini_batch_index(0)
    print("Output logits:", xor_net.layers[-1].detach().numpy())
    return error, xor_net  # HOOK: return values
