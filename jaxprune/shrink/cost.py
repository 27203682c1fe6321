"""Cost of a model: XLA FLOPs, analytic MACs (dense and nonzero), parameter counts/bytes, latency.

``flops`` asks XLA itself (``jit(f).lower(...).compile().cost_analysis()``), so it counts what the
compiled program really does. A masked model has the same FLOPs as the dense one (XLA multiplies the
zeros too); only a shrunk model is cheaper. ``macs(..., nonzero=True)`` is the analytic count a
sparse kernel could reach: per Dense/Conv layer, output positions x nonzero kernel weights.
"""

from __future__ import annotations

import math
import statistics
import time
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from jaxprune.errors import PruningError
from jaxprune.models.common import takes_train
from jaxprune.neurons.tree import path_names

__all__ = ["flops", "macs", "param_count", "param_bytes", "latency_ms"]


def _forward(model: nn.Module, kwargs: dict) -> Any:
    if not isinstance(model, nn.Module):
        raise PruningError(f"cost: model must be a flax.linen.Module, got {type(model).__name__}")
    if takes_train(model) and "train" not in kwargs:
        kwargs = {**kwargs, "train": False}  # inference cost: BatchNorm uses its running statistics
    return lambda v, x: model.apply(v, x, **kwargs)


def _input(input_shape: Sequence[int], batch: int) -> jax.ShapeDtypeStruct:
    shape = tuple(int(d) for d in input_shape)
    if int(batch) < 1 or any(d < 1 for d in shape):
        raise PruningError(f"cost: need batch >= 1 and a positive input_shape, got {batch}, {shape}")
    return jax.ShapeDtypeStruct((int(batch), *shape), jnp.float32)


def flops(model: nn.Module, variables: Mapping, input_shape: Sequence[int], batch: int = 1,
          **kwargs: Any) -> float:
    """FLOPs of one jitted forward pass over ``batch`` examples of ``input_shape``, from XLA.

    Example:
        >>> from jaxprune.models import MLP, init_params
        >>> v = init_params(MLP((4, 2)), jax.random.PRNGKey(0), (1, 3))
        >>> flops(MLP((4, 2)), v, (3,)) >= 2 * (3 * 4 + 4 * 2)
        True
    """
    compiled = jax.jit(_forward(model, kwargs)).lower(variables, _input(input_shape, batch)).compile()
    cost = compiled.cost_analysis()
    # jax 0.10 returns one dict; older releases returned a list with one dict per computation.
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    if not cost or "flops" not in cost:
        raise PruningError("flops: XLA's cost analysis reported no 'flops' on this backend")
    return float(cost["flops"])


def macs(model: nn.Module, variables: Mapping, input_shape: Sequence[int], batch: int = 1, *,
         nonzero: bool = False, **kwargs: Any) -> int:
    """Multiply-accumulates of the Dense/Conv layers: output positions x (nonzero) kernel weights.

    With ``nonzero=True`` only weights != 0 count (what a masked model would cost on a kernel that
    skips zeros); a conv's zero-padded taps count as XLA computes them.

    Example:
        >>> from jaxprune.models import MLP, init_params
        >>> v = init_params(MLP((4, 2)), jax.random.PRNGKey(0), (1, 3))
        >>> macs(MLP((4, 2)), v, (3,), batch=2)
        40
    """
    if takes_train(model) and "train" not in kwargs:
        kwargs = {**kwargs, "train": False}
    # capture_intermediates records every submodule's output: its shape gives the positions.
    call = lambda v, a: model.apply(v, a, capture_intermediates=True, mutable=["intermediates"],
                                    **kwargs)[1]["intermediates"]
    x = _input(input_shape, batch)
    shapes = jax.eval_shape(call, variables, x)
    out_shape = {"/".join(path_names(p)[:-2]): s.shape
                 for p, s in jax.tree_util.tree_flatten_with_path(shapes)[0]
                 if len(path_names(p)) >= 2 and path_names(p)[-2] == "__call__"}
    params = variables["params"] if "params" in variables else variables
    total = 0
    for path, kernel in jax.tree_util.tree_flatten_with_path(params)[0]:
        names = path_names(path)
        if names[-1] != "kernel" or np.ndim(kernel) < 2:
            continue
        layer = "/".join(names[:-1])
        if layer not in out_shape:
            raise PruningError(f"macs: no output recorded for layer {layer!r}")
        positions = math.prod(out_shape[layer][:-1])  # batch x spatial positions
        weights = int(np.count_nonzero(np.asarray(kernel))) if nonzero else int(np.size(kernel))
        total += positions * weights
    return total


def param_count(variables: Any, *, nonzero: bool = False) -> int:
    """Number of (nonzero) parameters: the ``'params'`` collection, or every leaf if there is none.

    Example:
        >>> param_count({'params': {'w': jnp.array([1.0, 0.0])}, 'batch_stats': {'m': jnp.ones(3)}})
        2
        >>> param_count({'w': jnp.array([1.0, 0.0])}, nonzero=True)
        1
    """
    tree = variables["params"] if isinstance(variables, Mapping) and "params" in variables else variables
    if nonzero:
        return sum(int(np.count_nonzero(np.asarray(x))) for x in jax.tree.leaves(tree))
    return sum(int(np.size(x)) for x in jax.tree.leaves(tree))


def param_bytes(variables: Any) -> int:
    """Dense storage in bytes of every leaf (all collections: what a checkpoint holds).

    Example:
        >>> param_bytes({'params': {'w': jnp.ones(3)}, 'batch_stats': {'m': jnp.ones(2, jnp.float16)}})
        16
    """
    return sum(int(np.size(x)) * jnp.dtype(jnp.result_type(x)).itemsize for x in jax.tree.leaves(variables))


def latency_ms(model: nn.Module, variables: Mapping, input_shape: Sequence[int], batch: int = 256,
               repeats: int = 50, *, warmup: int = 5, **kwargs: Any) -> float:
    """Median wall time (ms) of the jitted forward pass, after compile and ``warmup`` calls.

    Example:
        >>> from jaxprune.models import MLP, init_params
        >>> v = init_params(MLP((4, 2)), jax.random.PRNGKey(0), (1, 3))
        >>> latency_ms(MLP((4, 2)), v, (3,), batch=8, repeats=3) > 0
        True
    """
    if int(repeats) < 1:
        raise PruningError(f"latency_ms: repeats must be >= 1, got {repeats}")
    spec = _input(input_shape, batch)
    fn = jax.jit(_forward(model, kwargs))
    x = jax.random.normal(jax.random.PRNGKey(0), spec.shape, spec.dtype)
    for _ in range(max(int(warmup), 1)):
        fn(variables, x).block_until_ready()
    times = []
    for _ in range(int(repeats)):
        t0 = time.perf_counter()
        fn(variables, x).block_until_ready()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)
