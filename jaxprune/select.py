"""Mask selection: exact, deterministic, no full sort.

``topk_masks`` removes the lowest-scoring units of each leaf at that leaf's sparsity; ``global_masks``
removes the lowest-scoring units across all selected leaves with one threshold. Both find the exact
k-th smallest score by radix select over order-preserving integer keys: three histogram passes (11,
11 and 10 bits, integer scatter-adds) for 32-bit keys, six for 64-bit ones, no sort (a full XLA sort
of 25.6 M floats takes ~12 s on a 2-core CPU; the radix select ~0.4 s, ``scripts/bench_select.py``).
Ties at the threshold are broken by position: leaves in tree order, then flat (row-major) index,
lowest first.

**Precision.** Scores are ranked in their own dtype, exactly: float16/bfloat16/float32 as float32,
bool and 8/16/32-bit signed and unsigned integers as integers (``16_777_217`` ranks above
``16_777_216``), and float64/int64/uint64 with ``jax_enable_x64`` on as 64-bit keys (``1 + 1e-12``
ranks above ``1``). Leaves selected together (global selection, :func:`prune_lowest`) are ranked in
their promoted dtype (``jnp.promote_types``), which must hold every leaf exactly: int32 with float32,
or int32 with uint32, raises a :class:`~jaxprune.errors.PruningError` naming both leaves — cast them
yourself. With x64 off, a numpy 64-bit array is accepted when it converts to 32 bits exactly and
raises otherwise (jax would silently round it).

NaN scores raise a :class:`~jaxprune.errors.PruningError` when the scores are concrete (arguments
of an eager call, or arrays closed over by a jitted function); traced NaN scores cannot raise and rank
below ``-inf`` (pruned first), never silently kept.

Every function here works under ``jit`` and ``vmap`` whether the scores and sparsities are arguments
or closed over.
"""

from __future__ import annotations

import functools
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune.counts import check_sparsity_value, is_concrete, num_pruned
from jaxprune.errors import PruningError
from jaxprune.paths import Selector, check_same_structure, flatten_with_paths, path_str, selected_paths
from jaxprune.structures import NM, Neurons, Structure, Unstructured

__all__ = ["topk_masks", "global_masks", "prune_lowest"]


def _exact_array(path: str, x: Any) -> Any:
    """``x`` with a dtype jax holds exactly; a lossy 64-bit numpy array (x64 off) raises."""
    if isinstance(x, jax.Array) or isinstance(x, jax.core.Tracer):
        return x
    arr = np.asarray(x)
    if arr.dtype.itemsize == 8 and arr.dtype.kind in "fiu" and not jax.config.jax_enable_x64:
        narrow = {"f": np.float32, "i": np.int32, "u": np.uint32}[arr.dtype.kind]
        with np.errstate(all="ignore"):
            down = arr.astype(narrow)
            exact = np.array_equal(down.astype(arr.dtype), arr, equal_nan=arr.dtype.kind == "f")
        if not exact:
            raise PruningError(
                f"scores leaf '{path}' has dtype {arr.dtype} with values that 32 bits cannot hold "
                "exactly, and jax_enable_x64 is off: jax would round them and could prune the larger "
                "of two close scores. Enable x64 or cast the scores yourself")
        return down
    return arr


def _selection_dtype(named: Sequence[tuple[str, Any]]) -> np.dtype:
    """The dtype in which leaves are ranked together; raises when it cannot hold one exactly."""
    dtypes = [(path, np.dtype(jnp.result_type(x))) for path, x in named]
    common = dtypes[0][1]
    # Computing the common type is deliberate (every leaf is then cast to it explicitly), so it
    # uses jax's standard lattice even under jax_numpy_dtype_promotion='strict'.
    with jax.numpy_dtype_promotion("standard"):
        for _, d in dtypes[1:]:
            common = np.dtype(jnp.promote_types(common, d))
    common = np.dtype(jax.dtypes.canonicalize_dtype(common))
    for path, d in dtypes:
        if d.kind not in "biuf":
            raise PruningError(f"scores leaf '{path}' has dtype {d}; scores must be real numbers")
        if not np.can_cast(d, common, casting="safe"):
            other = next(p for p, e in dtypes if e != d)
            raise PruningError(
                f"scores leaves '{path}' ({d}) and '{other}' ({dict(dtypes)[other]}) are ranked "
                f"together, but their common dtype {common} cannot hold {d} exactly; cast the "
                "scores to one dtype first")
    return common


