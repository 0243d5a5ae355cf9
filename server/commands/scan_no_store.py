"""What ``scan`` and ``rescan`` say when their data dir holds no store: where the
store is looked for, and the server a catalog's scans went through.

Why: both read ``--data-dir`` or ``$HASHMATCH_DATA_DIR`` only (not the
``$HASHMATCH_CONFIG`` the store verbs and ``token`` read), and a catalog filled by
``scan --server`` in a directory with no store (the README's own order: scan through a
server, then ``rescan``) was answered ``no hashmatch store in ./hashmatch-data``,
naming neither the ``--server`` its scans used nor what to give.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path

import click

from hashmatch.engine.rescan_keys import LOG_KEY

#: The catalog's per-server record, kept by ``scan --server`` and ``rescan --server``.
_SERVER_RECORD = f"{LOG_KEY}@"


def catalog_servers(catalog: Path) -> list[str]:
    """The server addresses a catalog's scans or rescans went through (read-only: a
    catalog another run holds is read as it is; none when it cannot be read)."""
    if not catalog.is_file():
        return []
    uri = f"{catalog.resolve().as_uri()}?mode=ro"
    try:
        with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=1.0)) as conn:
            rows = conn.execute(
                "SELECT key FROM meta WHERE substr(key, 1, ?) = ? ORDER BY key",
                (len(_SERVER_RECORD), _SERVER_RECORD),
            ).fetchall()
    except sqlite3.Error:
        return []
    return [key[len(_SERVER_RECORD) :] for (key,) in rows]


def no_store(verb: str, data_dir: str, catalog: Path) -> click.ClickException:
    """The error for a local ``scan``/``rescan`` whose data dir holds no store."""
    message = f"no hashmatch store in {data_dir}"
    servers = catalog_servers(catalog)
    if verb == "rescan" and servers:
        where = ", ".join(servers)
        return click.ClickException(
            f"{message}; the catalog {catalog} was scanned through {where}: rescan"
            f" through it, `hashmatch rescan --server {servers[0]}` with that scan's token"
            " (--token-file, $HASHMATCH_TOKEN)"
        )
    config = (
        f"; {verb} reads no $HASHMATCH_CONFIG"
        if os.environ.get("HASHMATCH_CONFIG") and "HASHMATCH_DATA_DIR" not in os.environ
        else ""
    )
    through = "rescan --server HOST:PORT" if verb == "rescan" else "scan --server HOST:PORT"
    return click.ClickException(
        f"{message} (give the store's data dir: --data-dir or $HASHMATCH_DATA_DIR{config};"
        f" or match through a running server: `hashmatch {through}` with a token)"
    )
