"""Strategies register themselves: names from the installed metadata, each built from the module that
implements it, and the factory imports none of them. A package of another name adds one the same way."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

from fedmq.aggregator.strategies import StrategyOptions
from fedmq.plugins import STRATEGIES, registered

BUILT_IN = {"fedavg", "fedprox", "median", "trimmed-mean", "krum", "multi-krum", "fedadam", "fedyogi", "fedadagrad"}
FACTORY = Path(__file__).resolve().parents[2] / "aggregator" / "strategies" / "factory.py"


def test_every_built_in_strategy_is_registered_beside_its_implementation() -> None:
    points = registered(STRATEGIES)
    assert BUILT_IN <= set(points), "reinstall (pip install -e .) after changing the entry points"
    for name in BUILT_IN:
        module, _, function = points[name].value.partition(":")
        assert module.startswith("fedmq.aggregator.strategies.") and module != "fedmq.aggregator.strategies.factory"
        parts = points[name].load()(StrategyOptions(name=name))
        assert parts.combiner is not None, name


def test_the_factory_imports_no_registered_strategy() -> None:
    plug_ins = {point.value.partition(":")[0].rpartition(".")[2] for point in registered(STRATEGIES).values()}
    tree = ast.parse(FACTORY.read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level == 1}
    assert not imported & plug_ins, imported & plug_ins


def test_the_cli_lists_the_names_without_torch_or_metadata_at_import() -> None:
    code = ("import sys, fedmq.cli\n"
            "print('torch' in sys.modules, 'importlib.metadata' in sys.modules)\n"
            "from fedmq.aggregator.strategies.options import strategy_names\n"
            "print(','.join(strategy_names()), 'torch' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True).stdout
    first, second = out.splitlines()
    assert first == "False False"
    names, torch_loaded = second.split()
    assert BUILT_IN <= set(names.split(",")) and torch_loaded == "False"


def test_a_strategy_registered_by_another_package_is_offered_and_built(tmp_path: Path) -> None:
    """A real distribution on the path (a dist-info folder with entry_points.txt, as pip installs it)."""
    (tmp_path / "extra_strategy.py").write_text(
        "from fedmq.aggregator.strategies.base import Parts\n"
        "from fedmq.aggregator.strategies.coordinate import Median\n\n"
        "def build(options):\n"
        "    return Parts(Median())\n")
    dist = tmp_path / "fedmq_extra-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fedmq-extra\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[fedmq.strategies]\nextra-median = extra_strategy:build\n")
    code = ("from fedmq.aggregator.strategies import StrategyOptions, make_strategy\n"
            "s = make_strategy(StrategyOptions(name='extra-median'))\n"
            "print(s.name, type(s.combiner).__name__)\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    built = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert built.returncode == 0, built.stderr
    assert built.stdout.split() == ["extra-median", "Median"]
    shown = subprocess.run([sys.executable, "-m", "fedmq.cli", "aggregator", "--help"], capture_output=True, text=True,
                           timeout=60, env=env)
    assert shown.returncode == 0 and "extra-median" in shown.stdout, shown.stdout + shown.stderr
