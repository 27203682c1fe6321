"""Exact ranking over arrays: remove exactly the ``k`` lowest scores, deterministically, no full sort.

This is the engine under :mod:`jaxprune.select` (which works on pytrees, structures and sparsities);
use it directly when you have plain arrays and counts. :func:`prune_lowest` ranks several arrays
together under one threshold (optionally keeping each array's ``min_keep`` best); :func:`prune_each`
gives every array its own count. Both return keep-masks (True = keep) in the arrays' shapes.

**How.** The exact k-th smallest score is found by radix select over order-preserving integer keys:
three histogram passes (11, 11 and 10 bits, integer scatter-adds) for 32-bit keys, six for 64-bit
ones; rows of up to 4096 scores are simply sorted. A full XLA sort of 25.6 M floats takes ~12 s on a
2-core CPU, the radix select ~0.4 s (``scripts/bench_select.py``). Ties at the threshold are broken by
position: arrays in the order given, then flat (row-major) index, lowest first. Each step is one
jitted program per shape, so eager callers compile once per shape too.

**Precision.** Scores are ranked in their own dtype, exactly: float16/bfloat16/float32 as float32,
bool and 8/16/32-bit signed and unsigned integers as integers (``16_777_217`` ranks above
``16_777_216``), and float64/int64/uint64 with ``jax_enable_x64`` on as 64-bit keys (``1 + 1e-12``
ranks above ``1``). Arrays ranked together are ranked in their promoted dtype
(``jnp.promote_types``), which must hold every array exactly: int32 with float32, or int32 with
uint32, raises a :class:`~jaxprune.errors.PruningError` naming both — cast them yourself. With x64
off, a numpy 64-bit array is accepted when it converts to 32 bits exactly and raises otherwise (jax
would silently round it).

NaN scores raise a :class:`~jaxprune.errors.PruningError` when the scores are concrete (arguments
of an eager call, or arrays closed over by a jitted function); traced NaN scores cannot raise and rank
below ``-inf`` (pruned first), never silently kept.

Every function here works under ``jit`` and ``vmap`` whether the scores and counts are arguments or
closed over; a traced count is clipped to its valid range (it cannot raise).
"""

from __future__ import annotations

import functools
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune.counts import is_concrete
from jaxprune.errors import PruningError

__all__ = ["prune_lowest", "prune_each", "exact_scores", "check_finite"]


def exact_scores(x: Any, path: str) -> Any:
    """``x`` in a dtype jax holds exactly; a lossy 64-bit numpy array (x64 off) raises.

    jax arrays and tracers are returned unchanged. With ``jax_enable_x64`` off, a numpy
    float64/int64/uint64 array is narrowed to 32 bits when that is exact, and raises a
    :class:`PruningError` naming ``path`` otherwise.

    >>> exact_scores(np.array([2.0, 1.0]), 'w').dtype
    dtype('float32')
    """
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


@jax.jit
def _any_nan(x: Any) -> jax.Array:
    return jnp.any(jnp.isnan(x))


def check_finite(x: Any, path: str) -> None:
    """Raises :class:`PruningError` naming ``path`` when concrete float scores contain NaN.

    Also when ``x`` is closed over by a jitted function (it still has a value); traced scores cannot
    be checked and are left as they are (NaN ranks lowest).

    >>> check_finite(jnp.array([1.0, -jnp.inf]), 'w')
    """
    if not is_concrete(x) or np.dtype(jnp.result_type(x)).kind != "f":
        return
    # Inside jit, jnp ops on a closed-over array are staged out; evaluate this check now instead.
    with jax.ensure_compile_time_eval():
        has_nan = bool(_any_nan(x))
    if has_nan:
        raise PruningError(f"scores leaf '{path}' contains NaN; NaN scores cannot be ranked")


def _selection_dtype(named: Sequence[tuple[str, Any]]) -> np.dtype:
    """The dtype in which arrays are ranked together; raises when it cannot hold one exactly."""
    dtypes = [(path, np.dtype(jnp.result_type(x))) for path, x in named]
    common = dtypes[0][1]
    # Computing the common type is deliberate (every array is then cast to it explicitly), so it
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


@functools.partial(jax.jit, static_argnums=2)
def _prune_stacked(keys: list[jax.Array], ks: list[Any],
                   shapes: tuple[tuple[int, ...], ...]) -> list[jax.Array]:
    """:func:`_prune_rows` over equal-size key arrays stacked as rows; keep-masks in ``shapes``."""
    keep = _prune_rows(jnp.stack([jnp.ravel(k) for k in keys]),
                       jnp.stack([jnp.asarray(k, jnp.int32) for k in ks]))
    return [keep[row].reshape(shape) for row, shape in enumerate(shapes)]


def _prune_keys_each(keys: Sequence[jax.Array], ks: Sequence[Any]) -> list[jax.Array]:
    """Key array i loses its ``ks[i]`` lowest. Same-size arrays with keys of one width are stacked
    and selected together, so a model with many equal layers compiles one program per size."""
    out: list[Any] = [None] * len(keys)
    by_size: dict[tuple[int, Any], list[int]] = {}
    for i, key in enumerate(keys):
        by_size.setdefault((int(np.size(key)), key.dtype), []).append(i)
    for (n, _), idx in by_size.items():
        if n == 0:
            for i in idx:
                out[i] = jnp.ones(np.shape(keys[i]), bool)
            continue
        keeps = _prune_stacked([keys[i] for i in idx], [ks[i] for i in idx],
                               tuple(tuple(np.shape(keys[i])) for i in idx))
        for i, keep in zip(idx, keeps):
            out[i] = keep
    return out


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


