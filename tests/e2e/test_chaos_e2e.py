"""The chaos soak (benchmarks/chaos.py, issue 16) at CI size: real Mosquitto, a real aggregator and three
real silos behind the benchmark's fault proxy; seeded faults (kills, freezes past the deadline, broker
restarts, cuts, stalls, latency, a cut in the middle of an upload, replayed chunks and updates) while
six synchronous rounds run with full participation. Every check of the benchmark must hold: each round
completed once, no update counted twice, no round open past its bound, every round's clients and
samples as in the fault-free run, and the final weights equal to it within float32 noise.

The benchmark's own deadlines (a run that does not finish is a finding, not a hang) fail first; the
pytest-timeout limit above them is the backstop.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def chaos():
    """benchmarks/chaos.py, loaded from its file (benchmarks/ is not a package; a checkout folder named
    ``chaos`` on sys.path must not shadow it)."""
    spec = importlib.util.spec_from_file_location("fedmq_bench_chaos", BENCHMARKS / "chaos.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def test_six_rounds_survive_a_dozen_seeded_faults_with_every_update_counted_once(chaos, tmp_path: Path) -> None:
    settings = chaos.Settings(mode="sync", rounds=6, silos=3, seed=3, full=True, round_timeout=6.0, max_reasks=10,
                              local_epochs=5, lr=0.02, images=40, chunk_size=8192, timeout=150.0)
    result = chaos.soak(settings, 12, tmp_path)
    shown = json.dumps({k: v for k, v in result.items() if k != "fault_log"}, indent=1)
    assert result["passed"], f"{result['problems']}\n{shown}\n" + "\n".join(result["fault_log"])
    # Faults drawn for the job's last moments may find it ended: the rest must all have been injected.
    assert result["faults_injected"] >= 10 and len(result["fault_log"]) == result["faults_injected"], shown
    assert result["rounds_completed"] == 6 and result["rounds_doubled"] == 0, shown
    assert result["updates_double_counted"] == 0 and result["participation_mismatches"] == [], shown
    assert result["max_round_overrun_s"] <= chaos.OVERRUN_SLACK_S, shown
    assert result["final_max_abs_diff"] is not None and result["final_max_abs_diff"] <= 1e-4, shown
