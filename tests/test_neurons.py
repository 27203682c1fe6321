"""Tests for jaxprune.neurons: streaming stats vs numpy, criteria, capture, tree mapping, errors."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import nnx

from jaxprune.errors import PruningError
from jaxprune.models import MLP, NnxMLP, ResNet20, SmallCNN, init_params
from jaxprune.neurons import (
    CRITERIA,
    apoz,
    capture_activations,
    collect_activation_stats,
    entropy,
    finalize_unit_stats,
    get_criterion,
    hidden_layers,
    hoyer,
    init_unit_stats,
    keep_score,
    l1_l2_ratio,
    stability,
    taylor,
    unit_scores_to_tree,
    unit_stats_from_array,
    update_unit_stats,
    variance,
    weight_norm,
    with_observed_range,
)

BINS = 8
N = 37
ACT_CRITERIA = {"entropy": entropy, "apoz": apoz, "hoyer": hoyer, "stability": stability,
                "variance": variance}
update = jax.jit(update_unit_stats)  # one compile per batch shape instead of op-by-op dispatch
all_scores = jax.jit(lambda s: {n: fn(s) for n, fn in ACT_CRITERIA.items()})


def make_units(seed=0):
    """(N, 6) float32: relu'd normal, signed normal, constant, dead, lognormal, rare spikes."""
    rng = np.random.default_rng(seed)
    x = np.zeros((N, 6), np.float32)
    x[:, 0] = np.maximum(rng.normal(size=N), 0)
    x[:, 1] = rng.normal(size=N)
    x[:, 2] = 2.5
    x[:, 3] = 0.0
    x[:, 4] = np.exp(rng.normal(size=N))
    x[[3, 17, 30], 5] = [4.0, 1.0, 2.0]
    return x


def stream(x, splits=(10, 30), hist_range=None):
    """Two-pass (or one-pass with a range) streaming over uneven batches."""
    parts = np.split(x, splits)
    s = init_unit_stats(x.shape[-1], bins=BINS, hist_range=hist_range)
    for p in parts:
        s = update(s, jnp.asarray(p))
    if hist_range is not None:
        return s
    s2 = with_observed_range(s)
    for p in parts:
        s2 = update(s2, jnp.asarray(p))
    return s2


def numpy_reference(x):
    x = x.astype(np.float64)
    n = x.shape[0]
    l1, l2 = np.abs(x).sum(0), np.sqrt((x ** 2).sum(0))
    hist = []
    for col in x.T:
        if col.min() == col.max():  # our convention: a constant unit fills bin 0
            hist.append(np.eye(BINS)[0] * n)
        else:
            hist.append(np.histogram(col, bins=BINS, range=(col.min(), col.max()))[0])
    p = np.array(hist) / n
    ent = -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1)), 0), axis=1)
    ratio = np.where(l2 > 0, l1 / np.where(l2 > 0, l2, 1), 0)
    h = np.where(l2 > 0, (np.sqrt(n) - ratio) / (np.sqrt(n) - 1), 1.0)
    const = x.min(0) == x.max(0)
    return dict(
        hist=np.array(hist), mean=x.mean(0), variance=np.where(const, 0, x.var(0)), l1=l1, l2=l2,
        zero_fraction=(x == 0).mean(0), entropy=ent, apoz=1 - (x == 0).mean(0), hoyer=1 - h,
        stability=np.where(const, 0, 1 - ratio / np.sqrt(n)), ratio=ratio,
    )


@pytest.fixture(scope="module")
def units_stats():
    x = make_units()
    return x, {"d": stream(x)}


