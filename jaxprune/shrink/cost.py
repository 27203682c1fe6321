"""Cost of a model: XLA FLOPs, traced MACs (dense and nonzero), parameter counts/bytes, latency.

Every function takes the researcher's own model as it is:

* a **linen** module with its full variables (``{'params': ..., 'batch_stats': ...}``) or with bare
  params (wrapped as ``{'params': params}``). A model that reads another collection (BatchNorm's
  ``batch_stats``) which is missing raises :class:`PruningError` naming the collection: statistics
  are never invented, since the caller has them and a silent default would hide a wrong tree.
* an **nnx** module (``variables=None``: its own state), or an nnx module plus an ``nnx.State``
  (for instance pruned ``nnx.Param``s) that replaces the matching part of its state. The model is
  measured on a copy switched to ``.eval()``, as a linen model is called with ``train=False``.

``flops`` asks XLA itself (``jit(f).lower(...).compile().cost_analysis()``), so it counts what the
compiled program really does; a masked model has the dense FLOPs. ``macs`` is read from the traced
jaxpr: every ``dot_general`` and ``conv_general_dilated``, including the ones between two
activations (attention's QKᵀ and AV). See ``docs/shrink.md``.
"""

from __future__ import annotations

import math
import re
import statistics
import time
from fractions import Fraction
from typing import Any, Callable, Mapping, Sequence

import flax.errors
import jax
import jax.extend.core as jcore
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from flax import nnx

from jaxprune.errors import PruningError
from jaxprune.models.common import train_kwargs

__all__ = ["flops", "macs", "param_count", "param_bytes", "latency_ms"]

_MODEL = ("a flax.linen.Module with its variables (full or bare params) or a flax.nnx.Module "
          "(variables=None, or an nnx.State to substitute)")


def _forward(model: Any, variables: Any, kwargs: dict, fn: str) -> tuple[Callable, Any]:
    """A pure ``f(state, x)`` for the model's inference forward and the ``state`` to pass it."""
    if isinstance(model, nnx.Module):
        return _nnx_forward(model, variables, kwargs, fn)
    if not isinstance(model, nn.Module):
        raise PruningError(f"{fn}: model must be {_MODEL}; got {type(model).__name__}")
    if variables is None or isinstance(variables, nnx.State) or not isinstance(variables, Mapping):
        raise PruningError(f"{fn}: a linen model needs its variables as a dict (full variables or "
                           f"bare params), got {type(variables).__name__}")
    if "params" not in variables:
        variables = {"params": variables}  # bare params, as an optax loop holds them
    kwargs = {**train_kwargs(model), **kwargs}  # inference cost: BatchNorm uses its running statistics

    def call(v, x):
        try:
            return model.apply(v, x, **kwargs)
        except flax.errors.ScopeCollectionNotFound as err:
            found = re.search(r'collection "([^"]+)"', str(err))
            col = found.group(1) if found else "?"
            raise PruningError(
                f"{fn}: {type(model).__name__} reads the variable collection {col!r}, which the "
                f"variables passed lack (they hold {sorted(v)}); pass the full variables "
                f"(e.g. {{'params': params, {col!r}: {col}}})") from None

    return call, variables


def _nnx_forward(model: nnx.Module, variables: Any, kwargs: dict, fn: str) -> tuple[Callable, Any]:
    if variables is not None and not isinstance(variables, nnx.State):
        raise PruningError(f"{fn}: an nnx model carries its own state; pass variables=None or an "
                           f"nnx.State to substitute, got {type(variables).__name__}")
    graphdef, state = nnx.split(model)

    def call(s, x):
        full, override = s
        m = nnx.merge(graphdef, full)  # a copy: .eval() below leaves the caller's model alone
        if override is not None:
            nnx.update(m, override)
        m.eval()
        return m(x, **kwargs)

    return call, (state, variables)


