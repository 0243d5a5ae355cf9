"""Write calls carry a request_id, so a retried Ingest or Retract reports what the first
attempt did, over a real socket against a real server: the server's replay, its refusal
of a reused id with other content, a repeat that arrives while the first still runs,
and both clients retrying a write whose reply the network lost after it was applied."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import grpc
import numpy as np
import pytest

from hashmatch.server.aio_client import AsyncHashmatchClient
from hashmatch.server.auth import TokenAuth, tenant_entry
from hashmatch.server.client import HashmatchClient, hash_value, signal
from hashmatch.server.errors import bad_request_fields
from hashmatch.server.testing import running_server
from hashmatch.v1 import signals_pb2

OPS = {"ops": (["match", "write"], True), "other": (["match", "write"], True)}


def _hexes(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [row.tobytes().hex() for row in rng.integers(0, 256, (n, 32), dtype=np.uint8)]


def _stored(client: HashmatchClient, list_name: str) -> int:
    return {x.name: x.signal_count for x in client.list_hash_lists().lists}.get(list_name, 0)


class LoseFirstReply(grpc.ServerInterceptor):
    """The first call of each named method runs on the server, then its reply is lost:
    the client gets UNAVAILABLE, as when the connection drops after the commit."""

    def __init__(self, *methods: str):
        self.pending = set(methods)
        self.lost: list[str] = []
        self._lock = threading.Lock()

    def intercept_service(self, continuation, details):
        handler = continuation(details)
        name = details.method.rsplit("/", 1)[-1]
        if handler is None or name not in self.pending:
            return handler
        kind = ("stream_" if handler.request_streaming else "unary_") + "unary"
        behavior = getattr(handler, kind)

        def lossy(request, context):
            reply = behavior(request, context)  # applied: the store has committed
            with self._lock:
                lose = name in self.pending
                self.pending.discard(name)
            if lose:
                self.lost.append(name)
                context.abort(grpc.StatusCode.UNAVAILABLE, "test: the reply was lost")
            return reply

        return handler._replace(**{kind: lossy})


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    with running_server(tmp_path_factory.mktemp("ids"), tenants=OPS) as ts:
        yield ts


def _ingest(client: HashmatchClient, messages: list[signals_pb2.IngestRequest]):
    return client.signals.Ingest(iter(messages), timeout=30, metadata=client.metadata)


def _messages(list_name: str, hexes: list[str], request_id: str, per: int = 3):
    """The signals as IngestRequests of ``per``, the id on the first only."""
    return [
        signals_pb2.IngestRequest(
            list_name=list_name,
            signals=[signal("pdq", h) for h in hexes[start : start + per]],
            request_id=request_id if start == 0 else "",
        )
        for start in range(0, len(hexes), per)
    ]


def test_a_repeated_ingest_request_id_gets_the_first_reply(served):
    client = served.client("ops")
    hexes = _hexes(7, seed=1)
    first = _ingest(client, _messages("ing", hexes, "ingest-1"))
    assert (first.added, first.unchanged) == (7, 0)
    again = _ingest(client, _messages("ing", hexes, "ingest-1"))
    assert again == first  # before: added 0, unchanged 7
    # the id on every message is the same request; without an id it is applied afresh
    every = [signals_pb2.IngestRequest(list_name="ing", signals=m.signals, request_id="ingest-1")
             for m in _messages("ing", hexes, "")]  # fmt: skip
    assert _ingest(client, every) == first
    assert _ingest(client, _messages("ing", hexes, "")).unchanged == 7
    # another tenant's id is its own
    other = served.client("other")
    assert _ingest(other, _messages("ing-other", hexes[:2], "ingest-1")).added == 2


def test_one_tenants_burst_of_ids_does_not_push_out_another_tenants_replies(tmp_path):
    """The remembered replies' limits are shared: a burst of one tenant's ids evicted
    the oldest replies of all, so another tenant's retry was applied afresh and
    reported "unchanged". Now the tenant holding the most gives up its own oldest."""
    from hashmatch.server.replies import WriteReplies

    with running_server(tmp_path / "data", tenants=OPS) as ts:
        ts.server.host.replies = WriteReplies(max_replies=4)
        other, ops = ts.client("other"), ts.client("ops")
        kept = _messages("quiet", _hexes(3, seed=40), "quiet-1")
        first = _ingest(other, kept)
        burst = [_ingest(ops, _messages("busy", [h], f"busy-{i}"))
                 for i, h in enumerate(_hexes(8, seed=41))]  # fmt: skip
        assert _ingest(other, kept) == first  # before: added 0, unchanged 3
        assert (first.added, first.unchanged) == (3, 0)
        # the busy tenant's newest replies are kept, its oldest gone (applied afresh)
        assert _ingest(ops, _messages("busy", [_hexes(8, seed=41)[7]], "busy-7")) == burst[7]
        assert _ingest(ops, _messages("busy", [_hexes(8, seed=41)[0]], "busy-0")).unchanged == 1


def test_an_ingest_request_id_reused_for_other_content_is_invalid_argument(served):
    client = served.client("ops")
    hexes = _hexes(4, seed=2)
    _ingest(client, _messages("reuse", hexes, "ingest-2"))
    with pytest.raises(grpc.RpcError) as err:
        _ingest(client, _messages("reuse", hexes[:3], "ingest-2"))
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in bad_request_fields(err.value)] == ["stream[0].request_id"]
    with pytest.raises(grpc.RpcError) as err:  # a later message naming another id
        _ingest(client, [*_messages("reuse", hexes, "ingest-3"),
                         signals_pb2.IngestRequest(request_id="x")])  # fmt: skip
    assert [f for f, _ in bad_request_fields(err.value)] == ["stream[2].request_id"]
    assert _stored(client, "reuse") == 4


def test_a_repeated_retract_request_id_gets_the_first_reply(served):
    client = served.client("ops")
    hexes = _hexes(5, seed=3)
    client.ingest("ret", [signal("pdq", h) for h in hexes])

    def retract(targets: list[str], request_id: str) -> signals_pb2.RetractResponse:
        request = signals_pb2.RetractRequest(
            list_name="ret", hashes=[hash_value(("pdq", h)) for h in targets],
            request_id=request_id,
        )  # fmt: skip
        return client.signals.Retract(request, timeout=30, metadata=client.metadata)

    first = retract(hexes[:3], "retract-1")
    assert first.retracted == 3
    assert retract(hexes[:3], "retract-1") == first  # before: retracted 0
    with pytest.raises(grpc.RpcError) as err:
        retract(hexes[3:], "retract-1")
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in bad_request_fields(err.value)] == ["request_id"]
    assert "retract-1" in err.value.details()
    assert _stored(client, "ret") == 2  # the refused request retracted nothing
    with pytest.raises(grpc.RpcError) as err:
        retract(hexes[3:], "r" * 129)
    assert [f for f, _ in bad_request_fields(err.value)] == ["request_id"]


def _repeat_while_the_first_runs(served, client, list_name: str, first_messages, messages):
    """Start an Ingest of ``first_messages`` (held after its first message), wait until
    its first message is stored, then send ``messages`` (the same request_id) and wait
    until that repeat waits for the first. Both calls' futures."""
    first = client.signals.Ingest.future(first_messages, timeout=60, metadata=client.metadata)
    deadline = time.monotonic() + 30
    while _stored(client, list_name) < 3:  # the first message is stored: the call runs
        assert time.monotonic() < deadline, "the first ingest never stored its message"
        time.sleep(0.01)
    repeat = client.signals.Ingest.future(iter(messages), timeout=60, metadata=client.metadata)
    while served.server.host.replies.waiting == 0:
        assert time.monotonic() < deadline, "the repeat never waited for the first"
        time.sleep(0.01)
    return first, repeat


