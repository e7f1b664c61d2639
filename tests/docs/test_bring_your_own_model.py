"""docs/bring-your-own-model.md: its five-minute example's files, taken from the page itself, work as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import torch
from fedmq.edge_client.context import make_context
from fedmq.edge_client.task import check_eval_result, check_train_result
from fedmq.edge_client.task_loader import open_task
from fedmq.schemas import JobSpec

PAGE = Path(__file__).parents[2] / "docs" / "bring-your-own-model.md"
HEREDOC = re.compile(r"cat > (\S+) <<'EOF'\n(.*?)\nEOF\n", re.DOTALL)


def test_the_pages_example_task_trains_and_reports_its_metric(tmp_path: Path) -> None:
    files = dict(HEREDOC.findall(PAGE.read_text()))
    assert set(files) == {"make_data.py", "points_task.py"}
    for name, text in files.items():
        (tmp_path / name).write_text(text + "\n")
    made = subprocess.run([sys.executable, "make_data.py"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stderr
    task = open_task(tmp_path / "data" / "0", f"{tmp_path / 'points_task.py'}:Points")
    assert task.name == "points" and task.defaults.metric == "f1"
    spec = JobSpec(job="j", run_id="r", status="running", task="points", model="mlp", rounds=1, min_clients=1,
                   local_epochs=3, batch_size=16, lr=0.1, seed=0, codec="safetensors+zstd", chunk_size=1 << 20,
                   max_update_bytes=1 << 20)
    ctx = make_context(spec, silo="s", data=task.data, work_dir=tmp_path, device=torch.device("cpu"), round_number=1)
    task.setup(ctx)
    model = task.build_model(ctx)
    before = check_eval_result(task.name, task.evaluate(model, ctx))
    trained = check_train_result(task.name, task.train(model, ctx))
    after = check_eval_result(task.name, task.evaluate(model, ctx))
    assert trained.num_samples == 400 and after.num_samples == 100
    assert after.metrics["accuracy"] > 0.85 and after.metrics["accuracy"] > before.metrics["accuracy"], (before, after)
