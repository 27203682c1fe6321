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
    # numpy draws: jax.random here would compile a program per drawn shape, the tests' main cost
    rng = np.random.default_rng(seed)
    out = {}
    for i, s in enumerate(shapes):
        x = rng.standard_normal(s, dtype=np.float32)
        out[f"l{i}"] = jnp.asarray(np.round(x) if ties else x)
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
    m = jp.topk_masks({"w": jnp.zeros((2, 3))}, 0.5, include="w")["w"]
    np.testing.assert_array_equal(m, [[False, False, False], [True, True, True]])
    g = jp.global_masks({"a": jnp.ones((1, 2)), "b": jnp.ones((1, 2))}, 0.75, include=["a", "b"])
    np.testing.assert_array_equal(g["a"], [[False, False]])
    np.testing.assert_array_equal(g["b"], [[False, True]])


def test_negative_and_signed_zero_scores():
    s = {"w": jnp.array([[-3.0, -0.0, 0.0, 2.0, -jnp.inf, jnp.inf]])}
    m = jp.topk_masks(s, 0.5, include="w")["w"]
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
    # Default: along the reduction axis, axis 0 of a Dense (in, out) kernel.
    m = jp.topk_masks(sc, 0.5, structure=jp.NM(2, 4), include="w")["w"]
    assert (np.asarray(m).reshape(2, 4, 16).sum(1) == 2).all()
    m1 = jp.topk_masks(sc, 0.5, structure=jp.NM(1, 4, axis=-1), include="w")["w"]  # explicit override
    assert (np.asarray(m1).reshape(8, 4, 4).sum(-1) == 1).all()
    with pytest.raises(jp.PruningError, match="'w'.*not divisible by m=3"):
        jp.topk_masks(sc, 0.5, structure=jp.NM(2, 3), include="w")
    with pytest.raises(jp.PruningError, match="topk_masks"):
        jp.global_masks(sc, 0.5, structure=jp.NM(2, 4), include="w")


def test_nm_axis_rule():
    k = jax.random.split(jax.random.PRNGKey(2), 3)
    conv = jax.random.normal(k[0], (3, 3, 8, 6))
    m = np.asarray(jp.topk_masks({"c": conv}, 0.5, structure=jp.NM(2, 4), include="c")["c"])
    assert (m.reshape(3, 3, 2, 4, 6).sum(3) == 2).all()  # HWIO: groups along in (-2)
    q = {"q": jax.random.normal(k[1], (8, 2, 4))}  # (in, heads, head_dim) or a 1-D conv? ambiguous
    with pytest.raises(jp.PruningError, match="'q'.*reduction_axes"):
        jp.topk_masks(q, 0.5, structure=jp.NM(2, 4), include="q")
    mq = np.asarray(jp.topk_masks(q, 0.5, structure=jp.NM(2, 4, axis={"q": 0}), include="q")["q"])
    assert (mq.reshape(2, 4, 2, 4).sum(1) == 2).all()
    # A mapping falls back to the shape rule for leaves it does not list.
    both = {"q": q["q"], "d": jax.random.normal(k[2], (8, 3))}
    mb = jp.topk_masks(both, 0.5, structure=jp.NM(2, 4, axis={"q": 2}), include=["q", "d"])
    assert (np.asarray(mb["q"]).reshape(8, 2, 1, 4).sum(-1) == 2).all()
    assert (np.asarray(mb["d"]).reshape(2, 4, 3).sum(1) == 2).all()


def test_block_structure():
    sc = {"w": jax.random.normal(jax.random.PRNGKey(0), (8, 12))}
    m = np.asarray(jp.topk_masks(sc, 0.5, structure=jp.Block((2, 4)), include="w")["w"])
    blocks = m.reshape(4, 2, 3, 4).transpose(0, 2, 1, 3).reshape(12, 8)
    assert all(b.all() or (~b).all() for b in blocks)
    assert sum((~b).all() for b in blocks) == 6
    with pytest.raises(jp.PruningError, match="'w'.*not divisible by 5"):
        jp.topk_masks(sc, 0.5, structure=jp.Block((2, 5)), include="w")


