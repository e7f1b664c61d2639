"""Ed25519 signatures on what a silo sends: its updates and its test results.

A silo signs the canonical JSON of its header without the ``signature`` field. The header holds
the job, run, round, silo and the payload's sha256, and the receiver checks the payload against
that digest, so one signature covers the header and the tensors. The aggregator verifies with the
silo's registered public key; this holds on a broker without ACLs, since nobody without the
silo's private key can make a header that verifies.
"""

from __future__ import annotations

import base64
import json
from typing import TypeVar

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ..errors import UpdateRejected
from .messages import TestResult, Update

Signed = TypeVar("Signed", Update, TestResult)


def signed_bytes(header: Update | TestResult) -> bytes:
    """The bytes a signature covers: every field but the signature, in a canonical order."""
    fields = header.model_dump(mode="json", exclude={"signature"})
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def sign(header: Signed, key: Ed25519PrivateKey) -> Signed:
    """The header with its ``signature`` set."""
    signature = base64.b64encode(key.sign(signed_bytes(header))).decode("ascii")
    return header.model_copy(update={"signature": signature})


def verify(header: Update | TestResult, keys: dict[str, Ed25519PublicKey]) -> None:
    """Raise ``UpdateRejected`` unless the header is signed by the registered key of its silo."""
    key = keys.get(header.silo)
    if key is None:
        raise UpdateRejected(f"no public key is registered for silo {header.silo}")
    if header.signature is None:
        raise UpdateRejected("unsigned, and this job requires signed updates")
    try:
        key.verify(base64.b64decode(header.signature, validate=True), signed_bytes(header))
    except (InvalidSignature, ValueError):
        raise UpdateRejected(f"the signature does not verify against silo {header.silo}'s public key") from None
