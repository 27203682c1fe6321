"""Masked optimisation as an optax transformation: the masks live in the optimizer state.

``pruning(inner, ...)`` wraps any optax optimizer. Every step it

1. (on mask-update steps only, chosen by a :class:`~jaxprune.train.schedules.Schedule`) computes new
   masks with ``update_masks(params, grads, masks, sparsity, step, key)`` — built from the core
   score/allocate/select functions — and resets the inner optimizer's moments where a mask changed;
2. masks the gradients and runs the inner optimizer;
3. returns ``where(mask, update, -params)``: kept weights get the optimizer's update, pruned weights
   get exactly ``-w`` so that after ``optax.apply_updates`` they are exactly zero.

Nothing multiplies the params before the forward pass (that costs 20-30 % of a small step), and there
is no separate "apply the masks" call to forget: the next ``apply_updates`` does it. The target
sparsity is an array in the state, so changing it never recompiles. Because the state is a NamedTuple
of arrays, ``jit``, checkpoints and sharding carry the masks like any other optimizer state.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from jaxprune.errors import PruningError
from jaxprune.masks import dense_masks
from jaxprune.paths import check_same_structure
from jaxprune.train.schedules import Schedule, never

__all__ = ["PruningState", "MaskUpdateFn", "pruning", "masked", "get_masks", "reset_where"]

MaskUpdateFn = Callable[..., Any]
"""``(params, grads, masks, sparsity, step, key) -> masks`` (a tree of bools like params)."""


class PruningState(NamedTuple):
    """State of :func:`pruning`: the inner optimizer's state, the masks and the pruning clock."""

    inner: Any
    masks: Any
    count: jax.Array  # steps taken so far (int32)
    sparsity: jax.Array  # target sparsity of the current masks (float32)
    key: jax.Array  # PRNG key for randomised mask updates (SET regrowth, random scores)


def reset_where(inner: optax.GradientTransformation, inner_state: Any, changed: Any) -> Any:
    """Zeros the inner optimizer's per-parameter state (e.g. Adam moments) where ``changed`` is True.

    RigL/SET regrow weights at zero with fresh moments; ``optax.tree_utils.tree_map_params`` finds the
    params-shaped parts of any optax state.

    >>> tx = optax.adam(1e-3)
    >>> p = {'w': jnp.ones(2)}
    >>> s = tx.update({'w': jnp.ones(2)}, tx.init(p), p)[1]
    >>> s2 = reset_where(tx, s, {'w': jnp.array([True, False])})
    >>> s2[0].mu['w'].tolist()
    [0.0, 0.10000000149011612]
    """
    return optax.tree_utils.tree_map_params(
        inner, lambda v, c: jnp.where(c, jnp.zeros_like(v), v), inner_state, changed,
        transform_non_params=lambda v: v)


def pruning(
    inner: optax.GradientTransformation,
    *,
    update_masks: Optional[MaskUpdateFn] = None,
    schedule: Optional[Schedule] = None,
    initial_masks: Optional[Any] = None,
    init_masks: Optional[Callable[[Any, jax.Array], Any]] = None,
    reset_moments: bool = True,
    seed: int = 0,
) -> optax.GradientTransformation:
    """Wraps ``inner`` so that training keeps pruned weights at exactly zero and updates the masks.

    Args:
      inner: any optax optimizer.
      update_masks: ``(params, grads, masks, sparsity, step, key) -> masks``; called under
        ``lax.cond`` on the steps where ``schedule.is_update(step)``. ``None``: masks never change.
      schedule: target sparsity per step and when to update masks (default: never).
      initial_masks: masks to start from (default: all True); or ``init_masks(params, key)``.
      reset_moments: zero the inner optimizer's per-parameter state where a mask changes.
      seed: seed of the PRNG key kept in the state for randomised updates.

    Two lines in a user's train step::

        tx = jaxprune.pruning(optax.adam(1e-3), update_masks=magnitude_update(), schedule=sched)
        updates, opt_state = tx.update(grads, opt_state, params)   # as with any optax optimizer

    >>> tx = masked(optax.sgd(0.1), {'w': jnp.array([True, False])})
    >>> p = {'w': jnp.array([1.0, 1.0])}
    >>> u, s = tx.update({'w': jnp.array([1.0, 1.0])}, tx.init(p), p)
    >>> optax.apply_updates(p, u)['w'].tolist()
    [0.8999999761581543, 0.0]
    """
    schedule = schedule or never()
    if update_masks is not None and not callable(update_masks):
        raise PruningError("pruning: update_masks must be a callable or None")

    def init_fn(params: Any) -> PruningState:
        key = jax.random.PRNGKey(seed)
        if initial_masks is not None:
            check_same_structure(params, initial_masks, "initial_masks")
            masks = jax.tree.map(lambda m: jnp.asarray(m, bool), initial_masks)
        elif init_masks is not None:
            masks = init_masks(params, jax.random.fold_in(key, -1))
            check_same_structure(params, masks, "init_masks(params, key)")
        else:
            masks = dense_masks(params)
        return PruningState(inner.init(params), masks, jnp.zeros((), jnp.int32),
                            jnp.asarray(schedule.sparsity(0), jnp.float32), key)

    def update_fn(updates: Any, state: PruningState, params: Any = None) -> tuple[Any, PruningState]:
        if params is None:
            raise PruningError("pruning: update() needs params (call tx.update(grads, state, params))")
        step = state.count
        masks, sparsity, inner_state = state.masks, state.sparsity, state.inner
        if update_masks is not None:
            target = jnp.asarray(schedule.sparsity(step), jnp.float32)
            key = jax.random.fold_in(state.key, step)

            def refresh(_):
                return update_masks(params, updates, masks, target, step, key), target

            masks, sparsity = jax.lax.cond(schedule.is_update(step), refresh,
                                           lambda _: (masks, sparsity), None)
            if reset_moments:
                changed = jax.tree.map(lambda a, b: a != b, masks, state.masks)
                inner_state = reset_where(inner, inner_state, changed)
        grads = jax.tree.map(lambda g, m: jnp.where(m, g, jnp.zeros_like(g)), updates, masks)
        new_updates, inner_state = inner.update(grads, inner_state, params)
        # Pruned entries get -w: after apply_updates they are exactly zero (and stay zero).
        new_updates = jax.tree.map(lambda u, m, w: jnp.where(m, u, -w.astype(u.dtype)),
                                   new_updates, masks, params)
        return new_updates, PruningState(inner_state, masks, step + 1, sparsity, state.key)

    return optax.GradientTransformation(init_fn, update_fn)


