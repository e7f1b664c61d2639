"""One silo's local round on K processes of its machine, with torch DistributedDataParallel.

``fedmq client --nproc-per-node K``: rank 0 is the silo process itself, the only one that talks to
the broker; it starts ranks 1..K-1 as workers (``python -m fedmq.edge_client.distributed``) that
join a process group over a local TCP port (gloo on CPU, NCCL when every rank has a GPU: rank r
uses cuda:(N+r) for ``--device cuda:N``). Like the distributed workers of a MindSpore Federated
cross-silo server, the workers are invisible to the federation: the aggregator sees one silo, one
update, the silo's whole sample count.

Each round:

* **command**: rank 0 writes the round and the job spec as one JSON line on every worker's stdin. End of file
  means rank 0 is gone or done: the worker leaves. A watchdog thread also ends a worker whose
  parent died, and a worker ignores Ctrl-C (rank 0 takes it and stops the workers itself).
* **weights**: rank 0 wraps the global model it loaded in DDP, and DDP's constructor broadcasts
  rank 0's parameters and buffers to every rank over the process group. No file in the work dir:
  nothing to clean up or race on, and NCCL moves GPU weights GPU to GPU.
* **data**: every rank reads the whole data folder and trains its DistributedSampler shard, reshuffled
  each epoch. The job's batch size stays the silo's batch: each rank takes ceil(B/K) of it, so a
  round takes the same steps, and DDP's averaged gradients the same meaning, as on one process.
* **result**: the trained weights are the same on every rank (DDP averages gradients), so rank 0's
  model is the update; the loss is the mean over ranks; num_samples is the whole training split.

Evaluation runs on rank 0 alone, on the plain model, with no collective.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data.distributed import DistributedSampler

from ..errors import ConfigError, FedmqError
from ..schemas import JobSpec
from .config import ClientConfig
from .context import call_task, make_context
from .task import Task, TaskContext, TrainResult, check_train_result
from .task_loader import open_task

log = logging.getLogger("fedmq.client.ddp")

HOST = "127.0.0.1"
# A collective waits this long for a rank: enough for a worker to index its data and build a large
# model at a run's first round, short enough that a stuck rank does not hold the silo for hours.
COLLECTIVE_TIMEOUT = timedelta(minutes=10)
STOP_WAIT_S = 10.0
WATCH_PARENT_S = 1.0


class LocalTrainer:
    """One process: the task's own training loop (``--nproc-per-node 1``)."""

    def __init__(self, task: Task) -> None:
        self.task = task

    def start(self) -> None:
        pass

    def train(self, model: nn.Module, spec: JobSpec, ctx: TaskContext) -> TrainResult:
        """The task's ``train``; whatever it raises or returns wrong is a ``TaskError``."""
        return check_train_result(self.task.name, call_task(self.task, "train", self.task.train, model, ctx))

    def close(self) -> None:
        pass


def make_trainer(task: Task, task_spec: str, config: ClientConfig, work_dir: Path,
                 device: torch.device) -> LocalTrainer | DistributedTrainer:
    """``task_spec`` names the task as the silo loaded it, so the workers load the same."""
    if config.nproc_per_node <= 1:
        return LocalTrainer(task)
    return DistributedTrainer(task, WorkerArgs(task_spec, config.data, config.silo, work_dir), config.nproc_per_node,
                              device)


@dataclasses.dataclass(frozen=True)
class WorkerArgs:
    """What a worker needs to open the silo's task as rank 0 did."""

    task: str
    data: Path
    silo: str
    work_dir: Path


class ShardSampler(DistributedSampler):
    """A DistributedSampler that moves to the next epoch each time it is iterated: a new shuffle per
    epoch, as ``DataLoader(shuffle=True)`` gives, without the training loop calling ``set_epoch``.
    Every rank iterates its own copy as often, so the ranks' shuffles stay the same permutation."""

    def __iter__(self) -> Iterator[int]:
        indices = super().__iter__()
        self.set_epoch(self.epoch + 1)
        return indices