def test_a_repeat_sent_while_the_first_still_runs_waits_and_gets_its_reply(served):
    client = served.client("ops")
    hexes = _hexes(6, seed=4)
    messages = _messages("slow", hexes, "ingest-slow")
    go_on = threading.Event()

    def held() -> Iterator[signals_pb2.IngestRequest]:
        yield messages[0]
        go_on.wait(30)
        yield from messages[1:]

    first, repeat = _repeat_while_the_first_runs(served, client, "slow", held(), messages)
    go_on.set()
    assert (first.result().added, first.result().unchanged) == (6, 0)
    assert repeat.result() == first.result()


def test_the_clients_retry_of_a_write_whose_reply_was_lost_reports_its_counts(tmp_path):
    hexes = _hexes(5, seed=5)
    lossy = LoseFirstReply("Ingest", "Retract")
    with running_server(tmp_path, tenants=OPS, extra_interceptors=[lossy]) as ts:
        client = ts.client("ops", backoff=0.05)
        reply = client.ingest("lost", [signal("pdq", h) for h in hexes], batch_size=2)
        assert lossy.lost == ["Ingest"]  # applied, its reply lost, retried
        assert (reply.added, reply.unchanged) == (5, 0)  # before: 0, 5
        # three requests of 2, 2, 1 targets: the first's reply is lost, each has its id
        reply = client.retract("lost", hashes=[("pdq", h) for h in hexes], batch_size=2)
        assert lossy.lost == ["Ingest", "Retract"]
        assert reply.retracted == 5  # before: 3
        assert _stored(client, "lost") == 0


