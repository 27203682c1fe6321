import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import jaxprune as jp
from jaxprune.recipes import mask_update
from jaxprune.train import (PruningState, constant, create_train_state, evaluate, fit, get_masks, iterative,
                            make_train_step, masked, one_shot, polynomial, pruning)
from jaxprune.models import MLP, init_params

from helpers import TinyNnx, linen_params


def _toy(n=256, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int32)
    return x, y


def test_masked_keeps_pruned_weights_exactly_zero_and_trains():
    model = MLP((16, 2))
    v = init_params(model, jax.random.PRNGKey(0), (1, 6))
    masks = jp.topk_masks(jp.magnitude_scores(v["params"]), jp.uniform_sparsity(v["params"], 0.5))
    tx = masked(optax.adam(1e-2), masks)
    state = create_train_state(v, tx)  # params NOT pre-masked: the first update zeros them
    x, y = _toy()
    state, hist = fit(model, state, tx, x, y, epochs=10, batch_size=32, seed=0, progress=False)
    for w, m in zip(jax.tree.leaves(state.params), jax.tree.leaves(masks)):
        assert np.all(np.asarray(w)[~np.asarray(m)] == 0.0)
    assert hist[-1]["loss"] < hist[0]["loss"]
    assert evaluate(model, state.params, {}, x, y)["accuracy"] > 0.8
    assert jp.is_nested(get_masks(state.opt_state), masks) and jp.is_nested(masks, get_masks(state.opt_state))


def test_fit_is_deterministic():
    model = MLP((8, 2))
    v = init_params(model, jax.random.PRNGKey(0), (1, 6))
    x, y = _toy()
    outs = []
    for _ in range(2):
        st, _ = fit(model, create_train_state(v, optax.adam(1e-2)), optax.adam(1e-2), x, y, epochs=2,
                    batch_size=32, seed=3, progress=False)
        outs.append(st.params)
    jax.tree.map(np.testing.assert_array_equal, *outs)


def test_masks_change_only_on_schedule_and_sparsity_is_exact():
    p = linen_params()["params"]
    tx = pruning(optax.sgd(0.1), update_masks=mask_update("magnitude"),
                 schedule=polynomial(0.0, 0.8, begin=2, end=6, every=2))
    state = tx.init(p)
    g = jax.tree.map(jnp.ones_like, p)
    step = jax.jit(tx.update)
    seen = []
    for t in range(9):
        u, state = step(g, state, p)
        p = optax.apply_updates(p, u)
        seen.append(jp.summary(p).prunable["sparsity"])
    assert seen[0] == 0.0 and seen[1] == 0.0
    assert seen[2] == pytest.approx(0.0, abs=1e-9)  # s(begin) = s_init
    assert seen[3] == seen[2]  # not an update step
    kernels = [x.size for x in jax.tree.leaves(p) if x.ndim == 2]
    want = sum(jp.num_pruned(np.float32(0.8), n) for n in kernels) / sum(kernels)
    assert seen[6] == pytest.approx(want, abs=1e-12) and seen[8] == seen[6]
    assert float(state.sparsity) == pytest.approx(0.8)
    assert step._cache_size() == 1


def test_moments_reset_where_masks_change():
    p = {"w": jnp.array([[1.0, 2.0, 3.0, 4.0]])}
    tx = pruning(optax.adam(0.1), update_masks=mask_update("magnitude", include=lambda *_: True),
                 schedule=one_shot(0.5, at=1))
    state = tx.init(p)
    g = {"w": jnp.ones((1, 4))}
    _, state = tx.update(g, state, p)
    _, state = tx.update(g, state, p)  # step 1 prunes the two smallest
    adam = state.inner[0]
    np.testing.assert_array_equal(np.asarray(adam.mu["w"])[0, :2], 0.0)
    assert np.all(np.asarray(adam.mu["w"])[0, 2:] != 0.0)


