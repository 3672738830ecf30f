"""PyTorch reference port of seed 002 (``002_271b2c607cd25acb.txt``).

Seed 002 is the API documentation of a PyTorch library
(``equilibrium-propagation``, module ``lib.energy``): the abstract
``EnergyBasedModel`` and its two energies ``ConditionalGaussian`` and
``RestrictedHopfield``.  The library's ``lib/cost.py`` (``CEnergy``,
``CrossEntropy``, ``SquaredError``; not in the seed, supplied separately) and
a stand-in for ``lib.config`` (which only holds ``device``) are included here
so that the module is self-contained.  The code is reproduced line by line
(same math, same operation order, same quirks) to serve as the ground truth of
parity tests.

Deviations from the library -- test hooks only:

1. ``dtype`` keyword (default ``torch.float32``) on ``EnergyBasedModel``,
   ``ConditionalGaussian`` and ``RestrictedHopfield``: the ``Linear`` layers
   and the states drawn by ``reset_state`` get that dtype (the library uses the
   torch default, float32).
2. ``set_params(weights, biases)``: copies numpy ``weights[i]`` of shape
   ``(in, out)`` into ``W[i].weight`` as ``W.T`` (torch layout ``(out, in)``)
   and ``biases[i]`` (``(out,)``) into ``W[i].bias`` (in place, under
   ``no_grad``, so the ``Parameter`` objects -- and any optimizer holding them
   -- are kept), then calls ``update_energy()``.
3. ``set_state(list_of_numpy_arrays)``: sets ``self.u`` to fresh leaf tensors
   of the model dtype, ``requires_grad = not clamp_du[i]`` as in
   ``reset_state`` (by default: u[0], the clamped input, without grad, the
   others with grad), then calls ``update_energy()``.

Quirks of the library that are preserved on purpose (also marked ``# QUIRK``
in the code):

* ``RestrictedHopfield`` energy: ``1/2 u^2`` on pre-activations of every
  layer *including the clamped input* ``u_0``; the coupling is written as two
  halves ``-1/2 r_pre W^T r_post - 1/2 r_post W r_pre`` (equal); the bias
  term is ``-b . phi(u_post)``; ``phi[0]`` is applied to the input too.
* ``ConditionalGaussian`` energy: ``sum_i ||W_i phi_i(u_i) + b_i - u_{i+1}||^2``
  without the usual ``1/2`` factor.
* the costs act on the raw pre-activation ``u[-1]`` (not ``phi(u[-1])``):
  ``CrossEntropy`` uses it as logits, ``SquaredError`` is
  ``beta * 1/2 * ||u[-1] - target||^2`` with the target cast by ``.float()``
  (float32, also in float64 mode: exact for one-hot targets, rounded
  otherwise); ``CrossEntropy.set_target`` takes ``argmax`` of a one-hot target.
* ``u_step``: one explicit Euler step ``u -= dt/tau * dE/du`` on every
  unclamped layer (gradient of the batch *sum* of E); the returned "du_norm"
  is the *gradient* (not the change, no dt/tau factor): sum over layers of
  the batch mean of the per-sample L2 norm, as a Python float.
* ``u_relax``: tests ``du_norm < tol`` after the step was applied; on that
  break ``E_prev`` is the energy *before* the last step, so the returned
  ``sum(E_prev - E_init)`` omits the last step's energy change (without
  a break it includes all ``n_relax`` steps).
* ``fast_init`` overwrites every layer ``u[1:]`` with the feed-forward
  prediction, even layers that are clamped (only their requires_grad follows
  ``clamp_du``).
* ``w_get_gradients`` returns ``d mean(E) / d params`` in
  ``self.parameters()`` order ``[W0.weight (out,in), W0.bias, W1.weight, ...]``
  and frees the graph of ``E`` (a second call needs ``update_energy()``);
  ``w_optimize`` sets ``p.grad = (1/beta) * (nudged - free)``.
* ``zero_grad`` overrides ``nn.Module.zero_grad``: the parameters' grads are
  set to None (torch >= 2 default), the states' grads are zeroed in place.
"""

