"""``train_and_evaluate(config, workdir)``: the library behind ``jaxprune run``.

A neural-network run (``kind='nn'``) builds its :class:`~jaxprune.harness.Run`, runs the configured
method (:mod:`jaxprune.methods`), the quantization stage, and writes ``workdir/result.json``
(:func:`~jaxprune.harness.write_result`; fields in docs/results_schema.md). Configs of ``kind='svm'``
and ``kind='tree'`` go to :mod:`jaxprune.svm` and :mod:`jaxprune.dtree`; ``kind='lm'`` (one-shot pruning
of a GPT, docs/lm_pruning.md) to :func:`jaxprune.lm.experiment.run_lm`, which also gets the workdir
(its dense checkpoint lives there).

Layering: core <- :mod:`jaxprune.harness` <- :mod:`jaxprune.methods` <- this module and
:mod:`jaxprune.sweep` <- :mod:`jaxprune.cli`.
"""

from __future__ import annotations

import os
import time
from typing import Any

import jax.numpy as jnp
import numpy as np

import jaxprune.methods  # noqa: F401  (registers the training-time methods)
from jaxprune.dtree.experiment import run_tree
from jaxprune.errors import ConfigError
from jaxprune.harness import (METHODS, SCHEMA_VERSION, MethodOutput, Run, check_workdir, cost_fields,
                              format_result, get_method, make_run, register_method, result_fields,
                              with_precision, write_result)
from jaxprune.harness import preflight as preflight_nn
from jaxprune.harness import validate_config as validate_nn_config
from jaxprune.harness import prune as prune_params
from jaxprune.lm.experiment import run_lm, validate_lm_config
from jaxprune.methods.quantized import quantize_stage
from jaxprune.svm.experiment import run_svm
from jaxprune.train.context import run_context_for

__all__ = ["train_and_evaluate", "run_nn", "Run", "METHODS", "register_method",
           "make_run", "result_fields", "cost_fields", "prune_params", "validate_config", "format_result",
           "MethodOutput", "SCHEMA_VERSION", "KINDS", "check_workdir", "preflight"]


def run_nn(run: Run) -> dict:
    """The result fields of the ``nn`` run ``run``: its method, then the quantization stage."""
    out = quantize_stage(run, get_method(run.config.method)(run))
    return result_fields(run, out)


KINDS = {"nn": lambda config: run_nn(with_precision(make_run(config))), "tree": run_tree, "svm": run_svm,
         "lm": run_lm}
"""Run kinds: ``config.kind -> fn(config) -> result fields`` (``lm``: ``fn(config, workdir)``)."""


def validate_config(config: Any) -> None:
    """Checks a config of any kind before data loads (``nn``: the harness schema; ``lm``: its own).

    >>> import ml_collections
    >>> validate_config(ml_collections.ConfigDict({'kind': 'lm', 'width': 30, 'num_heads': 4}))
    Traceback (most recent call last):
    ...
    jaxprune.errors.ConfigError: config field 'num_heads' (4) must divide 'width' (30)
    """
    if config.get("kind", "nn") == "lm":
        validate_lm_config(config)
    else:
        validate_nn_config(config)


def preflight(config: Any) -> None:
    """Every check that needs no data (``nn``: :func:`jaxprune.harness.preflight`).

    >>> import ml_collections
    >>> preflight(ml_collections.ConfigDict({'kind': 'lm'}))
    """
    if config.get("kind", "nn") == "lm":
        validate_lm_config(config)
    else:
        preflight_nn(config)


def train_and_evaluate(config: Any, workdir: str | os.PathLike) -> dict:
    """Runs the experiment ``config`` and writes ``workdir/result.json``; returns the result dict."""
    start = time.perf_counter()
    kind = config.get("kind", "nn")
    if kind not in KINDS:
        raise ConfigError(f"config field 'kind' must be one of {sorted(KINDS)}, got {kind!r}")
    check_workdir(workdir)  # before any compute: a run whose result cannot be written is not started
    validate_config(config)
    # Mesh and checkpoints (config fields `mesh`, `checkpoint_every`) reach every fit call of the run
    # through this context; each fit call is one resumable phase (docs/scale.md).
    with run_context_for(config, workdir) as ctx:
        result = KINDS[kind](config, os.fspath(workdir)) if kind == "lm" else KINDS[kind](config)
    result.setdefault("kind", kind)
    result.setdefault("schema_version", SCHEMA_VERSION)
    if ctx.sha256() is not None:
        result["fit_sha256"] = ctx.sha256()  # final states (params, masks, ...) of all fit calls
    result["wall_s"] = round(time.perf_counter() - start, 3)
    result = {k: (float(v) if isinstance(v, (np.floating, jnp.ndarray)) else v) for k, v in result.items()}
    write_result(result, workdir)
    return result
