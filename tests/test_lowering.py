"""jaxprune.shrink.lowering: fast_lowerings() swaps in both CPU lowerings and changes no output."""

import jax
import numpy as np
from flax import linen as nn

from jaxprune.shrink import fast_lowerings


class ConvAttn(nn.Module):
    """A user's model: a small conv, a depthwise conv, then self-attention over the pixels."""

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(8, (3, 3))(x))
        x = nn.Conv(8, (3, 3), feature_group_count=8)(x)
        t = x.reshape(x.shape[0], -1, 8)
        t = t + nn.MultiHeadDotProductAttention(2)(nn.LayerNorm()(t))
        return nn.Dense(3)(t.mean(1))


def test_fast_lowerings_swap_convs_and_attention_and_keep_outputs():
    m = ConvAttn()
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 6, 6, 1))
    v = m.init(jax.random.PRNGKey(0), x)
    plain = str(jax.make_jaxpr(m.apply)(v, x))
    with fast_lowerings():
        fast = str(jax.make_jaxpr(m.apply)(v, x))
        y = jax.jit(m.apply)(v, x)
    assert plain.count("conv_general_dilated") == 2 and fast.count("conv_general_dilated") == 0
    # flax's attention contracts (batch, tokens, heads, head_dim) in place; the fast one moves the
    # heads first, so its jaxpr has transposes the plain one does not
    assert fast.count("transpose") > plain.count("transpose")
    np.testing.assert_allclose(np.asarray(y), np.asarray(m.apply(v, x)), rtol=1e-5, atol=1e-5)
    assert str(jax.make_jaxpr(m.apply)(v, x)) == plain  # the context leaves nothing behind
