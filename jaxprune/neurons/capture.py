"""Capture hidden post-activation outputs from flax models and stream them into :class:`UnitStats`.

Model contract: each prunable hidden layer calls :func:`jaxprune.models.sow_activation` (linen) or
:func:`jaxprune.models.sow_activation_nnx` (NNX) on its post-nonlinearity output. The value lands in the
layer's own scope (linen collection ``'activations'`` / ``nnx.Intermediate``), so a captured layer
name such as ``'BasicBlock_0/Conv_0'`` is exactly the params path of the layer that owns the units.
The output layer is not sown, so it is never scored.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax import nnx

from jaxprune.errors import PruningError
from jaxprune.models.common import ACTIVATION_NAME, ACTIVATIONS
from jaxprune.neurons.stats import (
    DEFAULT_BINS,
    UnitStats,
    init_unit_stats,
    update_unit_stats,
    with_observed_range,
)

_CONTRACT = ("a flax.linen.Module (with its variables) or a flax.nnx.Module (variables=None) whose "
             "hidden layers record their post-activation output with "
             "jaxprune.models.sow_activation / sow_activation_nnx")


def capture_activations(model: Any, variables: Mapping | None, x: jax.Array,
                        **kwargs: Any) -> dict[str, jax.Array]:
    """Hidden post-activation outputs of one forward pass, keyed by layer path (``'Dense_0'``).

    ``kwargs`` go to the model call (e.g. ``train=False`` for BatchNorm models).

    Example:
        >>> from jaxprune.models import MLP, init_params
        >>> m = MLP((8, 4, 2))
        >>> v = init_params(m, jax.random.PRNGKey(0), (1, 3))
        >>> {k: a.shape for k, a in capture_activations(m, v, jnp.ones((5, 3))).items()}
        {'Dense_0': (5, 8), 'Dense_1': (5, 4)}
    """
    if isinstance(model, nn.Module):
        if variables is None:
            raise PruningError("capture_activations: a linen model needs its variables, got None")
        _, state = model.apply(variables, x, mutable=[ACTIVATIONS], **kwargs)
        sown = state.get(ACTIVATIONS, {})
    elif isinstance(model, nnx.Module):
        if variables is not None:
            raise PruningError("capture_activations: an NNX model carries its own state; "
                               "pass variables=None")
        _, inter = nnx.capture(model, nnx.Intermediate)(x, **kwargs)
        sown = nnx.to_pure_dict(inter)
    else:
        raise PruningError(f"capture_activations: expected {_CONTRACT}; got {type(model).__name__}")
    acts = _by_layer(sown)
    if not acts:
        raise PruningError(f"capture_activations: {type(model).__name__} recorded no activations; "
                           f"expected {_CONTRACT}")
    return acts


def _by_layer(sown: Mapping) -> dict[str, jax.Array]:
    """{'A': {'Conv_0': {'activation': (x1, x2)}}} -> {'A/Conv_0': concat(x1, x2)}."""
    out: dict[str, jax.Array] = {}

    def walk(node: Any, path: tuple[str, ...]) -> None:
        if isinstance(node, Mapping):
            for key, child in node.items():
                if key == ACTIVATION_NAME and isinstance(child, (tuple, list)):
                    # A layer applied several times (weight sharing) sees each call's examples.
                    out["/".join(path)] = jnp.concatenate([jnp.asarray(c) for c in child], axis=0)
                else:
                    walk(child, (*path, str(key)))

    walk(sown, ())
    return out


def hidden_layers(model: Any, variables: Mapping | None, x: jax.Array, **kwargs: Any) -> tuple[str, ...]:
    """Names of the layers whose units the neuron criteria score (shape-only trace, no compute).

    Example:
        >>> from jaxprune.models import MLP, init_params
        >>> m = MLP((8, 4, 2)); v = init_params(m, jax.random.PRNGKey(0), (1, 3))
        >>> hidden_layers(m, v, jnp.ones((1, 3)))
        ('Dense_0', 'Dense_1')
    """
    return tuple(_activation_shapes(model, variables, x, kwargs))


def collect_activation_stats(model: Any, variables: Mapping | None, batches: Iterable, *,
                             bins: int = DEFAULT_BINS, hist_range: tuple | None = None,
                             **kwargs: Any) -> dict[str, UnitStats]:
    """Stream calibration batches through ``model`` and return ``{layer: UnitStats}``.

    ``batches`` yields input arrays (or tuples/lists whose first item is the input). With
    ``hist_range=None`` the data is streamed twice (observed per-unit min/max, then histograms), so a
    one-shot iterator is first turned into a list of its *inputs*; activations are never stored.
    One jitted step (forward + update) is compiled per batch shape. ``kwargs`` go to the model call.

    Example:
        >>> from jaxprune.models import MLP, init_params
        >>> m = MLP((8, 2)); v = init_params(m, jax.random.PRNGKey(0), (1, 3))
        >>> xs = [jnp.ones((4, 3)), jnp.zeros((4, 3))]
        >>> st = collect_activation_stats(m, v, xs, bins=8)
        >>> list(st), int(st['Dense_0'].count), st['Dense_0'].hist.shape
        (['Dense_0'], 8, (8, 8))
    """
    if not isinstance(model, (nn.Module, nnx.Module)):
        raise PruningError(f"collect_activation_stats: expected {_CONTRACT}; got {type(model).__name__}")
    batches = [_input_of(b) for b in batches] if hist_range is None else batches
    stats = None
    for sweep in range(1 if hist_range is not None else 2):
        seen = 0
        if sweep == 1:
            stats = {k: with_observed_range(s) for k, s in stats.items()}
        for batch in batches:
            x = _input_of(batch)
            if stats is None:
                stats = _init_from_shapes(model, variables, x, bins, hist_range, kwargs)
            stats = _step(model, variables, stats, x, kwargs)
            seen += 1
        if seen == 0:
            raise PruningError("collect_activation_stats: batches is empty; need calibration data")
    return stats


def _input_of(batch: Any) -> jax.Array:
    return batch[0] if isinstance(batch, (tuple, list)) else batch


def _activation_shapes(model, variables, x, kwargs) -> dict[str, jax.ShapeDtypeStruct]:
    if isinstance(model, nnx.Module):
        if variables is not None:
            raise PruningError("an NNX model carries its own state; pass variables=None")
        graphdef, state = nnx.split(model)
        fn = lambda s, a: capture_activations(nnx.merge(graphdef, s), None, a, **kwargs)
        return jax.eval_shape(fn, state, x)
    return jax.eval_shape(lambda v, a: capture_activations(model, v, a, **kwargs), variables, x)


def _init_from_shapes(model, variables, x, bins, hist_range, kwargs) -> dict[str, UnitStats]:
    acts = _activation_shapes(model, variables, x, kwargs)
    return {k: init_unit_stats(a.shape[-1], bins=bins, hist_range=hist_range) for k, a in acts.items()}


def _step(model, variables, stats, x, kwargs) -> dict[str, UnitStats]:
    if isinstance(model, nnx.Module):
        graphdef, state = nnx.split(model)
        return _nnx_step(graphdef, _freeze(kwargs), state, stats, x)
    try:
        hash((model, _freeze(kwargs)))
    except TypeError:  # e.g. MLP([128, 10]) with a list field: jit without the compile cache
        return jax.jit(lambda v, s, a: _linen_step.__wrapped__(model, _freeze(kwargs), v, s, a))(
            variables, stats, x)
    return _linen_step(model, _freeze(kwargs), variables, stats, x)


def _freeze(kwargs: Mapping) -> tuple:
    return tuple(sorted(kwargs.items()))


def _update_all(stats: dict, acts: dict) -> dict:
    return {k: update_unit_stats(s, acts[k]) for k, s in stats.items()}


# Module-level jits with the (hashable) model as a static argument: repeated calls with the same
# model and batch shape reuse one compilation.
@jax.jit(static_argnums=(0, 1))
def _linen_step(model, kwargs, variables, stats, x):
    return _update_all(stats, capture_activations(model, variables, x, **dict(kwargs)))


@jax.jit(static_argnums=(0, 1))
def _nnx_step(graphdef, kwargs, state, stats, x):
    model = nnx.merge(graphdef, state)
    return _update_all(stats, capture_activations(model, None, x, **dict(kwargs)))
