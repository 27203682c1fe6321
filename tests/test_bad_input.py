"""The "Bad input and faults" rows of issue 16: each bad input ends in one ``error:`` line and exit
status 2, before data loads or training starts, and nothing hangs."""

import json
import os
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

import jaxprune.data as jdata
import jaxprune.harness.trainer as trainer_module
from jaxprune.cli import main
from jaxprune.errors import ConfigError, DataError
from jaxprune.data import resolve_dataset
from jaxprune.sweep.runner import append_record, hold_lock, read_records, repair_tail, run_sweep

SEED = "experiments/configs/seed_mlp.py"
FAST = ["dataset=digits", "epochs=1", "latency_batch=0"]


@pytest.fixture
def no_data(monkeypatch):
    """Loading data or training is a test failure: the error must come first."""
    monkeypatch.setattr(jdata, "load", lambda *a, **k: pytest.fail("data loaded before the error"))
    monkeypatch.setattr(trainer_module, "fit", lambda *a, **k: pytest.fail("trained before the error"))


@pytest.fixture
def no_training(monkeypatch):
    monkeypatch.setattr(trainer_module, "fit", lambda *a, **k: pytest.fail("trained before the error"))


def _one_error(capsys, rc, *needles):
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("overrides, needle", [
    (["finetune_learning_rate=abc"], "'finetune_learning_rate' must be a float or None"),
    (["finetune_learning_rate=-1.0"], "'finetune_learning_rate' must be > 0"),
    (["finetune_learning_rate=0.0"], "'finetune_learning_rate' must be > 0"),
    (["method=gradual_magnitude", "prune_begin=0.9", "prune_end=0.1"], "prune_begin must be below"),
])
def test_bad_fields_fail_before_data_loads(tmp_path, capsys, no_data, overrides, needle):
    rc = main(["run", SEED, *FAST, *overrides, "--no-progress", "--workdir", str(tmp_path)])
    _one_error(capsys, rc, needle)


@pytest.mark.parametrize("overrides, needle", [
    (["structure=nm:5:4"], "nm:5:4"),
    (["structure=block:0x4"], "block:0x4"),
    # N:M runs along the reduction (input) axis, so the 10-class head (128, 10) fits 2:4; 2:3 does
    # not fit digits' 64 inputs.
    (["structure=nm:2:3", "allocation=uniform"], "not divisible by m=3"),
    (["structure=nm:2:4", "allocation=erk", "sparsity=0.1"], "would remove 0.4"),
])
def test_structures_that_do_not_fit_fail_before_training(tmp_path, capsys, no_training, overrides, needle):
    rc = main(["run", SEED, *FAST, *overrides, "--no-progress", "--workdir", str(tmp_path)])
    _one_error(capsys, rc, "structure", needle)
    assert not (tmp_path / "result.json").exists()


def test_the_sweep_precheck_finds_a_structure_that_does_not_fit(tmp_path, no_data):
    base = ml_collections.ConfigDict({**_seed_dict(), "dataset": "digits", "progress": False})
    bad = ml_collections.ConfigDict({**base.to_dict(), "structure": "nm:2:3", "allocation": "uniform"})
    with pytest.raises(ConfigError, match=r"sweep run 1 .*not divisible by m=3"):
        run_sweep([base, bad], tmp_path, bar=False, note=lambda _: None)
    assert read_records(tmp_path) == []  # run 0 was not trained first


def _seed_dict():
    from jaxprune.config import load_config
    return load_config(SEED).to_dict()


@pytest.mark.parametrize("source, needle", [
    ("def get_config():\n    raise RuntimeError('boom')\n", "get_config() failed: RuntimeError: boom"),
    ("import sys\nsys.exit(0)\n", "failed to import: SystemExit"),
    ("import ml_collections\ndef get_config():\n    return ml_collections.ConfigDict({'kind': 'nn'})\n",
     "is missing"),
])
def test_broken_config_files(tmp_path, capsys, no_data, source, needle):
    path = tmp_path / "cfg.py"
    path.write_text(source)
    rc = main(["run", str(path), "--workdir", str(tmp_path / "w")])
    _one_error(capsys, rc, needle)


def test_a_sweep_file_passed_to_run_and_a_config_passed_to_sweep(tmp_path, capsys, no_data):
    rc = main(["run", "experiments/sweeps/demo.py", "--workdir", str(tmp_path)])
    _one_error(capsys, rc, "is a sweep file", "jaxprune sweep")
    rc = main(["sweep", SEED, "--workdir", str(tmp_path)])
    _one_error(capsys, rc, "is a config file", "jaxprune run")


def test_get_sweep_that_raises(tmp_path, capsys, no_data):
    path = tmp_path / "sw.py"
    path.write_text("def get_sweep():\n    raise KeyError('x')\n")
    rc = main(["sweep", str(path), "--workdir", str(tmp_path / "w")])
    _one_error(capsys, rc, "get_sweep() failed: KeyError")


@pytest.mark.parametrize("case", ["file", "under_file", "empty", "unwritable"])
def test_bad_workdirs_fail_before_data_loads(tmp_path, capsys, no_data, case):
    (tmp_path / "f").write_text("x")
    workdir = {"file": str(tmp_path / "f"), "under_file": str(tmp_path / "f" / "sub"), "empty": "",
               "unwritable": "/proc/jaxprune_cannot_write_here"}[case]
    rc = main(["run", SEED, *FAST, "--workdir", workdir])
    _one_error(capsys, rc, "--workdir")


