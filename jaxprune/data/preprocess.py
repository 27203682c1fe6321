"""Optional per-channel standardisation, with statistics taken from the training images only."""

from __future__ import annotations

import numpy as np

from jaxprune.errors import DataError

__all__ = ["channel_stats", "standardize"]


def channel_stats(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation of (N, H, W, C) images, each of shape (C,), float32.

    Compute them on the training split and reuse them for validation/test, so no test statistic leaks.

    Example:
        >>> mean, std = channel_stats(np.array([0.0, 1.0], np.float32).reshape(2, 1, 1, 1))
        >>> mean.tolist(), std.tolist()
        ([0.5], [0.5])
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[0] == 0:
        raise DataError(f"images of shape {images.shape} must be a non-empty (N, H, W, C) array")
    flat = images.reshape(-1, images.shape[-1]).astype(np.float64)  # float64: 47 M values sum stably
    return flat.mean(axis=0).astype(np.float32), flat.std(axis=0).astype(np.float32)


def standardize(images: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Returns ``(images - mean) / std`` per channel as float32; a zero ``std`` channel is only centred.

    Example:
        >>> x = np.array([0.0, 1.0], np.float32).reshape(2, 1, 1, 1)
        >>> standardize(x, *channel_stats(x)).ravel().tolist()
        [-1.0, 1.0]
    """
    images = np.asarray(images)
    mean, std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
    channels = images.shape[-1] if images.ndim else 0
    if mean.shape != (channels,) or std.shape != (channels,):
        raise DataError(
            f"mean {mean.shape} and std {std.shape} must both have shape ({channels},) for images of shape "
            f"{images.shape}"
        )
    if np.any(std < 0) or not np.all(np.isfinite(std)):
        raise DataError(f"std={std.tolist()} must be finite and >= 0")
    safe = np.where(std > 0, std, np.float32(1.0))  # a constant channel (e.g. a blank border) stays 0
    return ((images - mean) / safe).astype(np.float32)
