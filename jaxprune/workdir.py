"""Output directories: made and proven writable before any compute writes into them."""

from __future__ import annotations

import contextlib
import fcntl
import os
from typing import Any, Iterator, Type

__all__ = ["ensure_writable_dir", "checkpoint_lock"]


def ensure_writable_dir(path: str | os.PathLike, what: str, error: Type[Exception]) -> str:
    """Creates directory ``path`` if needed and writes (and removes) a probe file in it; ``error``
    (a message naming ``what`` and the path) when it is a file, under a file or not writable.

    >>> import tempfile
    >>> d = ensure_writable_dir(os.path.join(tempfile.mkdtemp(), 'a'), 'output', ValueError)
    >>> os.path.isdir(d)
    True
    >>> ensure_writable_dir(os.path.join(d, 'a', '..', '..', 'nope\\x00'), 'output', ValueError)
    Traceback (most recent call last):
    ...
    ValueError: output ... is not a writable directory: ...
    """
    path = os.fspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise error(f"{what} {path!r} is a file, not a directory")
    try:
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, f".write_probe.{os.getpid()}")
        with open(probe, "w"):
            pass
        os.remove(probe)
    except (OSError, ValueError) as err:
        raise error(f"{what} {path!r} is not a writable directory: "
                    f"{getattr(err, 'strerror', None) or err}") from err
    return path


@contextlib.contextmanager
def checkpoint_lock(ckdir: str, log: Any = None) -> Iterator[None]:
    """Holds an exclusive ``flock`` on ``<ckdir>.lock`` (blocking), so that processes sharing one
    checkpoint (sweep shards started together, runs sharing a ``dense_cache_dir``) train it once:
    the others wait, then restore it.

    >>> import tempfile, os
    >>> d = os.path.join(tempfile.mkdtemp(), 'dense')
    >>> with checkpoint_lock(d):
    ...     os.path.exists(d + '.lock')
    True
    """
    os.makedirs(os.path.dirname(ckdir) or ".", exist_ok=True)
    fd = os.open(ckdir + ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if log is not None:
                log(f"waiting for another process to finish the checkpoint {ckdir}")
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock
