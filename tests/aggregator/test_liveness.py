"""Liveness with an end, clean failure and resumed rounds (issue 16, leads 3, 5 and 6), against a real
Mosquitto with real silos in the same process.

* a silo whose model was lost is asked again at the round's deadline, and the round completes;
* a round that stays short of updates after its bounded re-asks fails the job with the reason, in the
  store and on the broker, and the silos leave with it;
* an error of the aggregator's own marks the job interrupted, with the reason, in both places;
* a SIGKILLed aggregator process leaves its last will: the retained job spec says interrupted;
* a resumed job opens its first round only once its silos are back, so the round is sampled.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from pathlib import Path

import pytest
from fedmq.aggregator.config import AggregatorConfig
from fedmq.aggregator.federation import Federation
from fedmq.aggregator.transport import LOST
from fedmq.broker.connection import Connection
from fedmq.broker.server import free_port
from fedmq.broker.url import BrokerUrl
from fedmq.edge_client.data.synth_classification import synth_classification
from fedmq.edge_client.silo import ClientConfig, SiloClient
from fedmq.errors import BrokerError
from fedmq.schemas import JobSpec, ModelSync, Presence, Topics
from fedmq.store import Store

from ..conftest import start_fedmq, stop_processes
from .test_federation import hold_updates

pytestmark = pytest.mark.timeout(300)


def _silo(mosquitto, job: str, data: Path, name: str, tmp_path: Path) -> SiloClient:
    return SiloClient(ClientConfig(broker=mosquitto.url, silo=name, data=data, job=job, work_dir=tmp_path / name))


def drop_models(silo: SiloClient, train_round: int, times: int) -> list[int]:
    """Make ``silo`` lose the first ``times`` models it is asked to train on for ``train_round``, as if
    the broker had lost them; the returned list counts the copies it lost."""
    lost: list[int] = []
    on_model = silo._on_model

    def lossy(state, sync: ModelSync, payload) -> None:
        if sync.train_round == train_round and len(lost) < times:
            lost.append(sync.version)
            return
        on_model(state, sync, payload)

    silo._on_model = lossy
    return lost


def retained_spec(mosquitto, job: str, timeout: float = 10.0) -> JobSpec:
    topics = Topics(job)
    conn = Connection(mosquitto.url, "spec-reader", [topics.init], max_message_bytes=1 << 20)
    conn.connect(timeout=10)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            incoming = conn.receive(timeout=0.5)
            if incoming is not None and isinstance(incoming.header, JobSpec):
                return incoming.header
        raise AssertionError(f"no retained job spec for {job!r} within {timeout} s")
    finally:
        conn.close()


def test_a_silo_whose_model_was_lost_is_asked_again_and_the_round_completes(mosquitto, tmp_path: Path, job_threads,
                                                                             caplog) -> None:
    """Before issue 16 the round moved its deadline on without asking anyone, and waited forever."""
    caplog.set_level(logging.INFO, logger="fedmq.aggregator")
    job = "reask"
    data = synth_classification(tmp_path / "D", silos=2, train_per_silo=16, test_per_silo=8)
    store = Store(f"sqlite:///{tmp_path / 'f.db'}")
    config = AggregatorConfig(broker=mosquitto.url, job=job, db=store.url, rounds=1, min_clients=2,
                              out=tmp_path / "out", round_timeout=3, max_reasks=2)
    silos = [_silo(mosquitto, job, data[i], f"s{i}", tmp_path) for i in range(2)]
    lost = drop_models(silos[1], train_round=1, times=1)
    codes = job_threads(Federation(config, store), silos).finish(timeout=120)
    assert codes == {"aggregator": 0, "s0": 0, "s1": 0}
    assert lost == [0], "s1 lost round 1's model once"
    [row] = store.history(job)
    assert row["status"] == "completed" and row["clients"] == ["s0", "s1"]
    assert row["rejected"] == 0, "the re-ask and its answer are no rejections"
    assert "asking again s1 (re-ask 1 of 2" in caplog.text
    store.close()


def test_a_round_short_of_updates_after_its_reasks_fails_the_job_with_the_reason(mosquitto, tmp_path: Path,
                                                                                  job_threads) -> None:
    job = "fails"
    data = synth_classification(tmp_path / "D", silos=2, train_per_silo=16, test_per_silo=8)
    store = Store(f"sqlite:///{tmp_path / 'f.db'}")
    config = AggregatorConfig(broker=mosquitto.url, job=job, db=store.url, rounds=2, min_clients=2,
                              out=tmp_path / "out", round_timeout=2, max_reasks=1)
    silos = [_silo(mosquitto, job, data[i], f"s{i}", tmp_path) for i in range(2)]
    lost = drop_models(silos[1], train_round=2, times=1000)  # online, but never gets round 2's model
    started = time.monotonic()
    running = job_threads(Federation(config, store), silos)
    with pytest.raises(AssertionError, match="RoundFailed: round 2 got 1 of the 2 update"):
        running.finish(timeout=120)
    assert len(lost) == 2, "round 2's model went to s1 twice: the broadcast and one re-ask"
    assert running.codes == {"s0": 1, "s1": 1}, "the silos leave with the failed job"
    assert time.monotonic() - started < 60
    spec = JobSpec.model_validate(store.find_job(job).spec)
    assert spec.status == "failed" and "still owed: s1" in spec.reason, spec.reason
    broker_spec = retained_spec(mosquitto, job)
    assert broker_spec.status == "failed" and broker_spec.reason == spec.reason
    assert [r["status"] for r in store.history(job)] == ["completed", "failed"]
    store.close()


def test_an_error_of_the_aggregator_marks_the_job_interrupted_with_the_reason(mosquitto, tmp_path: Path,
                                                                              job_threads) -> None:
    job = "crashes"
    data = synth_classification(tmp_path / "D", silos=2, train_per_silo=16, test_per_silo=8)
    store = Store(f"sqlite:///{tmp_path / 'f.db'}")
    config = AggregatorConfig(broker=mosquitto.url, job=job, db=store.url, rounds=2, min_clients=2,
                              out=tmp_path / "out", round_timeout=60)
    federation = Federation(config, store)

    def broken() -> None:
        raise RuntimeError("disk on fire")

    federation.strategy.result = broken
    silos = [_silo(mosquitto, job, data[i], f"s{i}", tmp_path) for i in range(2)]
    running = job_threads(federation, silos)
    # The silos wait for the job to resume: only the aggregator's thread ends.
    deadline = time.monotonic() + 120
    while not running.errors and time.monotonic() < deadline:
        time.sleep(0.2)
    assert running.errors and isinstance(running.errors[0][1], RuntimeError)
    spec = JobSpec.model_validate(store.find_job(job).spec)
    assert spec.status == "interrupted" and spec.reason == "the aggregator failed: RuntimeError: disk on fire"
    broker_spec = retained_spec(mosquitto, job)
    assert broker_spec.status == "interrupted" and broker_spec.reason == spec.reason
    for silo in silos:
        silo.stop.set("test over")
    running.errors.clear()
    assert set(running.finish(timeout=60).values()) == {130}
    store.close()


def test_a_killed_aggregator_leaves_its_last_will(mosquitto, tmp_path: Path) -> None:
    job = "killed"
    db = f"sqlite:///{tmp_path / 'f.db'}"
    aggregator = start_fedmq("aggregator", "--broker", str(mosquitto.url), "--job", job, "--db", db,
                             "--min-clients", "2", "--out", str(tmp_path / "out"), log=tmp_path / "aggregator.log")
    try:
        assert retained_spec(mosquitto, job, timeout=60).status == "waiting"
        aggregator.send_signal(signal.SIGKILL)
        aggregator.wait(timeout=30)
        deadline = time.monotonic() + 30
        while (spec := retained_spec(mosquitto, job)).status != "interrupted" and time.monotonic() < deadline:
            time.sleep(0.2)
        assert spec.status == "interrupted" and spec.reason == LOST
    finally:
        stop_processes([aggregator])


def test_a_resumed_job_waits_for_its_silos_and_samples_its_first_round(mosquitto, tmp_path: Path,
                                                                        job_threads) -> None:
    """Before issue 16 a resumed job opened its first round before it heard of any silo: the round
    asked nobody, then took every silo that came, --clients-per-round or not."""
    job = "resume-sampled"
    data = synth_classification(tmp_path / "D", silos=3, train_per_silo=16, test_per_silo=8)
    store = Store(f"sqlite:///{tmp_path / 'f.db'}")

    def federation(rounds: int, per_round: int | None) -> Federation:
        return Federation(AggregatorConfig(broker=mosquitto.url, job=job, db=store.url, rounds=rounds, min_clients=2,
                                           clients_per_round=per_round, out=tmp_path / "out", round_timeout=60), store)

    # The silos stay up across the aggregator's restart, as they do in a deployment.
    silos = job_threads(None, [_silo(mosquitto, job, data[i], f"s{i}", tmp_path) for i in range(3)])
    first = federation(rounds=3, per_round=None)
    completed = first.record.completed

    def complete_then_stop(round_id: int, metrics: dict[str, float]) -> None:
        # stopped from its own thread as round 1 completes: round 2 (open by then) gets no further
        completed(round_id, metrics)
        first.stop.set("test: stop after round 1")

    first.record.completed = complete_then_stop
    assert job_threads(first).finish(timeout=120) == {"aggregator": 130}
    assert job_threads(federation(rounds=2, per_round=2)).finish(timeout=120) == {"aggregator": 0}
    assert set(silos.finish(timeout=60).values()) == {0}
    rows = store.history(job)
    assert [r["status"] for r in rows] == ["completed", "completed"], [(r["round"], r["status"]) for r in rows]
    assert len(rows[0]["clients"]) == 3
    assert len(rows[1]["clients"]) == 2, f"round 2 is sampled from the 3 silos back: {rows[1]['clients']}"
    store.close()


def test_a_stale_last_will_marks_no_live_silo_offline(mosquitto, tmp_path: Path, job_threads, caplog) -> None:
    """Issue 16, lead 4: an earlier connection of silo s1, half-open, that the broker gives up on after s1
    restarted, publishes its last will "offline" over s1's retained "online". Before presences named their
    connection, the aggregator took s1 for gone and the round waited for it to come back."""
    caplog.set_level(logging.INFO)
    job = "stale-will"
    topics = Topics(job)
    data = synth_classification(tmp_path / "D", silos=2, train_per_silo=16, test_per_silo=8)
    store = Store(f"sqlite:///{tmp_path / 'f.db'}")
    ghost = Connection(mosquitto.url, "fedmq-silo-s1-before", [], max_message_bytes=1 << 20,
                       will=(topics.presence("s1"), Presence(job=job, silo="s1", online=False, session="0" * 16)))
    ghost.connect(timeout=10)
    federation = Federation(AggregatorConfig(broker=mosquitto.url, job=job, db=store.url, rounds=2, min_clients=2,
                                             out=tmp_path / "out", round_timeout=60, max_reasks=0), store)
    silos = [_silo(mosquitto, job, data[i], f"s{i}", tmp_path) for i in range(2)]
    release = threading.Event()
    hold_updates(silos[1], release)
    running = job_threads(federation, silos)
    try:
        deadline = time.monotonic() + 120
        while federation.round is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert federation.round is not None, "round 1 opened"
        ghost._client.loop_stop()
        ghost._client.socket().close()  # no DISCONNECT: the broker publishes the ghost's last will
        deadline = time.monotonic() + 30  # the aggregator sees the will while s1 holds its update (the round open)
        while "ignored an offline mark of silo s1" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        release.set()
    assert running.finish(timeout=120) == {"aggregator": 0, "s0": 0, "s1": 0}
    assert "ignored an offline mark of silo s1 from an earlier connection" in caplog.text
    assert "silo s1 went offline" not in caplog.text
    assert "announcing it again" in caplog.text, "s1 put its online presence back over the stale will"
    assert [r["clients"] for r in store.history(job)] == [["s0", "s1"], ["s0", "s1"]]


@pytest.mark.parametrize("stored", [None, "running"])
def test_an_aggregator_that_cannot_reach_the_broker_at_start_leaves_the_job_interrupted(tmp_path: Path,
                                                                                         stored: str | None) -> None:
    """Found by the chaos soak (benchmarks/chaos.py): an aggregator restarted while the broker was away
    exited with the store still saying "running" (or, for a new job, "waiting"), because the catch-all
    began only after the first connection and the first publish of the job spec."""
    job = "unreachable"
    store = Store(f"sqlite:///{tmp_path / 'f.db'}")
    config = AggregatorConfig(broker=BrokerUrl("127.0.0.1", free_port("127.0.0.1")), job=job, db=store.url,
                              rounds=3, out=tmp_path / "out", connect_timeout=0.5)
    if stored is not None:  # a job that had started (its batch size fixed) and is being resumed
        federation = Federation(config, store)
        spec = federation._new_spec().model_copy(update={"status": stored, "model": "cnn", "batch_size": 8,
                                                         "lr": 0.01, "metric": "accuracy"})
        store.create_job(job, spec.run_id, spec.model_dump())
    with pytest.raises(BrokerError, match="cannot reach"):
        Federation(config, store).run()
    spec = JobSpec.model_validate(store.find_job(job).spec)
    assert spec.status == "interrupted", spec.status
    store.close()
