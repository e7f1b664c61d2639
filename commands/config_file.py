"""Options from a TOML file and ``FEDMQ_*`` environment variables, for every command at once.

Where a value comes from, first match wins: the command line, then the environment, then the
config file, then the option's default. That is click's own order (command line > envvar >
``Context.default_map`` > default), so nothing here decides precedence, and click names the
variables itself: the group sets ``auto_envvar_prefix="FEDMQ"``, so every option is read from
``FEDMQ_<COMMAND>_<OPTION>``, dashes as underscores (``FEDMQ_AGGREGATOR_ROUNDS``,
``FEDMQ_DATA_SYNTH_SILOS``, ``FEDMQ_LOG_LEVEL`` for the group's own options; each option's Python
name is its long flag's, which is what click builds the name from). This module only

* adds the shared fallbacks, read by every command with that option after its own variable
  (``FEDMQ_BROKER``, ``FEDMQ_DB``, ``FEDMQ_CA_FILE``, ``FEDMQ_SIGNING_KEY``): ``SharedEnvOption``;
* warns about a ``FEDMQ_*`` variable that no option reads (a misspelling would be ignored);
* turns a TOML file into click's ``default_map``: a table per command (``[aggregator]``,
  ``[client]``, ``[data.synth]``), keys are long option names (``min-clients`` or ``min_clients``),
  and top-level keys set either the group's options (``log-level``) or, shared, that option of
  every command which has it (``broker = "mqtt://..."``, ``job``, ``db``); a command's table
  overrides a shared key. (TOML allows no top-level ``broker`` key beside a ``[broker]`` table:
  the broker host needs no URL, and elsewhere ``$FEDMQ_BROKER`` is the place for one.)

The file is checked whole before anything runs: an unknown table or key, a value of the wrong
type or out of range, a missing or malformed file is a ``ConfigError`` naming the file and key
(exit 2). Paths in the file are taken as given, relative to the working directory, like paths on
the command line; whether they exist is checked when the command that uses them runs.
"""

from __future__ import annotations

import difflib
import os
import stat
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click

from ..errors import ConfigError

ENV_PREFIX = "FEDMQ"
CONFIG_ENV = "FEDMQ_CONFIG"
# Variables fedmq reads that belong to no option; none today. Any other FEDMQ_* variable draws a warning.
EXTRA_ENVVARS: dict[str, str] = {}
_NOT_SETTINGS = {"help", "version", "config"}  # options that are actions, not settings
_TOP = "the top level"

CommandPath = tuple[str, ...]


class ConfigFileError(click.ClickException):
    """A ``ConfigError`` raised while click parses the options, shown the way ``FedmqGroup`` shows one."""

    exit_code = 2

    def __init__(self, error: ConfigError) -> None:
        super().__init__(error.message)
        self.hint = error.hint

    def show(self, file: Any = None) -> None:
        click.secho(f"error: {self.message}", err=True, fg="red")
        if self.hint:
            click.echo(f"hint: {self.hint}", err=True)


# -- the command tree -------------------------------------------------------------------------------
def option_name(option: click.Option) -> str:
    """The name users see: the long flag without ``--`` (``--strategy`` is ``strategy``, not ``name``)."""
    longs = [opt[2:] for opt in option.opts if opt.startswith("--")]
    return longs[0] if longs else (option.name or "").replace("_", "-")


def settings(command: click.Command) -> dict[str, click.Option]:
    """The options of ``command`` that a file or the environment may set, by :func:`option_name`."""
    return {option_name(p): p for p in command.params
            if isinstance(p, click.Option) and p.expose_value and p.name not in _NOT_SETTINGS}


def iter_commands(command: click.Command, path: CommandPath = ()) -> Iterator[tuple[CommandPath, click.Command]]:
    """``command`` and every command below it, each with its path of names (``()`` for the root)."""
    yield path, command
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            yield from iter_commands(sub, (*path, name))


def envvar_name(path: CommandPath, option: str) -> str:
    """The variable click reads for ``option`` of the command at ``path`` (``auto_envvar_prefix`` + name)."""
    return "_".join((ENV_PREFIX, *path, option)).upper().replace("-", "_")


