"""The results of a sweep as a table, plots and a best-strategy line (``jaxprune report DIR``).

Records of every ``results*.jsonl`` in ``DIR`` are merged (deduplicated by key) and grouped by their
config minus the replicate fields ``seed`` and ``calibration_seed``; each group gives one row with mean,
sample std (ddof=1; empty for one seed) and n over its seeds. The quality a row is judged by is the
test accuracy (higher is better), or for language-model runs (``kind='lm'``) the validation perplexity
(lower is better): see :data:`ACCURACY` and :data:`PERPLEXITY`. Written: ``summary.csv`` (every metric), ``report.md`` (headline columns),
``accuracy_vs_sparsity.png``, ``accuracy_vs_nonzeros.png`` and, when runs report FLOPs,
``accuracy_vs_flops.png`` (``perplexity_vs_*.png`` for language-model sweeps).
"""

from __future__ import annotations

import csv
import json
import math
import os
from typing import Any, Iterable, NamedTuple, Sequence

from jaxprune.errors import DataError
from jaxprune.sweep.best import (ACCURACY, GROUP_FIRST, PERPLEXITY, Best, Quality, as_number,
                                 best_strategy, group_fields, is_dense, label_fields, quality_of,
                                 row_quality, strategy_label)
from jaxprune.sweep.runner import read_records

__all__ = ["load_results", "summarize", "markdown_table", "write_report", "best_strategy", "Best",
           "Report", "METRICS", "Quality", "ACCURACY", "PERPLEXITY", "quality_of", "REPLICATE_FIELDS"]

METRICS = ("test_accuracy", "dense_test_accuracy", "pruned_test_accuracy", "sparsity", "nonzero_params",
           "total_params", "nonzero_fraction", "flops_final", "macs_nonzero_final", "bytes_dense",
           "bytes_final", "wall_s", "val_perplexity", "dense_val_perplexity", "val_loss", "dense_val_loss",
           "mean_relative_layer_error", "prune_seconds")
"""Result fields summarised per group (plus every numeric entry of a ``bytes`` dict, as ``bytes.NAME``)."""

REPLICATE_FIELDS = ("seed", "calibration_seed")
"""Config fields that replicate a run (averaged over), rather than define a strategy (grouped by)."""


def load_results(workdir: str | os.PathLike) -> list[dict]:
    """All records ``{"key", "config", "result"}`` of ``workdir``'s ``results*.jsonl`` files, each key
    once; torn or invalid lines are skipped.

    >>> load_results('/nonexistent')  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    jaxprune.errors.DataError: no finished runs in '/nonexistent'/results*.jsonl ...
    """
    workdir = os.fspath(workdir)
    records = read_records(workdir)
    if not records:
        raise DataError(f"no finished runs in {workdir!r}/results*.jsonl (run `jaxprune sweep FILE "
                        f"--workdir {workdir}` first)")
    return records


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _finite_quality(result: dict) -> bool:
    v = as_number(result.get(quality_of(result).metric))
    return v is not None and math.isfinite(v)


def _metrics(result: dict) -> dict[str, float]:
    out = {}
    for name in METRICS:
        v = as_number(result.get(name))
        if v is not None:
            out[name] = v
    if "nonzero_fraction" not in out and out.get("total_params"):
        if "nonzero_params" in out:
            out["nonzero_fraction"] = out["nonzero_params"] / out["total_params"]
    if isinstance(result.get("bytes"), dict):
        for k, v in sorted(result["bytes"].items()):
            if as_number(v) is not None:
                out[f"bytes.{k}"] = float(v)
    return out


def _check_records(records: Any) -> list[dict]:
    if isinstance(records, (str, bytes, os.PathLike)):
        raise DataError("summarize: expects the list of records from load_results, got a path; "
                        "call load_results(path) first")
    records = list(records)
    if not records:
        raise DataError("summarize: no records")
    for i, r in enumerate(records):
        if not (isinstance(r, dict) and isinstance(r.get("config"), dict)
                and isinstance(r.get("result"), dict)):
            raise DataError(f"summarize: records[{i}] must be a dict with 'config' and 'result' dicts")
    return records


