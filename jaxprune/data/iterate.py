"""Seeded mini-batches of fixed shape, so a jitted train or eval step compiles once.

Rules:

* **Order.** With ``shuffle=True`` epoch ``e`` visits the examples in the order
  ``np.random.default_rng([seed, epoch]).permutation(n)``: the same (seed, epoch) always gives the same
  order, and each epoch draws an independent permutation. With ``shuffle=False`` the order is 0..n-1.
* **Last partial batch.** ``drop_remainder=True`` (training default) drops the last ``n % batch_size``
  examples *of that epoch's order*, so a different few are left out each epoch. ``drop_remainder=False``
  pads the last batch with zero images and label 0 up to ``batch_size``; ``Batch.mask`` is False on the
  padding, so ``sum(mask * correct) / sum(mask)`` counts every example exactly once (:func:`eval_batches`).
* Every batch carries a mask (all True on full batches), so all batches share one pytree structure and
  one set of shapes.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np

from jaxprune.errors import DataError

__all__ = ["Batch", "batches", "epoch_order", "eval_batches", "num_batches"]


class Batch(NamedTuple):
    """One mini-batch: ``images`` (B, ...), ``labels`` (B,), ``mask`` (B,) bool, False on padding."""

    images: np.ndarray
    labels: np.ndarray
    mask: np.ndarray


def _check_int(value: object, argument: str, minimum: int) -> int:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < minimum:
        raise DataError(f"{argument}={value!r} must be an int >= {minimum}")
    return int(value)


def num_batches(num_examples: int, batch_size: int, *, drop_remainder: bool = True) -> int:
    """Number of batches one epoch yields: ``n // b`` when dropping the remainder, else ``ceil(n / b)``.

    Raises :class:`~jaxprune.errors.DataError` when dropping the remainder would leave no batch at all.

    Example:
        >>> num_batches(10, 4), num_batches(10, 4, drop_remainder=False)
        (2, 3)
    """
    n = _check_int(num_examples, "num_examples", 0)
    b = _check_int(batch_size, "batch_size", 1)
    if drop_remainder and n < b:
        raise DataError(
            f"batch_size={b} exceeds the {n} examples: with drop_remainder=True an epoch has no batch"
        )
    return n // b if drop_remainder else -(-n // b)


def epoch_order(num_examples: int, *, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
    """The order in which :func:`batches` visits the examples in epoch ``epoch`` (int64 indices):
    batch ``i`` holds ``order[i * batch_size:(i + 1) * batch_size]``.

    Example:
        >>> epoch_order(5, seed=0, epoch=0, shuffle=False).tolist()
        [0, 1, 2, 3, 4]
        >>> bool((epoch_order(5, seed=1, epoch=2) == epoch_order(5, seed=1, epoch=2)).all())
        True
    """
    n = _check_int(num_examples, "num_examples", 0)
    seed, epoch = _check_int(seed, "seed", 0), _check_int(epoch, "epoch", 0)
    # A fresh Generator from (seed, epoch): no state is carried between epochs or calls.
    return np.random.default_rng([seed, epoch]).permutation(n) if shuffle else np.arange(n)


def batches(
    images: np.ndarray,
    labels: np.ndarray,
    batch_size: int,
    *,
    seed: int,
    epoch: int,
    shuffle: bool = True,
    drop_remainder: bool = True,
) -> Iterator[Batch]:
    """Yields one epoch of :class:`Batch` es of exactly ``batch_size`` examples (rules: module docstring).

    ``seed`` and ``epoch`` are required so that forgetting to advance the epoch cannot silently repeat
    one order for the whole run.

    Example:
        >>> x, y = np.zeros((10, 2, 2, 1), np.float32), np.arange(10, dtype=np.int32)
        >>> [b.labels.tolist() for b in batches(x, y, 4, seed=0, epoch=0, shuffle=False)]
        [[0, 1, 2, 3], [4, 5, 6, 7]]
    """
    images, labels = np.asarray(images), np.asarray(labels)
    if images.ndim < 1 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise DataError(
            f"images of shape {images.shape} and labels of shape {labels.shape} must share their first "
            "axis, with labels 1-D"
        )
    n = labels.shape[0]
    count = num_batches(n, batch_size, drop_remainder=drop_remainder)
    order = epoch_order(n, seed=seed, epoch=epoch, shuffle=shuffle)
    return _yield(images, labels, order, batch_size, count)


def _yield(images: np.ndarray, labels: np.ndarray, order: np.ndarray, b: int, count: int) -> Iterator[Batch]:
    # A separate generator so that argument errors in `batches` raise at the call, not at first next().
    full = np.ones((b,), bool)
    for start in range(0, count * b, b):
        index = order[start : start + b]
        if len(index) == b:
            yield Batch(images[index], labels[index], full.copy())
            continue
        pad = b - len(index)
        padded_images = np.concatenate([images[index], np.zeros((pad, *images.shape[1:]), images.dtype)])
        padded_labels = np.concatenate([labels[index], np.zeros((pad,), labels.dtype)])
        yield Batch(padded_images, padded_labels, np.arange(b) < len(index))


def eval_batches(images: np.ndarray, labels: np.ndarray, batch_size: int) -> Iterator[Batch]:
    """Yields every example exactly once, in order, in fixed-shape batches; the last is padded and masked.

    Example:
        >>> x, y = np.zeros((5, 1), np.float32), np.arange(5, dtype=np.int32)
        >>> [b.mask.tolist() for b in eval_batches(x, y, 3)]
        [[True, True, True], [True, True, False]]
    """
    return batches(images, labels, batch_size, seed=0, epoch=0, shuffle=False, drop_remainder=False)
