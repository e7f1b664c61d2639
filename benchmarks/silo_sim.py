"""Simulated silos and a real aggregator process, for the aggregator-memory and scale benchmarks.

Many silos live in one process: each has an MQTT session of its own (as many broker connections as
real silos) but none trains. ``PahoSilo`` is a plain paho session that announces its presence and
publishes prepared chunks; ``SharedUpload`` chunks one update payload once for all of them (only
the first chunk, which holds the header naming the silo, differs), so the simulator does not need
N copies of the model. ``Listener`` hears what the aggregator broadcasts, with fedmq's Connection.
``AggregatorProcess`` runs ``fedmq aggregator`` and samples its resident memory from /proc.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt
import torch
from bench_common import MB, fedmq_cli, rss_mb
from fedmq.broker.connection import Connection
from fedmq.broker.url import BrokerUrl
from fedmq.schemas import DEFAULT_MAX_PAYLOAD_BYTES, Envelope, Presence, Reassembler, Topics, encode_chunks, unpack_message
from fedmq.schemas.codec import StateDict
from fedmq.schemas.framing import PREFIX_SIZE, pack_message, split_chunks
from fedmq.schemas.messages import Message, UploadGrant, UploadRequest
from paho.mqtt.enums import CallbackAPIVersion
from safetensors.torch import save_file

LABELS = [f"class{i}" for i in range(10)]
QOS = 1


def single_chunk(header: Message) -> bytes:
    """A header-only message as one chunk: what fedmq publishes retained (presence) or small (results)."""
    return encode_chunks(header, b"", chunk_size=1 << 30)[0]


def silo_name(i: int) -> str:
    """Fixed-width names, so every silo's update header has the same length (see ``SharedUpload``)."""
    return f"silo-{i:03d}"


def initial_weights(model: str, path: Path, num_classes: int = len(LABELS)) -> StateDict:
    """The model a silo of this job would build (fedmq's own registry, seed 0), saved for --init-weights."""
    from fedmq.edge_client.models import build_model

    state = {k: v.detach().clone().contiguous() for k, v in build_model("classification", model, num_classes, 0)
             .state_dict().items()}
    save_file(state, str(path))
    return state


def perturbed(state: StateDict, scale: float = 1e-3, seed: int = 1) -> StateDict:
    """Weights a silo might send back: float tensors moved a little, integer buffers as they were."""
    generator = torch.Generator().manual_seed(seed)
    return {k: v + scale * torch.randn(v.shape, generator=generator) if v.is_floating_point() else v.clone()
            for k, v in state.items()}


class SharedUpload:
    """One payload chunked once; each silo's chunks differ only in the first (which holds its header).

    The message id in the chunk prefix is shared too: receivers key partial messages by (topic, id),
    and every silo publishes on a topic of its own.
    """

    def __init__(self, payload: bytes, chunk_size: int, template_header: Message) -> None:
        self.payload = payload
        self.chunk_size = chunk_size
        self.head_len = len(pack_message(template_header))
        self.template = split_chunks(pack_message(template_header, payload), chunk_size, message_id=uuid.uuid4().bytes)

    def chunks_for(self, header: Message) -> list[bytes]:
        head = pack_message(header)
        if len(head) != self.head_len:  # another header length moves every chunk boundary: chunk it alone
            return encode_chunks(header, self.payload, self.chunk_size)
        first = self.template[0]
        return [first[:PREFIX_SIZE] + head + first[PREFIX_SIZE + self.head_len:], *self.template[1:]]


