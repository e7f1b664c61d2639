"""Reading IDX files (the format MNIST and Fashion-MNIST ship in), gzip-compressed or not, with numpy.

An IDX file is a 4-byte magic number (two zero bytes, a type code, the number of dimensions), one
big-endian uint32 per dimension, then the values in row-major order. Nothing is converted or copied
to other files: the arrays come straight from the bytes.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
from fedmq.errors import DataError

# type code -> numpy dtype, big-endian as the format stores it
DTYPES = {0x08: np.dtype(np.uint8), 0x09: np.dtype(np.int8), 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
          0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
GZIP_MAGIC = b"\x1f\x8b"


def read_idx(path: Path) -> np.ndarray:
    """The array an IDX file holds; ``path`` may be gzip-compressed (detected from its first bytes)."""
    try:
        with open(path, "rb") as raw:
            compressed = raw.read(2) == GZIP_MAGIC
        opener = gzip.open if compressed else open
        with opener(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise DataError(f"no file {path}",
                        hint="install the data set (apt-get install dataset-fashion-mnist) or point at its folder") from None
    except (OSError, EOFError) as exc:
        raise DataError(f"cannot read {path}: {exc}", hint="the file is damaged; download or install it again") from None
    return parse_idx(data, str(path))


def parse_idx(data: bytes, name: str = "IDX data") -> np.ndarray:
    """The array in IDX bytes; ``name`` is used in errors."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in DTYPES:
        raise DataError(f"{name} is not an IDX file (bad magic number {data[:4].hex()})",
                        hint="expected files such as train-images-idx3-ubyte[.gz]")
    dtype, ndim = DTYPES[data[2]], data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{name} is cut short inside its header")
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        raise DataError(f"{name} holds {len(data)} bytes, but its header {shape} says {expected}",
                        hint="the file is truncated or damaged; install it again")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="), copy=False)
