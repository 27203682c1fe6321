"""Checkpoints of a training phase with orbax, resumable bit for bit.

One :func:`~jaxprune.train.fit` call is one *phase*. Its checkpoints live in one directory (under a run:
``workdir/checkpoints/phase_000``, ``phase_001``, ...), one orbax step per save, named by the number of
steps the phase has taken. A checkpoint holds

* ``state``: every leaf of the :class:`~jaxprune.train.TrainState` — params, model state, optimizer
  state including the pruning transformation's ``PruningState`` (masks, count, sparsity, PRNG key) and
  the step counter — saved by position in ``jax.tree.leaves`` order;
* ``meta`` (JSON): the data-iterator position (``epoch``, ``batch``: batches of that epoch already
  taken; the order is a pure function of ``(seed, epoch)``, so resuming = skipping those batches), the
  history so far and the losses of the unfinished epoch (so the returned history is identical too), a
  fingerprint of the fit call, the leaves' paths/shapes/dtypes and a sha256 of the state.

Restoring takes the latest step; if it cannot be read or its sha256 does not match (a truncated or
corrupt write), it is deleted, a :class:`CheckpointWarning` is issued and the previous one is tried.
A checkpoint written by a *different* fit call (other epochs, seed, tree) raises :class:`CheckpointError`
instead: that is a stale workdir, not a corrupt file.

>>> len(tree_sha256({'w': np.zeros(2, np.float32)}))
64
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import threading
import warnings
from typing import Any, Iterator, NamedTuple, Optional

import jax
import numpy as np

from jaxprune.errors import JaxpruneError
from jaxprune.paths import path_str
from jaxprune.workdir import ensure_writable_dir

__all__ = ["CheckpointWarning", "CheckpointError", "Preempted", "PhaseCheckpoint", "tree_sha256",
           "open_manager", "save_phase", "restore_phase", "preemption_guard", "check_run_config"]

FORMAT = 1


class CheckpointWarning(UserWarning):
    """A checkpoint could not be used as is (corrupt file skipped, hooks not replayed on resume)."""


class CheckpointError(JaxpruneError):
    """Checkpoints in a directory belong to a different run or fit call than the one resuming."""


class Preempted(SystemExit):
    """Raised (exit status 143 = 128 + SIGTERM) after a SIGTERM, once the current state is saved."""

    def __init__(self, message: str):
        super().__init__(143)
        self.message = message

    def __str__(self) -> str:
        return self.message


class PhaseCheckpoint(NamedTuple):
    """What one save holds besides the state's arrays (see the module docstring)."""

    state: Any  # a TrainState
    step: int  # steps taken in this phase
    epoch: int  # epoch index within the phase of the next batch (0-based)
    batch: int  # batches of that epoch already taken
    history: list  # finished epochs' records
    epoch_losses: list  # float32 losses of the unfinished epoch's batches
    epoch_accs: list
    finished: bool


def _is_key(x: Any) -> bool:
    return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _raw(x: Any) -> Any:
    """Typed PRNG keys as their uint32 data (orbax stores plain arrays)."""
    return jax.random.key_data(x) if _is_key(x) else x


def tree_sha256(tree: Any) -> Optional[str]:
    """sha256 over a tree's leaf paths, dtypes, shapes and bytes; ``None`` when some leaf is not fully
    addressable from this process (multi-host).

    >>> tree_sha256({'a': np.ones(1)}) == tree_sha256({'a': np.ones(1)})
    True
    """
    h = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        leaf = _raw(leaf)
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            return None
        a = np.ascontiguousarray(np.asarray(jax.device_get(leaf)))
        h.update(f"{path_str(path)}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _leaf_info(tree: Any) -> list[list]:
    return [[path_str(p), list(np.shape(x)), str(np.dtype(_raw(x).dtype))]
            for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]]


def open_manager(directory: str | os.PathLike, *, keep: int = 2):
    """An orbax ``CheckpointManager`` over ``directory`` keeping the last ``keep`` steps (>= 2, so a
    corrupt latest step has a predecessor)."""
    import orbax.checkpoint as ocp

    # Checked before orbax starts its threads: a directory that cannot be written is one error, not
    # a traceback from a background thread and a process that hangs at shutdown.
    path = ensure_writable_dir(os.path.abspath(os.fspath(directory)), "checkpoint directory",
                               CheckpointError)
    options = ocp.CheckpointManagerOptions(max_to_keep=max(2, keep), create=True)
    return ocp.CheckpointManager(path, options=options, item_names=("state", "meta"))


def save_phase(manager: Any, ckpt: PhaseCheckpoint, fingerprint: dict, *, wait: bool = False) -> None:
    """Saves ``ckpt`` as orbax step ``ckpt.step`` (asynchronously unless ``wait``)."""
    import orbax.checkpoint as ocp

    leaves = jax.tree.leaves(ckpt.state)
    items = {f"{i:05d}": _raw(x) for i, x in enumerate(leaves)}
    meta = {"format": FORMAT, "fingerprint": fingerprint, "step": ckpt.step, "epoch": ckpt.epoch,
            "batch": ckpt.batch, "history": ckpt.history,
            "epoch_losses": [float(v) for v in ckpt.epoch_losses],
            "epoch_accs": [float(v) for v in ckpt.epoch_accs], "finished": ckpt.finished,
            "leaves": _leaf_info(ckpt.state), "sha256": tree_sha256(ckpt.state)}
    if ckpt.step in manager.all_steps():  # e.g. SIGTERM right after a periodic save
        return
    manager.save(ckpt.step, args=ocp.args.Composite(state=ocp.args.StandardSave(items),
                                                    meta=ocp.args.JsonSave(meta)))
    if wait:
        manager.wait_until_finished()


