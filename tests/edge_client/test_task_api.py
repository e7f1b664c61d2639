"""The Task API as a user meets it: loading a task by name or import path, and every error on the way."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from fedmq import EvalResult, Task, TaskContext, TrainResult
from fedmq.edge_client.classification import ClassificationTask
from fedmq.edge_client.context import call_task, make_context
from fedmq.edge_client.detection import DetectionTask
from fedmq.edge_client.distributed import LocalTrainer
from fedmq.edge_client.task import check_eval_result, check_train_result
from fedmq.edge_client.task_loader import load_task_class, open_task
from fedmq.errors import ConfigError, DataError, TaskError
from fedmq.schemas import JobSpec

GOOD = """
    import torch
    from torch import nn
    from fedmq import EvalResult, Task, TrainResult

    class Tiny(Task):
        name = "tiny"

        def build_model(self, ctx):
            torch.manual_seed(ctx.seed)
            return nn.Linear(2, ctx.option("outputs", 1))

        def train(self, model, ctx):
            if ctx.option("explode", False):
                raise ValueError("boom at round %d" % ctx.round)
            return TrainResult(10, 0.5)

        def evaluate(self, model, ctx):
            kind = ctx.option("metric_kind", "float")
            value = {"float": 0.75, "tensor": torch.tensor(0.75), "text": "good", "nan": float("nan")}[kind]
            return EvalResult(4, {"score": value})
