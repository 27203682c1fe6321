"""Models a researcher writes themselves, not taken from ``jaxprune.models``.

The kit must be right on these: a linen CNN with BatchNorm and a residual block, an nnx MLP, and an
nnx transformer block with ``nnx.MultiHeadAttention``, an ``Embed`` table, a learned positional table
and LayerNorms. Tests import the builders below; nothing here imports ``jaxprune``.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx


class ResBlock(nn.Module):
    """Two 3x3 convs with BatchNorm and an identity shortcut (the channel count stays)."""

    features: int

    @nn.compact
    def __call__(self, x, train: bool = False):
        y = nn.Conv(self.features, (3, 3), name="conv_a")(x)
        y = nn.BatchNorm(use_running_average=not train, name="bn_a")(y)
        y = nn.relu(y)
        y = nn.Conv(self.features, (3, 3), name="conv_b")(y)
        y = nn.BatchNorm(use_running_average=not train, name="bn_b")(y)
        return nn.relu(x + y)


class UserCNN(nn.Module):
    """stem conv -> BN -> residual block -> pool -> Dense hidden -> Dense classes."""

    classes: int = 10
    width: int = 8
    hidden: int = 32

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(self.width, (3, 3), name="stem")(x)
        x = nn.relu(nn.BatchNorm(use_running_average=not train, name="stem_bn")(x))
        x = ResBlock(self.width, name="block")(x, train=train)
        x = nn.max_pool(x, (2, 2), (2, 2))
        x = x.reshape((x.shape[0], -1))
        x = nn.relu(nn.Dense(self.hidden, name="fc1")(x))
        return nn.Dense(self.classes, name="head")(x)


def user_cnn(key=None, *, classes: int = 10, width: int = 8, hidden: int = 32, image: int = 8):
    """``(module, variables, example_input)`` for :class:`UserCNN` on ``image``x``image``x1 inputs."""
    key = jax.random.PRNGKey(0) if key is None else key
    model = UserCNN(classes=classes, width=width, hidden=hidden)
    x = jax.random.normal(jax.random.fold_in(key, 1), (4, image, image, 1))
    variables = model.init(key, x)
    return model, variables, x


class UserNnxMLP(nnx.Module):
    """``in -> hidden -> hidden -> classes`` with ReLU; attribute names a user would pick."""

    def __init__(self, din: int = 16, hidden: int = 32, classes: int = 10, *, rngs: nnx.Rngs):
        self.inp = nnx.Linear(din, hidden, rngs=rngs)
        self.mid = nnx.Linear(hidden, hidden, rngs=rngs)
        self.out = nnx.Linear(hidden, classes, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.inp(x))
        x = nnx.relu(self.mid(x))
        return self.out(x)


def user_nnx_mlp(seed: int = 0, **kw):
    """``(model, example_input)`` for :class:`UserNnxMLP`."""
    model = UserNnxMLP(rngs=nnx.Rngs(seed), **kw)
    din = kw.get("din", 16)
    return model, jax.random.normal(jax.random.PRNGKey(seed + 1), (4, din))


def nnx_mlp_problem(seed: int = 0):
    """``(params, loss)``: a small :class:`UserNnxMLP` split into its ``nnx.Param`` state and a
    cross-entropy ``loss(params)`` on a fixed batch (for optimizer tests)."""
    import optax

    model, x = user_nnx_mlp(seed, din=8, hidden=16, classes=4)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    y = jnp.arange(x.shape[0]) % 4

    def loss(p):
        logits = nnx.merge(graphdef, p, rest)(x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    return params, loss


class UserNnxTransformer(nnx.Module):
    """Token ``Embed`` + learned positional table, one pre-LN block (causal MHA + GELU MLP), LM head."""

    def __init__(self, vocab: int = 32, width: int = 32, heads: int = 4, context: int = 8,
                 mlp: int = 64, *, rngs: nnx.Rngs):
        self.embed = nnx.Embed(vocab, width, rngs=rngs)
        self.pos = nnx.Param(0.02 * jax.random.normal(rngs.params(), (context, width)))
        self.ln1 = nnx.LayerNorm(width, rngs=rngs)
        self.attn = nnx.MultiHeadAttention(num_heads=heads, in_features=width, decode=False,
                                           rngs=rngs)
        self.ln2 = nnx.LayerNorm(width, rngs=rngs)
        self.fc = nnx.Linear(width, mlp, rngs=rngs)
        self.proj = nnx.Linear(mlp, width, rngs=rngs)
        self.ln_f = nnx.LayerNorm(width, rngs=rngs)
        self.lm_head = nnx.Linear(width, vocab, rngs=rngs)

    def __call__(self, tokens):
        t = tokens.shape[-1]
        x = self.embed(tokens) + self.pos[...][None, :t]
        mask = nnx.make_causal_mask(tokens)
        x = x + self.attn(self.ln1(x), mask=mask)
        x = x + self.proj(nnx.gelu(self.fc(self.ln2(x))))
        return self.lm_head(self.ln_f(x))


def user_nnx_transformer(seed: int = 0, **kw):
    """``(model, example_tokens)`` for :class:`UserNnxTransformer`."""
    model = UserNnxTransformer(rngs=nnx.Rngs(seed), **kw)
    vocab, context = kw.get("vocab", 32), kw.get("context", 8)
    tokens = jax.random.randint(jax.random.PRNGKey(seed + 1), (2, context), 0, vocab)
    return model, tokens


__all__ = ["ResBlock", "UserCNN", "user_cnn", "UserNnxMLP", "user_nnx_mlp", "nnx_mlp_problem", "UserNnxTransformer",
           "user_nnx_transformer"]
