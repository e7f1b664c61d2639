"""The MQTT connection against a real Mosquitto: chunked messages, refusals, retained state."""

from __future__ import annotations

import time

import torch
from fedmq.broker.connection import Connection, Refused
from fedmq.schemas import JobSpec, ModelSync, PayloadInfo, Presence, Topics
from fedmq.schemas.codec import decode_state, encode_state, sha256_hex
from fedmq.schemas.framing import encode_chunks


def _conn(url, name: str, subs: list[str], **kw) -> Connection:
    conn = Connection(url, name=name, subscriptions=subs, max_message_bytes=1 << 26, **kw)
    conn.connect(timeout=10)
    return conn


def _spec(job: str) -> JobSpec:
    return JobSpec(job=job, run_id="r1", model="cnn", rounds=1, min_clients=1, local_epochs=1, batch_size=4,
                   lr=0.1, seed=0, codec="safetensors+zstd", chunk_size=4096, max_update_bytes=1 << 20)


def test_a_model_crosses_the_broker_in_many_small_chunks(mosquitto) -> None:
    topics = Topics("conn-chunks")
    receiver = _conn(mosquitto.url, "rx", [topics.model])
    sender = _conn(mosquitto.url, "tx", [])
    try:
        state = {"w": torch.randn(300, 100), "n": torch.tensor(3)}
        payload = encode_state(state, "safetensors+zstd")
        header = ModelSync(job=topics.job, run_id="r1", version=0, train_round=1,
                           payload=PayloadInfo(codec="safetensors+zstd", size=len(payload), sha256=sha256_hex(payload)))
        sent = sender.publish(topics.model, header, payload, chunk_size=4096)
        assert sent > len(payload), "chunk prefixes and the header add bytes"
        got = receiver.receive(timeout=10)
        assert got.header == header
        out = decode_state(got.payload, "safetensors+zstd", 1 << 26)
        assert torch.equal(out["w"], state["w"]) and out["n"].item() == 3
    finally:
        sender.close()
        receiver.close()


def test_garbage_arrives_as_a_refusal_not_a_crash(mosquitto) -> None:
    topics = Topics("conn-garbage")
    receiver = _conn(mosquitto.url, "rx", [topics.all_updates])
    sender = _conn(mosquitto.url, "tx", [])
    try:
        junk = b"\x00not a fedmq message at all, just some bytes on the wire"
        sender._client.publish(topics.update("x"), junk, qos=1).wait_for_publish(5)
        got = receiver.receive(timeout=10)
        assert isinstance(got, Refused) and "magic" in got.reason
        assert receiver.connected, "the connection survives garbage"
    finally:
        sender.close()
        receiver.close()


def test_retained_state_is_published_again_after_a_broker_restart(own_mosquitto) -> None:
    """Mosquitto without persistence forgets retained messages; fedmq re-publishes them on reconnect."""
    topics = Topics("conn-restart")
    holder = _conn(own_mosquitto.url, "holder", [])
    holder.set_retained(topics.init, _spec(topics.job))
    own_mosquitto.stop()
    own_mosquitto.start()
    deadline = time.monotonic() + 20
    late = None
    try:
        while time.monotonic() < deadline:
            late = _conn(own_mosquitto.url, "late", [topics.init])
            got = late.receive(timeout=2)
            if got is not None:
                assert isinstance(got.header, JobSpec) and got.header.job == topics.job
                return
            late.close()
            late = None
        raise AssertionError("the retained job spec never came back after the broker restart")
    finally:
        holder.close()
        if late:
            late.close()


