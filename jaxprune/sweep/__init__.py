"""Sweeps: many experiment configs run as one resumable job, then summarised.

``spec`` defines and expands sweeps, ``runner`` runs them into a directory (one JSON line per finished
run; resumable, shardable), ``report`` turns the results into a table, plots and a best-strategy line.
``vmapped`` (imported lazily by the runner) trains runs that differ only in seed/sparsity together.
See docs/sweeps.md.
"""

from jaxprune.sweep.best import Best, best_strategy
from jaxprune.sweep.report import Report, load_results, markdown_table, summarize, \
    write_report
from jaxprune.sweep.runner import SweepOutcome, parse_shard, read_records, run_sweep
from jaxprune.sweep.spec import Axis, Sweep, cases, expand, expand_all, load_sweep, product, run_key, zip_

__all__ = ["Axis", "Sweep", "product", "zip_", "cases", "expand", "expand_all", "load_sweep", "run_key",
           "run_sweep", "parse_shard", "read_records", "SweepOutcome", "load_results", "summarize",
           "markdown_table", "write_report", "best_strategy", "Best", "Report"]
