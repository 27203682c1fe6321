"""prune_structured on the user's own models: the shrunk model computes what the masked one does.

The reference is the unshrunk model with every member slice of the removed units zeroed
(``Graph.masked``); where a group runs through a normalisation over the pruned axis (LayerNorm,
GroupNorm within groups), the reference normalises over the kept units only (the norm is called with
``mask=`` on the kept channels), since removing width changes what the statistics see.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxprune.counts import num_pruned
from jaxprune.errors import PruningError
from jaxprune.paths import flatten_with_paths
from jaxprune.structure import apply_plan, kept_shapes, prune_structured, shrink_like, structured_plan
from tests.user_models import user_cnn, user_nnx_mlp, user_nnx_transformer

KEY = jax.random.PRNGKey(0)


def _close(a, b):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=1e-5)


def _count(tree):
    return sum(int(np.size(x)) for _, x in flatten_with_paths(tree)[0])


def _check_counts(plan, new_tree):
    shapes = kept_shapes(plan)
    got = {p: tuple(np.shape(x)) for p, x in flatten_with_paths(new_tree)[0] if p in shapes}
    assert got == shapes
    assert _count(new_tree) == sum(int(np.prod(s)) for s in shapes.values()) + sum(
        int(np.size(x)) for p, x in flatten_with_paths(new_tree)[0] if p not in shapes)


def _check_layerwise(plan, s, skipped=()):
    pruned = 0
    for g in plan.graph.groups:
        if not g.prunable or g.id in skipped:
            assert g.id not in plan.keep or plan.keep[g.id].all()
            continue
        removed = g.size - int(plan.keep[g.id].sum())
        assert removed == min(round(s * g.size), g.size - 1), (g.id, g.kind, g.size, removed)
        pruned += removed
    assert pruned > 0


# ----------------------------------------------------------------------------------------------- linen

class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(24, name="fc1")(x))
        x = nn.relu(nn.Dense(40, name="fc2")(x))
        return nn.Dense(5, name="head")(x)


def _mlp():
    x = jax.random.normal(KEY, (6, 7))
    model = MLP()
    return model, model.init(KEY, x), x


def test_linen_mlp_equals_masked_and_counts():
    model, v, x = _mlp()
    plan = structured_plan(model, v, x, 0.3)
    new_model, new_v = apply_plan(plan, model, v, x)
    _close(new_model.apply(new_v, x), model.apply(plan.graph.masked(v, plan.keep), x))
    _check_counts(plan, new_v)
    _check_layerwise(plan, 0.3)
    assert new_v["params"]["fc1"]["kernel"].shape == (7, 24 - round(0.3 * 24))
    assert new_v["params"]["head"]["kernel"].shape[1] == 5  # output classes untouched
    tx = optax.sgd(0.1, momentum=0.9)
    opt = shrink_like(plan, tx.init(v["params"]), v["params"])  # built on variables['params']
    assert jax.tree.map(jnp.shape, opt[0].trace) == jax.tree.map(jnp.shape, new_v["params"])
    with pytest.raises(PruningError, match="leaf paths"):
        shrink_like(plan, tx.init({"other": v["params"]}), {"other": v["params"]})


def test_linen_round_to_ignore_and_global():
    model, v, x = _mlp()
    _, small = prune_structured(model, v, x, 0.3, round_to=8)
    assert small["params"]["fc1"]["kernel"].shape[1] % 8 == 0
    assert small["params"]["fc2"]["kernel"].shape[1] % 8 == 0
    _, kept = prune_structured(model, v, x, 0.5, ignore=("fc1",))
    assert kept["params"]["fc1"]["kernel"].shape == (7, 24)
    assert kept["params"]["fc2"]["kernel"].shape == (24, 20)  # its input follows fc1, kept
    plan = structured_plan(model, v, x, 0.5, global_=True)
    removed = sum(int((~k).sum()) for k in plan.keep.values())
    assert removed == num_pruned(0.5, 24 + 40)
    with pytest.raises(PruningError, match="matches no layer"):
        prune_structured(model, v, x, 0.5, ignore=("fc9",))


def test_linen_cnn_with_batchnorm_and_residual():
    model, v, x = user_cnn(KEY)
    x = jax.random.normal(KEY, x.shape)
    plan = structured_plan(model, v, x, 0.5)
    new_model, new_v = apply_plan(plan, model, v, x)
    _close(new_model.apply(new_v, x), model.apply(plan.graph.masked(v, plan.keep), x))
    _check_counts(plan, new_v)
    _check_layerwise(plan, 0.5)
    assert new_v["params"]["stem"]["kernel"].shape[-1] == 4  # the residual stream, one group
    out, upd = new_model.apply(new_v, x, train=True, mutable=["batch_stats"])
    assert upd["batch_stats"]["block"]["bn_b"]["mean"].shape == (4,) and out.shape == (4, 10)


def test_linen_taylor_and_activation_criteria():
    model, v, x = _mlp()
    y = jnp.arange(x.shape[0]) % 5

    def loss(variables, batch):
        return optax.softmax_cross_entropy_with_integer_labels(model.apply(variables, batch[0]),
                                                               batch[1]).mean()

    taylor = structured_plan(model, v, x, 0.5, importance="taylor", loss_fn=loss, batch=(x, y))
    l2 = structured_plan(model, v, x, 0.5)
    assert any(not np.array_equal(taylor.keep[i], l2.keep[i]) for i in l2.keep)
    apoz = structured_plan(model, v, x, 0.5, importance="apoz")
    new_model, new_v = apply_plan(apoz, model, v, x)
    _close(new_model.apply(new_v, x), model.apply(apoz.graph.masked(v, apoz.keep), x))
    random = structured_plan(model, v, x, 0.5, importance="random", key=KEY)
    _check_layerwise(random, 0.5)


class GN(nn.Module):
    """conv -> GroupNorm -> relu -> conv; ``mask`` restricts the norm's statistics (the reference)."""

    mask: object = None

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(16, (3, 3), name="conv")(x)
        x = nn.relu(nn.GroupNorm(num_groups=4, name="gn")(x, mask=self.mask))
        return nn.Conv(3, (1, 1), name="out")(x)