def test_streaming_matches_numpy_reference(units_stats):
    x, stats = units_stats
    ref = numpy_reference(x)
    s = stats["d"]
    f = finalize_unit_stats(s)
    assert int(s.count) == N and int(s.elements) == N
    np.testing.assert_array_equal(np.asarray(s.hist), ref["hist"])
    np.testing.assert_array_equal(np.asarray(s.minimum), x.min(0))
    np.testing.assert_array_equal(np.asarray(s.maximum), x.max(0))
    for field in ("mean", "variance", "l1", "l2", "zero_fraction"):
        np.testing.assert_allclose(getattr(f, field), ref[field], rtol=2e-5, atol=1e-6, err_msg=field)
    for name, scores in all_scores(stats).items():
        np.testing.assert_allclose(scores["d"], ref[name], rtol=2e-5, atol=1e-6, err_msg=name)
    np.testing.assert_allclose(l1_l2_ratio(stats, normalized=False)["d"], ref["ratio"], rtol=2e-5)


def test_k_batches_equal_one_batch(units_stats):
    x, stats = units_stats
    one = unit_stats_from_array(jnp.asarray(x), bins=BINS)
    many = stats["d"]
    for field in ("count", "zeros", "elements", "hist", "minimum", "maximum", "lo", "hi"):
        np.testing.assert_array_equal(getattr(many, field), getattr(one, field), err_msg=field)
    for field in ("total", "sum_sq", "sum_abs", "m2"):
        np.testing.assert_allclose(getattr(many, field), getattr(one, field), rtol=1e-5, atol=1e-5)


def test_constant_and_dead_units_rank_lowest_without_nan(units_stats):
    _, stats = units_stats
    const, dead, live = 2, 3, [0, 1, 4, 5]
    scores = all_scores(stats)
    for name in ("entropy", "stability", "variance"):
        s = np.asarray(scores[name]["d"])
        assert s[const] == s[dead] == s.min() and s[live].min() > s[const], (name, s)
    s = np.asarray(entropy(stats, prune="high")["d"])
    assert s[const] == s[dead] < s[live].min(), s
    for name in ACT_CRITERIA:
        s = np.asarray(scores[name]["d"])
        assert np.all(np.isfinite(s)), name
        assert s[dead] == s.min(), name  # a dead unit is the first to go under every criterion
    assert float(hoyer(stats, prune="low")["d"][dead]) == 1.0
    assert float(stability(stats)["d"][const]) == 0.0 and float(variance(stats)["d"][const]) == 0.0


def test_given_range_is_one_pass_and_clips_outliers():
    x = make_units()[:, :2]
    s = stream(x, hist_range=(0.0, 1.0))
    for j in range(2):
        ref = np.histogram(np.clip(x[:, j], 0, 1), bins=BINS, range=(0, 1))[0]
        np.testing.assert_array_equal(np.asarray(s.hist[j]), ref)
    with pytest.raises(PruningError, match="hist_range"):
        init_unit_stats(2, hist_range=(1.0, 0.0))
    with pytest.raises(PruningError, match="bins"):
        init_unit_stats(2, bins=0)


def test_conv_channels_are_gap_per_example():
    rng = np.random.default_rng(1)
    maps = np.maximum(rng.normal(size=(9, 3, 3, 4)), 0).astype(np.float32)
    conv = unit_stats_from_array(jnp.asarray(maps), bins=BINS)
    pooled = unit_stats_from_array(jnp.asarray(maps.mean(axis=(1, 2))), bins=BINS)
    assert int(conv.count) == 9 and int(conv.elements) == 81
    np.testing.assert_array_equal(conv.hist, pooled.hist)
    np.testing.assert_allclose(conv.total, pooled.total, rtol=1e-5)
    # APoZ counts zeros over every spatial position (Hu et al.), not over pooled values.
    np.testing.assert_allclose(apoz({"c": conv})["c"], 1 - (maps == 0).mean(axis=(0, 1, 2)), rtol=1e-6)
    with pytest.raises(PruningError, match=r"\(n, ..., 4\)"):
        update_unit_stats(conv, jnp.ones((2, 3)))


def test_criteria_jit_matches_eager(units_stats):
    _, stats = units_stats
    eager = {n: fn(stats) for n, fn in ACT_CRITERIA.items()}
    jitted = all_scores(stats)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), eager, jitted)


@pytest.fixture(scope="module")
def mlp():
    model = MLP((6, 5, 3))
    return model, init_params(model, jax.random.PRNGKey(0), (1, 4))


