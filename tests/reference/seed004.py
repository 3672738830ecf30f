"""PyTorch reference port of seed 004 (``004_186eb49ce3052617.txt``).

Seed 004 is a script (``ep_baseline.py``) training a residual MLP on CIFAR-10
with "feed-forward" Equilibrium Propagation: the free phase is the forward
pass, the nudged phase minimises ``E(h) + beta * C(h_L, y)`` over the hidden
states ``h_1..h_L`` with plain SGD, and the weight update is the difference of
the energy's parameter gradients at the two states divided by beta.  This
module reproduces the algorithmic parts line by line (same math, same
operation order, same quirks) to serve as the ground truth of parity tests.

Reconstructions (the seed imports them from files that are not given; these
are the definitions the library uses too):

* ``ResidualMLP(in_dim, d_hidden, n_classes, num_blocks)`` (the seed's
  ``models.residual_mlp``): ``embed = Linear(in_dim, d)``; ``blocks`` = L
  ``Block(d)`` whose forward is the residual *branch* only,
  ``fc2(gelu(fc1(ln(h))))`` (``LayerNorm(d, eps=1e-5)``, exact erf GELU);
  ``out_ln = LayerNorm(d, eps=1e-5)``; ``out_head = Linear(d, n_classes)``;
  ``forward(x, return_hidden)``: ``h_0 = embed(x)``,
  ``h_{l+1} = h_l + blocks[l](h_l)``, logits ``out_head(out_ln(h_L))``;
  ``return_hidden`` also returns ``[h_0, ..., h_L]``.
* ``cosine_similarity_batch(a, b)`` (``metrics.credit_metrics``): batch mean of
  ``F.cosine_similarity(a, b, dim=-1, eps=1e-8)`` as a float.
* ``perturbation_correlation(h, a, loss_fn, epsilon, M, deltas=None)``
  (``metrics.credit_metrics``): M perturbations ``delta = eps * u / ||u||``
  (``u ~ N(0, I)``, normalised per example), predicted change
  ``<a_b, delta_b>``, actual change ``loss_fn(h + delta)_b - loss_fn(h)_b``;
  per example the Pearson correlation over the M draws (0 where a variance is
  0; no additive guard: the changes are ~ eps |dL/dh| / B, far below any fixed
  floor), then the batch mean, as a float.  ``deltas`` (M, B, d) is a test
  hook: use these perturbations instead of drawing; ``guard`` (default 0) adds
  a constant to the denominator, for tests.

Dropped (cannot run offline / not part of the algorithm): torchvision CIFAR-10
loading (``get_cifar10``), ``evaluate``, the epoch loop of ``train_ep`` with
its cosine LR schedulers (stepped once per epoch, so one optimizer step uses
the base ``lr``), ``random_targets``, ``main`` (argparse, saving, printing).

Deviations from the seed -- restructuring and test hooks only:

1. ``ep_update_grads(model, x, y, beta, T_nudge, alpha_nudge, opts=None)`` is
   the body of ``train_ep``'s inner loop from the free phase up to and
   including ``head_loss.backward()``; it returns ``{name: p.grad}`` for every
   named parameter.  Without ``opts`` the grads are reset with
   ``p.grad = None`` (what ``o.zero_grad()`` over the seed's optimizers, which
   together hold every parameter, does in torch >= 2).
2. ``make_optimizers(model, lr, wd)`` builds the seed's ``block_opts``,
   ``embed_opt``, ``head_opt`` (AdamW) and returns ``all_opts``;
   ``train_step`` = ``ep_update_grads`` + ``clip_grad_norm_(1.0)`` +
   ``o.step()`` for every optimizer (one inner-loop iteration of ``train_ep``).
3. ``compute_diagnostics(model, x, y, beta, T_nudge, alpha_nudge, deltas=None)``
   takes the batch instead of taking the first one of a loader (the seed's
   ``x.view(x.size(0), -1)`` flattening is left to the caller);
   ``deltas``: optional list (one per layer 0..L-1) of (M, B, d) perturbations
   passed on to ``perturbation_correlation``.  Besides the seed's dict it
   returns ``'credits'``, ``'bp_grads'`` (lists over layers 0..L-1),
   ``'h_free'``, ``'h_nudged'``.
4. ``load_flax_params`` / ``grads_to_flax``: copy a Flax parameter tree into the
   model / map torch grads to that tree (kernels transposed).

Quirks of the seed that are preserved on purpose (marked ``# SEED QUIRK`` in
the code):

* the nudged phase minimises the batch *mean* of ``E + beta * C`` with
  ``SGD(lr=alpha_nudge)``: each example's state moves by ``alpha_nudge / B``
  times its own gradient per step, so the nudged displacement (hence the EP
  credit and the block / embed updates) shrinks like ``1/B``.
* the block and embed EP losses are batch *sums* divided by beta, the head
  loss is the batch *mean* cross-entropy.
* the free residual ``h_{l+1} - h_l - F_l(h_l)`` is recomputed and subtracted
  although it is zero up to rounding (the free state is the forward pass).
* the embed gradient is an approximation: the VJP of ``embed`` with the
  cotangent ``-(r0_nudged - r0_free) / beta`` (``r0 = h_1 - h_0 - F_0(h_0)``),
  i.e. ``dE/dh_0`` without its ``dF_0/dh_0`` term; ``h_0`` itself is never
  nudged.
* the head / out_ln gradient is the gradient of the mean cross-entropy at the
  *nudged* ``h_L`` (not an EP difference).
* the nudged phase's ``total.backward()`` also accumulates gradients into the
  model parameters; they are discarded by the ``zero_grad`` that follows (in
  ``ep_credit_signals`` they are left there).
* ``ep_credit_signals`` returns credits for layers ``0..L-1`` only: layer 0 is
  never nudged (its credit is exactly 0, so its Gamma and rho are 0 and enter
  the means), and the directly nudged layer ``L`` is left out.
* ``naive_StateErr`` compares two *different* layers, ``h_{L//2}`` and ``h_L``, of
  the free forward pass, and ``Tensor.norm(-1)`` is ``norm(p=-1)`` over the
  *whole* tensor (torch's first positional argument is ``p``, not ``dim``):
  the seed computes the scalar ``(sum_{b,i} |h_{L//2} - h_L|_{bi}^{-1})^{-1} /
  max((sum_{b,i} |h_L|_{bi}^{-1})^{-1}, 1e-8)`` (``.mean()`` of a scalar), not the
  intended ``mean_b ||h_{L//2,b} - h_{L,b}||_2 / ||h_{L,b}||_2``.
"""

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn, optim


