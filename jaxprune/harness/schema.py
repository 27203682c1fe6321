"""The config schema of an ``nn`` run: one spec per field (type, range, default, the stage that uses it,
the methods it belongs to), checked once, before any data is loaded.

``validate_fields(config)`` raises one :class:`~jaxprune.errors.ConfigError` naming the field;
:func:`method_fields` lists the hyperparameters a method reads (``method_fields('imp')``), so that a
method's knobs are discoverable without reading its code.

>>> sorted(method_fields('imp'))
['imp_output_rate', 'imp_rate', 'rewind_epoch', 'rewind_step']
>>> FIELDS['prune_end'].describe()
'prune_end: float in [0, 1], default 0.75 (train; global_gradual_magnitude, gradual_magnitude, rigl, set): fraction of training where gradual pruning / DST updates end'
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Optional

from jaxprune.errors import ConfigError

__all__ = ["FieldSpec", "FIELDS", "method_fields", "validate_fields", "REQUIRED"]

_GRADUAL = ("gradual_magnitude", "global_gradual_magnitude")
_DST = ("set", "rigl")
_IMP = ("imp", "imp_random_reinit")


class FieldSpec(NamedTuple):
    """One config field: its type (``int``, ``float``, ``bool``, ``str``), range, default, stage, doc.

    ``optional``: ``None`` is allowed (means "unset": e.g. ``finetune_learning_rate``); ``low_open``:
    the lower bound is excluded (``> low``); ``methods``: the methods that read it (empty: all).
    """

    type: type
    default: Any
    stage: str
    doc: str
    low: Optional[float] = None
    high: Optional[float] = None
    low_open: bool = False
    optional: bool = False
    methods: tuple[str, ...] = ()

    def describe(self, name: str = "") -> str:
        """One line: name, type, range, default, stage, methods, doc."""
        name = name or next((k for k, v in FIELDS.items() if v is self), "?")
        rng = ""
        if self.low is not None or self.high is not None:
            lo = "(" if self.low_open else "["
            rng = f" in {lo}{_num(self.low, '-inf')}, {_num(self.high, 'inf')}]"
        where = self.stage + (f"; {', '.join(sorted(self.methods))}" if self.methods else "")
        return f"{name}: {self.type.__name__}{rng}, default {self.default!r} ({where}): {self.doc}"

    def check(self, name: str, value: Any) -> None:
        """Raises a :class:`ConfigError` naming ``name`` when ``value`` does not fit this spec."""
        if value is None and self.optional:
            return
        want = self.type.__name__ + (" or None" if self.optional else "")
        ok_type = (isinstance(value, bool) if self.type is bool else
                   isinstance(value, str) if self.type is str else
                   isinstance(value, int) and not isinstance(value, bool) if self.type is int else
                   isinstance(value, (int, float)) and not isinstance(value, bool))
        if not ok_type:
            raise ConfigError(f"config field {name!r} must be {'an' if want[0] in 'i' else 'a'} {want}, "
                              f"got {value!r}")
        if self.type in (int, float):
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"config field {name!r} must be finite, got {value!r}")
            too_low = self.low is not None and (value <= self.low if self.low_open else value < self.low)
            too_high = self.high is not None and value > self.high
            if too_low or too_high:
                raise ConfigError(f"config field {name!r} must be {self._range()}, got {value!r}")

    def _range(self) -> str:
        parts = []
        if self.low is not None:
            parts.append(f"{'>' if self.low_open else '>='} {_num(self.low, '')}")
        if self.high is not None:
            parts.append(f"<= {_num(self.high, '')}")
        return " and ".join(parts)


def _num(x: Optional[float], none: str) -> str:
    if x is None:
        return none
    return str(int(x)) if float(x).is_integer() else str(x)


F = FieldSpec
FIELDS: dict[str, FieldSpec] = {
    "kind": F(str, "nn", "run", "run kind: nn | svm | tree | lm"),
    "dataset": F(str, "auto", "data", "fashion_mnist | mnist | digits | tfds:NAME | auto"),
    "data_dir": F(str, None, "data", "directory of the data files (None: the search path)", optional=True),
    "validation_size": F(float, 0, "data", "training examples held out (a count, or a fraction < 1)",
                         low=0),
    "model": F(str, "tutorial_mlp", "model", "a name of jaxprune.models.MODELS"),
    "seed": F(int, 0, "run", "initialisation, batch order, random scores", low=0),
    "epochs": F(int, 5, "train", "training epochs (per IMP round for imp)", low=0),
    "batch_size": F(int, 32, "train", "training batch size", low=1),
    "learning_rate": F(float, 1e-3, "train", "Adam learning rate", low=0, low_open=True),
    "finetune_learning_rate": F(float, None, "finetune", "Adam learning rate of fine-tuning and QAT "
                                "(None: learning_rate)", low=0, low_open=True, optional=True),
    "finetune_epochs": F(int, 0, "finetune", "epochs of fine-tuning with the masks fixed", low=0),
    "method": F(str, "one_shot", "prune", "a training-time method of jaxprune.harness.METHODS"),
    "scorer": F(str, "magnitude", "prune", "a scorer of jaxprune.scores"),
    "allocation": F(str, "global", "prune", "uniform | erk | er | global"),
    "structure": F(str, "unstructured", "prune", "unstructured | nm:N:M | block:RxC | neurons | channels | heads"),
    "sparsity": F(float, 0.5, "prune", "target fraction of prunable weights removed", low=0, high=1),
    "prune_begin": F(float, 0.0, "train", "fraction of training where gradual pruning / DST updates "
                     "start", low=0, high=1, methods=_GRADUAL),
    "prune_end": F(float, 0.75, "train", "fraction of training where gradual pruning / DST updates end",
                   low=0, high=1, methods=(*_GRADUAL, *_DST)),
    "update_every": F(int, 100, "train", "steps between mask updates", low=1, methods=(*_GRADUAL, *_DST)),
    "drop_fraction": F(float, 0.3, "train", "SET/RigL initial drop fraction alpha (cosine-decayed)",
                       low=0, high=1, low_open=True, methods=_DST),
    "imp_rate": F(float, 0.2, "prune", "IMP: fraction of remaining weights pruned per round", low=0,
                  high=1, low_open=True, methods=_IMP),
    "imp_output_rate": F(float, 0.1, "prune", "IMP: per-round rate of the output layer", low=0, high=1,
                         methods=_IMP),
    "rewind_epoch": F(int, 0, "prune", "IMP: 0 rewinds to init; e > 0 to the end of epoch e", low=0,
                      methods=_IMP),
    "rewind_step": F(int, 0, "prune", "IMP: k > 0 rewinds to the params after k steps", low=0,
                     methods=_IMP),
    "pai_rounds": F(int, 100, "prune", "SynFlow iterations", low=1, methods=("synflow",)),
    "grasp_temperature": F(float, 200.0, "prune", "GraSP: logits / T before the Hessian", low=0,
                           low_open=True, methods=("grasp",)),
    "criterion": F(str, "none", "prune", "structure=neurons|channels|heads: unit criterion"),
    "calibration_batches": F(int, 10, "prune", "batches of training data for activation statistics",
                             low=1),
    "shrink": F(bool, False, "prune", "physically remove the pruned units"),
    "mean_replacement": F(bool, False, "prune", "fold removed units' mean activation into the next bias"),
    "latency_batch": F(int, 256, "result", "batch size of the latency measurement (0: off)", low=0),
    "latency_fast": F(bool, False, "result", "time both models under fast_convs() + fast_attention() "
                      "(the kit's CPU lowerings for small convs, depthwise convs and attention)"),
    "quantize": F(str, "none", "quantize", "none | int8 | int4"),
    "qat_epochs": F(int, 0, "quantize", "pruning-preserving quantization-aware fine-tuning epochs", low=0),
    "precision": F(str, "f32", "run", "f32 | bf16 | f16 compute"),
    "mesh": F(str, "", "run", "e.g. 'data:4'; '' = default device"),
    "checkpoint_every": F(int, 0, "run", "steps between checkpoints (0 = off)", low=0),
    "dense_cache_dir": F(str, None, "run", "directory where runs with the same dense phase share it "
                         "(None: each run trains its own; docs/sweeps.md)", optional=True),
    "progress": F(bool, True, "run", "show progress bars"),
}
del F

REQUIRED = ("dataset", "model", "seed", "epochs", "batch_size", "learning_rate", "finetune_epochs",
            "method", "scorer", "allocation", "structure", "sparsity")
"""Fields every ``nn`` config must set; the others fall back to their default where missing."""


def method_fields(method: str) -> dict[str, FieldSpec]:
    """The fields only ``method`` (and its siblings) reads.

    >>> sorted(method_fields('rigl'))
    ['drop_fraction', 'prune_end', 'update_every']
    """
    return {k: v for k, v in FIELDS.items() if method in v.methods}


def validate_fields(config: Any) -> None:
    """Checks every field of an ``nn`` config against :data:`FIELDS` (and the cross-field rules).

    >>> import ml_collections
    >>> cfg = ml_collections.ConfigDict({k: FIELDS[k].default for k in REQUIRED})
    >>> cfg.method = 'gradual_magnitude'
    >>> validate_fields(cfg)
    >>> cfg.prune_begin, cfg.prune_end = 0.9, 0.1
    >>> validate_fields(cfg)
    Traceback (most recent call last):
    ...
    jaxprune.errors.ConfigError: config fields 'prune_begin' (0.9) and 'prune_end' (0.1): prune_begin must be below prune_end
    """
    missing = [k for k in REQUIRED if k not in config]
    if missing:
        raise ConfigError(f"config field {missing[0]!r} is missing (an nn config needs "
                          f"{', '.join(REQUIRED)})")
    for name, spec in FIELDS.items():
        if name in config:
            spec.check(name, config[name])
    g = config.get
    method = g("method")
    if method in (*_GRADUAL, *_DST):
        begin = g("prune_begin", FIELDS["prune_begin"].default)
        end = g("prune_end", FIELDS["prune_end"].default)
        if method in _GRADUAL and begin >= end:
            raise ConfigError(f"config fields 'prune_begin' ({begin}) and 'prune_end' ({end}): "
                              "prune_begin must be below prune_end")
    if method in _IMP and g("rewind_step", 0) and g("rewind_epoch", 0):
        raise ConfigError("set either config field 'rewind_step' or 'rewind_epoch', not both")
