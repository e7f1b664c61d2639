"""`fedmq history --round/--csv/--plot` through the real CLI, on a store filled through Store's own methods."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from fedmq.commands.history_plot import plot_rounds
from fedmq.errors import ConfigError
from fedmq.store import Store
from PIL import Image

SPEC = {"status": "finished", "task": "classification", "model": "cnn", "rounds": 3}


@pytest.fixture
def db(tmp_path: Path) -> str:
    """Job `j`: three rounds of two silos each, a rejected update in round 2, round 3 still evaluating."""
    url = f"sqlite:///{tmp_path / 'fedmq.db'}"
    store = Store(url)
    job = store.create_job("j", "run1", SPEC)
    for number in (1, 2, 3):
        rid = store.open_round(job.id, number)
        for silo, samples in (("a", 100), ("b", 60)):
            store.record_update(job.id, rid, silo, accepted=True, claimed_round=number, num_samples=samples,
                                train_loss=1.0 / number, train_seconds=2.5, size=250_000, base_version=number - 1,
                                staleness=0)
        if number == 2:
            store.record_update(job.id, rid, "evil", accepted=False, reason="tensor conv.weight has NaN",
                                claimed_round=2, num_samples=10, size=999)
        store.mark_aggregated(rid, 160, f"{number:064x}", f"/out/j/round-{number:04d}.safetensors")
        if number < 3:
            store.record_evaluation(rid, "a", 20, {"accuracy": 0.5 + 0.1 * number, "loss": 1.5 - 0.3 * number})
            store.record_evaluation(rid, "b", 10, {"accuracy": 0.4 + 0.2 * number, "loss": 1.7 - 0.4 * number})
            store.complete_round(rid, {"accuracy": 0.5 + 0.13 * number, "loss": 1.5 - 0.33 * number,
                                       "train_loss": 1.0 / number, "eval_samples": 30.0})
    store.close()
    return url


def test_round_detail_shows_each_update_and_evaluation(fedmq, db: str) -> None:
    shown = fedmq.run("history", "--db", db, "--job", "j", "--round", "2")
    assert shown.returncode == 0, shown.stderr
    text = shown.stdout
    assert "job j, round 2: completed" in text
    assert "aggregated from 2 silo(s), 160 samples; 1 update(s) rejected" in text
    lines = {line.split()[0]: line for line in text.splitlines() if line.split() and line.split()[0] in ("a", "b", "evil")}
    assert lines["evil"].split()[1] == "rejected" and "tensor conv.weight has NaN" in lines["evil"]
    update_a = [line for line in text.splitlines() if line.startswith("a ") and "accepted" in line]
    assert update_a and "250.0 kB" in update_a[0] and "v1" in update_a[0] and "2.5" in update_a[0]
    assert "evaluations (2)" in text and "accuracy" in text.split("evaluations")[1]


def test_round_detail_as_json(fedmq, db: str) -> None:
    shown = fedmq.run("history", "--db", db, "--round", "2", "--json")  # the only job: no --job needed
    assert shown.returncode == 0, shown.stderr
    detail = json.loads(shown.stdout)
    assert detail["job"] == "j" and detail["round"] == 2 and detail["status"] == "completed"
    by_silo = {u["silo"]: u for u in detail["updates"]}
    assert by_silo["a"] == {**by_silo["a"], "accepted": True, "num_samples": 100, "train_loss": 0.5, "bytes": 250_000,
                            "train_seconds": 2.5, "base_version": 1, "staleness": 0, "reason": None}
    assert by_silo["evil"]["accepted"] is False and by_silo["evil"]["reason"] == "tensor conv.weight has NaN"
    assert detail["evaluations"]["b"] == {"num_samples": 10, "accuracy": pytest.approx(0.8), "loss": pytest.approx(0.9)}


def test_unknown_round_is_a_clear_error(fedmq, db: str) -> None:
    shown = fedmq.run("history", "--db", db, "--job", "j", "--round", "9")
    assert shown.returncode == 1 and "Traceback" not in shown.stderr
    assert "job 'j' has no round 9 (rounds 1-3)" in shown.stderr and "hint:" in shown.stderr


def test_csv_has_one_row_per_round(fedmq, db: str, tmp_path: Path) -> None:
    out = tmp_path / "rounds.csv"
    made = fedmq.run("history", "--db", db, "--job", "j", "--csv", str(out))
    assert made.returncode == 0, made.stderr
    assert made.stdout == "" and f"wrote 3 round(s) to {out}" in made.stderr
    rows = list(csv.DictReader(out.open()))
    assert [r["round"] for r in rows] == ["1", "2", "3"]
    assert rows[1]["status"] == "completed" and rows[2]["status"] == "evaluating"
    assert rows[1]["clients"] == "2" and rows[1]["num_samples"] == "160" and rows[1]["rejected"] == "1"
    assert float(rows[1]["accuracy"]) == pytest.approx(0.76) and float(rows[0]["train_loss"]) == 1.0
    assert rows[2]["accuracy"] == ""  # not evaluated yet
    to_stdout = fedmq.run("history", "--db", db, "--csv", "-")
    assert list(csv.DictReader(io.StringIO(to_stdout.stdout))) == rows


def test_plot_is_a_sensible_png(fedmq, db: str, tmp_path: Path) -> None:
    out = tmp_path / "rounds.png"
    made = fedmq.run("history", "--db", db, "--job", "j", "--plot", str(out))
    assert made.returncode == 0, made.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(out) as image:
        image.verify()
    with Image.open(out) as image:
        width, height = image.size
        assert 600 <= width <= 2000 and 600 <= height <= 2000
        colours = image.convert("RGB").getcolors(maxcolors=1 << 16)
        assert colours is None or len(colours) > 20, "a plot has lines and text, not one flat colour"
    with pytest.raises(ConfigError, match="unknown image format 'xyz'"):
        plot_rounds("j", Store(db).history("j"), tmp_path / "rounds.xyz")


def test_round_csv_and_plot_need_a_job_when_there_are_several(fedmq, db: str) -> None:
    store = Store(db)
    store.create_job("k", "run2", SPEC)
    store.close()
    shown = fedmq.run("history", "--db", db, "--round", "1")
    assert shown.returncode == 2 and "2 jobs" in shown.stderr and "--job" in shown.stderr
