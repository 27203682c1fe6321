"""Sweeps: expansion, stable keys, the resumable runner (shards, torn lines, SIGKILL), the report."""

import csv
import glob
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import ml_collections
import pytest

from jaxprune.cli import main
from jaxprune.errors import ConfigError, DataError
from jaxprune.sweep import (Sweep, best_strategy, cases, expand, expand_all, load_results, load_sweep,
                            product, read_records, run_key, run_sweep, summarize, write_report, zip_)
from jaxprune.sweep.spec import config_dict
from jaxprune.sweep.runner import append_record, parse_shard, repair_tail, results_path

ROOT = Path(__file__).resolve().parents[1]
SEED = str(ROOT / "experiments/configs/seed_mlp.py")
SWEEP_FILES = sorted(glob.glob(str(ROOT / "experiments/sweeps/*.py")))


def _base():
    return ml_collections.ConfigDict({"method": "none", "sparsity": 0.0, "seed": 0, "lr": 0.1,
                                      "opt": {"name": "adam", "b1": 0.9}, "progress": True})


# --------------------------------------------------------------------------------------------------
# Expansion


def test_product_and_zip_expand_in_nested_loop_order():
    s = Sweep(_base(), [zip_({"method": ["one_shot", "gradual_magnitude"], "opt.name": ["sgd", "adam"]}),
                        product({"sparsity": [0.5, 0.9], "seed": [0, 1, 2]})])
    got = [(c.method, c.opt.name, c.sparsity, c.seed) for c in expand(s)]
    assert len(got) == 2 * 2 * 3
    assert got[:4] == [("one_shot", "sgd", 0.5, 0), ("one_shot", "sgd", 0.5, 1),
                       ("one_shot", "sgd", 0.5, 2), ("one_shot", "sgd", 0.9, 0)]
    assert got[-1] == ("gradual_magnitude", "adam", 0.9, 2)
    assert got == [(c.method, c.opt.name, c.sparsity, c.seed) for c in expand(s)]  # deterministic
    # Ints given for a float field become floats (same key as the float), base untouched.
    c = expand(Sweep(_base(), [product({"sparsity": [1]})]))[0]
    assert isinstance(c.sparsity, float) and _base().sparsity == 0.0


def test_cases_overrides_and_concatenation_dedupe():
    base = _base()
    s = Sweep(base, [cases([{"method": "one_shot", "opt.b1": 0.5}, {"method": "snip"}])])
    cs = expand(s, ["lr=0.01"])
    assert [(c.method, c.opt.b1, c.lr) for c in cs] == [("one_shot", 0.5, 0.01), ("snip", 0.9, 0.01)]
    twice = expand_all([Sweep(base, [product({"seed": [0, 1]})]), Sweep(base, [product({"seed": [1, 2]})])])
    assert [c.seed for c in twice] == [0, 1, 2]


@pytest.mark.parametrize("make, message", [
    (lambda: expand(Sweep(_base(), [product({"sparsty": [0.5]})])), "'sparsty'"),
    (lambda: expand(Sweep(_base(), [product({"opt.nope": [1]})])), "'opt.nope'"),
    (lambda: expand(Sweep(_base(), [product({"lr.x": [1]})])), "'lr.x'"),
    (lambda: expand(Sweep(_base(), [product({"seed": ["a"]})])), "'seed'"),
    (lambda: zip_({"method": ["a", "b"], "sparsity": [0.5]}), "equal lengths"),
    (lambda: product({"seed": 3}), "'seed'"),
    (lambda: product({"seed": []}), "'seed'"),
    (lambda: cases([]), "empty"),
    (lambda: Sweep(_base(), [product({"seed": [0]}), zip_({"seed": [1]})]), "'seed'"),
    (lambda: Sweep(_base(), [{"seed": [0]}]), r"axes\[0\]"),
    (lambda: expand(Sweep(_base(), [product({"seed": [0, 1]})]), ["seed=3"]), "'seed'"),
    (lambda: expand(Sweep(_base(), [product({"seed": [0, 1]})]), ["nope=3"]), "'nope'"),
])
def test_expansion_errors_name_the_key(make, message):
    with pytest.raises(ConfigError, match=message):
        make()


