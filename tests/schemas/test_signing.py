"""Ed25519 signatures on updates and results: what verifies, and every way one does not."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fedmq.errors import ProtocolError, UpdateRejected
from fedmq.schemas.framing import pack_message, unpack_message
from fedmq.schemas.messages import PayloadInfo, TestResult, Update, parse_header
from fedmq.schemas.signing import sign, signed_bytes, verify
from hypothesis import given, settings
from hypothesis import strategies as st

KEY = Ed25519PrivateKey.generate()
KEYS = {"s1": KEY.public_key()}


def update(**changes) -> Update:
    fields = dict(job="j", run_id="r1", silo="s1", round=3, base_digest="a" * 64, num_samples=10, train_loss=0.25,
                  train_seconds=1.5, payload=PayloadInfo(codec="safetensors+zstd", size=5, sha256="b" * 64))
    return Update(**{**fields, **changes})


def test_a_signed_update_verifies_after_the_wire() -> None:
    payload = b"12345"
    info = PayloadInfo(codec="safetensors+zstd", size=len(payload), sha256=hashlib.sha256(payload).hexdigest())
    signed = sign(update(payload=info), KEY)
    received = unpack_message(pack_message(signed, payload), "t")
    assert received.header == signed
    verify(received.header, KEYS)


def test_results_are_signed_the_same_way() -> None:
    result = TestResult(job="j", run_id="r1", silo="s1", round=2, model_digest="c" * 64, num_samples=4,
                        metrics={"accuracy": 0.5, "loss": 1 / 3})
    verify(parse_header(sign(result, KEY).model_dump_json().encode()), KEYS)


@pytest.mark.parametrize(("changes", "reason"), [
    ({"round": 4}, "does not verify"),
    ({"num_samples": 11}, "does not verify"),
    ({"base_digest": "d" * 64}, "does not verify"),
    ({"payload": PayloadInfo(codec="safetensors+zstd", size=5, sha256="e" * 64)}, "does not verify"),
    ({"run_id": "r2"}, "does not verify"),
])
def test_any_change_after_signing_fails(changes: dict, reason: str) -> None:
    tampered = sign(update(), KEY).model_copy(update=changes)
    with pytest.raises(UpdateRejected, match=reason):
        verify(tampered, KEYS)


def test_unsigned_unknown_and_foreign_keys_are_rejected() -> None:
    with pytest.raises(UpdateRejected, match="unsigned"):
        verify(update(), KEYS)
    with pytest.raises(UpdateRejected, match="no public key is registered for silo s2"):
        verify(sign(update(silo="s2"), KEY), KEYS)
    with pytest.raises(UpdateRejected, match="does not verify"):
        verify(sign(update(), Ed25519PrivateKey.generate()), KEYS)


def test_a_malformed_signature_is_a_protocol_error_at_parse_time() -> None:
    raw = update().model_dump(mode="json") | {"signature": "not base64 at all"}
    with pytest.raises(ProtocolError, match="signature"):
        parse_header(json.dumps(raw).encode())


@settings(max_examples=200, deadline=None, database=None)
@given(sig=st.binary(min_size=64, max_size=64))
def test_random_signatures_never_verify_and_never_crash(sig: bytes) -> None:
    forged = update().model_copy(update={"signature": base64.b64encode(sig).decode()})
    with pytest.raises(UpdateRejected):
        verify(parse_header(forged.model_dump_json().encode()), KEYS)


def test_signed_bytes_do_not_depend_on_the_signature() -> None:
    assert signed_bytes(update()) == signed_bytes(sign(update(), KEY))
