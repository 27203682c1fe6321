"""`jaxprune run quantize=... qat_epochs=... precision=...`: PQAT keeps zeros, policies, size fields."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxprune.config import apply_overrides, load_config
from jaxprune.errors import ConfigError
from jaxprune.experiment import METHODS, make_run, train_and_evaluate
from jaxprune.harness.precision import F16_LOSS_SCALE, PolicyModel, with_precision
from jaxprune.methods.quantized import quantize_stage
from jaxprune.models import MLP, init_params
from jaxprune.quant import get_policy, quantize

BASE = ["dataset=digits", "epochs=1", "finetune_epochs=0", "sparsity=0.8", "progress=False",
        "latency_batch=0"]


def _config(*overrides):
    return apply_overrides(load_config("experiments/configs/seed_mlp.py"), [*BASE, *overrides])


def test_pqat_keeps_pruned_weights_zero_and_int8_levels():
    run = with_precision(make_run(_config("quantize=int8", "qat_epochs=1")))
    out = METHODS["one_shot"](run)
    before = jax.tree.map(np.asarray, out.params)
    out = quantize_stage(run, out)
    for m, p, p0 in zip(jax.tree.leaves(out.masks), jax.tree.leaves(out.params),
                        jax.tree.leaves(before)):
        assert np.all(np.asarray(p)[~np.asarray(m)] == 0.0)  # pruned stays exactly zero after QAT
    changed = any(not np.array_equal(a, np.asarray(b)) for a, b in
                  zip(jax.tree.leaves(before), jax.tree.leaves(out.params)))
    assert changed  # QAT really trained
    q = quantize(out.params, 8)
    w = np.asarray(out.params["Dense_0"]["kernel"])
    keep = np.asarray(out.masks["Dense_0"]["kernel"])
    values, scale = np.asarray(q["Dense_0"]["kernel"].values), np.asarray(q["Dense_0"]["kernel"].scale)
    # Symmetric per-output-channel int8: every column with a weight left spans the full +-127 range,
    # pruned weights are the level 0, and each weight is within half a step of its level.
    assert np.all(values[~keep] == 0)
    assert np.all(np.abs(values * scale - w) <= 0.5 * scale + 1e-7)
    live = keep.any(axis=0)
    np.testing.assert_array_equal(np.abs(values).max(axis=0)[live], 127)
    # int8 after PQAT costs (almost) no accuracy. Measured on this 1-epoch, 80 %-sparse digits MLP
    # (10 classes, chance 0.1): 0.256 before QAT, 0.331 after, 0.337 quantized.
    assert out.extra["quantize_bits"] == 8
    assert out.extra["quantized_test_accuracy"] > 0.25, (out.extra, out.test_accuracy)
    assert abs(out.extra["quantized_test_accuracy"] - out.test_accuracy) <= 0.02, out.extra


def test_run_reports_quantized_accuracy_and_bytes(tmp_path):
    r = train_and_evaluate(_config("quantize=int4"), tmp_path)
    assert r["quantize_bits"] == 4
    # int4 without QAT on digits (chance 0.1): measured 0.265 quantized, 0.256 in float.
    assert r["quantized_test_accuracy"] > 0.2, (r["quantized_test_accuracy"], r["test_accuracy"])
    assert abs(r["quantized_test_accuracy"] - r["test_accuracy"]) <= 0.05, r
    b = r["bytes"]
    assert {"dense_f32", "dense_int8", "bitmask", "csr", "coo", "gzip"} <= set(b)
    assert b["dense_f32"] == 4 * r["total_params"]
    assert b["gzip"] < b["dense_f32"] * 0.5  # 80 % zeros and 4-bit values compress well


@pytest.mark.parametrize("name", ["bf16", "f16"])
def test_policy_model_computes_in_half_and_grads_match_f32(name):
    model = MLP((16, 4))
    v = init_params(model, jax.random.PRNGKey(0), (1, 8))
    x = jax.random.normal(jax.random.PRNGKey(1), (32, 8))
    y = jnp.arange(32) % 4
    policy = get_policy(name)
    pm = PolicyModel(model, policy, F16_LOSS_SCALE if name == "f16" else None)

    def loss(m, p):
        return optax.softmax_cross_entropy_with_integer_labels(m.apply({"params": p}, x), y).mean()

    l32, g32 = jax.value_and_grad(lambda p: loss(model, p))(v["params"])
    lh, gh = jax.value_and_grad(lambda p: loss(pm, p))(v["params"])
    assert pm.apply(v, x).dtype == jnp.float32
    assert lh != l32 and abs(lh - l32) < 0.05  # really half precision, close to float32
    for a, b in zip(jax.tree.leaves(g32), jax.tree.leaves(gh)):
        assert b.dtype == jnp.float32
        np.testing.assert_allclose(a, b, atol=0.02, rtol=0.1)  # the loss scale is undone


def test_f16_overflowing_gradients_are_zeroed_not_nan():
    model = MLP((4, 2))
    v = init_params(model, jax.random.PRNGKey(0), (1, 3))
    pm = PolicyModel(model, get_policy("f16"), 1e30)  # absurd scale: every gradient overflows
    g = jax.grad(lambda p: pm.apply({"params": p}, jnp.ones((2, 3))).sum())(v["params"])
    assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(g))


def test_masks_survive_mixed_precision_training(tmp_path):
    r = train_and_evaluate(_config("precision=bf16", "finetune_epochs=1"), tmp_path)
    assert r["precision"] == "bf16"
    assert r["value_sparsity"] == pytest.approx(r["sparsity"]) == pytest.approx(0.8, abs=1e-3)


@pytest.mark.parametrize("overrides, match", [
    (["quantize=int3"], "quantize"),
    (["qat_epochs=2"], "qat_epochs"),
    (["quantize=int8", "qat_epochs=-1"], "qat_epochs"),
    (["precision=f64"], "precision"),
])
def test_bad_quantization_configs(tmp_path, overrides, match, monkeypatch):
    import jaxprune.data as jdata

    monkeypatch.setattr(jdata, "load", lambda *a, **k: pytest.fail("validated after loading data"))
    with pytest.raises(ConfigError, match=match):
        train_and_evaluate(_config(*overrides), tmp_path)
