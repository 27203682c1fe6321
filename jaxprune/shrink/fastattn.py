"""A faster lowering of multi-head attention for the short sequences of a small ViT, on XLA:CPU.

flax's ``dot_product_attention`` contracts ``(batch, tokens, heads, head_dim)`` arrays in place
(``'...qhd,...khd->...hqk'`` and back to ``'...qhd'``). XLA:CPU runs those batched products over
thousands of tiny matrices (17 tokens x 16 dims per head in the zoo ViT) and pays for the strided
layout: the ``AV`` product written back to ``(batch, tokens, heads, head_dim)`` alone took 1.4 ms of
the 3.0 ms attention core at batch 256 (4 heads), against 0.24 ms heads-first.
:func:`heads_first_attention` is a drop-in ``attention_fn`` that moves the heads in front
(``(batch, heads, tokens, head_dim)``), computes the same scaled products, bias, mask and softmax,
and moves them back: the same numbers within float rounding, and a faster zoo ViT, dense and shrunk
(``scripts/bench_structure.py``, table in ``docs/structure.md``).

It handles the inference path; a call that needs more (active dropout, ``sow``-ed weights, a causal
flag, custom einsums, mixed dtypes) goes to flax's own function unchanged. :func:`fast_attention`
makes every ``flax.linen.MultiHeadDotProductAttention`` that uses flax's default ``attention_fn`` use
it; :func:`with_fast_attention` does the same for an nnx module. Parameters are untouched.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax import nnx
from flax.linen import attention as linen_attention
from flax.nnx.nn import attention as nnx_attention

from jaxprune.errors import PruningError

__all__ = ["fast_attention", "heads_first_attention", "with_fast_attention"]

_EXTRA_NONE = ("qk_attn_weights_einsum", "attn_weights_value_einsum", "einsum_dot_general")


def _needs_flax(query: jax.Array, key: jax.Array, value: jax.Array, dtype: Any, dropout_rate: float,
                deterministic: bool, module: Any, kwargs: dict[str, Any]) -> bool:
    if module is not None or (not deterministic and dropout_rate > 0.0):
        return True
    if kwargs.get("is_causal") or any(kwargs.get(k) is not None for k in _EXTRA_NONE):
        return True
    if not (query.dtype == key.dtype == value.dtype) or (dtype is not None and dtype != query.dtype):
        return True
    return not jnp.issubdtype(query.dtype, jnp.floating) or query.ndim < 3


def heads_first_attention(query: jax.Array, key: jax.Array, value: jax.Array,
                          bias: jax.Array | None = None, mask: jax.Array | None = None,
                          broadcast_dropout: bool = True, dropout_rng: Any = None,
                          dropout_rate: float = 0.0, deterministic: bool = False, dtype: Any = None,
                          precision: Any = None, module: Any = None,
                          force_fp32_for_softmax: bool = False,
                          fallback: Callable[..., jax.Array] = linen_attention.dot_product_attention,
                          **kwargs: Any) -> jax.Array:
    """Drop-in ``flax.linen.dot_product_attention`` computed with the heads axis in front.

    ``query``, ``key``, ``value``: ``(..., tokens, heads, head_dim)``; ``bias`` and ``mask`` broadcast
    to ``(..., heads, q_tokens, kv_tokens)`` as in flax. Calls that need dropout, sown weights, a
    causal flag, custom einsums or dtype promotion go to ``fallback`` (flax's function) unchanged.

    Example:
        >>> q = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 3, 4))
        >>> a = heads_first_attention(q, q, q)
        >>> bool(jnp.allclose(a, nn.dot_product_attention(q, q, q), atol=1e-6)), a.shape
        (True, (2, 5, 3, 4))
    """
    if _needs_flax(query, key, value, dtype, dropout_rate, deterministic, module, kwargs):
        if force_fp32_for_softmax:
            kwargs["force_fp32_for_softmax"] = True
        return fallback(query, key, value, bias, mask, broadcast_dropout, dropout_rng, dropout_rate,
                        deterministic, dtype, precision, module, **kwargs)
    if query.shape[-1] != key.shape[-1] or key.shape[:-1] != value.shape[:-1]:
        raise PruningError(f"heads_first_attention: query {query.shape}, key {key.shape} and value "
                           f"{value.shape} do not fit (..., tokens, heads, head_dim)")
    dtype = query.dtype
    q = jnp.swapaxes(query / jnp.sqrt(query.shape[-1]).astype(dtype), -3, -2)
    k, v = jnp.swapaxes(key, -3, -2), jnp.swapaxes(value, -3, -2)
    weights = jnp.einsum("...hqd,...hkd->...hqk", q, k, precision=precision)
    if bias is not None:
        weights = weights + bias
    if mask is not None:
        weights = jnp.where(mask, weights, jnp.finfo(dtype).min)
    if force_fp32_for_softmax and dtype != jnp.float32:
        weights = jax.nn.softmax(weights.astype(jnp.float32))
    else:
        weights = jax.nn.softmax(weights).astype(dtype)
    out = jnp.einsum("...hqk,...hkd->...hqd", weights, v, precision=precision)
    return jnp.swapaxes(out, -3, -2)


def _nnx_heads_first(query: jax.Array, key: jax.Array, value: jax.Array, *args: Any,
                     **kwargs: Any) -> jax.Array:
    return heads_first_attention(query, key, value, *args, fallback=nnx_attention.dot_product_attention,
                                 **kwargs)


def _swap_linen_attention(next_fun, args, kwargs, context):
    module = context.module
    if (context.method_name != "__call__" or not isinstance(module, nn.MultiHeadDotProductAttention)
            or module.attention_fn is not linen_attention.dot_product_attention):
        return next_fun(*args, **kwargs)
    # the bound module is a frozen dataclass: the field is set for this one call and restored after
    object.__setattr__(module, "attention_fn", heads_first_attention)
    try:
        return next_fun(*args, **kwargs)
    finally:
        object.__setattr__(module, "attention_fn", linen_attention.dot_product_attention)


@contextlib.contextmanager
def fast_attention() -> Iterator[None]:
    """Inside this context every linen ``MultiHeadDotProductAttention`` uses :func:`heads_first_attention`.

    Attention layers with their own ``attention_fn`` keep it. Trace (jit) inside the context; the
    compiled function keeps the lowering it was traced with.

    Example:
        >>> from jaxprune.models.vit import ViT
        >>> m = ViT(10, patch=7, width=8, depth=1, num_heads=2, mlp_dim=16)
        >>> v = m.init(jax.random.PRNGKey(0), jnp.ones((1, 28, 28, 1)))
        >>> x = jax.random.normal(jax.random.PRNGKey(1), (2, 28, 28, 1))
        >>> with fast_attention():
        ...     y = jax.jit(m.apply)(v, x)
        >>> bool(jnp.allclose(y, m.apply(v, x), atol=1e-5))
        True
    """
    with nn.intercept_methods(_swap_linen_attention):
        yield


def with_fast_attention(module: nnx.Module) -> nnx.Module:
    """A copy of an nnx module whose ``nnx.MultiHeadAttention`` layers use :func:`heads_first_attention`.

    Same parameters (the arrays are shared, not copied); layers with a custom ``attention_fn`` keep it.

    Example:
        >>> m = nnx.MultiHeadAttention(2, 8, decode=False, rngs=nnx.Rngs(0))
        >>> fast = with_fast_attention(m)
        >>> x = jax.random.normal(jax.random.PRNGKey(1), (2, 5, 8))
        >>> bool(jnp.allclose(fast(x), m(x), atol=1e-5)), fast.attention_fn is m.attention_fn
        (True, False)
    """
    if not isinstance(module, nnx.Module):
        raise PruningError(f"with_fast_attention: expected a flax.nnx.Module, got {type(module).__name__}")
    copy = nnx.clone(module)
    for _, sub in nnx.iter_modules(copy):
        if (isinstance(sub, nnx.MultiHeadAttention)
                and sub.attention_fn is nnx_attention.dot_product_attention):
            sub.attention_fn = _nnx_heads_first
    return copy
