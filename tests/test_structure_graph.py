"""jaxprune.structure.graph: the traced groups of coupled parameter axes.

Two kinds of check. On plain functions whose shapes all come from the params, the key property:
``f(graph.shrink(params, keep), x) == f(graph.masked(params, keep), x)`` for random keep masks (the
shrunk model computes exactly what the full model computes with the removed units' slices zeroed).
On linen/nnx models (ours and the user's own), the expected groups: sizes, kinds, members, reasons.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxprune.errors import PruningError
from jaxprune.models.gpt import causal_attention, gpt_nano
from jaxprune.structure.graph import Member, trace, trace_linen, trace_nnx
from user_models import UserCNN, user_nnx_mlp, user_nnx_transformer

FEW = settings(max_examples=3, deadline=None)


def _params(key, shapes):
    keys = jax.random.split(key, len(shapes))
    # Weights of ~unit gain keep activations O(1), so float32 summation order stays below 1e-5.
    return {k: jax.random.normal(kk, s) / np.sqrt(max(np.prod(s[:-1]), 1))
            for kk, (k, s) in zip(keys, sorted(shapes.items()))}


def _shapes_only(model, x):
    """Abstract variables: the tracer needs shapes only, and eager init of a model is slow."""
    return jax.eval_shape(model.init, jax.random.PRNGKey(0), x)


def _random_keep(graph, seed):
    rng = np.random.default_rng(seed)
    keep = {}
    for g in graph.groups:
        if g.prunable:
            mask = rng.random(g.size) < 0.6
            mask[rng.integers(g.size)] = True
            keep[g.id] = mask
    return keep


def _check_equivalent(f, params, x, seed):
    graph = trace(f, params, x)
    keep = _random_keep(graph, seed)
    assert keep, graph.table()
    small = graph.shrink(params, keep)
    removed = sum(int((~m).sum()) for m in keep.values())
    assert removed == 0 or jax.tree.leaves(jax.tree.map(jnp.size, small)) != \
        jax.tree.leaves(jax.tree.map(jnp.size, params))
    run = jax.jit(f)  # one compile per shape set instead of one per op
    np.testing.assert_allclose(run(small, x), run(graph.masked(params, keep), x), atol=1e-5, rtol=1e-5)
    return graph, keep, small


def _by_members(graph, path, axis):
    found = graph.groups_of(path, axis)
    assert found, f"no group on {path}:{axis}\n{graph.table()}"
    return found


# --- plain functions: shrink == masked ------------------------------------------------------------

def mlp(p, x):
    return jax.nn.relu(x @ p["w1"] + p["b1"][None]) @ p["w2"]


@FEW
@given(st.integers(0, 2**16))
def test_mlp_shrink_equals_masked(seed):
    p = _params(jax.random.PRNGKey(seed), {"w1": (5, 12), "b1": (12,), "w2": (12, 3)})
    graph, keep, small = _check_equivalent(mlp, p, jnp.ones((4, 5)), seed)
    (hidden,) = [g for g in graph.groups if g.prunable]
    assert hidden.size == 12 and hidden.kind == "features" and hidden.producers == ("w1",)
    assert {(m.path, m.axis) for m in hidden.members} == {("w1", 1), ("b1", 0), ("w2", 0)}
    kept = int(keep[hidden.id].sum())
    assert small["w1"].shape == (5, kept) and small["w2"].shape == (kept, 3)


def _conv(x, w, groups=1):
    return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                        feature_group_count=groups)


def conv_net(p, x):
    """stem -> eval-mode BN -> residual block -> depthwise -> grouped conv -> pool -> dense."""
    c = lambda v: v.reshape(1, 1, 1, -1)  # noqa: E731
    h = _conv(x, p["stem"]) + c(p["stem_b"])
    h = (h - c(p["bn_mean"])) * c(p["bn_scale"]) / jnp.sqrt(c(p["bn_var"]) + 1e-5) + c(p["bn_bias"])
    h = jax.nn.relu(h)
    h = jax.nn.relu(h + _conv(jax.nn.relu(_conv(h, p["a"])), p["b"]))
    h = jax.nn.relu(_conv(h, p["dw"], groups=h.shape[-1]))
    h = jax.nn.relu(_conv(h, p["grouped"], groups=h.shape[-1] // p["grouped"].shape[2]))
    return h.mean(axis=(1, 2)) @ p["head"]


CONV_SHAPES = {"stem": (3, 3, 2, 6), "stem_b": (6,), "bn_mean": (6,), "bn_var": (6,),
               "bn_scale": (6,), "bn_bias": (6,), "a": (3, 3, 6, 4), "b": (3, 3, 4, 6),
               "dw": (3, 3, 1, 6), "grouped": (3, 3, 3, 8), "head": (8, 3)}


@FEW
@given(st.integers(0, 2**16))
def test_conv_net_shrink_equals_masked(seed):
    p = _params(jax.random.PRNGKey(seed), CONV_SHAPES)
    p["bn_var"] = jnp.abs(p["bn_var"]) + 0.5
    x = jax.random.normal(jax.random.PRNGKey(seed + 1), (2, 5, 5, 2))
    graph, _, _ = _check_equivalent(conv_net, p, x, seed)
    # The grouped conv (2 groups of 3 in -> 4 out channels) splits the residual channels into
    # (group, channel within the group): two classes, each shrinking every member.
    by_kind = {g.kind: g for g in graph.groups_of("stem", 3)}
    assert set(by_kind) == {"groups", "residual"}
    res, groups = by_kind["residual"], by_kind["groups"]
    assert res.prunable and set(res.producers) == {"b", "dw", "stem"} and res.size == 3
    assert Member("stem", 3, 1, 1, 0, 2, 3) in res.members
    assert {(m.path, m.axis) for m in res.members} >= {
        ("stem", 3), ("stem_b", 0), ("bn_mean", 0), ("bn_var", 0), ("b", 3), ("a", 2), ("dw", 3),
        ("grouped", 2)}
    assert graph.group_of("a", 3).members == (Member("a", 3), Member("b", 2))
    assert groups.size == 2 and Member("grouped", 3, 4, 4) in groups.members
    assert Member("stem", 3, 3, 3) in groups.members  # a group = 3 consecutive residual channels
    assert graph.group_of("head", 1).reason == "model output"
    assert graph.group_of("stem", 2).reason == "model input"
    assert graph.group_of("stem", 0).reason == "convolution window"


def attention(p, x):
    """Embedding -> multi-head (or grouped-query) attention written with reshapes -> residual.

    ``wq`` ``(width, heads*dk)`` and ``wv`` ``(width, kv_heads*dv)`` are merged; ``wk`` ``(width,
    kv_heads, dk)`` and ``wo`` ``(heads, dv, width)`` give the counts, so every shape follows from
    the params."""
    b, t, _ = x.shape
    h = x @ p["embed"]
    heads, dv, _ = p["wo"].shape
    kv, dk = p["wk"].shape[1:]
    q = (h @ p["wq"]).reshape(b, t, kv, heads // kv, dk)
    k = jnp.einsum("btw,wkd->btkd", h, p["wk"])
    v = (h @ p["wv"] + p["bv"][None, None]).reshape(b, t, kv, dv)
    # A fixed temperature: 1/sqrt(dk) would change with the pruned head_dim (as a norm's statistic
    # changes with the pruned width), so shrunk != masked there by construction.
    logits = jnp.einsum("btkgd,bskd->bkgts", q, k) * 0.5
    a = jnp.einsum("bkgts,bskd->btkgd", jax.nn.softmax(logits, axis=-1), v).reshape(b, t, heads, dv)
    h = h + jnp.einsum("bthd,hdo->bto", a, p["wo"])
    return jax.nn.gelu(h @ p["fc"]) @ p["head"]


def _attention_params(seed, heads=2, kv=2, hd=4, width=6):
    return _params(jax.random.PRNGKey(seed), {
        "embed": (5, width), "wq": (width, heads * hd), "wk": (width, kv, hd), "wv": (width, kv * hd),
        "bv": (kv * hd,), "wo": (heads, hd, width), "fc": (width, 7), "head": (7, 3)})


@FEW
@given(st.integers(0, 2**16))
def test_attention_shrink_equals_masked(seed):
    p = _attention_params(seed)
    x = jax.random.normal(jax.random.PRNGKey(seed + 1), (2, 3, 5))
    graph, keep, small = _check_equivalent(attention, p, x, seed)
    heads = graph.group_of("wq", 1)
    assert heads.kind == "heads" and heads.size == 2 and heads.prunable
    assert {(m.path, m.axis, m.stride, m.count) for m in heads.members} == {
        ("wq", 1, 4, 4), ("wk", 1, 1, 1), ("wv", 1, 4, 4), ("bv", 0, 4, 4), ("wo", 0, 1, 1)}
    qk = [g for g in graph.groups_of("wk", 2) if g.kind == "head_dim"]
    vo = [g for g in graph.groups_of("wv", 1) if g.kind == "head_dim"]
    assert len(qk) == len(vo) == 1 and qk[0].id != vo[0].id
    assert {m.path for m in qk[0].members} == {"wq", "wk"}
    assert {m.path for m in vo[0].members} == {"wv", "bv", "wo"}
    assert Member("wo", 1) in vo[0].members and Member("wv", 1, 1, 1, 0, 2, 4) in vo[0].members
    kept = int(keep[heads.id].sum()) * int(keep[qk[0].id].sum())
    assert small["wq"].shape[1] == kept and small["wk"].shape[1:] == (
        int(keep[heads.id].sum()), int(keep[qk[0].id].sum()))


@FEW
@given(st.integers(0, 2**16))
def test_grouped_query_attention_keeps_kv_sharing(seed):
    p = _attention_params(seed, heads=4, kv=2)
    x = jax.random.normal(jax.random.PRNGKey(seed + 1), (2, 3, 5))
    graph, keep, small = _check_equivalent(attention, p, x, seed)
    kv = graph.group_of("wk", 1)
    assert kv.kind == "heads" and kv.size == 2
    assert {m.path for m in kv.members} == {"wq", "wk", "wv", "bv", "wo"}
    per_kv = [g for g in graph.groups_of("wq", 1) if g.kind == "heads" and g.id != kv.id]
    assert len(per_kv) == 1 and per_kv[0].size == 2  # query heads per shared k/v head
    assert {m.path for m in per_kv[0].members} == {"wq", "wo"}
    assert small["wq"].shape[1] == small["wo"].shape[0] * small["wk"].shape[2]


def unet_block(p, x):
    """Encoder conv, a second conv, their outputs concatenated (skip) and fused by a 1x1 conv."""
    a = jax.nn.relu(_conv(x, p["enc"]))
    b = jax.nn.relu(_conv(a, p["mid"]))
    c = jnp.concatenate([a, b], axis=-1)
    return _conv(jax.nn.relu(_conv(c, p["fuse"])), p["out"])


@FEW
@given(st.integers(0, 2**16))
def test_concat_skip_shrink_equals_masked(seed):
    p = _params(jax.random.PRNGKey(seed), {"enc": (3, 3, 2, 4), "mid": (3, 3, 4, 5),
                                           "fuse": (1, 1, 9, 6), "out": (1, 1, 6, 2)})
    x = jax.random.normal(jax.random.PRNGKey(seed + 1), (2, 4, 4, 2))
    graph, _, _ = _check_equivalent(unet_block, p, x, seed)
    enc, mid = graph.group_of("enc", 3), graph.group_of("mid", 3)
    assert Member("fuse", 2, 1, 1, 0) in enc.members and Member("fuse", 2, 1, 1, 4) in mid.members
    assert Member("mid", 2) in enc.members and enc.size == 4 and mid.size == 5


def gated(p, x, use_split=True):
    h = x @ p["w_in"]
    f = h.shape[-1] // 2
    a, b = jnp.split(h, 2, axis=-1) if use_split else (h[..., :f], h[..., f:])
    return (a * jax.nn.silu(b)) @ p["w_out"]


@FEW
@given(st.integers(0, 2**16), st.booleans())
def test_gated_mlp_shrink_equals_masked(seed, use_split):
    p = _params(jax.random.PRNGKey(seed), {"w_in": (4, 10), "w_out": (5, 3)})
    f = lambda p, x: gated(p, x, use_split)  # noqa: E731
    graph, _, _ = _check_equivalent(f, p, jnp.ones((2, 4)), seed)
    g = graph.group_of("w_out", 0)
    assert g.size == 5 and g.prunable
    assert set(g.members) == {Member("w_in", 1, 1, 1, 0), Member("w_in", 1, 1, 1, 5), Member("w_out", 0)}


def vit_like(p, patches):
    """Patch projection, a class token and a positional table along the width, tied read-out."""
    b = patches.shape[0]
    h = patches @ p["proj"]
    cls = jnp.broadcast_to(p["cls"], (b, 1, h.shape[-1]))
    h = jnp.concatenate([cls, h], axis=1) + p["pos"][None]
    h = h + jax.nn.relu(h @ p["fc"]) @ p["fc2"]
    return h[:, 0] @ p["head"]


@FEW
@given(st.integers(0, 2**16))
def test_class_token_and_positions_follow_the_width(seed):
    p = _params(jax.random.PRNGKey(seed), {"proj": (6, 8), "cls": (1, 1, 8), "pos": (4, 8),
                                           "fc": (8, 5), "fc2": (5, 8), "head": (8, 3)})
    graph, _, _ = _check_equivalent(vit_like, p, jnp.ones((2, 3, 6)), seed)
    width = graph.group_of("proj", 1)
    assert width.kind == "residual" and width.prunable
    assert {(m.path, m.axis) for m in width.members} == {
        ("proj", 1), ("cls", 2), ("pos", 1), ("fc", 0), ("fc2", 1), ("head", 0)}
    assert not graph.group_of("pos", 0).prunable


def tied_lm(p, tokens):
    h = jnp.take(p["wte"], tokens, axis=0) + p["wpe"][None, : tokens.shape[1]]
    h = h + jax.nn.relu(h @ p["fc"]) @ p["proj"]
    return h @ p["wte"].T


@FEW
@given(st.integers(0, 2**16))
def test_tied_embedding_width_is_prunable_vocab_is_not(seed):
    p = _params(jax.random.PRNGKey(seed), {"wte": (11, 6), "wpe": (4, 6), "fc": (6, 8), "proj": (8, 6)})
    tokens = jax.random.randint(jax.random.PRNGKey(seed), (2, 4), 0, 11)
    graph, _, _ = _check_equivalent(tied_lm, p, tokens, seed)
    width = graph.group_of("wte", 1)
    assert width.prunable and {(m.path, m.axis) for m in width.members} == {
        ("wte", 1), ("wpe", 1), ("fc", 0), ("proj", 1)}
    vocab = graph.group_of("wte", 0)
    assert not vocab.prunable and "model output" in vocab.reason and "gather" in vocab.reason


# --- refusal: an op the rules do not follow makes only the groups it touches unprunable -----------

@pytest.mark.parametrize("op, word", [
    (lambda h: jnp.cumsum(h, axis=-1), "cumsum"),
    (lambda h: jax.lax.scan(lambda c, r: (c, r * 2.0), 0.0, h.T)[1].T, "scan"),
    (lambda h: jnp.sort(h, axis=-1), "sort"),
    (lambda h: jax.lax.cond(h.sum() > 0, lambda a: a * 2.0, lambda a: -a, h), "cond"),
    (lambda h: jax.lax.while_loop(lambda c: c[0] < 2, lambda c: (c[0] + 1, c[1] * 2.0), (0, h))[1],
     "while"),
    (lambda h: jnp.concatenate([h[:, ::2], h[:, 1::2]], axis=-1), "slice"),
])
def test_unknown_op_refuses_only_the_groups_it_touches(op, word):
    def f(p, x):
        h = op(jax.nn.relu(x @ p["w1"]))
        return jax.nn.relu(h @ p["w2"]) @ p["w3"]

    p = _params(jax.random.PRNGKey(0), {"w1": (3, 6), "w2": (6, 5), "w3": (5, 2)})
    graph = trace(f, p, jnp.ones((2, 3)))
    refused, ok = graph.group_of("w1", 1), graph.group_of("w2", 1)
    assert not refused.prunable and word in refused.reason, graph.table()
    assert ok.prunable and ok.size == 5
    with pytest.raises(PruningError, match="not prunable"):
        graph.shrink(p, {refused.id: np.arange(6) < 3})
    assert graph.shrink(p, {ok.id: np.arange(5) < 3})["w3"].shape == (3, 2)


def test_shrink_rejects_bad_masks():
    p = _params(jax.random.PRNGKey(0), {"w1": (5, 12), "b1": (12,), "w2": (12, 3)})
    graph = trace(mlp, p, jnp.ones((4, 5)))
    gid = graph.group_of("b1", 0).id
    with pytest.raises(PruningError, match="shape"):
        graph.shrink(p, {gid: np.ones(3, bool)})
    with pytest.raises(PruningError, match="every unit"):
        graph.shrink(p, {gid: np.zeros(12, bool)})
    with pytest.raises(PruningError, match="no group"):
        graph.shrink(p, {99: np.ones(12, bool)})


def test_trace_failure_names_the_function():
    with pytest.raises(PruningError, match="failed to trace"):
        trace(lambda p, x: x @ p["w"], {"w": jnp.ones((3, 4))}, jnp.ones((2, 5)))


# --- models: linen and nnx -----------------------------------------------------------------------

def test_user_cnn_groups_and_shrunk_shapes():
    model, x = UserCNN(), jnp.ones((4, 8, 8, 1))
    variables = jax.tree.map(lambda s: jnp.ones(s.shape, s.dtype), _shapes_only(model, x))
    graph = trace_linen(model, variables, x)
    res = graph.group_of("params/stem/kernel", 3)
    assert res.kind == "residual" and res.size == 8 and res.prunable
    assert set(res.producers) == {"params/stem/kernel", "params/block/conv_b/kernel"}
    assert {(m.path, m.axis) for m in res.members} >= {
        ("batch_stats/stem_bn/mean", 0), ("batch_stats/block/bn_b/var", 0), ("params/block/bn_b/scale", 0),
        ("params/block/conv_a/kernel", 2), ("params/fc1/kernel", 0)}
    # The flatten before fc1 makes its input axis (h, w, c): a channel is every 8th row.
    assert Member("params/fc1/kernel", 0, 1, 1, 0, 16, 8) in res.members
    inner = graph.group_of("params/block/conv_a/kernel", 3)
    assert inner.kind == "features" and inner.prunable and inner.producers == ("params/block/conv_a/kernel",)
    hidden = graph.groups_for_layer("fc1")
    assert [g.size for g in hidden] == [32]
    assert graph.groups_for_layer("head")[0].reason == "model output"
    keep = {res.id: np.arange(8) % 3 != 0, inner.id: np.arange(8) < 5, hidden[0].id: np.arange(32) < 20}
    small = graph.shrink(variables, keep)  # rebuilding the linen module is structure.rebuild's job
    assert small["params"]["fc1"]["kernel"].shape == (4 * 4 * 5, 20)
    assert small["params"]["block"]["conv_a"]["kernel"].shape == (3, 3, 5, 5)
    assert small["batch_stats"]["stem_bn"]["var"].shape == (5,)


def test_user_nnx_mlp_groups():
    model, x = user_nnx_mlp()
    graph = trace_nnx(model, x)
    prunable = [g for g in graph.groups if g.prunable]
    assert [(g.size, g.members) for g in prunable] == [
        (32, (Member("inp/bias", 0), Member("inp/kernel", 1), Member("mid/kernel", 0))),
        (32, (Member("mid/bias", 0), Member("mid/kernel", 1), Member("out/kernel", 0)))]
    assert graph.group_of("inp/kernel", 0).reason == "model input"
    assert graph.group_of("out/kernel", 1).reason == "model output"
    assert "inp/kernel:1" in str(graph)


def test_user_nnx_transformer_heads_and_residual():
    model, tokens = user_nnx_transformer()
    graph = trace_nnx(model, tokens)
    heads = graph.group_of("attn/query/kernel", 1)
    assert heads.kind == "heads" and heads.size == 4 and heads.prunable
    assert {m.path for m in heads.members} == {f"attn/{n}/{w}" for n in ("query", "key", "value")
                                               for w in ("kernel", "bias")} | {"attn/out/kernel"}
    qk, vo = graph.group_of("attn/query/kernel", 2), graph.group_of("attn/value/kernel", 2)
    assert qk.kind == vo.kind == "head_dim" and qk.id != vo.id and qk.size == 8
    assert Member("attn/out/kernel", 1) in vo.members
    res = graph.group_of("embed/embedding", 1)
    assert res.kind == "residual" and res.prunable and "reduce_sum" in res.reduced_by
    assert {"ln1/scale", "ln_f/bias", "pos", "lm_head/kernel", "attn/out/bias"} <= {
        m.path for m in res.members}
    assert not graph.group_of("embed/embedding", 0).prunable
    assert graph.group_of("fc/kernel", 1).size == 64


def test_gpt_heads_are_blocks_of_the_merged_projection():
    model = gpt_nano(vocab_size=11, context=8, num_layers=1, width=16, num_heads=2, tied=True)
    tokens = jnp.zeros((2, 8), jnp.int32)
    graph = trace_linen(model, _shapes_only(model, tokens), tokens)
    q = "params/blocks_0/query/kernel"
    heads = graph.group_of(q, 1)
    assert heads.kind == "heads" and heads.size == 2 and Member(q, 1, 8, 8) in heads.members
    assert Member("params/blocks_0/out/kernel", 0, 8, 8) in heads.members
    head_dim = [g for g in graph.groups_of(q, 1) if g.kind == "head_dim"]
    assert len(head_dim) == 1 and Member(q, 1, 1, 1, 0, 2, 8) in head_dim[0].members
    width = graph.group_of("params/wte/embedding", 1)
    assert width.kind == "residual" and width.prunable
    vocab = graph.group_of("params/wte/embedding", 0)
    assert not vocab.prunable and "model output" in vocab.reason
    x = jnp.ones((1, 4, 16))
    assert causal_attention(x, x, x, 2).shape == x.shape


class MHABlock(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.Dense(16, name="embed")(x)
        h = h + nn.MultiHeadDotProductAttention(num_heads=4, name="attn")(h, h)
        return nn.Dense(3, name="head")(h)


def _mha_block(v, x):
    """MHABlock written out on its params (flax layouts), with flax's 1/sqrt(head_dim) fixed."""
    p = v["params"]
    h = x @ p["embed"]["kernel"] + p["embed"]["bias"][None, None]
    proj = lambda n: jnp.einsum("btw,whd->bthd", h, p["attn"][n]["kernel"]) \
        + p["attn"][n]["bias"][None, None]  # noqa: E731
    logits = jnp.einsum("bqhd,bkhd->bhqk", proj("query") * 0.5, proj("key"))
    a = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(logits, axis=-1), proj("value"))
    h = h + jnp.einsum("bqhd,hdw->bqw", a, p["attn"]["out"]["kernel"]) + p["attn"]["out"]["bias"][None, None]
    return h @ p["head"]["kernel"] + p["head"]["bias"][None, None]


