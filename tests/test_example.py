"""The README's notebook example on a model the user writes (linen and nnx), and the demo's digits budget.

``tests/test_docs.py`` runs the README's blocks as written; here the same steps are checked: exact
counts, every kernel pruned at its ERK share, biases untouched, the pruned nnx model still runs.
"""

import sys
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest
from flax import nnx

import jaxprune as jp

ROOT = Path(__file__).resolve().parents[1]


class MLP(nn.Module):  # as in the README: the user's own linen model
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(128)(x.reshape((x.shape[0], -1))))
        return nn.Dense(10)(x)


class NnxMLP(nnx.Module):  # as in the README: the user's own nnx module
    def __init__(self, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(784, 128, rngs=rngs)
        self.out = nnx.Linear(128, 10, rngs=rngs)

    def __call__(self, x):
        return self.out(nnx.relu(self.hidden(x.reshape((x.shape[0], -1)))))


KERNELS = 784 * 128 + 128 * 10


def test_readme_linen_example():
    params = MLP().init(jax.random.PRNGKey(0), jnp.ones((1, 28, 28, 1)))["params"]
    sparsity = jp.erk_sparsity(params, 0.9)
    masks = jp.topk_masks(jp.magnitude_scores(params), sparsity)
    pruned = jp.apply_masks(params, masks)
    s = jp.summary(pruned)
    assert s.prunable["size"] - s.prunable["nonzero"] == jp.num_pruned(0.9, KERNELS)
    assert sparsity["Dense_0"]["bias"] == 0.0 and bool(masks["Dense_1"]["bias"].all())
    assert sparsity["Dense_1"]["kernel"] < sparsity["Dense_0"]["kernel"] < 1.0  # ERK: the small layer keeps more
    assert "Dense_0/kernel" in s.table()


def test_readme_nnx_example():
    model = NnxMLP(nnx.Rngs(0))
    graphdef, state, rest = nnx.split(model, nnx.Param, ...)
    masks = jp.topk_masks(jp.magnitude_scores(state), jp.erk_sparsity(state, 0.9))
    model = nnx.merge(graphdef, jp.apply_masks(state, masks), rest)
    s = jp.summary(nnx.state(model, nnx.Param))
    assert s.prunable["size"] - s.prunable["nonzero"] == jp.num_pruned(0.9, KERNELS)
    assert model(jnp.ones((2, 28, 28, 1))).shape == (2, 10)


def _demo_sweep():
    sys.path.insert(0, str(ROOT / "experiments" / "sweeps"))
    try:
        import demo
    finally:
        sys.path.pop(0)
    return demo


def test_demo_digits_budget(tmp_path):
    # issue 15, item 11(b): without Fashion-MNIST the demo runs on digits with its own budget. One seed
    # of the three runs the requirement names (the demo itself runs 2 seeds x 12 pruned runs + dense).
    from jaxprune.experiment import train_and_evaluate

    demo = _demo_sweep()
    budget = demo.budget("digits")
    assert budget != demo.budget("fashion_mnist")
    acc = {}
    for name, kw in {"dense": dict(method="none", sparsity=0.0, finetune_epochs=0,
                                   epochs=budget["epochs"] + budget["finetune_epochs"]),
                     "magnitude_50": dict(method="one_shot", scorer="magnitude", allocation="global",
                                          sparsity=0.5),
                     "random_90": dict(method="one_shot", scorer="random", allocation="uniform",
                                       sparsity=0.9)}.items():
        config = demo.base_config()
        config.update(budget)
        config.update(dict(dataset="digits", latency_batch=0, progress=False, **kw))
        acc[name] = train_and_evaluate(config, tmp_path / name)["test_accuracy"]
    assert acc["dense"] >= 0.95, acc
    assert acc["magnitude_50"] >= acc["dense"] - 0.01, acc
    assert acc["random_90"] <= acc["dense"] - 0.10, acc  # clearly below: the control works
