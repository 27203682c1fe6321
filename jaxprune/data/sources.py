"""``load(name, split)``: named image classification sets as in-memory numpy arrays.

Every set comes back the same way: images float32 in [0, 1] of shape (N, H, W, C) (C = 1 for grey),
labels int32 class indices of shape (N,). Splits are ``'train'``, ``'validation'`` and ``'test'``;
``'validation'`` is a seeded held-out slice of the source's training split and ``'train'`` is the rest
(see :func:`load`).
"""

from __future__ import annotations

import numbers
import os
from typing import Callable, NamedTuple

import numpy as np

from jaxprune.data.mnist import ENV_VAR, IDX_SETS, load_idx_set
from jaxprune.data.tfds_source import load_tfds, tfds_meta
from jaxprune.errors import DataError, DataNotFound

__all__ = ["DATASETS", "SPLITS", "DEFAULT_VALIDATION_SIZE", "DatasetInfo", "dataset_info", "load",
           "resolve_dataset"]

SPLITS = ("train", "validation", "test")
DATASETS = ("fashion_mnist", "mnist", "digits", "tfds:NAME")
DEFAULT_VALIDATION_SIZE = 0.1
_TFDS_PREFIX = "tfds:"
# sklearn's load_digits: 1797 images; every fifth (index % 5 == 4: 359 images, 20 %) is the test split,
# a fixed rule that does not depend on any seed so every run evaluates on the same images. Not the last
# 360: the images come in blocks by writer, and a test split of the last writers caps a 784-128-10-style
# MLP at ~92 % (sklearn's own MLPClassifier too) where the interleaved split gives ~97 %.
_DIGITS_TEST_EVERY = 5
_DIGITS_MAX = 16.0  # 4-bit grey levels 0..16

_FASHION_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
_DIGIT_CLASSES = tuple(str(i) for i in range(10))


class DatasetInfo(NamedTuple):
    """Metadata of a named set: class count, per-example image shape (H, W, C), class names."""

    name: str
    num_classes: int
    image_shape: tuple[int, ...]
    class_names: tuple[str, ...] | None


def _check_name(name: object) -> str:
    if isinstance(name, str) and (name in IDX_SETS or name == "digits"):
        return name
    if isinstance(name, str) and name.startswith(_TFDS_PREFIX) and len(name) > len(_TFDS_PREFIX):
        return name
    raise DataError(
        f"unknown dataset name={name!r}; known names: {', '.join(DATASETS)} (e.g. 'tfds:cifar10')"
    )


def dataset_info(name: str, data_dir: str | os.PathLike | None = None) -> DatasetInfo:
    """Returns the metadata of ``name`` without reading its data (tfds sets read their builder info).

    Example:
        >>> info = dataset_info("fashion_mnist")
        >>> info.num_classes, info.image_shape, info.class_names[0]
        (10, (28, 28, 1), 'T-shirt/top')
    """
    name = _check_name(name)
    if name == "fashion_mnist":
        return DatasetInfo(name, 10, (28, 28, 1), _FASHION_CLASSES)
    if name == "mnist":
        return DatasetInfo(name, 10, (28, 28, 1), _DIGIT_CLASSES)
    if name == "digits":
        return DatasetInfo(name, 10, (8, 8, 1), _DIGIT_CLASSES)
    meta = tfds_meta(name[len(_TFDS_PREFIX) :], None if data_dir is None else os.fspath(data_dir))
    shape = meta.image_shape if len(meta.image_shape) == 3 else (*meta.image_shape, 1)
    if any(d is None for d in shape):
        raise DataError(
            f"dataset {name!r} has variable image shape {shape}; jaxprune needs fixed-size images"
        )
    return DatasetInfo(name, meta.num_classes, tuple(int(d) for d in shape), meta.class_names)


def _load_digits(split: str) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits  # lazy: sklearn import costs ~1 s

    bunch = load_digits()
    images = (bunch.images / _DIGITS_MAX).astype(np.float32)[..., None]
    labels = bunch.target.astype(np.int32)
    test = np.arange(len(labels)) % _DIGITS_TEST_EVERY == _DIGITS_TEST_EVERY - 1
    keep = ~test if split == "train" else test
    return images[keep], labels[keep]


def _check_validation_size(validation_size: object) -> None:
    ok_int = isinstance(validation_size, numbers.Integral) and not isinstance(validation_size, bool)
    ok_float = isinstance(validation_size, float) and 0.0 <= validation_size < 1.0
    if not (ok_float or (ok_int and validation_size >= 0)):  # type: ignore[operator]
        raise DataError(
            f"validation_size={validation_size!r} must be a count (int >= 0) or a fraction (float in [0, 1))"
        )


