"""Issue 15 items 8 and 9 on models a researcher writes (tests/user_models.py).

Item 8: cost functions take linen (full or bare variables) and nnx models, and ``macs`` counts every
matmul of the traced forward, attention's QKᵀ and AV included. Item 9: activation statistics of an
*unmodified* linen / nnx model, chosen by module path, equal to the activations computed by hand,
feeding the neuron criteria and Neurons selection, with the model left exactly as it was.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from user_models import user_cnn, user_nnx_mlp, user_nnx_transformer

from jaxprune import topk_masks
from jaxprune.errors import PruningError
from jaxprune.neurons import (
    apoz,
    capture_activations,
    collect_activation_stats,
    entropy,
    hidden_layers,
    hoyer,
    stability,
    unit_scores_to_tree,
)
from jaxprune.shrink import flops, latency_ms, macs, param_bytes, param_count
from jaxprune.structures import Neurons


@pytest.fixture(scope="module")
def cnn():
    """One UserCNN for the module (its eager init is the slow part); tests never mutate it."""
    return user_cnn()


@pytest.fixture(scope="module")
def transformer():
    return user_nnx_transformer()


class PlainMLP(nn.Module):
    """A user's linen MLP without BatchNorm: bare params are all it needs."""

    @nn.compact
    def __call__(self, x):
        return nn.Dense(3, name="out")(nn.relu(nn.Dense(6, name="hid")(x)))


# ----------------------------------------------------------------------------------- item 8: costs


def _cnn_hand_macs(variables, batch, image):
    """Conv: output positions x kernel size; Dense: batch x kernel size (max_pool halves the map)."""
    p = variables["params"]
    conv = lambda k, hw: batch * hw * hw * k.size
    return (conv(p["stem"]["kernel"], image) + conv(p["block"]["conv_a"]["kernel"], image)
            + conv(p["block"]["conv_b"]["kernel"], image)
            + batch * p["fc1"]["kernel"].size + batch * p["head"]["kernel"].size)


def test_costs_on_linen_cnn_full_variables_and_bare_params_error(cnn):
    model, v, x = cnn
    shape = x.shape[1:]
    assert macs(model, v, shape, batch=4) == _cnn_hand_macs(v, 4, shape[0])
    assert flops(model, v, shape) > 0 and latency_ms(model, v, shape, batch=2, repeats=2) > 0
    # BatchNorm needs its statistics: bare params are refused with the collection named.
    for fn in (flops, macs, latency_ms):
        with pytest.raises(PruningError, match="'batch_stats'"):
            fn(model, v["params"], shape)
    assert param_count(v) == param_count(v["params"]) == sum(a.size for a in jax.tree.leaves(v["params"]))


def test_costs_on_linen_bare_params_equal_full_variables():
    model = PlainMLP()
    v = model.init(jax.random.PRNGKey(0), jnp.ones((1, 5)))
    assert macs(model, v["params"], (5,), batch=3) == macs(model, v, (5,), batch=3) == 3 * (5 * 6 + 6 * 3)
    assert flops(model, v["params"], (5,)) == flops(model, v, (5,))
    zeroed = jax.tree.map(lambda a: a.at[0].set(0.0) if a.ndim == 2 else a, v["params"])
    nz = macs(model, zeroed, (5,), batch=3, nonzero=True)
    assert nz == 3 * (4 * 6 + 5 * 3)  # row 0 of each kernel removed: 4x6 and 5x3 nonzeros left


def _transformer_hand_macs(b, t, width, heads, mlp, vocab):
    head_dim = width // heads
    qkv = 3 * b * t * width * width          # three (width -> heads x head_dim) projections
    scores = b * heads * t * t * head_dim    # QKᵀ: both operands are activations
    mix = b * heads * t * t * head_dim       # attention weights @ V
    out = b * t * width * width
    ffn = b * t * width * mlp * 2
    lm = b * t * width * vocab
    return qkv + scores + mix + out + ffn + lm, scores + mix  # the Embed lookup is a gather: 0 MACs


def test_macs_nnx_transformer_counts_attention_matmuls(transformer):
    model, tokens = transformer
    b, t = tokens.shape
    want, attention = _transformer_hand_macs(b, t, width=32, heads=4, mlp=64, vocab=32)
    got = macs(model, None, (t,), batch=b, input_dtype=jnp.int32)
    assert got == want
    # What a kernel-only count (the old behaviour) gives: it misses exactly QKᵀ and AV.
    params = nnx.state(model, nnx.Param)
    kernels = sum(b * t * leaf.size for p, leaf in jax.tree_util.tree_flatten_with_path(params)[0]
                  if "kernel" in jax.tree_util.keystr(p))
    assert got - kernels == attention > 0
    # nonzero=True scales each projection by its kernel's density; QKᵀ / AV stay dense.
    half = jax.tree.map(lambda a: a.at[..., ::2].set(0.0) if a.ndim >= 2 else a, params)
    nz = macs(model, half, (t,), batch=b, nonzero=True, input_dtype=jnp.int32)
    assert nz == (want - attention) // 2 + attention
    assert macs(model, None, (t,), batch=b, input_dtype=jnp.int32) == want  # model not changed


