"""Tests for jaxprune.models: shapes, parameter counts, leaf paths, registry, NNX twins and training.

Shapes and counts use ``jax.eval_shape`` (no compilation) so the file stays fast on 2 CPU cores.
"""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn
from flax import nnx

from jaxprune.errors import PruningError
from jaxprune.harness import make_run, toy_config
from jaxprune.models import (
    ACTIVATIONS,
    MLP,
    MODELS,
    LeNet5,
    NnxLeNet5,
    NnxMLP,
    NnxSmallCNN,
    ResNet20,
    SmallCNN,
    INPUT_KINDS,
    Edge,
    Plan,
    get_model,
    get_nnx_model,
    groupable_models,
    init_params,
    model_entry,
    register_model,
    registered_plan,
    to_nnx,
    train_kwargs,
)
from jaxprune.models.plans import OUTPUT_LAYER
from jaxprune.methods.traced import unit_masks_to_groups
from jaxprune.shrink import plan_for, removal_masks, shrink
from jaxprune.structure import StructuredPlan, apply_plan, trace_linen
from jaxprune.shrink.plans import layer_params
from jaxprune.sweep.vmapped import fit_group, vmap_groups
from jaxprune.train import create_train_state, fit


def abstract_init(model, shape, **kw):
    return jax.eval_shape(lambda k: model.init(k, jnp.zeros(shape), **kw), jax.random.PRNGKey(0))


def count(tree):
    return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


def shapes_by_path(tree):
    """{'Dense_0/kernel': shape}; NNX Variable accessors ('/value') are dropped."""
    return {jax.tree_util.keystr(p, simple=True, separator="/").removesuffix("/value"): x.shape
            for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def paths(tree):
    return sorted(jax.tree_util.keystr(p, simple=True, separator="/")
                  for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0])


@pytest.mark.parametrize("name, n_params", [("tutorial_mlp", 101_770), ("lenet300", 266_610)])
def test_mlp_presets_param_counts(name, n_params):
    v = abstract_init(get_model(name, 10), (1, 28, 28, 1))
    assert count(v["params"]) == n_params


def test_mlp_default_leaf_paths_and_real_init(key):
    v = init_params(get_model("tutorial_mlp", 10), key, (1, 28, 28, 1))
    assert paths(v) == ["params/Dense_0/bias", "params/Dense_0/kernel",
                        "params/Dense_1/bias", "params/Dense_1/kernel"]
    assert v["params"]["Dense_0"]["kernel"].shape == (784, 128)
    out = jax.jit(MLP((128, 10)).apply)(v, jnp.ones((3, 28, 28, 1)))
    assert out.shape == (3, 10) and bool(jnp.all(jnp.isfinite(out)))


def test_lenet5_classic_and_small_inputs():
    v = abstract_init(LeNet5(10), (1, 28, 28, 1))
    assert count(v["params"]) == 61_706  # classic LeNet-5 (400 -> 120 -> 84 -> 10)
    assert v["params"]["Dense_0"]["kernel"].shape == (400, 120)
    v8 = abstract_init(LeNet5(10), (1, 8, 8, 1))
    assert v8["params"]["Conv_1"]["kernel"].shape == (5, 5, 6, 16)
    out = jax.eval_shape(LeNet5(10).apply, v8, jnp.zeros((4, 8, 8, 1)))
    assert out.shape == (4, 10)


def test_small_cnn_shapes():
    v = abstract_init(SmallCNN(10), (1, 28, 28, 1))
    assert paths(v["params"])[:2] == ["Conv_0/bias", "Conv_0/kernel"]
    assert v["params"]["Dense_0"]["kernel"].shape == (7 * 7 * 64, 128)
    assert jax.eval_shape(SmallCNN(10).apply, v, jnp.zeros((2, 28, 28, 1))).shape == (2, 10)


@pytest.mark.parametrize("shortcut, n_params", [("A", 269_722), ("B", 272_474)])
def test_resnet20_counts_and_batchnorm(shortcut, n_params):
    m = ResNet20(10, shortcut=shortcut)
    v = abstract_init(m, (1, 32, 32, 3), train=False)
    assert sorted(v) == ["batch_stats", "params"]
    assert count(v["params"]) == n_params
    assert len([k for k in v["params"] if k.startswith("BasicBlock_")]) == 9
    out, upd = jax.eval_shape(lambda v, x: m.apply(v, x, train=True, mutable=["batch_stats"]),
                              v, jnp.zeros((2, 32, 32, 3)))
    assert out.shape == (2, 10)
    chex.assert_trees_all_equal_structs(upd["batch_stats"], v["batch_stats"])


