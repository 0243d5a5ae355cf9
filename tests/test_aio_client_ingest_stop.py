"""``AsyncHashmatchClient.ingest(..., stop=asyncio.Event())``: as the sync client's
``stop`` (test_client_ingest_stop.py, whose server helpers these reuse), over a real
socket against a real server and store. Before, ``stop=`` was a TypeError: an asyncio
pipeline could only cancel its task, which says how much was sent, not what is stored."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator

import grpc
import pytest
from test_client_ingest_stop import (
    OPS,
    REFUSED,
    HoldIngestReply,
    _count,
    _signals,
    _with_a_bad_one,
)

from hashmatch.server.aio_client import AsyncHashmatchClient, IngestStopped, signal
from hashmatch.server.testing import running_server


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    with running_server(tmp_path_factory.mktemp("aio-stop"), tenants=OPS) as ts:
        yield ts


def _client(ts) -> AsyncHashmatchClient:
    return AsyncHashmatchClient(ts.target, token=ts.tokens["ops"])


async def _paced(n: int, seed: int, stop: asyncio.Event, stop_at: int) -> AsyncIterator:
    """``_signals`` as an async source that yields to the loop between signals (a queue)."""
    for item in _signals(n, seed, stop, stop_at):
        await asyncio.sleep(0)
        yield item


@pytest.mark.parametrize("source", ["plain", "async"])
def test_a_stopped_ingest_returns_the_servers_counts_for_what_it_sent(served, source):
    name = f"stopped-{source}"
    make = _signals if source == "plain" else _paced

    async def run():
        stop = asyncio.Event()
        async with _client(served) as c:
            reply = await c.ingest(
                name, lambda: make(5000, 1, stop, 2500), total=5000, batch_size=500, stop=stop
            )
        return stop.is_set(), reply

    stopped, reply = asyncio.run(run())
    assert stopped
    # the five full messages before the stop, not the signal being read nor any after
    assert (reply.added, reply.rejected) == (2500, 0)
    assert _count(served.client("ops"), name) == 2500


def test_a_stop_ends_the_stream_while_the_source_waits(served):
    """The stop of an asyncio service (a signal handler, a shutdown task) comes from
    another task while the source waits on an idle queue: the stream is half-closed then
    (not when the source yields next, nor once the grace ran out, which says only what
    was sent), and the reply says what the messages sent stored."""
    closed = []

    async def run():
        stop = asyncio.Event()
        queue: asyncio.Queue = asyncio.Queue()
        for item in _signals(300, 5, threading.Event(), -1):
            queue.put_nowait(item)

        async def source():
            try:
                while True:
                    yield await queue.get()
            finally:
                closed.append(True)  # the wait was ended, the generator closed

        async def stop_when_drained():
            while not queue.empty():
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.2)
            stop.set()

        async with _client(served) as c:
            stopper = asyncio.create_task(stop_when_drained())
            began = time.monotonic()
            reply = await c.ingest("queue", source, batch_size=100, stop=stop, stop_grace=20)
            waited = time.monotonic() - began
            await stopper
        return reply, waited

    reply, waited = asyncio.run(run())
    assert (reply.added, reply.rejected) == (300, 0)
    assert waited < 10, waited  # not the 20 s grace
    assert closed == [True]
    assert _count(served.client("ops"), "queue") == 300


def test_a_stop_before_the_call_sends_nothing(served):
    async def run():
        stop = asyncio.Event()
        stop.set()
        async with _client(served) as c:
            await c.ingest("never", lambda: _signals(10, 2, stop, -1), total=10, stop=stop)

    with pytest.raises(IngestStopped) as err:
        asyncio.run(run())
    assert err.value.signals_sent == 0
    assert _count(served.client("ops"), "never") == 0


def test_a_server_slow_to_reply_after_the_stop_is_waited_for_the_grace_only(tmp_path):
    """Past ``stop_grace`` the call is cancelled: IngestStopped, with what was sent as
    the upper bound it then is."""
    with running_server(tmp_path, tenants=OPS, extra_interceptors=[HoldIngestReply(5)]) as ts:

        async def run():
            stop = asyncio.Event()
            async with _client(ts) as c:
                await c.ingest("slow", lambda: _signals(2000, 3, stop, 1000), total=2000,
                               batch_size=250, stop=stop, stop_grace=0.5)  # fmt: skip

        began = time.monotonic()
        with pytest.raises(IngestStopped, match=r"did not reply within 0\.5 s") as err:
            asyncio.run(run())
        assert time.monotonic() - began < 4
        assert (err.value.signals_sent, err.value.signals_total) == (1000, 2000)
        assert _count(ts.client("ops"), "slow") == 1000  # stored, though the reply never came


def test_a_call_that_fails_after_the_stop_says_the_servers_details(tmp_path):
    with running_server(tmp_path, tenants=OPS, extra_interceptors=[HoldIngestReply(1)]) as ts:

        async def run():
            stop = asyncio.Event()
            async with _client(ts) as c:
                await c.ingest("refused", lambda: _with_a_bad_one(20, 5, stop, 10), total=20,
                               batch_size=10, strict=True, stop=stop)  # fmt: skip

        with pytest.raises(IngestStopped) as err:
            asyncio.run(run())
    said = str(err.value)
    assert said.startswith("stopped; then the call failed: INVALID_ARGUMENT: "), said
    assert REFUSED in said, said
    assert isinstance(err.value.__cause__, grpc.RpcError)


def test_a_threading_event_is_refused_naming_what_to_give(served):
    """Waiting on it would block the event loop."""

    async def run():
        async with _client(served) as c:
            await c.ingest("x", [signal("pdq", "ab" * 32)], stop=threading.Event())

    with pytest.raises(TypeError, match=r"stop: an asyncio\.Event, not Event"):
        asyncio.run(run())


def test_without_a_stop_the_call_is_unchanged(served):
    async def run():
        async with _client(served) as c:
            return await c.ingest("whole", [signal("pdq", "ab" * 32)])

    assert asyncio.run(run()).added == 1
