"""Authenticated silos and least-privilege topics for the broker.

``AuthDir(DIR).ensure(silos)`` keeps, in one folder:

- ``credentials.json`` (0600): ``{"aggregator": {"username", "password"}, "<silo>": {...}}``. The
  username of a silo is its silo name, so the ACL (keyed on the username) and the aggregator's
  check that a topic names its sender agree. Made once; later runs keep every password and add
  only the silos that are new.
- ``mosquitto.passwd``: the same credentials as Mosquitto 2 ``$7$`` (PBKDF2-SHA512) hashes.
- ``mosquitto.acl`` and ``emqx_acl.conf``: per-user rules that allow what each user needs and
  nothing else; everything else, anonymous access included, is denied.
- ``keys/<silo>.key|.pub``: the silos' Ed25519 signing keys (broker/keys.py).

The rules are derived from ``schemas.topics.Topics``, never spelled here. A silo reads the job spec,
the init request, the broadcast and its own direct model sync and the test requests; it writes only
its own update, result and presence topics. The aggregator writes the job's spec, init request,
model syncs, test requests and status, and reads every silo's update, result and presence (and the
retained spec and status, for ``fedmq status``). The job defaults to ``+``, every job: one
set of credentials serves successive jobs, and a silo is confined to its own topics in each. Pass
a job to confine every credential to that job alone.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError
from ..schemas.topics import ANY_JOB, Topics, check_name
from .keys import ensure_keys
from .private_files import readable_by_others, write_private
from .probe import PROBE_ROOT

log = logging.getLogger(__name__)

AGGREGATOR = "aggregator"
PBKDF2_ITERATIONS = 101  # what mosquitto_passwd writes; the cost is in SHA-512 rounds per login
SALT_BYTES = 12
PASSWORD_BYTES = 24

READ, WRITE = "read", "write"


@dataclass(frozen=True)
class Credential:
    username: str
    password: str = field(repr=False)


@dataclass(frozen=True)
class AuthFiles:
    """What Mosquitto needs to enforce the credentials and the ACL."""

    password_file: Path
    acl_file: Path


# -- Mosquitto password hashes ---------------------------------------------------------------------
def mosquitto_hash(password: str, salt: bytes | None = None, iterations: int = PBKDF2_ITERATIONS) -> str:
    """A Mosquitto 2 password hash: ``$7$<iterations>$<base64 salt>$<base64 PBKDF2-HMAC-SHA512>``."""
    salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, iterations)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def check_mosquitto_hash(password: str, hashed: str) -> bool:
    """Whether ``password`` matches a ``$7$`` hash (as written by us or by ``mosquitto_passwd``)."""
    parts = hashed.split("$")
    if len(parts) != 5 or parts[:2] != ["", "7"]:
        return False
    try:
        iterations, salt, digest = int(parts[2]), base64.b64decode(parts[3]), base64.b64decode(parts[4])
    except ValueError:
        return False
    return hmac.compare_digest(hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, iterations), digest)


def password_file_text(credentials: Iterable[Credential]) -> str:
    return "".join(f"{c.username}:{mosquitto_hash(c.password)}\n" for c in credentials)


# -- the ACL -----------------------------------------------------------------------------------------
def access_rules(silos: Iterable[str], job: str = ANY_JOB) -> dict[str, list[tuple[str, str]]]:
    """``{username: [(access, topic), ...]}`` with access ``read``, ``write`` or ``readwrite``."""
    topics = Topics.every_job() if job == ANY_JOB else Topics(job)
    rules = {AGGREGATOR: _merge(topics.aggregator_subscriptions() + topics.observer_subscriptions(),
                                topics.aggregator_publishes())}
    for silo in silos:
        rules[silo] = _merge(topics.silo_subscriptions(silo), topics.silo_publishes(silo))
    return rules


def _merge(reads: list[str], writes: list[str]) -> list[tuple[str, str]]:
    access: dict[str, set[str]] = {}
    for topic in reads:
        access.setdefault(topic, set()).add(READ)
    for topic in writes:
        access.setdefault(topic, set()).add(WRITE)
    return [("readwrite" if len(a) == 2 else next(iter(a)), topic) for topic, a in access.items()]


PROBE_NOTE = "Every client may use its own probe topics: broker/probe.py checks the broker's features there."


def mosquitto_acl(silos: Iterable[str], job: str = ANY_JOB) -> str:
    """A Mosquitto ACL file: one ``user`` block per credential; whatever no line allows is denied."""
    lines = ["# Made by `fedmq broker --auth-dir`; derived from fedmq.schemas.topics. Do not edit: it is rewritten.", "",
             f"# {PROBE_NOTE}", f"pattern readwrite {PROBE_ROOT}/%c/#", ""]
    for user, rules in access_rules(silos, job).items():
        lines.append(f"user {user}")
        lines += [f"topic {access} {topic}" for access, topic in rules]
        lines.append("")
    return "\n".join(lines)


def emqx_acl(silos: Iterable[str], job: str = ANY_JOB) -> str:
    """The same rules as an EMQX 5 ``acl.conf`` (file authorization source), ending in deny-all."""
    actions = {"read": "subscribe", "write": "publish", "readwrite": "all"}
    lines = ["%% Made by `fedmq broker --auth-dir`; the same rules as mosquitto.acl.", ""]
    for user, rules in access_rules(silos, job).items():
        for access, topic in rules:
            lines.append(f'{{allow, {{username, "{user}"}}, {actions[access]}, ["{topic}"]}}.')
        lines.append("")
    lines.append(f"%% {PROBE_NOTE}")
    lines.append(f'{{allow, all, all, ["{PROBE_ROOT}/${{clientid}}/#"]}}.')
    lines.append("{deny, all}.")
    return "\n".join(lines) + "\n"


# -- the folder ---------------------------------------------------------------------------------------
def parse_silos(text: str | Iterable[str]) -> list[str]:
    """``"a,b"`` (or names) as checked, de-duplicated silo names; ``aggregator`` is reserved."""
    names = text.split(",") if isinstance(text, str) else list(text)
    silos: list[str] = []
    for raw in names:
        name = raw.strip()
        if not name:
            continue
        check_name("silo", name)
        if name == AGGREGATOR:
            raise ConfigError(f"{AGGREGATOR!r} is the aggregator's username, not a silo name", hint="rename the silo")
        if name not in silos:
            silos.append(name)
    return silos


class AuthDir:
    """The credentials, Mosquitto files and signing keys of one federation, in one folder."""

    CREDENTIALS = "credentials.json"
    PASSWORD_FILE = "mosquitto.passwd"
    ACL_FILE = "mosquitto.acl"
    EMQX_ACL_FILE = "emqx_acl.conf"
    KEYS = "keys"

    def __init__(self, path: Path, job: str = ANY_JOB) -> None:
        self.path = Path(path)
        self.job = job if job == ANY_JOB else check_name("job", job)

    @property
    def credentials_file(self) -> Path:
        return self.path / self.CREDENTIALS

    @property
    def keys_dir(self) -> Path:
        return self.path / self.KEYS

    @property
    def files(self) -> AuthFiles:
        return AuthFiles(self.path / self.PASSWORD_FILE, self.path / self.ACL_FILE)

    def credentials(self) -> dict[str, Credential]:
        """The stored credentials by name (``aggregator`` and the silos); empty if there are none yet."""
        if not self.credentials_file.exists():
            return {}
        if readable_by_others(self.credentials_file):
            log.warning("%s is readable by other users; chmod 600 it", self.credentials_file)
        try:
            raw = json.loads(self.credentials_file.read_text())
            return {name: Credential(entry["username"], entry["password"]) for name, entry in raw.items()}
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
            raise ConfigError(f"cannot read the credentials in {self.credentials_file}: {type(exc).__name__}",
                              hint="restore the file, or remove the folder to make new credentials") from None

    def credential(self, name: str) -> Credential:
        creds = self.credentials()
        if name not in creds:
            raise ConfigError(f"no credential for {name!r} in {self.credentials_file}",
                              hint=f"add it with `fedmq broker --auth-dir {self.path} --silos {name}`")
        return creds[name]

    def silos(self) -> list[str]:
        return [name for name in self.credentials() if name != AGGREGATOR]

    def ensure(self, silos: Iterable[str] = ()) -> list[str]:
        """Make what is missing for these silos and the aggregator; keep what exists.

        Returns the names that got a new credential. The password file and the ACLs are written
        again every time, from the stored credentials and ``self.job``.
        """
        self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        creds = self.credentials()
        added = [name for name in [AGGREGATOR, *parse_silos(silos)] if name not in creds]
        for name in added:
            creds[name] = Credential(name, secrets.token_urlsafe(PASSWORD_BYTES))
        if added:
            data = {name: {"username": c.username, "password": c.password} for name, c in creds.items()}
            write_private(self.credentials_file, (json.dumps(data, indent=2) + "\n").encode())
        every_silo = [name for name in creds if name != AGGREGATOR]
        write_private(self.files.password_file, password_file_text(creds.values()).encode())
        self.files.acl_file.write_text(mosquitto_acl(every_silo, self.job))
        (self.path / self.EMQX_ACL_FILE).write_text(emqx_acl(every_silo, self.job))
        ensure_keys(self.keys_dir, every_silo)
        return added

    def broker_url(self, name: str, host: str, port: int, tls: bool = False) -> str:
        """The URL with ``name``'s password in it, for ``--broker`` or ``$FEDMQ_BROKER``; never log it."""
        cred = self.credential(name)
        return f"{'mqtts' if tls else 'mqtt'}://{cred.username}:{cred.password}@{host}:{port}"

    def instructions(self, host: str, port: int, tls: bool = False, ca_file: Path | None = None) -> str:
        """How to hand the credentials to the aggregator and the silos, without a single password in it."""
        scheme = "mqtts" if tls else "mqtt"
        host = "BROKER_HOST" if host in ("0.0.0.0", "::", "") else host
        creds = self.credentials_file.resolve()
        example = next(iter(self.silos()), "SILO")
        lookup = f"python3 -c \"import json;print(json.load(open('{creds}'))['{example}']['password'])\""
        lines = [
            f"credentials: {creds} (mode 0600): one user per silo (username = silo name) and '{AGGREGATOR}'",
            f"signing keys: {self.keys_dir.resolve()}/<silo>.key (give each silo its own), <silo>.pub (the aggregator's --keys)",
            f"ACL: {self.files.acl_file.resolve()} (job {self.job}); EMQX rules: {(self.path / self.EMQX_ACL_FILE).resolve()}",
            "give each silo only its own password and key, never the whole folder; connect with e.g.",
            f"  export FEDMQ_BROKER=\"{scheme}://{example}:$({lookup})@{host}:{port}\"",
        ]
        if ca_file is not None:
            lines.append(f"  export FEDMQ_CA_FILE={Path(ca_file).resolve()}   # or --ca-file")
        return "\n".join(lines)
