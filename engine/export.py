"""Export a hash list as a file `hashmatch ingest` (and partners' tools) read back.

Why: sharing runs both ways. A platform that confirms media contributes its hashes to
a program (Lantern, ThreatExchange, a partner's list), moves a list between stores,
or hands a list to an auditor; and a partner needs the retractions too, so its copy
stops matching what the sharer withdrew. The export is the inverse of ingest: a
list's live signals written as JSONL or CSV (labels, external ids, quality, expiry,
vPDQ frames included) ingest into another store as the same signals, and
``retracted=True`` writes one ``type:hex`` target a line, what ``retract --file``
reads. Signals stream a page at a time, so a 10M-signal list never sits in memory
(its ids do, 8 bytes a signal: :meth:`SignalStore.iter_signal_rows` says why).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO

from hashmatch.engine.errors import InvalidInput
from hashmatch.engine.export_writers import WRITE_FORMATS, SignalWriter
from hashmatch.engine.store import SignalRecord, SignalStore, split_labels

EXPORT_FORMATS = WRITE_FORMATS


@dataclass
class _StoredVideo(SignalRecord):
    """A stored vPDQ signal as a record to write, keeping its store id so that an error
    names it as it names every other signal (``signal id N``)."""

    id: int | None = None


@dataclass(frozen=True)
class ExportReport:
    """What an export wrote: signals written, and expired ones left out (if asked)."""

    list_name: str
    format: str
    written: int
    skipped_expired: int


def export_list(
    store: SignalStore,
    list_name: str,
    out: IO[str],
    *,
    format: str = "jsonl",
    retracted: bool = False,
    skip_expired: bool = False,
    actor: str = "local",
    destination: str | None = None,
    audit: bool = True,
    now: float | None = None,
) -> ExportReport:
    """Write list ``list_name``'s signals to ``out`` and record the export in the audit log.

    Live (not retracted) signals by default, expired ones included (they carry their
    expiry, and ingest stores them as expired) unless ``skip_expired``; with
    ``retracted`` every retracted signal as a ``type:hex`` line instead (``format`` and
    ``skip_expired`` then unused: a partner's copy may expire later, or never).
    Raises ``NotFound`` for an unknown list and ``InvalidInput`` for an unknown format
    or a signal the format cannot carry (see :class:`SignalWriter`). ``audit=False``
    leaves the audit entry to the caller (:func:`record_export`), for one that only
    knows the export succeeded once its file is complete (the CLI's ``--out``).
    """
    if format not in EXPORT_FORMATS:
        raise InvalidInput(
            f"unknown export format {format!r} (one of {', '.join(EXPORT_FORMATS)})",
            field="format",
        )
    list_name = store.get_list(list_name).name  # NotFound before anything is written
    now = time.time() if now is None else now
    pages = store.iter_signal_rows(list_name, retracted=retracted)
    if retracted:
        written, skipped = _write_targets(pages, out), 0
        format = "targets"
    else:
        expired_before = now if skip_expired else None
        written, skipped = _write_signals(store, pages, SignalWriter(out, format), expired_before)
    report = ExportReport(list_name, format, written, skipped)
    if audit:
        record_export(store, report, actor=actor, destination=destination)
    return report


def record_export(
    store: SignalStore, report: ExportReport, *, actor: str = "local", destination: str | None
) -> None:
    """The audit entry of a finished export: who handed over how many signals of which
    list, in which format (``targets`` for retractions), to where."""
    store.record(
        "export",
        actor=actor,
        list_name=report.list_name,
        count=report.written,
        source=destination,
        details={"format": report.format, "skipped_expired": report.skipped_expired},
    )


def _write_signals(store: SignalStore, pages: Iterator[list[tuple]], writer: SignalWriter,
                   expired_before: float | None) -> tuple[int, int]:  # fmt: skip
    """Write each page of rows as one; leave out those whose expiry is at or before
    ``expired_before`` (if given). Returns (written, left out)."""
    written = skipped = 0
    for rows in pages:
        items = []
        for row in rows:
            ident, _, stype, code, labels, external_id, quality, _, _, expires_at, _, _ = row
            if (
                expires_at is not None
                and expired_before is not None
                and expires_at <= expired_before
            ):
                skipped += 1
                continue
            labels = split_labels(labels)
            if stype == "vpdq":  # its frames come from their own table
                video = _video(store, ident, code, labels, external_id, quality, expires_at)
                items.append(writer.record_item(video))
            else:
                items.append(writer.item(stype, code.hex(), labels, external_id, quality,
                                         expires_at, ident))  # fmt: skip
        writer.write(items)
        written += len(items)
    return written, skipped


def _write_targets(pages: Iterator[list[tuple]], out: IO[str]) -> int:
    """``type:hex`` a line, what ``retract --file`` reads."""
    n = 0
    for rows in pages:
        out.write("".join(f"{row[2]}:{row[3].hex()}\n" for row in rows))
        n += len(rows)
    return n


def _video(store: SignalStore, ident: int, code: bytes, labels: tuple[str, ...],
           external_id: str | None, quality: int | None,
           expires_at: float | None) -> _StoredVideo:  # fmt: skip
    """A stored vPDQ signal with its frames, qualities and timestamps, as a record."""
    codes, qualities, stamps = store.frames(ident)
    return _StoredVideo(
        id=ident,
        signal_type="vpdq",
        hash_hex=code.hex(),
        labels=labels,
        external_id=external_id,
        quality=quality,
        expires_at=expires_at,
        frames=codes,
        frame_qualities=None if None in qualities else qualities,
        timestamps=None if None in stamps else stamps,
    )
