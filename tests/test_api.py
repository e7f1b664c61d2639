"""The Python API (``fedmq.run_aggregator``, ``fedmq.run_silo``): the CLI's options, checked the same way."""

from __future__ import annotations

from pathlib import Path

import pytest
from fedmq.api import aggregator_config, silo_config
from fedmq.errors import ConfigError


def test_aggregator_options_become_its_config_and_leave_task_defaults_open(tmp_path: Path) -> None:
    config = aggregator_config(broker="mqtt://127.0.0.1:1999", task="segmentation", rounds=4, min_clients=2,
                               task_options={"depth": 3}, metric="dice", strategy="fedprox", mu=0.1, clip_norm=5.0,
                               out=str(tmp_path))
    assert (config.task, config.rounds, config.min_clients, config.metric) == ("segmentation", 4, 2, "dice")
    assert config.task_options == {"depth": 3} and config.out == tmp_path
    assert config.strategy.name == "fedprox" and config.strategy.clip_norm == 5.0 and config.mu == 0.1
    assert config.batch_size is None and config.lr is None and config.model is None, "the task's defaults, later"
    assert aggregator_config(task="detection", batch_size=32).batch_size == 32, "explicit, never a sentinel"
    assert config.max_samples_per_silo is None, "no cap unless asked"
    assert aggregator_config(max_samples_per_silo=500).max_samples_per_silo == 500


@pytest.mark.parametrize(("options", "words"), [
    ({"rounds": 3, "min_client": 2}, "unknown aggregator option 'min_client'"),
    ({"task": "my_pkg.tasks:Segmentation"}, "is not a task name"),
    ({"task": "classification", "model": "unet"}, "unknown model 'unet' for task 'classification'"),
    ({"task_options": {"bad key": 1}}, "task option name 'bad key' is not allowed"),
    ({"metric": ""}, "is not a metric name"),
    ({"max_samples_per_silo": 0}, "--max-samples-per-silo 0 is not a positive whole number"),
    ({"max_samples_per_silo": -5}, "--max-samples-per-silo -5 is not a positive whole number"),
    ({"max_samples_per_silo": 2.5}, "--max-samples-per-silo 2.5 is not a positive whole number"),
    ({"max_samples_per_silo": True}, "--max-samples-per-silo True is not a positive whole number"),
])
def test_bad_aggregator_options_are_one_clear_error(options: dict, words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        aggregator_config(**options)
    assert words in caught.value.message and caught.value.hint


def test_silo_options_become_its_config(tmp_path: Path) -> None:
    config = silo_config(silo="hospital-a", data=str(tmp_path), task="my_pkg.tasks:Segmentation", work_dir=str(tmp_path))
    assert config.silo == "hospital-a" and config.data == tmp_path and config.task == "my_pkg.tasks:Segmentation"
    with pytest.raises(ConfigError, match="unknown silo option 'gpu'"):
        silo_config(silo="a", data=".", gpu=True)
