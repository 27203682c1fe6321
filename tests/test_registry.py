"""Registry-wide checks: every scorer x structure goes through the same contract tests."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxprune as jp

from helpers import linen_params, nnx_state

# One instance per registered structure; a new registration must add its example here.
STRUCTURE_EXAMPLES = {
    "unstructured": jp.Unstructured(),
    "nm": jp.NM(1, 2),  # groups along the reduction axis (0 of a Dense kernel): 6 and 12 inputs
    "block": jp.Block((2, 2)),
    "neurons": jp.Neurons(outputs=()),
    "channels": jp.Channels(outputs=()),
}
SPARSITIES = (0.0, 0.5, 0.9, 0.99, 1.0)


def test_every_structure_has_an_example():
    assert set(jp.STRUCTURES) == set(STRUCTURE_EXAMPLES)


def _scores(name, params):
    grads = jax.tree.map(lambda x: jnp.cos(3.0 * x), params)
    return jp.compute_scores(name, params, grads=grads, key=jax.random.PRNGKey(1))


def _expected_pruned(structure, x, s):
    if s == 0.0:
        return 0
    if isinstance(structure, jp.NM):
        return x.size * (structure.m - structure.n) // structure.m
    units = structure.units("x", jnp.asarray(x)).size
    return jp.num_pruned(s, units, min_keep=getattr(structure, "min_keep", 0)) * (x.size // units)


@pytest.mark.parametrize("tree_fn", [linen_params, nnx_state], ids=["linen", "nnx"])
@pytest.mark.parametrize("scorer", sorted(jp.SCORERS))
@pytest.mark.parametrize("sname", sorted(STRUCTURE_EXAMPLES))
def test_contract(tree_fn, scorer, sname):
    structure = STRUCTURE_EXAMPLES[sname]
    params = tree_fn()
    scores = _scores(scorer, params)
    jax.tree.map(lambda a, b: None, params, scores)  # same structure or raises
    assert jax.tree.structure(scores) == jax.tree.structure(params)
    # The usual pattern: the target is traced, the tree of per-leaf sparsities is built inside jit
    # (unselected leaves get a concrete 0.0 and are left alone).
    f = jax.jit(lambda sc, s: jp.topk_masks(sc, jp.uniform_sparsity(params, s), structure=structure))
    for s in SPARSITIES:
        sp = jp.uniform_sparsity(params, float(np.float32(s)))
        eager = jp.topk_masks(scores, sp, structure=structure)
        assert jax.tree.structure(eager) == jax.tree.structure(params)
        for (path, x), m in zip(zip(jp.leaf_paths(params), jax.tree.leaves(params)),
                                jax.tree.leaves(eager)):
            assert m.dtype == jnp.bool_ and m.shape == x.shape, path
            want = _expected_pruned(structure, x, s) if x.ndim >= 2 else 0
            assert int(np.sum(~np.asarray(m))) == want, (path, s)
        traced = f(scores, jnp.float32(s))
        jax.tree.map(np.testing.assert_array_equal, eager, traced)
    assert f._cache_size() == 1, "changing the sparsity recompiled"
    if not isinstance(structure, jp.NM):
        g = jax.jit(lambda sc, s: jp.global_masks(sc, s, structure=structure))
        for s in SPARSITIES:
            eager = jp.global_masks(scores, float(np.float32(s)), structure=structure)
            jax.tree.map(np.testing.assert_array_equal, eager, g(scores, jnp.float32(s)))
        assert g._cache_size() == 1


def _assert_trees_equal(a, b):
    jax.tree.map(np.testing.assert_array_equal, a, b)


@pytest.mark.parametrize("sname", sorted(STRUCTURE_EXAMPLES))
def test_mask_functions_under_jit_and_vmap(sname):
    """Arguments or closed-over inputs, jit or jit(vmap) over the sparsity: the eager answer."""
    structure = STRUCTURE_EXAMPLES[sname]
    params = linen_params()
    scores = _scores("magnitude", params)
    sps = (0.3, 0.9)
    layer = lambda sc, s: jp.topk_masks(sc, jp.uniform_sparsity(params, s), structure=structure)  # noqa: E731
    fns = [layer]
    if not isinstance(structure, jp.NM):
        fns.append(lambda sc, s: jp.global_masks(sc, s, structure=structure))
    for fn in fns:
        eager = [fn(scores, float(np.float32(s))) for s in sps]
        with_args = jax.jit(fn)
        closed = jax.jit(lambda v, fn=fn: fn(scores, v))  # scores closed over, concrete in the trace
        for s, want in zip(sps, eager):
            _assert_trees_equal(want, with_args(scores, jnp.float32(s)))
            _assert_trees_equal(want, closed(jnp.float32(s)))
        stacked = jax.jit(jax.vmap(lambda v: fn(scores, v)))(jnp.asarray(sps, jnp.float32))
        for i, want in enumerate(eager):
            _assert_trees_equal(want, jax.tree.map(lambda x: x[i], stacked))


@pytest.mark.parametrize("scorer", sorted(jp.SCORERS))
def test_scorer_is_pure_and_jittable(scorer):
    params = linen_params()
    a = _scores(scorer, params)
    b = jax.jit(lambda p: _scores(scorer, p))(params)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6), a, b)
    assert all(jnp.issubdtype(x.dtype, jnp.floating) for x in jax.tree.leaves(a))


# ------------------------------------------------------------------ config strings through the registry
@pytest.mark.parametrize("text,expected", [
    ("unstructured", jp.Unstructured()), ("nm:2:4", jp.NM(2, 4)), ("block:2x8", jp.Block((2, 8))),
    ("neurons", jp.Neurons(outputs=("head",))), ("channels", jp.Channels(outputs=("head",))),
])
def test_builtin_config_spellings_resolve_through_the_registry(text, expected):
    from jaxprune.recipes import parse_structure
    assert parse_structure(text, outputs=("head",)) == expected
    assert text.partition(":")[0] in jp.STRUCTURES


@pytest.mark.parametrize("text", ["nm", "nm:2", "nm:2:4:8", "block:2x", "neurons:3", "unstructured:", "fancy"])
def test_bad_config_spellings_name_the_known_ones(text):
    from jaxprune.errors import ConfigError
    from jaxprune.recipes import parse_structure
    with pytest.raises(ConfigError, match=r"structure=.*nm:N:M.*unstructured"):
        parse_structure(text)


def test_a_registered_structure_is_reachable_from_a_config_string():
    from jaxprune.errors import ConfigError
    from jaxprune.recipes import parse_structure, select_masks
    from jaxprune.structures import STRUCTURE_ARGS

    def rows(axis: int = 0, outputs=None):
        return jp.Neurons(axis=axis, outputs=outputs)

    jp.register_structure("rows", rows, parse_arg=lambda a: {"axis": int(a)} if a else {},
                          spelling="rows[:AXIS]")
    try:
        assert parse_structure("rows", outputs=()) == jp.Neurons(axis=0, outputs=())
        structure = parse_structure("rows:1", outputs=["b"])
        assert structure == jp.Neurons(axis=1, outputs=["b"])
        p = {"w": jnp.arange(1.0, 13.0).reshape(4, 3)}
        masks = select_masks(p, p, 0.5, structure=parse_structure("rows", outputs=()), include="w")
        # Rows 0 and 1 have the lowest mean magnitude: pruned as whole rows.
        assert masks["w"].all(axis=1).tolist() == [False, False, True, True]
        assert not masks["w"][:2].any()
        with pytest.raises(ConfigError, match=r"rows\[:AXIS\]"):
            parse_structure("rows:x")
    finally:
        jp.STRUCTURES.pop("rows")
        STRUCTURE_ARGS.pop("rows")
    with pytest.raises(ConfigError):
        parse_structure("rows")
