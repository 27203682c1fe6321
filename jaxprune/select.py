"""Mask selection over pytrees: exact counts, deterministic, no full sort.

``topk_masks`` removes the lowest-scoring units of each leaf at that leaf's sparsity; ``global_masks``
removes the lowest-scoring units across all selected leaves with one threshold. The structure
(``Unstructured``, ``NM``, ``Block``, ``Neurons``, ``Channels``) turns each leaf into units and the
units' keep-mask back into a mask of the leaf's shape; the ranking itself is :mod:`jaxprune.ranking`
(radix select over order-preserving integer keys, exact in the scores' own dtype, NaN refused when
concrete and pruned first when traced). Ties at the threshold are broken by position: leaves in tree
order, then flat (row-major) index, lowest first. :func:`prune_lowest` is re-exported from there.

Every function here works under ``jit`` and ``vmap`` whether the scores and sparsities are arguments
or closed over.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune.counts import check_sparsity_value, is_concrete, num_pruned
from jaxprune.errors import PruningError
from jaxprune.paths import Selector, check_same_structure, flatten_with_paths, path_str, selected_paths
from jaxprune.ranking import check_finite, exact_scores, prune_each, prune_lowest
from jaxprune.structures import NM, Neurons, Structure, Unstructured

__all__ = ["topk_masks", "global_masks", "prune_lowest"]


def _min_keep(structure: Structure) -> int:
    """Units every leaf keeps under ``structure`` (``min_keep``, 0 for element-wise structures)."""
    return int(getattr(structure, "min_keep", 0))


def _is_output(structure: Structure, path: str, leaf: Any) -> bool:
    """Whether the structure keeps every unit of the leaf (a model output); may raise when unsaid."""
    fn = getattr(structure, "is_output", None)
    return bool(fn(path, leaf)) if fn is not None else False


def _check_outputs_exist(structure: Structure, paths: Sequence[str], leaves: Sequence[Any]) -> None:
    """A non-empty ``outputs`` selector that names no leaf of the tree is a mistake (e.g. paths of
    the variables dict used on the params subtree): raise instead of protecting nothing."""
    outputs = getattr(structure, "outputs", None)
    if outputs is None or (isinstance(outputs, (list, tuple)) and len(outputs) == 0):
        return
    if not any(_is_output(structure, p, x) for p, x in zip(paths, leaves)):
        raise PruningError(
            f"{type(structure).__name__}: outputs={outputs!r} matches no leaf of the scores tree "
            f"(its leaves are {list(paths)[:6]}...); output_kernels must be traced on the same tree "
            "that is pruned")


def _sparsity_tree(scores: Any, sparsities: Any, include: Selector) -> list[Any]:
    """Per-leaf sparsity list from a tree of scalars or one scalar applied to ``include``."""
    flat, _ = flatten_with_paths(scores)  # two leaves with one path string are an error
    paths = [p for p, _ in flat]
    if jax.tree_util.treedef_is_leaf(jax.tree.structure(sparsities)) and np.ndim(sparsities) == 0:
        check_sparsity_value(sparsities, "sparsity")
        chosen = set(selected_paths(scores, include))
        return [sparsities if p in chosen else 0.0 for p in paths]
    s_flat, _ = jax.tree_util.tree_flatten_with_path(sparsities)
    s_paths = [path_str(p) for p, _ in s_flat]
    if s_paths != paths:
        check_same_structure(jax.tree.map(lambda x: 0.0, scores), sparsities, "sparsities", "scores")
    out = []
    for p, (_, s) in zip(paths, s_flat):
        if np.ndim(s) != 0:
            raise PruningError(f"sparsities leaf '{p}' must be a scalar, got shape {np.shape(s)}")
        check_sparsity_value(s, f"sparsities leaf '{p}'")
        out.append(s)
    return out


def topk_masks(
    scores: Any,
    sparsities: Any,
    *,
    structure: Structure = Unstructured(),
    include: Selector = None,
) -> Any:
    """Layerwise masks: each leaf keeps its highest-scoring units at its own sparsity.

    Args:
      scores: pytree of score arrays (higher = keep), e.g. from :func:`magnitude_scores`.
      sparsities: a tree of scalars with the structure of ``scores`` (from ``uniform_sparsity`` /
        ``erk_sparsity``), or one scalar applied to the leaves chosen by ``include``. Scalars may be
        traced: changing them does not recompile.
      structure: ``Unstructured()``, ``NM(n, m)``, ``Block(shape)``, ``Neurons(axis, outputs=...)``,
        ``Channels(outputs=...)``.
      include: selector used only when ``sparsities`` is a scalar (default: kernels).

    Returns:
      A tree of boolean arrays (True = keep) with the structure and leaf shapes of ``scores``. A leaf
      at sparsity ``s`` with ``u`` units loses exactly ``min(round_half_even(s * u), u - min_keep)``
      units (``min_keep`` is 0 for ``Unstructured``/``Block``, 1 by default for ``Neurons``/
      ``Channels``, whose ``outputs`` leaves lose none).

    >>> m = topk_masks({'w': jnp.array([[0.1, 0.4], [0.3, 0.2]])}, {'w': 0.5})
    >>> m['w'].tolist()
    [[False, True], [True, False]]
    """
    svals = _sparsity_tree(scores, sparsities, include)
    flat, treedef = flatten_with_paths(scores)  # two leaves with one path string are an error
    paths = [p for p, _ in flat]
    _check_outputs_exist(structure, paths, [x for _, x in flat])
    out: list[Any] = [None] * len(flat)
    todo, units, ks = [], [], []
    for i, ((_, leaf), s, path) in enumerate(zip(flat, svals, paths)):
        shape = tuple(np.shape(leaf))
        if is_concrete(s) and float(s) == 0.0:
            out[i] = jnp.ones(shape, bool)
            continue
        structure.check(path, shape)
        leaf = exact_scores(leaf, path)
        check_finite(leaf, path)
        if isinstance(structure, NM):
            out[i] = structure.mask(path, jnp.asarray(leaf), s)
            continue
        if _is_output(structure, path, leaf):
            out[i] = jnp.ones(shape, bool)
            continue
        u = structure.units(path, jnp.asarray(leaf))
        n = int(u.size)
        todo.append(i)
        units.append(u)
        ks.append(num_pruned(s, n, min_keep=_min_keep(structure)))
    for i, keep in zip(todo, prune_each(units, ks, names=[paths[j] for j in todo]) if todo else []):
        out[i] = structure.expand(paths[i], tuple(np.shape(flat[i][1])), keep)
    return jax.tree.unflatten(treedef, out)


_NORMS = {
    "l1": lambda u: jnp.sum(jnp.abs(u)),
    "l2": lambda u: jnp.sqrt(jnp.sum(jnp.square(u))),
    "max": lambda u: jnp.max(jnp.abs(u)),
    "mean": lambda u: jnp.mean(jnp.abs(u)),
}


def _normalise(units: jax.Array, how: Optional[str], path: str) -> jax.Array:
    """``units`` over their ``how`` statistic. An infinite statistic (inf scores) cannot rescale:
    concrete, it raises; traced, the leaf stays unnormalised (its inf units then rank highest)
    instead of turning inf / inf into NaN, which would be pruned first."""
    if how is None:
        return units
    n = _NORMS[how](units)
    if is_concrete(n) and not bool(jnp.isfinite(n)):
        raise PruningError(f"global_masks: scores leaf '{path}' has infinite unit scores, so "
                           f"normalize={how!r} cannot rescale it; pass normalize=None or give it "
                           "finite scores")
    return units / jnp.where((n > 0) & jnp.isfinite(n), n, 1.0)


def _resolve_normalize(normalize: Optional[str], structure: Structure) -> Optional[str]:
    if normalize == "auto":
        # Unit scores of different layers live on different scales (fan-in, init, depth); dividing
        # by each leaf's mean unit score compares a unit with its own layer (Molchanov et al. 2017
        # normalise per layer likewise). Element-wise global magnitude pruning stays unnormalised,
        # as in the literature it reproduces.
        return "mean" if isinstance(structure, Neurons) else None
    if normalize is not None and normalize not in _NORMS:
        raise PruningError(f"global_masks: normalize must be None, 'auto' or one of {sorted(_NORMS)}, "
                           f"got {normalize!r}")
    return normalize


def global_masks(
    scores: Any,
    sparsity: Any,
    *,
    include: Selector = None,
    exclude: Selector = (),
    structure: Structure = Unstructured(),
    normalize: Optional[str] = "auto",
) -> Any:
    """Global masks: one threshold across all selected leaves removes ``round(s * total units)``.

    Args:
      scores: pytree of score arrays (higher = keep).
      sparsity: scalar in [0, 1], may be traced.
      include / exclude: selectors of the leaves that compete (default: kernels); others stay dense.
      structure: ``Unstructured()``, ``Block``, ``Neurons`` or ``Channels`` (not ``NM``). Leaves named
        by a ``Neurons``/``Channels`` ``outputs=`` selector do not compete (they stay dense), and each
        competing leaf keeps at least ``min_keep`` units: ``min(round(s * N), N - sum(min_keep))``
        units go, N counting the competing units.
      normalize: ``'auto'`` (default: ``'mean'`` for ``Neurons``/``Channels``, ``None`` otherwise),
        ``None``, ``'mean'``, ``'l1'``, ``'l2'`` or ``'max'``: divide each leaf's unit scores by that
        statistic of their absolute values first, so layers with different score scales compete
        fairly.

    >>> m = global_masks({'a': jnp.array([[1.0, 5.0]]), 'b': jnp.array([[2.0, 3.0]])}, 0.5,
    ...                  include=['a', 'b'])
    >>> m['a'].tolist(), m['b'].tolist()
    ([[False, True]], [[False, True]])
    """
    if isinstance(structure, NM):
        raise PruningError("global_masks: NM structure is per-group by definition; use topk_masks")
    how = _resolve_normalize(normalize, structure)
    check_sparsity_value(sparsity, "sparsity")
    chosen = set(selected_paths(scores, include, exclude))
    flat, treedef = flatten_with_paths(scores)  # two leaves with one path string are an error
    paths = [p for p, _ in flat]
    _check_outputs_exist(structure, paths, [x for _, x in flat])
    units, where = [], []
    for path, (_, leaf) in zip(paths, flat):
        if path not in chosen:
            continue
        structure.check(path, tuple(np.shape(leaf)))
        leaf = exact_scores(leaf, path)
        check_finite(leaf, path)
        if _is_output(structure, path, leaf):
            continue
        units.append(_normalise(structure.units(path, jnp.asarray(leaf)), how, path))
        where.append(path)
    keeps = dict(zip(where, _global_keep(units, where, sparsity, _min_keep(structure))))
    out = [
        structure.expand(path, tuple(np.shape(leaf)), keeps[path])
        if path in keeps else jnp.ones(np.shape(leaf), bool)
        for path, (_, leaf) in zip(paths, flat)
    ]
    return jax.tree.unflatten(treedef, out)


def _global_keep(units: list[jax.Array], where: list[str], sparsity: Any,
                 min_keep: int) -> list[jax.Array]:
    """Keep-masks over the competing unit arrays: one threshold, each keeps its ``min_keep`` best."""
    if not units:
        return []
    sizes = [int(u.size) for u in units]
    k = num_pruned(sparsity, sum(sizes), min_keep=sum(min(min_keep, n) for n in sizes))
    return prune_lowest(units, k, min_keep=min_keep, names=where)
