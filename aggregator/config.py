"""The aggregator's settings, as parsed by the CLI."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..broker.url import BrokerUrl
from ..schemas import DEFAULT_CHUNK_SIZE, DEFAULT_MAX_PAYLOAD_BYTES
from ..schemas.codecs.names import DEFAULT_JOB_CODEC
from ..store import DEFAULT_DB
from .strategies import StrategyOptions


@dataclass(frozen=True)
class AggregatorConfig:
    broker: BrokerUrl
    job: str = "default"
    db: str = DEFAULT_DB
    task: str = "classification"  # a task plug-in's name; the silos' tasks must announce it
    # None: the task's default, announced by its silos and fixed when the job starts (TaskDefaults)
    model: str | None = None
    metric: str | None = None  # the headline metric of the silos' evaluations
    rounds: int = 3
    min_clients: int = 1
    local_epochs: int = 1
    batch_size: int | None = None
    lr: float | None = None
    momentum: float = 0.9
    seed: int = 0
    out: Path = field(default_factory=lambda: Path("fedmq-out"))
    init_weights: Path | None = None
    num_classes: int | None = None
    strategy: StrategyOptions = field(default_factory=StrategyOptions)
    mu: float = 0.0  # FedProx's proximal weight, applied by the silos (with strategy fedprox)
    round_timeout: float = 1800.0
    max_reasks: int = 3  # a round short of updates at its deadline asks the silos owed again this many times, then fails
    mode: str = "sync"
    buffer_size: int = 2
    max_staleness: int = 4
    # The most samples one update is weighted by (min(num_samples, this)); None: no cap. The store keeps the claim.
    max_samples_per_silo: int | None = None
    fraction: float | None = None
    clients_per_round: int | None = None
    codec: str = DEFAULT_JOB_CODEC
    chunk_size: int = DEFAULT_CHUNK_SIZE
    max_update_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
    connect_timeout: float = 30.0
    max_concurrent_uploads: int | None = None  # None: as many as --memory-budget holds (uploads.slots_for)
    memory_budget: int = 4 * 2**30  # bytes the updates in flight may take
    stall_timeout: float = 120.0  # a partial update that gets no chunk for this long is dropped and rejected
    sign: bool = False  # require updates and results signed by the silos' registered keys
    keys_dir: Path | None = None  # folder of <silo>.pub files
    secure_agg: bool = False  # secure aggregation: the aggregator learns only the sum of the updates (aggregator/secure/)
    secure_threshold: int | None = None  # silos needed to unmask a secure round; None: a majority of the round's
    task_options: dict[str, str | int | float | bool] = field(default_factory=dict)  # for the silos' task, unread here
