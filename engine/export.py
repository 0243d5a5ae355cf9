"""Export a hash list as a file `hashmatch ingest` (and partners' tools) read back.

Why: sharing runs both ways. A platform that confirms media contributes its hashes to
a program (Lantern, ThreatExchange, a partner's list), moves a list between stores,
or hands a list to an auditor; and a partner needs the retractions too, so its copy
stops matching what the sharer withdrew. The export is the inverse of ingest: a
list's live signals written as JSONL or CSV (labels, external ids, quality, expiry,
vPDQ frames included) ingest into another store as the same signals, and
``retracted=True`` writes one ``type:hex`` target a line, what ``retract --file``
reads. Signals stream a page at a time, so a 10M-signal list never sits in memory.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO

from hashmatch.engine.errors import InvalidInput
from hashmatch.engine.ingest import write_records
from hashmatch.engine.store import SignalInfo, SignalRecord, SignalStore

EXPORT_FORMATS = ("jsonl", "csv", "hex")


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
    or a signal the format cannot carry (see :func:`write_records`). ``audit=False``
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
    skipped = [0]

    skip_expired = skip_expired and not retracted

    def wanted() -> Iterator[SignalInfo]:
        for info in store.iter_signals(list_name, retracted=retracted):
            if skip_expired and info.expires_at is not None and info.expires_at <= now:
                skipped[0] += 1
                continue
            yield info

    if retracted:
        written = _write_targets(wanted(), out)
        format = "targets"
    else:
        written = write_records((_record(store, info) for info in wanted()), out, format=format)
    report = ExportReport(list_name, format, written, skipped[0])
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


def _write_targets(signals: Iterator[SignalInfo], out: IO[str]) -> int:
    n = 0
    for info in signals:
        out.write(f"{info.signal_type}:{info.hash_hex}\n")
        n += 1
    return n


def _record(store: SignalStore, info: SignalInfo) -> SignalInfo | _StoredVideo:
    """A vPDQ signal's frames come from their own table; other signals export as read."""
    if info.signal_type != "vpdq":
        return info
    codes, qualities, stamps = store.frames(info.id)
    return _StoredVideo(
        id=info.id,
        signal_type=info.signal_type,
        hash_hex=info.hash_hex,
        labels=info.labels,
        external_id=info.external_id,
        quality=info.quality,
        expires_at=info.expires_at,
        frames=codes,
        frame_qualities=None if None in qualities else qualities,
        timestamps=None if None in stamps else stamps,
    )
