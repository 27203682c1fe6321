"""Checkpoints and resumption (jaxprune.train.checkpoint, fit's checkpoint_dir, the run context).

In-process tests drive ``fit`` on a tiny model; the end-to-end test runs ``jaxprune run`` in
subprocesses, stops it with SIGTERM, resumes and SIGKILLs it, resumes again, and compares with an
uninterrupted run bit for bit.
"""

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import optax
import pytest

import jaxprune as jp
from jaxprune.config import load_config
from jaxprune.errors import ConfigError
from jaxprune.models import MLP, init_params
from jaxprune.recipes import mask_update
from jaxprune.train import create_train_state, fit, get_masks, masked, polynomial, pruning
from jaxprune.train.checkpoint import (CheckpointError, CheckpointWarning, Preempted, check_run_config,
                                       tree_sha256)
from jaxprune.train.context import run_context, run_context_for

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# --------------------------------------------------------------------------- fit on a tiny model


def _data(n=200, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6)).astype(np.float32)
    return x, (x[:, 0] + x[:, 1] > 0).astype(np.int32)


MODEL = MLP((16, 2))
VARIABLES = init_params(MODEL, jax.random.PRNGKey(0), (1, 6))
X, Y = _data()  # 200 examples, batch 25: 8 steps per epoch


MASKS = jp.topk_masks(jp.random_scores(jax.random.PRNGKey(1), VARIABLES["params"]),
                      jp.uniform_sparsity(VARIABLES["params"], 0.5))


def _tx(dynamic=False):
    if not dynamic:  # fixed masks: cheap to compile; the state is still a PruningState
        return masked(optax.adam(1e-2), MASKS)
    # Random scores: the masks depend on the PRNG key kept in PruningState, so it must be restored.
    return pruning(optax.adam(1e-2), update_masks=mask_update("random"),
                   schedule=polynomial(0.0, 0.6, 2, 14, every=3), seed=3)


def _fit(directory=None, every=0, epochs=2, dynamic=False, **kw):
    tx = _tx(dynamic)
    return fit(MODEL, create_train_state(VARIABLES, tx), tx, X, Y, epochs=epochs, batch_size=25, seed=1,
               progress=False, checkpoint_dir=directory, checkpoint_every=every, **kw)


@pytest.fixture(scope="module")
def reference():
    return _fit()


def _same(a, b):
    return tree_sha256(a) == tree_sha256(b)


def _steps(directory):
    return sorted(int(p) for p in os.listdir(directory) if p.isdigit())


def test_checkpointing_does_not_change_training(tmp_path, reference):
    state, hist = _fit(tmp_path, every=3)
    assert _same(state, reference[0]) and hist == reference[1]
    assert _steps(tmp_path) == [15, 16]  # saves at 3, 6, 8 (epoch end), 9, 12, 15, 16; keeps 2


def test_resume_mid_epoch_restores_pruning_state_and_history(tmp_path):
    full, full_hist = _fit(tmp_path, every=3, dynamic=True)
    shutil.rmtree(tmp_path / "16")  # latest is now step 15: epoch 1, batch 7 of 8
    state, hist = _fit(tmp_path, every=3, dynamic=True)
    assert _same(state, full) and hist == full_hist
    masks, full_masks = get_masks(state.opt_state), get_masks(full.opt_state)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(masks), jax.tree.leaves(full_masks)))
    assert 0 < jp.summary(masks).prunable["sparsity"] < 1  # the masks did change during training
    assert int(state.opt_state.count) == 16 and int(state.step) == 16
    assert np.array_equal(state.opt_state.key, full.opt_state.key)


def test_imp_rewind_copy_survives_resume(tmp_path):
    # IMP's late-rewinding copy (jaxprune.train.snapshot) lives in the optimizer state, so a run
    # resumed after the copy was taken rewinds to the same weights.
    from jaxprune.train.transform import get_snapshot, snapshot

    def run():
        tx = snapshot(masked(optax.adam(1e-2), MASKS), 5)
        return fit(MODEL, create_train_state(VARIABLES, tx), tx, X, Y, epochs=2, batch_size=25, seed=1,
                   progress=False, checkpoint_dir=tmp_path, checkpoint_every=6)[0]

    full = run()
    shutil.rmtree(tmp_path / "16")  # resume from step 12, after the copy at step 5
    again = run()
    assert _same(get_snapshot(again.opt_state), get_snapshot(full.opt_state)) and _same(again, full)
    assert not _same(get_snapshot(full.opt_state), VARIABLES["params"])


