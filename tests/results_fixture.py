"""The "results unchanged" fixture: small versions of every run of the reproduction sweeps.

For each sweep file of ``experiments/sweeps/`` every config is shrunk (``dataset='digits'``, at most
one epoch and one fine-tuning epoch, no latency measurement, no progress bars); of each group (the
configs that differ only in seed and sparsity) the first seed and its first :data:`PER_GROUP`
sparsities are kept. ``tests/data/results_before.jsonl`` holds (one JSON line per run) ``fit_sha256`` and ``test_accuracy`` of each of
those runs as computed by the code *before* the harness refactor (issue 16; made with
``python tests/results_fixture.py``, one run at a time through ``train_and_evaluate``), and
``tests/test_results_unchanged.py`` checks that today's code reproduces them.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import ml_collections

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "data" / "results_before.jsonl"
PER_GROUP = 2  # sparsities per group (of the first seed) in the fixture
SWEEPS = ("demo", "gradual_vs_oneshot", "pruning_at_init", "seed_mlp", "shrinkbench_baselines",
          "lth_lenet300")


def shrink(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A copy of ``config`` small enough to train in about a second on digits."""
    c = ml_collections.ConfigDict(config.to_dict())
    c.dataset = "digits"
    c.epochs = min(int(c.epochs), 1)
    c.finetune_epochs = min(int(c.finetune_epochs), 1)
    c.latency_batch = 0
    c.progress = False
    return c


def group_key(config: dict) -> tuple:
    """What a group of a sweep shares: every field but ``seed`` and ``sparsity``."""
    return tuple(sorted((k, repr(v)) for k, v in config.items() if k not in ("seed", "sparsity")))


def small_configs(sweep: str, per_group: int | None = PER_GROUP) -> list[ml_collections.ConfigDict]:
    """The shrunk configs of ``experiments/sweeps/<sweep>.py`` with the smallest seed, deduplicated,
    the first ``per_group`` sparsities of each group (``None``: all)."""
    from jaxprune.sweep.spec import config_dict, expand_all, load_sweep, run_key

    configs = expand_all(load_sweep(ROOT / "experiments" / "sweeps" / f"{sweep}.py"))
    first = min(c.seed for c in configs)
    out, seen, groups = [], set(), {}
    for config in configs:
        if config.seed != first:
            continue
        small = shrink(config)
        key = run_key(small)
        group = group_key(config_dict(small))
        if key in seen or (per_group is not None and groups.get(group, 0) >= per_group):
            continue
        seen.add(key)
        groups[group] = groups.get(group, 0) + 1
        out.append(small)
    return out


def enable_cache() -> None:
    """XLA's persistent compilation cache (as ``jaxprune sweep``): the runs compile the same programs."""
    from jaxprune.sweep.runner import enable_compilation_cache

    enable_compilation_cache(os.path.join(tempfile.gettempdir(), "jaxprune_results_fixture_cache"))


def read_fixture() -> list[dict]:
    """The records of :data:`FIXTURE` (an empty list when it does not exist)."""
    if not FIXTURE.exists():
        return []
    return [json.loads(line) for line in FIXTURE.read_text().splitlines() if line.strip()]


def main() -> None:
    """Computes the fixture with the code on ``sys.path`` (run once, before the refactor); appends
    one line per run, skipping runs already recorded (so it can be resumed)."""
    from jaxprune.experiment import train_and_evaluate
    from jaxprune.sweep.spec import config_dict, run_key

    enable_cache()
    done = {r["key"] for r in read_fixture()}
    os.makedirs(FIXTURE.parent, exist_ok=True)
    for sweep in SWEEPS:
        for config in small_configs(sweep):
            if run_key(config) in done:
                continue
            with tempfile.TemporaryDirectory() as workdir:
                result = train_and_evaluate(config, workdir)
            record = {"sweep": sweep, "key": run_key(config), "config": config_dict(config),
                      "fit_sha256": result.get("fit_sha256"), "test_accuracy": result["test_accuracy"]}
            done.add(record["key"])
            with open(FIXTURE, "a") as f:
                f.write(json.dumps(record, sort_keys=True) + "\n")
            print(sweep, record["key"], config.method, config.sparsity, record["test_accuracy"],
                  file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