def test_run_key_is_stable_and_ignores_progress():
    a, b = expand(Sweep(_base(), [product({"seed": [0, 1]})]))
    assert run_key(a) == run_key(ml_collections.ConfigDict(a.to_dict())) and len(run_key(a)) == 12
    assert run_key(a) != run_key(b)
    with a.unlocked():
        a.progress = False
    assert run_key(a) == run_key(expand(Sweep(_base(), [product({"seed": [0]})]))[0])
    # A recorded key: any change to the hashing rule would orphan existing results files.
    assert run_key({"seed": 0, "sparsity": 0.5}) == "1b247614004d"  # sha256('{"seed":0,"sparsity":0.5}')


@pytest.mark.parametrize("path", SWEEP_FILES, ids=lambda p: Path(p).stem)
def test_every_sweep_file_loads_and_expands(path):
    from jaxprune.experiment import validate_config as _validate
    configs = expand_all(load_sweep(path))
    assert configs and len({run_key(c) for c in configs}) == len(configs)
    for c in configs:
        _validate(c)  # method, scorer, allocation, sparsity... all known


def test_reproduction_sweeps_use_the_paper_points():
    from jaxprune.methods.runs import imp_rounds
    from jaxprune.scores import SCORERS
    lth = expand_all(load_sweep(ROOT / "experiments/sweeps/lth_lenet300.py"))
    imp = sorted({c.sparsity for c in lth if c.method == "imp"})
    assert [imp_rounds(s, 0.2) for s in imp] == [3, 6, 9, 12, 15]
    assert imp[-1] == pytest.approx(0.9648, abs=1e-4)
    sb = expand_all(load_sweep(ROOT / "experiments/sweeps/shrinkbench_baselines.py"))
    assert sorted({round(1 / (1 - c.sparsity)) for c in sb if c.method != "none"}) == [2, 4, 8, 16, 32]
    assert {c.scorer for c in sb} <= set(SCORERS)


def test_demo_sweep_shape():
    configs = expand_all(load_sweep(ROOT / "experiments/sweeps/demo.py"))
    assert len(configs) == 3 * 4 * 2 + 2
    assert sorted({(c.method, c.scorer) for c in configs}) == [
        ("gradual_magnitude", "magnitude"), ("none", "magnitude"), ("one_shot", "magnitude"),
        ("one_shot", "random")]


# --------------------------------------------------------------------------------------------------
# Runner (tiny runs on digits)


def _tiny(n_seeds=2, sparsities=(0.5, 0.8), epochs=1):
    from jaxprune.config import load_config
    base = load_config(SEED)
    # allocation='uniform': exact per-layer counts, so runs differing in seed compile the same programs.
    base.dataset, base.epochs, base.batch_size, base.latency_batch = "digits", epochs, 64, 0
    base.allocation, base.progress = "uniform", False
    return expand(Sweep(base, [product({"sparsity": list(sparsities), "seed": list(range(n_seeds))})]))


def _lines(path):
    with open(path) as f:
        return [json.loads(line) for line in f.read().splitlines()]


@pytest.fixture
def fake_training(monkeypatch):
    """``train_and_evaluate`` replaced by an instant stand-in (the runner logic, not the training)."""
    import jaxprune.experiment
    calls = []

    def fake(config, workdir):
        calls.append(config)
        result = {"dataset": config.dataset, "method": config.method, "seed": config.seed,
                  "target_sparsity": config.sparsity, "test_accuracy": 0.9 - config.sparsity / 10}
        os.makedirs(workdir, exist_ok=True)
        Path(workdir, "result.json").write_text(json.dumps(result))
        return result

    monkeypatch.setattr(jaxprune.experiment, "train_and_evaluate", fake)
    return calls


