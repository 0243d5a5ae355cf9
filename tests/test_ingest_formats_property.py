"""Every hash-list format `hashmatch ingest` reads, written from random signals and
dressed as partners' files come (a UTF-8 BOM as Excel writes, CRLF, `#` comment lines
first, blank lines, `HEX # note` lines, gzip), reads back through the CLI as exactly the
signals written, as far as the format carries them; and a malformed line in any of
them (truncated hex, a hash of another type's length, an unknown type, a stray column)
is named by file and line, the rest stored, nothing stored under ``--strict``.

Writers: `hashmatch lists export --format jsonl|csv|hex`, and hand-written ones of the
partner formats the README names (pytx's `dataset --csv`, a signal_type CSV split by
commas, tabs or semicolons, a column per hash type, `TYPE HASH` lines, bare hex with
--type, HMA's JSONL hash mappings, ThreatExchange simple dumps, vpdq text files)."""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from list_state import list_state

from hashmatch.engine.runtime import Engine
from hashmatch.engine.store import SignalRecord
from hashmatch.server.cli import cli

NOW = 1_800_000_000.0
_counter = iter(range(10**9))


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    root = tmp_path_factory.mktemp("formats")
    engine = Engine.open(root / "data", eager=False)
    yield root, engine
    engine.close()


