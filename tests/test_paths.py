import re
from typing import NamedTuple

import jax
import numpy as np
import pytest

from jaxprune import PruningError, leaf_paths, selected_paths
from jaxprune.paths import (check_same_structure, covers, flatten_with_paths, kernels, map_with_path,
                            matches, matrices)

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
    # A glob naming a layer selects its kernel; one naming a leaf selects that leaf.
    assert selected_paths(p, "*/Dense_0/*") == ["params/Dense_0/kernel"]
    assert selected_paths(p, "*/Dense_0/b*") == ["params/Dense_0/bias"]
    assert selected_paths(p, re.compile(r"Dense_[12]/kernel")) == [
        "params/Dense_1/kernel", "params/Dense_2/kernel"]
    assert selected_paths(p, lambda path, x: x.shape == (8,)) == ["params/Dense_1/bias"]
    assert len(selected_paths(p, ["*Dense_0/kernel", "*Dense_1/kernel"])) == 2
    assert selected_paths(p, exclude="*Dense_2*") == ["params/Dense_0/kernel", "params/Dense_1/kernel"]
    assert matches(None, "d/kernel", np.zeros((2, 2))) and not matches(None, "d/w", np.zeros((2, 2)))


def test_default_selects_by_name_not_rank():
    tree = {"attn": {"query": {"kernel": np.zeros((8, 2, 4)), "bias": np.zeros((2, 4))}},
            "embed": {"embedding": np.zeros((10, 8))}, "pos": np.zeros((6, 8)),
            "conv": {"kernel": np.zeros((3, 3, 1, 4)), "bias": np.zeros(4)},
            "vec": {"kernel": np.zeros(4)}}  # a 1-D einsum kernel is not a matrix
    assert selected_paths(tree) == ["attn/query/kernel", "conv/kernel"]
    assert selected_paths(tree, include=matrices) == [
        "attn/query/bias", "attn/query/kernel", "conv/kernel", "embed/embedding", "pos"]
    assert not kernels("attn/query/bias", np.zeros((2, 4)))


@pytest.mark.parametrize("pattern, want", [
    ("fc1", ["fc1/kernel"]),                        # a prefix: the layer's kernels
    ("fc1/*", ["fc1/kernel"]),                      # any key of fc1: still the layer
    ("*", ["blk/a/kernel", "blk/b/kernel", "fc1/kernel"]),
    ("blk/*", ["blk/a/kernel", "blk/b/kernel"]),    # deeper layers too
    ("*/bias", ["blk/a/bias", "fc1/bias"]),         # names the leaf
    ("fc1/bias", ["fc1/bias"]),
    ("fc1/b*", ["fc1/bias"]),
    ("pos", ["pos"]),
    ("blk/a/scale", ["blk/a/scale"]),
    (re.compile("fc1"), ["fc1/kernel"]),
    (re.compile(r"fc1/\w+"), ["fc1/kernel"]),
    (re.compile("bias$"), ["blk/a/bias", "fc1/bias"]),
    ([None, "pos"], ["blk/a/kernel", "blk/b/kernel", "fc1/kernel", "pos"]),
    (["fc1/*", ["blk/b"]], ["blk/b/kernel", "fc1/kernel"]),
])
def test_a_pattern_narrows_never_widens(pattern, want):
    tree = {"fc1": {"kernel": np.zeros((3, 4)), "bias": np.zeros(4)}, "pos": np.zeros((5, 4)),
            "blk": {"a": {"kernel": np.zeros((4, 4)), "bias": np.zeros(4), "scale": np.zeros(4)},
                    "b": {"kernel": np.zeros((4, 4))}}}
    assert selected_paths(tree, pattern) == want
    leaves = zip(leaf_paths(tree), jax.tree.leaves(tree))
    assert [p for p, x in leaves if matches(pattern, p, x)] == want


def test_exclude_covers_whole_layers():
    p = linen_params()
    assert selected_paths(p, "*/bias", exclude="*/Dense_1") == ["params/Dense_0/bias",
                                                               "params/Dense_2/bias"]
    assert covers("*/Dense_0", "params/Dense_0/bias") and not covers("*/Dense_0", "params/Dense_1/bias")


def test_empty_selection_is_an_error():
    with pytest.raises(PruningError, match=r"include='\*nothing\*' matches no leaf"):
        selected_paths(linen_params(), "*nothing*")
    with pytest.raises(PruningError, match="include"):
        selected_paths(linen_params(), 42)
    with pytest.raises(PruningError, match="empty list"):
        selected_paths(linen_params(), [])


def test_default_selection_error_says_what_the_default_is():
    with pytest.raises(PruningError, match=r"(?s)the default: leaves named 'kernel'.*\['b', 'w'\]"
                                           r".*include=.*matrices"):
        selected_paths({"w": np.zeros((2, 2)), "b": np.zeros(2)})