class RankTrainer:
    """What every rank, rank 0 included, does in a round; their copies must stay in step."""

    def __init__(self, task: Task, rank: int, world: int, device: torch.device) -> None:
        self.task = task
        self.rank = rank
        self.world = world
        self.device = device
        self._sampler: tuple[str, ShardSampler] | None = None  # (run id, sampler): a new run starts afresh

    def train(self, model: nn.Module, spec: JobSpec, ctx: TaskContext) -> TrainResult:
        """Train ``model`` (rank 0's weights reach every rank as DDP wraps it) on this rank's shard."""
        ddp = DistributedDataParallel(model, device_ids=[self.device] if self.device.type == "cuda" else None)
        rank_ctx = dataclasses.replace(ctx, batch_size=rank_batch(ctx.batch_size, self.world), sampler=self._shard(spec))
        try:
            result = check_train_result(self.task.name, call_task(self.task, "train", self.task.train, ddp, rank_ctx))
        finally:
            del ddp  # its reducer's autograd hooks go with it: evaluation and the next round see a plain model
            gc.collect()
        return TrainResult(num_samples=result.num_samples, loss=self._mean_over_ranks(result.loss))

    def _shard(self, spec: JobSpec) -> ShardSampler:
        if self._sampler is None or self._sampler[0] != spec.run_id:
            # DistributedSampler needs only the data set's length
            sampler = ShardSampler(range(self.task.train_size()), num_replicas=self.world, rank=self.rank, shuffle=True,
                                   seed=spec.seed)
            self._sampler = (spec.run_id, sampler)
        return self._sampler[1]

    def _mean_over_ranks(self, loss: float | None) -> float | None:
        if loss is None:  # no epochs: None on every rank alike, so no collective
            return None
        total = torch.tensor([loss], dtype=torch.float64, device=self.device)
        dist.all_reduce(total)
        return total.item() / self.world