def _cli(root: Path, *args: str) -> tuple[int, str, str]:
    runner = CliRunner()
    env = {"HASHMATCH_DATA_DIR": str(root / "data")}
    result = runner.invoke(cli, list(args), env=env, catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def _state(engine: Engine, list_name: str, carries: frozenset[str]) -> list[tuple]:
    return list_state(engine, list_name, carries)


# -- signals --------------------------------------------------------------------------

_LENGTH = {"pdq": 32, "md5": 16, "sha256": 32}
# anything a label may hold (not NUL or U+001F, the store's separator), or only what a
# CSV labels cell keeps whole (it splits on ; , | and whitespace)
_RICH = st.text(
    st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\x00\x1f#"),
    min_size=1,
    max_size=10,
).filter(lambda t: t.strip() == t and t)
_CSV_SAFE = st.from_regex(r"[A-Za-z0-9_.:/\-é\"'ü中]{1,10}", fullmatch=True)
_EXT = st.text(
    st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\x00\x1f#"),
    min_size=1,
    max_size=12,
)
_EXT = _EXT | st.sampled_from([" e1", "e 2 ", "a,b", 'q"uote', "a;b", "\u00e9\u4e2d", "  "])
_EXPIRY = st.one_of(st.none(), st.floats(1e9, 4e9, allow_nan=False), st.just(NOW - 1))


@dataclass
class Sig:
    signal_type: str
    hash_hex: str = ""
    labels: tuple[str, ...] = ()
    external_id: str | None = None
    quality: int | None = None
    expires_at: float | None = None
    frames: np.ndarray | None = None
    frame_qualities: list[int] | None = None
    timestamps: list[float] | None = None

    def record(self) -> SignalRecord:
        return SignalRecord(self.signal_type, self.hash_hex, self.labels, self.external_id,
                            self.quality, self.expires_at, self.frames, self.frame_qualities,
                            self.timestamps)  # fmt: skip

    def value(self) -> str:
        """The hex, or a video's frames in pytx's serialized form (what CSVs hold)."""
        if self.frames is None:
            return self.hash_hex
        return json.dumps([f"{row.tobytes().hex()},{q},{t!r}" for row, q, t
                           in zip(self.frames, self.frame_qualities, self.timestamps,
                                  strict=True)])  # fmt: skip


@dataclass(frozen=True)
class Kind:
    """What a format carries and what its signals may hold."""

    types: tuple[str, ...]
    carries: frozenset[str]
    label: st.SearchStrategy = _CSV_SAFE
    external_id: st.SearchStrategy = _EXT
    single_type: bool = False


@st.composite
def _signals(draw, kind: Kind) -> list[Sig]:
    types = kind.types
    if kind.single_type:
        types = (draw(st.sampled_from(types)),)
    out: dict[tuple, Sig] = {}
    for i in range(draw(st.integers(1, 6))):
        stype = draw(st.sampled_from(types))
        sig = Sig(stype)
        if "labels" in kind.carries:
            sig.labels = tuple(sorted(set(draw(st.lists(kind.label, max_size=3)))))
        if "external_id" in kind.carries:
            sig.external_id = draw(st.one_of(st.none(), kind.external_id))
        if "quality" in kind.carries and stype != "md5" and stype != "sha256":
            sig.quality = draw(st.one_of(st.none(), st.integers(0, 100)))
        if "expires_at" in kind.carries:
            sig.expires_at = draw(_EXPIRY)
        if stype == "vpdq":
            k = draw(st.integers(1, 3))
            sig.frames = np.frombuffer(draw(st.binary(min_size=32 * k, max_size=32 * k)),
                                       np.uint8).reshape(k, 32)  # fmt: skip
            sig.frame_qualities = draw(st.lists(st.integers(0, 100), min_size=k, max_size=k))
            sig.timestamps = [i * 0.5 + j / 3 for j in range(k)]
            key = (stype, sig.frames.tobytes())
        else:
            sig.hash_hex = draw(st.binary(min_size=_LENGTH[stype], max_size=_LENGTH[stype])).hex()
            key = (stype, sig.hash_hex)
        out.setdefault(key, sig)  # a list holds a hash once
    return list(out.values())


# -- writers: (file name, header lines, one chunk of text per signal, ingest options) --


@dataclass
class Written:
    name: str
    header: list[str]
    chunks: list[str]  # one per record, each ending in the newline
    options: list[str] = field(default_factory=list)
    line_based: bool = False  # a `# note` may follow a hash on its line
    separator: str = ","


def _csv_text(rows: list[list], sep: str = ",", nl: str = "\n") -> list[str]:
    out = []
    for row in rows:
        buf = io.StringIO()
        csv.writer(buf, delimiter=sep, lineterminator=nl).writerow(row)
        out.append(buf.getvalue())
    return out


def _exported(fmt: str):
    def write(root: Path, engine: Engine, sigs: list[Sig], nl: str, draw) -> Written:
        name = f"src{next(_counter)}"
        for s in sigs:  # one at a time: the export's id order is then sigs' order (one
            engine.ingest([s.record()], list_name=name)  # call may number types apart)
        out = root / f"{name}.export"
        code, _, err = _cli(root, "lists", "export", name, "--format", fmt, "--out", str(out))
        assert code == 0, err
        lines = [line + nl for line in out.read_text(encoding="utf-8").split("\n")[:-1]]
        header = lines[:1] if fmt == "csv" else []
        suffix = {"jsonl": ".jsonl", "csv": ".csv", "hex": ".txt"}[fmt]
        return Written(f"{name}{suffix}", header, lines[len(header) :], line_based=fmt == "hex")

    return write


_PYTX = {"md5": "video_md5", "sha256": "video_sha256"}


def _pytx_csv(root, engine, sigs, nl, draw) -> Written:
    """`threatexchange dataset -P --csv`: signal_type,signal_str,collab,category,tags, CRLF."""
    rows = [[_PYTX.get(s.signal_type, s.signal_type), s.value(), "c", "", " ".join(s.labels)]
            for s in sigs]  # fmt: skip
    header = ["signal_type", "signal_str", "collab", "category", "tags"]
    return Written("dataset.csv", _csv_text([header], nl="\r\n"), _csv_text(rows, nl="\r\n"))


def _signal_csv(root, engine, sigs, nl, draw) -> Written:
    """A signal_type CSV split by commas, tabs or semicolons, columns in any order."""
    sep = draw(st.sampled_from([",", "\t", ";"]))
    joiner = draw(st.sampled_from([";", ",", "|", " "]))
    columns = draw(st.permutations(["signal_type", "signal_value", "labels", "external_id",
                                    "quality", "expires_at"]))  # fmt: skip
    cells = {
        "signal_type": lambda s: draw(st.sampled_from([s.signal_type, s.signal_type.upper()])),
        "signal_value": Sig.value,
        "labels": lambda s: joiner.join(s.labels),
        "external_id": lambda s: s.external_id or "",
        "quality": lambda s: "" if s.quality is None else str(s.quality),
        "expires_at": lambda s: "" if s.expires_at is None else repr(s.expires_at),
    }
    rows = [[cells[c](s) for c in columns] for s in sigs]
    name = draw(st.sampled_from(["list.csv", "list.txt", "list"]))
    return Written(name, _csv_text([list(columns)], sep, nl), _csv_text(rows, sep, nl),
                   line_based=False, separator=sep)  # fmt: skip


def _wide_csv(root, engine, sigs, nl, draw) -> Written:
    """A column per hash type (NCMEC/StopNCII style): a row per signal here."""
    sep = draw(st.sampled_from([",", "\t", ";"]))
    columns = draw(st.permutations(["id", "MD5", "SHA256", "PDQ", "labels", "expires_at",
                                    "quality"]))  # fmt: skip
    rows = []
    for s in sigs:
        cell = {
            "id": s.external_id or "",
            "labels": " ".join(s.labels),
            "quality": "" if s.quality is None else str(s.quality),
            "expires_at": "" if s.expires_at is None else repr(s.expires_at),
            s.signal_type.upper(): s.hash_hex,
        }
        rows.append([cell.get(c, "") for c in columns])
    name = "hashes.txt" if sep != "," else "hashes.csv"
    return Written(name, _csv_text([list(columns)], sep, nl), _csv_text(rows, sep, nl),
                   line_based=False, separator=sep)  # fmt: skip


_NAMES = {"pdq": ["pdq", "PDQ", "HASH_PDQ"], "md5": ["md5", "video_md5", "HASH_MD5"],
          "sha256": ["sha256", "video_sha256", "HASH_SHA256"], "vpdq": ["vpdq"]}  # fmt: skip


def _typed_lines(root, engine, sigs, nl, draw) -> Written:
    """`TYPE HASH` / `TYPE:HASH` lines, other tools' type names."""
    chunks = []
    for s in sigs:
        name = draw(st.sampled_from(_NAMES[s.signal_type]))
        sep = " " if s.frames is not None else draw(st.sampled_from([" ", ":", "\t", "  "]))
        chunks.append(f"{name}{sep}{s.value()}{nl}")
    return Written(draw(st.sampled_from(["signals.txt", "signals"])), [], chunks, line_based=True)


def _bare_hex(root, engine, sigs, nl, draw) -> Written:
    case = draw(st.sampled_from([str.lower, str.upper]))
    chunks = [case(s.hash_hex) + nl for s in sigs]
    return Written("hashes.txt", [], chunks, ["--type", sigs[0].signal_type], line_based=True)


def _hma_jsonl(root, engine, sigs, nl, draw) -> Written:
    """HMA's `{TYPE: HASH}` mappings, an external id as itself or bank metadata."""
    chunks = []
    for s in sigs:
        obj: dict = {_PYTX.get(s.signal_type, s.signal_type): s.value()}
        if s.labels:
            obj["labels"] = list(s.labels)
        if s.external_id is not None:
            if draw(st.booleans()):
                obj["external_id"] = s.external_id
            else:
                obj["metadata"] = {"content_id": s.external_id}
        if s.expires_at is not None:
            obj["expires_at"] = s.expires_at
        chunks.append(json.dumps(obj, ensure_ascii=draw(st.booleans())) + nl)
    return Written("bank.jsonl", [], chunks)


def _te_simple(root, engine, sigs, nl, draw) -> Written:
    """ThreatExchange simple dumps: pytx's 4 columns or HMA's 5, the type in the name."""
    hma = draw(st.booleans())
    stype = sigs[0].signal_type
    rows = []
    for i, s in enumerate(sigs):
        s.external_id = s.external_id or str(i + 1)  # a dump's rows all have one
        tags = " ".join(s.labels)
        rows.append([s.hash_hex, s.external_id, "7", "2020-01-01T00:00:00+0000", tags] if hma
                    else [s.hash_hex, s.external_id, "2020-01-01T00:00:00+0000", tags])  # fmt: skip
    names = {"pdq": ["simple.HASH_PDQ.te", "pdq.csv"], "md5": ["simple.HASH_MD5.te",
             "video_md5.csv"], "sha256": ["simple.HASH_SHA256.te"]}  # fmt: skip
    return Written(draw(st.sampled_from(names[stype])), [], _csv_text(rows, nl=nl))


def _vpdq_text(root, engine, sigs, nl, draw) -> Written:
    """vpdq's `frame,quality,hex,timestamp` text: ONE video (the first signal)."""
    s = sigs[0]
    s.external_id = s.external_id or "clip"  # the file's stem
    frames = zip(s.frames, s.frame_qualities, s.timestamps, strict=True)
    chunks = [f"{i},{q},{row.tobytes().hex()},{t!r}{nl}" for i, (row, q, t) in enumerate(frames)]
    return Written(f"{s.external_id}.vpdq", [], chunks, line_based=False)


_ALL = frozenset(["labels", "external_id", "quality", "expires_at"])
_ID = st.from_regex(r"[0-9]{1,12}", fullmatch=True)
KINDS = {
    "export-jsonl": (_exported("jsonl"), Kind(("pdq", "md5", "sha256", "vpdq"), _ALL, _RICH)),
    "export-csv": (_exported("csv"), Kind(("pdq", "md5", "sha256", "vpdq"), _ALL)),
    "export-hex": (_exported("hex"), Kind(("pdq", "md5", "sha256", "vpdq"), frozenset())),
    "pytx-csv": (_pytx_csv, Kind(("pdq", "md5", "sha256", "vpdq"), frozenset(["labels"]))),
    "signal-csv": (_signal_csv, Kind(("pdq", "md5", "sha256", "vpdq"), _ALL,
                                     external_id=_EXT | st.sampled_from(["a\nb", "x\n"]))),
    "wide-csv": (_wide_csv, Kind(("pdq", "md5", "sha256"), _ALL)),
    "typed-lines": (_typed_lines, Kind(("pdq", "md5", "sha256", "vpdq"), frozenset())),
    "bare-hex": (_bare_hex, Kind(("pdq", "md5", "sha256"), frozenset(), single_type=True)),
    "hma-jsonl": (_hma_jsonl, Kind(("pdq", "md5", "sha256", "vpdq"),
                                   frozenset(["labels", "external_id", "expires_at"]), _RICH)),
    "te-simple": (_te_simple, Kind(("pdq", "md5", "sha256"), frozenset(["labels", "external_id"]),
                                   external_id=_ID, single_type=True)),
    "vpdq-text": (_vpdq_text, Kind(("vpdq",), frozenset(["external_id"]),
                                   external_id=st.from_regex(r"[a-z0-9]{1,8}", fullmatch=True))),
}  # fmt: skip


# -- dressing: BOM, CRLF, comments, blank lines, notes, gzip ---------------------------

_COMMENT = st.sampled_from([
    "# exported from Partner X on 2026-12-01",
    "# exported from X, on 2026-12-01, 3 lists",
    '# "quoted", with commas; and semicolons\tand tabs',
    "#signal_type,signal_value",
    "# ünïcode, 中文",
    "#",
])  # fmt: skip


@dataclass
class Dressed:
    path: Path
    lines: list[int]  # the file line each chunk starts on


@st.composite
def _dressing(draw, written: Written) -> dict:
    return {
        "bom": draw(st.booleans()),
        "comments": draw(st.lists(_COMMENT, max_size=3)),
        "blank_first": draw(st.integers(0, 2)),
        "blank_between": draw(
            st.lists(st.integers(0, 2), min_size=len(written.chunks), max_size=len(written.chunks))
        ),
        "notes": draw(
            st.lists(st.booleans(), min_size=len(written.chunks), max_size=len(written.chunks))
        )
        if written.line_based
        else [False] * len(written.chunks),
        "gzip": draw(st.booleans()),
    }


def _dress(written: Written, dressing: dict, nl: str, where: Path) -> Dressed:
    text = "\ufeff" if dressing["bom"] else ""
    text += "".join(c + nl for c in dressing["comments"]) + nl * dressing["blank_first"]
    text += "".join(written.header)
    lines = []
    for chunk, blanks, note in zip(written.chunks, dressing["blank_between"], dressing["notes"],
                                   strict=True):  # fmt: skip
        text += nl * blanks
        lines.append(text.count("\n") + 1)
        if note:
            chunk = chunk.rstrip("\r\n") + "  # from partner A, batch 3" + nl
        text += chunk
    path = where / written.name
    if dressing["gzip"]:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(text.encode("utf-8"), mtime=0))
    else:
        path.write_bytes(text.encode("utf-8"))
    return Dressed(path, lines)


