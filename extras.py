"""Optional parts (pyproject.toml's extras), imported where they are used.

A silo never needs the PostgreSQL driver, the embedded broker, plots or the DP accountant, so
``pip install fedmq`` leaves them out. A command that needs one that is missing stops with one
line that says which extra to install, instead of an ImportError from deep inside.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import ConfigError


def require_extra(module: str, extra: str, needed_for: str) -> ModuleType:
    """Import ``module``, or raise ``ConfigError`` naming ``fedmq[extra]``; ``needed_for`` ends "... needs"."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"{needed_for} needs {module}, which is not installed",
                          hint=f"pip install 'fedmq[{extra}]' (or 'fedmq[all]' for every optional part)") from None
