"""Tests for jaxprune.shrink: shrunk == masked, shapes/counts, coupling errors, cost, mean replacement.

Variables are drawn with numpy over ``jax.eval_shape`` shapes (no init compilation), with non-trivial
biases and BatchNorm statistics so a wrong row/channel mapping cannot hide behind zeros.
"""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn

import jaxprune as jp
import jaxprune.shrink.cost
import jaxprune.shrink.plans
import jaxprune.shrink.surgery
import jaxprune.shrink.units
from jaxprune.errors import PruningError
from jaxprune.models import MLP, MODELS, LeNet5, ResNet20, SmallCNN, init_params
from jaxprune.neurons import collect_activation_stats, unit_scores_to_tree
from jaxprune.shrink import (
    flops,
    macs,
    param_bytes,
    param_count,
    plan_for,
    removal_masks,
    shrink,
    unit_masks,
    unit_masks_from_scores,
)
from jaxprune.shrink.plans import layer_params

SMALL_RESNET = dict(stage_channels=(8, 16, 32), blocks_per_stage=1)
CASES = {
    "mlp": (MLP((32, 16, 10)), (8, 8, 1)),
    "lenet5_same": (LeNet5(10), (8, 8, 1)),
    "lenet5_valid": (LeNet5(10), (12, 12, 1)),
    "small_cnn": (SmallCNN(10, channels=(8, 16), hidden=32), (8, 8, 1)),
    "resnet_a": (ResNet20(10, **SMALL_RESNET), (8, 8, 3)),
    "resnet_b": (ResNet20(10, shortcut="B", **SMALL_RESNET), (8, 8, 3)),
}


def random_variables(model, shape, seed=0):
    """Random variables with the model's structure: He-scaled kernels, non-zero biases and BN stats."""
    abstract = jax.eval_shape(lambda k: init_params(model, k, (1, *shape)), jax.random.PRNGKey(0))
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = jax.tree_util.keystr(path[-1:], simple=True)
        if name == "kernel":
            x = rng.normal(size=leaf.shape) * math.sqrt(2.0 / math.prod(leaf.shape[:-1]))
        elif name == "var":
            x = 0.5 + rng.random(leaf.shape)
        elif name == "scale":
            x = 1.0 + 0.2 * rng.normal(size=leaf.shape)
        else:  # bias, mean
            x = 0.1 * rng.normal(size=leaf.shape)
        return jnp.asarray(x, leaf.dtype)

    return jax.tree_util.tree_map_with_path(draw, abstract)


def random_unit_masks(model, variables, frac=0.5, seed=1):
    rng = np.random.default_rng(seed)
    out = {}
    for edge in plan_for(model).edges:
        n = layer_params(variables["params"], edge.layer)["kernel"].shape[-1]
        out[edge.layer] = rng.permutation(n) >= round(frac * n)
    return out


def forward(model, variables, x):
    return jax.jit(lambda v, a: model.apply(v, a))(variables, x)


def test_cases_cover_every_supported_architecture():
    # Contract: every class jaxprune.shrink has a dependency plan for is checked by the CASES-driven
    # tests below (shrunk == masked, shapes, counts); a newly registered architecture without a case
    # fails here instead of going untested. And no case uses a class shrink does not support.
    covered = {type(model) for model, _ in CASES.values()}
    # The zoo's classes with a registered plan (tests may register their own classes in this process).
    supported = {e.module for e in MODELS.values()
                 if e.shrink_plan is not None and e.module.__module__.startswith("jaxprune.")}
    assert not supported - covered, f"add a CASES entry for {sorted(c.__name__ for c in supported - covered)}"
    assert covered <= supported, sorted(c.__name__ for c in covered - supported)
    for model, _ in CASES.values():
        assert plan_for(model).edges, type(model).__name__  # each case has units to remove


