"""Upload flow control (issue 17): a few silos upload at a time; no lost message deadlocks it."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from fedmq.aggregator.config import AggregatorConfig
from fedmq.aggregator.federation import Federation
from fedmq.aggregator.uploads import UploadSlots, slots_for
from fedmq.edge_client import silo as silo_module
from fedmq.edge_client.data.synth_classification import synth_classification
from fedmq.edge_client.silo import ClientConfig, SiloClient
from fedmq.store import Store

pytestmark = pytest.mark.timeout(300)


def test_more_silos_than_slots_are_granted_first_come_first_served() -> None:
    slots = UploadSlots(2, grant_s=60)
    assert slots.ask("a", 1, now=0) == [("a", 1)]
    assert slots.ask("b", 1, now=0) == [("b", 1)]
    assert slots.ask("c", 1, now=0) == [] and slots.ask("d", 1, now=0) == [] and slots.ask("e", 1, now=0) == []
    assert slots.done("b", now=1) == [("c", 1)], "b's update arrived: the first in line goes"
    assert slots.done("a", now=2) == [("d", 1)]
    assert slots.done("zz", now=2) == [], "a silo that held no grant frees nothing"
    assert slots.peak == 2 and set(slots.granted) == {"c", "d"} and list(slots.waiting) == ["e"]


def test_a_silo_dying_with_a_grant_and_a_lapsed_grant_free_their_slots() -> None:
    slots = UploadSlots(1, grant_s=10)
    assert slots.ask("a", 3, now=0) == [("a", 3)]
    slots.ask("b", 3, now=0)
    slots.ask("c", 3, now=0)
    assert slots.done("a", now=1) == [("b", 3)], "a went offline holding its grant"
    assert slots.expire(now=5) == [], "b's grant still holds"
    assert slots.expire(now=11) == [("c", 3)], "b never sent its update: its grant lapsed"
    assert slots.done("b", now=12) == [], "b (no longer granted) frees nothing"


def test_a_lost_grant_is_granted_again_when_the_silo_asks_again() -> None:
    slots = UploadSlots(1, grant_s=10)
    assert slots.ask("a", 1, now=0) == [("a", 1)]
    slots.ask("b", 1, now=1)
    assert slots.ask("a", 1, now=8) == [("a", 1)], "asked again: its grant was lost on the way"
    assert slots.expire(now=9) == []
    assert slots.expire(now=10) == [("b", 1)], "asking again does not keep a slot for ever: the grant lapses"
    assert slots.ask("a", 1, now=11) == [], "a waits in line again"
    assert slots.peak == 1


def test_slots_follow_the_memory_budget() -> None:
    assert slots_for(4 * 2**30, 47 * 10**6) == 45
    assert slots_for(100, 10**9) == 1, "never fewer than one"


def _silos(mosquitto, job: str, tmp_path: Path, n: int) -> list[SiloClient]:
    data = synth_classification(tmp_path / "D", silos=n, train_per_silo=16, test_per_silo=8)
    return [SiloClient(ClientConfig(broker=mosquitto.url, silo=f"s{i}", data=data[i], job=job,
                                    work_dir=tmp_path / f"s{i}")) for i in range(n)]


def test_one_slot_for_four_silos_runs_the_job_one_upload_at_a_time(mosquitto, tmp_path: Path, run_job) -> None:
    job = "one-slot"
    store = Store(f"sqlite:///{tmp_path / 'f.db'}")
    federation = Federation(AggregatorConfig(broker=mosquitto.url, job=job, db=store.url, rounds=2, min_clients=4,
                                             out=tmp_path / "out", round_timeout=120, max_concurrent_uploads=1), store)
    assert run_job(federation, _silos(mosquitto, job, tmp_path, 4)) == 0
    rows = store.history(job)
    assert [r["clients"] for r in rows] == [["s0", "s1", "s2", "s3"]] * 2 and all(r["rejected"] == 0 for r in rows)
    assert federation.uploads.peak == 1, "never two grants at once"
    store.close()


def test_a_silo_that_never_uses_its_grants_holds_up_nobody(mosquitto, tmp_path: Path, run_job, monkeypatch,
                                                            caplog) -> None:
    """s2 loses every grant it is given (as if it died holding it, or the grant was lost): each lapses,
    and the slot goes on to the others; s2 asks again and again, and the round closes without it."""
    caplog.set_level(logging.INFO, logger="fedmq.aggregator")
    monkeypatch.setattr(silo_module, "ASK_AGAIN_S", 1.0)
    job = "lost-grants"
    store = Store(f"sqlite:///{tmp_path / 'f.db'}")
    federation = Federation(AggregatorConfig(broker=mosquitto.url, job=job, db=store.url, rounds=1, min_clients=2,
                                             out=tmp_path / "out", round_timeout=15, max_concurrent_uploads=1), store)
    federation.uploads.grant_s = 2.0
    silos = _silos(mosquitto, job, tmp_path, 3)
    silos[2]._on_grant = lambda state: None
    assert run_job(federation, silos) == 0
    [row] = store.history(job)
    assert row["clients"] == ["s0", "s1"]
    assert "the upload grant of s2 lapsed unused" in caplog.text
    store.close()