def test_the_asyncio_clients_retry_of_a_write_whose_reply_was_lost_reports_its_counts(
    tmp_path,
):
    hexes = _hexes(4, seed=6)
    lossy = LoseFirstReply("Ingest", "Retract")

    async def run(target: str, token: str) -> None:
        async with AsyncHashmatchClient(target, token=token, backoff=0.05) as client:
            reply = await client.ingest("lost", [signal("pdq", h) for h in hexes])
            assert (reply.added, reply.unchanged) == (4, 0)
            reply = await client.retract("lost", hashes=[("pdq", h) for h in hexes[:3]])
            assert reply.retracted == 3

    with running_server(tmp_path, tenants=OPS, extra_interceptors=[lossy]) as ts:
        asyncio.run(run(ts.target, ts.tokens["ops"]))
        assert lossy.lost == ["Ingest", "Retract"]


def test_a_repeat_continuing_a_stream_cut_after_its_first_messages_applies_the_rest(served):
    """grpcio can end a stream the client cut (cancelled, connection dropped) as if the
    client had closed it: the handler stores the messages read and answers, and their
    reply was remembered. The client's retry (the same id, the whole stream) was then
    refused as 'other content' (INVALID_ARGUMENT) and the rest never stored (seen in
    about 1 of 6 cancelled streams). A repeat that starts with the first call's
    messages and goes on is its continuation: the rest is applied and the reply
    counts the whole stream. The server cannot tell a cut stream from a short one, so
    the short stream stands in for the cut one here."""
    client = served.client("ops")
    hexes = _hexes(6, seed=7)
    hexes[5] = "not a hash"
    messages = _messages("cut", hexes, "ingest-cut")  # two messages of 3
    first = _ingest(client, messages[:1])
    assert (first.added, _stored(client, "cut")) == (3, 3)
    whole = _ingest(client, messages)
    assert (whole.added, whole.unchanged, whole.rejected) == (5, 0, 1)
    assert [(r.index, r.field) for r in whole.rejections] == [(5, "signals[5].hash.hex")]
    assert _stored(client, "cut") == 5
    assert _ingest(client, messages) == whole  # the whole stream's reply, remembered
    with pytest.raises(grpc.RpcError) as err:  # shorter than the reply remembered
        _ingest(client, messages[:1])
    assert [f for f, _ in bad_request_fields(err.value)] == ["stream[0].request_id"]
    other = _messages("cut", _hexes(6, seed=8), "ingest-cut")
    with pytest.raises(grpc.RpcError) as err:  # other content: refused before it is stored
        _ingest(client, [*other, *messages[1:]])
    assert [f for f, _ in bad_request_fields(err.value)] == ["stream[0].request_id"]
    assert _stored(client, "cut") == 5


