"""The chain-order check of :func:`jaxprune.train.pruning`: pruned weights must arrive at exactly zero.

``pruning`` makes pruned weights zero by giving them the update ``-w``. That is exact only if nothing
transforms the updates after it (``optax.chain(pruning(adam), optax.scale(0.5))`` leaves ``w/2``). No
transformation can see what is chained after it, but the effect shows up in the next update's params:
a weight its previous masks pruned is not zero. One fused any-reduction over the params decides that
each step; only when it fires are per-leaf counts computed and an error raised — directly when the
values are concrete, through a ``jax.pure_callback`` under ``jit``/``vmap``/``scan`` (jax 0.10.2 turns
the callback's exception into a ``JaxRuntimeError`` whose message ends with the ``PruningError`` text).
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune.counts import is_concrete
from jaxprune.errors import PruningError
from jaxprune.paths import leaf_paths

__all__ = ["CHAIN_RULE", "pruned_nonzero", "pruned_nonzero_counts", "chain_order_message",
           "raise_if_pruned_nonzero"]

CHAIN_RULE = (
    "jaxprune.train.pruning(...) must be the last transformation applied to the updates: put the whole "
    "chain inside it, e.g. pruning(optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3), "
    "optax.add_decayed_weights(1e-4)), ...), not optax.chain(pruning(...), optax.scale(...)); wrappers "
    "that pass whole updates through or zero them (optax.MultiSteps, optax.apply_if_finite, "
    "optax.inject_hyperparams) may go around it (docs/training.md)")
"""The rule that keeps pruned weights exactly zero, as the error states it."""


def pruned_nonzero(params: Any, masks: Any) -> jax.Array:
    """True when some weight that ``masks`` prunes is not exactly zero (one fused reduction; NaN counts).

    >>> bool(pruned_nonzero({'w': jnp.array([0.0, 2.0])}, {'w': jnp.array([False, True])}))
    False
    >>> bool(pruned_nonzero({'w': jnp.array([1e-9, 2.0])}, {'w': jnp.array([False, True])}))
    True
    """
    flags = [jnp.any(jnp.logical_and(jnp.logical_not(m), w != 0))
             for w, m in zip(jax.tree.leaves(params), jax.tree.leaves(masks))]
    return functools.reduce(jnp.logical_or, flags, jnp.asarray(False))


def pruned_nonzero_counts(params: Any, masks: Any) -> jax.Array:
    """Per leaf (tree order), how many pruned weights are not zero (int32 vector).

    >>> pruned_nonzero_counts({'a': jnp.ones(3), 'b': jnp.ones(2)},
    ...                       {'a': jnp.array([True, False, False]), 'b': jnp.ones(2, bool)}).tolist()
    [2, 0]
    """
    counts = [jnp.sum(jnp.logical_and(jnp.logical_not(m), w != 0), dtype=jnp.int32)
              for w, m in zip(jax.tree.leaves(params), jax.tree.leaves(masks))]
    return jnp.stack(counts) if counts else jnp.zeros((0,), jnp.int32)


def chain_order_message(counts: Any, paths: Sequence[str]) -> str:
    """The error text for per-leaf nonzero counts: the leaves, how many, and where ``pruning`` goes.

    >>> chain_order_message([0, 3], ['b', 'w'])[:52]
    "pruning: 3 pruned weights of 'w' are not zero at the"
    """
    counts = np.asarray(counts).reshape(-1, len(paths)).sum(axis=0)  # vmapped callers: sum the batch
    bad = [(p, int(c)) for p, c in zip(paths, counts) if c]
    if not bad:
        bad = [("?", 0)]
    path, n = bad[0]
    more = f" (and in {len(bad) - 1} more leaves)" if len(bad) > 1 else ""
    return (f"pruning: {n} pruned weights of '{path}'{more} are not zero at the start of this update, "
            f"so the previous update did not zero them: a transformation after the pruning "
            f"transformation changed its updates, or the params were changed outside the optimizer. "
            f"{CHAIN_RULE}. To turn this check off, pass pruning(..., check_zero=False).")


# Eager updates would otherwise dispatch three ops per leaf; under an outer jit this inlines.
_pruned_nonzero_jit = jax.jit(pruned_nonzero)


def _report(counts: Any, *, paths: tuple[str, ...]) -> np.ndarray:
    counts = np.asarray(counts)
    if np.any(counts):
        raise PruningError(chain_order_message(counts, paths))
    return np.zeros(counts.shape[:-1], np.int32)  # one zero per vmapped instance


def raise_if_pruned_nonzero(params: Any, masks: Any, active: Any = True) -> jax.Array:
    """Raises :class:`PruningError` if ``active`` and a pruned weight is nonzero; else returns 0.

    Concrete values raise here. Under a transformation (``jit``, ``vmap``, ``scan``, ``lax.cond``) a
    ``lax.cond`` on the flag calls a host callback that raises, so the check costs one reduction per
    step and a host round trip only when it fails. The callback is a ``pure_callback`` (a
    ``debug.callback`` is an effect, and a jitted function with effects loses jax's C++ dispatch
    fast path: +1.6 to 2.9 ms per LeNet-300-100 step here); the caller must fold the returned int32
    zero into the updates it returns, or jax/XLA remove the callback as dead code (inside a ``scan``
    whose final optimizer state is unused, folding it into the state is not enough).

    >>> int(raise_if_pruned_nonzero({'w': jnp.zeros(2)}, {'w': jnp.array([True, False])}))
    0
    >>> raise_if_pruned_nonzero({'w': jnp.ones(2)}, {'w': jnp.array([True, False])})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    jaxprune.errors.PruningError: pruning: 1 pruned weights of 'w' are not zero at the start ...
    """
    paths = tuple(leaf_paths(masks))
    bad = jnp.logical_and(active, _pruned_nonzero_jit(params, masks))
    if is_concrete(bad):
        if bool(bad):
            raise PruningError(chain_order_message(pruned_nonzero_counts(params, masks), paths))
        return jnp.zeros((), jnp.int32)
    report = functools.partial(_report, paths=paths)

    def fail() -> jax.Array:
        # ``active`` again: under ``vmap`` a batched predicate turns the cond into a select that runs
        # this branch for every instance, including the exempt ones.
        counts = jnp.where(active, pruned_nonzero_counts(params, masks), 0)
        return jax.pure_callback(report, jax.ShapeDtypeStruct((), jnp.int32), counts,
                                 vmap_method="broadcast_all")

    return jax.lax.cond(bad, fail, lambda: jnp.zeros((), jnp.int32))
