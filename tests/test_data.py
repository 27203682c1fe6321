"""Tests for jaxprune.data: IDX reader, dataset loaders, split rule, batch iterator."""

from __future__ import annotations

import gzip
import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from jaxprune.data import (
    DATASETS,
    Batch,
    batches,
    channel_stats,
    epoch_order,
    dataset_info,
    eval_batches,
    load,
    num_batches,
    read_idx,
    standardize,
)
from jaxprune.data import mnist as mnist_module
from jaxprune.errors import DataError

DEBIAN_FASHION = "/usr/share/datasets/fashion-mnist"
_CODES = {np.uint8: 0x08, np.int8: 0x09, np.int16: 0x0B, np.int32: 0x0C, np.float32: 0x0D, np.float64: 0x0E}


# ----------------------------------------------------------------------------------------- helpers
def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, _CODES[array.dtype.type], array.ndim]) + np.array(array.shape, ">u4").tobytes()
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write(path, payload: bytes, gz: bool) -> str:
    path = os.fspath(path) + (".gz" if gz else "")
    with open(path, "wb") as f:
        f.write(gzip.compress(payload) if gz else payload)
    return path


def write_idx_set(directory, n_train=50, n_test=20, gz=True, seed=0):
    """Writes a small synthetic MNIST-format set; labels encode the example index for split checks."""
    rng = np.random.default_rng(seed)
    os.makedirs(directory, exist_ok=True)
    out = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        write(os.path.join(directory, f"{prefix}-images-idx3-ubyte"), idx_bytes(images), gz)
        write(os.path.join(directory, f"{prefix}-labels-idx1-ubyte"), idx_bytes(labels), gz)
        out[prefix] = (images, labels)
    return out


@pytest.fixture
def no_default_places(monkeypatch, tmp_path):
    """Hides $JAXPRUNE_DATA, the Debian directory and tfds, so only what a test sets up is found."""
    monkeypatch.delenv(mnist_module.ENV_VAR, raising=False)
    debian = {"fashion_mnist": (str(tmp_path / "no-debian"),), "mnist": ()}
    monkeypatch.setattr(mnist_module, "DEBIAN_DIRS", debian)

    def no_tfds(name, split, data_dir=None):
        raise DataError(f"stub: {name} is not prepared")

    monkeypatch.setattr(mnist_module, "load_tfds", no_tfds)


# ------------------------------------------------------------------------------------------ IDX reader
@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize(
    "array",
    [
        np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4),
        np.array([7, 1, 4], np.uint8),
        np.array([-5, 0, 70000], np.int32),
        np.array([[1.5, -2.25]], np.float32),
        np.array([-3], np.int8),
        np.array([1000, -1000], np.int16),
        np.array([0.1], np.float64),
    ],
)
def test_idx_round_trip(tmp_path, array, gz):
    path = write(tmp_path / "x-idx", idx_bytes(array), gz)
    out = read_idx(path)
    assert out.dtype == array.dtype and out.dtype.isnative
    np.testing.assert_array_equal(out, array)
    out[...] = 0  # a writable copy, not a view of the file buffer


_GOOD = idx_bytes(np.arange(12, dtype=np.uint8).reshape(3, 4))
_CORRUPT = {
    "empty": (b"", "truncated"),
    "short": (b"\x00\x00", "truncated"),
    "magic": (b"\x01" + _GOOD[1:], "magic"),
    "type": (_GOOD[:2] + b"\x07" + _GOOD[3:], "magic"),
    "ndim0": (_GOOD[:3] + b"\x00", "magic"),
    "header": (_GOOD[:9], "header"),
    "body": (_GOOD[:-1], "truncated"),
    "trailing": (_GOOD + b"\x00", "does not match its dimensions"),
}


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("case", sorted(_CORRUPT))
def test_idx_corruption_names_file(tmp_path, case, gz):
    payload, words = _CORRUPT[case]
    path = write(tmp_path / f"bad-{case}-idx", payload, gz)
    with pytest.raises(DataError, match=words) as info:
        read_idx(path)
    assert path in str(info.value)