@functools.partial(jax.jit, static_argnums=1)  # one program per shape, not one per op
def _sort_keys(x: Any, dtype: np.dtype) -> jax.Array:
    """Signed integer keys (int32, or int64 for 64-bit dtypes) whose order is the order of ``x`` in
    ``dtype`` (-0 == +0; NaN below -inf)."""
    x = jnp.asarray(x)
    wide = dtype.itemsize == 8
    ity = jnp.int64 if wide else jnp.int32
    if dtype.kind == "f":
        fty = jnp.float64 if wide else jnp.float32
        x = x.astype(fty)
        x = jnp.where(x == 0, jnp.zeros((), fty), x)
        bits = jax.lax.bitcast_convert_type(x, ity)
        flip = jnp.asarray(np.iinfo(np.int64 if wide else np.int32).max, ity)
        keys = jnp.where(bits >= 0, bits, bits ^ flip)
        return jnp.where(jnp.isnan(x), jnp.asarray(np.iinfo(ity).min, ity), keys)
    if dtype.kind == "u" and dtype.itemsize >= 4:
        # unsigned order -> signed order: flip the top bit.
        uty = jnp.uint64 if wide else jnp.uint32
        bits = jax.lax.bitcast_convert_type(x.astype(uty), ity)
        return bits ^ jnp.asarray(np.iinfo(ity).min, ity)
    return x.astype(ity)  # bool, 8/16-bit ints, int32, int64: the value itself


_SMALL = 1 << 12  # rows up to this length are simply sorted (cheap); longer ones use radix select.


def _kth_keys_sorted(keys: jax.Array, k: jax.Array) -> jax.Array:
    """Per row of a short (L, n) key array, the k-th smallest key (1 <= k <= n), by sorting."""
    return jnp.take_along_axis(jnp.sort(keys, axis=1), (k - 1)[:, None], axis=1)[:, 0]


# Digits of a key, most significant first: 3 histogram passes for 32 bits, 6 for 64.
_RADIX_BITS = {32: (11, 11, 10), 64: (11, 11, 10, 11, 11, 10)}