def test_costs_on_nnx_mlp_and_nnx_state_counts():
    model, x = user_nnx_mlp()
    before = model(x)
    d, h, c = 16, 32, 10
    assert macs(model, None, (d,), batch=4) == 4 * (d * h + h * h + h * c)
    assert flops(model, None, (d,), batch=4) >= 2 * macs(model, None, (d,), batch=4)
    assert latency_ms(model, None, (d,), batch=4, repeats=2) > 0
    n = d * h + h + h * h + h + h * c + c
    graphdef, state = nnx.split(model)
    params = nnx.state(model, nnx.Param)
    assert param_count(model) == param_count(state) == param_count(params) == n
    pruned = jax.tree.map(lambda a: jnp.where(jnp.abs(a) < 0.1, 0.0, a), params)
    nonzero = sum(int(np.count_nonzero(np.asarray(a))) for a in jax.tree.leaves(pruned))
    assert param_count(pruned, nonzero=True) == nonzero < n
    assert param_bytes(model) == 4 * n
    with pytest.raises(PruningError, match="nnx model carries its own state"):
        macs(model, {"params": {}}, (d,))
    np.testing.assert_array_equal(model(x), before)


def test_param_count_nnx_state_leaves_out_batch_stats_and_rng():
    class WithBN(nnx.Module):
        def __init__(self, rngs):
            self.lin = nnx.Linear(3, 4, rngs=rngs)
            self.bn = nnx.BatchNorm(4, rngs=rngs)
            self.drop = nnx.Dropout(0.1, rngs=rngs)

        def __call__(self, x):
            return self.drop(self.bn(self.lin(x)))

    model = WithBN(nnx.Rngs(0))
    _, state = nnx.split(model)
    assert param_count(state) == param_count(model) == 3 * 4 + 4 + 4 + 4  # BN scale/bias, not stats
    assert param_bytes(model) > 4 * param_count(model)  # mean/var and RNG state are stored too
    assert macs(model, None, (3,), batch=2) == 2 * 3 * 4  # .eval() copy: no dropout, running stats


# ------------------------------------------------------------------- item 9: activation capture


def _cnn_by_hand(v, x):
    """UserCNN's hidden values computed layer by layer from its variables (train=False)."""
    p, s = v["params"], v["batch_stats"]
    conv = lambda name, a, pp: nn.Conv(pp[name]["kernel"].shape[-1], (3, 3)).apply({"params": pp[name]}, a)
    bn = lambda name, a, pp, ss: nn.BatchNorm(use_running_average=True).apply(
        {"params": pp[name], "batch_stats": ss[name]}, a)
    stem = conv("stem", x, p)
    h = nn.relu(bn("stem_bn", stem, p, s))
    pb, sb = p["block"], s["block"]
    conv_a = conv("conv_a", h, pb)
    post_a = nn.relu(bn("bn_a", conv_a, pb, sb))
    y = bn("bn_b", conv("conv_b", post_a, pb), pb, sb)
    z = nn.max_pool(nn.relu(h + y), (2, 2), (2, 2)).reshape((x.shape[0], -1))
    fc1 = nn.Dense(p["fc1"]["kernel"].shape[-1]).apply({"params": p["fc1"]}, z)
    return {"stem": stem, "stem_post": h, "conv_a": conv_a, "conv_a_post": post_a, "fc1": fc1,
            "fc1_post": nn.relu(fc1)}


LINEN_TAPS = {"stem": "block/conv_a:input", "block/conv_a": "block/conv_b:input", "fc1": "head:input"}


