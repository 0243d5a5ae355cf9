"""Adversarial property test of every RPC over a real socket: semantically random requests.

The contract (README, "Errors and limits"): a client's mistake is INVALID_ARGUMENT with a
``google.rpc.BadRequest`` naming the field (and item index), never INTERNAL or UNKNOWN;
the server stays up and keeps answering; a refused write leaves the store as it was;
deadlines are honoured. Hypothesis draws requests for every method of Matcher, Signals
and Admin from tests/fuzz_requests.py (random field combinations, extreme integers,
NaN, NUL and unicode text, wrong hex, duplicates, broken media), plus bytes that are not
a request at all, sent through a generic ``unary_unary``/``stream_stream`` with
identity serializers.

After every example: a Match of the known signal still finds exactly it; a refused
write (or an Ingest whose error does not say it stored earlier messages) left
ListHashLists, Stats and the change log unchanged; no call is left running.

Runtime: a few examples per RPC by default (the whole file well under 30 s); set
``HASHMATCH_FUZZ_EXAMPLES`` for more, e.g. ``HASHMATCH_FUZZ_EXAMPLES=400``.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import grpc
import pytest
from fuzz_media import PIXEL_LIMIT, corpus
from fuzz_requests import (
    EMPTY,
    KNOWN_HEX,
    KNOWN_LIST,
    changes_requests,
    hash_requests,
    ingest_streams,
    match_requests,
    raw_bodies,
    retract_requests,
    signal_states_requests,
    wire_fields,
)
from google.protobuf.message import Message
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from hashmatch.server.client import signal as make_signal
from hashmatch.server.errors import bad_request_fields
from hashmatch.server.testing import TestServer as Served
from hashmatch.server.testing import running_server
from hashmatch.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    common_pb2,
    matcher_pb2,
    matcher_pb2_grpc,
    signals_pb2,
    signals_pb2_grpc,
)

EXAMPLES = int(os.environ.get("HASHMATCH_FUZZ_EXAMPLES", "40"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
TENANTS = {"ops": (["match", "write", "export", "admin"], True)}
LIMITS = {
    "max_batch": 50,
    "max_media_items": 4,
    "max_media_bytes": 32 * 1024,
    "max_media_pixels": PIXEL_LIMIT,
    "max_message_bytes": 256 * 1024,
}
# What a client's mistake may be answered with; never INTERNAL nor UNKNOWN. NOT_FOUND:
# a list that does not exist; RESOURCE_EXHAUSTED: a reply over the message limit (all
# frames of an animation); FAILED_PRECONDITION: a rebuild still running (one cut off by
# an earlier example's deadline goes on).
ALLOWED = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.FAILED_PRECONDITION,
}
deadlines = st.one_of(st.just(30.0), st.just(30.0), st.just(30.0), st.floats(0.001, 0.3))


@dataclass
class Fuzzed:
    """The served fuzz target: its stubs, the caller's metadata and the known match."""

    served: Served
    channel: grpc.Channel
    metadata: list[tuple[str, str]]
    known: common_pb2.Match

    @property
    def matcher(self) -> matcher_pb2_grpc.MatcherStub:
        return matcher_pb2_grpc.MatcherStub(self.channel)

    @property
    def signals(self) -> signals_pb2_grpc.SignalsStub:
        return signals_pb2_grpc.SignalsStub(self.channel)

    @property
    def admin(self) -> admin_pb2_grpc.AdminStub:
        return admin_pb2_grpc.AdminStub(self.channel)


@pytest.fixture(scope="session")
def fuzzed(tmp_path_factory) -> Fuzzed:
    corpus()  # build the media once, before any example's clock starts
    with running_server(tmp_path_factory.mktemp("fuzz"), tenants=TENANTS, **LIMITS) as served:
        served.client("ops").ingest(KNOWN_LIST, [make_signal("pdq", KNOWN_HEX, labels=["k"])])
        with grpc.insecure_channel(served.target) as channel:
            metadata = [("authorization", f"Bearer {served.tokens['ops']}")]
            fuzz = Fuzzed(served, channel, metadata, common_pb2.Match())
            (fuzz.known,) = _known_matches(fuzz)
            assert fuzz.known.distance == 0
            yield fuzz


