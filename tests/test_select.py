import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import jaxprune as jp
from jaxprune import select as sel

from helpers import conv_tree

# Few distinct sizes keep the number of XLA compilations (the cost of these tests) small.
shapes_st = st.lists(
    st.lists(st.sampled_from([1, 2, 3, 5, 8]), min_size=1, max_size=3).map(tuple),
    min_size=1, max_size=3)
fast = settings(max_examples=15)


def _scores(shapes, seed, ties=False):
    keys = jax.random.split(jax.random.PRNGKey(seed), len(shapes))
    out = {}
    for i, (k, s) in enumerate(zip(keys, shapes)):
        x = jax.random.normal(k, s)
        out[f"l{i}"] = jnp.round(x) if ties else x
    return out


def _pruned(m):
    return int(np.sum(~np.asarray(m)))


@fast
@given(shapes_st, st.floats(0, 1), st.integers(0, 100), st.booleans())
def test_layerwise_exact_counts(shapes, s, seed, ties):
    sc = _scores(shapes, seed, ties)
    masks = jp.topk_masks(sc, jax.tree.map(lambda _: s, sc))
    for x, m in zip(jax.tree.leaves(sc), jax.tree.leaves(masks)):
        assert m.dtype == jnp.bool_ and m.shape == x.shape
        assert _pruned(m) == jp.num_pruned(s, x.size)
        if 0 < _pruned(m) < x.size:  # every pruned score <= every kept score
            assert np.max(np.asarray(x)[~np.asarray(m)]) <= np.min(np.asarray(x)[np.asarray(m)])


@fast
@given(shapes_st, st.floats(0, 1), st.integers(0, 100), st.booleans())
def test_global_exact_count(shapes, s, seed, ties):
    sc = _scores(shapes, seed, ties)
    masks = jp.global_masks(sc, s, include=lambda p, x: True)
    total = sum(x.size for x in jax.tree.leaves(sc))
    assert sum(_pruned(m) for m in jax.tree.leaves(masks)) == jp.num_pruned(s, total)


@fast
@given(shapes_st, st.floats(0, 1), st.integers(0, 50))
def test_idempotent(shapes, s, seed):
    sc = _scores(shapes, seed)
    sp = jax.tree.map(lambda _: s, sc)
    m = jp.topk_masks(sc, sp)
    again = jp.topk_masks(jax.tree.map(lambda x, k: jnp.where(k, x, -jnp.inf), sc, m), sp)
    jax.tree.map(np.testing.assert_array_equal, m, again)


@fast
@given(shapes_st, st.floats(0, 1), st.floats(0, 1), st.integers(0, 50))
def test_nested(shapes, a, b, seed):
    lo, hi = sorted((a, b))
    sc = _scores(shapes, seed, ties=True)
    assert jp.is_nested(jp.topk_masks(sc, jax.tree.map(lambda _: hi, sc)),
                        jp.topk_masks(sc, jax.tree.map(lambda _: lo, sc)))
    every = lambda p, x: True  # noqa: E731
    assert jp.is_nested(jp.global_masks(sc, hi, include=every), jp.global_masks(sc, lo, include=every))


def test_ties_broken_by_index_then_leaf_order():
    m = jp.topk_masks({"w": jnp.zeros((2, 3))}, 0.5)["w"]
    np.testing.assert_array_equal(m, [[False, False, False], [True, True, True]])
    g = jp.global_masks({"a": jnp.ones((1, 2)), "b": jnp.ones((1, 2))}, 0.75)
    np.testing.assert_array_equal(g["a"], [[False, False]])
    np.testing.assert_array_equal(g["b"], [[False, True]])


def test_long_rows_use_radix_select(monkeypatch):
    # Force the radix path on small rows (tie-heavy, sorted, signed, infinite, several rows with their
    # own k) and compare with a stable sort: exact count, ties in index order.
    monkeypatch.setattr(sel, "_SMALL", 16)
    x = jax.random.normal(jax.random.PRNGKey(3), (5000,))
    special = x.at[:40].set(-jnp.inf).at[40:80].set(jnp.inf).at[80:200].set(0.0).at[200:260].set(-0.0)
    for scores in (x, jnp.round(x * 2), jnp.sort(x)[::-1], special, jnp.zeros(5000)):
        for k in (1, 17, 2500, 4999, 5000):
            keep = sel.prune_lowest([scores], k)[0]
            assert _pruned(keep) == k
            key = np.where(np.asarray(scores) == 0, 0.0, np.asarray(scores, np.float32))
            order = np.lexsort((np.arange(5000), key))
            want = np.ones(5000, bool)
            want[order[:k]] = False
            np.testing.assert_array_equal(keep, want)
    rows = jnp.stack([x, jnp.round(x), -x])
    ks = jnp.array([0, 1234, 5000])
    keep = np.asarray(sel._prune_rows(rows, ks))
    for r in range(3):
        order = np.lexsort((np.arange(5000), np.asarray(rows[r], np.float32)))
        want = np.ones(5000, bool)
        want[order[:int(ks[r])]] = False
        np.testing.assert_array_equal(keep[r], want)