def test_each_pattern_error_names_the_pattern():
    p = linen_params()
    with pytest.raises(PruningError, match=r"include\[1\]='\*/Dense_9/\*' matches no leaf"):
        selected_paths(p, ["*/Dense_0/*", "*/Dense_9/*"])
    with pytest.raises(PruningError, match=r"exclude='\*/Dense_9' matches no leaf"):
        selected_paths(p, exclude="*/Dense_9")
    with pytest.raises(PruningError, match=r"include=re.compile\('zzz'\) matches no leaf"):
        selected_paths(p, re.compile("zzz"))
    # A layer with no kernel: name its leaves.
    norm = {"norm": {"scale": np.ones(4), "bias": np.zeros(4)}, "d": {"kernel": np.ones((2, 2))}}
    with pytest.raises(PruningError, match=r"include='norm' names layer.*'norm/bias'"):
        selected_paths(norm, "norm")
    with pytest.raises(PruningError, match=r"include\[0\]: expected .* got int 3"):
        selected_paths(p, [3])


def test_duplicate_paths_are_an_error_naming_both():
    tree = {"a": {"b": np.zeros((2, 2))}, "a/b": np.ones((2, 2))}
    for fn in (leaf_paths, selected_paths, lambda t: map_with_path(lambda p, x: x, t),
               lambda t: check_same_structure(t, t, "scores"), flatten_with_paths):
        with pytest.raises(PruningError, match=r"same path 'a/b': \['a'\]\['b'\] and \['a/b'\]"):
            fn(tree)


def test_structure_mismatch_names_leaf():
    p = {"a": np.zeros((2, 2)), "b": np.zeros(3)}
    with pytest.raises(PruningError, match="'b'"):
        check_same_structure(p, {"a": np.zeros((2, 2)), "b": np.zeros(4)}, "scores")
    with pytest.raises(PruningError, match="missing"):
        check_same_structure(p, {"a": np.zeros((2, 2))}, "scores")


def test_structure_check_without_shapes():
    p = {"a": np.zeros((2, 2)), "b": np.zeros(3)}
    check_same_structure(p, {"a": 0.5, "b": 0.0}, "sparsities", shapes=False)
    with pytest.raises(PruningError, match="sparsities.*missing \\['b'\\].*unexpected \\['zzz'\\]"):
        check_same_structure(p, {"a": 0.5, "zzz": 0.0}, "sparsities", shapes=False)


def test_one_key_path_reader_for_paths_and_neuron_layers():
    import jax
    from flax import nnx

    from jaxprune.neurons.tree import path_names
    from jaxprune.paths import key_names, path_str

    state = nnx.state(nnx.Linear(2, 3, rngs=nnx.Rngs(0)), nnx.Param)
    linen = {"params": {"Dense_0": {"kernel": 1.0, "bias": 2.0}}}
    seen = []
    for tree in (state, linen):
        for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]:
            names = key_names(path)
            assert path_str(path) == "/".join(names)
            assert path_names(path) == (names[1:] if names[0] == "params" else names)
            seen.append(path_str(path))
    assert sorted(seen) == ["bias", "kernel", "params/Dense_0/bias", "params/Dense_0/kernel"]
    # Both drop a trailing Variable accessor, `.value` or `.raw_value`, the same way.
    for accessor in ("value", "raw_value"):
        path = (jax.tree_util.DictKey("params"), jax.tree_util.DictKey("w"), jax.tree_util.GetAttrKey(accessor))
        assert path_str(path) == "params/w" and path_names(path) == ("w",)


def test_map_with_path_passes_the_path_and_every_tree():
    out = map_with_path(lambda p, x, y: f"{p}={x + y}", {"a": 1, "b": {"c": 2}}, {"a": 10, "b": {"c": 20}})
    assert out == {"a": "a=11", "b": {"c": "b/c=22"}}


def test_covers_default_and_predicate_selectors():
    k, b = np.zeros((2, 2)), np.zeros(2)
    assert covers(None, "params/Dense_0/kernel", k) and not covers(None, "params/Dense_0/bias", b)
    assert covers(lambda p, x: p.endswith("bias"), "d/bias", b)
    assert not covers(lambda p, x: False, "d/bias", b)


def test_selector_type_errors_name_the_argument():
    with pytest.raises(PruningError, match=r"^include: expected a glob"):
        matches(3, "d/kernel", np.zeros((2, 2)))
    with pytest.raises(PruningError, match=r"^exclude\[1\]: expected a glob"):
        covers(["a", 3], "d/kernel")


def test_structure_mismatch_message_lists_only_what_differs():
    with pytest.raises(PruningError) as e:
        check_same_structure({"a": np.zeros(1), "b": np.zeros(1)}, {"a": np.zeros(1)}, "scores")
    assert str(e.value) == "scores does not have the structure of params: missing ['b']"
    with pytest.raises(PruningError) as e:
        check_same_structure({"a": np.zeros(1)}, {"a": np.zeros(1), "z": np.zeros(1)}, "masks")
    assert str(e.value) == "masks does not have the structure of params: unexpected ['z']"