import abc
import types

import numpy as np
import torch

# Stand-in for the library's ``lib.config`` (only holds ``device``).
config = types.SimpleNamespace(device='cpu')


# ----------------------------------------------------------------------------
# lib/cost.py
# ----------------------------------------------------------------------------
class CEnergy(abc.ABC):
    def __init__(self, beta):
        self.beta = beta
        self.target = None

    def set_target(self, target):
        self.target = target


class CrossEntropy(CEnergy):
    def compute_energy(self, u_last):
        # QUIRK: the raw pre-activation u_last is used as logits.
        return self.beta * torch.nn.functional.cross_entropy(u_last, self.target, reduction='none')

    def set_target(self, target):
        self.target = None if target is None else target.argmax(dim=1)


class SquaredError(CEnergy):
    def compute_energy(self, u_last):
        # QUIRK: on the raw pre-activation u_last; target cast to float32.
        loss = torch.nn.functional.mse_loss(u_last, self.target.float(), reduction='none')
        return self.beta * 0.5 * torch.sum(loss, dim=1)


# ----------------------------------------------------------------------------
# lib/energy.py
# ----------------------------------------------------------------------------
class EnergyBasedModel(abc.ABC, torch.nn.Module):
    """
    Abstract base class for all energy-based models.
    Attributes:
    batch_size: Number of samples per batch
    c_energy: Cost function to nudge last layer
    clamp_du: List of boolean values tracking if the corresponding layer
    is clamped to a fixed value
    E: Current energy of the model. Object has the responsibility of
    maintaining the energy consistent if u or W change.
    dimensions: Dimensions of the underlying multilayer perceptron
    n_layers: Number of layers of the multilayer perceptron
    phi: List of activation functions for each layer
    W: ModuleList for the linear layers of the multilayer perceptron
    u: List of pre-activations
    """
    def __init__(self, dimensions, c_energy, batch_size, phi, dtype=torch.float32):
        super(EnergyBasedModel, self).__init__()
        self.dtype = dtype  # DEVIATION (test hook): dtype of W and states
        self.batch_size = batch_size
        self.c_energy = c_energy
        self.clamp_du = torch.zeros(len(dimensions), dtype=torch.bool)
        self.dimensions = dimensions
        self.E = None
        self.n_layers = len(dimensions)
        self.phi = phi
        self.u = None
        self.W = torch.nn.ModuleList(
            torch.nn.Linear(dim1, dim2, dtype=dtype)
            for dim1, dim2 in zip(self.dimensions[:-1], self.dimensions[1:])
        ).to(config.device)
        # Input (u_0) is clamped by default
        self.clamp_du[0] = True
        self.reset_state()

    @abc.abstractmethod
    def fast_init(self):
        """
        Fast initilization of pre-activations.
        """
        return

    @abc.abstractmethod
    def update_energy(self):
        """
        Update the energy.
        """
        return

    # ------------------------------------------------------------------
    # DEVIATION (test hooks)
    # ------------------------------------------------------------------
    def set_params(self, weights, biases):
        """Copy numpy weights (in, out) -> Linear.weight = W.T, biases (out,)."""
        if len(weights) != len(self.W) or len(biases) != len(self.W):
            raise ValueError("expected %d weight and bias arrays" % len(self.W))
        with torch.no_grad():
            for layer, W, b in zip(self.W, weights, biases):
                W = torch.as_tensor(np.asarray(W), dtype=self.dtype)
                b = torch.as_tensor(np.asarray(b), dtype=self.dtype)
                if tuple(W.T.shape) != tuple(layer.weight.shape) or \
                        tuple(b.shape) != tuple(layer.bias.shape):
                    raise ValueError("got W %s, b %s for Linear(%d, %d)"
                                     % (tuple(W.shape), tuple(b.shape),
                                        layer.in_features, layer.out_features))
                layer.weight.copy_(W.T)
                layer.bias.copy_(b)
        self.update_energy()
        return self

    def set_state(self, states):
        """Set self.u from numpy arrays (requires_grad = not clamp_du[i])."""
        if len(states) != self.n_layers:
            raise ValueError("expected %d states" % self.n_layers)
        u = []
        for i, s in enumerate(states):
            t = torch.tensor(np.asarray(s), dtype=self.dtype, device=config.device)
            if tuple(t.shape[1:]) != (self.dimensions[i],) or t.ndim != 2:
                raise ValueError("state %d of shape %s, expected (batch, %d)"
                                 % (i, tuple(t.shape), self.dimensions[i]))
            t.requires_grad_(not bool(self.clamp_du[i]))
            u.append(t)
        self.u = u
        self.update_energy()
        return self

    # ------------------------------------------------------------------
    # Library methods
    # ------------------------------------------------------------------
    def clamp_layer(self, i, u_i):
        """
        Clamp the specified layer.
        Args:
        i: Index of layer to be clamped
        u_i: Tensor to which the layer i is clamped
        """
        self.u[i] = u_i
        self.clamp_du[i] = True
        self.update_energy()

    def release_layer(self, i):
        """
        Release (i.e. un-clamp) the specified layer).
        Args:
        i: Index of layer to be released
        """
        self.u[i].requires_grad = True
        self.clamp_du[i] = False
        self.update_energy()

    def reset_state(self):
        """
        Reset the state of the system to a random (Normal) configuration.
        """
        self.u = []
        for i in range(self.n_layers):
            self.u.append(torch.randn((self.batch_size, self.dimensions[i]),
                                      requires_grad=not(self.clamp_du[i]),
                                      device=config.device, dtype=self.dtype))
        self.update_energy()

    def set_C_target(self, target):
        """
        Set new target tensor for the cost function.
        Args:
        target: target tensor
        """
        self.c_energy.set_target(target)
        self.update_energy()

    def u_relax(self, dt, n_relax, tol, tau):
        """
        Relax the neural state variables until a fixed point is obtained
        with precision < tol or until the maximum number of steps n_relax is reached.
        Args:
        dt: Step size
        n_relax: Maximum number of steps
        tol: Tolerance/precision of relaxation
        tau: Time constant
        Returns:
        Change in energy after relaxation
        """
        E_init = self.E.clone().detach()
        E_prev = self.E.clone().detach()
        for i in range(n_relax):
            # Perform a single relaxation step
            du_norm = self.u_step(dt, tau)
            # dE = self.E.detach() - E_prev
            # If change is below numerical tolerance, break
            # QUIRK: on break, E_prev is the energy before the last step, so the
            # returned change omits the last step.
            if du_norm < tol:
                break
            E_prev = self.E.clone().detach()
        return torch.sum(E_prev - E_init)

    def u_step(self, dt, tau):
        """
        Perform single relaxation step on the neural state variables.
        Args:
        dt: Step size
        tau: Time constant
        Returns:
        Absolute change in pre-activations
        """
        # Compute gradients wrt current energy
        self.zero_grad()
        batch_E = torch.sum(self.E)
        batch_E.backward()
        with torch.no_grad():
            # Apply the update in every layer
            du_norm = 0
            for i in range(self.n_layers):
                if not self.clamp_du[i]:
                    du = self.u[i].grad
                    self.u[i] -= dt/tau * du
                    # QUIRK: norm of the gradient (no dt/tau), batch mean of the
                    # per-sample L2 norm, summed over layers.
                    du_norm += float(torch.mean(torch.norm(du, dim=1)))
        self.update_energy()
        return du_norm

    def w_get_gradients(self, loss=None):
        """
        Compute the gradient on the energy w.r.t. the parameters W.
        Args:
        loss: Optional loss to optimze for. Otherwise the mean energy is optimized.
        Returns:
        List of gradients for each layer
        """
        self.zero_grad()
        if loss is None:
            loss = torch.mean(self.E)
        return torch.autograd.grad(loss, self.parameters())

    def w_optimize(self, free_grad, nudged_grad, w_optimizer):
        """
        Update weights using free and nudged phase gradients.
        Args:
        free_grad: List of free phase gradients
        nudged_grad: List of nudged phase gradients
        w_optimizer: torch.optim.Optimizer for the model parameters
        """
        self.zero_grad()
        w_optimizer.zero_grad()
        # Apply the contrastive Hebbian style update
        for p, f_g, n_g in zip(self.parameters(), free_grad, nudged_grad):
            p.grad = (1/self.c_energy.beta) * (n_g - f_g)
        w_optimizer.step()
        self.update_energy()

    def zero_grad(self):
        """
        Zero gradients for parameters and pre-activations.
        """
        self.W.zero_grad()
        for u_i in self.u:
            if u_i.grad is not None:
                u_i.grad.detach_()
                u_i.grad.zero_()


