"""The Python API: run an aggregator or a silo from a script or a notebook, with the CLI's options.

``fedmq aggregator`` and ``fedmq client`` are thin layers over these two functions; their keyword
arguments are the CLI's options with ``_`` for ``-`` (``min_clients=3`` is ``--min-clients 3``)::

    import fedmq
    fedmq.run_aggregator(broker="mqtt://127.0.0.1:1883", rounds=5, min_clients=3, task="segmentation",
                         metric="dice", task_options={"depth": 3})
    fedmq.run_silo(broker="mqtt://127.0.0.1:1883", silo="hospital-a", data="./a",
                   task="my_pkg.tasks:Segmentation")

Each call blocks until the job ends and returns the process exit code (0: the job finished). A
problem with the options, the data or the task raises a ``fedmq.FedmqError`` (``message`` and
``hint``); run an aggregator and silos in one notebook in threads or processes of their own. To
stop one early, pass ``stop=fedmq.StopFlag()`` and set it (from another thread, or from
SIGTERM/SIGINT with ``StopFlag().install()``, as the CLI does): it finishes its step, records what
it must and returns 130.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .stopping import StopFlag

DEFAULT_BROKER = "mqtt://127.0.0.1:1883"
TASK_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")


def aggregator_config(*, broker: str = DEFAULT_BROKER, ca_file: Path | str | None = None,
                      task_options: Mapping[str, Any] | None = None, strategy: str = "fedavg", **options: Any) -> Any:
    """The ``AggregatorConfig`` that ``run_aggregator`` runs with the same arguments (checked, nothing started)."""
    from .aggregator.config import AggregatorConfig
    from .aggregator.strategies import StrategyOptions
    from .broker.url import parse_broker_url
    from .schemas.catalog import check_model
    from .schemas.task_options import check_task_options

    config_fields = {f.name for f in dataclasses.fields(AggregatorConfig)} - {"broker", "strategy", "task_options"}
    strategy_fields = {f.name for f in dataclasses.fields(StrategyOptions)} - {"name", "seed"}
    unknown = sorted(set(options) - config_fields - strategy_fields)
    if unknown:
        raise ConfigError(f"unknown aggregator option {unknown[0]!r}",
                          hint=f"options: {', '.join(sorted(config_fields | strategy_fields | {'broker', 'strategy'}))}")
    strategy_options = StrategyOptions(name=strategy, **{k: options.pop(k) for k in list(options) if k in strategy_fields})
    for key in ("out", "init_weights", "keys_dir"):
        if isinstance(options.get(key), str):
            options[key] = Path(options[key])
    task = check_task_name(options.get("task", "classification"))
    if options.get("model") is not None:
        check_model(task, options["model"])
    cap = options.get("max_samples_per_silo")
    if cap is not None and (not isinstance(cap, int) or isinstance(cap, bool) or cap < 1):
        raise ConfigError(f"--max-samples-per-silo {cap!r} is not a positive whole number",
                          hint="pass the most samples one silo's update may weigh, 1 or more; leave it out for no cap")
    for key in ("max_concurrent_uploads", "memory_budget"):
        value = options.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            flag = "--" + key.replace("_", "-")
            raise ConfigError(f"{flag} {value!r} is not a positive whole number",
                              hint="pass a count of uploads" if key == "max_concurrent_uploads" else
                              "pass a number of bytes (the command line also takes 4GiB, 512MiB...)")
    metric = options.get("metric")
    if metric is not None and not (isinstance(metric, str) and 1 <= len(metric) <= 64):
        raise ConfigError(f"--metric {metric!r} is not a metric name", hint="name one of the task's metrics (1 to 64 characters)")
    return AggregatorConfig(broker=parse_broker_url(broker, ca_file), strategy=strategy_options,
                            task_options=check_task_options(dict(task_options or {})), **options)


def check_task_name(value: str) -> str:
    """The aggregator's ``--task``: a task's name (the silos load its code), never an import path."""
    if not isinstance(value, str) or not TASK_NAME.match(value):
        hint = ("the aggregator takes the task's name (its class's `name`); the silos take the import path"
                if ":" in str(value) else "letters, digits, '.', '_' and '-', up to 64 characters")
        raise ConfigError(f"--task {value!r} is not a task name", hint=hint)
    return value


def run_aggregator(*, stop: StopFlag | None = None, **options: Any) -> int:
    """Publish a job, wait for ``min_clients`` silos, run the rounds; return the exit code.

    Options (all keyword, as ``fedmq aggregator --help`` lists them): ``broker``, ``ca_file``, ``job``,
    ``db``, ``rounds``, ``min_clients``, ``task`` (a task plug-in's name), ``task_options`` (a dict),
    ``metric``, ``model``, ``local_epochs``, ``batch_size``, ``lr``, ``momentum``, ``seed``,
    ``init_weights``, ``num_classes``, ``out``, ``round_timeout``, ``mode``, ``strategy``, ``mu``... .
    ``model``, ``metric``, ``batch_size`` and ``lr`` left out (None) take the task's defaults,
    which its silos announce. ``stop``: set it to end the run early (exit code 130, the job marked
    interrupted; the same call resumes it).
    """
    config = aggregator_config(**options)  # checked before the aggregator's modules (torch) load
    from .aggregator.federation import run_aggregator as run

    return run(config, stop=stop)


def silo_config(*, silo: str, data: Path | str, broker: str = DEFAULT_BROKER, ca_file: Path | str | None = None,
                **options: Any) -> Any:
    """The ``ClientConfig`` that ``run_silo`` runs with the same arguments (checked, nothing started)."""
    from .broker.url import parse_broker_url
    from .edge_client.config import ClientConfig, check_data_folder
    from .schemas import check_name

    known = {f.name for f in dataclasses.fields(ClientConfig)} - {"broker", "silo", "data"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(f"unknown silo option {unknown[0]!r}",
                          hint=f"options: {', '.join(sorted(known | {'broker', 'ca_file', 'silo', 'data'}))}")
    for key in ("work_dir", "signing_key"):
        if isinstance(options.get(key), str):
            options[key] = Path(options[key])
    if options.get("job") is not None:
        check_name("job", options["job"])
    check_data_folder(Path(data))
    return ClientConfig(broker=parse_broker_url(broker, ca_file), silo=check_name("silo", silo), data=Path(data),
                        **options)


def run_silo(*, stop: StopFlag | None = None, **options: Any) -> int:
    """Run a silo until its job ends; return the exit code.

    Options (keyword, as ``fedmq client --help`` lists them): ``silo``, ``data``, ``task`` (a registered
    name, ``module:Class`` or ``path/to/file.py:Class``; default: chosen from the data folder), ``broker``,
    ``ca_file``, ``job``, ``work_dir``, ``device``, ``signing_key``, ``nproc_per_node``, ``connect_timeout``.
    ``stop``: set it to leave early (exit code 130, at the next batch boundary; the same call rejoins).
    """
    config = silo_config(**options)  # checked before the silo's modules (torch) load: bad input is told at once
    from .edge_client.silo import SiloClient

    return SiloClient(config, stop=stop).run()
