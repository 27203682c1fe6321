"""The quantization stage of ``jaxprune run``: ``quantize=``, ``qat_epochs=``.

* ``precision=bf16|f16`` (mixed precision) is the harness's model wrapper, not a stage:
  :mod:`jaxprune.harness.precision` (``PolicyModel``, ``with_precision``, ``unwrap``, ``rewrap``).
* ``quantize=int8|int4``: after the method (and its fine-tuning), ``qat_epochs`` of pruning-preserving
  quantization-aware training (PQAT: fake-quant forward with straight-through gradients, masked Adam so
  pruned weights stay exactly 0), then symmetric per-output-channel post-training quantization of the
  kernels; ``quantized_test_accuracy`` is the accuracy of the dequantized model.
* Every run reports ``bytes``: the size of the final params in each format of
  :func:`jaxprune.quant.size_report` (dense float32, dense int8, bitmask + values, CSR, COO, gzip of the
  serialized tree) — quantized formats at the run's bit width (8 when ``quantize=none``).
"""

from __future__ import annotations

import optax

from jaxprune.errors import ConfigError
from jaxprune.harness import MethodOutput, Run, accuracy, finetune_learning_rate, masked_train
from jaxprune.harness.precision import BITS
from jaxprune.quant import dequantize, fake_quant_tree, quantize

__all__ = ["quantize_stage"]


def quantize_stage(run: Run, out: MethodOutput) -> MethodOutput:
    """PQAT for ``qat_epochs`` then post-training quantization; adds ``quantized_test_accuracy``.

    ``out`` is a method's result; the params returned are the QAT-trained float params (still exactly
    zero where masked).
    """
    c = run.config  # its fields were validated before data loaded (harness.validate_config)
    bits = BITS[c.quantize]
    if bits is None:
        return out
    if out.final_model is not None:
        raise ConfigError("quantize with shrink=true is not supported yet: quantize the shrunk model "
                          "with jaxprune.quant.quantize")
    params, model_state = out.params, out.model_state
    extra = {}
    if c.qat_epochs:
        extra["float_test_accuracy"] = accuracy(run, params, model_state)
        params, model_state = masked_train(run, params, model_state, out.masks,
                                           optax.adam(finetune_learning_rate(c)), epochs=c.qat_epochs,
                                           first_epoch=c.epochs + c.finetune_epochs, desc="qat",
                                           loss_transform=lambda p: fake_quant_tree(p, bits))
        out = out._replace(params=params, model_state=model_state,
                           test_accuracy=accuracy(run, params, model_state))
    deq = dequantize(quantize(params, bits))
    extra["quantized_test_accuracy"] = accuracy(run, deq, model_state)
    extra["quantize_bits"] = bits
    return out.with_extra(**extra)