def test_runner_trains_on_digits_and_rerun_skips(tmp_path):
    configs = _tiny(n_seeds=1, sparsities=(0.5,))
    out = run_sweep(configs, tmp_path, vmap=False, bar=False, note=lambda m: None)
    assert (out.planned, out.skipped, out.ran) == (1, 0, 1)
    line, = _lines(tmp_path / "results.jsonl")
    assert line["key"] == run_key(configs[0]) and line["config"] == config_dict(configs[0])
    assert "progress" not in line["config"] and line["config"]["sparsity"] == 0.5
    result = line["result"]
    assert result["dataset"] == "digits" and result["test_accuracy"] > 0.3
    assert result["sparsity"] == pytest.approx(0.5, abs=1e-3)
    assert json.loads((tmp_path / "runs" / line["key"] / "result.json").read_text()) == result
    again = run_sweep(configs, tmp_path, vmap=False, bar=False, note=lambda m: None)
    assert (again.skipped, again.ran) == (1, 0) and len(_lines(tmp_path / "results.jsonl")) == 1


def test_runner_with_the_real_vmapped_module(tmp_path):
    """Two runs differing only in seed: one vmapped group (when jaxprune.sweep.vmapped exists)."""
    vmapped = pytest.importorskip("jaxprune.sweep.vmapped")
    configs = _tiny(n_seeds=2, sparsities=(0.5,))
    assert vmapped.vmap_groups(configs) == [[0, 1]]
    out = run_sweep(configs, tmp_path, bar=False, note=lambda m: None)
    lines = _lines(tmp_path / "results.jsonl")
    assert out.ran == 2 and [r["key"] for r in lines] == [run_key(c) for c in configs]
    assert all(r["result"].get("vmapped") == 2 and r["result"]["test_accuracy"] > 0.3 for r in lines)


def test_runner_writes_each_run_exactly_once(tmp_path, fake_training):
    configs = _tiny(n_seeds=3)
    assert run_sweep(configs, tmp_path, vmap=False, bar=False, note=lambda m: None).ran == 6
    assert run_sweep(configs, tmp_path, vmap=False, bar=False, note=lambda m: None).ran == 0
    assert len(fake_training) == 6
    assert [r["key"] for r in _lines(tmp_path / "results.jsonl")] == [run_key(c) for c in configs]
    # A longer sweep in the same directory runs only the new configs.
    more = _tiny(n_seeds=4)
    out = run_sweep(more, tmp_path, vmap=False, bar=False, note=lambda m: None)
    assert (out.skipped, out.ran) == (6, 2) and len(_lines(tmp_path / "results.jsonl")) == 8


def test_shards_cover_each_run_once_and_report_merges(tmp_path, fake_training):
    configs = _tiny(n_seeds=1, sparsities=(0.5, 0.6, 0.7, 0.8, 0.9))
    for i in range(3):
        run_sweep(configs, tmp_path, shard=(i, 3), vmap=False, bar=False, note=lambda m: None)
    keys = [run_key(c) for c in configs]
    for i in range(3):
        assert [r["key"] for r in _lines(results_path(tmp_path, (i, 3)))] == keys[i::3]
    assert sorted(r["key"] for r in load_results(tmp_path)) == sorted(keys)
    # An unsharded rerun finds everything done; the report merges the three files.
    assert run_sweep(configs, tmp_path, vmap=False, bar=False, note=lambda m: None).ran == 0
    assert len(fake_training) == 5
    rows = summarize(load_results(tmp_path))
    assert [r["target_sparsity"] for r in rows] == [0.5, 0.6, 0.7, 0.8, 0.9]
    assert all(r["n"] == 1 for r in rows)


