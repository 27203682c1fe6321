"""Storage size of a (pruned, maybe quantized) params tree in the usual formats, in bytes.

A leaf is *selected* (stored sparse/quantized) when it is a QuantizedArray or the ``include``
predicate picks it (default: floating leaves named ``kernel`` with ``ndim >= 2``). Unselected leaves (biases, norm
scales) are stored dense at their own dtype in every format but ``dense_f32``. For a selected leaf
with ``n`` elements, ``nnz`` nonzeros, value width ``b`` bits (its dtype's width, or the quantized
bit width) and ``S`` scale bytes (4 per scale; 0 if not quantized):

* ``dense_f32``  = 4 n for every leaf (the float32 baseline).
* ``dense_int8`` = ceil(n q / 8) + 4 C, with q the quantized bit width (8 unless given) and C the
  channels (last axis, or the QuantizedArray's own scales): "quantize, don't prune".
* ``bitmask``    = ceil(n / 8) + ceil(nnz b / 8) + S: one bit per element plus the packed nonzeros.
* ``coo``        = what ``jax.experimental.sparse.BCOO.fromdense`` stores: its ``indices`` (int32,
  nnz x ndim) and ``data`` (nnz at the stored dtype; int8 even for 4-bit values) nbytes, + S.
* ``csr``        = 4 (rows + 1) + 4 nnz + ceil(nnz b / 8) + S, rows = prod(shape[:-1]) (leading axes
  folded: HWIO conv kernels become (H*W*I, O)).
* ``gzip``       = ``len(gzip.compress(raw, 9))`` where ``raw`` concatenates every leaf's raw bytes
  in tree order (QuantizedArray: int8 values then float32 scales) — TFMOT's compressed-size measure.
"""

from __future__ import annotations

import gzip
import math
from typing import Any

import numpy as np

from jaxprune.quant._tree import Include, default_include, leaves_with_paths, resolve_include
from jaxprune.quant.quantize import QuantizedArray, check_bits, is_qarray, quantize

FORMATS = ("dense_f32", "dense_int8", "bitmask", "coo", "csr", "gzip")


def _coo_nbytes(arr: np.ndarray) -> int:
    """Bytes of ``sparse.BCOO.fromdense(arr)``: int32 (nse, ndim) indices + (nse,) values of arr's
    dtype. Computed, not built: fromdense compiles a program per shape (~4 s each on 2 cores);
    ``tests/test_quant.py`` checks the formula against a real BCOO."""
    arr = np.asarray(arr)
    nse = int(np.count_nonzero(arr))
    return nse * max(arr.ndim, 1) * 4 + nse * arr.dtype.itemsize


def _csr_nbytes(shape: tuple[int, ...], nnz: int, value_bits: int) -> int:
    rows = math.prod(shape[:-1]) if len(shape) > 1 else 1
    return 4 * (rows + 1) + 4 * nnz + math.ceil(nnz * value_bits / 8)


def _selected_sizes(values: np.ndarray, value_bits: int, scale_bytes: int,
                    dense_q_bits: int, dense_q_scale_bytes: int) -> dict[str, int]:
    n, nnz = values.size, int(np.count_nonzero(values))
    return {
        "dense_f32": 4 * n,
        "dense_int8": math.ceil(n * dense_q_bits / 8) + dense_q_scale_bytes,
        "bitmask": math.ceil(n / 8) + math.ceil(nnz * value_bits / 8) + scale_bytes,
        "coo": _coo_nbytes(values) + scale_bytes,
        "csr": _csr_nbytes(values.shape, nnz, value_bits) + scale_bytes,
    }


def size_report(params: Any, *, quantized_bits: int | None = None,
                include: Include | None = None) -> dict[str, int]:
    """Bytes needed to store ``params`` in each format of :data:`FORMATS` (see the module docstring).

    ``params`` may be a float tree (dense or pruned) or a tree from :func:`quantize`. With
    ``quantized_bits``, the selected float leaves are first quantized per channel (last axis) at that
    width, so the report is that of ``quantize(params, quantized_bits)``. Runs on the host.

    >>> import numpy as np
    >>> k = np.zeros((4, 3), np.float32); k[0, 0] = k[1, 2] = k[3, 1] = 1.0
    >>> r = size_report({'kernel': k, 'bias': np.zeros(3, np.float32)})
    >>> [r[f] for f in FORMATS[:5]]
    [60, 36, 26, 48, 56]
    """
    if quantized_bits is not None:
        check_bits(quantized_bits)
        params = quantize(params, quantized_bits, include=include)
    pairs = leaves_with_paths(params, is_leaf=is_qarray)
    if include is None and any(isinstance(x, QuantizedArray) for _, x in pairs):
        # Already quantized: the kernels are QuantizedArrays, so the guard against "no kernel
        # selected" would misfire on a tree whose other float leaves are matrices (a ViT's
        # (heads, head_dim) biases, its positional table).
        include = default_include
    else:
        include = resolve_include(include, params, is_leaf=is_qarray)

    totals = dict.fromkeys(FORMATS, 0)
    raw: list[bytes] = []
    for path, leaf in pairs:
        if isinstance(leaf, QuantizedArray):
            values, scale = np.asarray(leaf.values), np.asarray(leaf.scale)
            sizes = _selected_sizes(values, leaf.bits, scale.nbytes, leaf.bits, scale.nbytes)
            raw += [values.tobytes(), scale.tobytes()]
        else:
            arr = np.asarray(leaf)
            raw.append(arr.tobytes())
            if include(path, leaf):
                channels = arr.shape[-1] if arr.ndim else 1
                sizes = _selected_sizes(arr, 8 * arr.dtype.itemsize, 0, 8, 4 * channels)
            else:
                sizes = dict.fromkeys(FORMATS[1:5], int(arr.nbytes))
                sizes["dense_f32"] = 4 * arr.size
        for fmt, nbytes in sizes.items():
            totals[fmt] += nbytes
    # mtime=0 makes the output reproducible; the size does not depend on it.
    totals["gzip"] = len(gzip.compress(b"".join(raw), compresslevel=9, mtime=0))
    return totals


def format_size_report(report: dict[str, int]) -> str:
    """A human-readable table of a :func:`size_report`: bytes, KiB and ratio to ``dense_f32``.

    >>> print(format_size_report({'dense_f32': 4096, 'gzip': 1024}))
    format            bytes        KiB  x smaller
    dense_f32          4096       4.00       1.00
    gzip               1024       1.00       4.00
    """
    base = report.get("dense_f32", 0)
    lines = [f"{'format':<10} {'bytes':>12} {'KiB':>10} {'x smaller':>10}"]
    for fmt, nbytes in report.items():
        ratio = f"{base / nbytes:10.2f}" if nbytes and base else f"{'-':>10}"
        lines.append(f"{fmt:<10} {nbytes:>12} {nbytes / 1024:>10.2f} {ratio}")
    return "\n".join(lines)
