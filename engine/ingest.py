"""Streaming parsers for hash-list files: JSONL, CSV, plain hex, vPDQ text.

Every parser is a generator of :class:`SignalRecord` (with its 1-based ``line``)
or :class:`Rejection` (a line that could not even be read: bad JSON, a missing
column). Nothing is loaded whole: a 10M-line file streams through in the store's
batches. Hash validation (length, hex, known type, duplicates) happens in the
store, once, for every format and for gRPC ingest alike.

Formats:

- ``jsonl``: one object per line: ``{"signal_type": "pdq", "signal_value": HEX,
  "labels": [...], "external_id": ..., "quality": ..., "expires_at": ...}``
  (``hash`` is accepted for ``signal_value``, ``tags`` for ``labels``; vPDQ lines
  carry ``"frames": [HEX, ...]`` instead).
- ``csv``: a header naming at least ``signal_type`` and ``signal_value`` (the
  columns python-threatexchange and HMA exports use); optional ``labels``/``tags``
  (separated by ``;``, ``,`` or spaces), ``external_id``/``id``, ``quality``,
  ``expires_at``.
- ``hex``: one hash per line, type given by the caller (``--type``).
- ``vpdq``: a vPDQ hash file (``frame,quality,HEX,timestamp`` per line, as the
  vpdq tools write). The whole file is ONE signal: a video of many frames.
"""

from __future__ import annotations

import csv
import io
import json
import re
import sys
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import IO

import numpy as np

from hashmatch.engine.errors import InvalidInput
from hashmatch.engine.store import Rejection, SignalRecord

FORMATS = ("jsonl", "csv", "hex", "vpdq")
_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")
_VPDQ_LINE = re.compile(r"^\s*\d+\s*,\s*[^,]+\s*,\s*[^,]+\s*,\s*[-+.\deE]+\s*$")
_LABEL_SPLIT = re.compile(r"[;,|\s]+")
csv.field_size_limit(sys.maxsize)

Item = SignalRecord | Rejection


def detect_format(first_line: str, name: str = "") -> str:
    """Guess a format from the file name, then from its first non-blank line."""
    suffix = Path(name).suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    if suffix == ".vpdq":
        return "vpdq"
    text = first_line.strip().lstrip("\ufeff")
    if text.startswith("{"):
        return "jsonl"
    lowered = text.lower()
    if "signal_type" in lowered and "signal_value" in lowered:
        return "csv"
    if _VPDQ_LINE.match(text) and any(_HEX64.match(p.strip()) for p in text.split(",")):
        return "vpdq"
    if suffix == ".csv":
        return "csv"
    return "hex"


def read_records(
    source: str | Path | IO[str],
    *,
    format: str | None = None,
    signal_type: str | None = None,
    labels: Sequence[str] = (),
    external_id: str | None = None,
) -> Iterator[Item]:
    """Stream records from a file path (``-`` = stdin) or text stream.

    ``labels`` are added to every record; ``signal_type`` is required for ``hex``
    (and overrides the type of ``vpdq``, which is always "vpdq"). An unusable file
    as a whole (unknown format, CSV header without the needed columns, hex with no
    type) raises :class:`InvalidInput` before any record is produced.
    """
    stream, name, close = _open(source)
    try:
        first = ""
        buffered: list[str] = []
        for line in stream:
            buffered.append(line)
            if line.strip():
                first = line
                break
        fmt = (format or detect_format(first, name)).lower()
        if fmt not in FORMATS:
            raise InvalidInput(
                f"unknown format {fmt!r} (choose from {', '.join(FORMATS)})", field="format"
            )
        lines = _chain(buffered, stream)
        extra = tuple(labels)
        if fmt == "jsonl":
            yield from _jsonl(lines, extra)
        elif fmt == "csv":
            yield from _csv(lines, extra)
        elif fmt == "hex":
            if not signal_type:
                raise InvalidInput(
                    "plain hex lines carry no type: give the signal type (--type pdq)",
                    field="signal_type",
                )
            yield from _hex(lines, signal_type, extra)
        else:
            yield from _vpdq(lines, extra, external_id or (Path(name).stem if name else None))
    finally:
        if close:
            stream.close()


