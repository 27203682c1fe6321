"""jaxprune.wiring: output kernels and reduction axes read from the jaxpr of the user's own models."""

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

import jaxprune as jp
from jaxprune.wiring import kernel_uses, output_kernels, reduction_axes

from user_models import user_cnn, user_nnx_mlp, user_nnx_transformer


def _linen_fn():
    model, variables, x = user_cnn()
    rest = {k: v for k, v in variables.items() if k != "params"}
    return (lambda p, x: model.apply({"params": p, **rest}, x)), variables["params"], x


def _nnx_fn(build):
    model, x = build()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def fn(p, x):
        # The user's transformer adds a (t, width) positional table to (batch, t, width) embeddings.
        with jax.numpy_rank_promotion("allow"):
            return nnx.merge(graphdef, p, rest)(x)

    return fn, params, x


def test_output_kernels_of_user_models():
    assert output_kernels(*_linen_fn()) == ["head/kernel"]
    assert output_kernels(*_nnx_fn(user_nnx_mlp)) == ["out/kernel"]
    # Attention's QK^T and AV products and the residual stream do not hide the LM head; the Embed
    # table (looked up, not contracted) and the positional table are not kernels.
    assert output_kernels(*_nnx_fn(user_nnx_transformer)) == ["lm_head/kernel"]


def test_output_kernels_without_a_head_and_with_tied_embedding():
    p = {"a": jnp.ones((4, 4)), "b": jnp.ones((4, 4)), "emb": jnp.ones((10, 4))}

    def residual(p, x):  # both branches reach the output through a residual add
        return x @ p["a"] + jnp.tanh(x @ p["b"])

    assert output_kernels(residual, p, jnp.ones((2, 4))) == ["a", "b"]

    def tied(p, tok):  # an LM whose head is the embedding table (attend = x @ E^T)
        h = jnp.take(p["emb"], tok, axis=0) @ p["a"]
        return h @ p["emb"].T

    assert output_kernels(tied, p, jnp.array([1, 2])) == ["emb"]


def test_reduction_axes_of_user_models():
    assert reduction_axes(*_linen_fn()) == {"stem/kernel": 2, "block/conv_a/kernel": 2,
                                            "block/conv_b/kernel": 2, "fc1/kernel": 0,
                                            "head/kernel": 0}
    axes = reduction_axes(*_nnx_fn(user_nnx_transformer))
    # q/k/v kernels (in, heads, head_dim) contract `in`; out (heads, head_dim, out) contracts both
    # heads and head_dim: the innermost one is given.
    assert {k: axes[k] for k in ("attn/query/kernel", "attn/key/kernel", "attn/value/kernel",
                                 "attn/out/kernel")} == {"attn/query/kernel": 0, "attn/key/kernel": 0,
                                                         "attn/value/kernel": 0, "attn/out/kernel": 1}
    assert axes["fc/kernel"] == 0 and "embed/embedding" not in axes and "pos" not in axes


def test_layout_ops_are_followed():
    p = {"w": jnp.ones((2, 4, 6)), "t": jnp.ones((6, 8))}

    def fn(p, x):
        w = p["w"].reshape(8, 6).astype(jnp.bfloat16).astype(jnp.float32)  # merge (2, 4) -> 8
        return x @ w @ p["t"].T.T

    assert reduction_axes(fn, p, jnp.ones((1, 8))) == {"w": 1, "t": 0}
    assert kernel_uses(fn, p, jnp.ones((1, 8))) == [jp.wiring.KernelUse("w", (1,)),
                                                      jp.wiring.KernelUse("t", (0,))]


def test_refuses_what_it_cannot_follow():
    p = {"w": jnp.ones((4, 4))}

    def looped(p, x):
        return jax.lax.fori_loop(0, 3, lambda i, h: jnp.tanh(h @ p["w"]), x)

    with pytest.raises(jp.PruningError, match="'w'.*(scan|while)"):
        output_kernels(looped, p, jnp.ones((1, 4)))
    with pytest.raises(jp.PruningError, match="'w'.*cond"):
        output_kernels(lambda p, x: jax.lax.cond(x.sum() > 0, lambda: x @ p["w"], lambda: x), p,
                       jnp.ones((1, 4)))
    with pytest.raises(jp.PruningError, match="'w'.*contracted along axis"):
        reduction_axes(lambda p, x: x @ p["w"] + (x @ p["w"].T), p, jnp.ones((1, 4)))
    with pytest.raises(jp.PruningError, match="failed to trace"):
        output_kernels(lambda p, x: x @ p["missing"], p, jnp.ones((1, 4)))


def test_core_test_files_run_under_strict_dtype_promotion():
    """conftest's STRICT_DTYPE_FILES fixture is on here: an implicit int32 + float32 promotion raises."""
    import jax.numpy as jnp

    with pytest.raises(Exception, match="promot"):
        jnp.ones(2, jnp.float32) + jnp.ones(2, jnp.int32)
