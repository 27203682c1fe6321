"""MNIST and Fashion-MNIST from their original IDX files, with tensorflow-datasets as a last resort.

Search order (the first directory holding both files of the requested split wins):

1. ``data_dir`` when given — and then *only* ``data_dir``: an explicit directory that lacks the files is
   an error, never a silent switch to another copy.
2. ``$JAXPRUNE_DATA``: the directory itself, or its ``fashion_mnist/`` (also ``fashion-mnist/``) or
   ``mnist/`` subdirectory.
3. Debian's ``/usr/share/datasets/fashion-mnist/`` (package ``dataset-fashion-mnist``), Fashion-MNIST
   only.
4. tensorflow-datasets (``tfds.data_source``), when the set is already prepared as array_record in the
   tfds data dir, or TensorFlow is installed to prepare it.
"""

from __future__ import annotations

import os

import numpy as np

from jaxprune.data.idx import read_idx
from jaxprune.data.tfds_source import load_tfds, to_unit_float
from jaxprune.errors import DataError, DataNotFound

__all__ = ["ENV_VAR", "IDX_SETS", "load_idx_set"]

ENV_VAR = "JAXPRUNE_DATA"
IDX_SETS = ("fashion_mnist", "mnist")
_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_SUBDIRS = {"fashion_mnist": ("fashion_mnist", "fashion-mnist"), "mnist": ("mnist",)}
# Module-level so tests can point it elsewhere; Debian packages no plain MNIST.
DEBIAN_DIRS = {"fashion_mnist": ("/usr/share/datasets/fashion-mnist",), "mnist": ()}
_IMAGE_HW = (28, 28)
_NUM_CLASSES = 10


def _find(directory: str, base: str) -> str | None:
    # The raw file first: it skips decompression; either spelling is the same IDX content.
    for candidate in (base, base + ".gz"):
        path = os.path.join(directory, candidate)
        if os.path.isfile(path):
            return path
    return None


def _with_subdirs(name: str, directory: str) -> list[str]:
    return [directory] + [os.path.join(directory, sub) for sub in _SUBDIRS[name]]


def _search_dirs(name: str, data_dir: str | os.PathLike | None) -> tuple[list[str], list[str]]:
    """Returns (directories to search in order, notes on places that were skipped)."""
    if data_dir is not None:
        return _with_subdirs(name, os.fspath(data_dir)), []
    dirs: list[str] = []
    notes: list[str] = []
    env = os.environ.get(ENV_VAR)
    if env:
        dirs += _with_subdirs(name, env)
    else:
        notes.append(f"${ENV_VAR} is not set")
    dirs += list(DEBIAN_DIRS[name])
    return dirs, notes


def _read_pair(name: str, images_path: str, labels_path: str) -> tuple[np.ndarray, np.ndarray]:
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.ndim != 3 or images.shape[1:] != _IMAGE_HW or images.dtype != np.uint8:
        raise DataError(
            f"{name} image file {images_path!r} holds {images.dtype} of shape {images.shape}; expected uint8 "
            f"of shape (N, {_IMAGE_HW[0]}, {_IMAGE_HW[1]})"
        )
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise DataError(
            f"{name} label file {labels_path!r} holds {labels.dtype} of shape {labels.shape}; expected uint8 "
            "of shape (N,)"
        )
    if images.shape[0] != labels.shape[0]:
        raise DataError(
            f"{name}: {images.shape[0]} images in {images_path!r} but {labels.shape[0]} labels in "
            f"{labels_path!r}"
        )
    if labels.size and labels.max() >= _NUM_CLASSES:
        raise DataError(f"{name} label file {labels_path!r} has label {labels.max()} >= {_NUM_CLASSES}")
    return to_unit_float(images)[..., None], labels.astype(np.int32)


def load_idx_set(
    name: str, split: str, data_dir: str | os.PathLike | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Loads split ``'train'`` or ``'test'`` of ``'mnist'``/``'fashion_mnist'`` as (N, 28, 28, 1) float32
    images in [0, 1] and int32 labels, searching the places in this module's docstring.

    Raises one :class:`~jaxprune.errors.DataError` listing every place searched when none has the files.

    Example:
        >>> images, labels = load_idx_set("fashion_mnist", "test")  # doctest: +SKIP
        >>> images.shape, labels.shape  # doctest: +SKIP
        ((10000, 28, 28, 1), (10000,))
    """
    image_base, label_base = _FILES[split]
    dirs, notes = _search_dirs(name, data_dir)
    for directory in dirs:
        images_path, labels_path = _find(directory, image_base), _find(directory, label_base)
        if images_path and labels_path:
            return _read_pair(name, images_path, labels_path)
    if data_dir is None:
        try:
            return load_tfds(name, split)
        except DataError as e:
            notes.append(f"tensorflow-datasets: {e}")
    looked = "\n".join(f"  - {d}" for d in dirs) or "  (no directory)"
    skipped = "".join(f"\n  - {n}" for n in notes)
    debian = " (Fashion-MNIST only: sudo apt-get install dataset-fashion-mnist)," if DEBIAN_DIRS[name] else ""
    raise DataNotFound(
        f"{name} split {split!r}: no directory holds both {image_base}[.gz] and {label_base}[.gz].\n"
        f"Looked in:\n{looked}{skipped}\n"
        f"To fix:{debian} download the four IDX files into a directory and set {ENV_VAR}=<dir> "
        f"(or <dir>/{_SUBDIRS[name][0]}/), or pass data_dir=<dir>."
    )
