"""Which configuration of a sweep is best: the quality a run is judged by, strategy labels, and
the most compressed strategy within an allowed loss from dense (``jaxprune report --best``).

Rows come from :func:`jaxprune.sweep.report.summarize`. Accuracy rows (higher is better) allow
``max_drop`` percentage points; language-model rows (``kind='lm'``, validation perplexity, lower is
better) allow ``max_increase`` percent.
"""

from __future__ import annotations

import json
import math
from typing import Any, NamedTuple, Sequence

from jaxprune.errors import ConfigError, DataError

__all__ = ["Quality", "ACCURACY", "PERPLEXITY", "quality_of", "row_quality", "Best", "best_strategy",
           "as_number", "group_fields", "label_fields", "strategy_label", "is_dense", "nonzero_fraction",
           "GROUP_FIRST", "DENSE_METHOD"]

GROUP_FIRST = ("model", "method", "target_sparsity")
DENSE_METHOD = "none"


class Quality(NamedTuple):
    """The result field a run is judged by, its dense counterpart, and which way is better."""

    metric: str
    dense: str
    higher_is_better: bool
    axis_label: str
    scale: float  # for display: fractions as percent


ACCURACY = Quality("test_accuracy", "dense_test_accuracy", True, "test accuracy (%)", 100.0)
PERPLEXITY = Quality("val_perplexity", "dense_val_perplexity", False, "validation perplexity", 1.0)


def quality_of(result: dict) -> Quality:
    """:data:`PERPLEXITY` for language-model results (``kind='lm'``), else :data:`ACCURACY`.

    >>> quality_of({'kind': 'lm'}).metric, quality_of({'kind': 'nn'}).metric
    ('val_perplexity', 'test_accuracy')
    """
    return PERPLEXITY if result.get("kind") == "lm" else ACCURACY


def as_number(v: Any) -> float | None:
    """``v`` as a float if it is a real number (not a bool), else None.

    >>> as_number(3), as_number(True), as_number('x')
    (3.0, None, None)
    """
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v)


def group_fields(rows: Sequence[dict]) -> list[str]:
    """The grouping fields of summary rows (every key but ``n``, ``quality`` and the statistics).

    >>> group_fields([{'model': 'm', 'method': 'x', 'n': 2, 'quality': 'test_accuracy', 'a_mean': 1.0}])
    ['model', 'method']
    """
    return [k for k in rows[0] if k not in ("n", "quality") and not k.endswith(("_mean", "_std"))]


def label_fields(rows: Sequence[dict]) -> list[str]:
    """Group fields (besides model, method, sparsity) that differ among the pruned rows.

    >>> label_fields([{'model': 'm', 'method': 'x', 'lr': 1, 'n': 1}, {'model': 'm', 'method': 'x', 'lr': 2, 'n': 1}])
    ['lr']
    """
    pruned = [r for r in rows if not is_dense(r)] or list(rows)
    return [k for k in group_fields(rows) if k not in GROUP_FIRST
            and len({json.dumps(r.get(k), default=str) for r in pruned}) > 1]


def strategy_label(row: dict, fields: Sequence[str]) -> str:
    """The strategy a row belongs to: its method and the ``fields`` from :func:`label_fields`.

    >>> strategy_label({'method': 'one_shot', 'lr': 2}, ['lr']), strategy_label({'method': 'none'}, [])
    ('one_shot lr=2', 'none (dense)')
    """
    if row.get("method") == DENSE_METHOD:
        return f"{DENSE_METHOD} (dense)"
    return " ".join([str(row.get("method")), *(f"{k}={row.get(k)}" for k in fields)])


