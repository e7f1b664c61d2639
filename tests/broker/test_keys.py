"""Ed25519 signing keys: made once by `fedmq keys`, loaded by the silo (private) and the aggregator (public)."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature
from fedmq.broker.keys import ensure_keys, load_private_key, load_public_keys
from fedmq.errors import ConfigError


def test_fedmq_keys_writes_loadable_keys_once(tmp_path: Path) -> None:
    auth = tmp_path / "auth"
    cli = [sys.executable, "-m", "fedmq.cli", "keys", "--auth-dir", str(auth)]
    done = subprocess.run([*cli, "--silos", "hospital-a,hospital-b"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    keys = auth / "keys"
    assert stat.S_IMODE((keys / "hospital-a.key").stat().st_mode) == 0o600
    assert (keys / "hospital-a.key").read_text().startswith("-----BEGIN PRIVATE KEY-----")
    assert (keys / "hospital-a.pub").read_text().startswith("-----BEGIN PUBLIC KEY-----")
    before = (keys / "hospital-a.key").read_bytes()
    done = subprocess.run([*cli, "--silos", "hospital-a,hospital-c"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert (keys / "hospital-a.key").read_bytes() == before, "an existing key is never replaced"

    public = load_public_keys(keys)
    assert set(public) == {"hospital-a", "hospital-b", "hospital-c"}
    private = load_private_key(keys / "hospital-a.key")
    signature = private.sign(b"update header")
    public["hospital-a"].verify(signature, b"update header")
    with pytest.raises(InvalidSignature):
        public["hospital-b"].verify(signature, b"update header")
    with pytest.raises(InvalidSignature):
        public["hospital-a"].verify(signature, b"another header")


def test_bad_key_files_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_private_key(tmp_path / "missing.key")
    (tmp_path / "junk.key").write_text("not a key")
    with pytest.raises(ConfigError, match="PEM"):
        load_private_key(tmp_path / "junk.key")
    with pytest.raises(ConfigError, match="does not exist"):
        load_public_keys(tmp_path / "nokeys")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no public keys"):
        load_public_keys(tmp_path / "empty")
    ensure_keys(tmp_path / "k", ["a"])
    (tmp_path / "k" / "a.key").rename(tmp_path / "k" / "b.pub")  # a private key where a public one should be
    with pytest.raises(ConfigError):
        load_public_keys(tmp_path / "k")