def test_masked_works_on_nnx_state():
    model = TinyNnx(nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    masks = jp.topk_masks(jp.magnitude_scores(params), jp.erk_sparsity(params, 0.6))
    tx = masked(optax.adam(1e-2), masks)
    opt_state = tx.init(params)
    x, y = _toy()

    def loss(p):
        out = nnx.merge(graphdef, p, rest)(x)
        return jnp.mean((out[:, 0] - y) ** 2)

    for _ in range(5):
        g = jax.grad(loss)(params)
        u, opt_state = tx.update(g, opt_state, params)
        params = optax.apply_updates(params, u)
    s = jp.summary(params)
    assert s.prunable["sparsity"] == pytest.approx(0.6, abs=1e-2)
    for w, m in zip(jax.tree.leaves(params), jax.tree.leaves(masks)):
        assert np.all(np.asarray(w)[~np.asarray(m)] == 0.0)


def test_schedules_against_published_values():
    s = polynomial(0.0, 0.9, 0, 10)
    want = [0, .244, .439, .591, .706, .787, .842, .876, .893, .899, .9]
    np.testing.assert_allclose([float(s.sparsity(t)) for t in range(11)], want, atol=6e-4)
    it = iterative(0.2, 4, 10)
    np.testing.assert_allclose([float(it.sparsity(10 * r)) for r in range(5)],
                               [0, .2, .36, .488, .5904], atol=1e-6)
    c = constant(0.5, every=3, begin=1, end=7)
    assert [bool(c.is_update(t)) for t in range(9)] == [False, True, False, False, True, False, False,
                                                        True, False]


def test_schedule_errors():
    with pytest.raises(jp.PruningError, match="end"):
        polynomial(0.0, 0.9, 10, 5)
    with pytest.raises(jp.PruningError, match="end"):
        constant(0.5, begin=5, end=1)
    with pytest.raises(jp.PruningError, match="sparsity"):
        one_shot(1.2)
    with pytest.raises(jp.PruningError, match="every"):
        polynomial(0.0, 0.5, 0, 10, every=0)


def test_pruning_state_is_a_pytree_of_arrays():
    tx = masked(optax.adam(1e-3), jp.dense_masks(linen_params()))
    st = tx.init(linen_params())
    assert isinstance(st, PruningState)
    assert all(hasattr(x, "shape") for x in jax.tree.leaves(st))


def test_snapshot_copies_params_after_exactly_k_jitted_steps():
    from jaxprune.train.transform import get_snapshot, snapshot

    model = MLP((6, 3))
    v = init_params(model, jax.random.PRNGKey(0), (1, 4))
    x = jax.random.normal(jax.random.PRNGKey(1), (8, 4))
    y = jnp.arange(8) % 3
    tx = snapshot(masked(optax.adam(1e-2), jax.tree.map(lambda p: p == p, v["params"])), 3)
    step = make_train_step(model, tx)
    st = create_train_state(v, tx)
    seen = []
    for _ in range(6):
        seen.append(st.params)
        st, _, _ = step(st, x, y)
    for a, b in zip(jax.tree.leaves(get_snapshot(st.opt_state)), jax.tree.leaves(seen[3])):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(jp.PruningError, match="step"):
        snapshot(optax.sgd(1.0), -1)


def test_imp_late_rewinding_by_step_runs_and_checks_range(tmp_path):
    from jaxprune.cli import main

    base = ["run", "experiments/configs/seed_mlp.py", "dataset=digits", "epochs=1", "sparsity=0.36",
            "method=imp", "latency_batch=0", "--no-progress"]
    assert main([*base, "rewind_step=7", "--workdir", str(tmp_path / "a")]) == 0
    r = json.loads((tmp_path / "a" / "result.json").read_text())
    assert r["imp_rounds"] == 2 and r["sparsity"] == pytest.approx(0.36, abs=1e-3)
    assert main([*base, "rewind_step=100000", "--workdir", str(tmp_path / "b")]) == 2
    assert main([*base, "rewind_step=3", "rewind_epoch=1", "--workdir", str(tmp_path / "c")]) == 2


# --------------------------------------------------------------------------- schedule hyperparameters

from user_models import nnx_mlp_problem  # noqa: E402



def _pruned_per_leaf(masks):
    return [int(np.sum(~np.asarray(m))) for m in jax.tree.leaves(masks)]


def _want_per_leaf(params, target):
    return [jp.num_pruned(np.float32(s), x.size) for s, x in
            zip(jax.tree.leaves(jp.uniform_sparsity(params, float(np.float32(target)))),
                jax.tree.leaves(params))]


def test_set_target_changes_the_target_without_retracing():
    params, loss = nnx_mlp_problem()
    tx = optax.chain(optax.clip_by_global_norm(1.0),
                     pruning(optax.adam(1e-2), update_masks=mask_update("magnitude"),
                             schedule=polynomial(0.0, 0.5, begin=0, end=3)))
    traces = []

    @jax.jit
    def step(p, s):
        traces.append(1)  # runs once per trace, not per call
        u, s = tx.update(jax.grad(loss)(p), s, p)
        return optax.apply_updates(p, u), s

    opt_state = tx.init(params)
    t = 0
    # Phase 1 reaches 0.5 at step 3; later phases move begin/end past the current step.
    for target, begin in ((0.5, None), (0.8, 5), (0.3, 10)):
        if begin is not None:
            opt_state = jp.train.set_target(opt_state, target, begin=begin, end=begin + 2)
        for _ in range(5):
            params, opt_state = step(params, opt_state)
            t += 1
        masks = get_masks(opt_state)
        assert _pruned_per_leaf(masks) == _want_per_leaf(params, target)
        for w, m in zip(jax.tree.leaves(params), jax.tree.leaves(masks)):
            assert np.all(np.asarray(w)[~np.asarray(m)] == 0)
        assert float(opt_state[1].sparsity) == pytest.approx(target)
    assert len(traces) == 1 and step._cache_size() == 1


def test_set_target_finds_the_state_anywhere_and_validates():
    tx = optax.inject_hyperparams(lambda learning_rate: pruning(
        optax.sgd(learning_rate), update_masks=mask_update("magnitude"),
        schedule=constant(0.5, every=10)))(learning_rate=0.1)
    p = {"w": jnp.ones((4, 4))}
    s = tx.init(p)
    s2 = jp.train.set_target(s, 0.75, every=3)
    inner = s2.inner_state
    assert float(inner.hyperparams["sparsity"]) == 0.75 and int(inner.hyperparams["every"]) == 3
    assert inner.hyperparams["sparsity"].dtype == jnp.float32
    assert inner.hyperparams["every"].dtype == jnp.int32
    assert float(s.inner_state.hyperparams["sparsity"]) == 0.5  # a new state; the old one is unchanged
    with pytest.raises(jp.PruningError, match="sparsity must be in"):
        jp.train.set_target(s, 1.5)
    with pytest.raises(jp.PruningError, match="sparsity must be in"):
        jp.train.set_target(s, float("nan"))
    with pytest.raises(jp.PruningError, match="every must be an integer >= 1"):
        jp.train.set_target(s, every=0)
    with pytest.raises(jp.PruningError, match="has no initial"):
        jp.train.set_target(s, initial=0.1)  # constant() has no initial sparsity
    with pytest.raises(jp.PruningError, match="precedes begin"):
        jp.train.set_target(s, begin=20, end=10)
    with pytest.raises(jp.PruningError, match="no PruningState"):
        jp.train.set_target(optax.adam(1e-3).init(p), 0.5)
    with pytest.raises(jp.PruningError, match="at least one"):
        jp.train.set_target(s)
    # A stacked (vmapped) state keeps its leading axis; a value per run is accepted too.
    stacked = jax.tree.map(lambda a: jnp.stack([a, a]), s)
    assert jp.train.set_target(stacked, 0.9).inner_state.hyperparams["sparsity"].shape == (2,)
    per_run = jp.train.set_target(stacked, jnp.array([0.2, 0.9]))
    np.testing.assert_allclose(per_run.inner_state.hyperparams["sparsity"], [0.2, 0.9])


def test_schedule_hyperparameters_drive_the_rules():
    s = polynomial(0.0, 0.9, 0, 10)
    hp = s.init_hparams()
    assert set(hp) == {"initial", "sparsity", "begin", "end", "every"}
    moved = dict(hp, sparsity=jnp.float32(0.5), begin=jnp.int32(5), end=jnp.int32(15))
    assert float(s.sparsity(4, moved)) == 0.0 and float(s.sparsity(15, moved)) == 0.5
    assert bool(s.is_update(5, moved)) and not bool(s.is_update(4, moved))
    it = iterative(0.2, 3, 100)
    assert float(it.sparsity(300)) == float(np.float32(1 - 0.8 ** 3))  # the last round is exact
    c = constant(0.5, every=2)
    assert not bool(c.is_update(3)) and bool(c.is_update(3, dict(c.init_hparams(), every=jnp.int32(3))))
    assert float(one_shot(0.5, at=2).sparsity(2, {"sparsity": jnp.float32(0.7), "begin": jnp.int32(2)})) \
        == pytest.approx(0.7)


def test_train_exports_snapshot_and_set_target():
    import jaxprune.train as train

    for name in ("snapshot", "get_snapshot", "set_target", "check_pruned_zero"):
        assert name in train.__all__ and callable(getattr(train, name))


# --- schedules: every rule at its boundaries (these also kill jaxprune.train.schedules mutants) ---

from jaxprune.train.schedules import Schedule, check_hparam_values, never  # noqa: E402


def _upd(s, steps, hp=None):
    return [bool(s.is_update(t, hp)) for t in steps]


def test_schedule_hparams_are_typed_arrays_and_unknown_names_fail():
    hp = polynomial(0.1, 0.9, 2, 8, every=3).init_hparams()
    assert {k: v.dtype.name for k, v in hp.items()} == {
        "initial": "float32", "sparsity": "float32", "begin": "int32", "end": "int32", "every": "int32"}
    assert float(hp["initial"]) == pytest.approx(0.1) and int(hp["every"]) == 3
    with pytest.raises(jp.PruningError, match=r"^Schedule: unknown hyperparameter 'speed'; known: sparsity, "
                                               r"initial, begin, end, every, rounds$"):
        Schedule(lambda t, hp: 0.0, lambda t, hp: False, {"speed": 1}).init_hparams()


def test_never_and_one_shot_boundaries():
    n = never(0.3)
    assert float(n.sparsity(5)) == pytest.approx(0.3) and _upd(n, range(4)) == [False] * 4
    assert float(never().sparsity(0)) == 0.0
    s = one_shot(0.5, at=2)
    assert [float(s.sparsity(t)) for t in range(4)] == [0.0, 0.0, 0.5, 0.5]
    assert _upd(s, range(4)) == [False, False, True, False]


def test_constant_every_begin_end_and_open_end():
    c = constant(0.5, every=2, begin=1, end=5)
    assert _upd(c, range(8)) == [False, True, False, True, False, True, False, False]
    assert _upd(constant(0.5, every=3), (0, 3, 4, 3 * 10**8)) == [True, True, False, True]  # no end
    hp = dict(c.init_hparams(), every=jnp.int32(0))  # a traced every of 0 reads as 1
    assert _upd(c, range(1, 4), hp) == [True, True, True]


def test_polynomial_power_every_end_and_hparams():
    lin = polynomial(0.2, 0.6, 2, 6, power=1.0, every=3)
    np.testing.assert_allclose([float(lin.sparsity(t)) for t in range(8)],
                               [0.2, 0.2, 0.2, 0.3, 0.4, 0.5, 0.6, 0.6], atol=1e-6)
    assert _upd(lin, range(8)) == [False, False, True, False, False, True, True, False]  # end always
    hp = dict(lin.init_hparams(), end=jnp.int32(2))  # end == begin (set_target): s_f right after begin
    assert float(lin.sparsity(3, hp)) == pytest.approx(0.6)
    assert float(lin.sparsity(1, hp)) == pytest.approx(0.2)
    with pytest.raises(jp.PruningError, match=r"^polynomial schedule: power must be > 0, got 0"):
        polynomial(0.0, 0.5, 0, 4, power=0)
    with pytest.raises(jp.PruningError, match=r"^polynomial schedule: end \(3\) must come after begin \(3\)"):
        polynomial(0.0, 0.5, 3, 3)


def test_iterative_rounds_and_updates():
    s = iterative(0.5, 2, 3)
    assert [float(s.sparsity(t)) for t in (0, 2, 3, 5, 6, 9, 30)] == [0.0, 0.0, 0.5, 0.5, 0.75, 0.75, 0.75]
    assert _upd(s, range(10)) == [False, False, False, True, False, False, True, False, False, False]
    hp = dict(s.init_hparams(), rounds=jnp.int32(1), sparsity=jnp.float32(0.9))
    assert float(s.sparsity(3, hp)) == pytest.approx(0.9) and not bool(s.is_update(6, hp))


@pytest.mark.parametrize("call, message", [
    (lambda: constant(0.5, every=0), "schedule: every must be an integer >= 1, got 0"),
    (lambda: constant(0.5, begin=-1), "schedule: begin must be an integer >= 0, got -1"),
    (lambda: constant(0.5, every=True), "schedule: every must be an integer >= 1, got True"),
    (lambda: one_shot(0.5, at=1.5), "schedule: at must be an integer >= 0, got 1.5"),
    (lambda: iterative(0.2, 0, 10), "schedule: rounds must be an integer >= 1, got 0"),
    (lambda: iterative(0.2, 2, 0), "schedule: steps_per_round must be an integer >= 1, got 0"),
    (lambda: constant(0.5, begin=4, end=2), "schedule: end (2) precedes begin (4)"),
    (lambda: polynomial(0.0, 0.5, 0, -1), "schedule: end must be an integer >= 0, got -1"),
    (lambda: iterative(1.5, 2, 10), "iterative: rate: sparsity must be in [0, 1], got 1.5"),
    (lambda: polynomial(-0.5, 0.5, 0, 4), "polynomial: s_init: sparsity must be in [0, 1], got -0.5"),
    (lambda: polynomial(0.0, 2.0, 0, 4), "polynomial: s_final: sparsity must be in [0, 1], got 2.0"),
    (lambda: never(1.5), "never: sparsity: sparsity must be in [0, 1], got 1.5"),
    (lambda: constant(-1.0), "constant: sparsity: sparsity must be in [0, 1], got -1.0"),
    (lambda: one_shot(1.2), "one_shot: sparsity: sparsity must be in [0, 1], got 1.2"),
])
def test_schedule_argument_errors(call, message):
    with pytest.raises(jp.PruningError) as e:
        call()
    assert str(e.value) == message


@pytest.mark.parametrize("values, message", [
    ({"speed": 1}, "set_target: unknown schedule hyperparameter 'speed'; known: sparsity, initial, begin, "
                   "end, every, rounds"),
    ({"sparsity": True}, "set_target: sparsity must be a real number, got True"),
    ({"sparsity": "x"}, "set_target: sparsity must be a real number, got 'x'"),
    ({"initial": np.array([0.5, 1.5])}, "set_target: initial must be in [0, 1], got [0.5, 1.5]"),
    ({"sparsity": float("nan")}, "set_target: sparsity must be in [0, 1], got nan"),
    ({"every": 0}, "set_target: every must be an integer >= 1, got 0"),
    ({"rounds": 0}, "set_target: rounds must be an integer >= 1, got 0"),
    ({"begin": 1.5}, "set_target: begin must be an integer >= 0, got 1.5"),
    ({"end": -1}, "set_target: end must be an integer >= 0, got -1"),
    ({"begin": 5, "end": 4}, "set_target: end (4) precedes begin (5)"),
])
def test_check_hparam_values_errors(values, message):
    with pytest.raises(jp.PruningError) as e:
        check_hparam_values(values)
    assert str(e.value) == message


def test_check_hparam_values_accepts_edges_and_skips_traced():
    check_hparam_values({"sparsity": 0.0, "initial": 1.0, "begin": 0, "end": 0, "every": 1, "rounds": 1})
    check_hparam_values({"begin": 3.0, "end": np.int64(3)}, where="x")  # integral floats are steps
    jax.jit(lambda v: check_hparam_values({"sparsity": v}) or v)(jnp.float32(2.0))
    with pytest.raises(jp.PruningError, match=r"^pruning: every"):
        check_hparam_values({"every": 0}, where="pruning")


# --- the pruning transformation's own checks and helpers (kill jaxprune.train.transform mutants) ---

from jaxprune.train import check_pruned_zero, get_snapshot, reset_where, set_target, snapshot  # noqa: E402


def _msg(call):
    with pytest.raises(jp.PruningError) as e:
        call()
    return str(e.value)


def test_transform_argument_and_state_errors_say_exactly_what_is_wrong():
    p = {"w": jnp.ones(2)}
    plain = optax.sgd(0.1).init(p)
    assert _msg(lambda: pruning(optax.sgd(0.1), update_masks=3)) == \
        "pruning: update_masks must be a callable or None"
    assert _msg(lambda: pruning(optax.sgd(0.1), schedule=0.5)) == \
        "pruning: schedule must be a jaxprune.train.Schedule, got <class 'float'>"
    tx = masked(optax.sgd(0.1), {"w": jnp.array([True, False])})
    assert _msg(lambda: tx.update(p, tx.init(p))) == \
        "pruning: update() needs params (call tx.update(grads, state, params))"
    assert _msg(lambda: get_masks(plain)) == "get_masks: the optimizer state holds no PruningState"
    assert _msg(lambda: check_pruned_zero(p, plain)) == \
        "check_pruned_zero: the optimizer state holds no PruningState"
    bare = tx.init(p)._replace(hyperparams=None)
    assert _msg(lambda: set_target(bare, 0.5)) == \
        "set_target: this PruningState holds no schedule hyperparameters"
    one = pruning(optax.sgd(0.1), schedule=one_shot(0.5, at=2)).init(p)
    assert _msg(lambda: set_target(one, every=3)) == \
        "set_target: the schedule has no every (its hyperparameters: sparsity, begin)"
    assert _msg(lambda: set_target(one, jnp.ones(3) * 0.5)) == \
        "set_target: sparsity of shape (3,) does not fit the state's shape ()"
    assert _msg(lambda: set_target(one, end=1)).startswith("set_target: the schedule has no end")
    assert _msg(lambda: snapshot(optax.sgd(1.0), step=-1)) == "snapshot: step must be an integer >= 0, got -1"
    assert _msg(lambda: snapshot(optax.sgd(1.0), step=True)) == \
        "snapshot: step must be an integer >= 0, got True"
    st = snapshot(optax.sgd(1.0), step=0)
    assert _msg(lambda: st.update(p, st.init(p))) == \
        "snapshot: update needs params (the copy is of the params)"
    assert _msg(lambda: get_snapshot(plain)) == "get_snapshot: opt_state holds no snapshot() state"


def test_set_target_replaces_values_in_place_and_checks_the_pair():
    p = {"w": jnp.ones(2)}
    s = pruning(optax.sgd(0.1), schedule=polynomial(0.0, 0.5, 0, 10)).init(p)
    s2 = set_target(s, 0.8, begin=4, end=6, every=2, initial=0.1)
    hp = s2.hyperparams
    assert {k: (hp[k].dtype.name, hp[k].shape) for k in hp} == {k: (s.hyperparams[k].dtype.name, ())
                                                                for k in s.hyperparams}
    got = [float(hp[k]) for k in ("sparsity", "initial", "begin", "end", "every")]
    assert got == pytest.approx([0.8, 0.1, 4, 6, 2])
    assert _msg(lambda: set_target(s, begin=11)) == "set_target: end (10) precedes begin (11)"
    traced = jax.jit(lambda v: set_target(s, v).hyperparams["sparsity"])(jnp.float32(1.5))
    assert float(traced) == 1.0  # a traced target cannot be checked: it is clipped


def test_snapshot_copies_after_exactly_step_updates_and_get_snapshot_finds_it_in_a_chain():
    tx = optax.chain(optax.identity(), snapshot(optax.sgd(1.0), step=2))
    p = {"w": jnp.array(5.0)}
    s = tx.init(p)
    seen = []
    for _ in range(4):
        seen.append(float(p["w"]))
        u, s = tx.update({"w": jnp.array(1.0)}, s, p)
        p = optax.apply_updates(p, u)
    assert seen == [5.0, 4.0, 3.0, 2.0] and float(get_snapshot(s)["w"]) == 3.0


def test_reset_where_zeros_only_changed_entries_of_every_moment():
    tx = optax.adam(1e-3)
    p = {"w": jnp.ones(3)}
    s = tx.update({"w": jnp.full(3, 2.0)}, tx.init(p), p)[1]
    r = reset_where(tx, s, {"w": jnp.array([True, False, True])})
    np.testing.assert_array_equal(r[0].mu["w"] == 0, [True, False, True])
    np.testing.assert_array_equal(r[0].nu["w"] == 0, [True, False, True])
    assert int(r[0].count) == int(s[0].count)  # non-param state untouched


def test_pruning_without_reset_moments_keeps_them_and_seed_changes_the_key():
    p = {"k": jnp.arange(1.0, 9.0).reshape(2, 4)}
    flip = lambda params, grads, masks, sparsity, step, key: jax.tree.map(lambda m: ~m, masks)  # noqa: E731
    for reset in (True, False):
        tx = pruning(optax.adam(0.1), update_masks=flip, schedule=constant(0.5, every=2, begin=1),
                     reset_moments=reset)
        s = tx.init(p)
        for _ in range(2):
            u, s = tx.update({"k": jnp.ones((2, 4))}, s, optax.apply_updates(p, u) if _ else p)
        mu = np.asarray(s.inner[0].mu["k"])
        assert bool((mu == 0).all()) is reset  # step 1 flipped every mask entry
    k0 = pruning(optax.sgd(0.1)).init(p).key
    assert not np.array_equal(k0, pruning(optax.sgd(0.1), seed=1).init(p).key)


def test_set_target_without_pruning_state_and_snapshot_counter_is_int32():
    p = {"w": jnp.ones(2)}
    assert _msg(lambda: set_target(optax.sgd(0.1).init(p), 0.5)) == \
        "set_target: the optimizer state holds no PruningState"
    # An int32 step counter: a float32 one would stop counting exactly after 2**24 updates.
    assert snapshot(optax.sgd(1.0), step=3).init(p)[1].count.dtype == jnp.int32


def test_init_masks_draws_from_a_key_of_the_seed():
    p = {"k": jnp.zeros((8, 8))}

    def init(params, key):
        return {"k": jax.random.uniform(key, (8, 8)) > 0.5}

    def masks(seed):
        return np.asarray(get_masks(pruning(optax.sgd(0.1), init_masks=init, seed=seed).init(p))["k"])

    np.testing.assert_array_equal(masks(0), masks(0))
    assert not np.array_equal(masks(0), masks(1))


def test_init_masks_of_the_wrong_structure_is_named_and_bf16_updates_stay_bf16():
    p = {"k": jnp.ones((2, 2), jnp.bfloat16)}
    bad = pruning(optax.sgd(0.1), init_masks=lambda params, key: {"j": jnp.ones((2, 2), bool)})
    assert _msg(lambda: bad.init(p)).startswith("init_masks(params, key) does not have the structure of params")
    tx = masked(optax.sgd(0.1), {"k": jnp.array([[True, False], [False, True]])})
    u, _ = tx.update(jax.tree.map(jnp.ones_like, p), tx.init(p), p)
    assert u["k"].dtype == jnp.bfloat16
    np.testing.assert_array_equal(optax.apply_updates(p, u)["k"] == 0, [[False, True], [True, False]])
