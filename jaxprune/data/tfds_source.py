"""Image classification sets from tensorflow-datasets, read into numpy arrays without TensorFlow.

Only ``tfds.data_source`` (random access over array_record files) works without TensorFlow, so that is
the one entry point used. Preparing a set (download + generation) needs TensorFlow and network; it is
attempted only when TensorFlow is importable, because without it tfds would retry downloads for minutes
and then fail anyway.
"""

from __future__ import annotations

import contextlib
import glob
import importlib.util
import os
import tempfile
from typing import Any, Iterator, NamedTuple

import numpy as np

from jaxprune.errors import DataError

__all__ = ["TfdsMeta", "tfds_meta", "load_tfds", "to_unit_float"]

_PREPARE_HINT = (
    "to prepare it, install TensorFlow (pip install 'jaxprune[tf]') on a machine with network and run "
    "`tfds build {name} --file_format=array_record`, or point data_dir / TFDS_DATA_DIR at a copy prepared "
    "as array_record"
)


class TfdsMeta(NamedTuple):
    """What jaxprune needs to know about a tfds set: its feature keys, class count and image shape."""

    image_key: str
    label_key: str
    num_classes: int
    image_shape: tuple[int | None, ...]
    class_names: tuple[str, ...] | None


def _import_tfds() -> Any:
    try:
        import tensorflow_datasets as tfds  # imported lazily: ~1.5 s, and only the tfds paths need it
    except ImportError as e:  # pragma: no cover - it is a declared dependency
        raise DataError(
            f"tensorflow-datasets is not importable ({e}); pip install tensorflow-datasets"
        ) from e
    return tfds


def _tensorflow_installed() -> bool:
    return importlib.util.find_spec("tensorflow") is not None


def _first_line(error: BaseException) -> str:
    # tfds errors can list every registered data set (hundreds of lines); the first line says what failed.
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"


def _builder(name: str, data_dir: str | None) -> Any:
    tfds = _import_tfds()
    try:
        return tfds.builder(name, data_dir=data_dir)
    except Exception as e:  # tfds raises many unrelated types (DatasetNotFoundError, ValueError, ...)
        raise DataError(f"tensorflow-datasets cannot build data set {name!r}: {_first_line(e)}") from e


def tfds_meta(name: str, data_dir: str | None = None) -> TfdsMeta:
    """Reads the feature keys, class count and image shape of tfds set ``name`` (no data is read).

    Example:
        >>> tfds_meta("mnist").num_classes  # doctest: +SKIP
        10
    """
    info = _builder(name, data_dir).info
    keys = info.supervised_keys
    if not (isinstance(keys, tuple) and len(keys) == 2 and all(isinstance(k, str) for k in keys)):
        raise DataError(
            f"tfds set {name!r} has supervised_keys={keys!r}; jaxprune needs an (image, label) "
            "classification set"
        )
    image_key, label_key = keys
    label_feature = info.features[label_key]
    num_classes = getattr(label_feature, "num_classes", None)
    if not isinstance(num_classes, int):
        raise DataError(f"tfds set {name!r}: label feature {label_key!r} is not a ClassLabel")
    names = getattr(label_feature, "names", None)
    shape = tuple(info.features[image_key].shape)
    return TfdsMeta(image_key, label_key, num_classes, shape, tuple(names) if names else None)


def to_unit_float(images: np.ndarray) -> np.ndarray:
    """Scales integer images by their dtype's maximum (uint8: /255) to float32 in [0, 1].

    Float images are only cast to float32: their range is the data set's own business.

    Example:
        >>> to_unit_float(np.array([0, 51, 255], np.uint8))
        array([0. , 0.2, 1. ], dtype=float32)
    """
    if np.issubdtype(images.dtype, np.integer):
        return (images.astype(np.float32) / np.float32(np.iinfo(images.dtype).max)).astype(np.float32)
    return images.astype(np.float32)


@contextlib.contextmanager
def _no_leftover_tmp() -> Iterator[None]:
    """Removes the empty ``/tmp/tmp*tfds`` directories tensorflow-datasets leaves behind when a set
    cannot be opened (two per failed call); only new, empty ones (``os.rmdir`` refuses others)."""
    pattern = os.path.join(tempfile.gettempdir(), "tmp*tfds")
    before = set(glob.glob(pattern))
    try:
        yield
    finally:
        for path in set(glob.glob(pattern)) - before:
            with contextlib.suppress(OSError):
                os.rmdir(path)


def load_tfds(name: str, split: str, data_dir: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Reads tfds split ``split`` of ``name`` as (float32 NHWC images in [0, 1], int32 labels).

    Example:
        >>> images, labels = load_tfds("cifar10", "test")  # doctest: +SKIP
        >>> images.shape, labels.dtype  # doctest: +SKIP
        ((10000, 32, 32, 3), dtype('int32'))
    """
    tfds = _import_tfds()
    try:
        with _no_leftover_tmp():
            meta = tfds_meta(name, data_dir)
            source = tfds.data_source(name, split=split, data_dir=data_dir, download=_tensorflow_installed())
    except DataError:
        raise
    except Exception as e:  # not prepared, TFRECORD-only copy, no network, unknown split, ...
        raise DataError(
            f"tensorflow-datasets could not open {name!r} split {split!r}: {_first_line(e)}; "
            + _PREPARE_HINT.format(name=name)
        ) from e
    n = len(source)
    if n == 0:
        raise DataError(f"tfds set {name!r} split {split!r} is empty")
    images: np.ndarray | None = None
    labels = np.empty((n,), np.int32)
    # One record at a time: the batched getter is not implemented by every source (the mock of
    # tfds.testing.mock_data raises on it), and filling a preallocated array keeps peak memory at 1x.
    for i in range(n):
        record = source[i]
        image = np.asarray(record[meta.image_key])
        if image.ndim == 2:  # some sets store grey images without a channel axis
            image = image[..., None]
        if images is None:
            images = np.empty((n, *image.shape), image.dtype)
        elif image.shape != images.shape[1:]:
            raise DataError(
                f"tfds set {name!r} split {split!r}: record {i} has image shape {image.shape}, record 0 "
                f"has {images.shape[1:]}; only fixed-size image sets can be stacked (resize them first)"
            )
        images[i] = image
        labels[i] = int(record[meta.label_key])
    assert images is not None
    if labels.min() < 0 or labels.max() >= meta.num_classes:
        raise DataError(
            f"tfds set {name!r} split {split!r}: labels outside [0, {meta.num_classes}) "
            f"(min {labels.min()}, max {labels.max()})"
        )
    return to_unit_float(images), labels