def _known_matches(fuzz: Fuzzed) -> list[common_pb2.Match]:
    request = matcher_pb2.MatchRequest(
        hashes=[common_pb2.HashValue(signal_type="pdq", hex=KNOWN_HEX)],
        options=matcher_pb2.MatchOptions(lists=[KNOWN_LIST]),
    )
    reply = fuzz.matcher.Match(request, metadata=fuzz.metadata, timeout=30)
    return list(reply.results[0].matches)


def _state(fuzz: Fuzzed) -> tuple:
    """What a refused write must leave as it was: the lists, the totals, the change log."""
    lists = fuzz.signals.ListHashLists(
        signals_pb2.ListHashListsRequest(), metadata=fuzz.metadata, timeout=30
    )
    stats = fuzz.admin.Stats(admin_pb2.StatsRequest(), metadata=fuzz.metadata, timeout=30)
    return (
        sorted((h.name, h.signal_count, h.expired_count, h.enabled) for h in lists.lists),
        stats.total_signals,
        sorted((s.name, s.count) for s in stats.lists),
        fuzz.served.engine.store.change_counter(),
    )


def _call(send: Callable[[], object]) -> tuple[object, grpc.RpcError | None]:
    try:
        return send(), None
    except grpc.RpcError as exc:
        return None, exc


# -- what every answer must be ---------------------------------------------------------

_SEGMENT = re.compile(r"([A-Za-z_]+)(?:\[(\d+)\])?$")


def _check_field_names_the_request(field: str, messages: Sequence[Message], streamed: bool):
    """``field`` (``hashes[3].hex``, ``stream[1].signals[60]``, ``media[0]``) names a
    field of the request, and each index is within what was sent."""
    parts = field.split(".")
    if streamed:
        head = re.fullmatch(r"stream\[(\d+)\]", parts[0])
        if head is not None:
            n = int(head.group(1))
            assert n < len(messages), f"{field}: only {len(messages)} messages were sent"
            messages, parts = [messages[n]], parts[1:]
    if not parts or parts == ["request"]:
        return
    # an Ingest item is named by its index across the whole stream
    values: list = list(messages)
    for part in parts:
        found = _SEGMENT.match(part)
        assert found, f"{field!r} is not a field path"
        name, index = found.group(1), found.group(2)
        known = {f.name for f in values[0].DESCRIPTOR.fields} if values else set()
        assert name in known, f"{field!r}: no field {name!r} in {sorted(known)}"
        items = [item for v in values for item in _as_list(getattr(v, name))]
        if index is None:
            values = [v for v in items if isinstance(v, Message)]
            continue
        assert int(index) < len(items), f"{field!r}: only {len(items)} {name} were sent"
        item = items[int(index)]
        values = [item] if isinstance(item, Message) else []


def _as_list(value: object) -> list:
    if isinstance(value, Message):
        return [value]
    if isinstance(value, str | bytes | int | float | bool):
        return [value]
    return list(value)


def _check_answer(
    error: grpc.RpcError | None,
    messages: Sequence[Message],
    *,
    streamed: bool = False,
    timeout: float = 30.0,
    raw: bool = False,
) -> None:
    if error is None:
        event("OK")
        return
    code = error.code()
    allowed = ALLOWED | ({grpc.StatusCode.DEADLINE_EXCEEDED} if timeout < 30 else set())
    assert code in allowed, f"{code.name}: {error.details()}"
    if code is not grpc.StatusCode.INVALID_ARGUMENT:
        event(code.name)
        return
    fields = bad_request_fields(error)  # every bad field of the request, the first first
    assert fields, f"no BadRequest detail: {error.details()}"
    field, description = fields[0]
    event(f"INVALID_ARGUMENT {re.sub(r'[0-9]+', 'N', field)}")
    assert error.details().startswith(field[:300]), (field, error.details())
    for field, description in fields:
        assert field and description, (field, description)
        if not raw:
            _check_field_names_the_request(field, messages, streamed)


def _after(fuzz: Fuzzed) -> None:
    """The server still answers, with the same known match; no call is left running."""
    assert _known_matches(fuzz) == [fuzz.known]
    gauge = fuzz.served.server.host.metrics.registry
    deadline = time.monotonic() + 10
    while gauge.get_sample_value("hashmatch_inflight_rpcs") > 0:
        assert time.monotonic() < deadline, "a call is still running 10 s after its answer"
        time.sleep(0.02)


