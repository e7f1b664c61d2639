"""A silo whose task fails in train or evaluate: the aggregator records the failure as a rejection with
its reason and the job goes on with the other silos (real Mosquitto, real store, silos in threads)."""

from __future__ import annotations

import textwrap
from pathlib import Path

from fedmq.aggregator.config import AggregatorConfig
from fedmq.aggregator.federation import Federation
from fedmq.edge_client.silo import ClientConfig, SiloClient
from fedmq.store import Store

TASK = """
    import torch
    from torch import nn
    from fedmq import EvalResult, Task, TrainResult

    class Line(Task):
        '''Fits y = 2x on points derived from the silo folder's name; fails where the folder says so.'''

        name = "line"

        def setup(self, ctx):
            g = torch.Generator().manual_seed(len(self.data.name))
            self.x = torch.rand(64, 1, generator=g)
            self.y = 2 * self.x
            self.fail = (self.data / "fail").read_text().split() if (self.data / "fail").exists() else []

        def build_model(self, ctx):
            torch.manual_seed(ctx.seed)
            return nn.Linear(1, 1)

        def train(self, model, ctx):
            if f"train{ctx.round}" in self.fail:
                raise RuntimeError(f"out of memory in round {ctx.round}")
            opt = torch.optim.SGD(model.parameters(), lr=ctx.lr)
            for step in range(1, 21):
                loss = ((model(self.x) - self.y) ** 2).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
                ctx.log_step(1, step, {"total_loss": loss.item()})
            return TrainResult(64, loss.item())

        @torch.no_grad()
        def evaluate(self, model, ctx):
            if f"evaluate{ctx.round}" in self.fail:
                return EvalResult(8, {"mse": "not a number"})
            return EvalResult(64, {"mse": ((model(self.x) - self.y) ** 2).mean().item()})
"""


def test_a_failing_task_is_a_recorded_rejection_and_the_job_goes_on(mosquitto, tmp_path: Path, run_job) -> None:
    plugin = tmp_path / "line_task.py"
    plugin.write_text(textwrap.dedent(TASK))
    folders = []
    for name, fail in (("alpha", ""), ("beta", ""), ("gamma", "train2 evaluate1")):
        folder = tmp_path / name
        folder.mkdir()
        if fail:
            (folder / "fail").write_text(fail)
        folders.append(folder)
    job = "task-failures"
    store = Store(f"sqlite:///{tmp_path / 'f.db'}")
    config = AggregatorConfig(broker=mosquitto.url, job=job, db=store.url, rounds=3, min_clients=2, task="line",
                              metric="mse", lr=0.3, out=tmp_path / "out", round_timeout=120)
    silos = [SiloClient(ClientConfig(broker=mosquitto.url, silo=f.name, data=f, job=job, task=f"{plugin}:Line",
                                     work_dir=tmp_path / f"w-{f.name}", device="cpu")) for f in folders]
    try:
        assert run_job(Federation(config, store), silos) == 0
        rounds = store.history(job)
        detail = {n: store.round_detail(job, n) for n in (1, 2, 3)}
    finally:
        store.close()
    assert [r["status"] for r in rounds] == ["completed"] * 3
    assert rounds[0]["clients"] == ["alpha", "beta", "gamma"]
    assert rounds[1]["clients"] == ["alpha", "beta"], "gamma's training failed in round 2: not counted"
    assert rounds[2]["clients"] == ["alpha", "beta", "gamma"], "and it is back in round 3"
    train_failure = [u for u in detail[2]["updates"] if u["silo"] == "gamma"]
    assert len(train_failure) == 1 and not train_failure[0]["accepted"]
    assert train_failure[0]["reason"] == ("task failed in train: task line raised RuntimeError in train: "
                                          "out of memory in round 2")
    eval_failure = [u for u in detail[1]["updates"] if u["silo"] == "gamma" and not u["accepted"]]
    assert len(eval_failure) == 1 and "metric 'mse' = 'not a number', which is not a number" in eval_failure[0]["reason"]
    assert set(detail[1]["evaluations"]) == {"alpha", "beta"}, "the bad evaluation is not averaged in"
    assert rounds[2]["metrics"]["mse"] < 0.01, "the model learned y = 2x (an untrained one is far off)"