def _validation_count(validation_size: int | float, n_train: int) -> int:
    if isinstance(validation_size, float):
        count = int(round(validation_size * n_train))
    else:
        count = int(validation_size)
    if count >= n_train:
        raise DataError(
            f"validation_size={validation_size!r} leaves no training examples: the training split has "
            f"{n_train} examples"
        )
    return count


def load(
    name: str,
    split: str,
    data_dir: str | os.PathLike | None = None,
    *,
    validation_size: int | float = DEFAULT_VALIDATION_SIZE,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Loads split ``split`` of data set ``name`` as ``(images, labels)`` numpy arrays.

    Names: ``'fashion_mnist'``, ``'mnist'`` (original IDX files, see :mod:`jaxprune.data.mnist` for where
    they are looked for), ``'digits'`` (scikit-learn's 8x8 digits; test = every fifth of the 1797), and
    ``'tfds:NAME'`` (any tensorflow-datasets image classification set, through ``tfds.data_source``).

    Split rule: the source's training split of n examples is permuted with
    ``np.random.default_rng(seed)``; the first ``v`` indices of that permutation form ``'validation'`` and
    the other ``n - v`` form ``'train'``, both kept in their original file order. ``v`` is
    ``validation_size`` when an int, ``round(validation_size * n)`` when a float (default 0.1 → 6 000 of
    MNIST's 60 000). ``validation_size=0`` makes ``'train'`` the whole training split. ``'test'`` is the
    source's test split, untouched by ``validation_size`` and ``seed``.

    ``data_dir`` is where the IDX files are (mnist names) or the tfds data dir (``tfds:`` names); digits
    ignores it.

    Example:
        >>> images, labels = load("digits", "test")
        >>> images.shape, images.dtype, labels.dtype, float(images.max())
        ((359, 8, 8, 1), dtype('float32'), dtype('int32'), 1.0)
    """
    name = _check_name(name)
    if split not in SPLITS:
        raise DataError(f"split={split!r} must be one of {SPLITS}")
    _check_validation_size(validation_size)
    if not isinstance(seed, numbers.Integral) or isinstance(seed, bool) or seed < 0:
        raise DataError(f"seed={seed!r} must be an int >= 0")
    source_split = "test" if split == "test" else "train"
    if name in IDX_SETS:
        images, labels = load_idx_set(name, source_split, data_dir)
    elif name == "digits":
        images, labels = _load_digits(source_split)
    else:
        tfds_dir = None if data_dir is None else os.fspath(data_dir)
        images, labels = load_tfds(name[len(_TFDS_PREFIX) :], source_split, tfds_dir)
    if split == "test":
        return images, labels
    n_train = len(labels)
    count = _validation_count(validation_size, n_train)
    held_out = np.zeros((n_train,), bool)
    held_out[np.random.default_rng(seed).permutation(n_train)[:count]] = True
    keep = held_out if split == "validation" else ~held_out
    return images[keep], labels[keep]


def resolve_dataset(name: str, data_dir: str | os.PathLike | None = None, *,
                    note: Callable[[str], None] | None = None) -> str:
    """``'auto'`` -> ``'fashion_mnist'`` when its files are found, else ``'digits'``; others as given.

    Only *absent* files fall back: a Fashion-MNIST file that is found but cannot be read is an error
    naming it (a silent switch to another data set would change every number of the run). ``note``
    receives one line saying what ``'auto'`` chose (and, on the fallback, how to get Fashion-MNIST).
    The one place ``dataset='auto'`` is resolved (the CLI, sweeps and the harness call it).

    >>> resolve_dataset('digits')
    'digits'
    >>> resolve_dataset('auto', '/nonexistent', note=print)
    dataset=auto -> digits (Fashion-MNIST files not found; `apt-get install dataset-fashion-mnist` or set JAXPRUNE_DATA)
    'digits'
    """
    if name != "auto":
        return name
    try:
        load("fashion_mnist", "test", data_dir)
        chosen = "fashion_mnist"
    except DataNotFound:
        chosen = "digits"
    if note is not None:
        note(f"dataset=auto -> {chosen}" + ("" if chosen == "fashion_mnist" else
             f" (Fashion-MNIST files not found; `apt-get install dataset-fashion-mnist` or set {ENV_VAR})"))
    return chosen
