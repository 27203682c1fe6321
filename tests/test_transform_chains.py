"""The pruning transformation inside whatever optax chain a user builds (issue 15, item 1).

Property: for every chain layout, after several ``optax.apply_updates`` steps the weights the masks
prune are exactly zero, or a ``PruningError`` (under ``jit``: the runtime error carrying its text)
says where ``pruning`` must go. Layouts that transform the updates after ``pruning`` must raise;
the rest must keep the zeros. Runs on a model the test suite writes itself (``UserNnxMLP``).
"""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from hypothesis import given, settings, strategies as st

import jaxprune as jp
from jaxprune.recipes import mask_update
from jaxprune.train import check_pruned_zero, constant, get_masks, masked, pruning

from user_models import nnx_mlp_problem

# jax logs the traceback of a failed callback before re-raising it; the error itself is asserted.
logging.getLogger("jax._src.callback").setLevel(logging.CRITICAL)

RULE = "must be the last transformation applied to the updates"
STEPS = 6


PARAMS, _LOSS = nnx_mlp_problem()
_GRAD = jax.grad(_LOSS)
GRAD = jax.jit(_GRAD)
MASKS = jax.tree.map(lambda w: jnp.abs(w) > 0.1, PARAMS)  # fixed masks; params are not pre-masked


def _pruning(inner):
    # Fixed masks over params that are not pre-masked: the first update must zero the pruned weights.
    return masked(inner, MASKS)


def _gradual(inner):
    # Masks change on steps 0, 2, 4 (magnitude, 60 % of each kernel): weights become pruned while
    # training, not only at the start.
    return pruning(inner, update_masks=mask_update("magnitude"), schedule=constant(0.6, every=2))


def _adam():
    return optax.adam(1e-2)


# name -> (builder, whether the layout keeps the zero guarantee)
LAYOUTS = {
    "alone": (lambda: _pruning(_adam()), True),
    "gradual_alone": (lambda: _gradual(_adam()), True),
    "gradual_weight_decay_after": (lambda: optax.chain(_gradual(optax.scale_by_adam()),
                                                       optax.add_decayed_weights(1e-4),
                                                       optax.scale(-1e-2)), False),
    "whole_chain_inside": (lambda: _gradual(optax.chain(
        optax.clip_by_global_norm(1.0), optax.scale_by_adam(), optax.add_decayed_weights(1e-2),
        optax.scale_by_schedule(optax.linear_schedule(-1e-2, -1e-3, 10)))), True),
    "clip_before_pruning": (lambda: optax.chain(optax.clip_by_global_norm(1.0), _pruning(_adam())),
                            True),
    "nested_chain_then_identity": (lambda: optax.chain(optax.chain(_pruning(_adam())),
                                                       optax.identity()), True),
    "inject_hyperparams_inside": (lambda: _pruning(optax.inject_hyperparams(optax.adam)(
        learning_rate=1e-2)), True),
    "inject_hyperparams_around": (lambda: optax.inject_hyperparams(
        lambda learning_rate: _pruning(optax.adam(learning_rate)))(learning_rate=1e-2), True),
    "multisteps_around": (lambda: optax.MultiSteps(_pruning(_adam()), every_k_schedule=2), True),
    "multisteps_inside": (lambda: _pruning(optax.MultiSteps(_adam(), every_k_schedule=2)), True),
    "apply_if_finite_around": (lambda: optax.apply_if_finite(_pruning(_adam()), 3), True),
    "apply_if_finite_inside": (lambda: _pruning(optax.apply_if_finite(_adam(), 3)), True),
    "scale_after": (lambda: optax.chain(_pruning(_adam()), optax.scale(0.5)), False),
    "weight_decay_after": (lambda: optax.chain(_pruning(optax.scale_by_adam()),
                                               optax.add_decayed_weights(1e-4), optax.scale(-1e-2)),
                           False),
    "schedule_after": (lambda: optax.chain(_pruning(optax.scale_by_adam()), optax.scale_by_schedule(
        optax.linear_schedule(-1e-2, -1e-3, 10))), False),
    "clip_after": (lambda: optax.chain(_pruning(_adam()), optax.clip_by_global_norm(1e-3)), False),
}


def _run(tx, steps=STEPS, nan_at=None, jit=True):
    """Trains ``steps`` steps; returns (params, opt_state) or the exception raised on the way."""
    params, opt_state = PARAMS, tx.init(PARAMS)
    update = jax.jit(tx.update) if jit else tx.update
    try:
        for t in range(steps):
            g = GRAD(params)
            if t == nan_at:
                g = jax.tree.map(lambda a: a.at[(0,) * a.ndim].set(jnp.nan), g)
            u, opt_state = update(g, opt_state, params)
            params = optax.apply_updates(params, u)
        check_pruned_zero(params, opt_state)  # the last update's result is checked too
    except (jp.PruningError, ValueError, jax.errors.JaxRuntimeError) as e:
        return e
    return params, opt_state


def _pruned_nonzero(params, masks):
    return sum(int(np.sum(np.asarray(w)[~np.asarray(m)] != 0))
               for w, m in zip(jax.tree.leaves(params), jax.tree.leaves(masks)))


