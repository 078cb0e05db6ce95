"""Migration sets as an older version shipped them, for the upgrade tests of one migration (0042, 0046)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from supervisor.stores.migrations.runner import HERE

__all__ = ["as_user", "migration_set"]


def migration_set(dialect: str, tmp_path: Path, *, below: int | None, roles_made: bool = False) -> Path:
    """The dialect's migrations numbered below ``below`` (None: all of them), copied to a folder of their own.
    ``roles_made``: 0001 without its role-making block (only a superuser makes a BYPASSRLS role, even one that
    exists: a DBA makes them, the service's own user migrates the rest)."""
    d = tmp_path / f"{dialect}-{below or 'all'}-{'roles' if roles_made else 'plain'}"
    d.mkdir(exist_ok=True)
    for f in (HERE / dialect).glob("*.sql"):
        if below is not None and int(f.name[:4]) >= below:
            continue
        text = f.read_text(encoding="utf-8")
        if roles_made and f.name == "0001_roles.sql":
            start = text.index("DO $$")
            text = text[:start] + text[text.index("$$;", start + 5) + 3:]
        (d / f.name).write_text(text, encoding="utf-8")
    return d


def as_user(url: str, user: str) -> str:
    """``url`` connecting as ``user`` (no password: trust auth on the test server)."""
    p = urlsplit(url)
    return urlunsplit((p.scheme, f"{user}@{p.hostname}:{p.port or 5432}", p.path, p.query, p.fragment))