def _mean_std(xs: list[float]) -> tuple[float, float]:
    mean = sum(xs) / len(xs)
    if len(xs) < 2:
        return mean, math.nan
    return mean, math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1))


def _sort_key(v: Any) -> tuple:
    n = as_number(v)
    return (0, n, "") if n is not None else (1, 0.0, str(v))


def summarize(records: Iterable[dict]) -> list[dict]:
    """One row per config minus :data:`REPLICATE_FIELDS`: the fields that vary across the sweep (plus
    ``model``, ``method``, ``target_sparsity``), ``n``, ``quality`` (the metric the row is judged by)
    and ``NAME_mean`` / ``NAME_std`` per metric.

    >>> recs = [{'key': str(s), 'config': {'model': 'm', 'method': 'one_shot', 'sparsity': 0.5,
    ...          'seed': s}, 'result': {'test_accuracy': a, 'sparsity': 0.5}}
    ...         for s, a in [(0, 0.8), (1, 0.9)]]
    >>> row = summarize(recs)[0]
    >>> row['n'], round(row['test_accuracy_mean'], 3), round(row['test_accuracy_std'], 4)
    (2, 0.85, 0.0707)
    """
    records = _check_records(records)
    flat = [{k: v for k, v in _flatten(r["config"]).items() if k not in REPLICATE_FIELDS}
            for r in records]
    keys = sorted({k for f in flat for k in f})
    varying = [k for k in keys
               if len({json.dumps(f.get(k), sort_keys=True, default=str) for f in flat}) > 1]
    extra = [k for k in varying if k not in GROUP_FIRST and k != "sparsity"]
    groups: dict[str, list[int]] = {}
    for i, f in enumerate(flat):
        groups.setdefault(json.dumps(f, sort_keys=True, default=str), []).append(i)
    rows = []
    for members in groups.values():
        r0 = records[members[0]]
        cfg, res = flat[members[0]], r0["result"]
        row: dict[str, Any] = {"model": cfg.get("model", res.get("model", "")),
                               "method": cfg.get("method", res.get("method", ""))}
        for k in extra:
            row[k] = cfg.get(k)
        row["target_sparsity"] = as_number(res.get("target_sparsity", cfg.get("sparsity")))
        # A record without a finite quality (missing, a string, NaN) is flagged and left out of
        # every mean, so that n is what the means are over and such a run is never "best".
        quality = quality_of(res)
        valid = [i for i in members if _finite_quality(records[i]["result"])]
        row["n"] = len(valid)
        if len(valid) < len(members):
            row["flagged"] = len(members) - len(valid)
        if not valid:
            row[f"{quality.metric}_mean"] = row[f"{quality.metric}_std"] = math.nan
        values: dict[str, list[float]] = {}
        for i in valid:
            for name, v in _metrics(records[i]["result"]).items():
                values.setdefault(name, []).append(v)
        for name in sorted(values, key=_metric_order):
            row[f"{name}_mean"], row[f"{name}_std"] = _mean_std(values[name])
        row["quality"] = quality.metric
        rows.append(row)
    order = ["model", "method", *extra, "target_sparsity"]
    rows.sort(key=lambda r: tuple(_sort_key(r.get(k)) for k in order))
    return rows


def _metric_order(name: str) -> tuple:
    base = name.split(".")[0]
    return (METRICS.index(base) if base in METRICS else len(METRICS), name)


def _columns(rows: Sequence[dict]) -> list[str]:
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    return cols


def _csv_value(v: Any) -> Any:
    if isinstance(v, float) and math.isnan(v):
        return ""
    return "" if v is None else v


