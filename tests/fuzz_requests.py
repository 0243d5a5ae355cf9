"""Hypothesis strategies for the service fuzzer: every hashmatch.v1 request message,
structurally valid protobuf but semantically anything.

Why their own module: tests/test_service_fuzz.py states the properties; what a hostile
or careless client can put in each field is listed here once. Values lean to the edges
(extreme integers, NaN and infinities, empty, huge, NUL, bidi and other unicode text,
hex of the wrong length or alphabet, raw bytes of every length, duplicated items,
benign media cut or bit-flipped) and keep some well-formed ones, so that requests
reach past the first check into the engine.
"""

from __future__ import annotations

from fuzz_media import broken_media
from hypothesis import strategies as st

from hashmatch.engine import signal_types
from hashmatch.v1 import admin_pb2, common_pb2, matcher_pb2, signals_pb2

# The list the fuzzer's known signal lives in: write RPCs never name it (see list_names),
# so a Match of KNOWN_HEX must always find it unchanged.
KNOWN_LIST = "seen"
KNOWN_HEX = "f0" * 16 + "0f" * 16
OVERSIZE = 300_000  # characters: over the fuzz server's max_message_bytes (256 KiB)

INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)
UINT32 = (0, 2**32 - 1)
UINT64 = (0, 2**64 - 1)


def mostly(good: st.SearchStrategy, bad: st.SearchStrategy) -> st.SearchStrategy:
    """``good`` three times in four, else ``bad``: enough well-formed values that a
    request often passes its first check and reaches the engine."""
    return st.sampled_from([True, True, True, False]).flatmap(lambda ok: good if ok else bad)


def rarely(n: int = 10) -> st.SearchStrategy[bool]:
    """True about once in ``n`` draws (``st.integers`` would lean to its low end)."""
    return st.sampled_from([False] * (n - 1) + [True])  # (it leans to its first item)


def _int(bounds: tuple[int, int], usual: tuple[int, int]) -> st.SearchStrategy[int]:
    """Integers within the field's wire type, mostly ``usual``, often at the edges."""
    lo, hi = bounds
    edges = sorted(e for e in {lo, lo + 1, -1, 0, 1, hi - 1, hi, 2**31 - 1, 2**32} if lo <= e <= hi)
    return st.one_of(st.integers(*usual), st.sampled_from(edges), st.integers(lo, hi))


int32 = _int(INT32, (-5, 120))
int64 = _int(INT64, (-5, 50))
uint32 = _int(UINT32, (0, 50))
uint64 = _int(UINT64, (0, 50))
doubles = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -1.0, 1e12, 1e18, 4102444800.0, 1.7e308]),
)
floats32 = st.floats(width=32, allow_nan=True, allow_infinity=True)

# Text a proto3 string can carry (any UTF-8: no lone surrogates), NUL and control
# characters included; and a few hostile constants.
any_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=40)
hostile_text = st.sampled_from(
    ["", " ", "\0", "a\0b", "\u202eevil", "\u001f", "é" * 50, "🙂" * 30, "x" * 5000, "\n\t"]
)
text = st.one_of(any_text, hostile_text)

TYPE_NAMES = [*signal_types.names(), *signal_types.ALIASES, "PDQ", " pdq ", "pdq\0", "nope"]
type_names = mostly(
    st.sampled_from(signal_types.names()), st.one_of(st.sampled_from(TYPE_NAMES), text)
)
quality = mostly(st.integers(0, 100), int32)


def _hex_of(nbytes: int) -> st.SearchStrategy[str]:
    return st.binary(min_size=nbytes, max_size=nbytes).map(bytes.hex)


def hex_values() -> st.SearchStrategy[str]:
    """Hex strings right for some type, or wrong: length, alphabet, case, whitespace."""
    right = st.sampled_from(sorted({t.nbytes for t in signal_types.all_types()})).flatmap(_hex_of)
    return st.one_of(
        right,
        right.map(str.upper),
        right.map(lambda h: f"  {h}\n"),
        right.map(lambda h: h[:-1]),
        right.map(lambda h: h + "0"),
        right.map(lambda h: "g" + h[1:]),
        right.map(lambda h: h[:10] + "\0" + h[11:]),
        st.just(KNOWN_HEX),
        st.text(st.sampled_from("0123456789abcdefABCDEFxz \0é"), max_size=140),
        text,
    )


def _right_hex(name: str) -> st.SearchStrategy[str]:
    """Hex the size of ``name``'s codes (any size when it names no type)."""
    try:
        return _hex_of(signal_types.get(name).nbytes)
    except ValueError:
        return hex_values()


@st.composite
def hash_values(draw: st.DrawFn) -> common_pb2.HashValue:
    name = draw(type_names)
    value = common_pb2.HashValue(signal_type=name)
    which = draw(st.sampled_from(["hex", "hex", "raw", "none"]))
    if which == "hex":
        value.hex = draw(mostly(_right_hex(name), hex_values()))
    elif which == "raw":
        value.raw = draw(mostly(_right_hex(name), hex_values()).map(_unhex))
    if draw(st.booleans()):
        value.quality = draw(quality)
    return value