def test_linen_groupnorm_groups_and_channels_within():
    model, x = GN(), jax.random.normal(KEY, (2, 5, 5, 2))
    v = model.init(KEY, x)
    plan = structured_plan(model, v, x, 0.5)
    kinds = {plan.graph.groups[i].kind: int(k.sum()) for i, k in plan.keep.items()}
    assert kinds == {"groups": 2, "features": 2}  # 2 of 4 groups, 2 of 4 channels in each
    new_model, new_v = apply_plan(plan, model, v, x)
    # Removed groups need no mask (all their channels are zero); within the kept ones, the statistics
    # must see the kept channels only.
    within = next(g for g in plan.graph.groups_of("params/gn/scale", 0) if g.kind == "features")
    m = next(m for m in within.members if m.path == "params/gn/scale")
    on = np.isin(np.arange(16), plan.graph.indices(m, plan.keep[within.id]))
    assert on.sum() == 8 and within.reduced_by
    ref = GN(mask=jnp.broadcast_to(jnp.asarray(on), (2, 5, 5, 16)))
    _close(new_model.apply(new_v, x), ref.apply(plan.graph.masked(v, plan.keep), x))
    _check_counts(plan, new_v)


class Heads(nn.Module):
    """A user module that splits its projection by a head count of its own (``heads``): removing a
    head without changing that attribute would regroup the units, so it must be refused."""

    heads: int = 4

    @nn.compact
    def __call__(self, x):
        h = nn.Dense(16, name="proj")(x).reshape(x.shape[0], self.heads, -1)
        h = jnp.tanh(h * jnp.arange(1.0, 5.0)[None, :, None])  # heads differ, so they are units
        return nn.Dense(2, name="head")(h.reshape(x.shape[0], -1))


def test_a_reshape_by_an_unseen_attribute_is_refused():
    model, x = Heads(), jax.random.normal(KEY, (3, 5))
    v = model.init(KEY, x)
    plan = structured_plan(model, v, x, 0.25)
    assert any(plan.graph.groups[i].size == 4 and not k.all() for i, k in plan.keep.items())
    with pytest.raises(PruningError, match="does not lay out the kept units|does not run"):
        apply_plan(plan, model, v, x)


# ------------------------------------------------------------------------------------------------- nnx

def test_nnx_mlp_equals_masked_and_optax_state_shrinks():
    model, x = user_nnx_mlp()
    plan = structured_plan(model, None, x, 0.5)
    small, state = apply_plan(plan, model, None, x)
    graphdef, full = nnx.split(model)
    ref = nnx.merge(graphdef, plan.graph.masked(full, plan.keep))
    _close(small(x), ref(x))
    _check_counts(plan, state)
    _check_layerwise(plan, 0.5)
    assert model.inp.out_features == 32 and small.inp.out_features == 16

    params = nnx.state(model, nnx.Param)
    tx = optax.adam(1e-2)
    opt = shrink_like(plan, tx.init(params), params)
    new_params = nnx.state(small, nnx.Param)
    assert jax.tree.map(jnp.shape, opt[0].mu) == jax.tree.map(jnp.shape, new_params)
    grads = jax.tree.map(jnp.ones_like, new_params)
    updates, _ = tx.update(grads, opt, new_params)
    assert jax.tree.map(jnp.shape, updates) == jax.tree.map(jnp.shape, new_params)


