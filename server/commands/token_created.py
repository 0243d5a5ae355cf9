"""What ``hashmatch token`` says on stderr once it made a tenant's token: that the
server loads it on SIGHUP, and, for a tenant the store shares no list with yet, the two
store verbs that let it see one.

Why: it printed the token and an audit line only. A newcomer's next call got
UNAUTHENTICATED (the server reads the tokens file at start and on SIGHUP), then, after
the reload, an empty ``remote lists``: a token authenticates, what its tenant sees is
the store's (``tenants create``, ``tenants grant``), which nothing on the way said.
``tokens add`` already says "SIGHUP the server to load it".
"""

from __future__ import annotations

import contextlib
import shlex
import sqlite3
from pathlib import Path

import click


def _sees_a_list(data_dir: Path | None, tenant: str) -> bool:
    """Whether the store in ``data_dir`` shares a list with ``tenant`` (or makes it an
    admin tenant). False when there is no store or it cannot be read: the advice then
    holds as well."""
    if data_dir is None or not (data_dir / "store.sqlite").is_file():
        return False
    uri = f"{(data_dir / 'store.sqlite').resolve().as_uri()}?mode=ro"
    try:
        with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=1.0)) as conn:
            admin = conn.execute("SELECT is_admin FROM tenants WHERE name = ?", (tenant,))
            row = admin.fetchone()
            if row is not None and row[0]:
                return True
            grant = conn.execute("SELECT 1 FROM tenant_lists WHERE tenant = ? LIMIT 1", (tenant,))
            return grant.fetchone() is not None
    except sqlite3.Error:
        return False


def say_token_created(
    tenant: str, roles: tuple[str, ...], all_lists: bool, shown_digest: str, path: Path,
    data_dir: Path | None,
) -> None:  # fmt: skip
    """On stderr: the tenant made, that SIGHUP loads it, and how it gets its lists."""
    every = ", all lists" if all_lists else ""
    click.echo(
        f"added tenant {tenant!r} to {path} (roles {','.join(roles)}{every}; token"
        f" {shown_digest}); SIGHUP the server to load it",
        err=True,
    )
    if all_lists or _sees_a_list(data_dir, tenant):
        return
    quoted = shlex.quote(tenant)
    click.echo(
        f"{tenant!r} sees no hash list yet: on the server's data dir, `hashmatch tenants"
        f" create {quoted}` (if not done) and `hashmatch tenants grant {quoted} LIST`"
        " (--write to ingest into it)",
        err=True,
    )
