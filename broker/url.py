"""Broker addresses: ``mqtt://[user:password@]host[:port]``, or ``mqtts://`` for TLS (port 8883).

A TLS broker's certificate is checked against ``ca_file`` (``--ca-file`` or ``$FEDMQ_CA_FILE``:
the ``ca.crt`` of ``fedmq broker --tls-dir``), else against the system's trusted CAs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

from ..errors import ConfigError

DEFAULT_BROKER = "mqtt://127.0.0.1:1883"
BROKER_ENV = "FEDMQ_BROKER"
CA_FILE_ENV = "FEDMQ_CA_FILE"
DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}


@dataclass(frozen=True)
class BrokerUrl:
    host: str
    port: int
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False
    ca_file: Path | None = None

    @property
    def scheme(self) -> str:
        return "mqtts" if self.tls else "mqtt"

    def __str__(self) -> str:
        """The address without the password, safe to log."""
        user = f"{self.username}@" if self.username else ""
        return f"{self.scheme}://{user}{self.host}:{self.port}"


def default_broker() -> str:
    return os.environ.get(BROKER_ENV) or DEFAULT_BROKER


def parse_broker_url(url: str, ca_file: Path | str | None = None) -> BrokerUrl:
    """Parse a broker URL; ``ca_file`` (the CA to trust) needs ``mqtts://``."""
    parts = urlsplit(url if "://" in url else f"mqtt://{url}")
    if parts.scheme not in DEFAULT_PORTS:
        raise ConfigError(f"unsupported broker URL scheme {parts.scheme!r}",
                          hint="use mqtt://host:port, or mqtts://host:port for TLS")
    try:
        port = parts.port or DEFAULT_PORTS[parts.scheme]
    except ValueError:
        raise ConfigError("broker URL has an invalid port", hint="use mqtt://host:port with a port number") from None
    if not parts.hostname:
        raise ConfigError("broker URL has no host", hint="use mqtt://host:port")
    tls = parts.scheme == "mqtts"
    if ca_file is not None and str(ca_file) != "":
        if not tls:
            raise ConfigError(f"a CA file ({ca_file}) is given but the broker URL is mqtt://, without TLS",
                              hint=f"use mqtts://host:port, or drop --ca-file / ${CA_FILE_ENV}")
        ca_file = Path(ca_file)
        if not ca_file.is_file():
            raise ConfigError(f"the CA file {ca_file} does not exist",
                              hint="pass the ca.crt made by `fedmq broker --tls-dir DIR` (DIR/ca.crt)")
    else:
        ca_file = None
    return BrokerUrl(
        host=parts.hostname,
        port=port,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        tls=tls,
        ca_file=ca_file,
    )
