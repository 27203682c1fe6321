"""`jaxprune run structure=neurons ...`: unit criteria, masked vs shrunk, cost fields, errors."""

import json

import numpy as np
import pytest

from jaxprune.cli import main
from jaxprune.config import apply_overrides, load_config
from jaxprune.errors import ConfigError
from jaxprune.experiment import METHODS, make_run, train_and_evaluate
from jaxprune.harness import train_dense, unwrap
from jaxprune.models.common import train_kwargs

BASE = ["dataset=digits", "epochs=1", "finetune_epochs=0", "structure=neurons", "sparsity=0.5",
        "progress=False", "latency_batch=0", "calibration_batches=2"]


_CACHE: list = []  # the module's dense cache directory (set by _dense_cache)


@pytest.fixture(scope="module", autouse=True)
def _dense_cache(tmp_path_factory):
    """Runs of this module that differ only after the dense phase (masked vs shrunk, criteria) share
    it through ``dense_cache_dir``: bit for bit the same runs (tests/test_harness.py checks that),
    one dense training and one compile fewer each."""
    _CACHE[:] = [str(tmp_path_factory.mktemp("dense_cache"))]
    yield
    _CACHE.clear()


def _run(tmp_path, *overrides, model="experiments/configs/seed_mlp.py"):
    config = apply_overrides(load_config(model), [*BASE, f"dense_cache_dir={_CACHE[0]}", *overrides])
    return train_and_evaluate(config, tmp_path)


@pytest.mark.parametrize("criterion", ["entropy", "apoz", "hoyer", "stability", "l2"])
def test_each_criterion_shrinks_hidden_layers_only(tmp_path, criterion):
    r = _run(tmp_path, f"criterion={criterion}", "shrink=true", "sparsity=0.75")
    # The 128 hidden units lose exactly 96; the 10 outputs are never touched.
    assert r["units_kept"] == {"Dense_0": 32}
    # Real size of the shrunk 64-32-10 model (digits are 8x8).
    assert r["params_final"] == 64 * 32 + 32 + 32 * 10 + 10
    assert r["flops_final"] < 0.5 * r["flops_dense"]
    assert r["criterion"] == criterion and r["shrunk"] is True
    assert json.loads((tmp_path / "result.json").read_text())["params_final"] == r["params_final"]


def test_shrunk_equals_masked_before_finetuning(tmp_path):
    masked = _run(tmp_path / "m", "criterion=apoz", "shrink=false")
    shrunk = _run(tmp_path / "s", "criterion=apoz", "shrink=true")
    assert masked["pruned_test_accuracy"] == shrunk["pruned_test_accuracy"]
    assert masked["units_kept"] == shrunk["units_kept"]
    assert masked["params_final"] == masked["total_params"]  # a masked model keeps its shapes
    assert shrunk["params_final"] < shrunk["total_params"]
    assert masked["sparsity"] == shrunk["sparsity"] > 0


def test_mean_replacement_moves_the_shrunk_model_towards_the_dense_one():
    # 64-128-10 MLP: the logits are linear in the hidden units, so removing units shifts them by
    # r(x) = -sum_j h_j(x) W[j], and folding the units' mean activation into the output bias leaves
    # r(x) - E[r]: a constant shift of every input's logits, and a smaller error against the dense
    # model (on the calibration batches exactly by ||E[r]||^2; measured on the test split: 0.56x).
    config = apply_overrides(load_config("experiments/configs/seed_mlp.py"),
                             [*BASE, "criterion=l2", "shrink=true", "sparsity=0.75"])
    run = make_run(config)
    dense = train_dense(run)  # the same seeded training one_shot starts with
    plain = METHODS["one_shot"](run)
    mr = METHODS["one_shot"](make_run(apply_overrides(config, ["mean_replacement=true"])))
    assert mr.extra["mean_replacement"] is True and plain.extra["units_kept"] == mr.extra["units_kept"]
    x = run.test[0]
    d = np.asarray(run.model.apply({"params": dense.params}, x))
    p = np.asarray(plain.final_model.apply(plain.final_variables, x))
    m = np.asarray(mr.final_model.apply(mr.final_variables, x))
    shift = m - p
    assert np.abs(shift).max() > 0.05  # measured 0.47
    np.testing.assert_allclose(shift, np.broadcast_to(shift[:1], shift.shape), atol=1e-4)
    err_plain, err_mr = np.mean((p - d) ** 2), np.mean((m - d) ** 2)
    assert err_mr < 0.8 * err_plain, (err_mr, err_plain)


def test_finetuned_shrunk_model_and_latency_fields(tmp_path):
    r = _run(tmp_path, "criterion=hoyer", "shrink=true", "finetune_epochs=1", "latency_batch=32")
    assert r["units_kept"] == {"Dense_0": 64}
    assert r["latency_dense_ms"] > 0 and r["latency_final_ms"] > 0 and r["latency_batch"] == 32
    assert r["latency_lowering"] == "xla"
    # digits, 10 classes (chance 0.1): measured 0.79 dense, 0.65 shrunk, 0.82 after fine-tuning.
    assert r["test_accuracy"] > 0.6, r["test_accuracy"]


def test_latency_fast_times_both_models_under_the_fast_lowerings(tmp_path, monkeypatch):
    import contextlib

    import jaxprune.harness.results as results

    entered, original = [], results.fast_lowerings

    @contextlib.contextmanager
    def recording():
        entered.append(1)
        with original():
            yield

    monkeypatch.setattr(results, "fast_lowerings", recording)
    r = _run(tmp_path, "criterion=l2", "shrink=true", "latency_batch=8", "latency_fast=true")
    assert entered == [1] and r["latency_lowering"] == "fast"
    assert r["latency_dense_ms"] > 0 and r["latency_final_ms"] > 0
    entered.clear()
    r = _run(tmp_path, "criterion=l2", "shrink=true", "latency_batch=8")
    assert entered == [] and r["latency_lowering"] == "xla"


@pytest.mark.parametrize("overrides, match", [
    (["criterion=nope"], "criterion"),
    (["criterion=l2", "mean_replacement=true"], "shrink=true"),
    (["criterion=entropy", "calibration_batches=0"], "calibration_batches"),
    (["criterion=l2", "structure=unstructured"], "structure=neurons"),
    (["criterion=l2", "shrink=true", "quantize=int8"], "shrink"),
])
def test_bad_structured_configs(tmp_path, overrides, match, monkeypatch):
    import jaxprune.data as jdata

    monkeypatch.setattr(jdata, "load", lambda *a, **k: pytest.fail("validated after loading data"))
    with pytest.raises(ConfigError, match=match):
        _run(tmp_path, *overrides)


def test_cli_acceptance_command_shape(tmp_path, capsys):
    rc = main(["run", "experiments/configs/lenet300.py", *BASE, "criterion=stability", "shrink=true",
               "--workdir", str(tmp_path)])
    assert rc == 0
    r = json.loads((tmp_path / "result.json").read_text())
    assert {"flops_dense", "flops_final", "params_final"} <= set(r)
    # `sparsity` counts the removed units' own kernel columns (the masked-model view).
    assert np.isclose(r["sparsity"], (64 * 150 + 300 * 50) / (64 * 300 + 300 * 100 + 100 * 10))


# ------------------------------------------------------------------ models without a hand-written plan
# They shrink through the traced graph (jaxprune.methods.traced): registered here at small sizes so that
# a run on 8x8 digits stays fast.
from jaxprune.models import MODELS, ResNet18, ViT, register_model  # noqa: E402

TRACED = {"tiny_vit": lambda n: ViT(n, patch=4, width=16, depth=1, num_heads=2, mlp_dim=16),
          "tiny_resnet18": lambda n: ResNet18(n, stage_channels=(8, 16), blocks_per_stage=1)}


@pytest.fixture
def traced_models():
    for name, build in TRACED.items():
        register_model(name, build)
    yield
    for name in TRACED:
        del MODELS[name]


@pytest.mark.parametrize("name", list(TRACED))
def test_model_without_plan_shrinks_through_the_trace(tmp_path, traced_models, name):
    masked = _run(tmp_path / "m", f"model={name}", "criterion=l2", "shrink=false")
    shrunk = _run(tmp_path / "s", f"model={name}", "criterion=l2", "shrink=true")
    assert shrunk["units_kept"] == masked["units_kept"] and shrunk["units_kept"]
    for layer, kept in shrunk["units_kept"].items():  # every group loses round(0.5 n) of its n units
        assert kept == shrunk["units_total"][layer] - round(0.5 * shrunk["units_total"][layer]), layer
    assert shrunk["params_final"] < shrunk["total_params"] == masked["params_final"]
    assert shrunk["flops_final"] < shrunk["flops_dense"]
    if name == "tiny_resnet18":  # no norm over the pruned axes in eval mode: masked == shrunk
        assert masked["pruned_test_accuracy"] == shrunk["pruned_test_accuracy"]


def test_model_without_plan_refuses_mean_replacement(tmp_path, traced_models):
    with pytest.raises(ConfigError, match="mean_replacement.*shrink plan"):
        _run(tmp_path, "model=tiny_vit", "shrink=true", "mean_replacement=true")


def test_vit_loses_whole_heads(tmp_path, traced_models):
    masked = _run(tmp_path / "m", "model=tiny_vit", "structure=heads", "criterion=l2", "shrink=false")
    shrunk = _run(tmp_path / "s", "model=tiny_vit", "structure=heads", "criterion=taylor", "shrink=true")
    # One block of 2 heads: one head goes, with its q/k/v columns and its rows of the output projection.
    assert list(shrunk["units_total"].values()) == [2] and list(shrunk["units_kept"].values()) == [1]
    assert shrunk["total_params"] - shrunk["params_final"] == 3 * (16 * 8 + 8) + 8 * 16
    # A head's softmax sees only its own q.k: removing it equals zeroing it.
    assert masked["units_kept"] == {k: 1 for k in shrunk["units_kept"]}
    assert shrunk["flops_final"] < shrunk["flops_dense"]


def test_random_criterion_is_seeded_and_not_the_weight_norm(traced_models):
    """`criterion=random`: the baseline. Same seed, same scores; another seed or l2 gives others."""
    from jaxprune.methods.structured import unit_scores
    from jaxprune.methods.traced import traced_keep

    def run_for(*overrides, model="experiments/configs/seed_mlp.py"):
        return make_run(apply_overrides(load_config(model), [*BASE, *overrides]))

    run = run_for("criterion=random")
    state = train_dense(run)
    s0, _ = unit_scores(run, state.params, state.model_state, "random", ("Dense_0",))
    again, _ = unit_scores(run, state.params, state.model_state, "random", ("Dense_0",))
    l2, _ = unit_scores(run, state.params, state.model_state, "l2", ("Dense_0",))
    other = run_for("criterion=random", "seed=1")
    s1, _ = unit_scores(other, state.params, state.model_state, "random", ("Dense_0",))
    assert s0["Dense_0"].shape == (128,) and np.array_equal(s0["Dense_0"], again["Dense_0"])
    assert not np.array_equal(np.argsort(s0["Dense_0"]), np.argsort(s1["Dense_0"]))
    assert not np.array_equal(np.argsort(s0["Dense_0"]), np.argsort(np.asarray(l2["Dense_0"])))
    # The traced path (a model without a plan): scores per group, seeded the same way.
    run = run_for("criterion=random", "model=tiny_resnet18")
    state = train_dense(run)
    example = run.train[0][:1]
    base, kwargs = unwrap(run.model), train_kwargs(unwrap(run.model))
    plan, _ = traced_keep(run, base, state.params, state.model_state, example, kwargs)
    plan2, _ = traced_keep(run, base, state.params, state.model_state, example, kwargs)
    with run.config.unlocked():
        run.config.criterion = "l2"
    norm, _ = traced_keep(run, base, state.params, state.model_state, example, kwargs)
    assert plan.scores and all(np.array_equal(plan.scores[g], plan2.scores[g]) for g in plan.scores)
    assert any(not np.array_equal(plan.keep[g], norm.keep[g]) for g in plan.keep)


def test_heads_needs_one_shot(tmp_path):
    with pytest.raises(ConfigError, match="structure='heads'"):
        _run(tmp_path, "structure=heads", "method=gradual_magnitude")
