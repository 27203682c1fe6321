"""Private pytree helpers shared by the quant modules.

Leaf paths come from the core's :func:`jaxprune.paths.path_str` ('params/Dense_0/kernel' for linen
and nnx alike).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune.errors import PruningError
from jaxprune.paths import path_str

Include = Callable[[str, Any], bool]


def is_float(leaf: Any) -> bool:
    return hasattr(leaf, "dtype") and jnp.issubdtype(leaf.dtype, jnp.floating)


def default_include(path: str, leaf: Any) -> bool:
    """Default leaf selection: floating arrays with ``ndim >= 2`` (kernels, not biases or norm scales)."""
    del path
    return is_float(leaf) and np.ndim(leaf) >= 2


def is_tracer(leaf: Any) -> bool:
    return isinstance(leaf, jax.core.Tracer)


def check_finite(path: str, leaf: Any) -> None:
    """Raise on NaN/inf in a concrete leaf; traced leaves (inside jit) cannot be checked and pass."""
    if is_tracer(leaf):
        return
    arr = np.asarray(leaf)
    if not np.isfinite(arr).all():
        bad = int(arr.size - np.isfinite(arr).sum())
        raise PruningError(f"{path}: {bad} non-finite value(s) (NaN/inf); cannot quantize this leaf")


def map_with_paths(fn: Callable[[str, Any], Any], tree: Any, is_leaf=None) -> Any:
    """``tree_map_with_path`` with the path already formatted as a string."""
    return jax.tree_util.tree_map_with_path(lambda p, x: fn(path_str(p), x), tree, is_leaf=is_leaf)


def leaves_with_paths(tree: Any, is_leaf=None) -> list[tuple[str, Any]]:
    flat, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)
    return [(path_str(p), x) for p, x in flat]