def test_init_params_drops_activation_collection(key):
    v = init_params(MLP((4, 2)), key, (1, 3))
    assert ACTIVATIONS not in v and sorted(v) == ["params"]
    _, state = MLP((4, 2)).apply(v, jnp.ones((5, 3)), mutable=[ACTIVATIONS])
    assert state[ACTIVATIONS]["Dense_0"]["activation"][0].shape == (5, 4)


def test_registry_names_and_errors():
    # The zoo; other architectures may be registered next to it.
    assert {"tutorial_mlp", "lenet300", "mlp", "lenet5", "small_cnn", "resnet20", "gpt", "resnet18",
            "mobilenet_v2", "vit"} <= set(MODELS)
    for name in MODELS:
        assert isinstance(get_model(name, 10), nn.Module)
    assert get_model("mlp", 3, hidden=(5, 6)).features == (5, 6, 3)
    with pytest.raises(PruningError, match="unknown model name 'vgg'.*lenet300"):
        get_model("vgg", 10)
    with pytest.raises(PruningError, match="'lenet5'"):
        get_model("lenet5", 10, width=3)
    with pytest.raises(PruningError, match="input_shape"):
        init_params(MLP((2,)), jax.random.PRNGKey(0), (3,))


def test_nnx_models_share_linen_leaf_paths():
    for linen_model, make, shape in [
        (MLP((300, 100, 10)), lambda: NnxMLP(784, (300, 100, 10), rngs=nnx.Rngs(0)), (28, 28, 1)),
        (LeNet5(10), lambda: NnxLeNet5(10, input_shape=(8, 8, 1), rngs=nnx.Rngs(0)), (8, 8, 1)),
        (SmallCNN(10), lambda: NnxSmallCNN(10, rngs=nnx.Rngs(0)), (28, 28, 1)),
    ]:
        lin = abstract_init(linen_model, (1, *shape))["params"]
        nnx_shapes = shapes_by_path(nnx.state(nnx.eval_shape(make), nnx.Param))
        lin_shapes = shapes_by_path(lin)
        assert nnx_shapes == lin_shapes, type(linen_model).__name__


def test_get_nnx_model_and_bridge():
    m = get_nnx_model("lenet300", 10, (28, 28, 1), rngs=nnx.Rngs(0))
    assert isinstance(m, NnxMLP) and count(nnx.state(m, nnx.Param)) == 266_610
    with pytest.raises(PruningError, match="input_shape"):
        get_nnx_model("lenet5", 10, (784,), rngs=nnx.Rngs(0))
    resnet = nnx.eval_shape(lambda: get_nnx_model("resnet20", 10, (32, 32, 3), rngs=nnx.Rngs(0)))
    res_params = shapes_by_path(nnx.state(resnet, nnx.Param))
    assert count(nnx.state(resnet, nnx.Param)) == 269_722
    assert res_params["BasicBlock_0/Conv_0/kernel"] == (3, 3, 16, 16)  # bridge keeps linen paths
    bridged = to_nnx(MLP((4, 2)), (1, 3), rngs=nnx.Rngs(0))
    assert bridged(jnp.ones((5, 3))).shape == (5, 2)
    with pytest.raises(PruningError, match="linen"):
        to_nnx(lambda x: x, (1, 3), rngs=nnx.Rngs(0))


