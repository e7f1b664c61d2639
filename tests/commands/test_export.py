"""`fedmq export`: a round's checkpoint as a plain state dict that loads into the very constructor the silos use."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from fedmq.aggregator.checkpoints import checkpoint_path, save_checkpoint
from fedmq.commands.export import export_model
from fedmq.edge_client.models import build_model
from fedmq.errors import ConfigError, StoreError
from fedmq.store import Store
from safetensors import safe_open
from safetensors.torch import load_file

LABELS = ["cat", "dog", "eel"]


def _job(tmp_path: Path, task: str, model: str, rounds: int = 2) -> tuple[str, Path, dict[int, dict]]:
    """A store with job `j`: ``rounds`` completed rounds whose checkpoints are models built as the silos do."""
    db, out = f"sqlite:///{tmp_path / 'fedmq.db'}", tmp_path / "fedmq-out"
    store = Store(db)
    spec = {"status": "finished", "task": task, "model": model, "rounds": rounds, "labels": LABELS, "run_id": "r1",
            "job": "j", "min_clients": 1, "local_epochs": 1, "batch_size": 4, "lr": 0.01, "seed": 0,
            "codec": "safetensors+zstd", "chunk_size": 1 << 20, "max_update_bytes": 1 << 30}
    job = store.create_job("j", "r1", spec)
    states = {}
    for number in range(rounds + 1):
        states[number] = build_model(task, model, len(LABELS), seed=number).state_dict()
        path = save_checkpoint(states[number], checkpoint_path(out, "j", number))
        if number:
            rid = store.open_round(job.id, number)
            store.mark_aggregated(rid, 10, f"{number:064x}", str(path))
            store.complete_round(rid, {"accuracy": 0.5})
    store.close()
    return db, out, states


def _same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_cnn_export_loads_into_the_silos_constructor_and_predicts_alike(fedmq, tmp_path: Path) -> None:
    db, out, states = _job(tmp_path, "classification", "cnn")
    made = fedmq.run("export", "--db", db, "--job", "j", "--out-dir", str(out), "--out", str(tmp_path / "model.pt"))
    assert made.returncode == 0, made.stderr
    assert "round 2 model of job j" in made.stdout and "num_classes=3" in made.stdout
    loaded = torch.load(tmp_path / "model.pt", weights_only=True)  # a plain dict of tensors, no pickled classes
    _same(loaded, states[2])
    model = build_model("classification", "cnn", len(LABELS), seed=99)
    model.load_state_dict(loaded, strict=True)
    reference = build_model("classification", "cnn", len(LABELS), seed=0)
    reference.load_state_dict(states[2])
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(model.eval()(x), reference.eval()(x))

    first = fedmq.run("export", "--db", db, "--job", "j", "--round", "1", "--out-dir", str(out),
                      "--out", str(tmp_path / "r1.safetensors"))
    assert first.returncode == 0, first.stderr
    _same(load_file(tmp_path / "r1.safetensors"), states[1])
    with safe_open(tmp_path / "r1.safetensors", "pt") as f:
        meta = f.metadata()
    assert meta["fedmq.model"] == "cnn" and meta["fedmq.round"] == "1" and meta["fedmq.labels"] == '["cat", "dog", "eel"]'


def test_detection_export_loads_into_torchvision(tmp_path: Path) -> None:
    import torchvision

    db, out, states = _job(tmp_path, "detection", "fasterrcnn_mobilenet_v3_large_320_fpn", rounds=1)
    export_model(db, "j", None, out, tmp_path / "det.safetensors")
    # Plain torchvision, as in the README: K real classes + the background.
    model = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_320_fpn(
        weights=None, weights_backbone=None, num_classes=len(LABELS) + 1)
    model.load_state_dict(load_file(tmp_path / "det.safetensors"), strict=True)
    _same(model.state_dict(), states[1])
    with torch.no_grad():
        [detections] = model.eval()([torch.rand(3, 96, 96)])
    assert set(detections) == {"boxes", "labels", "scores"}


def test_export_errors_are_clear(fedmq, tmp_path: Path) -> None:
    db, out, _ = _job(tmp_path, "classification", "cnn", rounds=1)
    with pytest.raises(StoreError, match="no job named 'nope'"):
        export_model(db, "nope", None, out, tmp_path / "m.pt")
    with pytest.raises(StoreError, match=r"job 'j' has no round 5 \(rounds 1-1\)"):
        export_model(db, "j", 5, out, tmp_path / "m.pt")
    with pytest.raises(ConfigError, match="unknown format '.onnx'"):
        export_model(db, "j", None, out, tmp_path / "m.onnx")
    export_model(db, "j", 0, out, tmp_path / "initial.pt")  # round 0: the initial model
    assert torch.load(tmp_path / "initial.pt", weights_only=True).keys()

    (out / "j" / "round-0001.safetensors").rename(tmp_path / "moved.safetensors")
    missing = fedmq.run("export", "--db", db, "--job", "j", "--out-dir", str(out), "--out", str(tmp_path / "m.pt"))
    assert missing.returncode == 1 and "Traceback" not in missing.stderr
    assert f"expected {out / 'j' / 'round-0001.safetensors'}" in missing.stderr
    assert "--out-dir" in missing.stderr and "--out folder" in missing.stderr
    assert not (tmp_path / "m.pt").exists()
