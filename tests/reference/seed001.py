"""PyTorch reference port of seed 001 (``001_0f5de5c028c0f8a1.txt``).

Seed 001 is a PyTorch Equilibrium Propagation tutorial notebook (Scellier &
Bengio 2017) built around ``class EquilibriumPropagationNetwork``.  This
module reproduces that class line by line (same math, same operation order,
same quirks) so that it can serve as the ground truth of parity tests.

Dropped (cannot run offline / not part of the algorithm): the torchvision
MNIST loading (``load_mnist_data``), the demo cells, ``train_network`` (the
MNIST training loop, including its random sign of beta drawn with
``np.random.randint``), tqdm and all matplotlib plotting.

Deviations from the seed -- test hooks and one generalisation, nothing else:

1. ``__init__`` takes two extra keyword arguments:
   ``layer_sizes=None`` (default: the seed's ``[784] + hidden_sizes + [10]``;
   when given, ``hidden_sizes`` is taken as ``layer_sizes[1:-1]``) and
   ``dtype=torch.float32`` (dtype of weights, biases and of the zero states of
   the phases; the seed always uses float32).  The Glorot-uniform / zero-bias
   init is the seed's one, drawn from the global torch RNG in the same order.
2. Number of classes: the seed hard-codes 10 classes in ``cost``
   (``F.one_hot(target, num_classes=10)``) and in the layer sizes
   (``self.hidden_sizes + [10]`` in both phases).  Both are generalised to
   ``layer_sizes[-1]``; with the default layer sizes this is exactly 10.
3. ``set_params(weights, biases)`` / classmethod ``from_params(weights,
   biases, device='cpu', dtype=torch.float32)``: install numpy parameters as
   fresh leaf tensors with ``requires_grad=True``.  ``weights[i]`` has the
   seed's shape ``(fan_in, fan_out)``, ``biases[i]`` has shape ``(fan_out,)``.
   ``from_params`` runs the seed constructor inside ``torch.random.fork_rng``
   so that the global RNG is left untouched.
4. ``free_phase(..., init=None)`` and ``weakly_clamped_phase(..., init=None)``:
   optional list of initial states for ``layers[1:]`` (numpy arrays or
   tensors).  They are copied, *detached* and made leaves with
   ``requires_grad=True`` (like the seed's zero states, they do not depend on
   the parameters).  ``init=None`` is exactly the seed's path (zeros).

Quirks of the seed that are preserved on purpose (also marked ``# QUIRK`` in
the code):

* ``energy`` uses ``1/2 * rho(s)^2`` instead of the paper's ``1/2 * s^2``, and
  sums it over *all* layers including the clamped input ``x``.
* ``cost`` is ``sum((s_out - onehot)^2)`` on the raw output state, without the
  paper's ``1/2`` factor.
* the dynamics are projected gradient steps ``s <- rho(s - eps * dF/ds)``
  computed with ``torch.autograd.grad(..., create_graph=True)``: the whole
  trajectory stays in the autograd graph, so ``compute_gradients``
  differentiates the energies *through the unrolled dynamics* (total
  derivative w.r.t. the parameters), not only the explicit partial derivative
  at fixed states as EP prescribes.
* ``torch.clamp``'s gradient is 1 on the closed interval [0, 1] (also at the
  kinks s == 0 and s == 1, e.g. at the zero initial state).
* ``weakly_clamped_phase`` restarts from zero states instead of from the free
  equilibrium.
* ``compute_gradients`` uses the plain energy E (not F = E + beta*C), averaged
  over the batch, divided by the (signed) beta.
* ``predict`` and ``measure`` always run ``free_phase`` with its defaults
  (20 iterations, epsilon 0.5), whatever was used for training.
"""

import numpy as np
import torch
import torch.nn.functional as F


