"""The run context: run-wide settings :func:`~jaxprune.train.fit` picks up without every method
passing them along — the device mesh and checkpointing — and the count of fit calls ("phases").

``train_and_evaluate`` opens one context per run. A method may call ``fit`` several times (dense
training, fine-tuning, IMP rounds); call ``i`` in the run is phase ``i`` and checkpoints to
``checkpoint_dir/phase_{i:03d}``. Because a run is deterministic, the same config calls ``fit`` in the
same order, so on resume phase ``i`` finds its own checkpoints: finished phases return their final
state without training, the interrupted one continues from its latest step.

Outside any context ``fit`` behaves as a plain function (default device, no checkpoints).

>>> with run_context() as ctx:
...     current_run() is ctx, ctx.next_phase(), ctx.next_phase()
(True, 0, 1)
>>> current_run() is None
True
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import hashlib
import os
import sys
from typing import Any, Iterator, Optional

__all__ = ["RunContext", "run_context", "run_context_for", "current_run"]


@dataclasses.dataclass
class RunContext:
    """Settings of one run plus its phase counter.

    Mutable on purpose: it counts the ``fit`` calls of a run and collects each phase's final-state
    sha256 (a run is a sequence of side-effecting steps; the training functions themselves stay pure).
    """

    mesh: Any = None  # a jax.sharding.Mesh or None
    checkpoint_dir: Optional[str] = None  # None: no checkpoints
    checkpoint_every: int = 0  # steps between saves (0: only at the end of each phase)
    phases: int = 0  # fit calls so far
    digests: list = dataclasses.field(default_factory=list)  # sha256 of each phase's final state
    log: Any = None  # callable(str) for resume/preemption messages, or None

    def next_phase(self) -> int:
        """The index of the next ``fit`` call (0, 1, 2, ...)."""
        self.phases += 1
        return self.phases - 1

    def phase_dir(self, phase: int) -> Optional[str]:
        """``checkpoint_dir/phase_{phase:03d}`` or ``None`` when checkpointing is off."""
        if self.checkpoint_dir is None:
            return None
        return os.path.join(self.checkpoint_dir, f"phase_{phase:03d}")

    def sha256(self) -> Optional[str]:
        """One digest over every phase's final state (params, model state, optimizer state with its
        masks, step), in call order; ``None`` if there was no phase or a digest is unavailable."""
        if not self.digests or any(d is None for d in self.digests):
            return None
        return hashlib.sha256("|".join(self.digests).encode()).hexdigest()


_CURRENT: contextvars.ContextVar[Optional[RunContext]] = contextvars.ContextVar("jaxprune_run",
                                                                               default=None)


@contextlib.contextmanager
def run_context(*, mesh: Any = None, checkpoint_dir: Optional[str | os.PathLike] = None,
                checkpoint_every: int = 0, log: Any = None) -> Iterator[RunContext]:
    """Makes a :class:`RunContext` current for the ``with`` block (contexts nest; the inner wins)."""
    ctx = RunContext(mesh=mesh, checkpoint_every=checkpoint_every, log=log,
                     checkpoint_dir=None if checkpoint_dir is None else os.fspath(checkpoint_dir))
    token = _CURRENT.set(ctx)
    try:
        yield ctx
    finally:
        _CURRENT.reset(token)


def current_run() -> Optional[RunContext]:
    """The innermost open :class:`RunContext`, or ``None``."""
    return _CURRENT.get()


@contextlib.contextmanager
def run_context_for(config: Any, workdir: str | os.PathLike) -> Iterator[RunContext]:
    """The :func:`run_context` of a ``jaxprune run`` config: a mesh from ``config.mesh`` and, when
    ``config.checkpoint_every > 0``, checkpoints under ``workdir/checkpoints`` (resumed when present).

    Both fields are validated first (a :class:`~jaxprune.errors.ConfigError` naming the field), and a
    workdir holding checkpoints of a different config is refused.

    >>> import ml_collections, tempfile
    >>> cfg = ml_collections.ConfigDict({'mesh': '', 'checkpoint_every': 0, 'batch_size': 8})
    >>> with run_context_for(cfg, tempfile.mkdtemp()) as ctx:
    ...     ctx.mesh, ctx.checkpoint_dir
    (None, None)
    """
    from jaxprune.errors import ConfigError
    from jaxprune.train.checkpoint import check_run_config
    from jaxprune.train.parallel import check_batch_size, make_mesh

    every = config.get("checkpoint_every", 0)
    if not isinstance(every, int) or isinstance(every, bool) or every < 0:
        raise ConfigError(f"config field 'checkpoint_every' must be an integer >= 0 (steps; 0 = off), "
                          f"got {every!r}")
    mesh = make_mesh(config.get("mesh", "") or "")
    if mesh is not None and isinstance(config.get("batch_size"), int):
        check_batch_size(mesh, config.batch_size)
    directory = None
    if every > 0:
        directory = os.path.join(os.fspath(workdir), "checkpoints")
        check_run_config(config.to_dict() if hasattr(config, "to_dict") else dict(config), directory)
    with run_context(mesh=mesh, checkpoint_dir=directory, checkpoint_every=every,
                     log=lambda message: print(message, file=sys.stderr, flush=True)) as ctx:
        yield ctx