def test_negative_and_signed_zero_scores():
    s = {"w": jnp.array([[-3.0, -0.0, 0.0, 2.0, -jnp.inf, jnp.inf]])}
    m = jp.topk_masks(s, 0.5)["w"]
    np.testing.assert_array_equal(m, [[False, False, True, True, False, True]])


def test_traced_sparsity_no_recompile_and_matches_eager():
    sc = jax.tree.map(jnp.abs, conv_tree())
    f = jax.jit(lambda s, v: jp.topk_masks(s, v))
    g = jax.jit(lambda s, v: jp.global_masks(s, v))
    for v in (0.1, 0.5, 0.93):
        v32 = float(np.float32(v))
        jax.tree.map(np.testing.assert_array_equal, f(sc, jnp.float32(v)), jp.topk_masks(sc, v32))
        jax.tree.map(np.testing.assert_array_equal, g(sc, jnp.float32(v)), jp.global_masks(sc, v32))
    assert f._cache_size() == 1 and g._cache_size() == 1


def test_nm_structure():
    sc = {"w": jax.random.normal(jax.random.PRNGKey(0), (8, 16))}
    m = jp.topk_masks(sc, 0.5, structure=jp.NM(2, 4))["w"]
    groups = np.asarray(m).reshape(8, 4, 4)
    assert (groups.sum(-1) == 2).all()
    m0 = jp.topk_masks(sc, 0.5, structure=jp.NM(1, 4, axis=0))["w"]
    assert (np.asarray(m0).reshape(2, 4, 16).sum(1) == 1).all()
    with pytest.raises(jp.PruningError, match="'w'.*not divisible by m=3"):
        jp.topk_masks(sc, 0.5, structure=jp.NM(2, 3))
    with pytest.raises(jp.PruningError, match="topk_masks"):
        jp.global_masks(sc, 0.5, structure=jp.NM(2, 4))


def test_block_structure():
    sc = {"w": jax.random.normal(jax.random.PRNGKey(0), (8, 12))}
    m = np.asarray(jp.topk_masks(sc, 0.5, structure=jp.Block((2, 4)))["w"])
    blocks = m.reshape(4, 2, 3, 4).transpose(0, 2, 1, 3).reshape(12, 8)
    assert all(b.all() or (~b).all() for b in blocks)
    assert sum((~b).all() for b in blocks) == 6
    with pytest.raises(jp.PruningError, match="'w'.*not divisible by 5"):
        jp.topk_masks(sc, 0.5, structure=jp.Block((2, 5)))


def test_neuron_and_channel_structure():
    p = conv_tree()
    sc = jax.tree.map(jnp.abs, p)
    m = jp.topk_masks(sc, 0.5, structure=jp.Channels())
    k = np.asarray(m["conv"]["kernel"])
    assert (k.all(axis=(0, 1, 2)) | (~k).all(axis=(0, 1, 2))).all() and (~k.any(axis=(0, 1, 2))).sum() == 4
    d = np.asarray(m["dense"]["kernel"])
    assert (~d.any(axis=0)).sum() == 8
    # The removed neurons are those with the lowest mean |w|.
    mean = np.abs(np.asarray(p["dense"]["kernel"])).mean(0)
    np.testing.assert_array_equal(np.sort(np.where(~d.any(0))[0]), np.sort(np.argsort(mean)[:8]))
    g = jp.global_masks(sc, 0.5, structure=jp.Neurons(), normalize="l2")
    units = sum(int((~np.asarray(x).any(axis=tuple(range(x.ndim - 1)))).sum())
                for x in jax.tree.leaves(g) if x.ndim >= 2)
    assert units == jp.num_pruned(0.5, 8 + 16 + 4)


def test_nan_scores_rejected():
    with pytest.raises(jp.PruningError, match="'w'.*NaN"):
        jp.topk_masks({"w": jnp.array([[1.0, jnp.nan]])}, 0.5)
    with pytest.raises(jp.PruningError, match="'w'.*NaN"):
        jp.global_masks({"w": jnp.array([[1.0, jnp.nan]])}, 0.5)
    # Under jit NaN cannot raise: it is pruned first, never kept.
    m = jax.jit(lambda s: jp.topk_masks(s, 0.5))({"w": jnp.array([[1.0, jnp.nan]])})
    np.testing.assert_array_equal(m["w"], [[True, False]])


def test_bad_sparsity_and_trees():
    sc = {"w": jnp.ones((2, 2)), "b": jnp.ones(2)}
    with pytest.raises(jp.PruningError, match="sparsities leaf 'w'"):
        jp.topk_masks(sc, {"w": 1.5, "b": 0.0})
    with pytest.raises(jp.PruningError, match="sparsity"):
        jp.global_masks(sc, -0.1)
    with pytest.raises(jp.PruningError, match="sparsities"):
        jp.topk_masks(sc, {"w": 0.5})
    with pytest.raises(jp.PruningError, match="selects no leaf"):
        jp.global_masks(sc, 0.5, include="*zzz*")
    with pytest.raises(jp.PruningError, match="normalize"):
        jp.global_masks(sc, 0.5, normalize="l7")
