"""A live aggregator of a signed job, two honest silos and one hostile silo, through a real Mosquitto.

The hostile silo holds a registered key, so it gets as far as any member could: it sends every kind
of malformed, oversized, truncated, forged and replayed update it can think of. The job must
complete, each bad update must be recorded as rejected with its reason on the round that was open,
and only the honest updates (and the hostile silo's one good update per round) may count.
"""

from __future__ import annotations

import math
import random
import time
from pathlib import Path

import pytest
import torch
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fedmq.aggregator.config import AggregatorConfig
from fedmq.aggregator.federation import Federation
from fedmq.broker.connection import Connection
from fedmq.edge_client.data.synth_classification import synth_classification
from fedmq.edge_client.silo import ClientConfig, SiloClient
from fedmq.schemas import ModelSync, PayloadInfo, Presence, Topics, Update
from fedmq.schemas.codec import decode_state, encode_state, sha256_hex
from fedmq.schemas.framing import pack_message, split_chunks
from fedmq.schemas.signing import sign
from fedmq.store import Store
from fedmq.store.models import UpdateRecord
from sqlalchemy import select

pytestmark = pytest.mark.timeout(300)  # whole jobs in threads: above conftest's JOB_TIMEOUT_S

LABELS = ["bars", "cross", "disc", "stripes"]
CHUNK = 16 * 1024
EVIL = "zz-evil"


def write_key(folder: Path, silo: str) -> tuple[Ed25519PrivateKey, Path]:
    key = Ed25519PrivateKey.generate()
    folder.mkdir(parents=True, exist_ok=True)
    private = folder / f"{silo}.key"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    private.chmod(0o600)
    (folder / f"{silo}.pub").write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return key, private


