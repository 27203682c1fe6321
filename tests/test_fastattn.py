"""jaxprune.shrink.fastattn: heads-first attention equals flax's; the linen and nnx hooks."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import nnx

import jaxprune.shrink.fastattn as fastattn
from jaxprune.errors import PruningError
from jaxprune.shrink.fastattn import fast_attention, heads_first_attention, with_fast_attention


def _qkv(shape, seed=0, dtype=jnp.float32):
    ks = jax.random.split(jax.random.PRNGKey(seed), 3)
    return tuple(jax.random.normal(k, shape, dtype) for k in ks)


@pytest.mark.parametrize("shape", [(3, 7, 2, 4), (2, 3, 5, 1, 8), (7, 3, 6)])
def test_equals_flax_with_bias_and_mask(shape):
    q, k, v = _qkv(shape)
    *lead, t, h, _ = shape
    bias = jax.random.normal(jax.random.PRNGKey(5), (*lead, h, t, t))
    mask = jax.random.bernoulli(jax.random.PRNGKey(6), 0.7, (*lead, 1, t, t)).at[..., 0].set(True)
    for kw in ({}, {"bias": bias}, {"mask": mask}, {"bias": bias, "mask": mask}):
        want = nn.dot_product_attention(q, k, v, **kw)
        got = heads_first_attention(q, k, v, **kw)
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, atol=2e-6, rtol=1e-5)
    # cross attention: other kv length
    kk, vv = (a[..., :3, :, :] for a in (k, v))
    np.testing.assert_allclose(heads_first_attention(q, kk, vv), nn.dot_product_attention(q, kk, vv),
                               atol=2e-6, rtol=1e-5)


def test_bfloat16_and_fp32_softmax_follow_flax():
    q, k, v = _qkv((2, 6, 2, 8), dtype=jnp.bfloat16)
    for fp32 in (False, True):
        want = nn.dot_product_attention(q, k, v, force_fp32_for_softmax=fp32)
        got = heads_first_attention(q, k, v, force_fp32_for_softmax=fp32)
        assert got.dtype == want.dtype
        np.testing.assert_allclose(np.float32(got), np.float32(want), atol=2e-2)


def test_dropout_and_dtype_promotion_go_to_flax_unchanged():
    q, k, v = _qkv((2, 6, 2, 4))
    rng = jax.random.PRNGKey(3)
    kw = dict(dropout_rng=rng, dropout_rate=0.5, deterministic=False)
    np.testing.assert_array_equal(heads_first_attention(q, k, v, **kw), nn.dot_product_attention(q, k, v, **kw))
    k16 = k.astype(jnp.bfloat16)
    np.testing.assert_array_equal(heads_first_attention(q, k16, v), nn.dot_product_attention(q, k16, v))
    with pytest.raises(PruningError, match="do not fit"):
        heads_first_attention(q, k[..., :3], v)


class _Block(nn.Module):
    """A user's pre-LN causal decoder block with their own attention settings."""

    heads: int = 2

    @nn.compact
    def __call__(self, x):
        mask = nn.make_causal_mask(jnp.ones(x.shape[:2]))
        h = nn.LayerNorm()(x)
        x = x + nn.MultiHeadDotProductAttention(self.heads, qkv_features=12, name="self_attn")(h, mask=mask)
        # a layer that sets its own attention_fn keeps it
        x = x + nn.MultiHeadDotProductAttention(self.heads, attention_fn=_own_attention, name="own")(x)
        return nn.Dense(x.shape[-1])(nn.gelu(nn.Dense(16)(x)))


def _own_attention(q, k, v, **kw):
    kw.pop("is_causal", None)  # nnx passes it; flax's linen function has no such argument
    return nn.dot_product_attention(q, k, v, **kw) * 0.5


def test_linen_context_swaps_default_attention_only(monkeypatch):
    m = _Block()
    x = jax.random.normal(jax.random.PRNGKey(1), (3, 9, 8))
    v = m.init(jax.random.PRNGKey(0), x)
    want = m.apply(v, x)
    calls = []

    @functools.wraps(heads_first_attention)  # flax passes only the keywords the signature names
    def counting(*args, **kwargs):
        calls.append(args[0].shape)
        return heads_first_attention(*args, **kwargs)

    monkeypatch.setattr(fastattn, "heads_first_attention", counting)
    with fast_attention():
        got = jax.jit(m.apply)(v, x)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
    assert calls == [(3, 9, 2, 6)]  # the default layer only, once (at trace time)
    assert m.apply(v, x) is not None and len(calls) == 1  # outside the context: flax's own


def test_linen_vit_shrunk_and_dense_unchanged_under_the_context():
    from jaxprune.models.vit import ViT
    from jaxprune.structure import prune_structured

    m = ViT(10, width=16, depth=2, num_heads=4, mlp_dim=32)
    x = jnp.zeros((1, 28, 28, 1))
    v = m.init(jax.random.PRNGKey(0), x)
    small, sv = prune_structured(m, v, x, 0.5)
    xs = jax.random.normal(jax.random.PRNGKey(2), (4, 28, 28, 1))
    for model, variables in ((m, v), (small, sv)):
        want = model.apply(variables, xs)
        with fast_attention():
            got = jax.jit(model.apply)(variables, xs)
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def test_nnx_copy_uses_heads_first_and_keeps_the_params():
    class Net(nnx.Module):
        def __init__(self, rngs):
            self.attn = nnx.MultiHeadAttention(2, 8, qkv_features=12, decode=False, rngs=rngs)
            self.own = nnx.MultiHeadAttention(2, 8, decode=False, attention_fn=_own_attention, rngs=rngs)

        def __call__(self, x):
            return self.own(self.attn(x, mask=nnx.make_causal_mask(jnp.ones(x.shape[:2]))))

    net = Net(nnx.Rngs(0))
    fast = with_fast_attention(net)
    x = jax.random.normal(jax.random.PRNGKey(1), (3, 7, 8))
    np.testing.assert_allclose(fast(x), net(x), atol=1e-5, rtol=1e-5)
    assert fast.attn.attention_fn is not net.attn.attention_fn
    assert fast.own.attention_fn is _own_attention
    np.testing.assert_array_equal(fast.attn.query.kernel[...], net.attn.query.kernel[...])
    with pytest.raises(PruningError, match="nnx.Module"):
        with_fast_attention(_Block())