def test_collect_on_linen_model_matches_one_pass_over_all_data(mlp):
    model, v = mlp
    xs = [jax.random.normal(jax.random.PRNGKey(i), (8, 4)) for i in range(3)]
    stats = collect_activation_stats(model, v, iter([(x, None) for x in xs]), bins=BINS)
    assert list(stats) == list(hidden_layers(model, v, xs[0])) == ["Dense_0", "Dense_1"]
    acts = jax.jit(lambda v, x: capture_activations(model, v, x))(v, jnp.concatenate(xs))
    for layer, s in stats.items():
        ref = unit_stats_from_array(acts[layer], bins=BINS)
        np.testing.assert_array_equal(s.hist, ref.hist)
        np.testing.assert_allclose(s.sum_sq, ref.sum_sq, rtol=1e-5)
    ranged = collect_activation_stats(model, v, xs, bins=BINS, hist_range=(0.0, 2.0))
    assert float(ranged["Dense_0"].hi[0]) == 2.0 and int(ranged["Dense_0"].count) == 24


def test_nnx_model_gives_the_same_stats_as_linen(mlp):
    model, v = mlp
    m = NnxMLP(4, (6, 5, 3), rngs=nnx.Rngs(1))
    for name, leaves in v["params"].items():  # same paths: copy the linen weights over
        getattr(m, name).kernel.set_value(leaves["kernel"])
        getattr(m, name).bias.set_value(leaves["bias"])
    xs = [jax.random.normal(jax.random.PRNGKey(i), (8, 4)) for i in range(2)]
    a = collect_activation_stats(model, v, xs, bins=BINS)
    b = collect_activation_stats(m, None, xs, bins=BINS)
    assert list(a) == list(b)
    jax.tree.map(lambda p, q: np.testing.assert_allclose(p, q, rtol=1e-5, atol=1e-6), a, b)
    assert m(xs[0]).shape == (8, 3) and not nnx.state(m, nnx.Intermediate)  # no sow outside capture


def test_conv_model_stats_count_examples_not_pixels():
    model = SmallCNN(3, channels=(4,), hidden=5)
    v = init_params(model, jax.random.PRNGKey(0), (1, 8, 8, 1))
    stats = collect_activation_stats(model, v, [jnp.ones((6, 8, 8, 1))], bins=BINS)
    assert list(stats) == ["Conv_0", "Dense_0"]
    assert int(stats["Conv_0"].count) == 6 and int(stats["Conv_0"].elements) == 6 * 64
    assert stats["Conv_0"].hist.shape == (4, BINS)


def test_resnet_units_map_onto_block_convs():
    model = ResNet20(10)
    abstract = jax.eval_shape(lambda k: model.init(k, jnp.zeros((1, 32, 32, 3))), jax.random.PRNGKey(0))
    names = hidden_layers(model, abstract, jnp.zeros((2, 32, 32, 3)), train=False)
    assert names == tuple(f"BasicBlock_{i}/Conv_0" for i in range(9))
    v = jax.tree.map(lambda s: jnp.ones(s.shape, s.dtype), abstract)
    scores = {"BasicBlock_3/Conv_0": jnp.arange(32.0)}
    tree = unit_scores_to_tree(scores, v)
    k = tree["params"]["BasicBlock_3"]["Conv_0"]["kernel"]
    np.testing.assert_array_equal(k.mean(axis=(0, 1, 2)), np.arange(32.0))
    bn = tree["batch_stats"]["BasicBlock_3"]["BatchNorm_0"]["mean"]
    assert bool(jnp.all(bn == keep_score(jnp.float32, 32)))


