"""Bring your own model: a task package written here, outside the repository, installed into a folder
of the test's own (the shared environment is left alone), and run by the real CLI on a real Mosquitto.

The package has its own data format (CSV points), model (an MLP), loss (label-smoothed cross-entropy,
by hand) and metric (macro F1). Three silos run it (by import path and by the entry-point name the
package registers); a fourth runs a wider model under the same task name and is refused at join.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.e2e

TASK = '''
    """Points in the plane, two classes: a task nothing like fedmq's built-in ones."""

    import csv

    import torch
    from torch import nn

    from fedmq import DataError, EvalResult, Task, TaskDefaults, TrainResult


    def read_points(path):
        """Our own data format: CSV rows x,y,label."""
        with open(path, newline="") as f:
            rows = [(float(x), float(y), int(label)) for x, y, label in csv.reader(f)]
        if not rows:
            raise DataError(f"{path} holds no points", hint="write x,y,label rows")
        xy = torch.tensor([r[:2] for r in rows], dtype=torch.float32)
        return xy, torch.tensor([r[2] for r in rows])


    def smoothed_cross_entropy(logits, target, smoothing):
        """Our own loss, written out: cross-entropy against label-smoothed targets."""
        log_p = torch.log_softmax(logits, dim=1)
        soft = torch.full_like(log_p, smoothing / (logits.shape[1] - 1))
        soft.scatter_(1, target[:, None], 1.0 - smoothing)
        return -(soft * log_p).sum(dim=1).mean()


    def macro_f1(pred, target, classes):
        """Our own metric."""
        scores = []
        for c in range(classes):
            tp = ((pred == c) & (target == c)).sum().item()
            fp = ((pred == c) & (target != c)).sum().item()
            fn = ((pred != c) & (target == c)).sum().item()
            scores.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0)
        return sum(scores) / classes


    class BlobsTask(Task):
        name = "blobs"
        defaults = TaskDefaults(model="mlp", metric="f1", batch_size=16, lr=0.1)
        width = 1

        def setup(self, ctx):
            self.train_xy, self.train_y = read_points(self.data / "train.csv")
            self.test_xy, self.test_y = read_points(self.data / "test.csv")
            self.shuffle = torch.Generator().manual_seed(ctx.seed)

        def build_model(self, ctx):
            torch.manual_seed(ctx.seed)
            hidden = ctx.option("hidden", 8) * self.width
            return nn.Sequential(nn.Linear(2, hidden), nn.ReLU(), nn.Linear(hidden, 2))

        def train_size(self):
            return len(self.train_y)

        def test_size(self):
            return len(self.test_y)

        def train(self, model, ctx):
            optimiser = torch.optim.SGD(model.parameters(), lr=ctx.lr, momentum=ctx.momentum)
            smoothing = ctx.option("smoothing", 0.1)
            model.train()
            total, steps = 0.0, 0
            for epoch in range(1, ctx.local_epochs + 1):
                order = torch.randperm(len(self.train_y), generator=self.shuffle)
                for step, start in enumerate(range(0, len(order), ctx.batch_size), start=1):
                    batch = order[start:start + ctx.batch_size]
                    loss = smoothed_cross_entropy(model(self.train_xy[batch]), self.train_y[batch], smoothing)
                    optimiser.zero_grad()
                    loss.backward()
                    optimiser.step()
                    total, steps = total + loss.item(), steps + 1
                    ctx.log_step(epoch, step, {"total_loss": loss.item()})
            return TrainResult(len(self.train_y), total / max(steps, 1))

        @torch.no_grad()
        def evaluate(self, model, ctx):
            model.eval()
            pred = model(self.test_xy).argmax(dim=1)
            ctx.eval_progress(len(pred))
            return EvalResult(len(pred), {"f1": macro_f1(pred, self.test_y, 2),
                                          "accuracy": (pred == self.test_y).float().mean().item()})


    class WideBlobs(BlobsTask):
        """The same task name with another model: its silo must be refused."""

        width = 2
