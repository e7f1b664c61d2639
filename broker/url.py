"""Broker addresses: ``mqtt://[user:password@]host[:port]`` (``mqtts://`` is reserved for TLS)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

from ..errors import ConfigError

DEFAULT_BROKER = "mqtt://127.0.0.1:1883"
BROKER_ENV = "FEDMQ_BROKER"


@dataclass(frozen=True)
class BrokerUrl:
    host: str
    port: int
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    def __str__(self) -> str:
        """The address without the password, safe to log."""
        user = f"{self.username}@" if self.username else ""
        return f"mqtt://{user}{self.host}:{self.port}"


def default_broker() -> str:
    return os.environ.get(BROKER_ENV) or DEFAULT_BROKER


def parse_broker_url(url: str) -> BrokerUrl:
    parts = urlsplit(url if "://" in url else f"mqtt://{url}")
    if parts.scheme == "mqtts":
        raise ConfigError("TLS (mqtts://) is not supported yet", hint="use mqtt://host:port")
    if parts.scheme != "mqtt":
        raise ConfigError(f"unsupported broker URL scheme {parts.scheme!r}", hint="use mqtt://host:port")
    try:
        port = parts.port or 1883
    except ValueError:
        raise ConfigError("broker URL has an invalid port", hint="use mqtt://host:port with a port number") from None
    if not parts.hostname:
        raise ConfigError("broker URL has no host", hint="use mqtt://host:port")
    return BrokerUrl(
        host=parts.hostname,
        port=port,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
    )
