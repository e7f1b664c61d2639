"""What the dashboard reads from the store: the jobs, one job in full, totals for /metrics.

Read-only: every query runs in its own short session, so the dashboard never holds a lock the
aggregator waits for. The shapes are plain dicts ready for JSON; nothing secret is in the store.
"""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import func, select

from ..commands.history import TABLE_METRICS
from ..store import Store
from ..store.models import Evaluation, Job, Round, Silo, UpdateRecord
from ..store.reader import iso_utc

# Metrics drawn as curves, best first; any other metric a round carries follows in name order.
PRIMARY_METRICS = ("accuracy", "map", "map50")
# Bookkeeping numbers the aggregator records with a round, not model quality: not drawn as curves.
NOT_CURVES = {"eval_samples", "dp_delta", "krum_f"}
JOB_SETTINGS = ("task", "model", "mode", "rounds", "min_clients", "local_epochs", "batch_size", "lr", "momentum",
                "codec", "chunk_size", "signed", "mu", "seed")
_LATE = re.compile(r"^update for round (\d+) but round (\d+) is open$")


def metric_order(keys: set[str]) -> list[str]:
    """The primary metric first (accuracy or mAP), then the others the history table shows, then the rest."""
    ranked = [k for k in (*PRIMARY_METRICS, *TABLE_METRICS) if k in keys]
    return list(dict.fromkeys(ranked)) + sorted(keys - set(ranked))


def jobs_overview(store: Store) -> list[dict[str, Any]]:
    """Every job with its status, rounds done, the last completed round's metrics, start and end."""
    jobs = store.jobs()
    if not jobs:
        return []
    with store.session() as s:
        last: dict[str, dict[str, float]] = {}
        rows = s.execute(
            select(Job.name, Round.metrics).join(Round, Round.job_id == Job.id)
            .where(Round.status == "completed").order_by(Job.name, Round.number)
        ).all()
        for name, metrics in rows:
            last[name] = dict(metrics or {})
    for job in jobs:
        metrics = last.get(job["job"], {})
        keys = [k for k in metric_order(set(metrics) - NOT_CURVES)][:3]
        job["last_metrics"] = {k: metrics[k] for k in keys}
    return jobs


def job_detail(store: Store, name: str) -> dict[str, Any]:
    """One job: settings, rounds (as ``fedmq history``), curves, per-silo participation, rejections."""
    rounds = store.history(name)  # raises StoreError for an unknown job
    with store.session() as s:
        job = s.scalar(select(Job).where(Job.name == name))
        updates = s.execute(
            select(UpdateRecord, Round.number).outerjoin(Round, UpdateRecord.round_id == Round.id)
            .where(UpdateRecord.job_id == job.id).order_by(UpdateRecord.id)
        ).all()
        silos = s.scalars(select(Silo).where(Silo.job_id == job.id).order_by(Silo.name)).all()
        spec = dict(job.spec or {})
        info = {"job": job.name, "status": job.status, "created_at": iso_utc(job.created_at),
                "finished_at": iso_utc(job.finished_at)}
        stored_silos = [{"silo": r.name, "online": r.online, "last_seen": iso_utc(r.last_seen)} for r in silos]
    settings = {k: spec[k] for k in JOB_SETTINGS if k in spec}
    settings["labels"] = len(spec.get("labels") or ())
    return {
        **info,
        "settings": settings,
        "privacy": _privacy(rounds),
        "rounds": [_table_row(r) for r in rounds],
        "curves": _curves(rounds),
        "participation": _participation(rounds, updates),
        "rejections": [
            {"round": number, "claimed_round": u.claimed_round, "silo": u.silo, "reason": u.reason or "",
             "late": _is_late(u.reason), "superseded": u.superseded, "bytes": u.bytes,
             "received_at": iso_utc(u.received_at)}
            for u, number in updates if not u.accepted
        ],
        "stored_silos": stored_silos,
    }


def _table_row(r: dict[str, Any]) -> dict[str, Any]:
    return {"round": r["round"], "status": r["status"], "clients": r["clients"], "num_samples": r["num_samples"],
            "metrics": r["metrics"], "rejected": r["rejected"], "started_at": r["started_at"],
            "finished_at": r["finished_at"], "duration_s": _seconds_between(r["started_at"], r["finished_at"])}


