"""The silo's own checks on the job it is asked to join (no broker needed: it is not connected)."""

from __future__ import annotations

from pathlib import Path

import pytest
from fedmq.broker.url import BrokerUrl
from fedmq.edge_client.data.coco import synth_detection
from fedmq.edge_client.data.synth_classification import synth_classification
from fedmq.edge_client.silo import ClientConfig, SiloClient
from fedmq.errors import DataError
from fedmq.schemas import JobSpec


def _spec(**changes) -> JobSpec:
    base = dict(job="j", run_id="r", status="running", task="classification", model="cnn",
                labels=["bars", "cross", "disc", "stripes"], rounds=1, min_clients=1, local_epochs=1, batch_size=4,
                lr=0.1, seed=0, codec="safetensors+zstd", chunk_size=4096, max_update_bytes=1 << 20)
    return JobSpec(**{**base, **changes})


def _silo(data: Path, tmp_path: Path) -> SiloClient:
    return SiloClient(ClientConfig(broker=BrokerUrl("127.0.0.1", 1), silo="a", data=data, job="j",
                                   work_dir=tmp_path / "w", device="cpu"))


def test_a_detection_silo_refuses_a_classification_job(tmp_path: Path) -> None:
    [data] = synth_detection(tmp_path / "D", silos=1, images_per_silo=4, image_size=64)
    silo = _silo(data, tmp_path)
    assert silo.task.name == "detection"
    with pytest.raises(DataError, match=r"is a classification job but this silo runs the task detection \(pass"):
        silo._on_job(_spec())


def test_labels_the_job_does_not_know_are_refused(tmp_path: Path) -> None:
    [data] = synth_classification(tmp_path / "D", silos=1, train_per_silo=8, test_per_silo=4)
    silo = _silo(data, tmp_path)
    with pytest.raises(DataError, match="labels the job does not know: disc, stripes"):
        silo._on_job(_spec(labels=["bars", "cross"]))


def test_a_silo_with_fewer_classes_builds_the_jobs_model(tmp_path: Path) -> None:
    [data] = synth_classification(tmp_path / "D", silos=1, train_per_silo=8, test_per_silo=4, classes=2)
    silo = _silo(data, tmp_path)
    assert silo._on_job(_spec()) is None
    assert silo.run_state.model.classifier[-1].out_features == 4
    assert silo._on_job(_spec(status="finished")) == 0
    assert silo._on_job(_spec(run_id="other", status="failed")) is None, "an earlier run's end is not ours"


class _TimedConnection:
    """Stands in for the broker connection: takes each publish in ``seconds``, as a link of that speed would."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self.sent = seconds, []

    def publish(self, topic, header, payload=b"", chunk_size=0, **_) -> int:
        import time

        time.sleep(self.seconds)
        self.sent.append(header)
        return len(payload) + 200


@pytest.mark.parametrize("seconds,second_codec", [(0.0, "raw"), (2.0, "shuffle+zstd")])
def test_an_auto_silo_compresses_first_then_picks_by_its_link(tmp_path: Path, seconds: float, second_codec: str,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    """A 1 MB update: the first goes compressed and measures; on a link that took no time the next goes
    raw, on one that took 2 s (0.5 MB/s) compressed. The payload's header names its codec and BLAKE3."""
    import logging

    import torch
    from fedmq.edge_client.silo import RunState
    from fedmq.schemas.codec import decode_state, payload_digest

    [data] = synth_classification(tmp_path / "D", silos=1, train_per_silo=8, test_per_silo=4)
    silo = _silo(data, tmp_path)
    silo.conn = _TimedConnection(seconds)
    state = RunState(spec=_spec(codec="auto"))
    weights = {"w": torch.randn(250_000, generator=torch.Generator().manual_seed(0))}
    with caplog.at_level(logging.INFO):
        for round_number in (1, 2):
            silo._send_update(state, round_number, None, weights, 8, 0.5, 1.0)
    first, second = (h.payload for h in silo.conn.sent)
    assert (first.codec, second.codec) == ("shuffle+zstd", second_codec)
    payload = state.last_update[1]
    assert second.blake3 == payload_digest(payload) and second.sha256 is None
    assert torch.equal(decode_state(payload, second.codec, 1 << 24)["w"], weights["w"])
    assert "codec auto for silo a: compressed until the link and the codec are measured" in caplog.text
    if second_codec == "raw":
        assert "codec auto for silo a: uncompressed (raw): link" in caplog.text
