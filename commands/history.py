"""``fedmq history``: the store's jobs, a job's rounds, or one round in detail; as a table, JSON, CSV or a plot."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ..errors import ConfigError, StoreError
from ..store.reader import StoreReader, open_sqlite_reader

if TYPE_CHECKING:
    from ..store import Store

# The table shows the job's --metric first, then these, then any other metric (up to TABLE_MAX_METRICS);
# `--json` and `--csv` have every metric the silos reported.
TABLE_METRICS = ("accuracy", "map", "map50", "loss", "train_loss")
TABLE_MAX_METRICS = 8
COUNTS = ("eval_samples",)  # aggregate counts, not metrics: in --json and --csv only
CSV_FIELDS = ("round", "status", "clients", "num_samples", "rejected")


def print_history(db: str, job: str | None, as_json: bool, round_number: int | None = None,
                  csv_path: Path | None = None, plot_path: Path | None = None) -> None:
    """Print what the options ask for. ``--csv`` and ``--plot`` write every round of the job to
    files instead of printing the rounds table; ``--round`` prints that round in detail."""
    store = open_history(db)
    try:
        if job is None:
            jobs = store.jobs()
            if len(jobs) != 1:
                if round_number is not None or csv_path or plot_path:
                    raise ConfigError(f"{len(jobs)} jobs in {db}; which one?", hint="pass --job NAME (see `fedmq history`)")
                _print_jobs(jobs, as_json, db)
                return
            job = jobs[0]["job"]
        rounds = store.history(job)
        metric = store.job_metric(job)
        detail = store.round_detail(job, round_number) if round_number is not None else None
    finally:
        store.close()
    if csv_path is not None:
        _write_csv(rounds, csv_path)
    if plot_path is not None:
        from .history_plot import plot_rounds

        plot_rounds(job, rounds, plot_path, metric=metric)
        click.echo(f"wrote the plot of job {job}'s {len(rounds)} round(s) to {plot_path}", err=True)
    if detail is not None:
        click.echo(json.dumps(detail, indent=2) if as_json else render_round(detail))
    elif csv_path is None and plot_path is None:
        click.echo(json.dumps(rounds, indent=2) if as_json else render_rounds(job, rounds, metric))


def open_existing_store(db: str) -> Store:
    """The store at ``db``; a missing SQLite file is an error here, not a new empty store."""
    if db.startswith("sqlite:///") and db != "sqlite:///:memory:":
        if not Path(db.removeprefix("sqlite:///")).exists():
            raise StoreError(f"no store at {db}", hint="run `fedmq aggregator` first, or pass the --db it used")
    from ..store import Store

    return Store(db, create=False)  # a reader: never migrates, says when the store is older than the code


def open_history(db: str) -> Store | StoreReader:
    """What `fedmq history` reads from: a SQLite file at this fedmq's schema through ``sqlite3`` alone
    (no SQLAlchemy to load, so the command answers in a fraction of the time), anything else through
    ``open_existing_store``, which says what is wrong with a store older or newer than the code."""
    return open_sqlite_reader(db) or open_existing_store(db)


def _print_jobs(jobs: list[dict[str, Any]], as_json: bool, db: str) -> None:
    if as_json:
        click.echo(json.dumps(jobs, indent=2))
        return
    if not jobs:
        click.echo(f"no jobs in {db}")
        return
    rows = [["job", "status", "task", "model", "metric", "rounds", "created"]]
    rows += [[j["job"], j["status"], j["task"], j["model"] or "-", j["metric"] or "-",
              f"{j['rounds_completed']}/{j['rounds']}", (j["created_at"] or "")[:19]] for j in jobs]
    click.echo(_table(rows))
    click.echo("\nshow one job's rounds with: fedmq history --job NAME")


def table_metrics(rounds: list[dict[str, Any]], metric: str | None) -> list[str]:
    """The metrics the table shows: the job's headline one, the usual ones, then the task's others, alphabetically."""
    present = {k for r in rounds for k in r["metrics"] if not k.startswith(SECURE)} - set(COUNTS)
    first = [metric] if metric in present else []
    usual = [k for k in TABLE_METRICS if k in present and k not in first]
    others = sorted(present - set(first) - set(usual))
    return (first + usual + others)[:TABLE_MAX_METRICS]


SECURE = "secure_"  # secure aggregation's round metrics (aggregator/secure/): one column, not one each
SECURE_STEPS = ("keys", "shares", "upload", "reveal")


def secure_cell(metrics: dict[str, Any]) -> str:
    """A secure round: whether its sum was unmasked, and how many silos dropped at each step."""
    if not metrics.get("secure_agg"):
        return "-"
    dropped = "/".join(str(int(metrics.get(f"secure_dropped_{step}", 0))) for step in SECURE_STEPS)
    return f"{'unmasked' if metrics.get('secure_unmasked') else 'NOT unmasked'}, dropped {dropped}"


def render_rounds(job: str, rounds: list[dict[str, Any]], metric: str | None = None) -> str:
    keys = table_metrics(rounds, metric)
    secure = any(r["metrics"].get("secure_agg") for r in rounds)
    extra = ["secure (dropped at keys/shares/upload/reveal)"] if secure else []
    rows = [["round", "status", "clients", "samples", *keys, *extra, "rejected", "finished"]]
    for r in rounds:
        metrics = [f"{r['metrics'][k]:.4f}" if k in r["metrics"] else "-" for k in keys]
        cells = [secure_cell(r["metrics"])] if secure else []
        rows.append([str(r["round"]), r["status"], ",".join(r["clients"]) or "-", str(r["num_samples"]), *metrics,
                     *cells, str(r["rejected"]), (r["finished_at"] or "-")[:19]])
    return f"job {job}: {len(rounds)} round(s)\n" + _table(rows)


def render_round(r: dict[str, Any]) -> str:
    """One round: its outcome, then each silo's update and each silo's evaluation."""
    lines = [f"job {r['job']}, round {r['round']}: {r['status']}",
             f"started {_time(r['started_at'])}, aggregated {_time(r['aggregated_at'])}, "
             f"finished {_time(r['finished_at'])}",
             f"aggregated from {len(r['clients'])} silo(s), {r['num_samples']} samples; {r['rejected']} update(s) rejected"]
    if r["metrics"]:
        lines.append("metrics: " + ", ".join(f"{k} {_num(v, 0 if k.endswith('samples') else 4)}"
                                             for k, v in sorted(r["metrics"].items())))
    if r["checkpoint"]:
        lines.append(f"model {(r['model_digest'] or '')[:12]}, checkpoint {r['checkpoint']}")
    rows = [["silo", "update", "samples", "train_loss", "bytes", "seconds", "base", "staleness", "reason"]]
    for u in r["updates"]:
        verdict = "superseded" if u["superseded"] else "accepted" if u["accepted"] else "rejected"
        rows.append([u["silo"], verdict, str(u["num_samples"]), _num(u["train_loss"]), _bytes(u["bytes"]),
                     _num(u["train_seconds"], 1), _opt(u["base_version"], "v"), _opt(u["staleness"]), u["reason"] or ""])
    lines += ["", f"updates ({len(r['updates'])})", _table(rows) if len(rows) > 1 else "(none)"]
    evaluations = r["evaluations"]
    keys = sorted({k for e in evaluations.values() for k in e if k != "num_samples"},
                  key=lambda k: (k not in TABLE_METRICS, TABLE_METRICS.index(k) if k in TABLE_METRICS else 0, k))
    rows = [["silo", "samples", *keys]]
    rows += [[silo, str(e["num_samples"]), *(_num(e.get(k)) for k in keys)] for silo, e in sorted(evaluations.items())]
    lines += ["", f"evaluations ({len(evaluations)})", _table(rows) if len(rows) > 1 else "(none)"]
    return "\n".join(lines)


def rounds_csv(rounds: list[dict[str, Any]]) -> str:
    """One row per round: counts, then every aggregate metric any round has, then the times."""
    keys = sorted({k for r in rounds for k in r["metrics"]})
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([*CSV_FIELDS, *keys, "started_at", "finished_at"])
    for r in rounds:
        writer.writerow([r["round"], r["status"], len(r["clients"]), r["num_samples"], r["rejected"],
                         *(r["metrics"].get(k, "") for k in keys), r["started_at"] or "", r["finished_at"] or ""])
    return out.getvalue()


def _write_csv(rounds: list[dict[str, Any]], path: Path) -> None:
    text = rounds_csv(rounds)
    if str(path) == "-":
        click.echo(text, nl=False)
        return
    try:
        path.write_text(text)
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror}", hint="check the --csv path") from None
    click.echo(f"wrote {len(rounds)} round(s) to {path}", err=True)


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


def _num(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _opt(value: int | None, prefix: str = "") -> str:
    return "-" if value is None else f"{prefix}{value}"


def _bytes(n: int) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def _time(iso: str | None) -> str:
    return "-" if iso is None else iso[:19].replace("T", " ")