class _MaskedLN(nnx.Module):
    """A LayerNorm whose statistics see only the kept units (the reference for a pruned width)."""

    def __init__(self, ln, on):
        self.ln, self.on = ln, nnx.data(jnp.asarray(on))

    def __call__(self, x):
        return self.ln(x, mask=jnp.broadcast_to(self.on, x.shape))


def test_nnx_transformer_heads_residual_and_mlp():
    model, tokens = user_nnx_transformer()
    plan = structured_plan(model, None, tokens, 0.25)
    kept = {plan.graph.groups[i].kind: int(k.sum()) for i, k in plan.keep.items() if not k.all()}
    assert kept["heads"] == 3 and kept["residual"] == 24
    small, state = apply_plan(plan, model, None, tokens)
    assert (small.attn.num_heads, small.attn.in_features, small.fc.out_features) == (3, 24, 48)
    assert small.attn.head_dim == 8  # head_dim kept: the 1/sqrt(head_dim) scale stays
    graphdef, full = nnx.split(model)
    ref = nnx.merge(graphdef, plan.graph.masked(full, plan.keep))
    residual = next(g for g in plan.graph.groups if g.kind == "residual")
    assert residual.reduced_by  # runs through the LayerNorms: the reference must mask their statistics
    member = next(m for m in residual.members if m.path == "ln1/scale")
    on = np.isin(np.arange(32), plan.graph.indices(member, plan.keep[residual.id]))
    ref.ln1, ref.ln2, ref.ln_f = (_MaskedLN(getattr(ref, n), on) for n in ("ln1", "ln2", "ln_f"))
    _close(small(tokens), ref(tokens))
    _check_counts(plan, state)
    _check_layerwise(plan, 0.25, skipped={g.id for g in plan.graph.groups if g.kind == "head_dim"})
    with_dims = structured_plan(model, None, tokens, 0.25, head_dim=True)
    assert any(not with_dims.keep[g.id].all() for g in plan.graph.groups if g.kind == "head_dim")


def test_nnx_vit_loses_whole_heads():
    from jaxprune.models.vit import NnxViT

    model = NnxViT(10, image=(14, 14, 1), patch=7, width=16, depth=1, num_heads=4, mlp_dim=32,
                   rngs=nnx.Rngs(0))
    x = jax.random.normal(KEY, (2, 14, 14, 1))
    plan = structured_plan(model, None, x, 0.25, ignore=("patch_embed",))  # heads and MLP; width kept
    small, state = apply_plan(plan, model, None, x)
    graphdef, full = nnx.split(model)
    _close(small(x), nnx.merge(graphdef, plan.graph.masked(full, plan.keep))(x))
    attn = small.blocks_0.attn
    assert (attn.num_heads, attn.head_dim, attn.in_features) == (3, 4, 16)
    _check_counts(plan, state)
    q = next(p for p, _ in flatten_with_paths(state)[0] if p.endswith("attn/query/kernel"))
    assert kept_shapes(plan)[q] == (16, 3, 4)


def test_linen_vit_heads_mlp_and_residual_through_layernorms():
    from jaxprune.models.vit import ViT

    model = ViT(10, patch=7, width=16, depth=1, num_heads=4, mlp_dim=32)
    x = jax.random.normal(KEY, (2, 14, 14, 1))
    v = model.init(KEY, x)
    plan = structured_plan(model, v, x, 0.25)
    small_model, small = apply_plan(plan, model, v, x)
    assert small["params"]["blocks_0"]["attn"]["query"]["kernel"].shape == (12, 3, 4)
    residual = plan.graph.group_of("params/ln_f/scale", 0)
    assert residual.reduced_by and not plan.keep[residual.id].all()
    member = next(m for m in residual.members if m.path == "params/ln_f/scale")
    on = jnp.asarray(np.isin(np.arange(16), plan.graph.indices(member, plan.keep[residual.id])))

    def kept_stats(fun, args, kwargs, context):  # every LayerNorm of the reference sees kept units only
        if isinstance(context.module, nn.LayerNorm):
            return fun(*args, mask=jnp.broadcast_to(on, args[0].shape), **kwargs)
        return fun(*args, **kwargs)

    with nn.intercept_methods(kept_stats):
        ref = model.apply(plan.graph.masked(v, plan.keep), x)
    _close(small_model.apply(small, x), ref)
    _check_counts(plan, small)