# ----------------------------------------------------------------------------
# Reconstructions (not in the seed): models.residual_mlp, metrics.credit_metrics
# ----------------------------------------------------------------------------
class Block(nn.Module):
    """Residual branch F_l(h) = fc2(gelu(fc1(ln(h)))) (the skip is added by the caller)."""

    def __init__(self, d):
        super().__init__()
        self.ln = nn.LayerNorm(d, eps=1e-5)
        self.fc1 = nn.Linear(d, d)
        self.fc2 = nn.Linear(d, d)

    def forward(self, h):
        return self.fc2(F.gelu(self.fc1(self.ln(h))))  # exact (erf) GELU


class ResidualMLP(nn.Module):
    def __init__(self, in_dim, d_hidden, n_classes, num_blocks):
        super().__init__()
        self.num_blocks = num_blocks
        self.embed = nn.Linear(in_dim, d_hidden)
        self.blocks = nn.ModuleList([Block(d_hidden) for _ in range(num_blocks)])
        self.out_ln = nn.LayerNorm(d_hidden, eps=1e-5)
        self.out_head = nn.Linear(d_hidden, n_classes)

    def forward(self, x, return_hidden=False):
        h = self.embed(x)
        hiddens = [h]
        for block in self.blocks:
            h = h + block(h)
            hiddens.append(h)
        logits = self.out_head(self.out_ln(h))
        if return_hidden:
            return logits, hiddens
        return logits


def cosine_similarity_batch(a, b):
    return F.cosine_similarity(a, b, dim=-1, eps=1e-8).mean().item()


def perturbation_correlation(h, a, loss_fn, epsilon=1e-3, M=16, deltas=None, guard=0.0):
    with torch.no_grad():
        h, a = h.detach(), a.detach()
        if deltas is None:
            u = torch.randn((M,) + tuple(h.shape), dtype=h.dtype, device=h.device)
            deltas = epsilon * u / u.norm(dim=-1, keepdim=True)
        else:
            deltas = torch.as_tensor(deltas, dtype=h.dtype, device=h.device)
            M = deltas.shape[0]
        base = loss_fn(h)  # (B,)
        p = torch.stack([(a * deltas[m]).sum(-1) for m in range(M)])  # (M, B) predicted
        q = torch.stack([loss_fn(h + deltas[m]) - base for m in range(M)])  # (M, B) actual
        pc = p - p.mean(0, keepdim=True)
        qc = q - q.mean(0, keepdim=True)
        den = torch.sqrt((pc ** 2).sum(0) * (qc ** 2).sum(0)) + guard
        r = torch.where(den > 0, (pc * qc).sum(0) / torch.where(den > 0, den, 1.0), 0.0)
        return r.mean().item()