def test_linen_cnn_capture_equals_hand_and_leaves_model_unchanged(cnn):
    model, v, x = cnn
    before = model.apply(v, x)
    hand = _cnn_by_hand(v, x)
    pre = capture_activations(model, v, x, layers=["stem", "*/conv_a", "fc1"])
    assert sorted(pre) == ["block/conv_a", "fc1", "stem"]
    post = capture_activations(model, v, x, layers=LINEN_TAPS)
    for name, key in (("stem", "stem"), ("conv_a", "block/conv_a"), ("fc1", "fc1")):
        np.testing.assert_allclose(pre[key], hand[name], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(post[key], hand[name + "_post"], rtol=1e-5, atol=1e-5)
    assert float(jnp.min(post["fc1"])) == 0.0 > float(jnp.min(pre["fc1"]))  # after vs before ReLU
    after, state = model.apply(v, x, mutable=True)
    np.testing.assert_array_equal(after, before)
    assert set(state) == {"params", "batch_stats"}  # no capture collection left behind
    assert hidden_layers(model, v, x) == ("stem", "block/conv_a", "block/conv_b", "fc1")


def test_linen_cnn_stats_feed_criteria_and_neuron_selection(cnn):
    model, v, x = cnn
    xs = [x[:2], x[2:]]  # streamed in two batches; by hand in one
    stats = collect_activation_stats(model, v, xs, bins=8, layers=LINEN_TAPS)
    hand = _cnn_by_hand(v, x)["fc1_post"]
    assert int(stats["fc1"].count) == hand.shape[0]
    np.testing.assert_allclose(apoz(stats)["fc1"], jnp.mean(hand != 0, axis=0), rtol=1e-6)
    for crit in (entropy, hoyer, stability):
        assert all(s.shape == (stats[k].total.shape[0],) for k, s in crit(stats).items())
    scores = unit_scores_to_tree(apoz(stats), v["params"])
    sparsity = jax.tree_util.tree_map_with_path(
        lambda p, a: 0.5 if jax.tree_util.keystr(p).startswith("['fc1']") else 0.0, v["params"])
    masks = topk_masks(scores, sparsity, structure=Neurons(outputs="head/*"))
    kept = np.asarray(masks["fc1"]["kernel"]).all(axis=0)
    assert kept.sum() == 16  # half of fc1's 32 units
    score = np.asarray(apoz(stats)["fc1"])
    assert score[kept].min() >= score[~kept].max()  # the units with most zeros went


def test_nnx_mlp_capture_equals_hand_and_leaves_model_unchanged():
    model, x = user_nnx_mlp()
    before = model(x)
    state_before = jax.tree.map(np.asarray, nnx.state(model))
    dense = lambda layer, a: a @ layer.kernel[...] + layer.bias[...][None, :]
    inp = dense(model.inp, x)
    mid = dense(model.mid, nnx.relu(inp))
    taps = {"inp": "mid:input", "mid": "out:input"}
    post = capture_activations(model, None, x, layers=taps)
    np.testing.assert_allclose(post["inp"], nnx.relu(inp), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(post["mid"], nnx.relu(mid), rtol=1e-5, atol=1e-5)
    pre = capture_activations(model, None, x, layers="*")
    assert sorted(pre) == ["inp", "mid", "out"]
    np.testing.assert_allclose(pre["inp"], inp, rtol=1e-6, atol=1e-6)
    stats = collect_activation_stats(model, None, [x, 2 * x], bins=8, layers=taps)
    both = jnp.concatenate([nnx.relu(inp), nnx.relu(dense(model.inp, 2 * x))])
    np.testing.assert_allclose(apoz(stats)["inp"], jnp.mean(both != 0, axis=0), rtol=1e-6)
    # Nothing left behind: same classes, no capture slots, same state and outputs.
    assert all(type(m) in (nnx.Linear,) for m in (model.inp, model.mid, model.out))
    assert not any(hasattr(m, "__captures__") for _, m in nnx.iter_modules(model))
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, nnx.state(model)), state_before)
    np.testing.assert_array_equal(model(x), before)
    assert hidden_layers(model, None, x) == ("inp", "mid")
    masks = topk_masks(unit_scores_to_tree(apoz(stats), nnx.state(model, nnx.Param)), 0.5,
                       structure=Neurons(outputs="out/*"), include="*/kernel")
    assert bool(masks["out"]["kernel"][...].all())  # the output layer keeps every class


def test_capture_errors_name_the_problem(cnn):
    model, v, x = cnn
    with pytest.raises(PruningError, match="layers="):
        capture_activations(model, v, x)  # unmodified and no layers: told how to choose them
    with pytest.raises(PruningError, match="matches no called module.*block/conv_a"):
        capture_activations(model, v, x, layers="conv_a")  # a glob matches the whole path
    with pytest.raises(PruningError, match="must match one module"):
        capture_activations(model, v, x, layers={"k": "block/conv_*"})
    mlp, xm = user_nnx_mlp()
    with pytest.raises(PruningError, match="matches no called module"):
        capture_activations(mlp, None, xm, layers="fc9")
    assert type(mlp.inp) is nnx.Linear


def test_hidden_layers_of_nnx_transformer_leave_out_the_lm_head(transformer):
    model, tokens = transformer
    names = hidden_layers(model, None, tokens)
    assert "lm_head" not in names and {"fc", "proj", "attn/query"} <= set(names)
    acts = capture_activations(model, None, tokens, layers={"fc": "proj:input"})
    assert acts["fc"].shape == (*tokens.shape, 64)
