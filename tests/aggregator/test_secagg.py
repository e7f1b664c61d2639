"""Secure aggregation end to end (issue 18): a real Mosquitto, the aggregator and real silos in threads.

* 5 silos: each round's model equals plain FedAvg of the same updates within the quantisation bound;
  what the aggregator receives from a silo is uncorrelated with its update, and neither the store nor
  the aggregator's files or logs hold an update;
* one silo gone after sharing its keys and before uploading, another after uploading and before
  revealing: the round completes with the survivors' sum;
* fewer survivors than the threshold: the round fails, recorded with the reason, and the next completes;
* a hostile silo (forged key signature, malformed shares, a wrong-size masked vector) is rejected and
  recorded, the rounds complete without it, and no silo's seed and key are both revealed;
* combinations that cannot work are refused at start.
"""

from __future__ import annotations

import base64
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fedmq.aggregator.config import AggregatorConfig
from fedmq.aggregator.federation import Federation, run_aggregator
from fedmq.aggregator.strategies import StrategyOptions
from fedmq.commands.history import render_rounds
from fedmq.edge_client.data.synth_classification import synth_classification
from fedmq.edge_client.secure import delta_vector
from fedmq.edge_client.silo import ClientConfig, SiloClient
from fedmq.errors import ConfigError
from fedmq.schemas import Update
from fedmq.schemas import masking as mk
from fedmq.schemas.secagg import SecAggKeys, SecAggReveal, SecAggShares
from fedmq.store import Store
from safetensors.torch import load_file

from .test_hostile_input import write_key

pytestmark = pytest.mark.timeout(300)


class Job:
    """A secure job of ``n`` silos whose trained updates and masked uploads are captured as they go."""

    def __init__(self, mosquitto, tmp_path: Path, name: str, n: int = 5, rounds: int = 2, round_timeout: float = 60,
                 **options) -> None:
        data = synth_classification(tmp_path / "D", silos=n, train_per_silo=16, test_per_silo=8)
        keys_dir = tmp_path / "keys"
        private = {f"s{i}": write_key(keys_dir, f"s{i}")[1] for i in range(n)}
        self.store = Store(f"sqlite:///{tmp_path / 'f.db'}")
        self.out = tmp_path / "out"
        self.config = AggregatorConfig(broker=mosquitto.url, job=name, db=self.store.url, rounds=rounds, min_clients=n,
                                       out=self.out, round_timeout=round_timeout, sign=True, keys_dir=keys_dir,
                                       secure_agg=True, **options)
        self.federation = Federation(self.config, self.store)
        self.silos = [SiloClient(ClientConfig(broker=mosquitto.url, silo=f"s{i}", data=data[i], job=name,
                                              work_dir=tmp_path / f"w{i}", signing_key=private[f"s{i}"]))
                      for i in range(n)]
        self.trained: dict[int, dict[str, tuple[dict, dict, int]]] = {}  # round -> silo -> (weights, base, samples)
        self.masked: dict[int, dict[str, np.ndarray]] = {}  # round -> silo -> what it uploaded
        for silo in self.silos:
            self._capture(silo)

    def _capture(self, silo: SiloClient) -> None:
        send, publish = silo._send_update, silo._publish_update

        def captured_send(state, round_number, base_digest, weights, num_samples, loss, seconds):
            if round_number > 0:
                base = state.models[base_digest][1]
                self.trained.setdefault(round_number, {})[silo.cfg.silo] = (
                    {k: v.clone() for k, v in weights.items()}, {k: v.clone() for k, v in base.items()}, num_samples)
            send(state, round_number, base_digest, weights, num_samples, loss, seconds)

        def captured_publish(header, payload, chunk_size):
            if header.round > 0:
                self.masked.setdefault(header.round, {})[header.silo] = np.frombuffer(payload, dtype="<u4").copy()
            publish(header, payload, chunk_size)

        silo._send_update, silo._publish_update = captured_send, captured_publish

    def model(self, round_number: int) -> dict[str, torch.Tensor]:
        return load_file(str(self.out / self.config.job / f"round-{round_number:04d}.safetensors"))

    def fedavg(self, round_number: int, silos: list[str]) -> tuple[dict[str, torch.Tensor], float]:
        """Plain FedAvg (float64) of the captured updates of ``silos``, clipped as the silos clip; and the
        bound the secure model must be within, per coordinate."""
        updates = self.trained[round_number]
        base = updates[silos[0]][1]
        total = sum(updates[s][2] for s in silos)
        clip = self.config.strategy.clip_norm or 10.0
        mean = sum(mk.clip(delta_vector(updates[s][0], base), clip) * updates[s][2] for s in silos) / total
        state, offset = {}, 0
        for name, tensor in base.items():
            if tensor.is_floating_point():
                part = torch.from_numpy(mean[offset:offset + tensor.numel()]).reshape(tensor.shape)
                state[name] = tensor.double() + part
                offset += tensor.numel()
        scale = mk.choose_scale(len(self.silos), clip)
        cap = max(updates[s][2] for s in updates)
        return state, mk.mean_error_bound(len(silos), scale, cap, total)

    def assert_fedavg(self, round_number: int, silos: list[str]) -> float:
        expected, bound = self.fedavg(round_number, silos)
        got = self.model(round_number)
        worst = 0.0
        for name, value in expected.items():
            # the bound of the fixed point, plus float32's rounding of the result
            error = (got[name].double() - value).abs()
            allowed = bound + value.abs() * 2.0**-23 + 1e-12
            assert bool((error <= allowed).all()), f"{name}: off by {float(error.max())}, bound {bound}"
            worst = max(worst, float(error.max()))
        return worst

    def run(self, job_threads, timeout: float = 240) -> dict[str, int]:
        return job_threads(self.federation, self.silos).finish(timeout)


