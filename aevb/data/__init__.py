"""Datasets: MNIST (fetched and SHA-256-verified), IDX folders and a user's own arrays.

>>> from aevb import data
>>> train, test = data.load("mnist", binarize="dynamic")  # doctest: +SKIP

``load`` returns a ``(train, test)`` pair of :class:`Dataset`. Stochastic binarisations
(``dynamic``, ``continuous``) are drawn afresh for every training batch, while the test set is
binarised once with a fixed seed so that every run is scored on the same bits.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from aevb.data import mnist
from aevb.data.dataset import BINARIZATIONS, Dataset, as_dataset, validate_array
from aevb.data.idx import read_idx, write_idx
from aevb.errors import DataError

#: Seed of the one-off binarisation of test sets (the same bits for every run).
TEST_BINARIZATION_SEED = 0


def _mnist(binarize: str = "dynamic", folder: str | Path | None = None):
    arrays = mnist.load_arrays(folder)
    return _image_pair(arrays, binarize, "mnist")


def _image_pair(arrays: dict[str, np.ndarray], binarize: str, name: str):
    train = Dataset.from_arrays(
        arrays["x_train"].reshape(len(arrays["x_train"]), -1) / np.float32(255.0),
        arrays.get("y_train"),
        binarize,
        f"{name}-train",
    )
    test = Dataset.from_arrays(
        arrays["x_test"].reshape(len(arrays["x_test"]), -1) / np.float32(255.0),
        arrays.get("y_test"),
        binarize,
        f"{name}-test",
    )
    return train, test.fixed(TEST_BINARIZATION_SEED)


#: Registered dataset names -> loader(binarize=...) returning (train, test).
DATASETS: dict[str, Callable[..., tuple[Dataset, Dataset]]] = {"mnist": _mnist}

#: Default binarisation per registered dataset (MNIST follows Burda et al.: dynamic).
DEFAULT_BINARIZE: dict[str, str] = {"mnist": "dynamic"}


def load_idx_folder(folder: str | Path, binarize: str = "dynamic"):
    """Load a folder of IDX files named like MNIST's (``train-images*``, ``t10k-images*`` or
    ``test-images*``, labels optional), gzipped or not. Pixel bytes are scaled by 1/255."""
    folder = Path(folder)

    def find(*prefixes: str) -> Path | None:
        for prefix in prefixes:
            hits = sorted(folder.glob(f"{prefix}*"))
            if hits:
                return hits[0]
        return None

    paths = {
        "x_train": find("train-images"),
        "y_train": find("train-labels"),
        "x_test": find("t10k-images", "test-images"),
        "y_test": find("t10k-labels", "test-labels"),
    }
    if paths["x_train"] is None or paths["x_test"] is None:
        raise DataError(
            f"{folder}: expected IDX files named train-images* and t10k-images* (or test-images*)"
        )
    arrays = {k: read_idx(p) for k, p in paths.items() if p is not None}
    for key in ("x_train", "x_test"):
        if arrays[key].dtype != np.uint8:
            raise DataError(f"{paths[key]}: expected uint8 pixels, got {arrays[key].dtype}")
    return _image_pair(arrays, binarize, folder.name)


def load_array_file(path: str | Path, binarize: str = "none", test_fraction: float = 0.1):
    """Load a user's ``.npz`` (keys ``x_train``/``x_test``, optional ``y_train``/``y_test``;
    or a single ``x`` [+ ``y``]) or ``.npy`` (one array). A single array is split
    deterministically: the last ``test_fraction`` of its rows form the test set."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    if path.suffix == ".npy":
        arrays = {"x": np.load(path, allow_pickle=False)}
    elif path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    else:
        raise DataError(f"{path}: expected a .npz or .npy file, an IDX folder or a dataset name")
    if "x_train" in arrays and "x_test" in arrays:
        parts = {
            "train": (arrays["x_train"], arrays.get("y_train")),
            "test": (arrays["x_test"], arrays.get("y_test")),
        }
    elif "x" in arrays:
        x, y = arrays["x"], arrays.get("y")
        n_test = max(1, int(round(len(x) * test_fraction)))
        if len(x) < 2:
            raise DataError(f"{path}: need at least 2 datapoints to split off a test set")
        cut = len(x) - n_test
        parts = {
            "train": (x[:cut], None if y is None else y[:cut]),
            "test": (x[cut:], None if y is None else y[cut:]),
        }
    else:
        raise DataError(
            f"{path}: expected arrays named x_train and x_test (optional y_train, y_test), "
            f"or a single x (optional y); found {sorted(arrays)}"
        )
    stem = path.stem
    train = Dataset.from_arrays(*parts["train"], binarize=binarize, name=f"{stem}-train")
    test = Dataset.from_arrays(*parts["test"], binarize=binarize, name=f"{stem}-test")
    return train, test.fixed(TEST_BINARIZATION_SEED)


def load(name: str, binarize: str | None = None, **kwargs) -> tuple[Dataset, Dataset]:
    """Return ``(train, test)`` for a registered name, an IDX folder or a ``.npz``/``.npy`` path.

    :param name: one of :data:`DATASETS` (``"mnist"``), or a path.
    :param binarize: ``"dynamic"`` (fresh Bernoulli draw per pass), ``"threshold"`` (x > 0.5),
        ``"continuous"`` ((x*255 + U)/256) or ``"none"``. Defaults: dynamic for MNIST and IDX
        folders, none for array files.
    """
    if binarize is not None and binarize not in BINARIZATIONS:
        raise DataError(
            f"unknown binarisation {binarize!r}; expected one of {sorted(BINARIZATIONS)}"
        )
    if name in DATASETS:
        return DATASETS[name](binarize=binarize or DEFAULT_BINARIZE.get(name, "none"), **kwargs)
    path = Path(name)
    if path.is_dir():
        return load_idx_folder(path, binarize or "dynamic")
    if path.suffix in (".npz", ".npy"):
        return load_array_file(path, binarize or "none", **kwargs)
    raise DataError(
        f"unknown dataset {name!r}: expected one of {sorted(DATASETS)}, a folder of IDX files "
        "or a .npz/.npy file"
    )


def fetch(name: str = "mnist", verbose: bool = True) -> Path:
    """Fetch and verify a registered dataset's files (only MNIST has files to fetch)."""
    if name != "mnist":
        raise DataError(f"nothing to fetch for {name!r}; fetchable: ['mnist']")
    return mnist.fetch(verbose=verbose)


__all__ = [
    "BINARIZATIONS",
    "DATASETS",
    "Dataset",
    "as_dataset",
    "fetch",
    "load",
    "load_array_file",
    "load_idx_folder",
    "read_idx",
    "validate_array",
    "write_idx",
]
