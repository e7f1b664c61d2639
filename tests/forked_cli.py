"""`fedmq` processes for the tests, forked from a server that has already imported torch.

A test that starts an aggregator and three silos would otherwise pay Python's start and torch's
import (about 3 s of CPU each on the 2-core CI machine, more under load) four times before the
first message moves; over the suite that is most of its time. Each process started here is still
a process of its own, running ``fedmq.cli.main`` with its own arguments, working folder,
environment, log file, signals and exit code, talking to the others only through the broker. What
it skips is the interpreter's start and the imports; the command line as installed (the ``fedmq``
script, its import time) is tested by tests/test_cli.py and tests/test_packaging.py.

``FedmqProcess`` answers as much of ``subprocess.Popen`` as the tests use (poll, wait, kill,
terminate, send_signal, returncode, pid).
"""

from __future__ import annotations

import importlib
import io
import multiprocessing
import os
import signal
import site
import subprocess
import sys
import tempfile
from pathlib import Path

# What every fedmq process of the tests imports sooner or later: loaded once, in the server.
PRELOAD = ["forked_cli", "torch", "fedmq.cli", "fedmq.aggregator.federation", "fedmq.edge_client.silo",
           "fedmq.edge_client.classification"]

_context: multiprocessing.context.ForkServerContext | None = None


def _fork_context() -> multiprocessing.context.ForkServerContext:
    global _context
    if _context is None:
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload(PRELOAD)
    return _context


def _run_cli(args: list[str], cwd: str | None, env: dict[str, str], log: str, err_log: str | None = None) -> None:
    """In the forked process: become `python -m fedmq.cli ARGS` started with ``env`` in ``cwd``, writing
    to ``log`` (stderr too, or to ``err_log``)."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)  # one open file for both, as Popen(stderr=STDOUT) gives
    os.close(fd)
    if err_log is not None:
        fd = os.open(err_log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 2)
        os.close(fd)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    # unbuffered, as PYTHONUNBUFFERED=1 makes a fresh interpreter's
    sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), write_through=True, errors="backslashreplace")
    sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), write_through=True, errors="backslashreplace")
    os.environ.clear()
    os.environ.update(env)
    if cwd is not None:
        os.chdir(cwd)
    sys.path[0] = os.getcwd()  # as `python -m` puts it
    # PYTHONPATH's folders come next, as a fresh interpreter puts them (a test's own packages)
    sys.path[1:1] = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p not in sys.path]
    for folder in site.getsitepackages():  # packages a test installed after the server started (.pth files)
        site.addsitedir(folder)
    importlib.invalidate_caches()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    import torch

    torch.set_num_threads(int(env.get("OMP_NUM_THREADS", "1")))
    sys.argv = ["fedmq", *args]
    from fedmq.cli import main

    main()


class FedmqProcess:
    """A forked `fedmq` process, answering like ``subprocess.Popen``."""

    def __init__(self, args: list[str], cwd: Path | None, env: dict[str, str], log: Path, err_log: Path | None = None) -> None:
        self.args = ["fedmq", *args]
        for path in (log, err_log):  # there at once, as with Popen: a test may read it before the child runs
            if path is not None:
                Path(path).write_bytes(b"")
        self._process = _fork_context().Process(
            target=_run_cli, args=(args, None if cwd is None else str(cwd), env, str(log), err_log and str(err_log)))
        self._process.start()
        self.pid = self._process.pid

    @property
    def returncode(self) -> int | None:
        return self._process.exitcode

    def poll(self) -> int | None:
        return self._process.exitcode

    def wait(self, timeout: float | None = None) -> int:
        self._process.join(timeout)
        if self._process.exitcode is None:
            raise subprocess.TimeoutExpired(self.args, timeout or 0)
        return self._process.exitcode

    def send_signal(self, sig: int) -> None:
        if self._process.exitcode is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def start(args: list[str], *, log: Path, cwd: Path | None, env: dict[str, str]) -> FedmqProcess:
    """A `fedmq ARGS` process writing to ``log``."""
    return FedmqProcess(args, cwd, env, log)


def run(args: list[str], *, cwd: Path | None, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    """`fedmq ARGS` to its end, as ``subprocess.run(..., capture_output=True, text=True, timeout=...)`` answers."""
    with tempfile.TemporaryDirectory(prefix="fedmq-run-") as folder:
        out, err = Path(folder) / "stdout", Path(folder) / "stderr"
        process = FedmqProcess(args, cwd, env, out, err)
        try:
            code = process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
            raise subprocess.TimeoutExpired(process.args, timeout, out.read_bytes(), err.read_bytes()) from None
        return subprocess.CompletedProcess(process.args, code, out.read_text(errors="replace"), err.read_text(errors="replace"))