def _input(input_shape: Sequence[int], batch: int, dtype: Any) -> jax.ShapeDtypeStruct:
    shape = tuple(int(d) for d in input_shape)
    if int(batch) < 1 or any(d < 1 for d in shape):
        raise PruningError(f"cost: need batch >= 1 and a positive input_shape, got {batch}, {shape}")
    return jax.ShapeDtypeStruct((int(batch), *shape), jnp.dtype(dtype))


def flops(model: Any, variables: Any, input_shape: Sequence[int], batch: int = 1, *,
          input_dtype: Any = jnp.float32, **kwargs: Any) -> float:
    """FLOPs of one jitted forward pass over ``batch`` examples of ``input_shape``, from XLA.

    ``kwargs`` go to the model call; ``input_dtype`` is the input's dtype (``jnp.int32`` for tokens).

    Example:
        >>> from jaxprune.models import MLP, init_params
        >>> v = init_params(MLP((4, 2)), jax.random.PRNGKey(0), (1, 3))
        >>> flops(MLP((4, 2)), v, (3,)) == flops(MLP((4, 2)), v['params'], (3,)) >= 2 * (3 * 4 + 4 * 2)
        True
    """
    fn, state = _forward(model, variables, kwargs, "flops")
    compiled = jax.jit(fn).lower(state, _input(input_shape, batch, input_dtype)).compile()
    cost = compiled.cost_analysis()
    # jax 0.10 returns one dict; older releases returned a list with one dict per computation.
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    if not cost or "flops" not in cost:
        raise PruningError("flops: XLA's cost analysis reported no 'flops' on this backend")
    return float(cost["flops"])


def macs(model: Any, variables: Any, input_shape: Sequence[int], batch: int = 1, *,
         nonzero: bool = False, input_dtype: Any = jnp.float32, **kwargs: Any) -> int:
    """Multiply-accumulates of every ``dot_general`` / ``conv_general_dilated`` in the traced forward.

    A ``dot_general`` costs batch x free(lhs) x free(rhs) x contracting dims; a conv costs output
    elements x input features per group x kernel taps (zero-padded taps count, as XLA computes them).
    Matmuls between two activations (attention's QKᵀ and AV) count; gathers (embedding lookups),
    elementwise ops, norms and bias adds count 0. With ``nonzero=True`` a matmul whose operand is a
    parameter (reached through reshapes, transposes, casts or broadcasts only) is scaled by that
    parameter's nonzero fraction: what a zero-skipping kernel would cost on a masked model.
    A ``while`` loop containing matmuls, or a ``cond`` whose branches differ, is refused.

    Example:
        >>> from jaxprune.models import MLP, init_params
        >>> v = init_params(MLP((4, 2)), jax.random.PRNGKey(0), (1, 3))
        >>> macs(MLP((4, 2)), v, (3,), batch=2)
        40
    """
    fn, state = _forward(model, variables, kwargs, "macs")
    closed = jax.make_jaxpr(fn)(state, _input(input_shape, batch, input_dtype))
    leaves = jax.tree.leaves(state)
    sources = {v: i for i, v in enumerate(closed.jaxpr.invars[:len(leaves)])}
    ratio = _NonzeroRatio(leaves) if nonzero else None
    total = _jaxpr_macs(closed.jaxpr, sources, ratio)
    return int(round(total))


class _NonzeroRatio:
    """nnz/size of state leaves, computed on first use (keys and int leaves are never weights)."""

    def __init__(self, leaves: list) -> None:
        self.leaves, self.cache = leaves, {}

    def __call__(self, index: int) -> Fraction:
        if index not in self.cache:
            leaf = np.asarray(self.leaves[index])
            self.cache[index] = Fraction(int(np.count_nonzero(leaf)), max(int(leaf.size), 1))
        return self.cache[index]


# Primitives that move a parameter's elements without changing which are zero: a weight that reaches
# a matmul through them is still that weight (nnx casts kernels, attention reshapes them).
_LAYOUT = {"reshape", "transpose", "convert_element_type", "squeeze", "expand_dims", "copy", "copy_p",
           "broadcast_in_dim", "reduce_precision", "sharding_constraint", "optimization_barrier"}
