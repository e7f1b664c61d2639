"""A silo's side of secure aggregation (``--secure-agg``; the protocol is in ``schemas/secagg.py``).

``SecureSilo`` is the protocol, pure (no broker): it answers each step's message with the next one,
and turns the silo's trained update into a masked vector once it knows the round's other silos.
``SecureUploads`` is the little I/O around it that ``silo.py`` calls: it publishes what the protocol
answers, and sends the masked vector through the normal update path (chunked, on the update topic).

What a silo guarantees whatever the aggregator asks: its key messages are signed with its long-term
key and it checks every other silo's signature; it answers one unmask request per round, and only
one that names each silo either a survivor or dropped, with at least the threshold of survivors, so
it never reveals both the self-mask seed and the mask key of any silo.
"""

from __future__ import annotations

import base64
import logging
import secrets
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ..errors import ProtocolError
from ..schemas import masking as mk
from ..schemas.secagg import (
    PLAIN_SHARE_BYTES,
    SECAGG_CODEC,
    SHARE_SIGNATURE_BYTES,
    SHARE_VALUE_BYTES,
    SecAggAbort,
    SecAggInbox,
    SecAggKeyList,
    SecAggKeys,
    SecAggReveal,
    SecAggSetup,
    SecAggShares,
    SecAggUnmask,
    Share,
    keys_signed_bytes,
    share_signed_bytes,
)

log = logging.getLogger("fedmq.client")

_Y = SHARE_VALUE_BYTES
_SIG = SHARE_SIGNATURE_BYTES
KEPT_ROUNDS = 2


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


def share_context(job: str, run_id: str, round_number: int, dealer: str, holder: str) -> bytes:
    return f"fedmq-secagg\0{job}\0{run_id}\0{round_number}\0{dealer}\0{holder}".encode()


def delta_vector(weights: dict[str, Any], base: dict[str, Any]) -> np.ndarray:
    """The float tensors' change from ``base``, in state-dict order, flattened (float64). Integer buffers
    (num_batches_tracked) are left out: the aggregator keeps the global model's."""
    floats = [(name, tensor) for name, tensor in base.items() if tensor.is_floating_point()]
    out = np.empty(sum(t.numel() for _, t in floats), dtype=np.float64)
    offset = 0
    for name, tensor in floats:
        size = tensor.numel()
        np.subtract(weights[name].detach().reshape(-1).numpy(), tensor.reshape(-1).numpy(), out=out[offset:offset + size],
                    dtype=np.float64)
        offset += size
    return out


@dataclass
class _Round:
    setup: SecAggSetup
    run_id: str
    cipher_sk: bytes
    mask_sk: bytes
    seed: bytes
    peers: dict[str, SecAggKeys] = field(default_factory=dict)  # U1, verified
    points: dict[str, int] = field(default_factory=dict)  # silo -> its share point x
    held: dict[str, tuple[Share, Share]] = field(default_factory=dict)  # dealer -> (seed share, key share) for me
    unreadable: list[str] = field(default_factory=list)
    members: list[str] | None = None  # U2, once the inbox came
    vector: np.ndarray | None = None  # my quantised update (masked once ``masked_with`` is set)
    masked_with: set[str] | None = None  # the silos whose pairwise masks ``vector`` holds (U1, before U2 is known)
    uploaded: bool = False
    revealed: bool = False


