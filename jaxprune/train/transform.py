"""Masked optimisation as an optax transformation: the masks live in the optimizer state.

``pruning(inner, ...)`` wraps any optax optimizer. Every step it

1. checks that the weights its previous masks pruned are exactly zero (see the chain rule below);
2. (on mask-update steps only, chosen by a :class:`~jaxprune.train.schedules.Schedule`) computes new
   masks with ``update_masks(params, grads, masks, sparsity, step, key)`` — built from the core
   score/allocate/select functions — and resets the inner optimizer's moments where a mask changed;
3. masks the gradients and runs the inner optimizer;
4. returns ``where(mask, update, -params)``: kept weights get the optimizer's update, pruned weights
   get exactly ``-w`` so that after ``optax.apply_updates`` they are exactly zero.

**The chain rule.** Step 4 is exact only if nothing transforms the updates afterwards, so ``pruning``
is the last transformation applied to the updates: put the whole chain inside it,
``pruning(optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3),
optax.add_decayed_weights(1e-4)))``. Wrappers that pass whole updates through or zero them
(``MultiSteps``, ``apply_if_finite``, ``inject_hyperparams``) may go around it. A chain that breaks
the rule leaves pruned weights nonzero, which step 1 of the next update detects and reports as a
:class:`~jaxprune.errors.PruningError` (under ``jit`` inside a ``JaxRuntimeError``).

Nothing multiplies the params before the forward pass (that costs 20-30 % of a small step). The
schedule's hyperparameters (target, begin, end, every) are arrays in the state, so
:func:`set_target` changes the target without recompiling. Because the state is a NamedTuple of
arrays, ``jit``, checkpoints and sharding carry the masks like any other optimizer state.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxprune.counts import is_concrete
from jaxprune.errors import PruningError
from jaxprune.masks import dense_masks
from jaxprune.paths import check_same_structure, leaf_paths
from jaxprune.train.schedules import SPARSITY_HPARAMS, Schedule, check_hparam_values, never
from jaxprune.train.zero_check import chain_order_message, pruned_nonzero_counts, raise_if_pruned_nonzero

__all__ = ["PruningState", "MaskUpdateFn", "pruning", "masked", "get_masks", "set_target",
           "check_pruned_zero", "reset_where", "SnapshotState", "snapshot", "get_snapshot"]

MaskUpdateFn = Callable[..., Any]
"""``(params, grads, masks, sparsity, step, key) -> masks`` (a tree of bools like params)."""


class PruningState(NamedTuple):
    """State of :func:`pruning`: the inner optimizer's state, the masks, the clock and the schedule."""

    inner: Any
    masks: Any
    count: jax.Array  # steps taken so far (int32)
    sparsity: jax.Array  # target sparsity of the current masks (float32)
    key: jax.Array  # PRNG key for randomised mask updates (SET regrowth, random scores)
    hyperparams: Any = None  # the schedule's hyperparameters as arrays ({name: array}); set_target


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
    check_zero: bool = True,
) -> optax.GradientTransformation:
    """Wraps ``inner`` so that training keeps pruned weights at exactly zero and updates the masks.

    ``pruning`` must be the last transformation applied to the updates: put the whole optax chain
    inside it (module docstring, ``docs/training.md``).

    Args:
      inner: any optax optimizer or chain (clipping, weight decay, schedules included).
      update_masks: ``(params, grads, masks, sparsity, step, key) -> masks``; called under
        ``lax.cond`` on the steps where ``schedule.is_update(step)``. ``None``: masks never change.
      schedule: target sparsity per step and when to update masks (default: never). Its
        hyperparameters are kept as arrays in the state; change them with :func:`set_target`.
      initial_masks: masks to start from (default: all True); or ``init_masks(params, key)``.
      reset_moments: zero the inner optimizer's per-parameter state where a mask changes.
      seed: seed of the PRNG key kept in the state for randomised updates.
      check_zero: on every update after the first, raise :class:`PruningError` if a weight the
        previous masks pruned is not exactly zero (a transformation after ``pruning`` changed the
        updates, or the params were changed outside the optimizer). ``False`` turns the check off.

    Gradual magnitude pruning to 90 % in a user's own loop (the first update zeros nothing, the
    schedule reaches 0.9 at step 3):

    >>> from jaxprune.recipes import mask_update
    >>> from jaxprune.train import polynomial
    >>> tx = pruning(optax.adam(1e-2), update_masks=mask_update('magnitude'),
    ...              schedule=polynomial(0.0, 0.9, begin=0, end=3))
    >>> params = {'fc': {'kernel': jnp.arange(1.0, 21.0).reshape(4, 5), 'bias': jnp.ones(5)}}
    >>> opt_state = tx.init(params)
    >>> for _ in range(4):
    ...     grads = jax.tree.map(jnp.ones_like, params)
    ...     updates, opt_state = tx.update(grads, opt_state, params)
    ...     params = optax.apply_updates(params, updates)
    >>> int((params['fc']['kernel'] == 0).sum()), int((params['fc']['bias'] == 0).sum())  # 90 %, no bias
    (18, 0)
    """
    schedule = schedule or never()
    if update_masks is not None and not callable(update_masks):
        raise PruningError("pruning: update_masks must be a callable or None")
    if not isinstance(schedule, Schedule):
        raise PruningError(f"pruning: schedule must be a jaxprune.train.Schedule, got {type(schedule)}")

    def init_fn(params: Any) -> PruningState:
        key = jax.random.PRNGKey(seed)
        if initial_masks is not None:
            check_same_structure(params, initial_masks, "initial_masks")
            masks = jax.tree.map(lambda m: jnp.asarray(m, bool), initial_masks)
        elif init_masks is not None:
            masks = init_masks(params, jax.random.fold_in(key, 0xFFFFFFFF))  # -1 as uint32: no step uses it
            check_same_structure(params, masks, "init_masks(params, key)")
        else:
            masks = dense_masks(params)
        hyperparams = schedule.init_hparams()
        return PruningState(inner.init(params), masks, jnp.zeros((), jnp.int32),
                            schedule.sparsity(0, hyperparams), key, hyperparams)

    def update_fn(updates: Any, state: PruningState, params: Any = None) -> tuple[Any, PruningState]:
        if params is None:
            raise PruningError("pruning: update() needs params (call tx.update(grads, state, params))")
        step = state.count
        masks, sparsity, inner_state = state.masks, state.sparsity, state.inner
        found = jnp.zeros((), jnp.int32)
        if check_zero:
            # The first update is exempt: params need not be pre-masked, this update zeros them.
            found = raise_if_pruned_nonzero(params, masks, active=step > 0)
        if update_masks is not None:
            hp = state.hyperparams
            if hp is None:  # a state built by hand without hyperparameters: the schedule's own
                hp = schedule.init_hparams()
            target = schedule.sparsity(step, hp)
            key = jax.random.fold_in(state.key, step)

            def refresh(_):
                return update_masks(params, updates, masks, target, step, key), target

            masks, sparsity = jax.lax.cond(schedule.is_update(step, hp), refresh,
                                           lambda _: (masks, sparsity), None)
            if reset_moments:
                changed = jax.tree.map(lambda a, b: a != b, masks, state.masks)
                inner_state = reset_where(inner, inner_state, changed)
        grads = jax.tree.map(lambda g, m: jnp.where(m, g, jnp.zeros_like(g)), updates, masks)
        new_updates, inner_state = inner.update(grads, inner_state, params)
        # Pruned entries get -w: after apply_updates w + (-w) is exactly zero (and stays zero). The
        # dtype follows the promotion of (update, param), so a low-precision update dtype still
        # cancels the param exactly. ``found`` is 0 unless the check raised; adding it (fused into
        # the same elementwise pass) keeps the check's callback alive wherever the updates are used.
        new_updates = jax.tree.map(
            lambda u, m, w: jnp.where(m, u, -jnp.asarray(w) + found.astype(jnp.result_type(w))),
            new_updates, masks, params)
        return new_updates, state._replace(inner=inner_state, masks=masks, count=step + 1,
                                           sparsity=sparsity)

    return optax.GradientTransformation(init_fn, update_fn)


