"""A job's task options: ``--task-option key=value`` pairs, checked before they go into the JobSpec.

fedmq does not interpret them: the task plug-in on each silo reads them (``ctx.option``). On the
command line a value is typed as TOML would type it (``3`` an int, ``0.5`` a float, ``true`` a
bool, anything else a string); in the config file's ``[aggregator.task-options]`` table TOML types it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from ..errors import ConfigError

KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]{0,63}$")
MAX_OPTIONS = 64
MAX_VALUE_CHARS = 1024
HINT = "write --task-option key=value (key: a letter or _, then letters, digits, '_', '.', '-'; up to 64 characters)"


def parse_value(text: str) -> str | int | float | bool:
    """``3`` -> 3, ``0.5`` -> 0.5, ``true``/``false`` -> bool, anything else stays a string."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for kind in (int, float):
        try:
            value = kind(text)
        except ValueError:
            continue
        if kind is float and value != value or value in (float("inf"), float("-inf")):
            return text  # "nan", "inf": a string, never a non-finite number
        return value
    return text


def parse_task_options(pairs: Iterable[str]) -> dict[str, str | int | float | bool]:
    """``["depth=3", "loss=dice"]`` -> ``{"depth": 3, "loss": "dice"}``; a later key wins."""
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ConfigError(f"task option {pair!r} has no '='", hint=HINT)
        options[key.strip()] = parse_value(value)
    return check_task_options(options)


def check_task_options(options: Mapping[str, Any]) -> dict[str, str | int | float | bool]:
    """The options if they fit the JobSpec (names, types, sizes); else a ConfigError naming the first misfit."""
    if len(options) > MAX_OPTIONS:
        raise ConfigError(f"{len(options)} task options; a job takes at most {MAX_OPTIONS}", hint="pass fewer")
    for key, value in options.items():
        if not isinstance(key, str) or not KEY.match(key):
            raise ConfigError(f"task option name {key!r} is not allowed", hint=HINT)
        if isinstance(value, float) and value != value or value in (float("inf"), float("-inf")):
            raise ConfigError(f"task option {key} is not a finite number", hint="give a finite number")
        if not isinstance(value, (str, int, float, bool)):
            raise ConfigError(f"task option {key} is a {type(value).__name__}",
                              hint="task options are strings, numbers or booleans")
        if isinstance(value, str) and len(value) > MAX_VALUE_CHARS:
            raise ConfigError(f"task option {key} is {len(value)} characters long; at most {MAX_VALUE_CHARS}",
                              hint="put large settings in a file on the silos and pass its path")
    return dict(options)
