"""The result of an ``nn`` run: the fields of ``result.json`` (every field, its meaning and the kinds
that have it: :mod:`jaxprune.results_schema`, docs/results_schema.md), written by one atomic writer."""

from __future__ import annotations

import contextlib
import json
import math
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune.errors import ConfigError
from jaxprune.harness.output import MethodOutput
from jaxprune.harness.precision import BITS, unwrap
from jaxprune.harness.steps import accuracy
from jaxprune.masks import summary
from jaxprune.quant import size_report
from jaxprune.results_schema import SCHEMA_VERSION
from jaxprune.shrink import fast_lowerings, flops, latency_ms, macs, param_bytes, param_count
from jaxprune.workdir import ensure_writable_dir

__all__ = ["SCHEMA_VERSION", "check_workdir", "cost_fields", "result_fields", "plain_result", "write_result",
           "format_result"]



def cost_fields(run: Any, out: MethodOutput) -> dict:
    """Cost of the dense and the final model: XLA FLOPs and nonzero MACs of one example's forward,
    parameter count and bytes, and (``latency_batch > 0``) median forward latency in ms.

    A masked (not shrunk) model runs the very same dense XLA program as the dense model, so its
    ``flops_final`` and ``latency_final_ms`` *are* the dense figures (not re-measured); what masking
    could save on a zero-skipping kernel is ``macs_nonzero_final``. A shrunk model is measured.
    """
    shape = run.train[0].shape[1:]
    dense_vars = run.variables
    shrunk = out.final_model is not None
    final_model = out.final_model if shrunk else run.model
    final_vars = out.final_variables if out.final_variables is not None else \
        {"params": out.params, **out.model_state}
    # Costs are those of the float32 linen model (a precision policy is not part of the count).
    dense_model, final_linen = unwrap(run.model), unwrap(final_model)
    fields = {"flops_dense": flops(dense_model, dense_vars, shape)}
    fields["flops_final"] = flops(final_linen, final_vars, shape) if shrunk else fields["flops_dense"]
    fields.update({"macs_dense": macs(dense_model, dense_vars, shape),
                   "macs_nonzero_final": macs(final_linen, final_vars, shape, nonzero=True),
                   "params_final": param_count(final_vars["params"]),
                   "bytes_final": param_bytes(final_vars["params"])})
    batch = int(run.config.get("latency_batch", 0) or 0)
    if batch > 0:
        fast = bool(run.config.get("latency_fast", False))
        with fast_lowerings() if fast else contextlib.nullcontext():  # traced (compiled) inside
            fields["latency_dense_ms"] = latency_ms(dense_model, dense_vars, shape, batch=batch,
                                                    repeats=30)
            fields["latency_final_ms"] = (latency_ms(final_linen, final_vars, shape, batch=batch,
                                                     repeats=30) if shrunk else fields["latency_dense_ms"])
        fields["latency_batch"] = batch
        fields["latency_lowering"] = "fast" if fast else "xla"
    return fields


def result_fields(run: Any, out: MethodOutput) -> dict:
    """The ``result.json`` fields of an ``nn`` run whose method returned ``out``.

    Fields in ``out.extra`` (e.g. a shrunk run's ``nonzero_params``) win over the defaults.
    """
    config = run.config
    final_acc = out.test_accuracy
    if final_acc is None:
        final_acc = accuracy(run, out.params, out.model_state)
    costs = cost_fields(run, out)
    s = summary(out.params)
    # `sparsity` is structural (the masks); `value_sparsity` also counts kept weights that are 0.
    ms = summary(out.masks)
    bits = BITS.get(config.get("quantize", "none")) or 8
    stored = out.final_variables["params"] if out.final_variables is not None else out.params
    return {"kind": "nn", "schema_version": SCHEMA_VERSION,
            "dataset": config.dataset, "model": config.model, "method": config.method,
            "scorer": config.scorer, "allocation": config.allocation, "structure": config.structure,
            "target_sparsity": float(config.sparsity), "sparsity": ms.prunable["sparsity"],
            "value_sparsity": s.prunable["sparsity"],
            "total_params": s.total["size"], "nonzero_params": s.total["nonzero"],
            "prunable_params": s.prunable["size"], "prunable_nonzero": s.prunable["nonzero"],
            "bytes_dense": s.total["bytes"], "test_accuracy": final_acc, "seed": config.seed,
            "epochs": config.epochs, "finetune_epochs": config.finetune_epochs,
            "precision": config.get("precision", "f32"),
            "dense_test_accuracy": out.dense_test_accuracy,
            "pruned_test_accuracy": out.pruned_test_accuracy,
            "bytes": size_report(jax.device_get(stored), quantized_bits=bits), **costs, **out.extra}


def plain_result(result: dict) -> dict:
    """``result`` with numpy / jax scalars as Python floats (what JSON can hold).

    >>> plain_result({'a': np.float32(0.5), 'b': 1})
    {'a': 0.5, 'b': 1}
    """
    return {k: (float(v) if isinstance(v, (np.floating, jnp.ndarray)) else v) for k, v in result.items()}


def check_workdir(workdir: str | os.PathLike) -> str:
    """Creates ``workdir`` if needed and checks a file can be written there, before any compute (a
    :class:`ConfigError` naming it: empty, a file, under a file, not writable). Returns the path.

    >>> import tempfile
    >>> check_workdir('')
    Traceback (most recent call last):
    ...
    jaxprune.errors.ConfigError: --workdir must be a directory path, got ''
    >>> os.path.isdir(check_workdir(os.path.join(tempfile.mkdtemp(), 'a', 'b')))
    True
    """
    path = os.fspath(workdir) if workdir is not None else ""
    if not path.strip():
        raise ConfigError(f"--workdir must be a directory path, got {path!r}")
    return ensure_writable_dir(path, "--workdir", ConfigError)


def write_result(result: dict, workdir: str | os.PathLike) -> str:
    """Writes ``workdir/result.json`` atomically (a temporary file, then ``os.replace``): a reader
    never sees half a file. Adds ``schema_version`` when missing; returns the path.

    >>> import tempfile
    >>> path = write_result({'test_accuracy': 0.5}, tempfile.mkdtemp())
    >>> with open(path) as f: json.load(f)['schema_version'] == SCHEMA_VERSION
    True
    """
    result = {"schema_version": SCHEMA_VERSION, **plain_result(result)}
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, "result.json")
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(result, f, indent=2, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def format_result(result: dict) -> str:
    """A short human table of the headline fields of a result.

    >>> print(format_result({'method': 'none', 'test_accuracy': 0.91234}))
    method         none
    test_accuracy  0.9123
    """
    keys = ["dataset", "model", "method", "target_sparsity", "sparsity", "total_params",
            "nonzero_params", "dense_test_accuracy", "pruned_test_accuracy", "test_accuracy", "wall_s"]
    rows = [(k, result[k]) for k in keys if k in result]
    rows += [(k, v) for k, v in result.items() if k not in keys and not isinstance(v, (dict, list))]
    width = max(len(k) for k, _ in rows)
    fmt = lambda v: f"{v:.4f}" if isinstance(v, float) and not math.isnan(v) else str(v)  # noqa: E731
    return "\n".join(f"{k.ljust(width)}  {fmt(v)}" for k, v in rows)
