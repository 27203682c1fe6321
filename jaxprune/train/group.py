"""Training several runs of one model and update rule as one group: :func:`fit_group`.

Run ``r`` of a group does what ``jaxprune.train.fit(model, states[r], tx, *data[r], seed=seeds[r],
...)`` does; the group compiles one program for all of them. Two strategies:

* ``'scan'`` (default): ``chunk`` steps per call of one jitted ``lax.scan`` of the library's train
  step, each run on its own, ``os.cpu_count()`` runs at a time in threads. Bit-identical to ``fit``
  for MLPs on XLA:CPU.
* ``'vmap'``: the runs stacked on a leading axis, every step ``jax.vmap`` of the train step: one
  program trains ``vmap_size`` runs at once (all of them on an accelerator; on a CPU backend slices of
  :data:`CPU_VMAP_SIZE` runs, ``os.cpu_count()`` slices at a time in threads). Equal to ``fit`` only
  up to rounding (see docs/vmapped.md).

Both gather each step's batch on the device from the whole training set (held once per distinct
set), by the indices of :func:`jaxprune.data.epoch_order`: the batches ``fit`` takes, without copying
them on the host.

Used by :class:`jaxprune.harness.trainer.GroupTrainer`; which methods may be grouped is decided by
:mod:`jaxprune.sweep.vmapped`. It lives in the train layer so that the harness need not import the
sweep layer.
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

from jaxprune.data import epoch_order, num_batches
from jaxprune.errors import ConfigError
from jaxprune.train import TrainState, make_train_step

__all__ = ["STRATEGIES", "fit_group"]

STRATEGIES = ("vmap", "scan")
#: Runs per vmapped program on a CPU backend when ``fit_group(vmap_size=None)``; see docs/vmapped.md.
CPU_VMAP_SIZE = 2


def _stack(trees: Sequence[Any]) -> Any:
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def _unstack(tree: Any, n: int) -> list[Any]:
    return [jax.tree.map(lambda x: x[i], tree) for i in range(n)]


def _chunk_runner(model: Any, tx: optax.GradientTransformation, vmapped: bool) -> Callable:
    """``run(state, images, labels, idx, valid) -> state``: ``idx.shape[0]`` train steps in one jitted
    ``lax.scan``; step ``t`` trains on the batch ``images[idx[t]], labels[idx[t]]`` (``idx[t]`` is
    ``[batch]``, or ``[runs, batch]`` for the vmapped step when ``vmapped``), gathered on the device
    from the whole training set. Steps where ``valid`` is False leave the state as it is (padding, so
    an epoch's last, shorter chunk reuses the compiled program). The state is donated."""
    step = make_train_step(model, tx)
    if vmapped:
        step = jax.vmap(step)

    @functools.partial(jax.jit, donate_argnums=0)
    def run(state, images, labels, idx, valid):
        def body(state, inputs):
            i, ok = inputs
            return jax.lax.cond(ok, lambda s: step(s, images[i], labels[i])[0], lambda s: s, state), None

        return jax.lax.scan(body, state, (idx, valid))[0]

    return run


def _chunk_size(steps: int, chunk: int) -> int:
    """Steps per scan call: at most ``chunk``, spread evenly so the last call is padded least.

    >>> _chunk_size(300, 64), _chunk_size(44, 64), _chunk_size(1875, 64)
    (60, 44, 63)
    """
    calls = -(-steps // chunk)
    return -(-steps // calls)


def _vmap_size(vmap_size: int | None, runs: int) -> int:
    """Runs per vmapped program: ``vmap_size``, or by default :data:`CPU_VMAP_SIZE` on a CPU backend
    (measured best on 2 cores, docs/vmapped.md) and every run in one program elsewhere."""
    if vmap_size is None:
        vmap_size = CPU_VMAP_SIZE if jax.default_backend() == "cpu" else runs
    return max(1, min(vmap_size, runs))


def _slices(runs: int, size: int) -> list[range]:
    """``runs`` split into ``ceil(runs / size)`` consecutive slices, as even as possible (so at most
    two programs of different batch sizes compile).

    >>> [list(r) for r in _slices(7, 2)], [list(r) for r in _slices(8, 3)]
    ([[0], [1, 2], [3, 4], [5, 6]], [[0, 1], [2, 3, 4], [5, 6, 7]])
    """
    count = -(-runs // size)
    bounds = [runs * i // count for i in range(count + 1)]
    return [range(a, b) for a, b in zip(bounds, bounds[1:])]


def _check_same(trees: Sequence[Any], what: str) -> None:
    def signature(tree: Any) -> tuple:
        leaves = jax.tree.leaves(tree)
        return jax.tree.structure(tree), [(np.shape(x), getattr(x, "dtype", type(x))) for x in leaves]

    first = signature(trees[0])
    for i, tree in enumerate(trees[1:], 1):
        if signature(tree) != first:
            raise ConfigError(f"{what}[{i}] does not match {what}[0] in tree structure, shapes or dtypes")


def _device_data(data: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[jax.Array, jax.Array, list[int]]:
    """Every distinct training set of ``data`` once on the device (concatenated) and each run's offset
    into it: runs that share their data (the same arrays, or equal ones) share one copy."""
    unique: list[tuple[np.ndarray, np.ndarray]] = []
    offsets: list[int] = []
    for x, y in data:
        x, y = np.asarray(x), np.asarray(y)
        for j, (ux, uy) in enumerate(unique):
            if (ux is x or np.array_equal(ux, x)) and (uy is y or np.array_equal(uy, y)):
                offsets.append(j * len(y))
                break
        else:
            offsets.append(len(unique) * len(y))
            unique.append((x, y))
    images = np.concatenate([x for x, _ in unique]) if len(unique) > 1 else unique[0][0]
    labels = np.concatenate([y for _, y in unique]) if len(unique) > 1 else unique[0][1]
    return jnp.asarray(images), jnp.asarray(labels), offsets


def _epoch_indices(n: int, seeds: Sequence[int], offsets: Sequence[int], epoch: int, batch_size: int,
                   steps: int, k: int):
    """Yields ``(idx, valid)``: ``[k, R, batch]`` int32 indices into the device data and ``[k]`` flags;
    the next ``k`` batches of every run, run ``r``'s exactly those of ``batches(*data[r], batch_size,
    seed=seeds[r], epoch=epoch)`` (same :func:`~jaxprune.data.epoch_order`, last partial batch
    dropped), the last chunk of the epoch padded with index 0 (``valid`` False)."""
    order = np.stack([epoch_order(n, seed=s, epoch=epoch)[:steps * batch_size].reshape(steps, batch_size)
                      + off for s, off in zip(seeds, offsets)], axis=1).astype(np.int32)
    for start in range(0, steps, k):
        m = min(k, steps - start)
        idx = np.zeros((k, len(seeds), batch_size), np.int32)
        idx[:m] = order[start:start + m]
        yield idx, np.arange(k) < m


def fit_group(model: Any, states: Sequence[TrainState], tx: optax.GradientTransformation,
              data: Sequence[tuple[np.ndarray, np.ndarray]], *, epochs: int, batch_size: int,
              seeds: Sequence[int], first_epoch: int = 0, chunk: int = 64, strategy: str = "scan",
              workers: int | None = None, vmap_size: int | None = None, desc: str = "group",
              progress: bool = False) -> list[TrainState]:
    """Trains R runs as one group: run ``r`` does what ``fit(model, states[r], tx, *data[r],
    seed=seeds[r], epochs=..., batch_size=..., first_epoch=...)`` does.

    ``tx`` is the update rule all runs share (its ``init`` is not called: each state carries its own
    optimizer state, e.g. its own masks from ``masked(..., masks_r).init``). Epoch ``e`` of run ``r``
    takes the batches of ``jaxprune.data.batches(*data[r], batch_size, seed=seeds[r], epoch=e)``
    (the last partial batch dropped, as in ``fit``), up to ``chunk`` steps per call of one jitted
    ``lax.scan`` (an epoch's last call is padded with skipped steps, so it compiles once).
    ``strategy``: ``'scan'`` (bit-identical to ``fit`` for MLPs on XLA:CPU; ``workers`` runs at a
    time in threads, default ``os.cpu_count()``) or ``'vmap'`` (``vmap_size`` runs per ``jax.vmap``
    program, default all runs, or :data:`CPU_VMAP_SIZE` on a CPU backend; ``workers`` such slices at
    a time in threads; equal only up to rounding that grows with training, see module docs).

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
    for name, value in (("workers", workers), ("vmap_size", vmap_size)):
        if value is not None and (not isinstance(value, (int, np.integer)) or isinstance(value, bool)
                                  or value < 1):
            raise ConfigError(f"fit_group: {name} must be None or an integer >= 1, got {value!r}")
    for name, value, low in (("epochs", epochs, 0), ("batch_size", batch_size, 1), ("chunk", chunk, 1),
                             ("first_epoch", first_epoch, 0), *((f"seeds[{i}]", s, 0)
                                                                 for i, s in enumerate(seeds))):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
            raise ConfigError(f"fit_group: {name} must be an integer >= {low}, got {value!r}")
    if strategy not in STRATEGIES:
        raise ConfigError(f"fit_group: strategy must be one of {STRATEGIES}, got {strategy!r}")
    if vmap_size is not None and strategy != "vmap":
        raise ConfigError(f"fit_group: vmap_size applies to strategy='vmap' only, got strategy={strategy!r}")
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
    vmapped = strategy == "vmap"
    run = _chunk_runner(model, tx, vmapped=vmapped)
    k = _chunk_size(steps, chunk)
    slices = _slices(r_count, _vmap_size(vmap_size, r_count) if vmapped else 1)
    bar = tqdm(total=epochs * steps * r_count, desc=f"{desc} x{r_count} ({strategy})",
               disable=not progress, leave=False, mininterval=0.5)

    images, labels, offsets = _device_data(data)

    def train_slice(runs: range) -> list[TrainState]:
        # A fresh copy (stacked, or copied for one run): the caller's arrays are never donated.
        state = _stack([states[r] for r in runs]) if vmapped else jax.tree.map(jnp.copy, states[runs[0]])
        for epoch in range(first_epoch, first_epoch + epochs):
            for idx, valid in _epoch_indices(n, seeds[runs.start:runs.stop], offsets[runs.start:runs.stop],
                                             epoch, batch_size, steps, k):
                state = run(state, images, labels, idx if vmapped else idx[:, 0], valid)
                bar.update(int(valid.sum()) * len(runs))
        state = jax.block_until_ready(state)
        return _unstack(state, len(runs)) if vmapped else [state]

    threads = min(len(slices), workers or os.cpu_count() or 1)
    if threads == 1:
        parts = [train_slice(idx) for idx in slices]
    else:
        # Independent slices of one compiled program, `threads` at a time: XLA releases the GIL
        # while it runs, and one small program does not keep every core busy.
        with ThreadPoolExecutor(threads, thread_name_prefix="fit_group") as pool:
            parts = list(pool.map(train_slice, slices))
    out = [st for part in parts for st in part]
    bar.close()
    return out
