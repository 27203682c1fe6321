"""The structured sweep's table for docs/RESULTS.md and docs/structure.md, from a sweep directory.

    jaxprune sweep experiments/sweeps/structured.py --workdir runs/structured
    python scripts/structured_table.py runs/structured

One row per model, criterion and sparsity: MACs and FLOPs of the dense model over the shrunk one,
the shrunk model's parameters, test accuracy right after pruning (no fine-tuning) and after
fine-tuning, against the model's dense row.
"""

from __future__ import annotations

import argparse
import sys

from jaxprune.sweep.report import load_results


def rows(workdir: str) -> list[str]:
    records = load_results(workdir)
    dense = {r["result"]["model"]: r["result"] for r in records if r["config"]["method"] == "none"}
    out = ["| model | structure | criterion | units removed | MACs ÷ | FLOPs ÷ | params | acc. pruned % "
           "| acc. fine-tuned % |", "|---|---|---|---|---|---|---|---|---|"]
    for name, d in sorted(dense.items()):
        out.append(f"| {name} | dense | – | 0 | 1.00 | 1.00 | {d['total_params']:,} | – "
                   f"| {100 * d['test_accuracy']:.2f} |")
        pruned = sorted((r["config"]["criterion"], r["config"]["sparsity"], r["result"]) for r in records
                        if r["result"]["model"] == name and r["config"]["method"] != "none")
        for crit, s, r in sorted(pruned, key=lambda t: (t[1], t[0])):
            out.append(f"| {name} | {r['structure']} | {crit} | {100 * s:.0f} % "
                       f"| {d['macs_dense'] / r['macs_nonzero_final']:.2f} "
                       f"| {d['flops_dense'] / r['flops_final']:.2f} | {r['params_final']:,} "
                       f"| {100 * r['pruned_test_accuracy']:.2f} | {100 * r['test_accuracy']:.2f} |")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("workdir", help="the structured sweep's --workdir")
    args = ap.parse_args(argv)
    print("\n".join(rows(args.workdir)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
