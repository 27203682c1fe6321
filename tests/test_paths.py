import re

import numpy as np
import pytest
from typing import NamedTuple

from jaxprune import PruningError, leaf_paths, selected_paths
from jaxprune.paths import check_same_structure, matches

from helpers import linen_params, nnx_state


class SVM(NamedTuple):
    w: np.ndarray
    b: np.ndarray


def test_linen_paths_are_readable():
    paths = leaf_paths(linen_params())
    assert "params/Dense_0/kernel" in paths and "params/Dense_2/bias" in paths


def test_nnx_paths_drop_value_suffix():
    assert leaf_paths(nnx_state()) == [
        "fc1/bias", "fc1/kernel", "fc2/bias", "fc2/kernel", "norm/bias", "norm/scale"]


def test_namedtuple_and_tuple_paths():
    assert leaf_paths(SVM(np.zeros((3, 2)), np.zeros(2))) == ["w", "b"]
    assert leaf_paths((np.zeros(2), np.zeros(3))) == ["0", "1"]


def test_default_selects_kernels_only():
    assert selected_paths(linen_params()) == [f"params/Dense_{i}/kernel" for i in range(3)]
    assert selected_paths(nnx_state()) == ["fc1/kernel", "fc2/kernel"]


def test_glob_regex_predicate_and_lists():
    p = linen_params()
    assert selected_paths(p, "*/Dense_0/*") == ["params/Dense_0/bias", "params/Dense_0/kernel"]
    assert selected_paths(p, re.compile(r"Dense_[12]/kernel")) == [
        "params/Dense_1/kernel", "params/Dense_2/kernel"]
    assert selected_paths(p, lambda path, x: x.shape == (8,)) == ["params/Dense_1/bias"]
    assert len(selected_paths(p, ["*Dense_0/kernel", "*Dense_1/kernel"])) == 2
    assert selected_paths(p, exclude="*Dense_2*") == ["params/Dense_0/kernel", "params/Dense_1/kernel"]
    assert matches(None, "x", np.zeros((2, 2)))


def test_empty_selection_is_an_error():
    with pytest.raises(PruningError, match="selects no leaf"):
        selected_paths(linen_params(), "*nothing*")
    with pytest.raises(PruningError, match="include"):
        selected_paths(linen_params(), 42)


def test_structure_mismatch_names_leaf():
    p = {"a": np.zeros((2, 2)), "b": np.zeros(3)}
    with pytest.raises(PruningError, match="'b'"):
        check_same_structure(p, {"a": np.zeros((2, 2)), "b": np.zeros(4)}, "scores")
    with pytest.raises(PruningError, match="missing"):
        check_same_structure(p, {"a": np.zeros((2, 2))}, "scores")
