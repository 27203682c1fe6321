"""Tests for jaxprune.structures: unit counts and the N:M axis rules (the shared registry contract is
in tests/test_registry.py)."""

import jax.numpy as jnp
import numpy as np
import pytest

from jaxprune import PruningError
from jaxprune.structures import NM, Block, Channels, Neurons, Unstructured, num_units


def test_num_units_per_structure():
    assert num_units(Unstructured(), "d/kernel", (3, 4)) == 12
    assert num_units(Neurons(), "d/kernel", (3, 4)) == 4  # one unit per output neuron
    assert num_units(Channels(), "c/kernel", (3, 3, 2, 8)) == 8
    assert num_units(Block((2, 2)), "d/kernel", (4, 6)) == 6


def test_nm_with_m_1_keeps_all_or_nothing():
    s = jnp.arange(6.0).reshape(3, 2)
    assert bool(NM(1, 1).mask("w", s, 0.5).all())
    assert not bool(NM(0, 1).mask("w", s, 0.5).any())
    with pytest.raises(PruningError, match="m >= 1"):
        NM(0, 0).check("w", (4, 4))


def test_nm_axis_mapping_is_used_for_the_listed_leaf_only():
    nm = NM(1, 4, axis={"w": 1})
    assert nm.axis_of("w", (3, 8)) == 1 and nm.axis_of("v", (8, 3)) == 0
    nm.check("w", (3, 8))  # axis 1 (8) divides by 4; the inferred axis 0 (3) would not
    scores = jnp.asarray(np.arange(24.0).reshape(3, 8))
    keep = np.asarray(nm.mask("w", scores, 0.75))
    np.testing.assert_array_equal(keep.sum(axis=1), [2, 2, 2])  # 1 of every 4 along axis 1
    np.testing.assert_array_equal(keep[0], [False, False, False, True] * 2)


def test_nm_cannot_infer_a_rank_3_axis_and_says_how_to_give_it():
    hint = r"axis=jaxprune\.wiring\.reduction_axes\(fn, params, \*example_args\)"
    with pytest.raises(PruningError, match=hint):
        NM(2, 4).axis_of("attn/kernel", (8, 2, 4))


def test_nm_on_a_conv_kernel_groups_the_input_channels():
    # HWIO (2, 1, 8, 3): groups of 4 along the 8 input channels, for each (h, w, out).
    scores = jnp.asarray(np.random.default_rng(0).permutation(48).reshape(2, 1, 8, 3).astype(np.float32))
    keep = np.asarray(NM(1, 4).mask("c/kernel", scores, 0.75))
    assert keep.shape == (2, 1, 8, 3)
    groups = keep.reshape(2, 1, 2, 4, 3)
    np.testing.assert_array_equal(groups.sum(axis=3), np.ones((2, 1, 2, 3)))
    best = np.asarray(scores).reshape(2, 1, 2, 4, 3).argmax(axis=3)
    np.testing.assert_array_equal(groups.argmax(axis=3), best)  # the kept one is each group's best


def test_nm_mask_errors_name_the_leaf():
    with pytest.raises(PruningError, match=r"NM\(2, 4\): axis 0 of leaf 'w' has size 3"):
        NM(2, 4).mask("w", jnp.ones((3, 4)), 0.5)


def test_block_reduce_error_names_block():
    with pytest.raises(PruningError, match=r"^Block: reduce must be one of"):
        Block((2, 2), reduce="median").check("w", (4, 4))


def test_neurons_min_keep_zero_is_allowed_and_negative_is_not():
    Neurons(outputs=(), min_keep=0).check("w", (3, 4))
    with pytest.raises(PruningError, match="min_keep must be an integer >= 0"):
        Neurons(outputs=(), min_keep=-1).check("w", (3, 4))


def test_neurons_outputs_selector_and_the_unsaid_error():
    n = Neurons(outputs="*/head/kernel")
    assert n.is_output("params/head/kernel", np.zeros((4, 2)))
    assert not n.is_output("params/body/kernel", np.zeros((4, 2)))
    with pytest.raises(PruningError) as e:
        Neurons().is_output("params/body/kernel", None)
    msg = str(e.value)
    assert msg.startswith("Neurons: leaf 'params/body/kernel' would lose units")
    assert msg.endswith("(traced from the model), a selector such as outputs='*/head/kernel', or "
                        "outputs=() if no pruned leaf is an output layer")
