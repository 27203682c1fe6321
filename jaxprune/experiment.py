"""``train_and_evaluate(config, workdir)``: the library behind ``jaxprune run``.

A neural-network run (``kind='nn'``) trains dense, prunes with the configured method, optionally
fine-tunes with the masks held fixed, evaluates, and writes ``workdir/result.json``. Configs of
``kind='svm'`` and ``kind='tree'`` go to :mod:`jaxprune.svm` and :mod:`jaxprune.dtree`.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxprune import data as jdata
from jaxprune.counts import check_sparsity_value
from jaxprune.errors import ConfigError, DataError
from jaxprune.masks import apply_masks, dense_masks, summary
from jaxprune.models import get_model, init_params
from jaxprune.recipes import check_names, parse_structure, select_masks
from jaxprune.scores import compute_scores, get_scorer
from jaxprune.train import create_train_state, evaluate, fit, masked

__all__ = ["train_and_evaluate", "resolve_dataset", "Run", "METHODS", "register_method", "make_run",
           "result_fields", "cost_fields", "prune_params"]


class Run(NamedTuple):
    """What a method needs: the config, model, data and a PRNG key."""

    config: Any
    model: Any
    variables: dict
    train: tuple[np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray]
    key: jax.Array


MethodFn = Callable[[Run], dict]
METHODS: dict[str, MethodFn] = {}


def register_method(name: str) -> Callable[[MethodFn], MethodFn]:
    """Decorator adding ``fn(run) -> result fields`` to the methods ``jaxprune run`` knows."""

    def add(fn: MethodFn) -> MethodFn:
        METHODS[name] = fn
        return fn

    return add


def resolve_dataset(name: str, data_dir: str | None) -> str:
    """``'auto'`` -> ``'fashion_mnist'`` when its files are found, else ``'digits'``; others as given.

    >>> resolve_dataset('digits', None)
    'digits'
    """
    if name != "auto":
        return name
    try:
        jdata.load("fashion_mnist", "test", data_dir)
        return "fashion_mnist"
    except DataError:
        return "digits"


def _validate(config: Any) -> None:
    if config.get("kind", "nn") != "nn":
        return
    for key in ("epochs", "finetune_epochs"):
        if not isinstance(config[key], int) or isinstance(config[key], bool) or config[key] < 0:
            raise ConfigError(f"config field {key!r} must be an integer >= 0, got {config[key]!r}")
    for key in ("batch_size", "seed"):
        low = 1 if key == "batch_size" else 0
        if not isinstance(config[key], int) or isinstance(config[key], bool) or config[key] < low:
            raise ConfigError(f"config field {key!r} must be an integer >= {low}, got {config[key]!r}")
    if not (isinstance(config.learning_rate, (int, float)) and config.learning_rate > 0):
        raise ConfigError(f"config field 'learning_rate' must be > 0, got {config.learning_rate!r}")
    try:
        check_sparsity_value(config.sparsity, "config field 'sparsity'")
    except ValueError as err:
        raise ConfigError(str(err)) from err
    if config.method not in METHODS:
        raise ConfigError(f"method={config.method!r} is unknown; known: {sorted(METHODS)}")
    check_names(config.scorer, config.allocation)
    parse_structure(config.structure)
    _validate_stages(config)


def _validate_stages(config: Any) -> None:
    """Neuron, quantization and precision fields, checked before any data is loaded."""
    from jaxprune.methods.quantized import BITS
    from jaxprune.neurons import CRITERIA
    from jaxprune.quant import get_policy

    g = config.get
    if g("criterion", "none") not in ("none", *CRITERIA):
        raise ConfigError(f"config field 'criterion' must be one of {['none', *sorted(CRITERIA)]}, "
                          f"got {g('criterion')!r}")
    for key in ("shrink", "mean_replacement"):
        if not isinstance(g(key, False), bool):
            raise ConfigError(f"config field {key!r} must be true or false, got {g(key)!r}")
    if g("mean_replacement", False) and not g("shrink", False):
        raise ConfigError("config field 'mean_replacement' needs shrink=true (the removed units' mean "
                          "is folded into the next layer of the shrunk model)")
    if (g("shrink", False) or g("criterion", "none") != "none") and g("structure") not in (
            "neurons", "channels"):
        raise ConfigError("config fields 'shrink' and 'criterion' need structure=neurons or channels, "
                          f"got structure={g('structure')!r}")
    for key, low in (("calibration_batches", 1), ("qat_epochs", 0), ("latency_batch", 0)):
        v = g(key, low)
        if not isinstance(v, int) or isinstance(v, bool) or v < low:
            raise ConfigError(f"config field {key!r} must be an integer >= {low}, got {v!r}")
    if g("quantize", "none") not in BITS:
        raise ConfigError(f"config field 'quantize' must be one of {sorted(BITS)}, got {g('quantize')!r}")
    if g("qat_epochs", 0) and g("quantize", "none") == "none":
        raise ConfigError("config field 'qat_epochs' needs quantize=int8 or int4")
    if g("quantize", "none") != "none" and g("shrink", False):
        raise ConfigError("quantize with shrink=true is not supported: quantize the shrunk model with "
                          "jaxprune.quant.quantize")
    try:
        get_policy(g("precision", "f32"))
    except ValueError as err:
        raise ConfigError(f"config field 'precision': {err}") from err


def _score_grads(run: Run, params: Any, model_state: Any, batches: int = 1) -> Any:
    """Mean loss gradients over the first ``batches`` training batches (for gradient scorers)."""
    from jaxprune.train.loop import _call  # the loop's own model call (train-mode BN aware)

    def loss(p, x, y):
        logits, _ = _call(run.model, p, model_state, x, train=False)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    grad_fn = jax.jit(jax.grad(loss))
    total = None
    it = jdata.batches(*run.train, run.config.batch_size, seed=run.config.seed, epoch=0)
    for _, b in zip(range(batches), it):
        g = grad_fn(params, b.images, b.labels)
        total = g if total is None else jax.tree.map(jnp.add, total, g)
    return jax.tree.map(lambda g: g / batches, total)


def prune_params(run: Run, params: Any, model_state: Any, sparsity: float) -> Any:
    """Masks from the run's scorer / allocation / structure at ``sparsity``."""
    c = run.config
    grads = _score_grads(run, params, model_state) if get_scorer(c.scorer).needs_grads else None
    scores = compute_scores(c.scorer, params, grads=grads, key=jax.random.fold_in(run.key, 7))
    return select_masks(params, scores, sparsity, allocation=c.allocation,
                        structure=parse_structure(c.structure))


