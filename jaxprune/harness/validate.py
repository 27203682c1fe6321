"""Validation of an ``nn`` experiment config, once, before data loads (the fields' rules)."""

from __future__ import annotations

from typing import Any

from jaxprune.errors import ConfigError
from jaxprune.harness.precision import BITS
from jaxprune.harness.registry import METHODS
from jaxprune.harness.schema import validate_fields
from jaxprune.models import MODELS
from jaxprune.neurons import CRITERIA
from jaxprune.quant import get_policy
from jaxprune.recipes import check_names, parse_structure

__all__ = ["validate_config", "validate_model", "validate_stages", "UNIT_CRITERIA"]

UNIT_CRITERIA = ("none", "random", *sorted(CRITERIA))
"""The values of ``criterion`` (structured runs): ``none`` (= ``l2``), ``random`` and the neuron
criteria of :data:`jaxprune.neurons.CRITERIA`."""


def validate_config(config: Any) -> None:
    """Checks an experiment config before any data is loaded (a :class:`ConfigError` naming the field).

    Configs of ``kind`` other than ``'nn'`` are checked by their own experiment.

    >>> import ml_collections
    >>> validate_config(ml_collections.ConfigDict({'kind': 'svm'}))
    """
    if config.get("kind", "nn") != "nn":
        return
    # Types, ranges, missing fields and cross-field rules: one spec per field (harness.schema).
    validate_fields(config)
    if config.method not in METHODS:  # registered by jaxprune.methods
        raise ConfigError(f"method={config.method!r} is unknown; known: {sorted(METHODS)}")
    check_names(config.scorer, config.allocation)
    if config.structure == "heads":  # whole attention heads: only through the traced graph
        if config.method not in ("one_shot", "global_one_shot"):
            raise ConfigError(f"structure='heads' runs with method=one_shot (units removed once, through "
                              f"the traced graph), got method={config.method!r}")
    else:
        parse_structure(config.structure)
    validate_model(config)
    validate_stages(config)


def validate_model(config: Any) -> None:
    """``model`` names a registered classifier (:data:`jaxprune.models.MODELS`, not a tokens model),
    with a shrink plan where ``mean_replacement`` needs one (``shrink`` and ``criterion`` work on any
    model: without a plan, through the traced graph).

    >>> import ml_collections
    >>> validate_model(ml_collections.ConfigDict({'model': 'gpt'}))
    Traceback (most recent call last):
    ...
    jaxprune.errors.ConfigError: config field 'model'='gpt' takes token ids (a language model): run it with kind='lm', or pick an image classifier: ...
    """
    name = config.get("model")
    entry = MODELS.get(name) if isinstance(name, str) else None
    classifiers = sorted(n for n, e in MODELS.items() if e.inputs != "tokens")
    if entry is None:
        raise ConfigError(f"config field 'model': unknown model {name!r}; known: {classifiers}")
    if entry.inputs == "tokens":
        raise ConfigError(f"config field 'model'={name!r} takes token ids (a language model): run it with "
                          f"kind='lm', or pick an image classifier: {classifiers}")
    g = config.get
    # Without a hand-written plan a structured run goes through the traced graph
    # (jaxprune.methods.traced), which has no mean-replacement fold.
    if entry.shrink_plan is None and g("mean_replacement", False):
        raise ConfigError(f"config field 'mean_replacement' needs a model with a shrink plan; "
                          f"model={name!r} has none (it is shrunk through the traced graph, which does "
                          "not fold means; register a plan: jaxprune.models.register_model(..., "
                          "shrink_plan=...))")


def validate_stages(config: Any) -> None:
    """The rules between neuron, quantization and precision fields and the names they take (their
    types and ranges are :func:`~jaxprune.harness.schema.validate_fields`'), before data is loaded.

    >>> import ml_collections
    >>> validate_stages(ml_collections.ConfigDict({'quantize': 'int3'}))
    Traceback (most recent call last):
    ...
    jaxprune.errors.ConfigError: config field 'quantize' must be one of ['int4', 'int8', 'none'], got 'int3'
    """
    g = config.get
    if g("criterion", "none") not in UNIT_CRITERIA:
        raise ConfigError(f"config field 'criterion' must be one of {list(UNIT_CRITERIA)}, "
                          f"got {g('criterion')!r}")
    if g("mean_replacement", False) and not g("shrink", False):
        raise ConfigError("config field 'mean_replacement' needs shrink=true (the removed units' mean "
                          "is folded into the next layer of the shrunk model)")
    if (g("shrink", False) or g("criterion", "none") != "none") and g("structure") not in (
            "neurons", "channels", "heads"):
        raise ConfigError("config fields 'shrink' and 'criterion' need structure=neurons, channels or heads, "
                          f"got structure={g('structure')!r}")
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