def _open(source: str | Path | IO[str]) -> tuple[IO[str], str, bool]:
    if isinstance(source, str | Path):
        if str(source) == "-":
            return sys.stdin, "", False
        path = Path(source)
        if not path.is_file():
            raise InvalidInput(f"no such file: {path}", field="file")
        return open(path, encoding="utf-8-sig", newline=""), path.name, True
    if isinstance(source, io.BufferedIOBase | io.RawIOBase):
        return io.TextIOWrapper(source, encoding="utf-8-sig", newline=""), "", False
    return source, getattr(source, "name", "") or "", False


def _chain(buffered: list[str], rest: Iterable[str]) -> Iterator[str]:
    yield from buffered
    yield from rest


def _labels(value, extra: tuple[str, ...]) -> tuple[str, ...]:
    if value is None or value == "":
        found: tuple[str, ...] = ()
    elif isinstance(value, str):
        found = tuple(p for p in _LABEL_SPLIT.split(value) if p)
    elif isinstance(value, list | tuple):
        found = tuple(str(v).strip() for v in value if str(v).strip())
    else:
        raise InvalidInput(f"labels must be a list or a string, got {value!r}", field="labels")
    return found + extra if extra else found


def parse_time(value) -> float | None:
    """Epoch seconds, or an ISO-8601 date/time (UTC unless it says otherwise)."""
    if value is None or value == "":
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    text = str(value).strip()
    try:
        return float(text)
    except ValueError:
        pass
    try:
        stamp = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidInput(
            f"not a time (epoch seconds or ISO-8601): {text!r}", field="expires_at"
        ) from None
    if stamp.tzinfo is None:
        from datetime import UTC

        stamp = stamp.replace(tzinfo=UTC)
    return stamp.timestamp()


def _quality(value) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise InvalidInput(f"quality must be an integer, got {value!r}", field="quality") from None


def _jsonl(lines: Iterable[str], extra: tuple[str, ...]) -> Iterator[Item]:
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            yield Rejection(f"not valid JSON ({exc.msg} at column {exc.colno})", line=number)
            continue
        if not isinstance(obj, dict):
            yield Rejection("a JSONL line must be an object", line=number)
            continue
        try:
            stype = obj.get("signal_type")
            if not stype:
                raise InvalidInput("missing column 'signal_type'", field="signal_type")
            frames = obj.get("frames")
            value = obj.get("signal_value", obj.get("hash"))
            record = SignalRecord(
                signal_type=str(stype),
                hash_hex="" if value is None else str(value),
                labels=_labels(obj.get("labels", obj.get("tags")), extra),
                external_id=_opt_str(obj.get("external_id")),
                quality=_quality(obj.get("quality")),
                expires_at=parse_time(obj.get("expires_at")),
                line=number,
            )
            if frames is not None:
                record.frames = _frames(frames)
                record.frame_qualities = obj.get("frame_qualities")
                record.timestamps = obj.get("timestamps")
            elif value is None:
                raise InvalidInput("missing column 'signal_value'", field="signal_value")
        except InvalidInput as exc:
            yield Rejection(exc.message, line=number, field=exc.field)
            continue
        yield record


def _opt_str(value) -> str | None:
    if value is None or value == "":
        return None
    return str(value)


def _frames(values) -> np.ndarray:
    if not isinstance(values, list) or not values:
        raise InvalidInput("frames must be a non-empty list of PDQ hex", field="frames")
    out = np.empty((len(values), 32), np.uint8)
    for i, v in enumerate(values):
        text = str(v).strip()
        if not _HEX64.match(text):
            raise InvalidInput(f"frame {i} is not 64 hex characters: {text!r}", field="frames")
        out[i] = np.frombuffer(bytes.fromhex(text), np.uint8)
    return out


_CSV_ALIASES = {
    "labels": ("labels", "tags", "label", "tag"),
    "external_id": ("external_id", "id", "content_id", "signal_id"),
    "quality": ("quality",),
    "expires_at": ("expires_at", "expires", "expiry"),
}


