"""Snapshot directories of the engine's indexes on disk: their manifest's shape, their
names, durable writes, and the temporary directories a killed writer leaves.

Why a module of its own: :mod:`hashmatch.engine.runtime` decides *whether* a snapshot
belongs to its store (store id, change digest, types); this module knows only files,
so the rules about what a snapshot directory may look like live in one place.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

from hashmatch.engine import signal_types
from hashmatch.engine.durable import fsync_path, pid_alive
from hashmatch.engine.errors import CorruptData

#: Snapshot manifest format. 2: the manifest names the store (store_id) and the change
#: it was taken at (change_digest). Format-1 snapshots cannot be checked against the
#: store they claim to be of, so they are not loaded: the first start after the upgrade
#: builds from the store (17.7 s at 10M signals here); the next snapshot is format 2.
SNAPSHOT_FORMAT = 2
KEEP_SNAPSHOTS = 2
#: A snapshot's temporary directory this much older than its last write is
#: abandoned even if its writer's pid is alive (the pid was reused).
TMP_MAX_AGE_SECONDS = 3600.0
_SNAPSHOT_NAME = re.compile(r"snap-(\d+)-\d+")
_TMP_PID = re.compile(r"\.(\d+)\.tmp")


def list_snapshots(snapshot_dir: Path) -> list[Path]:
    """Manifests of complete snapshots, newest (highest counter) first."""
    if not snapshot_dir.is_dir():
        return []
    found = [
        p / "manifest.json"
        for p in snapshot_dir.iterdir()
        if p.is_dir() and not p.name.endswith(".tmp") and (p / "manifest.json").is_file()
    ]
    return sorted(found, key=lambda p: p.parent.name, reverse=True)


def remove_abandoned_tmp(snapshot_dir: Path) -> None:
    """Remove ``snapshots/*.tmp`` left by a snapshot that died (kill -9, power cut).
    Best effort: a snapshot dir we cannot clean never stops a load."""
    try:
        found = [p for p in snapshot_dir.iterdir() if p.name.endswith(".tmp")]
    except OSError:  # no snapshots/ yet
        return
    for path in found:
        with contextlib.suppress(OSError):  # e.g. renamed by its writer meanwhile
            if abandoned_tmp(path):
                shutil.rmtree(path, ignore_errors=True)


def remove_snapshot(snap: Path) -> None:
    """Delete the snapshot directory ``snap``, first renamed to the temporary name a
    killed writer leaves (``<name>.<pid>.tmp``): a delete killed midway then leaves one
    that :func:`remove_abandoned_tmp` frees at the next load or snapshot. Deleted in
    place, rmtree goes in directory order, which may take ``manifest.json`` before an
    index (on ext4 here: before ``vpdq.index``): the rest then was no snapshot (no manifest)
    and no temporary, and nothing ever freed it."""
    tmp = snap.with_name(f"{snap.name}.{os.getpid()}.tmp")
    try:
        os.rename(snap, tmp)
    except OSError:  # gone already: another process pruned it
        return
    shutil.rmtree(tmp, ignore_errors=True)


#: what to do about a snapshot whose manifest cannot be read (it is refused either way)
REWRITE_SNAPSHOT = (
    "the snapshot is refused (the index comes from an older snapshot or the store):"
    " delete {snapshot} and run `hashmatch index snapshot` to write a new one"
)


def read_manifest_file(file: Path, snapshot: Path) -> object:
    """The JSON in ``file``, a manifest of the snapshot directory ``snapshot``; else
    CorruptData naming the file, saying whether it is empty or not JSON, and what to do.

    Why: an empty manifest (a copy cut short, a crash of an older build between create
    and write) was reported as json's bare "Expecting value: line 1 column 1 (char 0)",
    which named neither the file nor the fix."""
    remedy = REWRITE_SNAPSHOT.format(snapshot=snapshot)
    text = file.read_bytes()  # OSError (missing, unreadable) is the caller's to word
    if not text.strip():
        size = "0 bytes" if not text else "only whitespace"
        raise CorruptData(
            f"{file} is empty ({size}): the write of it was cut short (a crash, a full"
            f" disk, a partial copy); {remedy}"
        )
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:  # bad UTF-8 too; deep nesting
        raise CorruptData(f"{file} is corrupt, not a JSON manifest ({exc}); {remedy}") from exc


def check_manifest(manifest: object) -> dict:
    """The shape of a snapshot manifest, or CorruptData naming the field (a damaged
    manifest must skip its snapshot, not crash the load)."""
    if not isinstance(manifest, dict):
        raise CorruptData(f"must be a JSON object, got {type(manifest).__name__}", field="manifest")
    found = manifest.get("format")
    if found == 1:  # written before snapshots named their store: cannot be checked
        raise CorruptData(
            "snapshot format 1 records no store identity; built from the store"
            " (run `hashmatch index snapshot` once for a fast start)"
        )
    if isinstance(found, int) and not isinstance(found, bool) and found > SNAPSHOT_FORMAT:
        raise CorruptData(  # a newer build's (a rollback): never guessed at
            f"snapshot format {found} is newer than this hashmatch understands"
            f" ({SNAPSHOT_FORMAT}); built from the store"
        )
    if found != SNAPSHOT_FORMAT:
        raise CorruptData(f"unknown snapshot format {found!r}")
    if not _count(manifest.get("change_counter")):
        raise CorruptData(
            f"must be an integer >= 0, got {manifest.get('change_counter')!r}",
            field="change_counter",
        )
    if not isinstance(manifest.get("store_id"), str):
        raise CorruptData(f"must be a string, got {manifest.get('store_id')!r}", field="store_id")
    if not isinstance(manifest.get("change_digest"), str | None):
        raise CorruptData(
            f"must be a string or null, got {manifest['change_digest']!r}", field="change_digest"
        )
    types = manifest.get("types")
    if not isinstance(types, dict):
        raise CorruptData(f"must be an object, got {types!r}", field="types")
    for stype, entry in types.items():
        where = f"types.{stype}"
        if stype not in signal_types.names():
            raise CorruptData("not a known signal type", field=where)
        if not isinstance(entry, dict):
            raise CorruptData(f"must be an object, got {entry!r}", field=where)
        fname = entry.get("file")
        if not isinstance(fname, str) or fname in ("", ".", "..") or Path(fname).name != fname:
            raise CorruptData(f"must be a file name, got {fname!r}", field=f"{where}.file")
        if not _count(entry.get("count")):
            raise CorruptData(
                f"must be an integer >= 0, got {entry.get('count')!r}", field=f"{where}.count"
            )
    return manifest


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def snapshot_counter(name: str) -> int | None:
    """The change counter in a name ``Engine.snapshot`` gave; None for other names."""
    m = _SNAPSHOT_NAME.fullmatch(name)
    return int(m.group(1)) if m else None


@contextlib.contextmanager
def writing(tmp: Path) -> Iterator[None]:
    """Hold a lock on the snapshot being written: the kernel drops it when the writer
    dies (even by kill -9), so others can tell an abandoned one from one in progress."""
    fd = os.open(tmp, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def abandoned_tmp(path: Path) -> bool:
    """Whether ``snapshots/<name>.<pid>.tmp`` was left by a writer that is gone: nobody
    holds its lock (:func:`writing`), and its pid is dead or its last write is over
    TMP_MAX_AGE_SECONDS old (a reused pid; an older hashmatch's name without a pid).
    The lock guards a writer whose pid we cannot see (another pid namespace)."""
    if held(path):
        return False
    m = _TMP_PID.search(path.name)
    pid = int(m.group(1)) if m else None
    if pid is not None and not pid_alive(pid):
        return True
    newest = max([path.stat().st_mtime, *(p.stat().st_mtime for p in path.rglob("*"))])
    return time.time() - newest > TMP_MAX_AGE_SECONDS


def held(path: Path) -> bool:
    """Whether a writer holds ``path``'s :func:`writing` lock (alive: the kernel drops
    the lock of a dead one)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def fsync_tree(path: Path) -> None:
    """fsync every file and directory under ``path`` (a snapshot must be durable
    before the rename that publishes it)."""
    for p in sorted(path.rglob("*"), reverse=True):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
        elif p.is_dir():
            fsync_path(p)
    fsync_path(path)