def _fit(run: Run, state, tx, epochs: int, first_epoch: int, desc: str, loss_transform=None):
    c = run.config
    return fit(run.model, state, tx, *run.train, epochs=epochs, batch_size=c.batch_size, seed=c.seed,
               first_epoch=first_epoch, desc=desc, progress=c.get("progress", True),
               loss_transform=loss_transform)


def _acc(run: Run, params: Any, model_state: Any) -> float:
    return evaluate(run.model, params, model_state, *run.test)["accuracy"]


@register_method("none")
def dense_only(run: Run) -> dict:
    """Train dense; no pruning (the baseline row of every table)."""
    state = create_train_state(run.variables, optax.adam(run.config.learning_rate))
    state, _ = _fit(run, state, optax.adam(run.config.learning_rate), run.config.epochs, 0, "dense")
    acc = _acc(run, state.params, state.model_state)
    return {"params": state.params, "model_state": state.model_state, "dense_test_accuracy": acc,
            "pruned_test_accuracy": acc, "masks": dense_masks(state.params)}


@register_method("one_shot")
def one_shot(run: Run) -> dict:
    """Train dense, prune once to the target with the configured scorer, fine-tune with fixed masks.

    With ``structure=neurons|channels`` the run goes to
    :func:`jaxprune.methods.structured.structured_one_shot` (unit criteria, optional shrink).
    """
    c = run.config
    if c.structure in ("neurons", "channels"):
        from jaxprune.methods.structured import structured_one_shot
        return structured_one_shot(run)
    tx = optax.adam(c.learning_rate)
    state, _ = _fit(run, create_train_state(run.variables, tx), tx, c.epochs, 0, "dense")
    dense_acc = _acc(run, state.params, state.model_state)
    masks = prune_params(run, state.params, state.model_state, c.sparsity)
    params = apply_masks(state.params, masks)
    pruned_acc = _acc(run, params, state.model_state)
    if c.finetune_epochs:
        ft = masked(optax.adam(c.get("finetune_learning_rate") or c.learning_rate), masks)
        st = create_train_state({"params": params, **state.model_state}, ft)
        st, _ = _fit(run, st, ft, c.finetune_epochs, c.epochs, "finetune")
        params, model_state = st.params, st.model_state
    else:
        model_state = state.model_state
    return {"params": params, "model_state": model_state, "dense_test_accuracy": dense_acc,
            "pruned_test_accuracy": pruned_acc, "masks": masks}