"""


def write_module(folder: Path, name: str, source: str) -> Path:
    path = folder / f"{name}.py"
    path.write_text(textwrap.dedent(source))
    return path


def context(**options: object) -> TaskContext:
    spec = JobSpec(job="j", run_id="r", status="running", task="tiny", model="default", rounds=1, min_clients=1,
                   local_epochs=1, batch_size=2, lr=0.1, seed=3, codec="safetensors+zstd", chunk_size=1 << 20,
                   max_update_bytes=1 << 20, task_options=dict(options))
    return make_context(spec, silo="s", data=Path("."), work_dir=Path("."), device=torch.device("cpu"), round_number=2)


def test_the_public_names_import_from_the_top_package_without_torch() -> None:
    code = ("import sys, fedmq; from fedmq import Task, TaskContext, TrainResult, EvalResult, TaskDefaults, "
            "run_aggregator, run_silo; assert 'torch' not in sys.modules, 'torch was loaded'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_built_in_tasks_load_through_their_entry_points() -> None:
    assert load_task_class("classification") is ClassificationTask
    assert load_task_class("detection") is DetectionTask
    assert DetectionTask.defaults.batch_size == 4 and DetectionTask.defaults.metric == "map"
    assert ClassificationTask.defaults.metric == "accuracy"


def test_a_task_loads_from_a_file_path_and_runs(tmp_path: Path) -> None:
    path = write_module(tmp_path, "tiny_task", GOOD)
    task = open_task(tmp_path, f"{path}:Tiny")
    ctx = context(outputs=3)
    model = task.build_model(ctx)
    assert model.weight.shape == (3, 2), "the task option reached build_model"
    assert LocalTrainer(task).train(model, None, ctx) == TrainResult(10, 0.5)
    assert check_eval_result(task.name, task.evaluate(model, ctx)) == EvalResult(4, {"score": 0.75})


def test_a_module_that_is_not_installed_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_task_class("no_such_pkg.tasks:Segmentation")
    assert "no module named 'no_such_pkg'" in caught.value.message and "pip install" in caught.value.hint


def test_a_module_that_fails_to_import_says_why(tmp_path: Path) -> None:
    path = write_module(tmp_path, "broken", "import math\nraise RuntimeError('bad config')\n")
    with pytest.raises(ConfigError) as caught:
        load_task_class(f"{path}:Task")
    assert "RuntimeError: bad config" in caught.value.message and caught.value.hint


def test_an_unknown_registered_name_suggests_the_close_one() -> None:
    with pytest.raises(ConfigError) as caught:
        load_task_class("clasification")
    assert "unknown task 'clasification'" in caught.value.message and "'classification'" in caught.value.hint


def test_a_name_that_is_not_a_task_is_refused(tmp_path: Path) -> None:
    path = write_module(tmp_path, "helpers", "def segment(x):\n    return x\n")
    with pytest.raises(TaskError) as caught:
        load_task_class(f"{path}:segment")
    assert "is a function, not a task class" in caught.value.message and "fedmq.Task" in caught.value.hint
    with pytest.raises(ConfigError) as caught:
        load_task_class(f"{path}:Segment")
    assert "has no 'Segment'" in caught.value.message and "'segment'" in caught.value.hint


def test_a_task_missing_a_method_is_refused_before_it_runs(tmp_path: Path) -> None:
    path = write_module(tmp_path, "half", """
        from fedmq import Task

        class Half(Task):
            name = "half"

            def build_model(self, ctx):
                return None
    """)
    with pytest.raises(TaskError) as caught:
        load_task_class(f"{path}:Half")
    assert "does not implement train(self, model, ctx), evaluate(self, model, ctx)" in caught.value.message


def test_a_task_without_a_name_is_refused(tmp_path: Path) -> None:
    path = write_module(tmp_path, "nameless", GOOD.replace('name = "tiny"', 'name = "no spaces allowed"'))
    with pytest.raises(TaskError, match="has no valid name"):
        load_task_class(f"{path}:Tiny")


def test_a_task_that_raises_in_train_is_one_line_naming_the_task_and_phase(tmp_path: Path) -> None:
    task = open_task(tmp_path, f"{write_module(tmp_path, 'tiny_task', GOOD)}:Tiny")
    ctx = context(explode=True)
    with pytest.raises(TaskError) as caught:
        LocalTrainer(task).train(task.build_model(ctx), None, ctx)
    assert caught.value.message == "task tiny raised ValueError in train: boom at round 2"


def test_a_task_error_of_fedmq_keeps_its_words_and_hint(tmp_path: Path) -> None:
    task = open_task(tmp_path, f"{write_module(tmp_path, 'tiny_task', GOOD)}:Tiny")

    def fails() -> None:
        raise DataError("no images", hint="add some")

    with pytest.raises(TaskError) as caught:
        call_task(task, "setup", fails)
    assert caught.value.message == "task tiny setup: no images" and caught.value.hint == "add some"


@pytest.mark.parametrize(("kind", "words"), [("tensor", "'score' = tensor(0.7500), which is not a number"),
                                             ("text", "'score' = 'good', which is not a number"),
                                             ("nan", "'score' = nan, which is not finite")])
def test_evaluate_returning_non_numbers_is_the_tasks_error(tmp_path: Path, kind: str, words: str) -> None:
    task = open_task(tmp_path, f"{write_module(tmp_path, 'tiny_task', GOOD)}:Tiny")
    ctx = context(metric_kind=kind)
    with pytest.raises(TaskError) as caught:
        check_eval_result(task.name, task.evaluate(task.build_model(ctx), ctx))
    assert words in caught.value.message and caught.value.hint


def test_what_train_and_evaluate_may_return() -> None:
    assert check_eval_result("t", (3, {"a": 1})) == EvalResult(3, {"a": 1.0})
    with pytest.raises(TaskError, match="not \\(num_samples, dict of metrics\\)"):
        check_eval_result("t", {"accuracy": 0.9})
    with pytest.raises(TaskError, match="num_samples=-1"):
        check_eval_result("t", (-1, {}))
    assert check_train_result("t", (5, torch.tensor(0.25).item())) == TrainResult(5, 0.25)
    with pytest.raises(TaskError, match="num_samples=0"):
        check_train_result("t", TrainResult(0))
    with pytest.raises(TaskError, match="not a TrainResult"):
        check_train_result("t", 0.3)


def test_task_options_convert_to_the_type_asked_for() -> None:
    ctx = context(depth="3", ratio=1, flag="true", name="unet")
    assert ctx.option("depth", 1) == 3 and ctx.option("ratio", 0.5) == 1.0 and ctx.option("flag", False) is True
    assert ctx.option("name", "x") == "unet" and ctx.option("missing", 7) == 7
    with pytest.raises(ConfigError, match="task option name='unet' is not a int"):
        ctx.option("name", 1)


def test_an_abstract_task_cannot_be_mistaken_for_a_complete_one() -> None:
    class Incomplete(Task):
        name = "incomplete"

    with pytest.raises(TaskError, match="does not implement build_model"):
        from fedmq.edge_client.task_loader import check_task_class

        check_task_class(Incomplete, "Incomplete")