# -- Matcher ---------------------------------------------------------------------------


def _check_match_reply(request: matcher_pb2.MatchRequest, reply: matcher_pb2.MatchResponse):
    """One result per query (hashes, then media, then videos), each naming its own
    position, its matches nearest first and within a threshold the request set."""
    sources = [("hashes", len(request.hashes)), ("media", len(request.media)),
               ("videos", len(request.videos))]  # fmt: skip
    expected = [(kind, i) for kind, n in sources for i in range(n)]
    got = [(_SOURCES[r.source], r.index) for r in reply.results]
    assert got == expected, (got, expected)
    threshold = request.options.threshold if request.options.HasField("threshold") else None
    for position, result in enumerate(reply.results):
        distances = [m.distance for m in result.matches]
        assert distances == sorted(distances), result
        for match in result.matches:
            assert match.query_index == position, (position, match)
            if threshold is not None and match.signal_type != "vpdq":
                assert match.distance <= threshold, (threshold, match)
        if request.options.max_results:
            assert len(result.matches) <= request.options.max_results
    assert reply.request_id == request.request_id


_SOURCES = {
    matcher_pb2.QueryResult.SOURCE_HASH: "hashes",
    matcher_pb2.QueryResult.SOURCE_MEDIA: "media",
    matcher_pb2.QueryResult.SOURCE_VIDEO: "videos",
}


@FUZZ
@given(request=match_requests(), timeout=deadlines)
def test_match_answers_every_request_with_a_clear_status(fuzzed, request, timeout):
    reply, error = _call(
        lambda: fuzzed.matcher.Match(request, metadata=fuzzed.metadata, timeout=timeout)
    )
    _check_answer(error, [request], timeout=timeout)
    if reply is not None:
        _check_match_reply(request, reply)
    _after(fuzzed)


@FUZZ
@given(requests=st.lists(match_requests(), min_size=1, max_size=3), timeout=deadlines)
def test_match_stream_answers_every_stream_with_a_clear_status(fuzzed, requests, timeout):
    replies: list = []

    def send():
        replies.extend(
            fuzzed.matcher.MatchStream(iter(requests), metadata=fuzzed.metadata, timeout=timeout)
        )

    _, error = _call(send)
    _check_answer(error, requests, streamed=True, timeout=timeout)
    if error is None:
        assert len(replies) == len(requests)
        for request, reply in zip(requests, replies, strict=True):
            _check_match_reply(request, reply)
    _after(fuzzed)


@FUZZ
@given(request=hash_requests(), timeout=deadlines)
def test_hash_answers_every_request_with_a_clear_status(fuzzed, request, timeout):
    reply, error = _call(
        lambda: fuzzed.matcher.Hash(request, metadata=fuzzed.metadata, timeout=timeout)
    )
    _check_answer(error, [request], timeout=timeout)
    if reply is not None:
        assert [item.index for item in reply.items] == list(range(len(request.media)))
        assert all(item.hashes for item in reply.items), reply
    _after(fuzzed)


# -- Signals ---------------------------------------------------------------------------


@FUZZ
@given(stream=ingest_streams(), timeout=deadlines)
def test_ingest_stores_nothing_it_refuses(fuzzed, stream, timeout):
    before = _state(fuzzed)
    reply, error = _call(
        lambda: fuzzed.signals.Ingest(iter(stream), metadata=fuzzed.metadata, timeout=timeout)
    )
    _check_answer(error, stream, streamed=True, timeout=timeout)
    sent = sum(len(m.signals) for m in stream)
    if reply is not None:
        assert reply.added + reply.updated + reply.unchanged + reply.rejected == sent, reply
        for rejection in reply.rejections:
            assert rejection.index < sent and rejection.reason, rejection
            assert rejection.field.startswith(f"signals[{rejection.index}]"), rejection
    elif "were stored" not in error.details() and error.code() is not (
        grpc.StatusCode.DEADLINE_EXCEEDED
    ):
        assert _state(fuzzed) == before, error.details()
    _after(fuzzed)


