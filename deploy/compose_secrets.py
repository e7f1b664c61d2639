"""Make (once) or keep the secrets docker-compose.yml mounts: broker logins and ACL, the database password.

    python deploy/compose_secrets.py secrets --silos silo-0,silo-1,silo-2

Run it where fedmq is installed, as root when the containers are to read the files (``deploy/compose-test.sh``
runs it in the fedmq image with the folder mounted). In SECRETS it keeps:

- ``auth/``: ``fedmq broker --auth-dir``'s folder (broker/auth.py): every login, Mosquitto's password
  file and ACL, the silos' signing keys. ``auth/mosquitto.passwd`` and ``auth/mosquitto.acl`` are handed
  to the Mosquitto user (uid 1883) of the broker image;
- ``postgres_password``: the PostgreSQL password, read by the postgres image as root;
- ``aggregator.toml`` and ``<silo>.toml``: each fedmq service's own config file (``$FEDMQ_CONFIG``), with
  its broker URL and login and, for the aggregator, the database URL; mode 0600, owned by the fedmq
  image's user (uid 1000).

What exists is kept: passwords stay the same across runs (the PostgreSQL volume was made with the first
one), and a new silo gets a login without changing the others'. No password is printed.
"""

from __future__ import annotations

import argparse
import os
import secrets
from pathlib import Path

from fedmq.broker.auth import AGGREGATOR, AuthDir, parse_silos
from fedmq.broker.private_files import write_private

BROKER_HOST, BROKER_PORT = "broker", 1883
DATABASE = "postgresql+psycopg://fedmq:{password}@postgres:5432/fedmq"


def config_text(broker_url: str, db_url: str | None = None) -> str:
    """A fedmq config file: top-level keys are shared by every command that has the option."""
    lines = ["# Made by deploy/compose_secrets.py: this service's logins. Keep it private (mode 0600).",
             f'broker = "{broker_url}"']
    if db_url:
        lines.append(f'db = "{db_url}"')
    return "\n".join(lines) + "\n"


def chown(path: Path, uid: int | None) -> None:
    if uid is not None:
        os.chown(path, uid, uid)


def make_secrets(folder: Path, silos: list[str], fedmq_uid: int | None = None, mosquitto_uid: int | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    auth = AuthDir(folder / "auth")
    auth.ensure(silos)
    for path in (auth.files.password_file, auth.files.acl_file):
        path.chmod(0o600)
        chown(path, mosquitto_uid)
    os.chmod(auth.path, 0o711)  # the broker's user reaches its two files, lists nothing

    pg_password = folder / "postgres_password"
    if not pg_password.exists():
        write_private(pg_password, secrets.token_urlsafe(24).encode())
    db_url = DATABASE.format(password=pg_password.read_text().strip())

    for name in [AGGREGATOR, *auth.silos()]:
        path = folder / f"{name}.toml"
        url = auth.broker_url(name, BROKER_HOST, BROKER_PORT)
        write_private(path, config_text(url, db_url if name == AGGREGATOR else None).encode())
        chown(path, fedmq_uid)
    os.chmod(folder, 0o711)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--silos", required=True, help="comma-separated silo names")
    parser.add_argument("--fedmq-uid", type=int, help="owner of the services' config files (the fedmq image: 1000)")
    parser.add_argument("--mosquitto-uid", type=int, help="owner of the broker's files (eclipse-mosquitto: 1883)")
    args = parser.parse_args()
    make_secrets(args.folder, parse_silos(args.silos), args.fedmq_uid, args.mosquitto_uid)
    print(f"secrets in {args.folder}: auth/, postgres_password, {AGGREGATOR}.toml and one .toml per silo")


if __name__ == "__main__":
    main()