@pytest.mark.parametrize("damage", ["garbage", "cut"])
def test_idx_corrupt_gzip(tmp_path, damage):
    compressed = gzip.compress(_GOOD * 50)
    blob = b"\x1f\x8b" + b"\xff" * 40 if damage == "garbage" else compressed[: len(compressed) // 2]
    path = write(tmp_path / "broken-idx1-ubyte.gz", blob, gz=False)
    with pytest.raises(DataError, match="corrupt gzip") as info:
        read_idx(path)
    assert path in str(info.value)


def test_idx_missing_file(tmp_path):
    with pytest.raises(DataError, match="nope-idx"):
        read_idx(tmp_path / "nope-idx")


# ------------------------------------------------------------------------------- MNIST-format sets
@pytest.mark.parametrize("gz", [False, True])
def test_idx_set_from_data_dir(tmp_path, gz, no_default_places):
    raw = write_idx_set(tmp_path, gz=gz)
    images, labels = load("fashion_mnist", "test", tmp_path)
    assert images.shape == (20, 28, 28, 1) and images.dtype == np.float32
    assert labels.shape == (20,) and labels.dtype == np.int32
    np.testing.assert_allclose(images[..., 0], raw["t10k"][0] / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(labels, raw["t10k"][1])
    assert 0.0 <= images.min() and images.max() <= 1.0


def test_subdirectory_of_data_dir(tmp_path, no_default_places):
    write_idx_set(tmp_path / "fashion_mnist")
    assert load("fashion_mnist", "train", tmp_path, validation_size=0)[0].shape == (50, 28, 28, 1)


def test_env_var_respected(tmp_path, monkeypatch, no_default_places):
    write_idx_set(tmp_path / "mnist", n_train=30, gz=False)
    monkeypatch.setenv("JAXPRUNE_DATA", str(tmp_path))
    images, labels = load("mnist", "train", validation_size=0)
    assert images.shape == (30, 28, 28, 1) and labels.shape == (30,)
    monkeypatch.setenv("JAXPRUNE_DATA", str(tmp_path / "mnist"))  # the directory itself works too
    assert load("mnist", "test")[0].shape == (20, 28, 28, 1)


def test_missing_files_explicit_data_dir(tmp_path, no_default_places):
    empty = tmp_path / "empty"
    with pytest.raises(DataError) as info:
        load("fashion_mnist", "train", empty)
    message = str(info.value)
    for place in (str(empty), str(empty / "fashion_mnist")):
        assert place in message
    assert "stub" not in message  # an explicit data_dir is the only place searched


def test_missing_files_lists_every_place(tmp_path, monkeypatch, no_default_places):
    monkeypatch.setenv("JAXPRUNE_DATA", str(tmp_path / "env"))
    with pytest.raises(DataError) as info:
        load("fashion_mnist", "test")
    message = str(info.value)
    for needle in (
        str(tmp_path / "env"),
        str(tmp_path / "env" / "fashion_mnist"),
        str(tmp_path / "no-debian"),
        "stub: fashion_mnist is not prepared",
        "apt-get install dataset-fashion-mnist",
        "JAXPRUNE_DATA",
        "t10k-images-idx3-ubyte",
    ):
        assert needle in message, needle


def test_missing_env_var_is_reported(no_default_places):
    with pytest.raises(DataError, match=r"\$JAXPRUNE_DATA is not set"):
        load("mnist", "train")


@pytest.mark.parametrize(
    "mutate, words",
    [
        ("count", "labels in"),
        ("shape", "expected uint8 of shape \\(N, 28, 28\\)"),
        ("label", "has label 12"),
        ("labeldim", "expected uint8 of shape \\(N,\\)"),
    ],
)
def test_idx_set_validation(tmp_path, no_default_places, mutate, words):
    write_idx_set(tmp_path, gz=False)
    images = np.zeros((20, 28, 28), np.uint8)
    labels = np.zeros((20,), np.uint8)
    if mutate == "count":
        labels = np.zeros((19,), np.uint8)
    elif mutate == "shape":
        images = np.zeros((20, 27, 28), np.uint8)
    elif mutate == "label":
        labels[3] = 12
    elif mutate == "labeldim":
        labels = np.zeros((20, 1), np.uint8)
    write(tmp_path / "t10k-images-idx3-ubyte", idx_bytes(images), gz=False)
    write(tmp_path / "t10k-labels-idx1-ubyte", idx_bytes(labels), gz=False)
    with pytest.raises(DataError, match=words) as info:
        load("fashion_mnist", "test", tmp_path)
    assert "t10k-" in str(info.value)


@pytest.mark.skipif(not os.path.isdir(DEBIAN_FASHION), reason="dataset-fashion-mnist is not installed")
def test_real_fashion_mnist(monkeypatch):
    monkeypatch.delenv("JAXPRUNE_DATA", raising=False)
    train_x, train_y = load("fashion_mnist", "train", validation_size=0)
    test_x, test_y = load("fashion_mnist", "test")
    assert train_x.shape == (60000, 28, 28, 1) and test_x.shape == (10000, 28, 28, 1)
    assert train_x.dtype == test_x.dtype == np.float32
    assert train_y.dtype == test_y.dtype == np.int32
    assert float(train_x.min()) == 0.0 and float(train_x.max()) == 1.0
    assert 0.2 < float(train_x.mean()) < 0.4  # Fashion-MNIST's well-known pixel mean is 0.286
    info = dataset_info("fashion_mnist")
    assert info.num_classes == 10 and info.image_shape == train_x.shape[1:]
    np.testing.assert_array_equal(np.bincount(train_y), np.full(10, 6000))  # balanced by construction
    np.testing.assert_array_equal(np.bincount(test_y), np.full(10, 1000))
    val_x, _ = load("fashion_mnist", "validation")
    assert val_x.shape[0] == 6000


# ---------------------------------------------------------------------------------- split rule
def test_validation_split_rule(tmp_path, no_default_places):
    write_idx_set(tmp_path, n_train=50)
    full_x, _ = load("mnist", "train", tmp_path, validation_size=0)
    for size, expected in ((10, 10), (0.1, 5), (0.33, 16), (0, 0)):
        train_x, _ = load("mnist", "train", tmp_path, validation_size=size, seed=3)
        val_x, _ = load("mnist", "validation", tmp_path, validation_size=size, seed=3)
        assert val_x.shape[0] == expected and train_x.shape[0] == 50 - expected
        rows = {x.tobytes() for x in full_x}
        assert {x.tobytes() for x in train_x} | {x.tobytes() for x in val_x} == rows
        assert not {x.tobytes() for x in train_x} & {x.tobytes() for x in val_x}
    a = load("mnist", "validation", tmp_path, validation_size=10, seed=1)[0]
    b = load("mnist", "validation", tmp_path, validation_size=10, seed=1)[0]
    c = load("mnist", "validation", tmp_path, validation_size=10, seed=2)[0]
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    test_a = load("mnist", "test", tmp_path, validation_size=10, seed=1)[0]
    np.testing.assert_array_equal(test_a, load("mnist", "test", tmp_path, seed=2)[0])


def test_digits():
    train_x, train_y = load("digits", "train", validation_size=0)
    test_x, test_y = load("digits", "test")
    assert train_x.shape == (1438, 8, 8, 1) and test_x.shape == (359, 8, 8, 1)  # every fifth is test
    assert train_y.dtype == np.int32 and set(np.unique(test_y)) == set(range(10))
    assert float(train_x.min()) == 0.0 and float(train_x.max()) == 1.0
    assert load("digits", "validation")[0].shape[0] == round(0.1 * 1438)
    assert dataset_info("digits").image_shape == (8, 8, 1)


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(name="imagenet"), "unknown dataset name='imagenet'.*fashion_mnist, mnist, digits, tfds:NAME"),
        (dict(name="tfds:"), "unknown dataset name"),
        (dict(split="val"), "split='val'"),
        (dict(validation_size=-1), "validation_size=-1"),
        (dict(validation_size=1.0), "validation_size=1.0"),
        (dict(validation_size=True), "validation_size=True"),
        (dict(validation_size="10"), "validation_size='10'"),
        (dict(validation_size=1438), "leaves no training examples"),
        (dict(seed=-1), "seed=-1"),
    ],
)
def test_load_argument_errors(kwargs, words):
    args = dict(name="digits", split="train") | kwargs
    with pytest.raises(DataError, match=words):
        load(args.pop("name"), args.pop("split"), **args)