class EquilibriumPropagationNetwork:
    """Modern PyTorch implementation of Equilibrium Propagation

    Based on the paper "Equilibrium Propagation: Bridging the Gap between
    Energy-Based Models and Backpropagation" by Scellier & Bengio (2017)
    """

    # NOTE: mutable default ``hidden_sizes=[500]`` kept from the seed (it is
    # never mutated).
    def __init__(self, hidden_sizes=[500], device='cpu', layer_sizes=None,
                 dtype=torch.float32):
        self.device = device
        self.dtype = dtype  # DEVIATION (test hook): dtype, seed = float32

        # Network architecture: 784 (MNIST) -> hidden_sizes -> 10
        if layer_sizes is None:
            layer_sizes = [784] + hidden_sizes + [10]
        else:
            # DEVIATION (test hook): explicit layer sizes.
            layer_sizes = [int(n) for n in layer_sizes]
            hidden_sizes = layer_sizes[1:-1]
        self.hidden_sizes = hidden_sizes
        self.layer_sizes = layer_sizes

        # Initialize weights and biases
        self.weights = []
        self.biases = []

        for i in range(len(layer_sizes) - 1):
            # Glorot/Xavier initialization
            fan_in, fan_out = layer_sizes[i], layer_sizes[i+1]
            bound = np.sqrt(6.0 / (fan_in + fan_out))
            W = torch.empty(fan_in, fan_out, dtype=dtype).uniform_(-bound, bound).to(device)
            W.requires_grad_(True)
            self.weights.append(W)

            # Initialize biases to zero
            b = torch.zeros(layer_sizes[i+1], dtype=dtype).to(device)
            b.requires_grad_(True)
            self.biases.append(b)

    # ------------------------------------------------------------------
    # DEVIATION (test hooks): deterministic parameter installation.
    # ------------------------------------------------------------------
    @classmethod
    def from_params(cls, weights, biases, device='cpu', dtype=torch.float32):
        """Build a network whose parameters are the given numpy arrays.

        ``weights[i]``: shape ``(fan_in, fan_out)``; ``biases[i]``: ``(fan_out,)``.
        Layer sizes are read off the weight shapes.  The global torch RNG is
        not consumed (the seed's random init runs inside ``fork_rng``).
        """
        weights = [np.asarray(W) for W in weights]
        layer_sizes = [weights[0].shape[0]] + [W.shape[1] for W in weights]
        with torch.random.fork_rng(devices=[]):
            net = cls(device=device, layer_sizes=layer_sizes, dtype=dtype)
        net.set_params(weights, biases)
        return net

    def set_params(self, weights, biases):
        """Install numpy ``weights`` (fan_in, fan_out) and ``biases`` (fan_out,)
        as new leaf tensors with ``requires_grad=True``."""
        if len(weights) != len(self.layer_sizes) - 1 or len(biases) != len(weights):
            raise ValueError("expected %d weight and bias arrays" % (len(self.layer_sizes) - 1))
        new_w, new_b = [], []
        for i, (W, b) in enumerate(zip(weights, biases)):
            W = np.asarray(W)
            b = np.asarray(b)
            fan_in, fan_out = self.layer_sizes[i], self.layer_sizes[i+1]
            if W.shape != (fan_in, fan_out) or b.shape != (fan_out,):
                raise ValueError("layer %d: got W %s, b %s, expected (%d, %d), (%d,)"
                                 % (i, W.shape, b.shape, fan_in, fan_out, fan_out))
            new_w.append(torch.tensor(W, dtype=self.dtype, device=self.device).requires_grad_(True))
            new_b.append(torch.tensor(b, dtype=self.dtype, device=self.device).requires_grad_(True))
        self.weights = new_w
        self.biases = new_b
        return self

    def _init_layers(self, x, init):
        """DEVIATION (test hook): initial states; ``init=None`` is the seed's zeros."""
        batch_size = x.shape[0]

        # Initialize layers
        layers = [x]  # Input layer (clamped)
        if init is None:
            # Seed: ``for size in self.hidden_sizes + [10]`` (10 generalised).
            for size in self.hidden_sizes + [self.layer_sizes[-1]]:
                layer = torch.zeros(batch_size, size, requires_grad=True, device=self.device,
                                    dtype=self.dtype)
                layers.append(layer)
        else:
            if len(init) != len(self.layer_sizes) - 1:
                raise ValueError("init must hold %d states" % (len(self.layer_sizes) - 1))
            for size, s in zip(self.layer_sizes[1:], init):
                layer = torch.as_tensor(s).detach().to(device=self.device, dtype=self.dtype).clone()
                if tuple(layer.shape) != (batch_size, size):
                    raise ValueError("init state of shape %s, expected %s"
                                     % (tuple(layer.shape), (batch_size, size)))
                layer.requires_grad_(True)
                layers.append(layer)
        return layers

    # ------------------------------------------------------------------
    # Seed methods.
    # ------------------------------------------------------------------
    def rho(self, s):
        """Hard sigmoid activation function: rho(s) = max(0, min(1, s))"""
        # QUIRK: torch.clamp's gradient is 1 on the closed interval [0, 1].
        return torch.clamp(s, 0.0, 1.0)

    def energy(self, layers):
        """Compute energy function E for the current state"""
        # Squared norm term: sum(rho(layer)^2) / 2
        # QUIRK (deviation from the paper, which uses 1/2 * s^2): rho(s)^2, and
        # the clamped input layer is included.
        squared_norm = sum([(self.rho(layer) ** 2).sum(dim=1) for layer in layers]) / 2.0

        # Linear terms: -sum(rho(layer) * bias) - note: skip input layer for biases
        linear_terms = -sum([torch.sum(self.rho(layer) * bias, dim=1)
                           for layer, bias in zip(layers[1:], self.biases)])

        # Quadratic terms: -sum(rho(pre) @ W @ rho(post))
        quadratic_terms = -sum([torch.sum(self.rho(pre) @ W * self.rho(post), dim=1)
                               for pre, W, post in zip(layers[:-1], self.weights, layers[1:])])

        return squared_norm + linear_terms + quadratic_terms

    def cost(self, output_layer, target):
        """Compute cost function C (mean squared error)"""
        # DEVIATION (generalisation): seed hard-codes num_classes=10.
        # QUIRK: no 1/2 factor (paper: C = 1/2 ||y - s_out||^2); one-hot is float32
        # (exact; promoted to float64 by the subtraction in float64 mode).
        target_one_hot = F.one_hot(target, num_classes=self.layer_sizes[-1]).float()
        return ((output_layer - target_one_hot) ** 2).sum(dim=1)

    def total_energy(self, layers, target, beta):
        """Compute total energy F = E + beta * C"""
        return self.energy(layers) + beta * self.cost(layers[-1], target)

    def free_phase(self, x, n_iterations=20, epsilon=0.5, init=None):
        """Run free phase dynamics to find equilibrium"""
        # Initialize layers (seed: zeros; ``init`` is a test hook)
        layers = self._init_layers(x, init)

        # Run dynamics
        for _ in range(n_iterations):
            # Compute energy gradient
            energy_val = self.energy(layers).sum()
            # QUIRK: create_graph=True keeps the whole unrolled trajectory in
            # the graph (used later by compute_gradients).
            grads = torch.autograd.grad(energy_val, layers[1:], create_graph=True)

            # Update layers (except input which is clamped)
            new_layers = [layers[0]]  # Keep input layer
            for i, grad in enumerate(grads):
                new_layer = self.rho(layers[i+1] - epsilon * grad)
                new_layer.requires_grad_(True)
                new_layers.append(new_layer)
            layers = new_layers

        return layers

    def weakly_clamped_phase(self, x, target, n_iterations=4, epsilon=0.5, beta=0.5, init=None):
        """Run weakly clamped phase dynamics"""
        # Initialize layers
        # QUIRK (bug w.r.t. EP): restarts from zeros, not from the free
        # equilibrium (``init`` is a test hook; None = seed behaviour).
        layers = self._init_layers(x, init)

        # Run dynamics
        for _ in range(n_iterations):
            # Compute total energy gradient
            total_energy_val = self.total_energy(layers, target, beta).sum()
            grads = torch.autograd.grad(total_energy_val, layers[1:], create_graph=True)

            # Update layers (except input which is clamped)
            new_layers = [layers[0]]  # Keep input layer
            for i, grad in enumerate(grads):
                new_layer = self.rho(layers[i+1] - epsilon * grad)
                new_layer.requires_grad_(True)
                new_layers.append(new_layer)
            layers = new_layers

        return layers

    def compute_gradients(self, layers_free, layers_clamped, beta):
        """Compute parameter gradients using equilibrium propagation"""
        # Energy at free equilibrium
        energy_free = self.energy(layers_free).mean()

        # Energy at weakly clamped equilibrium
        energy_clamped = self.energy(layers_clamped).mean()

        # Gradient of energy difference w.r.t. parameters
        energy_diff = (energy_clamped - energy_free) / beta

        # QUIRK (deviation from EP): the states are still attached to the
        # unrolled dynamics graph, so these are total derivatives through the
        # trajectories, not the partial dE/dtheta at fixed states.
        weight_grads = torch.autograd.grad(energy_diff, self.weights, retain_graph=True)
        bias_grads = torch.autograd.grad(energy_diff, self.biases)

        return weight_grads, bias_grads

    def update_parameters(self, weight_grads, bias_grads, alphas):
        """Update network parameters"""
        with torch.no_grad():
            for i, (W, grad) in enumerate(zip(self.weights, weight_grads)):
                W -= alphas[i] * grad

            for i, (b, grad) in enumerate(zip(self.biases, bias_grads)):
                b -= alphas[i] * grad

    def predict(self, x):
        """Make predictions using free phase"""
        # QUIRK: always the default free phase (20 iterations, epsilon 0.5).
        layers = self.free_phase(x)
        return torch.argmax(layers[-1], dim=1)

    def measure(self, x, target):
        """Measure energy, cost, and error rate"""
        # QUIRK: always the default free phase (20 iterations, epsilon 0.5).
        layers = self.free_phase(x)

        energy_val = self.energy(layers).mean()
        cost_val = self.cost(layers[-1], target).mean()

        predictions = torch.argmax(layers[-1], dim=1)
        error_rate = (predictions != target).float().mean()

        return energy_val.item(), cost_val.item(), error_rate.item()
