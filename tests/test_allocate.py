import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, strategies as st

import jaxprune as jp

from jaxprune.paths import matrices

from helpers import conv_tree, linen_params

shapes_st = st.lists(
    st.lists(st.integers(1, 12), min_size=2, max_size=4).map(tuple), min_size=1, max_size=5)


def _tree(shapes):
    return {f"l{i}": {"kernel": np.zeros(s, np.float32)} for i, s in enumerate(shapes)}


def _zeros(params, sp):
    return sum(jp.num_pruned(s, int(np.size(x))) for x, s in
               zip(jax.tree.leaves(params), jax.tree.leaves(sp)))


@given(shapes_st, st.floats(0, 1))
def test_erk_er_total_budget_is_exact(shapes, target):
    p = _tree(shapes)
    n = sum(math.prod(s) for s in shapes)
    for fn in (jp.erk_sparsity, jp.er_sparsity):
        sp = fn(p, target)
        assert _zeros(p, sp) == jp.num_pruned(target, n)
        assert all(0.0 <= s <= 1.0 for s in jax.tree.leaves(sp))
        jp.check_budget(p, sp, target)


def test_erk_densities_follow_formula():
    # Two layers, neither saturating: density ratio equals the ratio of (sum dims / prod dims).
    p = {"a": np.zeros((100, 50)), "b": np.zeros((400, 200))}
    sp = jp.erk_sparsity(p, 0.9, include=["a", "b"])
    ratio = (1 - sp["a"]) / (1 - sp["b"])
    want = (150 / 5000) / (600 / 80000)
    assert abs(ratio - want) / want < 1e-3


def test_erk_densifies_small_layers_and_re_solves():
    p = {"tiny": np.zeros((2, 2)), "big": np.zeros((1000, 1000))}
    sp = jp.erk_sparsity(p, 0.5, include=matrices)
    assert sp["tiny"] == 0.0  # would exceed density 1 -> dense
    assert _zeros(p, sp) == jp.num_pruned(0.5, 1_000_004)


def test_er_differs_from_erk_on_convs():
    p = conv_tree()
    assert jp.er_sparsity(p, 0.8)["conv"]["kernel"] != jp.erk_sparsity(p, 0.8)["conv"]["kernel"]


def test_unselected_leaves_are_zero_not_none():
    sp = jp.uniform_sparsity(linen_params(), 0.7)
    assert sp["params"]["Dense_0"]["bias"] == 0.0
    assert sp["params"]["Dense_0"]["kernel"] == 0.7


def test_overrides_fix_leaves_and_budget_stays_exact():
    p = linen_params()
    sp = jp.erk_sparsity(p, 0.6, overrides={"*/Dense_0/*": 0.0})
    assert sp["params"]["Dense_0"]["kernel"] == 0.0 and sp["params"]["Dense_0"]["bias"] == 0.0
    jp.check_budget(p, sp, 0.6)
    sp = jp.uniform_sparsity(p, 0.6, overrides={"*Dense_2/kernel": 0.1})
    assert sp["params"]["Dense_2"]["kernel"] == 0.1


def test_traced_target_matches_concrete_and_does_not_recompile():
    p = conv_tree()
    f = jax.jit(lambda s: jp.erk_sparsity(p, s))
    for s in (0.3, 0.9):
        traced = f(jnp.float32(s))
        concrete = jp.erk_sparsity(p, float(np.float32(s)))
        assert _zeros(p, traced) == _zeros(p, concrete)
    assert f._cache_size() == 1


def test_uniform_budget_is_within_rounding():
    p = linen_params()
    jp.check_budget(p, jp.uniform_sparsity(p, 0.33), 0.33, exact=False)
    with pytest.raises(jp.PruningError, match="budget"):
        jp.check_budget(p, jp.uniform_sparsity(p, 0.2), 0.5)