# Call-like primitives whose (first) sub-jaxpr takes the equation's operands one to one.
_CALLS = {"jit", "pjit", "closed_call", "core_call", "remat", "checkpoint", "custom_jvp_call",
          "custom_vjp_call", "custom_vjp_call_jaxpr", "custom_lin", "shard_map"}


def _jaxpr_macs(jaxpr: jcore.Jaxpr, sources: dict, ratio: _NonzeroRatio | None) -> Fraction:
    total = Fraction(0)
    sources = dict(sources)
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        src = [sources.get(v) if isinstance(v, jcore.Var) else None for v in eqn.invars]
        if name == "dot_general":
            total += _scaled(_dot_macs(eqn), src, ratio)
        elif name == "conv_general_dilated":
            total += _scaled(_conv_macs(eqn), src, ratio)
        elif name in _LAYOUT and src and src[0] is not None:
            sources[eqn.outvars[0]] = src[0]
        elif name == "scan":
            inner = _sub(eqn.params["jaxpr"])
            n_consts, n_carry = eqn.params["num_consts"], eqn.params["num_carry"]
            # consts and per-step slices of xs keep their leaf's nonzero fraction; a carry does not.
            keep = [s if not n_consts <= i < n_consts + n_carry else None for i, s in enumerate(src)]
            total += int(eqn.params["length"]) * _jaxpr_macs(inner, _bind(inner, keep), ratio)
        elif name == "while":
            body = _sub(eqn.params["body_jaxpr"])
            if _jaxpr_macs(body, {}, None) or _jaxpr_macs(_sub(eqn.params["cond_jaxpr"]), {}, None):
                raise PruningError("macs: the forward pass has a while loop with matmuls inside; its "
                                   "trip count is unknown when tracing, so its MACs cannot be counted")
        elif name == "cond":
            counts = {_jaxpr_macs(_sub(b), _bind(_sub(b), src[1:]), ratio) for b in eqn.params["branches"]}
            if len(counts) > 1:
                raise PruningError(f"macs: a lax.cond/switch in the forward pass has branches with "
                                   f"different MACs {sorted(float(c) for c in counts)}; which runs "
                                   f"depends on data, so the count is refused")
            total += counts.pop()
        else:
            for sub in _subjaxprs(eqn):
                bound = _bind(sub, src) if name in _CALLS else {}
                total += _jaxpr_macs(sub, bound, ratio)
    return total


def _sub(j: Any) -> jcore.Jaxpr:
    return j.jaxpr if isinstance(j, jcore.ClosedJaxpr) else j


def _bind(sub: jcore.Jaxpr, src: list) -> dict:
    if len(sub.invars) != len(src):
        return {}
    return {v: s for v, s in zip(sub.invars, src) if s is not None}


def _subjaxprs(eqn: Any) -> list:
    out = []
    for value in eqn.params.values():
        for item in value if isinstance(value, (tuple, list)) else (value,):
            if isinstance(item, (jcore.Jaxpr, jcore.ClosedJaxpr)):
                out.append(_sub(item))
    return out


def _dot_macs(eqn: Any) -> int:
    (_, rhs_contract), (_, rhs_batch) = eqn.params["dimension_numbers"]
    lhs, rhs = (v.aval.shape for v in eqn.invars[:2])
    rhs_free = [d for i, d in enumerate(rhs) if i not in set(rhs_contract) | set(rhs_batch)]
    # lhs elements = batch x free(lhs) x contracting; each meets every free column of rhs once.
    return math.prod(lhs) * math.prod(rhs_free)


def _conv_macs(eqn: Any) -> int:
    rhs = eqn.invars[1].aval.shape
    out = eqn.outvars[0].aval.shape
    rhs_spec = eqn.params["dimension_numbers"].rhs_spec  # (out features, in features, *spatial)
    taps = math.prod(rhs[d] for d in rhs_spec[2:])
    return math.prod(out) * rhs[rhs_spec[1]] * taps


