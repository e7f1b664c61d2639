"""A missing optional part is one clear line naming the extra to install, never an ImportError."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

# Runs the real CLI in a child whose import of MODULE fails, as where the extra is not installed.
WITHOUT = "import sys; sys.modules[{module!r}] = None; sys.argv = ['fedmq', *{args!r}]; from fedmq.cli import main; main()"


def _without(module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", WITHOUT.format(module=module, args=list(args))], capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize(("module", "extra", "args"), [
    ("psycopg", "postgres", ["history", "--db", "postgresql+psycopg://u@127.0.0.1:5432/x"]),
    ("matplotlib", "plot", ["history", "--plot", "x.png"]),
    ("dp_accounting", "dp", ["aggregator", "--dp-clip", "1", "--dp-noise", "1", "--connect-timeout", "0"]),
    ("uvicorn", "dashboard", ["dashboard", "--db", "sqlite:///fedmq.db"]),
    ("prometheus_client", "dashboard", ["dashboard", "--db", "sqlite:///fedmq.db"]),
])
def test_a_missing_extra_names_itself(module: str, extra: str, args: list[str], tmp_path: Path) -> None:
    if "--plot" in args:  # a store with a round to plot, so the command gets as far as drawing
        from fedmq.store import Store

        store = Store(f"sqlite:///{tmp_path / 'fedmq.db'}")
        job = store.create_job("default", run_id="r", spec={"task": "classification", "model": "cnn", "status": "running"})
        store.complete_round(store.open_round(job.id, 1), {"accuracy": 0.5})
        store.close()
        args = [*args[:1], "--db", f"sqlite:///{tmp_path / 'fedmq.db'}", *args[1:]]
    result = _without(module, *args)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert f"needs {module}, which is not installed" in result.stderr
    assert f"hint: pip install 'fedmq[{extra}]'" in result.stderr