def test_nnx_mlp_trains_end_to_end():
    """A native NNX model + optax learns a tiny linearly separable problem (loss decreases)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 2, 2, 1)).astype(np.float32)
    y = (x.reshape(64, 4) @ np.array([1.0, -1.0, 0.5, 2.0]) > 0).astype(np.int32)
    model = NnxMLP(4, (16, 2), rngs=nnx.Rngs(0))
    opt = nnx.Optimizer(model, optax.adam(0.05), wrt=nnx.Param)

    def loss_fn(m):
        return optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean()

    @nnx.jit
    def step(m, o):
        loss, grads = nnx.value_and_grad(loss_fn)(m)
        o.update(m, grads)
        return loss

    losses = [float(step(model, opt)) for _ in range(30)]
    assert losses[-1] < 0.5 * losses[0], losses


# ------------------------------------------------------------------ the registry's contract, per entry
# Every entry of MODELS runs through the same checks, so a newly registered architecture is tested
# without anyone writing its tests: it builds in linen and nnx with the same parameter tree; a
# groupable one trains grouped bit-identically to one-by-one; one with a shrink plan shrinks to a model
# that computes what the masked original computes.


# Smaller instances of entries whose default compiles slowly on 2 cores, or whose patch does not fit
# the 8x8 example images; the same keywords build the linen model and its nnx twin.
SMALL = {"resnet20": {"blocks_per_stage": 1},  # still one projection shortcut per stage change
         "resnet18": {"stage_channels": (8, 16), "blocks_per_stage": 1},
         "resnet18_w16": {"blocks_per_stage": 1},  # its own 16-32-64-128 widths
         "mobilenet_v2": {"blocks": ((1, 8, 1, 1), (6, 8, 2, 2)), "stem_channels": 8, "last_channels": 16},
         "vit": {"patch": 4, "width": 16, "depth": 1, "num_heads": 2, "mlp_dim": 16}}


def _example(entry):
    """(linen kwargs, one example's shape, example batch) of a small instance of ``entry``."""
    if entry.inputs == "tokens":
        return {"context": 8}, (8,), jnp.arange(16, dtype=jnp.int32).reshape(2, 8) % 13
    shape = (8, 8, 3)
    return dict(SMALL.get(entry.name, {})), shape, jax.random.uniform(jax.random.PRNGKey(1), (2, *shape))


@pytest.mark.parametrize("name", list(MODELS))
def test_every_entry_builds_in_linen_and_nnx_with_one_param_tree(name):
    entry = model_entry(name)
    kw, shape, x = _example(entry)
    model = get_model(name, 13, **kw)
    assert type(model) is entry.module and entry.inputs in INPUT_KINDS
    variables = jax.eval_shape(lambda k: init_params(model, k, x.shape) if entry.inputs != "tokens"
                               else model.init(k, x), jax.random.PRNGKey(0))
    nnx_kw = {} if entry.inputs == "tokens" else kw  # a tokens twin takes its context from the shape
    twin = nnx.eval_shape(lambda: get_nnx_model(name, 13, shape, rngs=nnx.Rngs(0), **nnx_kw))
    assert shapes_by_path(nnx.state(twin, nnx.Param)) == shapes_by_path(variables["params"]), name
    out = jax.eval_shape(lambda: model.apply(jax.tree.map(jnp.zeros_like, variables), x,
                                             **train_kwargs(model)))
    assert out.shape[0] == 2 and out.shape[-1] == 13


@pytest.mark.parametrize("name", groupable_models())
def test_groupable_entries_train_grouped_as_one_by_one(name):
    assert vmap_groups([toy_config(model=name, seed=s) for s in (0, 1)]) == [[0, 1]]
    model, tx = get_model(name, 10), optax.adam(1e-2)
    rng = np.random.default_rng(0)
    xy = (rng.uniform(size=(24, 8, 8, 1)).astype(np.float32), (np.arange(24) % 10).astype(np.int32))
    states = [create_train_state(init_params(model, jax.random.PRNGKey(s), (1, 8, 8, 1)), tx) for s in (0, 1)]
    # Run 1 alone is run 0's twin with another seed; one `fit` (one compile) is the reference.
    alone = fit(model, states[0], tx, *xy, epochs=1, batch_size=8, seed=0, progress=False)[0]
    grouped = fit_group(model, states, tx, [xy] * 2, epochs=1, batch_size=8, seeds=[0, 1], chunk=4)
    chex.assert_trees_all_equal(alone.params, grouped[0].params)
    assert not np.array_equal(np.asarray(grouped[0].params["Dense_0"]["kernel"]),
                              np.asarray(grouped[1].params["Dense_0"]["kernel"]))  # two runs, not one


@pytest.mark.parametrize("name", [n for n, e in MODELS.items() if e.shrink_plan is not None])
def test_entries_with_a_shrink_plan_shrink(name):
    entry = model_entry(name)
    kw, shape, x = _example(entry)
    model = get_model(name, 13, **kw)
    assert plan_for(model).edges == entry.shrink_plan(model).edges
    variables = init_params(model, jax.random.PRNGKey(0), x.shape)
    # Drop the first unit of every producer: each edge of the plan is exercised.
    keep = {e.layer: np.arange(layer_params(variables["params"], e.layer)["kernel"].shape[-1]) > 0
            for e in plan_for(model).edges}
    small_model, small = shrink(model, variables, keep)
    masks = removal_masks(model, variables, keep)
    masked = jax.tree.map(lambda v, m: v * m, variables, masks)
    kwargs = train_kwargs(model)
    # jitted: one compile is cheaper than an eager ResNet forward op by op
    out = jax.jit(lambda v: small_model.apply(v, x, **kwargs))(small)
    chex.assert_trees_all_close(out, jax.jit(lambda v: model.apply(v, x, **kwargs))(masked), atol=1e-5)
    assert sum(int(np.size(v)) for v in jax.tree.leaves(small)) < sum(
        int(np.size(v)) for v in jax.tree.leaves(variables))


@pytest.mark.parametrize("name", [n for n, e in MODELS.items() if e.shrink_plan is not None])
def test_hand_written_plan_agrees_with_the_trace(name):
    """Issue 17's "generated from the trace, with a test that they agree": the same unit masks, shrunk
    by the entry's plan and through the traced graph, give the same shapes and the same outputs."""
    entry = model_entry(name)
    kw, shape, x = _example(entry)
    model = get_model(name, 13, **kw)
    variables = init_params(model, jax.random.PRNGKey(0), x.shape)
    rng = np.random.default_rng(0)
    keep = {}
    for e in plan_for(model).edges:
        n = layer_params(variables["params"], e.layer)["kernel"].shape[-1]
        mask = rng.uniform(size=n) < 0.6
        mask[rng.integers(n)] = True
        keep[e.layer] = mask
    kwargs = train_kwargs(model)
    plan_model, plan_vars = shrink(model, variables, keep)
    graph = trace_linen(model, variables, x, **kwargs)
    traced = StructuredPlan(graph, {}, unit_masks_to_groups(graph, keep), "linen")
    trace_model, trace_vars = apply_plan(traced, model, variables, x, apply_kwargs=kwargs)
    assert shapes_by_path(trace_vars) == shapes_by_path(plan_vars)
    chex.assert_trees_all_close(trace_model.apply(trace_vars, x, **kwargs),
                                plan_model.apply(plan_vars, x, **kwargs), atol=1e-5)


class TwoLayer(nn.Module):
    """docs/models.md's own architecture: flatten, a hidden ReLU layer, the classes."""

    num_classes: int = 10
    hidden: int = 32

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(self.hidden)(x.reshape((x.shape[0], -1))))
        return nn.Dense(self.num_classes)(x)


