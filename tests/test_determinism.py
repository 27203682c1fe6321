"""Same config and seed -> bit-identical masks, params and metrics on CPU, across separate processes.

Two ``jaxprune run`` processes (started together) train SET — random regrowth, so the masks depend on
the PRNG key carried in the pruning state — then fine-tune. Their ``result.json`` must be equal field
for field (except ``wall_s``), including ``fit_sha256``: a sha256 over the final state of every fit
call (params, model state, optimizer state with its masks, PRNG key and counters).
"""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import optax

from jaxprune.models import MLP, init_params
from jaxprune.train import create_train_state, fit, masked
from jaxprune.train.checkpoint import tree_sha256
from jaxprune.train.context import run_context

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARGS = ["experiments/configs/seed_mlp.py", "dataset=digits", "method=set", "epochs=2", "sparsity=0.8",
        "update_every=10", "allocation=uniform", "finetune_epochs=1", "latency_batch=0", "progress=False"]


def _result(path):
    r = json.loads(path.read_text())
    r.pop("wall_s")
    return r


def test_two_processes_bit_identical(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT}
    procs = [subprocess.Popen([sys.executable, "-m", "jaxprune.cli", "run", *ARGS, "--workdir",
                               str(tmp_path / f"run{i}")], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=400)
        assert p.returncode == 0, err[-3000:]
    a, b = (_result(tmp_path / f"run{i}" / "result.json") for i in range(2))
    assert a == b
    assert len(a["fit_sha256"]) == 64 and 0.79 < a["sparsity"] < 0.81


def test_fit_sha256_sees_masks_and_seed():
    # The digest changes when only a mask bit or only the data seed changes (it is not vacuous).
    model = MLP((8, 2))
    v = init_params(model, jax.random.PRNGKey(0), (1, 4))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int32)
    masks = jax.tree.map(lambda p: np.ones(p.shape, bool), v["params"])
    flipped = jax.tree.map(lambda m: m.copy(), masks)
    flipped["Dense_0"]["kernel"][0, 0] = False

    def digest(m, seed):
        tx = masked(optax.sgd(0.1), m)
        with run_context() as ctx:
            st, _ = fit(model, create_train_state(v, tx), tx, x, y, epochs=1, batch_size=16, seed=seed,
                        progress=False)
        assert ctx.digests == [tree_sha256(st)]
        return ctx.sha256()

    base = digest(masks, 0)
    assert base == digest(masks, 0)
    assert base != digest(flipped, 0) and base != digest(masks, 1)