def make_run(config: Any) -> Run:
    """Validates an ``nn`` config, loads its data and initialises its model (no training yet)."""
    _validate(config)
    dataset = resolve_dataset(config.dataset, config.get("data_dir"))
    if dataset != config.dataset:
        config = config.copy_and_resolve_references()
        with config.unlocked():
            config.dataset = dataset
    info = jdata.dataset_info(dataset, config.get("data_dir"))
    train = jdata.load(dataset, "train", config.get("data_dir"),
                       validation_size=config.get("validation_size", 0), seed=config.seed)
    test = jdata.load(dataset, "test", config.get("data_dir"))
    model = get_model(config.model, info.num_classes)
    key = jax.random.PRNGKey(config.seed)
    variables = init_params(model, jax.random.fold_in(key, 0), (1, *train[0].shape[1:]))
    return Run(config, model, variables, train, test, jax.random.fold_in(key, 1))


def cost_fields(run: Run, out: dict) -> dict:
    """Cost of the dense and the final model: XLA FLOPs and nonzero MACs of one example's forward,
    parameter count and bytes, and (``latency_batch > 0``) median forward latency in ms.

    A masked (not shrunk) model runs the very same dense XLA program as the dense model, so its
    ``flops_final`` and ``latency_final_ms`` *are* the dense figures (not re-measured); what masking
    could save on a zero-skipping kernel is ``macs_nonzero_final``. A shrunk model is measured.
    """
    from jaxprune.shrink import flops, latency_ms, macs, param_bytes, param_count

    shape = run.train[0].shape[1:]
    dense_vars = run.variables
    shrunk = "final_model" in out
    final_model = out.get("final_model", run.model)
    final_vars = out.get("final_variables", {"params": out["params"], **out["model_state"]})
    # Costs are those of the float32 linen model (a precision policy is not part of the count).
    fields = {"flops_dense": flops(_linen(run.model), dense_vars, shape)}
    fields["flops_final"] = flops(_linen(final_model), final_vars, shape) if shrunk else fields["flops_dense"]
    fields.update({"macs_dense": macs(_linen(run.model), dense_vars, shape),
                   "macs_nonzero_final": macs(_linen(final_model), final_vars, shape, nonzero=True),
                   "params_final": param_count(final_vars["params"]),
                   "bytes_final": param_bytes(final_vars["params"])})
    batch = int(run.config.get("latency_batch", 0) or 0)
    if batch > 0:
        fields["latency_dense_ms"] = latency_ms(_linen(run.model), dense_vars, shape, batch=batch,
                                                repeats=30)
        fields["latency_final_ms"] = (latency_ms(_linen(final_model), final_vars, shape, batch=batch,
                                                 repeats=30) if shrunk else fields["latency_dense_ms"])
        fields["latency_batch"] = batch
    return fields


def _linen(model: Any) -> Any:
    return getattr(model, "inner", model)