def test_dataset_info_unknown_name():
    with pytest.raises(DataError, match="known names"):
        dataset_info("cifar")
    assert "tfds:NAME" in DATASETS


# ------------------------------------------------------------------------------------------- tfds
def _mock_tfds(num_examples):
    import tensorflow_datasets as tfds

    # USE_CODE: tfds ships no metadata files for USE_FILES; AUTO falls back to USE_CODE anyway.
    return tfds.testing.mock_data(num_examples=num_examples, policy=tfds.testing.MockPolicy.USE_CODE)


@pytest.mark.parametrize("name, shape", [("mnist", (28, 28, 1)), ("cifar10", (32, 32, 3))])
def test_tfds_via_mock_data(name, shape):
    with _mock_tfds(12):
        train_x, train_y = load(f"tfds:{name}", "train", validation_size=0)
        test_x, _ = load(f"tfds:{name}", "test")
        val_x, _ = load(f"tfds:{name}", "validation", validation_size=4)
        info = dataset_info(f"tfds:{name}")
    assert train_x.shape == (12, *shape) and test_x.shape == (12, *shape) and val_x.shape == (4, *shape)
    assert train_x.dtype == np.float32 and 0.0 <= train_x.min() and train_x.max() <= 1.0
    assert train_y.dtype == np.int32 and 0 <= train_y.min() and train_y.max() < 10
    assert info.num_classes == 10 and info.image_shape == shape


