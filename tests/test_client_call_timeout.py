"""A call's ``timeout``: the client's by default, None for no deadline (both clients).

Why: the per-call default was None, which meant the client's timeout, so an explicit
``timeout=None`` did too and no single call could go without a deadline. The deadline
is read where it arrives: the server's own view of each call (real gRPC, real socket).
"""

from __future__ import annotations

import asyncio
import threading

import grpc
import pytest

from hashmatch.server.aio_client import AsyncHashmatchClient
from hashmatch.server.client import CLIENT_TIMEOUT, HashmatchClient, signal
from hashmatch.server.testing import running_server

HEX = "f8f8f0cee0f4a84f06370a22038f63f0b36e2ed596621e1d33e6b39c4e9c9b22"
NO_DEADLINE = 1e6  # seconds: gRPC's server reports a call without one as ~forever


class Deadlines(grpc.ServerInterceptor):
    """Records, per method name, the seconds each call had left when its handler ran."""

    def __init__(self) -> None:
        self.seen: dict[str, list[float]] = {}
        self.lock = threading.Lock()

    def take(self, method: str) -> list[float]:
        with self.lock:
            return self.seen.pop(method, [])

    def intercept_service(self, continuation, details):
        handler = continuation(details)
        if handler is None:
            return handler
        method = details.method.rpartition("/")[2]
        kind = next(k for k in ("unary_unary", "unary_stream", "stream_unary", "stream_stream")
                    if getattr(handler, k) is not None)  # fmt: skip
        behavior = getattr(handler, kind)

        def noted(request, context):
            with self.lock:
                self.seen.setdefault(method, []).append(context.time_remaining())
            return behavior(request, context)

        return handler._replace(**{kind: noted})


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    deadlines = Deadlines()
    data = tmp_path_factory.mktemp("timeouts")
    with running_server(data, extra_interceptors=[deadlines]) as ts:
        yield ts, deadlines


def _calls(client) -> dict:
    """The calls that take ``timeout`` (ingest's default: the client's per message, one
    message here), as name -> (gRPC method, call(timeout=...))."""
    return {  # ingest first: the list retract names
        "ingest": ("Ingest", lambda **t: client.ingest("t", [signal("pdq", HEX)], **t)),
        "match": ("Match", lambda **t: client.match([("pdq", HEX)], **t)),
        "list_hash_lists": ("ListHashLists", lambda **t: client.list_hash_lists(**t)),
        "stats": ("Stats", lambda **t: client.stats(**t)),
        "signal_states": ("SignalStates", lambda **t: client.signal_states([1], **t)),
        "retract": ("Retract", lambda **t: client.retract("t", signal_ids=[1], **t)),
        "changes": ("Changes", lambda **t: list(client.changes(0, **t))),
    }


def _check(seen: list[float], expected: float | None) -> None:
    assert len(seen) == 1, seen
    if expected is None:
        assert seen[0] > NO_DEADLINE, seen
    else:
        assert expected - 3 < seen[0] <= expected + 0.5, seen


def test_a_sync_call_given_timeout_none_has_no_deadline(served):
    ts, deadlines = served
    with HashmatchClient(ts.target, timeout=7) as client:
        for method, call in _calls(client).values():
            for given, expected in (({}, 7), ({"timeout": None}, None), ({"timeout": 50}, 50),
                                    ({"timeout": CLIENT_TIMEOUT}, 7)):  # fmt: skip
                call(**given)
                _check(deadlines.take(method), expected)


def test_an_asyncio_call_given_timeout_none_has_no_deadline(served):
    ts, deadlines = served

    async def calls() -> None:
        async with AsyncHashmatchClient(ts.target, timeout=7) as client:
            names = {
                "Ingest": lambda **t: client.ingest("t", [signal("pdq", HEX)], **t),
                "Match": lambda **t: client.match([("pdq", HEX)], **t),
                "ListHashLists": lambda **t: client.list_hash_lists(**t),
                "Stats": lambda **t: client.stats(**t),
                "Retract": lambda **t: client.retract("t", signal_ids=[1], **t),
            }
            for method, call in names.items():
                for given, expected in (({}, 7), ({"timeout": None}, None),
                                        ({"timeout": 50}, 50)):  # fmt: skip
                    await call(**given)
                    _check(deadlines.take(method), expected)
            for given, expected in (({}, 7), ({"timeout": None}, None)):
                _ = [m async for m in client.changes(0, **given)]
                _check(deadlines.take("Changes"), expected)

    asyncio.run(calls())


def test_match_stream_and_rebuild_keep_no_deadline_by_default(served):
    """The long calls' default stays None (no deadline); CLIENT_TIMEOUT asks for the
    client's."""
    ts, deadlines = served
    with HashmatchClient(ts.target, timeout=7) as client:
        request = client.match_request([("pdq", HEX)])
        for given, expected in (({}, None), ({"timeout": CLIENT_TIMEOUT}, 7)):
            assert len(list(client.match_stream([request], **given))) == 1
            _check(deadlines.take("MatchStream"), expected)
