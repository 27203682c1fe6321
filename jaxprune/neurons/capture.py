"""Capture hidden activations from flax models and stream them into :class:`UnitStats`.

Two ways to say which activations are measured:

* **An unmodified model** (``layers=...``): choose modules by a glob on their path and the point
  to record, ``'fc1'`` (its output) or ``{'fc1': 'head:input'}`` (the input of ``head``, i.e. fc1's
  post-ReLU units, filed under ``fc1`` so the scores map onto fc1's params). linen goes through
  ``nn.intercept_methods``, nnx through ``nnx.capture`` with a per-call interceptor
  (:mod:`jaxprune.neurons.taps`); the model is left unchanged.
* **The explicit contract** (``layers=None``): hidden layers call
  :func:`jaxprune.models.sow_activation` (linen) or :func:`jaxprune.models.sow_activation_nnx` (NNX)
  on their post-nonlinearity output; the value lands in the layer's own scope, so a captured name
  such as ``'BasicBlock_0/Conv_0'`` is the params path of the layer that owns the units.
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
from jaxprune.neurons.taps import kernel_layers, parse_taps, record, select

_CONTRACT = ("a flax.linen.Module (with its variables) or a flax.nnx.Module (variables=None); pass "
             "layers=... (e.g. {'fc1': 'head:input'} for fc1's post-activation units, or "
             "hidden_layers(model, variables, x) for every hidden Dense/Conv output), or have the "
             "hidden layers record their post-activation output with "
             "jaxprune.models.sow_activation / sow_activation_nnx")


def capture_activations(model: Any, variables: Mapping | None, x: jax.Array, *, layers: Any = None,
                        **kwargs: Any) -> dict[str, jax.Array]:
    """Hidden activations of one forward pass, keyed by layer path (``'Dense_0'``).

    ``layers=None`` reads what the model sows (:func:`jaxprune.models.sow_activation`). Otherwise
    ``layers`` chooses modules of an unmodified model: a glob on the module path (``'fc1'``,
    ``'*/conv_a'``; records the output), ``'path:input'`` (records the input), a predicate
    ``(path) -> bool``, a list of these, or a mapping ``{key: 'path[:input|:output]'}`` to file a
    value under another name: ``{'fc1': 'head:input'}`` gives fc1's post-activation units when only
    an activation function lies between fc1 and head. ``kwargs`` go to the model call.

    Example:
        >>> from jaxprune.models import MLP, init_params
        >>> m = MLP((8, 4, 2))
        >>> v = init_params(m, jax.random.PRNGKey(0), (1, 3))
        >>> {k: a.shape for k, a in capture_activations(m, v, jnp.ones((5, 3))).items()}
        {'Dense_0': (5, 8), 'Dense_1': (5, 4)}
        >>> post = capture_activations(m, v, jnp.ones((5, 3)), layers={'Dense_0': 'Dense_1:input'})
        >>> bool(post['Dense_0'].min() >= 0), post['Dense_0'].shape  # after the ReLU
        (True, (5, 8))
    """
    if layers is not None:
        return _capture_taps(model, variables, x, parse_taps(layers), kwargs)
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
        raise _NothingSown(f"capture_activations: {type(model).__name__} recorded no activations; "
                           f"expected {_CONTRACT}")
    return acts


class _NothingSown(PruningError):
    """The model sows no activations (so it must be told which layers to capture)."""


def _capture_taps(model: Any, variables: Any, x: jax.Array, taps: tuple, kwargs: Mapping
                  ) -> dict[str, jax.Array]:
    if isinstance(model, nnx.Module) and variables is not None:
        raise PruningError("capture_activations: an NNX model carries its own state; pass variables=None")
    if not isinstance(model, (nn.Module, nnx.Module)):
        raise PruningError(f"capture_activations: expected {_CONTRACT}; got {type(model).__name__}")
    _, recorded, called = record(model, variables, x, taps, kwargs)
    if isinstance(model, nnx.Module):
        called = ["/".join(str(p) for p in parts) for parts, _ in nnx.iter_modules(model) if parts]
    return select(taps, recorded, called)


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

    A model that sows activations: the sown layers. An unmodified model: every module owning a
    ``kernel`` param (Dense, Conv, nnx Linear, attention projections) except the one whose output is
    the model's output (its units are the classes). Capturing these layers' *outputs* measures
    pre-activation values; see ``docs/neurons.md`` for which point each criterion wants.

    Example:
        >>> from jaxprune.models import MLP, init_params
        >>> m = MLP((8, 4, 2)); v = init_params(m, jax.random.PRNGKey(0), (1, 3))
        >>> hidden_layers(m, v, jnp.ones((1, 3)))
        ('Dense_0', 'Dense_1')
    """
    try:
        return tuple(_activation_shapes(model, variables, x, kwargs, None))
    except _NothingSown:
        return kernel_layers(model, variables, x, kwargs)


