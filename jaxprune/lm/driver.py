"""Sequential one-shot pruning of a transformer LM from calibration sequences.

The blocks are pruned **in order**: block ``i`` sees the calibration activations produced by the
already-pruned blocks ``0 .. i-1`` (both papers do this). For each block:

1. one pass over the calibration batches through the dense block streams, per linear layer, the
   statistic its method needs (Wanda: ``sum x**2`` per input; SparseGPT: ``H = sum x x^T``, float32)
   — the inputs of every ``nn.Dense`` call are read with ``flax.linen.intercept_methods``, so
   nothing is hand-listed and no layer's activations are kept beyond one batch;
2. every linear layer of the block is pruned by its layer function (:mod:`jaxprune.lm.layers`);
3. a second pass measures each layer's reconstruction error ``||X (W - W_hat)||^2`` on the same
   inputs (and ``||X W||^2`` for scale), and a third computes the pruned block's outputs, the next
   block's inputs.

The model follows the LM protocol of :class:`jaxprune.models.gpt.GPT` (``embed``, ``make_block``,
``block_names``); an :class:`~jaxprune.models.gpt.NnxGPT` is pruned through its linen twin (same
params layout) and gets ``nnx.State`` trees back. Only the Dense kernels inside the blocks are pruned;
embeddings, norms, biases and the unembedding stay dense (all-True masks), as in both papers.
"""

from __future__ import annotations

import resource
import time
from typing import Any, NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from jaxprune.counts import check_sparsity_value
from jaxprune.errors import PruningError
from jaxprune.lm.layers import check_layer_args, magnitude_layer, sparsegpt_layer, wanda_layer
from jaxprune.train.parallel import shard_state

__all__ = ["METHODS", "LayerReport", "LMPruneResult", "check_calibration", "prune_lm", "dense_inputs"]

METHODS = ("magnitude", "wanda", "sparsegpt")
_PROTOCOL = ("embed", "make_block", "block_names")
_STAT = {"magnitude": None, "wanda": "col_norms_sq", "sparsegpt": "hessian"}


class LayerReport(NamedTuple):
    """One pruned linear layer: its path, shape, kept count, ``||X dW||^2`` and ``||X W||^2``."""

    path: str
    shape: tuple[int, int]
    kept: int
    error: float
    dense_norm: float

    @property
    def relative_error(self) -> float:
        return self.error / self.dense_norm if self.dense_norm > 0 else 0.0


class LMPruneResult(NamedTuple):
    """Pruned params and bool masks (the input's tree structure), per-layer reports, wall seconds,
    and the peak memory: the device's ``peak_bytes_in_use`` where it reports one, else the process's
    peak resident set (``ru_maxrss``, which on CPU includes everything the process did before)."""

    params: Any
    masks: Any
    layers: tuple[LayerReport, ...]
    seconds: float
    peak_bytes: Optional[int]


def dense_inputs(block: nn.Module, block_params: Any, x: jax.Array) -> tuple[jax.Array, dict]:
    """Applies ``block`` and returns its output and the input of every ``nn.Dense`` it called,
    keyed by the Dense's path inside the block (``'query'``, ``'mlp/fc'`` ...).

    >>> from jaxprune.models.gpt import GPTBlock
    >>> b = GPTBlock(8, 2)
    >>> p = b.init(jax.random.PRNGKey(0), jnp.ones((1, 3, 8)))['params']
    >>> sorted(dense_inputs(b, p, jnp.ones((1, 3, 8)))[1])
    ['fc', 'key', 'out', 'proj', 'query', 'value']
    """
    seen: dict[str, jax.Array] = {}

    def capture(fn, args, kwargs, context):
        if isinstance(context.module, nn.Dense) and context.method_name == "__call__":
            seen["/".join(context.module.path)] = args[0]
        return fn(*args, **kwargs)

    with nn.intercept_methods(capture):
        y = block.apply({"params": block_params}, x)
    return y, seen


def _get(tree: Any, path: str) -> Any:
    for k in path.split("/"):
        tree = tree[k]
    return tree


def _set(tree: dict, path: str, value: Any) -> dict:
    head, _, rest = path.partition("/")
    out = dict(tree)
    out[head] = value if not rest else _set(tree[head], rest, value)
    return out


