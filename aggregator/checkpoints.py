"""Global model files: one safetensors checkpoint per round, and the user's initial weights."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..errors import ConfigError, StoreError
from ..schemas.codec import StateDict


def checkpoint_path(out_dir: Path, job: str, version: int) -> Path:
    return out_dir / job / f"round-{version:04d}.safetensors"


def save_checkpoint(state: StateDict, path: Path) -> Path:
    """Write atomically, so a crash never leaves a half-written checkpoint under the final name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp))
    tmp.replace(path)
    return path


def load_checkpoint(path: Path) -> StateDict:
    try:
        return load_file(str(path))
    except (OSError, SafetensorError) as exc:
        raise StoreError(f"cannot read the checkpoint {path}: {exc}",
                         hint="restore the file, or start the job afresh under another --job name") from None


def load_weights_file(path: Path) -> StateDict:
    """A state dict from ``.safetensors`` or a torch file, loaded with ``weights_only=True``
    (never a pickle that can run code). A ``{"state_dict": ...}`` or ``{"model": ...}`` wrapper is unwrapped."""
    if not path.is_file():
        raise ConfigError(f"initial weights file {path} does not exist", hint="check the --init-weights path")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as exc:
            raise ConfigError(f"{path} is not a readable safetensors file: {exc}") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad or unsafe file
        raise ConfigError(f"cannot load {path} as a weights-only torch state dict: {exc}",
                          hint="save it with torch.save(model.state_dict(), path) or as .safetensors") from None
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        raise ConfigError(f"{path} does not hold a state dict of named tensors")
    return dict(obj)
