"""Initial weights and checkpoints are loaded without ever running a pickle."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from fedmq.aggregator.checkpoints import checkpoint_path, load_checkpoint, load_weights_file, save_checkpoint
from fedmq.errors import ConfigError, StoreError
from safetensors.torch import save_file

STATE = {"w": torch.arange(6.0).reshape(2, 3), "n": torch.tensor(4)}


def test_safetensors_and_torch_state_dicts_load(tmp_path: Path) -> None:
    save_file(STATE, str(tmp_path / "a.safetensors"))
    torch.save(STATE, tmp_path / "b.pt")
    torch.save({"state_dict": STATE, "epoch": 3}, tmp_path / "c.pth")
    for name in ("a.safetensors", "b.pt", "c.pth"):
        loaded = load_weights_file(tmp_path / name)
        assert set(loaded) == {"w", "n"} and torch.equal(loaded["w"], STATE["w"])


class _Boom:
    def __reduce__(self):
        return (Path.touch, (Path("/tmp/fedmq-pickle-ran"),))


def test_a_pickle_that_runs_code_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = Path("/tmp/fedmq-pickle-ran")
    marker.unlink(missing_ok=True)
    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"w": _Boom()}, f)
    with pytest.raises(ConfigError, match="weights-only"):
        load_weights_file(tmp_path / "evil.pt")
    assert not marker.exists()


def test_bad_weight_files_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_weights_file(tmp_path / "missing.pt")
    (tmp_path / "bad.safetensors").write_bytes(b"nonsense")
    with pytest.raises(ConfigError, match="not a readable safetensors"):
        load_weights_file(tmp_path / "bad.safetensors")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(ConfigError, match="state dict of named tensors"):
        load_weights_file(tmp_path / "list.pt")


def test_checkpoints_round_trip_atomically(tmp_path: Path) -> None:
    path = save_checkpoint(STATE, checkpoint_path(tmp_path, "job", 3))
    assert path.name == "round-0003.safetensors" and not list(path.parent.glob("*.tmp"))
    assert torch.equal(load_checkpoint(path)["n"], STATE["n"])
    path.write_bytes(b"truncated")
    with pytest.raises(StoreError, match="cannot read the checkpoint"):
        load_checkpoint(path)