def test_last_will_marks_a_vanished_silo_offline(mosquitto) -> None:
    topics = Topics("conn-will")
    watcher = _conn(mosquitto.url, "watcher", [topics.all_presence])
    silo = _conn(mosquitto.url, "silo", [], will=(topics.presence("a"), Presence(job=topics.job, silo="a", online=False)))
    try:
        silo.set_retained(topics.presence("a"), Presence(job=topics.job, silo="a", online=True, task="classification",
                                                          labels=["x", "y"]))
        assert watcher.receive(timeout=10).header.online is True
        silo._client._sock.close()  # the process vanishes without a DISCONNECT: the broker sends the will
        silo._client.loop_stop()
        got = watcher.receive(timeout=90)
        assert got is not None and got.header.online is False
    finally:
        watcher.close()


def _upload_at_once(url, topics: Topics, senders: int, payload: bytes) -> None:
    """``senders`` silos publish an update of ``payload`` at once, their chunks interleaved: each
    sender's first chunk arrives before any sender's second. One connection sends them all, on each
    silo's topic in turn: MQTT keeps a connection's order, which several connections (each with its
    own network thread) would not, so the interleaving holds however loaded the machine is."""
    header = ModelSync(job=topics.job, run_id="r1", version=0, train_round=1,
                       payload=PayloadInfo(codec="safetensors+zstd", size=len(payload), sha256=sha256_hex(payload)))
    conn = _conn(url, "tx", [])
    chunks = encode_chunks(header, payload, 4096)
    try:
        infos = [conn._client.publish(topics.update(f"s{i}"), chunk, qos=1)
                 for chunk in chunks for i in range(senders)]
        for info in infos:
            info.wait_for_publish(10)
    finally:
        conn.close()


def test_simultaneous_uploads_of_many_silos_all_arrive(mosquitto) -> None:
    """Room for partial messages follows the number of senders: 8 silos uploading at once, each update
    near the per-message cap, all arrive; with room for 4 messages only, some are refused, as retriable."""
    payload = bytes(range(256)) * 160  # 40 KiB
    cap = len(payload) + 1024
    for senders, room_for, expect_refused in ((8, 8, False), (8, 0, True)):
        topics = Topics(f"conn-burst-{room_for}")
        receiver = _conn(mosquitto.url, "rx", [topics.all_updates])
        receiver.limit_message_bytes(cap, senders=room_for)
        try:
            _upload_at_once(mosquitto.url, topics, senders, payload)
            got = [receiver.receive(timeout=10) for _ in range(senders)]
            whole = [g for g in got if g is not None and not isinstance(g, Refused)]
            refused = [g for g in got if isinstance(g, Refused)]
            assert all(bytes(g.payload) == payload for g in whole)
            if expect_refused:
                assert refused and all(r.retry and "pending" in r.reason for r in refused), got
            else:
                assert len(whole) == senders, [g.reason for g in refused]
        finally:
            receiver.close()


def test_a_broker_restarting_behind_a_tcp_acceptor_is_waited_for(mosquitto) -> None:
    """Found by the chaos soak (issue 16): a load balancer (here a proxy) accepts TCP while the broker behind it
    restarts, and drops each connection. Connect gave up after two drops, in about a second, whatever its
    timeout; it now waits for the broker within the timeout."""
    import socket
    import threading

    from fedmq.broker.url import BrokerUrl

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    up_at = time.monotonic() + 2.5  # the broker behind it is "back" 2.5 s from now
    stop = threading.Event()

    def pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def serve() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            if time.monotonic() < up_at:
                client.close()  # the broker is not there yet: dropped before any CONNACK
                continue
            upstream = socket.create_connection((mosquitto.url.host, mosquitto.url.port))
            threading.Thread(target=pipe, args=(client, upstream), daemon=True).start()
            threading.Thread(target=pipe, args=(upstream, client), daemon=True).start()

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    conn = Connection(BrokerUrl("127.0.0.1", port), "behind-a-proxy", [], max_message_bytes=1 << 20, probe=False)
    try:
        conn.connect(timeout=20)
        assert conn.connected and time.monotonic() >= up_at
    finally:
        conn.close()
        stop.set()
        server.join(5)
        listener.close()