class ConditionalGaussian(EnergyBasedModel):
    """
    One example of an energy-based model that has a probabilistic interpretation as
    the (negative) log joint probability of a conditional-Gaussian model.
    Also see review by Bogacz and Whittington, 2019.
    """
    def __init__(self, dimensions, c_energy, batch_size, phi, dtype=torch.float32):
        super(ConditionalGaussian, self).__init__(dimensions, c_energy, batch_size, phi,
                                                  dtype=dtype)

    def fast_init(self):
        """
        The FF init is a very handy hack when working with the ConditionalGaussian
        model, which allows reducing the number of fixed point iterations
        significantly, and results in improved training for large dt steps.
        """
        for i in range(self.n_layers - 1):
            # QUIRK: also overwrites clamped layers u[1:].
            self.u[i+1] = self.W[i](self.phi[i](self.u[i])).detach()
            self.u[i+1].requires_grad = not self.clamp_du[i+1]
        self.update_energy()

    def update_energy(self):
        """
        Update the energy as the mean squared predictive error.
        """
        self.E = 0
        for i in range(self.n_layers - 1):
            pred = self.W[i](self.phi[i](self.u[i]))
            # QUIRK: no 1/2 factor (Bogacz & Whittington use 1/2 ||.||^2).
            loss = torch.nn.functional.mse_loss(pred, self.u[i+1], reduction='none')
            self.E += torch.sum(loss, dim=1)
        if self.c_energy.target is not None:
            self.E += self.c_energy.compute_energy(self.u[-1])