def rejections(store: Store, job: str, number: int) -> list[str]:
    return [u["reason"] for u in store.round_detail(job, number)["updates"] if not u["accepted"]]


def test_five_silos_give_fedavg_within_the_bound_and_reveal_no_update(mosquitto, tmp_path: Path, job_threads,
                                                                      caplog) -> None:
    caplog.set_level(logging.DEBUG, logger="fedmq")
    job = Job(mosquitto, tmp_path, "secure-5", n=5, rounds=2)
    assert job.run(job_threads) == {"aggregator": 0, **{f"s{i}": 0 for i in range(5)}}

    names = [f"s{i}" for i in range(5)]
    for number in (1, 2):
        worst = job.assert_fedavg(number, names)
        assert worst < 1e-5
    rows = job.store.history("secure-5")
    assert [r["status"] for r in rows] == ["completed", "completed"]
    for r in rows:
        assert r["metrics"]["secure_agg"] == 1 and r["metrics"]["secure_unmasked"] == 1
        assert all(r["metrics"][f"secure_dropped_{s}"] == 0 for s in ("keys", "shares", "upload", "reveal"))
        assert r["num_samples"] == 5 * 16  # the summed counts, unmasked with the sum
        # the store holds no silo's count (1: hidden under the masks), nor anything of its update
        assert {c["num_samples"] for c in r["contributions"]} == {1}

    # What the aggregator received from each silo is uncorrelated with that silo's update, round after round.
    correlations = []
    for number in (1, 2):
        for silo in names:
            weights, base, _ = job.trained[number][silo]
            delta = delta_vector(weights, base)
            received = job.masked[number][silo][:-1].view(np.int32).astype(np.float64)
            correlations.append(np.corrcoef(received, delta)[0, 1])
    size = len(delta)
    assert max(abs(c) for c in correlations) < 5 / np.sqrt(size), correlations  # 5 sigma of independent vectors
    # and no update is recoverable from what the aggregator keeps: its files are the global models only,
    # its logs name no tensor values
    kept = sorted(p.name for p in (job.out / "secure-5").iterdir())
    assert kept == ["round-0000.safetensors", "round-0001.safetensors", "round-0002.safetensors"]
    assert job.federation.secure.round is None  # nothing of the last round held in memory
    logged = " ".join(r.getMessage() for r in caplog.records if r.name.startswith("fedmq.aggregator"))
    delta_text = [f"{v:.4f}" for v in delta_vector(*job.trained[2]["s0"][:2])[:5]]
    assert not any(t in logged for t in delta_text if t not in ("0.0000", "-0.0000"))


