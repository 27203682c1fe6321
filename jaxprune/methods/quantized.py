"""Mixed precision and quantization for ``jaxprune run``: ``precision=``, ``quantize=``, ``qat_epochs=``.

* ``precision=bf16|f16``: the whole run computes in half precision while params, optimizer state and
  logits stay float32 (:class:`PolicyModel`). float16 adds *static* loss scaling (the loss gradient is
  multiplied by :data:`F16_LOSS_SCALE` in the backward pass, the float32 gradients divided by it, and
  gradient entries that overflowed set to 0 — a static scale, not jmp's dynamic one, so that every
  method's optimizer stays as it is). Evaluation uses the same
  policy, so the reported accuracy is that of the half-precision model.
* ``quantize=int8|int4``: after the method (and its fine-tuning), ``qat_epochs`` of pruning-preserving
  quantization-aware training (PQAT: fake-quant forward with straight-through gradients, masked Adam so
  pruned weights stay exactly 0), then symmetric per-output-channel post-training quantization of the
  kernels; ``quantized_test_accuracy`` is the accuracy of the dequantized model.
* Every run reports ``bytes``: the size of the final params in each format of
  :func:`jaxprune.quant.size_report` (dense float32, dense int8, bitmask + values, CSR, COO, gzip of the
  serialized tree) — quantized formats at the run's bit width (8 when ``quantize=none``).
"""

from __future__ import annotations

import inspect
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxprune.errors import ConfigError
from jaxprune.experiment import Run, _acc, _fit
from jaxprune.quant import Policy, dequantize, fake_quant_tree, get_policy, quantize, size_report
from jaxprune.train import create_train_state, masked

__all__ = ["PolicyModel", "with_precision", "quantize_stage", "unwrap", "rewrap", "BITS", "F16_LOSS_SCALE"]

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
        takes_train = "train" in inspect.signature(type(self.inner).__call__).parameters
        if not takes_train:
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


def with_precision(run: Run) -> Run:
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


def quantize_stage(run: Run, out: dict) -> dict:
    """PQAT for ``qat_epochs`` then post-training quantization; adds ``quantized_test_accuracy``.

    ``out`` is a method's result (``params``, ``model_state``, ``masks``); the params returned are the
    QAT-trained float params (still exactly zero where masked).
    """
    c = run.config
    if c.quantize not in BITS:
        raise ConfigError(f"config field 'quantize' must be one of {sorted(BITS)}, got {c.quantize!r}")
    if not isinstance(c.qat_epochs, int) or c.qat_epochs < 0:
        raise ConfigError(f"config field 'qat_epochs' must be an integer >= 0, got {c.qat_epochs!r}")
    bits = BITS[c.quantize]
    if bits is None:
        if c.qat_epochs:
            raise ConfigError("config field 'qat_epochs' needs quantize=int8 or int4")
        return out
    if "final_model" in out:
        raise ConfigError("quantize with shrink=true is not supported yet: quantize the shrunk model "
                          "with jaxprune.quant.quantize")
    params, model_state, masks = out["params"], out["model_state"], out["masks"]
    out = dict(out)
    if c.qat_epochs:
        out["float_test_accuracy"] = _acc(run, params, model_state)
        tx = masked(optax.adam(c.get("finetune_learning_rate") or c.learning_rate), masks)
        st = create_train_state({"params": params, **model_state}, tx)
        st, _ = _fit(run, st, tx, c.qat_epochs, c.epochs + c.finetune_epochs, "qat",
                     loss_transform=lambda p: fake_quant_tree(p, bits))
        params, model_state = st.params, st.model_state
        out.update(params=params, model_state=model_state, test_accuracy=_acc(run, params, model_state))
    deq = dequantize(quantize(params, bits))
    out["quantized_test_accuracy"] = _acc(run, deq, model_state)
    out["quantize_bits"] = bits
    return out