def _expected(sigs: list[Sig], kind_name: str, engine: Engine, carries: frozenset[str]):
    """What the list should hold: the signals as a store holds them."""
    tag = f"expect{next(_counter)}"
    engine.ingest([s.record() for s in sigs], list_name=tag)
    return _state(engine, tag, carries)


_EXAMPLES = settings(
    max_examples=int(os.environ.get("HASHMATCH_FORMAT_EXAMPLES", 60)),
    deadline=None,
    suppress_health_check=list(HealthCheck),
)


@st.composite
def _case(draw):
    kind_name = draw(st.sampled_from(sorted(KINDS)))
    kind = KINDS[kind_name][1]
    sigs = draw(_signals(kind))
    nl = draw(st.sampled_from(["\n", "\r\n"]))
    return kind_name, sigs, nl


@_EXAMPLES
@given(case=_case(), data=st.data())
def test_every_format_dressed_as_partners_send_it_reads_back_the_same_signals(home, case, data):
    root, engine = home
    kind_name, sigs, nl = case
    write, kind = KINDS[kind_name]
    n = next(_counter)
    where = root / f"case{n}"
    where.mkdir()
    written = write(root, engine, sigs, nl, data.draw)
    dressed = _dress(written, data.draw(_dressing(written)), nl, where)
    target = f"dst{n}"
    code, out, err = _cli(root, "ingest", str(dressed.path), "--list", target, *written.options)
    assert code == 0, (out, err, dressed.path.read_bytes()[:600])
    added = 1 if kind_name == "vpdq-text" else len(sigs)
    assert f"added {added}, updated 0, unchanged 0, rejected 0" in out, (out, err)
    expected = _expected(sigs[:added], kind_name, engine, kind.carries)
    assert _state(engine, target, kind.carries) == expected