def test_vmapped_groups_append_each_line_once(tmp_path, monkeypatch, fake_training):
    """With a (fake) vmapped module, groups run together and each run's line is appended once."""
    import types
    import jaxprune.experiment
    groups = []
    fake = types.ModuleType("jaxprune.sweep.vmapped")
    fake.vmap_groups = lambda cs: [[0, 2], [1], [3]]

    def run_group(cs, workdirs):
        groups.append(len(cs))
        return [jaxprune.experiment.train_and_evaluate(c, w) for c, w in zip(cs, workdirs)]

    fake.run_group = run_group
    monkeypatch.setitem(sys.modules, "jaxprune.sweep.vmapped", fake)
    configs = _tiny()
    run_sweep(configs, tmp_path, bar=False, note=lambda m: None)
    assert groups == [2] and len(fake_training) == 4  # singletons go to train_and_evaluate directly
    keys = [r["key"] for r in _lines(tmp_path / "results.jsonl")]
    assert keys == [run_key(configs[i]) for i in (0, 2, 1, 3)]  # appended group by group
    fake.vmap_groups = lambda cs: [[0], [0, 1]]
    with pytest.raises(RuntimeError, match="partition"):
        run_sweep(_tiny(n_seeds=3), tmp_path, bar=False, note=lambda m: None)


def test_torn_last_line_is_repaired(tmp_path):
    path = tmp_path / "results.jsonl"
    append_record(path, {"key": "a", "config": {}, "result": {"x": 1}})
    with open(path, "ab") as f:
        f.write(b'{"key": "b", "config": {}, "res')  # a crash mid-line
    assert [r["key"] for r in read_records(tmp_path)] == ["a"]
    assert repair_tail(path) == len(b'{"key": "b", "config": {}, "res')
    append_record(path, {"key": "c", "config": {}, "result": {}})
    assert [r["key"] for r in _lines(path)] == ["a", "c"]
    assert repair_tail(path) == 0
    # A file that is one torn line: cut to empty.
    other = tmp_path / "results.shard-0-of-2.jsonl"
    other.write_bytes(b'{"key": "z"')
    assert repair_tail(other) == 11 and other.read_bytes() == b""


def test_runner_repairs_its_file_then_appends(tmp_path, fake_training):
    configs = _tiny(n_seeds=1, sparsities=(0.5,))
    (tmp_path / "results.jsonl").write_bytes(b'{"key": "' + run_key(configs[0]).encode() + b'", "conf')
    out = run_sweep(configs, tmp_path, vmap=False, bar=False, note=lambda m: None)
    assert out.ran == 1 and [r["key"] for r in _lines(tmp_path / "results.jsonl")] == [run_key(configs[0])]
    notes = []
    (tmp_path / "results.jsonl").write_bytes((tmp_path / "results.jsonl").read_bytes() + b'{"key"')
    assert run_sweep(configs, tmp_path, vmap=False, bar=False, note=notes.append).ran == 0
    assert any("torn" in n for n in notes) and (tmp_path / "results.jsonl").read_bytes().endswith(b"}\n")


def test_runner_validates_before_compute(tmp_path):
    configs = _tiny(n_seeds=1)
    with configs[1].unlocked():
        configs[1].method = "nope"
    with pytest.raises(ConfigError, match="sweep run 1 .*method"):
        run_sweep(configs, tmp_path, vmap=False, bar=False, note=lambda m: None)
    assert not (tmp_path / "results.jsonl").exists()
    with pytest.raises(ConfigError, match="same config twice"):
        run_sweep([configs[0], configs[0]], tmp_path, bar=False, note=lambda m: None)
    assert parse_shard("2/3") == (2, 3)
    for bad in ("3/3", "x", "1/0", "-1/2"):
        with pytest.raises(ConfigError, match="--shard"):
            parse_shard(bad)


# --------------------------------------------------------------------------------------------------
# The kill test


KILL_SWEEP = """
from jaxprune.config import load_config
from jaxprune.sweep import Sweep, product

def get_sweep():
    base = load_config({seed!r})
    base.dataset, base.batch_size, base.epochs, base.latency_batch = 'digits', 32, 2, 0
    # One sparsity, uniform allocation, six seeds: every run after the first reuses the first one's
    # compiled programs (XLA's persistent cache in DIR/.jax_cache), so a run takes ~1 s.
    base.allocation = 'uniform'
    return Sweep(base, [product({{'seed': [0, 1, 2, 3, 4, 5]}})])
"""


