"""The result schema (jaxprune.results_schema): documented in docs/results_schema.md, followed by results
of every kind, written by one atomic writer."""

import json
import re
from pathlib import Path

import pytest

from jaxprune.dtree.experiment import run_tree
from jaxprune.harness import write_result
from jaxprune.results_schema import FIELDS, KIND_NAMES, SCHEMA_VERSION, unknown_fields
from jaxprune.svm.experiment import run_svm

DOC = Path(__file__).resolve().parents[1] / "docs" / "results_schema.md"


def test_the_doc_lists_every_field_with_its_kinds():
    rows = dict(re.findall(r"^\| `([^`]+)` \| ([a-z, ]+) \|", DOC.read_text(), flags=re.M))
    assert set(rows) == set(FIELDS)
    for name, field in FIELDS.items():
        assert tuple(rows[name].split(", ")) == field.kinds, name
        assert set(field.kinds) <= set(KIND_NAMES) and field.meaning
    assert f"version {SCHEMA_VERSION}" in DOC.read_text()


def test_unknown_fields_are_found():
    assert unknown_fields({"kind": "svm", "imp_rounds": 3, "test_accuracy": 1.0}) == ["imp_rounds"]
    assert unknown_fields({"kind": "nn", "split_criterion": "gini"}) == ["split_criterion"]


@pytest.mark.parametrize("kind", ["svm", "tree"])
def test_svm_and_tree_results_follow_the_schema(kind):
    if kind == "svm":
        r = run_svm({"dataset": "breast_cancer", "sparsity": 0.5, "steps": 50, "finetune_steps": 10})
        assert r["method"] == "one_shot" and r["scorer"] == "magnitude"
    else:
        r = run_tree({"dataset": "breast_cancer", "method": "ccp", "max_depth": 3})
        assert r["split_criterion"] == "gini" and "criterion" not in r
    assert r["kind"] == kind and r["schema_version"] == SCHEMA_VERSION
    assert unknown_fields(r) == []


def test_write_result_is_atomic_and_versioned(tmp_path):
    path = write_result({"kind": "tree", "test_accuracy": 0.5}, tmp_path / "w")
    assert json.loads(Path(path).read_text()) == {"kind": "tree", "test_accuracy": 0.5,
                                                  "schema_version": SCHEMA_VERSION}
    assert [p.name for p in (tmp_path / "w").iterdir()] == ["result.json"]  # no temporary left