class SharedEnvOption(click.Option):
    """An option that a variable shared by every command also sets: ``$FEDMQ_BROKER`` for each ``--broker``.

    click reads an explicit ``envvar`` before the automatic per-command one; fedmq wants the command's
    own variable (``$FEDMQ_AGGREGATOR_BROKER``) to win, so the shared one is read only after it.
    """

    def __init__(self, *args: Any, shared_envvar: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.shared_envvar = shared_envvar

    def resolve_envvar_value(self, ctx: click.Context) -> str | None:
        own = super().resolve_envvar_value(ctx)
        return own if own is not None else (os.environ.get(self.shared_envvar) or None)


def known_envvars(root: click.Command) -> dict[str, list[str]]:
    """Every variable fedmq reads, each with the options it sets (``fedmq aggregator --rounds``)."""
    known: dict[str, list[str]] = {CONFIG_ENV: ["fedmq --config"]}
    for path, command in iter_commands(root):
        for name, option in settings(command).items():
            shared = [option.shared_envvar] if isinstance(option, SharedEnvOption) else []
            for var in [envvar_name(path, name), *shared]:
                known.setdefault(var, []).append(" ".join(("fedmq", *path, f"--{name}")))
    for var, what in EXTRA_ENVVARS.items():
        known.setdefault(var, []).append(what)
    return known


def warn_unknown_envvars(root: click.Command, environ: Mapping[str, str]) -> None:
    """A misspelt variable would be silently ignored: say so."""
    known = known_envvars(root)
    for var in sorted(v for v in environ if v.startswith(f"{ENV_PREFIX}_") and v not in known):
        close = difflib.get_close_matches(var, list(known), n=1)
        guess = f" (did you mean ${close[0]}?)" if close else ""
        click.secho(f"warning: ${var} is set but fedmq reads no such variable{guess}", err=True, fg="yellow")


# -- values -----------------------------------------------------------------------------------------
def _type_problem(option: click.Option, value: Any) -> str | None:
    """Why ``value`` from TOML cannot be this option's: TOML has types, so a string for a number is an error."""
    kind = option.type
    if option.is_flag or isinstance(kind, click.types.BoolParamType):
        return None if isinstance(value, bool) else "expected true or false"
    if isinstance(value, bool):
        numeric = isinstance(kind, click.types.IntParamType | click.types.FloatParamType)
        return "expected a number" if numeric else "expected a string"
    if isinstance(kind, click.types.IntParamType):
        return None if isinstance(value, int) else "expected an integer"
    if isinstance(kind, click.types.FloatParamType):
        return None if isinstance(value, int | float) else "expected a number"
    if isinstance(kind, click.types.StringParamType | click.Choice | click.Path | click.File):
        return None if isinstance(value, str) else "expected a string"
    return None


def _check_value(option: click.Option, value: Any) -> None:
    """Raise ``click.BadParameter`` unless ``value`` suits ``option``; paths are not looked at yet."""
    many = option.multiple or option.nargs != 1
    if many and not isinstance(value, list):
        raise click.BadParameter("expected an array")
    for item in value if many else [value]:
        problem = _type_problem(option, item)
        if problem:
            raise click.BadParameter(f"{problem}, got {type(item).__name__} {item!r}")
        if not isinstance(option.type, click.Path | click.File):
            option.type.convert(item, option, None)  # ranges and choices; the same check the command line gets


# -- the file ---------------------------------------------------------------------------------------
def read_toml(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist", hint=f"pass an existing TOML file to --config or ${CONFIG_ENV}")
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read the config file {path}: {exc.strerror}") from None


class _Loader:
    """Checks one parsed TOML file against the command tree and builds click's ``default_map``."""

    def __init__(self, path: Path, root: click.Command) -> None:
        self.path = path
        self.root = root

    def error(self, message: str, hint: str | None = None) -> ConfigError:
        return ConfigError(f"config file {self.path}: {message}", hint=hint)

    def unknown(self, key: str, where: str, known: list[str], path: CommandPath) -> ConfigError:
        close = difflib.get_close_matches(key.replace("_", "-"), known, n=1)
        guess = f"did you mean {close[0]!r}? " if close else ""
        if path:
            rule = f"the keys of {where} are the long options of `{' '.join(('fedmq', *path, '--help'))}`"
        else:
            rule = "top-level keys are the options of `fedmq --help`, or an option shared by commands (broker, job, db...)"
        return self.error(f"unknown key {key!r} in {where}", hint=guess + rule)

    def unknown_table(self, key: str, path: CommandPath, commands: list[str]) -> ConfigError:
        close = difflib.get_close_matches(key, commands, n=1)
        guess = f"did you mean [{'.'.join((*path, close[0]))}]? " if close else ""
        return self.error(f"unknown table [{'.'.join((*path, key))}]",
                          hint=f"{guess}tables are named after commands: {', '.join(commands) or 'none here'}")

    def value(self, option: click.Option, value: Any, key: str, table: str) -> Any:
        try:
            _check_value(option, value)
        except click.BadParameter as exc:
            hint = f"--{option_name(option)}: {option.help or ''}".strip()
            raise self.error(f"{key} in {table}: {exc.message}", hint=hint) from None
        return value

    def build(self, data: dict[str, Any]) -> dict[str, Any]:
        shared = {key: value for key, value in data.items() if not isinstance(value, dict)}
        tables = {key: value for key, value in data.items() if isinstance(value, dict)}
        default_map = self.command_map((), self.root, tables)
        for key, value in shared.items():
            self.place_top_key(default_map, key, value)
        return default_map

    def command_map(self, path: CommandPath, command: click.Command, table: dict[str, Any]) -> dict[str, Any]:
        """``table``'s keys as ``command``'s options, its sub-tables as its subcommands'."""
        where = f"[{'.'.join(path)}]" if path else _TOP
        options = settings(command)
        subcommands = command.commands if isinstance(command, click.Group) else {}
        result: dict[str, Any] = {}
        for key, value in table.items():
            name = key.replace("_", "-")
            if isinstance(value, dict) and key in subcommands:
                result[key] = self.command_map((*path, key), subcommands[key], value)
            elif name in options and not isinstance(value, dict):
                result[options[name].name] = self.value(options[name], value, key, where)
            elif isinstance(value, dict):
                raise self.unknown_table(key, path, sorted(subcommands))
            else:
                raise self.unknown(key, where, sorted(options), path)
        return result

    def place_top_key(self, default_map: dict[str, Any], key: str, value: Any) -> None:
        """A top-level key: the group's own option, else that option of every command that has one."""
        name, root_options = key.replace("_", "-"), settings(self.root)
        if name in root_options:
            default_map[root_options[name].name] = self.value(root_options[name], value, key, _TOP)
            return
        targets = [(path, settings(cmd)[name]) for path, cmd in iter_commands(self.root) if path and name in settings(cmd)]
        if not targets:
            every = sorted({n for _, cmd in iter_commands(self.root) for n in settings(cmd)})
            raise self.unknown(key, _TOP, every, ())
        users = ", ".join(f"[{'.'.join(path)}]" for path, _ in targets)
        for path, option in targets:
            table = default_map
            for part in path:
                table = table.setdefault(part, {})
            if option.name not in table:  # the command's own table wins
                table[option.name] = self.shared_value(option, value, key, path, users)

    def shared_value(self, option: click.Option, value: Any, key: str, path: CommandPath, users: str) -> Any:
        try:
            _check_value(option, value)
        except click.BadParameter as exc:
            raise self.error(f"top-level {key} does not suit `fedmq {' '.join(path)} --{option_name(option)}`: {exc.message}",
                             hint=f"a top-level key sets that option of every command that has it ({users}): "
                                  "put it in the table of the command it is meant for") from None
        return value


def load_config(path: Path, root: click.Command) -> dict[str, Any]:
    """Read, check and translate a config file into click's ``default_map`` for ``root``."""
    data = read_toml(path)
    default_map = _Loader(path, root).build(data)
    warn_if_exposed(path, data)
    return default_map


# -- secrets ----------------------------------------------------------------------------------------
def _broker_passwords(data: Mapping[str, Any]) -> Iterator[str]:
    for key, value in data.items():
        if isinstance(value, dict):
            yield from _broker_passwords(value)
        elif key == "broker" and isinstance(value, str):
            password = urlsplit(value if "://" in value else f"mqtt://{value}").password
            if password:
                yield password


def warn_if_exposed(path: Path, data: Mapping[str, Any]) -> None:
    """A broker password belongs in ``$FEDMQ_BROKER``, or in a file only its owner can read."""
    mode = stat.S_IMODE(path.stat().st_mode)
    if os.name == "posix" and mode & 0o044 and any(_broker_passwords(data)):
        click.secho(f"warning: config file {path} holds a broker password and other users can read it (mode {mode:04o}): "
                    f"chmod 600 {path}, or move the URL with its password to $FEDMQ_BROKER", err=True, fg="yellow")


# -- the --config option ----------------------------------------------------------------------------
def _apply(ctx: click.Context, param: click.Parameter, value: Path | None) -> None:
    """Eager, so it runs before every other option is read: checks the variables, loads the file."""
    if ctx.resilient_parsing:
        return
    warn_unknown_envvars(ctx.command, os.environ)
    if value is None:
        return
    try:
        ctx.default_map = load_config(value, ctx.command)
    except ConfigError as exc:
        raise ConfigFileError(exc) from None


def config_option(f: Any) -> Any:
    """The group's ``--config FILE`` (or ``$FEDMQ_CONFIG``)."""
    return click.option(
        "--config", envvar=CONFIG_ENV, is_eager=True, expose_value=False, callback=_apply,
        type=click.Path(path_type=Path, dir_okay=False),
        help=f"Read options from this TOML file (or ${CONFIG_ENV}): a table per command, e.g. [aggregator] rounds = 50. "
             "Each option can also be set as $FEDMQ_<COMMAND>_<OPTION>, e.g. $FEDMQ_AGGREGATOR_ROUNDS. "
             "First wins: command line, environment, this file, defaults.")(f)
