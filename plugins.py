"""Plug-ins: how fedmq finds the named parts it does not hard-wire (tasks, strategies).

A plug-in is named one of two ways:

* a registered name, ``classification``: an entry point in the plug-in's group (``fedmq.tasks``,
  ``fedmq.strategies``). fedmq registers its own built-ins this way, in ``pyproject.toml``, so they
  take the same path as a third party's; a package that declares entry points in the same groups
  adds names without fedmq knowing it;
* an import path, ``my_pkg.tasks:Segmentation`` or ``./my_task.py:Segmentation``: a module that
  is installed (or on ``sys.path``), or a file, and the object in it.

Names are listed from the installed packages' metadata without importing anything, so
``fedmq --help`` can show them fast; the object is imported only when it is used. Nothing here
ever arrives over the network: plug-ins are code their owner installed on their own machine.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.util
import sys
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Any

from .errors import ConfigError

TASKS = "fedmq.tasks"
STRATEGIES = "fedmq.strategies"


def registered(group: str) -> dict[str, EntryPoint]:
    """The entry points of ``group`` by name (the first one wins where two packages register a name)."""
    found: dict[str, EntryPoint] = {}
    for point in entry_points(group=group):
        found.setdefault(point.name, point)
    return found


def names(group: str) -> list[str]:
    """The registered names of ``group``, sorted; imports nothing."""
    return sorted(registered(group))


def is_import_path(spec: str) -> bool:
    """``module:Name`` or ``file.py:Name``, as opposed to a registered name."""
    return ":" in spec


def load(group: str, spec: str, *, what: str) -> Any:
    """The object ``spec`` names in ``group``; ``what`` says what it is for, in errors ("task").

    Raises ``ConfigError`` with a hint for every way this can go wrong: an unknown name, a module
    that does not import (with the error it raised), a file that is not there, a missing attribute.
    """
    if not is_import_path(spec):
        points = registered(group)
        if spec not in points:
            close = difflib.get_close_matches(spec, list(points), n=1)
            guess = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigError(f"unknown {what} {spec!r}",
                              hint=f"{guess}registered: {', '.join(sorted(points)) or 'none'}; "
                                   f"or give an import path, module:Name or path/to/file.py:Name")
        return _guarded(lambda: points[spec].load(), spec, what)
    module_name, _, attribute = spec.rpartition(":")
    if not module_name or not attribute:
        raise ConfigError(f"{what} {spec!r} is not an import path",
                          hint="write module:Name (an installed module) or path/to/file.py:Name")
    module = _guarded(lambda: _import(module_name), spec, what)
    try:
        obj: Any = module
        for part in attribute.split("."):
            obj = getattr(obj, part)
    except AttributeError:
        public = sorted(n for n in vars(module) if not n.startswith("_"))
        close = difflib.get_close_matches(attribute, public, n=1)
        raise ConfigError(f"{module_name} has no {attribute!r} for the {what} {spec!r}",
                          hint=f"did you mean {close[0]!r}?" if close else f"it defines: {', '.join(public[:12])}") from None
    return obj


def _import(module_name: str) -> Any:
    if module_name.endswith(".py") or "/" in module_name or "\\" in module_name:
        return _import_file(Path(module_name))
    return importlib.import_module(module_name)


def _import_file(path: Path) -> Any:
    """A module from a file, under a name made from its absolute path (two files may share a stem)."""
    path = path.expanduser().resolve()
    if not path.is_file():
        raise ConfigError(f"no file {path}", hint="check the path before the ':' (relative to the working directory)")
    name = f"fedmq_plugin_{path.stem}_{hashlib.sha256(str(path).encode()).hexdigest()[:8]}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"cannot import {path}", hint="a plug-in file is a Python module ending in .py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # before executing: dataclasses and pickling-free type lookups need it
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def _guarded(load_it: Any, spec: str, what: str) -> Any:
    """Run an import; any error it raises (the user's code) becomes one clear ``ConfigError``."""
    try:
        return load_it()
    except ConfigError:
        raise
    except ModuleNotFoundError as exc:
        raise ConfigError(f"cannot import the {what} {spec!r}: no module named {exc.name!r}",
                          hint="install the package that provides it in this environment (pip install ...), "
                               "or give a file path, path/to/file.py:Name") from None
    except Exception as exc:  # the plug-in's own code failed while importing: say where
        raise ConfigError(f"importing the {what} {spec!r} failed: {type(exc).__name__}: {exc}",
                          hint="fix the error in the plug-in's module; `python -c 'import MODULE'` shows the traceback") from None
