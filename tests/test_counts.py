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
