"""Host memory allocator settings for training on a CPU backend: :func:`keep_freed_memory`.

XLA:CPU allocates every step's output and scratch buffers with the C allocator. With glibc's default
settings, a buffer of a few MB freed at the end of a step is handed back to the operating system (the
heap is trimmed, or the block was a private ``mmap``), so the next step touches fresh pages and pays a
page fault per 4 KB page. A mask-update step that re-selects global magnitude masks on LeNet-300-100
has 3 MB of scratch per step: its update-vs-dense ratio is 3.7 - 5.2 with glibc's defaults and 2.0 -
2.4 with freed memory kept for reuse (``python scripts/bench_update.py --malloc default`` vs
``--malloc keep`` on the 2-core box; docs/performance.md).

:func:`keep_freed_memory` sets two glibc ``mallopt`` parameters for the whole process: blocks up to
``mmap_threshold`` (32 MiB) come from the heap, and the heap is trimmed only when more than
``trim_threshold`` (1 GiB) is free at its top. The cost: memory the process frees stays mapped (its
resident size stays near its peak) until it exits. The ``jaxprune`` command calls it at start;
library users call it themselves, or set the same two settings before Python starts:
``GLIBC_TUNABLES=glibc.malloc.trim_threshold=1073741824:glibc.malloc.mmap_threshold=33554432``.
``JAXPRUNE_MALLOC=default`` in the environment turns it off. Where the C library is not glibc it
does nothing (and returns ``False``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from typing import Any, Callable, Optional

from jaxprune.errors import ConfigError

__all__ = ["keep_freed_memory"]

# mallopt parameter numbers from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_INT_MAX = 2**31 - 1
_ENV = "JAXPRUNE_MALLOC"


def _glibc_mallopt() -> Optional[Callable[[int, int], int]]:
    """glibc's ``mallopt``, or None when the process does not run on glibc."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # only glibc has it  # noqa: B018
        fn = libc.mallopt
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return fn


def _check(name: str, value: Any, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= high:
        raise ConfigError(f"keep_freed_memory: {name} must be an integer in [0, {high}], got {value!r}")
    return value


def keep_freed_memory(*, trim_threshold: int = 1 << 30, mmap_threshold: int = 32 << 20) -> bool:
    """Keeps memory freed by XLA's per-step buffers for reuse instead of returning it to the OS.

    Sets glibc's ``M_MMAP_THRESHOLD`` (blocks up to this many bytes come from the heap; larger ones
    are still mapped on their own) and ``M_TRIM_THRESHOLD`` (free bytes at the heap's top before it
    is trimmed) for the whole process. Returns True when both were set; False where the C library
    is not glibc or ``JAXPRUNE_MALLOC=default`` is set (nothing changed). See the module docs for
    what it costs.

    Example:
        >>> keep_freed_memory() in (True, False)
        True
        >>> keep_freed_memory(mmap_threshold=1 << 40)
        Traceback (most recent call last):
        ...
        jaxprune.errors.ConfigError: keep_freed_memory: mmap_threshold must be an integer in [0, 2147483647], got 1099511627776
    """
    trim = _check("trim_threshold", trim_threshold, _INT_MAX)
    mmap = _check("mmap_threshold", mmap_threshold, _INT_MAX)
    setting = os.environ.get(_ENV, "keep").strip().lower()
    if setting not in ("keep", "default"):
        raise ConfigError(f"keep_freed_memory: {_ENV} must be 'keep' or 'default', got {setting!r}")
    if setting == "default":
        return False
    mallopt = _glibc_mallopt()
    if mallopt is None:
        return False
    # mallopt returns 1 on success, 0 when glibc refuses the value.
    set_mmap = mallopt(_M_MMAP_THRESHOLD, mmap)
    set_trim = mallopt(_M_TRIM_THRESHOLD, trim)
    return bool(set_mmap and set_trim)
