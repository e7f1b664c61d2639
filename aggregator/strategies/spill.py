"""Where the robust combiners keep a round's deltas: on disk, one file per tensor, read back in blocks.

Median, trimmed mean and Krum need every delta of a round at once. Held in memory that is N models
(the aggregator of a 50-silo consortium would hold 50). Here each delta is written out as it arrives,
its tensors appended to one file per tensor name, so that a tensor's N rows lie side by side; the
combiners then read a block of columns of all N rows at a time, with ``preadv`` straight into the
block's tensor. The aggregator's memory stays about one delta plus one block (``BLOCK_BYTES``)
whatever N. Not ``mmap``: pages of a mapped file count in the process's resident memory until the
mapping goes, and a tensor's file is N rows (472 MB for ResNet-18's largest at N = 50).

Disk: N x the model in the accumulator dtypes (float32; float64 for float64 tensors), in a folder of
its own under ``root`` that is removed when the round's result is made, at the next round's start,
and when the aggregator starts again after a crash (``clear``).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch

from ...schemas.codec import StateDict

log = logging.getLogger("fedmq.aggregator")

BLOCK_BYTES = 16 * 2**20  # of all N rows together; sorting one takes 4 times that (values, int64 indices)
PREFIX = "round-"


class SpilledDeltas:
    """A round's deltas on disk. ``add`` them, then read ``blocks`` (or a ``row``) of each tensor name."""

    def __init__(self, root: Path | str | None = None, block_bytes: int = BLOCK_BYTES) -> None:
        self.root = Path(root) if root is not None else None
        self.block_bytes = block_bytes
        self._dir: Path | None = None
        self._layout: dict[str, tuple[torch.Size, torch.dtype, int]] = {}  # name -> shape, dtype, file number
        self.count = 0

    def __len__(self) -> int:
        return self.count

    @property
    def names(self) -> list[str]:
        return list(self._layout)

    def shape(self, name: str) -> torch.Size:
        return self._layout[name][0]

    def dtype(self, name: str) -> torch.dtype:
        return self._layout[name][1]

    def add(self, delta: StateDict) -> None:
        """Append one delta. Every delta of a round must have the first one's tensors (names, shapes, dtypes)."""
        if self._dir is None:
            self._open()
        if not self._layout:
            self._layout = {name: (t.shape, t.dtype, i) for i, (name, t) in enumerate(delta.items())}
        if delta.keys() != self._layout.keys():
            raise ValueError("a delta with other tensors than the round's first")
        for name, tensor in delta.items():
            shape, dtype, number = self._layout[name]
            if tensor.shape != shape or tensor.dtype != dtype:
                raise ValueError(f"tensor {name}: {tuple(tensor.shape)} {tensor.dtype}, not the round's "
                                 f"{tuple(shape)} {dtype}")
            with open(self._file(number), "ab") as f:
                f.write(memoryview(tensor.detach().contiguous().numpy()).cast("B"))
        self.count += 1

    def blocks(self, name: str) -> Iterator[tuple[slice, torch.Tensor]]:
        """The tensor's N rows, a block of columns at a time: (columns, an N x columns tensor in memory)."""
        shape, dtype, number = self._layout[name]
        numel, itemsize = shape.numel(), _itemsize(dtype)
        width = max(1, self.block_bytes // max(1, self.count * itemsize))
        with open(self._file(number), "rb", buffering=0) as f:
            for start in range(0, numel, width):
                columns = slice(start, min(numel, start + width))
                block = torch.empty(self.count, columns.stop - start, dtype=dtype)
                for i in range(self.count):
                    _read_into(f.fileno(), block[i], (i * numel + start) * itemsize)
                yield columns, block

    def row(self, name: str, index: int) -> torch.Tensor:
        """Delta ``index``'s tensor ``name``, in its shape (a copy in memory)."""
        shape, dtype, number = self._layout[name]
        out = torch.empty(shape, dtype=dtype)
        with open(self._file(number), "rb", buffering=0) as f:
            _read_into(f.fileno(), out, index * shape.numel() * _itemsize(dtype))
        return out

    def clear(self) -> None:
        """Forget the round's deltas and remove their files (a crashed run's too, the first time)."""
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
        elif self.root is not None and self.root.is_dir():
            for stale in self.root.glob(PREFIX + "*"):
                log.info("removing %s, the spilled updates of a round an earlier run did not finish", stale)
                shutil.rmtree(stale, ignore_errors=True)
        self._dir = None
        self._layout = {}
        self.count = 0

    def _open(self) -> None:
        if self.root is not None:
            self.root.mkdir(parents=True, exist_ok=True)
        self._dir = Path(tempfile.mkdtemp(prefix=PREFIX, dir=self.root))

    def _file(self, number: int) -> Path:
        assert self._dir is not None
        return self._dir / f"{number}.bin"


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _read_into(fd: int, tensor: torch.Tensor, offset: int) -> None:
    """Fill the contiguous ``tensor`` from the file at ``offset``."""
    buffer = memoryview(tensor.numpy()).cast("B")
    done = 0
    while done < len(buffer):
        got = os.preadv(fd, [buffer[done:]], offset + done)
        if got <= 0:
            raise OSError(f"a spilled update's file ends {len(buffer) - done} bytes early")
        done += got
