"""What the dashboard reads from a real SQLite store, and the /metrics text it renders from it."""

from __future__ import annotations

from pathlib import Path

from fedmq.dashboard.live import LiveView
from fedmq.dashboard.metrics import registry
from fedmq.dashboard.queries import fingerprint, job_detail, jobs_overview, reason_class, totals
from fedmq.store import Store
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

SPEC = {"status": "running", "task": "classification", "model": "cnn", "rounds": 3, "min_clients": 2, "mode": "sync",
        "codec": "shuffle+zstd", "labels": ["a", "b"], "lr": 0.05}


def make_store(tmp_path: Path, url: str | None = None) -> Store:
    """Two rounds of job "j": silo a counted in both; b counted in round 1, in round 2 late then rejected."""
    store = Store(url or f"sqlite:///{tmp_path / 's.db'}")
    job_id = store.create_job("j", "run1", SPEC).id
    for number, metrics in ((1, {"loss": 1.2, "accuracy": 0.4, "train_loss": 1.3, "dp_epsilon": 0.5, "dp_delta": 1e-5}),
                            (2, {"loss": 0.9, "accuracy": 0.7, "train_loss": 1.0, "dp_epsilon": 0.8, "dp_delta": 1e-5})):
        round_id = store.open_round(job_id, number)
        store.record_update(job_id, round_id, "a", accepted=True, claimed_round=number, num_samples=10, size=1000)
        if number == 1:
            store.record_update(job_id, round_id, "b", accepted=True, claimed_round=1, num_samples=10, size=1000)
        else:
            store.record_update(job_id, round_id, "b", accepted=False, reason="update for round 1 but round 2 is open",
                                claimed_round=1, size=1000)
            store.record_update(job_id, round_id, "b", accepted=False, reason="tensor 'w' holds NaN or infinite values",
                                claimed_round=2, size=500)
        store.mark_aggregated(round_id, 20, "0" * 64, "ckpt")
        store.record_evaluation(round_id, "a", 5, {"accuracy": metrics["accuracy"]})
        store.record_evaluation(round_id, "b", 5, {"accuracy": metrics["accuracy"]})
        store.complete_round(round_id, metrics)
    store.record_update(job_id, None, "c", accepted=False, reason="update for round 9 but no round is open")
    store.set_silo(job_id, "a", True)
    store.set_silo(job_id, "b", False)
    return store


def test_a_job_in_full(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    d = job_detail(store, "j")
    assert d["curves"]["metrics"][0] == "accuracy" and "dp_delta" not in d["curves"]["metrics"]
    assert d["curves"]["series"]["accuracy"] == [0.4, 0.7] and d["curves"]["rounds"] == [1, 2]
    cells = {r["round"]: r["cells"] for r in d["participation"]["rounds"]}
    assert cells == {1: {"a": "counted", "b": "counted"}, 2: {"a": "counted", "b": "rejected"}}
    late = [r for r in d["rejections"] if r["late"]]
    assert [(r["round"], r["silo"]) for r in late] == [(2, "b")]
    assert [r["round"] for r in d["rejections"]] == [2, 2, None]  # the last came while no round was open
    assert d["privacy"] == {"epsilon": 0.8, "delta": 1e-5, "rounds": 2}
    assert d["settings"]["labels"] == 2 and d["settings"]["codec"] == "shuffle+zstd"
    assert [s["silo"] for s in d["stored_silos"] if s["online"]] == ["a"]
    overview = jobs_overview(store)
    assert overview[0]["rounds_completed"] == 2 and list(overview[0]["last_metrics"])[0] == "accuracy"


def test_metrics_render_the_store(tmp_path: Path) -> None:
    check_metrics(make_store(tmp_path))


def test_the_same_on_postgres(tmp_path: Path, postgres_url: str) -> None:
    store = make_store(tmp_path, postgres_url)
    try:
        assert job_detail(store, "j")["participation"]["rounds"][1]["cells"] == {"a": "counted", "b": "rejected"}
        check_metrics(store)
        assert fingerprint(store)
    finally:
        store.close()


def check_metrics(store: Store) -> None:
    t = totals(store)["j"]
    assert (t["rounds_completed"], t["accepted"], t["bytes"], t["silos_online"]) == (2, 3, 4500, 1)
    assert t["rejected"] == {"update for round N but round N is open": 1, "tensor 'w' holds NaN or infinite values": 1,
                             "update for round N but no round is open": 1}
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(generate_latest(registry(store, LiveView(None))).decode())
               for s in f.samples}
    assert samples[("fedmq_rounds_completed_total", (("fedmq_job", "j"),))] == 2
    assert samples[("fedmq_updates_accepted_total", (("fedmq_job", "j"),))] == 3
    assert samples[("fedmq_round_duration_seconds_count", (("fedmq_job", "j"),))] == 2
    assert samples[("fedmq_silos_online", (("fedmq_job", "j"),))] == 1  # no broker watched: the store's record
    assert samples[("fedmq_broker_connected", ())] == 0


def test_the_fingerprint_changes_with_the_store(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    before = fingerprint(store)
    assert fingerprint(store) == before
    store.record_update(1, None, "a", accepted=False, reason="x")
    assert fingerprint(store) != before


def test_reason_classes_hide_numbers_and_silo_names() -> None:
    assert reason_class("duplicate update from hospital-7 for round 12", "hospital-7") == \
        "duplicate update from SILO for round N"
    assert reason_class(None, "a") == "unknown"
