"""A GPT-style decoder-only transformer (linen :class:`GPT` and nnx :class:`NnxGPT`, same layout).

Token + learned positional embedding, ``num_layers`` pre-LN blocks (causal multi-head attention with
separate ``query``/``key``/``value``/``out`` Dense layers, GELU MLP ``fc`` -> ``proj``), a final
LayerNorm and an unembedding (a ``head`` Dense, or the token table itself with ``tied=True``).
Every linear layer is a plain ``(in, out)`` kernel, so the one-shot LM pruners see each projection as
one layer. Both twins name their parameters identically (``blocks_0/query/kernel`` ...), so
``nnx.to_pure_dict(nnx.state(model, nnx.Param))`` is a valid linen ``params`` dict and vice versa.

The LM protocol the one-shot driver (:func:`jaxprune.lm.prune_lm`) relies on: ``embed(tokens)``,
``block(x, index)``, ``unembed(x)``, ``block_names()`` and ``make_block()`` (an unbound linen block
whose params are the subtree ``params[block_names()[i]]``).
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx

__all__ = ["GPT", "GPTBlock", "NnxGPT", "NnxGPTBlock", "causal_attention", "gpt_nano"]

_INIT_STD = 0.02  # GPT-2's initialisation


def causal_attention(q: jax.Array, k: jax.Array, v: jax.Array, num_heads: int) -> jax.Array:
    """Multi-head causal softmax attention of ``(..., T, D)`` projections; returns ``(..., T, D)``.

    >>> x = jnp.ones((1, 3, 4))
    >>> causal_attention(x, x, x, 2).shape
    (1, 3, 4)
    """
    *lead, t, d = q.shape
    hd = d // num_heads

    def heads(a):
        return jnp.swapaxes(a.reshape((*lead, t, num_heads, hd)), -2, -3)  # (..., H, T, hd)

    qh, kh, vh = heads(q), heads(k), heads(v)
    logits = jnp.einsum("...qd,...kd->...qk", qh, kh) / math.sqrt(hd)
    causal = jnp.tril(jnp.ones((t, t), bool)).reshape((1,) * (logits.ndim - 2) + (t, t))
    logits = jnp.where(causal, logits, jnp.finfo(logits.dtype).min)
    out = jnp.einsum("...qk,...kd->...qd", jax.nn.softmax(logits, axis=-1), vh)
    return jnp.swapaxes(out, -2, -3).reshape((*lead, t, d))


def _add_positions(tok: jax.Array, pos: jax.Array) -> jax.Array:
    # (T, D) positions over (..., T, D) tokens, broadcast explicitly (strict rank promotion).
    return tok + pos.reshape((1,) * (tok.ndim - 2) + pos.shape)


class GPTBlock(nn.Module):
    """Pre-LN transformer block: ``x + attn(ln_1(x))`` then ``x + mlp(ln_2(x))``."""

    width: int
    num_heads: int
    mlp_ratio: int = 4

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        init = nn.initializers.normal(_INIT_STD)
        dense = lambda f, name: nn.Dense(f, kernel_init=init, name=name)  # noqa: E731
        h = nn.LayerNorm(name="ln_1")(x)
        a = causal_attention(dense(self.width, "query")(h), dense(self.width, "key")(h),
                             dense(self.width, "value")(h), self.num_heads)
        x = x + dense(self.width, "out")(a)
        h = nn.LayerNorm(name="ln_2")(x)
        h = nn.gelu(dense(self.mlp_ratio * self.width, "fc")(h), approximate=True)
        return x + dense(self.width, "proj")(h)


class GPT(nn.Module):
    """Decoder-only LM; ``__call__(tokens (B, T) int) -> logits (B, T, vocab_size)``, ``T <= context``.

    >>> m = gpt_nano(vocab_size=11, context=8, num_layers=1, width=16, num_heads=2)
    >>> v = m.init(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))
    >>> m.apply(v, jnp.zeros((2, 5), jnp.int32)).shape, m.block_names()
    ((2, 5, 11), ['blocks_0'])
    """

    vocab_size: int
    context: int
    num_layers: int = 4
    num_heads: int = 4
    width: int = 128
    mlp_ratio: int = 4
    tied: bool = False

    def setup(self):
        init = nn.initializers.normal(_INIT_STD)
        self.wte = nn.Embed(self.vocab_size, self.width, embedding_init=init)
        self.wpe = nn.Embed(self.context, self.width, embedding_init=init)
        self.blocks = [self.make_block() for _ in range(self.num_layers)]
        self.ln_f = nn.LayerNorm()
        if not self.tied:
            self.head = nn.Dense(self.vocab_size, use_bias=False, kernel_init=init)

    @nn.nowrap
    def make_block(self) -> GPTBlock:
        """A fresh block module of this model's shape (unbound when called on an unbound model)."""
        return GPTBlock(self.width, self.num_heads, self.mlp_ratio)

    @nn.nowrap
    def block_names(self) -> list[str]:
        """The params keys of the blocks, in order."""
        return [f"blocks_{i}" for i in range(self.num_layers)]

    def embed(self, tokens: jax.Array) -> jax.Array:
        return _add_positions(self.wte(tokens), self.wpe(jnp.arange(tokens.shape[-1])))

    def block(self, x: jax.Array, index: int) -> jax.Array:
        return self.blocks[index](x)

    def unembed(self, x: jax.Array) -> jax.Array:
        x = self.ln_f(x)
        return self.wte.attend(x) if self.tied else self.head(x)

    def __call__(self, tokens: jax.Array) -> jax.Array:
        x = self.embed(tokens)
        for i in range(self.num_layers):
            x = self.block(x, i)
        return self.unembed(x)


