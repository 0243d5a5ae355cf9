"""Signals written as JSONL, CSV or ``TYPE HASH`` lines: the inverse of ingest's readers.

Why fields in, a page at a time: `lists export` writes millions of stored rows, and a
record object per row (a frozen ``SignalInfo``) plus ``json.dumps`` per line cost
several times what reading the rows did. :class:`SignalWriter` turns one signal's
fields into its line (a CSV row) with string joins, and writes a page of them in one
call; :func:`write_records` (any record: ``SignalInfo``, ``SignalRecord``, a vPDQ one
with its frames) goes through the same writer, so every path writes the same bytes:
JSONL exactly as ``json.dumps(obj, ensure_ascii=False)`` wrote each line before.
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Iterable
from typing import IO

import numpy as np

from hashmatch.engine.errors import InvalidInput

WRITE_FORMATS = ("jsonl", "csv", "hex")
CSV_HEADER = ("signal_type", "signal_value", "labels", "external_id", "quality", "expires_at")

#: python-threatexchange's names for ours, in what it reads (its ``local_file`` lines):
#: it has no type for the digest of any file's bytes, only of a video's.
PYTX_NAMES = {"md5": "video_md5", "sha256": "video_sha256"}

#: What a CSV labels cell is split on when read (ingest's ``_labels``).
LABEL_SPLIT = re.compile(r"[;,|\s]+")

_json_str = json.encoder.encode_basestring  # a str as json.dumps(ensure_ascii=False) writes it
_JSON = json.JSONEncoder(ensure_ascii=False)
_PAGE = 1000  # records write_records formats before one write


def _json_number(x: object) -> str:
    """``x`` as ``json.dumps`` writes it: an int or a finite float is its repr (what
    the encoder writes); anything else (NaN, a numpy scalar) goes to the encoder."""
    kind = type(x)
    if kind is int or (kind is float and math.isfinite(x)):
        return repr(x)
    return _JSON.encode(x)


def _name(ident: int | None, external_id: str | None, hash_hex: str) -> str:
    """How an error names a signal: its store id, else its external id, else its hash."""
    if ident is not None:
        return f"id {ident}"
    if external_id is not None:
        return f"external id {external_id}"
    return hash_hex[:16] + "..."


class SignalWriter:
    """Signals to ``out`` in one of :data:`WRITE_FORMATS`: :meth:`item` (a stored
    signal's fields, not a video) or :meth:`record_item` (any record) make one
    signal's item, :meth:`write` writes a page of items. A signal a format cannot carry
    raises ``InvalidInput`` naming it (a CSV labels cell is split on ``;``, ``,``,
    ``|`` and whitespace when read, so such a label would come back as two: use
    JSONL). CSV starts with its header."""

    def __init__(self, out: IO[str], format: str) -> None:
        if format not in WRITE_FORMATS:
            raise InvalidInput(f"cannot write format {format!r}", field="format")
        self.format = format
        self._out = out
        self._csv = csv.writer(out, lineterminator="\n") if format == "csv" else None
        if self._csv is not None:
            self._csv.writerow(CSV_HEADER)

    def write(self, items: list) -> None:
        if self._csv is not None:
            self._csv.writerows(items)
        elif items:
            self._out.write("".join(items))

    def item(self, signal_type: str, hash_hex: str, labels: tuple[str, ...],
             external_id: str | None, quality: int | None, expires_at: float | None,
             ident: int | None = None) -> str | list:  # fmt: skip
        """One signal (not a video: :meth:`record_item`) from its fields; ``ident``, its
        store id, names it in an error."""
        if self.format == "jsonl":
            value = '"signal_value": ' + _json_str(hash_hex)
            return _jsonl(signal_type, value, labels, external_id, quality, expires_at)
        if self.format == "hex":
            return f"{PYTX_NAMES.get(signal_type, signal_type)} {hash_hex}\n"
        _csv_check(signal_type, labels, external_id, ident, hash_hex)
        return _csv_row(signal_type, hash_hex, labels, external_id, quality, expires_at)

    def record_item(self, r) -> str | list:
        """One record (``SignalInfo``, ``SignalRecord``; a vPDQ one with ``frames``
        keeps its frames, qualities and timestamps: JSONL fields, or in CSV and hex
        python-threatexchange's serialized frame list, what HMA's CSV holds)."""
        frames = getattr(r, "frames", None)
        if frames is None:
            return self.item(r.signal_type, r.hash_hex, r.labels, r.external_id, r.quality,
                             r.expires_at, getattr(r, "id", None))  # fmt: skip
        ident = getattr(r, "id", None)
        if self.format == "jsonl":
            value = '"frames": ' + _JSON.encode([row.tobytes().hex() for row in np.asarray(frames)])
            if r.frame_qualities is not None:
                value += ', "frame_qualities": ' + _JSON.encode([int(q) for q in r.frame_qualities])
            if r.timestamps is not None:
                value += ', "timestamps": ' + _JSON.encode([float(t) for t in r.timestamps])
            return _jsonl(r.signal_type, value, r.labels, r.external_id, r.quality, r.expires_at)
        if self.format == "csv":
            _csv_check(r.signal_type, r.labels, r.external_id, ident, r.hash_hex)
        value = _frame_list(r, _name(ident, r.external_id, r.hash_hex))
        if self.format == "hex":
            return f"{PYTX_NAMES.get(r.signal_type, r.signal_type)} {value}\n"
        return _csv_row(r.signal_type, value, r.labels, r.external_id, r.quality, r.expires_at)


def write_records(records: Iterable, out: IO[str], *, format: str = "jsonl") -> int:
    """Write signals (``SignalInfo`` or ``SignalRecord``) as JSONL, CSV or ``TYPE HASH``
    lines; the inverse of ingest's ``read_records``: what this writes ingests back to
    the same stored signals (``hex``: the same hashes, nothing else). See
    :class:`SignalWriter`. Returns how many were written."""
    writer = SignalWriter(out, format)
    n = 0
    page: list = []
    for r in records:
        page.append(writer.record_item(r))
        if len(page) == _PAGE:
            writer.write(page)
            n += len(page)
            page = []
    writer.write(page)
    return n + len(page)


def _jsonl(signal_type: str, value: str, labels: tuple[str, ...], external_id: str | None,
           quality: int | None, expires_at: float | None) -> str:  # fmt: skip
    """The JSONL line, as json.dumps(obj, ensure_ascii=False) wrote it (its ", " and ": "
    separators, keys in this order, absent ones left out) at a fraction of its cost."""
    parts = ['{"signal_type": ', _json_str(signal_type), ", ", value, ', "labels": [',
             ", ".join(map(_json_str, labels)), "]"]  # fmt: skip
    if external_id:
        parts += (', "external_id": ', _json_str(external_id))
    if quality is not None:
        parts += (', "quality": ', _json_number(quality))
    if expires_at is not None:
        parts += (', "expires_at": ', _json_number(expires_at))
    parts.append("}\n")
    return "".join(parts)


def _csv_check(signal_type: str, labels: tuple[str, ...], external_id: str | None,
               ident: int | None, hash_hex: str) -> None:  # fmt: skip
    """Refuse what a CSV row would not bring back as written."""
    if labels and LABEL_SPLIT.search("".join(labels)):  # one char matches: any label's
        label = next(label for label in labels if LABEL_SPLIT.search(label))
        raise InvalidInput(
            f"label {label!r} of {signal_type} signal {_name(ident, external_id, hash_hex)}"
            " holds a character a CSV labels cell splits on (; , | or whitespace): use JSONL",
            field="labels",
        )
    if external_id and "\r" in external_id:  # csv quotes "\n", never a lone "\r"
        raise InvalidInput(
            f"external id {external_id!r} of {signal_type} signal"
            f" {_name(ident, external_id, hash_hex)} holds a carriage return, which a CSV"
            " row cannot carry: use JSONL",
            field="external_id",
        )


def _csv_row(signal_type: str, value: str, labels: tuple[str, ...], external_id: str | None,
             quality: int | None, expires_at: float | None) -> list:  # fmt: skip
    return [signal_type, value, ";".join(labels), external_id or "",
            "" if quality is None else quality,
            "" if expires_at is None else repr(float(expires_at))]  # fmt: skip


def _frame_list(r, name: str) -> str:
    """A video's ``signal_value`` in CSV and hex: python-threatexchange's serialized frame
    list (``"hex,quality,timestamp"`` per frame, timestamps exact)."""
    qualities, stamps = r.frame_qualities, r.timestamps
    if qualities is None or stamps is None:
        raise InvalidInput(
            f"vpdq signal {name} was stored without frame qualities or timestamps,"
            " which the CSV form needs: use JSONL",
            field="frames",
        )
    return json.dumps(
        [
            f"{row.tobytes().hex()},{int(q)},{float(t)!r}"
            for row, q, t in zip(np.asarray(r.frames), qualities, stamps, strict=True)
        ]
    )