class HostileSilo:
    def __init__(self, url, job: str, key: Ed25519PrivateKey) -> None:
        self.topics, self.key = Topics(job), key
        self.conn = Connection(url, EVIL, [self.topics.model, self.topics.model_for(EVIL)], max_message_bytes=1 << 28,
                               will=(self.topics.presence(EVIL), Presence(job=job, silo=EVIL, online=False)))
        self.rounds: dict[int, tuple[dict, str, str]] = {}
        self.sent_good: dict[int, tuple[Update, bytes]] = {}
        self.asked_again: list[int] = []  # rounds whose model came again, on this silo's own topic

    def join(self) -> None:
        self.conn.connect(timeout=10)
        self.conn.set_retained(self.topics.presence(EVIL), Presence(
            job=self.topics.job, silo=EVIL, online=True, task="classification", labels=LABELS))

    def wait_for_round(self, number: int, asked_again: bool = False) -> tuple[dict, str, str]:
        """The model of round ``number``; with ``asked_again``, only as sent again to this silo alone."""
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            sync = self.conn.receive(timeout=1)
            if sync is None or not isinstance(sync.header, ModelSync):
                continue
            again = sync.topic == self.topics.model_for(EVIL)
            if again:
                self.asked_again.append(sync.header.train_round)
            if sync.header.train_round == number and (again or not asked_again):
                weights = decode_state(sync.payload, sync.header.payload.codec, 1 << 28)
                return weights, sync.header.payload.digest, sync.header.run_id
        raise AssertionError(f"round {number}'s model never reached the hostile silo{' again' if asked_again else ''}")

    def header(self, payload: bytes, round_number: int, base: str, run_id: str, signed: bool = True, **changes) -> Update:
        info = PayloadInfo(codec="safetensors+zstd", size=len(payload), sha256=sha256_hex(payload))
        header = Update(job=self.topics.job, run_id=run_id, silo=EVIL, round=round_number, base_digest=base,
                        num_samples=10, payload=info)
        header = sign(header, self.key) if signed else header
        return header.model_copy(update=changes)

    def raw(self, chunks: list[bytes], topic: str | None = None) -> None:
        for chunk in chunks:
            self.conn._client.publish(topic or self.topics.update(EVIL), chunk, qos=1).wait_for_publish(5)

    def send(self, state: dict, round_number: int, base: str, run_id: str, **kw) -> tuple[Update, bytes]:
        payload = encode_state(state, "safetensors+zstd")
        header = self.header(payload, round_number, base, run_id, **kw)
        self.raw(split_chunks(pack_message(header, payload), CHUNK))
        return header, payload

    def attack_round_1(self) -> None:
        weights, digest, run_id = self.wait_for_round(1)
        name = next(k for k, v in weights.items() if v.is_floating_point() and v.ndim > 1)
        payload = encode_state(weights, "safetensors+zstd")
        packed = pack_message(self.header(payload, 1, digest, run_id), payload)
        chunks = split_chunks(packed, CHUNK)
        assert len(chunks) > 2
        self.raw(chunks[:-1])  # truncated: the last chunk never comes
        self.raw([random.Random(1).randbytes(300)])  # random bytes
        huge = self.header(payload, 1, digest, run_id).model_copy(update={"payload": PayloadInfo(
            codec="safetensors+zstd", size=10 * 1024**3, sha256="0" * 64)})
        self.raw(split_chunks(pack_message(huge, payload), CHUNK)[:1])  # declares 10 GB
        forged = self.header(payload, 1, digest, run_id)
        forged = forged.model_copy(update={"payload": forged.payload.model_copy(update={"sha256": "ab" * 32})})
        self.raw(split_chunks(pack_message(forged, payload), CHUNK))  # digest does not match the payload
        self.send(dict(weights, **{name: torch.full_like(weights[name], float("nan"))}), 1, digest, run_id)
        self.send(dict(weights, **{name: torch.zeros(3, 3)}), 1, digest, run_id)
        self.send(dict(weights, sneaky=torch.zeros(1)), 1, digest, run_id)
        self.send({k: v for k, v in weights.items() if k != name}, 1, digest, run_id)  # a missing tensor
        self.send(weights, 1, "0" * 64, run_id)  # trained on a model nobody sent
        self.send(weights, 1, digest, run_id, signed=False)
        self.send(weights, 1, digest, run_id, num_samples=10_000)  # changed after signing: signature fails
        other = sign(self.header(payload, 1, digest, run_id, signed=False), Ed25519PrivateKey.generate())
        self.raw(split_chunks(pack_message(other, payload), CHUNK))  # signed by a key that is not EVIL's
        spoofed = self.header(payload, 1, digest, run_id)
        self.raw(split_chunks(pack_message(spoofed, payload), CHUNK), topic=self.topics.update("s0"))
        # The truncated message stalls: the aggregator rejects it in this round, then asks this silo for
        # its update again by sending it the round's model on its own topic. Wait for that.
        self.wait_for_round(1, asked_again=True)
        # Finally a good update, its chunks out of order and repeated, so round 1 can close with EVIL in it.
        good = pack_message(self.header(payload, 1, digest, run_id), payload)
        shuffled = split_chunks(good, CHUNK)
        shuffled = shuffled + shuffled[:2]
        random.Random(2).shuffle(shuffled)
        self.raw(shuffled)
        self.rounds[1] = (weights, digest, run_id)
        self.sent_good[1] = (self.header(payload, 1, digest, run_id), payload)

    def attack_round_2(self) -> None:
        weights, digest, run_id = self.wait_for_round(2)
        header, payload = self.sent_good[1]
        self.raw(split_chunks(pack_message(header, payload), CHUNK))  # replay of round 1's signed update: a no-op
        self.send(weights, 2, digest, run_id)
        self.conn.set_retained(self.topics.presence(EVIL), Presence(job=self.topics.job, silo=EVIL, online=False))
        self.conn.close()


