"""``fedmq history``: the store's jobs and rounds as a table or JSON."""

from __future__ import annotations

import json
from typing import Any

import click

from .errors import StoreError
from .store import Store

# The table shows these; `--json` has every metric the silos reported.
TABLE_METRICS = ("accuracy", "map", "map50", "loss", "train_loss")


def print_history(db: str, job: str | None, as_json: bool) -> None:
    store = _open(db)
    try:
        if job is None:
            jobs = store.jobs()
            if len(jobs) != 1:
                _print_jobs(jobs, as_json, db)
                return
            job = jobs[0]["job"]
        rounds = store.history(job)
    finally:
        store.close()
    if as_json:
        click.echo(json.dumps(rounds, indent=2))
    else:
        click.echo(render_rounds(job, rounds))


def _open(db: str) -> Store:
    if db.startswith("sqlite:///") and db != "sqlite:///:memory:":
        from pathlib import Path

        if not Path(db.removeprefix("sqlite:///")).exists():
            raise StoreError(f"no store at {db}", hint="run `fedmq aggregator` first, or pass the --db it used")
    return Store(db)


def _print_jobs(jobs: list[dict[str, Any]], as_json: bool, db: str) -> None:
    if as_json:
        click.echo(json.dumps(jobs, indent=2))
        return
    if not jobs:
        click.echo(f"no jobs in {db}")
        return
    rows = [["job", "status", "task", "model", "rounds", "created"]]
    rows += [[j["job"], j["status"], j["task"], j["model"], f"{j['rounds_completed']}/{j['rounds']}",
              (j["created_at"] or "")[:19]] for j in jobs]
    click.echo(_table(rows))
    click.echo("\nshow one job's rounds with: fedmq history --job NAME")


def render_rounds(job: str, rounds: list[dict[str, Any]]) -> str:
    present = {k for r in rounds for k in r["metrics"]}
    keys = [k for k in TABLE_METRICS if k in present]
    rows = [["round", "status", "clients", "samples", *keys, "rejected", "finished"]]
    for r in rounds:
        metrics = [f"{r['metrics'][k]:.4f}" if k in r["metrics"] else "-" for k in keys]
        rows.append([str(r["round"]), r["status"], ",".join(r["clients"]) or "-", str(r["num_samples"]), *metrics,
                     str(r["rejected"]), (r["finished_at"] or "-")[:19]])
    return f"job {job}: {len(rounds)} round(s)\n" + _table(rows)


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)
