"""jaxprune.structure.rebuild: a smaller variables tree (cut by hand here) runs with the same call.

Each test removes units by hand from every leaf axis they live on (``_cut``) and checks that the
rebuilt model's output equals the original model's with those units zeroed (masked), or, where a
normalisation sees the pruned width, a reference computed over the kept units.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxprune.errors import PruningError
from jaxprune.paths import path_str
from jaxprune.structure.rebuild import changed_shapes, rebuild
from tests.user_models import user_cnn, user_nnx_mlp, user_nnx_transformer

KEY = jax.random.PRNGKey(0)


def _cut(tree, spec):
    """``(shrunk, masked)``: ``spec`` maps a leaf path to ``{axis: kept indices}``; the shrunk tree
    keeps those indices, the masked one zeroes the others."""
    seen = set()

    def one(path, leaf, shrink):
        name = path_str(path)
        axes = spec.get(name)
        if axes is None:
            return leaf
        seen.add(name)
        x = jnp.asarray(leaf)
        for axis, keep in axes.items():
            keep = np.asarray(keep)
            if shrink:
                x = jnp.take(x, keep, axis=axis)
            else:
                on = np.zeros(x.shape[axis], bool)
                on[keep] = True
                x = x * jnp.asarray(on, x.dtype).reshape([-1 if a == axis % x.ndim else 1 for a in range(x.ndim)])
        return x

    shrunk = jax.tree_util.tree_map_with_path(lambda p, x: one(p, x, True), tree)
    masked = jax.tree_util.tree_map_with_path(lambda p, x: one(p, x, False), tree)
    assert seen == set(spec), f"spec names leaves that are not there: {set(spec) - seen}"
    return shrunk, masked


def _close(a, b):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------------------------- linen

class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(16, name="fc1")(x))
        return nn.Dense(3, name="fc2")(x)


def test_linen_dense_hidden_units():
    model, x = MLP(), jax.random.normal(KEY, (4, 5))
    v = model.init(KEY, x)
    keep = [0, 2, 3, 7, 11]
    small, masked = _cut(v, {"params/fc1/kernel": {1: keep}, "params/fc1/bias": {0: keep},
                             "params/fc2/kernel": {0: keep}})
    new = rebuild(model, v, small, example_args=(x,))
    assert isinstance(new, MLP) and type(new) is not MLP
    _close(new.apply(small, x), model.apply(masked, x))
    assert jax.tree.map(jnp.shape, new.init(KEY, x)) == jax.tree.map(jnp.shape, small)
    _close(jax.jit(new.apply)(small, x), model.apply(masked, x))
    with pytest.raises(Exception, match="fc1"):  # the original module still refuses the smaller tree
        model.apply(small, x)


def test_linen_cnn_with_batchnorm_and_stats():
    model, v, x = user_cnn(KEY)
    keep = [1, 2, 4, 6, 7]
    bn = {0: keep}
    small, masked = _cut(v, {
        "params/block/conv_a/kernel": {3: keep}, "params/block/conv_a/bias": bn,
        "params/block/bn_a/scale": bn, "params/block/bn_a/bias": bn,
        "batch_stats/block/bn_a/mean": bn, "batch_stats/block/bn_a/var": bn,
        "params/block/conv_b/kernel": {2: keep},
        "params/fc1/kernel": {1: list(range(0, 32, 2))}, "params/fc1/bias": {0: list(range(0, 32, 2))},
        "params/head/kernel": {0: list(range(0, 32, 2))}})
    new = rebuild(model, v, small, example_args=(x,))
    _close(new.apply(small, x), model.apply(masked, x))
    out, upd = new.apply(small, x, train=True, mutable=["batch_stats"])
    assert upd["batch_stats"]["block"]["bn_a"]["mean"].shape == (5,)
    assert out.shape == (4, 10)


class Depthwise(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(8, (1, 1), name="expand")(x))
        x = nn.relu(nn.Conv(8, (3, 3), feature_group_count=8, name="dw")(x))
        return nn.Conv(4, (1, 1), name="project")(x)


def test_linen_depthwise_conv_follows_its_input():
    model, x = Depthwise(), jax.random.normal(KEY, (2, 6, 6, 3))
    v = model.init(KEY, x)
    keep = [0, 3, 4, 5, 6, 7]
    small, masked = _cut(v, {"params/expand/kernel": {3: keep}, "params/expand/bias": {0: keep},
                             "params/dw/kernel": {3: keep}, "params/dw/bias": {0: keep},
                             "params/project/kernel": {2: keep}})
    new = rebuild(model, v, small, example_args=(x,))
    _close(new.apply(small, x), model.apply(masked, x))


class Attn(nn.Module):
    @nn.compact
    def __call__(self, x):
        y = nn.MultiHeadDotProductAttention(num_heads=4, qkv_features=16, name="mha")(x)
        return nn.Dense(2, name="head")(y)


def test_linen_attention_heads():
    model, x = Attn(), jax.random.normal(KEY, (2, 5, 12))
    v = model.init(KEY, x)
    heads = {1: [0, 2, 3]}
    spec = {f"params/mha/{n}/kernel": heads for n in ("query", "key", "value")}
    spec |= {f"params/mha/{n}/bias": {0: [0, 2, 3]} for n in ("query", "key", "value")}
    spec["params/mha/out/kernel"] = {0: [0, 2, 3]}
    small, masked = _cut(v, spec)
    new = rebuild(model, v, small, example_args=(x,))
    _close(new.apply(small, x), model.apply(masked, x))
    assert small["params"]["mha"]["query"]["kernel"].shape == (12, 3, 4)


class EmbedLN(nn.Module):
    @nn.compact
    def __call__(self, tokens):
        x = nn.Embed(11, 8, name="embed")(tokens)
        x = nn.LayerNorm(name="ln")(x)
        x = nn.RMSNorm(name="rms")(x)
        return nn.Dense(3, name="head")(x)


def _layer_norm(x, scale, bias, eps=1e-6):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / jnp.sqrt(var + eps) * scale[None, None] + bias[None, None]


def test_linen_embed_width_through_layernorm_and_rmsnorm_normalises_over_kept_units():
    model = EmbedLN()
    tokens = jax.random.randint(KEY, (2, 5), 0, 11)
    v = model.init(KEY, tokens)
    keep = [0, 1, 4, 5, 7]
    small, _ = _cut(v, {"params/embed/embedding": {1: keep}, "params/ln/scale": {0: keep},
                        "params/ln/bias": {0: keep}, "params/rms/scale": {0: keep},
                        "params/head/kernel": {0: keep}})
    new = rebuild(model, v, small, example_args=(tokens,))
    p = small["params"]
    x = p["embed"]["embedding"][tokens]
    x = _layer_norm(x, p["ln"]["scale"], p["ln"]["bias"])
    x = x / jnp.sqrt((x ** 2).mean(-1, keepdims=True) + 1e-6) * p["rms"]["scale"][None, None]
    ref = x @ p["head"]["kernel"] + p["head"]["bias"][None, None]
    _close(new.apply(small, tokens), ref)


class Grouped(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.Conv(8, (3, 3), name="conv")(x)
        x = nn.relu(nn.GroupNorm(num_groups=4, name="gn")(x))
        return nn.Conv(2, (1, 1), name="out")(x)


def test_linen_groupnorm_whole_groups_removed():
    model, x = Grouped(), jax.random.normal(KEY, (2, 5, 5, 3))
    v = model.init(KEY, x)
    keep = [0, 1, 4, 5, 6, 7]  # group 1 (channels 2, 3) goes: the other groups' statistics stay
    small, masked = _cut(v, {"params/conv/kernel": {3: keep}, "params/conv/bias": {0: keep},
                             "params/gn/scale": {0: keep}, "params/gn/bias": {0: keep},
                             "params/out/kernel": {2: keep}})
    new = rebuild(model, v, small, example_args=(x,))
    _close(new.apply(small, x), model.apply(masked, x))


class Scale(nn.Module):
    width: int
    twice: bool = False

    @nn.compact
    def __call__(self, x):
        n = 2 * self.width if self.twice else self.width
        return x * self.param("s", nn.initializers.normal(1.0), (n,))[None, : x.shape[-1]]


class WithScale(nn.Module):
    twice: bool = False

    @nn.compact
    def __call__(self, x):
        x = nn.Dense(6, name="fc")(x)
        x = Scale(6, self.twice, name="scale")(x)
        return nn.Dense(2, name="head")(x)


def test_linen_user_module_size_attribute_is_set():
    model, x = WithScale(), jax.random.normal(KEY, (3, 4))
    v = model.init(KEY, x)
    keep = [1, 2, 5]
    small, masked = _cut(v, {"params/fc/kernel": {1: keep}, "params/fc/bias": {0: keep},
                             "params/scale/s": {0: keep}, "params/head/kernel": {0: keep}})
    new = rebuild(model, v, small, example_args=(x,))
    _close(new.apply(small, x), model.apply(masked, x))


def test_linen_user_module_whose_shape_no_attribute_explains_is_refused():
    model, x = WithScale(twice=True), jax.random.normal(KEY, (3, 4))
    v = model.init(KEY, x)
    small, _ = _cut(v, {"params/scale/s": {0: list(range(6))}})
    with pytest.raises(PruningError, match=r"module 'scale' \(Scale\): param 's' axis 0 shrank 12 -> 6"):
        rebuild(model, v, small, example_args=(x,))


class TwoEqual(nn.Module):
    a: int = 4
    b: int = 4

    @nn.compact
    def __call__(self, x):
        return x @ self.param("w", nn.initializers.ones, (self.a, self.b))


def test_linen_ambiguous_attributes_are_settled_by_a_trial_or_refused():
    model, x = TwoEqual(), jnp.ones((1, 4))
    v = model.init(KEY, x)
    small, _ = _cut(v, {"params/w": {1: [0, 1]}})
    new = rebuild(model, v, small)  # no example input to try the candidates on: refused when run
    with pytest.raises(PruningError, match=r"attributes \['a', 'b'\] all equal 4"):
        new.apply(small, x)
    new = rebuild(model, v, small, overrides={"": {"b": 2}})
    assert new.apply(small, x).shape == (1, 2)
    new = rebuild(model, v, small, example_args=(x,))  # only b = 2 fits the smaller w
    assert new.apply(small, x).shape == (1, 2)


def test_changed_shapes_refuses_growth_and_other_trees():
    with pytest.raises(PruningError, match="leaf 'a' grew"):
        changed_shapes({"a": np.zeros(2)}, {"a": np.zeros(3)})
    with pytest.raises(PruningError, match="structure"):
        changed_shapes({"a": np.zeros(2)}, {"b": np.zeros(2)})


# ------------------------------------------------------------------------------------------------- nnx

def _nnx_cut(model, spec, *filters):
    state = nnx.state(model, filters or nnx.Param)
    small, masked = _cut(state, spec)
    ref = nnx.clone(model)
    nnx.update(ref, masked)
    return small, ref


def test_nnx_mlp_hidden_units_and_the_original_is_untouched():
    model, x = user_nnx_mlp()
    keep = list(range(0, 32, 3))
    small, ref = _nnx_cut(model, {"inp/kernel": {1: keep}, "inp/bias": {0: keep}, "mid/kernel": {0: keep}})
    new = rebuild(model, None, small, example_args=(x,))
    _close(new(x), ref(x))
    assert (new.inp.out_features, new.mid.in_features, model.inp.out_features) == (len(keep), len(keep), 32)
    assert model.inp.kernel.shape == (16, 32)


def test_nnx_transformer_heads():
    model, tokens = user_nnx_transformer()
    keep = [0, 2, 3]
    spec = {f"attn/{n}/kernel": {1: keep} for n in ("query", "key", "value")}
    spec |= {f"attn/{n}/bias": {0: keep} for n in ("query", "key", "value")}
    spec["attn/out/kernel"] = {0: keep}
    small, ref = _nnx_cut(model, spec)
    new = rebuild(model, None, small, example_args=(tokens,))
    _close(new(tokens), ref(tokens))
    assert (new.attn.num_heads, new.attn.qkv_features, new.attn.head_dim) == (3, 24, 8)


class NnxConvNet(nnx.Module):
    def __init__(self, rngs):
        self.expand = nnx.Conv(3, 8, (1, 1), rngs=rngs)
        self.bn = nnx.BatchNorm(8, use_running_average=True, rngs=rngs)
        self.dw = nnx.Conv(8, 8, (3, 3), feature_group_count=8, rngs=rngs)
        self.gn = nnx.GroupNorm(8, num_groups=4, rngs=rngs)
        self.project = nnx.Conv(8, 2, (1, 1), rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.bn(self.expand(x)))
        return self.project(nnx.relu(self.gn(self.dw(x))))


def test_nnx_depthwise_batchnorm_groupnorm():
    model = NnxConvNet(nnx.Rngs(0))
    # Non-trivial statistics, so that cutting them is checked.
    model.bn.mean[...] = jax.random.normal(KEY, (8,))
    model.bn.var[...] = 1.0 + jax.random.uniform(KEY, (8,))
    x = jax.random.normal(KEY, (2, 5, 5, 3))
    keep = [0, 1, 2, 3, 6, 7]  # group 2 of the GroupNorm goes
    k = {0: keep}
    spec = {"expand/kernel": {3: keep}, "expand/bias": k, "bn/scale": k, "bn/bias": k, "bn/mean": k,
            "bn/var": k, "dw/kernel": {3: keep}, "dw/bias": k, "gn/scale": k, "gn/bias": k,
            "project/kernel": {2: keep}}
    small, ref = _nnx_cut(model, spec, nnx.Param, nnx.BatchStat)
    new = rebuild(model, None, small, example_args=(x,))
    _close(new(x), ref(x))
    assert (new.dw.feature_group_count, new.gn.num_groups, new.gn.group_size) == (6, 3, 2)
    assert new.bn.num_features == 6


def test_nnx_rebuild_that_does_not_run_is_refused():
    model, x = user_nnx_mlp()
    small, _ = _nnx_cut(model, {"inp/kernel": {1: [0, 1]}, "inp/bias": {0: [0, 1]}})
    with pytest.raises(PruningError, match="does not run on the example input"):
        rebuild(model, None, small, example_args=(x,))


def test_rebuild_refuses_a_non_module():
    with pytest.raises(PruningError, match="linen or nnx Module"):
        rebuild(lambda p, x: x, {}, {})


class WidthAttn(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.Dense(12, name="embed")(x)
        h = h + nn.MultiHeadDotProductAttention(num_heads=4, name="mha")(h)  # qkv and out follow the width
        return nn.Dense(2, name="head")(h)


def test_linen_attention_width_no_longer_divisible_by_the_head_count():
    model, x = WidthAttn(), jax.random.normal(KEY, (2, 5, 3))
    v = model.init(KEY, x)
    keep = [0, 1, 2, 4, 5, 6, 8, 9, 10, 11]  # 12 -> 10: the qkv width is the kernels', not 10 // 4
    spec = {"params/embed/kernel": {1: keep}, "params/embed/bias": {0: keep}, "params/head/kernel": {0: keep},
            "params/mha/out/kernel": {2: keep}, "params/mha/out/bias": {0: keep}}
    spec |= {f"params/mha/{n}/kernel": {0: keep} for n in ("query", "key", "value")}
    small, masked = _cut(v, spec)
    new = rebuild(model, v, small, example_args=(x,))
    _close(new.apply(small, x), model.apply(masked, x))
