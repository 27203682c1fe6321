"""Shared model plumbing: the activation-capture contract and linen initialisation.

The neuron criteria (:mod:`jaxprune.neurons`) measure the post-activation output of a hidden layer. A
model opts in by calling :func:`sow_activation` on the layer that produces the unit, right after the
nonlinearity. The value is stored *in that layer's own scope*, so the captured tree has the layer's
path, ``activations/Dense_0/activation``, which maps one-to-one onto ``params/Dense_0/kernel``.
"""

from __future__ import annotations

import inspect
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax import nnx

from jaxprune.errors import PruningError

ACTIVATIONS = "activations"
"""Linen collection that holds sown post-activation outputs (mutable only while capturing)."""

ACTIVATION_NAME = "activation"
"""Name of the sown variable inside the producing layer's scope."""


def sow_activation(layer: nn.Module, x: jax.Array) -> jax.Array:
    """Record ``x`` (the post-activation output of ``layer``) for the neuron statistics; returns ``x``.

    The value is only stored when the caller asked for the ``'activations'`` collection (so normal
    training and ``model.init`` carry nothing extra).

    Example:
        >>> import flax.linen as nn
        >>> class Tiny(nn.Module):
        ...     @nn.compact
        ...     def __call__(self, x):
        ...         dense = nn.Dense(3)
        ...         x = sow_activation(dense, nn.relu(dense(x)))
        ...         return nn.Dense(2)(x)
        >>> v = Tiny().init(jax.random.PRNGKey(0), jnp.ones((1, 4)))
        >>> _, st = Tiny().apply(v, jnp.ones((5, 4)), mutable=[ACTIVATIONS])
        >>> st[ACTIVATIONS]['Dense_0'][ACTIVATION_NAME][0].shape
        (5, 3)
    """
    # Sowing into the child's scope (not the parent's) keeps the layer's own path and avoids a
    # name clash between a variable 'Dense_0' and the submodule 'Dense_0' in the parent scope.
    if layer.is_mutable_collection(ACTIVATIONS) and not layer.is_initializing():
        layer.sow(ACTIVATIONS, ACTIVATION_NAME, x)
    return x


def sow_activation_nnx(layer: nnx.Module, x: jax.Array) -> jax.Array:
    """NNX twin of :func:`sow_activation`: records ``x`` as an ``nnx.Intermediate`` on ``layer``.

    Only records inside ``nnx.capture(..., nnx.Intermediate)``; elsewhere it does nothing (an
    uncaptured NNX sow would append to module state on every training step and is deprecated).

    Example:
        >>> lin = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
        >>> fwd = nnx.capture(lambda m, x: sow_activation_nnx(m, nnx.relu(m(x))), nnx.Intermediate)
        >>> y, inter = fwd(lin, jnp.ones((4, 2)))
        >>> inter[ACTIVATION_NAME][0].shape
        (4, 3)
    """
    # nnx.capture installs `__captures__` on every submodule for the duration of the call.
    if hasattr(layer, "__captures__"):
        layer.sow(nnx.Intermediate, ACTIVATION_NAME, x)
    return x


def flatten_examples(x: jax.Array) -> jax.Array:
    """Flatten everything but the batch axis: (N, H, W, C) -> (N, H*W*C).

    Example:
        >>> flatten_examples(jnp.ones((2, 28, 28, 1))).shape
        (2, 784)
    """
    return jnp.reshape(x, (x.shape[0], -1))


def init_params(model: nn.Module, key: jax.Array, input_shape: Sequence[int], **kwargs: Any) -> dict:
    """Initialise a linen model on zeros of ``input_shape`` (batch axis included); returns variables.

    The result is the full variables dict (``{'params': ..., 'batch_stats': ...}`` for BatchNorm
    models). Models with a ``train`` argument are initialised with ``train=False``.

    Example:
        >>> from jaxprune.models import MLP
        >>> v = init_params(MLP((128, 10)), jax.random.PRNGKey(0), (1, 28, 28, 1))
        >>> v['params']['Dense_0']['kernel'].shape
        (784, 128)
    """
    if not isinstance(model, nn.Module):
        raise PruningError(f"init_params: model must be a flax.linen.Module, got {type(model).__name__}")
    shape = tuple(int(d) for d in input_shape)
    if len(shape) < 2:
        raise PruningError(f"init_params: input_shape must include the batch axis, got {shape}")
    kwargs = {**train_kwargs(model), **kwargs}
    variables = jax.jit(lambda k, x: model.init(k, x, **kwargs))(key, jnp.zeros(shape, jnp.float32))
    return {col: tree for col, tree in variables.items() if col != ACTIVATIONS}


def takes_train(model: Any) -> bool:
    """Whether ``model.__call__`` has a ``train`` argument (BatchNorm / dropout models).

    >>> from jaxprune.models import MLP, ResNet20
    >>> takes_train(MLP((4, 2))), takes_train(ResNet20())
    (False, True)
    """
    return "train" in inspect.signature(type(model).__call__).parameters


def train_kwargs(model: Any, train: bool = False) -> dict:
    """``{'train': train}`` for a model that takes ``train`` (:func:`takes_train`), else ``{}``: the
    keyword arguments of a call in training or inference mode.

    >>> from jaxprune.models import MLP, ResNet20
    >>> train_kwargs(MLP((4, 2))), train_kwargs(ResNet20(), True)
    ({}, {'train': True})
    """
    return {"train": train} if takes_train(model) else {}
