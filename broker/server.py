"""Running a broker: Mosquitto when the binary is installed, otherwise the embedded amqtt broker.

``fedmq broker`` is what makes a federation work on a fresh machine. Production deployments point
fedmq at a broker they already run; nothing else in fedmq depends on which broker it is.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from ..errors import BrokerError
from ..extras import require_extra
from .auth import AuthFiles
from .tls import TlsFiles

log = logging.getLogger(__name__)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def check_port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise BrokerError(
                f"cannot listen on {host}:{port}: {exc.strerror or exc}",
                hint=f"a broker may already run there (use it with --broker mqtt://{host}:{port}), or pick another --port",
            ) from None


def wait_for_port(host: str, port: int, timeout: float = 15.0, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise BrokerError(f"the broker exited with code {process.returncode} before it listened on {host}:{port}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise BrokerError(f"no broker listening on {host}:{port} after {timeout:.0f} s")


def mosquitto_binary() -> str | None:
    return shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if Path(p).exists()), None
    )


def mosquitto_config(host: str, port: int, auth: AuthFiles | None = None, tls: TlsFiles | None = None) -> str:
    """A single listener with no persistence: anonymous by default, the embedded default for one machine.

    With ``auth``: passwords and an ACL, anonymous access off. With ``tls``: the listener speaks only
    TLS. Mosquitto started as root drops to the ``mosquitto`` user before it reads the password file
    and the certificates; ``user`` keeps the identity that made those (0600) files.
    """
    security = [f"user {pwd.getpwuid(os.geteuid()).pw_name}"] if auth or tls else []
    if auth:
        security += ["allow_anonymous false", f"password_file {auth.password_file.resolve()}",
                     f"acl_file {auth.acl_file.resolve()}"]
    else:
        security.append("allow_anonymous true")
    if tls:
        security += [f"cafile {tls.ca_cert.resolve()}", f"certfile {tls.server_cert.resolve()}",
                     f"keyfile {tls.server_key.resolve()}", "tls_version tlsv1.2"]
    return "\n".join(
        [
            f"listener {port} {host}",
            *security,
            "persistence false",
            "max_queued_messages 10000",
            "log_dest stdout",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "",
        ]
    )


def start_mosquitto(host: str, port: int, workdir: Path | None = None, log_file: Path | None = None,
                    auth: AuthFiles | None = None, tls: TlsFiles | None = None) -> subprocess.Popen:
    """Start Mosquitto in the background on host:port and wait until it listens."""
    binary = mosquitto_binary()
    if binary is None:
        raise BrokerError("mosquitto is not installed",
                          hint="apt-get install mosquitto, or run `fedmq broker`, which falls back to amqtt")
    check_port_free(host, port)
    workdir = Path(workdir or tempfile.mkdtemp(prefix="fedmq-broker-"))
    workdir.mkdir(parents=True, exist_ok=True)
    conf = workdir / "mosquitto.conf"
    conf.write_text(mosquitto_config(host, port, auth, tls))
    if log_file:
        with open(log_file, "ab") as out:  # the child has its own handle; this one is closed at once
            process = subprocess.Popen([binary, "-c", str(conf)], stdout=out, stderr=subprocess.STDOUT)
    else:
        process = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    wait_for_port(host, port, process=process)
    return process


def run_broker(host: str, port: int, embedded: bool = False, auth: AuthFiles | None = None,
               tls: TlsFiles | None = None) -> int:
    """Run a broker in the foreground until interrupted. Returns the process exit code."""
    check_port_free(host, port)
    binary = None if embedded else mosquitto_binary()
    if binary is None and (auth or tls):
        raise BrokerError("the embedded broker cannot enforce credentials, ACLs or TLS",
                          hint="install Mosquitto (apt-get install mosquitto) to use --auth-dir or --tls-dir"
                               + (", and drop --embedded" if embedded else ""))
    if binary is None:
        log.info("broker: embedded amqtt on mqtt://%s:%d (Ctrl-C to stop)", host, port)
        return _run_amqtt(host, port)
    with tempfile.TemporaryDirectory(prefix="fedmq-broker-") as tmp:
        conf = Path(tmp) / "mosquitto.conf"
        conf.write_text(mosquitto_config(host, port, auth, tls))
        log.info("broker: mosquitto on %s://%s:%d%s (Ctrl-C to stop)", "mqtts" if tls else "mqtt", host, port,
                 ", passwords and ACL from " + str(auth.acl_file.parent) if auth else "")
        process = subprocess.Popen([binary, "-c", str(conf)])
        try:
            return process.wait()
        except KeyboardInterrupt:
            process.send_signal(signal.SIGINT)
            return process.wait(timeout=10) and 0


def _run_amqtt(host: str, port: int) -> int:
    require_extra("amqtt", "broker", "the embedded broker (used where Mosquitto is not installed)")
    from amqtt.broker import Broker

    config = {
        "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}"}},
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    }

    async def serve() -> None:
        broker = Broker(config)
        await broker.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await broker.shutdown()

    asyncio.run(serve())
    return 0