# -- malformed lines: named by file and line, the rest stored; --strict stores nothing --


def _corrupt(chunk: str, sig: Sig, how: str, sep: str) -> tuple[str, str] | None:
    """(the chunk with one fault, a pattern its rejection reason must match), or None
    when this fault does not apply to this chunk."""
    if sig.frames is not None:
        return None
    found = re.search(re.escape(sig.hash_hex), chunk, re.IGNORECASE)
    if found is None:
        return None
    hex_ = found.group(0)
    bits = len(sig.hash_hex) * 4
    name = sig.signal_type
    if how == "truncated":
        return (
            chunk.replace(hex_, hex_[:-1]),
            rf"{name} hash must be {len(hex_)} hex characters, got {len(hex_) - 1}",
        )
    if how == "wrong-length":
        other = "ab" * (16 if bits == 256 else 32)
        return (
            chunk.replace(hex_, other),
            rf"{name} hash must be {len(hex_)} hex characters, got {len(other)}",
        )
    if how == "not-hex":
        return chunk.replace(hex_, "zz" + hex_[2:]), rf"{name} hash|not hex|hex"
    if how == "unknown-type":
        typed = re.match(r"([A-Za-z_0-9]+)([ :\t,]+)", chunk)
        if typed is None or not chunk.startswith(typed.group(1)) or hex_ not in chunk:
            return None
        return "tmk" + chunk[len(typed.group(1)) :], r"unknown signal type 'tmk'"
    if how == "stray-column":
        body = chunk.rstrip("\r\n")
        return chunk.replace(body, body + sep + "stray"), r"columns, the header names \d+"
    raise AssertionError(how)