@pytest.mark.parametrize("fn", [jp.uniform_sparsity, jp.erk_sparsity, jp.er_sparsity])
def test_bad_inputs(fn):
    p = linen_params()
    with pytest.raises(jp.PruningError, match="sparsity"):
        fn(p, 1.5)
    with pytest.raises(jp.PruningError, match="sparsity"):
        fn(p, float("nan"))
    with pytest.raises(jp.PruningError, match="matches no leaf"):
        fn(p, 0.5, overrides={"*/Conv_9/*": 0.0})
    with pytest.raises(jp.PruningError, match=r"include='\*nothing\*' matches no leaf"):
        fn(p, 0.5, include="*nothing*")
    with pytest.raises(jp.PruningError, match="default: leaves named 'kernel'"):
        fn({"w": np.zeros((4, 4))}, 0.5)


def test_impossible_override_budget():
    p = {"a": np.zeros((10, 10)), "b": np.zeros((10, 10))}
    with pytest.raises(jp.PruningError, match="budget cannot be met"):
        jp.erk_sparsity(p, 0.9, overrides={"a": 0.0}, include=matrices)


@pytest.mark.parametrize("fn", [jp.uniform_sparsity, jp.erk_sparsity, jp.er_sparsity])
def test_zero_size_leaf_gets_zero(fn):
    # A (0, 8) kernel made ER/ERK divide by zero (its sum/prod of dims); it has nothing to prune.
    p = {"empty": {"kernel": np.zeros((0, 8))}, "d": {"kernel": np.zeros((16, 8))}}
    sp = fn(p, 0.5)
    assert sp["empty"]["kernel"] == 0.0 and sp["d"]["kernel"] == 0.5
    jp.check_budget(p, sp, 0.5)
    assert jp.achieved_sparsity(p, sp) == 0.5
    traced = jax.jit(lambda s: fn(p, s))(jnp.float32(0.5))
    assert float(traced["empty"]["kernel"]) == 0.0 and float(traced["d"]["kernel"]) == 0.5
    only = {"empty": {"kernel": np.zeros((0, 8))}}
    assert fn(only, 0.5) == {"empty": {"kernel": 0.0}}
    assert jp.achieved_sparsity(only, fn(only, 0.5)) == 0.0


def test_budget_checks_refuse_a_sparsity_tree_of_another_structure():
    p = {"d": {"kernel": np.zeros((4, 4))}}
    with pytest.raises(jp.PruningError,
                       match=r"sparsities.*missing \['d/kernel'\].*unexpected \['zzz'\]"):
        jp.check_budget(p, {"zzz": 0.5}, 0.5)
    with pytest.raises(jp.PruningError, match="sparsities"):
        jp.achieved_sparsity(p, {"zzz": 0.5})
    with pytest.raises(jp.PruningError, match="sparsities leaf 'd/kernel' must be a scalar"):
        jp.achieved_sparsity(p, {"d": {"kernel": np.zeros(2)}})


def _two_layers():
    return {"d0": {"kernel": np.zeros((64, 32)), "bias": np.zeros(32)},
            "d1": {"kernel": np.zeros((32, 4)), "bias": np.zeros(4)}}


@pytest.mark.parametrize("fn", [jp.erk_sparsity, jp.er_sparsity])
def test_traced_impossible_budget_is_clipped_the_same_every_time(fn):
    p = _two_layers()
    n0, n = 64 * 32, 64 * 32 + 32 * 4
    # Eagerly: an error naming the budget (fixing d0 at 1.0 alone removes 94 % > 1 %).
    with pytest.raises(jp.PruningError, match="budget cannot be met"):
        fn(p, 0.01, overrides={"d0/kernel": 1.0})
    with pytest.raises(jp.PruningError, match="budget cannot be met"):
        fn(p, 0.99, overrides={"d0": 0.0})
    f = jax.jit(lambda s: fn(p, s, overrides={"d0/kernel": 1.0}))
    for s in (0.01, 0.5, 0.01):  # too low, too low, again: the same clipped answer each time
        sp = f(jnp.float32(s))
        assert float(sp["d0"]["kernel"]) == 1.0 and float(sp["d1"]["kernel"]) == 0.0
        assert float(jax.jit(lambda t: jp.achieved_sparsity(p, t))(sp)) == pytest.approx(n0 / n)
    assert float(f(jnp.float32(0.99))["d1"]["kernel"]) == pytest.approx(
        (jp.num_pruned(np.float32(0.99), n) - n0) / 128)  # feasible: spread exactly as eagerly
    g = jax.jit(lambda s: fn(p, s, overrides={"d0": 0.0}))
    sp = g(jnp.float32(0.99))  # needs more zeros than d1 holds: d1 is pruned entirely, d0 kept
    assert float(sp["d0"]["kernel"]) == 0.0 and float(sp["d1"]["kernel"]) == 1.0
    assert f._cache_size() == 1