def rank_batch(batch_size: int, world: int) -> int:
    """The job's batch is the silo's batch: each of ``world`` ranks takes its share, rounded up."""
    return -(-batch_size // world)


def rank_device(base: torch.device, rank: int) -> torch.device:
    """CPU for every rank, or one GPU each: rank r on cuda:(N+r) for base cuda:N."""
    return base if base.type != "cuda" else torch.device("cuda", (base.index or 0) + rank)


def backend_for(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def check_devices(base: torch.device, nproc: int) -> None:
    if base.type not in ("cpu", "cuda"):
        raise ConfigError(f"--nproc-per-node {nproc} trains on the CPU or on GPUs, not on {base}",
                          hint="use --device cpu or cuda")
    if base.type == "cuda" and (base.index or 0) + nproc > torch.cuda.device_count():
        raise ConfigError(f"--nproc-per-node {nproc} from {base} needs {(base.index or 0) + nproc} GPUs; "
                          f"torch sees {torch.cuda.device_count()}",
                          hint="one process per GPU: lower --nproc-per-node, or use --device cpu")


class DistributedTrainer:
    """Rank 0's side: starts the workers, tells them each round's spec, trains its own shard."""

    def __init__(self, task: Task, worker_args: WorkerArgs, nproc: int, device: torch.device) -> None:
        check_devices(device, nproc)
        self.task = task
        self.worker_args = worker_args
        self.world = nproc
        self.device = rank_device(device, 0)
        self.rank = RankTrainer(task, 0, nproc, self.device)
        self.workers: list[subprocess.Popen] = []
        self._store: dist.TCPStore | None = None

    def start(self) -> None:
        """Start the workers now, so they import torch and index the data while the job gathers silos."""
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        env = {**os.environ, **_thread_env(self.device, self.world)}
        # Rank 0 hosts the rendezvous store from the start: its port is taken, not merely found free.
        self._store = dist.TCPStore(HOST, 0, self.world, is_master=True, wait_for_workers=False,
                                    timeout=COLLECTIVE_TIMEOUT)
        for rank in range(1, self.world):
            w = self.worker_args
            command = [sys.executable, "-m", f"{__package__}.distributed", "--rank", str(rank),
                       "--world", str(self.world), "--port", str(self._store.port), "--data", str(w.data),
                       "--task", w.task, "--silo", w.silo, "--work-dir", str(w.work_dir),
                       "--device", str(self.device), "--parent", str(os.getpid())]
            worker = subprocess.Popen(command, stdin=subprocess.PIPE, env=env, text=True)
            self.workers.append(worker)
            log.info("started training worker rank %d of %d (pid %d)", rank, self.world, worker.pid)

    def train(self, model: nn.Module, spec: JobSpec, ctx: TaskContext) -> TrainResult:
        self._check_workers()
        line = json.dumps({"round": ctx.round, "spec": spec.model_dump(mode="json")}) + "\n"
        for worker in self.workers:
            try:
                worker.stdin.write(line)
                worker.stdin.flush()
            except OSError:
                self._check_workers()
                raise
        try:
            self._join()
            return self.rank.train(model, spec, ctx)
        except RuntimeError as exc:  # a collective failed: say which worker died, when one did
            time.sleep(0.5)
            self._check_workers()
            raise FedmqError(f"distributed training failed: {exc}",
                             hint="see the workers' messages above in this log") from None

    def close(self) -> None:
        """Stop the workers (end of their stdin), kill any that do not leave, leave the group."""
        for worker in self.workers:
            try:
                worker.stdin.close()
            except OSError:
                pass
        deadline = time.monotonic() + STOP_WAIT_S
        for worker in self.workers:
            try:
                worker.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("training worker pid %d did not stop; killing it", worker.pid)
                worker.kill()
                worker.wait()
        self.workers = []
        if dist.is_initialized():
            dist.destroy_process_group()
        self._store = None

    def _join(self) -> None:
        if not dist.is_initialized():
            dist.init_process_group(backend_for(self.device), store=self._store, rank=0, world_size=self.world,
                                    timeout=COLLECTIVE_TIMEOUT)

    def _check_workers(self) -> None:
        for rank, worker in enumerate(self.workers, start=1):
            if worker.poll() is not None:
                raise FedmqError(f"training worker rank {rank} (pid {worker.pid}) exited with code {worker.returncode}",
                                 hint="its error is above in this log; restart the silo")


def _thread_env(device: torch.device, world: int) -> dict[str, str]:
    """On the CPU, share the cores among the ranks instead of each rank using them all."""
    if device.type != "cpu" or "OMP_NUM_THREADS" in os.environ:
        return {}
    threads = max(1, (os.cpu_count() or 1) // world)
    torch.set_num_threads(threads)
    return {"OMP_NUM_THREADS": str(threads)}


# -- a worker: ranks 1..K-1 ---------------------------------------------------------------------------
class Worker:
    """A worker's state: its task, and the model of the run it trains for."""

    def __init__(self, args: WorkerArgs, rank: int, world: int, device: torch.device) -> None:
        self.args = args
        self.task = open_task(args.data, args.task)
        self.rank = RankTrainer(self.task, rank, world, device)
        self.device = device
        self.run: tuple[str, nn.Module] | None = None

    def context(self, spec: JobSpec, round_number: int) -> TaskContext:
        return make_context(spec, silo=self.args.silo, data=self.args.data, work_dir=self.args.work_dir,
                            device=self.device, round_number=round_number)

    def model_for(self, spec: JobSpec) -> nn.Module:
        """The run's model, built as rank 0 built it; its weights come from rank 0 each round."""
        if self.run is None or self.run[0] != spec.run_id:
            ctx = self.context(spec, 0)
            call_task(self.task, "setup", self.task.setup, ctx)
            self.run = (spec.run_id, call_task(self.task, "build_model", self.task.build_model, ctx).to(self.device))
        return self.run[1]

    def serve(self, port: int) -> None:
        """Train a round per line on stdin; return at its end."""
        store: dist.TCPStore | None = None
        for line in iter(sys.stdin.readline, ""):
            command = json.loads(line)
            spec = JobSpec.model_validate(command["spec"])
            model = self.model_for(spec)
            if store is None:
                store = dist.TCPStore(HOST, port, self.rank.world, is_master=False, timeout=COLLECTIVE_TIMEOUT)
                dist.init_process_group(backend_for(self.device), store=store, rank=self.rank.rank,
                                        world_size=self.rank.world, timeout=COLLECTIVE_TIMEOUT)
            self.rank.train(model, spec, self.context(spec, command["round"]))  # rank 0 alone logs the steps
        if dist.is_initialized():
            dist.destroy_process_group()


def exit_with_parent(parent: int) -> None:
    """End this process soon after ``parent`` (rank 0) dies, whatever it is blocked on: no orphans."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(WATCH_PARENT_S)
        os._exit(1)

    threading.Thread(target=watch, name="watch-rank-0", daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A fedmq training worker; `fedmq client --nproc-per-node` starts it.")
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument("--world", type=int, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--task", required=True)
    parser.add_argument("--silo", required=True)
    parser.add_argument("--work-dir", type=Path, required=True)
    parser.add_argument("--device", required=True)
    parser.add_argument("--parent", type=int, required=True)
    args = parser.parse_args(argv)
    exit_with_parent(args.parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group; rank 0 stops us
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s %(levelname)-7s rank {args.rank}: %(message)s")
    device = rank_device(torch.device(args.device), args.rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    try:
        Worker(WorkerArgs(args.task, args.data, args.silo, args.work_dir), args.rank, args.world, device).serve(args.port)
    except FedmqError as exc:
        log.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