_FAULTS = {
    "truncated": ("export-jsonl", "export-csv", "export-hex", "pytx-csv", "signal-csv",
                  "wide-csv", "typed-lines", "bare-hex", "hma-jsonl", "te-simple"),
    "wrong-length": ("export-jsonl", "export-csv", "export-hex", "pytx-csv", "signal-csv",
                     "wide-csv", "typed-lines", "bare-hex", "hma-jsonl", "te-simple"),
    "not-hex": ("export-csv", "signal-csv", "typed-lines", "bare-hex"),
    "unknown-type": ("export-hex", "typed-lines", "pytx-csv"),
    "stray-column": ("export-csv", "pytx-csv", "signal-csv"),
}  # fmt: skip


@st.composite
def _bad_case(draw):
    how = draw(st.sampled_from(sorted(_FAULTS)))
    kind_name = draw(st.sampled_from(_FAULTS[how]))
    kind = KINDS[kind_name][1]
    sigs = draw(_signals(kind))
    nl = draw(st.sampled_from(["\n", "\r\n"]))
    return how, kind_name, sigs, nl


@_EXAMPLES
@given(case=_bad_case(), data=st.data())
def test_a_malformed_line_is_named_by_file_and_line_and_strict_stores_nothing(home, case, data):
    root, engine = home
    how, kind_name, sigs, nl = case
    write = KINDS[kind_name][0]
    n = next(_counter)
    where = root / f"bad{n}"
    where.mkdir()
    written = write(root, engine, sigs, nl, data.draw)
    candidates = []
    for i, (chunk, sig) in enumerate(zip(written.chunks, sigs, strict=True)):
        fault = _corrupt(chunk, sig, how, written.separator)
        if fault is not None:
            candidates.append((i, fault))
    if not candidates:
        return
    i, (chunk, pattern) = data.draw(st.sampled_from(candidates))
    written.chunks[i] = chunk
    dressed = _dress(written, data.draw(_dressing(written)), nl, where)
    line = dressed.lines[i]

    code, out, err = _cli(root, "ingest", str(dressed.path), "--list", f"strict{n}", "--strict",
                          *written.options)  # fmt: skip
    assert code == 1 and "REFUSED (strict)" in out, (out, err)
    assert not engine.store.lists(names=[f"strict{n}"]), "--strict stored a line"
    named = re.search(rf"  {re.escape(str(dressed.path))}: line {line}: (.*)", err)
    assert named, (line, err, dressed.path.read_bytes()[:800])
    assert re.search(pattern, named.group(1)), named.group(1)

    code, out, err = _cli(root, "ingest", str(dressed.path), "--list", f"lax{n}",
                          *written.options)  # fmt: skip
    others = len(sigs) - 1
    assert code == (0 if others else 1), (out, err)
    assert f"added {others}, updated 0, unchanged 0, rejected 1" in out, (out, err)
    assert re.search(rf"  {re.escape(str(dressed.path))}: line {line}: ", err), err


