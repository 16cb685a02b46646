"""Tests of bench/data.py: synthetic generator, transforms, file readers, and the restricted unpickler."""
import gzip
import io
import os
import pickle

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from PIL import Image

from bench import data

SMALL = dict(n_train=6, n_test=3)  # per class: keeps each synthetic draw well under a second


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The generator is many small ops: on a shared CPU, extra threads only wait on each other."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def check_dataset(d, num_classes, size):
    """Shapes, dtypes and label ranges every Dataset must satisfy, and every class in both splits."""
    for x, y in ((d.x_train, d.y_train), (d.x_test, d.y_test)):
        assert x.dtype == torch.uint8 and y.dtype == torch.int64
        assert x.shape[1:] == (3, size, size) and x.shape[0] == y.shape[0] > 0
        assert set(y.tolist()) == set(range(num_classes))
    assert d.num_classes == num_classes and d.size == size
    assert len(d.mean) == 3 and len(d.std) == 3 and all(s > 0 for s in d.std)


# --- synthetic -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("k", [2, 10, 200])
def test_synthetic_shapes(k):
    d = data.load("synthetic", num_classes=k, **SMALL)
    check_dataset(d, k, 32)
    assert len(d.y_train) == 6 * k and len(d.y_test) == 3 * k
    assert not d.gray and d.hflip


def test_synthetic_size_and_defaults():
    d = data.load("synthetic", size=64, n_train=2, n_test=1)
    check_dataset(d, 10, 64)
    assert data._load_synthetic.__defaults__ == (10, 32, 500, 100)  # the documented defaults


def test_synthetic_deterministic():
    a = data.load("synthetic", seed=3, **SMALL)
    b = data.load("synthetic", seed=3, **SMALL)
    c = data.load("synthetic", seed=4, **SMALL)
    for name in ("x_train", "y_train", "x_test", "y_test"):
        assert torch.equal(getattr(a, name), getattr(b, name))
    assert not torch.equal(a.x_train, c.x_train) and not torch.equal(a.x_test, c.x_test)
    assert not torch.equal(a.x_train[: len(a.x_test)], a.x_test)  # train and test are different draws
    assert a.mean == b.mean and a.std == b.std


def test_synthetic_test_split_does_not_depend_on_n_train():
    a = data.load("synthetic", n_train=2, n_test=3)
    b = data.load("synthetic", n_train=5, n_test=3)
    assert torch.equal(a.x_test, b.x_test)


def test_synthetic_classes_are_distinct_combinations():
    attrs = [data.class_attributes(c) for c in range(data.MAX_CLASSES)]
    assert len(set(attrs)) == data.MAX_CLASSES == 200
    assert len({a[0] for a in attrs[:10]}) == 10  # the first ten classes differ in shape


def test_synthetic_bad_options():
    with pytest.raises(ValueError, match="num_classes"):
        data.load("synthetic", num_classes=201)
    with pytest.raises(ValueError, match="num_classes"):
        data.load("synthetic", num_classes=1)
    with pytest.raises(TypeError, match="unknown option"):
        data.load("synthetic", n_trian=5)


# --- transform -------------------------------------------------------------------------------------------

def test_transform_colour():
    d = data.load("synthetic", **SMALL)
    tf = d.transform()
    assert [type(t) for t in tf.transforms] == [T.Resize, T.ToTensor, T.Normalize]
    assert tf.transforms[0].size == (32, 32)
    assert tuple(tf.transforms[2].mean) == d.mean and tuple(tf.transforms[2].std) == d.std
    img = Image.fromarray(d.x_test[0].permute(1, 2, 0).numpy())
    out = tf(img)
    assert out.dtype == torch.float32 and out.shape == (3, 32, 32)
    # the transform is the same normalisation a trainer applies to the uint8 tensors
    mean, std = torch.tensor(d.mean).view(3, 1, 1), torch.tensor(d.std).view(3, 1, 1)
    assert torch.allclose(out, (d.x_test[0].float() / 255 - mean) / std, atol=1e-5)
    pickle.loads(pickle.dumps(tf))  # it is written into the sample metadata


def test_transform_gray_is_the_contest_one():
    x = torch.randint(0, 256, (20, 1, 28, 28), dtype=torch.uint8).repeat(1, 3, 1, 1)
    y = torch.arange(20) % 10
    d = data.Dataset("mnist", x, y, x, y, 10, (0.5,) * 3, (0.5,) * 3, gray=True, hflip=False)
    tf = d.transform()
    assert [type(t) for t in tf.transforms] == [T.Resize, T.Grayscale, T.ToTensor, T.Normalize]
    assert tf.transforms[1].num_output_channels == 3
    assert list(tf.transforms[3].mean) == [0.5] and list(tf.transforms[3].std) == [0.5]
    out = tf(Image.fromarray(x[0].permute(1, 2, 0).numpy()))
    assert out.shape == (3, 28, 28) and out.min() >= -1 and out.max() <= 1


# --- names and missing files -----------------------------------------------------------------------------

def test_names_and_unknown_name():
    assert data.names() == ["synthetic", "cifar10", "gtsrb", "tiny32", "tiny64", "mnist", "fashion"]
    with pytest.raises(ValueError, match="cifar10"):
        data.load("imagenet")