def test_neuron_and_channel_structure():
    p = conv_tree()
    sc = jax.tree.map(jnp.abs, p)
    m = jp.topk_masks(sc, 0.5, structure=jp.Channels(outputs="out/kernel"))
    k = np.asarray(m["conv"]["kernel"])
    assert (k.all(axis=(0, 1, 2)) | (~k).all(axis=(0, 1, 2))).all() and (~k.any(axis=(0, 1, 2))).sum() == 4
    d = np.asarray(m["dense"]["kernel"])
    assert (~d.any(axis=0)).sum() == 8
    # The removed neurons are those with the lowest mean |w|.
    mean = np.abs(np.asarray(p["dense"]["kernel"])).mean(0)
    np.testing.assert_array_equal(np.sort(np.where(~d.any(0))[0]), np.sort(np.argsort(mean)[:8]))
    assert np.asarray(m["out"]["kernel"]).all()  # the output layer keeps its classes
    g = jp.global_masks(sc, 0.5, structure=jp.Neurons(outputs="out/kernel"), normalize="l2")
    units = sum(int((~np.asarray(x).any(axis=tuple(range(x.ndim - 1)))).sum())
                for x in jax.tree.leaves(g) if x.ndim >= 2)
    assert units == jp.num_pruned(0.5, 8 + 16) and np.asarray(g["out"]["kernel"]).all()


def test_nan_scores_rejected():
    with pytest.raises(jp.PruningError, match="'w'.*NaN"):
        jp.topk_masks({"w": jnp.array([[1.0, jnp.nan]])}, 0.5, include="w")
    with pytest.raises(jp.PruningError, match="'w'.*NaN"):
        jp.global_masks({"w": jnp.array([[1.0, jnp.nan]])}, 0.5, include="w")
    # Closed over by a jitted function the scores still have a value: still an error.
    with pytest.raises(jp.PruningError, match="'w'.*NaN"):
        bad = {"w": jnp.array([[1.0, jnp.nan]])}
        jax.jit(lambda s: jp.topk_masks(bad, s, include="w"))(0.5)
    # Traced scores under jit cannot raise: NaN is pruned first, never kept.
    m = jax.jit(lambda s: jp.topk_masks(s, 0.5, include="w"))({"w": jnp.array([[1.0, jnp.nan]])})
    np.testing.assert_array_equal(m["w"], [[True, False]])


def test_bad_sparsity_and_trees():
    sc = {"w": jnp.ones((2, 2)), "b": jnp.ones(2)}
    with pytest.raises(jp.PruningError, match="sparsities leaf 'w'"):
        jp.topk_masks(sc, {"w": 1.5, "b": 0.0})
    with pytest.raises(jp.PruningError, match="sparsity"):
        jp.global_masks(sc, -0.1, include="w")
    with pytest.raises(jp.PruningError, match="sparsities"):
        jp.topk_masks(sc, {"w": 0.5})
    with pytest.raises(jp.PruningError, match="no leaf"):
        jp.global_masks(sc, 0.5, include="*zzz*")
    with pytest.raises(jp.PruningError, match="normalize"):
        jp.global_masks(sc, 0.5, normalize="l7", include="w")


# --- scores ranked in their own precision -------------------------------------------------------

def test_int_scores_ranked_exactly():
    # 16_777_217 and 16_777_216 are the same float32: ranked as float32, the larger could go.
    for dtype, hi, lo in ((jnp.int32, 16_777_217, 16_777_216), (jnp.uint32, 2**32 - 1, 2**32 - 2)):
        sc = {"w": jnp.array([[hi, lo]], dtype)}
        assert jp.topk_masks(sc, 0.5, include="w")["w"].tolist() == [[True, False]]
        assert jp.global_masks(sc, 0.5, include="w")["w"].tolist() == [[True, False]]
        (keep,) = sel.prune_lowest([jnp.array([lo, hi, lo], dtype)], 2)
        assert keep.tolist() == [False, True, False]