def check_calibration(model: Any, calibration: Any) -> np.ndarray:
    """Checks a calibration set: an int ``(num, length)`` array, ``num >= 1``, ``length`` equal to the
    model's context, token ids within the vocabulary. Returns it as int32.

    >>> from jaxprune.models.gpt import gpt_nano
    >>> check_calibration(gpt_nano(context=4), np.zeros((2, 4), int)).shape
    (2, 4)
    """
    arr = np.asarray(calibration)
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise PruningError(f"prune_lm: calibration must be a non-empty (num, length) array of token ids,"
                           f" got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise PruningError(f"prune_lm: calibration must hold integer token ids, got {arr.dtype}")
    context = getattr(model, "context", None)
    if context is not None and arr.shape[1] != int(context):
        raise PruningError(f"prune_lm: calibration sequences have length {arr.shape[1]} but the model's "
                           f"context is {context}; draw windows of {context} tokens "
                           f"(jaxprune.data.text.token_windows)")
    vocab = getattr(model, "vocab_size", None)
    if vocab is not None and (arr.min() < 0 or arr.max() >= int(vocab)):
        raise PruningError(f"prune_lm: calibration token ids must be in [0, {vocab}), got "
                           f"[{arr.min()}, {arr.max()}]")
    return arr.astype(np.int32)


def _check_model(model: Any) -> None:
    missing = [a for a in _PROTOCOL if not callable(getattr(model, a, None))]
    if missing:
        raise PruningError(
            f"prune_lm: {type(model).__name__} is not a transformer LM the driver can walk: it lacks "
            f"{', '.join(missing)} (see jaxprune.models.gpt.GPT for the protocol)")


def _prune_kernel(method, kernel, stat, sparsity, nm, per, blocksize, percdamp, quant_bits, path):
    try:
        if method == "magnitude":
            return magnitude_layer(kernel, sparsity, nm, per=per)
        if method == "wanda":
            return wanda_layer(kernel, stat, sparsity, nm)
        return sparsegpt_layer(kernel, stat, sparsity, nm, blocksize=min(blocksize, kernel.shape[0]),
                               percdamp=percdamp, quant_bits=quant_bits)
    except PruningError as err:
        raise PruningError(f"prune_lm: layer '{path}': {err}") from None


def _peak_bytes() -> Optional[int]:
    stats = jax.local_devices()[0].memory_stats()
    if stats and "peak_bytes_in_use" in stats:
        return int(stats["peak_bytes_in_use"])
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB


def _batches(h: jax.Array, batch_size: int):
    for s in range(0, h.shape[0], batch_size):
        yield h[s : s + batch_size]


def prune_lm(model: Any, variables: Any, calibration: Any, method: str = "sparsegpt",
             sparsity: float = 0.5, *, nm: Optional[tuple[int, int]] = None, batch_size: int = 16,
             blocksize: int = 128, percdamp: float = 0.01, quant_bits: Optional[int] = None,
             per: str = "row", mesh: Optional[Mesh] = None) -> LMPruneResult:
    """Prunes every linear layer in the blocks of ``model``, block by block, from ``calibration``.

    Args:
      model: a linen LM with the :class:`~jaxprune.models.gpt.GPT` protocol, or an ``NnxGPT``.
      variables: the linen ``{'params': ...}`` dict or its ``params`` subtree (ignored for nnx).
      calibration: int token ids ``(num, context)``, e.g. ``token_windows(train, 128, context)``.
      method: ``'magnitude'``, ``'wanda'`` or ``'sparsegpt'``; ``nm=(2, 4)`` for N:M.
      per: magnitude's comparison group, ``'row'`` (per output) or ``'layer'``.
      mesh: a :class:`jax.sharding.Mesh`: params are placed by the kit's rule
        (:func:`jaxprune.train.parallel.shard_state`: the output axis of a kernel over ``model``), and
        every pruned kernel and mask stays where its layer lives. SparseGPT's column pass is
        independent per output row, so a layer's update runs on the devices that hold its rows.

    >>> from jaxprune.models.gpt import gpt_nano
    >>> m = gpt_nano(vocab_size=5, context=4, num_layers=1, width=8, num_heads=2)
    >>> v = m.init(jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32))
    >>> r = prune_lm(m, v, np.ones((3, 4), np.int32), 'wanda', 0.5)
    >>> [(l.path, l.kept) for l in r.layers][:2]
    [('blocks_0/query/kernel', 32), ('blocks_0/key/kernel', 32)]
    """
    if method not in METHODS:
        raise PruningError(f"prune_lm: unknown method={method!r}; known: {', '.join(METHODS)}")
    check_sparsity_value(sparsity, "prune_lm: sparsity")
    if isinstance(model, nnx.Module):
        if not callable(getattr(model, "linen_twin", None)):
            _check_model(model)
        state = nnx.state(model, nnx.Param)
        res = prune_lm(model.linen_twin(), nnx.to_pure_dict(state), calibration, method, sparsity, nm=nm,
                       batch_size=batch_size, blocksize=blocksize, percdamp=percdamp,
                       quant_bits=quant_bits, per=per, mesh=mesh)

        def as_state(pure):
            out = jax.tree.map(lambda x: x, state)
            nnx.replace_by_pure_dict(out, pure)
            return out

        return res._replace(params=as_state(res.params), masks=as_state(res.masks))
    _check_model(model)
    if not (isinstance(batch_size, int) and batch_size >= 1):
        raise PruningError(f"prune_lm: batch_size must be a positive int, got {batch_size!r}")
    calib = check_calibration(model, calibration)
    wrapped = isinstance(variables, dict) and set(variables) == {"params"}
    params = variables["params"] if wrapped else variables
    if mesh is not None:
        params = shard_state(mesh, params)
    start = time.perf_counter()
    block = model.make_block()
    kind = _STAT[method]

    @jax.jit
    def stats_step(bp, x, acc):
        _, seen = dense_inputs(block, bp, x)
        new = {}
        for p, a in seen.items():
            a = a.reshape((-1, a.shape[-1])).astype(jnp.float32)
            new[p] = acc[p] + (a.T @ a if kind == "hessian" else jnp.sum(a * a, axis=0))
        return new

    @jax.jit
    def error_step(bp, deltas, x, acc):
        _, seen = dense_inputs(block, bp, x)
        out = {}
        for p, a in seen.items():
            a = a.reshape((-1, a.shape[-1])).astype(jnp.float32)
            k = _get(bp, p)["kernel"].astype(jnp.float32)
            out[p] = acc[p] + jnp.stack([jnp.sum((a @ deltas[p]) ** 2), jnp.sum((a @ k) ** 2)])
        return out

    forward = jax.jit(lambda bp, x: block.apply({"params": bp}, x))
    h = model.apply({"params": params}, jnp.asarray(calib), method="embed")
    new_params = params
    masks = jax.tree.map(lambda x: jnp.ones(jnp.shape(x), bool), params)
    reports = []
    for name in model.block_names():
        bp = params[name]
        order: list[str] = []  # call order of the Dense layers (a returned dict comes back sorted)

        def probe(b, x):
            seen = dense_inputs(block, b, x)[1]
            order.extend(seen)
            return seen

        shapes = jax.eval_shape(probe, bp, h[:1])
        paths = list(order)
        for p in paths:
            check_layer_args(f"{name}/{p}/kernel", _get(bp, p)["kernel"], sparsity, nm)
        if kind is not None:
            acc = {p: jnp.zeros((s.shape[-1],) * (2 if kind == "hessian" else 1), jnp.float32)
                   for p, s in shapes.items()}
            for xb in _batches(h, batch_size):
                acc = stats_step(bp, xb, acc)
        new_bp, deltas = bp, {}
        for p in paths:
            kernel = _get(bp, p)["kernel"]
            full = f"{name}/{p}/kernel"
            pruned, keep = _prune_kernel(method, kernel, None if kind is None else acc[p], sparsity, nm,
                                         per, blocksize, percdamp, quant_bits, full)
            if mesh is not None:  # results live where the layer lives
                pruned, keep = (jax.device_put(a, kernel.sharding) for a in (pruned, keep))
            deltas[p] = (kernel - pruned).astype(jnp.float32)
            new_bp = _set(new_bp, f"{p}/kernel", pruned)
            masks = _set(masks, full, keep)
            reports.append([full, tuple(kernel.shape), int(jnp.sum(keep))])
        err = {p: jnp.zeros((2,), jnp.float32) for p in paths}
        for xb in _batches(h, batch_size):
            err = error_step(bp, deltas, xb, err)
        for r, p in zip(reports[-len(paths):], paths):
            r += [float(err[p][0]), float(err[p][1])]
        h = jnp.concatenate([forward(new_bp, xb) for xb in _batches(h, batch_size)])
        new_params = _set(new_params, name, new_bp)
    jax.block_until_ready(new_params)
    seconds = time.perf_counter() - start
    out_params = {"params": new_params} if wrapped else new_params
    out_masks = {"params": masks} if wrapped else masks
    return LMPruneResult(out_params, out_masks, tuple(LayerReport(*r) for r in reports), seconds,
                         _peak_bytes())
