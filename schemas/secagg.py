"""Secure aggregation's part of the wire contract: its messages, and the bytes its signatures cover.

One round of secure aggregation (``--secure-agg``, Bonawitz et al., CCS 2017), as messages:

====  ============================  =============================================================
step  message                       from -> to (topic, ``Topics``)
====  ============================  =============================================================
0     ``SecAggSetup``               aggregator -> silos (``secagg``): who takes part, threshold,
                                    clip norm, weight cap, ring and fixed-point scale
1     ``SecAggKeys``                silo -> aggregator (``secagg_from``): two fresh X25519 public
                                    keys and a commitment to its self-mask seed, signed with its
                                    long-term Ed25519 key (``fedmq keys``)
1'    ``SecAggKeyList``             aggregator -> silos (``secagg``): every signed key message
2     ``SecAggShares``              silo -> aggregator: for each other silo, its Shamir shares of
                                    the self-mask seed and of the mask private key, encrypted end
                                    to end (ChaCha20-Poly1305 under an X25519 key the aggregator
                                    does not have)
2'    ``SecAggInbox``               aggregator -> one silo (``secagg_inbox``): the shares for it
3     ``Update`` (codec ``secagg``) silo -> aggregator on its update topic: the masked vector
4     ``SecAggUnmask``              aggregator -> silos: who uploaded (survivors), who did not
4'    ``SecAggReveal``              silo -> aggregator: self-mask shares of the survivors and
                                    mask-key shares of the dropped; never both for one silo
-     ``SecAggAbort``               aggregator -> silos: the round cannot be unmasked; forget it
====  ============================  =============================================================

This module imports nothing of ``messages`` (``messages`` imports this one, to parse these headers
with the rest): the two header fields they share are spelled alike and a test checks it.
"""

from __future__ import annotations

import json
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

SECAGG_CODEC = "secagg-u32"  # the payload codec of a masked update: little-endian uint32 ring elements, raw
RING_BITS = 32
MAX_PARTIES = 1000
# A sealed share (silo to silo, through the aggregator): a nonce, the plaintext (the sender's index, then
# for each of its two secrets a 66-byte share value of GF(2^521 - 1) and a 64-byte signature), the AEAD tag.
SHARE_VALUE_BYTES = 66
SHARE_SIGNATURE_BYTES = 64
PLAIN_SHARE_BYTES = 2 + 2 * (SHARE_VALUE_BYTES + SHARE_SIGNATURE_BYTES)
SEALED_SHARE_BYTES = 12 + PLAIN_SHARE_BYTES + 16

_Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")]
_Signature = Annotated[str, Field(pattern=r"^[A-Za-z0-9+/]{86}==$")]
Key32 = Annotated[str, Field(pattern=r"^[A-Za-z0-9+/]{43}=$")]  # base64 of 32 bytes (an X25519 public key)
Blob = Annotated[str, Field(pattern=r"^[A-Za-z0-9+/]*={0,2}$", max_length=4096)]  # base64 of one share's ciphertext
Round = Annotated[int, Field(ge=1)]
Silos = Annotated[list[_Name], Field(min_length=1, max_length=MAX_PARTIES)]


class _SecAggHeader(BaseModel):
    """The fields of ``messages._RunHeader``, spelled alike (see the module's docstring)."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    protocol: Literal[1] = 1
    job: _Name
    run_id: Annotated[str, Field(min_length=1, max_length=64)]
    round: Round


class SecAggSetup(_SecAggHeader):
    """Step 0. ``silos`` are asked to take part; the round is unmasked only with ``threshold`` of them.
    Each silo clips its update's float delta to L2 norm ``clip_norm``, weights it by
    ``min(num_samples, weight_cap) / weight_cap``, multiplies by ``scale`` and rounds into Z_2^32;
    ``length`` is the vector's size (every float element of the model, then the weight)."""

    type: Literal["secagg_setup"] = "secagg_setup"
    silos: Silos
    threshold: Annotated[int, Field(ge=2)]
    clip_norm: Annotated[float, Field(gt=0, allow_inf_nan=False)]
    weight_cap: Annotated[int, Field(ge=1, le=2**24)]
    scale: Annotated[float, Field(gt=0, allow_inf_nan=False)]
    length: Annotated[int, Field(ge=2, le=2**34)]
    ring_bits: Literal[32] = RING_BITS


