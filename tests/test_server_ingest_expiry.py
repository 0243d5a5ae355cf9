"""Expiry and quality over gRPC Ingest: before, ``Signal`` had no expiry, so a pipeline
re-sending a partner's list cleared every stored expiry (and revived expired signals),
and ``hashmatch remote ingest`` dropped the file's ``expires_at``. Real socket."""

from __future__ import annotations

import time

import grpc
import pytest
from click.testing import CliRunner

from hashmatch.server.cli import cli
from hashmatch.server.testing import running_server
from hashmatch.v1 import common_pb2, signals_pb2

H = [f"{i:02x}" * 32 for i in range(1, 5)]
PAST, FUTURE = time.time() - 3600, time.time() + 86400


def _signal(hex_: str, **extra) -> signals_pb2.Signal:
    quality = extra.pop("quality", None)
    value = common_pb2.HashValue(signal_type="pdq", hex=hex_, quality=quality)
    return signals_pb2.Signal(hash=value, **extra)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    with running_server(tmp_path_factory.mktemp("expiry")) as ts:
        yield ts


def _matched(client, hex_: str, list_name: str) -> bool:
    reply = client.match([("pdq", hex_)], lists=[list_name], threshold=0)
    return bool(reply.results[0].matches)


def test_expiry_sent_over_grpc_is_stored_and_kept_on_resend(served):
    client = served.client()
    sent = [_signal(H[0], expires_at=PAST, quality=80), _signal(H[1], expires_at=FUTURE)]
    assert client.ingest("exp", sent).added == 2
    assert not _matched(client, H[0], "exp")  # expired at ingest: never matches
    assert _matched(client, H[1], "exp")
    again = client.ingest("exp", sent)
    assert (again.added, again.updated, again.unchanged) == (0, 0, 2)
    assert not _matched(client, H[0], "exp")  # a re-send does not revive it
    (listed,) = [x for x in client.list_hash_lists().lists if x.name == "exp"]
    assert (listed.signal_count, listed.expired_count) == (2, 1)
    stored = served.engine.store.signals(list_name="exp")
    assert {s.hash_hex: (s.expires_at, s.quality) for s in stored}[H[0]] == (
        pytest.approx(PAST), 80,
    )  # fmt: skip


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 1.7e12])
def test_a_bad_expiry_rejects_only_its_item_naming_the_field(served, value):
    client = served.client()
    reply = client.ingest("bad", [_signal(H[2]), _signal(H[3], expires_at=value)])
    assert reply.added + reply.unchanged == 1 and reply.rejected == 1
    (error,) = reply.rejections
    assert error.index == 1 and error.field == "signals[1].expires_at"
    assert "not a time" in error.reason
    with pytest.raises(grpc.RpcError) as err:
        client.ingest("bad", [_signal(H[3], expires_at=value)], strict=True)
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT


def test_the_client_helpers_carry_quality_and_expiry(served):
    from hashmatch.server.client import signal, video_signal

    pb = signal("pdq", H[3], quality=70, expires_at=FUTURE)
    assert pb.hash.quality == 70 and pb.expires_at == FUTURE
    assert not signal("pdq", H[3]).HasField("expires_at")
    assert video_signal([H[0]], expires_at=PAST).expires_at == PAST
    client = served.client()
    client.ingest("helpers", [signal("pdq", H[3], quality=70, expires_at=PAST)])
    (stored,) = served.engine.store.signals(list_name="helpers")
    assert (stored.quality, stored.expires_at) == (70, pytest.approx(PAST))


def test_resending_a_retracted_signal_says_it_stays_retracted(served):
    client = served.client()
    client.ingest("ret", [_signal(H[2])])
    client.retract("ret", hashes=[("pdq", H[2])])
    reply = client.ingest("ret", [_signal(H[2])])
    assert reply.still_retracted == 1 and not _matched(client, H[2], "ret")
    assert list(reply.still_retracted_targets) == [f"pdq:{H[2]}"]  # which one, to restore


def test_still_retracted_targets_stop_at_20_across_the_stream(served):
    client = served.client()
    codes = [f"{i:064x}" for i in range(1, 31)]
    client.ingest("ret30", [_signal(h) for h in codes])
    assert client.retract("ret30", hashes=[("pdq", h) for h in codes]).retracted == 30
    reply = client.ingest("ret30", [_signal(h) for h in codes], batch_size=7)  # 5 messages
    assert reply.still_retracted == 30
    assert list(reply.still_retracted_targets) == [f"pdq:{h}" for h in codes[:20]]


def test_remote_ingest_keeps_the_files_expiry(served, tmp_path):
    path = tmp_path / "r.csv"
    path.write_text(
        "signal_type,signal_value,expires_at\n"
        f"pdq,{H[0]},2001-01-01T00:00:00Z\npdq,{H[1]},2999-01-01\n"
    )
    result = CliRunner().invoke(
        cli, ["remote", "--server", served.target, "ingest", "rem", str(path)],
        catch_exceptions=False,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    client = served.client()
    assert not _matched(client, H[0], "rem") and _matched(client, H[1], "rem")


def test_this_server_marks_its_replies_and_the_client_warns_on_an_older_one(served):
    """An older server ignores Signal.expires_at; its replies lack still_retracted, and
    the client says so instead of letting expiries vanish silently."""
    import warnings
    from concurrent import futures

    from hashmatch.server.client import HashmatchClient, signal
    from hashmatch.v1 import signals_pb2_grpc

    client = served.client()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        reply = client.ingest("marks", [signal("pdq", H[0], expires_at=FUTURE)])
    assert reply.HasField("still_retracted")
    (listed,) = [x for x in client.list_hash_lists().lists if x.name == "marks"]
    assert listed.HasField("expired_count")

    class OlderServer(signals_pb2_grpc.SignalsServicer):  # replies as 643b32d's did
        def Ingest(self, request_iterator, context):
            return signals_pb2.IngestResponse(added=sum(len(r.signals) for r in request_iterator))

    old = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    signals_pb2_grpc.add_SignalsServicer_to_server(OlderServer(), old)
    port = old.add_insecure_port("127.0.0.1:0")
    old.start()
    try:
        with HashmatchClient(f"127.0.0.1:{port}", retries=0) as legacy:
            with pytest.warns(UserWarning, match="predates Signal.expires_at"):
                legacy.ingest("x", [signal("pdq", H[0], expires_at=FUTURE)])
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # no expiry sent: nothing to warn about
                assert legacy.ingest("x", [signal("pdq", H[0])]).added == 1
    finally:
        old.stop(0)