def test_sigkill_mid_sweep_then_resume(tmp_path):
    sweep_file = tmp_path / "tiny.py"
    sweep_file.write_text(KILL_SWEEP.format(seed=SEED))
    work = tmp_path / "w"
    results = work / "results.jsonl"
    # --no-vmap: one line per run, so there is a moment with some but not all lines written.
    cmd = [sys.executable, "-m", "jaxprune.cli", "sweep", str(sweep_file), "--workdir", str(work),
           "--no-progress", "--no-vmap"]
    log = tmp_path / "stderr.txt"
    with open(log, "wb") as err:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if results.exists() and results.read_bytes().count(b"\n") >= 1:
                break
            time.sleep(0.02)
        assert proc.poll() is None, f"sweep ended before it could be killed: {log.read_text()}"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    before = _lines(results)
    assert 1 <= len(before) < 6
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert f"{len(before)} already done, {6 - len(before)} ran now" in done.stdout
    raw = results.read_text()
    assert raw.endswith("\n")
    lines = [json.loads(line) for line in raw.splitlines()]  # every line valid JSON
    keys = [r["key"] for r in lines]
    want = {run_key(c) for c in expand_all(load_sweep(sweep_file))}
    assert len(keys) == len(set(keys)) == 6 and set(keys) == want
    assert [r["key"] for r in lines[:len(before)]] == [r["key"] for r in before]


# --------------------------------------------------------------------------------------------------
# Report


def _record(method, sparsity, seed, acc, nonzero, total=1000, **extra):
    config = {"model": "mlp", "method": method, "sparsity": sparsity, "seed": seed, "scorer": "magnitude",
              **extra.pop("config", {})}
    result = {"model": "mlp", "method": method, "target_sparsity": sparsity, "sparsity": sparsity,
              "test_accuracy": acc, "nonzero_params": nonzero, "total_params": total, "wall_s": 2.0,
              "bytes_dense": 4 * total, "bytes": {"csr": 8 * nonzero}, **extra}
    return {"key": f"{method}-{sparsity}-{seed}-{config['scorer']}", "config": config, "result": result}


SYNTH = [
    _record("none", 0.0, 0, 0.90, 1000), _record("none", 0.0, 1, 0.92, 1000),
    _record("one_shot", 0.5, 0, 0.91, 500, flops_final=100.0),
    _record("one_shot", 0.5, 1, 0.90, 500, flops_final=100.0),
    _record("one_shot", 0.9, 0, 0.905, 100), _record("one_shot", 0.9, 1, 0.899, 100),
    _record("one_shot", 0.95, 0, 0.80, 50), _record("one_shot", 0.95, 1, 0.84, 50),
    _record("one_shot", 0.9, 0, 0.5, 100, config={"scorer": "random"}),
]


def _write(tmp_path, records, name="results.jsonl"):
    for r in records:
        append_record(tmp_path / name, r)