@pytest.mark.parametrize("name", sorted(CASES))
def test_shrunk_model_equals_masked_model(name):
    model, shape = CASES[name]
    v = random_variables(model, shape)
    keep = random_unit_masks(model, v)
    small, sv = shrink(model, v, keep)
    masked = {**v, "params": jp.apply_masks(v["params"], removal_masks(model, v["params"], keep))}
    x = jax.random.normal(jax.random.PRNGKey(1), (4, *shape))
    np.testing.assert_allclose(forward(small, sv, x), forward(model, masked, x), atol=1e-5, rtol=1e-5)
    # The new definition and the new variables agree leaf by leaf (names and shapes).
    expected = jax.eval_shape(lambda k: init_params(small, k, (1, *shape)), jax.random.PRNGKey(0))
    chex.assert_trees_all_equal_shapes(expected, sv)
    for edge in plan_for(model).edges:
        kept = int(keep[edge.layer].sum())
        assert layer_params(sv["params"], edge.layer)["kernel"].shape[-1] == kept, edge.layer
        for norm in edge.norms:
            assert layer_params(sv["params"], norm)["scale"].shape == (kept,)
            assert layer_params(sv["batch_stats"], norm)["var"].shape == (kept,)
    assert param_count(sv) < param_count(v)


def test_mlp_param_count_is_exact():
    model, shape = CASES["mlp"]
    v = random_variables(model, shape)
    keep = {"Dense_0": np.arange(32) < 20, "Dense_1": np.arange(16) < 5}
    small, sv = shrink(model, v, keep)
    assert small.features == (20, 5, 10)
    assert param_count(sv) == 64 * 20 + 20 + 20 * 5 + 5 + 5 * 10 + 10
    np.testing.assert_array_equal(sv["params"]["Dense_1"]["kernel"],
                                  v["params"]["Dense_1"]["kernel"][:20, :5])


def test_flatten_rows_follow_the_channel():
    model, shape = CASES["small_cnn"]
    v = random_variables(model, shape)
    keep = {"Conv_1": np.arange(16) % 3 == 0}
    _, sv = shrink(model, v, keep)
    rows = v["params"]["Dense_0"]["kernel"].reshape(2 * 2, 16, 32)[:, keep["Conv_1"], :]
    np.testing.assert_array_equal(sv["params"]["Dense_0"]["kernel"], rows.reshape(-1, 32))


def test_unit_masks_from_neuron_topk_masks():
    model, shape = CASES["mlp"]
    v = random_variables(model, shape)
    scores = unit_scores_to_tree({"Dense_0": jnp.arange(32.0)[::-1], "Dense_1": jnp.arange(16.0)},
                                 v["params"])
    sparsity = {"Dense_0": {"kernel": 0.25, "bias": 0.0}, "Dense_1": {"kernel": 0.5, "bias": 0.0},
                "Dense_2": {"kernel": 0.0, "bias": 0.0}}
    masks = jp.topk_masks(scores, sparsity, structure=jp.Neurons(outputs="Dense_2/kernel"))
    keep = unit_masks(masks)
    assert sorted(keep) == ["Dense_0", "Dense_1", "Dense_2"]
    np.testing.assert_array_equal(keep["Dense_0"], np.arange(32) < 24)
    np.testing.assert_array_equal(keep["Dense_1"], np.arange(16) >= 8)
    assert keep["Dense_2"].all()  # the output layer comes back all-True and shrink accepts it
    small, _ = shrink(model, v, keep)
    assert small.features == (24, 8, 10)


def test_unit_kept_if_any_weight_kept():
    m = {"params": {"Dense_0": {"kernel": np.array([[False, True, False], [False, False, True]]),
                                "bias": np.zeros(3, bool)}}}
    assert unit_masks(m)["Dense_0"].tolist() == [False, True, True]


def test_a_layer_is_never_emptied():
    model, shape = CASES["mlp"]
    v = random_variables(model, shape)
    masks = jp.dense_masks(v["params"])
    masks["Dense_1"]["kernel"] = jnp.zeros((32, 16), bool)
    with pytest.raises(PruningError, match="Dense_1"):
        unit_masks(masks)
    with pytest.raises(PruningError, match="empty layer 'Dense_1'"):
        shrink(model, v, {"Dense_1": np.zeros(16, bool)})
    keep = unit_masks_from_scores({"Dense_1": np.arange(16.0)}, 1.0)["Dense_1"]
    assert keep.tolist() == [False] * 15 + [True]
    assert shrink(model, v, {"Dense_1": keep})[0].features == (32, 1, 10)


