from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, strategies as st

from jaxprune import PruningError, num_pruned


@given(st.floats(0, 1, width=32), st.integers(0, 2**31 - 1))
def test_traced_count_is_exact_round_half_even(s, n):
    want = round(Fraction(float(np.float32(s))) * n)
    got = int(jax.jit(lambda v: num_pruned(v, n))(jnp.float32(s)))
    assert got == want


@given(st.floats(0, 1), st.integers(0, 10**9))
def test_host_count_is_exact(s, n):
    assert num_pruned(s, n) == round(Fraction(s) * n)


def test_ties_round_half_to_even():
    assert [num_pruned(0.5, n) for n in (1, 3, 5, 7)] == [0, 2, 2, 4]
    assert int(jax.jit(lambda s: num_pruned(s, 5))(jnp.float32(0.5))) == 2


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), "a"])
def test_bad_sparsity(bad):
    with pytest.raises(PruningError, match="sparsity"):
        num_pruned(bad, 10)


def _near_halves(n):
    """float32 sparsities at, one ulp below and one ulp above (k + 1/2) / n, plus 1/2 + 2**-j."""
    out = [np.float32(0.5) + np.float32(2.0 ** -j) for j in range(1, 24)]
    for k in sorted({0, 1, 2, 3, n // 3, n // 2, n - 2}):
        mid = np.float32((k + 0.5) / n)
        out += [np.nextafter(mid, np.float32(0)), mid, np.nextafter(mid, np.float32(1))]
    return np.clip(np.array(out, np.float32), 0, 1)


@pytest.mark.parametrize("n", [1, 3, 4095, 4097, 2**24 + 1, 2**31 - 1])
def test_traced_count_matches_exact_rounding_next_to_every_half(n):
    # Values just around the rounding points exercise the round-half-even bit and the sticky bits of
    # every 12-bit limb, which random sparsities almost never reach.
    s = _near_halves(n)
    got = jax.jit(jax.vmap(lambda v: num_pruned(v, n)))(s)
    want = [round(Fraction(float(v)) * n) for v in s]
    np.testing.assert_array_equal(np.asarray(got), want)


def test_traced_ties_round_to_even_from_odd_and_even():
    counts = jax.jit(jax.vmap(lambda s: num_pruned(s, 3)))(jnp.array([0.5, 0.5 / 3, 2.5 / 3], jnp.float32))
    exact = [round(Fraction(float(np.float32(v))) * 3) for v in (0.5, 0.5 / 3, 2.5 / 3)]
    assert np.asarray(counts).tolist() == exact
    assert int(jax.jit(lambda s: num_pruned(s, 3))(jnp.float32(0.5))) == 2  # 1.5 -> 2


def test_traced_sparsity_is_clipped_and_nan_prunes_nothing():
    f = jax.jit(lambda s: num_pruned(s, 10))
    assert [int(f(jnp.float32(v))) for v in (1.5, -0.5, float("nan"), 1.0)] == [10, 0, 0, 10]


@pytest.mark.parametrize("traced", [False, True])
def test_min_keep_caps_the_count(traced):
    def count(s):
        return num_pruned(s, 7, min_keep=2)

    if traced:
        count = jax.jit(count)
    assert [int(count(jnp.float32(v) if traced else v)) for v in (1.0, 0.5, 0.0)] == [5, 4, 0]


def test_concrete_sparsity_of_any_real_dtype():
    assert num_pruned(np.float32(0.25), 8) == 2
    assert num_pruned(1, 7) == 7 and num_pruned(np.int64(0), 5) == 0
    assert num_pruned(np.float16(0.5), 4) == 2
    for bad in (1j, np.complex64(0.5), True, np.array([0.5])):
        with pytest.raises(PruningError, match="sparsity"):
            num_pruned(bad, 10)


def test_check_sparsity_value_skips_traced_values():
    from jaxprune.counts import check_sparsity_value

    out = jax.jit(lambda s: (check_sparsity_value(s, "target"), s)[1])(jnp.float32(1.5))
    assert float(out) == 1.5  # cannot be checked before compute: num_pruned clips it instead
    with pytest.raises(PruningError, match=r"^target: sparsity must be in \[0, 1\], got 1.5"):
        check_sparsity_value(1.5, "target")