def _assert_zero_or_error(out, keeps_zeros):
    if isinstance(out, Exception):
        assert RULE in str(out) and "pruned weights of '" in str(out), str(out)[-400:]
        assert not keeps_zeros, f"a layout that keeps zeros raised: {str(out)[-300:]}"
        return
    params, opt_state = out
    masks = get_masks(opt_state)
    n_pruned = sum(int(np.sum(~np.asarray(m))) for m in jax.tree.leaves(masks))
    assert n_pruned > 0  # the property is about something
    assert _pruned_nonzero(params, masks) == 0
    assert keeps_zeros, "a layout that changes the updates after pruning raised nothing"


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_every_chain_layout_keeps_zeros_or_raises(name):
    build, keeps_zeros = LAYOUTS[name]
    _assert_zero_or_error(_run(build()), keeps_zeros)


@settings(max_examples=6)
@given(pre_clip=st.booleans(), wrapper=st.sampled_from(["none", "multisteps", "apply_if_finite",
                                                         "inject_hyperparams"]),
       post=st.sampled_from(["none", "identity", "scale", "add_decayed_weights"]),
       nan_step=st.sampled_from([None, 3]))
def test_random_chain_layouts_keep_zeros_or_raise(pre_clip, wrapper, post, nan_step):
    inner = optax.chain(optax.clip_by_global_norm(1.0), _adam()) if pre_clip else _adam()
    tx = _pruning(inner)
    if wrapper == "multisteps":
        tx = optax.MultiSteps(tx, every_k_schedule=2)
    elif wrapper == "apply_if_finite":
        tx = optax.apply_if_finite(tx, 3)
    elif wrapper == "inject_hyperparams":
        tx = optax.inject_hyperparams(lambda learning_rate: _pruning(
            optax.chain(optax.clip_by_global_norm(1.0), optax.adam(learning_rate))))(learning_rate=1e-2)
    if post != "none":
        tx = optax.chain(tx, {"identity": optax.identity(), "scale": optax.scale(0.5),
                              "add_decayed_weights": optax.add_decayed_weights(1e-3)}[post])
    # A NaN gradient only skips a step where apply_if_finite guards it; elsewhere it would make the
    # kept weights NaN, which says nothing about pruned ones.
    out = _run(tx, nan_at=nan_step if wrapper == "apply_if_finite" else None)
    _assert_zero_or_error(out, keeps_zeros=post in ("none", "identity"))


def test_eager_misuse_raises_pruning_error_naming_the_leaf():
    tx = optax.chain(_pruning(_adam()), optax.scale(0.5))
    out = _run(tx, steps=2, jit=False)
    assert isinstance(out, jp.PruningError)
    assert "'inp/kernel'" in str(out) and RULE in str(out) and "check_zero=False" in str(out)


def test_jit_misuse_surfaces_the_message_at_the_first_bad_update():
    tx = optax.chain(masked(_adam(), MASKS), optax.scale(0.5))
    step = jax.jit(tx.update)
    s = tx.init(PARAMS)
    u, s = step(GRAD(PARAMS), s, PARAMS)  # the first update is exempt (params not pre-masked)
    p = optax.apply_updates(PARAMS, u)
    # jit dispatches asynchronously: the error surfaces when the step's results are used.
    with pytest.raises((ValueError, jax.errors.JaxRuntimeError), match="PruningError: pruning: "):
        jax.block_until_ready(step(GRAD(p), s, p))


def test_check_zero_false_is_the_explicit_opt_out():
    masks = MASKS
    tx = optax.chain(masked(_adam(), masks, check_zero=False), optax.scale(0.5))
    params, opt_state = PARAMS, tx.init(PARAMS)
    for _ in range(3):
        u, opt_state = jax.jit(tx.update)(GRAD(params), opt_state, params)
        params = optax.apply_updates(params, u)
    assert _pruned_nonzero(params, masks) > 0  # what the check exists to catch
    with pytest.raises(jp.PruningError, match="inp/kernel"):
        check_pruned_zero(params, opt_state)


def test_check_under_vmap_and_scan():
    masks = MASKS

    def train(tx):
        def one(params):
            def body(carry, _):
                p, s = carry
                u, s = tx.update(_GRAD(p), s, p)
                return (optax.apply_updates(p, u), s), None
            return jax.lax.scan(body, (params, tx.init(params)), None, length=3)[0][0]
        stacked = jax.tree.map(lambda a: jnp.stack([a, 2 * a]), PARAMS)
        return jax.jit(jax.vmap(one))(stacked)

    out = train(masked(_adam(), masks))
    for w, m in zip(jax.tree.leaves(out), jax.tree.leaves(masks)):
        assert np.all(np.asarray(w)[:, ~np.asarray(m)] == 0)
    with pytest.raises((ValueError, jax.errors.JaxRuntimeError), match=RULE):
        jax.block_until_ready(train(optax.chain(masked(_adam(), masks), optax.scale(0.5))))


def test_params_changed_outside_the_optimizer_are_reported():
    tx = masked(_adam(), MASKS)
    s = tx.init(PARAMS)
    u, s = tx.update(GRAD(PARAMS), s, PARAMS)
    p = optax.apply_updates(PARAMS, u)
    with pytest.raises(jp.PruningError, match="changed outside the optimizer"):
        tx.update(GRAD(p), s, PARAMS)  # the un-pruned params, not the updated ones
