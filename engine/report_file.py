"""Writing a JSONL report atomically: a reader never sees half a report.

The report is written to a temporary file of its own in the report's directory
(``.<name>.<pid>.<random>.tmp``), fsync'ed and renamed over the report. The name is
unique per writer: it used to be ``<name>.tmp`` for everyone, so two scans (or a scan
and a rescan) writing the same report truncated and interleaved each other's
temporary file, and the second rename failed (``FileNotFoundError``) after the first
had installed a mixed report. Temporary files of writers killed with ``kill -9`` (dead
pid, untouched for STALE_TMP_SECONDS) are removed by the next writer of that report.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import secrets
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from hashmatch.engine.durable import pid_alive

#: a dead writer's temp file this old is abandoned (the age also covers a writer in
#: another pid namespace, whose pid we cannot see: it writes or renames well before)
STALE_TMP_SECONDS = 600.0


def write_jsonl_atomically(path: str | Path, records: Iterable[dict]) -> None:
    """Write ``records`` to ``path`` via a unique temporary file then a rename. ``-`` =
    stdout; an existing non-regular file (a FIFO, /dev/stdout) is written as is."""
    if str(path) == "-":
        for rec in records:
            sys.stdout.write(json.dumps(rec) + "\n")
        sys.stdout.flush()
        return
    path = Path(path)
    if path.is_symlink():  # replace the file the link points to, keep the link
        path = path.resolve()
    if path.exists() and not path.is_file():  # /dev/stdout, a FIFO...: never replace those
        with _naming(path), open(path, "w", encoding="utf-8") as fh:
            for rec in records:
                fh.write(json.dumps(rec) + "\n")
        return
    _remove_stale_temps(path)
    with _naming(path):
        tmp, fd = _create_temp(path)
    try:
        with _naming(path), open(fd, "w", encoding="utf-8") as fh:
            for rec in records:
                fh.write(json.dumps(rec, sort_keys=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        with _naming(path):
            os.replace(tmp, path)
    except BaseException:  # a full disk, an interrupt: never leave half a report behind
        tmp.unlink(missing_ok=True)
        raise


def _create_temp(path: Path) -> tuple[Path, int]:
    """A new file beside ``path`` that no other writer uses (O_EXCL), with the mode an
    ``open(path, "w")`` would give (0666 less the umask, unlike mkstemp's 0600)."""
    while True:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        try:
            return tmp, os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
        except FileExistsError:
            continue


def _remove_stale_temps(path: Path) -> None:
    """Remove the temp files of this report that writers killed mid-write left behind
    (their pid is gone and the file untouched for STALE_TMP_SECONDS)."""
    prefix = f".{path.name}."
    now = time.time()
    for tmp in path.parent.glob(f"{glob.escape(prefix)}*.tmp"):
        pid = tmp.name[len(prefix) :].split(".", 1)[0]
        if not pid.isdigit() or pid_alive(int(pid)):
            continue
        with contextlib.suppress(OSError):  # gone meanwhile, or an unwritable directory
            if now - tmp.stat().st_mtime > STALE_TMP_SECONDS:
                tmp.unlink()


@contextlib.contextmanager
def _naming(path: Path) -> Iterator[None]:
    """OSErrors of writing the report name it: a write or close on a full disk carries
    no file name (the CLI said ``Error: : No space left on device``)."""
    try:
        yield
    except OSError as exc:  # also names the report, not its temporary file
        raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc
