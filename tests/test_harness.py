"""The run harness (jaxprune.harness): the docs' example method, the trainers, the config schema, the
registries (the harness modules' doctests run in tests/test_docs.py)."""

import re
from pathlib import Path

import jax
import ml_collections
import numpy as np
import optax
import pytest

import jaxprune.harness as harness
from jaxprune.config import apply_overrides, load_config, parse_value
from jaxprune.errors import ConfigError
from jaxprune.experiment import KINDS, METHODS, make_run, train_and_evaluate
from jaxprune.harness import (FIELDS, GroupDiverged, GroupTrainer, SequentialTrainer,
                              method_fields, run_in_group, validate_config)
from jaxprune.harness.schema import REQUIRED
from jaxprune.models import MODELS, get_model, init_params
from jaxprune.train import create_train_state

DOCS = Path(__file__).resolve().parents[1] / "docs" / "methods.md"
BASE = ["dataset=digits", "epochs=2", "batch_size=128", "sparsity=0.6", "progress=False", "latency_batch=0"]


def _config(*overrides):
    return apply_overrides(load_config("experiments/configs/seed_mlp.py"), [*BASE, *overrides])


@pytest.fixture
def docs_method():
    """The ten-line example of docs/methods.md, executed as written (registers ``prune_at_half``)."""
    code = re.search(r"## Adding a method.*?```python\n(.*?)```", DOCS.read_text(), re.S).group(1)
    body = [line for line in code.splitlines() if line.startswith("    ")]
    assert len(body) <= 10, "the docs promise a ten-line method"
    namespace: dict = {}
    # tests/test_docs.py may have run the same block in this process already: start from a registry
    # without it, and leave the registry as it was found.
    before = METHODS.pop("prune_at_half", None)
    exec(compile(code, str(DOCS), "exec"), namespace)
    yield namespace["prune_at_half"]
    METHODS.pop("prune_at_half")
    if before is not None:
        METHODS["prune_at_half"] = before


def test_the_docs_example_method_registers_and_runs(docs_method, tmp_path):
    assert METHODS["prune_at_half"] is docs_method
    r = train_and_evaluate(_config("method=prune_at_half", "allocation=uniform"), tmp_path)
    assert r["method"] == "prune_at_half" and r["dense_test_accuracy"] is None
    assert r["sparsity"] == pytest.approx(0.6, abs=1e-3) and r["value_sparsity"] >= r["sparsity"]
    assert r["fit_sha256"] and 0.1 < r["test_accuracy"] <= 1.0

    # The same function, grouped: its fit calls meet in a GroupTrainer; bit-identical results.
    configs = [_config("method=prune_at_half", f"seed={s}", f"sparsity={sp}") for s, sp in ((0, 0.5), (1, 0.7))]
    seq = [docs_method(make_run(c)) for c in configs]
    trainer = GroupTrainer(2)
    grouped = run_in_group(trainer, [lambda c=c: docs_method(make_run(c, trainer)) for c in configs])
    for a, b in zip(seq, grouped):
        for x, y in zip(jax.tree.leaves((a.params, a.masks)), jax.tree.leaves((b.params, b.masks))):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
        assert a.pruned_test_accuracy == b.pruned_test_accuracy


def test_registering_a_taken_name_is_an_error():
    with pytest.raises(ConfigError, match="already registered"):
        harness.register_method("one_shot")(lambda run: None)
    with pytest.raises(ConfigError, match="unknown"):
        harness.get_method("nope")


def _tiny_runs(n):
    model = get_model("tutorial_mlp", 10)
    x = np.zeros((16, 8, 8, 1), np.float32)
    y = np.zeros(16, np.int32)
    cfg = ml_collections.ConfigDict({"seed": 0, "batch_size": 8, "progress": False})
    variables = init_params(model, jax.random.PRNGKey(0), (1, 8, 8, 1))
    return [harness.Run(cfg, model, variables, (x, y), (x, y), jax.random.PRNGKey(i)) for i in range(n)]


def test_group_trainer_refuses_runs_that_ask_for_different_phases():
    runs, tx = _tiny_runs(2), optax.sgd(0.1)
    trainer = GroupTrainer(2)

    def work(i):
        def go():
            state = create_train_state(runs[i].variables, tx)
            return trainer.fit(runs[i], state, tx, epochs=1 + i, desc="dense")
        return go

    with pytest.raises(GroupDiverged, match="epochs"):
        run_in_group(trainer, [work(0), work(1)])


def test_group_trainer_releases_every_run_when_one_fails():
    runs, tx = _tiny_runs(3), optax.sgd(0.1)
    trainer = GroupTrainer(3)

    def ok(i):
        return lambda: trainer.fit(runs[i], create_train_state(runs[i].variables, tx), tx, epochs=1)

    def bad():
        raise RuntimeError("run 2 broke")

    with pytest.raises(RuntimeError, match="run 2 broke"):  # and nothing waits forever
        run_in_group(trainer, [ok(0), ok(1), bad])


