"""The options a job is not given take its task's defaults, which its silos announce; given ones are kept."""

from __future__ import annotations

from pathlib import Path

from fedmq.aggregator.config import AggregatorConfig
from fedmq.aggregator.federation import Federation
from fedmq.aggregator.silos import SiloState
from fedmq.broker.url import BrokerUrl
from fedmq.schemas.catalog import BUILTIN_DEFAULTS
from fedmq.schemas.messages import TaskDefaults
from fedmq.store import Store

DETECTION = TaskDefaults(**BUILTIN_DEFAULTS["detection"])


def federation(tmp_path: Path, **options: object) -> Federation:
    config = AggregatorConfig(broker=BrokerUrl("127.0.0.1", 1), db=f"sqlite:///{tmp_path / 'f.db'}", task="detection",
                              out=tmp_path, **options)
    fed = Federation(config, Store(config.db))
    fed.spec = fed._new_spec()
    fed.registry.silos = {"a": SiloState(True, "detection", ["cat"], DETECTION),
                          "b": SiloState(True, "detection", ["dog"], DETECTION)}
    return fed


def test_unset_options_take_the_tasks_defaults(tmp_path: Path) -> None:
    fed = federation(tmp_path)
    assert fed._task_defaults({"a", "b"}) == {"model": "fasterrcnn_mobilenet_v3_large_320_fpn", "metric": "map",
                                              "batch_size": 4, "lr": 0.01}
    fed.store.close()


def test_an_explicit_batch_size_of_32_is_honoured_for_detection(tmp_path: Path) -> None:
    fed = federation(tmp_path, batch_size=32, metric="map50")
    assert fed._task_defaults({"a", "b"})["batch_size"] == 32
    assert fed._task_defaults({"a", "b"})["metric"] == "map50"
    fed.store.close()