def result_fields(run: Run, out: dict) -> dict:
    """The ``result.json`` fields of a finished method ``out`` (consumes params/masks/model_state).

    Fields that ``out`` sets itself (e.g. a shrunk run's ``nonzero_params``) win over the defaults.
    """
    from jaxprune.methods.quantized import BITS
    from jaxprune.quant import size_report

    config = run.config
    out = dict(out)
    final_acc = out.pop("test_accuracy", None)
    if final_acc is None:
        final_acc = _acc(run, out["params"], out["model_state"])
    costs = cost_fields(run, out)
    out.pop("final_model", None)
    final_vars = out.pop("final_variables", None)
    params, masks = out.pop("params"), out.pop("masks")
    out.pop("model_state")
    s = summary(params)
    # `sparsity` is structural (the masks); `value_sparsity` also counts kept weights that are 0.
    ms = summary(masks)
    bits = BITS.get(config.get("quantize", "none")) or 8
    stored = final_vars["params"] if final_vars is not None else params
    return {"dataset": config.dataset, "model": config.model, "method": config.method,
            "scorer": config.scorer, "allocation": config.allocation, "structure": config.structure,
            "target_sparsity": float(config.sparsity), "sparsity": ms.prunable["sparsity"],
            "value_sparsity": s.prunable["sparsity"],
            "total_params": s.total["size"], "nonzero_params": s.total["nonzero"],
            "prunable_params": s.prunable["size"], "prunable_nonzero": s.prunable["nonzero"],
            "bytes_dense": s.total["bytes"], "test_accuracy": final_acc, "seed": config.seed,
            "epochs": config.epochs, "finetune_epochs": config.finetune_epochs,
            "precision": config.get("precision", "f32"),
            "bytes": size_report(jax.device_get(stored), quantized_bits=bits), **costs, **out}


def _nn_run(config: Any) -> dict:
    from jaxprune.methods.quantized import quantize_stage, with_precision

    run = with_precision(make_run(config))
    out = quantize_stage(run, METHODS[run.config.method](run))
    return result_fields(run, out)


def train_and_evaluate(config: Any, workdir: str | os.PathLike) -> dict:
    """Runs the experiment ``config`` and writes ``workdir/result.json``; returns the result dict."""
    from jaxprune.train.context import run_context_for

    start = time.perf_counter()
    kind = config.get("kind", "nn")
    # Mesh and checkpoints (config fields `mesh`, `checkpoint_every`) reach every fit call of the run
    # through this context; each fit call is one resumable phase (docs/scale.md).
    with run_context_for(config, workdir) as ctx:
        if kind == "nn":
            result = _nn_run(config)
        elif kind == "tree":
            from jaxprune.dtree.experiment import run_tree
            result = run_tree(config)
        elif kind == "svm":
            from jaxprune.svm.experiment import run_svm
            result = run_svm(config)
        else:
            raise ConfigError(f"config field 'kind' must be 'nn', 'svm' or 'tree', got {kind!r}")
    if ctx.sha256() is not None:
        result["fit_sha256"] = ctx.sha256()  # final states (params, masks, ...) of all fit calls
    result["wall_s"] = round(time.perf_counter() - start, 3)
    result = {k: (float(v) if isinstance(v, (np.floating, jnp.ndarray)) else v) for k, v in result.items()}
    os.makedirs(workdir, exist_ok=True)
    tmp = os.path.join(workdir, "result.json.tmp")
    with open(tmp, "w") as f:
        json.dump(result, f, indent=2, sort_keys=True)
    os.replace(tmp, os.path.join(workdir, "result.json"))
    return result


def format_result(result: dict) -> str:
    """A short human table of the headline fields of a result."""
    keys = ["dataset", "model", "method", "target_sparsity", "sparsity", "total_params",
            "nonzero_params", "dense_test_accuracy", "pruned_test_accuracy", "test_accuracy", "wall_s"]
    rows = [(k, result[k]) for k in keys if k in result]
    rows += [(k, v) for k, v in result.items() if k not in keys and not isinstance(v, (dict, list))]
    width = max(len(k) for k, _ in rows)
    fmt = lambda v: f"{v:.4f}" if isinstance(v, float) and not math.isnan(v) else str(v)  # noqa: E731
    return "\n".join(f"{k.ljust(width)}  {fmt(v)}" for k, v in rows)


# The training-time methods register themselves on import (they use the helpers above).
import jaxprune.methods.runs  # noqa: E402,F401