def test_auto_dataset_with_a_corrupt_file_names_it(tmp_path):
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (tmp_path / name).write_bytes(b"\x00\x00\x08\x03garbage")
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte"):
        resolve_dataset("auto", str(tmp_path))
    assert resolve_dataset("auto", str(tmp_path / "absent")) == "digits"  # absent files fall back


def test_two_sweeps_on_one_workdir_and_shard_are_refused(tmp_path, capsys, no_data):
    os.makedirs(tmp_path / "w")
    fd = hold_lock(str(tmp_path / "w" / "results.jsonl.lock"))  # another sweep is running
    try:
        # (not the demo sweep: it looks for Fashion-MNIST when it is built, to choose its budget)
        rc = main(["sweep", "experiments/sweeps/seed_mlp.py", "dataset=digits", "--workdir",
                   str(tmp_path / "w")])
        _one_error(capsys, rc, "in use by another sweep", f"pid {os.getpid()}")
    finally:
        os.close(fd)


def test_a_results_file_that_cannot_be_appended_to(tmp_path, no_data):
    os.makedirs(tmp_path / "results.jsonl")  # (as root a chmod would not stop the write)
    config = ml_collections.ConfigDict({**_seed_dict(), "dataset": "digits"})
    with pytest.raises(DataError, match="cannot append to the sweep results file"):
        run_sweep([config], tmp_path, bar=False, note=lambda _: None)


def test_a_complete_last_line_without_newline_is_kept(tmp_path):
    path = tmp_path / "results.jsonl"
    append_record(path, {"key": "a", "config": {}, "result": {}})
    with open(path, "ab") as f:
        f.write(json.dumps({"key": "b", "config": {}, "result": {}}).encode())  # no newline
    assert repair_tail(path) == 0
    assert [r["key"] for r in read_records(tmp_path)] == ["a", "b"]
    assert path.read_bytes().endswith(b"}\n")
    with open(path, "ab") as f:
        f.write(b'{"key": "c", "con')  # a torn line is still cut
    assert repair_tail(path) == len(b'{"key": "c", "con')


def test_debug_reraises_with_the_traceback(tmp_path):
    env = {**os.environ, "JAXPRUNE_DEBUG": "1"}
    proc = subprocess.run([sys.executable, "-m", "jaxprune.cli", "run", SEED, "sparsity=2",
                           "--workdir", str(tmp_path)], capture_output=True, text=True, env=env)
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "ConfigError" in proc.stderr


def test_a_bug_is_not_a_user_error(tmp_path, monkeypatch):
    """Only the kit's own errors become one line: a plain ValueError (a bug) keeps its traceback."""
    import jaxprune.experiment as ex

    def broken(config, workdir):
        raise ValueError("shape bug inside a model")

    monkeypatch.setattr(ex, "train_and_evaluate", broken)
    with pytest.raises(ValueError, match="shape bug"):
        main(["run", SEED, *FAST, "--workdir", str(tmp_path)])


def test_a_checkpoint_phase_dir_that_is_a_file_is_one_error_and_no_hang(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "phase_000").write_text("not a directory")
    proc = subprocess.run([sys.executable, "-m", "jaxprune.cli", "run", SEED, *FAST, "checkpoint_every=5",
                           "--no-progress", "--workdir", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)  # a hang fails here
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "phase_000" in errors[0] and "is a file" in errors[0]


@pytest.mark.parametrize("key", ["leaves", "step"])
def test_checkpoint_metadata_missing_a_key_is_a_corrupt_step(tmp_path, key):
    """The documented fallback: the step is dropped with a CheckpointWarning and training redone,
    to the same final state (not a KeyError traceback)."""
    import jax
    import optax

    from jaxprune.models import get_model, init_params
    from jaxprune.train import create_train_state, fit
    from jaxprune.train.checkpoint import CheckpointWarning, tree_sha256

    model = get_model("tutorial_mlp", 10)
    variables = init_params(model, jax.random.PRNGKey(0), (1, 8, 8, 1))
    x, y = np.zeros((16, 8, 8, 1), np.float32), np.arange(16, dtype=np.int32) % 10
    tx = optax.sgd(0.1)

    def run():
        return fit(model, create_train_state(variables, tx), tx, x, y, epochs=1, batch_size=8, seed=0,
                   progress=False, checkpoint_dir=tmp_path / "ck")[0]

    first = tree_sha256(run())
    for meta in (tmp_path / "ck").glob("*/meta/metadata"):
        data = json.loads(meta.read_text())
        data.pop(key)
        meta.write_text(json.dumps(data))
    with pytest.warns(CheckpointWarning):
        again = run()
    assert tree_sha256(again) == first


def test_mnist_without_files_is_one_line_and_leaves_no_temporary_dirs(tmp_path, capsys):
    import glob
    import tempfile

    pattern = os.path.join(tempfile.gettempdir(), "tmp*tfds")
    before = set(glob.glob(pattern))
    rc = main(["run", SEED, "dataset=mnist", "--no-progress", "--workdir", str(tmp_path)])
    line = _one_error(capsys, rc, "mnist", "JAXPRUNE_DATA")
    assert set(glob.glob(pattern)) <= before, "tensorflow-datasets left temporary directories"
    assert "\n" not in line
