"""Mixed-precision policies and dynamic loss scaling (jmp-style), as pure functions.

Casting only touches floating leaves, so boolean masks and integer leaves pass unchanged, and a
cast never turns 0.0 into anything else: pruned zeros survive a round trip through bf16/f16. (A cast
*can* add zeros: float16 flushes ``|w| < 6e-8`` to 0; bfloat16 has float32's range.)

Dynamic loss scaling (Micikevicius et al. 2018, "Mixed Precision Training"): multiply the loss by
``scale`` so float16 gradients do not underflow; if any gradient is non-finite, skip the step and
halve ``scale``; after ``period`` finite steps in a row, double it.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxprune.errors import PruningError

_DTYPES = {
    "f32": jnp.float32, "float32": jnp.float32, "full": jnp.float32,
    "bf16": jnp.bfloat16, "bfloat16": jnp.bfloat16,
    "f16": jnp.float16, "float16": jnp.float16, "half": jnp.float16,
}
_FIELDS = {"p": "param_dtype", "params": "param_dtype", "param": "param_dtype",
           "c": "compute_dtype", "compute": "compute_dtype",
           "o": "output_dtype", "output": "output_dtype"}


def _cast_floating(tree: Any, dtype: Any) -> Any:
    def cast(x: Any) -> Any:
        if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating):
            return jnp.asarray(x).astype(dtype)
        return x

    return jax.tree.map(cast, tree)


class Policy(NamedTuple):
    """Which dtype params are stored in, computed in, and returned in.

    >>> import jax.numpy as jnp
    >>> p = get_policy('bf16')
    >>> p.cast_to_compute({'w': jnp.zeros(2), 'mask': jnp.ones(2, bool)})['w'].dtype
    dtype(bfloat16)
    """

    param_dtype: Any
    compute_dtype: Any
    output_dtype: Any

    def cast_to_param(self, tree: Any) -> Any:
        """Cast floating leaves to ``param_dtype`` (e.g. gradients before the optimizer)."""
        return _cast_floating(tree, self.param_dtype)

    def cast_to_compute(self, tree: Any) -> Any:
        """Cast floating leaves (params, inputs) to ``compute_dtype`` for the forward pass."""
        return _cast_floating(tree, self.compute_dtype)

    def cast_to_output(self, tree: Any) -> Any:
        """Cast floating leaves of the model output (logits, loss) to ``output_dtype``."""
        return _cast_floating(tree, self.output_dtype)


def get_policy(name: str) -> Policy:
    """Parse a policy: ``'f32'`` (all float32), ``'bf16'``/``'f16'`` (float32 params and output,
    half compute: the usual mixed-precision recipe), or explicit ``'params=f32,compute=f16,output=f32'``
    (keys ``p``/``c``/``o`` also work).

    >>> get_policy('f16').compute_dtype.__name__, get_policy('p=bf16,c=bf16,o=f32').param_dtype.__name__
    ('float16', 'bfloat16')
    """
    if not isinstance(name, str):
        raise PruningError(f"policy: expected a string like 'bf16', got {name!r}")
    text = name.strip().lower()
    if "=" not in text:
        if text not in _DTYPES:
            raise PruningError(f"policy: unknown dtype {name!r}; expected one of {sorted(_DTYPES)}")
        return Policy(jnp.float32, _DTYPES[text], jnp.float32)
    fields = {"param_dtype": jnp.float32, "compute_dtype": jnp.float32, "output_dtype": jnp.float32}
    for part in text.split(","):
        key, _, value = (s.strip() for s in part.partition("="))
        if key not in _FIELDS or value not in _DTYPES:
            raise PruningError(f"policy: cannot parse {part.strip()!r} in {name!r}; "
                               f"keys {sorted(_FIELDS)}, dtypes {sorted(_DTYPES)}")
        fields[_FIELDS[key]] = _DTYPES[value]
    return Policy(**fields)


class LossScale(NamedTuple):
    """Dynamic loss-scale state: the current ``scale`` and finite steps since it last changed."""

    scale: jax.Array
    counter: jax.Array


def init_loss_scale(initial: float = 2.0**15) -> LossScale:
    """Start state for dynamic loss scaling (2**15 is the usual float16 start).

    >>> init_loss_scale(8.0)
    LossScale(scale=Array(8., dtype=float32), counter=Array(0, dtype=int32))
    """
    if not initial > 0:
        raise PruningError(f"initial: loss scale must be positive, got {initial!r}")
    return LossScale(jnp.asarray(initial, jnp.float32), jnp.asarray(0, jnp.int32))


def scale_loss(loss: jax.Array, state: LossScale) -> jax.Array:
    """``loss * scale`` in the loss's dtype (differentiate this, not the raw loss).

    >>> scale_loss(jnp.asarray(0.5), init_loss_scale(4.0))
    Array(2., dtype=float32)
    """
    return loss * state.scale.astype(loss.dtype)


def unscale_grads(grads: Any, state: LossScale) -> Any:
    """Divide floating gradient leaves by ``scale``, keeping each leaf's dtype.

    Cast float16 gradients to float32 first (``policy.cast_to_param``) so unscaling cannot underflow.

    >>> unscale_grads({'w': jnp.array([4.0, 0.0])}, init_loss_scale(4.0))['w'].tolist()
    [1.0, 0.0]
    """
    inv = 1.0 / state.scale

    def unscale(g: Any) -> Any:
        if hasattr(g, "dtype") and jnp.issubdtype(g.dtype, jnp.floating):
            return (g * inv.astype(g.dtype)).astype(g.dtype)
        return g

    return jax.tree.map(unscale, grads)


def grads_finite(grads: Any) -> jax.Array:
    """A scalar bool: every floating leaf of ``grads`` is free of NaN and inf.

    >>> grads_finite({'a': jnp.ones(2), 'b': jnp.array([1.0, jnp.inf])})
    Array(False, dtype=bool)
    """
    flags = [jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)
             if hasattr(g, "dtype") and jnp.issubdtype(g.dtype, jnp.floating)]
    return jnp.all(jnp.stack(flags)) if flags else jnp.asarray(True)


def adjust_loss_scale(state: LossScale, finite: jax.Array, *, period: int = 2000,
                      factor: float = 2.0, min_scale: float = 1.0,
                      max_scale: float = 2.0**24) -> LossScale:
    """Next loss-scale state: on overflow divide by ``factor`` (not below ``min_scale``) and reset the
    counter; after ``period`` finite steps in a row multiply by ``factor`` (not above ``max_scale``).

    >>> s = adjust_loss_scale(init_loss_scale(8.0), jnp.asarray(False))
    >>> float(s.scale), int(s.counter)
    (4.0, 0)
    >>> s = adjust_loss_scale(adjust_loss_scale(s, True, period=2), True, period=2)
    >>> float(s.scale), int(s.counter)
    (8.0, 0)
    """
    finite = jnp.asarray(finite, bool)
    counter = state.counter + 1
    grow = finite & (counter >= period)
    grown = jnp.minimum(state.scale * factor, max_scale)
    shrunk = jnp.maximum(state.scale / factor, min_scale)
    scale = jnp.where(finite, jnp.where(grow, grown, state.scale), shrunk)
    counter = jnp.where(finite & ~grow, counter, 0).astype(jnp.int32)
    return LossScale(scale.astype(jnp.float32), counter)
