"""One-shot LM pruning as a ``jaxprune run`` kind (``kind='lm'``): train or restore a GPT, prune it.

``run_lm(config, workdir)`` trains the character GPT of ``experiments/configs/gpt_shakespeare.py`` on
the Shakespeare corpus (or restores its orbax checkpoint), prunes it one-shot with
:func:`~jaxprune.lm.prune_lm` (magnitude, Wanda or SparseGPT) from calibration windows of the training
split, and returns the ``result.json`` fields (validation loss and perplexity, dense and pruned).

The dense checkpoint lives in ``checkpoint_dir`` (relative paths are taken from the run's workdir;
``''`` means ``<workdir>/dense``), with ``dense_meta.json`` beside it recording the training fields: a
run whose training fields differ from the checkpoint's is refused, naming the field, instead of
pruning a different model. A sweep points every run at one shared directory, so it trains once.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxprune.data.text import load_text, random_windows, token_windows
from jaxprune.errors import ConfigError
from jaxprune.harness.schema import FieldSpec
from jaxprune.lm.driver import METHODS, prune_lm
from jaxprune.models import MODELS, get_model
from jaxprune.results_schema import SCHEMA_VERSION
from jaxprune.workdir import checkpoint_lock

__all__ = ["LM_FIELDS", "TRAIN_FIELDS", "validate_lm_config", "parse_lm_structure", "lm_loss",
           "train_gpt", "evaluate_lm", "generate", "checkpoint_lock", "dense_gpt", "run_lm"]

F = FieldSpec
LM_FIELDS: dict[str, FieldSpec] = {
    "kind": F(str, "lm", "run", "run kind: lm"),
    "dataset": F(str, "shakespeare", "data", "shakespeare | tiny_shakespeare | auto"),
    "data_dir": F(str, None, "data", "folder of the corpus (None: the installed package)", optional=True),
    "model": F(str, "gpt", "model", "a tokens model of jaxprune.models.MODELS (gpt), built with "
               "(vocab_size, context=, num_layers=, num_heads=, width=)"),
    "seed": F(int, 0, "run", "initialisation and batch order of dense training", low=0),
    "num_layers": F(int, 4, "model", "transformer blocks", low=1),
    "num_heads": F(int, 4, "model", "attention heads (must divide width)", low=1),
    "width": F(int, 128, "model", "model width", low=1),
    "context": F(int, 64, "model", "context length in tokens", low=2),
    "steps": F(int, 2000, "train", "AdamW steps of dense training", low=0),
    "max_train_seconds": F(float, 900.0, "train", "stop dense training after this time", low=0,
                           low_open=True),
    "batch_size": F(int, 32, "train", "training batch size (windows)", low=1),
    "learning_rate": F(float, 1e-3, "train", "peak AdamW learning rate", low=0, low_open=True),
    "method": F(str, "sparsegpt", "prune", "magnitude | wanda | sparsegpt"),
    "sparsity": F(float, 0.5, "prune", "fraction of each pruned kernel removed (nm: ignored)", low=0,
                  high=1),
    "structure": F(str, "unstructured", "prune", "unstructured | nm:N:M (along the input axis)"),
    "calibration": F(int, 128, "prune", "calibration windows from the training split", low=1),
    "calibration_seed": F(int, 2, "prune", "seed of the calibration windows", low=0),
    "eval_windows": F(int, 256, "result", "validation windows of context + 1 tokens", low=1),
    "blocksize": F(int, 128, "prune", "SparseGPT column block", low=1),
    "percdamp": F(float, 0.01, "prune", "SparseGPT dampening (fraction of mean diag H)", low=0),
    "checkpoint_dir": F(str, "", "train", "orbax dir of the dense params ('' = <workdir>/dense)"),
    "progress": F(bool, True, "run", "print dense-training progress to stderr"),
}
del F

TRAIN_FIELDS = ("dataset", "data_dir", "seed", "num_layers", "num_heads", "width", "context", "steps",
                "max_train_seconds", "batch_size", "learning_rate")
"""Fields that define the dense model; a checkpoint records them and is reused only if they match."""


def _get(config: Any, name: str) -> Any:
    return config.get(name, LM_FIELDS[name].default)


def parse_lm_structure(structure: str) -> tuple[float | None, tuple[int, int] | None]:
    """``(None, None)`` for ``'unstructured'``, ``(1 - N/M, (N, M))`` for ``'nm:N:M'``.

    >>> parse_lm_structure('nm:2:4')
    (0.5, (2, 4))
    """
    if structure == "unstructured":
        return None, None
    parts = structure.split(":")
    if len(parts) == 3 and parts[0] == "nm" and all(p.isdigit() for p in parts[1:]):
        n, m = int(parts[1]), int(parts[2])
        if 0 < n < m:
            return 1 - n / m, (n, m)
    raise ConfigError(f"config field 'structure' must be 'unstructured' or 'nm:N:M' with 0 < N < M, "
                      f"got {structure!r}")


def validate_lm_config(config: Any) -> None:
    """Checks every field of an ``lm`` config before data loads (a :class:`ConfigError` naming it).

    >>> import ml_collections
    >>> validate_lm_config(ml_collections.ConfigDict({'kind': 'lm', 'method': 'wanda'}))
    >>> validate_lm_config(ml_collections.ConfigDict({'kind': 'lm', 'method': 'obs'}))
    Traceback (most recent call last):
    ...
    jaxprune.errors.ConfigError: config field 'method' must be one of ['magnitude', 'sparsegpt', 'wanda'], got 'obs'
    """
    unknown = sorted(k for k in config if k not in LM_FIELDS)
    if unknown:
        raise ConfigError(f"config field {unknown[0]!r} is not a field of an lm config (known: "
                          f"{', '.join(LM_FIELDS)})")
    for name, spec in LM_FIELDS.items():
        if name in config:
            spec.check(name, config[name])
    for name, choices in (("method", METHODS), ("dataset", ("shakespeare", "tiny_shakespeare", "auto")),
                          ("model", tuple(n for n, e in MODELS.items() if e.inputs == "tokens"))):
        if _get(config, name) not in choices:
            raise ConfigError(f"config field {name!r} must be one of {sorted(choices)}, "
                              f"got {_get(config, name)!r}")
    _, nm = parse_lm_structure(_get(config, "structure"))
    width, heads = _get(config, "width"), _get(config, "num_heads")
    if width % heads:
        raise ConfigError(f"config field 'num_heads' ({heads}) must divide 'width' ({width})")
    if nm is not None and width % nm[1]:
        raise ConfigError(f"config field 'structure' ({_get(config, 'structure')}): M={nm[1]} must "
                          f"divide 'width' ({width}), the input width of the pruned layers")


def lm_loss(model: Any, params: Any, x: jax.Array, y: jax.Array) -> jax.Array:
    """Mean next-token cross-entropy of ``model`` on inputs ``x`` and targets ``y``.

    >>> from jaxprune.models.gpt import gpt_nano
    >>> m = gpt_nano(5, 4, num_layers=1, width=8, num_heads=2)
    >>> p = m.init(jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32))['params']
    >>> bool(lm_loss(m, p, jnp.zeros((2, 4), jnp.int32), jnp.ones((2, 4), jnp.int32)) > 0)
    True
    """
    logits = model.apply({"params": params}, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def train_gpt(model: Any, train_tokens: np.ndarray, *, steps: int, batch_size: int, learning_rate: float,
              seed: int, max_seconds: float = math.inf, log: Any = None) -> tuple[Any, int, float]:
    """Trains ``model`` (AdamW, warmup + cosine, clipped) on random windows of ``train_tokens``.

    Returns ``(params, steps_done, seconds)``; stops early after ``max_seconds``.

    >>> from jaxprune.models.gpt import gpt_nano
    >>> m = gpt_nano(5, 4, num_layers=1, width=8, num_heads=2)
    >>> _, done, _ = train_gpt(m, np.arange(40) % 5, steps=2, batch_size=2, learning_rate=1e-3, seed=0)
    >>> done
    2
    """
    rng = np.random.default_rng(seed)
    params = model.init(jax.random.PRNGKey(seed), jnp.zeros((1, model.context), jnp.int32))["params"]
    total = max(int(steps), 1)
    warmup = min(100, total // 2)
    sched = optax.warmup_cosine_decay_schedule(0.0, learning_rate, warmup, total, learning_rate / 10)
    opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(sched, b2=0.99, weight_decay=0.1))
    state = opt.init(params)

    @jax.jit
    def step(params, state, x, y):
        loss, g = jax.value_and_grad(lambda p: lm_loss(model, p, x, y))(params)
        upd, state = opt.update(g, state, params)
        return optax.apply_updates(params, upd), state, loss

    start, done = time.perf_counter(), 0
    for i in range(int(steps)):
        x, y = random_windows(train_tokens, batch_size, model.context, rng)
        params, state, loss = step(params, state, x, y)
        done = i + 1
        if log is not None and (i % 250 == 0 or done == steps):
            log(f"step {i:5d} train loss {float(loss):.3f} ({time.perf_counter() - start:.0f} s)")
        if time.perf_counter() - start > max_seconds:
            break
    return params, done, time.perf_counter() - start


def generate(model: Any, params: Any, tokenizer: Any, prompt: str, length: int, *, seed: int = 0,
             temperature: float = 0.8) -> str:
    """``prompt`` followed by ``length`` sampled characters (temperature sampling, one PRNG key per
    step from ``seed``: models sampled with the same seed share the noise, so their texts agree until
    their logits differ).

    >>> from jaxprune.data.text import CharTokenizer
    >>> from jaxprune.models.gpt import gpt_nano
    >>> tok = CharTokenizer('ab ')
    >>> m = gpt_nano(tok.vocab_size, 4, num_layers=1, width=8, num_heads=2)
    >>> p = m.init(jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32))['params']
    >>> len(generate(m, p, tok, 'ab', 5))
    7
    """
    ids = list(tokenizer.encode(prompt))
    last = jax.jit(lambda p, x: model.apply({"params": p}, x)[0, -1])
    key = jax.random.PRNGKey(seed)
    for _ in range(int(length)):
        ctx = np.asarray(ids[-model.context:], np.int32)
        ctx = np.pad(ctx, (model.context - len(ctx), 0))  # left-pad a short prompt to the context
        key, sub = jax.random.split(key)
        ids.append(int(jax.random.categorical(sub, last(params, ctx[None]) / temperature)))
    return tokenizer.decode(ids)


def evaluate_lm(model: Any, params: Any, windows: np.ndarray, batch: int = 64) -> float:
    """Mean next-token loss over ``windows`` (``(num, context + 1)`` token ids), batch-weighted.

    >>> from jaxprune.models.gpt import gpt_nano
    >>> m = gpt_nano(5, 4, num_layers=1, width=8, num_heads=2)
    >>> p = m.init(jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32))['params']
    >>> evaluate_lm(m, p, np.zeros((3, 5), np.int32)) > 0
    True
    """
    f = jax.jit(lambda p, x, y: lm_loss(model, p, x, y))
    total = 0.0
    for s in range(0, len(windows), batch):
        w = windows[s : s + batch]
        total += float(f(params, w[:, :-1], w[:, 1:])) * len(w)
    return total / len(windows)


def _checkpoint_dir(config: Any, workdir: str) -> str:
    d = _get(config, "checkpoint_dir") or "dense"
    return os.path.abspath(d if os.path.isabs(d) else os.path.join(workdir, d))


def dense_gpt(config: Any, corpus: Any, workdir: str) -> tuple[Any, Any, dict]:
    """The GPT of ``config`` and its dense params: restored from the checkpoint when its recorded
    training fields match ``config``'s, else trained and saved. Returns ``(model, params, meta)``.
    The train-or-restore step runs under :func:`checkpoint_lock`."""
    log = (lambda s: print(f"[jaxprune] lm {s}", file=sys.stderr, flush=True)) \
        if _get(config, "progress") else None
    with checkpoint_lock(_checkpoint_dir(config, workdir), log):
        return _train_or_restore(config, corpus, workdir, log)


def _train_or_restore(config: Any, corpus: Any, workdir: str, log: Any) -> tuple[Any, Any, dict]:
    import orbax.checkpoint as ocp  # slow to import; only runs that train or restore need it

    model = get_model(_get(config, "model"), corpus.tokenizer.vocab_size, context=_get(config, "context"),
                      num_layers=_get(config, "num_layers"), num_heads=_get(config, "num_heads"),
                      width=_get(config, "width"))
    ckdir = _checkpoint_dir(config, workdir)
    meta_path = ckdir + "_meta.json"
    fields = {k: _get(config, k) for k in TRAIN_FIELDS}
    fields["vocab_size"] = corpus.tokenizer.vocab_size
    if os.path.exists(meta_path):
        with open(meta_path) as f:
            meta = json.load(f)
        diff = [k for k in fields if meta["fields"].get(k) != fields[k]]
        if diff:
            raise ConfigError(f"config field {diff[0]!r} is {fields[diff[0]]!r} but the checkpoint in "
                              f"{ckdir} was trained with {meta['fields'].get(diff[0])!r}; use another "
                              "checkpoint_dir")
        like = model.init(jax.random.PRNGKey(0), jnp.zeros((1, model.context), jnp.int32))["params"]
        params = ocp.StandardCheckpointer().restore(ckdir, like)
        return model, params, {**meta, "restored": True}
    params, done, secs = train_gpt(model, corpus.train, steps=_get(config, "steps"),
                                   batch_size=_get(config, "batch_size"),
                                   learning_rate=_get(config, "learning_rate"), seed=_get(config, "seed"),
                                   max_seconds=_get(config, "max_train_seconds"), log=log)
    ckpt = ocp.StandardCheckpointer()
    ckpt.save(ckdir, params, force=True)
    ckpt.wait_until_finished()
    meta = {"fields": fields, "steps_done": done, "train_seconds": secs}
    tmp = f"{meta_path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(meta, f)
    os.replace(tmp, meta_path)  # written last: a checkpoint without its meta is never restored
    return model, params, {**meta, "restored": False}


def _mask_sparsity(masks: Any, layers: Any) -> float:
    """Fraction removed over the pruned kernels, counted from the bool masks themselves."""
    wanted = {layer.path for layer in layers}
    size = kept = 0
    for path, leaf in jax.tree_util.tree_flatten_with_path(masks)[0]:
        name = "/".join(str(getattr(k, "key", k)) for k in path)
        name = name[len("params/"):] if name.startswith("params/") else name
        if name in wanted:
            size += int(np.size(leaf))
            kept += int(np.sum(np.asarray(leaf)))
    return 1.0 - kept / size if size else 0.0


def run_lm(config: Any, workdir: str) -> dict:
    """The ``result.json`` fields of an ``lm`` run (``config`` checked by :func:`validate_lm_config`).

    >>> import ml_collections, tempfile
    >>> cfg = ml_collections.ConfigDict({'kind': 'lm', 'num_layers': 1, 'width': 32, 'context': 16,
    ...                                  'steps': 5, 'calibration': 4, 'eval_windows': 4})
    >>> run_lm(cfg, tempfile.mkdtemp())['val_perplexity'] > 1  # doctest: +SKIP
    True
    """
    validate_lm_config(config)
    corpus = load_text(_get(config, "dataset"), data_dir=_get(config, "data_dir"))
    model, params, meta = dense_gpt(config, corpus, workdir)
    context = model.context
    val = token_windows(corpus.validation, _get(config, "eval_windows"), context + 1, seed=1)
    calib = token_windows(corpus.train, _get(config, "calibration"), context,
                          seed=_get(config, "calibration_seed"))
    nm_sparsity, nm = parse_lm_structure(_get(config, "structure"))
    target = nm_sparsity if nm is not None else float(_get(config, "sparsity"))
    dense_loss = evaluate_lm(model, params, val)
    res = prune_lm(model, {"params": params}, calib, _get(config, "method"), target, nm=nm,
                   blocksize=_get(config, "blocksize"), percdamp=_get(config, "percdamp"))
    loss = evaluate_lm(model, res.params["params"], val)
    return {"kind": "lm", "schema_version": SCHEMA_VERSION, "dataset": corpus.name,
            "model": _get(config, "model"), "method": _get(config, "method"), "seed": _get(config, "seed"),
            "structure": _get(config, "structure"), "target_sparsity": target,
            "sparsity": _mask_sparsity(res.masks, res.layers),
            "dense_val_loss": dense_loss, "val_loss": loss,
            "dense_val_perplexity": math.exp(dense_loss), "val_perplexity": math.exp(loss),
            "mean_relative_layer_error": float(np.mean([r.relative_error for r in res.layers])),
            "prune_seconds": res.seconds, "peak_bytes": res.peak_bytes,
            "train_steps": meta["steps_done"], "train_seconds": meta["train_seconds"],
            "restored": meta["restored"], "calibration": int(calib.shape[0]),
            "eval_windows": int(val.shape[0])}