def test_float64_scores_ranked_exactly():
    with jax.enable_x64(True):
        sc = {"w": jnp.array([[1 + 1e-12, 1.0]], jnp.float64)}
        assert jp.topk_masks(sc, 0.5, include="w")["w"].tolist() == [[True, False]]
        assert jp.global_masks(sc, 0.5, include="w")["w"].tolist() == [[True, False]]
        big = jnp.concatenate([jnp.ones(5000, jnp.float64), jnp.array([1 + 1e-12, 1 - 1e-12])])
        (keep,) = sel.prune_lowest([big], 5001)  # radix path: 64-bit keys, six passes
        assert np.flatnonzero(np.asarray(keep)).tolist() == [5000]
        i64 = jnp.array([2**53 + 1, 2**53], jnp.int64)
        assert sel.prune_lowest([i64], 1)[0].tolist() == [True, False]
    # x64 off: a numpy float64 leaf that float32 cannot hold exactly is refused, an exact one is fine.
    with pytest.raises(jp.PruningError, match="'w'.*float64.*x64 .*could prune the larger of two close "
                                              "scores. Enable x64 or cast the scores yourself$"):
        jp.topk_masks({"w": np.array([[1 + 1e-12, 1.0]])}, 0.5, include="w")
    assert jp.topk_masks({"w": np.array([[2.0, 1.0]])}, 0.5, include="w")["w"].tolist() == [[True, False]]
    # exact 64-bit integers and unsigned integers are narrowed to 32 bits and ranked as before
    for dtype in (np.int64, np.uint64):
        got = jp.topk_masks({"w": np.array([[3, 1, 2, 0]], dtype)}, 0.5, include="w")["w"]
        assert got.tolist() == [[True, False, True, False]], dtype


def test_sparsities_tree_of_another_structure_names_both():
    sc = {"a": jnp.ones((2, 2)), "b": jnp.ones((2, 2))}
    with pytest.raises(jp.PruningError, match="^sparsities does not have the structure of scores: "
                                              "missing \\['b'\\]"):
        jp.topk_masks(sc, {"a": 0.5, "c": 0.5})


def test_mixed_dtypes_ranked_together_must_be_exact():
    sc = {"a": jnp.array([[16_777_217]], jnp.int32), "b": jnp.array([[16_777_216.0]])}
    with pytest.raises(jp.PruningError, match="'a'.*int32.*'b'.*cannot hold int32 exactly; cast the scores "
                                              "to one dtype first$"):
        jp.global_masks(sc, 0.5, include=["a", "b"])
    ok = {"a": jnp.array([[3]], jnp.int16), "b": jnp.array([[2.5]], jnp.float32)}  # int16 fits float32
    m = jp.global_masks(ok, 0.5, include=["a", "b"])
    assert m["a"].tolist() == [[True]] and m["b"].tolist() == [[False]]


# --- structured selection: outputs and min_keep -------------------------------------------------

def _units_kept(mask):
    m = np.asarray(mask)
    return int(m.reshape(-1, m.shape[-1]).any(axis=0).sum())


def test_neurons_refuse_to_guess_the_output_layer():
    sc = jax.tree.map(jnp.abs, conv_tree())
    for fn in (lambda st: jp.topk_masks(sc, 0.5, structure=st),
               lambda st: jp.global_masks(sc, 0.5, structure=st)):
        with pytest.raises(jp.PruningError, match="outputs=.*jaxprune.wiring.output_kernels"):
            fn(jp.Neurons())
        with pytest.raises(jp.PruningError, match="matches no leaf"):
            fn(jp.Neurons(outputs=["params/out/kernel"]))  # paths of another tree
        m = fn(jp.Neurons(outputs=()))  # said explicitly: no leaf is an output
        assert _units_kept(m["out"]["kernel"]) < 4
    # A leaf whose sparsity is 0 loses nothing, so it needs no answer.
    sp = jax.tree.map(lambda _: 0.0, sc)
    jp.topk_masks(sc, sp, structure=jp.Neurons())


