"""Mixed precision of a run (``precision=bf16|f16``): the model wrapper every method trains through.

* ``precision=bf16|f16``: the whole run computes in half precision while params, optimizer state and
  logits stay float32 (:class:`PolicyModel`). float16 adds *static* loss scaling (the loss gradient is
  multiplied by :data:`F16_LOSS_SCALE` in the backward pass, the float32 gradients divided by it, and
  gradient entries that overflowed set to 0 — a static scale, not jmp's dynamic one, so that every
  method's optimizer stays as it is). Evaluation uses the same policy, so the reported accuracy is
  that of the half-precision model.

:data:`BITS` are the ``quantize=`` values (the quantization stage is :mod:`jaxprune.methods.quantized`).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxprune.errors import ConfigError
from jaxprune.models.common import takes_train
from jaxprune.quant import Policy, get_policy

__all__ = ["PolicyModel", "with_precision", "unwrap", "rewrap", "BITS", "F16_LOSS_SCALE"]

BITS = {"none": None, "int8": 8, "int4": 4}
F16_LOSS_SCALE = 2.0 ** 12


@jax.custom_vjp
def _scale_grad(x: jax.Array, scale: float) -> jax.Array:
    return x


def _scale_grad_fwd(x, scale):
    return x, scale


def _scale_grad_bwd(scale, g):
    return g * jnp.asarray(scale, g.dtype), None


_scale_grad.defvjp(_scale_grad_fwd, _scale_grad_bwd)


def _to_compute(x: jax.Array, dtype: Any, scale: float | None) -> jax.Array:
    """Cast to ``dtype``; the backward pass casts back to float32, divides by ``scale`` and zeroes
    entries that overflowed (so one overflow cannot poison Adam's moments)."""

    @jax.custom_vjp
    def cast(v):
        return v.astype(dtype)

    def fwd(v):
        return v.astype(dtype), None

    def bwd(_, g):
        g = g.astype(jnp.float32) / scale
        return (jnp.where(jnp.isfinite(g), g, 0.0),)

    if scale is None:
        return x.astype(dtype)
    cast.defvjp(fwd, bwd)
    return cast(x)


class PolicyModel:
    """A linen model run under a mixed-precision :class:`~jaxprune.quant.Policy`.

    ``apply`` casts params and inputs to the compute dtype and the outputs (and updated collections
    such as BatchNorm statistics) back to float32; gradients reach the float32 params through the
    cast. With ``loss_scale`` (float16) the backward pass starts from ``loss_scale`` x the logits'
    gradient and the float32 param gradients are divided by it again.

    Example:
        >>> from jaxprune.models import MLP, init_params
        >>> m = PolicyModel(MLP((4, 2)), get_policy('bf16'))
        >>> v = init_params(MLP((4, 2)), jax.random.PRNGKey(0), (1, 3))
        >>> m.apply(v, jnp.ones((1, 3))).dtype
        dtype('float32')
    """

    def __init__(self, inner: Any, policy: Policy, loss_scale: float | None = None):
        self.inner, self.policy, self.loss_scale = inner, policy, loss_scale

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:  # signature for loop._call
        raise TypeError("PolicyModel is used through .apply(variables, x, ...)")

    def apply(self, variables: Any, x: jax.Array, **kwargs: Any) -> Any:
        if not takes_train(self.inner):
            kwargs.pop("train", None)
        dtype = self.policy.compute_dtype

        def down(v: Any) -> Any:
            if hasattr(v, "dtype") and jnp.issubdtype(v.dtype, jnp.floating):
                return _to_compute(v, dtype, self.loss_scale)
            return v

        out = self.inner.apply(jax.tree.map(down, variables), jnp.asarray(x).astype(dtype), **kwargs)
        if kwargs.get("mutable"):
            logits, state = out
            return self._up(logits), jax.tree.map(self._to_f32, state)
        return self._up(out)

    @staticmethod
    def _to_f32(v: Any) -> Any:
        return v.astype(jnp.float32) if jnp.issubdtype(v.dtype, jnp.floating) else v

    def _up(self, logits: jax.Array) -> jax.Array:
        logits = self.policy.cast_to_output(logits)
        return logits if self.loss_scale is None else _scale_grad(logits, self.loss_scale)


def unwrap(model: Any) -> Any:
    """The linen model inside a :class:`PolicyModel` (or ``model`` itself)."""
    return model.inner if isinstance(model, PolicyModel) else model


def rewrap(like: Any, model: Any) -> Any:
    """``model`` under the same policy as ``like`` (for a model rebuilt by ``shrink``)."""
    return PolicyModel(model, like.policy, like.loss_scale) if isinstance(like, PolicyModel) else model


def with_precision(run: Any) -> Any:
    """The run with its model under the config's ``precision`` policy (``f32``: unchanged)."""
    name = run.config.get("precision", "f32")
    try:
        policy = get_policy(name)
    except ValueError as err:
        raise ConfigError(f"config field 'precision': {err}") from err
    if policy.param_dtype != jnp.float32 or policy.output_dtype != jnp.float32:
        raise ConfigError(f"config field 'precision': params and output must stay float32, got {name!r}")
    if policy.compute_dtype == jnp.float32:
        return run
    scale = F16_LOSS_SCALE if policy.compute_dtype == jnp.float16 else None
    return run._replace(model=PolicyModel(run.model, policy, scale))
