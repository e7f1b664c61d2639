"""docker-compose.yml, Dockerfile, .dockerignore and broker/mosquitto.conf, checked without Docker.

These run in CI, where Docker may not: nothing here builds an image or starts a container (the real
run is deploy/compose-test.sh, and tests/test_compose_run.py, marked ``docker``, opt-in). What can go
wrong without Docker is checked instead: every fedmq command line in the compose file, and the options
it ends up with once its FEDMQ_* variables and its config file (a compose secret that
deploy/compose_secrets.py makes) are applied, are resolved by the real click command tree; the mounts,
paths, secrets, broker address and start order must line up; the Dockerfile must copy files that exist
and that .dockerignore lets through.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pwd
import re
import shlex
import shutil
import subprocess
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Any
from unittest import mock
from urllib.parse import urlsplit

import click
import pytest
import yaml
from fedmq.broker.connection import Connection
from fedmq.broker.server import free_port, mosquitto_binary, wait_for_port
from fedmq.broker.url import parse_broker_url
from fedmq.cli import cli
from fedmq.commands.config_file import known_envvars
from fedmq.schemas import check_name

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
MOSQUITTO_CONF = ROOT / "broker" / "mosquitto.conf"
MOSQUITTO_CONF_TARGET = "/mosquitto/config/mosquitto.conf"
BROKER_SERVICE = "broker"
HOST = "127.0.0.1"
POSTGRES_SERVICE = "postgres"
SECRETS_TARGET = PurePosixPath("/run/secrets")
SILOS = ["silo-0", "silo-1", "silo-2"]


# -- reading compose --------------------------------------------------------------------------------
_VARIABLE = re.compile(r"\$\$|\$\{(\w+)(?::?-([^}]*))?\}|\$(\w+)")


def interpolate(value: Any) -> Any:
    """Compose's ``${NAME:-default}`` with every variable unset, and ``$$`` for a literal ``$``."""
    if isinstance(value, dict):
        return {key: interpolate(item) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item) for item in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        if match.group(2) is None:
            raise AssertionError(f"{match.group(0)} in docker-compose.yml has no default: `docker compose up` would need it set")
        return match.group(2)

    return _VARIABLE.sub(substitute, value)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return interpolate(yaml.safe_load(COMPOSE.read_text()))


@pytest.fixture(scope="module")
def services(compose: dict[str, Any], secrets_dir: Path) -> dict[str, dict[str, Any]]:
    """The services, each with its secrets' files (as made by deploy/compose_secrets.py) under ``_secret_files``."""
    found = {}
    for name, service in compose["services"].items():
        files = {}
        for secret in service.get("secrets", []):
            source = secret if isinstance(secret, str) else secret["source"]
            target = secret if isinstance(secret, str) else secret.get("target", source)
            declared = PurePosixPath(compose["secrets"][source]["file"])
            assert declared.parts[0] == "secrets", f"secret {source} lies in ${{SECRETS_DIR:-./secrets}}"
            files[str(SECRETS_TARGET / target)] = secrets_dir.joinpath(*declared.parts[1:])
        found[name] = {**service, "_secret_files": files}
    return found