def two_layer_plan(model):
    return Plan("TwoLayer", (Edge("Dense_0", (), "Dense_1", "dense"),), {"Dense_1": OUTPUT_LAYER},
                lambda widths: model.clone(hidden=widths["Dense_0"], parent=None))


def test_a_new_architecture_registers_in_a_few_lines():
    entry = register_model("two_layer", TwoLayer, shrink_plan=two_layer_plan, inputs="flat")
    try:
        assert entry.module is TwoLayer and "two_layer" not in groupable_models()
        test_every_entry_builds_in_linen_and_nnx_with_one_param_tree("two_layer")  # nnx: the bridge
        test_entries_with_a_shrink_plan_shrink("two_layer")
        run = make_run(toy_config(model="two_layer"))  # a config reaches it
        assert isinstance(run.model, TwoLayer) and run.variables["params"]["Dense_0"]["kernel"].shape == (64, 32)
        with pytest.raises(PruningError, match="already registered"):
            register_model("two_layer", TwoLayer)
        with pytest.raises(PruningError, match="inputs must be one of"):
            register_model("two_layer_bad", TwoLayer, inputs="audio")
        with pytest.raises(PruningError, match="from the class count alone"):
            register_model("needs_more", lambda num_classes, width: TwoLayer(num_classes, width))
        with pytest.raises(PruningError, match="one class, one plan"):
            register_model("two_layer_2", TwoLayer, shrink_plan=lambda m: two_layer_plan(m))
    finally:
        del MODELS["two_layer"]
    assert registered_plan(TwoLayer()) is None
    with pytest.raises(PruningError, match="unsupported architecture.*TwoLayer"):
        plan_for(TwoLayer())
