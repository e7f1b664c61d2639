"""Lazy package exports (PEP 562), so that importing a package costs only what its caller uses.

``fedmq.schemas`` re-exports the whole wire contract, but ``fedmq --help`` needs only topic names:
loading pydantic's message models, or SQLAlchemy for ``fedmq.store``, would triple its start-up
time. A package lists where each public name lives; the module is imported on first use.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, where: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package``: ``where`` maps each name to its submodule (``".codec"``)."""

    def __getattr__(name: str) -> Any:
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(where[name], package), name)

    def __dir__() -> list[str]:
        return sorted(where)

    return __getattr__, __dir__