def _target(leaf: Any) -> Any:
    raw = _raw(leaf)
    sharding = getattr(leaf, "sharding", None)
    if sharding is None:
        sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.ShapeDtypeStruct(np.shape(raw), raw.dtype, sharding=sharding)


def _check_compatible(meta: dict, fingerprint: dict, like: Any, where: str) -> None:
    hint = "; delete it or use a fresh workdir to start over"
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{where}: checkpoint format {meta.get('format')!r} is not {FORMAT}{hint}")
    if meta["fingerprint"] != fingerprint:
        diff = {k: (meta["fingerprint"].get(k), v) for k, v in fingerprint.items()
                if meta["fingerprint"].get(k) != v}
        raise CheckpointError(f"{where} was written by a different fit call ((saved, now): {diff}){hint}")
    now = _leaf_info(like)
    if meta["leaves"] != now:
        for old, new in zip(meta["leaves"] + [None] * len(now), now + [None] * len(meta["leaves"])):
            if old != new:
                raise CheckpointError(f"{where}: state leaf differs (saved {old}, now {new}){hint}")


_META_KEYS = ("format", "fingerprint", "leaves", "sha256", "step", "epoch", "batch", "history",
              "epoch_losses", "epoch_accs", "finished")


def restore_phase(manager: Any, like: Any, fingerprint: dict) -> Optional[PhaseCheckpoint]:
    """The latest readable checkpoint as a :class:`PhaseCheckpoint` with ``like`` 's tree structure and
    shardings, or ``None`` when there is none. Unreadable steps are deleted with a warning."""
    import orbax.checkpoint as ocp

    leaves, treedef = jax.tree.flatten(like)
    for step in sorted(manager.all_steps(), reverse=True):
        where = f"checkpoint {os.path.join(os.fspath(manager.directory), str(step))}"
        try:
            meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
            if not isinstance(meta, dict) or "fingerprint" not in meta:
                raise ValueError("metadata is not a jaxprune checkpoint")
            missing = [k for k in _META_KEYS if k not in meta]
            if missing:  # an incomplete metadata file is a corrupt step: the documented fallback
                raise ValueError(f"metadata lacks {missing}")
        except Exception as err:  # noqa: BLE001 - any read failure means "corrupt", try the previous
            _drop(manager, step, where, err)
            continue
        _check_compatible(meta, fingerprint, like, where)
        try:
            targets = {f"{i:05d}": _target(x) for i, x in enumerate(leaves)}
            items = manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(targets)))["state"]
            restored = [jax.random.wrap_key_data(items[f"{i:05d}"], impl=jax.random.key_impl(x))
                        if _is_key(x) else items[f"{i:05d}"] for i, x in enumerate(leaves)]
            state = jax.tree.unflatten(treedef, restored)
            digest = tree_sha256(state)
            if meta["sha256"] is not None and digest is not None and digest != meta["sha256"]:
                raise ValueError("sha256 of the restored arrays does not match the saved one")
        except Exception as err:  # noqa: BLE001
            _drop(manager, step, where, err)
            continue
        return PhaseCheckpoint(state, meta["step"], meta["epoch"], meta["batch"], meta["history"],
                               [np.float32(v) for v in meta["epoch_losses"]],
                               [np.float32(v) for v in meta["epoch_accs"]], meta["finished"])
    return None


def _drop(manager: Any, step: int, where: str, err: Exception) -> None:
    warnings.warn(f"{where} is unreadable ({type(err).__name__}: {str(err)[:200]}); deleted it and "
                  "falling back to the previous checkpoint", CheckpointWarning, stacklevel=3)
    try:
        manager.delete(step)
    except Exception:  # noqa: BLE001 - the directory may be too broken for orbax; remove it directly
        shutil.rmtree(os.path.join(os.fspath(manager.directory), str(step)), ignore_errors=True)
        manager.reload()


@contextlib.contextmanager
def preemption_guard() -> Iterator[threading.Event]:
    """While open, SIGTERM sets the yielded event instead of killing the process (main thread only;
    elsewhere the event is never set). The previous handler is restored on exit.

    >>> with preemption_guard() as stop:
    ...     stop.is_set()
    False
    """
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    try:
        yield stop
    finally:
        signal.signal(signal.SIGTERM, previous)


# Fields that may change between an interrupted run and its resumption.
_FREE_FIELDS = ("progress", "checkpoint_every", "mesh")


def check_run_config(config: dict, directory: str | os.PathLike) -> None:
    """Records ``config`` in ``directory/config.json``, or checks it equals the recorded one (except
    progress / checkpoint_every / mesh); a different config raises :class:`CheckpointError`.

    >>> import tempfile; d = tempfile.mkdtemp()
    >>> check_run_config({'seed': 0}, d); check_run_config({'seed': 0}, d)
    """
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, "config.json")
    mine = {k: v for k, v in config.items() if k not in _FREE_FIELDS}
    mine = json.loads(json.dumps(mine, sort_keys=True, default=str))
    if os.path.exists(path):
        try:
            with open(path) as f:
                saved = json.load(f)
        except (OSError, ValueError):
            saved = None  # a torn write of config.json: rewrite it below
        if saved is not None and saved != mine:
            diff = sorted(k for k in set(saved) | set(mine) if saved.get(k) != mine.get(k))
            raise CheckpointError(f"{directory} holds checkpoints of a different config (fields "
                                  f"{diff} differ); use a fresh workdir or delete {directory}")
        if saved is not None:
            return
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(mine, f, indent=2, sort_keys=True)
    os.replace(tmp, path)