def _kth_keys_radix(keys: jax.Array, k: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per row of an (L, n) signed key array: the k-th smallest key t (1 <= k <= n), exactly; how
    many keys equal to t are among the k smallest; and how many keys equal t.

    Radix select: keys are mapped to order-preserving unsigned ints, and each pass histograms one
    digit (11, 11, 10 bits) of the keys that share the digits found so far (an integer scatter-add,
    so exact and deterministic), then picks the bucket holding the k-th key. A fixed number of passes
    over the data whatever the distribution (bisection needs ~15-32 counting passes).
    """
    rows, _ = keys.shape
    width = keys.dtype.itemsize * 8
    uty = jnp.uint64 if width == 64 else jnp.uint32
    sign = jnp.asarray(np.iinfo(keys.dtype).min, keys.dtype)
    u = jax.lax.bitcast_convert_type(keys ^ sign, uty)  # signed order -> unsigned order
    prefix = jnp.zeros((rows,), uty)
    rank = k.astype(jnp.int32)
    done = 0
    for bits in _RADIX_BITS[width]:
        size = 1 << bits
        offset = (jnp.arange(rows, dtype=jnp.int32) * size)[:, None]
        digit = ((u >> (width - done - bits)) & (size - 1)).astype(jnp.int32)
        idx = offset + digit
        if done:  # only keys whose higher digits equal the prefix found so far
            idx = jnp.where((u >> (width - done)) == prefix[:, None], idx, rows * size)
        hist = jnp.zeros((rows * size,), jnp.int32).at[idx.ravel()].add(1, mode="drop")
        hist = hist.reshape(rows, size)
        below = jnp.cumsum(hist, axis=1) - hist  # keys of the group in lower buckets
        d = jnp.argmax(below + hist >= rank[:, None], axis=1)  # first bucket reaching the rank
        rank = rank - jnp.take_along_axis(below, d[:, None], axis=1)[:, 0]
        n_eq = jnp.take_along_axis(hist, d[:, None], axis=1)[:, 0]  # after the last digit: ties
        prefix = (prefix << bits) | d.astype(uty)
        done += bits
    return jax.lax.bitcast_convert_type(prefix, keys.dtype) ^ sign, rank, n_eq


@jax.jit
def _prune_rows(keys: jax.Array, k: jax.Array, protect: Optional[jax.Array] = None) -> jax.Array:
    """Keep-mask of an (L, n) key array removing exactly ``k[i]`` lowest entries of row i.

    Ties at the threshold go in index order (lowest index first). Entries where ``protect`` is True
    hold the row's largest key and are never among the tied entries removed (the caller caps ``k``
    at the number of unprotected entries).
    """
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
    if protect is not None:
        eq = eq & ~protect

    def partial_ties():
        return eq & (jnp.cumsum(eq, axis=1, dtype=jnp.int32) <= rem[:, None])

    # The cumsum is only needed when a tie straddles the threshold; skip it otherwise.
    tie_pruned = jax.lax.cond(jnp.any(n_eq > rem), partial_ties, lambda: eq)
    return ~((less | tie_pruned) & (k > 0)[:, None])


def _check_k(k: Any, total: int) -> Any:
    """A concrete ``k`` as an int in [0, total], or a PruningError naming it; traced k unchanged."""
    if not is_concrete(k):
        return k
    arr = np.asarray(k)
    if arr.shape != () or arr.dtype.kind not in "iuf" or isinstance(k, bool):
        raise PruningError(f"prune_lowest: k must be an integer scalar, got {k!r}")
    value = arr.item()
    if isinstance(value, float) and not (np.isfinite(value) and value == int(value)):
        raise PruningError(f"prune_lowest: k must be a whole number of scores, got k={value}")
    value = int(value)
    if not 0 <= value <= total:
        raise PruningError(f"prune_lowest: k={value} is outside [0, {total}] (the number of scores)")
    return value


def prune_lowest(scores: Sequence[Any], k: Any) -> list[jax.Array]:
    """Keep-masks over several arrays removing exactly the ``k`` lowest scores among all of them.

    Ties at the threshold are removed in order: array order, then flat index. Scores are ranked in
    their promoted dtype, exactly (see the module docstring). A concrete ``k`` must be a whole number
    in ``[0, total]`` (else :class:`PruningError`); a traced ``k`` is clipped to that range.

    >>> [m.tolist() for m in prune_lowest([jnp.array([3.0, 1.0]), jnp.array([1.0, 2.0])], 2)]
    [[True, False], [False, True]]
    """
    if isinstance(scores, (str, bytes)) or not isinstance(scores, Sequence) or len(scores) == 0:
        raise PruningError(f"prune_lowest: scores must be a non-empty list of arrays, got {scores!r}")
    named = [(f"[{i}]", _exact_array(f"[{i}]", x)) for i, x in enumerate(scores)]
    total = sum(int(np.size(x)) for _, x in named)
    k = _check_k(k, total)
    for path, x in named:
        _check_finite(path, x)
    if total == 0:
        return [jnp.ones(np.shape(x), bool) for _, x in named]
    dtype = _selection_dtype(named)
    return _prune_concatenated([_sort_keys(x, dtype) for _, x in named], k, None,
                               tuple(tuple(np.shape(x)) for _, x in named))


def _prune_each(units: Sequence[Any], ks: Sequence[Any], names: Sequence[str]) -> list[jax.Array]:
    """Layerwise :func:`prune_lowest`: array i loses its own ``ks[i]``, ranked in its own dtype.
    Same-size arrays with keys of one width are stacked and selected together, so a model with many
    equal layers compiles one program per size."""
    out: list[Any] = [None] * len(units)
    keys = [_sort_keys(u, _selection_dtype([(name, u)])) for name, u in zip(names, units)]
    by_size: dict[tuple[int, Any], list[int]] = {}
    for i, key in enumerate(keys):
        by_size.setdefault((int(np.size(key)), key.dtype), []).append(i)
    for (n, _), idx in by_size.items():
        if n == 0:
            for i in idx:
                out[i] = jnp.ones(np.shape(units[i]), bool)
            continue
        keeps = _prune_stacked([keys[i] for i in idx], [ks[i] for i in idx],
                               tuple(tuple(np.shape(units[i])) for i in idx))
        for i, keep in zip(idx, keeps):
            out[i] = keep
    return out


@functools.partial(jax.jit, static_argnums=2)
def _prune_stacked(keys: list[jax.Array], ks: list[Any],
                   shapes: tuple[tuple[int, ...], ...]) -> list[jax.Array]:
    """:func:`_prune_rows` over equal-size key arrays stacked as rows; keep-masks in ``shapes``."""
    keep = _prune_rows(jnp.stack([jnp.ravel(k) for k in keys]),
                       jnp.stack([jnp.asarray(k, jnp.int32) for k in ks]))
    return [keep[row].reshape(shape) for row, shape in enumerate(shapes)]


@jax.jit
def _any_nan(x: Any) -> jax.Array:
    return jnp.any(jnp.isnan(x))


def _check_finite(path: str, scores: Any) -> None:
    """NaN scores raise when they have a value, also when closed over by a jitted function."""
    if not is_concrete(scores) or np.dtype(jnp.result_type(scores)).kind != "f":
        return
    # Inside jit, jnp ops on a closed-over array are staged out; evaluate this check now instead.
    with jax.ensure_compile_time_eval():
        has_nan = bool(_any_nan(scores))
    if has_nan:
        raise PruningError(f"scores leaf '{path}' contains NaN; NaN scores cannot be ranked")


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
        leaf = _exact_array(path, leaf)
        _check_finite(path, leaf)
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
    for i, keep in zip(todo, _prune_each(units, ks, [paths[j] for j in todo])):
        out[i] = structure.expand(paths[i], tuple(np.shape(flat[i][1])), keep)
    return jax.tree.unflatten(treedef, out)


_NORMS = {
    "l1": lambda u: jnp.sum(jnp.abs(u)),
    "l2": lambda u: jnp.sqrt(jnp.sum(jnp.square(u))),
    "max": lambda u: jnp.max(jnp.abs(u)),
    "mean": lambda u: jnp.mean(jnp.abs(u)),
}


def _normalise(units: jax.Array, how: Optional[str]) -> jax.Array:
    if how is None:
        return units
    n = _NORMS[how](units)
    return units / jnp.where(n > 0, n, 1.0)


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
        leaf = _exact_array(path, leaf)
        _check_finite(path, leaf)
        if _is_output(structure, path, leaf):
            continue
        units.append(_normalise(structure.units(path, jnp.asarray(leaf)), how))
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
    total = sum(sizes)
    kept = [min(min_keep, n) for n in sizes]
    k = num_pruned(sparsity, total, min_keep=sum(kept))
    if total == 0:
        return [jnp.ones(np.shape(u), bool) for u in units]
    dtype = _selection_dtype(list(zip(where, units)))
    keys = [_sort_keys(u, dtype) for u in units]
    best = None
    if min_keep > 0:  # each leaf's min_keep best units, protected in _prune_concatenated
        best = _prune_each(units, [n - m for n, m in zip(sizes, kept)], where)
    return _prune_concatenated(keys, k, best, tuple(tuple(np.shape(u)) for u in units))


@functools.partial(jax.jit, static_argnums=3)
def _prune_concatenated(keys: list[jax.Array], k: Any, best: Optional[list[jax.Array]],
                        shapes: tuple[tuple[int, ...], ...]) -> list[jax.Array]:
    """Keep-masks (in ``shapes``) removing the ``k`` lowest of all ``keys`` under one threshold.
    Entries where ``best`` is True get the largest key and are kept by the tie rule (the caller
    caps ``k`` at the unprotected count): one threshold still decides everything else."""
    keys = [jnp.ravel(key) for key in keys]
    protect = None
    if best is not None:
        top = jnp.asarray(np.iinfo(keys[0].dtype).max, keys[0].dtype)
        keys = [jnp.where(jnp.ravel(b), top, key) for b, key in zip(best, keys)]
        protect = jnp.concatenate([jnp.ravel(b) for b in best])[None, :]
    keep = _prune_rows(jnp.concatenate(keys)[None, :], jnp.reshape(jnp.asarray(k, jnp.int32), (1,)),
                       protect)[0]
    splits = np.cumsum([int(np.prod(shape)) for shape in shapes])[:-1]
    return [m.reshape(shape) for m, shape in zip(jnp.split(keep, splits), shapes)]