def _fmt(mean: Any, std: Any, scale: float = 1.0, digits: int = 2) -> str:
    """``mean ± std`` (std omitted when NaN); counts and bytes (>= 100) without decimals."""
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return ""
    mean, std = mean * scale, (math.nan if std is None else std * scale)
    big = scale == 1.0 and abs(mean) >= 100
    text = f"{mean:,.0f}" if big else f"{mean:.{digits}f}"
    if not math.isnan(std):
        text += " ± " + (f"{std:,.0f}" if big and std >= 1 else f"{std:.{digits}f}" if not big
                         else f"{std:.2g}")
    return text


_MD_METRICS = (("test_accuracy", "test acc %", 100.0), ("dense_test_accuracy", "dense acc %", 100.0),
               ("val_perplexity", "val ppl", 1.0), ("dense_val_perplexity", "dense ppl", 1.0),
               ("mean_relative_layer_error", "layer err", 1.0), ("prune_seconds", "prune s", 1.0),
               ("sparsity", "sparsity", 1.0), ("nonzero_params", "nonzeros", 1.0),
               ("macs_nonzero_final", "MACs (nonzero)", 1.0), ("bytes.csr", "bytes (CSR)", 1.0),
               ("wall_s", "wall s", 1.0))


def markdown_table(rows: Sequence[dict]) -> str:
    """The headline columns of ``rows`` (from :func:`summarize`) as a markdown table; accuracies in %.

    >>> print(markdown_table([{'model': 'm', 'method': 'none', 'target_sparsity': 0.0, 'n': 1,
    ...                        'test_accuracy_mean': 0.9, 'test_accuracy_std': float('nan')}]))
    | model | method | target_sparsity | n | test acc % |
    |---|---|---|---|---|
    | m | none | 0.0 | 1 | 90.00 |
    """
    if not rows:
        raise DataError("markdown_table: no rows")
    fields = group_fields(rows)
    metrics = [(m, h, s) for m, h, s in _MD_METRICS if any(f"{m}_mean" in r for r in rows)]
    head = [*fields, "n", *(h for _, h, _ in metrics)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = ["" if r.get(k) is None else str(r[k]) for k in fields] + [str(r["n"])]
        for m, _, scale in metrics:
            digits = {"sparsity": 3, "mean_relative_layer_error": 4, "wall_s": 1, "prune_seconds": 1
                      }.get(m, 2)
            cells.append(_fmt(r.get(f"{m}_mean"), r.get(f"{m}_std"), scale, digits))
        lines.append("| " + " | ".join(cells) + " |")
    flagged = sum(int(r.get("flagged", 0)) for r in rows)
    if flagged:
        lines.append("")
        names = "/".join(sorted({r.get("quality", ACCURACY.metric) for r in rows}))
        lines.append(f"{flagged} run(s) flagged: no finite {names} (missing, not a number or NaN); "
                     "left out of n, the means and --best.")
    return "\n".join(lines)


class Report(NamedTuple):
    """What :func:`write_report` wrote."""

    rows: list[dict]
    csv: str
    markdown: str
    plots: list[str]
    table: str


def _plot(rows: list[dict], path: str, xkey: str, xlabel: str, *, log_x: bool, remaining: bool = False,
          x_scale: float = 1.0) -> None:
    from matplotlib.figure import Figure

    fields = label_fields(rows)
    models = sorted({r["model"] for r in rows}, key=str)
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.subplots()
    lines: dict[str, list[tuple[float, float, float]]] = {}
    q = row_quality(rows[0]) if rows else ACCURACY
    for r in rows:
        y = r.get(f"{q.metric}_mean")
        x = r.get(f"{xkey}_mean", r.get(xkey) if xkey == "target_sparsity" else None)
        if x is None or y is None:
            continue
        x = (1.0 - x) * 100 if remaining else x * x_scale
        if log_x and x <= 0:
            continue
        std = r.get(f"{q.metric}_std", math.nan)
        label = strategy_label(r, fields) + (f" [{r['model']}]" if len(models) > 1 else "")
        if is_dense(r):
            ax.axhline(q.scale * y, linestyle="--", linewidth=1, color="gray")
        lines.setdefault(label, []).append((x, q.scale * y, 0.0 if math.isnan(std) else q.scale * std))
    for label, pts in sorted(lines.items()):
        pts.sort()
        ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], marker="o",
                    markersize=4, capsize=3, label=label)
    if log_x:
        ax.set_xscale("log")
    if remaining:
        from matplotlib.ticker import FixedLocator, FormatStrFormatter, NullLocator
        xs = [p[0] for pts in lines.values() for p in pts]
        if xs:  # plain percentages (100, 50, 20, ...) instead of powers of ten
            ticks = [t for t in (100, 50, 20, 10, 5, 2, 1, 0.5, 0.2, 0.1)
                     if min(xs) / 1.5 <= t <= max(xs) * 1.5]
            ax.xaxis.set_major_locator(FixedLocator(ticks))
            ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
            ax.xaxis.set_minor_locator(NullLocator())
        ax.invert_xaxis()  # lottery-ticket style: 100 % on the left, fewer weights to the right
    ax.set_xlabel(xlabel)
    ax.set_ylabel(q.axis_label)
    ax.grid(True, which="both", alpha=0.3)
    if lines:
        ax.legend(fontsize=7)
    fig.savefig(path, dpi=120)


