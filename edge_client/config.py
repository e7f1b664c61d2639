"""A silo's settings, as parsed by the CLI or given to ``fedmq.run_silo`` (no torch on import)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..broker.url import BrokerUrl
from ..errors import DataError
from ..schemas.limits import DEFAULT_MAX_PAYLOAD_BYTES


def check_data_folder(data: Path) -> None:
    """Raise ``DataError`` unless ``data`` is a folder: checked before anything heavy is imported, so a
    mistyped ``--data`` is told at once rather than after torch has loaded."""
    if not data.exists():
        raise DataError(f"data folder {data} does not exist",
                        hint="pass the silo's folder with --data, e.g. one made by `fedmq data synth`")
    if not data.is_dir():
        raise DataError(f"--data {data} is not a folder", hint="pass the silo's data folder")


@dataclass(frozen=True)
class ClientConfig:
    broker: BrokerUrl
    silo: str
    data: Path
    job: str = "default"
    # The task plug-in: a registered name (classification), module:Class or path/to/file.py:Class;
    # None: the registered task the data folder's layout names (task_loader.task_for_folder).
    task: str | None = None
    work_dir: Path | None = None
    max_model_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
    connect_timeout: float = 30.0
    device: str = "auto"
    signing_key: Path | None = None  # this silo's Ed25519 private key (PEM), for jobs that require signatures
    nproc_per_node: int = 1  # > 1: train each round with DDP on this many local processes (distributed.py)
