"""``fedmq export``: a round's global model as a plain state dict, for inference outside fedmq.

The checkpoints the aggregator writes are exactly the silos' ``model.state_dict()``, so the file
loads with ``load_state_dict`` into the constructor ``edge_client/models.py`` uses (for
torchvision models, torchvision's own, with ``num_classes`` = the job's classes, +1 for
detection's background). ``.pt`` is ``torch.save`` of a dict of tensors (loadable with
``weights_only=True``); ``.safetensors`` also carries the job, model and labels as metadata.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from ..aggregator.checkpoints import checkpoint_path, load_checkpoint
from ..errors import ConfigError, StoreError
from ..schemas.codec import StateDict
from .history import open_existing_store

FORMATS = (".pt", ".safetensors")


def export_model(db: str, job: str, round_number: int | None, out_dir: Path, out_file: Path) -> Path:
    """Write the global model of ``round_number`` (default: the last completed round) to ``out_file``."""
    if out_file.suffix not in FORMATS:
        raise ConfigError(f"cannot export to {out_file}: unknown format {out_file.suffix or '(none)'!r}",
                          hint="name the file model.pt or model.safetensors")
    store = open_existing_store(db)
    try:
        rounds = store.history(job)
        found = store.find_job(job)
    finally:
        store.close()
    spec = found.spec  # the stored dict: only task, model, labels and num_classes are read
    number, recorded = _pick_round(job, rounds, round_number)
    source = _find_checkpoint(job, number, out_dir, recorded)
    state = load_checkpoint(source)
    _write(state, out_file, job, spec, number)
    classes = (spec.get("num_classes") or len(spec.get("labels") or ())) + (spec.get("task") == "detection")
    click.echo(f"wrote the round {number} model of job {job} ({spec.get('task')}, {spec.get('model')}, "
               f"num_classes={classes}, {len(state)} tensors) to {out_file}")
    return out_file


def _pick_round(job: str, rounds: list[dict], wanted: int | None) -> tuple[int, str | None]:
    """(round number, the checkpoint path the store recorded for it)."""
    if wanted == 0:
        return 0, None  # the initial model: checkpointed, but no round row
    if wanted is None:
        completed = [r for r in rounds if r["status"] == "completed"]
        if not completed:
            raise StoreError(f"job {job!r} has no completed round yet",
                             hint="wait for round 1, or pass --round 0 for the initial model")
        chosen = completed[-1]
    else:
        chosen = next((r for r in rounds if r["round"] == wanted), None)
        if chosen is None:
            span = f"rounds {rounds[0]['round']}-{rounds[-1]['round']}" if rounds else "no rounds yet"
            raise StoreError(f"job {job!r} has no round {wanted} ({span})",
                             hint="run `fedmq history --job NAME` to list its rounds")
        if chosen["checkpoint"] is None:
            raise StoreError(f"round {wanted} of job {job!r} was never aggregated ({chosen['status']}): it has no model",
                             hint="export a completed round; `fedmq history` lists them")
    return chosen["round"], chosen["checkpoint"]


def _find_checkpoint(job: str, number: int, out_dir: Path, recorded: str | None) -> Path:
    """The checkpoint under ``--out-dir``, else where the store says the aggregator wrote it."""
    expected = checkpoint_path(out_dir, job, number)
    for candidate in (expected, Path(recorded) if recorded else None):
        if candidate is not None and candidate.is_file():
            return candidate
    also = f" (the store recorded {recorded})" if recorded and Path(recorded) != expected else ""
    raise StoreError(f"the checkpoint of round {number} of job {job!r} is missing: expected {expected}{also}",
                     hint="pass --out-dir the aggregator's --out folder (run from the folder it ran in, "
                          "if that was relative)")


def _write(state: StateDict, out_file: Path, job: str, spec: dict[str, Any], number: int) -> None:
    plain = {name: tensor.contiguous() for name, tensor in state.items()}
    try:
        out_file.parent.mkdir(parents=True, exist_ok=True)
        if out_file.suffix == ".pt":
            import torch

            torch.save(plain, out_file)
        else:
            from safetensors.torch import save_file

            metadata = {"fedmq.job": job, "fedmq.round": str(number), "fedmq.task": str(spec.get("task")),
                        "fedmq.model": str(spec.get("model")), "fedmq.labels": json.dumps(spec.get("labels") or [])}
            save_file(plain, str(out_file), metadata=metadata)
    except OSError as exc:
        raise ConfigError(f"cannot write {out_file}: {exc.strerror or exc}", hint="check the --out path") from None
