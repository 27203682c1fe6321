"""Zoo architectures of issue 17: ResNet-18 (CIFAR stem), MobileNetV2-style, ViT; linen and nnx twins.

Default sizes are checked with ``jax.eval_shape`` (no compilation); runs use tiny copies.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxprune.errors import PruningError
from jaxprune.models import ACTIVATIONS
from jaxprune.models.mobilenet import MobileNetV2, NnxMobileNetV2, block_specs, make_divisible
from jaxprune.models.resnet18 import NnxResNet18, ResNet18
from jaxprune.models.vit import NnxViT, ViT

TINY_MOBILE = dict(width=0.25, divisor=4, blocks=((1, 16, 1, 1), (6, 24, 2, 2)), last_channels=32)
TINY_VIT = dict(patch=7, width=8, depth=1, num_heads=2, mlp_dim=16)


def tiny(name, seed=0):
    """(linen model, nnx twin) of a tiny zoo model on 28x28x1 inputs."""
    rngs = nnx.Rngs(seed)
    if name == "resnet18":
        kw = dict(stage_channels=(4, 8), blocks_per_stage=1)
        return ResNet18(10, **kw), NnxResNet18(10, in_channels=1, rngs=rngs, **kw)
    if name == "mobilenet":
        return MobileNetV2(10, **TINY_MOBILE), NnxMobileNetV2(10, in_channels=1, rngs=rngs, **TINY_MOBILE)
    return ViT(10, **TINY_VIT), NnxViT(10, image=(28, 28, 1), rngs=rngs, **TINY_VIT)


def count(tree):
    return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


def abstract_init(model, shape):
    return jax.eval_shape(lambda k: model.init(k, jnp.zeros(shape)), jax.random.PRNGKey(0))


def conv(k, cin, cout, bias=False):
    return k * k * cin * cout + (cout if bias else 0)


def dense(din, dout):
    return din * dout + dout


def bn(c):
    return 2 * c  # scale + bias (the running mean/var are batch_stats, not params)


# Hand counts of the tiny copies, layer by layer.
HAND = {
    "resnet18": (conv(3, 1, 4) + bn(4)                                        # stem
                 + 2 * (conv(3, 4, 4) + bn(4))                                # block 0: 4 -> 4
                 + conv(3, 4, 8) + conv(3, 8, 8) + 2 * bn(8)                  # block 1: 4 -> 8, /2
                 + conv(1, 4, 8) + bn(8)                                      # its projection
                 + dense(8, 10)),
    # width 0.25, divisor 4: stem 8; (1,16,1,1) -> 4; (6,24,2,2) -> 8 (6 rounds up to 8); last 32
    "mobilenet": (conv(3, 1, 8) + bn(8)
                  + conv(3, 1, 8) + bn(8) + conv(1, 8, 4) + bn(4)             # t=1: no expand
                  + conv(1, 4, 24) + bn(24) + conv(3, 1, 24) + bn(24) + conv(1, 24, 8) + bn(8)
                  + conv(1, 8, 48) + bn(48) + conv(3, 1, 48) + bn(48) + conv(1, 48, 8) + bn(8)
                  + conv(1, 8, 32) + bn(32) + dense(32, 10)),
    "vit": (conv(7, 1, 8, bias=True) + 8 + 17 * 8                              # patches, cls, pos
            + 2 * 8 + 4 * dense(8, 8) + 2 * 8 + dense(8, 16) + dense(16, 8)    # one block
            + 2 * 8 + dense(8, 10)),                                           # ln_f, head
}


@pytest.mark.parametrize("name", sorted(HAND))
def test_tiny_param_counts_match_hand_counts_in_both_twins(name):
    model, twin = tiny(name)
    assert count(abstract_init(model, (1, 28, 28, 1))["params"]) == HAND[name]
    assert count(nnx.state(twin, nnx.Param)) == HAND[name]


def test_default_sizes_match_the_published_counts():
    # CIFAR ResNet-18 (3-channel 32x32, 10 classes): 11,173,962, the count every CIFAR repo reports.
    assert count(abstract_init(ResNet18(10), (1, 32, 32, 3))["params"]) == 11_173_962
    # torchvision mobilenet_v2: 3,504,872 with 1000 classes; the head is Linear(1280, classes).
    mobile = count(abstract_init(MobileNetV2(10), (1, 28, 28, 3))["params"])
    assert mobile == 3_504_872 - dense(1280, 1000) + dense(1280, 10)


@pytest.mark.parametrize("model, logits", [(ResNet18(10), (2, 10)), (MobileNetV2(7), (2, 7)),
                                           (ViT(10), (2, 10))])
def test_default_models_run_on_fashion_mnist_shapes(model, logits):
    v = abstract_init(model, (1, 28, 28, 1))
    out = jax.eval_shape(lambda v, x: model.apply(v, x), v, jnp.zeros((2, 28, 28, 1)))
    assert out.shape == logits


def test_vit_pos_table_and_heads_layout():
    v = abstract_init(ViT(10), (1, 28, 28, 1))["params"]
    assert v["pos_embed"].shape == (17, 64) and v["cls_token"].shape == (1, 1, 64)
    assert v["blocks_3"]["attn"]["query"]["kernel"].shape == (64, 4, 16)
    assert v["blocks_0"]["attn"]["out"]["kernel"].shape == (4, 16, 64)


def test_mobilenet_depthwise_and_residual_layout():
    specs = block_specs(TINY_MOBILE["blocks"], 8, 0.25, 4)
    assert [s.residual for s in specs] == [False, False, True]
    v = abstract_init(MobileNetV2(10, **TINY_MOBILE), (1, 28, 28, 1))["params"]
    assert v["blocks_2"]["depthwise"]["kernel"].shape == (3, 3, 1, 48)
    assert "expand" not in v["blocks_0"] and v["blocks_1"]["expand"]["kernel"].shape == (1, 1, 4, 24)
    assert make_divisible(24 * 0.5) == 16 and make_divisible(20, 8) == 24


def load_into(twin, variables):
    """Copy linen variables into the nnx twin; the leaf paths and shapes must agree exactly."""
    for kind, col in ((nnx.Param, "params"), (nnx.BatchStat, "batch_stats")):
        state = nnx.state(twin, kind)
        pure = nnx.to_pure_dict(state)
        theirs = variables.get(col, {})
        assert jax.tree.structure(pure) == jax.tree.structure(theirs), col
        assert jax.tree.map(jnp.shape, pure) == jax.tree.map(jnp.shape, theirs), col
        nnx.replace_by_pure_dict(state, theirs)
        nnx.update(twin, state)


def perturbed(variables, key):
    """Random values everywhere (BN statistics too, variances kept positive), so no leaf is idle."""
    flat, tree = jax.tree_util.tree_flatten_with_path(variables)
    keys = jax.random.split(key, len(flat))

    def one(path, x, k):
        noise = 0.1 * jax.random.normal(k, x.shape)
        return jnp.abs(x + noise) + 0.5 if jax.tree_util.keystr(path).endswith("'var']") else x + noise

    return jax.tree.unflatten(tree, [one(p, x, k) for (p, x), k in zip(flat, keys)])


@pytest.mark.parametrize("name", sorted(HAND))
def test_nnx_twin_gives_the_linen_output_from_the_same_params(name):
    model, twin = tiny(name)
    x = jax.random.normal(jax.random.PRNGKey(1), (3, 28, 28, 1))
    v = perturbed(model.init(jax.random.PRNGKey(0), x[:1]), jax.random.PRNGKey(2))
    load_into(twin, v)
    np.testing.assert_allclose(np.asarray(twin(x)), np.asarray(model.apply(v, x)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["resnet18", "mobilenet"])
def test_batchnorm_train_mode_matches_and_updates_the_statistics(name):
    model, twin = tiny(name)
    x = jax.random.normal(jax.random.PRNGKey(1), (4, 28, 28, 1))
    v = perturbed(model.init(jax.random.PRNGKey(0), x[:1]), jax.random.PRNGKey(2))
    load_into(twin, v)
    out, upd = model.apply(v, x, train=True, mutable=["batch_stats"])
    assert not np.allclose(out, model.apply(v, x))  # batch statistics differ from the running ones
    np.testing.assert_allclose(np.asarray(twin(x, train=True)), np.asarray(out), rtol=1e-4, atol=1e-5)
    new = nnx.to_pure_dict(nnx.state(twin, nnx.BatchStat))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), new,
                 jax.tree.map(np.asarray, upd["batch_stats"]))
    moved = jax.tree.leaves(jax.tree.map(lambda a, b: bool(np.any(a != b)), upd["batch_stats"],
                                         v["batch_stats"]))
    assert all(moved)


@pytest.mark.parametrize("name, layer", [("resnet18", "BasicBlock_1"), ("mobilenet", "blocks_1"),
                                         ("vit", "blocks_0")])
def test_hidden_activations_are_sown_for_the_neuron_criteria(name, layer):
    model, _ = tiny(name)
    x = jnp.ones((2, 28, 28, 1))
    v = model.init(jax.random.PRNGKey(0), x)
    _, st = model.apply(v, x, mutable=[ACTIVATIONS])
    assert layer in st[ACTIVATIONS]


def test_bad_inputs_raise_named_errors():
    with pytest.raises(PruningError, match="num_heads"):
        NnxViT(10, width=10, num_heads=4, rngs=nnx.Rngs(0))
    with pytest.raises(PruningError, match="patch"):
        jax.eval_shape(lambda: ViT(10).init(jax.random.PRNGKey(0), jnp.zeros((1, 30, 30, 1))))
    with pytest.raises(PruningError, match="blocks row"):
        block_specs([(6, 24, 2)], 8, 1.0, 8)
    with pytest.raises(PruningError, match="stage_channels"):
        ResNet18(10, stage_channels=()).init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)))
