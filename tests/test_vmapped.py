"""Grouped training (jaxprune.sweep.vmapped): the same results as the runs done one by one.

``strategy='scan'`` (the default) must be bit-identical to ``fit`` / ``train_and_evaluate``;
``strategy='vmap'`` only equal up to rounding (docs/vmapped.md), so it is checked on a short run
where the rounding has not yet grown: close weights, identical masks and accuracies.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import persistent_compilation_cache

from jaxprune import data as jdata
from jaxprune.config import apply_overrides, load_config
from jaxprune.errors import ConfigError
from jaxprune.experiment import METHODS, make_run, train_and_evaluate
from jaxprune.harness import GroupTrainer, run_in_group
from jaxprune.models import get_model, init_params
from jaxprune.train import group
from jaxprune.sweep.vmapped import fit_group, run_group, vmap_groups
from jaxprune.train import create_train_state, fit, masked

BASE = ["dataset=digits", "model=tutorial_mlp", "epochs=1", "finetune_epochs=1", "sparsity=0.5",
        "progress=False", "latency_batch=0"]


@pytest.fixture(scope="module", autouse=True)
def _persistent_compilation_cache(tmp_path_factory):
    """The one-by-one runs compile the same init/eval/pruning programs again and again; a persistent
    cache (as ``jaxprune sweep`` uses, runner.py) makes this module ~4x faster. Restored afterwards."""
    yield from persistent_compilation_cache(tmp_path_factory.mktemp("xla_cache"))


def _config(*overrides):
    return apply_overrides(load_config("experiments/configs/seed_mlp.py"), [*BASE, *overrides])


def _same(a, b):
    """Bit-identical trees (names the first differing leaf)."""
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
        assert np.array_equal(np.asarray(x), np.asarray(y)), jax.tree_util.keystr(path)


# ------------------------------------------------------------------------------------------ grouping


def test_vmap_groups_partition():
    cfgs = [_config(), _config("seed=1"), _config("learning_rate=0.01"), _config("sparsity=0.9"),
            _config("method=imp"), _config("seed=2", "progress=True"), _config("model=small_cnn"),
            _config("quantize=int8"), _config("learning_rate=0.01", "seed=3"),
            _config("structure=neurons", "criterion=l1")]
    assert vmap_groups(cfgs) == [[0, 1, 3, 5], [2, 8], [4], [6], [7], [9]]
    assert vmap_groups([]) == []
    for method in ("none", "global_one_shot", "static_sparse"):
        pair = [_config(f"method={method}"), _config(f"method={method}", "seed=1")]
        assert vmap_groups(pair) == [[0, 1]]
    # An invalid config is left alone, so that train_and_evaluate reports it.
    assert vmap_groups([_config("batch_size=0"), _config("batch_size=0", "seed=1")]) == [[0], [1]]


def test_vmap_groups_and_run_group_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"configs\[1\] must be an ml_collections ConfigDict"):
        vmap_groups([_config(), {"seed": 1}])
    with pytest.raises(ConfigError, match="one workdir per config"):
        run_group([_config(), _config("seed=1")], [str(tmp_path)])
    with pytest.raises(ConfigError, match=r"configs\[1\] differs from configs\[0\] in field 'learning_rate'"):
        run_group([_config(), _config("learning_rate=0.01")], [str(tmp_path / "a"), str(tmp_path / "b")])
    with pytest.raises(ConfigError, match=r"configs\[0\] cannot be trained in a group: method='imp'"):
        run_group([_config("method=imp"), _config("method=imp")], [str(tmp_path / "a"), str(tmp_path / "b")])
    with pytest.raises(ConfigError, match="strategy must be one of"):
        run_group([_config(), _config("seed=1")], [str(tmp_path / "a"), str(tmp_path / "b")], strategy="pmap")
    assert not (tmp_path / "a").exists()


def test_fit_group_argument_errors():
    m, tx = get_model("mlp", 3, hidden=(4,)), optax.sgd(0.1)
    st = create_train_state(init_params(m, jax.random.PRNGKey(0), (1, 2)), tx)
    x, y = np.ones((8, 2), np.float32), np.zeros(8, np.int32)
    with pytest.raises(ConfigError, match="one length"):
        fit_group(m, [st, st], tx, [(x, y)], epochs=1, batch_size=4, seeds=[0, 1])
    with pytest.raises(ConfigError, match=r"seeds\[1\] must be an integer >= 0"):
        fit_group(m, [st, st], tx, [(x, y)] * 2, epochs=1, batch_size=4, seeds=[0, -1])
    with pytest.raises(ConfigError, match="same number of examples"):
        fit_group(m, [st, st], tx, [(x, y), (x[:6], y[:6])], epochs=1, batch_size=4, seeds=[0, 1])
    with pytest.raises(ConfigError, match="workers must be None or an integer >= 1"):
        fit_group(m, [st, st], tx, [(x, y)] * 2, epochs=1, batch_size=4, seeds=[0, 1], workers=0)
    with pytest.raises(ConfigError, match="vmap_size must be None or an integer >= 1"):
        fit_group(m, [st, st], tx, [(x, y)] * 2, epochs=1, batch_size=4, seeds=[0, 1], strategy="vmap",
                  vmap_size=0)
    with pytest.raises(ConfigError, match="vmap_size applies to strategy='vmap' only"):
        fit_group(m, [st, st], tx, [(x, y)] * 2, epochs=1, batch_size=4, seeds=[0, 1], vmap_size=2)
    wider = get_model("mlp", 3, hidden=(5,))
    other = create_train_state(init_params(wider, jax.random.PRNGKey(0), (1, 2)), tx)
    with pytest.raises(ConfigError, match=r"states\[1\] does not match states\[0\]"):
        fit_group(m, [st, other], tx, [(x, y)] * 2, epochs=1, batch_size=4, seeds=[0, 1])


# ------------------------------------------------------------------------------------------ training


@pytest.fixture(scope="module")
def digits_runs():
    """Three tutorial-MLP initial states, the digits training set and their one-by-one ``fit``
    (2 epochs = 88 steps of batch 32, the last partial batch dropped)."""
    x, y = jdata.load("digits", "train", validation_size=0)
    model, tx = get_model("tutorial_mlp", 10), optax.adam(1e-3)
    states = [create_train_state(init_params(model, jax.random.PRNGKey(s), (1, 8, 8, 1)), tx)
              for s in range(3)]
    seq = [fit(model, st, tx, x, y, epochs=2, batch_size=32, seed=s, first_epoch=1, progress=False)[0]
           for s, st in enumerate(states)]
    return model, tx, states, (x, y), seq


def test_fit_group_scan_is_bit_identical_to_fit(digits_runs):
    model, tx, states, xy, seq = digits_runs
    # chunk=16: 44 steps per epoch run as 3 calls of 15 steps, the last one padded.
    for workers in (1, 2):  # run after run, and two runs at a time in threads
        out = fit_group(model, states, tx, [xy] * 3, epochs=2, batch_size=32, seeds=[0, 1, 2],
                        first_epoch=1, chunk=16, strategy="scan", workers=workers)
        for a, b in zip(seq, out):
            _same(a, b)
        assert [int(s.step) for s in out] == [88] * 3
    # The caller's states were not donated (reading a donated buffer raises).
    _same(states[0].params, init_params(model, jax.random.PRNGKey(0), (1, 8, 8, 1))["params"])


def test_fit_group_vmap_is_close_to_fit(digits_runs):
    model, tx, states, xy, seq = digits_runs
    out = fit_group(model, states, tx, [xy] * 3, epochs=2, batch_size=32, seeds=[0, 1, 2],
                    first_epoch=1, strategy="vmap")
    for a, b in zip(seq, out):
        jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, rtol=0, atol=1e-5), a, b)
        assert int(b.step) == 88


def test_fit_group_vmap_slices(digits_runs):
    """Slices of vmap_size runs (the CPU default, 2, gives [0, 1] and [2] here): the same result
    whatever the number of threads, close to fit; one slice of all runs is close too."""
    model, tx, states, xy, seq = digits_runs
    kw = dict(epochs=2, batch_size=32, seeds=[0, 1, 2], first_epoch=1, strategy="vmap")
    assert group._vmap_size(None, 3) == (group.CPU_VMAP_SIZE if jax.default_backend() == "cpu" else 3)
    one = fit_group(model, states, tx, [xy] * 3, vmap_size=2, workers=1, **kw)
    two = fit_group(model, states, tx, [xy] * 3, vmap_size=2, workers=2, **kw)
    whole = fit_group(model, states, tx, [xy] * 3, vmap_size=3, **kw)
    for a, b, c, d in zip(seq, one, two, whole):
        _same(b, c)
        for u in (b, d):
            jax.tree.map(lambda p, q: np.testing.assert_allclose(p, q, rtol=0, atol=1e-5), a, u)


def test_fit_group_runs_with_their_own_data(digits_runs):
    """Each run trains on its own training set (held once on the device per distinct set)."""
    model, tx, states, (x, y), _ = digits_runs
    flipped = (x[::-1].copy(), y[::-1].copy())
    data = [(x, y), flipped, (x.copy(), y.copy())]  # the third equals the first: one device copy
    images, labels, offsets = group._device_data(data)
    assert offsets == [0, len(y), 0] and images.shape[0] == 2 * len(y)
    seq = [fit(model, st, tx, *d, epochs=1, batch_size=32, seed=3, progress=False)[0]
           for st, d in zip(states, data)]
    out = fit_group(model, states, tx, data, epochs=1, batch_size=32, seeds=[3, 3, 3], workers=1)
    for a, b in zip(seq, out):
        _same(a, b)
    assert not np.array_equal(np.asarray(out[0].params["Dense_0"]["kernel"]),
                              np.asarray(out[1].params["Dense_0"]["kernel"]))


def test_fit_group_masked_per_run_masks(digits_runs):
    """Fine-tuning shape: one update rule, each run's own masks in its optimizer state."""
    model, _, states, xy, _ = digits_runs
    params = [s.params for s in states]
    masks = [jax.tree.map(lambda p, s=s: jnp.abs(p) >= jnp.quantile(jnp.abs(p), s), p)
             for p, s in zip(params, (0.2, 0.5, 0.8))]
    txs = [masked(optax.adam(1e-3), m) for m in masks]
    init = [create_train_state({"params": p}, t) for p, t in zip(params, txs)]
    seq = [fit(model, st, t, *xy, epochs=1, batch_size=32, seed=0, progress=False)[0]
           for st, t in zip(init, txs)]
    out = fit_group(model, init, txs[0], [xy] * 3, epochs=1, batch_size=32, seeds=[0, 0, 0])
    for a, b, m in zip(seq, out, masks):
        _same(a, b)
        for w, keep in zip(jax.tree.leaves(b.params), jax.tree.leaves(m)):
            assert np.all(np.asarray(w)[~np.asarray(keep)] == 0.0)