def write_report(workdir: str | os.PathLike, *, log_x: bool = False) -> Report:
    """Writes ``summary.csv``, ``report.md`` and the PNG plots into ``workdir``; returns their paths.

    Example (needs a sweep's results)::

        rep = write_report('runs/demo', log_x=True)
        print(rep.table); print(rep.plots)
    """
    workdir = os.fspath(workdir)
    records = load_results(workdir)
    rows = summarize(records)
    cols = _columns(rows)
    csv_path = os.path.join(workdir, "summary.csv")
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for r in rows:
            w.writerow({k: _csv_value(r.get(k)) for k in cols})
    table = markdown_table(rows)
    planned = ""
    plan = os.path.join(workdir, "sweep.json")
    if os.path.exists(plan):
        try:
            with open(plan) as f:
                keys = set(json.load(f)["keys"])
            done = len(keys & {r["key"] for r in records})
            planned = f" ({done} of {len(keys)} planned runs finished)"
        except (ValueError, KeyError, TypeError):
            planned = ""
    md_path = os.path.join(workdir, "report.md")
    with open(md_path, "w") as f:
        f.write(f"# Sweep report: {workdir}\n\n{len(records)} runs, {len(rows)} groups (mean ± std over "
                f"seeds, std with ddof=1){planned}. Every metric: `summary.csv`.\n\n{table}\n")
    what = "accuracy" if row_quality(rows[0]).higher_is_better else "perplexity"
    plots = [os.path.join(workdir, f"{what}_vs_sparsity.png"),
             os.path.join(workdir, f"{what}_vs_nonzeros.png")]
    _plot(rows, plots[0], "sparsity" if any("sparsity_mean" in r for r in rows) else "target_sparsity",
          "remaining weights (%)" if log_x else "sparsity (fraction of prunable weights removed)",
          log_x=log_x, remaining=log_x)
    _plot(rows, plots[1], "nonzero_params", "nonzero parameters", log_x=True)
    if any("macs_nonzero_final_mean" in r for r in rows):
        plots.append(os.path.join(workdir, f"{what}_vs_flops.png"))
        _plot(rows, plots[-1], "macs_nonzero_final", "FLOPs of the kept weights (2 x nonzero MACs)",
              log_x=True, x_scale=2.0)
    elif any("flops_final_mean" in r for r in rows):
        plots.append(os.path.join(workdir, f"{what}_vs_flops.png"))
        _plot(rows, plots[-1], "flops_final", "FLOPs (XLA cost analysis)", log_x=True)
    return Report(rows, csv_path, md_path, plots, table)