def masked(inner: optax.GradientTransformation, masks: Any) -> optax.GradientTransformation:
    """``inner`` with fixed masks: pruned weights are zeroed by the first update and stay zero.

    >>> tx = masked(optax.adam(1e-3), {'w': jnp.array([True, False])})
    >>> isinstance(tx.init({'w': jnp.ones(2)}), PruningState)
    True
    """
    return pruning(inner, initial_masks=masks)


def get_masks(opt_state: Any) -> Any:
    """The masks held by the first :class:`PruningState` found in an optax state (chains included).

    >>> tx = masked(optax.sgd(0.1), {'w': jnp.array([True])})
    >>> get_masks(tx.init({'w': jnp.ones(1)}))['w'].tolist()
    [True]
    """
    found = []

    def visit(x: Any) -> bool:
        if isinstance(x, PruningState):
            found.append(x)
            return True
        return False

    jax.tree.flatten(opt_state, is_leaf=visit)
    if not found:
        raise PruningError("get_masks: the optimizer state holds no PruningState")
    return found[0].masks


class SnapshotState(NamedTuple):
    """State of :func:`snapshot`: the params seen at ``step`` (zeros until then) and a step counter."""

    params: Any
    count: jax.Array


def snapshot(inner: optax.GradientTransformation, step: int) -> optax.GradientTransformation:
    """``inner``, plus a copy of the params as they are after ``step`` updates (late rewinding).

    Frankle et al. 2020 ("Linear Mode Connectivity and the Lottery Ticket Hypothesis") rewind lottery
    tickets to iteration k of the first run, not to initialisation. The copy lives in the optimizer
    state, so it is taken inside the jitted step at exactly the right update; read it with
    :func:`get_snapshot`. ``step=0`` is the initial params.

    >>> tx = snapshot(optax.sgd(1.0), step=1)
    >>> p = {'w': jnp.array(1.0)}
    >>> s = tx.init(p)
    >>> for _ in range(3):
    ...     u, s = tx.update({'w': jnp.array(1.0)}, s, p)
    ...     p = optax.apply_updates(p, u)
    >>> float(get_snapshot(s)['w']), float(p['w'])
    (0.0, -2.0)
    """
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise PruningError(f"snapshot: step must be an integer >= 0, got {step!r}")

    def init(params):
        return (inner.init(params), SnapshotState(jax.tree.map(jnp.asarray, params),
                                                  jnp.zeros((), jnp.int32)))

    def update(updates, state, params=None):
        if params is None:
            raise PruningError("snapshot: update needs params (the copy is of the params)")
        inner_state, snap = state
        take = snap.count == step
        copy = jax.tree.map(lambda old, p: jnp.where(take, p, old), snap.params, params)
        updates, inner_state = inner.update(updates, inner_state, params)
        return updates, (inner_state, SnapshotState(copy, snap.count + 1))

    return optax.GradientTransformation(init, update)


def get_snapshot(opt_state: Any) -> Any:
    """The params copied by the :func:`snapshot` in ``opt_state`` (searched depth-first)."""
    found = [s for s in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, SnapshotState))
             if isinstance(s, SnapshotState)]
    if not found:
        raise PruningError("get_snapshot: opt_state holds no snapshot() state")
    return found[0].params
