"""Mask selection: exact, deterministic, no full sort.

``topk_masks`` removes the lowest-scoring units of each leaf at that leaf's sparsity; ``global_masks``
removes the lowest-scoring units across all selected leaves with one threshold. Both find the exact
k-th smallest score by radix select over order-preserving 32-bit keys of the float32 scores: three
histogram passes (11, 11 and 10 bits, integer scatter-adds), no sort (a full XLA sort of 25.6 M
floats takes ~12 s on a 2-core CPU; the radix select 0.35 s, ``scripts/bench_select.py``). Ties at
the threshold are broken by position: leaves in tree order, then flat (row-major) index, lowest
first. Scores are compared as float32.

NaN scores raise a :class:`~jaxprune.errors.PruningError` when the scores are concrete; inside
``jit`` they cannot raise and rank below ``-inf`` (pruned first), never silently kept.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune.counts import check_sparsity_value, is_concrete, num_pruned
from jaxprune.errors import PruningError
from jaxprune.paths import Selector, check_same_structure, map_with_path, path_str, selected_paths
from jaxprune.structures import NM, Structure, Unstructured

__all__ = ["topk_masks", "global_masks", "prune_lowest"]

_INT_MIN = np.int32(-(2**31))
_FLIP = np.int32(0x7FFFFFFF)


def _sort_keys(x: jax.Array) -> jax.Array:
    """int32 keys whose order is the float order of ``x`` (-0 == +0; NaN below -inf)."""
    x = jnp.asarray(x, jnp.float32)
    x = jnp.where(x == 0, jnp.float32(0), x)
    bits = jax.lax.bitcast_convert_type(x, jnp.int32)
    keys = jnp.where(bits >= 0, bits, bits ^ _FLIP)
    return jnp.where(jnp.isnan(x), _INT_MIN, keys)


_SMALL = 1 << 12  # rows up to this length are simply sorted (cheap); longer ones use radix select.


def _kth_keys_sorted(keys: jax.Array, k: jax.Array) -> jax.Array:
    """Per row of a short (L, n) int32 key array, the k-th smallest key (1 <= k <= n), by sorting."""
    return jnp.take_along_axis(jnp.sort(keys, axis=1), (k - 1)[:, None], axis=1)[:, 0]


_RADIX_BITS = (11, 11, 10)  # digits of a 32-bit key, most significant first: 3 histogram passes.


def _kth_keys_radix(keys: jax.Array, k: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per row of an (L, n) int32 key array: the k-th smallest key t (1 <= k <= n), exactly; how
    many keys equal to t are among the k smallest; and how many keys equal t.

    Radix select: keys are mapped to order-preserving uint32, and each of three passes histograms
    one digit (11, 11, 10 bits) of the keys that share the digits found so far (an integer
    scatter-add, so exact and deterministic), then picks the bucket holding the k-th key. Three
    passes over the data whatever the distribution (bisection needs ~15-32 counting passes).
    """
    rows, _ = keys.shape
    u = jax.lax.bitcast_convert_type(keys ^ _INT_MIN, jnp.uint32)  # signed order -> unsigned order
    prefix = jnp.zeros((rows,), jnp.uint32)
    rank = k.astype(jnp.int32)
    done = 0
    for bits in _RADIX_BITS:
        size = 1 << bits
        offset = (jnp.arange(rows, dtype=jnp.int32) * size)[:, None]
        digit = ((u >> (32 - done - bits)) & (size - 1)).astype(jnp.int32)
        idx = offset + digit
        if done:  # only keys whose higher digits equal the prefix found so far
            idx = jnp.where((u >> (32 - done)) == prefix[:, None], idx, rows * size)
        hist = jnp.zeros((rows * size,), jnp.int32).at[idx.ravel()].add(1, mode="drop")
        hist = hist.reshape(rows, size)
        below = jnp.cumsum(hist, axis=1) - hist  # keys of the group in lower buckets
        d = jnp.argmax(below + hist >= rank[:, None], axis=1)  # first bucket reaching the rank
        rank = rank - jnp.take_along_axis(below, d[:, None], axis=1)[:, 0]
        n_eq = jnp.take_along_axis(hist, d[:, None], axis=1)[:, 0]  # after the last digit: ties
        prefix = (prefix << bits) | d.astype(jnp.uint32)
        done += bits
    return jax.lax.bitcast_convert_type(prefix, jnp.int32) ^ _INT_MIN, rank, n_eq