class PahoSilo:
    """A silo's MQTT session as plain paho: its presence (and last will), QoS 1 publishing, and upload
    flow control as fedmq's silos follow it (``request_upload``: ask, wait for the grant, ask again).

    ``max_inflight`` bounds the chunks paho turns into packets at a time (it packs a queued message
    only when an in-flight slot frees), so N silos uploading at once hold N x max_inflight chunks,
    not N models.
    """

    def __init__(self, url: BrokerUrl, job: str, name: str, max_inflight: int = 20) -> None:
        self.url, self.name, self.topics = url, name, Topics(job)
        self.job = job
        self.connected = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"sim-{name}-{uuid.uuid4().hex[:6]}",
                                  protocol=mqtt.MQTTv311, clean_session=True)
        self.client.max_inflight_messages_set(max_inflight)
        self.client.will_set(self.topics.presence(name), single_chunk(Presence(job=job, silo=name, online=False)),
                             qos=QOS, retain=True)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.granted = threading.Event()
        self._grants = Reassembler(1 << 20, ttl=60)

    def _on_connect(self, client: mqtt.Client, *_: object) -> None:
        client.subscribe(self.topics.grant(self.name), qos=QOS)
        self.connected.set()

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        whole = self._grants.add(message.topic, message.payload)
        if whole is not None and isinstance(unpack_message(whole, message.topic).header, UploadGrant):
            self.granted.set()

    def request_upload(self, run_id: str, round_number: int, size: int, timeout: float,
                       ask_every: float = 15.0) -> float:
        """Ask the aggregator to upload and wait for its grant (asking again every ``ask_every`` s, as
        fedmq's silos do); the seconds waited."""
        started = time.monotonic()
        deadline = started + timeout
        self.granted.clear()
        request = UploadRequest(job=self.job, run_id=run_id, silo=self.name, round=round_number, size=size)
        while True:
            self.publish(self.topics.update(self.name), [single_chunk(request)])
            if self.granted.wait(min(ask_every, max(0.1, deadline - time.monotonic()))):
                return time.monotonic() - started
            if time.monotonic() >= deadline:
                raise RuntimeError(f"{self.name}: no upload grant within {timeout:.0f} s")

    def connect(self, timeout: float = 30.0) -> None:
        self.client.connect(self.url.host, self.url.port, keepalive=60)
        self.client.loop_start()
        if not self.connected.wait(timeout):
            raise RuntimeError(f"{self.name}: no CONNACK from the broker")

    def announce(self, task: str = "classification", labels: list[str] | None = None) -> None:
        presence = Presence(job=self.job, silo=self.name, online=True, task=task, labels=labels or LABELS)
        self.publish(self.topics.presence(self.name), [single_chunk(presence)], retain=True)

    def publish(self, topic: str, chunks: list[bytes], retain: bool = False, timeout: float = 600.0) -> None:
        """Publish every chunk at QoS 1 and wait until the broker acknowledged them all."""
        infos = [self.client.publish(topic, chunk, qos=QOS, retain=retain) for chunk in chunks]
        deadline = time.monotonic() + timeout
        for info in infos:
            info.wait_for_publish(max(0.1, deadline - time.monotonic()))
            if not info.is_published():
                raise RuntimeError(f"{self.name}: the broker did not acknowledge a chunk on {topic}")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Listener:
    """Hears what the aggregator broadcasts (job spec, models, test requests, its status) through fedmq's Connection."""

    def __init__(self, url: BrokerUrl, job: str, keep: int = 200) -> None:
        topics = Topics(job)
        self.conn = Connection(url, "sim-listener", [topics.init, topics.model, topics.test, topics.status],
                               DEFAULT_MAX_PAYLOAD_BYTES, probe=False)
        self.conn.connect()
        self.skipped: list[tuple[Envelope, float]] = []  # heard but not yet asked for, oldest first
        self.keep = keep

    def next(self, accept: Callable[[Envelope], bool], timeout: float) -> tuple[Envelope, float]:
        """The first message ``accept`` takes, skipped ones included, and when it arrived (monotonic)."""
        for i, (envelope, arrived) in enumerate(self.skipped):
            if accept(envelope):
                del self.skipped[i]
                return envelope, arrived
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            incoming = self.conn.receive(timeout=min(left, 1.0))
            if not isinstance(incoming, Envelope):
                continue
            arrived = time.monotonic()
            if accept(incoming):
                return incoming, arrived
            self.skipped = [*self.skipped[-self.keep + 1:], (incoming, arrived)]
        raise TimeoutError(f"nothing accepted from the aggregator within {timeout:.0f} s")

    def close(self) -> None:
        self.conn.close()


class AggregatorProcess:
    """``fedmq aggregator`` as a process of its own, its resident memory sampled from /proc meanwhile."""

    def __init__(self, work: Path, url: BrokerUrl, job: str, args: list[str], sample_every: float = 0.02,
                 wrapper: list[str] | None = None, env: dict[str, str] | None = None) -> None:
        """``wrapper``: python options before ``-m fedmq.cli`` (say ``-m memray run -o FILE``), which must keep
        the aggregator in the same process, so that /proc/PID is still the aggregator's."""
        work.mkdir(parents=True, exist_ok=True)
        self.db = f"sqlite:///{work / 'fedmq.db'}"
        self.log_path = work / "aggregator.log"
        self.samples: list[tuple[float, float, float]] = []  # (monotonic, VmRSS MB, VmHWM MB)
        command = fedmq_cli("aggregator", "--broker", f"mqtt://{url.host}:{url.port}", "--job", job, "--db", self.db,
                            "--out", str(work / "out"), *args)
        if wrapper:
            command = [command[0], *wrapper, *command[1:]]
        with open(self.log_path, "wb") as log_file:
            self.proc = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT,
                                         env={**os.environ, **(env or {})})
        self._every = sample_every
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()

    def _sample(self) -> None:
        while self.proc.poll() is None:
            try:
                self.samples.append((time.monotonic(), *rss_mb(self.proc.pid)))
            except (OSError, KeyError):  # exiting: /proc/PID/status is gone or has no memory lines left
                return
            time.sleep(self._every)

    @property
    def rss(self) -> float:
        return rss_mb(self.proc.pid)[0]

    @property
    def peak(self) -> float:
        """The kernel's high-water mark as last sampled (it only grows, so the last sample is the peak)."""
        return max((s[2] for s in self.samples), default=0.0)

    def wait(self, timeout: float) -> int | None:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: the aggregator marks the job interrupted and exits
            if self.wait(15) is None:
                self.proc.kill()
                self.proc.wait()
        self._sampler.join(timeout=5)

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]


def model_mb(state: StateDict) -> float:
    return sum(t.numel() * t.element_size() for t in state.values()) / MB