def test_linen_mha_heads_shrink_equals_masked():
    model, x = MHABlock(), jax.random.normal(jax.random.PRNGKey(1), (2, 5, 6))
    variables = model.init(jax.random.PRNGKey(0), x)
    np.testing.assert_allclose(_mha_block(variables, x), model.apply(variables, x), atol=1e-5)
    graph = trace_linen(model, variables, x)
    heads = graph.group_of("params/attn/query/kernel", 1)
    assert heads.kind == "heads" and heads.size == 4 and heads.prunable
    qk = graph.group_of("params/attn/key/kernel", 2)
    assert qk.kind == "head_dim" and {m.path for m in qk.members} == {
        f"params/attn/{n}/{w}" for n in ("query", "key") for w in ("kernel", "bias")}
    width = graph.group_of("params/embed/kernel", 1)
    keep = {heads.id: np.array([True, False, True, False]), width.id: np.arange(16) % 4 != 1}
    small = graph.shrink(variables, keep)
    assert small["params"]["attn"]["out"]["kernel"].shape == (2, 4, 12)
    np.testing.assert_allclose(_mha_block(small, x), _mha_block(graph.masked(variables, keep), x),
                               atol=1e-5)


class GroupNormNet(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.relu(nn.GroupNorm(num_groups=4, name="gn")(nn.Conv(8, (3, 3), name="conv")(x)))
        return nn.Dense(3, name="head")(h.mean(axis=(1, 2)))


def test_group_norm_splits_channels_into_groups():
    model, x = GroupNormNet(), jnp.ones((2, 4, 4, 1))
    graph = trace_linen(model, _shapes_only(model, x), x)
    found = {g.kind: g for g in graph.groups_of("params/conv/kernel", 3)}
    assert set(found) == {"groups", "features"}
    assert found["groups"].size == 4 and Member("params/gn/scale", 0, 2, 2) in found["groups"].members
    within = found["features"]
    assert within.size == 2 and Member("params/gn/bias", 0, 1, 1, 0, 4, 2) in within.members
    assert "reduce_sum" in within.reduced_by and found["groups"].prunable


class DepthwiseX2(nn.Module):
    """1x1 expand, a depthwise 3x3 with channel multiplier 2 (each channel -> 2), 1x1 project."""

    @nn.compact
    def __call__(self, x):
        h = nn.relu(nn.Conv(6, (1, 1), name="expand")(x))
        h = nn.relu(nn.Conv(12, (3, 3), feature_group_count=6, name="dw")(h))
        return nn.Conv(2, (1, 1), name="project")(h)


def _depthwise_x2(v, x):
    """DepthwiseX2 on its params, every size read from them."""
    p = v["params"]
    h = jax.nn.relu(x @ p["expand"]["kernel"][0, 0] + p["expand"]["bias"].reshape(1, 1, 1, -1))
    h = jax.lax.conv_general_dilated(h, p["dw"]["kernel"], (1, 1), "SAME", feature_group_count=h.shape[-1],
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    h = jax.nn.relu(h + p["dw"]["bias"].reshape(1, 1, 1, -1))
    return h @ p["project"]["kernel"][0, 0] + p["project"]["bias"].reshape(1, 1, 1, -1)


def test_depthwise_conv_joins_its_input_and_output_channels():
    model, x = DepthwiseX2(), jax.random.normal(jax.random.PRNGKey(1), (2, 4, 4, 3))
    variables = model.init(jax.random.PRNGKey(0), x)
    np.testing.assert_allclose(_depthwise_x2(variables, x), model.apply(variables, x), atol=1e-5)
    graph = trace_linen(model, variables, x)
    channel = graph.group_of("params/expand/kernel", 3)
    assert channel.prunable and channel.size == 6 and channel.kind == "features"
    assert set(channel.members) == {
        Member("params/expand/kernel", 3), Member("params/expand/bias", 0), Member("params/dw/kernel", 3, 2, 2),
        Member("params/dw/bias", 0, 2, 2), Member("params/project/kernel", 2, 2, 2)}
    (multiplier,) = [g for g in graph.groups_of("params/dw/kernel", 3) if g.id != channel.id]
    assert multiplier.size == 2 and multiplier.prunable and multiplier.producers == ("params/dw/kernel",)
    assert Member("params/project/kernel", 2, 1, 1, 0, 6, 2) in multiplier.members
    keep = {channel.id: np.arange(6) % 2 == 0, multiplier.id: np.array([False, True])}
    small = graph.shrink(variables, keep)
    assert small["params"]["dw"]["kernel"].shape == (3, 3, 1, 3)
    np.testing.assert_allclose(_depthwise_x2(small, x), _depthwise_x2(graph.masked(variables, keep), x),
                               atol=1e-5)


def test_zoo_vit_heads_and_width_with_class_token():
    from jaxprune.models.vit import ViT

    model, x = ViT(10, patch=7, width=8, depth=1, num_heads=2, mlp_dim=16), jnp.ones((2, 28, 28, 1))
    graph = trace_linen(model, _shapes_only(model, x), x)
    q, v = "params/blocks_0/attn/query/kernel", "params/blocks_0/attn/value/kernel"
    assert (graph.group_of(q, 1).kind, graph.group_of(q, 1).size) == ("heads", 2)
    assert graph.group_of(v, 2).kind == "head_dim" and graph.group_of(q, 2).kind == "head_dim"
    width = graph.group_of("params/pos_embed", 1)
    assert width.kind == "residual" and width.prunable
    assert {"params/cls_token", "params/head/kernel"} <= {m.path for m in width.members}
    # Token positions come from the image's patch grid: bound to the input, never units.
    rows = graph.groups_of("params/pos_embed", 0)
    assert rows and all(g.reason == "model input" and g.kind == "features" for g in rows)


def test_zero_padded_shortcut_refuses_only_the_padding():
    from jaxprune.models.resnet import ResNet20

    model, x = ResNet20(10), jnp.ones((1, 8, 8, 3))
    graph = trace_linen(model, _shapes_only(model, x), x)
    bn = "params/BasicBlock_3/BatchNorm_1/scale"  # stage 2: 32 channels = 8 pad + 16 + 8 pad
    found = sorted(graph.groups_of(bn, 0), key=lambda g: [m.offset for m in g.members if m.path == bn])
    assert [g.size for g in found] == [8, 16, 8]
    assert [g.reason for g in found] == ["zero padding", None, "zero padding"]
    stage1 = graph.group_of("params/BasicBlock_0/BatchNorm_1/scale", 0)
    assert stage1.id == found[1].id and Member(bn, 0, 1, 1, 8) in stage1.members


class RMSNet(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.Dense(8, name="up")(x)
        h = h + nn.Dense(8, name="mix")(nn.RMSNorm(name="norm")(h))
        return nn.Dense(2, name="head")(h)


def test_rms_norm_scale_follows_the_width_and_is_reduced():
    model, x = RMSNet(), jnp.ones((2, 3))
    graph = trace_linen(model, _shapes_only(model, x), x)
    width = graph.group_of("params/up/kernel", 1)
    assert width.kind == "residual" and width.prunable and width.reduced_by
    assert Member("params/norm/scale", 0) in width.members
