"""Trainers: how a method's ``fit`` calls are carried out, so that a method is written once.

A method asks ``run.trainer.fit(run, state, tx, epochs=..., ...)`` for every training phase and
never learns whether it runs alone or in a group:

* :class:`SequentialTrainer` (the default): :func:`jaxprune.train.fit` on the run's own data.
* :class:`GroupTrainer`: R runs of one group execute their method at the same time, each in its own
  thread; every ``fit`` call waits until all R runs have reached their same phase, then one
  :func:`jaxprune.train.group.fit_group` trains the R states together and each run continues
  with its own. What the runs do between phases (pruning, evaluation) is theirs alone. The runs
  waiting together must ask for the same phase (same epochs, first epoch, description; no loss
  transform; states of one structure): anything else is a :class:`GroupDiverged` error in every run,
  never a silent mismatch. A run that finishes early leaves the others to go on as a smaller group.
  The phase trains with the *first* run's ``tx`` (each state carries its own optimizer state, e.g.
  its masks): which methods may be grouped is decided by :mod:`jaxprune.sweep.vmapped`.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Optional, Protocol, Sequence

import jax
import jax.numpy as jnp
import optax

from jaxprune.errors import ConfigError
from jaxprune.train.group import fit_group
from jaxprune.train import TrainState, fit
from jaxprune.train.checkpoint import tree_sha256
from jaxprune.train.context import current_run

__all__ = ["Trainer", "SequentialTrainer", "GroupTrainer", "GroupDiverged", "run_in_group"]


class Trainer(Protocol):
    """``fit(run, state, tx, *, epochs, first_epoch, seed, desc, loss_transform) -> TrainState``.

    A trainer that also takes ``checkpoint_dir=`` (:class:`SequentialTrainer`) serves runs with
    ``dense_cache_dir``; a grouped one is never asked to (``train_dense`` trains groups uncached)."""

    def fit(self, run: Any, state: TrainState, tx: optax.GradientTransformation, *, epochs: int,
            first_epoch: int = 0, seed: Optional[int] = None, desc: str = "train",
            loss_transform: Optional[Callable[[Any], Any]] = None) -> TrainState:
        ...


class SequentialTrainer:
    """Trains one run with :func:`jaxprune.train.fit` (batch order from ``seed``, default the config's).

    >>> SequentialTrainer().grouped
    False
    """

    grouped = False

    def fit(self, run: Any, state: TrainState, tx: optax.GradientTransformation, *, epochs: int,
            first_epoch: int = 0, seed: Optional[int] = None, desc: str = "train",
            loss_transform: Optional[Callable[[Any], Any]] = None,
            checkpoint_dir: Optional[str] = None) -> TrainState:
        """``checkpoint_dir``: this phase's checkpoints there instead of the run's (a shared cache)."""
        c = run.config
        state, _ = fit(run.model, state, tx, *run.train, epochs=epochs, batch_size=c.batch_size,
                       seed=c.seed if seed is None else seed, first_epoch=first_epoch, desc=desc,
                       progress=c.get("progress", True), loss_transform=loss_transform,
                       checkpoint_dir=checkpoint_dir)
        return state


class GroupDiverged(ConfigError):
    """The runs of a group asked for different training phases (they cannot share one program)."""


class GroupTrainer:
    """Trains the ``size`` runs of one group together (see the module docs); thread-safe.

    Each call of :meth:`fit` comes from the thread of one run (index ``run_index``, set with
    :meth:`bind`); when the last of the active runs arrives, it trains all of them with ``fit_group``
    (``strategy``) and wakes the others. A run that returns from its method calls :meth:`done`.

    >>> GroupTrainer(2).grouped
    True
    """

    grouped = True

    def __init__(self, size: int, strategy: str = "scan"):
        self.size, self.strategy = size, strategy
        self._lock = threading.Condition()
        self._local = threading.local()
        self._pending: dict[int, tuple] = {}
        self._results: dict[int, TrainState] = {}
        self._active = set(range(size))
        self._round = 0
        self._error: Optional[BaseException] = None

    def bind(self, index: int) -> None:
        """The calling thread runs the group's run ``index``."""
        self._local.index = index

    def done(self) -> None:
        """The calling thread's run finished its method (no more ``fit`` calls)."""
        with self._lock:
            self._active.discard(self._local.index)
            # The runs still training may all be waiting for this one: they go on as a smaller group.
            if self._pending and set(self._pending) == self._active and self._error is None:
                self._train_pending()
            self._lock.notify_all()

    def abort(self, err: BaseException) -> None:
        """A run failed: every waiting run raises too (nothing waits forever)."""
        with self._lock:
            self._fail(err)

    def _fail(self, err: BaseException) -> None:
        if self._error is None:
            self._error = err
        self._lock.notify_all()

    def fit(self, run: Any, state: TrainState, tx: optax.GradientTransformation, *, epochs: int,
            first_epoch: int = 0, seed: Optional[int] = None, desc: str = "train",
            loss_transform: Optional[Callable[[Any], Any]] = None) -> TrainState:
        if loss_transform is not None:
            raise GroupDiverged(f"{desc}: a loss transform cannot be trained in a group")
        index = self._local.index
        request = (run, state, tx, int(epochs), int(first_epoch),
                   run.config.seed if seed is None else int(seed), desc)
        with self._lock:
            if self._error is not None:
                raise self._error
            self._pending[index] = request
            my_round = self._round
            if set(self._pending) == self._active:
                self._train_pending()
            while self._round == my_round and self._error is None:
                self._lock.wait()
            if self._error is not None:
                raise self._error
            out = self._results.pop(index)
        ctx = current_run()
        if ctx is not None:  # as jaxprune.train.fit: one phase, its final state's digest
            ctx.next_phase()
            ctx.digests.append(tree_sha256(jax.tree.map(jnp.asarray, out)))
        return out

    def _train_pending(self) -> None:
        """Trains every pending request as one group (called with the lock held, by the last run)."""
        order = sorted(self._pending)
        requests = [self._pending[i] for i in order]
        first = requests[0]
        for i, r in zip(order, requests):
            if r[3:5] != first[3:5] or r[6] != first[6]:
                self._fail(GroupDiverged(f"run {i} of the group asks for phase {r[6]!r} (epochs {r[3]}, "
                                         f"first epoch {r[4]}), run {order[0]} for {first[6]!r} "
                                         f"(epochs {first[3]}, first epoch {first[4]})"))
                return
        run0 = first[0]
        try:
            states = fit_group(run0.model, [r[1] for r in requests], first[2],
                               [r[0].train for r in requests], epochs=first[3],
                               batch_size=run0.config.batch_size, seeds=[r[5] for r in requests],
                               first_epoch=first[4], strategy=self.strategy, desc=first[6],
                               progress=bool(run0.config.get("progress", False)))
        except BaseException as err:  # noqa: BLE001 -- handed to every waiting run
            self._fail(err)
            return
        self._results.update(zip(order, states))
        self._pending.clear()
        self._round += 1
        self._lock.notify_all()


def run_in_group(trainer: GroupTrainer, work: Sequence[Callable[[], Any]]) -> list[Any]:
    """Runs ``work[i]()`` in thread ``i`` bound to run ``i`` of ``trainer``; their results in order.

    The first exception of any run is raised here (the other runs are released with it).

    >>> run_in_group(GroupTrainer(2), [lambda: 1, lambda: 2])
    [1, 2]
    """
    results: list[Any] = [None] * len(work)
    errors: list[Optional[BaseException]] = [None] * len(work)

    def target(i: int) -> None:
        trainer.bind(i)
        try:
            results[i] = work[i]()
        except BaseException as err:  # noqa: BLE001 -- re-raised in the caller's thread
            errors[i] = err
            trainer.abort(err)
        finally:
            trainer.done()

    threads = [threading.Thread(target=target, args=(i,), name=f"group-run-{i}") for i in range(len(work))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # The run that failed first, not one that was released by it.
    first = next((e for e in errors if e is not None and e is trainer._error), None) or \
        next((e for e in errors if e is not None), None)
    if first is not None:
        raise first
    return results

