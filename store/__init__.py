"""The store: SQLAlchemy models, their migrations and the named operations on them."""

from .store import DEFAULT_DB, Store, upgrade_store

__all__ = ["DEFAULT_DB", "Store", "upgrade_store"]
