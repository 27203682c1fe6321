"""Results unchanged by the harness refactor (issue 16): the runs of the reproduction sweeps and the demo
sweep, at a small size (tests/results_fixture.py), give the ``fit_sha256`` and ``test_accuracy`` the
code before the refactor gave (tests/data/results_before.jsonl).

The runs go through ``run_sweep`` (grouped where the grouping rules allow, one by one otherwise), so
both the sequential and the grouped trainer are checked against the same numbers. The fixture holds,
of each group of each sweep (configs differing only in seed and sparsity), the first seed at its
first two sparsities; to keep the suite's time, the first of each group is checked, and both for the
demo sweep's groups (so the GroupTrainer trains groups of two). ``JAXPRUNE_FULL_FIXTURE=1`` checks
every record (41 runs; all equal on 2026-12-04, fixture remade after the digits split change).
"""

from __future__ import annotations

import os

import ml_collections
import pytest
from helpers import persistent_compilation_cache
from results_fixture import SWEEPS, group_key, read_fixture, small_configs

from jaxprune.sweep.runner import read_records, run_sweep
from jaxprune.sweep.spec import run_key
from jaxprune.sweep.vmapped import vmap_groups

RECORDS = read_fixture()
FULL = os.environ.get("JAXPRUNE_FULL_FIXTURE") == "1"


def _checked(sweep: str) -> list[dict]:
    mine = [r for r in RECORDS if r["sweep"] == sweep]
    if FULL or sweep == "demo":
        return mine
    seen, out = set(), []
    for r in mine:
        if group_key(r["config"]) not in seen:
            seen.add(group_key(r["config"]))
            out.append(r)
    return out


@pytest.fixture(scope="module", autouse=True)
def _persistent_compilation_cache(tmp_path_factory):
    """The runs compile the same programs again and again; a persistent cache (as ``jaxprune sweep``
    uses) makes this module several times faster. Restored afterwards."""
    yield from persistent_compilation_cache(tmp_path_factory.mktemp("xla_cache"))


def test_the_fixture_covers_every_sweep_config():
    """Every shrunk config (first seed) of every sweep has a recorded result."""
    recorded = {r["key"] for r in RECORDS}
    missing = {s: [run_key(c) for c in small_configs(s) if run_key(c) not in recorded] for s in SWEEPS}
    assert not any(missing.values()), missing
    assert all(r["test_accuracy"] is not None for r in RECORDS)


@pytest.mark.parametrize("sweep", SWEEPS)
def test_sweep_results_unchanged(sweep, tmp_path):
    chosen = _checked(sweep)
    assert chosen, f"no fixture records for {sweep}"
    configs = [ml_collections.ConfigDict(r["config"]) for r in chosen]
    for c in configs:
        c.progress = False
    if sweep == "demo":  # at least one group of two trains through the GroupTrainer
        assert any(len(g) > 1 for g in vmap_groups(configs))
    run_sweep(configs, tmp_path, progress=False, bar=False, note=lambda _: None)
    got = {r["key"]: r["result"] for r in read_records(tmp_path)}
    for record in chosen:
        result = got[record["key"]]
        assert (result.get("fit_sha256"), result["test_accuracy"]) == (
            record["fit_sha256"], record["test_accuracy"]), (record["config"]["method"],
                                                             record["config"]["sparsity"])
