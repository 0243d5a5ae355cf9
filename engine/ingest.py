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
  carry ``"frames": [HEX, ...]`` instead). HMA's ``{"pdq": HEX, "video_md5": HEX}``
  (no ``signal_type``) is a signal per type.
- ``csv``: a header naming at least ``signal_type`` and ``signal_value`` (the
  columns python-threatexchange and HMA exports use; ``signal_str``, what
  ``threatexchange dataset -P --csv`` writes, is read as ``signal_value``); optional
  ``labels``/``tags`` (separated by ``;``, ``,`` or spaces), ``external_id``/``id``, ``quality``,
  ``expires_at``.
- ``hex``: one hash per line, type given by the caller (``--type``), or ``TYPE HASH`` /
  ``TYPE:HASH`` lines (python-threatexchange's ``local_file`` collaboration).

  Or, with no ``signal_type`` column, a column per hash type (``id,md5,sha1,pdq``):
  a signal per filled hash cell.
- ``te-simple``: ThreatExchange's headerless "simple" dump (``simple.HASH_PDQ.te``):
  ``hash,descriptor_id,added_on,tags`` (or HMA's, with the indicator id second).

Any of them may be gzip-compressed (``.csv.gz``): detected by its magic bytes, and
led by ``#`` comment lines (skipped; in hex lines, a ``# note`` after a hash too).
- ``vpdq``: a vPDQ hash file (``frame,quality,HEX,timestamp`` per line, as the
  vpdq tools write, or python-threatexchange's serialized JSON list of
  ``"HEX,quality,timestamp"``, optionally after ``vpdq `` as its ``threatexchange hash``
  prints it). The whole file is ONE signal: a video of many frames.
"""

from __future__ import annotations

import csv
import gzip
import io
import itertools
import json
import math
import os
import re
import stat
import sys
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import IO

import numpy as np

from hashmatch.engine.errors import InvalidInput
from hashmatch.engine.export_writers import LABEL_SPLIT as _LABEL_SPLIT
from hashmatch.engine.export_writers import write_records as write_records  # re-exported
from hashmatch.engine.store import ColumnBatch, Rejection, SignalRecord

FORMATS = ("jsonl", "csv", "hex", "vpdq", "te-simple")
# a ThreatExchange dump row: a hash, then the descriptor's (or indicator's) numeric id
# (a hash cut short or too long is still one: the store names that line, not the file)
_TE_ROW = re.compile(r"^[0-9a-fA-F]{8,128},\d+,")
_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")
_VPDQ_LINE = re.compile(r"^\s*\d+\s*,\s*[^,]+\s*,\s*[^,]+\s*,\s*[-+.\deE]+\s*$")
# python-threatexchange's serialized vPDQ, bare or as `threatexchange hash` prints it
_VPDQ_JSON = re.compile(r"^(?:vpdq\s+)?\[", re.IGNORECASE)
csv.field_size_limit(sys.maxsize)

Item = SignalRecord | Rejection


def detect_format(first_line: str, name: str = "") -> str:
    """Guess a format from the file name, then from its first non-blank line."""
    suffix = Path(name).suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    if suffix == ".vpdq":
        return "vpdq"
    if suffix == ".te":
        return "te-simple"
    text = first_line.strip().lstrip("\ufeff")
    if _TE_ROW.match(text):  # no header; HMA's sample_data/*.csv are such
        return "te-simple"
    if text.startswith("{"):
        return "jsonl"
    lowered = text.lower()
    if "signal_type" in lowered and ("signal_value" in lowered or "signal_str" in lowered):
        return "csv"
    if _VPDQ_LINE.match(text) and any(_HEX64.match(p.strip()) for p in text.split(",")):
        return "vpdq"
    if _VPDQ_JSON.match(text):  # python-threatexchange's vpdq_to_json (no other format starts so)
        return "vpdq"
    if suffix in (".csv", ".tsv") or "," in text:  # no hex line holds a comma: a CSV,
        return "csv"  # whose header check names what it lacks (not "plain hex ... no type")
    if _hash_type_header(text):  # `id<TAB>md5<TAB>pdq` in a .txt: no TYPE HASH line
        return "csv"
    return "hex"


_HEXISH = re.compile(r"[0-9a-fA-F]{16,}")


def _hash_type_header(text: str) -> bool:
    """A header of a column per hash type split by tabs or semicolons (no comma: a comma
    makes any line a CSV): a hash-type column and no cell that is a hash, so a typed
    line split by a tab (``pdq<TAB>HEX``) stays one."""
    sep = _delimiter(text)
    if sep == ",":
        return False
    cells = text.split(sep)
    if len(cells) < 2 or any(_HEXISH.fullmatch(c.strip()) for c in cells):
        return False
    if len(cells) == 2 and not _column_name(cells[1]):  # `pdq<TAB>zz12...`: a typed line
        return False  # whose hash is bad, not a header (that line was lost, unreported)
    try:
        return _hash_columns(text, sep) is not None
    except InvalidInput:  # one type twice: the CSV reader says so
        return True


def _column_name(cell: str) -> bool:
    """Whether ``cell`` names a column a hash-list CSV header may have: a hash type
    (ours, an alias, a foreign one) or one of the signal columns."""
    from hashmatch.engine import signal_types
    from hashmatch.engine.errors import UnknownSignalType

    name = cell.strip().lower()
    if name in _FOREIGN_HASH_COLUMNS or any(name in names for names in _CSV_ALIASES.values()):
        return True
    try:
        signal_types.get(name)
    except UnknownSignalType:
        return False
    return True


class RecordStream:
    """What :func:`read_records` returns: iterate it for records, or let the store
    pull column batches (:meth:`column_batches`, the fast path for CSV)."""

    def __init__(
        self,
        source: str | Path | IO[str],
        format: str | None,
        signal_type: str | None,
        labels: Iterable[str],
        external_id: str | None,
    ):
        self._args = (source, format, signal_type, tuple(labels), external_id)

    def __iter__(self) -> Iterator[Item]:
        return _read(*self._args, batch_size=None)

    def column_batches(self, size: int) -> Iterator[tuple[ColumnBatch, list[Rejection], int]]:
        """(batch, its parser rejections, stream position after it), ``size`` records at a
        time; the same records, rejections and positions as iterating."""
        for cb in _read(*self._args, batch_size=size):
            yield cb, cb.rejections, cb.seen


def read_records(
    source: str | Path | IO[str],
    *,
    format: str | None = None,
    signal_type: str | None = None,
    labels: Sequence[str] = (),
    external_id: str | None = None,
) -> RecordStream:
    """Stream records from a file path (``-`` = stdin) or text stream.

    ``labels`` are added to every record; ``signal_type`` is required for ``hex``
    (and overrides the type of ``vpdq``, which is always "vpdq"). An unusable file
    as a whole (unknown format, CSV header without the needed columns, hex with no
    type) raises :class:`InvalidInput` before any record is produced.
    The result is iterable (once per iteration it reads the source; a text stream
    can be read once) and offers column batches to the store's ingest.
    """
    return RecordStream(source, format, signal_type, labels, external_id)


def _read(
    source: str | Path | IO[str],
    format: str | None,
    signal_type: str | None,
    labels: Iterable[str],
    external_id: str | None,
    *,
    batch_size: int | None,
) -> Iterator[Item | ColumnBatch]:
    """Records (``batch_size`` None) or :class:`ColumnBatch` es of ``batch_size``."""
    stream, name, done = _open(source)
    try:
        buffered: list[str] = []
        fmt, first, head = _sniff(stream, buffered, name, format)
        lines = _chain(buffered, stream)
        extra = tuple(labels)
        sep = _delimiter(first) if fmt == "csv" else ","
        if fmt == "csv":
            _check_header(first, sep)
        wide = _hash_columns(first, sep) if fmt == "csv" else None
        if fmt == "csv" and batch_size is not None and wide is None:
            yield from _csv_columns(lines, extra, batch_size, sep)
            return
        if fmt == "jsonl":
            items = _jsonl(lines, extra)
        elif wide is not None:
            items = _csv_wide(lines, wide, extra, sep)
        elif fmt == "csv":
            items = _csv(lines, extra, sep)
        elif fmt == "hex":
            if not signal_type and typed_line(head) is None:
                raise InvalidInput(
                    "plain hex lines carry no type: give the signal type (--type pdq)",
                    field="signal_type",
                )
            items = _hex(lines, signal_type, extra)
        elif fmt == "te-simple":
            items = _te(lines, signal_type or _te_type(name, _shown(source, name)), extra)
        else:
            items = _vpdq(lines, extra, external_id or (Path(name).stem if name else None))
        if batch_size is None:
            yield from items
            return
        position = 0
        while True:
            chunk = list(itertools.islice(items, batch_size))
            if not chunk:
                return
            yield ColumnBatch.from_items(chunk, position)
            position += len(chunk)
    except (UnicodeDecodeError, gzip.BadGzipFile, EOFError, zlib.error) as exc:
        # what was stored is the store's to say (a --strict ingest, a remote one and
        # damage in the first batch stored nothing): the reader only names the damage
        raise _unreadable(exc, _shown(source, name)) from None
    finally:
        done()


def _shown(source: str | Path | IO[str], name: str) -> str:
    """The file as an error names it: as the operator gave it (``list.csv.gz``), where
    ``name``, what the format is told from, lost its ``.gz`` (a damaged ``list.csv.gz``
    was named ``list.csv``, a file that is not there)."""
    if isinstance(source, str | Path) and str(source) != "-":
        return Path(source).name
    return name


def _unreadable(exc: Exception, name: str) -> InvalidInput:
    """The error for a file that is not UTF-8 text, or gzip cut short or damaged."""
    if isinstance(exc, UnicodeDecodeError):  # a binary file, or a CSV saved as Latin-1
        return InvalidInput(
            f"{name or 'input'} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x}): "
            "give a hash list (CSV, JSONL, hex, vPDQ) saved as UTF-8",
            field="file",
        )
    return InvalidInput(  # cut short, or not gzip after all
        f"{name or 'input'} (gzip) is cut short or damaged ({exc or type(exc).__name__})",
        field="file",
    )


def read_lines(source: str | Path) -> Iterator[str]:
    """The text lines of a file (``-``: stdin) read as ingest reads a hash list: gzip
    by its magic bytes, a BOM dropped, a pipe read once; :class:`InvalidInput` naming
    the file when it cannot be opened or is not UTF-8.

    Why: ``retract --file`` opened its file as plain text, so the retraction file
    ``lists export --retracted --out r.txt.gz`` writes was a UnicodeDecodeError
    traceback."""
    stream, name, done = _open(source)
    try:
        yield from stream
    except (UnicodeDecodeError, gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise _unreadable(exc, _shown(source, name) or str(source)) from None
    finally:
        done()


def _sniff(
    stream: Iterable[str], buffered: list[str], name: str, format: str | None
) -> tuple[str, str, str]:
    """(format, first non-blank line, first line past ``#`` comments) of a list whose
    lines ``stream`` gives; the lines read to tell are appended to ``buffered``."""
    stream = iter(stream)
    first = ""
    for line in stream:
        buffered.append(line)
        if line.strip():
            first = line
            break
    head = _past_comments(first.strip().lstrip("\ufeff"), stream, buffered)
    if head:  # "# exported from X, DATE" lines before a CSV header are no header
        first = buffered[-1]
    buffered[:-1] = ["\n" if _is_comment(line) else line for line in buffered[:-1]]
    head = _without_note(head)  # `HEX # note, x`: no CSV for its comma
    fmt = (format or detect_format(head, name)).lower()
    if fmt not in FORMATS:
        raise InvalidInput(
            f"unknown format {fmt!r} (choose from {', '.join(FORMATS)})", field="format"
        )
    if format is None and fmt == "vpdq" and _typed_video_lines(head, stream, buffered):
        fmt = "hex"
    return fmt, first, head


#: How much of a file :func:`file_format` reads to tell (a photo or a video: the first
#: chunk that is not UTF-8 ends it sooner).
SNIFF_CHARS = 64 * 1024


def file_format(path: str | Path) -> str | None:
    """The format ``read_records(path)`` reads a file as, told as it tells it (gzip read
    through, ``#`` comments skipped, a ``vpdq [...]`` line followed by more lines is
    ``TYPE HASH`` lines), from at most :data:`SNIFF_CHARS` of it; None for a file that
    is no UTF-8 text there (media).

    Why: ``hashmatch match`` asks whether a file is a vPDQ hash file or media, and kept
    its own copy of this rule (the first line only, no gzip): a vPDQ file led by a
    comment, or gzipped, ingested as a video and was then hashed as a photo by match."""
    stream, name, done = _open(path)
    try:
        fmt, _, _ = _sniff(_bounded_lines(stream, SNIFF_CHARS), [], name, None)
    except (UnicodeDecodeError, gzip.BadGzipFile, EOFError, zlib.error, OSError):
        return None
    finally:
        done()
    return fmt


def _bounded_lines(stream: IO[str], budget: int) -> Iterator[str]:
    """``stream``'s lines, ``budget`` characters in all (the last one cut there)."""
    while budget > 0:
        line = stream.readline(budget)
        if not line:
            return
        budget -= len(line)
        yield line


def _past_comments(head: str, stream: IO[str], buffered: list[str]) -> str:
    """The first non-blank line that is no ``#`` comment, from ``head`` on (the lines
    read to find it are added to ``buffered``; "" at the end of the stream).

    Why, for every format: a partner's export often starts ``# exported from X on
    DATE``; such lines were a CSV's header ("CSV header lacks column(s)"), a JSONL or
    ThreatExchange dump's bad first line. The caller turns them into blank lines, which
    every parser skips, so line numbers stay the file's."""
    while head.startswith("#") or _EXCEL_SEP.fullmatch(head):
        head = ""
        for line in stream:
            buffered.append(line)
            if line.strip():
                head = line.strip().lstrip("\ufeff")
                break
    return head


def _check_header(line: str, sep: str) -> None:
    """Refuse a CSV whose first line holds a hash: it has no header, and reading that
    line as one lost it without a word (``pdq,HEX`` named a ``pdq`` column: a one-line
    file stored nothing and said ``rejected 0``; the rows after it were all refused)."""
    cells = next(csv.reader([line.strip().lstrip("\ufeff")], delimiter=sep), [])
    if any(_HEXISH.fullmatch(c.strip()) for c in cells):
        raise InvalidInput(
            f"a CSV's first line names its columns, this one holds a hash ({line.strip()[:80]!r}):"
            " add a header (signal_type,signal_value), or write TYPE HASH lines",
            field="header",
        )


#: Excel's first-line hint of a CSV's separator (``sep=;``): no header, no data (the
#: header that follows says the separator as well)
_EXCEL_SEP = re.compile(r"sep=.", re.IGNORECASE)


def _is_comment(line: str) -> bool:
    """A ``#`` line, or Excel's ``sep=;``: what :func:`_past_comments` steps over."""
    text = line.strip().lstrip("\ufeff")
    return text.startswith("#") or _EXCEL_SEP.fullmatch(text) is not None


_ONE_WORD = re.compile(r"[^\s,;\"'{}\[\]]+")


def _without_note(text: str) -> str:
    """A hash line without its trailing ``# note`` (``HEX # from partner A, batch 3``),
    else ``text`` as it is: only one word (bare hex) or a ``TYPE HASH`` line loses what
    follows its ``#`` (a CSV row or a JSON object may hold a ``#`` in a label)."""
    code, sharp, _ = text.partition("#")
    code = code.rstrip()
    if not sharp or not code:
        return text
    if _ONE_WORD.fullmatch(code):  # bare hex, or what should have been (`zz12..`)
        return code
    typed = typed_line(code)
    if typed is not None and typed[1] and not re.search(r"[\s,;]", typed[1]):
        return code
    if _TYPED_VIDEO.fullmatch(code):  # `vpdq [...] # note`: its frames hold commas
        return code
    return text


_TYPED_VIDEO = re.compile(r"vpdq\s+(\[.*\])", re.IGNORECASE)


def _typed_video_lines(head: str, stream: IO[str], buffered: list[str]) -> bool:
    """Whether a file led by ``vpdq [...]`` is ``TYPE HASH`` lines (a complete frame list
    on that line, and more lines after it), not one video's vPDQ file.

    Why: ``lists export --format hex`` writes a video as ``vpdq [...]``, as
    python-threatexchange's ``threatexchange hash`` prints one; a file led by one was
    read as a single video ("not a JSON list: Extra data"), every line lost. Alone in a
    file, it stays a vPDQ file (external id: the file's stem)."""
    found = _TYPED_VIDEO.fullmatch(head)
    if found is None:
        return False
    try:
        json.loads(found.group(1))
    except ValueError:  # a frame list over several lines (indented JSON)
        return False
    for line in stream:
        buffered.append(line)
        if line.strip():
            return True
    return False


_GZIP_MAGIC = b"\x1f\x8b"


def _open(source: str | Path | IO[str]) -> tuple[IO[str], str, Callable[[], None]]:
    """(text stream, name, what to do when done): a file we opened is closed; a text
    wrapper we put around the caller's bytes (or stdin's) is detached, so the caller's
    stream stays open; a caller's text stream is left alone.

    Gzip (by its magic bytes, whatever the name: lists are shipped as ``.csv.gz``) is
    read through as it streams, never unpacked to disk; the name loses ``.gz``, so the
    suffix beneath still names the format."""
    if isinstance(source, str | Path):
        if str(source) == "-":  # as a file: a BOM (Excel, PowerShell) is not data
            raw = getattr(sys.stdin, "buffer", None)
            if raw is None:  # stdin replaced by a text stream (tests, embedding)
                return sys.stdin, "", _nothing
            return _wrap(raw)
        path = Path(source)
        check_source(path)
        try:
            raw = open(path, "rb")  # noqa: SIM115 - closed by the returned callable
        except OSError as exc:  # permission denied, or gone since the stat
            raise InvalidInput(f"{path}: {exc.strerror or exc}", field="file") from None
        stream, name, _ = _wrap(raw, path.name)

        def close() -> None:  # ours, all of it: closed (twice is fine), not detached
            stream.close()
            raw.close()  # GzipFile leaves a fileobj it was given open

        return stream, name, close
    if isinstance(source, io.BufferedIOBase | io.RawIOBase):
        return _wrap(source)
    return source, getattr(source, "name", "") or "", _nothing


def _gzip_magic(raw: io.BufferedReader) -> tuple[bool, IO[bytes]]:
    """(whether ``raw`` starts with gzip's magic bytes, the stream to read from then).

    ``peek`` does one read: on a pipe whose writer has sent one byte so far it returns
    that byte alone, and a gzip stream was read as text ("not UTF-8 (byte 0x8b)"). Then
    the byte is taken and put back in front (closing the result leaves ``raw`` open: the
    caller's, stdin's, or closed by :func:`_open`)."""
    head = raw.peek(2)[:2]
    if len(head) != 1:
        return head == _GZIP_MAGIC, raw
    first = raw.read(1)
    zipped = first + raw.peek(1)[:1] == _GZIP_MAGIC
    return zipped, io.BufferedReader(_Prefixed(first, raw))


class _Prefixed(io.RawIOBase):
    """``prefix``, then the rest of ``rest`` (one read of it at a time)."""

    def __init__(self, prefix: bytes, rest: io.BufferedReader):
        self._prefix, self._rest = prefix, rest

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:
        if self._prefix:
            n = min(len(b), len(self._prefix))
            b[:n] = self._prefix[:n]
            self._prefix = self._prefix[n:]
            return n
        return self._rest.readinto1(b)


def check_source(path: str | Path) -> None:
    """A regular file or a pipe, else :class:`InvalidInput` saying what it is (only
    stat: opening a pipe would take its data or block until a writer comes).

    Why pipes: ``hashmatch ingest <(generate-hashes) --list L`` (bash's process
    substitution, a ``/dev/fd/N`` pipe) and named pipes are how Unix tools stream a
    list without a temporary file; they are read once, front to back, as every format
    here is. A directory or a device (``/dev/zero`` would never end) is refused."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise InvalidInput(f"no such file: {path}", field="file") from None
    except OSError as exc:
        raise InvalidInput(f"{path}: {exc.strerror or exc}", field="file") from None
    if not (stat.S_ISREG(mode) or stat.S_ISFIFO(mode)):
        from hashmatch.engine.scan import file_kind

        raise InvalidInput(
            f"{path}: not a regular file or pipe but {file_kind(mode)}", field="file"
        )


def _wrap(raw: IO[bytes], name: str = "") -> tuple[IO[str], str, Callable[[], None]]:
    """Text over ``raw`` (the caller's bytes, stdin's, a file :func:`_open` opened),
    gunzipped if they start as gzip (``name`` then loses ``.gz``); the callable detaches
    the text from ``raw``, which stays open."""
    if hasattr(raw, "peek"):  # stdin's buffer, a file or pipe opened "rb"
        zipped, raw = _gzip_magic(raw)
    elif raw.seekable():  # a BytesIO, a file opened "rb"
        start = raw.tell()
        zipped = raw.read(2) == _GZIP_MAGIC
        raw.seek(start)
    else:  # read as text (wrapping it to peek would close it when dropped)
        zipped = False
    if zipped:
        name = name[:-3] if name.lower().endswith(".gz") else name
        unzipped = gzip.GzipFile(fileobj=raw, mode="rb")
        stream = io.TextIOWrapper(unzipped, encoding="utf-8-sig", newline="")

        def done() -> None:
            stream.detach()
            unzipped.close()  # leaves the caller's stream open (fileobj)

        return stream, name, done
    stream = io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")  # type: ignore[arg-type]
    return stream, name, stream.detach


def _nothing() -> None:
    pass


def _chain(buffered: list[str], rest: Iterable[str]) -> Iterator[str]:
    """``buffered``, then the rest of the lines. Not ``yield from rest``: a generator
    closed early (a parser that stops at a bad line) closes what it delegates to, and
    ``rest`` is the text stream itself: closed under the reader, whose detach then
    failed ('I/O operation on closed file'), and a caller's stream shut behind its back."""
    yield from buffered
    for line in rest:  # noqa: UP028 - see above
        yield line


def _labels(value: object, extra: tuple[str, ...]) -> tuple[str, ...]:
    if value is None or value == "":
        found: tuple[str, ...] = ()
    elif isinstance(value, str):
        found = tuple(p for p in _LABEL_SPLIT.split(value) if p)
    elif isinstance(value, list | tuple):
        found = tuple(str(v).strip() for v in value if str(v).strip())
    else:
        raise InvalidInput(f"labels must be a list or a string, got {value!r}", field="labels")
    return found + extra if extra else found


def parse_time(value: object) -> float | None:
    """Epoch seconds, or an ISO-8601 date/time (UTC unless it says otherwise)."""
    if value is None or value == "":
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            seconds = float(value)
        except OverflowError:  # a JSON integer of hundreds of digits
            seconds = math.inf  # refused below as "not a time"
        return _epoch(seconds, value)
    text = str(value).strip()
    try:
        seconds = float(text)
    except ValueError:
        seconds = None
    if seconds is not None:  # (outside the try: InvalidInput is a ValueError)
        return _epoch(seconds, text)
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


_LATEST_EPOCH = 253402300799.0  # 9999-12-31T23:59:59Z: later is milliseconds or junk


def _epoch(seconds: float, given: object) -> float:
    """Epoch seconds that a datetime can show: not NaN/inf, not milliseconds."""
    if not math.isfinite(seconds) or abs(seconds) > _LATEST_EPOCH:
        raise InvalidInput(
            f"not a time (epoch seconds or ISO-8601): {given!r}"
            + (" (milliseconds? give seconds)" if math.isfinite(seconds) else ""),
            field="expires_at",
        )
    return seconds


def _quality(value: object) -> int | None:
    if value is None or value == "":
        return None
    # JSON true or 1.9 is not a quality: int() would store them as 1 without a word
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise InvalidInput(f"quality must be an integer, got {value!r}", field="quality")
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
            stype = obj.get("signal_type", obj.get("type"))  # "type": `hashmatch hash`
            if not stype and obj.get("error"):  # `hashmatch hash`'s record of a failed file
                raise InvalidInput(
                    f"an error record ({obj.get('reason') or obj['error']}): "
                    f"{obj.get('path', 'the file')} was not hashed",
                    field="signal_type",
                )
            if not stype and _hash_keys(obj):
                yield from _jsonl_mapping(obj, number, extra)
                continue
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
                record.frames, qualities, stamps = _frames(frames)
                if qualities is not None:  # `hash`'s "quality" is its first frame's
                    record.quality = None
                record.frame_qualities = obj.get("frame_qualities", qualities)
                record.timestamps = obj.get("timestamps", stamps)
            elif value is None:
                raise InvalidInput("missing column 'signal_value'", field="signal_value")
        except InvalidInput as exc:
            yield Rejection(exc.message, line=number, field=exc.field)
            continue
        yield record


def _hash_keys(obj: dict) -> list[str]:
    """The keys of ``obj`` that name a signal type (ours, an alias, or a foreign hash
    type): HMA's ``{"pdq": HEX, "video_md5": HEX}``, what its ``/h/hash`` returns and its
    ``/c/bank/<bank>/signal`` takes."""
    from hashmatch.engine import signal_types
    from hashmatch.engine.errors import UnknownSignalType

    keys = []
    for key in obj:
        if not isinstance(key, str):
            continue
        if key.strip().lower() in _FOREIGN_HASH_COLUMNS:
            keys.append(key)
            continue
        try:
            signal_types.get(key)
        except UnknownSignalType:
            continue
        keys.append(key)
    return keys


def _jsonl_mapping(obj: dict, number: int, extra: tuple[str, ...]) -> Iterator[Item]:
    """HMA's ``{TYPE: HASH, ...}`` line: a signal per type (a vPDQ value is pytx's
    serialized frame list, as in CSV), with the line's ``labels``, and ``external_id``
    or HMA's bank metadata ``content_id``; a foreign type is rejected by line."""
    try:
        metadata = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
        labels = _labels(obj.get("labels", obj.get("tags")), extra)
        external = _opt_str(obj.get("external_id", metadata.get("content_id")))
        expires = parse_time(obj.get("expires_at"))
    except InvalidInput as exc:
        yield Rejection(exc.message, line=number, field=exc.field)
        return
    for key in _hash_keys(obj):
        if key.strip().lower() in _FOREIGN_HASH_COLUMNS:
            yield Rejection(f"{key!r}: no hasher here computes {key} hashes", line=number,
                            field=key)  # fmt: skip
            continue
        yield SignalRecord(key, _opt_str(obj[key]) or "", labels, external, None, expires,
                           line=number)  # fmt: skip


def _opt_str(value: object) -> str | None:
    if value is None or value == "":
        return None
    return str(value)


def _frames(values: object) -> tuple[np.ndarray, list | None, list | None]:
    """A JSONL ``frames`` list -> (codes, qualities, timestamps): PDQ hex strings (an
    export, with ``frame_qualities``/``timestamps`` beside them), or ``hashmatch hash``'s
    frame objects (``{"frame", "quality", "hash", "timestamp"}``), so a video's ``hash``
    output ingests as it is, as a photo's does. Qualities/timestamps: None unless every
    frame object has one (the store checks their values)."""
    if not isinstance(values, list) or not values:
        raise InvalidInput("frames must be a non-empty list of PDQ hex", field="frames")
    out = np.empty((len(values), 32), np.uint8)
    for i, v in enumerate(values):
        text = str(v.get("hash", "") if isinstance(v, dict) else v).strip()
        if not _HEX64.match(text):
            raise InvalidInput(f"frame {i} is not 64 hex characters: {text!r}", field="frames")
        out[i] = np.frombuffer(bytes.fromhex(text), np.uint8)
    return out, _every(values, "quality"), _every(values, "timestamp")


def _every(values: list, key: str) -> list | None:
    """``key`` of every frame object, or None when some frame lacks it (or is hex)."""
    if all(isinstance(v, dict) and v.get(key) is not None for v in values):
        return [v[key] for v in values]
    return None


_CSV_ALIASES = {
    "signal_type": ("signal_type",),
    # signal_str: python-threatexchange's `threatexchange dataset -P --csv`
    "signal_value": ("signal_value", "signal_str"),
    "labels": ("labels", "tags", "label", "tag"),
    "external_id": ("external_id", "id", "content_id", "signal_id"),
    "quality": ("quality",),
    "expires_at": ("expires_at", "expires", "expiry"),
}


def _csv_header(reader: Iterator[list[str]], extra: tuple[str, ...]) -> _CsvRows | None:
    """Read the header row -> the row rules for the columns it names (None: no
    header, an empty file). Both CSV read paths start here."""
    header = None
    for row in reader:
        if row and any(c.strip() for c in row):
            header = [c.strip().lower().lstrip("\ufeff") for c in row]
            break
    if header is None:
        return None
    while header and not header[-1]:  # a spreadsheet's trailing unnamed columns
        header.pop()
    known = {"signal_type", *itertools.chain(*_CSV_ALIASES.values())}
    twice = sorted({c for c in header if c in known and header.count(c) > 1})
    if twice:  # which one would be meant? (the first would win silently)
        raise InvalidInput(
            f"CSV header names column(s) {', '.join(twice)} more than once", field="header"
        )
    where: dict[str, int | None] = {}
    for key, names in _CSV_ALIASES.items():
        given = [n for n in names if n in header]
        if len(given) > 1 and key == "signal_value":  # two hash columns: which one?
            raise InvalidInput(
                f"CSV header names both {' and '.join(given)}: which is the hash?",
                field="header",
            )
        where[key] = header.index(given[0]) if given else None
    missing = [c for c in ("signal_type", "signal_value") if where[c] is None]
    if missing:
        hint = (
            "; this is `hashmatch hash --format csv` output: ingest its --format te or jsonl output"
            if {"path", "type", "hash"} <= set(header)
            else ""
        )
        raise InvalidInput(
            f"CSV header lacks column(s) {', '.join(missing)} (found: {', '.join(header)})" + hint,
            field="header",
        )
    return _CsvRows(header, where, extra)


class _CsvRows:
    """Turns CSV rows into records: the per-row rules, shared by both read paths."""

    def __init__(self, header: list[str], where: dict[str, int | None], extra: tuple[str, ...]):
        self.header, self.width, self.extra = header, len(header), extra
        self.i_type, self.i_value = where["signal_type"], where["signal_value"]
        self.i_lab, self.i_ext = where["labels"], where["external_id"]
        self.i_q, self.i_exp = where["quality"], where["expires_at"]
        self.label_cache: dict[str, tuple[str, ...]] = {}

    def short(self, row: list[str], number: int) -> Rejection | None:
        """A row with too few columns: None if blank (skipped), else its rejection."""
        if not any(c.strip() for c in row):
            return None
        return Rejection(
            f"missing column {self.header[len(row)]!r} ({len(row)} of {self.width} columns)",
            line=number,
            field=self.header[len(row)],
        )

    def labels(self, text: str) -> tuple[str, ...]:
        labels = self.label_cache.get(text)
        if labels is None:
            labels = _labels(text, self.extra)
            if len(self.label_cache) < 10_000:
                self.label_cache[text] = labels
        return labels

    def too_wide(self, row: list[str], number: int) -> Rejection | None:
        """A row with non-empty fields past the header's columns (trailing empty ones
        are fine): rejected, since its labels and external id would shift."""
        if len(row) > self.width and any(c.strip() for c in row[self.width :]):
            return Rejection(
                f"{len(row)} columns, the header names {self.width} (an unquoted comma?)",
                line=number,
                field="row",
            )
        return None

    def item(self, row: list[str], number: int) -> Item:
        wide = self.too_wide(row, number)
        if wide is not None:
            return wide
        try:
            return SignalRecord(
                row[self.i_type],
                row[self.i_value],
                self.extra if self.i_lab is None else self.labels(row[self.i_lab]),
                row[self.i_ext] or None if self.i_ext is not None else None,
                _quality(row[self.i_q]) if self.i_q is not None else None,
                parse_time(row[self.i_exp]) if self.i_exp is not None else None,
                None,
                None,
                None,
                number,
            )
        except InvalidInput as exc:
            return Rejection(exc.message, line=number, field=exc.field)


#: Hash columns other tools' lists carry that no hasher here computes (NCMEC's
#: fingerprint types, pytx's url_md5): their values are rejected by line, not ignored.
_FOREIGN_HASH_COLUMNS = frozenset(
    [
        "sha1",
        "photodna",
        "pdna",
        "tmk",
        "tmk_pdqf",
        "netclean",
        "videntifier",
        "ssvh_pdna",
        "ssvh_safer_hash",
        "url_md5",
    ]
)


def _delimiter(header_line: str) -> str:
    """A CSV's delimiter, from its header: a comma, unless the header holds none and a tab
    (TSV: spreadsheets, `cut`) or a semicolon (Excel in locales whose decimal mark is a
    comma) instead."""
    if "," in header_line:
        return ","
    for sep in ("\t", ";"):
        if sep in header_line:
            return sep
    return ","


def _hash_columns(first_line: str, sep: str = ",") -> dict[int, str] | None:
    """A CSV header naming its hash columns by type (``id,md5,sha256,pdq``: NCMEC- and
    StopNCII-style lists, one row per media item) -> {column: type name, or the foreign
    name for :data:`_FOREIGN_HASH_COLUMNS`}; None for a ``signal_type`` header."""
    from hashmatch.engine import signal_types
    from hashmatch.engine.errors import UnknownSignalType

    header = next(csv.reader([first_line.strip().lstrip("\ufeff")], delimiter=sep), [])
    names = [c.strip().lower() for c in header]
    if "signal_type" in names:
        return None
    found: dict[int, str] = {}
    for i, name in enumerate(names):
        if name in _FOREIGN_HASH_COLUMNS:
            found[i] = name
            continue
        try:
            found[i] = signal_types.get(name).name
        except UnknownSignalType:
            continue
    if not any(n not in _FOREIGN_HASH_COLUMNS for n in found.values()):
        return None  # the usual header error says what is missing
    if len(set(found.values())) < len(found):
        raise InvalidInput(f"CSV header names one hash type twice: {header}", field="header")
    return found


def _csv_wide(
    lines: Iterable[str], hashes: dict[int, str], extra: tuple[str, ...], sep: str = ","
) -> Iterator[Item]:
    """Rows with a column per hash type: one signal per filled hash cell, each with the
    row's labels, external id and expiry (quality: perceptual types only, it is the
    image's, not a digest's). A foreign hash's value is rejected by line."""
    from hashmatch.engine import signal_types

    reader = csv.reader(lines, delimiter=sep)
    # the header: the first row not blank (blank lines, or comments blanked, may lead)
    top = next((row for row in reader if any(c.strip() for c in row)), [])
    header = [c.strip().lower().lstrip("\ufeff") for c in top]
    where = {key: next((header.index(n) for n in names if n in header), None)
             for key, names in _CSV_ALIASES.items()}  # fmt: skip
    last = reader.line_num
    for row in reader:
        number = last + 1
        last = reader.line_num
        if not any(c.strip() for c in row):
            continue

        def cell(key: str, row: list[str] = row) -> str:
            i = where[key]
            return row[i].strip() if i is not None and i < len(row) else ""

        try:
            labels = _labels(cell("labels"), extra)
            quality = _quality(cell("quality"))
            expires = parse_time(cell("expires_at"))
        except InvalidInput as exc:
            yield Rejection(exc.message, line=number, field=exc.field)
            continue
        # the partner's key as written, spaces kept, as a signal_type CSV keeps it
        i_ext = where["external_id"]
        external = row[i_ext] if i_ext is not None and i_ext < len(row) else ""
        filled = [(i, t) for i, t in hashes.items() if i < len(row) and row[i].strip()]
        if not filled:
            yield Rejection("no hash in any hash column", line=number, field="row")
        for i, stype in filled:
            if stype in _FOREIGN_HASH_COLUMNS:
                yield Rejection(f"column {header[i]!r}: no hasher here computes {stype} hashes"
                                " (the row's other hashes are kept)", line=number,
                                field=header[i])  # fmt: skip
                continue
            exact = signal_types.get(stype).exact
            yield SignalRecord(stype, row[i].strip(), labels, external or None,
                               None if exact else quality, expires, line=number)  # fmt: skip


def _csv(lines: Iterable[str], extra: tuple[str, ...], sep: str = ",") -> Iterator[Item]:
    reader = csv.reader(lines, delimiter=sep)
    rows = _csv_header(reader, extra)
    if rows is None:
        return
    width = rows.width
    last = reader.line_num
    for row in reader:
        number = last + 1  # the record's first line (a quoted field may span several)
        last = reader.line_num
        if len(row) < width:
            rejection = rows.short(row, number)
            if rejection is not None:
                yield rejection
            continue
        yield rows.item(row, number)


def _csv_columns(lines: Iterable[str], extra: tuple[str, ...], size: int,
                 sep: str = ",") -> Iterator[ColumnBatch]:  # fmt: skip
    """CSV as column batches of ``size`` records: the same records, rejections and
    stream positions as :func:`_csv`, without an object per line.

    Why two readers: most hash-list CSVs are plain (no quotes, one row a line, every
    row as wide as the header). Such a chunk is cut into columns with one
    ``str.split`` and slices, checked with numpy (the comma count of every line);
    the first chunk that is not plain hands the rest of the file to ``csv.reader``
    (a quoted field may span lines, so there is no going back). A TSV or ``;`` file
    (``sep``) is all ``csv.reader``.
    """
    lines = iter(lines)
    reader = csv.reader(lines, delimiter=sep)
    rows = _csv_header(reader, extra)
    if rows is None:
        return
    width = rows.width
    base = reader.line_num  # physical lines read so far
    position = 0
    if sep != ",":
        yield from _csv_reader_columns(rows, lines, size, base, position, sep)
        return
    while True:
        chunk = list(itertools.islice(lines, size))
        if not chunk:
            return
        fields = _plain_fields(chunk, width)
        if fields is None:  # not plain: csv.reader from here on
            yield from _csv_reader_columns(rows, itertools.chain(chunk, lines), size, base,
                                           position)  # fmt: skip
            return
        n = len(chunk)
        numbers = list(range(base + 1, base + n + 1))
        positions = list(range(position, position + n))
        base += n
        position += n
        yield _columns(rows, [fields[k::width] for k in range(width)], numbers, positions, [],
                       position)  # fmt: skip


def _plain_fields(chunk: list[str], width: int) -> list[str] | None:
    """Every field of ``chunk`` in row order if each line is one plain row of exactly
    ``width`` fields (no quotes, no blank line); else None."""
    text = "".join(chunk)
    if '"' in text:
        return None
    if "\r" in text:
        if text.count("\r") != text.count("\r\n"):
            return None
        text = text.replace("\r\n", "\n")
    if not text.endswith("\n"):
        text += "\n"
    if text.count("\n") != len(chunk) or text.count(",") != (width - 1) * len(chunk):
        return None
    raw = np.frombuffer(text.encode(), np.uint8)
    ends = np.flatnonzero(raw == 10)
    commas_before = np.searchsorted(np.flatnonzero(raw == 44), ends)
    if np.any(np.diff(commas_before, prepend=0) != width - 1):
        return None
    return text[:-1].replace("\n", ",").split(",")


def _csv_reader_columns(rows: _CsvRows, lines: Iterable[str], size: int, base: int,
                        position: int, sep: str = ",") -> Iterator[ColumnBatch]:  # fmt: skip
    reader = csv.reader(lines, delimiter=sep)
    width = rows.width
    last = 0  # physical lines this reader has read
    while True:
        good: list[list[str]] = []
        numbers: list[int] = []
        positions: list[int] = []
        rejections: list[Rejection] = []
        for row in reader:
            number = base + last + 1  # the record's first line, as _csv says
            last = reader.line_num
            if len(row) < width:
                rejection = rows.short(row, number)
                if rejection is not None:
                    rejections.append(
                        Rejection(rejection.reason, position, number, rejection.field)
                    )
                    position += 1
                continue
            wide = rows.too_wide(row, number)
            if wide is not None:
                rejections.append(Rejection(wide.reason, position, number, wide.field))
                position += 1
                continue
            good.append(row)
            numbers.append(number)
            positions.append(position)
            position += 1
            if len(good) >= size:
                break
        if not good and not rejections:
            return
        cols = [list(c) for c in zip(*good, strict=False)] if good else []
        yield _columns(rows, cols, numbers, positions, rejections, position)


def _columns(rows: _CsvRows, cols: list[list[str]], numbers: list[int], positions: list[int],
             rejections: list[Rejection], seen: int) -> ColumnBatch:  # fmt: skip
    """A :class:`ColumnBatch` from the columns of good rows (``cols[k]``: column k)."""
    if not numbers:
        return ColumnBatch([], [], [], None, None, None, [], [], rejections, seen)
    try:
        qualities = None if rows.i_q is None else [_quality(v) for v in cols[rows.i_q]]
        expires = None if rows.i_exp is None else [parse_time(v) for v in cols[rows.i_exp]]
    except InvalidInput:  # some row is bad: let the per-row rules say which
        table = zip(*cols, strict=True)
        items = [rows.item(list(r), n) for r, n in zip(table, numbers, strict=True)]
        out = ColumnBatch([], [], [], [], [], [], [], [], list(rejections), seen)
        for position, item in zip(positions, items, strict=True):
            if isinstance(item, Rejection):
                out.rejections.append(Rejection(item.reason, position, item.line, item.field))
                continue
            out.append(position, item)
        return out
    if rows.i_lab is None:
        labels = [rows.extra] * len(numbers)
    else:
        labels = [rows.labels(t) for t in cols[rows.i_lab]]
    return ColumnBatch(
        cols[rows.i_type],
        cols[rows.i_value],
        labels,
        None if rows.i_ext is None else [e or None for e in cols[rows.i_ext]],
        qualities,
        expires,
        numbers,
        positions,
        rejections,
        seen,
    )


_TYPED_LINE = re.compile(r"([A-Za-z][\w-]*)(?:\s+|:)(.*)")


def typed_line(text: str) -> tuple[str, str] | None:
    """``TYPE HASH`` (python-threatexchange's ``local_file`` collaboration and its
    ``threatexchange dataset -P -S``) or ``TYPE:HASH`` (``lists export --retracted``,
    ``hashmatch match``) -> (type, hash); a bare hash (no space, no colon) -> None."""
    found = _TYPED_LINE.fullmatch(text)
    return (found.group(1), found.group(2).strip()) if found else None


def _hex(lines: Iterable[str], signal_type: str | None, extra: tuple[str, ...]) -> Iterator[Item]:
    """One hash a line: bare hex of ``signal_type`` (the caller's ``--type``), or typed
    (``TYPE HASH``, ``TYPE:HASH``: the line's own type, whatever ``--type`` says, as
    python-threatexchange reads them)."""
    for number, line in enumerate(lines, 1):
        text = line.strip().lstrip("\ufeff")
        if not text or text.startswith("#"):
            continue
        text = text.partition("#")[0].rstrip()  # `HEX # note`: no hash holds a "#"
        typed = typed_line(text)
        if typed is not None:
            yield SignalRecord(typed[0], typed[1], extra, line=number)
        elif signal_type is None:
            yield Rejection("a bare hash carries no type: give --type, or write TYPE HASH",
                            line=number, field="signal_type")  # fmt: skip
        else:
            yield SignalRecord(signal_type, text, extra, line=number)


def _te_type(name: str, shown: str) -> str:
    """The type a ThreatExchange dump's name gives: python-threatexchange stores them as
    ``simple.HASH_PDQ.te``, HMA's sample data as ``pdq.csv``/``video_md5.csv``; a name
    saying none is refused (guessing from a hash's length would take a SHA-256 for a PDQ).
    ``name`` has lost a ``.gz`` (the suffix beneath tells the type); the refusal names
    the file as ``shown`` (:func:`_shown`: a ``dump.csv.gz`` was named ``dump.csv``)."""
    from hashmatch.engine import signal_types
    from hashmatch.engine.errors import UnknownSignalType

    stem = Path(name).stem
    for candidate in (stem, *reversed(stem.split("."))):
        try:
            return signal_types.get(candidate).name
        except UnknownSignalType:
            continue
    raise InvalidInput(
        f"a ThreatExchange dump ({shown or 'stdin'}) names its type in the file name"
        " (simple.HASH_PDQ.te, pdq.csv): give the signal type (--type pdq)",
        field="signal_type",
    )


def _te(lines: Iterable[str], signal_type: str, extra: tuple[str, ...]) -> Iterator[Item]:
    """ThreatExchange's "simple" dump (python-threatexchange's ``CliIndicatorSerialization``,
    HMA 1.0's sample data): no header; ``hash,descriptor_id,added_on,tags`` or, HMA's
    ``HMASerialization``, ``hash,indicator_id,descriptor_id,added_on,tags``. The second
    column is the external id, the space-separated tags the labels; ``added_on`` is when
    it was shared, not an expiry, so it is not kept."""
    reader = csv.reader(lines)
    last = 0
    for row in reader:
        number = last + 1
        last = reader.line_num
        if not any(c.strip() for c in row):
            continue
        if len(row) not in (4, 5):
            yield Rejection(
                f"{len(row)} columns: a ThreatExchange dump row has 4 (hash, descriptor id,"
                " added on, tags) or 5 (HMA's: hash, indicator id, descriptor id, added on,"
                " tags)",
                line=number,
                field="row",
            )
            continue
        yield SignalRecord(signal_type, row[0], _labels(row[-1], extra), row[1].strip() or None,
                           line=number)  # fmt: skip


def _vpdq(lines: Iterable[str], extra: tuple[str, ...], external_id: str | None) -> Iterator[Item]:
    """The whole file is one video signal (parsed by the hashing work's vpdq readers)."""
    from hashmatch.engine.video import parse_vpdq, parse_vpdq_json

    lines = iter(lines)
    head: list[str] = []  # up to the first non-blank line, whose form says which reader
    for line in lines:
        head.append(line)
        if line.strip():
            break
    try:
        text = _without_note(head[-1].strip().lstrip("\ufeff")) if head else ""
        prefix = _VPDQ_JSON.match(text)
        if prefix:  # one JSON document, possibly indented over many lines
            video = parse_vpdq_json(text[prefix.end() - 1 :] + "".join(lines))
        else:
            video = parse_vpdq(_chain(head, lines))
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
