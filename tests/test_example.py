"""The README's notebook example, linen and nnx, run as written there."""

import jax
import pytest
from flax import nnx

import jaxprune as jp
from jaxprune.models import NnxMLP, init_params, tutorial_mlp


def test_readme_linen_example():
    params = init_params(tutorial_mlp(), jax.random.PRNGKey(0), (1, 28, 28, 1))
    scores = jp.magnitude_scores(params)
    sparsity = jp.erk_sparsity(params, 0.9)
    masks = jp.topk_masks(scores, sparsity)
    pruned = jp.apply_masks(params, masks)
    s = jp.summary(pruned)
    print(s.table())
    assert s.prunable["size"] - s.prunable["nonzero"] == jp.num_pruned(0.9, 784 * 128 + 128 * 10)
    assert "params/Dense_0/kernel" in s.table()


def test_readme_nnx_example():
    model = NnxMLP(784, (128, 10), rngs=nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    masks = jp.topk_masks(jp.magnitude_scores(params), jp.erk_sparsity(params, 0.9))
    params = jp.apply_masks(params, masks)
    model = nnx.merge(graphdef, params, rest)
    s = jp.summary(nnx.state(model, nnx.Param))
    assert s.prunable["sparsity"] == pytest.approx(0.9, abs=1e-5)
    assert model(jax.numpy.ones((2, 784))).shape == (2, 10)