@FUZZ
@given(request=retract_requests(), timeout=deadlines)
def test_retract_changes_nothing_it_refuses(fuzzed, request, timeout):
    before = _state(fuzzed)
    reply, error = _call(
        lambda: fuzzed.signals.Retract(request, metadata=fuzzed.metadata, timeout=timeout)
    )
    _check_answer(error, [request], timeout=timeout)
    if error is not None and error.code() is not grpc.StatusCode.DEADLINE_EXCEEDED:
        assert _state(fuzzed) == before, error.details()
    if reply is not None:
        assert len(reply.not_found) <= reply.not_found_total
    _after(fuzzed)


@FUZZ
@given(request=changes_requests(), timeout=deadlines)
def test_changes_answers_every_request_with_a_clear_status(fuzzed, request, timeout):
    replies: list = []

    def send():
        replies.extend(fuzzed.signals.Changes(request, metadata=fuzzed.metadata, timeout=timeout))

    _, error = _call(send)
    _check_answer(error, [request], timeout=timeout)
    if error is None:
        assert replies and len({r.head for r in replies}) == 1
    _after(fuzzed)


@FUZZ
@given(request=signal_states_requests(), timeout=deadlines)
def test_signal_states_answers_every_request_with_a_clear_status(fuzzed, request, timeout):
    reply, error = _call(
        lambda: fuzzed.signals.SignalStates(request, metadata=fuzzed.metadata, timeout=timeout)
    )
    _check_answer(error, [request], timeout=timeout)
    if reply is not None:
        assert len(reply.states) == len(request.signal_ids)
    _after(fuzzed)


# -- every method, including the ones without fields: bytes that are not a request -----

METHODS: dict[str, tuple[str, st.SearchStrategy, bool, bool]] = {
    # name -> (path, valid requests to break, request stream, response stream)
    "Match": ("/hashmatch.v1.Matcher/Match", match_requests(), False, False),
    "MatchStream": ("/hashmatch.v1.Matcher/MatchStream", match_requests(), True, True),
    "Hash": ("/hashmatch.v1.Matcher/Hash", hash_requests(), False, False),
    "Ingest": ("/hashmatch.v1.Signals/Ingest", ingest_streams().map(lambda s: s[0]), True, False),
    "Retract": ("/hashmatch.v1.Signals/Retract", retract_requests(), False, False),
    "Changes": ("/hashmatch.v1.Signals/Changes", changes_requests(), False, True),
    "SignalStates": ("/hashmatch.v1.Signals/SignalStates", signal_states_requests(), False, False),
    **{
        name: (
            f"/hashmatch.v1.{'Signals' if name == 'ListHashLists' else 'Admin'}/{name}",
            st.builds(kind),
            False,
            name == "RebuildIndex",
        )
        for name, kind in EMPTY.items()
    },
}


def _raw_call(channel: grpc.Channel, name: str, bodies: list[bytes], metadata, timeout: float):
    path, _, request_stream, response_stream = METHODS[name]
    identity = {"request_serializer": bytes, "response_deserializer": bytes}
    if request_stream and response_stream:
        return list(
            channel.stream_stream(path, **identity)(
                iter(bodies), metadata=metadata, timeout=timeout
            )
        )
    if request_stream:
        return channel.stream_unary(path, **identity)(
            iter(bodies), metadata=metadata, timeout=timeout
        )
    if response_stream:
        return list(
            channel.unary_stream(path, **identity)(bodies[0], metadata=metadata, timeout=timeout)
        )
    return channel.unary_unary(path, **identity)(bodies[0], metadata=metadata, timeout=timeout)


@st.composite
def raw_calls(draw: st.DrawFn) -> tuple[str, list[bytes]]:
    name = draw(st.sampled_from(sorted(METHODS)))
    _, valid, request_stream, _ = METHODS[name]
    count = draw(st.integers(1, 3)) if request_stream else 1
    return name, [draw(raw_bodies(valid)) for _ in range(count)]


@FUZZ
@given(call=raw_calls())
def test_bytes_that_are_not_a_request_get_a_clear_status(fuzzed, call):
    name, bodies = call
    before = _state(fuzzed)
    _, error = _call(lambda: _raw_call(fuzzed.channel, name, bodies, fuzzed.metadata, 30.0))
    _check_answer(error, [], raw=True)
    if (
        error is not None
        and name in ("Ingest", "Retract")
        and "were stored" not in (error.details())
    ):
        assert _state(fuzzed) == before, error.details()
    _after(fuzzed)