class Best(NamedTuple):
    """The most compressed strategy of one model within the allowed loss of quality from dense.

    For accuracy (``quality.metric == 'test_accuracy'``) the allowance is ``max_drop`` percentage
    points and ``dense_accuracy`` is a fraction, as in result.json; for perplexity it is
    ``max_increase`` percent and ``dense_accuracy`` holds the dense perplexity.
    """

    model: str
    max_drop: float
    dense_accuracy: float | None  # the dense reference of `quality.metric`
    dense_source: str
    row: dict | None  # the chosen summary row, None when none qualifies
    closest: dict | None  # when none qualifies: the best pruned row
    label: str = ""
    quality: Quality = ACCURACY

    def _value(self, v: float) -> str:
        if self.quality.higher_is_better:
            return f"{100 * v:.2f} %"
        return f"{v:.3f}"

    def _change(self, v: float) -> str:
        if self.quality.higher_is_better:
            return f"{100 * (v - self.dense_accuracy):+.2f} pp"
        return f"{100 * (v / self.dense_accuracy - 1):+.1f} %"

    def line(self) -> str:
        """One human-readable line."""
        q = self.quality
        name = "test accuracy" if q.higher_is_better else "val perplexity"
        allowed = f"{self.max_drop:g} pp" if q.higher_is_better else f"+{self.max_drop:g} % perplexity"
        if self.dense_accuracy is None:
            return (f"best for {self.model}: no dense reference (no method '{DENSE_METHOD}' runs, no "
                    f"sparsity-0 runs, no {q.dense}), so the allowance cannot be applied")
        ref = f"dense {self._value(self.dense_accuracy)} ({self.dense_source})"
        if self.row is None:
            text = f"best for {self.model}: no pruned configuration stays within {allowed} of {ref}"
            if self.closest is not None:
                c = self.closest
                v = c[f"{q.metric}_mean"]
                text += (f"; the best pruned one is {c['_label']} at sparsity {c['target_sparsity']:g} "
                         f"({self._value(v)}, {self._change(v)})")
            return text
        r = self.row
        frac = nonzero_fraction(r)
        v = r[f"{q.metric}_mean"]
        std = r.get(f"{q.metric}_std", math.nan)
        spread = "" if math.isnan(std) else (f" ± {100 * std:.2f}" if q.higher_is_better else f" ± {std:.3f}")
        value = self._value(v)
        value = value[:-2] + spread + " %" if q.higher_is_better else value + spread
        return (f"best for {self.model} within {allowed} of {ref}: {self.label} at sparsity "
                f"{r['target_sparsity']:g} -> {100 * frac:.2f} % of weights remain "
                f"({1 / frac:.1f}x compression), {name} {value} ({self._change(v)}, n={r['n']})")


def nonzero_fraction(row: dict) -> float:
    """Fraction of weights kept: ``nonzero_fraction_mean``, else 1 − achieved, else 1 − target sparsity.

    >>> nonzero_fraction({'sparsity_mean': 0.75})
    0.25
    """
    if row.get("nonzero_fraction_mean") is not None:
        return row["nonzero_fraction_mean"]
    if row.get("sparsity_mean") is not None:
        return 1.0 - row["sparsity_mean"]
    return 1.0 - (row.get("target_sparsity") or 0.0)


def is_dense(row: dict) -> bool:
    """A dense reference row: method ``'none'`` or target sparsity 0.

    >>> is_dense({'method': 'none'}), is_dense({'method': 'x', 'target_sparsity': 0.5})
    (True, False)
    """
    return row.get("method") == DENSE_METHOD or row.get("target_sparsity") == 0.0


def row_quality(row: dict) -> Quality:
    """The :class:`Quality` a summary row is judged by (its ``quality`` field).

    >>> row_quality({'quality': 'val_perplexity'}).higher_is_better
    False
    """
    return PERPLEXITY if row.get("quality") == PERPLEXITY.metric else ACCURACY


def _dense_reference(rows: list[dict], q: Quality) -> tuple[float | None, str]:
    pick = max if q.higher_is_better else min
    none = [r[f"{q.metric}_mean"] for r in rows if r.get("method") == DENSE_METHOD]
    if none:
        return pick(none), f"method '{DENSE_METHOD}'"
    zero = [r[f"{q.metric}_mean"] for r in rows if r.get("target_sparsity") == 0.0]
    if zero:
        return pick(zero), "sparsity-0 runs"
    reported = [r[f"{q.dense}_mean"] for r in rows if as_number(r.get(f"{q.dense}_mean")) is not None]
    if reported:
        return pick(reported), f"{'max' if q.higher_is_better else 'min'} {q.dense} reported by the runs"
    return None, ""


