"""Training several runs of one model and update rule as one group: :func:`fit_group`.

Run ``r`` of a group does what ``jaxprune.train.fit(model, states[r], tx, *data[r], seed=seeds[r],
...)`` does; the group compiles one program for all of them. Two strategies:

* ``'scan'`` (default): ``chunk`` steps per call of one jitted ``lax.scan`` of the library's train
  step, each run on its own, ``os.cpu_count()`` runs at a time in threads. Bit-identical to ``fit``
  for MLPs on XLA:CPU.
* ``'vmap'``: the runs stacked on a leading axis, every step ``jax.vmap`` of the train step: one
  program trains all runs at once. Equal to ``fit`` only up to rounding (see docs/vmapped.md).

Used by :mod:`jaxprune.sweep.vmapped` (which decides what may be grouped and runs the methods).
"""

from __future__ import annotations

import functools
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from jaxprune.data import batches, num_batches
from jaxprune.errors import ConfigError
from jaxprune.train import TrainState, make_train_step

__all__ = ["STRATEGIES", "fit_group"]

STRATEGIES = ("vmap", "scan")


def _stack(trees: Sequence[Any]) -> Any:
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def _unstack(tree: Any, n: int) -> list[Any]:
    return [jax.tree.map(lambda x: x[i], tree) for i in range(n)]


def _chunk_runner(model: Any, tx: optax.GradientTransformation, vmapped: bool) -> Callable:
    """``run(state, xs, ys, valid) -> state``: ``xs.shape[0]`` train steps in one jitted ``lax.scan``
    (of the vmapped step when ``vmapped``); steps where ``valid`` is False leave the state as it is
    (padding, so an epoch's last, shorter chunk reuses the compiled program). The state is donated."""
    step = make_train_step(model, tx)
    if vmapped:
        step = jax.vmap(step)

    def body(state, inputs):
        x, y, ok = inputs
        return jax.lax.cond(ok, lambda s: step(s, x, y)[0], lambda s: s, state), None

    @functools.partial(jax.jit, donate_argnums=0)
    def run(state, xs, ys, valid):
        return jax.lax.scan(body, state, (xs, ys, valid))[0]

    return run


