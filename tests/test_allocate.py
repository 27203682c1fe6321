import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, strategies as st

import jaxprune as jp

from helpers import conv_tree, linen_params

shapes_st = st.lists(
    st.lists(st.integers(1, 12), min_size=2, max_size=4).map(tuple), min_size=1, max_size=5)


def _tree(shapes):
    return {f"l{i}": np.zeros(s, np.float32) for i, s in enumerate(shapes)}


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
    sp = jp.erk_sparsity(p, 0.9)
    ratio = (1 - sp["a"]) / (1 - sp["b"])
    want = (150 / 5000) / (600 / 80000)
    assert abs(ratio - want) / want < 1e-3


def test_erk_densifies_small_layers_and_re_solves():
    p = {"tiny": np.zeros((2, 2)), "big": np.zeros((1000, 1000))}
    sp = jp.erk_sparsity(p, 0.5)
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
    with pytest.raises(jp.PruningError, match="selects no leaf"):
        fn(p, 0.5, include="*nothing*")


def test_impossible_override_budget():
    p = {"a": np.zeros((10, 10)), "b": np.zeros((10, 10))}
    with pytest.raises(jp.PruningError, match="budget cannot be met"):
        jp.erk_sparsity(p, 0.9, overrides={"a": 0.0})