def test_tfds_unknown_name():
    with pytest.raises(DataError, match="no_such_set_xyz"):
        load("tfds:no_such_set_xyz", "train")


@pytest.mark.skipif(importlib.util.find_spec("tensorflow") is not None, reason="would try to download")
def test_tfds_not_prepared(tmp_path):
    with pytest.raises(DataError, match="could not open 'mnist'.*tfds build mnist"):
        load("tfds:mnist", "test", tmp_path)
    assert not os.listdir(tmp_path)  # nothing written when nothing can be prepared


# -------------------------------------------------------------------------------------- iterator
def _data(n, shape=(3, 2, 1)):
    images = np.arange(n * int(np.prod(shape)), dtype=np.float32).reshape(n, *shape)
    return images, np.arange(n, dtype=np.int32)  # labels are example ids


def test_batches_fixed_shapes_and_coverage():
    x, y = _data(23)
    got = list(batches(x, y, 5, seed=0, epoch=0))
    assert len(got) == num_batches(23, 5) == 4
    for batch in got:
        assert isinstance(batch, Batch)
        assert batch.images.shape == (5, 3, 2, 1) and batch.labels.shape == (5,) and batch.mask.all()
        np.testing.assert_array_equal(batch.images, x[batch.labels])  # images follow their labels
    seen = np.concatenate([b.labels for b in got])
    assert len(set(seen.tolist())) == 20  # each at most once; the 3 left over are dropped


def test_batches_deterministic_and_epoch_dependent():
    x, y = _data(40)

    def order(seed, epoch):
        return np.concatenate([b.labels for b in batches(x, y, 8, seed=seed, epoch=epoch)])

    np.testing.assert_array_equal(order(0, 0), order(0, 0))
    assert not np.array_equal(order(0, 0), order(0, 1))
    assert not np.array_equal(order(0, 0), order(1, 0))
    assert sorted(order(0, 1).tolist()) == list(range(40))


@pytest.mark.parametrize("shuffle", [True, False])
def test_epoch_order_is_the_batch_order(shuffle):
    """Grouped training gathers batches on the device from epoch_order: it must be batches' order."""
    x, y = _data(23)
    order = epoch_order(23, seed=4, epoch=2, shuffle=shuffle)
    assert sorted(order.tolist()) == list(range(23))
    got = np.concatenate([b.labels for b in batches(x, y, 5, seed=4, epoch=2, shuffle=shuffle)])
    np.testing.assert_array_equal(got, y[order[:20]])
    with pytest.raises(DataError, match="seed=-1 must be an int >= 0"):
        epoch_order(23, seed=-1, epoch=0)


def test_eval_batches_cover_each_example_once():
    x, y = _data(11)
    got = list(eval_batches(x, y, 4))
    assert len(got) == num_batches(11, 4, drop_remainder=False) == 3
    assert all(b.images.shape == (4, 3, 2, 1) and b.mask.shape == (4,) for b in got)
    assert got[-1].mask.tolist() == [True, True, True, False]
    assert not got[-1].images[-1].any() and got[-1].labels[-1] == 0  # padding is zeros
    valid = np.concatenate([b.labels[b.mask] for b in got])
    np.testing.assert_array_equal(valid, y)