def _scaled(count: int, src: list, ratio: _NonzeroRatio | None) -> Fraction:
    """Dense count, or (nonzero) scaled by the weight operand's nonzero fraction.

    Each weight element takes part in the same number of multiply-adds, so nnz/size is exact. A
    product of two weights (or of two activations) keeps the dense count.
    """
    weights = [s for s in src[:2] if s is not None]
    if ratio is None or len(weights) != 1:
        return Fraction(count)
    return count * ratio(weights[0])


def _param_tree(variables: Any) -> Any:
    """The trainable parameters: linen's ``'params'`` collection, an nnx module's or State's Params."""
    if isinstance(variables, nnx.Module):
        return nnx.state(variables, nnx.Param)
    if isinstance(variables, nnx.State):
        # Keep nnx.Param entries only: a full nnx state also holds BatchStat, RNG keys and counters.
        flat = jax.tree_util.tree_flatten_with_path(
            variables, is_leaf=lambda x: isinstance(x, nnx.Variable))[0]
        if any(isinstance(v, nnx.Variable) for _, v in flat):
            return [v for _, v in flat if isinstance(v, nnx.Param)]
        return variables
    if isinstance(variables, Mapping) and "params" in variables:
        return variables["params"]
    return variables


def param_count(variables: Any, *, nonzero: bool = False) -> int:
    """Number of (nonzero) parameters: linen ``'params'``, the ``nnx.Param``s of an nnx module or
    ``nnx.State``, or every leaf of any other tree.

    Example:
        >>> param_count({'params': {'w': jnp.array([1.0, 0.0])}, 'batch_stats': {'m': jnp.ones(3)}})
        2
        >>> param_count({'w': jnp.array([1.0, 0.0])}, nonzero=True)
        1
        >>> param_count(nnx.BatchNorm(3, rngs=nnx.Rngs(0)))  # scale and bias; not the statistics
        6
    """
    tree = _param_tree(variables)
    if nonzero:
        return sum(int(np.count_nonzero(np.asarray(x))) for x in jax.tree.leaves(tree))
    return sum(int(np.size(x)) for x in jax.tree.leaves(tree))


def param_bytes(variables: Any) -> int:
    """Dense storage in bytes of every array leaf (all collections: what a checkpoint holds).

    An nnx module counts its whole state; PRNG key leaves count their raw key data.

    Example:
        >>> param_bytes({'params': {'w': jnp.ones(3)}, 'batch_stats': {'m': jnp.ones(2, jnp.float16)}})
        16
    """
    if isinstance(variables, nnx.Module):
        variables = nnx.state(variables)
    total = 0
    for x in jax.tree.leaves(variables):
        if isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            x = jax.random.key_data(x)
        total += int(np.size(x)) * jnp.dtype(jnp.result_type(x)).itemsize
    return total


def latency_ms(model: Any, variables: Any, input_shape: Sequence[int], batch: int = 256,
               repeats: int = 50, *, warmup: int = 5, input_dtype: Any = jnp.float32,
               **kwargs: Any) -> float:
    """Median wall time (ms) of the jitted forward pass, after compile and ``warmup`` calls.

    Example:
        >>> from jaxprune.models import MLP, init_params
        >>> v = init_params(MLP((4, 2)), jax.random.PRNGKey(0), (1, 3))
        >>> latency_ms(MLP((4, 2)), v, (3,), batch=8, repeats=3) > 0
        True
    """
    if int(repeats) < 1:
        raise PruningError(f"latency_ms: repeats must be >= 1, got {repeats}")
    spec = _input(input_shape, batch, input_dtype)
    call, state = _forward(model, variables, kwargs, "latency_ms")
    fn = jax.jit(call).lower(state, spec).compile()  # a bad model or tree fails here, before timing
    if jnp.issubdtype(spec.dtype, jnp.integer):  # token ids: valid indices 0 and 1
        x = jax.random.randint(jax.random.PRNGKey(0), spec.shape, 0, 2, spec.dtype)
    else:
        x = jax.random.normal(jax.random.PRNGKey(0), spec.shape, spec.dtype)
    for _ in range(max(int(warmup), 1)):
        jax.block_until_ready(fn(state, x))
    times = []
    for _ in range(int(repeats)):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(state, x))
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)
