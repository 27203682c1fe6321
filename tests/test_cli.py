import errno
import json
import logging
import os
import subprocess
import sys

import pytest

import jaxprune as jp
import jaxprune.experiment
from jaxprune.cli import main
from jaxprune.config import apply_overrides, load_config

SEED = "experiments/configs/seed_mlp.py"
FIELDS = {"dataset", "model", "method", "target_sparsity", "sparsity", "total_params", "nonzero_params",
          "dense_test_accuracy", "pruned_test_accuracy", "test_accuracy", "seed", "wall_s"}


def test_run_on_digits_writes_result(tmp_path, capsys):
    rc = main(["run", SEED, "dataset=digits", "epochs=3", "sparsity=0.75", "finetune_epochs=1",
               "allocation=uniform", "--no-progress", "--workdir", str(tmp_path)])
    assert rc == 0
    result = json.loads((tmp_path / "result.json").read_text())
    assert FIELDS <= set(result)
    assert result["dataset"] == "digits" and result["model"] == "tutorial_mlp"
    # Exact layerwise counts: round(0.75 * n) zeros in each kernel (64x128 and 128x10).
    want = (jp.num_pruned(0.75, 64 * 128) + jp.num_pruned(0.75, 1280)) / (64 * 128 + 1280)
    assert result["sparsity"] == pytest.approx(want, abs=1e-12)
    assert result["test_accuracy"] > 0.8
    assert "test_accuracy" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["sparsity=1.5"], "sparsity"),
    (["foo=1"], "unknown config key 'foo'"),
    (["dataset=nope"], "unknown dataset"),
    (["epochs=-1"], "epochs"),
    (["epochs=abc"], "epochs"),
    (["method=nope"], "method"),
    (["scorer=nope"], "scorer"),
    (["structure=nm:2"], "structure"),
    (["model=nope", "dataset=digits"], "unknown model"),
    (["dataset=mnist", "data_dir=/nonexistent"], "mnist"),
])
def test_user_errors_exit_2_without_traceback(tmp_path, capsys, args, message):
    assert main(["run", SEED, *args, "--no-progress", "--workdir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_console_script_subprocess_error(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "jaxprune.cli", "run", SEED, "sparsity=2",
                           "--workdir", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "sparsity" in proc.stderr


def test_config_overrides_and_types():
    c = load_config(SEED)
    c2 = apply_overrides(c, ["sparsity=1", "epochs=2", "structure=nm:2:4", "data_dir=/x"])
    assert c2.sparsity == 1.0 and isinstance(c2.sparsity, float) and c2.structure == "nm:2:4"
    assert c2.data_dir == "/x" and c.sparsity == 0.5
    with pytest.raises(jp.ConfigError, match="key=value"):
        apply_overrides(c, ["sparsity"])
    with pytest.raises(jp.ConfigError, match="does not exist"):
        load_config("nope.py")


# A full disk: one `error:` line, last, exit 2, not ~360 lines of orbax's background-thread logs. The
# orbax case runs in a subprocess, as a user sees it: what the process prints while it exits counts.
_ENOSPC_RUN = r"""
import errno, os, sys
from etils import epath

def full(self, *args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))

epath.Path.write_text = epath.Path.write_bytes = full  # every file orbax writes from Python
from jaxprune.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_disk_full_during_checkpointing_is_one_error_line(tmp_path):
    # jax's persistent compilation cache (scripts/test turns it on) writes through etils' epath too:
    # the patched write would fail it as well, so this process runs without it.
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    proc = subprocess.run([sys.executable, "-c", _ENOSPC_RUN, "run", SEED, "dataset=digits", "epochs=1",
                           "finetune_epochs=0", "batch_size=128", "checkpoint_every=5", "latency_batch=0",
                           "--no-progress", "--workdir", str(tmp_path)],
                          capture_output=True, text=True, timeout=300, env=env)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(lines) <= 3 and lines[-1].startswith("error: no space left on device"), proc.stderr[-3000:]
    assert [line for line in lines if line.startswith("error:")] == lines[-1:]
    assert "Traceback" not in proc.stderr and "ERROR:absl" not in proc.stderr


@pytest.fixture
def restore_log_hooks():
    """After a full disk ``main`` leaves the absl filter and a quiet unraisable hook in place (the
    process is ending); an in-process test puts them back."""
    absl_log = logging.getLogger("absl")
    filters, hook = list(absl_log.filters), sys.unraisablehook
    yield
    absl_log.filters[:] = filters
    sys.unraisablehook = hook


def test_disk_full_writing_the_result_is_one_error_line(tmp_path, capsys, monkeypatch, restore_log_hooks):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "result.json.tmp"))

    monkeypatch.setattr(jaxprune.experiment, "train_and_evaluate", full)
    assert main(["run", SEED, "dataset=digits", "--no-progress", "--workdir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: no space left on device (writing {tmp_path / 'result.json.tmp'}); free space "
                   "there and run the command again (a sweep skips the runs it has recorded)"]
    monkeypatch.setenv("JAXPRUNE_DEBUG", "1")
    with pytest.raises(OSError, match="No space"):
        main(["run", SEED, "dataset=digits", "--no-progress", "--workdir", str(tmp_path)])