'''


def build_wheel(package: Path, out: Path, version: str = "0.1") -> Path:
    """A wheel of ``package`` (a folder with __init__.py) that registers ``blobs`` in the ``fedmq.tasks``
    entry-point group: what a user's ``python -m build`` makes, written directly so the test needs no build
    backend (nor network) of the environment's."""
    name = package.name
    dist_info = f"{name}-{version}.dist-info"
    files = {f"{name}/{p.relative_to(package).as_posix()}": p.read_bytes() for p in sorted(package.rglob("*.py"))}
    files[f"{dist_info}/METADATA"] = f"Metadata-Version: 2.1\nName: {name.replace('_', '-')}\nVersion: {version}\n".encode()
    files[f"{dist_info}/WHEEL"] = b"Wheel-Version: 1.0\nGenerator: fedmq-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    files[f"{dist_info}/entry_points.txt"] = f"[fedmq.tasks]\nblobs = {name}:BlobsTask\n".encode()
    record = [f"{path},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},{len(data)}"
              for path, data in files.items()]
    files[f"{dist_info}/RECORD"] = ("\n".join([*record, f"{dist_info}/RECORD,,"]) + "\n").encode()
    wheel = out / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, data in files.items():
            archive.writestr(path, data)
    return wheel


def install_package(tmp_path: Path) -> Path:
    """Write the package, and pip-install it into a folder of its own: the returned folder goes on PYTHONPATH
    of the processes (the shared environment is not touched)."""
    package = tmp_path / "src" / "blobs_task"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(textwrap.dedent(TASK))
    wheel = build_wheel(package, tmp_path)
    target = tmp_path / "site"
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
                           "--target", str(target), str(wheel)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (target / "blobs_task" / "__init__.py").exists() and (target / "blobs_task-0.1.dist-info").is_dir()
    return target


def write_silo(folder: Path, seed: int, share_of_class_1: float, n: int = 160) -> None:
    """Two Gaussian blobs; each silo holds them in its own proportion (non-IID by label)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    for split, count in (("train", n), ("test", n // 4)):
        labels = (rng.random(count) < share_of_class_1).astype(int)
        centres = np.where(labels[:, None] == 1, [1.5, 1.5], [-1.5, -1.5])
        points = centres + rng.normal(scale=0.8, size=(count, 2))
        rows = [f"{x:.5f},{y:.5f},{label}" for (x, y), label in zip(points, labels)]
        (folder / f"{split}.csv").write_text("\n".join(rows) + "\n")


def test_a_package_of_its_own_runs_a_job_and_an_odd_model_is_refused(tmp_path: Path, mosquitto, fedmq) -> None:
    site = install_package(tmp_path)
    env = {"PYTHONPATH": os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH")) if p)}
    for i, share in enumerate((0.2, 0.5, 0.8, 0.5)):
        write_silo(tmp_path / "data" / str(i), seed=i, share_of_class_1=share)
    db = f"sqlite:///{tmp_path / 'fedmq.db'}"
    job = "blobs-e2e"
    common = ("--broker", mosquitto.address, "--job", job)
    procs = {"aggregator": fedmq.start("aggregator", *common, "--db", db, "--task", "blobs", "--metric", "f1",
                                       "--task-option", "hidden=8", "--task-option", "smoothing=0.05",
                                       "--rounds", "3", "--min-clients", "3", "--local-epochs", "2",
                                       "--round-timeout", "240", "--out", str(tmp_path / "out"),
                                       log=tmp_path / "aggregator.log", env=env)}
    tasks = {"a": "blobs_task:BlobsTask", "b": "blobs", "c": "blobs_task:BlobsTask", "odd": "blobs_task:WideBlobs"}
    for i, (silo, task) in enumerate(tasks.items()):
        procs[silo] = fedmq.start("client", *common, "--silo", silo, "--data", str(tmp_path / "data" / str(i)),
                                  "--task", task, "--device", "cpu", "--work-dir", str(tmp_path / f"work-{silo}"),
                                  log=tmp_path / f"{silo}.log", env=env)
    fedmq.wait_all(procs, tmp_path, timeout=480)

    shown = fedmq.run("history", "--db", db, "--job", job, "--json")
    assert shown.returncode == 0, shown.stderr
    rounds = json.loads(shown.stdout)
    assert [r["round"] for r in rounds] == [1, 2, 3]
    for r in rounds:
        assert r["status"] == "completed", r
        assert r["clients"] == ["a", "b", "c"], "the odd silo is never counted"
        assert set(r["evaluations"]) == {"a", "b", "c"}
        assert 0.0 <= r["metrics"]["f1"] <= 1.0
    assert rounds[-1]["metrics"]["f1"] > 0.9, "the blobs are well apart: the federated model learned them"

    aggregator_log = (tmp_path / "aggregator.log").read_text()
    refusal = [line for line in aggregator_log.splitlines() if "refused silo odd at join" in line]
    assert len(refusal) == 1, aggregator_log[-3000:]
    assert "tensor '0.weight' has shape [16, 2], the job's [8, 2]" in refusal[0]
    assert "metric f1" in aggregator_log and "batch size 16" in aggregator_log, "the task's defaults were used"

    from fedmq.store import Store
    from fedmq.store.models import Job, UpdateRecord
    from sqlalchemy import select

    store = Store(db, create=False)
    try:
        with store.session() as s:
            recorded = s.scalars(select(UpdateRecord).where(UpdateRecord.silo == "odd")).all()
            job_row = s.scalar(select(Job).where(Job.name == job))
            assert job_row.task == "blobs" and job_row.metric == "f1" and job_row.model == "mlp"
            assert job_row.task_options == {"hidden": 8, "smoothing": 0.05}
    finally:
        store.close()
    assert recorded and not any(r.accepted for r in recorded)
    assert "refused at join" in recorded[0].reason and "'0.weight'" in recorded[0].reason

    table = fedmq.run("history", "--db", db, "--job", job)
    assert table.returncode == 0 and "f1" in table.stdout.splitlines()[1], table.stdout
