"""Map per-unit scores ``{layer: (units,)}`` onto a scores tree with the params' structure.

A params leaf belongs to layer ``L`` when its path, minus a leading ``'params'`` collection key and
the leaf's own name, is ``L`` (``params/Dense_0/kernel`` -> ``'Dense_0'``; ``nnx.State`` paths
``Dense_0/kernel/.value`` work the same). The unit axis is the leaf's last axis: a (in, out) kernel,
an (h, w, in, out) conv kernel and an (out,) bias all get the unit score broadcast along it, so a mean
over the other axes gives the unit score back and ``topk_masks(..., structure=Neurons(axis=-1, outputs=...))``
removes whole units. Leaves of layers without unit scores (the output layer, BatchNorm, a ResNet's
residual convs) get :func:`keep_score` — "+inf-like": the dtype's largest finite value divided by 2 x the leaf size,
so a sum or mean over the leaf stays finite (no inf, no NaN after reductions) and a layerwise or
unnormalised global selection never picks them. Still give them sparsity 0.0 / exclude them: a
``normalize=`` global selection rescales every leaf, these included.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp

from jaxprune.errors import PruningError
from jaxprune.paths import key_names


def keep_score(dtype: Any = jnp.float32, size: int = 1) -> jax.Array:
    """The "always keep" score of a leaf of ``size`` elements: finfo(dtype).max / (2·size).

    Example:
        >>> float(keep_score(jnp.float16, size=2))
        16376.0
    """
    dtype = jnp.dtype(dtype) if jnp.issubdtype(dtype, jnp.floating) else jnp.dtype(jnp.float32)
    return jnp.asarray(float(jnp.finfo(dtype).max) / (2.0 * max(int(size), 1)), dtype)


def path_names(path: tuple) -> tuple[str, ...]:
    """Readable names of a key path: :func:`jaxprune.paths.key_names` less a leading ``'params'``.

    Example:
        >>> p = jax.tree_util.tree_flatten_with_path({'params': {'Dense_0': {'kernel': 1}}})[0][0][0]
        >>> path_names(p)
        ('Dense_0', 'kernel')
    """
    names = key_names(path)
    return names[1:] if names[:1] == ("params",) else names


def layer_of(path: tuple) -> str:
    """The layer name (``'BasicBlock_0/Conv_0'``) a params leaf at ``path`` belongs to."""
    return "/".join(path_names(path)[:-1])


def unit_scores_to_tree(unit_scores: Mapping[str, jax.Array], params: Any) -> Any:
    """Broadcast ``{layer: (units,)}`` scores over every leaf of those layers; others get keep_score.

    Example:
        >>> params = {'params': {'Dense_0': {'kernel': jnp.ones((3, 2)), 'bias': jnp.ones(2)},
        ...                      'Dense_1': {'kernel': jnp.ones((2, 1)), 'bias': jnp.ones(1)}}}
        >>> t = unit_scores_to_tree({'Dense_0': jnp.array([0.5, 2.0])}, params)
        >>> t['params']['Dense_0']['kernel'].mean(axis=0).tolist(), t['params']['Dense_0']['bias'].tolist()
        ([0.5, 2.0], [0.5, 2.0])
        >>> bool(t['params']['Dense_1']['kernel'][0, 0] == keep_score(size=2))
        True
    """
    if not isinstance(unit_scores, Mapping):
        raise PruningError("unit_scores_to_tree: unit_scores must map layer name -> (units,) scores, "
                           f"got {type(unit_scores).__name__}")
    used: set[str] = set()

    def leaf_scores(path: tuple, leaf: Any) -> jax.Array:
        leaf = jnp.asarray(leaf)
        dtype = leaf.dtype if jnp.issubdtype(leaf.dtype, jnp.floating) else jnp.float32
        layer = layer_of(path)
        if layer not in unit_scores:
            return jnp.full(leaf.shape, keep_score(dtype, leaf.size), dtype)
        score = jnp.asarray(unit_scores[layer])
        if score.ndim != 1 or leaf.ndim == 0 or leaf.shape[-1] != score.shape[0]:
            raise PruningError(
                f"unit_scores_to_tree: leaf {jax.tree_util.keystr(path)} of shape {leaf.shape} has no "
                f"unit axis (last) of size {score.shape} matching the scores of layer {layer!r}")
        used.add(layer)
        unit = jnp.reshape(score.astype(dtype), (1,) * (leaf.ndim - 1) + score.shape)
        return jnp.broadcast_to(unit, leaf.shape)

    tree = jax.tree_util.tree_map_with_path(leaf_scores, params)
    missing = sorted(set(unit_scores) - used)
    if missing:
        raise PruningError(f"unit_scores_to_tree: layers {missing} match no params leaf "
                           f"(expected e.g. '{missing[0]}/kernel')")
    return tree


def kernel_leaves(params: Any, layers: Any = None) -> dict[str, jax.Array]:
    """``{layer: kernel}`` for every leaf named ``kernel`` with ndim >= 2 (optionally only ``layers``).

    Example:
        >>> p = {'params': {'Dense_0': {'kernel': jnp.ones((3, 2)), 'bias': jnp.ones(2)}}}
        >>> {k: v.shape for k, v in kernel_leaves(p).items()}
        {'Dense_0': (3, 2)}
    """
    return {k: v for k, v in layer_leaves(params, lambda name: name == "kernel").items()
            if v.ndim >= 2 and (layers is None or k in set(layers))}


def layer_leaves(params: Any, keep: Callable[[str], bool]) -> dict[str, jax.Array]:
    """``{layer: leaf}`` for the leaves whose own name satisfies ``keep`` (one per layer)."""
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        names = path_names(path)
        if names and keep(names[-1]):
            out["/".join(names[:-1])] = jnp.asarray(leaf)
    return out