def test_a_callers_request_id_gives_a_rerun_call_the_first_runs_counts(served):
    """A pipeline that persists its work items and runs a whole call again after its
    own crash gets the first run's counts by giving the call's request_id itself."""
    hexes = _hexes(5, seed=9)
    signals = [signal("pdq", h) for h in hexes]
    first = served.client("ops").ingest("rerun", signals, batch_size=2, request_id="job-1")
    again = served.client("ops").ingest("rerun", signals, batch_size=2, request_id="job-1")
    assert (again.added, again.unchanged) == (first.added, first.unchanged) == (5, 0)
    assert served.client("ops").ingest("rerun", signals).unchanged == 5  # a new id: applied
    for seed, batch_size in ((11, 2), (12, 10)):  # three requests (job-r2.0, .1, .2); one
        targets = [("pdq", h) for h in _hexes(5, seed)]
        served.client("ops").ingest("rerun", [signal(*t) for t in targets])
        request_id = f"job-r{batch_size}"
        runs = [
            served.client("ops").retract(
                "rerun", hashes=targets, batch_size=batch_size, request_id=request_id
            )
            for _ in range(2)
        ]
        assert [r.retracted for r in runs] == [5, 5]  # before (a new id each): 5, 0


def test_the_asyncio_clients_take_a_callers_request_id(served):
    hexes = _hexes(3, seed=10)

    async def run() -> tuple:
        async with AsyncHashmatchClient(served.target, token=served.tokens["ops"]) as client:
            signals = [signal("pdq", h) for h in hexes]
            ingested = [await client.ingest("rerun-aio", signals, request_id="aio-1")
                        for _ in range(2)]  # fmt: skip
            targets = [("pdq", h) for h in hexes]
            retracted = [
                await client.retract("rerun-aio", hashes=targets, batch_size=2, request_id="aio-r")
                for _ in range(2)
            ]
            return ingested, retracted

    ingested, retracted = asyncio.run(run())
    assert [(r.added, r.unchanged) for r in ingested] == [(3, 0), (3, 0)]
    assert [r.retracted for r in retracted] == [3, 3]


def test_a_replay_is_authorized_afresh(tmp_path):
    """A remembered reply is not a pass: a token that lost the write role, or was
    removed, by a reload (what SIGHUP does) is refused, not answered from memory."""
    with running_server(tmp_path, tenants=OPS) as ts:
        client = ts.client("ops", retries=0)
        messages = _messages("auth", _hexes(3, seed=13), "ingest-auth")
        assert _ingest(client, messages).added == 3
        tokens = tmp_path / "reloaded.toml"
        for text, code in (
            (tenant_entry("ops", ts.tokens["ops"], ["match"], all_lists=True),
             grpc.StatusCode.PERMISSION_DENIED),
            (tenant_entry("other", ts.tokens["other"], ["match", "write"], all_lists=True),
             grpc.StatusCode.UNAUTHENTICATED),
        ):  # fmt: skip
            tokens.write_text(text + "\n")
            ts.server.host.auth = TokenAuth.from_file(tokens)
            with pytest.raises(grpc.RpcError) as err:
                _ingest(client, messages)
            assert err.value.code() is code


def test_a_repeat_waiting_for_a_first_call_that_fails_runs_itself(served):
    """Only a success is remembered: the repeat that waited for a failed first call
    runs, and is not answered with the failure."""
    client = served.client("ops")
    hexes = _hexes(6, seed=14)
    messages = _messages("slow-fail", hexes, "ingest-slow-fail")
    go_on = threading.Event()

    def failing() -> Iterator[signals_pb2.IngestRequest]:
        yield messages[0]
        go_on.wait(30)
        yield signals_pb2.IngestRequest(signals=[signal("pdq", hexes[3])], strict=True,
                                        list_name="slow-fail", source="other")  # fmt: skip
        yield signals_pb2.IngestRequest(signals=[signals_pb2.Signal()], strict=True)

    first, repeat = _repeat_while_the_first_runs(served, client, "slow-fail", failing(), messages)
    go_on.set()
    assert first.exception().code() is grpc.StatusCode.INVALID_ARGUMENT
    assert (repeat.result().added, repeat.result().unchanged) == (2, 4)
