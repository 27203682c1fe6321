"""jaxprune.ranking: exact k-lowest selection over plain arrays (select's engine)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import jaxprune as jp
from jaxprune import ranking as rk
from jaxprune import select as sel


def _pruned(m):
    return int(np.sum(~np.asarray(m)))


def test_long_rows_use_radix_select(monkeypatch):
    # Force the radix path on small rows (tie-heavy, sorted, signed, infinite, several rows with their
    # own k) and compare with a stable sort: exact count, ties in index order.
    monkeypatch.setattr(rk, "_SMALL", 16)
    x = jax.random.normal(jax.random.PRNGKey(3), (5000,))
    special = x.at[:40].set(-jnp.inf).at[40:80].set(jnp.inf).at[80:200].set(0.0).at[200:260].set(-0.0)
    for scores in (x, jnp.round(x * 2), jnp.sort(x)[::-1], special, jnp.zeros(5000)):
        for k in (1, 17, 2500, 4999, 5000):
            keep = rk.prune_lowest([scores], k)[0]
            assert _pruned(keep) == k
            key = np.where(np.asarray(scores) == 0, 0.0, np.asarray(scores, np.float32))
            order = np.lexsort((np.arange(5000), key))
            want = np.ones(5000, bool)
            want[order[:k]] = False
            np.testing.assert_array_equal(keep, want)
    rows = jnp.stack([x, jnp.round(x), -x])
    ks = jnp.array([0, 1234, 5000])
    keep = np.asarray(rk._prune_rows(rk._sort_keys(rows, np.dtype(np.float32)), ks))
    for r in range(3):
        order = np.lexsort((np.arange(5000), np.asarray(rows[r], np.float32)))
        want = np.ones(5000, bool)
        want[order[:int(ks[r])]] = False
        np.testing.assert_array_equal(keep[r], want)


def test_int_scores_radix_path_exact(monkeypatch):
    monkeypatch.setattr(rk, "_SMALL", 16)
    x = jnp.full((64,), 16_777_216, jnp.int32).at[37].set(16_777_217)
    (keep,) = rk.prune_lowest([x], 63)
    assert np.flatnonzero(np.asarray(keep)).tolist() == [37]


@pytest.mark.parametrize("k", [4, -1, 1.5, [], "2", True])
def test_prune_lowest_bad_k_names_it(k):
    with pytest.raises(jp.PruningError, match="prune_lowest: k"):
        rk.prune_lowest([jnp.ones(3)], k)


def test_prune_lowest_bad_scores_and_edge_k():
    with pytest.raises(jp.PruningError, match="non-empty list"):
        rk.prune_lowest([], 0)
    assert rk.prune_lowest([jnp.ones(3)], 3.0)[0].tolist() == [False, False, False]  # whole float ok
    assert rk.prune_lowest([jnp.ones(3)], np.int64(0))[0].tolist() == [True, True, True]
    # A traced k is clipped (it cannot raise).
    assert jax.jit(lambda k: rk.prune_lowest([jnp.arange(3.0)], k)[0])(7).tolist() == [False] * 3


def test_prune_lowest_over_three_arrays_splits_back_in_order():
    a, b, c = jnp.array([3.0, 1.0]), jnp.array([0.5]), jnp.array([2.0, 0.1, 5.0])
    masks = rk.prune_lowest([a, b, c], 3)  # removes 0.1, 0.5, 1.0
    assert [m.tolist() for m in masks] == [[True, False], [False], [True, False, True]]



def test_select_re_exports_prune_lowest():
    assert sel.prune_lowest is rk.prune_lowest and jp.prune_lowest is rk.prune_lowest


sizes_st = st.lists(st.sampled_from([0, 1, 2, 3, 5, 8]), min_size=1, max_size=4)


@settings(max_examples=15, deadline=None)
@given(sizes_st, st.integers(0, 3), st.integers(0, 40), st.integers(0, 100))
def test_min_keep_exact_count_and_protects_each_arrays_best(sizes, min_keep, k, seed):
    """k is capped by the caller's range check; exactly k go; each array keeps its min_keep best
    (by value, ties by index) and everything unprotected above the threshold stays."""
    rng = np.random.default_rng(seed)
    arrays = [np.round(rng.standard_normal(n).astype(np.float32), 1) for n in sizes]
    kept = [min(min_keep, n) for n in sizes]
    k = min(k, sum(sizes) - sum(kept))
    masks = rk.prune_lowest([jnp.asarray(a) for a in arrays], k, min_keep=min_keep)
    assert sum(_pruned(m) for m in masks) == k
    # reference: protect each array's min_keep best (stable: highest value, lowest index on ties),
    # then remove the k lowest of the rest by (value, array, index)
    protected, pool = set(), []
    for i, a in enumerate(arrays):
        order = sorted(range(len(a)), key=lambda j: (-a[j], j))
        protected |= {(i, j) for j in order[:kept[i]]}
        pool += [(float(a[j]), i, j) for j in range(len(a)) if (i, j) not in protected]
    gone = {(i, j) for _, i, j in sorted(pool)[:k]}
    for i, (a, m) in enumerate(zip(arrays, masks)):
        assert np.asarray(m).tolist() == [(i, j) not in gone for j in range(len(a))]


def test_min_keep_k_above_the_unprotected_count_is_an_error_and_traced_k_is_capped():
    a, b = jnp.array([1.0, 2.0, 3.0]), jnp.array([0.5, 0.25])
    with pytest.raises(jp.PruningError, match=r"^prune_lowest: k=4 is outside \[0, 3\] \(the number of "
                                              r"scores less min_keep per array\)$"):
        rk.prune_lowest([a, b], 4, min_keep=1)
    got = jax.jit(lambda k: rk.prune_lowest([a, b], k, min_keep=1))(5)
    assert [m.tolist() for m in got] == [[False, False, True], [True, False]]
    for bad in (-1, 1.5, True, None):
        with pytest.raises(jp.PruningError, match="prune_lowest: min_keep must be an integer >= 0"):
            rk.prune_lowest([a], 1, min_keep=bad)


def test_prune_each_counts_per_array_names_and_errors():
    a, b, c = jnp.array([3.0, 1.0, 2.0]), jnp.array([5, 4], jnp.int32), jnp.zeros((0,))
    got = rk.prune_each([a, b, c, a], [1, 2, 0, 3])
    assert [m.tolist() for m in got] == [[True, False, True], [False, False], [], [False] * 3]
    # each array in its own dtype: int32 and float32 are never promoted together here
    big = jnp.array([16_777_217, 16_777_216], jnp.int32)
    assert rk.prune_each([big, a], [1, 0])[0].tolist() == [True, False]
    traced = jax.jit(lambda k: rk.prune_each([a], [k])[0])(9)  # clipped to the size
    assert traced.tolist() == [False] * 3
    with pytest.raises(jp.PruningError, match=r"^prune_each: ks\[1\]=3 is outside \[0, 2\] \(the size "
                                              r"of 'b'\)$"):
        rk.prune_each([a, b], [0, 3], names=["a", "b"])
    with pytest.raises(jp.PruningError, match="prune_each: ks must be a list of 2 counts"):
        rk.prune_each([a, b], [1])
    with pytest.raises(jp.PruningError, match="prune_each: names must be a list of 2 strings"):
        rk.prune_each([a, b], [1, 1], names=["a"])
    with pytest.raises(jp.PruningError, match="scores leaf 'w' contains NaN"):
        rk.prune_each([jnp.array([1.0, jnp.nan])], [1], names=["w"])
    with pytest.raises(jp.PruningError, match="non-empty list"):
        rk.prune_each([], [])


def test_names_appear_in_dtype_errors():
    with pytest.raises(jp.PruningError, match="'ints' \\(int32\\) and 'floats' \\(float32\\)"):
        rk.prune_lowest([jnp.array([1], jnp.int32), jnp.array([1.0])], 1, names=["ints", "floats"])
    with pytest.raises(jp.PruningError, match="scores leaf 'c' has dtype complex64"):
        rk.prune_lowest([jnp.array([1j])], 0, names=["c"])


def test_exact_scores_and_check_finite():
    assert rk.exact_scores(np.array([1, 2], np.int64), "w").dtype == np.int32
    assert rk.exact_scores(np.array([1, 2], np.uint64), "w").dtype == np.uint32
    x = jnp.array([1.0])
    assert rk.exact_scores(x, "w") is x
    with pytest.raises(jp.PruningError, match="'w' has dtype int64 with values that 32 bits"):
        rk.exact_scores(np.array([2**40], np.int64), "w")
    rk.check_finite(jnp.array([jnp.inf, -jnp.inf]), "w")  # infinities rank; only NaN is refused
    rk.check_finite(jnp.array([1], jnp.int32), "w")
    with pytest.raises(jp.PruningError, match="^scores leaf 'v' contains NaN"):
        rk.check_finite(np.array([np.nan], np.float32), "v")