def best_strategy(rows: Sequence[dict], max_drop: float = 1.0, max_increase: float = 5.0) -> list[Best]:
    """Per model, the group with the lowest nonzero fraction whose quality stays within the allowance
    (ties: better quality). Accuracy rows: mean accuracy at least dense minus ``max_drop`` percentage
    points. Perplexity rows (``kind='lm'``): mean perplexity at most dense times ``1 + max_increase/100``.
    Dense = the method ``'none'`` group, else sparsity-0 groups, else the best mean dense value the
    runs report (``dense_test_accuracy`` / ``dense_val_perplexity``).

    >>> rows = [{'model': 'm', 'method': 'none', 'target_sparsity': 0.0, 'n': 2,
    ...          'test_accuracy_mean': 0.90, 'nonzero_fraction_mean': 1.0},
    ...         {'model': 'm', 'method': 'one_shot', 'target_sparsity': 0.5, 'n': 2,
    ...          'test_accuracy_mean': 0.895, 'nonzero_fraction_mean': 0.5},
    ...         {'model': 'm', 'method': 'one_shot', 'target_sparsity': 0.9, 'n': 2,
    ...          'test_accuracy_mean': 0.85, 'nonzero_fraction_mean': 0.1}]
    >>> b = best_strategy(rows, max_drop=1.0)[0]
    >>> b.row['target_sparsity'], b.label
    (0.5, 'one_shot')
    """
    for name, v in (("max_drop", max_drop), ("max_increase", max_increase)):
        if as_number(v) is None or not math.isfinite(v) or v < 0:
            raise ConfigError(f"{name} must be a finite number >= 0 (percentage points / percent), "
                              f"got {v!r}")
    rows = list(rows)
    if not rows:
        raise DataError("best_strategy: no rows (call summarize(load_results(DIR)) first)")
    for i, r in enumerate(rows):
        if not isinstance(r, dict) or "model" not in r or f"{row_quality(r).metric}_mean" not in r:
            raise DataError(f"best_strategy: rows[{i}] has no 'model' / '{row_quality(r).metric}_mean' "
                            f"(rows come from summarize())")
    # Rows whose runs were all flagged (no finite quality) cannot be chosen or be the reference.
    rows = [r for r in rows if as_number(r[f"{row_quality(r).metric}_mean"]) is not None
            and math.isfinite(r[f"{row_quality(r).metric}_mean"])]
    fields = label_fields(rows) if rows else []
    out = []
    for model in sorted({r["model"] for r in rows}, key=str):
        mine = [r for r in rows if r["model"] == model]
        q = row_quality(mine[0])
        allowance = float(max_drop if q.higher_is_better else max_increase)
        metric = f"{q.metric}_mean"
        better = (lambda r: -r[metric]) if q.higher_is_better else (lambda r: r[metric])
        dense, source = _dense_reference(mine, q)
        pruned = [{**r, "_label": strategy_label(r, fields)} for r in mine if not is_dense(r)]
        if dense is None:
            out.append(Best(model, allowance, None, "", None, None, quality=q))
            continue
        if q.higher_is_better:
            ok = [r for r in pruned if r[metric] >= dense - max_drop / 100 - 1e-12]
        else:
            ok = [r for r in pruned if r[metric] <= dense * (1 + max_increase / 100) + 1e-12]
        if not ok:
            closest = min(pruned, key=better) if pruned else None
            out.append(Best(model, allowance, dense, source, None, closest, quality=q))
            continue
        best = min(ok, key=lambda r: (nonzero_fraction(r), better(r), r["_label"]))
        label = best.pop("_label")
        out.append(Best(model, allowance, dense, source, best, None, label, q))
    return out


