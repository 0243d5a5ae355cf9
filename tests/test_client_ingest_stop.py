"""``HashmatchClient.ingest(..., stop=event)``: a stopped ingest ends its stream where
it is and returns the server's reply, whose counts are what is stored (a real server
and store; the CLI's Ctrl-C is tested with real processes in test_interrupts.py)."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import grpc
import numpy as np
import pytest

from hashmatch.server.client import IngestStopped, signal
from hashmatch.server.testing import running_server
from hashmatch.v1 import signals_pb2

OPS = {"ops": (["match", "write"], True)}


class HoldIngestReply(grpc.ServerInterceptor):
    """The server's Ingest runs (its signals are stored), then its reply, or its error,
    is held back for ``seconds`` or until :attr:`release` is set: a server slow to
    answer. :attr:`replied` says whether it has answered yet."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.release, self.replied = threading.Event(), threading.Event()

    def intercept_service(self, continuation, details):
        handler = continuation(details)
        if handler is None or not details.method.endswith("/Ingest"):
            return handler
        behavior = handler.stream_unary

        def held(requests, context):
            try:
                return behavior(requests, context)
            finally:
                self.release.wait(self.seconds)
                self.replied.set()

        return handler._replace(stream_unary=held)


def _signals(n: int, seed: int, stop: threading.Event, stop_at: int) -> Iterator:
    """``n`` PDQ signals; ``stop`` is set as signal ``stop_at`` is read (a Ctrl-C then)."""
    rng = np.random.default_rng(seed)
    for i, row in enumerate(rng.integers(0, 256, (n, 32), dtype=np.uint8)):
        if i == stop_at:
            stop.set()
        yield signal("pdq", row.tobytes().hex())


def _count(client, list_name: str) -> int:
    lists = {x.name: x for x in client.list_hash_lists().lists}
    return lists[list_name].signal_count if list_name in lists else 0


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    with running_server(tmp_path_factory.mktemp("stop"), tenants=OPS) as ts:
        yield ts


def test_a_stopped_ingest_returns_the_servers_counts_for_what_it_sent(served):
    client = served.client("ops")
    stop = threading.Event()
    reply = client.ingest(
        "stopped", lambda: _signals(5000, 1, stop, 2500), total=5000, batch_size=500, stop=stop
    )
    assert stop.is_set()
    # the five full messages before the stop, not the signal being read nor any after
    assert (reply.added, reply.rejected) == (2500, 0)
    assert _count(client, "stopped") == 2500


def test_a_stop_before_the_call_sends_nothing(served):
    client = served.client("ops")
    stop = threading.Event()
    stop.set()
    with pytest.raises(IngestStopped) as err:
        client.ingest("never", lambda: _signals(10, 2, stop, -1), total=10, stop=stop)
    assert err.value.signals_sent == 0
    assert _count(client, "never") == 0


def test_a_server_slow_to_reply_after_the_stop_is_waited_for_the_grace_only(tmp_path):
    """Past ``stop_grace`` the call is cancelled: IngestStopped, with what was sent as
    the upper bound it then is."""
    hold = HoldIngestReply(60)
    with running_server(tmp_path, tenants=OPS, extra_interceptors=[hold]) as ts:
        client = ts.client("ops")
        stop = threading.Event()
        with pytest.raises(IngestStopped, match=r"did not reply within 0\.5 s") as err:
            client.ingest("slow", lambda: _signals(2000, 3, stop, 1000), total=2000,
                          batch_size=250, stop=stop, stop_grace=0.5)  # fmt: skip
        # gave up before the reply came (no wall-clock bound: was < 4 s, flaky on CI)
        replied_first = hold.replied.is_set()
        hold.release.set()
        assert not replied_first
        assert (err.value.signals_sent, err.value.signals_total) == (1000, 2000)
        assert _count(client, "slow") == 1000  # stored, though the reply never came


def test_without_a_stop_the_call_is_unchanged(served):
    client = served.client("ops")
    reply = client.ingest("whole", [signal("pdq", "ab" * 32)])
    assert isinstance(reply, signals_pb2.IngestResponse) and reply.added == 1


def _with_a_bad_one(n: int, bad: int, stop, stop_at: int) -> Iterator:
    """``_signals``, signal ``bad`` not hex (a strict ingest refuses its message)."""
    for i, item in enumerate(_signals(n, 4, stop, stop_at)):
        yield signal("pdq", "zz" * 32) if i == bad else item


#: what the server says of ``_with_a_bad_one(..., bad=5, ...)`` sent strict
REFUSED = "signals[5].hash.hex: strict ingest refused the message (1 bad): pdq hash has a non-hex"


def test_a_call_that_fails_after_the_stop_says_the_servers_details(tmp_path):
    """A strict refusal of a message sent before the stop: IngestStopped said only
    'INVALID_ARGUMENT', not which signal the server refused nor why."""
    with running_server(tmp_path, tenants=OPS, extra_interceptors=[HoldIngestReply(1)]) as ts:
        stop = threading.Event()
        with pytest.raises(IngestStopped) as err:  # the refusal is held until after the stop
            ts.client("ops").ingest("refused", lambda: _with_a_bad_one(20, 5, stop, 10),
                                    total=20, batch_size=10, strict=True, stop=stop)  # fmt: skip
    said = str(err.value)
    assert said.startswith("stopped; then the call failed: INVALID_ARGUMENT: "), said
    assert REFUSED in said, said
    assert isinstance(err.value.__cause__, grpc.RpcError)