def _method_outputs(configs, strategy):
    """The sequential methods themselves, their fit calls trained as one group (GroupTrainer)."""
    trainer = GroupTrainer(len(configs), strategy)
    return run_in_group(trainer, [lambda c=c: METHODS[c.method](make_run(c.copy_and_resolve_references(),
                                                                           trainer)) for c in configs])


def _sequential_outputs(configs):
    return [METHODS[c.method](make_run(c.copy_and_resolve_references())) for c in configs]


@pytest.mark.parametrize("method", ["one_shot", "none"])
def test_group_methods_equal_sequential(method):
    """(a) three seeds at one sparsity, (b) one seed at three sparsities: the same params, masks and
    accuracies as the runs done one by one (``none`` ignores the sparsity: (b) is three copies)."""
    seeds = [_config(f"method={method}", f"seed={s}") for s in (0, 1, 2)]
    sparsities = [_config(f"method={method}", f"sparsity={s}") for s in (0.3, 0.5, 0.9)]
    seq_seeds = _sequential_outputs(seeds)
    if method == "none":
        seq_sparsities = [seq_seeds[0]] * 3
    else:  # seed 0 at 0.5 is the first run of (a)
        seq_sparsities = [_sequential_outputs(sparsities[:1])[0], seq_seeds[0],
                          _sequential_outputs(sparsities[2:])[0]]
    for configs, seq in ((seeds, seq_seeds), (sparsities, seq_sparsities)):
        assert vmap_groups(configs) == [[0, 1, 2]]
        for a, b in zip(seq, _method_outputs(configs, "scan")):
            assert a._fields == b._fields and a.extra == b.extra
            _same(a.params, b.params)
            _same(a.masks, b.masks)
            assert a.dense_test_accuracy == b.dense_test_accuracy
            assert a.pruned_test_accuracy == b.pruned_test_accuracy
    counts = [sum(int(np.sum(~np.asarray(m))) for m in jax.tree.leaves(o.masks)) for o in seq_sparsities]
    assert method == "none" or counts[0] < counts[1] < counts[2]
    if method == "one_shot":
        # strategy='vmap' on this short run (44 dense + 44 fine-tuning steps): the weights differ
        # only in the last bits, masks and accuracies are the same (not guaranteed for long runs).
        for a, b in zip(seq_seeds, _method_outputs(seeds, "vmap")):
            _same(a.masks, b.masks)
            jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, rtol=0, atol=1e-5),
                         a.params, b.params)
            assert (a.dense_test_accuracy, a.pruned_test_accuracy) == (
                b.dense_test_accuracy, b.pruned_test_accuracy)