def test_group_trainer_goes_on_when_a_run_finishes_early():
    runs, tx = _tiny_runs(2), optax.sgd(0.1)
    trainer = GroupTrainer(2)
    seq = SequentialTrainer().fit(runs[1], create_train_state(runs[1].variables, tx), tx, epochs=1)
    out = run_in_group(trainer, [lambda: "done", lambda: trainer.fit(
        runs[1], create_train_state(runs[1].variables, tx), tx, epochs=1)])
    assert out[0] == "done"
    for x, y in zip(jax.tree.leaves(seq), jax.tree.leaves(out[1])):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# ------------------------------------------------------------------------------------------- schema


def test_every_config_field_has_a_spec_and_the_shipped_configs_pass():
    config = load_config("experiments/configs/seed_mlp.py")
    assert set(config) == set(FIELDS), set(config) ^ set(FIELDS)
    for name, spec in FIELDS.items():
        value = config[name]
        spec.check(name, value)  # the shipped defaults fit their own specs
        assert spec.default == value or name in ("epochs", "batch_size"), name
    validate_config(config)
    assert set(REQUIRED) <= set(FIELDS)


def test_method_hyperparameters_are_discoverable():
    assert set(method_fields("imp")) == {"imp_rate", "imp_output_rate", "rewind_epoch", "rewind_step"}
    assert set(method_fields("set")) == {"drop_fraction", "prune_end", "update_every"}
    for name in METHODS:  # every field a method lists is a real field
        assert set(method_fields(name)) <= set(FIELDS)


@pytest.mark.parametrize("overrides, message", [
    (["finetune_learning_rate='abc'"], "'finetune_learning_rate' must be a float or None, got 'abc'"),
    (["finetune_learning_rate=-1.0"], "'finetune_learning_rate' must be > 0"),
    (["finetune_learning_rate=0.0"], "'finetune_learning_rate' must be > 0"),
    (["method=gradual_magnitude", "prune_begin=0.9", "prune_end=0.1"], "prune_begin must be below"),
    (["sparsity=1.5"], "'sparsity' must be >= 0 and <= 1"),
    (["batch_size=0"], "'batch_size' must be >= 1"),
    (["shrink=1"], "'shrink' must be a bool"),
    (["drop_fraction=0.0"], "'drop_fraction' must be > 0 and <= 1"),
    (["learning_rate=nan"], "'learning_rate' must be finite"),
])
def test_bad_fields_name_the_field(overrides, message):
    config = _config()
    with config.unlocked():
        for item in overrides:
            key, value = item.split("=", 1)
            with config.ignore_type():
                config[key] = float("nan") if value == "nan" else parse_value(value)
    with pytest.raises(ConfigError) as err:
        validate_config(config)
    assert message in str(err.value)


def test_a_config_missing_a_field_names_it():
    config = _config()
    del config["learning_rate"]
    with pytest.raises(ConfigError, match="'learning_rate' is missing"):
        validate_config(config)


def test_registries_are_complete():
    """Run kinds, methods, models: each entry is reachable, described, and matches the result schema."""
    from jaxprune.results_schema import KIND_NAMES

    assert set(KINDS) == set(KIND_NAMES) == {"nn", "svm", "tree", "lm"}
    for name, fn in METHODS.items():
        assert callable(fn) and fn.__doc__, name
        assert harness.get_method(name) is fn
    for name in MODELS:
        model = get_model(name, 10)
        assert hasattr(model, "apply") and hasattr(model, "init"), name


# ------------------------------------------------------------------ dense_cache_dir
def test_dense_cache_gives_the_same_runs_and_trains_once(tmp_path, capfd):
    base = ["dataset=digits", "epochs=1", "finetune_epochs=1", "structure=neurons", "criterion=l2",
            "progress=False", "latency_batch=0", "calibration_batches=2", "model=tutorial_mlp"]
    cfg = lambda *o: apply_overrides(load_config("experiments/configs/seed_mlp.py"), [*base, *o])  # noqa: E731
    cache = f"dense_cache_dir={tmp_path / 'cache'}"
    plain = train_and_evaluate(cfg("sparsity=0.75"), tmp_path / "plain")
    capfd.readouterr()
    first = train_and_evaluate(cfg(cache, "sparsity=0.5"), tmp_path / "a")
    assert "restored" not in capfd.readouterr().err
    again = train_and_evaluate(cfg(cache, "sparsity=0.75", "criterion=entropy"), tmp_path / "b")
    assert "phase 0 (dense): finished; restored" in capfd.readouterr().err
    cached = train_and_evaluate(cfg(cache, "sparsity=0.75"), tmp_path / "c")
    entries = [p.name for p in (tmp_path / "cache").iterdir() if not p.name.endswith(".lock")]
    assert len(entries) == 1 and entries[0].startswith("dense-")
    # Bit for bit the run that trained its own dense phase: every phase's digest, every figure.
    same = {k: v for k, v in plain.items() if k != "wall_s"}
    assert {k: cached[k] for k in same} == same
    assert first["dense_test_accuracy"] == again["dense_test_accuracy"] == plain["dense_test_accuracy"]
    assert again["criterion"] == "entropy" and again["units_kept"] == plain["units_kept"]
    # A field the dense phase reads makes a new entry.
    other = train_and_evaluate(cfg(cache, "sparsity=0.75", "learning_rate=0.01"), tmp_path / "d")
    assert len([p for p in (tmp_path / "cache").iterdir() if not p.name.endswith(".lock")]) == 2
    assert other["dense_test_accuracy"] != plain["dense_test_accuracy"]