def test_unit_scores_to_tree_keeps_output_layer_and_checks_shapes(mlp):
    _, v = mlp
    tree = unit_scores_to_tree({"Dense_0": jnp.arange(6.0), "Dense_1": -jnp.arange(5.0)}, v)
    jax.tree.map(lambda a, b: None if a.shape == b.shape else pytest.fail("shape"), tree, v)
    np.testing.assert_array_equal(tree["params"]["Dense_1"]["kernel"].mean(axis=0), -np.arange(5.0))
    np.testing.assert_array_equal(tree["params"]["Dense_0"]["bias"], np.arange(6.0))
    out = tree["params"]["Dense_2"]["kernel"]
    assert bool(jnp.all(jnp.isfinite(out.sum()))) and float(out.min()) > 1e30
    with pytest.raises(PruningError, match=r"Dense_1.*unit axis"):
        unit_scores_to_tree({"Dense_1": jnp.ones(4)}, v)
    with pytest.raises(PruningError, match="Dense_9"):
        unit_scores_to_tree({"Dense_9": jnp.ones(4)}, v)


def test_scores_tree_drives_neuron_selection(mlp):
    select = pytest.importorskip("jaxprune.select")
    structures = pytest.importorskip("jaxprune.structures")
    _, v = mlp
    tree = unit_scores_to_tree({"Dense_0": jnp.array([5.0, 0.0, 4.0, 1.0, 3.0, 2.0])}, v)
    sp = jax.tree.map(lambda _: 0.0, tree)
    sp["params"]["Dense_0"]["kernel"] = 0.5
    masks = select.topk_masks(tree, sp, structure=structures.Neurons(axis=-1, outputs=()))
    assert masks["params"]["Dense_0"]["kernel"][0].tolist() == [True, False, True, False, True, False]


def test_weight_norm_and_taylor_match_numpy(mlp):
    _, v = mlp
    w = np.asarray(v["params"]["Dense_0"]["kernel"])
    np.testing.assert_allclose(weight_norm(v, ord=1)["Dense_0"], np.abs(w).sum(0), rtol=1e-6)
    np.testing.assert_allclose(weight_norm(v, 2)["Dense_0"], np.linalg.norm(w, axis=0), rtol=1e-6)
    assert list(weight_norm(v, layers=["Dense_1"])) == ["Dense_1"]
    grads = jax.tree.map(lambda p: jnp.full(p.shape, 0.5), v)
    b = np.asarray(v["params"]["Dense_0"]["bias"])
    ref = ((w * 0.5).sum(0) + b * 0.5) ** 2
    np.testing.assert_allclose(taylor(v, grads)["Dense_0"], ref, rtol=1e-5)
    with pytest.raises(PruningError, match="ord"):
        weight_norm(v, ord=3)
    with pytest.raises(PruningError, match="Dense_7"):
        weight_norm(v, layers=["Dense_7"])
    with pytest.raises(PruningError, match="grads"):
        taylor(v, {"params": grads["params"]["Dense_0"]})


def test_registry_runs_every_criterion(mlp, units_stats):
    model, v = mlp
    assert set(CRITERIA) == {"entropy", "apoz", "hoyer", "stability", "variance", "l1", "l2", "taylor"}
    stats = collect_activation_stats(model, v, [jnp.ones((8, 4)), -jnp.ones((8, 4))], bins=BINS)
    grads = jax.tree.map(jnp.ones_like, v)
    hidden = ["Dense_0", "Dense_1"]
    for name in CRITERIA:
        fn = get_criterion(name)
        out = fn(stats=stats, params=v, grads=grads, **({"layers": hidden} if name in
                                                           ("l1", "l2", "taylor") else {}))
        assert sorted(out) == hidden, name
        for layer, s in out.items():
            assert s.shape == (v["params"][layer]["kernel"].shape[-1],), (name, layer)
            assert bool(jnp.all(jnp.isfinite(s))), (name, layer)
        tree = unit_scores_to_tree(out, v)
        assert jax.tree.structure(tree) == jax.tree.structure(v)
    with pytest.raises(PruningError, match="'taylor' needs grads"):
        get_criterion("taylor")(params=v)
    with pytest.raises(PruningError, match="unknown criterion 'snip'.*apoz"):
        get_criterion("snip")