def test_jitted_step_compiles_once():
    x, y = _data(10)
    traces = []

    @jax.jit
    def correct(batch):
        traces.append(1)  # runs only while tracing
        return jnp.sum(batch.mask & (batch.labels % 2 == 0))

    total = sum(int(correct(b)) for b in eval_batches(x, y, 4))
    total += sum(int(correct(b)) for b in batches(x, y, 4, seed=0, epoch=1))
    assert total == 5 + 4 and len(traces) == 1


@pytest.mark.parametrize(
    "call, words",
    [
        (lambda x, y: num_batches(3, 4), "batch_size=4 exceeds the 3 examples"),
        (lambda x, y: batches(x, y, 0, seed=0, epoch=0), "batch_size=0"),
        (lambda x, y: batches(x, y, -2, seed=0, epoch=0), "batch_size=-2"),
        (lambda x, y: batches(x, y, True, seed=0, epoch=0), "batch_size=True"),
        (lambda x, y: batches(x, y, 2.0, seed=0, epoch=0), "batch_size=2.0"),
        (lambda x, y: batches(x, y[:5], 2, seed=0, epoch=0), "share their first axis"),
        (lambda x, y: batches(x, y[:, None], 2, seed=0, epoch=0), "labels 1-D"),
        (lambda x, y: batches(x, y, 2, seed=-1, epoch=0), "seed=-1"),
        (lambda x, y: batches(x, y, 2, seed=0, epoch=-1), "epoch=-1"),
        (lambda x, y: num_batches(-1, 2), "num_examples=-1"),
    ],
)
def test_batch_argument_errors(call, words):
    x, y = _data(6)
    with pytest.raises(DataError, match=words):
        call(x, y)


def test_empty_eval_set():
    x, y = _data(0)
    assert list(eval_batches(x, y, 4)) == [] and num_batches(0, 4, drop_remainder=False) == 0


@given(
    n=st.integers(1, 60),
    batch_size=st.integers(1, 20),
    seed=st.integers(0, 2**32 - 1),
    epoch=st.integers(0, 1000),
    shuffle=st.booleans(),
    drop_remainder=st.booleans(),
)
def test_batches_property(n, batch_size, seed, epoch, shuffle, drop_remainder):
    x, y = _data(n, shape=(2,))
    if drop_remainder and n < batch_size:
        with pytest.raises(DataError):
            batches(x, y, batch_size, seed=seed, epoch=epoch, drop_remainder=drop_remainder)
        return
    kwargs = dict(seed=seed, epoch=epoch, shuffle=shuffle, drop_remainder=drop_remainder)
    got = list(batches(x, y, batch_size, **kwargs))
    assert len(got) == num_batches(n, batch_size, drop_remainder=drop_remainder)
    for b in got:
        assert b.images.shape == (batch_size, 2) and b.labels.shape == b.mask.shape == (batch_size,)
    valid = np.concatenate([b.labels[b.mask] for b in got])
    assert len(valid) == len(set(valid.tolist()))  # no example twice
    assert len(valid) == (n // batch_size * batch_size if drop_remainder else n)
    for b in got:
        np.testing.assert_array_equal(b.images[b.mask], x[b.labels[b.mask]])
    again = np.concatenate([b.labels for b in batches(x, y, batch_size, **kwargs)])
    np.testing.assert_array_equal(again, np.concatenate([b.labels for b in got]))
    if not shuffle:
        np.testing.assert_array_equal(valid, np.arange(len(valid)))


# ------------------------------------------------------------------------------- preprocess, docs
def test_standardize_uses_given_stats():
    x, _ = _data(6, shape=(2, 2, 3))
    mean, std = channel_stats(x)
    z = standardize(x, mean, std)
    np.testing.assert_allclose(z.reshape(-1, 3).mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(z.reshape(-1, 3).std(0), 1.0, atol=1e-5)
    flat = standardize(np.ones((2, 1, 1, 1), np.float32), *channel_stats(np.ones((2, 1, 1, 1), np.float32)))
    assert not flat.any()  # a constant channel is centred, not divided by zero
    with pytest.raises(DataError, match="must both have shape"):
        standardize(x, mean[:2], std)
