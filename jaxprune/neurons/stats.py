"""Streaming per-unit activation statistics (optax-style ``init / update / finalize``).

A *unit* is a Dense output feature or a Conv output channel (the last axis). Each example contributes
one value per unit: conv maps are global-average-pooled per example first (Luo & Wu 2017). Zero counts
for APoZ are taken on the raw, un-pooled elements (Hu et al. 2016 count zeros over every spatial
position). Nothing but O(units x bins) numbers is kept, however many batches are streamed.

Histogram range: a histogram needs fixed bin edges before the first batch. Either pass a known
``hist_range=(lo, hi)`` (scalars or per-unit arrays; values outside are clipped into the end bins), or
run the data twice: a first pass whose ``minimum``/``maximum`` become each unit's range
(:func:`with_observed_range`). A unit with ``lo == hi`` puts every value into bin 0.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxprune.errors import PruningError

DEFAULT_BINS = 32
"""Histogram bins per unit (our default; Luo & Wu leave m as a hyperparameter)."""


class UnitStats(NamedTuple):
    """Running sums for one layer's units; every field but ``count``/``elements`` has a unit axis.

    ``count`` is the number of examples n; ``elements`` the number of raw (un-pooled) values per unit
    whose zeros were counted; ``m2`` is Σ(x − mean)² merged with Chan et al.'s parallel update (stable
    where Σx² − n·mean² would cancel).
    """

    count: jax.Array  # () int32
    total: jax.Array  # (units,) Σx
    sum_sq: jax.Array  # (units,) Σx²
    sum_abs: jax.Array  # (units,) Σ|x|
    m2: jax.Array  # (units,) Σ(x − mean)²
    minimum: jax.Array  # (units,)
    maximum: jax.Array  # (units,)
    zeros: jax.Array  # (units,) int32, exact zeros among raw elements
    elements: jax.Array  # () int32
    hist: jax.Array  # (units, bins) int32
    lo: jax.Array  # (units,) histogram range
    hi: jax.Array  # (units,)


class UnitSummary(NamedTuple):
    """Finalized per-unit quantities (float32, unit axis first)."""

    count: jax.Array  # () number of examples n
    mean: jax.Array
    variance: jax.Array  # population variance; exactly 0 for a constant unit
    l1: jax.Array  # Σ|x|
    l2: jax.Array  # sqrt(Σx²)
    zero_fraction: jax.Array  # APoZ
    probs: jax.Array  # (units, bins) histogram / n
    constant: jax.Array  # bool: minimum == maximum (includes all-zero units)


def init_unit_stats(num_units: int, *, bins: int = DEFAULT_BINS,
                    hist_range: tuple | None = None) -> UnitStats:
    """Empty statistics for ``num_units`` units.

    Example:
        >>> s = init_unit_stats(3, bins=4, hist_range=(0.0, 1.0))
        >>> s.hist.shape, int(s.count)
        ((3, 4), 0)
    """
    if int(bins) < 1:
        raise PruningError(f"init_unit_stats: bins must be >= 1, got {bins}")
    units = (int(num_units),)
    lo, hi = (0.0, 0.0) if hist_range is None else _check_range(hist_range)
    lo = jnp.broadcast_to(jnp.asarray(lo, jnp.float32), units)
    hi = jnp.broadcast_to(jnp.asarray(hi, jnp.float32), units)
    zf = jnp.zeros(units, jnp.float32)
    return UnitStats(
        count=jnp.zeros((), jnp.int32), total=zf, sum_sq=zf, sum_abs=zf, m2=zf,
        minimum=jnp.full(units, jnp.inf, jnp.float32), maximum=jnp.full(units, -jnp.inf, jnp.float32),
        zeros=jnp.zeros(units, jnp.int32), elements=jnp.zeros((), jnp.int32),
        hist=jnp.zeros((*units, int(bins)), jnp.int32), lo=lo, hi=hi,
    )


def _check_range(hist_range: tuple) -> tuple:
    """Validate a user-given (lo, hi); per-unit (possibly traced) arrays are taken as they are."""
    try:
        lo, hi = hist_range
    except (TypeError, ValueError):
        raise PruningError(f"hist_range must be a pair (lo, hi), got {hist_range!r}") from None
    if isinstance(lo, (int, float)) and isinstance(hi, (int, float)) and not lo < hi:
        raise PruningError(f"hist_range must have lo < hi, got ({lo}, {hi})")
    return lo, hi


def update_unit_stats(stats: UnitStats, x: jax.Array) -> UnitStats:
    """Fold one batch ``x`` of shape (n, units) or (n, *spatial, units) into ``stats``.

    Example:
        >>> s = init_unit_stats(2, bins=2, hist_range=(0.0, 1.0))
        >>> s = update_unit_stats(s, jnp.array([[0.0, 0.25], [1.0, 0.75]]))
        >>> s.hist.tolist(), s.zeros.tolist()
        ([[1, 1], [1, 1]], [1, 0])
    """
    units = stats.total.shape[0]
    if x.ndim < 2 or x.shape[-1] != units:
        raise PruningError(
            f"update_unit_stats: expected activations of shape (n, ..., {units}), got {x.shape}")
    x = x.astype(jnp.float32)
    zeros = jnp.sum(x == 0, axis=tuple(range(x.ndim - 1)), dtype=jnp.int32)
    elements = x.size // units
    if x.ndim > 2:  # one value per example and channel: global average pooling
        x = jnp.mean(x, axis=tuple(range(1, x.ndim - 1)))
    n_b = x.shape[0]
    n_a = stats.count.astype(jnp.float32)
    n = n_a + n_b
    mean_b = jnp.mean(x, axis=0)
    m2_b = jnp.sum(jnp.square(x - mean_b[None, :]), axis=0)
    mean_a = stats.total / jnp.maximum(n_a, 1.0)
    delta = mean_b - mean_a
    m2 = stats.m2 + m2_b + jnp.square(delta) * (n_a * n_b / jnp.maximum(n, 1.0))
    return UnitStats(
        count=stats.count + n_b,
        total=stats.total + jnp.sum(x, axis=0),
        sum_sq=stats.sum_sq + jnp.sum(jnp.square(x), axis=0),
        sum_abs=stats.sum_abs + jnp.sum(jnp.abs(x), axis=0),
        m2=m2,
        minimum=jnp.minimum(stats.minimum, jnp.min(x, axis=0)),
        maximum=jnp.maximum(stats.maximum, jnp.max(x, axis=0)),
        zeros=stats.zeros + zeros,
        elements=stats.elements + elements,
        hist=stats.hist + _histogram(x, stats.lo, stats.hi, stats.hist.shape[1]),
        lo=stats.lo,
        hi=stats.hi,
    )


def _histogram(x: jax.Array, lo: jax.Array, hi: jax.Array, bins: int) -> jax.Array:
    """Per-unit counts of ``x`` (n, units) in ``bins`` equal bins over [lo, hi] (end bins clip)."""
    width = hi - lo
    scale = jnp.where(width > 0, bins / jnp.where(width > 0, width, 1.0), 0.0)
    idx = jnp.floor((x - lo[None, :]) * scale[None, :])
    # np.histogram convention: the right edge belongs to the last bin; outliers clip to the ends.
    idx = jnp.clip(idx, 0, bins - 1).astype(jnp.int32)
    unit = jnp.broadcast_to(jnp.arange(x.shape[1], dtype=jnp.int32)[None, :], idx.shape)
    return jnp.zeros((x.shape[1], bins), jnp.int32).at[unit, idx].add(1)


def finalize_unit_stats(stats: UnitStats) -> UnitSummary:
    """Turn running sums into per-unit mean, variance, norms, APoZ and histogram probabilities.

    Example:
        >>> s = update_unit_stats(init_unit_stats(1), jnp.array([[1.0], [3.0]]))
        >>> f = finalize_unit_stats(s)
        >>> float(f.mean[0]), float(f.variance[0]), float(f.l1[0])
        (2.0, 1.0, 4.0)
    """
    n = stats.count.astype(jnp.float32)
    safe_n = jnp.maximum(n, 1.0)
    constant = stats.minimum == stats.maximum
    # min == max is exact, so a constant unit gets variance exactly 0 (rounding in m2 can't leak in).
    variance = jnp.where(constant, 0.0, jnp.maximum(stats.m2, 0.0) / safe_n)
    zero_fraction = jnp.clip(
        stats.zeros.astype(jnp.float32) / jnp.maximum(stats.elements, 1).astype(jnp.float32), 0.0, 1.0)
    return UnitSummary(
        count=n,
        mean=stats.total / safe_n,
        variance=variance,
        l1=stats.sum_abs,
        l2=jnp.sqrt(stats.sum_sq),
        zero_fraction=zero_fraction,
        probs=stats.hist.astype(jnp.float32) / safe_n,
        constant=constant,
    )


def with_observed_range(stats: UnitStats) -> UnitStats:
    """Fresh statistics whose histogram range is each unit's observed [minimum, maximum].

    This is the second pass of the two-pass histogram: stream the same data again into the result.

    Example:
        >>> s = update_unit_stats(init_unit_stats(1, bins=2), jnp.array([[1.0], [3.0]]))
        >>> t = with_observed_range(s)
        >>> float(t.lo[0]), float(t.hi[0]), int(t.count)
        (1.0, 3.0, 0)
    """
    units, bins = stats.hist.shape
    empty = stats.minimum > stats.maximum  # never updated: keep a harmless [0, 0] range
    lo = jnp.where(empty, 0.0, stats.minimum)
    hi = jnp.where(empty, 0.0, stats.maximum)
    return init_unit_stats(units, bins=bins, hist_range=(lo, hi))


def unit_stats_from_array(x: jax.Array, *, bins: int = DEFAULT_BINS,
                          hist_range: tuple | None = None) -> UnitStats:
    """Statistics of one in-memory array (n, ..., units); the range defaults to the observed one.

    Example:
        >>> s = unit_stats_from_array(jnp.array([[0.0, 1.0], [2.0, 1.0]]), bins=2)
        >>> s.hist.tolist()
        [[1, 1], [2, 0]]
    """
    units = x.shape[-1]
    if hist_range is None:
        first = _update_jit(init_unit_stats(units, bins=bins), x)
        return _update_jit(with_observed_range(first), x)
    return _update_jit(init_unit_stats(units, bins=bins, hist_range=hist_range), x)


# One compilation per shape instead of op-by-op dispatch for eager callers (nested jit is free).
_update_jit = jax.jit(update_unit_stats)