def test_override_patterns_cover_selected_leaves_only_and_errors_name_them():
    p = _two_layers()
    sp = jp.uniform_sparsity(p, 0.5, overrides={"d1": 0.25})  # a layer: its selected kernel
    assert sp == {"d0": {"bias": 0.0, "kernel": 0.5}, "d1": {"bias": 0.0, "kernel": 0.25}}
    sp = jp.uniform_sparsity(p, 0.5, overrides={"*": 0.1, "d1/kernel": 0.3})  # later patterns win
    assert sp["d0"]["kernel"] == 0.1 and sp["d1"]["kernel"] == 0.3 and sp["d1"]["bias"] == 0.0
    for fn in (jp.uniform_sparsity, jp.erk_sparsity):
        with pytest.raises(jp.PruningError, match=r"pattern '\*/bias' covers only.*include"):
            fn(p, 0.5, overrides={"*/bias": 0.5})
        with pytest.raises(jp.PruningError, match="pattern 'd9' matches no leaf"):
            fn(p, 0.5, overrides={"d9": 0.5})
        with pytest.raises(jp.PruningError, match=r"overrides\['d1'\].*sparsity"):
            fn(p, 0.5, overrides={"d1": 2.0})
        with pytest.raises(jp.PruningError, match="key 3 must be a glob"):
            fn(p, 0.5, overrides={3: 0.5})
        with pytest.raises(jp.PruningError, match="overrides: expected a mapping"):
            fn(p, 0.5, overrides=[("d1", 0.5)])
    # Naming the biases in include makes them overridable.
    sp = jp.erk_sparsity(p, 0.5, include=[None, "*/bias"], overrides={"*/bias": 0.0})
    assert sp["d0"]["bias"] == 0.0
    jp.check_budget(p, sp, 0.5, include=[None, "*/bias"])


def test_duplicate_paths_rejected_by_allocation():
    p = {"a": {"kernel": np.zeros((4, 4))}, "a/kernel": np.zeros((4, 4))}
    with pytest.raises(jp.PruningError, match="same path 'a/kernel'"):
        jp.erk_sparsity(p, 0.5)
    with pytest.raises(jp.PruningError, match="same path 'a/kernel'"):
        jp.global_masks(p, 0.5)


def test_check_budget_refuses_traced_inputs_naming_which():
    p = {"a": {"kernel": np.zeros((10, 10))}, "b": {"kernel": np.zeros((30, 10))}}
    s = jp.erk_sparsity(p, 0.8)
    with pytest.raises(jp.PruningError, match="check_budget: target is traced"):
        jax.jit(lambda t: jp.check_budget(p, s, t))(jnp.float32(0.8))
    with pytest.raises(jp.PruningError, match="check_budget: sparsities are traced"):
        jax.jit(lambda sp: jp.check_budget(p, sp, 0.8))(s)


@pytest.mark.parametrize("rule", ["uniform_sparsity", "er_sparsity", "erk_sparsity"])
def test_exclude_leaves_a_leaf_dense(rule):
    p = {"a": {"kernel": np.zeros((8, 8))}, "b": {"kernel": np.zeros((16, 8))}}
    s = getattr(jp, rule)(p, 0.5, exclude="b/kernel")
    assert s["b"]["kernel"] == 0.0 and s["a"]["kernel"] == 0.5
