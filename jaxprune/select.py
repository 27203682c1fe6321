"""Mask selection: exact, deterministic, no full sort.

``topk_masks`` removes the lowest-scoring units of each leaf at that leaf's sparsity; ``global_masks``
removes the lowest-scoring units across all selected leaves with one threshold. Both find the exact
k-th smallest score by bisection over the float32 bit patterns (32 counting passes, no sort: a full
XLA sort of 25.6 M floats takes ~11 s on a 2-core CPU; a strided sample narrows the bisection's
range first). Ties at the threshold are broken by position:
leaves in tree order, then flat (row-major) index, lowest first. Scores are compared as float32.

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


_SMALL = 1 << 12  # rows up to this length are simply sorted (cheap); longer ones bisect.
_SAMPLE = 1 << 18  # largest strided sample used to bracket the threshold of a long row.
_INT_MAX = np.int32(2**31 - 1)


def _count_le(keys: jax.Array, t: jax.Array) -> jax.Array:
    return jnp.sum(keys <= t[:, None], axis=1, dtype=jnp.int32)


def _kth_keys(keys: jax.Array, k: jax.Array) -> jax.Array:
    """Per row of an (L, n) int32 key array, the k-th smallest key (1 <= k <= n), exactly.

    Short rows are sorted. Long rows avoid a full sort: a strided sample is sorted to guess a narrow
    key interval holding the answer, two counting passes confirm it (else the full int32 range is
    used), and bisection finishes inside it: each step is one counting pass, and a narrow interval
    needs ~15 steps instead of 32.
    """
    rows, n = keys.shape
    if n <= _SMALL:
        return jnp.take_along_axis(jnp.sort(keys, axis=1), (k - 1)[:, None], axis=1)[:, 0]
    # Sample ~n/64 entries (4K .. 256K): sorting it is cheap next to the counting passes it saves.
    stride = max(1, n // min(max(n // 64, _SMALL), _SAMPLE))
    sample = jnp.sort(keys[:, ::stride], axis=1)
    m = sample.shape[1]
    margin = int(3 * np.sqrt(m)) + 8  # >= 6 std of a sample quantile (std <= sqrt(m)/2)
    guess = (k.astype(jnp.float32) / n * m).astype(jnp.int32)
    pick = lambda i: jnp.take_along_axis(sample, jnp.clip(i, 0, m - 1)[:, None], axis=1)[:, 0]  # noqa: E731
    lo = jnp.where(guess - margin <= 0, _INT_MIN, pick(guess - margin))
    hi = jnp.where(guess + margin >= m - 1, _INT_MAX, pick(guess + margin))
    ok = (_count_le(keys, lo - 1) < k) & (_count_le(keys, hi) >= k)
    lo, hi = jnp.where(ok, lo, _INT_MIN), jnp.where(ok, hi, _INT_MAX)

    def body(lohi):
        lo, hi = lohi
        mid = (lo >> 1) + (hi >> 1) + (lo & hi & 1)  # floor((lo + hi) / 2) without overflow
        left = _count_le(keys, mid) >= k
        return jnp.where(left, lo, mid + 1), jnp.where(left, mid, hi)

    return jax.lax.while_loop(lambda lohi: jnp.any(lohi[0] < lohi[1]), body, (lo, hi))[0]


@jax.jit
def _prune_rows(scores: jax.Array, k: jax.Array) -> jax.Array:
    """Keep-mask of an (L, n) score array removing exactly ``k[i]`` lowest entries of row i.

    Ties at the threshold go in index order (lowest index first).
    """
    keys = _sort_keys(scores)
    k = jnp.clip(jnp.asarray(k, jnp.int32), 0, keys.shape[1])
    t = _kth_keys(keys, jnp.maximum(k, 1))
    less = keys < t[:, None]
    eq = keys == t[:, None]
    rem = k - jnp.sum(less, axis=1, dtype=jnp.int32)  # how many tied entries still go
    straddle = jnp.any(jnp.sum(eq, axis=1, dtype=jnp.int32) > rem)

    def partial_ties():
        return eq & (jnp.cumsum(eq, axis=1, dtype=jnp.int32) <= rem[:, None])

    # The cumsum is only needed when a tie straddles the threshold; skip it otherwise.
    tie_pruned = jax.lax.cond(straddle, partial_ties, lambda: eq)
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
