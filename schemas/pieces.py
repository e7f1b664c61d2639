"""A received payload kept as the chunks it arrived in, so a model is never joined into one more copy.

The reassembler hands whole messages over as ``Pieces``: views into the chunks MQTT delivered.
Decoders read them as a file (``reader``), a piece at a time; ``bytes(pieces)`` joins them for the
rare reader that needs one buffer. The reassembler hashes a payload as its chunks arrive and passes
the digest on (``digests``), so verifying it does not read the bytes again.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterable

Buffer = bytes | bytearray | memoryview


class Pieces:
    """Bytes held as a sequence of views, read in order. Immutable."""

    def __init__(self, parts: Iterable[Buffer], digests: dict[int, str] | None = None) -> None:
        """``digests``: offset -> sha256 (hex) of the bytes from that offset on, where already known."""
        self.parts = [memoryview(p).cast("B") for p in parts if len(p)]
        self._len = sum(len(p) for p in self.parts)
        self._digests = dict(digests or {})

    def __len__(self) -> int:
        return self._len

    def __bytes__(self) -> bytes:
        return b"".join(self.parts)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Pieces | bytes | bytearray | memoryview):
            return len(self) == len(other) and bytes(self) == bytes(other)
        return NotImplemented

    __hash__ = None  # equal to bytes, so not hashable like them

    def __repr__(self) -> str:
        return f"Pieces({len(self)} bytes in {len(self.parts)} part(s))"

    def take(self, start: int, stop: int) -> bytes:
        """A copy of ``[start:stop]``: for small reads such as a header."""
        out, at = [], 0
        for part in self.parts:
            lo, hi = max(start - at, 0), min(stop - at, len(part))
            if lo < hi:
                out.append(part[lo:hi])
            at += len(part)
            if at >= stop:
                break
        return b"".join(out)

    def tail(self, start: int) -> Pieces:
        """The bytes from ``start`` on, as views (no copy)."""
        parts, at = [], 0
        for part in self.parts:
            if at + len(part) > start:
                parts.append(part[max(start - at, 0):])
            at += len(part)
        known = {offset - start: digest for offset, digest in self._digests.items() if offset >= start}
        return Pieces(parts, known)

    def digest(self) -> str:
        """The sha256 of the bytes, hex; computed once."""
        if 0 not in self._digests:
            hasher = hashlib.sha256()
            for part in self.parts:
                hasher.update(part)
            self._digests[0] = hasher.hexdigest()
        return self._digests[0]

    def reader(self) -> io.RawIOBase:
        """A new file object over the bytes, from the start."""
        return _Reader(self.parts)


class _Reader(io.RawIOBase):
    def __init__(self, parts: list[memoryview]) -> None:
        self._parts, self._index, self._offset = parts, 0, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        target = memoryview(buffer).cast("B")
        filled = 0
        while filled < len(target) and self._index < len(self._parts):
            part = self._parts[self._index]
            n = min(len(target) - filled, len(part) - self._offset)
            target[filled:filled + n] = part[self._offset:self._offset + n]
            filled += n
            self._offset += n
            if self._offset == len(part):
                self._index, self._offset = self._index + 1, 0
        return filled


def sha256_of(data: Buffer | Pieces) -> str:
    """The sha256 (hex) of bytes or of ``Pieces``."""
    return data.digest() if isinstance(data, Pieces) else hashlib.sha256(data).hexdigest()


def as_source(data: Buffer | Pieces) -> Buffer | io.RawIOBase:
    """What a zstd stream reader reads from: a buffer in place, or a file object over ``Pieces``."""
    return data.reader() if isinstance(data, Pieces) else data


def head(data: Buffer | Pieces, size: int) -> bytes:
    """The first ``size`` bytes (fewer if there are fewer), as a copy."""
    return data.take(0, size) if isinstance(data, Pieces) else bytes(data[:size])