class NnxDepthwise(nnx.Module):
    """A MobileNet-style block written by the user: expand, BN, depthwise, project, residual."""

    def __init__(self, rngs):
        self.stem = nnx.Conv(2, 8, (3, 3), rngs=rngs)
        self.expand = nnx.Conv(8, 16, (1, 1), rngs=rngs)
        self.bn = nnx.BatchNorm(16, use_running_average=True, rngs=rngs)
        self.dw = nnx.Conv(16, 16, (3, 3), feature_group_count=16, rngs=rngs)
        self.project = nnx.Conv(16, 8, (1, 1), rngs=rngs)
        self.head = nnx.Linear(8, 3, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.stem(x))
        y = nnx.relu(self.dw(nnx.relu(self.bn(self.expand(x)))))
        x = x + self.project(y)
        return self.head(x.mean(axis=(1, 2)))


def test_nnx_depthwise_block_with_batchnorm():
    model = NnxDepthwise(nnx.Rngs(0))
    model.bn.mean[...] = jax.random.normal(KEY, (16,))
    model.bn.var[...] = 1.0 + jax.random.uniform(KEY, (16,))
    x = jax.random.normal(KEY, (2, 6, 6, 2))
    plan = structured_plan(model, None, x, 0.5, importance="l1")
    small, state = apply_plan(plan, model, None, x)
    graphdef, full = nnx.split(model)
    _close(small(x), nnx.merge(graphdef, plan.graph.masked(full, plan.keep))(x))
    assert small.dw.feature_group_count == 8 and small.bn.mean.shape == (8,)
    _check_counts(plan, state)


# ------------------------------------------------------------------------------------------- functions

def test_plain_function_returns_jitted_apply_and_params():
    def f(p, x):
        h = jax.nn.gelu(x @ p["w1"] + p["b1"][None])
        return h @ p["w2"]

    k1, k2 = jax.random.split(KEY)
    p = {"w1": jax.random.normal(k1, (4, 12)), "b1": jnp.zeros(12), "w2": jax.random.normal(k2, (12, 3))}
    x = jax.random.normal(KEY, (5, 4))
    plan = structured_plan(f, p, x, 0.5)
    g, small = apply_plan(plan, f, p, x)
    _close(g(small, x), f(plan.graph.masked(p, plan.keep), x))
    assert small["w1"].shape == (4, 6) and isinstance(g, type(jax.jit(f)))
    with pytest.raises(PruningError, match="activation criterion"):
        structured_plan(f, p, x, 0.5, importance="apoz")


def test_an_op_the_tracer_cannot_follow_costs_only_its_groups():
    def f(p, x):
        h = jax.lax.cumsum(jnp.tanh(x @ p["w1"]), axis=1)  # mixes the units of w1
        return h @ p["w2"] + jnp.tanh(x @ p["w3"]) @ p["w4"]

    ks = jax.random.split(KEY, 4)
    p = {"w1": jax.random.normal(ks[0], (3, 8)), "w2": jax.random.normal(ks[1], (8, 2)),
         "w3": jax.random.normal(ks[2], (3, 6)), "w4": jax.random.normal(ks[3], (6, 2))}
    x = jax.random.normal(KEY, (4, 3))
    plan = structured_plan(f, p, x, 0.5)
    refused = plan.graph.group_of("w1", 1)
    assert not refused.prunable and "cumsum" in refused.reason and refused.id not in plan.keep
    g, small = apply_plan(plan, f, p, x)
    assert small["w1"].shape == (3, 8) and small["w3"].shape == (3, 3)
    _close(g(small, x), f(plan.graph.masked(p, plan.keep), x))


def test_bad_arguments_are_refused():
    model, v, x = _mlp()
    with pytest.raises(PruningError, match="needs its variables"):
        prune_structured(model, None, x, 0.5)
    with pytest.raises(PruningError, match="sparsity"):
        prune_structured(model, v, x, 1.5)
    with pytest.raises(PruningError, match="unknown importance"):
        prune_structured(model, v, x, 0.5, importance="l3")
    with pytest.raises(PruningError, match="round_to"):
        prune_structured(model, v, x, 0.5, round_to=0)