# ----------------------------------------------------------------------------
# Test hooks: Flax <-> torch parameters
# ----------------------------------------------------------------------------
def _torch_paths(L):
    """(flax path, torch parameter name, is_kernel) for every leaf."""
    out = [(("embed", "kernel"), "embed.weight", True), (("embed", "bias"), "embed.bias", False)]
    for l in range(L):
        b = f"block_{l}"
        out += [((b, "ln", "scale"), f"blocks.{l}.ln.weight", False),
                ((b, "ln", "bias"), f"blocks.{l}.ln.bias", False),
                ((b, "dense1", "kernel"), f"blocks.{l}.fc1.weight", True),
                ((b, "dense1", "bias"), f"blocks.{l}.fc1.bias", False),
                ((b, "dense2", "kernel"), f"blocks.{l}.fc2.weight", True),
                ((b, "dense2", "bias"), f"blocks.{l}.fc2.bias", False)]
    out += [(("out_ln", "scale"), "out_ln.weight", False), (("out_ln", "bias"), "out_ln.bias", False),
            (("head", "kernel"), "out_head.weight", True), (("head", "bias"), "out_head.bias", False)]
    return out


def _get(tree, path):
    for k in path:
        tree = tree[k]
    return tree


def load_flax_params(model, params):
    """Copy a Flax param dict (numpy-convertible leaves) into ``model`` in place (kernels transposed)."""
    named = dict(model.named_parameters())
    with torch.no_grad():
        for path, name, is_kernel in _torch_paths(model.num_blocks):
            v = np.asarray(_get(params, path))
            if is_kernel:
                v = v.T
            p = named[name]
            if tuple(v.shape) != tuple(p.shape):
                raise ValueError(f"{'/'.join(path)}: shape {v.shape} vs torch {name} {tuple(p.shape)}")
            p.copy_(torch.from_numpy(np.array(v, copy=True)).to(p.dtype))
    return model


def grads_to_flax(model_grads):
    """``{torch name: grad}`` -> numpy tree in the Flax layout (kernels transposed)."""
    L = 1 + max(int(n.split(".")[1]) for n in model_grads if n.startswith("blocks."))
    tree = {}
    for path, name, is_kernel in _torch_paths(L):
        g = model_grads[name]
        g = np.zeros(()) if g is None else g.detach().cpu().numpy()
        if is_kernel:
            g = g.T
        node = tree
        for k in path[:-1]:
            node = node.setdefault(k, {})
        node[path[-1]] = g
    return tree


# ----------------------------------------------------------------------------
# The seed
# ----------------------------------------------------------------------------
def ep_energy(model, hiddens, lam=1.0):
    """
    Compute the EP energy E = 0.5 * sum_l ||h_{l+1} - h_l - F_l(h_l)||^2
    hiddens: list of L+1 tensors, [h_0, h_1, ..., h_L]
    F_l(h_l) is the residual branch output (block forward without the skip).
    lam: weight for the state consistency term (kept at 1.0).
    """
    L = model.num_blocks
    E = 0.0
    for l in range(L):
        f_l = model.blocks[l](hiddens[l])  # residual branch
        residual = hiddens[l + 1] - hiddens[l] - f_l
        E = E + 0.5 * (residual ** 2).sum(-1)  # (batch,)
    return E  # (batch,)


def ep_free_phase(model, x):
    """
    Free phase: standard forward pass. Returns hidden states h_0..h_L.
    """
    with torch.no_grad():
        _, hiddens = model(x, return_hidden=True)
    return hiddens  # list of L+1 tensors


def ep_nudged_phase(model, x, y, h_free, beta, T_nudge, alpha_nudge):
    """
    Nudged phase: minimize E(h) + beta * C(h_L, y) w.r.t. hidden states h_1..h_L.
    h_0 is fixed (output of embed layer).
    Returns list of nudged hidden states [h_0, h_1^*, ..., h_L^*].
    """
    L = model.num_blocks
    # Initialize nudged states from free phase (detached)
    h_nudged = [h.clone().detach() for h in h_free]
    # h_0 is fixed (embed output)
    h_nudged[0] = h_free[0].clone().detach()
    # Optimize h_1 .. h_L
    for i in range(1, L + 1):
        h_nudged[i].requires_grad_(True)
    params_to_opt = h_nudged[1:]
    inner_opt = optim.SGD(params_to_opt, lr=alpha_nudge)
    for _ in range(T_nudge):
        # Energy over all layers
        E = ep_energy(model, h_nudged)  # (batch,)
        # Cost at output layer: cross-entropy
        logits = model.out_head(model.out_ln(h_nudged[L]))
        C = F.cross_entropy(logits, y, reduction='none')  # (batch,)
        # SEED QUIRK: batch *mean* of E + beta*C with SGD(lr=alpha_nudge): each example's
        # state takes steps of alpha_nudge / B, so the nudge shrinks like 1/B.
        total = (E + beta * C).mean()
        inner_opt.zero_grad()
        # SEED QUIRK: also accumulates .grad into the model parameters (cleared later by zero_grad).
        total.backward()
        inner_opt.step()
    return [h.detach() for h in h_nudged]


