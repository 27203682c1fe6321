"""Pruning schedules: what sparsity is wanted at which step, and when masks are recomputed.

A :class:`Schedule` is a pair of jit-able rules of the (possibly traced) step and of the schedule's
hyperparameters (target sparsity, initial sparsity, begin, end, every), like an optax schedule whose
constants are not baked in. :func:`jaxprune.train.pruning` keeps the hyperparameters as arrays in its
state (as ``optax.inject_hyperparams`` does), so :func:`jaxprune.train.set_target` changes the target
without a retrace: one compiled step serves any target.

Hyperparameter names are shared by all schedules: ``sparsity`` (the final target), ``initial``,
``begin``, ``end``, ``every`` and ``rounds``; sparsities are float32, steps int32.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune.counts import check_sparsity_value, is_concrete
from jaxprune.errors import PruningError

__all__ = ["Schedule", "never", "constant", "one_shot", "polynomial", "iterative", "SPARSITY_HPARAMS",
           "STEP_HPARAMS", "check_hparam_values"]

SPARSITY_HPARAMS = ("sparsity", "initial")
"""Hyperparameters that are sparsities (float32, in [0, 1])."""
STEP_HPARAMS = ("begin", "end", "every", "rounds")
"""Hyperparameters that are step counts (int32)."""

_NO_END = np.iinfo(np.int32).max  # ``end=None``: updates never stop


@dataclasses.dataclass(frozen=True)
class Schedule:
    """A schedule: ``target(step, hp)`` (sparsity wanted) and ``updates(step, hp)`` (recompute masks?).

    ``hparams`` holds the default hyperparameters; :func:`jaxprune.train.pruning` copies them into its
    state as arrays and passes those to the rules, so they can change without recompiling.

    >>> s = Schedule(lambda t, hp: hp['sparsity'], lambda t, hp: t == 3, {'sparsity': 0.5})
    >>> float(s.sparsity(0)), bool(s.is_update(3)), float(s.sparsity(0, {'sparsity': 0.25}))
    (0.5, True, 0.25)
    """

    target: Callable[[Any, Mapping[str, Any]], Any]
    updates: Callable[[Any, Mapping[str, Any]], Any]
    hparams: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def init_hparams(self) -> dict[str, jax.Array]:
        """The hyperparameters as arrays (float32 sparsities, int32 steps), for the pruning state.

        >>> {k: v.dtype.name for k, v in one_shot(0.5, at=2).init_hparams().items()}
        {'sparsity': 'float32', 'begin': 'int32'}
        """
        out = {}
        for name, value in self.hparams.items():
            if name in SPARSITY_HPARAMS:
                out[name] = jnp.asarray(value, jnp.float32)
            elif name in STEP_HPARAMS:
                out[name] = jnp.asarray(value, jnp.int32)
            else:
                raise PruningError(f"Schedule: unknown hyperparameter {name!r}; known: "
                                   f"{', '.join(SPARSITY_HPARAMS + STEP_HPARAMS)}")
        return out

    def sparsity(self, step: Any, hparams: Optional[Mapping[str, Any]] = None) -> jax.Array:
        """Target sparsity at ``step`` (with ``hparams``, default: the schedule's own).

        >>> round(float(polynomial(0.0, 0.9, 0, 10).sparsity(1)), 3)
        0.244
        """
        hp = self.init_hparams() if hparams is None else hparams
        return jnp.asarray(self.target(jnp.asarray(step), hp), jnp.float32)

    def is_update(self, step: Any, hparams: Optional[Mapping[str, Any]] = None) -> jax.Array:
        """Whether masks are recomputed at ``step``.

        >>> bool(constant(0.5, every=2).is_update(4))
        True
        """
        hp = self.init_hparams() if hparams is None else hparams
        return jnp.asarray(self.updates(jnp.asarray(step), hp), bool)


def _check_int(value: Any, name: str, minimum: int) -> int:
    if not isinstance(value, (int,)) or isinstance(value, bool) or value < minimum:
        raise PruningError(f"schedule: {name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _every(hp: Mapping[str, Any]) -> jax.Array:
    # A traced ``every`` of 0 would make the modulo undefined; read it as 1.
    return jnp.maximum(hp["every"], 1)


def never(sparsity: float = 0.0) -> Schedule:
    """Masks are never recomputed (fixed masks).

    >>> bool(never().is_update(0))
    False
    """
    check_sparsity_value(sparsity, "never: sparsity")
    return Schedule(lambda step, hp: hp["sparsity"], lambda step, hp: jnp.asarray(False),
                    {"sparsity": float(sparsity)})


def _constant_updates(step, hp):
    return ((step >= hp["begin"]) & ((step - hp["begin"]) % _every(hp) == 0)
            & (step <= hp["end"]))


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
    return Schedule(lambda step, hp: hp["sparsity"], _constant_updates,
                    {"sparsity": float(sparsity), "every": every, "begin": begin,
                     "end": _NO_END if end is None else end})


def one_shot(sparsity: float, at: int = 0) -> Schedule:
    """Prune once to ``sparsity`` at step ``at`` (hyperparameter ``begin``); masks are fixed afterwards.

    >>> s = one_shot(0.5, at=10)
    >>> float(s.sparsity(3)), float(s.sparsity(10)), bool(s.is_update(10))
    (0.0, 0.5, True)
    """
    check_sparsity_value(sparsity, "one_shot: sparsity")
    at = _check_int(at, "at", 0)
    return Schedule(lambda step, hp: jnp.where(step >= hp["begin"], hp["sparsity"], jnp.float32(0.0)),
                    lambda step, hp: step == hp["begin"], {"sparsity": float(sparsity), "begin": at})


def polynomial(s_init: float, s_final: float, begin: int, end: int, *, power: float = 3.0,
               every: int = 1) -> Schedule:
    """Gradual pruning (Zhu & Gupta 2017): s_t = s_f + (s_i − s_f)(1 − (t − t₀)/(t_end − t₀))^power.

    Masks are recomputed every ``every`` steps between ``begin`` and ``end`` (inclusive).
    Hyperparameters: ``initial`` = s_i, ``sparsity`` = s_f, ``begin``, ``end``, ``every``.

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

    def target(step, hp):
        # max(.., 1): set_target may make end == begin; the schedule then jumps to s_f at begin.
        span = jnp.maximum(hp["end"] - hp["begin"], 1).astype(jnp.float32)
        frac = jnp.clip((step - hp["begin"]).astype(jnp.float32) / span, 0.0, 1.0)
        # At frac = 1 the second term is exactly 0, so the final target is reached exactly.
        return hp["sparsity"] + (hp["initial"] - hp["sparsity"]) * (1.0 - frac) ** power

    def updates(step, hp):
        return ((step >= hp["begin"]) & (step <= hp["end"])
                & (((step - hp["begin"]) % _every(hp) == 0) | (step == hp["end"])))

    return Schedule(target, updates, {"initial": float(s_init), "sparsity": float(s_final),
                                      "begin": begin, "end": end, "every": every})


def iterative(rate: float, rounds: int, steps_per_round: int) -> Schedule:
    """Geometric schedule for iterative magnitude pruning: after round r, (1 − rate)^r remains.

    Masks are updated at the end of each round (steps ``steps_per_round · r``, r = 1 … rounds).
    Hyperparameters: ``sparsity`` = 1 − (1 − rate)^rounds (the final target; setting it changes the
    rate), ``rounds``, ``every`` = steps_per_round.

    >>> s = iterative(0.2, 3, 100)
    >>> [round(float(s.sparsity(t)), 3) for t in (0, 100, 200, 300)]
    [0.0, 0.2, 0.36, 0.488]
    """
    check_sparsity_value(rate, "iterative: rate")
    rounds = _check_int(rounds, "rounds", 1)
    steps_per_round = _check_int(steps_per_round, "steps_per_round", 1)

    def target(step, hp):
        n = jnp.maximum(hp["rounds"], 1)
        r = jnp.clip(step // _every(hp), 0, n)
        # (1 - s_f)^(r/n) = (1 - rate)^r; the last round returns s_f itself, exactly.
        s = 1.0 - (1.0 - hp["sparsity"]) ** (r.astype(jnp.float32) / n.astype(jnp.float32))
        return jnp.where(r >= n, hp["sparsity"], s)

    def updates(step, hp):
        return (step > 0) & (step % _every(hp) == 0) & (step // _every(hp) <= hp["rounds"])

    return Schedule(target, updates, {"sparsity": 1.0 - (1.0 - float(rate)) ** rounds,
                                      "rounds": rounds, "every": steps_per_round})


def _is_integer_array(arr: np.ndarray) -> bool:
    return arr.dtype.kind in "iu" or (arr.dtype.kind == "f" and bool(np.all(arr == np.round(arr))))


def check_hparam_values(values: Mapping[str, Any], where: str = "set_target") -> None:
    """Raises :class:`PruningError` naming the field for a concrete bad hyperparameter value.

    Sparsities must lie in [0, 1]; ``begin``/``end`` must be integers >= 0, ``every``/``rounds``
    integers >= 1; ``end`` must not precede ``begin``. Traced values cannot be checked (they are
    clipped where they are used).

    >>> check_hparam_values({'sparsity': 0.5, 'begin': 0, 'end': 10})
    >>> check_hparam_values({'sparsity': 1.5})
    Traceback (most recent call last):
    ...
    jaxprune.errors.PruningError: set_target: sparsity must be in [0, 1], got 1.5
    """
    for name, value in values.items():
        if name not in SPARSITY_HPARAMS + STEP_HPARAMS:
            raise PruningError(f"{where}: unknown schedule hyperparameter {name!r}; known: "
                               f"{', '.join(SPARSITY_HPARAMS + STEP_HPARAMS)}")
        if not is_concrete(value):
            continue
        arr = np.asarray(value)
        if arr.dtype.kind not in "iuf" or arr.dtype == bool:
            raise PruningError(f"{where}: {name} must be a real number, got {value!r}")
        if name in SPARSITY_HPARAMS:
            if not np.all((arr >= 0.0) & (arr <= 1.0)):  # also catches NaN
                shown = float(arr) if arr.shape == () else arr.tolist()
                raise PruningError(f"{where}: {name} must be in [0, 1], got {shown}")
        else:
            minimum = 1 if name in ("every", "rounds") else 0
            if not _is_integer_array(arr) or not np.all(arr >= minimum):
                raise PruningError(f"{where}: {name} must be an integer >= {minimum}, got {value!r}")
    begin, end = values.get("begin"), values.get("end")
    if begin is not None and end is not None and is_concrete(begin) and is_concrete(end):
        if np.any(np.asarray(end) < np.asarray(begin)):
            raise PruningError(f"{where}: end ({end}) precedes begin ({begin})")
