"""The job lease (issue 16, lead 4): one aggregator runs a job at a time; a dead holder is taken over."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
from fedmq.aggregator.lease import JobLease, LeaseLost, lease_owner
from fedmq.store import Store

from ..conftest import run_fedmq, start_fedmq, stop_processes

SPEC = {"status": "waiting", "task": "classification"}


@pytest.fixture
def store(tmp_path: Path):
    store = Store(f"sqlite:///{tmp_path / 'f.db'}")
    yield store
    store.close()


def _job(store: Store) -> int:
    return store.create_job("j", "run-a", SPEC).id


def test_a_second_aggregator_is_refused_while_the_holder_renews(store: Store) -> None:
    job_id = _job(store)
    holder = JobLease(store, job_id, "j", "a" * 32, ttl=2.0, renew_every=0.2)
    holder.owner = "a" * 16 + "@another-host:1"  # (this process's own pid would be taken for a restarted container's)
    holder.take()
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(0.05):
            holder.renew(time.monotonic())

    renewing = threading.Thread(target=renew, daemon=True)
    renewing.start()
    try:
        second = JobLease(store, job_id, "j", "b" * 32, ttl=2.0)
        second.owner = "b" * 16 + "@another-host:1"  # not on this host: no shortcut, the lease decides
        started = time.monotonic()
        with pytest.raises(LeaseLost, match="is run by another aggregator") as caught:
            second.take()
        assert time.monotonic() - started < 2.0, "refused as soon as the holder renewed, not at the lease's end"
        assert caught.value.hint and "stop that aggregator" in caught.value.hint
        assert not second.held
    finally:
        stop.set()
        renewing.join(5)


def test_a_holder_that_stopped_renewing_is_taken_over_and_learns_it(store: Store) -> None:
    job_id = _job(store)
    frozen = JobLease(store, job_id, "j", "a" * 32, ttl=1.0)
    frozen.owner = "a" * 16 + "@another-host:1"
    frozen.take()
    successor = JobLease(store, job_id, "j", "b" * 32, ttl=30.0)
    started = time.monotonic()
    successor.take()  # waits out the frozen holder's 1 s lease
    assert successor.held and 0.5 < time.monotonic() - started < 5
    with pytest.raises(LeaseLost, match="took job 'j' over"):
        frozen.renew(time.monotonic() + 60)  # it wakes up: it must stop, not write on
    successor.release()
    assert store.take_lease(job_id, "c", 10.0) is None, "a released lease is free at once"


def test_a_dead_process_on_this_host_is_taken_over_at_once(store: Store) -> None:
    job_id = _job(store)
    dead_pid = 2**22 + 12345  # above any pid this machine hands out
    assert store.take_lease(job_id, lease_owner("a" * 32).rsplit(":", 1)[0] + f":{dead_pid}", 600.0) is None
    successor = JobLease(store, job_id, "j", "b" * 32)
    started = time.monotonic()
    successor.take()
    assert successor.held and time.monotonic() - started < 1.0
    assert lease_owner("b" * 32).endswith(f":{os.getpid()}")


def test_fedmq_aggregator_refuses_a_job_another_one_runs(mosquitto, tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'f.db'}"
    args = ("aggregator", "--broker", str(mosquitto.url), "--job", "twice", "--db", db, "--min-clients", "2",
            "--out", str(tmp_path / "out"))
    first = start_fedmq(*args, log=tmp_path / "first.log")
    try:
        deadline = time.monotonic() + 60
        while "published on" not in (tmp_path / "first.log").read_text() and time.monotonic() < deadline:
            assert first.poll() is None, (tmp_path / "first.log").read_text()
            time.sleep(0.2)
        second = run_fedmq(*args, timeout=60)
        assert second.returncode == 1, second.stderr
        assert "job 'twice' is run by another aggregator" in second.stderr, second.stderr
        assert "stop that aggregator first" in second.stderr
        assert first.poll() is None, "the running aggregator is left alone"
    finally:
        stop_processes([first])