def make_optimizers(model, lr=1e-3, wd=0.01):
    """The seed's optimizers of ``train_ep`` (returns ``all_opts``)."""
    # Separate optimizers for different parts
    block_opts = [optim.AdamW(b.parameters(), lr=lr, weight_decay=wd) for b in model.blocks]
    embed_opt = optim.AdamW(model.embed.parameters(), lr=lr, weight_decay=wd)
    head_opt = optim.AdamW(list(model.out_head.parameters()) + list(model.out_ln.parameters()), lr=lr, weight_decay=wd)
    all_opts = block_opts + [embed_opt, head_opt]
    return all_opts


def ep_update_grads(model, x, y, beta, T_nudge, alpha_nudge, opts=None):
    """Body of ``train_ep``'s inner loop up to ``head_loss.backward()``; returns ``{name: grad}``."""
    L = model.num_blocks
    # ---- FREE PHASE ----
    # Standard forward pass to get free fixed point
    with torch.no_grad():
        _, h_free = model(x, return_hidden=True)

    # ---- NUDGED PHASE ----
    # Minimize E(h) + beta * C(h_L, y) w.r.t. hidden states
    h_nudged = ep_nudged_phase(model, x, y, h_free, beta, T_nudge, alpha_nudge)

    # ---- EP WEIGHT UPDATE ----
    # Δθ ∝ (∂E_nudged/∂θ - ∂E_free/∂θ) / beta
    if opts is not None:
        for o in opts:
            o.zero_grad()
    else:
        # DEVIATION (test hook): the seed's optimizers together hold every parameter.
        for p in model.parameters():
            p.grad = None

    # Compute EP grads for residual blocks
    # E = sum_l 0.5 ||h_{l+1} - h_l - F_l(h_l)||^2
    # dE/dθ_l = - residual_l^T * dF_l/dθ_l
    for l in range(L):
        h_l_free = h_free[l].detach()
        h_lp1_free = h_free[l + 1].detach()
        h_l_nudge = h_nudged[l].detach()
        h_lp1_nudge = h_nudged[l + 1].detach()

        # Free phase: -residual_l_free dot dF_l/dtheta
        f_l_free = model.blocks[l](h_l_free)
        # SEED QUIRK: the free residual is zero up to rounding (h_free is the forward pass).
        res_free = h_lp1_free - h_l_free - f_l_free.detach()
        # SEED QUIRK: batch sums (the head loss below is a batch mean).
        loss_free_l = -(res_free.detach() * f_l_free).sum()

        f_l_nudge = model.blocks[l](h_l_nudge)
        res_nudge = h_lp1_nudge - h_l_nudge - f_l_nudge.detach()
        loss_nudge_l = -(res_nudge.detach() * f_l_nudge).sum()

        # EP grad = (nudged - free) / beta
        ep_loss_l = (loss_nudge_l - loss_free_l) / beta
        ep_loss_l.backward()

    # Grad for embed layer:
    # SEED QUIRK: approximation -res0 * dh0/dtheta (drops the dF_0/dh_0 term of dE/dh_0);
    # h_0 itself is never nudged, only r0 = h_1 - h_0 - F_0(h_0) changes through h_1.
    h0_free = model.embed(x)  # differentiable
    # compute E contribution from layer 0 with h_0 = embed(x) fixed, block params fixed
    with torch.no_grad():
        f0_free = model.blocks[0](h0_free.detach())
        res0_free = h_free[1].detach() - h0_free.detach() - f0_free
    embed_loss_free = -(res0_free.detach() * h0_free).sum() / beta  # approximation: -res * dh0/dtheta

    h0_nudge_rg = model.embed(x)
    with torch.no_grad():
        f0_nudge = model.blocks[0](h_nudged[0].detach())
        res0_nudge = h_nudged[1].detach() - h_nudged[0].detach() - f0_nudge
    embed_loss_nudge = -(res0_nudge.detach() * h0_nudge_rg).sum() / beta

    embed_ep = (embed_loss_nudge - embed_loss_free)
    embed_ep.backward()

    # Grad for out_head + out_ln: standard BP at nudged output
    # SEED QUIRK: gradient of the mean CE at the *nudged* h_L (not an EP difference).
    logits_nudged = model.out_head(model.out_ln(h_nudged[L].detach()))
    head_loss = F.cross_entropy(logits_nudged, y)
    head_loss.backward()

    return {n: (None if p.grad is None else p.grad.detach().clone()) for n, p in model.named_parameters()}


