"""Unit masks: one boolean vector of kept units (Dense output features / conv output channels) per layer.

They come from an element mask tree (``topk_masks(..., structure=Neurons(outputs=...))``: a unit is kept when
any weight of its kernel slice is kept) or straight from unit scores, and go to
:func:`~jaxprune.shrink.shrink`. :func:`removal_masks` goes the other way: the element masks whose
masked model computes exactly what the shrunk model computes (the reference the tests compare with).
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from jaxprune.counts import check_sparsity_value, num_pruned
from jaxprune.errors import PruningError
from jaxprune.neurons.tree import layer_of, path_names
from jaxprune.select import prune_lowest
from jaxprune.shrink.plans import plan_for, resolve_units

__all__ = ["unit_masks", "unit_masks_from_scores", "removal_masks"]


def unit_masks(element_masks: Any) -> dict[str, np.ndarray]:
    """``{layer: (units,) bool}`` from an element mask tree: a unit is kept if any of its weights is.

    Only ``kernel`` leaves (ndim >= 2) count; the unit axis is the last one. Biases are ignored:
    ``topk_masks`` leaves them dense by default. A layer whose every unit is pruned raises (a layer is
    never emptied).

    Example:
        >>> m = {'params': {'Dense_0': {'kernel': jnp.array([[True, False], [True, False]]),
        ...                             'bias': jnp.array([True, True])}}}
        >>> {k: v.tolist() for k, v in unit_masks(m).items()}
        {'Dense_0': [True, False]}
    """
    out: dict[str, np.ndarray] = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(element_masks)[0]:
        names = path_names(path)
        if not names or names[-1] != "kernel" or np.ndim(leaf) < 2:
            continue
        if isinstance(leaf, jax.core.Tracer):
            raise PruningError(f"unit_masks: mask leaf {'/'.join(names)!r} is traced; unit masks "
                               "decide shapes and are built outside jit")
        leaf = np.asarray(leaf)
        if leaf.dtype != np.bool_:
            raise PruningError(f"unit_masks: mask leaf {'/'.join(names)!r} has dtype {leaf.dtype}, "
                               "expected bool")
        keep = leaf.reshape(-1, leaf.shape[-1]).any(axis=0)
        layer = layer_of(path)
        if not keep.any():
            raise PruningError(f"unit_masks: every unit of layer {layer!r} is pruned; a layer can "
                               "never be emptied (keep at least one unit)")
        out[layer] = keep
    if not out:
        raise PruningError("unit_masks: the mask tree has no 'kernel' leaves with a unit axis")
    return out


def unit_masks_from_scores(unit_scores: Mapping[str, Any], sparsity: Any) -> dict[str, np.ndarray]:
    """Keep the highest-scoring units of each layer; ``sparsity`` is one float or ``{layer: float}``.

    A layer of ``u`` units loses ``min(round_half_even(s * u), u - 1)`` units: the core rounding
    rule, except that the best unit always stays. Ties go lowest index first, as in ``topk_masks``.

    Example:
        >>> m = unit_masks_from_scores({'Dense_0': jnp.array([0.3, 0.1, 0.2, 0.4])}, 0.5)
        >>> m['Dense_0'].tolist()
        [True, False, False, True]
        >>> unit_masks_from_scores({'Dense_0': jnp.array([1.0, 2.0])}, 1.0)['Dense_0'].tolist()
        [False, True]
    """
    if not isinstance(unit_scores, Mapping):
        raise PruningError(f"unit_masks_from_scores: unit_scores must map layer -> (units,) scores, "
                           f"got {type(unit_scores).__name__}")
    out = {}
    for layer, scores in unit_scores.items():
        s = sparsity[layer] if isinstance(sparsity, Mapping) else sparsity
        if isinstance(sparsity, Mapping) and layer not in sparsity:
            raise PruningError(f"unit_masks_from_scores: no sparsity for layer {layer!r}")
        check_sparsity_value(s, f"unit_masks_from_scores: layer {layer!r}")
        scores = np.asarray(scores, np.float32)
        if scores.ndim != 1 or scores.size == 0:
            raise PruningError(f"unit_masks_from_scores: scores of layer {layer!r} must be a non-empty "
                               f"(units,) vector, got shape {scores.shape}")
        if np.isnan(scores).any():
            raise PruningError(f"unit_masks_from_scores: scores of layer {layer!r} contain NaN")
        k = min(int(num_pruned(s, scores.size)), scores.size - 1)
        out[layer] = np.asarray(prune_lowest([jnp.asarray(scores)], k)[0])
    return out


def removal_masks(model: nn.Module, params: Any, unit_masks: Mapping[str, Any]) -> Any:
    """Element masks (params' structure) whose masked model equals the shrunk one.

    A removed unit loses its kernel slice, its bias and the scale and bias of a BatchNorm that
    follows it, so its post-ReLU output is exactly 0, as if it were gone. (Masking the kernel alone is
    not enough: a kept bias, or a BatchNorm's shift, would still feed the next layer.) ``params`` is
    the ``'params'`` collection or the whole variables dict (other collections stay all-True).

    Example:
        >>> from jaxprune.models import MLP, init_params
        >>> v = init_params(MLP((3, 2)), jax.random.PRNGKey(0), (1, 4))
        >>> m = removal_masks(MLP((3, 2)), v, {'Dense_0': np.array([True, False, True])})
        >>> m['params']['Dense_0']['bias'].tolist(), bool(m['params']['Dense_1']['kernel'].all())
        ([True, False, True], True)
    """
    plan = plan_for(model)
    tree = params["params"] if isinstance(params, Mapping) and "params" in params else params
    keep = resolve_units(plan, tree, unit_masks)
    owner = {e.layer: keep[e.layer] for e in plan.edges}
    owner.update({n: keep[e.layer] for e in plan.edges for n in e.norms})

    def leaf_mask(path: tuple, leaf: Any) -> jax.Array:
        layer, name = layer_of(path), path_names(path)[-1]
        if layer in owner and name in ("kernel", "bias", "scale"):
            k = owner[layer]
            return jnp.broadcast_to(jnp.asarray(k).reshape((1,) * (np.ndim(leaf) - 1) + k.shape),
                                    np.shape(leaf))
        return jnp.ones(np.shape(leaf), bool)

    return jax.tree_util.tree_map_with_path(leaf_mask, params)