def _csv(lines: Iterable[str], extra: tuple[str, ...]) -> Iterator[Item]:
    reader = csv.reader(lines)
    header = None
    for row in reader:
        if row and any(c.strip() for c in row):
            header = [c.strip().lower().lstrip("\ufeff") for c in row]
            break
    if header is None:
        return
    missing = [c for c in ("signal_type", "signal_value") if c not in header]
    if missing:
        raise InvalidInput(
            f"CSV header lacks column(s) {', '.join(missing)} (found: {', '.join(header)})",
            field="header",
        )
    i_type, i_value = header.index("signal_type"), header.index("signal_value")
    optional = {}
    for key, names in _CSV_ALIASES.items():
        for n in names:
            if n in header:
                optional[key] = header.index(n)
                break
    width = len(header)
    i_lab = optional.get("labels")
    i_ext = optional.get("external_id")
    i_q = optional.get("quality")
    i_exp = optional.get("expires_at")
    label_cache: dict[str, tuple[str, ...]] = {}
    for row in reader:
        number = reader.line_num
        if len(row) < width:
            if not any(c.strip() for c in row):
                continue
            yield Rejection(
                f"missing column {header[len(row)]!r} ({len(row)} of {width} columns)",
                line=number,
                field=header[len(row)],
            )
            continue
        if i_lab is None:
            labels = extra
        else:
            text = row[i_lab]
            labels = label_cache.get(text)
            if labels is None:
                labels = _labels(text, extra)
                if len(label_cache) < 10_000:
                    label_cache[text] = labels
        try:
            yield SignalRecord(
                row[i_type],
                row[i_value],
                labels,
                row[i_ext] or None if i_ext is not None else None,
                _quality(row[i_q]) if i_q is not None else None,
                parse_time(row[i_exp]) if i_exp is not None else None,
                None,
                None,
                None,
                number,
            )
        except InvalidInput as exc:
            yield Rejection(exc.message, line=number, field=exc.field)


def _hex(lines: Iterable[str], signal_type: str, extra: tuple[str, ...]) -> Iterator[Item]:
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        yield SignalRecord(signal_type, text, extra, line=number)


def _vpdq(lines: Iterable[str], extra: tuple[str, ...], external_id: str | None) -> Iterator[Item]:
    """The whole file is one video signal (parsed by the hashing work's vpdq reader)."""
    from hashmatch.engine.video import parse_vpdq

    try:
        video = parse_vpdq(lines)
    except InvalidInput as exc:
        found = re.match(r"line (\d+): (.*)", exc.message)
        if found:
            yield Rejection(found.group(2), line=int(found.group(1)), field="vpdq")
        else:
            yield Rejection(exc.message, line=None, field="vpdq")
        return
    yield SignalRecord(
        "vpdq",
        "",
        extra,
        external_id=external_id,
        frames=video.codes,
        frame_qualities=video.qualities,
        timestamps=video.timestamps,
        line=1,
    )


def write_records(records: Iterable, out: IO[str], *, format: str = "jsonl") -> int:
    """Write signals (``SignalInfo`` or ``SignalRecord``) as JSONL or CSV; the inverse of
    :func:`read_records` (exports round-trip through ingest)."""
    n = 0
    if format == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["signal_type", "signal_value", "labels", "external_id", "quality",
                         "expires_at"])  # fmt: skip
        for r in records:
            writer.writerow([
                r.signal_type, r.hash_hex, ";".join(r.labels), r.external_id or "",
                "" if r.quality is None else r.quality,
                "" if r.expires_at is None else r.expires_at,
            ])  # fmt: skip
            n += 1
        return n
    if format != "jsonl":
        raise InvalidInput(f"cannot write format {format!r}", field="format")
    for r in records:
        obj = {"signal_type": r.signal_type, "signal_value": r.hash_hex, "labels": list(r.labels)}
        if r.external_id:
            obj["external_id"] = r.external_id
        if r.quality is not None:
            obj["quality"] = r.quality
        if r.expires_at is not None:
            obj["expires_at"] = r.expires_at
        frames = getattr(r, "frames", None)
        if frames is not None:
            obj["frames"] = [row.tobytes().hex() for row in np.asarray(frames)]
        out.write(json.dumps(obj) + "\n")
        n += 1
    return n