def _curves(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One series per metric over the completed rounds; ``None`` where a round lacks it."""
    done = [r for r in rounds if r["status"] == "completed"]
    keys = metric_order({k for r in done for k in r["metrics"]} - NOT_CURVES)
    return {"rounds": [r["round"] for r in done], "metrics": keys,
            "series": {k: [r["metrics"].get(k) for r in done] for k in keys}}


def _participation(rounds: list[dict[str, Any]], updates: list[Any]) -> dict[str, Any]:
    """Per round and silo: counted, rejected, late (an update for an earlier round), evaluated."""
    cells: dict[int, dict[str, str]] = {r["round"]: {} for r in rounds}
    for r in rounds:
        for silo in r["evaluations"]:
            cells[r["round"]][silo] = "evaluated"
    for u, number in updates:
        if number is None or u.superseded or number not in cells:
            continue
        row = cells[number]
        if u.accepted:
            row[u.silo] = "counted"
        elif row.get(u.silo) != "counted":
            row[u.silo] = "late" if _is_late(u.reason) else "rejected"
    silos = sorted({s for row in cells.values() for s in row})
    return {"silos": silos, "rounds": [{"round": n, "cells": cells[n]} for n in sorted(cells)]}


def _privacy(rounds: list[dict[str, Any]]) -> dict[str, float] | None:
    spent = [r["metrics"] for r in rounds if "dp_epsilon" in r["metrics"]]
    if not spent:
        return None
    last = spent[-1]
    return {"epsilon": last["dp_epsilon"], "delta": last.get("dp_delta"), "rounds": len(spent)}


def _is_late(reason: str | None) -> bool:
    match = _LATE.match(reason or "")
    return bool(match) and int(match.group(1)) < int(match.group(2))


def reason_class(reason: str | None, silo: str) -> str:
    """A rejection reason as a Prometheus label: numbers and the silo's name taken out, so that one
    kind of rejection is one time series, not one per round."""
    text = re.sub(rf"(?<![\w.-]){re.escape(silo)}(?![\w.-])", "SILO", reason or "unknown")  # the name as a word
    return re.sub(r"\d+(\.\d+)?", "N", text)[:120]


def totals(store: Store) -> dict[str, dict[str, Any]]:
    """Per job: rounds completed, round durations, updates accepted and rejected (by reason class),
    bytes received, silos the aggregator last saw online. Superseded updates count too: they were received."""
    if not store.jobs():
        return {}
    out: dict[str, dict[str, Any]] = {}
    with store.session() as s:
        for job in s.scalars(select(Job)):
            out[job.name] = {"status": job.status, "rounds_completed": 0, "durations": [], "accepted": 0,
                             "rejected": {}, "bytes": 0, "silos_online": 0}
        names = {job.id: job.name for job in s.scalars(select(Job))}
        for job_id, started, finished in s.execute(
                select(Round.job_id, Round.started_at, Round.finished_at).where(Round.status == "completed")):
            t = out[names[job_id]]
            t["rounds_completed"] += 1
            if started and finished:
                t["durations"].append(max(0.0, (finished - started).total_seconds()))
        for job_id, silo, accepted, reason, size in s.execute(
                select(UpdateRecord.job_id, UpdateRecord.silo, UpdateRecord.accepted, UpdateRecord.reason,
                       UpdateRecord.bytes)):
            t = out[names[job_id]]
            t["bytes"] += size or 0
            if accepted:
                t["accepted"] += 1
            else:
                key = reason_class(reason, silo)
                t["rejected"][key] = t["rejected"].get(key, 0) + 1
        for job_id, n in s.execute(select(Silo.job_id, func.count(Silo.id)).where(Silo.online.is_(True))
                                   .group_by(Silo.job_id)):
            out[names[job_id]]["silos_online"] = n
    return out


def fingerprint(store: Store) -> tuple:
    """Changes whenever anything a page shows changes in the store; cheap enough to ask twice a second."""
    if not store.jobs():
        return ()
    with store.session() as s:
        jobs = tuple(s.execute(select(Job.name, Job.status).order_by(Job.id)).all())
        rounds = tuple(s.execute(select(Round.status, func.count(Round.id)).group_by(Round.status)
                                 .order_by(Round.status)).all())
        last_update = s.scalar(select(func.max(UpdateRecord.id)))
        evaluations = s.scalar(select(func.count(Evaluation.id)))
        silos = tuple(s.execute(select(Silo.job_id, Silo.name, Silo.online).order_by(Silo.id)).all())
    return jobs, rounds, last_update, evaluations, silos


def _seconds_between(start: str | None, end: str | None) -> float | None:
    from datetime import datetime

    if not start or not end:
        return None
    return round((datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds(), 1)