def _chunk_size(steps: int, chunk: int) -> int:
    """Steps per scan call: at most ``chunk``, spread evenly so the last call is padded least.

    >>> _chunk_size(300, 64), _chunk_size(44, 64), _chunk_size(1875, 64)
    (60, 44, 63)
    """
    calls = -(-steps // chunk)
    return -(-steps // calls)


def _check_same(trees: Sequence[Any], what: str) -> None:
    def signature(tree: Any) -> tuple:
        leaves = jax.tree.leaves(tree)
        return jax.tree.structure(tree), [(np.shape(x), getattr(x, "dtype", type(x))) for x in leaves]

    first = signature(trees[0])
    for i, tree in enumerate(trees[1:], 1):
        if signature(tree) != first:
            raise ConfigError(f"{what}[{i}] does not match {what}[0] in tree structure, shapes or dtypes")


def _epoch_chunks(data: Sequence[tuple[np.ndarray, np.ndarray]], seeds: Sequence[int], epoch: int,
                  batch_size: int, steps: int, k: int):
    """Yields ``(xs, ys, valid)``: ``[k, R, batch, ...]`` images, ``[k, R, batch]`` labels, ``[k]``
    flags; the next ``k`` batches of every run, each run's from ``batches(*data[r], batch_size,
    seed=seeds[r], epoch=epoch)``, the last chunk of the epoch padded with zeros (``valid`` False)."""
    its = [batches(x, y, batch_size, seed=s, epoch=epoch) for (x, y), s in zip(data, seeds)]
    x0, y0 = np.asarray(data[0][0]), np.asarray(data[0][1])
    for start in range(0, steps, k):
        n = min(k, steps - start)
        # A fresh buffer per chunk: the previous one may still be read by the running program.
        xs = np.zeros((k, len(its), batch_size, *x0.shape[1:]), x0.dtype)
        ys = np.zeros((k, len(its), batch_size), y0.dtype)
        for i in range(n):
            for r, it in enumerate(its):
                b = next(it)
                xs[i, r], ys[i, r] = b.images, b.labels
        yield xs, ys, np.arange(k) < n


def fit_group(model: Any, states: Sequence[TrainState], tx: optax.GradientTransformation,
              data: Sequence[tuple[np.ndarray, np.ndarray]], *, epochs: int, batch_size: int,
              seeds: Sequence[int], first_epoch: int = 0, chunk: int = 64, strategy: str = "scan",
              workers: int | None = None, desc: str = "group",
              progress: bool = False) -> list[TrainState]:
    """Trains R runs as one group: run ``r`` does what ``fit(model, states[r], tx, *data[r],
    seed=seeds[r], epochs=..., batch_size=..., first_epoch=...)`` does.

    ``tx`` is the update rule all runs share (its ``init`` is not called: each state carries its own
    optimizer state, e.g. its own masks from ``masked(..., masks_r).init``). Epoch ``e`` of run ``r``
    takes the batches of ``jaxprune.data.batches(*data[r], batch_size, seed=seeds[r], epoch=e)``
    (the last partial batch dropped, as in ``fit``), up to ``chunk`` steps per call of one jitted
    ``lax.scan`` (an epoch's last call is padded with skipped steps, so it compiles once).
    ``strategy``: ``'scan'`` (bit-identical to ``fit`` for MLPs on XLA:CPU; ``workers`` runs at a
    time in threads, default ``os.cpu_count()``) or ``'vmap'`` (all runs under one ``jax.vmap``;
    equal only up to rounding that grows with training, see module docs).

    Example:
        >>> from jaxprune.models import MLP, init_params
        >>> from jaxprune.train import create_train_state
        >>> m, tx = MLP((8, 3)), optax.adam(1e-2)
        >>> x, y = np.ones((20, 4), np.float32), np.zeros(20, np.int32)
        >>> sts = [create_train_state(init_params(m, jax.random.PRNGKey(s), (1, 4)), tx) for s in (0, 1)]
        >>> out = fit_group(m, sts, tx, [(x, y)] * 2, epochs=2, batch_size=8, seeds=[0, 1])
        >>> [int(s.step) for s in out]
        [4, 4]
    """
    states, data, seeds = list(states), list(data), list(seeds)
    if not states or len(states) != len(data) or len(states) != len(seeds):
        raise ConfigError(f"fit_group: states, data and seeds must be non-empty and of one length, "
                          f"got {len(states)}, {len(data)}, {len(seeds)}")
    if workers is not None and (not isinstance(workers, (int, np.integer)) or isinstance(workers, bool)
                                or workers < 1):
        raise ConfigError(f"fit_group: workers must be None or an integer >= 1, got {workers!r}")
    for name, value, low in (("epochs", epochs, 0), ("batch_size", batch_size, 1), ("chunk", chunk, 1),
                             ("first_epoch", first_epoch, 0), *((f"seeds[{i}]", s, 0)
                                                                 for i, s in enumerate(seeds))):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
            raise ConfigError(f"fit_group: {name} must be an integer >= {low}, got {value!r}")
    if strategy not in STRATEGIES:
        raise ConfigError(f"fit_group: strategy must be one of {STRATEGIES}, got {strategy!r}")
    _check_same(states, "states")
    _check_same([(np.asarray(x)[:1], np.asarray(y)[:1]) for x, y in data], "data")
    n = len(data[0][1])
    if any(len(y) != n for _, y in data):
        raise ConfigError(f"fit_group: every run needs the same number of examples, got "
                          f"{[len(y) for _, y in data]}")
    if epochs == 0:
        return states
    steps = num_batches(n, batch_size)
    r_count = len(states)
    run = _chunk_runner(model, tx, vmapped=strategy == "vmap")
    k = _chunk_size(steps, chunk)
    bar = tqdm(total=epochs * steps * r_count, desc=f"{desc} x{r_count} ({strategy})",
               disable=not progress, leave=False, mininterval=0.5)
    if strategy == "vmap":
        state = _stack(states)  # fresh arrays: safe to donate
        for epoch in range(first_epoch, first_epoch + epochs):
            for xs, ys, valid in _epoch_chunks(data, seeds, epoch, batch_size, steps, k):
                state = run(state, xs, ys, valid)
                bar.update(int(valid.sum()) * r_count)
        out = _unstack(state, r_count)
    else:
        def train_one(r: int) -> TrainState:
            state = jax.tree.map(jnp.copy, states[r])  # the caller's arrays are not donated
            for epoch in range(first_epoch, first_epoch + epochs):
                for xs, ys, valid in _epoch_chunks(data[r:r + 1], seeds[r:r + 1], epoch, batch_size,
                                                   steps, k):
                    state = run(state, xs[:, 0], ys[:, 0], valid)
                    bar.update(int(valid.sum()))
            return jax.block_until_ready(state)

        threads = min(r_count, workers or os.cpu_count() or 1)
        if threads == 1:
            out = [train_one(r) for r in range(r_count)]
        else:
            # Independent runs of one compiled program, `threads` at a time: XLA releases the GIL
            # while it runs, and one small run does not keep every core busy.
            with ThreadPoolExecutor(threads, thread_name_prefix="fit_group") as pool:
                out = list(pool.map(train_one, range(r_count)))
    bar.close()
    return out
