"""What ships and what loads: the wheel holds every module, and the light entry points load no torch."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOT_SHIPPED = {"tests", "benchmarks", "examples", "deploy", "docs", "build", "dist"}
# Importing these is what `fedmq --help`, `fedmq history` and `fedmq status` pay for: no torch.
LIGHT_MODULES = ["fedmq", "fedmq.cli", "fedmq.schemas", "fedmq.broker", "fedmq.store", "fedmq.commands",
                 "fedmq.schemas.messages", "fedmq.schemas.framing", "fedmq.schemas.topics", "fedmq.broker.connection",
                 "fedmq.broker.auth", "fedmq.store.store", "fedmq.commands.history", "fedmq.commands.status",
                 "fedmq.commands.config_file", "fedmq.aggregator.strategies", "fedmq.plugins"]


def _source_modules() -> set[str]:
    """Every module of the package in the source tree, as the wheel must name it (fedmq/...)."""
    found = set()
    for path in ROOT.rglob("*.py"):
        relative = path.relative_to(ROOT)
        if relative.parts[0] in NOT_SHIPPED or relative.parts[0].startswith(".") or relative == Path("setup.py"):
            continue
        if (path.parent / "__init__.py").exists() or path.parent == ROOT:
            found.add(str(Path("fedmq", relative)))
    return found


def test_the_wheel_holds_every_module_and_its_data(tmp_path: Path) -> None:
    source = tmp_path / "src"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", ".venv", "*.egg-info", "__pycache__", "build", "dist",
                                                                ".pytest_cache", ".hypothesis", "*.db"))
    result = subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path / "dist"),
                             str(source)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("fedmq-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = sorted(_source_modules() - names)
    assert missing == [], f"modules left out of the wheel: {missing}"
    assert "fedmq/store/migrations/script.py.mako" in names
    assert not any(name.startswith(("fedmq/tests/", "fedmq/benchmarks/")) for name in names)
    entry_points = next(name for name in names if name.endswith(".dist-info/entry_points.txt"))
    assert "fedmq = fedmq.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


@pytest.mark.parametrize("module", LIGHT_MODULES)
def test_importing_a_light_module_loads_no_torch(module: str) -> None:
    code = f"import sys, {module}; heavy = [m for m in ('torch', 'numpy', 'torchvision') if m in sys.modules]; print(heavy)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", f"importing {module} loaded {result.stdout.strip()}"


def test_importtime_of_the_cli_shows_no_torch() -> None:
    """The check the README gives anyone: `python -X importtime -c "import fedmq.cli"`."""
    result = subprocess.run([sys.executable, "-X", "importtime", "-c", "import fedmq.cli"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    imported = [line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")]
    assert "fedmq.cli" in imported
    assert not [name for name in imported if name.split(".")[0] in ("torch", "torchvision", "sqlalchemy", "alembic")]