@jax.jit
def _prune_rows(scores: jax.Array, k: jax.Array) -> jax.Array:
    """Keep-mask of an (L, n) score array removing exactly ``k[i]`` lowest entries of row i.

    Ties at the threshold go in index order (lowest index first).
    """
    keys = _sort_keys(scores)
    k = jnp.clip(jnp.asarray(k, jnp.int32), 0, keys.shape[1])
    if keys.shape[1] > _SMALL:
        t, rem, n_eq = _kth_keys_radix(keys, jnp.maximum(k, 1))
        rem = jnp.where(k > 0, rem, 0)
    else:
        t = _kth_keys_sorted(keys, jnp.maximum(k, 1))
        rem = k - jnp.sum(keys < t[:, None], axis=1, dtype=jnp.int32)  # how many tied entries still go
        n_eq = jnp.sum(keys == t[:, None], axis=1, dtype=jnp.int32)
    less = keys < t[:, None]
    eq = keys == t[:, None]

    def partial_ties():
        return eq & (jnp.cumsum(eq, axis=1, dtype=jnp.int32) <= rem[:, None])

    # The cumsum is only needed when a tie straddles the threshold; skip it otherwise.
    tie_pruned = jax.lax.cond(jnp.any(n_eq > rem), partial_ties, lambda: eq)
    return ~((less | tie_pruned) & (k > 0)[:, None])


def prune_lowest(scores: Sequence[jax.Array], k: Any) -> list[jax.Array]:
    """Keep-masks over several arrays removing exactly the ``k`` lowest scores among all of them.

    Ties at the threshold are removed in order: array order, then flat index. ``k`` may be traced.

    >>> [m.tolist() for m in prune_lowest([jnp.array([3.0, 1.0]), jnp.array([1.0, 2.0])], 2)]
    [[True, False], [False, True]]
    """
    flat = jnp.concatenate([jnp.ravel(jnp.asarray(x, jnp.float32)) for x in scores])
    keep = _prune_rows(flat[None, :], jnp.reshape(jnp.asarray(k, jnp.int32), (1,)))[0]
    sizes = np.cumsum([int(np.size(x)) for x in scores])[:-1]
    return [m.reshape(np.shape(x)) for m, x in zip(jnp.split(keep, sizes), scores)]


def _prune_each(units: Sequence[jax.Array], ks: Sequence[Any]) -> list[jax.Array]:
    """Layerwise :func:`prune_lowest`: array i loses its own ``ks[i]``. Same-size arrays are stacked
    and selected together, so a model with many equal layers compiles one program per size."""
    out: list[Any] = [None] * len(units)
    by_size: dict[int, list[int]] = {}
    for i, u in enumerate(units):
        by_size.setdefault(int(np.size(u)), []).append(i)
    for n, idx in by_size.items():
        if n == 0:
            for i in idx:
                out[i] = jnp.ones(np.shape(units[i]), bool)
            continue
        stacked = jnp.stack([jnp.ravel(jnp.asarray(units[i], jnp.float32)) for i in idx])
        k = jnp.stack([jnp.asarray(ks[i], jnp.int32) for i in idx])
        keep = _prune_rows(stacked, k)
        for row, i in enumerate(idx):
            out[i] = keep[row].reshape(np.shape(units[i]))
    return out


def _check_finite(path: str, scores: Any) -> None:
    if is_concrete(scores) and bool(jnp.any(jnp.isnan(scores))):
        raise PruningError(f"scores leaf '{path}' contains NaN; NaN scores cannot be ranked")