def test_min_keep_never_empties_a_leaf():
    sc = jax.tree.map(jnp.abs, conv_tree())
    m = jp.topk_masks(sc, 1.0, structure=jp.Neurons(outputs=()))
    assert [_units_kept(m[k]["kernel"]) for k in ("conv", "dense", "out")] == [1, 1, 1]
    m3 = jp.topk_masks(sc, 0.9, structure=jp.Neurons(outputs=(), min_keep=3))
    assert [_units_kept(m3[k]["kernel"]) for k in ("conv", "dense", "out")] == [3, 3, 3]
    m0 = jp.topk_masks(sc, 1.0, structure=jp.Neurons(outputs=(), min_keep=0))
    assert not np.asarray(m0["dense"]["kernel"]).any()
    with pytest.raises(jp.PruningError, match="min_keep"):
        jp.topk_masks(sc, 0.5, structure=jp.Neurons(outputs=(), min_keep=-1))


@pytest.mark.parametrize("traced", [False, True])
def test_global_min_keep_exact_count(traced):
    # One layer's scores are all far below the others: unprotected, global selection empties it.
    k = jax.random.split(jax.random.PRNGKey(5), 2)
    sc = {"small": {"kernel": 1e-3 * jax.random.uniform(k[0], (16, 64))},
          "big": {"kernel": 1.0 + jax.random.uniform(k[1], (16, 64))}}
    st = jp.Neurons(outputs=())
    run = (lambda s, **kw: jax.jit(lambda v: jp.global_masks(sc, v, structure=st, **kw))(s)) \
        if traced else (lambda s, **kw: jp.global_masks(sc, s, structure=st, **kw))
    g = run(0.5, normalize=None)
    # 64 units go: 63 of 'small' (its best one stays), then the lowest one of 'big'.
    assert _units_kept(g["small"]["kernel"]) == 1 and _units_kept(g["big"]["kernel"]) == 63
    pruned = 128 - sum(_units_kept(x) for x in jax.tree.leaves(g))
    assert pruned == min(jp.num_pruned(0.5, 128), 128 - 2)
    full = run(1.0, normalize=None)
    assert [_units_kept(x) for x in jax.tree.leaves(full)] == [1, 1]  # min(round(N), N - 2) go
    # The default normaliser (each leaf's mean unit score) compares units with their own layer.
    fair = run(0.5)
    assert abs(_units_kept(fair["small"]["kernel"]) - _units_kept(fair["big"]["kernel"])) <= 16


def test_duplicate_paths_are_an_error_naming_both():
    sc = {"a": {"b": jnp.ones((2, 2))}, "a/b": jnp.zeros((2, 2))}
    for fn in (lambda: jp.global_masks(sc, 0.5, include=lambda p, x: True),
               lambda: jp.topk_masks(sc, {"a": {"b": 0.5}, "a/b": 0.5})):
        with pytest.raises(jp.PruningError, match="'a/b'.*\\['a'\\]\\['b'\\].*\\['a/b'\\]"):
            fn()


def test_one_element_and_empty_leaves_are_ranked_like_any_other():
    """A 1-element leaf is pruned when its count says so (round(0.9 * 1) = 1) and kept when not; two
    1-element leaves with different targets (stacked into one selection) each get their own count;
    an empty leaf gives an empty mask."""
    one = jnp.array([3.0])
    m = jp.topk_masks({"a": one, "b": jnp.zeros((0,)), "c": jnp.array([1.0, 2.0]), "d": jnp.array([2.0])},
                      {"a": 0.9, "b": 0.5, "c": 0.5, "d": 0.4})
    assert m["a"].tolist() == [False] and m["d"].tolist() == [True]
    assert m["b"].shape == (0,) and m["b"].dtype == jnp.bool_ and m["c"].tolist() == [False, True]


def test_float64_nan_scores_are_reported_as_nan_not_as_lossy():
    """A float64 numpy leaf with NaN (x64 off) is NaN scores, not "values 32 bits cannot hold"."""
    with pytest.raises(jp.PruningError, match="scores leaf 'a' contains NaN"):
        jp.topk_masks({"a": np.array([1.0, np.nan])}, {"a": 0.5})