def masked(inner: optax.GradientTransformation, masks: Any, *,
           check_zero: bool = True) -> optax.GradientTransformation:
    """``inner`` with fixed masks: pruned weights are zeroed by the first update and stay zero.

    >>> tx = masked(optax.sgd(0.1), {'w': jnp.array([True, False])})
    >>> p = {'w': jnp.array([1.0, 1.0])}
    >>> u, s = tx.update({'w': jnp.array([1.0, 1.0])}, tx.init(p), p)
    >>> [round(x, 6) for x in optax.apply_updates(p, u)['w'].tolist()]
    [0.9, 0.0]
    """
    return pruning(inner, initial_masks=masks, check_zero=check_zero)


def _pruning_states(opt_state: Any) -> list[PruningState]:
    found: list[PruningState] = []

    def visit(x: Any) -> bool:
        if isinstance(x, PruningState):
            found.append(x)
            return True
        return False

    jax.tree.flatten(opt_state, is_leaf=visit)
    return found


def get_masks(opt_state: Any) -> Any:
    """The masks held by the first :class:`PruningState` found in an optax state (chains included).

    >>> tx = masked(optax.sgd(0.1), {'w': jnp.array([True])})
    >>> get_masks(tx.init({'w': jnp.ones(1)}))['w'].tolist()
    [True]
    """
    found = _pruning_states(opt_state)
    if not found:
        raise PruningError("get_masks: the optimizer state holds no PruningState")
    return found[0].masks


