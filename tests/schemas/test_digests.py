"""Payload digests: BLAKE3 (sent since issue 17) and SHA-256 (sent before, still accepted).

The digest's field names its algorithm (``PayloadInfo.blake3`` or ``PayloadInfo.sha256``), exactly
one is present, the other is left out of the JSON, so a header of the earlier version parses,
serialises and verifies its signature exactly as before.
"""

from __future__ import annotations

import hashlib
import json

import pytest
from blake3 import blake3
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fedmq.errors import ProtocolError
from fedmq.schemas.codec import payload_digest
from fedmq.schemas.framing import Reassembler, encode_chunks, pack_message, unpack_message
from fedmq.schemas.messages import ModelSync, PayloadInfo, Update, dump_header, parse_header
from fedmq.schemas.pieces import Pieces
from fedmq.schemas.signing import sign, signed_bytes, verify

PAYLOAD = bytes(range(256)) * 4000  # about 1 MB: BLAKE3 hashes it on several threads
KEY = Ed25519PrivateKey.generate()


def update(info: PayloadInfo) -> Update:
    return Update(job="j", run_id="r1", silo="s1", round=3, base_digest="a" * 64, num_samples=10, train_loss=0.25,
                  train_seconds=1.5, payload=info)


def test_fedmq_sends_blake3() -> None:
    info = PayloadInfo.of("raw", PAYLOAD)
    assert info.blake3 == blake3(PAYLOAD).hexdigest() == payload_digest(PAYLOAD) == info.digest
    assert info.sha256 is None and info.algorithm == "blake3"
    assert json.loads(dump_header(update(info)))["payload"] == {"codec": "raw", "size": len(PAYLOAD), "blake3": info.blake3}
    assert payload_digest(Pieces([PAYLOAD[:1000], PAYLOAD[1000:]])) == info.blake3


def test_a_header_of_the_earlier_version_reads_and_writes_as_before() -> None:
    """As fedmq before issue 17 wrote it: ``sha256``, no ``blake3`` (not even null)."""
    digest = hashlib.sha256(PAYLOAD).hexdigest()
    old = json.dumps({"protocol": 1, "job": "j", "run_id": "r1", "type": "update", "silo": "s1", "round": 3,
                      "base_digest": "a" * 64, "num_samples": 10, "train_loss": 0.25, "train_seconds": 1.5,
                      "payload": {"codec": "shuffle+zstd", "size": len(PAYLOAD), "sha256": digest},
                      "signature": None}).encode()
    header = parse_header(old)
    assert header.payload.digest == digest and header.payload.algorithm == "sha256"
    assert "blake3" not in json.loads(dump_header(header))["payload"]
    envelope = unpack_message(pack_message(header, PAYLOAD))
    assert bytes(envelope.payload) == PAYLOAD


def test_a_signature_made_over_the_earlier_form_still_verifies() -> None:
    """The earlier version signed the canonical JSON with ``sha256`` alone in ``payload``: the same bytes now."""
    info = PayloadInfo(codec="shuffle+zstd", size=len(PAYLOAD), sha256=hashlib.sha256(PAYLOAD).hexdigest())
    header = update(info)
    fields = json.loads(signed_bytes(header))
    assert fields["payload"] == {"codec": "shuffle+zstd", "size": len(PAYLOAD), "sha256": info.sha256}
    verify(sign(header, KEY), {"s1": KEY.public_key()})


@pytest.mark.parametrize("algorithm", ["blake3", "sha256"])
def test_the_signature_covers_the_digest_and_its_algorithm(algorithm: str) -> None:
    info = PayloadInfo(codec="raw", size=len(PAYLOAD), **{algorithm: "c" * 64})
    signed = sign(update(info), KEY)
    other = "sha256" if algorithm == "blake3" else "blake3"
    swapped = signed.model_copy(update={"payload": PayloadInfo(codec="raw", size=len(PAYLOAD), **{other: "c" * 64})})
    with pytest.raises(Exception, match="does not verify"):
        verify(swapped, {"s1": KEY.public_key()})


@pytest.mark.parametrize("fields", [
    {},  # neither
    {"sha256": "a" * 64, "blake3": "a" * 64},  # both
    {"blake3": "A" * 64},  # the pattern: lowercase hex
    {"blake3": "a" * 63},
    {"blake3": "a" * 128},  # BLAKE3's longer outputs are not a digest here
    {"sha256": None},
])
def test_exactly_one_well_formed_digest(fields: dict) -> None:
    raw = json.dumps({"protocol": 1, "job": "j", "run_id": "r", "type": "model", "version": 1, "train_round": 1,
                      "payload": {"codec": "raw", "size": 3, **fields}}).encode()
    with pytest.raises(ProtocolError):
        parse_header(raw)


@pytest.mark.parametrize("algorithm", ["blake3", "sha256"])
@pytest.mark.parametrize("chunk_size", [1024, 64 * 1024, 4 * 1024 * 1024])
def test_reassembled_payloads_are_checked_with_the_algorithm_their_header_names(algorithm: str, chunk_size: int) -> None:
    digest = blake3(PAYLOAD).hexdigest() if algorithm == "blake3" else hashlib.sha256(PAYLOAD).hexdigest()
    header = ModelSync(job="j", run_id="r", version=1, train_round=1,
                       payload=PayloadInfo(codec="raw", size=len(PAYLOAD), **{algorithm: digest}))
    for tampered in (False, True):
        payload = bytearray(PAYLOAD)
        if tampered:
            payload[len(payload) // 2] ^= 1
        reassembler = Reassembler(1 << 24, check_headers=True)
        whole = None
        for chunk in encode_chunks(header, bytes(payload), chunk_size):
            whole = reassembler.add("t", chunk)
        if tampered:
            with pytest.raises(ProtocolError, match=f"payload {algorithm} does not match"):
                unpack_message(whole, "t")
        else:
            envelope = unpack_message(whole, "t")
            assert bytes(envelope.payload) == PAYLOAD
            if isinstance(whole, Pieces):  # hashed as the chunks arrived: not read again
                assert (0, algorithm) in envelope.payload._digests
