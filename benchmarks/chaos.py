"""Chaos soak (issue 16): a real fedmq job while seeded faults are injected; then check it counted every
update once and kept every round within its deadline.

    python benchmarks/chaos.py --mode sync|async --rounds R --silos N --faults F --seed S [--full-participation]

A real Mosquitto on a free port, a real ``fedmq aggregator`` and N real ``fedmq client`` processes on
small synthetic data (``fedmq data synth``). Every process reaches the broker through its own port
of a loopback proxy the benchmark controls (``chaos_proxy.py``). F faults, drawn from
``random.Random(seed)``, are injected at random points of the job:

* ``silo_kill``: SIGKILL a silo (training, uploading, evaluating or waiting: its log and the proxy say
  which), restart it with the same command after a short random pause;
* ``silo_freeze``: SIGSTOP a silo for longer than the round deadline, then SIGCONT;
* ``aggregator_kill``: SIGKILL the aggregator at a random time, right after a round's last update
  arrived (during aggregation) or right after a round was aggregated (checkpoint and store writes,
  evaluation), restart it with the same command;
* ``broker_restart``: kill Mosquitto (no persistence: retained messages and sessions are lost) and
  start it again on the same port after a pause;
* ``cut``, ``stall``, ``latency``: abort a process's connections, stop forwarding them for a while,
  or delay them, in the proxy;
* ``cut_mid_upload``: the proxy cuts a silo's connection in the middle of its next multi-chunk update;
* ``duplicate_chunk``, ``duplicate_update``: the proxy sends the broker again one chunk, or every
  chunk, of an update a silo published (a duplicated delivery, possibly rounds later).

Faults are placed by progress: each is drawn a point in "round units" and injected once the job gets
there (the round it names is open and a random share of a round's time passed), so they spread over
the whole job whatever its pace. At the end, from the store, the checkpoints and the logs:

* every round 1..R completed exactly once (``rounds_completed``, ``rounds_doubled``: a round reported
  completed by two aggregator runs); no (silo, round) counted twice among accepted, non-superseded
  updates; in async mode no (silo, base version) folded twice (``updates_double_counted``); each
  round's sample sum is the sum of its counted updates;
* no round stayed open longer than ``(1 + --max-reasks) * --round-timeout`` (``max_round_overrun_s``:
  the largest excess, from the store's started and aggregated times; sync mode);
* with ``--full-participation`` (sync: ``--min-clients N``, so every round waits for every silo, and
  full-batch local training, deterministic up to float summation order): a fault-free run with the same
  seed goes first, and every round's clients and sample sum must equal it, and the final weights be
  within float32 summation-order noise of it (``final_max_abs_diff``);
* every injected fault is listed (``fault_log``) with what the system did about it.

Prints one JSON line on stdout; progress on stderr. Exit 0 when ``passed``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import heapq
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from chaos_proxy import ChaosProxy  # noqa: E402
from fedmq.broker.server import free_port, start_mosquitto  # noqa: E402

HOST = "127.0.0.1"
JOB = "chaos"
KINDS = {  # kind -> weight of the draw
    "silo_kill": 3.0, "silo_freeze": 1.5, "aggregator_kill": 1.5, "broker_restart": 1.0, "cut": 2.0,
    "cut_mid_upload": 1.5, "stall": 1.5, "latency": 1.5, "duplicate_chunk": 1.5, "duplicate_update": 1.5,
}
# What of the aggregator's log says what it did about a fault (the lines are quoted in the fault log).
REACTIONS = re.compile(r"asking again|ignored a repeat|rejected an update|refused a message|resuming job|joined during"
                       r"|lost the broker|reconnected|dropped while publishing|interrupted|failed|deadline passed")
LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")
OVERRUN_SLACK_S = 2.0  # the aggregator's tick, a store write, a busy machine


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def fedmq(*args: str) -> list[str]:
    return [sys.executable, "-m", "fedmq.cli", *args]


def line_time(line: str) -> float | None:
    m = LOG_TIME.match(line)
    if not m:
        return None
    return dt.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()


def read_lines(path: Path) -> list[tuple[float, str]]:
    """The timestamped lines of a fedmq log (wall-clock seconds, the message part)."""
    out, last = [], 0.0
    if not path.exists():
        return out
    for line in path.read_text(errors="replace").splitlines():
        t = line_time(line)
        if t is None:
            continue
        last = t
        out.append((last, line.split(": ", 1)[-1] if ": " in line else line))
    return out


class Tail:
    """New lines of a growing log file."""

    def __init__(self, path: Path) -> None:
        self.path, self.offset, self.rest = path, 0, b""

    def lines(self) -> list[str]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return []
        self.offset += len(data)
        data = self.rest + data
        *whole, self.rest = data.split(b"\n")
        return [w.decode(errors="replace") for w in whole]


class Proc:
    """One fedmq process, restartable with the same command; each run logs to NAME.K.log."""

    def __init__(self, name: str, cmd: list[str], logs: Path, env: dict[str, str]) -> None:
        self.name, self.cmd, self.logs, self.env = name, cmd, logs, env
        self.runs = 0
        self.popen: subprocess.Popen | None = None
        self.expected_death = False  # killed by us: its exit is no finding
        self.frozen = False
        self.down = False  # killed, restart pending
        self.armed = False  # a kill waits for its moment

    @property
    def log_path(self) -> Path:
        return self.logs / f"{self.name}.{self.runs}.log"

    def start(self) -> None:
        self.runs += 1
        with open(self.log_path, "wb") as out:
            self.popen = subprocess.Popen(self.cmd, stdout=out, stderr=subprocess.STDOUT, env=self.env,
                                          start_new_session=True)
        self.expected_death, self.down = False, False

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            self.popen.send_signal(sig)

    def kill(self) -> None:
        self.expected_death = True
        if self.frozen:
            self.signal(signal.SIGCONT)
            self.frozen = False
        self.signal(signal.SIGKILL)
        if self.popen is not None:
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass

    def last_line(self) -> str:
        """The last line it logged (without its time), or of an error, the error and its hint."""
        try:
            lines = [line for line in self.log_path.read_text(errors="replace").splitlines() if line.strip()]
        except FileNotFoundError:
            lines = []
        if not lines:
            return "(nothing logged yet)"
        if lines[-1].startswith("hint:") and len(lines) > 1:
            return f"{lines[-2]} ({lines[-1]})"
        return lines[-1].split(": ", 1)[-1] if line_time(lines[-1]) else lines[-1]

    def all_lines(self) -> list[tuple[float, str]]:
        out = []
        for k in range(1, self.runs + 1):
            out += read_lines(self.logs / f"{self.name}.{k}.log")
        return out


@dataclass
class Fault:
    at: float  # progress in round units: injected once the job got this far
    kind: str
    target: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    t: float | None = None  # seconds since the start, when injected
    wall: float = 0.0
    what: str = ""  # what was done
    outcome: list[str] = field(default_factory=list)  # what the system did about it
    follow: dict[str, Any] = field(default_factory=dict)


@dataclass
class Settings:
    mode: str
    rounds: int
    silos: int
    seed: int
    full: bool
    round_timeout: float
    max_reasks: int
    local_epochs: int
    lr: float
    images: int
    chunk_size: int
    timeout: float
    weights_tolerance: float = 1e-3


class Run:
    """One job: its broker, proxy, processes; with ``faults``, the chaos."""

    def __init__(self, s: Settings, work: Path, data: Path, faults: list[Fault], round_s: float) -> None:
        self.s, self.work, self.data, self.faults = s, work, data, faults
        self.round_s = round_s  # a round's expected seconds (from the reference run, or a guess)
        self.work.mkdir(parents=True, exist_ok=True)
        self.db = f"sqlite:///{work / 'fedmq.db'}"
        self.port = free_port(HOST)
        self.broker: subprocess.Popen | None = None
        self.broker_down = False
        self.proxy: ChaosProxy | None = None
        self.procs: dict[str, Proc] = {}
        self.follow_ups: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = 0
        self.t0 = 0.0
        self.problems: list[str] = []
        self.round_open = 0  # the newest round (async: version) opened
        self.round_opened_at = 0.0
        self.durations: list[float] = []
        self.completed_logged: Counter = Counter()
        self.agg_tail: Tail | None = None
        self.agg_watch: tuple[Fault, str, float] | None = None  # aggregator_kill waiting for its moment
        self.silo_watch: dict[str, tuple[Fault, Tail, float]] = {}  # silo_kill waiting for a "training" line
        self.killed_in_upload: list[tuple[Fault, str]] = []  # silo_kills the proxy did mid-upload (its thread)
        self.upload_armed: list[Fault] = []
        self.job_failed: str | None = None
        self.job_done = False  # the aggregator logged the job finished
        self.not_injected: list[str] = []

    # -- processes ----------------------------------------------------------------------------------
    def now(self) -> float:
        return time.time() - self.t0

    def later(self, delay: float, action: Callable[[], None]) -> None:
        self._seq += 1
        heapq.heappush(self.follow_ups, (time.monotonic() + delay, self._seq, action))

    def start_broker(self) -> None:
        self.broker = start_mosquitto(HOST, self.port, self.work / "broker", log_file=self.work / "mosquitto.log")
        self.broker_down = False

    def stop_broker(self) -> None:
        if self.broker and self.broker.poll() is None:
            self.broker.kill()
            self.broker.wait(timeout=10)
        self.broker_down = True

    def _commands(self) -> None:
        s = self.s
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        min_clients = s.silos if s.full else max(1, s.silos // 2)
        common = ["--job", JOB, "--connect-timeout", "600"]
        agg = ["aggregator", *common, "--db", self.db, "--out", str(self.work / "out"), "--rounds", str(s.rounds),
               "--min-clients", str(min_clients), "--round-timeout", str(s.round_timeout),
               "--max-reasks", str(s.max_reasks), "--local-epochs", str(s.local_epochs),
               "--batch-size", str(s.images), "--lr", str(s.lr), "--seed", str(s.seed), "--model", "cnn",
               "--chunk-size", str(s.chunk_size), "--mode", s.mode]
        if s.mode == "async":
            agg += ["--buffer-size", str(max(2, s.silos // 2)), "--max-staleness", "4"]
        logs = self.work / "logs"
        logs.mkdir(exist_ok=True)
        port = self.proxy.add("aggregator")
        self.procs["aggregator"] = Proc("aggregator", fedmq(*agg, "--broker", f"mqtt://{HOST}:{port}"), logs, env)
        for i in range(s.silos):
            name = f"silo-{i}"
            port = self.proxy.add(name)
            cmd = fedmq("client", *common, "--silo", name, "--data", str(self.data / str(i)), "--device", "cpu",
                        "--work-dir", str(self.work / name), "--broker", f"mqtt://{HOST}:{port}")
            self.procs[name] = Proc(name, cmd, logs, env)

    @property
    def aggregator(self) -> Proc:
        return self.procs["aggregator"]

    def silos(self) -> list[Proc]:
        return [p for n, p in self.procs.items() if n != "aggregator"]

    # -- the run --------------------------------------------------------------------------------------
    def run(self) -> float:
        """Run the job to its end; returns its seconds. Problems found go to ``self.problems``."""
        self.start_broker()
        self.proxy = ChaosProxy(self.port)
        self._commands()
        self.t0 = time.time()
        start = time.monotonic()
        try:
            for p in self.procs.values():
                p.start()
            self.agg_tail = Tail(self.aggregator.log_path)
            pending = sorted(self.faults, key=lambda f: f.at)
            last_shown = 0.0
            while True:
                self._watch_aggregator_log()
                self._run_follow_ups()
                if self._finished():
                    break
                if self.job_failed is not None:
                    break
                self._check_exits()
                if not self.job_done:  # every fault that is due and can be injected now; the rest wait
                    progress = self._progress()
                    pending = [f for f in pending if not (f.at <= progress and self._inject(f))]
                if time.monotonic() - start > self.s.timeout:
                    self.problems.append(f"the job did not finish within {self.s.timeout:.0f} s (round "
                                         f"{self.round_open} open): a hang")
                    break
                if time.monotonic() - last_shown > 10:
                    last_shown = time.monotonic()
                    done = len(self.faults) - len(pending)
                    log(f"{self.work.name}: {self.now():.0f} s, round {self.round_open}/{self.s.rounds} open, "
                        f"{done}/{len(self.faults)} fault(s) injected; aggregator: {self.aggregator.last_line()[:100]}")
                self._watch_silos()
                time.sleep(0.02 if self.agg_watch or self.silo_watch or self.upload_kills() else 0.2)
            self.not_injected = [f"{f.kind} at {f.at:.2f}" for f in pending]  # the job ended first: no finding
            self._finish_silos()
        finally:
            for p in self.procs.values():
                if p.alive():
                    p.expected_death = True
                    p.signal(signal.SIGCONT)
                    p.signal(signal.SIGKILL)
            self.proxy.close()
            self.stop_broker()
        return time.monotonic() - start

    def _progress(self) -> float:
        """How far the job got, in round units: the open round's number - 1 + the share of a round's
        expected time it has been open (below 1)."""
        if self.round_open == 0 or self.aggregator.down:
            return max(0.0, self.round_open - 1.0)
        share = min(0.95, (time.time() - self.round_opened_at) / max(self.round_s, 0.5))
        return self.round_open - 1 + share

    def _watch_aggregator_log(self) -> None:
        for line in self.agg_tail.lines():
            m = re.search(r"round (\d+)/\d+ open|version (\d+)/\d+: collecting", line)
            if m:
                number = int(m.group(1) or m.group(2))
                if number != self.round_open:
                    if self.round_open and number == self.round_open + 1:
                        self.durations.append(time.time() - self.round_opened_at)
                    self.round_open, self.round_opened_at = number, time.time()
            if re.search(r"job '[^']*' finished", line):
                self.job_done = True  # no fault after the end: a broker restart then would lose the final spec
            if m := re.search(r"round (\d+) completed", line):
                self.completed_logged[int(m.group(1))] += 1
            if self.agg_watch is not None:
                fault, pattern, until = self.agg_watch
                if re.search(pattern, line) or time.time() > until:
                    self.agg_watch = None
                    self._kill_aggregator(fault, line if re.search(pattern, line) else "its moment did not come; "
                                                                                       "killed at a random time")

    def _run_follow_ups(self) -> None:
        while self.follow_ups and self.follow_ups[0][0] <= time.monotonic():
            _, _, action = heapq.heappop(self.follow_ups)
            action()

    def _finished(self) -> bool:
        agg = self.aggregator
        if agg.alive() or agg.down or agg.popen is None:
            return False
        code = agg.popen.returncode
        if code == 0:
            return True
        if agg.expected_death:
            return False
        tail = agg.last_line()
        status, reason = self.job_status()
        if code == 1 and status == "failed":
            self.job_failed = reason or tail
            self.problems.append(f"the job failed (aggregator exit 1): {reason or tail}")
            return False
        self.problems.append(f"the aggregator exited {code} unprompted at {self.now():.1f} s, leaving the job "
                             f"{status!r} in the store ({tail}); restarted")
        agg.start()
        self.agg_tail = Tail(agg.log_path)
        return False

    def job_status(self) -> tuple[str | None, str | None]:
        """The job's status and reason in the store."""
        from fedmq.store import Store

        try:
            store = Store(self.db, create=False)
        except Exception:
            return None, None
        try:
            job = store.find_job(JOB)
            return (job.status, (job.spec or {}).get("reason")) if job else (None, None)
        except Exception:
            return None, None
        finally:
            store.close()

    def _check_exits(self) -> None:
        for p in self.silos():
            if p.popen is not None and not p.alive() and not p.down and not p.expected_death:
                code = p.popen.returncode
                if code == 0:
                    continue  # left after the job finished
                self.problems.append(f"{p.name} exited {code} unprompted at {self.now():.1f} s "
                                     f"({p.last_line()}); restarted")
                p.start()

    def _finish_silos(self) -> None:
        if self.agg_watch is not None:
            self.agg_watch[0].what += "; the job ended before its moment: not killed"
        for f, _, _ in self.silo_watch.values():
            f.what += "; the job ended before its moment: not killed"
        self.agg_watch = None
        self.silo_watch.clear()
        for p in self.silos():
            p.armed = False
            self.proxy.arm_upload_kill(p.name, None, None)
        self._watch_silos()
        while self.follow_ups:  # restarts and SIGCONTs still owed, now
            _, _, action = heapq.heappop(self.follow_ups)
            action()
        if self.job_failed is not None or self.aggregator.alive():
            return
        deadline = time.monotonic() + 90
        waiting = set(self.silos())
        while waiting and time.monotonic() < deadline:
            for p in list(waiting):
                if not p.alive():
                    waiting.discard(p)
                    if p.popen.returncode != 0:
                        self.problems.append(f"{p.name} exited {p.popen.returncode} at the end: {p.last_line()}")
                elif any("has finished (an earlier run)" in line for _, line in read_lines(p.log_path)):
                    # Restarted after the job finished: it waits for a new run of the job, as documented.
                    log(f"{p.name} restarted after the job finished; it waits for a new run, as it should: stopped")
                    p.kill()
                    waiting.discard(p)
            time.sleep(0.2)
        for p in waiting:
            self.problems.append(f"{p.name} did not leave within 90 s of the job's end: {p.last_line()}")

    # -- faults ---------------------------------------------------------------------------------------
    def _healthy_silos(self) -> list[Proc]:
        return [p for p in self.silos() if p.alive() and not p.frozen and not p.down and not p.armed]

    def _inject(self, f: Fault) -> bool:
        """Inject ``f`` now if its target can take it; False: try again shortly."""
        impaired = sum(1 for p in self.silos() if p.frozen or p.down or p.armed)
        rng = random.Random(f.params["pick"])
        if f.kind in ("silo_kill", "silo_freeze"):
            if impaired >= max(1, self.s.silos // 2) or self.aggregator.down or self.broker_down:
                return False
        if f.kind in ("aggregator_kill", "broker_restart") and (self.aggregator.down or self.broker_down
                                                              or self.agg_watch or not self.aggregator.alive()):
            return False
        if f.kind == "aggregator_kill" or f.kind in ("cut", "stall", "latency") and f.params["on_agg"]:
            if self.aggregator.down or not self.aggregator.alive():
                return False
            target_name = "aggregator"
        elif f.kind == "broker_restart":
            target_name = "broker"
        else:
            healthy = self._healthy_silos()
            if f.kind == "cut_mid_upload":
                healthy = [p for p in healthy if not self.proxy.upload_cut_armed(p.name)]
            if not healthy:
                return False
            target_name = rng.choice(healthy).name
        f.target = target_name
        f.t, f.wall = self.now(), time.time()
        f.follow["round"] = self.round_open
        getattr(self, f"_do_{f.kind}")(f)
        log(f"fault {self.faults.index(f) + 1}/{len(self.faults)} at {f.t:.1f} s (round {self.round_open}): "
            f"{f.kind} {f.target}: {f.what}")
        return True

    def upload_kills(self) -> bool:
        return any(p.armed for p in self.silos())

    def _do_silo_kill(self, f: Fault) -> None:
        p = self.procs[f.target]
        when = f.params["silo_when"]
        if when == "random":
            self._kill_silo(f, None)
            return
        p.armed = True
        until = time.time() + 3 * max(self.round_s, self.s.round_timeout)
        if when == "training":
            tail = Tail(p.log_path)
            tail.offset = p.log_path.stat().st_size if p.log_path.exists() else 0
            self.silo_watch[p.name] = (f, tail, until)
            f.what = "armed: SIGKILL at its next 'training' line"
        else:
            pid = p.popen.pid

            def kill_now(event: str) -> None:  # on the proxy's thread, right after chunk i of n went through
                p.expected_death = True
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.killed_in_upload.append((f, event))
            self.proxy.arm_upload_kill(p.name, f.params["after"], kill_now)
            self.silo_watch[p.name] = (f, Tail(Path("/nonexistent")), until)
            f.what = f"armed: SIGKILL in the middle of its next update (after chunk {f.params['after'] + 1})"

    def _watch_silos(self) -> None:
        """Kill the silos whose moment came: a 'training' line, the proxy's mid-upload call, or time up."""
        while self.killed_in_upload:
            f, event = self.killed_in_upload.pop(0)
            self.silo_watch.pop(f.target, None)
            self._kill_silo(f, f"mid-upload: {event}")
        for name, (f, tail, until) in list(self.silo_watch.items()):
            p = self.procs[name]
            hit = next((line for line in tail.lines() if re.search(r"round \d+: training", line)), None)
            if hit is not None or time.time() > until or not p.alive():
                self.silo_watch.pop(name)
                self.proxy.arm_upload_kill(name, None, None)
                self._kill_silo(f, "training: " + hit.split(": ", 1)[-1][:60] if hit else None)

    def _kill_silo(self, f: Fault, moment: str | None) -> None:
        p = self.procs[f.target]
        p.armed = False
        phase = p.last_line()
        up = self.proxy.uploading(p.name)
        p.kill()
        p.down = True
        f.t, f.wall = self.now(), time.time()
        if moment is not None:
            where = moment
        elif up and up[1] + 1 < up[2] and "training" not in phase:
            where = f"mid-upload (chunk {up[1] + 1}/{up[2]} of update {up[0]} through)"
        elif re.search(r"training", phase) and "update sent" not in phase:
            where = "training"
        elif "evaluating" in phase:
            where = "evaluating"
        else:
            where = "idle" + (" (its moment did not come in time)" if f.params["silo_when"] != "random" else "")
        pause = f.params["pause"]
        f.what = f"SIGKILL ({f.params['silo_when']}) while {where} (its last line: {phase[:90]!r}); restart in " \
                 f"{pause:.1f} s"
        f.follow["since"] = time.time()

        def restart() -> None:
            self.proxy.forget_upload(p.name)
            p.start()
            f.follow["log"] = p.log_path
        self.later(pause, restart)

    def _do_silo_freeze(self, f: Fault) -> None:
        p = self.procs[f.target]
        seconds = f.params["freeze"]
        p.signal(signal.SIGSTOP)
        p.frozen = True
        f.what = f"SIGSTOP for {seconds:.1f} s (round deadline {self.s.round_timeout:.0f} s); its last line: " \
                 f"{p.last_line()[:80]!r}"

        def thaw() -> None:
            if p.frozen:
                p.signal(signal.SIGCONT)
                p.frozen = False
                f.follow["thawed"] = time.time()
        self.later(seconds, thaw)

    def _do_aggregator_kill(self, f: Fault) -> None:
        when = f.params["when"]
        if when == "random":
            self._kill_aggregator(f, self.aggregator.last_line())
            return
        pattern = {"last-update": r"waiting for nobody\]|\[(\d+) of \1\]", "aggregated": r"aggregated from"}[when]
        self.agg_watch = (f, pattern, time.time() + 3 * max(self.round_s, self.s.round_timeout))
        f.what = f"armed: SIGKILL at the next {when!r} line"

    def _kill_aggregator(self, f: Fault, moment: str) -> None:
        agg = self.aggregator
        if not agg.alive():
            f.what = "not killed: the aggregator had already exited"
            return
        agg.kill()
        agg.down = True
        f.t, f.wall = self.now(), time.time()
        pause = f.params["pause"]
        f.what = f"SIGKILL ({f.params['when']}) after {moment[:100]!r}; restart in {pause:.1f} s"

        def restart() -> None:
            agg.start()
            self.agg_tail = Tail(agg.log_path)
            f.follow["log"] = agg.log_path
        self.later(pause, restart)

    def _do_broker_restart(self, f: Fault) -> None:
        down = f.params["down"]
        self.stop_broker()
        f.what = f"Mosquitto killed (retained messages and sessions lost), started again in {down:.1f} s"

        def start() -> None:
            self.start_broker()
            f.follow["up"] = time.time()
        self.later(down, start)

    def _do_cut(self, f: Fault) -> None:
        f.what = f"aborted {self.proxy.cut(f.target)} connection(s)"

    def _do_stall(self, f: Fault) -> None:
        self.proxy.stall(f.target, f.params["stall"])
        f.what = f"forwarding stopped for {f.params['stall']:.1f} s"

    def _do_latency(self, f: Fault) -> None:
        self.proxy.latency(f.target, f.params["delay"], f.params["seconds"])
        f.what = f"{f.params['delay'] * 1000:.0f} ms added each way for {f.params['seconds']:.1f} s"

    def _do_cut_mid_upload(self, f: Fault) -> None:
        self.proxy.arm_upload_cut(f.target, f.params["after"])
        f.what = f"armed: cut after chunk {f.params['after'] + 1} (at most n-1) of its next update"

    def _do_duplicate_chunk(self, f: Fault) -> None:
        self._replay(f, whole=False)

    def _do_duplicate_update(self, f: Fault) -> None:
        self._replay(f, whole=True)

    def _replay(self, f: Fault, whole: bool) -> None:
        delay = f.params["delay"]
        f.what = f"replay in {delay:.1f} s"

        def replay(tries: int = 5) -> None:
            done = self.proxy.replay(f.target, whole, f.params["pick"] % 1000 / 1000)
            if done is None and tries > 1:  # no update through yet, or no live connection: a little later
                self.later(2.0, lambda: replay(tries - 1))
                return
            f.what = f"replayed {done}" if done else "nothing to replay (no update through yet, or no connection)"
            f.follow["replayed"] = time.time()
            f.follow["replayed_round"] = self.proxy.last_replayed_round(f.target) if done else None
        self.later(delay, replay)

    # -- what the system did ----------------------------------------------------------------------
    def store_updates(self) -> list[dict[str, Any]]:
        """Every update row of the job's rounds (accepted or not), with its wall-clock time."""
        from fedmq.store import Store

        store = Store(self.db, create=False)
        try:
            rows = [u for r in store.history(JOB) for u in store.round_detail(JOB, r["round"])["updates"]]
        except Exception:
            return []
        finally:
            store.close()
        for u in rows:
            u["t"] = dt.datetime.fromisoformat(u["received_at"]).timestamp() if u["received_at"] else 0.0
        return rows

    def outcomes(self) -> None:
        agg_lines = self.aggregator.all_lines()
        updates = self.store_updates()
        events = list(self.proxy.events) if self.proxy else []
        for f in self.faults:
            if f.t is None:
                continue
            start = f.wall
            if f.kind == "silo_kill":
                path = f.follow.get("log")
                online = [t for t, line in read_lines(path) if "online on" in line] if path else []
                again = any(g.kind == "silo_kill" and g.target == f.target and g.t is not None and f.t < g.t
                            and g.wall < (online[0] if online else float("inf")) for g in self.faults)
                f.outcome.append(f"it rejoined at {online[0] - self.t0:.1f} s" if online else
                                 "killed again before it rejoined" if again else "it did not rejoin")
            elif f.kind == "aggregator_kill":
                path = f.follow.get("log")
                resumed = [(t, line) for t, line in read_lines(path) if "resuming job" in line] if path else []
                if resumed:
                    m = re.search(r"after round (\d+)", resumed[0][1])
                    f.outcome.append(f"resumed after round {m.group(1) if m else '?'} at {resumed[0][0] - self.t0:.1f} s")
                elif path:
                    f.outcome.append("restarted: " + (read_lines(path)[:1] or [(0, "nothing logged")])[0][1][:100])
            elif f.kind == "silo_freeze":
                thawed = f.follow.get("thawed")
                if thawed:
                    f.outcome.append(f"SIGCONT at {thawed - self.t0:.1f} s")
            elif f.kind == "broker_restart":
                up = f.follow.get("up")
                if up:
                    back = {}
                    for p in self.procs.values():
                        ts = [t for t, line in p.all_lines() if up - 0.5 <= t <= up + 60
                              and re.search(r"reconnected to|online on|published on", line)]
                        if ts:
                            back[p.name] = ts[0] - up
                    missing = sorted(set(self.procs) - set(back))
                    f.outcome.append(f"back at {up - self.t0:.1f} s; {len(back)} process(es) reconnected (or restarted "
                                     f"and connected) within {max(back.values(), default=0):.1f} s" + (
                                         f"; not within 60 s: {', '.join(missing)}" if missing else ""))
            if f.kind in ("cut", "stall", "cut_mid_upload", "latency", "broker_restart"):
                conns = [t for t in self.proxy.connections_since(f.target, start)] if f.target in self.procs else []
                if f.kind == "stall":
                    soon = [t for t in conns if t <= start + f.params["stall"] + 5]
                    f.outcome.append(f"{f.target} reconnected at {soon[0] - self.t0:.1f} s" if soon else
                                     "its connection survived the stall")
                elif f.kind in ("cut", "cut_mid_upload") and conns:
                    f.outcome.append(f"{f.target} reconnected at {conns[0] - self.t0:.1f} s")
            for t, name, text in events:
                if name == f.target and start <= t <= start + 60 and (
                        (f.kind == "cut_mid_upload" and "cut mid-upload" in text)
                        or (f.kind == "cut_mid_upload" and "re-sent chunk" in text and f.follow.setdefault("re", 0) < 1)):
                    if "re-sent" in text:
                        f.follow["re"] = 1
                        text = "it re-sent the update's chunks (first: " + text + ")"
                    f.outcome.append(f"{text} at {t - self.t0:.1f} s")
            if f.kind in ("duplicate_chunk", "duplicate_update") and f.follow.get("replayed") and "replayed" in f.what:
                at, number = f.follow["replayed"], f.follow.get("replayed_round")
                rows = [u for u in updates if u["silo"] == f.target and at - 0.05 <= u["t"] <= at + 3
                        and u["claimed_round"] == number]
                repeats = [t for t, line in agg_lines if at - 0.05 <= t <= at + 10
                           and f"ignored a repeat from {f.target}" in line and f"round {number} " in line + " "]
                if rows:
                    f.outcome.append(f"store rows for {f.target}'s round-{number} update within 3 s: " + "; ".join(
                        f"{'accepted' if u['accepted'] else 'rejected'}{' superseded' if u['superseded'] else ''}"
                        f"{' (' + u['reason'][:80] + ')' if u['reason'] else ''}" for u in rows))
                elif repeats:
                    f.outcome.append(f"the aggregator ignored it as a repeat of a counted update at "
                                     f"{repeats[0] - self.t0:.1f} s (no store row)")
                else:
                    f.outcome.append("no store row and no log line from it: dropped by the reassembler as chunks of "
                                     "a message already delivered (or, for one chunk, of one in progress)")
            if f.kind == "cut_mid_upload" and not any("cut mid-upload" in o for o in f.outcome):
                f.outcome.append("the armed cut never fired (no multi-chunk update before the job ended)")
            window = 30.0 if f.kind not in ("silo_freeze",) else 30.0 + f.params["freeze"]
            name = f.target
            reactions = [f"{t - self.t0:.1f} s: {line[:140]}" for t, line in agg_lines
                         if start - 0.5 <= t <= start + window and REACTIONS.search(line)
                         and (name in line or name in ("aggregator", "broker"))]
            if reactions:
                f.outcome.append("aggregator: " + " | ".join(reactions[:3]) + (f" (+{len(reactions) - 3} more)"
                                                                                 if len(reactions) > 3 else ""))
            elif not f.outcome:
                f.outcome.append("no reaction needed: the aggregator logged nothing about it within "
                                 f"{window:.0f} s and the job went on")


# -- checks ------------------------------------------------------------------------------------------
def check(run: Run, reference: dict[str, Any] | None) -> dict[str, Any]:
    from fedmq.store import Store

    s = run.s
    store = Store(run.db, create=False)
    try:
        job = store.find_job(JOB)
        history = store.history(JOB) if job else []
        details = [store.round_detail(JOB, r["round"]) for r in history]
    finally:
        store.close()
    completed = sorted(r["round"] for r in history if r["status"] == "completed")
    rounds_completed = len(set(completed) & set(range(1, s.rounds + 1)))
    doubled = sorted(n for n, c in run.completed_logged.items() if c > 1)
    # The store also knows: a round completed before a restart is never reopened.
    double, mismatched = 0, []
    seen_async: Counter = Counter()
    for d in details:
        counted = [u for u in d["updates"] if u["accepted"] and not u["superseded"]]
        if s.mode == "sync":
            per_silo = Counter(u["silo"] for u in counted)
            double += sum(c - 1 for c in per_silo.values() if c > 1)
        else:
            seen_async.update((u["silo"], u["base_version"]) for u in counted)
        if d["status"] == "completed" and sum(u["num_samples"] for u in counted) != d["num_samples"]:
            mismatched.append(d["round"])
    double += sum(c - 1 for c in seen_async.values() if c > 1)
    refolded = defaultdict(list)  # async: (silo, base version) -> the versions it was folded into
    if s.mode == "async":
        for d in details:
            for u in d["updates"]:
                if u["accepted"] and not u["superseded"] and seen_async[(u["silo"], u["base_version"])] > 1:
                    refolded[f"{u['silo']}@v{u['base_version']}"].append(d["round"])
    bound = (1 + s.max_reasks) * s.round_timeout
    open_s = []
    for d in details:
        if d["started_at"] and d["aggregated_at"]:
            open_s.append((dt.datetime.fromisoformat(d["aggregated_at"]) -
                           dt.datetime.fromisoformat(d["started_at"])).total_seconds())
    max_open = max(open_s, default=None)
    overrun = None if s.mode == "async" or max_open is None else round(max_open - bound, 2)
    result: dict[str, Any] = {
        "rounds_completed": rounds_completed, "rounds_doubled": len(doubled), "updates_double_counted": double,
        "double_counted_detail": dict(list(refolded.items())[:10]), "sample_sums_mismatched": mismatched,
        "max_round_open_s": None if max_open is None else round(max_open, 2),
        "round_bound_s": bound if s.mode == "sync" else None, "max_round_overrun_s": overrun,
        "job_status": job.status if job else None, "job_reason": (job.spec or {}).get("reason") if job else None,
    }
    final = run.work / "out" / JOB / f"round-{s.rounds:04d}.safetensors"
    result["final_max_abs_diff"] = None
    participation = []
    if reference is not None:
        from safetensors.torch import load_file

        ref_rounds = {r["round"]: r for r in reference["history"]}
        for r in history:
            ref = ref_rounds.get(r["round"])
            if ref is None or (r["clients"], r["num_samples"]) != (ref["clients"], ref["num_samples"]):
                participation.append({"round": r["round"], "clients": r["clients"], "num_samples": r["num_samples"],
                                      "reference": None if ref is None else [ref["clients"], ref["num_samples"]]})
        if final.exists() and reference["final"].exists():
            a, b = load_file(str(final)), load_file(str(reference["final"]))
            result["final_max_abs_diff"] = max(float((a[k].double() - b[k].double()).abs().max()) for k in a)
        result["participation_mismatches"] = participation
    problems = list(run.problems)
    if rounds_completed != s.rounds:
        problems.append(f"{rounds_completed} of {s.rounds} rounds completed (job {result['job_status']}: "
                        f"{result['job_reason']})")
    if doubled:
        problems.append(f"rounds reported completed by two aggregator runs: {doubled}")
    if double:
        problems.append(f"{double} update(s) counted twice" + (
            " (async: a silo's updates trained from one base version, folded into several versions: "
            + ", ".join(f"{k} in {v}" for k, v in list(refolded.items())[:4]) + ")" if refolded else ""))
    if mismatched:
        problems.append(f"rounds whose sample sum is not the sum of their counted updates: {mismatched}")
    if overrun is not None and overrun > OVERRUN_SLACK_S:
        problems.append(f"a round stayed open {max_open:.1f} s, beyond its bound of {bound:.0f} s")
    if participation:
        problems.append(f"{len(participation)} round(s) differ from the fault-free run in clients or samples")
    if reference is not None and (result["final_max_abs_diff"] is None
                                  or result["final_max_abs_diff"] > s.weights_tolerance):
        problems.append(f"final weights differ from the fault-free run by {result['final_max_abs_diff']}")
    result["problems"] = problems
    result["passed"] = not problems
    result["history"] = history
    result["final"] = final
    return result


def plan_faults(s: Settings, count: int) -> list[Fault]:
    """``count`` faults drawn from the seed: kind, target choice, parameters, and when (in round units)."""
    rng = random.Random(s.seed)
    kinds, weights = zip(*KINDS.items())
    faults = []
    # The last round and a half stay free of new faults: one that waits for its moment (a silo mid-upload,
    # a round's last update) still finds it before the job ends, so every planned fault is injected.
    span = max(0.5, s.rounds - 1.5)
    for _ in range(count):
        kind = rng.choices(kinds, weights)[0]
        params = {"pick": rng.randrange(1 << 30), "pause": rng.uniform(0.3, 3.0),
                  "freeze": s.round_timeout * rng.uniform(1.1, 1.8), "down": rng.uniform(0.5, 3.0),
                  "stall": rng.uniform(1.0, 6.0), "delay": rng.uniform(0.0, 8.0), "seconds": rng.uniform(3.0, 10.0),
                  "after": rng.randrange(1, 8), "when": rng.choice(["random", "last-update", "aggregated"]),
                  "silo_when": rng.choice(["random", "training", "mid-upload"]),
                  "on_agg": rng.random() < 0.3}
        if kind == "latency":
            params["delay"] = rng.uniform(0.02, 0.3)
        faults.append(Fault(at=rng.uniform(0.2, span), kind=kind, params=params))
    return sorted(faults, key=lambda f: f.at)


def make_data(s: Settings, out: Path) -> None:
    if out.exists():
        return
    made = subprocess.run(fedmq("data", "synth", "--silos", str(s.silos), "--out", str(out), "--seed", str(s.seed),
                                "--images-per-silo", str(s.images), "--image-size", "16"),
                          capture_output=True, text=True, timeout=300)
    if made.returncode != 0:
        raise RuntimeError(f"fedmq data synth failed: {made.stderr[-2000:]}")


def soak(s: Settings, faults: int, work: Path) -> dict[str, Any]:
    """The whole benchmark: the fault-free reference (with ``s.full``), the chaos run, the checks."""
    data = work / "data"
    make_data(s, data)
    reference, round_s = None, max(2.0, s.round_timeout / 2)
    started = time.monotonic()
    if s.full:
        log(f"fault-free reference run: {s.mode}, {s.rounds} round(s), {s.silos} silo(s), seed {s.seed}")
        clean = Run(s, work / "reference", data, [], round_s)
        seconds = clean.run()
        ref = check(clean, None)
        if not ref["passed"]:
            raise RuntimeError(f"the fault-free run failed: {ref['problems']}")
        reference = {"history": ref["history"], "final": ref["final"], "seconds": seconds}
        round_s = seconds / s.rounds
        log(f"reference: {seconds:.0f} s, {round_s:.1f} s a round")
    log(f"chaos run: {faults} fault(s)")
    chaos = Run(s, work / "chaos", data, plan_faults(s, faults), round_s)
    seconds = chaos.run()
    chaos.outcomes()
    result = check(chaos, reference)
    injected = [f for f in chaos.faults if f.t is not None]
    fault_log = [f"{f.t:.1f} s, round {f.follow.get('round')}: {f.kind} {f.target}: {f.what}; "
                 f"{'; '.join(f.outcome)}" for f in injected]
    for line in fault_log:
        log(line)
    (work / "faults.json").write_text(json.dumps(fault_log, indent=1))
    result.pop("history")
    result.pop("final")
    return {"mode": s.mode, "rounds": s.rounds, "silos": s.silos, "seed": s.seed, "full_participation": s.full,
            "faults": dict(Counter(f.kind for f in injected)), "faults_injected": len(injected),
            "faults_requested": faults, "faults_not_injected": chaos.not_injected, **result, "seconds": round(seconds, 1),
            "reference_seconds": None if reference is None else round(reference["seconds"], 1),
            "total_seconds": round(time.monotonic() - started, 1), "round_timeout": s.round_timeout,
            "max_reasks": s.max_reasks, "loadavg": [round(x, 2) for x in os.getloadavg()], "work": str(work),
            "fault_log": fault_log}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=["sync", "async"], default="sync")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--silos", type=int, default=5)
    parser.add_argument("--faults", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--full-participation", action="store_true",
                        help="sync: --min-clients N and a fault-free reference run to compare every round with")
    parser.add_argument("--round-timeout", type=float, default=6.0)
    parser.add_argument("--max-reasks", type=int, default=10)
    parser.add_argument("--local-epochs", type=int, default=5)
    parser.add_argument("--lr", type=float, default=0.02)
    parser.add_argument("--images-per-silo", type=int, default=40)
    parser.add_argument("--chunk-size", type=int, default=8192)
    parser.add_argument("--weights-tolerance", type=float, default=1e-3,
                        help="--full-participation: the largest final weight difference from the fault-free run")
    parser.add_argument("--timeout", type=float, default=None, help="seconds a run may take (default 60 + 30 a round)")
    parser.add_argument("--work", type=Path, default=None, help="keep logs and stores here (default: a temp folder)")
    args = parser.parse_args(argv)
    if args.full_participation and args.mode != "sync":
        parser.error("--full-participation is for --mode sync")
    s = Settings(mode=args.mode, rounds=args.rounds, silos=args.silos, seed=args.seed, full=args.full_participation,
                 round_timeout=args.round_timeout, max_reasks=args.max_reasks, local_epochs=args.local_epochs, lr=args.lr,
                 images=args.images_per_silo, chunk_size=args.chunk_size,
                 timeout=args.timeout or 60.0 + 30.0 * args.rounds,
                 weights_tolerance=args.weights_tolerance)
    work = args.work or Path(tempfile.mkdtemp(prefix="fedmq-chaos-"))
    work.mkdir(parents=True, exist_ok=True)
    result = soak(s, args.faults, work)
    print(json.dumps(result), flush=True)
    log(f"{'PASSED' if result['passed'] else 'FAILED'}: {result['problems'] or 'every check holds'}; logs in {work}")
    if args.work is None and result["passed"]:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