def load_compose_secrets() -> Any:
    """deploy/compose_secrets.py, a script beside the package rather than part of it."""
    spec = importlib.util.spec_from_file_location("compose_secrets", ROOT / "deploy" / "compose_secrets.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def secrets_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The secrets deploy/compose_secrets.py makes for the compose file's three silos (no chown: not root)."""
    folder = tmp_path_factory.mktemp("compose") / "secrets"
    load_compose_secrets().make_secrets(folder, SILOS)
    return folder


def fedmq_services(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {name: s for name, s in services.items() if s.get("image", "").startswith("fedmq:") or "build" in s}


def environment(service: dict[str, Any]) -> dict[str, str]:
    """The service's variables; FEDMQ_CONFIG, a path under /run/secrets, becomes the secret's file on this machine."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    env = {key: str(value) for key, value in env.items()}
    if "FEDMQ_CONFIG" in env:
        files = service.get("_secret_files", {})
        assert env["FEDMQ_CONFIG"] in files, f"FEDMQ_CONFIG {env['FEDMQ_CONFIG']} is none of the service's secrets"
        env["FEDMQ_CONFIG"] = str(files[env["FEDMQ_CONFIG"]])
    return env


@dataclass(frozen=True)
class Mount:
    source: str
    target: str
    read_only: bool

    @property
    def named(self) -> bool:
        return not self.source.startswith(("/", ".", "~"))


def mounts(service: dict[str, Any]) -> list[Mount]:
    result = []
    for volume in service.get("volumes", []):
        source, target, *mode = volume.split(":")
        result.append(Mount(source, target, "ro" in (mode[0].split(",") if mode else [])))
    return result


def mount_holding(service: dict[str, Any], path: str) -> Mount | None:
    """The mount that ``path`` (in the container) lies on, if any."""
    for mount in mounts(service):
        if PurePosixPath(path).is_relative_to(mount.target):
            return mount
    return None


def fedmq_invocations(service: dict[str, Any]) -> list[list[str]]:
    """The fedmq command lines a service runs: its command (the image's ENTRYPOINT is fedmq), or those in its shell script."""
    entrypoint = service.get("entrypoint")
    if entrypoint is None:
        return [list(service["command"])]
    assert entrypoint == ["sh", "-c"], f"unexpected entrypoint {entrypoint}"
    found = []
    for line in service["command"][0].splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
        lexer.whitespace_split = True
        tokens = list(lexer)
        for start in (i for i, token in enumerate(tokens) if token == "fedmq"):
            end = next((i for i in range(start, len(tokens)) if tokens[i] in (";", "&&", "||", "|")), len(tokens))
            found.append(tokens[start + 1:end])
    assert found, "a shell service that runs no fedmq command"
    return found


# -- reading the command tree -----------------------------------------------------------------------
def split_command_line(argv: list[str]) -> tuple[list[str], list[str], click.Command, list[str]]:
    """``fedmq [ROOT OPTIONS] COMMAND... [OPTIONS]`` as root options, command path, command, its arguments."""
    root_args, rest = [], list(argv)
    while rest and rest[0].startswith("-"):
        root_args.append(rest.pop(0))
        option = _option(cli, root_args[-1])
        if not option.is_flag and "=" not in root_args[-1]:
            root_args.append(rest.pop(0))
    command: click.Command = cli
    path = []
    while isinstance(command, click.Group):
        assert rest, f"`fedmq {' '.join(argv)}` names no command"
        assert rest[0] in command.commands, f"`fedmq {' '.join(argv)}`: no command {rest[0]!r}"
        path.append(rest.pop(0))
        command = command.commands[path[-1]]
    return root_args, path, command, rest


def _option(command: click.Command, flag: str) -> click.Option:
    name = flag.split("=", 1)[0]
    for param in command.params:
        if isinstance(param, click.Option) and name in (*param.opts, *param.secondary_opts):
            return param
    raise AssertionError(f"`{command.name}` has no option {name}")


def effective_params(argv: list[str], env: dict[str, str]) -> dict[str, Any]:
    """The options a command line gets inside the container: click itself resolves flags, variables and defaults."""
    root_args, path, command, args = split_command_line(argv)
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FEDMQ_")}
    with mock.patch.dict(os.environ, {**clean, **env}, clear=True):
        ctx = cli.make_context("fedmq", [*root_args, path[0]])
        group: click.Command = cli
        for i, name in enumerate(path):
            group = group.commands[name]
            ctx = group.make_context(name, [path[i + 1]] if i + 1 < len(path) else list(args), parent=ctx)
        return ctx.params


def service_params(service: dict[str, Any]) -> dict[str, Any]:
    (argv,) = fedmq_invocations(service)
    return effective_params(argv, environment(service))


def services_running(services: dict[str, dict[str, Any]], *path: str) -> dict[str, dict[str, Any]]:
    return {name: s for name, s in fedmq_services(services).items()
            if any(split_command_line(argv)[1] == list(path) for argv in fedmq_invocations(s))}


# -- compose ----------------------------------------------------------------------------------------
def test_compose_has_a_broker_an_aggregator_silos_and_synth(services: dict[str, dict[str, Any]]) -> None:
    assert services[BROKER_SERVICE]["image"].startswith("eclipse-mosquitto:")
    assert services[POSTGRES_SERVICE]["image"].startswith("postgres:")
    assert list(services_running(services, "aggregator")) == ["aggregator"]
    assert len(services_running(services, "client")) == 3
    assert list(services_running(services, "data", "synth")) == ["synth"]


def test_every_fedmq_command_line_uses_commands_and_flags_that_exist(services: dict[str, dict[str, Any]]) -> None:
    for service in fedmq_services(services).values():
        for argv in fedmq_invocations(service):
            root_args, path, command, args = split_command_line(argv)
            for arg in args:
                if arg.startswith("-"):
                    _option(command, arg)
            effective_params(argv, environment(service))  # values parse, required options are there


def test_every_fedmq_variable_in_compose_is_read_by_fedmq(services: dict[str, dict[str, Any]]) -> None:
    known = known_envvars(cli)
    used = {var for service in services.values() for var in environment(service) if var.startswith("FEDMQ_")}
    assert used, "the services are configured through FEDMQ_* variables"
    assert sorted(used - set(known)) == []


def test_the_broker_url_names_the_broker_service_its_listener_and_the_service_s_own_login(
        services: dict[str, dict[str, Any]], secrets_dir: Path) -> None:
    (port, _), *_ = mosquitto_listeners()
    credentials = json.loads((secrets_dir / "auth" / "credentials.json").read_text())
    for name, service in {**services_running(services, "aggregator"), **services_running(services, "client")}.items():
        params = service_params(service)
        url = parse_broker_url(params["broker"])
        assert (url.host, url.port) == (BROKER_SERVICE, port), name
        login = "aggregator" if name == "aggregator" else params["silo"]
        assert (url.username, url.password) == (login, credentials[login]["password"]), name


def test_secrets_are_files_never_environment(compose: dict[str, Any], services: dict[str, dict[str, Any]],
                                             secrets_dir: Path) -> None:
    declared = compose["secrets"]
    for name, service in services.items():
        env = {key: str(value) for key, value in (service.get("environment") or {}).items()}
        assert not {"FEDMQ_BROKER", "FEDMQ_DB", "POSTGRES_PASSWORD"} & set(env), name
        for key, value in env.items():
            assert "://" not in value or "@" not in value, f"{name}: {key} holds a login"
        for secret in service.get("secrets", []):
            assert secret in declared, f"{name}: secret {secret} is not declared"
    for secret, files in declared.items():
        path = secrets_dir.joinpath(*PurePosixPath(files["file"]).parts[1:])
        assert path.is_file(), f"deploy/compose_secrets.py makes no {files['file']} ({secret})"
    assert services[POSTGRES_SERVICE]["environment"]["POSTGRES_PASSWORD_FILE"] == "/run/secrets/postgres_password"
    for name in [*services_running(services, "aggregator"), *services_running(services, "client")]:
        config = Path(environment(services[name])["FEDMQ_CONFIG"])
        assert config.stat().st_mode & 0o077 == 0, f"{name}: its config file is private"


def test_nothing_is_published_beyond_loopback(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port}"
    assert "ports" not in services[POSTGRES_SERVICE]


def mosquitto_listeners() -> list[tuple[int, dict[str, str]]]:
    """broker/mosquitto.conf's listeners: (port, the settings that follow it), in order."""
    listeners: list[tuple[int, dict[str, str]]] = []
    for line in MOSQUITTO_CONF.read_text().splitlines():
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        if words[0] == "listener":
            listeners.append((int(words[1]), {"bind": words[2] if len(words) > 2 else ""}))
        elif listeners:
            listeners[-1][1][words[0]] = " ".join(words[1:])
    assert listeners, "mosquitto.conf has no listener"
    return listeners


def test_the_broker_service_mounts_mosquitto_conf(services: dict[str, dict[str, Any]]) -> None:
    broker = services[BROKER_SERVICE]
    (mount,) = [m for m in mounts(broker) if m.target == MOSQUITTO_CONF_TARGET]
    assert (ROOT / mount.source).resolve() == MOSQUITTO_CONF and mount.read_only
    conf = MOSQUITTO_CONF.read_text()
    assert re.search(r"^per_listener_settings\s+true", conf, re.MULTILINE)
    assert re.search(r"^persistence\s+false", conf, re.MULTILINE)
    assert re.search(r"^max_queued_messages\s+\d+", conf, re.MULTILINE)
    (_, fedmq_listener), (health_port, health) = mosquitto_listeners()
    # fedmq's listener: logins and the ACL, both compose secrets the broker service has.
    assert fedmq_listener["allow_anonymous"] == "false"
    assert {fedmq_listener["password_file"], fedmq_listener["acl_file"]} <= set(broker["_secret_files"])
    # The health check's listener: the container's loopback, an ACL that lets it read the uptime alone.
    assert health["bind"] == "127.0.0.1"
    acl = [m for m in mounts(broker) if m.target == health["acl_file"]]
    assert acl and acl[0].read_only
    rules = [line for line in (ROOT / acl[0].source).read_text().splitlines() if line and not line.startswith("#")]
    assert rules == ["topic read $SYS/broker/uptime"]
    test = broker["healthcheck"]["test"]
    assert test[test.index("-p") + 1] == str(health_port) and test[test.index("-t") + 1] == "$SYS/broker/uptime"


def test_the_compose_broker_config_admits_each_login_and_the_health_check_alone(
        services: dict[str, dict[str, Any]], secrets_dir: Path, tmp_path: Path) -> None:
    """broker/mosquitto.conf under a real Mosquitto, with its container paths mapped to this machine's files."""
    if mosquitto_binary() is None or shutil.which("mosquitto_sub") is None:
        pytest.fail("these tests need Mosquitto and its clients: apt-get install mosquitto mosquitto-clients")
    broker = services[BROKER_SERVICE]
    paths = {**{target: str(path) for target, path in broker["_secret_files"].items()},
             **{m.target: str(ROOT / m.source) for m in mounts(broker) if m.target != MOSQUITTO_CONF_TARGET}}
    (fedmq_port, _), (health_port, _) = mosquitto_listeners()
    ports = {fedmq_port: free_port(HOST), health_port: free_port(HOST)}
    lines = [f"user {pwd.getpwuid(os.geteuid()).pw_name}"]  # as root, Mosquitto would drop to `mosquitto`
    for line in MOSQUITTO_CONF.read_text().splitlines():
        words = line.split()
        if words and words[0] == "listener":
            line = f"listener {ports[int(words[1])]} {HOST}"
        elif words and words[0] in ("password_file", "acl_file"):
            line = f"{words[0]} {paths[words[1]]}"
        lines.append(line)
    conf = tmp_path / "mosquitto.conf"
    conf.write_text("\n".join(lines) + "\n")
    proc = subprocess.Popen([mosquitto_binary(), "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        for port in ports.values():
            wait_for_port(HOST, port, process=proc)
        # The compose health check's own command, on the health listener.
        test = broker["healthcheck"]["test"][1:]
        test[test.index("-h") + 1], test[test.index("-p") + 1] = HOST, str(ports[health_port])
        assert subprocess.run(test, capture_output=True, timeout=20).returncode == 0
        # Anonymous on the health listener: nothing but the uptime (the read is denied, so nothing arrives).
        denied = [*test[:test.index("-t")], "-t", "$SYS/broker/clients/connected", "-C", "1", "-W", "2"]
        assert subprocess.run(denied, capture_output=True, timeout=20).returncode != 0
        # fedmq's listener: no anonymous login; each service's own login from its config file gets in.
        anonymous = ["mosquitto_sub", "-h", HOST, "-p", str(ports[fedmq_port]), "-t", "x", "-C", "1", "-W", "3"]
        refused = subprocess.run(anonymous, capture_output=True, text=True, timeout=20)
        assert refused.returncode != 0 and "not authorised" in (refused.stdout + refused.stderr).lower()
        for name in ["aggregator", *SILOS]:
            url = parse_broker_url(service_params(services[name])["broker"])
            conn = Connection(replace(url, host=HOST, port=ports[fedmq_port]), name=f"check-{name}", subscriptions=[],
                              max_message_bytes=1 << 20)
            conn.connect(timeout=10)
            conn.close()
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_the_store_is_the_postgres_service_and_checkpoints_are_on_a_named_volume(compose: dict[str, Any],
                                                                                services) -> None:
    (aggregator,) = services_running(services, "aggregator").values()
    params = service_params(aggregator)
    db = urlsplit(params["db"])
    postgres = services[POSTGRES_SERVICE]
    assert db.scheme == "postgresql+psycopg" and (db.hostname, db.port) == (POSTGRES_SERVICE, 5432)
    assert (db.username, db.path) == (postgres["environment"]["POSTGRES_USER"], "/" + postgres["environment"]["POSTGRES_DB"])
    for service, path in ((aggregator, str(params["out"])), (postgres, "/var/lib/postgresql/data")):
        mount = mount_holding(service, path)
        assert mount and mount.named and not mount.read_only, path
        assert mount.source in compose["volumes"], f"volume {mount.source} is not declared"


def test_history_and_export_run_in_the_aggregator_service_find_its_store(services: dict[str, dict[str, Any]]) -> None:
    """`docker compose run --rm aggregator history|export` reads the aggregator's store and checkpoints."""
    (aggregator,) = services_running(services, "aggregator").values()
    env, params = environment(aggregator), service_params(aggregator)
    assert effective_params(["history"], env)["db"] == params["db"]
    export = effective_params(["export", "--out", "/state/model.pt"], env)
    assert (export["db"], export["out_dir"]) == (params["db"], params["out"])


def test_each_silo_reads_only_its_own_data_folder(services: dict[str, dict[str, Any]]) -> None:
    (synth,) = services_running(services, "data", "synth").values()
    (synth_mount,) = mounts(synth)
    (synth_argv,) = fedmq_invocations(synth)
    made = effective_params(synth_argv, environment(synth))["silos"]
    sources, names = [], []
    for name, service in services_running(services, "client").items():
        params = service_params(service)
        mount = mount_holding(service, str(params["data"]))
        assert mount and mount.read_only and not mount.named, name
        assert str(params["data"]) == mount.target, f"{name}: --data is the mounted folder itself"
        assert PurePosixPath(mount.source).parent == PurePosixPath(synth_mount.source), f"{name}: synth's folder"
        assert int(PurePosixPath(mount.source).name) < made, f"{name}: a folder synth makes"
        sources.append(mount.source)
        names.append(check_name("silo", params["silo"]))
    assert len(set(sources)) == len(sources) and len(set(names)) == len(names)


def test_services_start_in_order(services: dict[str, dict[str, Any]]) -> None:
    assert "healthcheck" in services[BROKER_SERVICE] and "healthcheck" in services[POSTGRES_SERVICE]
    (synth,) = services_running(services, "data", "synth")
    for name in [*services_running(services, "aggregator"), *services_running(services, "client")]:
        assert services[name]["depends_on"][BROKER_SERVICE]["condition"] == "service_healthy", name
    for name in services_running(services, "aggregator"):
        assert services[name]["depends_on"][POSTGRES_SERVICE]["condition"] == "service_healthy", name
    for name in services_running(services, "client"):
        assert services[name]["depends_on"][synth]["condition"] == "service_completed_successfully", name


def test_synth_keeps_existing_data(services: dict[str, dict[str, Any]]) -> None:
    (synth,) = services_running(services, "data", "synth").values()
    script = synth["command"][0]
    guard = script.index("exit 0")
    assert "if [ -d /data/0/train ]" in script[:guard] and script.index("fedmq data synth") > guard


# -- the image --------------------------------------------------------------------------------------
def dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def dockerfile_args() -> dict[str, str]:
    return dict(arg.split("=", 1) for op, arg in dockerfile_instructions() if op == "ARG" and "=" in arg)


def test_dockerfile_copies_files_that_exist() -> None:
    copies = [arg.split() for op, arg in dockerfile_instructions() if op in ("COPY", "ADD")]
    assert copies
    for words in copies:
        sources = [w for w in words if not w.startswith("--")][:-1]
        assert not any(w.startswith("--from") for w in words)
        for source in sources:
            assert (ROOT / source).exists(), source


def test_the_image_runs_fedmq_as_a_user_with_the_pinned_cpu_torch() -> None:
    instructions = dockerfile_instructions()
    assert ("ENTRYPOINT", '["fedmq"]') in instructions
    users = [arg for op, arg in instructions if op == "USER"]
    assert users and users[-1] not in ("root", "0")
    args = dockerfile_args()
    assert args["BASE_IMAGE"] == "python:3.11-slim"
    assert args["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    pins = dict(line.split("==") for line in (ROOT / "constraints.txt").read_text().splitlines() if "==" in line)
    assert (args["TORCH_VERSION"], args["TORCHVISION_VERSION"]) == (pins["torch"], pins["torchvision"])
    assert any(op == "RUN" and "pip install" in arg and "/src[all]" in arg for op, arg in instructions)


def test_the_image_installs_torch_before_it_copies_the_sources() -> None:
    """The torch layer (gigabytes, minutes) stays cached when only fedmq's sources change."""
    instructions = dockerfile_instructions()
    torch = next(i for i, (op, arg) in enumerate(instructions) if op == "RUN" and '"torch==${TORCH_VERSION}"' in arg)
    copy = next(i for i, (op, _) in enumerate(instructions) if op == "COPY")
    assert torch < copy
    # WHEELS (an offline build from a folder of wheels) reaches both installs; unset, pip uses the indexes.
    assert dockerfile_args()["WHEELS"] == ""
    installs = [arg for op, arg in instructions if op == "RUN" and "pip install" in arg]
    assert len(installs) == 2 and all('${WHEELS:+--no-index --find-links "$WHEELS"}' in arg for arg in installs)


def dockerignored(path: str, patterns: list[str]) -> bool:
    """.dockerignore's rules: the last matching pattern wins, ``!`` lets through, a folder's rule covers its files."""
    ignored = False
    parts = PurePosixPath(path).parts
    candidates = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    for pattern in patterns:
        negate, pattern = pattern.startswith("!"), pattern.lstrip("!").strip("/")
        regex = re.escape(pattern).replace(r"\*\*/", "(.*/)?").replace(r"\*\*", ".*")
        regex = regex.replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        if any(re.fullmatch(regex, candidate) for candidate in candidates):
            ignored = not negate
    return ignored


def test_dockerignore_keeps_what_pip_install_needs_and_drops_secrets() -> None:
    patterns = [line.strip() for line in DOCKERIGNORE.read_text().splitlines() if line.strip() and not line.startswith("#")]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    needed = ["pyproject.toml", "setup.py", project["project"]["readme"]]
    for init in ROOT.rglob("__init__.py"):  # every package setup.py ships (it ships every folder with an __init__.py)
        if init.parent.relative_to(ROOT).parts[:1] not in (("tests",), ("benchmarks",), ("examples",), ("deploy",), (".venv",)):
            needed += [str(f.relative_to(ROOT)) for f in init.parent.glob("*.py")]
    assert "cli.py" in needed and "commands/config_file.py" in needed
    assert [path for path in needed if dockerignored(path, patterns)] == []
    assert not dockerignored("constraints.txt", patterns)  # the Dockerfile installs with -c /src/constraints.txt
    for private in ("fedmq.toml", ".venv/bin/python", "fedmq.db", "auth/credentials.json", "tls/ca.key", "data/0/x.png",
                    ".git/config", "tests/conftest.py", "secrets/postgres_password", "secrets/silo-0.toml",
                    "deploy/compose_secrets.py"):
        assert dockerignored(private, patterns), private
