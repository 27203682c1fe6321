"""The result schema: every field a ``result.json`` may hold, its meaning and the run kinds that have it.

:data:`SCHEMA_VERSION` is written into every result as ``schema_version``. It changes when a field is
renamed, removed or changes meaning; adding a field does not change it. docs/results_schema.md is this
table in prose (a test keeps the two equal).

>>> FIELDS['test_accuracy'].kinds
('nn', 'svm', 'tree')
>>> unknown_fields({'kind': 'tree', 'test_accuracy': 0.9, 'oops': 1})
['oops']
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["SCHEMA_VERSION", "Field", "FIELDS", "KIND_NAMES", "unknown_fields"]

SCHEMA_VERSION = 1
KIND_NAMES = ("nn", "svm", "tree", "lm")


class Field(NamedTuple):
    """One result field: the kinds whose results may have it and what it means."""

    kinds: tuple[str, ...]
    meaning: str


_ALL = KIND_NAMES
_CLS = ("nn", "svm", "tree")  # the classifier kinds (accuracies)
_NN = ("nn",)
_LM = ("lm",)

FIELDS: dict[str, Field] = {
    # Common to every kind.
    "schema_version": Field(_ALL, "version of this schema the result follows"),
    "kind": Field(_ALL, "run kind: 'nn' (neural network), 'svm' (linear SVM), 'tree' (decision tree), "
                          "'lm' (one-shot pruning of a language model)"),
    "dataset": Field(_ALL, "data set the run trained and was tested on ('auto' resolved)"),
    "model": Field(_ALL, "model name (nn: the models registry; 'linear_svm'; 'decision_tree'; "
                           "lm: 'gpt')"),
    "method": Field(_ALL, "what was done: nn, the training-time method (one_shot, imp, ...); svm, "
                          "'one_shot'; tree, the pruning method ('none', 'ccp', 'reduced_error')"),
    "seed": Field(_ALL, "the run's seed (initialisation, batch order, splits)"),
    "test_accuracy": Field(_CLS, "accuracy of the final model on the test split"),
    "dense_test_accuracy": Field(_CLS, "test accuracy of the dense model before pruning (null for nn "
                                       "methods that never train a dense model)"),
    "sparsity": Field(_ALL, "fraction of the prunable elements removed in the final model: weights "
                            "(nn: by the masks; svm: of w; lm: by the masks of the pruned "
                            "block kernels), tree nodes (tree)"),
    "wall_s": Field(_ALL, "wall time of the run in seconds (grouped runs: the group's time / n)"),
    # nn and svm.
    "scorer": Field(("nn", "svm"), "what ranked the weights (magnitude, random, saliency, ...)"),
    "structure": Field(("nn", "svm", "lm"), "sparsity pattern (nn: unstructured, nm:N:M, block:RxC, "
                                             "neurons, channels; svm: weights, features; lm: "
                                             "unstructured, nm:N:M)"),
    "target_sparsity": Field(("nn", "svm", "lm"), "the sparsity the config asked for (nm:N:M: 1 - N/M)"),
    "total_params": Field(("nn", "svm"), "number of parameters of the model (shrunk: the original's)"),
    "nonzero_params": Field(("nn", "svm"), "number of nonzero parameters of the final model"),
    "prunable_params": Field(("nn", "svm"), "number of parameters that pruning may remove"),
    "pruned_test_accuracy": Field(("nn", "svm"), "test accuracy right after pruning, before "
                                                 "fine-tuning"),
    # nn.
    "allocation": Field(_NN, "how sparsity was spread over layers (uniform, erk, er, global)"),
    "value_sparsity": Field(_NN, "fraction of prunable weights equal to 0 (masked or not)"),
    "prunable_nonzero": Field(_NN, "number of nonzero prunable weights"),
    "bytes_dense": Field(_NN, "bytes of all parameters stored dense in their dtype"),
    "bytes": Field(_NN, "bytes of the final params per storage format (dense_f32, dense_int8, bitmask, "
                        "csr, coo, gzip...; jaxprune.quant.size_report)"),
    "epochs": Field(_NN, "training epochs (per IMP round for imp)"),
    "finetune_epochs": Field(_NN, "epochs of fine-tuning with the masks fixed"),
    "precision": Field(_NN, "compute precision policy (f32, bf16, f16)"),
    "flops_dense": Field(_NN, "XLA FLOPs of one example's forward pass, dense model"),
    "flops_final": Field(_NN, "XLA FLOPs of the final model (masked: the dense program's)"),
    "macs_dense": Field(_NN, "multiply-accumulates of one example's forward, dense model"),
    "macs_nonzero_final": Field(_NN, "MACs with a nonzero weight in the final model"),
    "params_final": Field(_NN, "parameter count of the final model (a shrunk model is smaller)"),
    "bytes_final": Field(_NN, "bytes of the final model's parameters stored dense"),
    "latency_dense_ms": Field(_NN, "median forward latency of the dense model (latency_batch > 0)"),
    "latency_final_ms": Field(_NN, "median forward latency of the final model (latency_batch > 0)"),
    "latency_batch": Field(_NN, "batch size of the latency measurement"),
    "latency_lowering": Field(_NN, "'xla' (XLA's own convs and flax's attention) or 'fast' "
                                   "(latency_fast=true: fast_convs + fast_attention, both models)"),
    "fit_sha256": Field(_NN, "sha256 over the final state of every training phase, in order"),
    "vmapped": Field(_NN, "number of runs trained as one group (absent: trained alone)"),
    "vmap_strategy": Field(_NN, "the group's training strategy: 'scan' or 'vmap'"),
    "imp_rounds": Field(_NN, "imp / imp_random_reinit: pruning rounds done"),
    "criterion": Field(_NN, "structure=neurons|channels: the unit criterion (l2, apoz, entropy, ...)"),
    "units_kept": Field(_NN, "structure=neurons|channels: units kept per layer"),
    "units_total": Field(_NN, "structure=neurons|channels: units per layer before pruning"),
    "shrunk": Field(_NN, "structure=neurons|channels: whether the model was physically shrunk"),
    "mean_replacement": Field(_NN, "structure=neurons|channels: whether removed units' means were "
                                   "folded into the next layer"),
    "float_test_accuracy": Field(_NN, "quantize with qat_epochs: float accuracy before QAT"),
    "quantized_test_accuracy": Field(_NN, "quantize=int8|int4: accuracy of the dequantized model"),
    "quantize_bits": Field(_NN, "quantize=int8|int4: bit width"),
    # svm.
    "loss": Field(("svm",), "SVM loss ('squared_hinge' or 'hinge')"),
    "C": Field(("svm",), "scikit-learn's C (L2 penalty 1/(2·C·n)·‖w‖²)"),
    "n_features": Field(("svm",), "number of input features"),
    "features_used": Field(("svm",), "features with a nonzero weight for some class"),
    "dense_train_accuracy": Field(("svm",), "training accuracy of the dense SVM"),
    "train_accuracy": Field(("svm",), "training accuracy of the final SVM"),
    "steps": Field(("svm",), "full-batch Adam steps of dense training"),
    "finetune_steps": Field(("svm",), "masked re-training steps after pruning"),
    # lm.
    "dense_val_loss": Field(_LM, "mean next-token cross-entropy (nats) of the dense model on the "
                                 "validation windows"),
    "val_loss": Field(_LM, "the same for the pruned model"),
    "dense_val_perplexity": Field(_LM, "exp(dense_val_loss)"),
    "val_perplexity": Field(_LM, "exp(val_loss)"),
    "mean_relative_layer_error": Field(_LM, "mean over pruned layers of ||X(W - W_hat)||^2 / ||XW||^2 on "
                                            "the calibration inputs"),
    "prune_seconds": Field(_LM, "wall seconds of the pruning method (prune_lm, all blocks)"),
    "peak_bytes": Field(_LM, "peak memory: the device's peak bytes in use, else the process's peak RSS "
                             "(null where unknown)"),
    "train_steps": Field(_LM, "dense training steps done (of the checkpoint when restored)"),
    "train_seconds": Field(_LM, "wall seconds of dense training (of the checkpoint when restored)"),
    "restored": Field(_LM, "whether the dense params came from checkpoint_dir instead of training"),
    "calibration": Field(_LM, "number of calibration windows (context tokens each)"),
    "eval_windows": Field(_LM, "number of validation windows (context + 1 tokens each)"),
    # tree.
    "split_criterion": Field(("tree",), "impurity the tree was grown with ('gini', 'entropy')"),
    "max_depth": Field(("tree",), "depth limit of the grown tree (null: none)"),
    "ccp_alpha": Field(("tree",), "cost-complexity alpha used (method=ccp; null otherwise)"),
    "nodes_total": Field(("tree",), "nodes of the grown tree"),
    "nodes_final": Field(("tree",), "nodes left after pruning"),
    "leaves_total": Field(("tree",), "leaves of the grown tree"),
    "leaves_final": Field(("tree",), "leaves after pruning"),
    "n_fit": Field(("tree",), "examples the tree was grown on"),
    "n_val": Field(("tree",), "validation examples (alpha selection, reduced-error pruning)"),
    "n_test": Field(("tree",), "test examples"),
}


def unknown_fields(result: dict) -> list[str]:
    """Fields of ``result`` that the schema does not list for its ``kind`` (default ``'nn'``)."""
    kind = result.get("kind", "nn")
    return sorted(k for k in result if k not in FIELDS or kind not in FIELDS[k].kinds)
