"""The store: SQLAlchemy models and the named operations on them."""

from .store import DEFAULT_DB, Store

__all__ = ["DEFAULT_DB", "Store"]