# -- retract --file: the same dressing; one bad line and nothing is retracted ----------


@_EXAMPLES
@given(
    sigs=_signals(Kind(("pdq", "md5", "sha256", "vpdq"), frozenset())),
    nl=st.sampled_from(["\n", "\r\n"]),
    bad=st.sampled_from([None, "truncated", "unknown-type"]),
    data=st.data(),
)
def test_retract_file_dressed_as_partners_send_it(home, sigs, nl, bad, data):
    """`lists export --retracted` (`type:hex`, a video by its fingerprint) and
    `--format hex` (`TYPE HASH`, a video as its frames) files, dressed: every target
    retracted; with one bad line, that line named and nothing retracted."""
    root, engine = home
    n = next(_counter)
    name = f"ret{n}"
    engine.ingest([s.record() for s in sigs], list_name=name)
    stored = {(i.signal_type, i.hash_hex): i for i in engine.store.iter_signals(name)}
    if data.draw(st.booleans()):
        for info in stored.values():
            engine.store.retract(list_name=name, hashes=[(info.signal_type, info.hash_hex)])
        out = root / f"{name}.retracted"
        code, _, err = _cli(root, "lists", "export", name, "--retracted", "--out", str(out))
        for info in stored.values():
            engine.store.restore(list_name=name, hashes=[(info.signal_type, info.hash_hex)])
    else:
        out = root / f"{name}.hex"
        code, _, err = _cli(root, "lists", "export", name, "--format", "hex", "--out", str(out))
    assert code == 0, err
    chunks = [line + nl for line in out.read_text().split("\n")[:-1]]
    written = Written(f"{name}.txt", [], chunks, line_based=True)
    where = root / f"retract{n}"
    where.mkdir()
    broken = None
    if bad is not None:
        broken = data.draw(st.integers(0, len(chunks) - 1))
        chunk = chunks[broken].rstrip("\r\n")
        kind, _, value = chunk.partition(":" if ":" in chunk.split(" ")[0] else " ")
        chunks[broken] = (f"{kind} {value[:-2]}" if bad == "truncated" else f"tmk {value}") + nl
    dressed = _dress(written, data.draw(_dressing(written)), nl, where)
    code, out_text, err = _cli(root, "retract", "--list", name, "--file", str(dressed.path))
    live = [i for i in engine.store.iter_signals(name) if i.retracted_at is None]
    if broken is None:
        assert code == 0, err
        assert f"retracted {len(stored)} signal(s)" in out_text, (out_text, err)
        assert live == []
        return
    assert code == 1
    assert f"{dressed.path} line {dressed.lines[broken]}: " in err, (err, dressed.lines)
    assert len(live) == len(stored), "a file with a bad line retracted something"