def _unhex(text: str) -> bytes:
    try:
        return bytes.fromhex(text)
    except ValueError:
        return text.encode()[:40]


def _dupes(items: st.SearchStrategy, max_size: int) -> st.SearchStrategy[list]:
    """Lists of ``items``, sometimes with an item repeated."""
    repeated = st.lists(items, min_size=1, max_size=max_size).map(lambda xs: xs + xs[:1] * 3)
    return st.one_of(st.lists(items, max_size=max_size), repeated)


def list_names(include_known: bool) -> st.SearchStrategy[str]:
    """List names for a request; writes never touch ``KNOWN_LIST``."""
    names = ["fuzz-a", "fuzz-b", " fuzz-a ", "missing-list", "", "  "]
    base = mostly(st.sampled_from(["fuzz-a", "fuzz-b"]), st.one_of(st.sampled_from(names), text))
    if include_known:
        return st.one_of(base, st.just(KNOWN_LIST))
    return base.filter(lambda name: name.strip() != KNOWN_LIST)


media_items = mostly(broken_media(), st.just(b""))


@st.composite
def match_options(draw: st.DrawFn) -> matcher_pb2.MatchOptions:
    options = matcher_pb2.MatchOptions(
        lists=draw(_dupes(list_names(include_known=True), 3)),
        max_results=draw(uint32),
        low_quality_queries=draw(mostly(st.sampled_from([0, 1, 2]), int32)),
    )
    for flag in (
        "dihedral",
        "trim_borders",
        "all_frames",
        "uncrop",
        "derotate",
        "upscale_small",
        "upscale_small_replicate",
        "upscale_small_phases",
    ):
        setattr(options, flag, draw(st.booleans()))
    if draw(st.booleans()):
        options.threshold = draw(mostly(st.integers(0, 64), int32))
    if draw(st.booleans()):
        options.min_quality = draw(quality)
    return options


@st.composite
def video_queries(draw: st.DrawFn) -> matcher_pb2.VideoQuery:
    return matcher_pb2.VideoQuery(
        signal_type=draw(st.one_of(st.just("vpdq"), st.just(""), type_names)),
        frames=draw(_dupes(mostly(_hex_of(32), hex_values()), 4)),
        qualities=draw(st.lists(quality, max_size=5)),
    )


@st.composite
def match_requests(draw: st.DrawFn) -> matcher_pb2.MatchRequest:
    request = matcher_pb2.MatchRequest(
        hashes=draw(_dupes(hash_values(), 4)),
        media=draw(st.lists(media_items, max_size=2)),
        media_types=draw(_dupes(st.one_of(st.sampled_from(["pdq", "md5", "vpdq"]), type_names), 2)),
        request_id=draw(text),
        videos=draw(st.lists(video_queries(), max_size=2)),
    )
    if draw(st.booleans()):
        request.options.CopyFrom(draw(match_options()))
    size = draw(st.sampled_from([""] * 12 + ["batch", "media", "bytes", "message"]))
    if size == "batch":  # over the fuzz server's max_batch (50)
        request.hashes.extend([common_pb2.HashValue(signal_type="pdq", hex=KNOWN_HEX)] * 51)
    elif size == "media":  # over max_media_items (4)
        request.media.extend([b"\0"] * 5)
    elif size == "bytes":  # one item over max_media_bytes (32 KiB)
        request.media.append(b"\xff\xd8\xff" + b"\0" * 40_000)
    elif size == "message":
        request.request_id = "r" * OVERSIZE
    return request


@st.composite
def hash_requests(draw: st.DrawFn) -> matcher_pb2.HashRequest:
    request = matcher_pb2.HashRequest(
        media=draw(st.lists(media_items, min_size=draw(st.sampled_from([1, 1, 1, 0])), max_size=3)),
        signal_types=draw(
            _dupes(st.one_of(st.sampled_from(["pdq", "md5", "vpdq", "phash"]), type_names), 2)
        ),
        dihedral=draw(st.booleans()),
        trim_borders=draw(st.booleans()),
    )
    if draw(rarely()):
        request.media.extend([b"\x89PNG"] * 5)  # over max_media_items
    return request


# Mostly none or a new one (a repeat with other content is refused, as documented), at
# times one that earlier examples used: a replay, or a conflict.
request_ids = mostly(
    st.one_of(st.just(""), st.uuids().map(str)),
    st.one_of(st.sampled_from(["again", "x" * 129]), text),
)


@st.composite
def fuzz_signals(draw: st.DrawFn) -> signals_pb2.Signal:
    signal = signals_pb2.Signal(
        hash=draw(hash_values()),
        labels=draw(_dupes(mostly(st.sampled_from(["a", "b c", "é"]), text), 3)),
        external_id=draw(mostly(st.sampled_from(["", "e1", "e2"]), text)),
    )
    if draw(rarely(4)):  # a video
        signal.hash.signal_type = draw(st.one_of(st.just("vpdq"), st.just(""), type_names))
        signal.ClearField("hash") if draw(rarely(3)) else None
        frames = draw(_dupes(mostly(_hex_of(32), hex_values()), 3))
        signal.frames.extend(frames)
        if draw(st.booleans()):
            signal.frame_qualities.extend(
                draw(st.lists(quality, min_size=len(frames), max_size=len(frames) + 1))
            )
        if draw(st.booleans()):
            signal.timestamps.extend(
                draw(
                    st.lists(
                        mostly(st.floats(0, 1e6), floats32),
                        min_size=len(frames),
                        max_size=len(frames) + 1,
                    )
                )
            )
    if draw(rarely(3)):
        signal.expires_at = draw(mostly(st.floats(2e9, 4e9), doubles))
    return signal


