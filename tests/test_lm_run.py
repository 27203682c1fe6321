"""`jaxprune run` of kind 'lm' (issue 18 item 6): train or restore a tiny GPT, prune it one-shot,
write result.json through the one writer; bad lm config values stop before data loads."""

import json
import math

import pytest

import jaxprune.lm.experiment
from jaxprune.cli import main
from jaxprune.results_schema import unknown_fields

CONFIG = "experiments/configs/gpt_shakespeare.py"
TINY = ["num_layers=1", "width=32", "num_heads=2", "context=16", "steps=3", "batch_size=4",
        "calibration=4", "eval_windows=4", "blocksize=16", "--no-progress"]
LM_FIELDS = ("dense_val_perplexity", "val_perplexity", "dense_val_loss", "val_loss", "sparsity",
             "prune_seconds")


def _result(workdir):
    with open(workdir / "result.json") as f:
        return json.load(f)


def test_run_trains_prunes_writes_result_then_restores_the_checkpoint(tmp_path, capsys):
    assert main(["run", CONFIG, "method=sparsegpt", "structure=nm:2:4", *TINY,
                 "--workdir", str(tmp_path)]) == 0
    first = _result(tmp_path)
    assert first["kind"] == "lm" and unknown_fields(first) == []
    for name in LM_FIELDS:
        assert isinstance(first[name], float) and math.isfinite(first[name]), name
    assert first["val_perplexity"] == pytest.approx(math.exp(first["val_loss"]))
    assert first["dense_val_perplexity"] == pytest.approx(math.exp(first["dense_val_loss"]))
    assert first["sparsity"] == 0.5 and first["target_sparsity"] == 0.5  # 2:4, counted from the masks
    assert first["restored"] is False and first["train_steps"] == 3
    assert (tmp_path / "dense").is_dir()
    # A second run in the same workdir prunes the same dense model: restored, same dense loss.
    assert main(["run", CONFIG, "method=magnitude", "sparsity=0.6", *TINY,
                 "--workdir", str(tmp_path)]) == 0
    second = _result(tmp_path)
    assert second["restored"] is True and second["method"] == "magnitude"
    assert second["dense_val_loss"] == pytest.approx(first["dense_val_loss"], abs=1e-6)
    assert second["sparsity"] == pytest.approx(0.6, abs=0.01)
    # A run whose training fields differ from the checkpoint's is refused, naming the field.
    assert main(["run", CONFIG, *TINY, "width=64", "--workdir", str(tmp_path)]) == 2
    assert "config field 'width'" in capsys.readouterr().err


@pytest.mark.parametrize("override, field", [
    ("method=obs", "method"), ("sparsity=1.5", "sparsity"), ("structure=nm:4:2", "structure"),
    ("structure=nm:2:6", "structure"), ("num_heads=3", "num_heads"), ("calibration=0", "calibration"),
    ("dataset=mnist", "dataset"), ("learning_rate=0.0", "learning_rate")])
def test_bad_lm_config_gives_one_error_line_before_data_loads(tmp_path, capsys, monkeypatch, override,
                                                              field):
    def no_data(*args, **kwargs):
        raise AssertionError("the corpus was loaded before the config was checked")

    monkeypatch.setattr(jaxprune.lm.experiment, "load_text", no_data)
    assert main(["run", CONFIG, override, "width=32", "--workdir", str(tmp_path)]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("error: ") and f"'{field}'" in err[0], err
    assert not (tmp_path / "dense").exists() and not (tmp_path / "result.json").exists()


def test_llm_oneshot_sweep_trains_once_and_reuses_the_model(tmp_path):
    from jaxprune.sweep.runner import run_sweep
    from jaxprune.sweep.spec import expand_all, load_sweep

    sweep = load_sweep("experiments/sweeps/llm_oneshot.py")
    full = expand_all(sweep, [])
    assert len(full) == 45
    assert {(c.method, c.structure, c.sparsity) for c in full} == {
        (m, st, sp) for m in ("magnitude", "wanda", "sparsegpt")
        for st, sp in (("unstructured", 0.5), ("unstructured", 0.6), ("unstructured", 0.7),
                       ("nm:2:4", 0.5), ("nm:4:8", 0.5))}
    assert len({c.checkpoint_dir for c in full}) == 1 and len({c.seed for c in full}) == 1
    tiny = [o for o in TINY if o != "--no-progress"] + ["progress=false"]
    configs = expand_all(sweep, tiny)
    picked = [c for c in configs if c.calibration_seed == 2 and c.sparsity == 0.5][:2]
    run_sweep(picked, tmp_path, vmap=False, progress=False, bar=False, compilation_cache=None)
    results = [_result(p) for p in sorted((tmp_path / "runs").iterdir())]
    assert sorted(r["restored"] for r in results) == [False, True]
    assert (tmp_path / "gpt_dense").is_dir()
    assert results[0]["dense_val_loss"] == pytest.approx(results[1]["dense_val_loss"], abs=1e-6)


def test_processes_sharing_a_checkpoint_train_it_once(tmp_path):
    """Two sweep shards started together on one checkpoint_dir: one trains, the other waits on the
    checkpoint lock and restores (without the lock both would train and race on the orbax dir)."""
    import threading

    import ml_collections

    from jaxprune.data.text import load_text

    corpus = load_text("shakespeare")
    cfg = ml_collections.ConfigDict({"kind": "lm", "num_layers": 1, "width": 16, "num_heads": 2,
                                     "context": 8, "steps": 2, "batch_size": 2, "progress": False,
                                     "checkpoint_dir": str(tmp_path / "shared")})
    metas, errors = [], []

    def shard():
        try:
            metas.append(jaxprune.lm.experiment.dense_gpt(cfg, corpus, str(tmp_path))[2])
        except Exception as e:  # surfaced by the assertion below
            errors.append(e)

    threads = [threading.Thread(target=shard) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(m["restored"] for m in metas) == [False, True]
