"""A validating numpy reader for the IDX format of MNIST and Fashion-MNIST.

IDX layout (LeCun et al., http://yann.lecun.com/exdb/mnist/): two zero bytes, one byte naming the element
type, one byte giving the number of dimensions ``ndim``, then ``ndim`` big-endian uint32 sizes, then the
elements in C order (big-endian). Files may be gzip-compressed; the gzip magic bytes, not the file name,
decide, so a ``.gz`` file that was already unpacked by a browser still reads.
"""

from __future__ import annotations

import gzip
import os
import zlib

import numpy as np

from jaxprune.errors import DataError

__all__ = ["read_idx"]

# Element-type byte -> big-endian numpy dtype (the six types of the IDX spec).
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"


def _read_bytes(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise DataError(f"cannot read IDX file {path!r}: {e}") from e
    if raw[:2] != _GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError; a cut stream is EOFError
        raise DataError(f"corrupt gzip stream in IDX file {path!r}: {e}") from e


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Reads one IDX file (raw or gzip) into a numpy array of its native-endian dtype.

    Raises :class:`~jaxprune.errors.DataError` naming the file for a wrong magic number, an unknown
    element type, a truncated header or body, trailing bytes, or a corrupt gzip stream.

    Example:
        >>> import gzip, os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "labels-idx1-ubyte.gz")
        >>> with gzip.open(path, "wb") as f:
        ...     _ = f.write(bytes([0, 0, 0x08, 1, 0, 0, 0, 3, 7, 1, 4]))
        >>> read_idx(path)
        array([7, 1, 4], dtype=uint8)
    """
    path = os.fspath(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise DataError(f"IDX file {path!r} is truncated: {len(data)} bytes, no room for the 4-byte magic")
    zero0, zero1, type_code, ndim = data[:4]
    if zero0 != 0 or zero1 != 0 or type_code not in _IDX_DTYPES or ndim == 0:
        raise DataError(
            f"IDX file {path!r} has a bad magic number 0x{data[:4].hex()}: expected 0x0000TTNN with type "
            f"TT in {{{', '.join(f'{c:02x}' for c in _IDX_DTYPES)}}} and NN >= 1 dimensions"
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"IDX file {path!r} is truncated inside its header ({len(data)} < {header} bytes)")
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = _IDX_DTYPES[type_code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    body = len(data) - header
    if body < expected:
        raise DataError(
            f"IDX file {path!r} is truncated: dimensions {shape} need {expected} data bytes, found {body}"
        )
    if body > expected:
        raise DataError(
            f"IDX file {path!r} does not match its dimensions {shape}: {body - expected} bytes beyond the "
            f"{expected} they describe"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    # Native byte order, and a writable copy, so callers never see a read-only big-endian view.
    return array.astype(dtype.newbyteorder("="))