@st.composite
def ingest_streams(draw: st.DrawFn) -> list[signals_pb2.IngestRequest]:
    """One to three messages; a later one may leave list_name empty (keeps the last)."""
    messages = []
    for n in range(draw(st.integers(1, 3))):
        message = signals_pb2.IngestRequest(
            list_name=draw(list_names(include_known=False)),
            signals=draw(_dupes(fuzz_signals(), 4)),
            source=draw(mostly(st.just(""), text)),
            strict=draw(st.booleans()),
            request_id=draw(request_ids) if n == 0 else draw(mostly(st.just(""), request_ids)),
        )
        size = draw(st.sampled_from([""] * 12 + ["batch", "message"]))
        if size == "batch":  # over max_batch (50)
            message.signals.extend(
                [signals_pb2.Signal(hash=common_pb2.HashValue(signal_type="md5", hex="ab" * 16))]
                * 51
            )
        elif size == "message":
            message.source = "s" * OVERSIZE
        messages.append(message)
    return messages


@st.composite
def retract_requests(draw: st.DrawFn) -> signals_pb2.RetractRequest:
    request = signals_pb2.RetractRequest(
        list_name=draw(list_names(include_known=False)),
        hashes=draw(_dupes(hash_values(), 4)),
        signal_ids=draw(_dupes(mostly(st.integers(1, 60), int64), 4)),
        reason=draw(text),
        request_id=draw(request_ids),
    )
    if draw(rarely()):
        request.signal_ids.extend(range(1, 52))  # over max_batch
    return request


@st.composite
def changes_requests(draw: st.DrawFn) -> signals_pb2.ChangesRequest:
    return signals_pb2.ChangesRequest(
        since=draw(mostly(st.integers(0, 60), int64)),
        signal_types=draw(_dupes(type_names, 3)),
        max_changes=draw(uint64),
        split_entries=draw(st.booleans()),
        since_signal_id=draw(mostly(st.integers(0, 60), int64)),
    )


@st.composite
def signal_states_requests(draw: st.DrawFn) -> signals_pb2.SignalStatesRequest:
    ids = draw(_dupes(mostly(st.integers(0, 60), int64), 6))
    if draw(rarely()):
        ids += list(range(51))  # over max_batch
    return signals_pb2.SignalStatesRequest(signal_ids=ids)


EMPTY = {
    "ListHashLists": signals_pb2.ListHashListsRequest,
    "Stats": admin_pb2.StatsRequest,
    "RebuildIndex": admin_pb2.RebuildIndexRequest,
    "Snapshot": admin_pb2.SnapshotRequest,
}


@st.composite
def wire_fields(draw: st.DrawFn) -> bytes:
    """Protobuf wire-format fields of random number and type: unknown fields to a
    parser, or known ones of the wrong wire type or with a length past the end."""
    out = bytearray()
    for _ in range(draw(st.integers(1, 4))):
        number = draw(st.one_of(st.integers(1, 20), st.integers(1, 2**29 - 1)))
        wire = draw(st.sampled_from([0, 1, 2, 5, 3, 4, 6, 7]))
        out += _varint(number << 3 | wire)
        if wire == 0:
            out += _varint(draw(st.integers(0, 2**64 - 1)))
        elif wire == 1:
            out += draw(st.binary(min_size=8, max_size=8))
        elif wire == 5:
            out += draw(st.binary(min_size=4, max_size=4))
        elif wire == 2:
            body = draw(st.binary(max_size=40))
            length = draw(st.sampled_from([len(body), len(body), len(body) + 5, 2**31]))
            out += _varint(length) + body
    return bytes(out)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


@st.composite
def raw_bodies(draw: st.DrawFn, valid: st.SearchStrategy) -> bytes:
    """Bytes for a request: random, wire fields, or a valid request cut, flipped, or
    merged with another (protobuf merges concatenated messages: the second's oneof
    member replaces the first's, repeated fields add up)."""
    how = draw(st.sampled_from(["random", "wire", "cut", "flip", "merge", "tail"]))
    if how == "random":
        return draw(st.binary(max_size=200))
    if how == "wire":
        return draw(wire_fields())
    body = draw(valid).SerializeToString()
    if how == "cut":
        return body[: draw(st.integers(0, max(0, len(body) - 1)))]
    if how == "flip" and body:
        i = draw(st.integers(0, len(body) - 1))
        return body[:i] + bytes([body[i] ^ (1 << draw(st.integers(0, 7)))]) + body[i + 1 :]
    if how == "merge":
        return body + draw(valid).SerializeToString()
    return body + draw(wire_fields())
