"""``fedmq dashboard``: check where it may listen, open the store and the broker watcher, serve.

Binding to 127.0.0.1 (or ::1, localhost) needs nothing more: only this machine's users reach it.
Any other address needs a token, and the dashboard says how to put TLS in front of it, since it
speaks plain HTTP itself.
"""

from __future__ import annotations

import logging
import secrets
import socket
from pathlib import Path

import click
from sqlalchemy.engine import make_url

from ..broker.url import BrokerUrl
from ..commands.history import open_existing_store
from ..errors import ConfigError
from ..extras import require_extra

log = logging.getLogger(__name__)
LOCAL_HOSTS = {"127.0.0.1", "::1", "localhost"}
MIN_TOKEN_CHARS = 16


def read_token(token: str | None, token_file: Path | None) -> str | None:
    """The token from --token or the first line of --token-file; too short a token is refused."""
    if token and token_file:
        raise ConfigError("--token and --token-file both given", hint="pass one of them")
    if token_file is not None:
        try:
            token = token_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"cannot read the token file {token_file}: {exc.strerror}",
                              hint="check the --token-file path and its permissions") from None
    if token is not None and len(token) < MIN_TOKEN_CHARS:
        raise ConfigError(f"the dashboard token is shorter than {MIN_TOKEN_CHARS} characters",
                          hint=f"make one with: python -c 'import secrets; print(secrets.token_urlsafe(32))' "
                               f"(for instance {secrets.token_urlsafe(4)}... is far too short)")
    return token


def check_bind(host: str, token: str | None) -> None:
    """Anything but loopback wants a token: a dashboard shows a consortium's silos and results."""
    if host not in LOCAL_HOSTS and token is None:
        raise ConfigError(f"listening on {host} needs a token: every request will have to show it",
                          hint="pass --token-file FILE (a line of 32+ random characters) or --token; "
                               "or keep the default --host 127.0.0.1")


def tls_advice(host: str, port: int) -> str:
    return (f"the dashboard speaks plain HTTP on {host}:{port}; to reach it from other machines put a TLS proxy in "
            f"front of it, e.g. Caddy: `caddy reverse-proxy --from dashboard.example.org --to 127.0.0.1:{port}` "
            f"(with --host 127.0.0.1), or nginx with `proxy_pass http://127.0.0.1:{port}; proxy_buffering off;` "
            f"(server-sent events need buffering off). See docs/dashboard.md.")


def run_dashboard(db: str, broker: BrokerUrl | None, host: str = "127.0.0.1", port: int = 8080,
                  token: str | None = None) -> None:
    """Serve the dashboard until interrupted."""
    check_bind(host, token)
    for module in ("starlette", "prometheus_client"):
        require_extra(module, "dashboard", "the dashboard")
    uvicorn = require_extra("uvicorn", "dashboard", "the dashboard")
    from .app import create_app
    from .live import LiveView

    _check_free(host, port)
    store = open_existing_store(db)
    live = LiveView(broker)
    live.start()
    shown = f"[{host}]" if ":" in host else host
    click.echo(f"fedmq dashboard on http://{shown}:{port}/  (store {_masked(db)}"
               + (f", broker {live.broker}" if broker else ", no broker: finished jobs only") + ")", err=True)
    if host not in LOCAL_HOSTS:
        click.echo(tls_advice(host, port), err=True)
        click.echo("every request must show the token: open /?token=... once in a browser, or send "
                   "'Authorization: Bearer ...' (Prometheus: the scrape config's authorization.credentials_file)", err=True)
    config = uvicorn.Config(create_app(store, live, token), host=host, port=port, log_config=None, access_log=False,
                            timeout_graceful_shutdown=2, lifespan="off")
    try:
        uvicorn.Server(config).run()
    finally:
        live.stop()
        store.close()


def _check_free(host: str, port: int) -> None:
    """A clear error for a taken port or an address this machine does not have, before anything starts."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise ConfigError(f"the dashboard cannot listen on {host}:{port}: {exc.strerror}",
                              hint="pass another --port, or a --host this machine has") from None


def _masked(db: str) -> str:
    return make_url(db).render_as_string(hide_password=True)