def collect_activation_stats(model: Any, variables: Mapping | None, batches: Iterable, *,
                             bins: int = DEFAULT_BINS, hist_range: tuple | None = None,
                             layers: Any = None, **kwargs: Any) -> dict[str, UnitStats]:
    """Stream calibration batches through ``model`` and return ``{layer: UnitStats}``.

    ``layers`` chooses what is measured, as in :func:`capture_activations` (``None``: what the model
    sows). ``batches`` yields input arrays (or tuples/lists whose first item is the input). With
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
        >>> post = collect_activation_stats(m, v, xs, bins=8, layers={'Dense_0': 'Dense_1:input'})
        >>> bool(post['Dense_0'].minimum.min() >= 0)
        True
    """
    if not isinstance(model, (nn.Module, nnx.Module)):
        raise PruningError(f"collect_activation_stats: expected {_CONTRACT}; got {type(model).__name__}")
    taps = None if layers is None else parse_taps(layers)
    batches = [_input_of(b) for b in batches] if hist_range is None else batches
    stats = None
    for sweep in range(1 if hist_range is not None else 2):
        seen = 0
        if sweep == 1:
            stats = {k: with_observed_range(s) for k, s in stats.items()}
        for batch in batches:
            x = _input_of(batch)
            if stats is None:
                stats = _init_from_shapes(model, variables, x, bins, hist_range, kwargs, taps)
            stats = _step(model, variables, stats, x, kwargs, taps)
            seen += 1
        if seen == 0:
            raise PruningError("collect_activation_stats: batches is empty; need calibration data")
    return stats


def _input_of(batch: Any) -> jax.Array:
    return batch[0] if isinstance(batch, (tuple, list)) else batch


def _capture(model, variables, x, kwargs, taps) -> dict[str, jax.Array]:
    if taps is None:
        return capture_activations(model, variables, x, **kwargs)
    return _capture_taps(model, variables, x, taps, kwargs)


def _activation_shapes(model, variables, x, kwargs, taps) -> dict[str, jax.ShapeDtypeStruct]:
    if isinstance(model, nnx.Module):
        if variables is not None:
            raise PruningError("an NNX model carries its own state; pass variables=None")
        graphdef, state = nnx.split(model)
        fn = lambda s, a: _capture(nnx.merge(graphdef, s), None, a, kwargs, taps)
        return jax.eval_shape(fn, state, x)
    return jax.eval_shape(lambda v, a: _capture(model, v, a, kwargs, taps), variables, x)


def _init_from_shapes(model, variables, x, bins, hist_range, kwargs, taps) -> dict[str, UnitStats]:
    acts = _activation_shapes(model, variables, x, kwargs, taps)
    return {k: init_unit_stats(a.shape[-1], bins=bins, hist_range=hist_range) for k, a in acts.items()}


def _step(model, variables, stats, x, kwargs, taps) -> dict[str, UnitStats]:
    if isinstance(model, nnx.Module):
        graphdef, state = nnx.split(model)
        return _nnx_step(graphdef, _freeze(kwargs), taps, state, stats, x)
    try:
        hash((model, _freeze(kwargs), taps))
    except TypeError:  # e.g. MLP([128, 10]) with a list field: jit without the compile cache
        return jax.jit(lambda v, s, a: _linen_step.__wrapped__(model, _freeze(kwargs), taps, v, s, a))(
            variables, stats, x)
    return _linen_step(model, _freeze(kwargs), taps, variables, stats, x)


def _freeze(kwargs: Mapping) -> tuple:
    return tuple(sorted(kwargs.items()))


def _update_all(stats: dict, acts: dict) -> dict:
    return {k: update_unit_stats(s, acts[k]) for k, s in stats.items()}


# Module-level jits with the (hashable) model and taps as static arguments: repeated calls with the
# same model and batch shape reuse one compilation.
@jax.jit(static_argnums=(0, 1, 2))
def _linen_step(model, kwargs, taps, variables, stats, x):
    return _update_all(stats, _capture(model, variables, x, dict(kwargs), taps))


@jax.jit(static_argnums=(0, 1, 2))
def _nnx_step(graphdef, kwargs, taps, state, stats, x):
    model = nnx.merge(graphdef, state)  # a copy inside the trace: the caller's model is untouched
    return _update_all(stats, _capture(model, None, x, dict(kwargs), taps))