def test_finished_phase_is_restored_without_training(tmp_path, reference):
    _fit(tmp_path, every=5)

    def boom(epoch, state):  # would run after any epoch trained
        raise AssertionError("trained again")

    with pytest.warns(CheckpointWarning, match="not replayed"):
        state, hist = _fit(tmp_path, every=5, on_epoch=boom)
    assert _same(state, reference[0]) and hist == reference[1]


def test_sigterm_saves_and_raises_preempted(tmp_path, reference):
    def term(epoch, state):
        if epoch == 0:
            os.kill(os.getpid(), signal.SIGTERM)
        return state

    with pytest.raises(Preempted) as err:
        _fit(tmp_path, every=100, on_epoch=term)
    assert err.value.code == 143 and "SIGTERM" in str(err.value)
    assert _steps(tmp_path) == [8]  # saved at once (end of epoch 0), not at a periodic step
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handler restored
    with pytest.warns(CheckpointWarning, match="not replayed"):
        state, hist = _fit(tmp_path, every=100, on_epoch=term)
    assert _same(state, reference[0]) and hist == reference[1]


# Reading a truncated tensorstore chunk makes orbax's internal asyncio loop report "Event loop is
# closed" from its own callbacks after the (caught) read error; that noise is orbax's, not ours, and
# pytest turns it into an error under filterwarnings=error. The fallback itself is asserted below.
_ORBAX_LOOP_NOISE = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


@pytest.mark.parametrize("damage", [pytest.param("truncate_arrays", marks=_ORBAX_LOOP_NOISE),
                                    "garbage_meta", "delete_arrays"])
def test_corrupt_latest_falls_back_with_warning(tmp_path, reference, damage):
    _fit(tmp_path, every=3)
    latest = tmp_path / "16"
    if damage == "truncate_arrays":
        for f in glob.glob(str(latest / "state" / "**" / "d" / "*"), recursive=True):
            with open(f, "r+b") as fh:
                fh.truncate(7)
    elif damage == "garbage_meta":
        (latest / "meta" / "metadata").write_text("{not json")
    else:
        shutil.rmtree(latest / "state")
    with pytest.warns(CheckpointWarning, match="unreadable"):
        state, hist = _fit(tmp_path, every=3)
    assert _same(state, reference[0]) and hist == reference[1]
    assert _steps(tmp_path) == [15, 16]  # the bad step was replaced by a good one


def test_every_checkpoint_corrupt_starts_over(tmp_path, reference):
    _fit(tmp_path, every=3)
    for step in _steps(tmp_path):
        (tmp_path / str(step) / "meta" / "metadata").write_text("")
    with pytest.warns(CheckpointWarning):
        state, _ = _fit(tmp_path, every=3)
    assert _same(state, reference[0])


def test_checkpoint_of_another_fit_call_is_refused(tmp_path):
    _fit(tmp_path, every=4)
    with pytest.raises(CheckpointError, match="different fit call.*epochs"):
        _fit(tmp_path, every=4, epochs=3)
    tx = optax.sgd(1e-2)  # same fit arguments, different optimizer state tree
    with pytest.raises(CheckpointError, match="state leaf differs"):
        fit(MODEL, create_train_state(VARIABLES, tx), tx, X, Y, epochs=2, batch_size=25, seed=1,
            progress=False, checkpoint_dir=tmp_path, checkpoint_every=4)


def test_run_context_numbers_phases(tmp_path):
    with run_context(checkpoint_dir=tmp_path, checkpoint_every=4) as ctx:
        _fit(None, every=None, epochs=1)
        _fit(None, every=None, epochs=1)
    assert sorted(os.listdir(tmp_path)) == ["phase_000", "phase_001"]
    assert ctx.phases == 2 and len(ctx.digests) == 2 and len(ctx.sha256()) == 64


