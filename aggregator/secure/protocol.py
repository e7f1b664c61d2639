"""The aggregator's side of one secure aggregation round, pure: messages in, messages out, no broker.

``SecureRound`` walks the steps of ``schemas/secagg.py``: it collects the silos' signed keys (U1),
their encrypted shares (U2), their masked vectors (U3) and their reveals, and unmasks the sum. Each
``close_*`` ends a step with whoever answered; fewer than the threshold fails the round
(``SecureRoundFailed``, with the reason and the step). What it ever holds of one silo's update is
its masked vector, uniformly random in the ring to anyone without the masks; it unmasks only the sum.

Hostile input is rejected per silo (``Rejected``): a key message whose signature does not verify, a
share message that does not hold one well-formed ciphertext for every other silo of the key list, a
masked vector of the wrong size, a revealed share not signed by its dealer for that holder. A silo
rejected in a step takes no further part in the round.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field

import numpy as np
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ...schemas import masking as mk
from ...schemas.secagg import (
    SEALED_SHARE_BYTES,
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

STEPS = ("keys", "shares", "upload", "reveal")


class Rejected(ValueError):
    """One silo's message is refused (the reason); the round goes on without that silo."""


class SecureRoundFailed(Exception):
    def __init__(self, reason: str, step: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.step = step


def default_threshold(silos: int) -> int:
    """A majority of the round's silos, and at least 2."""
    return max(2, silos // 2 + 1)


@dataclass
class SecureRound:
    job: str
    run_id: str
    number: int
    silos: list[str]
    threshold: int
    clip_norm: float
    weight_cap: int
    length: int  # the masked vector's elements: the model's float elements and the weight
    signing_keys: dict[str, Ed25519PublicKey]
    step: str = "keys"
    keys: dict[str, SecAggKeys] = field(default_factory=dict)
    shares: dict[str, dict[str, str]] = field(default_factory=dict)
    masked: dict[str, np.ndarray] = field(default_factory=dict)
    reveals: dict[str, SecAggReveal] = field(default_factory=dict)
    rejected: dict[str, str] = field(default_factory=dict)  # silo -> why
    dropped: dict[str, list[str]] = field(default_factory=dict)  # step -> silos that did not answer it
    u1: list[str] = field(default_factory=list)
    u2: list[str] = field(default_factory=list)
    u3: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.silos = sorted(self.silos)
        self.scale = mk.choose_scale(len(self.silos), self.clip_norm)

    # -- step 0 ------------------------------------------------------------------------------------
    def setup(self) -> SecAggSetup:
        if len(self.silos) < self.threshold:
            self._fail(f"{len(self.silos)} silo(s) asked, fewer than the threshold of {self.threshold}")
        return SecAggSetup(job=self.job, run_id=self.run_id, round=self.number, silos=self.silos,
                           threshold=self.threshold, clip_norm=self.clip_norm, weight_cap=self.weight_cap,
                           scale=self.scale, length=self.length)

    def expected(self) -> set[str]:
        """The silos the current step still waits for."""
        if self.step == "keys":
            return set(self.silos) - set(self.keys) - set(self.rejected)
        if self.step == "shares":
            return set(self.u1) - set(self.shares) - set(self.rejected)
        if self.step == "upload":
            return set(self.u2) - set(self.masked) - set(self.rejected)
        if self.step == "reveal":
            return set(self.u3) - set(self.reveals) - set(self.rejected)
        return set()

    def _check(self, step: str, silo: str, members: list[str]) -> None:
        if self.step != step:
            raise Rejected(f"secure aggregation: a {step} message while the round is at step {self.step}")
        if silo not in members:
            raise Rejected(f"secure aggregation: {silo} does not take part in this step")
        if silo in self.rejected:
            raise Rejected(f"secure aggregation: {silo} was rejected earlier in the round")

    def _reject(self, silo: str, reason: str) -> None:
        self.rejected[silo] = reason
        raise Rejected(reason)

    def _fail(self, reason: str) -> None:
        raise SecureRoundFailed(f"secure aggregation round {self.number}: {reason}", self.step)

    def _close(self, answered: list[str], members: list[str], step: str) -> list[str]:
        self.dropped[step] = sorted(set(members) - set(answered))
        if len(answered) < self.threshold:
            self._fail(f"{len(answered)} silo(s) answered step {step!r}, fewer than the threshold of "
                       f"{self.threshold}; not unmasked")
        return sorted(answered)

    # -- step 1 ------------------------------------------------------------------------------------
    def on_keys(self, keys: SecAggKeys) -> None:
        self._check("keys", keys.silo, self.silos)
        public = self.signing_keys.get(keys.silo)
        try:
            if public is None:
                raise InvalidSignature
            public.verify(base64.b64decode(keys.signature, validate=True), keys_signed_bytes(keys))
        except (InvalidSignature, ValueError):
            self._reject(keys.silo, f"secure aggregation: the round keys of {keys.silo} are not signed by its key")
        earlier = self.keys.get(keys.silo)
        if earlier is not None:
            if earlier != keys:  # a repeat (a re-send after a reconnect) is a no-op; other keys are not
                self._reject(keys.silo, f"secure aggregation: {keys.silo} sent a second, different set of round keys")
            return
        if any(k.mask_pk == keys.mask_pk or k.cipher_pk == keys.cipher_pk for k in self.keys.values()):
            self._reject(keys.silo, "secure aggregation: round keys that another silo sent")
        self.keys[keys.silo] = keys

    def close_keys(self) -> SecAggKeyList:
        self.u1 = self._close(list(self.keys), self.silos, "keys")
        self.step = "shares"
        return SecAggKeyList(job=self.job, run_id=self.run_id, round=self.number, keys=[self.keys[s] for s in self.u1])

    # -- step 2 ------------------------------------------------------------------------------------
    def on_shares(self, shares: SecAggShares) -> None:
        self._check("shares", shares.silo, self.u1)
        others = set(self.u1) - {shares.silo}
        if set(shares.shares) != others:
            self._reject(shares.silo, f"secure aggregation: {shares.silo} sent shares for the wrong silos")
        for blob in shares.shares.values():
            try:
                size = len(base64.b64decode(blob, validate=True))
            except ValueError:
                size = -1
            if size != SEALED_SHARE_BYTES:
                self._reject(shares.silo, f"secure aggregation: {shares.silo} sent a malformed share")
        self.shares.setdefault(shares.silo, dict(shares.shares))

    def close_shares(self) -> dict[str, SecAggInbox]:
        self.u2 = self._close([s for s in self.shares if s not in self.rejected], self.u1, "shares")
        self.step = "upload"
        return {holder: SecAggInbox(job=self.job, run_id=self.run_id, round=self.number, silo=holder,
                                    shares={dealer: self.shares[dealer][holder] for dealer in self.u2 if dealer != holder})
                for holder in self.u2}

    # -- step 3 ------------------------------------------------------------------------------------
    def on_masked(self, silo: str, payload: bytes) -> None:
        self._check("upload", silo, self.u2)
        if len(payload) != 4 * self.length:
            self._reject(silo, f"secure aggregation: a masked vector of {len(payload)} bytes, not {4 * self.length}")
        self.masked.setdefault(silo, np.frombuffer(payload, dtype="<u4").astype(mk.RING, copy=False))

    def close_uploads(self) -> SecAggUnmask:
        self.u3 = self._close([s for s in self.masked if s not in self.rejected], self.u2, "upload")
        self.step = "reveal"
        return SecAggUnmask(job=self.job, run_id=self.run_id, round=self.number, survivors=self.u3,
                            dropped=[s for s in self.u2 if s not in self.u3])

    # -- step 4 ------------------------------------------------------------------------------------
    def on_reveal(self, reveal: SecAggReveal) -> None:
        self._check("reveal", reveal.silo, self.u3)
        dropped = set(self.u2) - set(self.u3)
        if not set(reveal.seed_shares) <= set(self.u3) or not set(reveal.key_shares) <= dropped:
            self._reject(reveal.silo, f"secure aggregation: {reveal.silo} revealed shares that were not asked for")
        x = self.u1.index(reveal.silo) + 1
        for kind, shares in (("seed", reveal.seed_shares), ("key", reveal.key_shares)):
            for dealer, share in shares.items():
                if not self._share_ok(dealer, reveal.silo, kind, x, share):
                    self._reject(reveal.silo, f"secure aggregation: {reveal.silo} revealed a share of {dealer} that "
                                              "its dealer did not sign")
        self.reveals.setdefault(reveal.silo, reveal)

    def _share_ok(self, dealer: str, holder: str, kind: str, x: int, share: Share) -> bool:
        public = self.signing_keys.get(dealer)
        if public is None or share.x != x:
            return False
        signed = share_signed_bytes(self.job, self.run_id, self.number, dealer, holder, kind, x, int(share.y, 16))
        try:
            public.verify(base64.b64decode(share.signature, validate=True), signed)
        except (InvalidSignature, ValueError):
            return False
        return True

    def unmask(self) -> np.ndarray:
        """The sum of the survivors' quantised vectors, in the ring; never any one of them."""
        revealers = self._close([s for s in self.reveals if s not in self.rejected], self.u3, "reveal")
        total = np.zeros(self.length, dtype=mk.RING)
        for silo in self.u3:
            total += self.masked[silo]
        for silo in self.u3:
            seed = self._recover(silo, "seed", revealers)
            if mk.commit(seed) != self.keys[silo].seed_commit:
                self._fail(f"the self-mask seed of {silo} does not match its commitment (inconsistent shares)")
            mk.add_prg(total, seed, -1)
        for gone in (s for s in self.u2 if s not in self.u3):
            private = self._recover(gone, "key", revealers)
            if base64.b64encode(mk.public_of(private)).decode() != self.keys[gone].mask_pk:
                self._fail(f"the mask key of {gone} does not match its public key (inconsistent shares)")
            for silo in self.u3:
                seed = mk.agree(private, base64.b64decode(self.keys[silo].mask_pk), "mask")
                mk.add_prg(total, seed, -mk.pair_sign(silo, gone))  # take away what ``silo`` added for the pair
        self.step = "done"
        return total

    def _recover(self, dealer: str, kind: str, revealers: list[str]) -> bytes:
        points = {}
        for holder in revealers:
            shares = self.reveals[holder].seed_shares if kind == "seed" else self.reveals[holder].key_shares
            share = shares.get(dealer)
            if share is not None:
                points[share.x] = int(share.y, 16)
        if len(points) < self.threshold:
            self._fail(f"{len(points)} share(s) of the {kind} of {dealer}, fewer than the threshold of {self.threshold}")
        try:
            return mk.combine(dict(list(points.items())[:self.threshold]))
        except mk.MaskingError as exc:
            self._fail(f"the {kind} of {dealer} cannot be recovered: {exc}")