def test_dropouts_after_keys_and_after_upload_leave_the_survivors_sum(mosquitto, tmp_path: Path, job_threads) -> None:
    job = Job(mosquitto, tmp_path, "secure-drop", n=5, rounds=2, round_timeout=6)
    gone_before_upload, gone_before_reveal = job.silos[1], job.silos[3]
    _silence(gone_before_upload, lambda header: isinstance(header, Update) and header.round == 1)
    _silence(gone_before_reveal, lambda header: isinstance(header, SecAggReveal) and header.round == 1)
    assert job.run(job_threads)["aggregator"] == 0

    rows = job.store.history("secure-drop")
    assert [r["status"] for r in rows] == ["completed", "completed"]
    # round 1: s1's masks were removed with its key's shares; s3's update counts though it revealed nothing
    job.assert_fedavg(1, ["s0", "s2", "s3", "s4"])
    job.assert_fedavg(2, [f"s{i}" for i in range(5)])
    metrics = rows[0]["metrics"]
    assert metrics["secure_dropped_upload"] == 1 and metrics["secure_dropped_reveal"] == 1
    assert rows[0]["num_samples"] == 4 * 16
    reasons = rejections(job.store, "secure-drop", 1)
    table = render_rounds("secure-drop", rows)  # `fedmq history` marks the secure rounds
    assert "unmasked, dropped 0/0/1/1" in table and "unmasked, dropped 0/0/0/0" in table
    assert any("no answer to step 'upload'" in r for r in reasons) and any("step 'reveal'" in r for r in reasons)


def test_fewer_survivors_than_the_threshold_fail_the_round_and_the_next_completes(mosquitto, tmp_path: Path,
                                                                                 job_threads) -> None:
    job = Job(mosquitto, tmp_path, "secure-short", n=3, rounds=2, round_timeout=6, secure_threshold=3)
    _silence(job.silos[2], lambda header: isinstance(header, Update) and header.round == 1)
    assert job.run(job_threads)["aggregator"] == 0

    rows = job.store.history("secure-short")
    assert [r["status"] for r in rows] == ["failed", "completed"]
    assert rows[0]["metrics"]["secure_unmasked"] == 0 and rows[0]["metrics"]["secure_dropped_upload"] == 1
    assert any("fewer than the threshold of 3" in r for r in rejections(job.store, "secure-short", 1))
    assert not (job.out / "secure-short" / "round-0001.safetensors").exists()
    assert "NOT unmasked, dropped 0/0/1/0" in render_rounds("secure-short", rows)
    job.assert_fedavg(2, ["s0", "s1", "s2"])  # round 2 trained on the initial model again


