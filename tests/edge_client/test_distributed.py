"""`fedmq client --nproc-per-node K`: a silo's round trained by DistributedDataParallel over K local processes.

The federation must not be able to tell: same sample counts in the history as a one-process silo, one
update per silo. And the workers must never outlive the silo, whether it ends well or is killed.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from fedmq.edge_client.context import make_context
from fedmq.edge_client.data.coco import synth_detection
from fedmq.edge_client.detection import DetectionTask
from fedmq.edge_client.distributed import DistributedTrainer, ShardSampler, WorkerArgs, rank_batch
from fedmq.schemas import JobSpec

WORKER_PID = re.compile(r"started training worker rank \d+ of \d+ \(pid (\d+)\)")
SILOS = 2
ROUNDS = 2
# Enough training to learn in 2 rounds: 160 training images a silo in batches of 8 (4 a rank on two
# processes), 2 local epochs; plain SGD (momentum 0.9, or lr 0.1, makes such short runs swing).
LEARNS = ("--lr", "0.05", "--batch-size", "8", "--local-epochs", "2", "--momentum", "0")


def _spec(**changes) -> JobSpec:
    base = dict(job="j", run_id="r", status="running", task="classification", model="cnn", labels=["a"], rounds=1,
                min_clients=1, local_epochs=1, batch_size=32, lr=0.05, seed=0, codec="safetensors+zstd",
                chunk_size=4096, max_update_bytes=1 << 20)
    return JobSpec(**{**base, **changes})


def _alive(pid: int) -> bool:
    """Running, not merely a zombie waiting for its parent to reap it."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def _worker_pids(log: Path) -> list[int]:
    return [int(pid) for pid in WORKER_PID.findall(log.read_text())]


