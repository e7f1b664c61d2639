"""Alembic's script folder for the store: ``env.py``, the revisions in ``versions/``.

Run through :mod:`fedmq.store.migrate` (``Store(url)``, ``fedmq db upgrade``), never an alembic.ini.
"""