@pytest.mark.parametrize("value", [-1, 1.5, "5", True])
def test_bad_checkpoint_every(tmp_path, value):
    cfg = load_config("experiments/configs/seed_mlp.py")
    with cfg.ignore_type():
        cfg.checkpoint_every = value
    with pytest.raises(ConfigError, match="checkpoint_every"):
        with run_context_for(cfg, tmp_path):
            pass


def test_workdir_of_another_config_is_refused(tmp_path):
    check_run_config({"seed": 0, "epochs": 3, "progress": True}, tmp_path)
    check_run_config({"seed": 0, "epochs": 3, "progress": False, "mesh": "data:2"}, tmp_path)  # free
    with pytest.raises(CheckpointError, match=r"\['epochs'\]"):
        check_run_config({"seed": 0, "epochs": 4}, tmp_path)


# --------------------------------------------------------------------------- jaxprune run, end to end

ARGS = ["experiments/configs/seed_mlp.py", "dataset=digits", "epochs=3", "finetune_epochs=2",
        "checkpoint_every=5", "progress=False", "latency_batch=0"]


def _cli(workdir, args=ARGS, cache=None):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT}
    if cache is not None:  # compiled programs shared between this test's processes
        env.update(JAX_COMPILATION_CACHE_DIR=str(cache), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                   JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    return subprocess.Popen([sys.executable, "-m", "jaxprune.cli", "run", *args, "--workdir",
                             str(workdir)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _stop_when(proc, pattern, sig, timeout=300):
    """Sends ``sig`` to ``proc`` as soon as a committed checkpoint matches ``pattern``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if [p for p in glob.glob(pattern) if p.rsplit(os.sep, 1)[-1].isdigit()]:
            proc.send_signal(sig)
            break
        time.sleep(0.005)
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, err


def _result(workdir):
    r = json.loads((workdir / "result.json").read_text())
    r.pop("wall_s")
    return r


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """`jaxprune run` without interruption: (result.json without wall_s, workdir)."""
    d = tmp_path_factory.mktemp("reference")
    proc = _cli(d, cache=tmp_path_factory.getbasetemp() / "jax_cache")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    return _result(d), d


def test_sigterm_sigkill_resume_bit_identical(tmp_path_factory, reference_run):
    d = tmp_path_factory.mktemp("interrupted")
    cache = tmp_path_factory.getbasetemp() / "jax_cache"
    # 1. SIGTERM during the dense phase: a final checkpoint of the current state, exit 143.
    rc, err = _stop_when(_cli(d, cache=cache), str(d / "checkpoints" / "phase_000" / "*"), signal.SIGTERM)
    assert rc == 143 and "SIGTERM: saved phase 0 (dense)" in err, err[-3000:]
    assert not (d / "result.json").exists()
    # 2. Resume, then SIGKILL during the fine-tuning phase (no chance to save anything).
    rc, err = _stop_when(_cli(d, cache=cache), str(d / "checkpoints" / "phase_001" / "*"), signal.SIGKILL)
    assert rc == -signal.SIGKILL and "phase 0 (dense): resuming at step" in err, err[-3000:]
    assert not (d / "result.json").exists()
    # 3. Resume to the end: the dense phase is restored, not retrained; fine-tuning continues.
    proc = _cli(d, cache=cache)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert "phase 0 (dense): finished; restored" in err and "phase 1 (finetune): resuming at step" in err
    assert _result(d) == reference_run[0]  # accuracies, counts, fit_sha256 (params, masks, opt state)


def test_corrupt_final_checkpoint_of_a_run_falls_back(tmp_path_factory, reference_run):
    # A finished run's workdir with its final fine-tuning checkpoint damaged: rerunning warns, falls
    # back to the previous checkpoint, retrains the last few steps and gets the same result.
    # (pytest.warns on CheckpointWarning: the in-process tests above; here the CLI's stderr.)
    d = tmp_path_factory.mktemp("corrupt") / "run"
    shutil.copytree(reference_run[1], d)
    (d / "result.json").unlink()
    phase = d / "checkpoints" / "phase_001"
    (phase / str(_steps(phase)[-1]) / "meta" / "metadata").write_text("")
    proc = _cli(d, cache=tmp_path_factory.getbasetemp() / "jax_cache")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert "CheckpointWarning" in err and "unreadable" in err and "resuming at step 85" in err, err[-3000:]
    assert _result(d) == reference_run[0]
