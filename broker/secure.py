"""What ``fedmq broker --auth-dir/--tls-dir`` and ``fedmq keys`` do before (or instead of) running a broker."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError
from ..schemas.topics import ANY_JOB
from .auth import AuthDir, AuthFiles, parse_silos
from .keys import ensure_keys
from .tls import TlsFiles, ensure_tls, server_names

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BrokerSecurity:
    auth: AuthFiles | None
    tls: TlsFiles | None
    instructions: str  # for the operator: where things are, how to connect; never a password


def prepare_security(host: str, port: int, auth_dir: Path | None, silos: str = "", job: str = ANY_JOB,
                     tls_dir: Path | None = None) -> BrokerSecurity:
    """Make (or reuse) the credentials, ACL, signing keys and TLS files the options ask for."""
    if auth_dir is None and (parse_silos(silos) or job != ANY_JOB):
        raise ConfigError("--silos and --job need --auth-dir", hint="pass --auth-dir DIR to make credentials for them")
    lines: list[str] = []
    tls = None
    if tls_dir is not None:
        tls = ensure_tls(tls_dir, [host])
        lines.append(f"TLS: clients connect with mqtts://{host}:{port} and --ca-file {tls.ca_cert.resolve()} "
                     f"(certificate for {', '.join(server_names([host]))})")
    auth = None
    if auth_dir is not None:
        folder = AuthDir(auth_dir, job)
        added = folder.ensure(parse_silos(silos))
        if added:
            log.info("auth: new credentials for %s", ", ".join(added))
        auth = folder.files
        lines.append(folder.instructions(host, port, tls=tls is not None, ca_file=tls.ca_cert if tls else None))
    return BrokerSecurity(auth, tls, "\n".join(lines))


def make_keys(auth_dir: Path, silos: str) -> str:
    """``fedmq keys``: signing keys for these silos under AUTH_DIR/keys. Returns what to tell the operator."""
    names = parse_silos(silos)
    if not names:
        raise ConfigError("no silo names given", hint="pass --silos a,b,c")
    Path(auth_dir).mkdir(parents=True, exist_ok=True, mode=0o700)
    keys_dir = AuthDir(auth_dir).keys_dir
    made = ensure_keys(keys_dir, names)
    kept = [s for s in names if s not in made]
    return "\n".join([
        f"signing keys in {keys_dir.resolve()}: new for {', '.join(made) or 'none'}"
        + (f"; kept the existing ones of {', '.join(kept)}" if kept else ""),
        "give each silo its own <silo>.key (--signing-key); the aggregator takes the folder of .pub files (--sign --keys)",
    ])
