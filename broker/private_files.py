"""Writing files only their owner may read: credentials and private keys."""

from __future__ import annotations

import os
import stat
from pathlib import Path


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` with mode 0600, atomically.

    The file is created 0600 from the start (not chmod-ed after writing), so no other user ever
    gets a moment to open it; the rename means a reader never sees half a file.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # O_CREAT's mode does not apply to a leftover tmp file
    with os.fdopen(fd, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)


def readable_by_others(path: Path) -> bool:
    return bool(Path(path).stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO))