class SecAggKeys(_SecAggHeader):
    """Step 1. ``cipher_pk`` encrypts the shares sent to this silo; ``mask_pk`` agrees the pairwise mask
    seeds; ``seed_commit`` is sha256 of the self-mask seed. Signed (``keys_signed_bytes``) with the
    silo's Ed25519 key, so the aggregator can neither forge nor swap them."""

    type: Literal["secagg_keys"] = "secagg_keys"
    silo: _Name
    cipher_pk: Key32
    mask_pk: Key32
    seed_commit: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    signature: _Signature


class SecAggKeyList(_SecAggHeader):
    """Step 1'. The signed keys of every silo that sent valid ones (U1); each silo checks every signature."""

    type: Literal["secagg_key_list"] = "secagg_key_list"
    keys: Annotated[list[SecAggKeys], Field(min_length=1, max_length=MAX_PARTIES)]


class SecAggShares(_SecAggHeader):
    """Step 2. ``shares[v]``: the ciphertext (``masking.seal_shares``) of this silo's shares for silo v,
    one for every other silo of the key list."""

    type: Literal["secagg_shares"] = "secagg_shares"
    silo: _Name
    shares: Annotated[dict[_Name, Blob], Field(max_length=MAX_PARTIES)]


class SecAggInbox(_SecAggHeader):
    """Step 2'. The shares for ``silo`` from every silo whose shares were taken (U2 is their dealers and ``silo``)."""

    type: Literal["secagg_inbox"] = "secagg_inbox"
    silo: _Name
    shares: Annotated[dict[_Name, Blob], Field(max_length=MAX_PARTIES)]


class SecAggUnmask(_SecAggHeader):
    """Step 4. ``survivors`` uploaded a masked vector (U3); ``dropped`` took part in step 2 but did not."""

    type: Literal["secagg_unmask"] = "secagg_unmask"
    survivors: Silos
    dropped: Annotated[list[_Name], Field(max_length=MAX_PARTIES)]


class Share(BaseModel):
    """One Shamir share as its holder reveals it: the point ``x`` and value ``y`` (hex), and the dealer's
    Ed25519 signature on it (``share_signed_bytes``), so a holder cannot alter it unnoticed."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    x: Annotated[int, Field(ge=1, le=MAX_PARTIES)]
    y: Annotated[str, Field(pattern=r"^[0-9a-f]{1,140}$")]
    signature: _Signature


class SecAggReveal(_SecAggHeader):
    """Step 4'. ``seed_shares``: shares of the self-mask seed of survivors; ``key_shares``: shares of the
    mask private key of dropped silos. ``unreadable``: dealers whose shares this silo could not decrypt."""

    type: Literal["secagg_reveal"] = "secagg_reveal"
    silo: _Name
    seed_shares: Annotated[dict[_Name, Share], Field(max_length=MAX_PARTIES)]
    key_shares: Annotated[dict[_Name, Share], Field(max_length=MAX_PARTIES)]
    unreadable: Annotated[list[_Name], Field(max_length=MAX_PARTIES)] = Field(default_factory=list)


class SecAggAbort(_SecAggHeader):
    """The round cannot be unmasked (``reason``): the silos forget its secrets and reveal nothing more for it."""

    type: Literal["secagg_abort"] = "secagg_abort"
    reason: Annotated[str, Field(min_length=1, max_length=1000)]


SECAGG_MESSAGES = (SecAggSetup, SecAggKeys, SecAggKeyList, SecAggShares, SecAggInbox, SecAggUnmask, SecAggReveal,
                   SecAggAbort)
SecAggMessage = (SecAggSetup | SecAggKeys | SecAggKeyList | SecAggShares | SecAggInbox | SecAggUnmask | SecAggReveal
                 | SecAggAbort)


def _canonical(fields: dict) -> bytes:
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def keys_signed_bytes(keys: SecAggKeys) -> bytes:
    """What a ``SecAggKeys`` signature covers: every field but the signature."""
    return b"fedmq-secagg-keys\0" + _canonical(keys.model_dump(mode="json", exclude={"signature"}))


def share_signed_bytes(job: str, run_id: str, round_number: int, dealer: str, holder: str, kind: str, x: int,
                       y: int) -> bytes:
    """What a share's signature covers: whose secret (``kind``: seed or key), dealt to whom, in which round."""
    return b"fedmq-secagg-share\0" + _canonical({"job": job, "run_id": run_id, "round": round_number, "dealer": dealer,
                                                 "holder": holder, "kind": kind, "x": x, "y": format(y, "x")})
