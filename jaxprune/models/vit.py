"""A small Vision Transformer (Dosovitskiy et al. 2021): linen :class:`ViT` and nnx :class:`NnxViT`.

A ``patch``x``patch`` stride-``patch`` conv embeds the patches (``patch_embed``), a learned class token
(``cls_token``, shape (1, 1, width)) is prepended and a learned positional table (``pos_embed``,
shape (1 + patches, width)) added; ``depth`` pre-LN blocks ``blocks_<i>`` compute
``x + attn(ln_1(x))`` (multi-head self-attention: flax ``MultiHeadDotProductAttention`` /
``nnx.MultiHeadAttention``, kernels (width, heads, head_dim) and (heads, head_dim, width)) and
``x + proj(gelu(fc(ln_2(x))))``; a final LayerNorm ``ln_f`` and a Dense ``head`` read the class token.
Both twins name every leaf alike, so ``nnx.to_pure_dict(nnx.state(m, nnx.Param))`` is the linen
``params`` tree. Default sizes suit 28x28 Fashion-MNIST (patch 7: 16 patches, width 64, 4 blocks, 4
heads, MLP 128).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax import nnx

from jaxprune.errors import PruningError
from jaxprune.models.common import sow_activation, sow_activation_nnx

__all__ = ["NnxViT", "NnxViTBlock", "ViT", "ViTBlock"]

_INIT_STD = 0.02  # class token and positional table (ViT's truncated-normal scale)


def _check(x: jax.Array, patch: int, model: str) -> None:
    if x.ndim != 4 or x.shape[1] % patch or x.shape[2] % patch:
        raise PruningError(f"{model}: expected input (N, H, W, C) with H and W multiples of "
                           f"patch={patch}, got {x.shape}")


def _check_heads(width: int, num_heads: int, model: str) -> None:
    if int(num_heads) < 1 or int(width) % int(num_heads):
        raise PruningError(f"{model}: width={width} must be a multiple of num_heads={num_heads}")


def _tokens(patches: jax.Array, cls: jax.Array, pos: jax.Array) -> jax.Array:
    """(N, h, w, D) patch embeddings -> (N, 1 + h*w, D) tokens with class token and positions."""
    n, h, w, d = patches.shape
    if pos.shape[0] != 1 + h * w:
        raise PruningError(f"ViT: pos_embed has {pos.shape[0]} rows but the image gives {h * w} "
                           f"patches + 1 class token")
    x = jnp.concatenate([jnp.broadcast_to(cls, (n, 1, d)), patches.reshape(n, h * w, d)], axis=1)
    return x + pos[None]


class ViTBlock(nn.Module):
    """Pre-LN encoder block: ``x + attn(ln_1(x))`` then ``x + proj(gelu(fc(ln_2(x))))``.

    Example:
        >>> b = ViTBlock(num_heads=2, mlp_dim=8)
        >>> v = b.init(jax.random.PRNGKey(0), jnp.ones((1, 5, 4)))
        >>> b.apply(v, jnp.ones((2, 5, 4))).shape, v['params']['attn']['query']['kernel'].shape
        ((2, 5, 4), (4, 2, 2))
    """

    num_heads: int
    mlp_dim: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        width = x.shape[-1]
        h = nn.LayerNorm(name="ln_1")(x)
        x = x + nn.MultiHeadDotProductAttention(self.num_heads, name="attn")(h)
        fc = nn.Dense(int(self.mlp_dim), name="fc")
        h = sow_activation(fc, nn.gelu(fc(nn.LayerNorm(name="ln_2")(x)), approximate=False))
        return x + nn.Dense(width, name="proj")(h)


class ViT(nn.Module):
    """Vision Transformer classifier; ``__call__(x (N, H, W, C)) -> logits``.

    Example (a tiny copy):
        >>> m = ViT(10, patch=7, width=8, depth=1, num_heads=2, mlp_dim=16)
        >>> v = m.init(jax.random.PRNGKey(0), jnp.ones((1, 28, 28, 1)))
        >>> m.apply(v, jnp.ones((2, 28, 28, 1))).shape, v['params']['pos_embed'].shape
        ((2, 10), (17, 8))
    """

    num_classes: int = 10
    patch: int = 7
    width: int = 64
    depth: int = 4
    num_heads: int = 4
    mlp_dim: int = 128

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        _check(x, self.patch, "ViT")
        # No width % num_heads check here: a shrunk ViT (jaxprune.structure.rebuild) keeps its heads'
        # qkv_features while its residual width shrinks; flax's attention checks a fresh model itself.
        p = (int(self.patch),) * 2
        patches = nn.Conv(int(self.width), p, strides=p, padding="VALID", name="patch_embed")(x)
        init = nn.initializers.normal(_INIT_STD)
        cls = self.param("cls_token", init, (1, 1, int(self.width)))
        n_tok = 1 + (x.shape[1] // self.patch) * (x.shape[2] // self.patch)
        pos = self.param("pos_embed", init, (n_tok, int(self.width)))
        x = _tokens(patches, cls, pos)
        for i in range(int(self.depth)):
            x = ViTBlock(self.num_heads, self.mlp_dim, name=f"blocks_{i}")(x)
        return nn.Dense(int(self.num_classes), name="head")(nn.LayerNorm(name="ln_f")(x)[:, 0])


class NnxViTBlock(nnx.Module):
    """nnx twin of :class:`ViTBlock` (same leaf names and layouts).

    Example:
        >>> b = NnxViTBlock(4, num_heads=2, mlp_dim=8, rngs=nnx.Rngs(0))
        >>> b(jnp.ones((2, 5, 4))).shape
        (2, 5, 4)
    """

    def __init__(self, width: int, num_heads: int, mlp_dim: int, *, rngs: nnx.Rngs):
        self.ln_1 = nnx.LayerNorm(width, rngs=rngs)
        self.attn = nnx.MultiHeadAttention(num_heads, width, decode=False, rngs=rngs)
        self.ln_2 = nnx.LayerNorm(width, rngs=rngs)
        self.fc = nnx.Linear(width, int(mlp_dim), rngs=rngs)
        self.proj = nnx.Linear(int(mlp_dim), width, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x + self.attn(self.ln_1(x))
        h = sow_activation_nnx(self.fc, nnx.gelu(self.fc(self.ln_2(x)), approximate=False))
        return x + self.proj(h)


class NnxViT(nnx.Module):
    """nnx twin of :class:`ViT`; ``image`` is the (H, W, C) input shape (it sizes ``pos_embed``).

    Example:
        >>> m = NnxViT(10, image=(28, 28, 1), patch=7, width=8, depth=1, num_heads=2, mlp_dim=16,
        ...            rngs=nnx.Rngs(0))
        >>> m(jnp.ones((2, 28, 28, 1))).shape, m.cls_token.shape
        ((2, 10), (1, 1, 8))
    """

    def __init__(self, num_classes: int = 10, *, image: tuple[int, int, int] = (28, 28, 1),
                 patch: int = 7, width: int = 64, depth: int = 4, num_heads: int = 4,
                 mlp_dim: int = 128, rngs: nnx.Rngs):
        h, w, c = (int(d) for d in image)
        if h % patch or w % patch:
            raise PruningError(f"NnxViT: image {tuple(image)} is not a whole number of "
                               f"patch={patch} patches")
        _check_heads(width, num_heads, "NnxViT")
        self.patch, self.depth = int(patch), int(depth)
        p = (self.patch,) * 2
        self.patch_embed = nnx.Conv(c, int(width), p, strides=p, padding="VALID", rngs=rngs)
        init = nnx.initializers.normal(_INIT_STD)
        self.cls_token = nnx.Param(init(rngs.params(), (1, 1, int(width))))
        self.pos_embed = nnx.Param(init(rngs.params(), (1 + (h // patch) * (w // patch), int(width))))
        for i in range(self.depth):
            setattr(self, f"blocks_{i}", NnxViTBlock(int(width), num_heads, mlp_dim, rngs=rngs))
        self.ln_f = nnx.LayerNorm(int(width), rngs=rngs)
        self.head = nnx.Linear(int(width), int(num_classes), rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        _check(x, self.patch, "NnxViT")
        x = _tokens(self.patch_embed(x), self.cls_token[...], self.pos_embed[...])
        for i in range(self.depth):
            x = getattr(self, f"blocks_{i}")(x)
        return self.head(self.ln_f(x)[:, 0])