@pytest.mark.parametrize("name", ["cifar10", "gtsrb", "tiny32", "tiny64", "mnist", "fashion"])
def test_missing_root_raises_data_missing(name, tmp_path):
    with pytest.raises(data.DataMissing) as e:
        data.load(name, root=str(tmp_path))
    msg = str(e.value)
    assert msg.startswith(name + ":") and str(tmp_path) in msg and "\n" not in msg


# --- readers of user copies, on tiny fakes ---------------------------------------------------------------

def write_idx(path, arr, gz):
    header = bytes([0, 0, 8, arr.ndim]) + np.array(arr.shape, dtype=">u4").tobytes()
    raw = header + arr.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)


@pytest.mark.parametrize("gz", [True, False])
def test_idx_torchvision_layout(tmp_path, gz):
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    suffix = ".gz" if gz else ""
    for split, n in (("train", 50), ("t10k", 20)):
        write_idx(raw / f"{split}-images-idx3-ubyte{suffix}", rng.integers(0, 256, (n, 28, 28)), gz)
        write_idx(raw / f"{split}-labels-idx1-ubyte{suffix}", np.arange(n) % 10, gz)
    d = data.load("fashion", root=str(tmp_path), n_train=None)
    check_dataset(d, 10, 28)
    assert len(d.y_train) == 50 and len(d.y_test) == 20 and d.gray
    assert torch.equal(d.x_train[:, 0], d.x_train[:, 2])  # gray replicated to RGB
    d = data.load("fashion", root=str(tmp_path), n_train=2)
    assert len(d.y_train) == 20  # per-class cap


def test_mnist_test_split_only(tmp_path):
    folder = tmp_path / "mnist"
    folder.mkdir()
    rng = np.random.default_rng(0)
    write_idx(folder / "t10k-images-idx3-ubyte.gz", rng.integers(0, 256, (10000, 28, 28)), True)
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", np.arange(10000) % 10, True)
    a = data.load("mnist", root=str(tmp_path))
    b = data.load("mnist", root=str(tmp_path), seed=1, n_train=5)
    assert len(a.y_train) == 8000 and len(a.y_test) == 2000
    assert torch.equal(a.x_test, b.x_test)  # the held-out part does not move with the seed
    assert len(b.y_train) == 50


def test_cifar_torchvision_layout(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    batches = []
    for i, fname in enumerate([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]):
        batch = {"batch_label": "fake", "data": rng.integers(0, 256, (20, 3072), dtype=np.uint8),
                 "labels": [j % 10 for j in range(20)], "filenames": [f"{j}.png" for j in range(20)]}
        (folder / fname).write_bytes(pickle.dumps(batch, protocol=2 if i % 2 else 4))
        batches.append(batch)
    d = data.load("cifar10", root=str(tmp_path))
    check_dataset(d, 10, 32)
    assert len(d.y_train) == 100 and len(d.y_test) == 20
    assert d.mean == (0.4914, 0.4822, 0.4465)
    assert torch.equal(d.x_train[0], torch.from_numpy(batches[0]["data"][0].reshape(3, 32, 32)))  # rows are CHW


class RunsShell:
    def __init__(self, cmd):
        self.cmd = cmd

    def __reduce__(self):
        return (os.system, (self.cmd,))


def test_restricted_unpickler_refuses_code(tmp_path):
    marker = tmp_path / "ran"
    payload = pickle.dumps({"data": RunsShell(f"echo hi > {marker}")})
    with pytest.raises(pickle.UnpicklingError, match="system"):
        data.safe_pickle_load(io.BytesIO(payload))
    assert not marker.exists()
    # and through the loader: a poisoned batch file never runs
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for fname in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / fname).write_bytes(payload)
    with pytest.raises(pickle.UnpicklingError):
        data.load("cifar10", root=str(tmp_path))
    assert not marker.exists()


def test_restricted_unpickler_reads_arrays():
    arr = np.arange(12, dtype=np.uint8).reshape(3, 4)
    for protocol in (2, 4, 5):
        out = data.safe_pickle_load(io.BytesIO(pickle.dumps({"a": arr, "b": [1, "x", b"y"]}, protocol=protocol)))
        assert np.array_equal(out["a"], arr) and out["b"] == [1, "x", b"y"]


# --- the real sets, when present -------------------------------------------------------------------------

REAL = {  # name -> (classes, size, train, test) of the shared files
    "cifar10": (10, 32, 15000, 5000),
    "gtsrb": (43, 32, 12000, 4000),
    "tiny32": (100, 32, 10000, 3000),
    "tiny64": (10, 64, 3000, 500),
    "mnist": (10, 28, 8000, 2000),
}


def load_or_skip(name, **kw):
    try:
        return data.load(name, **kw)
    except data.DataMissing as e:
        pytest.skip(str(e))


@pytest.mark.parametrize("name", list(REAL))
def test_real_sets(name):
    k, size, n_train, n_test = REAL[name]
    d = load_or_skip(name)
    check_dataset(d, k, size)
    assert (len(d.y_train), len(d.y_test)) == (n_train, n_test)
    out = d.transform()(Image.fromarray(d.x_test[0].permute(1, 2, 0).numpy()))
    assert out.shape == (3, size, size)
    small = load_or_skip(name, n_train=3, seed=1)
    assert len(small.y_train) == 3 * k and torch.equal(small.x_test, d.x_test)


def test_fashion_when_installed():
    d = load_or_skip("fashion")
    check_dataset(d, 10, 28)
    assert (len(d.y_train), len(d.y_test)) == (10000, 10000) and d.gray
