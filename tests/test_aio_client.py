"""The asyncio client, over a real socket against a real server: every call, many
coroutines on one channel agreeing with the sync client, retries through a late start,
deadlines with partial progress, field details of a bad request, cancellation reaching
the server, a bad token, and the README's example."""

from __future__ import annotations

import asyncio
import io
import socket

import grpc
import numpy as np
import pytest
from PIL import Image
from readme_example import run_python_example
from skimage import data

from hashmatch.server.aio_client import AsyncHashmatchClient, signal
from hashmatch.server.errors import bad_request_fields
from hashmatch.server.testing import access_log_line, running_server

OPS = {"ops": (["match", "write", "admin", "export"], True), "reader": (["match"], False)}


def _hexes(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [row.tobytes().hex() for row in rng.integers(0, 256, (n, 32), dtype=np.uint8)]


def _near(hex_hash: str, bits: int, seed: int) -> str:
    """``hex_hash`` with ``bits`` random bits flipped: a near-duplicate upload."""
    code = np.frombuffer(bytes.fromhex(hex_hash), dtype=np.uint8).copy()
    for b in np.random.default_rng(seed).choice(256, size=bits, replace=False):
        code[b // 8] ^= np.uint8(1 << (7 - b % 8))
    return code.tobytes().hex()


def _jpeg(size: int) -> bytes:
    out = io.BytesIO()
    Image.fromarray(data.astronaut()).resize((size, size)).save(out, "JPEG")
    return out.getvalue()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    with running_server(tmp_path_factory.mktemp("aio"), tenants=OPS) as ts:
        yield ts


def _client(served, tenant: str = "ops", **options) -> AsyncHashmatchClient:
    return AsyncHashmatchClient(served.target, token=served.tokens[tenant], **options)


async def _stored(client: AsyncHashmatchClient, list_name: str) -> int:
    lists = (await client.list_hash_lists()).lists
    return {x.name: x.signal_count for x in lists}.get(list_name, 0)


def test_every_call(served):
    hexes = _hexes(30, seed=1)
    photo = _jpeg(512)

    async def signals_later():
        for h in hexes[20:]:
            await asyncio.sleep(0)  # a source that waits, e.g. a queue
            yield signal("pdq", h, labels=["streamed"])

    async def requests():
        for i, h in enumerate(hexes[:3]):
            yield AsyncHashmatchClient.match_request([("pdq", h)], threshold=0, request_id=f"r{i}")

    async def scenario() -> None:
        async with _client(served) as c:
            await c.wait_until_serving(10)
            assert await c.health() == "SERVING"
            head = (await c.stats()).total_signals
            listed = await c.ingest("every", [signal("pdq", h) for h in hexes[:10]])
            assert listed.added == 10
            gen = await c.ingest("every", (signal("pdq", h) for h in hexes[10:20]), batch_size=3)
            assert gen.added == 10
            streamed = await c.ingest("every", signals_later, total=10, batch_size=4)
            assert streamed.added == 10
            again = await c.ingest("every", signals_later())  # an async iterable, read whole
            assert again.unchanged == 10
            assert await _stored(c, "every") == 30

            reply = await c.match([("pdq", hexes[0]), ("pdq", bytes.fromhex(hexes[25]))])
            assert [r.matches[0].hash_hex for r in reply.results] == [hexes[0], hexes[25]]
            assert list(reply.results[1].matches[0].labels) == ["streamed"]
            hashed = await c.hash([photo], ["pdq", "md5"])
            assert [h.signal_type for h in hashed.items[0].hashes] == ["pdq", "md5"]

            replies = [r async for r in c.match_stream(requests())]
            assert [r.request_id for r in replies] == ["r0", "r1", "r2"]
            plain = [r async for r in c.match_stream([c.match_request([("pdq", hexes[5])])])]
            assert plain[0].results[0].matches[0].hash_hex == hexes[5]

            gone = await c.retract(
                "every", hashes=[("pdq", h) for h in hexes[:5]], signal_ids=[10**9], batch_size=2
            )
            assert (gone.retracted, gone.not_found_total) == (5, 1)
            assert list(gone.not_found) == [f"id {10**9}"]
            assert (await c.stats()).total_signals == head + 25

            pages = [m async for m in c.changes(0, max_changes=7)]
            assert pages == list(served.client("ops").changes(0, max_changes=7))
            assert pages[-1].more  # at a log-entry boundary: a message of 10 is one entry
            messages = [m async for m in c.changes(0)]
            changed = [x for m in messages for x in m.changes if x.list_name == "every"]
            assert sum(x.live for x in changed) == 25  # added, then 5 of them retracted
            tail = [m async for m in c.changes(messages[-1].head)]
            assert all(not m.changes for m in tail)

    asyncio.run(scenario())


def test_200_concurrent_matches_agree_with_the_sync_client(served):
    """One client, one channel, 200 coroutines at once: each answer is the one the
    sync client gives for the same query."""
    stored = _hexes(300, seed=2)
    queries = [_near(h, 10, seed=i) for i, h in enumerate(stored[:150])] + _hexes(50, seed=3)
    sync = served.client("ops")
    sync.ingest("agree", [signal("pdq", h, external_id=h[:6]) for h in stored])

    def answer(reply) -> list:
        return [(m.signal_id, m.distance, m.external_id) for m in reply.results[0].matches]

    expected = [answer(sync.match([("pdq", q)], threshold=31, lists=["agree"])) for q in queries]

    async def scenario() -> list:
        async with _client(served) as c:
            calls = (c.match([("pdq", q)], threshold=31, lists=["agree"]) for q in queries)
            return [answer(r) for r in await asyncio.gather(*calls)]

    got = asyncio.run(scenario())
    assert got == expected
    assert sum(bool(a) for a in got) == 150  # the near-duplicates, not a vacuous agreement


def test_retries_ride_out_a_server_that_starts_after_the_first_call(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        target = f"127.0.0.1:{sock.getsockname()[1]}"  # nothing listens once closed
    server = running_server(tmp_path, listen=target, wait=False)  # no-auth: no token yet
    hexes = _hexes(3, seed=8)
    reads = [0]

    def source():
        reads[0] += 1
        return (signal("pdq", h) for h in hexes)

    async def scenario() -> None:
        async with AsyncHashmatchClient(target, retries=0, timeout=2) as impatient:
            with pytest.raises(grpc.RpcError) as err:
                await impatient.list_hash_lists()
            assert err.value.code() is grpc.StatusCode.UNAVAILABLE
            with pytest.raises(TimeoutError, match="is `hashmatch serve` running there"):
                await impatient.wait_until_serving(0.3)
        async with AsyncHashmatchClient(target, backoff=0.05, timeout=30) as patient:
            listing = asyncio.create_task(patient.list_hash_lists())
            ingest = asyncio.create_task(patient.ingest("late", source, total=len(hexes)))
            await asyncio.sleep(0.6)
            assert not listing.done() and not ingest.done()  # retrying UNAVAILABLE
            await asyncio.to_thread(server.__enter__)
            assert {x.name for x in (await listing).lists} <= {"late"}  # answered, not refused
            assert (await ingest).added == len(hexes)
            assert reads[0] >= 2  # the callable source is read afresh by each attempt

    try:
        asyncio.run(scenario())
    finally:
        server.__exit__(None, None, None)


def test_a_deadline_gives_deadline_exceeded_with_the_ingest_progress(served):
    """A unary call past its deadline, and a streamed ingest whose source stalls: the
    messages before the stall are stored, and the error says how far it got."""
    hexes = _hexes(1500, seed=4)

    async def stalls():
        for h in hexes:
            yield signal("pdq", h)
        await asyncio.sleep(30)

    async def scenario() -> None:
        async with _client(served) as c:
            with pytest.raises(grpc.RpcError) as err:
                await c.hash([_jpeg(3000)] * 8, dihedral=True, timeout=0.001)
            assert err.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
            with pytest.raises(grpc.RpcError) as err:
                await c.ingest("stalled", stalls, total=1500, timeout=1.5)
            assert err.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
            assert (err.value.signals_sent, err.value.signals_total) == (1000, 1500)
            assert await _stored(c, "stalled") == 1000

    asyncio.run(scenario())


def test_a_bad_request_is_invalid_argument_with_its_fields(served):
    async def scenario() -> None:
        async with _client(served) as c:
            with pytest.raises(grpc.RpcError) as err:
                await c.match([("pdq", _hexes(1, seed=5)[0]), ("pdq", "zz")])
            assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
            assert [f for f, _ in bad_request_fields(err.value)] == ["hashes[1].hex"]
            with pytest.raises(grpc.RpcError) as err:
                await c.match([("pdq", _hexes(1, seed=5)[0])], threshold=99)
            assert [f for f, _ in bad_request_fields(err.value)] == ["options.threshold"]
            with pytest.raises(grpc.RpcError) as err:
                await c.ingest("bad", [signal("pdq", "zz")], strict=True)
            assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
            assert [f for f, _ in bad_request_fields(err.value)] == ["signals[0].hash.hex"]

    asyncio.run(scenario())


def test_a_retract_failing_part_way_says_what_the_earlier_requests_retracted(served):
    """Requests of ``batch_size``: the third holds a malformed hash. Both clients' error
    carries ``retracted_before``, the summed replies of the two requests that retracted
    (before: nothing said how many of the call's signals were gone)."""
    hexes = _hexes(60, seed=9)
    targets = [("pdq", h) for h in hexes[:40]] + [("pdq", "zz")] + [("pdq", h) for h in hexes[40:]]
    sync = served.client("ops")

    def retract_sync(name: str) -> None:
        sync.retract(name, hashes=targets, batch_size=20)

    def retract_async(name: str) -> None:
        async def scenario() -> None:
            async with _client(served) as c:
                await c.retract(name, hashes=targets, batch_size=20)

        asyncio.run(scenario())

    for name, retract in [("part-way-s", retract_sync), ("part-way-a", retract_async)]:
        sync.ingest(name, [signal("pdq", h) for h in hexes])
        with pytest.raises(grpc.RpcError) as err:
            retract(name)
        assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        done = err.value.retracted_before
        assert (done.retracted, done.not_found_total) == (40, 0)
        assert {x.name: x.signal_count for x in sync.list_hash_lists().lists}[name] == 20


def test_a_source_that_raises_gives_the_caller_its_own_exception(served):
    """A streamed source raising at its 1500th signal (a bad row in a partner's file):
    both clients raise that ValueError, with ``signals_sent``, once the server has
    stored the message before it. Before: the sync client raised RpcError UNKNOWN
    ("Exception iterating requests!"), the asyncio one asyncio.CancelledError."""
    hexes = _hexes(3000, seed=10)

    def source():
        for n, h in enumerate(hexes):
            if n == 1500:
                raise ValueError("partner file, row 1500: not a hash")
            yield signal("pdq", h)

    def ingest_sync(name: str) -> None:
        served.client("ops").ingest(name, source, total=len(hexes))

    def ingest_async(name: str) -> None:
        async def scenario() -> None:
            async with _client(served) as c:
                await c.ingest(name, source, total=len(hexes))

        asyncio.run(scenario())

    for name, ingest in [("raising-s", ingest_sync), ("raising-a", ingest_async)]:
        with pytest.raises(ValueError, match="row 1500") as err:
            ingest(name)
        assert (err.value.signals_sent, err.value.signals_total) == (1000, 3000)
        lists = served.client("ops").list_hash_lists().lists
        assert {x.name: x.signal_count for x in lists}[name] == 1000


def test_a_match_stream_whose_requests_raise_answers_the_earlier_ones_then_raises(served):
    """The 4th upload cannot be read: both clients give the replies to the three before
    it, then the caller's ValueError. Before: the sync client raised RpcError UNKNOWN
    (no reply at all), the asyncio one asyncio.CancelledError."""
    hexes = _hexes(5, seed=11)

    def requests():
        for n, h in enumerate(hexes):
            if n == 3:
                raise ValueError("upload 3 is unreadable")
            yield AsyncHashmatchClient.match_request([("pdq", h)], request_id=f"u{n}")

    def stream_sync(got: list[str]) -> None:
        for reply in served.client("ops").match_stream(requests()):
            got.append(reply.request_id)

    def stream_async(got: list[str]) -> None:
        async def scenario() -> None:
            async with _client(served) as c:
                async for reply in c.match_stream(requests()):
                    got.append(reply.request_id)

        asyncio.run(scenario())

    for stream in (stream_sync, stream_async):
        got: list[str] = []
        with pytest.raises(ValueError, match="upload 3"):
            stream(got)
        assert got == ["u0", "u1", "u2"]


def test_cancelling_the_coroutine_cancels_the_call_on_the_server(served, caplog):
    """A task awaiting an ingest (its source waiting) or reading a match stream is
    cancelled, or a loop over a match stream left early: the server logs each call
    CANCELLED, and nothing waits for the source any more."""
    hexes = _hexes(1200, seed=6)

    async def scenario() -> None:
        closed = asyncio.Event()

        async def waits():
            try:
                for h in hexes:
                    yield signal("pdq", h)
                await asyncio.sleep(30)
            finally:
                closed.set()

        async def one_then_waits():
            yield AsyncHashmatchClient.match_request([("pdq", hexes[0])], threshold=0)
            await asyncio.sleep(30)

        async with _client(served) as c:
            ingest = asyncio.create_task(c.ingest("cancelled", waits, total=1200))
            while await _stored(c, "cancelled") < 1000:
                await asyncio.sleep(0.02)
            ingest.cancel()
            with pytest.raises(asyncio.CancelledError):
                await ingest
            await asyncio.wait_for(closed.wait(), 5)

            async for _reply in c.match_stream(one_then_waits()):
                break  # leaving the loop early ends the stream, the client still open
            left = await asyncio.to_thread(access_log_line, caplog, "MatchStream", 1, 10)
            _stream_ended_by_the_client(left)

            got = []

            async def read() -> None:
                async for reply in c.match_stream(one_then_waits()):
                    got.append(reply)

            reader = asyncio.create_task(read())
            while not got:
                await asyncio.sleep(0.01)
            reader.cancel()
            with pytest.raises(asyncio.CancelledError):
                await reader

    with caplog.at_level("INFO", logger="hashmatch.access"):
        asyncio.run(scenario())
        ingest = access_log_line(caplog, "Ingest", timeout=10)
        stream = access_log_line(caplog, "MatchStream", 2, timeout=10)
    # the same grpcio race as for a stream below: a cancel can read as the end of the
    # request stream, and the messages received were stored either way
    assert ingest["status"] in ("CANCELLED", "OK"), ingest
    if ingest["status"] == "CANCELLED":
        assert "the client cancelled" in ingest["error"], ingest
    else:
        assert ingest["items"] == 1000, ingest  # what the client sent before its cancel
    _stream_ended_by_the_client(stream)


def _stream_ended_by_the_client(line: dict) -> None:
    """The server ended a MatchStream whose client went away, long before the client's
    request source (30 s) would have.

    Logged CANCELLED, or OK in grpcio's race: a cancel first ends the server's request
    iterator as a half-close would (no message), and the call reads as inactive only
    once the close event follows; a handler that finishes in between cannot tell
    (seen once in a full run on a loaded box)."""
    assert line["status"] in ("CANCELLED", "OK"), line
    assert line["ms"] < 10_000, line
    assert line["messages"] == 1, line


def test_a_bad_token_is_unauthenticated(served):
    async def scenario() -> None:
        async with AsyncHashmatchClient(served.target, token="not-a-token\n") as c:
            assert await c.health() == "SERVING"  # health needs no token
            for call in (c.list_hash_lists(), c.match([("pdq", "0" * 64)])):
                with pytest.raises(grpc.RpcError) as err:
                    await call
                assert err.value.code() is grpc.StatusCode.UNAUTHENTICATED
        async with _client(served, "reader") as reader:
            with pytest.raises(grpc.RpcError) as err:
                await reader.stats()
            assert err.value.code() is grpc.StatusCode.PERMISSION_DENIED

    asyncio.run(scenario())


def test_made_outside_an_event_loop_says_where_to_make_it(served):
    with pytest.raises(RuntimeError, match="inside a coroutine"):
        _client(served)
    with pytest.raises(ValueError, match="go together"):
        AsyncHashmatchClient(served.target, client_cert=b"x")


def test_the_readme_example_runs(served):
    """The README's asyncio example, run as written against this server."""
    done = run_python_example("#### asyncio", served)
    assert done.returncode == 0, done.stderr
    assert "partner-a" in done.stdout, done.stdout