def test_a_hostile_silo_is_rejected_and_reveals_nothing_of_another(mosquitto, tmp_path: Path, job_threads) -> None:
    job = Job(mosquitto, tmp_path, "secure-hostile", n=5, rounds=3, round_timeout=6)
    evil = job.silos[4]
    publish = evil.conn.publish

    def hostile(topic, header, *args, **kwargs):
        if isinstance(header, SecAggKeys) and header.round == 1:  # forged: signed by some other key
            forged = base64.b64encode(Ed25519PrivateKey.generate().sign(b"forged")).decode()
            header = header.model_copy(update={"signature": forged})
        elif isinstance(header, SecAggShares) and header.round == 2:  # malformed: a ciphertext cut short
            first = sorted(header.shares)[0]
            header = header.model_copy(update={"shares": dict(header.shares, **{first: header.shares[first][:40]})})
        elif isinstance(header, Update) and header.round == 3:  # a masked vector one element too long
            payload = bytes(args[0]) + b"\0\0\0\0"
            from fedmq.schemas import PayloadInfo
            from fedmq.schemas.codec import sha256_hex
            from fedmq.schemas.signing import sign

            header = sign(header.model_copy(update={"signature": None, "payload": PayloadInfo(
                codec=header.payload.codec, size=len(payload), sha256=sha256_hex(payload))}), evil.key)
            args = (payload, *args[1:])
        return publish(topic, header, *args, **kwargs)

    evil.conn.publish = hostile
    reveals: list[SecAggReveal] = []
    on_message = job.federation.secure.on_message

    def watched(header):
        if isinstance(header, SecAggReveal):
            reveals.append(header)
        on_message(header)

    job.federation.secure.on_message = watched
    assert job.run(job_threads)["aggregator"] == 0

    rows = job.store.history("secure-hostile")
    assert [r["status"] for r in rows] == ["completed"] * 3
    honest = ["s0", "s1", "s2", "s3"]
    for number in (1, 2, 3):
        job.assert_fedavg(number, honest)
    assert any("not signed by its key" in r for r in rejections(job.store, "secure-hostile", 1))
    assert any("malformed share" in r for r in rejections(job.store, "secure-hostile", 2))
    assert any("masked vector of" in r for r in rejections(job.store, "secure-hostile", 3))
    # Never both secrets of one silo: s4's key was revealed in round 3 (it did not upload a valid vector),
    # so its seed was not; the honest silos' seeds were, never their keys.
    round_3 = [r for r in reveals if r.round == 3]
    assert round_3
    for reveal in reveals:
        assert not set(reveal.seed_shares) & set(reveal.key_shares)
    assert all("s4" in r.key_shares and "s4" not in r.seed_shares for r in round_3)
    assert all(not set(r.key_shares) & set(honest) for r in reveals)


def _silence(silo: SiloClient, drop) -> None:
    """``silo`` sends nothing ``drop`` picks, as if it had died just before."""
    publish = silo.conn.publish

    def silenced(topic, header, *args, **kwargs):
        if drop(header):
            return 0
        return publish(topic, header, *args, **kwargs)

    silo.conn.publish = silenced


@pytest.mark.parametrize(("changes", "needle"), [
    ({"strategy": StrategyOptions(name="median")}, "--strategy median"),
    ({"mode": "async"}, "--mode sync"),
    ({"codec": "delta-int8"}, "lossy codec"),
    ({"sign": False}, "needs --sign"),
    ({"strategy": StrategyOptions(dp_clip=1.0, dp_noise=1.0)}, "dp-clip"),
])
def test_combinations_that_cannot_work_are_refused_at_start(tmp_path: Path, changes: dict, needle: str) -> None:
    options = dict(broker="mqtt://127.0.0.1:1", job="refused", db=f"sqlite:///{tmp_path / 'f.db'}", sign=True,
                   keys_dir=tmp_path, secure_agg=True)
    options.update(changes)
    from fedmq.broker.url import parse_broker_url

    options["broker"] = parse_broker_url(options["broker"])
    with pytest.raises(ConfigError, match=needle.replace("-", r"\-")):
        run_aggregator(AggregatorConfig(**options))
    assert not (tmp_path / "f.db").exists(), "refused before the store was made"
    store = Store(options["db"])
    try:  # a program that builds the Federation itself is refused all the same
        with pytest.raises(ConfigError, match=needle.replace("-", r"\-")):
            Federation(AggregatorConfig(**options), store)
    finally:
        store.close()


