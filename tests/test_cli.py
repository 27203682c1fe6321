import json
import subprocess
import sys

import pytest

import jaxprune as jp
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