@FUZZ
@given(name=st.sampled_from(sorted(EMPTY)), extra=wire_fields())
def test_unknown_fields_in_an_empty_request_are_ignored_or_refused(fuzzed, name, extra):
    _, error = _call(lambda: _raw_call(fuzzed.channel, name, [extra], fuzzed.metadata, 30.0))
    _check_answer(error, [], raw=True)
    if error is not None:  # a well-formed message of unknown fields is ignored
        assert error.code() in (
            grpc.StatusCode.INVALID_ARGUMENT,
            grpc.StatusCode.FAILED_PRECONDITION,
        ), error.details()
    _after(fuzzed)


# -- many at once ----------------------------------------------------------------------


def _senders(fuzz: Fuzzed, timeout: float) -> dict[str, Callable[[object], object]]:
    """method -> send one drawn request (a list of messages for request streams)."""
    md, m, s, a = fuzz.metadata, fuzz.matcher, fuzz.signals, fuzz.admin
    return {
        "Match": lambda r: m.Match(r, metadata=md, timeout=timeout),
        "MatchStream": lambda r: list(m.MatchStream(iter(r), metadata=md, timeout=timeout)),
        "Hash": lambda r: m.Hash(r, metadata=md, timeout=timeout),
        "Ingest": lambda r: s.Ingest(iter(r), metadata=md, timeout=timeout),
        "Retract": lambda r: s.Retract(r, metadata=md, timeout=timeout),
        "Changes": lambda r: list(s.Changes(r, metadata=md, timeout=timeout)),
        "SignalStates": lambda r: s.SignalStates(r, metadata=md, timeout=timeout),
        "RebuildIndex": lambda r: list(a.RebuildIndex(r, metadata=md, timeout=timeout)),
        "Snapshot": lambda r: a.Snapshot(r, metadata=md, timeout=timeout),
    }


CONCURRENT = st.one_of(
    st.tuples(st.just("Match"), match_requests()),
    st.tuples(st.just("MatchStream"), st.lists(match_requests(), min_size=1, max_size=2)),
    st.tuples(st.just("Hash"), hash_requests()),
    st.tuples(st.just("Ingest"), ingest_streams()),
    st.tuples(st.just("Retract"), retract_requests()),
    st.tuples(st.just("Changes"), changes_requests()),
    st.tuples(st.just("SignalStates"), signal_states_requests()),
    st.tuples(st.just("RebuildIndex"), st.builds(admin_pb2.RebuildIndexRequest)),
    st.tuples(st.just("Snapshot"), st.builds(admin_pb2.SnapshotRequest)),
)


@settings(FUZZ, max_examples=max(1, EXAMPLES // 8))
@given(calls=st.lists(CONCURRENT, min_size=8, max_size=8), timeout=deadlines)
def test_requests_sent_at_once_each_get_a_clear_status(fuzzed, calls, timeout):
    """Eight drawn calls at once (writes, rebuilds and snapshots among lookups): the
    same promises as one at a time, except that writes may now change the state."""
    senders = _senders(fuzzed, timeout)
    with ThreadPoolExecutor(len(calls)) as pool:
        answers = list(pool.map(lambda c: _call(lambda: senders[c[0]](c[1])), calls))
    for (name, request), (_, error) in zip(calls, answers, strict=True):
        messages = request if isinstance(request, list) else [request]
        _check_answer(error, messages, streamed=name in ("Ingest", "MatchStream"), timeout=timeout)
    _after(fuzzed)


# -- what the fuzzer found (each failed before its fix) ---------------------------------


def test_changes_from_the_last_int64_position_inside_an_entry_is_empty(fuzzed):
    """since = 2**63 - 1 with since_signal_id asked for the digest of entry since + 1,
    past SQLite's integers: OverflowError, INTERNAL."""
    request = signals_pb2.ChangesRequest(since=2**63 - 1, split_entries=True, since_signal_id=1)
    (reply,) = fuzzed.signals.Changes(request, metadata=fuzzed.metadata, timeout=30)
    assert not reply.changes and not reply.more
    assert (reply.since_digest, reply.since_entry_digest) == ("", "")
