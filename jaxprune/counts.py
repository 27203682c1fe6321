"""The one rounding rule: how many elements a sparsity removes.

A leaf (or selection) of ``n`` elements at sparsity ``s`` loses exactly::

    k = round_half_to_even(s * n)

computed **exactly** for the value of ``s`` as given: a Python float is a float64 and the product is
taken in rational arithmetic on the host; a jax/numpy float32 array (e.g. a traced sparsity inside
``jit``) is taken at its float32 value and the product is formed in exact integer arithmetic on the
device, so changing a traced sparsity never recompiles and never loses an element to float rounding.
``s = 0`` removes nothing, ``s = 1`` removes everything.

Structured selection that must leave units in every leaf (``Neurons``/``Channels``, ``min_keep`` per
leaf, default 1) caps the count: ``k = min(round_half_to_even(s * n), n - min_keep)`` (``num_pruned``
with ``min_keep=``), so a layer is never emptied whatever the sparsity.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune.errors import PruningError

__all__ = ["num_pruned", "is_concrete", "check_sparsity_value"]

_MAX_N = 2**31 - 1


def is_concrete(x: Any) -> bool:
    """True when ``x`` has a value now (not a tracer inside ``jit``/``vmap``).

    >>> is_concrete(0.5)
    True
    """
    return not isinstance(x, jax.core.Tracer)


def check_sparsity_value(s: Any, where: str) -> None:
    """Raises :class:`PruningError` naming ``where`` if a concrete ``s`` is NaN or outside [0, 1].

    Traced values cannot be checked before compute; :func:`num_pruned` clips them to [0, 1] and reads
    NaN as 0 (nothing pruned).

    >>> check_sparsity_value(0.5, 'sparsity')
    """
    if not is_concrete(s):
        return
    arr = np.asarray(s)
    if arr.shape != ():
        raise PruningError(f"{where}: sparsity must be a scalar, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise PruningError(f"{where}: sparsity must be a real number, got {s!r}")
    value = float(arr)
    if not (0.0 <= value <= 1.0):  # also catches NaN
        raise PruningError(f"{where}: sparsity must be in [0, 1], got {value}")


def _host_count(s: Any, n: int) -> int:
    arr = np.asarray(s)
    # Fraction(float) is exact; Python's round() on a Fraction rounds half to even.
    return int(round(Fraction(float(arr)) * n))


def _traced_count(s: jax.Array, n: int) -> jax.Array:
    """round_half_even(s * n) for float32 ``s`` in [0, 1], exactly, in uint32 arithmetic."""
    s = jnp.clip(jnp.nan_to_num(jnp.asarray(s, jnp.float32), nan=0.0), 0.0, 1.0)
    bits = jax.lax.bitcast_convert_type(s, jnp.uint32)
    exp = (bits >> 23) & 0xFF
    frac = bits & 0x7FFFFF
    # s = mant * 2**-shift with a 24-bit integer mantissa; s <= 1 gives shift >= 23.
    mant = jnp.where(exp > 0, frac | 0x800000, frac)
    shift = jnp.where(exp > 0, 150 - exp, 149).astype(jnp.int32)
    # mant * n as 12-bit limbs: every partial product is < 2**24 and fits in uint32.
    m_lo, m_hi = mant & 0xFFF, mant >> 12
    c = [(n >> (12 * j)) & 0xFFF for j in range(3)]
    raw = [m_lo * c[0], m_hi * c[0] + m_lo * c[1], m_hi * c[1] + m_lo * c[2], m_hi * c[2],
           jnp.zeros_like(mant)]
    limbs, carry = [], jnp.zeros_like(mant)
    for r in raw:
        t = r + carry
        limbs.append(t & 0xFFF)
        carry = t >> 12
    limbs_arr = jnp.stack(limbs)  # product = sum(limbs[i] << 12 i), limbs non-overlapping
    pos = 12 * jnp.arange(5, dtype=jnp.int32)
    d = pos - shift
    # floor(product / 2**shift): limbs occupy disjoint bits, so the floor of the sum is the sum of
    # the floors (each term <= the result <= n < 2**31, so no overflow).
    up = jnp.where((d >= 0) & (d < 32), limbs_arr << jnp.clip(d, 0, 31).astype(jnp.uint32), 0)
    down = jnp.where((d < 0) & (d > -32), limbs_arr >> jnp.clip(-d, 0, 31).astype(jnp.uint32), 0)
    q = jnp.sum(jnp.where(d >= 0, up, down), dtype=jnp.uint32)
    # Round half to even: the bit just below the point and whether anything below it is set.
    h = shift - 1
    hi_idx, hi_bit = h // 12, (h % 12).astype(jnp.uint32)
    in_range = hi_idx < 5
    limb_h = jnp.where(in_range, limbs_arr[jnp.clip(hi_idx, 0, 4)], 0)
    half = jnp.where(in_range, (limb_h >> hi_bit) & 1, 0)
    below_mask = (jnp.uint32(1) << hi_bit) - 1
    idx = jnp.arange(5, dtype=jnp.int32)
    sticky = jnp.any((idx < hi_idx) & (limbs_arr != 0)) | ((limb_h & below_mask) != 0)
    round_up = (half == 1) & (sticky | ((q & 1) == 1))
    return (q + round_up.astype(jnp.uint32)).astype(jnp.int32)


def num_pruned(sparsity: Any, n: int, *, min_keep: int = 0) -> Any:
    """Number of elements removed from ``n`` at ``sparsity``: ``round_half_even(sparsity * n)``,
    capped at ``n - min_keep`` (never below 0) so that at least ``min_keep`` stay.

    Returns a Python int for a concrete sparsity and an int32 array for a traced one.

    >>> num_pruned(0.5, 5), num_pruned(0.9, 10), num_pruned(1.0, 7), num_pruned(1.0, 7, min_keep=1)
    (2, 9, 7, 6)
    """
    n = int(n)
    if not 0 <= n <= _MAX_N:
        raise PruningError(f"num_pruned: n must be in [0, 2**31), got {n}")
    if isinstance(min_keep, bool) or not isinstance(min_keep, (int, np.integer)) or min_keep < 0:
        raise PruningError(f"num_pruned: min_keep must be an integer >= 0, got {min_keep!r}")
    limit = max(n - int(min_keep), 0)
    if is_concrete(sparsity):
        check_sparsity_value(sparsity, "sparsity")
        return min(_host_count(sparsity, n), limit)
    k = _traced_count(sparsity, n)
    return k if limit == n else jnp.minimum(k, limit)