def _check_k(k: Any, total: int, who: str, name: str = "k", of: str = "the number of scores") -> Any:
    """A concrete ``k`` as an int in [0, total], or a PruningError naming it; a traced ``k`` clipped
    to that range."""
    if not is_concrete(k):
        return jnp.clip(jnp.asarray(k, jnp.int32), 0, total)
    arr = np.asarray(k)
    if arr.shape != () or arr.dtype.kind not in "iuf" or isinstance(k, bool):
        raise PruningError(f"{who}: {name} must be an integer scalar, got {k!r}")
    value = arr.item()
    if isinstance(value, float) and not (np.isfinite(value) and value == int(value)):
        raise PruningError(f"{who}: {name} must be a whole number of scores, got {name}={value}")
    value = int(value)
    if not 0 <= value <= total:
        raise PruningError(f"{who}: {name}={value} is outside [0, {total}] ({of})")
    return value


def _named(scores: Any, names: Optional[Sequence[str]], who: str) -> list[tuple[str, Any]]:
    """``(name, exact array)`` pairs; names default to ``[i]``."""
    if isinstance(scores, (str, bytes)) or not isinstance(scores, Sequence) or len(scores) == 0:
        raise PruningError(f"{who}: scores must be a non-empty list of arrays, got {scores!r}")
    if names is None:
        names = [f"[{i}]" for i in range(len(scores))]
    elif isinstance(names, (str, bytes)) or len(names) != len(scores):
        raise PruningError(f"{who}: names must be a list of {len(scores)} strings (one per scores "
                           f"array), got {names!r}")
    return [(str(name), exact_scores(x, str(name))) for name, x in zip(names, scores)]


def prune_lowest(scores: Sequence[Any], k: Any, *, min_keep: int = 0,
                 names: Optional[Sequence[str]] = None) -> list[jax.Array]:
    """Keep-masks over several arrays removing exactly the ``k`` lowest scores among all of them.

    Args:
      scores: non-empty list of real-valued arrays (any shapes), ranked together in their promoted
        dtype, exactly (see the module docstring).
      k: how many scores go. A concrete ``k`` must be a whole number in ``[0, total - protected]``
        (else :class:`PruningError`); a traced ``k`` is clipped to that range.
      min_keep: each array keeps at least its ``min_keep`` highest scores (all of them when it has
        fewer); the others still compete under one threshold.
      names: one name per array for error messages (default ``[0]``, ``[1]``, ...).

    Ties at the threshold are removed in order: array order, then flat index.

    >>> [m.tolist() for m in prune_lowest([jnp.array([3.0, 1.0]), jnp.array([1.0, 2.0])], 2)]
    [[True, False], [False, True]]
    >>> [m.tolist() for m in prune_lowest([jnp.array([3.0, 4.0]), jnp.array([0.1, 0.2])], 2,
    ...                                   min_keep=1)]
    [[False, True], [False, True]]
    """
    named = _named(scores, names, "prune_lowest")
    if isinstance(min_keep, bool) or not isinstance(min_keep, (int, np.integer)) or min_keep < 0:
        raise PruningError(f"prune_lowest: min_keep must be an integer >= 0, got {min_keep!r}")
    sizes = [int(np.size(x)) for _, x in named]
    kept = [min(int(min_keep), n) for n in sizes]
    total = sum(sizes)
    of = "the number of scores" if not any(kept) else "the number of scores less min_keep per array"
    k = _check_k(k, total - sum(kept), "prune_lowest", of=of)
    for path, x in named:
        check_finite(x, path)
    if total == 0:
        return [jnp.ones(np.shape(x), bool) for _, x in named]
    dtype = _selection_dtype(named)
    keys = [_sort_keys(x, dtype) for _, x in named]
    # each array's min_keep best, protected in _prune_concatenated (order within an array is the
    # same in its own dtype and in the common one, which holds it exactly)
    best = _prune_keys_each(keys, [n - m for n, m in zip(sizes, kept)]) if any(kept) else None
    return _prune_concatenated(keys, k, best, tuple(tuple(np.shape(x)) for _, x in named))


def prune_each(scores: Sequence[Any], ks: Sequence[Any], *,
               names: Optional[Sequence[str]] = None) -> list[jax.Array]:
    """Keep-masks removing the ``ks[i]`` lowest scores of array ``i``, each ranked in its own dtype.

    Args:
      scores: non-empty list of real-valued arrays (any shapes).
      ks: one count per array; a concrete count must be a whole number in ``[0, size]`` (else
        :class:`PruningError` naming it), a traced one is clipped to that range.
      names: one name per array for error messages (default ``[0]``, ``[1]``, ...).

    Ties at the threshold are removed in flat index order. Equal-size arrays are selected in one
    program.

    >>> [m.tolist() for m in prune_each([jnp.array([3.0, 1.0, 2.0]), jnp.array([1.0, 2.0])], [2, 0])]
    [[True, False, False], [True, True]]
    """
    named = _named(scores, names, "prune_each")
    if isinstance(ks, (str, bytes)) or not isinstance(ks, Sequence) or len(ks) != len(named):
        raise PruningError(f"prune_each: ks must be a list of {len(named)} counts (one per scores "
                           f"array), got {ks!r}")
    ks = [_check_k(k, int(np.size(x)), "prune_each", f"ks[{i}]", f"the size of '{path}'")
          for i, (k, (path, x)) in enumerate(zip(ks, named))]
    for path, x in named:
        check_finite(x, path)
    return _prune_keys_each([_sort_keys(x, _selection_dtype([(p, x)])) for p, x in named], ks)