def test_unit_masks_from_scores_exact_counts_and_errors():
    keep = unit_masks_from_scores({"a": np.ones(10), "b": np.arange(7.0)}, {"a": 0.25, "b": 0.5})
    assert int((~keep["a"]).sum()) == 2 and int((~keep["b"]).sum()) == 4  # round half to even
    assert keep["a"].tolist() == [False] * 2 + [True] * 8  # ties: lowest index first
    with pytest.raises(PruningError, match="NaN"):
        unit_masks_from_scores({"a": np.array([1.0, np.nan])}, 0.5)
    with pytest.raises(PruningError, match="sparsity"):
        unit_masks_from_scores({"a": np.ones(3)}, 1.5)


class Custom(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(2)(nn.relu(nn.Dense(4)(x)))


class WiderMLP(MLP):
    pass


@pytest.mark.parametrize("model", [Custom(), WiderMLP((4, 2))])
def test_unsupported_architecture_is_refused(model):
    v = init_params(model, jax.random.PRNGKey(0), (1, 3))
    with pytest.raises(PruningError, match=f"unsupported architecture.*{type(model).__name__}"):
        shrink(model, v, {"Dense_0": np.array([True, False, True, True])})


@pytest.mark.parametrize("layer", ["Conv_0", "BasicBlock_1/Conv_1", "BasicBlock_1/shortcut_conv"])
def test_residual_stream_pruning_is_refused(layer):
    model, shape = CASES["resnet_b"]
    v = random_variables(model, shape)
    n = layer_params(v["params"], layer)["kernel"].shape[-1]
    keep = np.arange(n) > 0
    with pytest.raises(PruningError, match=f"{layer}'.*residual stream"):
        shrink(model, v, {layer: keep})
    with pytest.raises(PruningError, match="residual stream"):
        removal_masks(model, v["params"], {layer: keep})
    # all-True on a fixed layer is accepted (what unit_masks returns for unpruned layers)
    shrink(model, v, {layer: np.ones(n, bool)})


def test_bad_unit_masks_name_the_layer():
    model, shape = CASES["lenet5_same"]
    v = random_variables(model, shape)
    with pytest.raises(PruningError, match="'Dense_2'.*output layer"):
        shrink(model, v, {"Dense_2": np.arange(10) > 0})
    with pytest.raises(PruningError, match="no prunable layer 'Conv_7'"):
        shrink(model, v, {"Conv_7": np.ones(3, bool)})
    with pytest.raises(PruningError, match="'Conv_1' has 5 entries"):
        shrink(model, v, {"Conv_1": np.ones(5, bool)})
    with pytest.raises(PruningError, match="1-D bool"):
        shrink(model, v, {"Conv_1": np.ones(16)})


def test_params_only_tree_round_trips():
    model, shape = CASES["mlp"]
    v = random_variables(model, shape)
    small, p = shrink(model, v["params"], {"Dense_0": np.arange(32) < 8})
    assert "params" not in p and p["Dense_0"]["kernel"].shape == (64, 8)
    assert small.apply({"params": p}, jnp.ones((2, *shape))).shape == (2, 10)


def test_cost_measures():
    model, shape = CASES["small_cnn"]
    v = random_variables(model, shape)
    keep = random_unit_masks(model, v, 0.5)
    small, sv = shrink(model, v, keep)
    masked = {**v, "params": jp.apply_masks(v["params"], removal_masks(model, v["params"], keep))}
    dense_flops = flops(model, v, shape, batch=2)
    assert flops(small, sv, shape, batch=2) < 0.5 * dense_flops
    assert flops(model, masked, shape, batch=2) == dense_flops  # XLA multiplies the zeros too
    dense_macs = macs(model, v, shape, batch=2)
    # conv: 8x8 x 9*1*8 + 4x4 x 9*8*16; dense: 64*32 + 32*10 (x batch 2)
    assert dense_macs == 2 * (64 * 72 + 16 * 1152 + 64 * 32 + 32 * 10)
    assert macs(model, masked, shape, batch=2, nonzero=True) < dense_macs
    assert macs(small, sv, shape, batch=2) < macs(model, masked, shape, batch=2, nonzero=True)
    assert param_bytes(sv) == 4 * param_count(sv)
    rv, rs = CASES["resnet_a"][0], CASES["resnet_a"][1]
    rvars = random_variables(rv, rs)
    assert param_bytes(rvars) > 4 * param_count(rvars)  # batch_stats are stored, not parameters


def _digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    x, y = (d.data / 16.0).astype(np.float32), d.target
    order = np.random.default_rng(0).permutation(len(x))
    return x[order[:1200]], y[order[:1200]], x[order[1200:]], y[order[1200:]]


def test_mean_replacement_lowers_output_error_on_trained_mlp():
    xtr, ytr, xte, yte = _digits()
    model = MLP((64, 32, 10))
    v = init_params(model, jax.random.PRNGKey(0), (1, 64))
    tx = optax.adam(3e-3)

    @jax.jit
    def step(v, opt):
        loss = lambda v: optax.softmax_cross_entropy_with_integer_labels(model.apply(v, xtr), ytr).mean()
        u, opt = tx.update(jax.grad(loss)(v), opt, v)
        return optax.apply_updates(v, u), opt

    opt = tx.init(v)
    for _ in range(300):
        v, opt = step(v, opt)
    ref = forward(model, v, xte)
    assert float(jnp.mean(ref.argmax(-1) == yte)) > 0.9
    stats = collect_activation_stats(model, v, [xtr], hist_range=(0.0, 1.0))
    acc = {"plain": [], "mean": []}
    for seed in range(3):
        keep = random_unit_masks(model, v, 0.25, seed)
        err = {}
        for kind, mr in (("plain", None), ("mean", stats)):
            small, sv = shrink(model, v, keep, mean_replacement=mr)
            out = forward(small, sv, xte)
            err[kind] = float(jnp.mean((out - ref) ** 2))
            acc[kind].append(float(jnp.mean(out.argmax(-1) == yte)))
        assert err["mean"] < err["plain"], (seed, err)
    assert np.mean(acc["mean"]) > np.mean(acc["plain"])


def _constant_units(model, v, keep, level=0.7):
    """Make every removed unit output the constant ``level`` (zero kernel slice; bias or BN shift)."""
    params = jax.tree.map(lambda x: x, v["params"])
    for edge in plan_for(model).edges:
        gone = ~keep[edge.layer]
        node = layer_params(params, edge.layer)
        node["kernel"] = jnp.where(gone, 0.0, node["kernel"])
        for target in (node, *(layer_params(params, n) for n in edge.norms)):
            if "bias" in target:
                target["bias"] = jnp.where(gone, level, target["bias"])
            if "scale" in target:
                target["scale"] = jnp.where(gone, 0.0, target["scale"])
    return {**v, "params": params}


@pytest.mark.parametrize("name, aware", [("mlp", False), ("lenet5_valid", False),
                                         ("lenet5_valid", True), ("small_cnn", False)])
def test_mean_replacement_is_exact_for_constant_units(name, aware):
    # Dense, flatten and VALID-conv consumers: a constant unit folds exactly into the next bias.
    model, shape = CASES[name]
    v = random_variables(model, shape)
    keep = random_unit_masks(model, v)
    if name == "small_cnn":
        keep["Conv_0"][:] = True  # SAME conv consumer: exact only away from the border
    v = _constant_units(model, v, keep)
    means = {k: np.where(m, 0.0, 0.7) for k, m in keep.items()}
    small, sv = shrink(model, v, keep, mean_replacement=means, input_shape=shape if aware else None)
    x = jax.random.normal(jax.random.PRNGKey(2), (4, *shape))
    np.testing.assert_allclose(forward(small, sv, x), forward(model, v, x), atol=1e-4, rtol=1e-4)


def test_mean_replacement_folds_into_batchnorm_in_resnet():
    # Conv_1 has no bias: the correction moves BatchNorm_1's running mean. On 8x8 .. 2x2 maps most
    # positions touch the zero-padded border, where summing all kernel taps overshoots; the
    # border-aware average (input_shape given) is the one that must beat plain removal clearly.
    model, shape = CASES["resnet_a"]
    v = random_variables(model, shape)
    keep = random_unit_masks(model, v)
    v = _constant_units(model, v, keep)
    means = {k: np.where(m, 0.0, 0.7) for k, m in keep.items()}
    x = jax.random.normal(jax.random.PRNGKey(2), (4, *shape))
    ref = forward(model, v, x)
    err = {}
    for kind, mr, shp in (("plain", None, None), ("taps", means, None), ("aware", means, shape)):
        small, sv = shrink(model, v, keep, mean_replacement=mr, input_shape=shp)
        err[kind] = float(jnp.mean((forward(small, sv, x) - ref) ** 2))
        bn = sv["batch_stats"]["BasicBlock_0"]["BatchNorm_1"]["mean"]
        moved = not np.allclose(bn, v["batch_stats"]["BasicBlock_0"]["BatchNorm_1"]["mean"])
        assert moved == (mr is not None), kind
    assert err["aware"] < 0.5 * err["plain"] and err["aware"] < 0.5 * err["taps"], err


def test_mean_replacement_errors():
    model, shape = CASES["mlp"]
    v = random_variables(model, shape)
    keep = {"Dense_0": np.arange(32) < 8}
    with pytest.raises(PruningError, match="not prunable.*Dense_2"):
        shrink(model, v, keep, mean_replacement={"Dense_2": np.zeros(10)})
    with pytest.raises(PruningError, match="'Dense_0' has shape"):
        shrink(model, v, keep, mean_replacement={"Dense_0": np.zeros(3)})


class _Looped(nn.Module):
    """A square weight applied in a loop: static fori_loop (a scan), scan over stacked weights,
    while_loop, and conds with equal / different branch costs."""

    mode: str

    @nn.compact
    def __call__(self, x):
        d = x.shape[-1]
        w = self.param("w", nn.initializers.ones, (d, d))
        ws = self.param("ws", nn.initializers.ones, (3, d, d))
        if self.mode == "fori":
            return jax.lax.fori_loop(0, 3, lambda i, h: h @ w, x)
        if self.mode == "scan_xs":
            return jax.lax.scan(lambda h, wi: (h @ wi, None), x, ws)[0]
        if self.mode == "while":
            return jax.lax.while_loop(lambda h: jnp.sum(h) < 100.0, lambda h: h @ w, x)
        other = (lambda h: (2.0 * h) @ w) if self.mode == "cond_same" else (lambda h: h)
        return jax.lax.cond(jnp.sum(x) > 0, lambda h: h @ w, other, x)


@pytest.mark.parametrize("mode,loops", [("fori", 3), ("scan_xs", 3), ("cond_same", 1)])
def test_macs_through_loops_and_conds(mode, loops):
    model, d, b = _Looped(mode), 4, 2
    v = model.init(jax.random.PRNGKey(0), jnp.ones((1, d)))
    assert macs(model, v, (d,), batch=b) == loops * b * d * d
    # Nonzero counting follows a weight into the loop body: w loses one row of d; ws loses ws[0].
    p = {"w": v["params"]["w"].at[0].set(0.0), "ws": v["params"]["ws"].at[0].set(0.0)}
    want = {"fori": 3 * b * (d - 1) * d, "scan_xs": 2 * b * d * d, "cond_same": b * (d - 1) * d}
    assert macs(model, p, (d,), batch=b, nonzero=True) == want[mode]


@pytest.mark.parametrize("mode,match", [("while", "while loop"), ("cond_differ", "different MACs")])
def test_macs_refuses_what_it_cannot_count(mode, match):
    model = _Looped(mode)
    v = model.init(jax.random.PRNGKey(0), jnp.ones((1, 4)))
    with pytest.raises(PruningError, match=match):
        macs(model, v, (4,))


def test_cost_functions_reject_non_models():
    with pytest.raises(PruningError, match="linen.Module.*nnx.Module"):
        flops(lambda x: x, {}, (3,))
    with pytest.raises(PruningError, match="needs its variables as a dict"):
        macs(MLP((4, 2)), None, (3,))