def _sparsity_tree(scores: Any, sparsities: Any, include: Selector) -> list[Any]:
    """Per-leaf sparsity list from a tree of scalars or one scalar applied to ``include``."""
    flat, _ = jax.tree_util.tree_flatten_with_path(scores)
    paths = [path_str(p) for p, _ in flat]
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
      structure: ``Unstructured()``, ``NM(n, m)``, ``Block(shape)``, ``Neurons(axis)``, ``Channels()``.
      include: selector used only when ``sparsities`` is a scalar (default: kernels).

    Returns:
      A tree of boolean arrays (True = keep) with the structure and leaf shapes of ``scores``. A leaf
      at sparsity ``s`` with ``u`` units loses exactly ``round_half_even(s * u)`` units.

    >>> m = topk_masks({'w': jnp.array([[0.1, 0.4], [0.3, 0.2]])}, {'w': 0.5})
    >>> m['w'].tolist()
    [[False, True], [True, False]]
    """
    svals = _sparsity_tree(scores, sparsities, include)
    flat, treedef = jax.tree_util.tree_flatten_with_path(scores)
    out: list[Any] = [None] * len(flat)
    todo, units, ks = [], [], []
    for i, ((p, leaf), s) in enumerate(zip(flat, svals)):
        path, shape = path_str(p), tuple(np.shape(leaf))
        if is_concrete(s) and float(s) == 0.0:
            out[i] = jnp.ones(shape, bool)
            continue
        structure.check(path, shape)
        _check_finite(path, leaf)
        if isinstance(structure, NM):
            out[i] = structure.mask(path, jnp.asarray(leaf), s)
            continue
        u = structure.units(path, jnp.asarray(leaf))
        todo.append(i)
        units.append(u)
        ks.append(num_pruned(s, int(u.size)))
    for i, keep in zip(todo, _prune_each(units, ks)):
        p, leaf = flat[i]
        out[i] = structure.expand(path_str(p), tuple(np.shape(leaf)), keep)
    return jax.tree.unflatten(treedef, out)


def _normalise(units: jax.Array, how: Optional[str]) -> jax.Array:
    if how is None:
        return units
    norms = {
        "l1": lambda u: jnp.sum(jnp.abs(u)),
        "l2": lambda u: jnp.sqrt(jnp.sum(jnp.square(u))),
        "max": lambda u: jnp.max(jnp.abs(u)),
    }
    if how not in norms:
        raise PruningError(f"global_masks: normalize must be None or one of {sorted(norms)}, got {how!r}")
    n = norms[how](units)
    return units / jnp.where(n > 0, n, 1.0)


def global_masks(
    scores: Any,
    sparsity: Any,
    *,
    include: Selector = None,
    exclude: Selector = (),
    structure: Structure = Unstructured(),
    normalize: Optional[str] = None,
) -> Any:
    """Global masks: one threshold across all selected leaves removes ``round(s * total units)``.

    Args:
      scores: pytree of score arrays (higher = keep).
      sparsity: scalar in [0, 1], may be traced.
      include / exclude: selectors of the leaves that compete (default: kernels); others stay dense.
      structure: ``Unstructured()``, ``Block``, ``Neurons`` or ``Channels`` (not ``NM``).
      normalize: ``None``, ``'l1'``, ``'l2'`` or ``'max'``: divide each leaf's unit scores by that
        norm first, so layers with different score scales compete fairly (as jaxpruner does).

    >>> m = global_masks({'a': jnp.array([[1.0, 5.0]]), 'b': jnp.array([[2.0, 3.0]])}, 0.5)
    >>> m['a'].tolist(), m['b'].tolist()
    ([[False, True]], [[False, True]])
    """
    if isinstance(structure, NM):
        raise PruningError("global_masks: NM structure is per-group by definition; use topk_masks")
    check_sparsity_value(sparsity, "sparsity")
    chosen = set(selected_paths(scores, include, exclude))
    flat, treedef = jax.tree_util.tree_flatten_with_path(scores)
    units, where = [], []
    for p, leaf in flat:
        path = path_str(p)
        if path in chosen:
            structure.check(path, tuple(np.shape(leaf)))
            _check_finite(path, leaf)
            units.append(_normalise(structure.units(path, jnp.asarray(leaf)), normalize))
            where.append(path)
    total = sum(int(u.size) for u in units)
    keeps = dict(zip(where, prune_lowest(units, num_pruned(sparsity, total))))
    out = [
        structure.expand(path_str(p), tuple(np.shape(leaf)), keeps[path_str(p)])
        if path_str(p) in keeps else jnp.ones(np.shape(leaf), bool)
        for p, leaf in flat
    ]
    return jax.tree.unflatten(treedef, out)
