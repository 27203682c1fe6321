"""Pruning schedules: what sparsity is wanted at which step, and when masks are recomputed.

A :class:`Schedule` is two jit-able functions of the (possibly traced) step, like an optax schedule:
``sparsity(step)`` and ``is_update(step)``.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax.numpy as jnp

from jaxprune.counts import check_sparsity_value
from jaxprune.errors import PruningError

__all__ = ["Schedule", "never", "constant", "one_shot", "polynomial", "iterative"]


class Schedule(NamedTuple):
    """``sparsity(step) -> float`` and ``is_update(step) -> bool``; both jit-able."""

    sparsity: Callable[[Any], Any]
    is_update: Callable[[Any], Any]


def _check_int(value: Any, name: str, minimum: int) -> int:
    if not isinstance(value, (int,)) or isinstance(value, bool) or value < minimum:
        raise PruningError(f"schedule: {name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def never(sparsity: float = 0.0) -> Schedule:
    """Masks are never recomputed (fixed masks).

    >>> bool(never().is_update(0))
    False
    """
    return Schedule(lambda step: jnp.float32(sparsity), lambda step: jnp.asarray(False))


def constant(sparsity: float, *, every: int = 1, begin: int = 0, end: int | None = None) -> Schedule:
    """Fixed target; masks recomputed every ``every`` steps in ``[begin, end]`` (SET/RigL style).

    >>> s = constant(0.9, every=100)
    >>> [bool(s.is_update(t)) for t in (0, 50, 100)]
    [True, False, True]
    """
    check_sparsity_value(sparsity, "constant: sparsity")
    every = _check_int(every, "every", 1)
    begin = _check_int(begin, "begin", 0)
    if end is not None and _check_int(end, "end", 0) < begin:
        raise PruningError(f"schedule: end ({end}) precedes begin ({begin})")

    def is_update(step):
        ok = (step >= begin) & ((step - begin) % every == 0)
        return ok if end is None else ok & (step <= end)

    return Schedule(lambda step: jnp.float32(sparsity), is_update)


def one_shot(sparsity: float, at: int = 0) -> Schedule:
    """Prune once to ``sparsity`` at step ``at``; masks are fixed afterwards (then fine-tune).

    >>> s = one_shot(0.5, at=10)
    >>> float(s.sparsity(3)), float(s.sparsity(10)), bool(s.is_update(10))
    (0.0, 0.5, True)
    """
    check_sparsity_value(sparsity, "one_shot: sparsity")
    at = _check_int(at, "at", 0)
    return Schedule(lambda step: jnp.where(step >= at, jnp.float32(sparsity), 0.0),
                    lambda step: step == at)


def polynomial(s_init: float, s_final: float, begin: int, end: int, *, power: float = 3.0,
               every: int = 1) -> Schedule:
    """Gradual pruning (Zhu & Gupta 2017): s_t = s_f + (s_i − s_f)(1 − (t − t₀)/(t_end − t₀))^power.

    Masks are recomputed every ``every`` steps between ``begin`` and ``end`` (inclusive).

    >>> s = polynomial(0.0, 0.9, 0, 10)
    >>> [round(float(s.sparsity(t)), 3) for t in range(11)]
    [0.0, 0.244, 0.439, 0.591, 0.706, 0.787, 0.842, 0.876, 0.893, 0.899, 0.9]
    """
    check_sparsity_value(s_init, "polynomial: s_init")
    check_sparsity_value(s_final, "polynomial: s_final")
    begin = _check_int(begin, "begin", 0)
    end = _check_int(end, "end", 0)
    every = _check_int(every, "every", 1)
    if end <= begin:
        raise PruningError(f"polynomial schedule: end ({end}) must come after begin ({begin})")
    if not power > 0:
        raise PruningError(f"polynomial schedule: power must be > 0, got {power}")

    def sparsity(step):
        frac = jnp.clip((jnp.asarray(step, jnp.float32) - begin) / (end - begin), 0.0, 1.0)
        return jnp.float32(s_final) + (s_init - s_final) * (1.0 - frac) ** power

    def is_update(step):
        return (step >= begin) & (step <= end) & (((step - begin) % every == 0) | (step == end))

    return Schedule(sparsity, is_update)


def iterative(rate: float, rounds: int, steps_per_round: int) -> Schedule:
    """Geometric schedule for iterative magnitude pruning: after round r, (1 − rate)^r remains.

    Masks are updated at the end of each round (steps ``steps_per_round · r``, r = 1 … rounds).

    >>> s = iterative(0.2, 3, 100)
    >>> [round(float(s.sparsity(t)), 3) for t in (0, 100, 200, 300)]
    [0.0, 0.2, 0.36, 0.488]
    """
    check_sparsity_value(rate, "iterative: rate")
    rounds = _check_int(rounds, "rounds", 1)
    steps_per_round = _check_int(steps_per_round, "steps_per_round", 1)

    def sparsity(step):
        r = jnp.clip(jnp.asarray(step) // steps_per_round, 0, rounds)
        return 1.0 - (1.0 - jnp.float32(rate)) ** r.astype(jnp.float32)

    def is_update(step):
        return (step > 0) & (step % steps_per_round == 0) & (step // steps_per_round <= rounds)

    return Schedule(sparsity, is_update)