def test_silo_processes_killed_between_steps_leave_the_survivors_sum(mosquitto, tmp_path: Path, job_threads) -> None:
    """Real `fedmq client` processes: s1 is SIGKILLed the moment the aggregator has its shares (so before it
    can upload), s3 the moment its masked vector is in (so before it can reveal). The round completes with
    the sum of the four that uploaded, and their summed counts."""
    import os
    import signal

    from ..conftest import start_fedmq, stop_processes

    name, n = "secure-killed", 5
    data = synth_classification(tmp_path / "D", silos=n, train_per_silo=16, test_per_silo=8)
    keys_dir = tmp_path / "keys"
    private = {f"s{i}": write_key(keys_dir, f"s{i}")[1] for i in range(n)}
    store = Store(f"sqlite:///{tmp_path / 'f.db'}")
    config = AggregatorConfig(broker=mosquitto.url, job=name, db=store.url, rounds=1, min_clients=n,
                              out=tmp_path / "out", round_timeout=8, sign=True, keys_dir=keys_dir, secure_agg=True)
    federation = Federation(config, store)
    procs = {f"s{i}": start_fedmq("client", "--broker", str(mosquitto.url), "--silo", f"s{i}", "--data", str(data[i]),
                                  "--job", name, "--work-dir", str(tmp_path / f"w{i}"), "--signing-key",
                                  str(private[f"s{i}"]), log=tmp_path / f"s{i}.log") for i in range(n)}
    killed: list[str] = []

    def kill(silo: str) -> None:
        os.kill(procs[silo].pid, signal.SIGKILL)
        procs[silo].wait(timeout=30)
        killed.append(silo)

    on_message, masked = federation.secure.on_message, federation.secure.masked

    def watched_message(header) -> None:
        on_message(header)
        if isinstance(header, SecAggShares) and header.silo == "s1":
            kill("s1")  # its shares are in; the inbox (and so its upload) comes only once every silo's are

    def watched_masked(silo, codec, payload) -> None:
        masked(silo, codec, payload)
        if silo == "s3":
            kill("s3")  # uploaded; the unmask request comes only once every upload is in or overdue

    federation.secure.on_message, federation.secure.masked = watched_message, watched_masked
    try:
        assert job_threads(federation).finish(240)["aggregator"] == 0
    finally:
        stop_processes(procs.values())
    assert killed == ["s1", "s3"]
    rows = store.history(name)
    assert [r["status"] for r in rows] == ["completed"]
    metrics = rows[0]["metrics"]
    assert metrics["secure_unmasked"] == 1
    assert metrics["secure_dropped_upload"] == 1 and metrics["secure_dropped_reveal"] == 1
    assert rows[0]["num_samples"] == 4 * 16  # s0, s2, s3 and s4's counts, unmasked with their sum
    model = load_file(str(tmp_path / "out" / name / "round-0001.safetensors"))
    assert all(bool(torch.isfinite(t).all()) for t in model.values() if t.is_floating_point())
    store.close()


def test_a_server_optimiser_applies_to_the_unmasked_mean(mosquitto, tmp_path: Path, job_threads) -> None:
    """FedAdam with --secure-agg: the model is FedAdam's step from the (unmasked) FedAvg mean of the updates."""
    from fedmq.aggregator.strategies import make_strategy

    job = Job(mosquitto, tmp_path, "secure-adam", n=3, rounds=1, strategy=StrategyOptions(name="fedadam"))
    assert job.run(job_threads)["aggregator"] == 0
    mean, _ = job.fedavg(1, ["s0", "s1", "s2"])
    base = job.trained[1]["s0"][1]
    adam = make_strategy(StrategyOptions(name="fedadam"))
    adam.begin(base)
    adam.add({k: (mean[k].to(v.dtype) if k in mean else v.clone()) for k, v in base.items()}, 48.0, base=base)
    expected = adam.result()
    got = job.model(1)
    for name, value in expected.items():
        if value.is_floating_point():
            assert torch.allclose(got[name], value, atol=1e-6), name
    assert not all(torch.equal(got[k], base[k]) for k in got if base[k].is_floating_point())
