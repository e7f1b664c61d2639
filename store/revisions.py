"""The schema revisions this fedmq knows, read from the migration files without importing them.

Alembic and SQLAlchemy are not loaded here: readers (``fedmq history``) check a store's revision
with this alone. tests/store checks it against Alembic's own reading.
"""

from __future__ import annotations

import ast
from functools import lru_cache
from pathlib import Path

MIGRATIONS = Path(__file__).with_name("migrations")
VERSION_TABLE = "alembic_version"  # Alembic's: one row, the database's revision


@lru_cache(maxsize=1)
def revisions() -> dict[str, str | None]:
    """Every revision in ``migrations/versions/`` with the one it follows, from the files' literal
    ``revision`` and ``down_revision``."""
    found: dict[str, str | None] = {}
    for path in sorted((MIGRATIONS / "versions").glob("[0-9]*.py")):
        names = {target.id: node.value for node in ast.parse(path.read_text(encoding="utf-8")).body
                 if isinstance(node, ast.Assign | ast.AnnAssign)
                 for target in (node.targets if isinstance(node, ast.Assign) else [node.target])
                 if isinstance(target, ast.Name)}
        found[ast.literal_eval(names["revision"])] = ast.literal_eval(names["down_revision"])
    return found


def head() -> str:
    """The revision this fedmq's models.py corresponds to: the one no other revision follows."""
    following = set(revisions().values())
    (newest,) = [revision for revision in revisions() if revision not in following]
    return newest
