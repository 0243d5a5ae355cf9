"""Store operations the rescan property tests apply between rescans (photos and vPDQ)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hashmatch.engine.catalog import Catalog
from hashmatch.server.testing import running_server

ADMIN = {"admin": (["match", "export", "write"], True)}

LIST_OPS = ("disable", "enable", "delete")


def apply_list_op(store, kind: str, name: str) -> None:
    """Disable, enable or delete a list, if it exists (an op on a missing list: nothing)."""
    if name not in {h.name for h in store.lists()}:
        return
    if kind == "delete":
        store.delete_list(name)
    else:
        store.set_list_enabled(name, kind == "enable")


def set_retracted(engine, kind: str, target) -> None:
    """Retract or restore one stored signal (``kind``: "retract" or "restore")."""
    act = engine.retract if kind == "retract" else engine.restore
    act(list_name=target.list_name, signal_ids=[target.id])


@contextmanager
def two_copies_and_a_server(catalog_path: Path, prefix: str) -> Iterator[tuple]:
    """(tmp dir, a running server, two copies of one scanned catalog): one rescanned from
    the server's store itself, the other through the server."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        tmp = Path(tmp)
        for name in ("local", "remote"):
            shutil.copy(catalog_path, tmp / f"{name}.sqlite")
        with (
            running_server(tmp / "served", tenants=ADMIN) as ts,
            Catalog(tmp / "local.sqlite") as local,
            Catalog(tmp / "remote.sqlite") as remote,
        ):
            yield tmp, ts, local, remote
