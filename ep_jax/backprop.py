"""Backprop baseline ("bp twin"): the same layer sizes as an EP net, trained as a feed-forward MLP.

Every EP result gets a twin: the layer sizes ``(n_0, ..., n_L)`` of the EP net read as a
feed-forward multilayer perceptron,

    h_0 = x,    a_l = h_{l-1} W_l + b_l,    h_l = rho(a_l)  (l = 1..L-1),    o = g(a_L),

trained by backprop with optax on the same split, batch size and epochs. ``rho`` is the hidden
activation (``activation``), ``g`` the output map fixed by the loss:

* ``cross_entropy``: ``o = a_L`` read as logits,
  ``C(o, y) = -log softmax(o)_y = logsumexp(o) - o_y``;
* ``squared_error``: ``o = sigma(a_L)`` (logistic sigmoid, or ``output_activation``),
  ``C(o, y) = ||o - onehot(y)||^2`` summed over output units (no factor 1/2, EP's cost
  :func:`ep_jax.costs.squared_error`).

The training loss of a batch of size ``B`` is the mean ``J(theta) = (1/B) sum_i C(o_i, y_i)``;
its gradient ``g_t = dJ/dtheta`` (``jax.grad``) is turned into an update by the optax chain

    g <- clip_by_global_norm(g, grad_clip)                     (if ``grad_clip``)
    g <- g + lambda * W                                          (L2, ``sgd``/``momentum``/``adam``;
                                                                  kernels only)
    u <- optimizer(g; eta_t)                                     (SGD: u = -eta_t g;
                                                                  momentum: m <- mu m + g, u = -eta_t m;
                                                                  Adam: u = -eta_t m_hat / (sqrt(v_hat) + eps))
    theta <- theta + u

``adamw`` instead uses decoupled weight decay ``u = -eta_t (m_hat / (sqrt(v_hat) + eps) + lambda W)``.
The learning rate is ``eta_t = eta`` (``constant``) or
``eta_t = eta * (1 + cos(pi * min(t, T) / T)) / 2`` (``cosine``, ``T = total_steps``).

Optional inverted dropout with rate ``p`` on every hidden layer during ``train_step`` only:
``h_l <- h_l * m / (1 - p)``, ``m ~ Bernoulli(1 - p)``.

All state lives in :class:`BPState` (a pytree of arrays), the methods are pure and jit-able, and
the learner is a frozen (hashable) dataclass, so ``jax.jit(learner.train_step)`` compiles once.
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax.linen import initializers

from ep_jax.activations import ACTIVATIONS
from ep_jax.costs import as_dense_target, classification_error

OPTIMIZERS = ("adam", "adamw", "momentum", "nesterov", "sgd")
LOSSES = ("cross_entropy", "squared_error")
SCHEDULES = ("constant", "cosine")
KERNEL_INITS = ("auto", "glorot_uniform", "he_uniform", "lecun_normal")
PARAM_DTYPES = ("float32", "float64", "bfloat16", "float16")


class BPState(NamedTuple):
    """Learner state: ``params`` ``{"layer_l": {"kernel": (n_l, n_{l+1}), "bias": (n_{l+1},)}}``
    and the optax state ``opt_state`` (which holds the step count used by schedules)."""

    params: dict
    opt_state: Any


def _check_choice(name: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"{name}: expected one of {sorted(allowed)}, received {value!r}")


@dataclasses.dataclass(frozen=True)
class BackpropLearner:
    """A feed-forward MLP with EP's layer sizes, trained by backprop (see the module docstring).

    The defaults are the configuration selected on a validation split for 784-500-10 on
    MNIST-10k (batch 20, 25 epochs): ReLU, Adam, eta = 3e-3 with cosine decay, dropout 0.2,
    softmax cross-entropy, no weight decay (it also won for 784-500-500-10). Other presets have
    their own tuned values in ``benchmarks/results/bp_mnist10k_tuning.{md,json}``.

    Attributes:
        sizes: Layer sizes ``(n_in, hidden..., n_out)``, at least two positive ints.
        activation: Hidden activation ``rho`` (a name in :data:`ep_jax.activations.ACTIVATIONS`).
        optimizer: ``sgd``, ``momentum`` (heavy ball), ``nesterov``, ``adam`` or ``adamw``.
        learning_rate: Peak learning rate ``eta``.
        weight_decay: ``lambda``: coupled L2 on the kernels (``adamw``: decoupled, all params).
        momentum: ``mu`` for ``momentum``/``nesterov``.
        schedule: ``constant`` or ``cosine`` (decays to 0 over ``total_steps``).
        total_steps: Number of optimizer steps of the run (``epochs * batches_per_epoch``);
            required (> 0) by ``cosine``, checked in :meth:`init`.
        grad_clip: Global-norm clip of the gradient, if set.
        loss: ``cross_entropy`` (softmax on linear outputs) or ``squared_error`` (on
            ``output_activation`` outputs).
        dropout: Inverted-dropout rate on the hidden layers during training, in ``[0, 1)``.
        output_activation: Output map for ``squared_error`` (default ``sigmoid``); must be
            ``identity``/``None`` for ``cross_entropy``.
        kernel_init: ``glorot_uniform``, ``he_uniform``, ``lecun_normal`` or ``auto``
            (He for ``relu``, Glorot otherwise). Biases start at zero.
        param_dtype: dtype of the parameters; inputs are cast to it, metrics come out in it.
    """

    sizes: tuple = (784, 500, 10)
    activation: str = "relu"
    optimizer: str = "adam"
    learning_rate: float = 3e-3
    weight_decay: float = 0.0
    momentum: float = 0.9
    schedule: str = "cosine"
    total_steps: int = 0
    grad_clip: float | None = None
    loss: str = "cross_entropy"
    dropout: float = 0.2
    output_activation: str | None = None
    kernel_init: str = "auto"
    param_dtype: str = "float32"

    def __post_init__(self):
        sizes = self.sizes
        if isinstance(sizes, (int, str)) or not hasattr(sizes, "__iter__"):
            raise ValueError(f"sizes: expected a sequence of >= 2 positive ints, received {sizes!r}")
        sizes = tuple(sizes)
        if len(sizes) < 2 or not all(
            isinstance(n, numbers.Integral) and not isinstance(n, bool) and n > 0 for n in sizes
        ):
            raise ValueError(f"sizes: expected a sequence of >= 2 positive ints, received {sizes!r}")
        object.__setattr__(self, "sizes", tuple(int(n) for n in sizes))
        _check_choice("activation", self.activation, ACTIVATIONS)
        _check_choice("optimizer", self.optimizer, OPTIMIZERS)
        _check_choice("loss", self.loss, LOSSES)
        _check_choice("schedule", self.schedule, SCHEDULES)
        _check_choice("kernel_init", self.kernel_init, KERNEL_INITS)
        if self.output_activation is not None:
            _check_choice("output_activation", self.output_activation, ACTIVATIONS)
            if self.loss == "cross_entropy" and self.output_activation != "identity":
                raise ValueError(
                    "output_activation: cross_entropy reads the outputs as logits, expected "
                    f"None or 'identity', received {self.output_activation!r}"
                )
        try:
            dtype_name = jnp.dtype(self.param_dtype).name
        except TypeError:
            dtype_name = repr(self.param_dtype)
        _check_choice("param_dtype", dtype_name, PARAM_DTYPES)
        object.__setattr__(self, "param_dtype", dtype_name)
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate: expected > 0, received {self.learning_rate!r}")
        if not self.weight_decay >= 0:
            raise ValueError(f"weight_decay: expected >= 0, received {self.weight_decay!r}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum: expected in [0, 1), received {self.momentum!r}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout: expected in [0, 1), received {self.dropout!r}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"grad_clip: expected None or > 0, received {self.grad_clip!r}")
        if not (isinstance(self.total_steps, numbers.Integral) and self.total_steps >= 0):
            raise ValueError(f"total_steps: expected an int >= 0, received {self.total_steps!r}")
        object.__setattr__(self, "total_steps", int(self.total_steps))

    # ------------------------------------------------------------------ construction

    @property
    def dtype(self):
        return jnp.dtype(self.param_dtype)

    def _kernel_init(self):
        name = self.kernel_init
        if name == "auto":
            name = "he_uniform" if self.activation == "relu" else "glorot_uniform"
        return getattr(initializers, name)()

    def _schedule(self):
        if self.schedule == "constant":
            return self.learning_rate
        return optax.cosine_decay_schedule(self.learning_rate, max(self.total_steps, 1))

    def tx(self) -> optax.GradientTransformation:
        """The optax chain: clip -> (L2 on kernels) -> optimizer with the scheduled rate."""
        lr = self._schedule()
        parts = []
        if self.grad_clip is not None:
            parts.append(optax.clip_by_global_norm(self.grad_clip))
        if self.weight_decay > 0 and self.optimizer != "adamw":
            kernels_only = lambda p: {k: {"kernel": True, "bias": False} for k in p}
            parts.append(optax.add_decayed_weights(self.weight_decay, mask=kernels_only))
        if self.optimizer == "sgd":
            parts.append(optax.sgd(lr))
        elif self.optimizer == "momentum":
            parts.append(optax.sgd(lr, momentum=self.momentum))
        elif self.optimizer == "nesterov":
            parts.append(optax.sgd(lr, momentum=self.momentum, nesterov=True))
        elif self.optimizer == "adam":
            parts.append(optax.adam(lr))
        else:  # adamw
            parts.append(optax.adamw(lr, weight_decay=self.weight_decay))
        return optax.chain(*parts)

    def init(self, key: jax.Array, n_train: int = 0) -> BPState:
        """Initial parameters (Glorot/He kernels, zero biases) and optimizer state.

        Args:
            key: PRNG key for the kernels.
            n_train: Size of the training set (unused by backprop; EP's persistent particles
                need it).

        Returns:
            The initial :class:`BPState`.
        """
        del n_train
        if self.schedule == "cosine" and self.total_steps <= 0:
            raise ValueError(
                "total_steps: schedule 'cosine' needs total_steps = epochs * batches_per_epoch "
                f"> 0, received {self.total_steps!r}"
            )
        init = self._kernel_init()
        keys = jax.random.split(key, len(self.sizes) - 1)
        params = {
            f"layer_{l}": {
                "kernel": init(keys[l], (n0, n1), self.dtype),
                "bias": jnp.zeros((n1,), self.dtype),
            }
            for l, (n0, n1) in enumerate(zip(self.sizes[:-1], self.sizes[1:]))
        }
        return BPState(params, self.tx().init(params))

    # ------------------------------------------------------------------ model

    def apply(self, params: dict, x: jax.Array, key: jax.Array | None = None) -> jax.Array:
        """Pre-activations of the output layer ``a_L`` (logits) for inputs ``x`` ``(B, n_in)``.

        Dropout is applied to the hidden layers iff ``key`` is given and ``dropout > 0``.
        """
        rho = ACTIVATIONS[self.activation]
        n_layers = len(self.sizes) - 1
        h = jnp.asarray(x).astype(params["layer_0"]["kernel"].dtype)
        keys = None
        if key is not None and self.dropout > 0 and n_layers > 1:
            keys = jax.random.split(key, n_layers - 1)
        for l in range(n_layers):
            p = params[f"layer_{l}"]
            a = h @ p["kernel"] + p["bias"]
            if l == n_layers - 1:
                return a
            h = rho(a)
            if keys is not None:
                keep = jax.random.bernoulli(keys[l], 1.0 - self.dropout, h.shape)
                h = jnp.where(keep, h / jnp.asarray(1.0 - self.dropout, h.dtype), jnp.zeros_like(h))
        raise AssertionError("unreachable")

    def outputs(self, logits: jax.Array) -> jax.Array:
        """Output map ``g``: identity for cross-entropy, ``sigmoid`` (or ``output_activation``)
        for squared error."""
        if self.loss == "cross_entropy":
            return logits
        return ACTIVATIONS[self.output_activation or "sigmoid"](logits)

    def per_example_loss(self, logits: jax.Array, y: jax.Array) -> jax.Array:
        """``C(g(a_L), y)`` per example, shape ``(B,)``."""
        t = as_dense_target(y, logits.shape[-1], logits.dtype)
        if self.loss == "cross_entropy":
            return -jnp.sum(t * jax.nn.log_softmax(logits, axis=-1), axis=-1)
        return jnp.sum((self.outputs(logits) - t) ** 2, axis=-1)

    def loss_fn(self, params: dict, x: jax.Array, y: jax.Array, key: jax.Array | None = None):
        """Batch-mean loss ``J`` and the logits, ``(J, logits)``."""
        logits = self.apply(params, x, key)
        return jnp.mean(self.per_example_loss(logits, y)), logits

    # ------------------------------------------------------------------ learner interface

    def train_step(
        self, state: BPState, x: jax.Array, y: jax.Array, idx: jax.Array, key: jax.Array
    ) -> tuple[BPState, dict[str, jax.Array]]:
        """One optimizer step on the batch ``(x, y)``.

        Args:
            state: Current :class:`BPState`.
            x: Inputs ``(B, n_in)``.
            y: Integer labels ``(B,)``.
            idx: Indices of the examples in the training set (unused by backprop).
            key: PRNG key for this step (dropout masks).

        Returns:
            The new state and ``{"error", "cost"}``: the fraction of the batch misclassified and
            the mean loss ``J``, both measured in the forward pass before the update (with
            dropout active, if any).
        """
        del idx
        (cost, logits), grads = jax.value_and_grad(self.loss_fn, has_aux=True)(
            state.params, x, y, key if self.dropout > 0 else None
        )
        updates, opt_state = self.tx().update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return BPState(params, opt_state), {"error": classification_error(logits, y), "cost": cost}

    def evaluate(self, state: BPState, x: jax.Array, y: jax.Array) -> dict[str, jax.Array]:
        """``{"error", "cost"}`` on a whole split (no dropout): fraction wrong and mean loss."""
        cost, logits = self.loss_fn(state.params, x, y)
        return {"error": classification_error(logits, y), "cost": cost}

    def predict(self, state: BPState, x: jax.Array) -> jax.Array:
        """Predicted classes ``argmax a_L``, shape ``(B,)``."""
        return jnp.argmax(self.apply(state.params, x), axis=-1)

    def params(self, state: BPState) -> dict:
        """The parameter dict of ``state``."""
        return state.params
