"""Reader and writer for the IDX format of LeCun et al.'s MNIST files (gzipped or not).

An IDX file starts with the magic number ``00 00 TT NN``: ``TT`` codes the element type and
``NN`` the number of dimensions, followed by ``NN`` big-endian uint32 sizes and the data in
row-major, big-endian order.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np

from aevb.errors import DataError

# IDX type code -> numpy dtype (big-endian where it matters).
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def _open_for_read(path: Path):
    with open(path, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rb") if gz else open(path, "rb")


def parse_idx(raw: bytes, source: str = "<bytes>") -> np.ndarray:
    """Parse the bytes of one (uncompressed) IDX file into a numpy array."""
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataError(f"{source}: not an IDX file (expected magic bytes 00 00 TT NN)")
    type_code, ndim = raw[2], raw[3]
    if type_code not in IDX_DTYPES:
        raise DataError(f"{source}: unknown IDX element type 0x{type_code:02x}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{source}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = IDX_DTYPES[type_code]
    expected = math.prod(shape) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataError(
            f"{source}: IDX header announces shape {shape} ({expected} bytes of data) "
            f"but the file holds {len(raw) - header} bytes"
        )
    try:
        arr = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    except ValueError as exc:  # e.g. a shape with a zero and sizes past what numpy holds
        raise DataError(
            f"{source}: IDX header announces an unusable shape {shape} ({exc})"
        ) from None
    return arr.astype(dtype.newbyteorder("="), copy=True)


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file, gzipped or not (detected from its first bytes, not its name); a
    file that cannot be read or decompressed is a :class:`DataError` naming it."""
    path = Path(path)
    try:
        with _open_for_read(path) as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        raise DataError(f"{path}: cannot read the IDX file ({reason})") from None
    return parse_idx(raw, str(path))


def write_idx(path: str | Path, array: np.ndarray) -> None:
    """Write ``array`` as an IDX file; gzipped when ``path`` ends in ``.gz``."""
    path = Path(path)
    array = np.asarray(array)
    codes = {np.dtype(v).newbyteorder("="): k for k, v in IDX_DTYPES.items()}
    native = array.dtype.newbyteorder("=")
    if native not in codes:
        raise DataError(f"cannot write dtype {array.dtype} as IDX (supported: {list(codes)})")
    code = codes[native]
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    body = array.astype(IDX_DTYPES[code], copy=False).tobytes()
    with _open_for_write(path) as f:
        f.write(header + body)


def _open_for_write(path: Path):
    return gzip.open(path, "wb") if path.suffix == ".gz" else open(path, "wb")