def gpt_nano(vocab_size: int = 65, context: int = 64, num_layers: int = 4, num_heads: int = 4,
             width: int = 128, tied: bool = False) -> GPT:
    """nanoGPT's CPU-size character model by default (4 layers, 4 heads, width 128, context 64).

    >>> gpt_nano().width
    128
    """
    return GPT(vocab_size, context, num_layers, num_heads, width, tied=tied)


class NnxGPTBlock(nnx.Module):
    """nnx twin of :class:`GPTBlock` (same parameter names and layouts)."""

    def __init__(self, width: int, num_heads: int, mlp_ratio: int = 4, *, rngs: nnx.Rngs):
        init = nnx.initializers.normal(_INIT_STD)
        self.num_heads = num_heads
        self.ln_1 = nnx.LayerNorm(width, rngs=rngs)
        self.query = nnx.Linear(width, width, kernel_init=init, rngs=rngs)
        self.key = nnx.Linear(width, width, kernel_init=init, rngs=rngs)
        self.value = nnx.Linear(width, width, kernel_init=init, rngs=rngs)
        self.out = nnx.Linear(width, width, kernel_init=init, rngs=rngs)
        self.ln_2 = nnx.LayerNorm(width, rngs=rngs)
        self.fc = nnx.Linear(width, mlp_ratio * width, kernel_init=init, rngs=rngs)
        self.proj = nnx.Linear(mlp_ratio * width, width, kernel_init=init, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = self.ln_1(x)
        x = x + self.out(causal_attention(self.query(h), self.key(h), self.value(h), self.num_heads))
        h = nnx.gelu(self.fc(self.ln_2(x)), approximate=True)
        return x + self.proj(h)


class NnxGPT(nnx.Module):
    """nnx twin of :class:`GPT`; blocks are attributes ``blocks_0`` ... so the layouts match.

    >>> m = NnxGPT(11, 8, num_layers=1, width=16, num_heads=2, rngs=nnx.Rngs(0))
    >>> m(jnp.zeros((2, 5), jnp.int32)).shape
    (2, 5, 11)
    """

    def __init__(self, vocab_size: int, context: int, num_layers: int = 4, num_heads: int = 4,
                 width: int = 128, mlp_ratio: int = 4, tied: bool = False, *, rngs: nnx.Rngs):
        init = nnx.initializers.normal(_INIT_STD)
        self.config = dict(vocab_size=vocab_size, context=context, num_layers=num_layers,
                           num_heads=num_heads, width=width, mlp_ratio=mlp_ratio, tied=tied)
        self.wte = nnx.Embed(vocab_size, width, embedding_init=init, rngs=rngs)
        self.wpe = nnx.Embed(context, width, embedding_init=init, rngs=rngs)
        for i in range(num_layers):
            setattr(self, f"blocks_{i}", NnxGPTBlock(width, num_heads, mlp_ratio, rngs=rngs))
        self.ln_f = nnx.LayerNorm(width, rngs=rngs)
        self.tied = tied
        if not tied:
            self.head = nnx.Linear(width, vocab_size, use_bias=False, kernel_init=init, rngs=rngs)

    def linen_twin(self) -> GPT:
        """The linen :class:`GPT` whose params dict is this model's ``nnx.Param`` state."""
        return GPT(**self.config)

    def __call__(self, tokens: jax.Array) -> jax.Array:
        x = _add_positions(self.wte(tokens), self.wpe(jnp.arange(tokens.shape[-1])))
        for i in range(self.config["num_layers"]):
            x = getattr(self, f"blocks_{i}")(x)
        x = self.ln_f(x)
        return self.wte.attend(x) if self.tied else self.head(x)
