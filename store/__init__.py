"""The store: SQLAlchemy models, their migrations and the named operations on them.

``DEFAULT_DB`` is plain; ``Store`` and ``upgrade_store`` load SQLAlchemy on first use, so a command
that only needs the default URL (``fedmq --help``) starts without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import lazy_exports

if TYPE_CHECKING:
    from .store import Store, upgrade_store

DEFAULT_DB = "sqlite:///fedmq.db"

__all__ = ["DEFAULT_DB", "Store", "upgrade_store"]
__getattr__, __dir__ = lazy_exports(__name__, {"Store": ".store", "upgrade_store": ".store"})
