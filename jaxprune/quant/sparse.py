"""A sparse inference path for plain MLPs: pruned Dense kernels as ``jax.experimental.sparse`` matrices.

Supported model: a linen-style tree ``{'params': {'Dense_0': {'kernel': (in, out), 'bias': (out,)},
'Dense_1': ..., ...}}`` (the ``'params'`` level is optional, ``bias`` too) with ReLU between layers and
none after the last — an ``nn.Dense`` stack such as LeNet-300-100. It is not a general sparse executor.

Two storage formats, because neither wins everywhere on CPU (see docs/quantization.md):

* :func:`to_bcoo` keeps ``W`` (in, out) as a BCOO; ``x @ W`` lowers to a gather/scatter-add over the
  nonzeros. Good at batch 1, very slow at large batch (XLA's CPU scatter is serial).
* :func:`to_bcsr` stores ``W^T`` (out, in) as a BCSR, so ``(W^T @ x^T)^T`` hits JAX's native CPU
  CSR x dense kernel (``cpu_csr_sparse_dense_ffi``). Good at large batch, poor at batch 1.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import sparse

from jaxprune.errors import PruningError
from jaxprune.quant._tree import Include, is_float, is_tracer, map_with_paths

_DENSE_NAME = re.compile(r"^Dense_(\d+)$")


def _dense_kernel_include(path: str, leaf: Any) -> bool:
    del path
    return is_float(leaf) and leaf.ndim == 2


def _convert(params: Any, include: Include | None, fn, what: str) -> Any:
    include = _dense_kernel_include if include is None else include

    def convert(path: str, leaf: Any) -> Any:
        if not include(path, leaf):
            return leaf
        if is_tracer(leaf):
            # The number of stored nonzeros is a shape, so it must be known outside jit.
            raise PruningError(f"{path}: {what} needs concrete arrays; call it outside jit")
        if getattr(leaf, "ndim", None) != 2:
            raise PruningError(f"{path}: {what} converts 2-D (in, out) kernels, got shape "
                               f"{getattr(leaf, 'shape', None)}")
        return fn(np.asarray(leaf))

    return map_with_paths(convert, params)


# Built on the host with numpy: ``BCOO.fromdense`` gives the same arrays (row-major nonzeros, int32
# indices) but compiles a program per shape and takes seconds per leaf on CPU.
def _bcoo_from_numpy(w: np.ndarray) -> sparse.BCOO:
    indices = np.argwhere(w != 0).astype(np.int32)
    data = w[tuple(indices.T)]
    return sparse.BCOO((jnp.asarray(data), jnp.asarray(indices)), shape=w.shape,
                       indices_sorted=True, unique_indices=True)


def _bcsr_from_numpy(w: np.ndarray) -> sparse.BCSR:
    rows, cols = np.nonzero(w)
    indptr = np.zeros(w.shape[0] + 1, np.int32)
    np.cumsum(np.bincount(rows, minlength=w.shape[0]), out=indptr[1:])
    return sparse.BCSR((jnp.asarray(w[rows, cols]), jnp.asarray(cols.astype(np.int32)),
                        jnp.asarray(indptr)), shape=w.shape, indices_sorted=True, unique_indices=True)


def to_bcoo(params: Any, *, include: Include | None = None) -> Any:
    """Replace the selected 2-D kernels (default: every floating 2-D leaf) by ``sparse.BCOO``.

    Stores only the nonzeros (exactly the mask's kept weights). Call outside ``jit``; the result is a
    pytree that can be passed into a jitted :func:`sparse_mlp_apply`.

    >>> import jax.numpy as jnp
    >>> sp = to_bcoo({'Dense_0': {'kernel': jnp.eye(3), 'bias': jnp.zeros(3)}})
    >>> type(sp['Dense_0']['kernel']).__name__, sp['Dense_0']['kernel'].nse
    ('BCOO', 3)
    """
    return _convert(params, include, _bcoo_from_numpy, "to_bcoo")


def to_bcsr(params: Any, *, include: Include | None = None) -> Any:
    """Replace the selected 2-D kernels by ``sparse.BCSR`` of their **transpose** (out, in).

    The transpose puts the sparse matrix on the left of the product, which is what JAX's CPU CSR
    kernel accepts. Call outside ``jit``.

    >>> import jax.numpy as jnp
    >>> sp = to_bcsr({'Dense_0': {'kernel': jnp.ones((4, 2)), 'bias': jnp.zeros(2)}})
    >>> sp['Dense_0']['kernel'].shape
    (2, 4)
    """
    return _convert(params, include, lambda w: _bcsr_from_numpy(np.ascontiguousarray(w.T)), "to_bcsr")


def sparse_matmul(x: jax.Array, kernel: Any) -> jax.Array:
    """``x @ W`` for a dense kernel (in, out), a BCOO (in, out) or a BCSR holding ``W^T`` (out, in).

    >>> import jax.numpy as jnp
    >>> w = jnp.array([[1.0, 0.0], [0.0, 2.0]])
    >>> sparse_matmul(jnp.ones((1, 2)), to_bcsr({'k': w})['k']).tolist()
    [[1.0, 2.0]]
    """
    if isinstance(kernel, sparse.BCSR):
        return (kernel @ x.T).T
    return x @ kernel


def _dense_layers(params: Any) -> list[Mapping[str, Any]]:
    tree = params["params"] if isinstance(params, Mapping) and "params" in params else params
    if not isinstance(tree, Mapping):
        raise PruningError(f"params: expected a dict of Dense_i layers, got {type(tree).__name__}")
    layers = sorted((int(m.group(1)), name) for name in tree
                    if (m := _DENSE_NAME.match(str(name))))
    if not layers or len(layers) != len(tree):
        others = sorted(str(n) for n in tree if not _DENSE_NAME.match(str(n)))
        raise PruningError(f"params: sparse_mlp_apply supports only Dense_i layers; "
                           f"found {others or 'no layers'}")
    for _, name in layers:
        if not isinstance(tree[name], Mapping) or "kernel" not in tree[name]:
            raise PruningError(f"params/{name}: expected a dict with 'kernel' (and optional 'bias')")
    return [tree[name] for _, name in layers]


def sparse_mlp_apply(params: Any, x: jax.Array) -> jax.Array:
    """Forward pass of a Dense/ReLU MLP whose kernels are dense, BCOO (:func:`to_bcoo`) or BCSR
    (:func:`to_bcsr`); matches ``flax.linen`` ``nn.Dense`` layers with ``nn.relu`` between them.

    ``x`` is (batch, in) or (in,). Jit-able (the sparse matrices are pytrees).

    >>> import jax.numpy as jnp
    >>> p = {'params': {'Dense_0': {'kernel': jnp.eye(2), 'bias': jnp.array([0.0, -5.0])},
    ...                 'Dense_1': {'kernel': jnp.ones((2, 1)), 'bias': jnp.zeros(1)}}}
    >>> sparse_mlp_apply(to_bcoo(p), jnp.array([[1.0, 2.0]])).tolist()
    [[1.0]]
    """
    layers = _dense_layers(params)
    x = jnp.asarray(x)
    squeeze = x.ndim == 1
    h = x[None, :] if squeeze else x
    for i, layer in enumerate(layers):
        h = sparse_matmul(h, layer["kernel"])
        if "bias" in layer:
            h = h + jnp.asarray(layer["bias"])[None, :]
        if i < len(layers) - 1:
            h = jax.nn.relu(h)
    return h[0] if squeeze else h
