"""Containers written by an earlier fedmq still decode, bit for bit.

``fixtures/*.v1.bin`` were written by container version 1 (a zstd frame around ``FMQT`` | index |
shuffled streams), at commit 312f065, by ``fixtures/make_v1.py``; ``*.safetensors`` hold what they
must decode to. A silo or an aggregator of that version may still send them, and checkpoints or
payloads kept on disk outlive the code that wrote them.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from fedmq.schemas.codec import Base, decode_state
from safetensors.torch import load_file

FIXTURES = Path(__file__).resolve().parent / "fixtures"
MANIFEST = json.loads((FIXTURES / "manifest.json").read_text())
ZSTD_FRAME = b"\x28\xb5\x2f\xfd"


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def assert_bit_exact(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert sorted(got) == sorted(want)
    for name in want:
        assert got[name].dtype == want[name].dtype, name
        assert got[name].shape == want[name].shape, name
        assert got[name].reshape(-1).view(torch.uint8).equal(want[name].reshape(-1).view(torch.uint8)), name


@pytest.mark.parametrize("codec", ["shuffle+zstd", "delta-fp16", "delta-int8", "delta-topk"])
def test_the_fixtures_are_the_version_1_bytes(codec: str) -> None:
    payload = fixture(f"{codec.replace('+', '_').replace('-', '_')}.v1.bin")
    assert hashlib.sha256(payload).hexdigest() == MANIFEST[codec]
    assert payload[:4] == ZSTD_FRAME  # version 1: one zstd frame; version 2 starts with its own magic


def test_a_version_1_lossless_container_decodes_bit_exactly() -> None:
    state = load_file(FIXTURES / "state.safetensors")
    got = decode_state(fixture("shuffle_zstd.v1.bin"), "shuffle+zstd", 1 << 30)
    assert_bit_exact(got, state)
    for tensor in got.values():  # writable tensors of their own, as from any payload
        assert tensor.is_contiguous()


@pytest.mark.parametrize("codec", ["delta-fp16", "delta-int8", "delta-topk"])
def test_a_version_1_delta_container_decodes_bit_exactly(codec: str) -> None:
    base = Base(load_file(FIXTURES / "state.safetensors"), MANIFEST["base_digest"])
    name = codec.replace("-", "_")
    got = decode_state(fixture(f"{name}.v1.bin"), codec, 1 << 30, base=base)
    assert_bit_exact(got, load_file(FIXTURES / f"{name}.decoded.safetensors"))
