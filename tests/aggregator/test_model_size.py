"""A model larger than the caps that hold until its size is known (1 GiB by default) goes through: the
aggregator takes the size of the initial weights from the fingerprint the asked silo announced, then
the model's own; a silo takes its model's once it has built it (issue 17, models beyond 2 GB).

Shown at a small scale, against a real Mosquitto with silos in this process: both caps set to 64 KB,
a quarter of the CNN's weights, as 1 GiB is half of a 2.2 GB model."""

from __future__ import annotations

from pathlib import Path

import pytest
from fedmq.aggregator.config import AggregatorConfig
from fedmq.aggregator.federation import Federation
from fedmq.aggregator.silos import SiloRegistry
from fedmq.edge_client.data.synth_classification import synth_classification
from fedmq.edge_client.silo import ClientConfig, SiloClient
from fedmq.schemas import Presence
from fedmq.schemas.fingerprint import raw_bytes
from fedmq.schemas.messages import TensorInfo
from fedmq.store import Store

pytestmark = pytest.mark.timeout(300)
CAP = 64 * 1024


def test_a_model_larger_than_the_caps_before_its_size_is_known_trains(mosquitto, tmp_path: Path, job_threads) -> None:
    job = "larger-than-the-cap"
    data = synth_classification(tmp_path / "D", silos=2, train_per_silo=16, test_per_silo=8)
    store = Store(f"sqlite:///{tmp_path / 'f.db'}")
    federation = Federation(AggregatorConfig(broker=mosquitto.url, job=job, db=store.url, rounds=2, min_clients=2,
                                             out=tmp_path / "out", max_update_bytes=CAP), store)
    silos = [SiloClient(ClientConfig(broker=mosquitto.url, silo=f"s{i}", data=data[i], job=job,
                                     work_dir=tmp_path / f"s{i}", max_model_bytes=CAP)) for i in range(2)]
    try:
        assert job_threads(federation, silos).finish(timeout=120) == {"aggregator": 0, "s0": 0, "s1": 0}
        rounds = store.history(job)
    finally:
        store.close()
    assert [(r["status"], r["clients"], r["rejected"]) for r in rounds] == [("completed", ["s0", "s1"], 0)] * 2
    assert min(c["bytes"] for r in rounds for c in r["contributions"]) > CAP, "every update was larger than the cap"


def test_the_initial_weights_are_sized_only_by_a_model_every_silo_agrees_on() -> None:
    """One hostile silo announcing a huge model must not make the aggregator accept a huge message:
    the initial weights are sized by the announced model only when every silo built the same."""
    registry = SiloRegistry("classification", run_id="run")

    def announce(silo: str, shape: list[int]) -> None:
        registry.update(Presence(job="j", silo=silo, online=True, task="classification", labels=["a", "b"],
                                 run_id="run", fingerprint=[TensorInfo(name="w", shape=shape, dtype="float32")]))

    assert registry.agreed_fingerprint() is None  # nobody announced a model yet
    announce("s0", [1000, 1000])
    announce("s1", [1000, 1000])
    agreed = registry.agreed_fingerprint()
    assert agreed is not None and raw_bytes(agreed) == 4_000_000
    announce("s2", [10**6, 10**6])  # 4 TB, claimed by one
    assert registry.agreed_fingerprint() is None
