"""`fedmq dashboard`'s refusals: each one clear line and a hint, before anything listens."""

from __future__ import annotations

import socket
from pathlib import Path

from fedmq.store import Store


def store_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'fedmq.db'}"
    Store(url).close()
    return url


def test_off_loopback_without_a_token_is_refused(tmp_path: Path, fedmq) -> None:
    result = fedmq.run("dashboard", "--db", store_url(tmp_path), "--host", "127.0.0.2", "--port", "8099")
    assert result.returncode == 2
    assert "listening on 127.0.0.2 needs a token" in result.stderr and "hint: pass --token-file" in result.stderr


def test_a_short_token_or_an_unreadable_token_file_is_refused(tmp_path: Path, fedmq) -> None:
    short = fedmq.run("dashboard", "--db", store_url(tmp_path), "--token", "abc")
    assert short.returncode == 2 and "shorter than 16 characters" in short.stderr and "abc" not in short.stderr
    missing = fedmq.run("dashboard", "--db", store_url(tmp_path), "--token-file", str(tmp_path / "nope"))
    assert missing.returncode == 2 and "cannot read the token file" in missing.stderr


def test_a_missing_store_or_a_taken_port_is_a_clear_error(tmp_path: Path, fedmq) -> None:
    missing = fedmq.run("dashboard", "--db", f"sqlite:///{tmp_path / 'none.db'}")
    assert missing.returncode == 1 and "no store at" in missing.stderr and "hint:" in missing.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = fedmq.run("dashboard", "--db", store_url(tmp_path), "--port", str(port))
    assert busy.returncode == 2 and f"cannot listen on 127.0.0.1:{port}" in busy.stderr

