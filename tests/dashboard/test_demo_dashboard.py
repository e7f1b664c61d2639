"""`fedmq demo` starts the dashboard for its own store and broker and prints where it is."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e


def test_the_demo_prints_a_dashboard_that_answers(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "fedmq.cli", "demo", "--rounds", "2", "--silos", "2",
                             "--workdir", str(tmp_path / "demo")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    timer = threading.Timer(600, proc.kill)  # a hung demo fails the test instead of hanging it
    timer.start()
    lines: list[str] = []
    try:
        url = None
        for line in proc.stdout:
            lines.append(line)
            found = re.search(r"dashboard on (http://\S+)", line)
            if found:
                url = found.group(1)
                break
        assert url, "the demo printed no dashboard address:\n" + "".join(lines)
        with urllib.request.urlopen(url, timeout=10) as page:
            assert page.status == 200 and b"dashboard.js" in page.read()
        base = url.split("/jobs/")[0]
        with urllib.request.urlopen(base + "/api/jobs", timeout=10) as api:
            assert [j["job"] for j in json.load(api)["jobs"]] == ["default"]
        lines += proc.stdout.readlines()
        assert proc.wait(timeout=600) == 0, "".join(lines)
    finally:
        timer.cancel()
        if proc.poll() is None:
            proc.kill()
    assert "round 2 completed" in "".join(lines)