class RestrictedHopfield(EnergyBasedModel):
    """
    The classical Hopfield energy in a restricted feedforward model
    as used in the original equilibrium propagation paper by Scellier, 2017
    """
    def __init__(self, dimensions, c_energy, batch_size, phi, dtype=torch.float32):
        super(RestrictedHopfield, self).__init__(dimensions, c_energy, batch_size, phi,
                                                 dtype=dtype)

    def fast_init(self):
        raise NotImplementedError("Fast initialization not possible for the Hopfield model.")

    def update_energy(self):
        """
        Update the energy computed as the Hopfield Energy.
        """
        self.E = 0
        for i, layer in enumerate(self.W):
            r_pre = self.phi[i](self.u[i])
            r_post = self.phi[i+1](self.u[i+1])
            if i == 0:
                # QUIRK: includes 1/2 u_0^2 of the clamped input (constant in u).
                self.E += 1/2 * torch.einsum('ij,ij->i', self.u[i], self.u[i])
            self.E += 1/2 * torch.einsum('ij,ij->i', self.u[i+1], self.u[i+1])
            # QUIRK: coupling written as two equal halves.
            self.E -= 1/2 * torch.einsum('bi,ji,bj->b', r_pre, layer.weight, r_post)
            self.E -= 1/2 * torch.einsum('bi,ij,bj->b', r_post, layer.weight, r_pre)
            self.E -= torch.einsum('i,ji->j', layer.bias, r_post)
        if self.c_energy.target is not None:
            self.E += self.c_energy.compute_energy(self.u[-1])