class SecureSilo:
    """The protocol of one silo, over the rounds of one run."""

    def __init__(self, job: str, silo: str, signing_key: Ed25519PrivateKey, peer_keys: dict[str, Ed25519PublicKey]):
        self.job = job
        self.silo = silo
        self.key = signing_key
        self.peer_keys = peer_keys
        self.rounds: dict[int, _Round] = {}

    def _round(self, number: int, run_id: str) -> _Round:
        state = self.rounds.get(number)
        if state is None or state.run_id != run_id:
            raise ProtocolError(f"secure aggregation: no setup for round {number}")
        return state

    # step 1
    def on_setup(self, setup: SecAggSetup) -> SecAggKeys | None:
        if self.silo not in setup.silos:
            return None
        if setup.threshold > len(setup.silos):
            raise ProtocolError(f"secure aggregation: a threshold of {setup.threshold} with {len(setup.silos)} silos")
        cipher, mask = mk.new_private_key(), mk.new_private_key()
        state = _Round(setup=setup, run_id=setup.run_id, cipher_sk=mk.private_bytes(cipher),
                       mask_sk=mk.private_bytes(mask), seed=secrets.token_bytes(32))
        self.rounds[setup.round] = state
        for old in sorted(self.rounds)[:-KEPT_ROUNDS]:
            del self.rounds[old]
        unsigned = SecAggKeys(job=self.job, run_id=setup.run_id, round=setup.round, silo=self.silo,
                              cipher_pk=b64(mk.public_bytes(cipher)), mask_pk=b64(mk.public_bytes(mask)),
                              seed_commit=mk.commit(state.seed), signature="A" * 86 + "==")
        signature = b64(self.key.sign(keys_signed_bytes(unsigned)))
        return unsigned.model_copy(update={"signature": signature})

    # step 2
    def on_key_list(self, key_list: SecAggKeyList) -> SecAggShares:
        state = self._round(key_list.round, key_list.run_id)
        setup = state.setup
        peers = {}
        for keys in key_list.keys:
            if keys.silo in peers or keys.silo not in setup.silos or keys.round != setup.round \
                    or keys.run_id != setup.run_id or keys.job != self.job:
                raise ProtocolError(f"secure aggregation: the key list of round {setup.round} is inconsistent")
            public = self.peer_keys.get(keys.silo)
            if public is None:
                raise ProtocolError(f"secure aggregation: no public key of silo {keys.silo} to check its round keys")
            try:
                public.verify(unb64(keys.signature), keys_signed_bytes(keys))
            except (InvalidSignature, ValueError):
                raise ProtocolError(f"secure aggregation: the round keys of {keys.silo} are not signed by it") from None
            peers[keys.silo] = keys
        mine = peers.get(self.silo)
        if mine is None or mine.mask_pk != b64(mk.public_of(state.mask_sk)):
            raise ProtocolError("secure aggregation: the key list does not hold this silo's own keys")
        if len(peers) < setup.threshold:
            raise ProtocolError(f"secure aggregation: {len(peers)} silos sent keys, fewer than the threshold")
        if len({k.mask_pk for k in peers.values()}) != len(peers) or len({k.cipher_pk for k in peers.values()}) != len(peers):
            raise ProtocolError("secure aggregation: two silos share a key")
        state.peers = peers
        state.points = {silo: i + 1 for i, silo in enumerate(sorted(peers))}
        seed_shares = mk.split(state.seed, setup.threshold, state.points.values())
        key_shares = mk.split(state.mask_sk, setup.threshold, state.points.values())
        sealed = {}
        for holder, x in state.points.items():
            seed_share = self._signed_share(state, holder, "seed", x, seed_shares[x])
            key_share = self._signed_share(state, holder, "key", x, key_shares[x])
            if holder == self.silo:
                state.held[self.silo] = (seed_share, key_share)
                continue
            channel = mk.agree(state.cipher_sk, unb64(peers[holder].cipher_pk), "channel")
            sealed[holder] = b64(mk.seal(channel, _pack(seed_share, key_share),
                                         share_context(self.job, setup.run_id, setup.round, self.silo, holder)))
        return SecAggShares(job=self.job, run_id=setup.run_id, round=setup.round, silo=self.silo, shares=sealed)

    def _signed_share(self, state: _Round, holder: str, kind: str, x: int, y: int) -> Share:
        signed = share_signed_bytes(self.job, state.run_id, state.setup.round, self.silo, holder, kind, x, y)
        return Share(x=x, y=format(y, "x"), signature=b64(self.key.sign(signed)))

    def on_inbox(self, inbox: SecAggInbox) -> np.ndarray | None:
        """Step 2': keep the shares dealt to this silo; the masked vector if the update is ready too."""
        state = self._round(inbox.round, inbox.run_id)
        if inbox.silo != self.silo or not state.peers or state.members is not None:
            return None
        dealers = set(inbox.shares) - {self.silo}
        if not dealers <= set(state.peers) or len(dealers) + 1 < state.setup.threshold:
            raise ProtocolError("secure aggregation: the inbox names silos outside the key list, or too few")
        for dealer in sorted(dealers):
            try:
                channel = mk.agree(state.cipher_sk, unb64(state.peers[dealer].cipher_pk), "channel")
                plain = mk.unseal(channel, unb64(inbox.shares[dealer]),
                                  share_context(self.job, state.run_id, state.setup.round, dealer, self.silo))
                state.held[dealer] = _unpack(plain, state.points[self.silo])
            except (mk.MaskingError, ValueError) as exc:
                log.warning("round %d: the shares from %s do not open (%s); they are reported", state.setup.round,
                            dealer, exc)
                state.unreadable.append(dealer)
        state.members = sorted(dealers | {self.silo})
        return self._masked(state)

    # step 3
    def trained(self, round_number: int, run_id: str, delta: np.ndarray, num_samples: int, *,
                consume: bool = False) -> np.ndarray | None:
        """The round's update (its float delta): the masked vector if the inbox came, else None (later).
        With ``consume`` the caller gives ``delta`` (float64) up: it is quantised in place."""
        state = self._round(round_number, run_id)
        setup = state.setup
        if len(delta) + 1 != setup.length:
            raise ProtocolError(f"secure aggregation: the update has {len(delta)} elements, the round "
                                f"{setup.length - 1}")
        state.vector = mk.quantise(delta, num_samples, clip_norm=setup.clip_norm, weight_cap=setup.weight_cap,
                                   scale=setup.scale, consume=consume)
        return self._masked(state)

    def premask(self, round_number: int, run_id: str) -> None:
        """Add the masks for every silo of the key list now (the update and the keys are known), while the
        aggregator collects the others' shares; the inbox then only takes away those of silos it lacks."""
        state = self._round(round_number, run_id)
        if state.vector is None or not state.peers or state.masked_with is not None:
            return
        pairwise = [(self._pair_seed(state, other), mk.pair_sign(self.silo, other))
                    for other in state.peers if other != self.silo]
        state.vector = mk.add_masks(state.vector, state.seed, pairwise, consume=True)
        state.masked_with = set(state.peers) - {self.silo}

    def _pair_seed(self, state: _Round, other: str) -> bytes:
        return mk.agree(state.mask_sk, unb64(state.peers[other].mask_pk), "mask")

    def _masked(self, state: _Round) -> np.ndarray | None:
        if state.vector is None or state.members is None or state.uploaded:
            return None
        self.premask(state.setup.round, state.run_id)
        for gone in sorted(state.masked_with - set(state.members)):  # in the key list, but its shares never came
            mk.add_prg(state.vector, self._pair_seed(state, gone), -mk.pair_sign(self.silo, gone))
        state.uploaded = True
        masked, state.vector = state.vector, None  # nothing of the update is kept unmasked
        return masked

    # step 4
    def on_unmask(self, unmask: SecAggUnmask) -> SecAggReveal | None:
        state = self._round(unmask.round, unmask.run_id)
        if state.revealed or not state.uploaded or self.silo not in unmask.survivors:
            return None
        survivors, dropped = set(unmask.survivors), set(unmask.dropped)
        if survivors & dropped or not (survivors | dropped) <= set(state.members or ()) \
                or len(survivors) < state.setup.threshold:
            raise ProtocolError("secure aggregation: an unmask request that would reveal too much; refused")
        state.revealed = True  # one answer per round, whatever is asked next
        seed_shares = {s: state.held[s][0] for s in survivors if s in state.held}
        key_shares = {d: state.held[d][1] for d in dropped if d in state.held}
        return SecAggReveal(job=self.job, run_id=state.run_id, round=state.setup.round, silo=self.silo,
                            seed_shares=seed_shares, key_shares=key_shares, unreadable=sorted(state.unreadable))

    def on_abort(self, abort: SecAggAbort) -> None:
        self.rounds.pop(abort.round, None)