def _replace_value(old: jax.Array, value: Any, name: str) -> jax.Array:
    new = jnp.asarray(value, old.dtype)
    if name in SPARSITY_HPARAMS and not is_concrete(new):
        new = jnp.clip(new, 0.0, 1.0)  # traced values cannot be checked: clip, as mask functions do
    try:
        new = jnp.broadcast_to(new, old.shape)  # stacked (vmapped) states keep their leading axis
    except ValueError:
        raise PruningError(f"set_target: {name} of shape {jnp.shape(value)} does not fit the state's "
                           f"shape {old.shape}") from None
    if is_concrete(old) and isinstance(old, jax.Array) and old.committed:
        # Same placement as before (a mesh's sharding, a committed device): jit's cache key includes
        # it, so a different one would recompile the step.
        new = jax.device_put(new, old.sharding)
    return new


def set_target(opt_state: Any, sparsity: Any = None, *, initial: Any = None, begin: Any = None,
               end: Any = None, every: Any = None) -> Any:
    """A copy of ``opt_state`` whose pruning schedule has a new target (and optionally begin/end/every).

    Finds every :class:`PruningState` in the state (chains and wrappers included), like
    :func:`get_masks`. The values replace arrays of the same dtype and shape, so a jitted train step
    is not retraced. Masks move to the new target at the schedule's next update step: a
    :func:`~jaxprune.train.polynomial` schedule that has ended needs a new ``begin``/``end`` too.
    ``sparsity`` is the final target (for :func:`~jaxprune.train.iterative`, after all rounds).

    >>> from jaxprune.train import constant
    >>> tx = pruning(optax.sgd(0.1), schedule=constant(0.5, every=10))
    >>> s = set_target(tx.init({'w': jnp.ones(4)}), 0.75, every=5)
    >>> float(s.hyperparams['sparsity']), int(s.hyperparams['every'])
    (0.75, 5)
    """
    values = {name: v for name, v in (("sparsity", sparsity), ("initial", initial), ("begin", begin),
                                      ("end", end), ("every", every)) if v is not None}
    if not values:
        raise PruningError("set_target: give at least one of sparsity, initial, begin, end, every")
    check_hparam_values(values)
    seen = []

    def replace(x: Any) -> Any:
        if not isinstance(x, PruningState):
            return x
        if x.hyperparams is None:
            raise PruningError("set_target: this PruningState holds no schedule hyperparameters")
        missing = [n for n in values if n not in x.hyperparams]
        if missing:
            raise PruningError(f"set_target: the schedule has no {', '.join(missing)} (its "
                               f"hyperparameters: {', '.join(x.hyperparams) or 'none'})")
        hp = dict(x.hyperparams)
        hp.update({n: _replace_value(hp[n], v, n) for n, v in values.items()})
        b, e = hp.get("begin"), hp.get("end")
        if b is not None and e is not None and is_concrete(b) and is_concrete(e):
            if np.any(np.asarray(e) < np.asarray(b)):
                raise PruningError(f"set_target: end ({np.asarray(e).tolist()}) precedes begin "
                                   f"({np.asarray(b).tolist()})")
        seen.append(x)
        return x._replace(hyperparams=hp)

    new = jax.tree.map(replace, opt_state, is_leaf=lambda x: isinstance(x, PruningState))
    if not seen:
        raise PruningError("set_target: the optimizer state holds no PruningState")
    return new


def check_pruned_zero(params: Any, opt_state: Any) -> None:
    """Raises :class:`PruningError` if a weight pruned by ``opt_state``'s masks is not exactly zero.

    ``pruning`` checks this at the start of every update; call this after the last step to check the
    final params too (eager; it reads the values).

    >>> tx = masked(optax.sgd(0.1), {'w': jnp.array([True, False])})
    >>> p = {'w': jnp.ones(2)}
    >>> u, s = tx.update({'w': jnp.ones(2)}, tx.init(p), p)
    >>> check_pruned_zero(optax.apply_updates(p, u), s)
    """
    states = _pruning_states(opt_state)
    if not states:
        raise PruningError("check_pruned_zero: the optimizer state holds no PruningState")
    for state in states:
        check_same_structure(params, state.masks, "check_pruned_zero: masks")
        counts = np.asarray(pruned_nonzero_counts(params, state.masks))
        if counts.any():
            raise PruningError(chain_order_message(counts, leaf_paths(state.masks)))


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
