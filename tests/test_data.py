import gzip

import numpy as np
import pytest
import torch

from aevb import data
from aevb.data import mnist
from aevb.data.idx import parse_idx, read_idx, write_idx
from aevb.errors import DataError


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("dtype", ["u1", ">i4", ">f4", ">f8"])
def test_idx_round_trip(tmp_path, suffix, dtype):
    arr = (np.arange(2 * 3 * 4) * 7 % 251).reshape(2, 3, 4).astype(dtype)
    path = tmp_path / f"a-idx3{suffix}"
    write_idx(path, arr)
    back = read_idx(path)
    assert back.shape == (2, 3, 4)
    np.testing.assert_array_equal(back, arr)
    if suffix:
        assert path.read_bytes()[:2] == b"\x1f\x8b"


def test_idx_layout_matches_the_format(tmp_path):
    # Hand-made file: magic 00 00 08 02, dims 2 x 3, row-major bytes.
    raw = bytes([0, 0, 8, 2, 0, 0, 0, 2, 0, 0, 0, 3, 1, 2, 3, 4, 5, 6])
    np.testing.assert_array_equal(parse_idx(raw), [[1, 2, 3], [4, 5, 6]])
    (tmp_path / "f.gz").write_bytes(gzip.compress(raw))
    np.testing.assert_array_equal(read_idx(tmp_path / "f.gz"), [[1, 2, 3], [4, 5, 6]])


def test_idx_multibyte_values_are_big_endian():
    # magic 00 00 0C 01 (int32, one dim), 2 elements: 1 and 258 as big-endian int32
    raw = bytes([0, 0, 0x0C, 1, 0, 0, 0, 2]) + (1).to_bytes(4, "big") + (258).to_bytes(4, "big")
    np.testing.assert_array_equal(parse_idx(raw), [1, 258])
    raw = bytes([0, 0, 0x0D, 1, 0, 0, 0, 1]) + np.array([1.5], ">f4").tobytes()
    np.testing.assert_array_equal(parse_idx(raw), [1.5])


def test_shuffled_batches_keep_points_labels_masks_and_indices_together():
    n = 53
    x = torch.arange(n, dtype=torch.float32).reshape(n, 1, 1).expand(n, 4, 2).contiguous()
    y = torch.arange(n) % 7
    mask = torch.arange(4).expand(n, 4) < (torch.arange(n) % 4 + 1).unsqueeze(1)
    ds = data.Dataset.from_arrays(x, y, mask=mask)
    g = torch.Generator().manual_seed(0)
    seen = []
    for index, (xb, yb, mb) in ds.batches(10, shuffle=True, generator=g, labels=True, indexed=True):
        assert torch.equal(xb[:, 0, 0].long(), index)
        assert torch.equal(yb, index % 7) and torch.equal(mb, mask[index])
        seen.append(index)
    order = torch.cat(seen)
    assert sorted(order.tolist()) == list(range(n))  # each datapoint once per epoch
    assert not torch.equal(order, torch.arange(n))  # shuffled
    assert ds.num_batches(10) == len(seen) == 6


@pytest.mark.parametrize(
    "raw, msg",
    [
        (b"\x01\x00\x08\x01\x00\x00\x00\x01\x05", "not an IDX"),
        (b"\x00\x00\x08\x01\x00\x00\x00\x05\x01\x02", "holds 2 bytes"),
        (b"\x00\x00\x07\x01\x00\x00\x00\x01\x05", "unknown IDX element type"),
    ],
)
def test_bad_idx_is_refused(raw, msg):
    with pytest.raises(DataError, match=msg):
        parse_idx(raw)


def test_checksum_mismatch_is_refused(tmp_path, monkeypatch):
    stem = "t10k-labels-idx1-ubyte"
    with pytest.raises(DataError, match="checksum mismatch"):
        mnist.verify(stem, b"not mnist", "test")
    # A folder of wrong files is never used, whatever their names.
    for s in mnist.MNIST_SHA256:
        write_idx(tmp_path / s, np.zeros((3, 2, 2), np.uint8))
    with pytest.raises(DataError, match="checksum mismatch"):
        mnist._verified_folder(tmp_path)