def _wait_for_worker_pids(log: Path, proc: subprocess.Popen, count: int, timeout: float) -> list[int]:
    """The pids of the silo's ``count`` workers, once it logged starting each."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if len(pids := _worker_pids(log)) >= count:
            return pids
        time.sleep(0.1)
    pytest.fail(f"the silo did not start {count} worker(s):\n" + log.read_text()[-3000:])


def _serving(pid: int) -> bool:
    """Blocked reading its stdin, where rank 0 writes each round: a worker past its start."""
    try:
        return "pipe_read" in Path(f"/proc/{pid}/wchan").read_text()
    except OSError:
        return False


def _wait_gone(pids: list[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while (alive := [p for p in pids if _alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    return alive


# -- units ----------------------------------------------------------------------------------------------
def test_each_rank_takes_its_share_of_the_jobs_batch() -> None:
    assert rank_batch(32, 2) == 16
    assert rank_batch(32, 3) == 11, "rounded up: never a smaller global batch"
    assert rank_batch(1, 4) == 1


def test_shards_cover_the_data_and_reshuffle_every_epoch() -> None:
    data = list(range(10))
    samplers = [ShardSampler(data, num_replicas=2, rank=r, shuffle=True, seed=3) for r in range(2)]
    first = [list(s) for s in samplers]
    second = [list(s) for s in samplers]
    assert sorted(first[0] + first[1]) == data and sorted(second[0] + second[1]) == data
    assert first != second, "a new epoch, a new shuffle"


def test_a_worker_leaves_when_its_parent_is_gone_even_with_stdin_open(tmp_path: Path) -> None:
    """The watchdog: a worker told that its rank 0 is a process other than its parent leaves at once."""
    worker = subprocess.Popen([sys.executable, "-m", "fedmq.edge_client.distributed", "--rank", "1", "--world", "2",
                               "--port", "1", "--data", str(tmp_path), "--task", "classification", "--silo", "s",
                               "--work-dir", str(tmp_path), "--device", "cpu", "--parent", "1"],
                              stdin=subprocess.PIPE)
    try:
        assert worker.wait(timeout=30) == 1
    finally:
        worker.kill()
        worker.stdin.close()


def test_detection_trains_on_two_processes(tmp_path: Path) -> None:
    """Detection batches are lists of images: DDP takes them as they are."""
    [data] = synth_detection(tmp_path / "D", silos=1, images_per_silo=8, image_size=64)
    task = DetectionTask(data)
    spec = _spec(task="detection", model="fasterrcnn_mobilenet_v3_large_320_fpn", labels=task.labels, batch_size=4,
                 lr=0.01)
    steps: list[int] = []
    ctx = make_context(spec, silo="s", data=data, work_dir=tmp_path, device=torch.device("cpu"), round_number=1,
                       log_step=lambda epoch, step, losses: steps.append(step))
    task.setup(ctx)
    model = task.build_model(ctx)
    trainer = DistributedTrainer(task, WorkerArgs("detection", data, "s", tmp_path), 2, torch.device("cpu"))
    trainer.start()
    try:
        result = trainer.train(model, spec, ctx)
        pids = [w.pid for w in trainer.workers]
    finally:
        trainer.close()
    assert result.num_samples == len(task.train_set), "the silo's whole training split, not rank 0's shard"
    assert result.loss is not None and result.loss > 0
    assert steps == [1, 2], "3 images a rank, 2 a batch: the 2 steps of one process with a batch of 4"
    assert not _wait_gone(pids, timeout=5)


# -- real processes ---------------------------------------------------------------------------------------
def _start_job(fedmq, url: str, tmp: Path, job: str, data: Path, nproc: dict[str, int]) -> dict[str, subprocess.Popen]:
    db = f"sqlite:///{tmp / f'{job}.db'}"
    procs = {"aggregator": fedmq.start("aggregator", "--broker", url, "--job", job, "--db", db, "--rounds", str(ROUNDS),
                                       "--min-clients", str(SILOS), *LEARNS, "--out", str(tmp / f"out-{job}"),
                                       log=tmp / f"{job}-aggregator.log")}
    for i in range(SILOS):
        silo = f"s{i}"
        procs[silo] = fedmq.start("client", "--broker", url, "--job", job, "--silo", silo, "--data", str(data / str(i)),
                                  "--work-dir", str(tmp / f"work-{job}-{silo}"), "--device", "cpu",
                                  "--nproc-per-node", str(nproc.get(silo, 1)), log=tmp / f"{job}-{silo}.log")
    return procs


def _finish(procs: dict[str, subprocess.Popen], tmp: Path, job: str, deadline: float) -> None:
    for name, proc in procs.items():
        log = tmp / f"{job}-{name}.log"
        try:
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            pytest.fail(f"{job} {name} did not finish in time:\n" + log.read_text()[-3000:])
        assert proc.returncode == 0, f"{job} {name} exited {proc.returncode}:\n" + log.read_text()[-3000:]


def _history(fedmq, tmp: Path, job: str) -> list[dict]:
    shown = fedmq.run("history", "--db", f"sqlite:///{tmp / f'{job}.db'}", "--job", job, "--json")
    assert shown.returncode == 0, shown.stderr
    return json.loads(shown.stdout)


@pytest.mark.e2e
@pytest.mark.timeout(300)
def test_a_silo_on_two_processes_counts_as_one(fedmq, mosquitto, tmp_path: Path) -> None:
    """The same federation twice at once, on the same data: every silo on one process, and s0 on two."""
    data = tmp_path / "D"
    made = fedmq.run("data", "synth", "--task", "classification", "--silos", str(SILOS), "--out", str(data))
    assert made.returncode == 0, made.stderr
    jobs = {"ddp-one": {}, "ddp-two": {"s0": 2}}
    running = {job: _start_job(fedmq, mosquitto.address, tmp_path, job, data, nproc) for job, nproc in jobs.items()}
    deadline = time.monotonic() + 180
    try:
        workers = _wait_for_worker_pids(tmp_path / "ddp-two-s0.log", running["ddp-two"]["s0"], 1, timeout=60)
        for job, procs in running.items():
            _finish(procs, tmp_path, job, deadline)
    finally:
        for procs in running.values():
            for proc in procs.values():
                proc.kill()

    assert len(workers) == 1
    assert not _wait_gone(workers, timeout=5), "the worker outlived its silo"
    single, distributed = _history(fedmq, tmp_path, "ddp-one"), _history(fedmq, tmp_path, "ddp-two")
    assert [r["round"] for r in distributed] == list(range(1, ROUNDS + 1))
    assert [r["num_samples"] for r in distributed] == [r["num_samples"] for r in single] == [SILOS * 160] * ROUNDS
    for r in distributed:
        assert r["status"] == "completed" and r["clients"] == ["s0", "s1"] and r["rejected"] == 0
    # Both learned: 4 classes (chance 0.25); on this fixed-seed data round 2 is at about 0.9-1.0. A model
    # that aggregation left as it was stays near chance, its loss where it was.
    for rounds in (single, distributed):
        first, last = rounds[0]["metrics"], rounds[-1]["metrics"]
        assert last["accuracy"] >= 0.6 and last["loss"] < first["loss"], [r["metrics"] for r in rounds]
    assert "Traceback" not in (tmp_path / "ddp-two-s0.log").read_text(), "a worker failed or did not leave cleanly"
    loss_log = (tmp_path / "work-ddp-two-s0" / "loss.log").read_text().splitlines()
    assert loss_log[0].startswith("round: 1 epoch: 1 step: 1 total_loss:")
    assert len(loss_log) == len((tmp_path / "work-ddp-one-s0" / "loss.log").read_text().splitlines()), \
        "a rank's share of the batch keeps the steps of a round"


@pytest.mark.e2e
def test_workers_leave_with_a_killed_silo(fedmq, mosquitto, tmp_path: Path) -> None:
    """SIGKILL gives rank 0 no chance to stop its workers: they must notice by themselves."""
    data = tmp_path / "D"
    made = fedmq.run("data", "synth", "--task", "classification", "--silos", "1", "--out", str(data))
    assert made.returncode == 0, made.stderr
    log = tmp_path / "silo.log"
    silo = fedmq.start("client", "--broker", mosquitto.address, "--job", "ddp-killed", "--silo", "s0",
                       "--data", str(data / "0"), "--work-dir", str(tmp_path / "work"), "--device", "cpu",
                       "--nproc-per-node", "3", log=log)
    try:
        workers = _wait_for_worker_pids(log, silo, 2, timeout=60)
        deadline = time.monotonic() + 60
        while not all(_serving(pid) for pid in workers):  # past their start: importing torch, reading the data
            assert all(_alive(pid) for pid in workers) and silo.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "the workers did not start serving:\n" + log.read_text()[-3000:]
            time.sleep(0.1)
    finally:
        silo.kill()
        silo.wait(timeout=10)
    assert len(workers) == 2
    assert not _wait_gone(workers, timeout=10), "workers outlived a killed silo"