def train_step(model, opts, x, y, beta=0.5, T_nudge=20, alpha_nudge=0.1):
    """One iteration of ``train_ep``'s inner loop (grads, clip 1.0, every optimizer steps).

    Returns the unclipped grads of ``ep_update_grads``."""
    grads = ep_update_grads(model, x, y, beta, T_nudge, alpha_nudge, opts=opts)
    # Clip and step
    all_params = list(model.parameters())
    torch.nn.utils.clip_grad_norm_(all_params, 1.0)
    for o in opts:
        o.step()
    return grads


def ep_credit_signals(model, x, y, beta, T_nudge, alpha_nudge):
    """
    Compute EP credit signals a_l^EP = (h_l^nudged - h_l^free) / beta for diagnostics.
    """
    with torch.no_grad():
        _, h_free = model(x, return_hidden=True)
    h_nudged = ep_nudged_phase(model, x, y, h_free, beta, T_nudge, alpha_nudge)
    L = model.num_blocks
    # Negate: EP nudge moves h toward lower loss, opposite to BP grad direction
    # SEED QUIRK: layers 0..L-1 only (layer 0 is never nudged: credit 0; layer L is left out).
    credits = [-(h_nudged[l] - h_free[l]) / beta for l in range(L)]
    return credits, h_free, h_nudged


def compute_diagnostics(model, x, y, beta, T_nudge, alpha_nudge, deltas=None):
    """The seed's diagnostics on the given (flattened) batch; ``deltas``: per-layer (M, B, d) or None."""
    model.eval()
    L = model.num_blocks

    # EP credit signals
    ep_credits, h_free, h_nudged = ep_credit_signals(model, x, y, beta, T_nudge, alpha_nudge)

    # BP gradients for comparison
    h0 = model.embed(x.detach())
    hs = [h0.clone().requires_grad_(True)]
    for bl in model.blocks:
        hs.append(hs[-1] + bl(hs[-1]))
    lo = model.out_head(model.out_ln(hs[-1]))
    loss = F.cross_entropy(lo, y)
    gs = torch.autograd.grad(loss, hs)
    bp_grads = {l: gs[l].detach() for l in range(L)}

    # Gamma: cosine sim between EP credit and BP grad
    gammas = []
    for l in range(L):
        g = cosine_similarity_batch(ep_credits[l], bp_grads[l])
        gammas.append(g)

    # rho: perturbation correlation using EP credit
    rhos = []
    with torch.no_grad():
        _, hi = model(x, return_hidden=True)
    for l in range(L):
        h_l = hi[l].detach()
        a_l = ep_credits[l].detach()

        def mk(sl):
            def f(h):
                with torch.no_grad():
                    c = h
                    for i in range(sl, L):
                        c = c + model.blocks[i](c)
                    return F.cross_entropy(model.out_head(model.out_ln(c)), y, reduction='none')
            return f
        rhos.append(perturbation_correlation(h_l, a_l, mk(l), epsilon=1e-3, M=16,
                                             deltas=None if deltas is None else deltas[l]))

    # naive state error
    # SEED QUIRK: distance between layer L//2 and layer L of the free forward pass, and
    # .norm(-1) is norm(p=-1) of the whole tensor (a scalar), not a per-example L2 norm.
    with torch.no_grad():
        _, hi2 = model(x, return_hidden=True)
    nse = ((hi2[L // 2] - hi2[-1]).norm(-1) / hi2[-1].norm(-1).clamp(min=1e-8)).mean().item()

    return {'Gamma': float(np.mean(gammas)), 'rho': float(np.mean(rhos)), 'naive_StateErr': nse,
            'gammas_per_layer': [float(g) for g in gammas], 'rhos_per_layer': [float(r) for r in rhos],
            # DEVIATION (test hook): the intermediate quantities.
            'credits': [c.detach() for c in ep_credits], 'bp_grads': [bp_grads[l] for l in range(L)],
            'h_free': [h.detach() for h in h_free], 'h_nudged': h_nudged}