@pytest.mark.parametrize(
    "x, msg",
    [
        (np.array([0.1, 0.2]), "2\\+ dims"),
        (np.array([[0.1, np.nan]]), "NaN"),
        (np.array([["a", "b"]]), "numeric"),
        (np.zeros((0, 3)), "no datapoints"),
    ],
)
def test_bad_arrays_raise_clear_errors(x, msg):
    with pytest.raises(DataError, match=msg):
        data.Dataset.from_arrays(x)


def test_binarisation_needs_unit_interval():
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        data.Dataset.from_arrays(np.full((2, 3), 3.0), binarize="dynamic")
    with pytest.raises(DataError, match="unknown binarisation"):
        data.Dataset.from_arrays(np.zeros((2, 3)), binarize="otsu")


def test_binarisations():
    x = torch.full((4000, 5), 0.3)
    x[:, 0] = 200 / 255
    ds = data.Dataset.from_arrays(x, binarize="dynamic")
    g = torch.Generator().manual_seed(1)
    [(b1,)] = list(ds.batches(4000, generator=g))
    [(b2,)] = list(ds.batches(4000, generator=g))
    assert set(b1.unique().tolist()) <= {0.0, 1.0}
    assert not torch.equal(b1, b2)  # a fresh draw per pass
    # The Bernoulli mean is 0.3: binomial standard error sqrt(.3*.7/16000) ~ 0.0036.
    assert abs(b1[:, 1:].mean().item() - 0.3) < 5 * (0.3 * 0.7 / 16000) ** 0.5
    thr = data.Dataset.from_arrays(x, binarize="threshold").transform(x)
    assert thr[:, 0].eq(1).all() and thr[:, 1:].eq(0).all()
    cont = data.Dataset.from_arrays(x, binarize="continuous").transform(x, g)
    assert (cont > 0).all() and (cont < 1).all()
    # (200 + U) / 256: within the byte's bin (float rounding may touch its upper edge)
    assert (cont[:, 0] >= 200 / 256).all() and (cont[:, 0] <= 201 / 256).all()
    assert cont[:, 0].std() > 0.2 / 256


def test_fixed_test_set_is_reproducible():
    x = torch.rand(50, 6)
    ds = data.Dataset.from_arrays(x, binarize="dynamic")
    assert torch.equal(ds.fixed(0).x, ds.fixed(0).x)
    assert ds.fixed(0).binarize == "none"


def test_idx_folder_and_array_files(tmp_path):
    g = np.random.default_rng(0)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", g.integers(0, 256, (30, 4, 4), np.uint8))
    write_idx(tmp_path / "train-labels-idx1-ubyte", g.integers(0, 10, 30).astype(np.uint8))
    write_idx(tmp_path / "t10k-images-idx3-ubyte", g.integers(0, 256, (10, 4, 4), np.uint8))
    train, test = data.load(str(tmp_path), binarize="threshold")
    assert train.x.shape == (30, 16) and test.x.shape == (10, 16)
    assert train.y is not None and test.y is None
    np.savez(tmp_path / "mine.npz", x=g.random((40, 3)).astype(np.float32))
    train, test = data.load(str(tmp_path / "mine.npz"))
    assert (len(train), len(test)) == (36, 4)
    np.savez(tmp_path / "bad.npz", images=np.zeros((3, 3)))
    with pytest.raises(DataError, match="x_train and x_test"):
        data.load(str(tmp_path / "bad.npz"))
    with pytest.raises(DataError, match="unknown dataset"):
        data.load("cifar-1000")


@pytest.mark.network
def test_mnist_is_fetched_and_verified():
    arrays = mnist.load_arrays()
    assert arrays["x_train"].shape == (60000, 28, 28)
    assert arrays["x_test"].shape == (10000, 28, 28)
    assert set(np.unique(arrays["y_test"])) == set(range(10))
    train, test = data.load("mnist")
    assert train.binarize == "dynamic" and test.binarize == "none"
    assert set(test.x[:100].unique().tolist()) == {0.0, 1.0}