def test_a_sparsities_leaf_must_be_a_scalar():
    with pytest.raises(jp.PruningError, match=r"sparsities leaf 'a' must be a scalar, got shape \(2,\)"):
        jp.topk_masks({"a": jnp.ones(4)}, {"a": jnp.array([0.5, 0.5])})


def test_output_leaves_stay_dense_bool_and_do_not_stop_the_others():
    """An ``outputs=`` leaf first in tree order gets a bool all-True mask, and the leaves after it
    still lose their units (layerwise) or compete (global: 2 of the 4 competing units go)."""
    sc = {"a": {"kernel": jnp.arange(8.0).reshape(2, 4)}, "b": {"kernel": jnp.arange(8.0).reshape(2, 4) + 1}}
    st = jp.Neurons(outputs=["a/kernel"])
    for m in (jp.topk_masks(sc, 0.5, structure=st), jp.global_masks(sc, 0.5, structure=st)):
        assert m["a"]["kernel"].dtype == jnp.bool_ and bool(np.asarray(m["a"]["kernel"]).all())
        assert _units_kept(m["b"]["kernel"]) == 2


def test_normalised_global_selection_refuses_infinite_scores_and_never_prunes_them_traced():
    """inf / inf would be NaN, ranked lowest: the most important units would go first."""
    sc = {"a": {"kernel": jnp.array([[1.0, jnp.inf, 2.0]])}, "b": {"kernel": jnp.array([[3.0, 1.0, 2.0]])}}
    st = jp.Neurons(outputs=())
    with pytest.raises(jp.PruningError, match="scores leaf 'a/kernel' has infinite unit scores, so "
                                              "normalize='mean' cannot rescale it"):
        jp.global_masks(sc, 0.5, structure=st)
    m = jax.jit(lambda s: jp.global_masks(s, 0.5, structure=st))(sc)
    assert bool(m["a"]["kernel"][0, 1])  # the inf unit is kept
    plain = jp.global_masks(sc, 0.5, structure=st, normalize=None)  # unnormalised, inf ranks highest
    assert plain["a"]["kernel"][0].tolist() == [False, True, False]  # the tie at 2 goes in leaf order
    assert plain["b"]["kernel"][0].tolist() == [True, False, True]


def test_a_scalar_sparsity_prunes_only_the_included_leaves():
    sc = {"dense": {"kernel": jnp.arange(8.0).reshape(2, 4), "bias": jnp.arange(4.0)}}
    m = jp.topk_masks(sc, 0.5)  # default include: kernels
    assert _pruned(m["dense"]["kernel"]) == 4 and _pruned(m["dense"]["bias"]) == 0
    m = jp.topk_masks(sc, 0.5, include="*bias")
    assert _pruned(m["dense"]["kernel"]) == 0 and _pruned(m["dense"]["bias"]) == 2


class PerPathAxis:
    """A user's own structure: each leaf's units lie along the axis its path is mapped to."""

    def __init__(self, axes):
        self.axes = axes

    def check(self, path, shape):
        if path not in self.axes:
            raise jp.PruningError(f"no axis for '{path}'")

    def units(self, path, scores):
        ax = self.axes[path]
        return jnp.mean(scores, axis=tuple(i for i in range(scores.ndim) if i != ax))

    def expand(self, path, shape, keep):
        ax = self.axes[path]
        return jnp.broadcast_to(keep.reshape([shape[i] if i == ax else 1 for i in range(len(shape))]), shape)


def test_a_users_structure_gets_each_leafs_own_path():
    sc = {"a": jnp.arange(8.0).reshape(2, 4), "b": jnp.arange(8.0).reshape(4, 2)}
    m = jp.topk_masks(sc, {"a": 0.5, "b": 0.5}, structure=PerPathAxis({"a": 1, "b": 0}))
    assert m["a"].tolist() == [[False, False, True, True]] * 2  # columns of 'a'
    assert m["b"].tolist() == [[False, False], [False, False], [True, True], [True, True]]  # rows of 'b'
