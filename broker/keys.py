"""Ed25519 signing keys of the silos: ``KEYS_DIR/<silo>.key`` (private) and ``KEYS_DIR/<silo>.pub``.

A silo keeps its ``.key`` and signs what it sends with it (schemas/signing.py); the aggregator
holds only the ``.pub`` files. Keys are made once: a later run adds keys for new silos and never
replaces one, since the aggregator may already trust it.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ..errors import ConfigError
from ..schemas.topics import check_name
from .private_files import write_private

PRIVATE_SUFFIX = ".key"
PUBLIC_SUFFIX = ".pub"


def private_key_path(keys_dir: Path, silo: str) -> Path:
    return Path(keys_dir) / f"{check_name('silo', silo)}{PRIVATE_SUFFIX}"


def public_key_path(keys_dir: Path, silo: str) -> Path:
    return Path(keys_dir) / f"{check_name('silo', silo)}{PUBLIC_SUFFIX}"


def ensure_keys(keys_dir: Path, silos: Iterable[str]) -> list[str]:
    """Make a key pair for every silo that has none yet. Returns the silos that got a new one."""
    keys_dir = Path(keys_dir)
    keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    made = []
    for silo in silos:
        private, public = private_key_path(keys_dir, silo), public_key_path(keys_dir, silo)
        if private.exists():
            if not public.exists():  # the public half can always be derived again
                _write_public(public, load_private_key(private).public_key())
            continue
        key = Ed25519PrivateKey.generate()
        write_private(private, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                 serialization.NoEncryption()))
        _write_public(public, key.public_key())
        made.append(silo)
    return made


def _write_public(path: Path, key: Ed25519PublicKey) -> None:
    path.write_bytes(key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """A silo's private key from a PEM (PKCS8, unencrypted) file."""
    path = Path(path)
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as exc:
        raise ConfigError(f"cannot read the signing key {path}: {exc.strerror or exc}",
                          hint="make keys with `fedmq keys --auth-dir DIR --silos NAME` and pass DIR/keys/NAME.key") from None
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{path} is not an unencrypted PEM private key: {exc}",
                          hint="pass the .key file written by `fedmq keys`") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{path} holds a {type(key).__name__}, not an Ed25519 key", hint="pass a key made by `fedmq keys`")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    path = Path(path)
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except OSError as exc:
        raise ConfigError(f"cannot read the public key {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise ConfigError(f"{path} is not a PEM public key: {exc}", hint="pass the .pub files written by `fedmq keys`") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"{path} holds a {type(key).__name__}, not an Ed25519 key", hint="pass a key made by `fedmq keys`")
    return key


def load_public_keys(keys_dir: Path) -> dict[str, Ed25519PublicKey]:
    """Every ``<silo>.pub`` in a folder, by silo name. A folder with none is an error: nobody could sign."""
    keys_dir = Path(keys_dir)
    if not keys_dir.is_dir():
        raise ConfigError(f"the keys folder {keys_dir} does not exist",
                          hint="make keys with `fedmq keys --auth-dir DIR --silos a,b` and pass DIR/keys")
    keys = {path.name[: -len(PUBLIC_SUFFIX)]: path for path in sorted(keys_dir.glob(f"*{PUBLIC_SUFFIX}"))}
    if not keys:
        raise ConfigError(f"no public keys (*{PUBLIC_SUFFIX}) in {keys_dir}",
                          hint="make keys with `fedmq keys --auth-dir DIR --silos a,b` and pass DIR/keys")
    return {check_name("silo", silo): load_public_key(path) for silo, path in keys.items()}