def _pack(seed_share: Share, key_share: Share) -> bytes:
    out = seed_share.x.to_bytes(2, "big")
    for share in (seed_share, key_share):
        out += int(share.y, 16).to_bytes(_Y, "big") + unb64(share.signature)
    return out


def _unpack(plain: bytes, x_expected: int) -> tuple[Share, Share]:
    if len(plain) != PLAIN_SHARE_BYTES:
        raise ValueError("a share of the wrong size")
    x = int.from_bytes(plain[:2], "big")
    if x != x_expected:
        raise ValueError("a share for another point")
    shares = []
    for offset in (2, 2 + _Y + _SIG):
        y = int.from_bytes(plain[offset:offset + _Y], "big")
        shares.append(Share(x=x, y=format(y, "x"), signature=b64(plain[offset + _Y:offset + _Y + _SIG])))
    return shares[0], shares[1]


class SecureUploads:
    """The I/O of a silo's secure aggregation: what ``silo.py`` calls (see its two hooks)."""

    def __init__(self, silo: Any) -> None:  # the SiloClient
        from ..broker.keys import load_public_keys

        if silo.key is None:
            raise ProtocolError("secure aggregation needs this silo's signing key (--signing-key)")
        self.client = silo
        peers = load_public_keys(silo.cfg.signing_key.parent)  # the folder `fedmq keys` made holds every silo's .pub
        self.protocol = SecureSilo(silo.cfg.job, silo.cfg.silo, silo.key, peers)
        self.pending: dict[int, dict[str, Any]] = {}  # round -> the trained update waiting for its setup or inbox

    def handle(self, state: Any, header: Any) -> None:
        p, topics, conn = self.protocol, self.client.topics, self.client.conn
        up = topics.secagg_from(self.client.cfg.silo)
        if isinstance(header, SecAggSetup):
            answer = p.on_setup(header)
            if answer is not None:
                self._feed(state, header.round)  # quantised before the keys go: the next steps wait for no silo's
                conn.publish(up, answer)
                log.info("round %d: secure aggregation with %d silos (threshold %d); round keys sent", header.round,
                         len(header.silos), header.threshold)
        elif isinstance(header, SecAggKeyList):
            conn.publish(up, p.on_key_list(header))
            p.premask(header.round, header.run_id)  # while the aggregator collects the other silos' shares
        elif isinstance(header, SecAggInbox):
            self._upload(state, header.round, p.on_inbox(header))
        elif isinstance(header, SecAggUnmask):
            reveal = p.on_unmask(header)
            if reveal is not None:
                log.info("round %d: revealed the shares asked for (%d survivors, %d dropped)", header.round,
                         len(header.survivors), len(header.dropped))
                conn.publish(up, reveal)
        elif isinstance(header, SecAggAbort):
            log.warning("round %d: secure aggregation aborted by the aggregator: %s", header.round, header.reason)
            p.on_abort(header)
            self.pending.pop(header.round, None)

    def trained(self, state: Any, round_number: int, base_digest: str, weights: dict, num_samples: int,
                fields: dict) -> None:
        """The silo trained for ``round_number``: mask its update (now, or when the setup and inbox come) and send it."""
        delta = delta_vector(weights, state.models[base_digest][1])
        self.pending = {r: p for r, p in self.pending.items() if r >= round_number - 1}
        self.pending[round_number] = {"delta": delta, "num_samples": num_samples,
                                      "fields": dict(fields, base_digest=base_digest)}
        self._feed(state, round_number)

    def _feed(self, state: Any, round_number: int) -> None:
        """Give the protocol the trained update once it has the round's setup (the model comes first)."""
        pending = self.pending.get(round_number)
        if pending is None or "delta" not in pending or round_number not in self.protocol.rounds:
            return
        delta = pending.pop("delta")
        self._upload(state, round_number,
                     self.protocol.trained(round_number, state.spec.run_id, delta, pending["num_samples"], consume=True))

    def _upload(self, state: Any, round_number: int, masked: np.ndarray | None) -> None:
        if masked is None:
            return
        from ..schemas import PayloadInfo, Update
        from ..schemas.codec import sha256_hex

        fields = self.pending.pop(round_number)["fields"]
        payload = memoryview(masked.astype("<u4", copy=False)).cast("B")  # no copy of a model-sized buffer
        # The sample count is hidden under the masks (the vector's last element): the header says 1.
        header = Update(job=self.client.cfg.job, run_id=state.spec.run_id, silo=self.client.cfg.silo,
                        round=round_number, num_samples=1,
                        payload=PayloadInfo(codec=SECAGG_CODEC, size=len(payload), sha256=sha256_hex(payload)),
                        **fields)
        header = self.client._signed(header)
        state.last_update = (header, payload)
        log.info("round %d: masked update sent (%d bytes; masked values do not compress)", round_number, len(payload))
        self.client._publish_update(header, payload, state.spec.chunk_size)