def test_a_hostile_member_cannot_crash_poison_or_impersonate(mosquitto, tmp_path: Path, job_threads) -> None:
    job = "hostile-signed"
    data = synth_classification(tmp_path / "D", silos=2, train_per_silo=160, test_per_silo=40)
    keys_dir = tmp_path / "keys"
    evil_key, _ = write_key(keys_dir, EVIL)
    private = {f"s{i}": write_key(keys_dir, f"s{i}")[1] for i in range(2)}
    store = Store(f"sqlite:///{tmp_path / 'f.db'}")
    # Enough training to learn in 2 rounds, still well under a second a round; plain SGD (momentum 0.9,
    # or lr 0.1, makes such short runs swing: the silos in threads here race for the seeded initial
    # weights, so the initial model differs from run to run).
    config = AggregatorConfig(broker=mosquitto.url, job=job, db=store.url, rounds=2, min_clients=3, out=tmp_path / "out",
                              round_timeout=120, chunk_size=CHUNK, sign=True, keys_dir=keys_dir, stall_timeout=2,
                              local_epochs=2, batch_size=8, lr=0.05, momentum=0.0)
    federation = Federation(config, store)
    evil = HostileSilo(mosquitto.url, job, evil_key)
    evil.join()
    silos = [SiloClient(ClientConfig(broker=mosquitto.url, silo=f"s{i}", data=data[i], job=job,
                                     work_dir=tmp_path / f"w{i}", signing_key=private[f"s{i}"])) for i in range(2)]
    running = job_threads(federation, silos)
    evil.attack_round_1()
    evil.attack_round_2()
    assert running.finish() == {"aggregator": 0, "s0": 0, "s1": 0}, "the aggregator finished the job"

    rows = store.history(job)
    assert [r["status"] for r in rows] == ["completed", "completed"]
    assert all(r["clients"] == ["s0", "s1", EVIL] for r in rows), "EVIL's good updates count, and only those"
    assert all(r["num_samples"] == 160 + 160 + 10 for r in rows)
    # Nothing poisoned the model and the honest updates were used: it learned. 4 classes (chance 0.25, loss
    # ln 4); on this fixed-seed data round 2 is usually at 0.9-1.0, once (a fresh-clone CI run) at 0.5 with
    # its loss down from 1.37 to 0.90. A model that aggregation left as it was stays near chance, its loss
    # where it was; a poisoned one has no finite loss.
    first, last = rows[0]["metrics"], rows[-1]["metrics"]
    assert last["loss"] < first["loss"] and (last["accuracy"] >= 0.6 or last["loss"] < math.log(4) - 0.3), \
        [r["metrics"] for r in rows]
    rejected = _rejections(store)
    round_1 = [
        "incomplete message: ", "fedmq magic", "10737418", "sha256 does not match", "NaN", "shape",
        "unexpected sneaky", "missing", "not this round's global model", "unsigned", "signature does not verify",
        "signature does not verify", "another silo's topic",
    ]
    _assert_reasons(rejected[1], round_1)
    # The replay of round 1's update in round 2 repeats what round 1 counted (same run, silo and round): a
    # logged no-op, neither a second count (the sample sums above) nor a rejection (issue 16).
    assert rejected.get(2, []) == []
    # Chunks lost on the way are not the update's fault: the aggregator asked for round 1's update again.
    assert 1 in evil.asked_again
    assert [r["rejected"] for r in rows] == [len(rejected[1]), 0]
    store.close()


def _rejections(store: Store) -> dict[int, list[str]]:
    from fedmq.store.models import Round

    with store.session() as s:
        numbers = {r.id: r.number for r in s.scalars(select(Round))}
        out: dict[int | None, list[str]] = {1: [], 2: []}
        for u in s.scalars(select(UpdateRecord).where(UpdateRecord.accepted.is_(False)).order_by(UpdateRecord.id)):
            out.setdefault(numbers.get(u.round_id), []).append(u.reason)
        assert set(out) == {1, 2}, f"rejections outside any round: {out.get(None)}"
        return out


def _assert_reasons(reasons: list[str], needles: list[str]) -> None:
    left = list(reasons)
    for needle in needles:
        match = next((r for r in left if needle in r), None)
        assert match is not None, f"no rejection mentions {needle!r}; rejections: {reasons}"
        left.remove(match)
    assert not left, f"unexpected rejections: {left}"