def test_models_without_capturable_activations_raise(mlp):
    _, v = mlp
    with pytest.raises(PruningError, match="sow_activation"):
        collect_activation_stats(lambda x: x, None, [jnp.ones((2, 4))])
    dense = nn.Dense(3)
    dv = dense.init(jax.random.PRNGKey(0), jnp.ones((1, 4)))
    with pytest.raises(PruningError, match="Dense recorded no activations.*sow_activation"):
        capture_activations(dense, dv, jnp.ones((2, 4)))
    with pytest.raises(PruningError, match="UnitStats"):
        entropy({"Dense_0": jnp.ones(3)})
    with pytest.raises(PruningError, match="prune"):
        entropy({"d": unit_stats_from_array(jnp.ones((2, 2)))}, prune="middle")
    with pytest.raises(PruningError, match="empty"):
        collect_activation_stats(MLP((6, 5, 3)), v, iter([]), hist_range=(0.0, 1.0))
    assert math.isfinite(float(keep_score(jnp.float32, 10**8) * 10**8))


def test_parse_taps_forms_and_errors():
    from jaxprune.neurons.taps import Tap, parse_taps

    is_fc = lambda path: path.startswith("fc")
    assert parse_taps("fc1") == (Tap("fc1", "output", None),)
    assert parse_taps(["a/*:input", is_fc]) == (Tap("a/*", "input", None), Tap(is_fc, "output", None))
    assert parse_taps({"fc1": "head:input", "b": "b:output"}) == (
        Tap("head", "input", "fc1"), Tap("b", "output", "b"))
    assert parse_taps("odd:name") == (Tap("odd:name", "output", None),)  # not a point: part of the glob
    for bad in ([], {}, 3, {"k": 3}, [""]):
        with pytest.raises(PruningError, match="layers"):
            parse_taps(bad)


def test_layers_on_a_sowing_model_and_predicates():
    model = MLP((8, 4, 2))
    v = init_params(model, jax.random.PRNGKey(0), (1, 3))
    x = jax.random.normal(jax.random.PRNGKey(1), (5, 3))
    sown = capture_activations(model, v, x)  # the explicit sow_activation contract still works
    post = capture_activations(model, v, x, layers={"Dense_0": "Dense_1:input", "Dense_1": "Dense_2:input"})
    for k in sown:
        np.testing.assert_array_equal(post[k], sown[k])
    pred = capture_activations(model, v, x, layers=lambda path: path.endswith("_2"))
    assert list(pred) == ["Dense_2"] and pred["Dense_2"].shape == (5, 2)
    with pytest.raises(PruningError, match="two taps give the result key 'Dense_0'"):
        capture_activations(model, v, x, layers=["Dense_0", "Dense_0"])


def test_nnx_layers_capture_under_jit_and_shared_module():
    class Shared(nnx.Module):
        def __init__(self, rngs):
            self.lin = nnx.Linear(3, 3, rngs=rngs)

        def __call__(self, x):
            return self.lin(nnx.relu(self.lin(x)))

    model = Shared(nnx.Rngs(0))
    x = jnp.ones((2, 3))
    acts = capture_activations(model, None, x, layers="lin")
    first = model.lin(x)
    np.testing.assert_allclose(acts["lin"], jnp.concatenate([first, model.lin(nnx.relu(first))]),
                               rtol=1e-6)
    stats = collect_activation_stats(model, None, [x], bins=4, layers="lin:input")
    assert int(stats["lin"].count) == 4 and type(model.lin) is nnx.Linear


class _Square(nn.Module):
    """Three same-width Dense layers: only identity with the model output tells the output layer."""

    softmax: bool = False

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(4, name="a")(x))
        x = nn.Dense(4, name="c")(nn.relu(nn.Dense(4, name="b")(x)))
        return nn.softmax(x) if self.softmax else x


def test_hidden_layers_of_an_unmodified_model_find_the_output_layer():
    x = jnp.ones((2, 4))
    v = _Square().init(jax.random.PRNGKey(0), x)
    assert hidden_layers(_Square(), v, x) == ("a", "b")
    with pytest.raises(PruningError, match="cannot tell which layer produces the model output"):
        hidden_layers(_Square(softmax=True), v, x)  # a softmax after c, and every width is 4