def test_summary_csv_md_png_with_hand_computed_stats(tmp_path):
    _write(tmp_path, SYNTH[:5])
    _write(tmp_path, SYNTH[5:], "results.shard-1-of-2.jsonl")
    _write(tmp_path, SYNTH[:2], "results.shard-1-of-2.jsonl")  # duplicates are merged away
    rep = write_report(tmp_path, log_x=True)
    with open(rep.csv) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 5  # none, one_shot x {0.5, 0.9, 0.95} magnitude, one_shot 0.9 random
    assert list(rows[0])[:5] == ["model", "method", "scorer", "target_sparsity", "n"]
    by = {(r["method"], r["scorer"], float(r["target_sparsity"])): r for r in rows}
    dense = by[("none", "magnitude", 0.0)]
    assert dense["n"] == "2" and float(dense["test_accuracy_mean"]) == pytest.approx(0.91)
    assert float(dense["test_accuracy_std"]) == pytest.approx(math.sqrt(2 * 0.01 ** 2))
    r95 = by[("one_shot", "magnitude", 0.95)]
    assert float(r95["test_accuracy_mean"]) == pytest.approx(0.82)
    assert float(r95["test_accuracy_std"]) == pytest.approx(0.02 * math.sqrt(2))
    assert float(r95["nonzero_fraction_mean"]) == pytest.approx(0.05)
    assert float(r95["bytes.csr_mean"]) == pytest.approx(400) and float(r95["bytes_dense_mean"]) == 4000
    assert float(by[("one_shot", "magnitude", 0.5)]["flops_final_mean"]) == 100.0
    single = by[("one_shot", "random", 0.9)]
    assert single["n"] == "1" and single["test_accuracy_std"] == ""  # std of one seed: empty
    md = Path(rep.markdown).read_text()
    assert "| mlp | one_shot | magnitude | 0.95 | 2 | 82.00 ± 2.83 |" in md and "9 runs" in md
    for p in rep.plots:
        assert Path(p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [Path(p).name for p in rep.plots] == ["accuracy_vs_sparsity.png", "accuracy_vs_nonzeros.png",
                                                 "accuracy_vs_flops.png"]


def test_best_strategy_on_synthetic_rows():
    rows = summarize(SYNTH)
    best, = best_strategy(rows, max_drop=1.0)  # dense 0.91; 0.9 magnitude at 0.902 is within 1 pp
    assert best.dense_accuracy == pytest.approx(0.91) and best.dense_source == "method 'none'"
    assert (best.row["method"], best.row["target_sparsity"]) == ("one_shot", 0.9)
    assert best.label == "one_shot scorer=magnitude"
    assert "10.00 % of weights remain" in best.line() and "10.0x" in best.line()
    tight, = best_strategy(rows, max_drop=0.5)  # only sparsity 0.5 (0.905) remains
    assert tight.row["target_sparsity"] == 0.5
    none, = best_strategy(rows, max_drop=0.0)
    assert none.row is None and "no pruned configuration stays within 0 pp" in none.line()
    # No 'none' rows: the sparsity-0 rule, then the runs' dense_test_accuracy.
    no_none = [r for r in rows if r["method"] != "none"]
    no_ref, = best_strategy(no_none, 1.0)
    assert no_ref.dense_accuracy is None and "no dense reference" in no_ref.line()
    reported = [dict(r, dense_test_accuracy_mean=0.9) for r in no_none]
    assert best_strategy(reported, 1.0)[0].row["target_sparsity"] == 0.9
    with pytest.raises(ConfigError, match="max_drop"):
        best_strategy(rows, max_drop=-1)
    with pytest.raises(DataError, match="rows"):
        best_strategy([{"model": "m"}], 1.0)


def _lm_record(method, structure, seed, ppl, dense=5.6, sparsity=0.5):
    cfg = {"kind": "lm", "model": "gpt", "method": method, "structure": structure, "sparsity": sparsity,
           "calibration_seed": seed, "seed": 0}
    res = {"kind": "lm", "model": "gpt", "method": method, "target_sparsity": sparsity,
           "sparsity": sparsity, "val_perplexity": ppl, "dense_val_perplexity": dense}
    return {"key": f"{method}-{structure}-{sparsity}-{seed}", "config": cfg, "result": res}


LM_SYNTH = ([_lm_record("magnitude", "unstructured", s, p) for s, p in [(2, 6.3), (3, 6.3)]]
            + [_lm_record("sparsegpt", "unstructured", s, p) for s, p in [(2, 5.7), (3, 5.9)]]
            + [_lm_record("sparsegpt", "unstructured", s, p, sparsity=0.7) for s, p in [(2, 7.0), (3, 7.2)]]
            + [_lm_record("wanda", "nm:2:4", s, p) for s, p in [(2, 7.5), (3, float("nan"))]])


def test_report_on_lm_sweep_judges_perplexity_lower_is_better(tmp_path, capsys):
    rows = summarize(LM_SYNTH)
    # calibration_seed replicates a run: averaged over, not a column; 4 strategies.
    assert len(rows) == 4 and all("calibration_seed" not in r for r in rows)
    sgpt = next(r for r in rows if r["method"] == "sparsegpt" and r["target_sparsity"] == 0.5)
    assert sgpt["quality"] == "val_perplexity" and sgpt["n"] == 2
    assert sgpt["val_perplexity_mean"] == pytest.approx(5.8)
    wanda = next(r for r in rows if r["method"] == "wanda")
    assert wanda["n"] == 1 and wanda["flagged"] == 1  # the NaN perplexity is left out
    # Within +5 % of dense 5.6 (<= 5.88): only sparsegpt at 0.5 (5.8); 0.7 (7.1) is too far.
    best, = best_strategy(rows, max_increase=5.0)
    assert best.quality.metric == "val_perplexity" and best.dense_accuracy == pytest.approx(5.6)
    assert (best.row["method"], best.row["target_sparsity"]) == ("sparsegpt", 0.5)
    assert "+3.6 %" in best.line() and "val perplexity 5.800" in best.line()
    loose, = best_strategy(rows, max_increase=30.0)  # 7.1 <= 7.28: the 70 % run is the most compressed
    assert loose.row["target_sparsity"] == 0.7
    none, = best_strategy(rows, max_increase=1.0)
    assert none.row is None and "the best pruned one is sparsegpt" in none.line()
    _write(tmp_path, LM_SYNTH)
    assert main(["report", str(tmp_path), "--best", "--max-ppl-increase", "5"]) == 0
    out = capsys.readouterr().out
    assert "val ppl" in out and "test acc" not in out and "perplexity_vs_sparsity.png" in out
    assert "1 run(s) flagged: no finite val_perplexity" in out


def test_report_input_validation(tmp_path):
    with pytest.raises(DataError, match="no finished runs"):
        load_results(tmp_path)
    (tmp_path / "results.jsonl").write_text('{"torn\n')
    with pytest.raises(DataError, match="no finished runs"):
        load_results(tmp_path)
    with pytest.raises(DataError, match="records\\[0\\]"):
        summarize([{"key": "a"}])
    with pytest.raises(DataError, match="path"):
        summarize(str(tmp_path))


def test_cli_report_and_user_errors(tmp_path, capsys):
    _write(tmp_path, SYNTH)
    assert main(["report", str(tmp_path), "--best", "--max-drop", "1.0"]) == 0
    out = capsys.readouterr().out
    assert "| model |" in out and "best for mlp within 1 pp" in out and "accuracy_vs_sparsity.png" in out
    for argv, message in [
        (["report", str(tmp_path / "nope")], "not a directory"),
        (["report", str(tmp_path), "--best", "--max-drop", "-2"], "max_drop"),
        (["sweep", str(tmp_path / "nope.py"), "--workdir", str(tmp_path)], "does not exist"),
        (["sweep", str(ROOT / "experiments/sweeps/demo.py"), "--workdir", str(tmp_path), "foo=1"],
         "unknown config key 'foo'"),
        (["sweep", str(ROOT / "experiments/sweeps/demo.py"), "--workdir", str(tmp_path), "--shard", "2/2"],
         "--shard"),
        (["sweep", str(ROOT / "experiments/sweeps/demo.py"), "--workdir", str(tmp_path), "seed=4"],
         "'seed'"),
    ]:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error:") and message in err and "Traceback" not in err, err


def test_a_field_added_later_keeps_the_old_keys_at_its_default():
    from jaxprune.config import apply_overrides, load_config
    from jaxprune.sweep.spec import KEY_OMITTED_AT_DEFAULT
    base = load_config(SEED)
    before = {k: v for k, v in config_dict(base).items() if k not in KEY_OMITTED_AT_DEFAULT}
    assert run_key(base) == run_key(before)  # a directory recorded before the field still resumes
    fast = apply_overrides(base, ["latency_fast=true"])
    assert run_key(fast) != run_key(base) and config_dict(base)["latency_fast"] is False