def test_run_group_writes_what_train_and_evaluate_writes(tmp_path):
    configs = [_config("seed=5", "sparsity=0.6"), _config("seed=6", "sparsity=0.8")]
    seq = [train_and_evaluate(c, tmp_path / f"seq{i}") for i, c in enumerate(configs)]
    got = run_group(configs, [str(tmp_path / f"grp{i}") for i in range(2)])
    for i, (a, b) in enumerate(zip(seq, got)):
        assert set(b) == set(a) | {"vmapped", "vmap_strategy"}
        assert b["vmapped"] == 2 and b["vmap_strategy"] == "scan" and b["wall_s"] > 0
        assert {k: v for k, v in a.items() if k != "wall_s"} == {
            k: v for k, v in b.items() if k not in ("wall_s", "vmapped", "vmap_strategy")}
        assert "fit_sha256" in b  # bit-identical final states of both fit phases
        written = json.loads((tmp_path / f"grp{i}" / "result.json").read_text())
        assert written == json.loads(json.dumps(b))
        assert not (tmp_path / f"grp{i}" / "result.json.tmp").exists()
    assert configs[0].allocation == "global" and configs[0].method == "one_shot"  # not mutated


def test_run_group_single_config_is_train_and_evaluate(tmp_path):
    config = _config("method=none", "epochs=1")
    got = run_group([config], [str(tmp_path / "one")])[0]
    assert "vmapped" not in got
    assert json.loads((tmp_path / "one" / "result.json").read_text())["method"] == "none"


@pytest.mark.parametrize("method", ["global_one_shot", "static_sparse"])
def test_global_one_shot_and_static_sparse_groups_equal_sequential(method):
    # allocation=uniform: global_one_shot must switch its runs to 'global' as the method does.
    configs = [_config(f"method={method}", "allocation=uniform", "seed=7", "sparsity=0.6"),
               _config(f"method={method}", "allocation=uniform", "seed=8", "sparsity=0.8")]
    out = _method_outputs(configs, "scan")
    for a, b in zip(_sequential_outputs(configs), out):
        _same(a.params, b.params)
        _same(a.masks, b.masks)
        assert a.pruned_test_accuracy == b.pruned_test_accuracy
        assert a.dense_test_accuracy == b.dense_test_accuracy
