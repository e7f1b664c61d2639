"""Claimed sample counts (issue 16): a silo declares its training samples when it joins, an update that
claims more is a recorded rejection, and ``--max-samples-per-silo`` caps the weight any one silo has.

Real Mosquitto, real store, real silos or scripted ones (real MQTT clients that send chosen tensors,
so the aggregated model can be checked against the weighted mean by hand).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from fedmq.aggregator.checkpoints import checkpoint_path, load_checkpoint
from fedmq.aggregator.checks import check_claimed_samples
from fedmq.aggregator.config import AggregatorConfig
from fedmq.aggregator.federation import Federation
from fedmq.aggregator.silos import SiloRegistry
from fedmq.broker.connection import Connection
from fedmq.edge_client.data.synth_classification import synth_classification
from fedmq.edge_client.silo import ClientConfig, SiloClient
from fedmq.errors import UpdateRejected
from fedmq.schemas import ModelSync, PayloadInfo, Presence, Topics, Update
from fedmq.schemas.codec import decode_state, encode_state, sha256_hex
from fedmq.store import Store
from safetensors.torch import save_file

pytestmark = pytest.mark.timeout(300)  # whole jobs in threads: above conftest's JOB_TIMEOUT_S

LABELS = ["bars", "cross", "disc", "stripes"]
WAIT_S = 120.0


class ScriptedSilo:
    """Joins like a silo (declaring ``declared`` training samples for the run), and sends the tensors
    and the sample count a test chooses."""

    def __init__(self, url, job: str, name: str, run_id: str, declared: int | None) -> None:
        self.name, self.topics, self.run_id, self.declared = name, Topics(job), run_id, declared
        self.conn = Connection(url, name, [self.topics.model, self.topics.model_for(name)], max_message_bytes=1 << 28,
                               will=(self.topics.presence(name), Presence(job=job, silo=name, online=False)))

    def join(self) -> None:
        self.conn.connect(timeout=10)
        self.conn.set_retained(self.topics.presence(self.name), Presence(
            job=self.topics.job, silo=self.name, online=True, task="classification", labels=LABELS,
            run_id=self.run_id, train_samples=self.declared))

    def model_of_round(self, number: int) -> tuple[ModelSync, bytes]:
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            sync = self.conn.receive(timeout=1)
            if sync is not None and isinstance(sync.header, ModelSync) and sync.header.train_round == number:
                return sync.header, sync.payload
        raise AssertionError(f"round {number}'s model never reached {self.name}")

    def send(self, state: dict[str, torch.Tensor], base: ModelSync, num_samples: int) -> None:
        payload = encode_state(state, "safetensors+zstd")
        header = Update(job=self.topics.job, run_id=base.run_id, silo=self.name, round=base.train_round,
                        base_digest=base.payload.digest, num_samples=num_samples,
                        payload=PayloadInfo(codec="safetensors+zstd", size=len(payload), sha256=sha256_hex(payload)))
        self.conn.publish(self.topics.update(self.name), header, payload)

    def leave(self) -> None:
        self.conn.set_retained(self.topics.presence(self.name), Presence(job=self.topics.job, silo=self.name,
                                                                         online=False))
        self.conn.close()


def wait_for(condition, what: str, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


# -- the check itself ---------------------------------------------------------------------------------
def test_the_claim_check_names_both_numbers_and_lets_a_silo_that_declared_nothing_through() -> None:
    check_claimed_samples("s0", 160, 160)
    check_claimed_samples("s0", 10, 160)  # fewer than declared: a task may train on a part of its data
    check_claimed_samples("old", 2**53, None)  # an older silo declares nothing: --max-samples-per-silo bounds it
    with pytest.raises(UpdateRejected) as info:
        check_claimed_samples("s0", 161, 160)
    assert "161" in info.value.message and "160" in info.value.message and "declared" in info.value.message


def test_the_registry_keeps_what_a_silo_declared_for_this_run() -> None:
    registry = SiloRegistry("classification", run_id="run-now")

    def announce(online: bool = True, **fields) -> None:
        registry.update(Presence(job="j", silo="s0", online=online, **(
            {"task": "classification", "labels": LABELS, **fields} if online else {})))

    announce(run_id="run-before", train_samples=500)
    assert registry.declared("s0") is None, "a count declared for another run is not this run's"
    announce(run_id="run-now", train_samples=160)
    assert registry.declared("s0") == 160
    announce()  # a re-announcement without it (after a reconnect) keeps what the silo declared
    assert registry.declared("s0") == 160
    announce(online=False)
    assert registry.declared("s0") is None and registry.declared("never-seen") is None


# -- (a) a claim above the declared count is a recorded rejection ---------------------------------------
def test_an_update_claiming_more_samples_than_its_silo_declared_is_rejected(mosquitto, tmp_path: Path,
                                                                            job_threads) -> None:
    job = "claims-above-declared"
    data = synth_classification(tmp_path / "D", silos=2, train_per_silo=32, test_per_silo=8)
    store = Store(f"sqlite:///{tmp_path / 'f.db'}")
    config = AggregatorConfig(broker=mosquitto.url, job=job, db=store.url, rounds=1, min_clients=2,
                              out=tmp_path / "out", round_timeout=120, local_epochs=1, batch_size=8)
    federation = Federation(config, store)
    liar = ScriptedSilo(mosquitto.url, job, "zz-liar", federation.run_id, declared=10)
    liar.join()
    silos = [SiloClient(ClientConfig(broker=mosquitto.url, silo=f"s{i}", data=data[i], job=job,
                                     work_dir=tmp_path / f"w{i}")) for i in range(2)]
    running = job_threads(federation, silos)
    sync, payload = liar.model_of_round(1)
    weights = decode_state(payload, sync.payload.codec, 1 << 28)  # the round's own model: only the claim is wrong
    liar.send(weights, sync, num_samples=1_000_000)
    liar.leave()  # the round waits for it no more, and closes with the honest silos
    assert running.finish() == {"aggregator": 0, "s0": 0, "s1": 0}

    [row] = store.history(job)
    assert row["status"] == "completed"
    assert row["clients"] == ["s0", "s1"], "the liar's update is never counted"
    assert row["num_samples"] == 32 + 32
    assert row["rejected"] == 1
    [rejection] = [u for u in store.round_detail(job, 1)["updates"] if not u["accepted"]]
    assert rejection["silo"] == "zz-liar"
    assert rejection["reason"] == "claims 1000000 training samples but silo zz-liar declared 10 when it joined"
    assert rejection["num_samples"] == 1_000_000 and rejection["claimed_round"] == 1
    # The real silos declared their training split when they joined (so their own updates passed the check).
    assert {s: federation.registry.declared(s) for s in ("s0", "s1")} == {"s0": 32, "s1": 32}
    store.close()


# -- (b) --max-samples-per-silo: a huge (declared) count does not dominate --------------------------------
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_max_samples_per_silo_caps_the_weight_of_a_silo_claiming_a_huge_count(mosquitto, tmp_path: Path,
                                                                              job_threads, mode: str) -> None:
    job = f"capped-{mode}"
    initial = {"w": torch.zeros(4, 3), "b": torch.zeros(3)}
    save_file(initial, str(tmp_path / "init.safetensors"))
    store = Store(f"sqlite:///{tmp_path / 'f.db'}")
    cap = 100
    config = AggregatorConfig(broker=mosquitto.url, job=job, db=store.url, rounds=1, min_clients=2, mode=mode,
                              buffer_size=2, out=tmp_path / "out", round_timeout=120, batch_size=8, lr=0.1,
                              init_weights=tmp_path / "init.safetensors", max_samples_per_silo=cap)
    federation = Federation(config, store)
    huge, honest = 10**9, 50
    big = ScriptedSilo(mosquitto.url, job, "big", federation.run_id, declared=huge)
    small = ScriptedSilo(mosquitto.url, job, "small", federation.run_id, declared=honest)
    for silo in (big, small):
        silo.join()
    running = job_threads(federation, [])
    big.send({k: torch.full_like(v, 1.0) for k, v in initial.items()}, big.model_of_round(1)[0], num_samples=huge)
    small.send({k: torch.full_like(v, 4.0) for k, v in initial.items()}, small.model_of_round(1)[0],
               num_samples=honest)
    aggregated = checkpoint_path(config.out, job, 1)
    wait_for(aggregated.exists, "round 1's checkpoint")
    for silo in (big, small):
        silo.leave()  # nothing left to wait for: the evaluation completes without results
    assert running.finish() == {"aggregator": 0}

    expected = (cap * 1.0 + honest * 4.0) / (cap + honest)  # 2.0; uncapped it would be 1.00000015
    state = load_checkpoint(aggregated)
    for name in initial:
        assert torch.allclose(state[name], torch.full_like(initial[name], expected), atol=1e-5), (name, state[name])
    [row] = store.history(job)
    # The store keeps what each silo claimed (the cap bounds its weight, not its record).
    assert sorted((c["silo"], c["num_samples"]) for c in row["contributions"]) == [("big", huge), ("small", honest)]
    store.close()
