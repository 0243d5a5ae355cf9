"""The client as an upload pipeline uses it, over a real socket: calls without a
deadline, retries through a restart or an index load, ingest progress on failure,
large retractions, PEM text for TLS."""

from __future__ import annotations

import contextlib
import datetime
import shutil
import socket
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status
from tcp_proxy import CuttableProxy

from hashmatch.server.client import HashmatchClient, match_request, signal, video_signal
from hashmatch.server.testing import held_engine, running_server, self_signed_cert
from hashmatch.v1 import matcher_pb2, matcher_pb2_grpc


def _hexes(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [row.tobytes().hex() for row in rng.integers(0, 256, (n, 32), dtype=np.uint8)]


def test_calls_without_a_deadline_succeed_while_lookups_overlap(tmp_path):
    """grpcio's "no deadline" is a huge remaining time; waiting on it overflowed
    (OverflowError -> INTERNAL) whenever a lookup queued behind another."""
    stored = _hexes(50, seed=1)
    with running_server(tmp_path) as ts:
        writer = ts.client()
        writer.ingest("pipeline", [signal("pdq", h, external_id=h[:8]) for h in stored])
        client = ts.client(timeout=None)  # no deadline at all, as a long-lived pipeline
        errors: list[str] = []
        wrong = [0]

        def unary(k: int) -> None:
            for j in range(100):
                h = stored[(k * 100 + j) % len(stored)]
                try:
                    reply = client.match([("pdq", h)], threshold=0)
                except grpc.RpcError as exc:
                    errors.append(f"unary {exc.code().name}: {exc.details()}")
                    continue
                if [m.distance for m in reply.results[0].matches] != [0]:
                    wrong[0] += 1

        def stream(k: int) -> None:
            ids = [f"s{k}-{j}" for j in range(200)]
            requests = (
                client.match_request([("pdq", stored[j % len(stored)])], threshold=0, request_id=i)
                for j, i in enumerate(ids)
            )
            try:
                replies = list(client.match_stream(requests, timeout=None))
            except grpc.RpcError as exc:
                errors.append(f"stream {exc.code().name}: {exc.details()}")
                return
            if [r.request_id for r in replies] != ids:
                wrong[0] += 1
            wrong[0] += sum(len(r.results[0].matches) != 1 for r in replies)

        threads = [threading.Thread(target=unary, args=(k,)) for k in range(4)]
        threads += [threading.Thread(target=stream, args=(k,)) for k in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert wrong[0] == 0


def test_a_call_with_a_deadline_rides_out_a_slow_index_load(tmp_path):
    """The index loads for longer than a few retries last (before: ~1.5 s, whatever
    the deadline): a call with a 10 s deadline keeps retrying UNAVAILABLE until served."""
    gate = threading.Event()
    with running_server(tmp_path, engine_factory=held_engine(gate), wait=False) as ts:
        client = ts.client(timeout=10)  # default retries and backoff
        assert client.health() == "NOT_SERVING"
        opener = threading.Timer(2.0, gate.set)
        opener.start()
        started = time.monotonic()
        try:
            reply = client.match([("pdq", _hexes(1, seed=2)[0])])
        finally:
            opener.cancel()
            gate.set()
        assert len(reply.results) == 1
        assert time.monotonic() - started >= 1.8  # it waited for the load, not errored


def test_a_closed_port_is_retried_until_the_deadline_then_unavailable(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens once closed
    hashes = [("pdq", _hexes(1, seed=3)[0])]
    with HashmatchClient(f"127.0.0.1:{port}", timeout=1.0, backoff=0.02) as client:
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as err:
            client.match(hashes)
        assert err.value.code() is grpc.StatusCode.UNAVAILABLE  # not DEADLINE_EXCEEDED
        # 4 retries of 0.02 doubling are over in ~0.3 s: it went on until the deadline
        assert time.monotonic() - started >= 0.8
    with HashmatchClient(f"127.0.0.1:{port}", timeout=None, retries=2) as no_deadline:
        with pytest.raises(grpc.RpcError) as err:  # a count, so it cannot hang
            no_deadline.match(hashes)
        assert err.value.code() is grpc.StatusCode.UNAVAILABLE


def test_a_server_back_after_an_outage_is_reached_within_a_calls_deadline(tmp_path):
    """gRPC reconnects on its own schedule (tries ~1, 2.6, 5.2, 9.3 s... into an outage,
    each gap 1.6x the last, +-20%) and fails every call at once until its next try. The
    outage here ends just after the first try 7 s in (gRPC's 4th), when its next is
    >= 5.2 s away (after a 15 s outage it was ~13 s away): a call with a 5 s deadline
    failed with UNAVAILABLE against a serving server."""
    with running_server(tmp_path) as ts:
        proxy = CuttableProxy(("127.0.0.1", ts.server.port))
        proxy.closed = True  # the server is down: connections are dropped on arrival
        with HashmatchClient(proxy.target, timeout=30) as client:
            pipeline = threading.Thread(target=client.list_hash_lists)  # retries meanwhile
            pipeline.start()
            while not proxy.refused or proxy.refused[-1] - proxy.refused[0] < 7.0:
                time.sleep(0.005)
            proxy.closed = False  # the server is back
            assert list(client.list_hash_lists(timeout=5.0).lists) == []  # a fresh store
            pipeline.join()


def _ingest_through(target: str, box: dict, client_options: dict, *args, **kwargs):
    """``ingest(*args, **kwargs)`` through ``target`` on a thread of its own (started and
    returned): its reply lands in ``box["reply"]``, its RpcError in ``box["error"]``."""

    def run() -> None:
        with HashmatchClient(target, **client_options) as client:
            try:
                box["reply"] = client.ingest(*args, **kwargs)
            except grpc.RpcError as exc:
                box["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def _stored(client: HashmatchClient, list_name: str) -> int:
    return {x.name: x.signal_count for x in client.list_hash_lists().lists}.get(list_name, 0)


def _settled_count(ts, client: HashmatchClient, list_name: str) -> int:
    """The list's count once the server has stopped storing: no handler of the cut
    stream still running (two equal counts 0.3 s apart are not enough on a loaded
    machine, where one batch can take longer than that)."""
    inflight = ts.server.host.metrics.registry.get_sample_value
    deadline = time.monotonic() + 30
    while inflight("hashmatch_inflight_rpcs") > 0:
        assert time.monotonic() < deadline, "the cut ingest stream never finished"
        time.sleep(0.02)
    return _stored(client, list_name)


def test_an_ingest_cut_mid_stream_reports_an_upper_bound_and_a_resend_is_safe(tmp_path):
    """The connection drops after some messages were stored; the retries find nothing
    listening and fail early. ``signals_sent`` stays the most any attempt sent (before:
    the last attempt's, 0 or 1000, below what was stored)."""
    signals = [signal("pdq", h) for h in _hexes(40_000, seed=4)]
    with running_server(tmp_path) as ts:
        direct = ts.client()
        proxy = CuttableProxy(("127.0.0.1", ts.server.port))
        box: dict = {}
        options = {"timeout": 1.0, "backoff": 0.05}
        pipeline = _ingest_through(proxy.target, box, options, "cut", signals, batch_size=1000)
        while _stored(direct, "cut") < 3000:
            time.sleep(0.01)
        proxy.cut()
        pipeline.join()
        error = box["error"]
        assert error.code() is grpc.StatusCode.UNAVAILABLE
        stored = _settled_count(ts, direct, "cut")
        assert 3000 <= stored <= error.signals_sent <= error.signals_total == len(signals)
        again = direct.ingest("cut", signals)  # from the first signal: nothing doubles
        assert (again.added, again.unchanged) == (len(signals) - stored, stored)
        assert _stored(direct, "cut") == len(signals)


def test_a_streamed_ingest_reads_its_source_again_on_retry(tmp_path):
    """A callable source is streamed (nothing buffered) and called afresh for the retry
    after a dropped connection: every signal ends up stored, none twice."""
    hexes = _hexes(60_000, seed=6)
    calls = [0]

    def source():
        calls[0] += 1
        return (signal("pdq", h) for h in hexes)

    with running_server(tmp_path) as ts:
        direct = ts.client()
        proxy = CuttableProxy(("127.0.0.1", ts.server.port))
        box: dict = {}
        options = {"timeout": 5.0, "backoff": 0.05}
        pipeline = _ingest_through(
            proxy.target, box, options, "streamed", source, total=len(hexes), batch_size=1000
        )
        while _stored(direct, "streamed") < 3000:
            time.sleep(0.01)
        proxy.drop()
        pipeline.join(120)
        reply = box["reply"]
        assert calls[0] == 2  # read again from the first signal, not replayed from memory
        assert reply.added + reply.unchanged == len(hexes) and reply.unchanged >= 3000
        assert _settled_count(ts, direct, "streamed") == len(hexes)


def test_an_ingest_retried_is_not_failed_by_what_the_abandoned_attempts_source_raises(tmp_path):
    """The sync client's first attempt is cut while gRPC's thread is inside the
    caller's source; the retry reads a fresh source and succeeds. The abandoned source
    then raises (its reader was cut off, say): before, the successful call raised that
    exception, as if the new attempt's source had failed."""
    hexes = _hexes(2, seed=15)
    resumed, raised = threading.Event(), threading.Event()
    attempts: list[int] = []

    def abandoned():
        yield signal("pdq", hexes[0])
        proxy.drop()  # the call fails UNAVAILABLE; this thread is still in the source
        resumed.wait(30)
        raised.set()
        raise RuntimeError("the abandoned attempt's reader was closed")

    def fresh():
        resumed.set()
        raised.wait(30)
        yield from (signal("pdq", h) for h in hexes)

    def source():
        attempts.append(1)
        return abandoned() if len(attempts) == 1 else fresh()

    with running_server(tmp_path) as ts:
        proxy = CuttableProxy(("127.0.0.1", ts.server.port))
        with HashmatchClient(proxy.target, timeout=30) as client:
            reply = client.ingest("cut", source, total=2, batch_size=1)
    assert len(attempts) == 2 and reply.added + reply.unchanged == 2


def test_an_ingest_refused_for_a_busy_stream_slot_is_retried(tmp_path):
    """Two workers = one request-stream slot, held by an ingest whose source waits. A
    second ingest is refused (RESOURCE_EXHAUSTED, "retry with backoff", now marked with
    a RetryInfo) and retried until the slot is free; before, it failed at once: 4 of 12
    pipeline threads sharing a client at the default 16 slots (8 a tenant) failed so."""
    hexes = _hexes(3, seed=12)
    gate = threading.Event()
    box: dict = {}

    def waiting_source():
        yield signal("pdq", hexes[0])
        gate.wait(30)
        yield signal("pdq", hexes[1])

    with running_server(tmp_path, workers=2) as ts:
        client = ts.client(timeout=30)
        sample = ts.server.host.metrics.registry.get_sample_value

        def run(name: str, source) -> None:
            box[name] = client.ingest(name, source, total=2, batch_size=1)

        holder = threading.Thread(target=run, args=("held", waiting_source))
        holder.start()
        while not sample("hashmatch_inflight_rpcs"):
            time.sleep(0.01)
        second = threading.Thread(target=run, args=("waiting", [signal("pdq", hexes[2])]))
        second.start()
        refused = {"method": "Ingest", "code": "RESOURCE_EXHAUSTED"}
        while not sample("hashmatch_requests_total", refused):
            time.sleep(0.01)
        gate.set()  # the slot frees once the held ingest ends
        holder.join()
        second.join()
        assert box["held"].added == 2
        assert box["waiting"].added == 1


class _Overloaded(matcher_pb2_grpc.MatcherServicer):
    """A Matcher that refuses its first ``refusals`` calls as momentarily overloaded,
    asking (RetryInfo) for ``delay`` seconds before a retry, then answers."""

    def __init__(self, delay: float, refusals: int):
        self.delay, self.refusals, self.calls = delay, refusals, 0

    def Match(self, request, context):
        self.calls += 1
        if self.calls > self.refusals:
            return matcher_pb2.MatchResponse(request_id=request.request_id)
        status = status_pb2.Status(code=grpc.StatusCode.RESOURCE_EXHAUSTED.value[0], message="busy")
        wait = duration_pb2.Duration()
        wait.FromTimedelta(datetime.timedelta(seconds=self.delay))
        status.details.add().Pack(error_details_pb2.RetryInfo(retry_delay=wait))
        context.abort_with_status(rpc_status.to_status(status))


def test_a_retry_info_delay_longer_than_the_deadline_leaves_is_raised_not_retried_early(tmp_path):
    """A server asking for 5 s before a retry, a call with 1 s: before, both clients
    waited out the second and retried 50 ms before the deadline, 4 s sooner than asked
    (a second refusal, later); now the refusal is raised at once. A delay that fits is
    waited for and retried."""
    import asyncio

    from hashmatch.server.aio_client import AsyncHashmatchClient

    async def aio_match(target: str, **options):
        async with AsyncHashmatchClient(target, **options) as aio:
            return await aio.match([("pdq", "0" * 64)], request_id="r")

    def sync_match(target: str, **options):
        with HashmatchClient(target, **options) as client:
            return client.match([("pdq", "0" * 64)], request_id="r")

    for run in (sync_match, lambda *a, **k: asyncio.run(aio_match(*a, **k))):
        for delay, refusals, calls in ((5.0, 9, 1), (0.2, 1, 2)):
            servicer = _Overloaded(delay, refusals)
            server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
            matcher_pb2_grpc.add_MatcherServicer_to_server(servicer, server)
            target = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
            server.start()
            try:
                if refusals > calls:
                    with pytest.raises(grpc.RpcError) as refused:
                        run(target, timeout=1.0)
                    assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
                else:
                    assert run(target, timeout=1.0).request_id == "r"
            finally:
                server.stop(0)
            assert servicer.calls == calls


def test_a_streamed_ingest_of_unknown_length_is_retried_after_the_client_timeout(tmp_path):
    """A callable source without ``total`` streams with no deadline, but its retries had
    the client's timeout from the call's start as theirs: cut after streaming for
    longer (a restart), it was not retried at all. Now it re-sends, as one with a total
    does, for up to the client timeout after the failure."""
    hexes = _hexes(10, seed=13)
    gate = threading.Event()
    calls = [0]

    def source():
        calls[0] += 1
        for n, h in enumerate(hexes):
            if n == 5 and calls[0] == 1:
                gate.wait(30)  # a slow feed: longer than the client timeout
            yield signal("pdq", h)

    with running_server(tmp_path) as ts:
        direct = ts.client()
        proxy = CuttableProxy(("127.0.0.1", ts.server.port))
        box: dict = {}
        pipeline = _ingest_through(
            proxy.target, box, {"timeout": 1.0}, "feed", source, batch_size=1
        )
        while _stored(direct, "feed") < 5:
            time.sleep(0.01)
        time.sleep(1.5)  # streaming for longer than the client timeout
        proxy.drop()  # the server restarts
        gate.set()
        pipeline.join(60)
        assert "error" not in box, box
        assert calls[0] == 2 and box["reply"].added + box["reply"].unchanged == len(hexes)


def test_strict_ingest_refuses_one_message_not_the_whole_call(tmp_path):
    """Documented: ``strict`` is per message of ``batch_size``; the messages before the
    bad one are stored."""
    hexes = _hexes(3000, seed=5)
    hexes[2500] = "not-a-hash"
    with running_server(tmp_path) as ts:
        client = ts.client()
        with pytest.raises(grpc.RpcError) as err:
            client.ingest("strict", [signal("pdq", h) for h in hexes], strict=True)
        assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "signals[2500]" in err.value.details()
        assert _stored(client, "strict") == 2000


def test_ingest_of_long_videos_splits_messages_by_size_not_only_count(tmp_path):
    """300 ten-minute vPDQ videos (600 frames, ~43 KB each) at the default batch_size
    were one 12.8 MB message, over this server's 10 MiB max_message_bytes: the whole
    call was refused. A message is now sent once it holds 8 MiB."""
    rng = np.random.default_rng(8)
    frames = [_hexes(600, seed=100 + k) for k in range(300)]
    videos = [
        video_signal(f, qualities=rng.integers(50, 101, 600).tolist(), external_id=f"v{k}")
        for k, f in enumerate(frames)
    ]
    with running_server(tmp_path, max_message_bytes=10 * 1024 * 1024) as ts:
        client = ts.client()
        reply = client.ingest("videos", videos)
        assert (reply.added, reply.rejected) == (300, 0)
        assert _stored(client, "videos") == 300


def test_retract_splits_more_targets_than_the_servers_max_batch(tmp_path):
    """Over 10,000 targets (the server's max_batch) in one call: sent as requests of
    ``batch_size``, replies summed (before: INVALID_ARGUMENT for the whole call)."""
    hexes = _hexes(10_500, seed=6)
    unknown = _hexes(20, seed=7)
    missing_ids = list(range(10**9, 10**9 + 1500))
    with running_server(tmp_path) as ts:
        client = ts.client()
        client.ingest("big", [signal("pdq", h) for h in hexes], batch_size=5000)
        reply = client.retract(
            "big",
            hashes=[("pdq", h) for h in hexes + unknown],
            signal_ids=missing_ids,
            reason="partner retraction",
        )
        assert reply.retracted == len(hexes)
        assert reply.not_found_total == len(unknown) + len(missing_ids)
        assert len(reply.not_found) == 1000  # the first 1000, as one reply lists
        assert set(reply.not_found[:20]) == {f"pdq:{h}" for h in unknown}
        assert _stored(client, "big") == 0
        again = client.retract("big", hashes=[("pdq", h) for h in hexes[:30]], batch_size=7)
        assert again.retracted == 0 and again.not_found_total == 0  # idempotent


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI for certs")
def test_tls_material_given_as_pem_text(tmp_path):
    """Certificates and key as str PEM text (read from a file or a secret store), not
    paths: before, the text was taken as a file name (FileNotFoundError)."""
    server_key, server_cert = self_signed_cert(tmp_path, "server")
    client_key, client_cert = self_signed_cert(tmp_path, "client")
    with running_server(
        tmp_path / "data",
        tls_cert=server_cert,
        tls_key=server_key,
        tls_client_ca=client_cert,
    ) as ts:
        client = ts.client(
            root_certificates=Path(server_cert).read_text(),
            client_cert=Path(client_cert).read_text(),
            client_key=Path(client_key).read_text(),
            retries=0,
        )
        assert list(client.list_hash_lists().lists) == []  # a fresh store
        assert client.health() == "SERVING"
        # as OpenSSL exports it from a PKCS#12 bundle: attribute lines before the armour
        bagged = "Bag Attributes\n    friendlyName: clé serveur\n" + Path(server_cert).read_text()
        other = ts.client(
            root_certificates=bagged,
            client_cert=Path(client_cert).read_text(),
            client_key=Path(client_key).read_text(),
            retries=0,
        )
        assert other.health() == "SERVING"


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI for certs")
def test_the_tls_hint_is_for_connections_never_made_not_for_cut_ones(tmp_path):
    """ "Socket closed" was read as a TLS mismatch even when a working connection was
    cut (a restart, a proxy): only a connection that never came up hints at TLS."""
    from hashmatch.server.client import tls_hint

    key, cert = self_signed_cert(tmp_path, "server")
    tls_server = running_server(tmp_path / "tls", tls_cert=cert, tls_key=key)
    with tls_server as ts, pytest.raises(grpc.RpcError) as plain_to_tls:
        HashmatchClient(ts.target, retries=0, timeout=3).list_hash_lists()
    with running_server(tmp_path / "plain") as ts:
        with pytest.raises(grpc.RpcError) as tls_to_plain:
            HashmatchClient(ts.target, retries=0, timeout=3, root_certificates=cert).stats()
        proxy = CuttableProxy(("127.0.0.1", ts.server.port))
        with HashmatchClient(proxy.target, retries=0) as client, _held_open() as held:
            request = client.match_request([("pdq", _hexes(1, seed=8)[0])])
            stream = client.match_stream(held([request]))
            next(stream)
            proxy.drop()
            with pytest.raises(grpc.RpcError) as cut:
                next(stream)
    assert "Socket closed" in plain_to_tls.value.details()
    assert "TLS mismatch?" in tls_hint(plain_to_tls.value.details())
    assert "TLS mismatch?" in tls_hint(tls_to_plain.value.details())
    assert cut.value.code() is grpc.StatusCode.UNAVAILABLE
    assert "Socket closed" in cut.value.details() and tls_hint(cut.value.details()) == ""


@contextlib.contextmanager
def _held_open():
    """``held(requests)``: a request stream that yields ``requests`` and then stays open
    (neither sends nor ends) until the ``with`` block is left, as a pipeline's stream
    between uploads."""
    done = threading.Event()

    def held(requests):
        yield from requests
        done.wait(60)

    try:
        yield held
    finally:
        done.set()


def test_match_splits_more_hashes_than_the_servers_max_batch(tmp_path):
    """25,000 hashes and 12,050 video frames in one call, over the server's max_batch
    (10,000): sent as parts, their replies merged into exactly the reply of one request
    (each source's indexes, query_index); before, INVALID_ARGUMENT for the whole call."""
    import asyncio
    import io

    from PIL import Image
    from skimage import data

    from hashmatch.server.aio_client import AsyncHashmatchClient

    hexes = [("pdq", h) for h in _hexes(25_000, seed=9)]
    frames = _hexes(12_050, seed=10)
    videos = [frames[:6000], frames[6000:6050], frames[6050:]]  # vPDQ of 2 or 3 requests
    photo = io.BytesIO()
    Image.fromarray(data.camera()).save(photo, "PNG")
    query = dict(media=[photo.getvalue()], videos=videos, request_id="r1")
    with running_server(tmp_path / "big", max_batch=50_000) as ts:
        client = ts.client()
        (computed,) = client.hash([photo.getvalue()]).items[0].hashes
        known = [*(h for _pdq, h in hexes[7::2500]), computed.hex[0]]  # every part; the photo
        client.ingest("partner", [signal("pdq", h) for h in known])
        client.ingest("partner", [video_signal(videos[1])])
        one = ts.client(max_batch=50_000).match(hexes, **query)  # one request

        split = client.match(hexes, **query)  # parts of 10,000

        async def split_async():
            async with AsyncHashmatchClient(ts.target, max_batch=7000) as aio:
                return await aio.match(hexes, **query)

        assert split == one and asyncio.run(split_async()) == one
    found = [(r.source, r.index, [m.query_index for m in r.matches]) for r in one.results]
    hits = [f for f in found if f[2]]
    assert len(one.results) == 25_000 + 1 + 3 and one.request_id == "r1"
    assert hits[:10] == [(1, i, [i]) for i in range(7, 25_000, 2500)]  # SOURCE_HASH
    assert hits[10:] == [(2, 0, [25_000]), (3, 1, [25_002])]  # the photo, video 1


def test_a_server_with_a_lower_max_batch_says_how_to_set_the_clients(tmp_path):
    """The server does not advertise its max_batch: a client sending more than it takes
    says how to set the client's; a split call's error says where its indexes start."""
    import asyncio

    from hashmatch.server.aio_client import AsyncHashmatchClient
    from hashmatch.server.errors import bad_request_fields

    hexes = [("pdq", h) for h in _hexes(7000, seed=11)]
    with running_server(tmp_path, max_batch=5000) as ts:
        with pytest.raises(grpc.RpcError) as refused:
            ts.client().match(hexes)
        assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "make the client with max_batch=5000" in "\n".join(refused.value.__notes__)
        client = ts.client(max_batch=5000)
        assert len(client.match(hexes).results) == 7000
        hexes[6001] = ("pdq", "zz")
        with pytest.raises(grpc.RpcError) as bad:
            client.match(hexes)  # the server names hashes[1001] of the second request
        assert "hashes[1001]" in bad.value.details()
        assert "this one held hashes[5000:7000]" in "\n".join(bad.value.__notes__)
        # bad_request_fields counts in the whole call, as the merged reply's indexes do
        # (it said hashes[1001].hex: a pipeline dropping that item dropped a good one)
        frames = _hexes(5, seed=14)
        videos = [frames] * 1000 + [[*frames[:4], "zz"]]  # video 1000, in the second part
        expected = [("hashes[6001].hex", "pdq hash must be 64 hex characters, got 2")]
        with pytest.raises(grpc.RpcError) as bad_video:
            client.match(hexes[:6000], videos=videos)
        ((field, _),) = bad_request_fields(bad_video.value)

        async def aio_refusal():
            async with AsyncHashmatchClient(ts.target, max_batch=5000) as aio:
                with pytest.raises(grpc.RpcError) as refused:
                    await aio.match(hexes)
                return refused.value

        assert bad_request_fields(bad.value) == expected
        assert bad_request_fields(asyncio.run(aio_refusal())) == expected
        assert field.startswith("videos[1000]")


def test_a_match_stream_on_a_silently_dropped_connection_fails_instead_of_hanging(tmp_path):
    """A network that drops a connection without a word (no FIN, no RST: a NAT or
    firewall forgetting it) left a match_stream with no deadline waiting forever; the
    client's keepalive pings go unanswered and the stream fails UNAVAILABLE. (The 30 s
    join only keeps the old code's hang from hanging the test.)"""
    with running_server(tmp_path, min_client_ping_seconds=0.2) as ts:
        proxy = CuttableProxy(("127.0.0.1", ts.server.port))
        client = HashmatchClient(proxy.target, timeout=None, keepalive=0.5, keepalive_timeout=0.5)
        with client, _held_open() as held:
            request = client.match_request([("pdq", _hexes(1, seed=12)[0])])
            stream = client.match_stream(held([request]))
            next(stream)
            proxy.blackhole()
            box: dict = {}
            reader = threading.Thread(target=_next_reply, args=(stream, box), daemon=True)
            reader.start()
            reader.join(30)
            assert "error" in box, "the stream still waits for a reply after 30 s"
    assert box["error"].code() is grpc.StatusCode.UNAVAILABLE


def _next_reply(stream, box: dict) -> None:
    try:
        box["reply"] = next(stream)
    except grpc.RpcError as exc:
        box["error"] = exc


def test_an_idle_match_stream_is_not_closed_for_its_clients_keepalive_pings(tmp_path):
    """gRPC's server default allows a ping every 5 minutes while no data flows and
    closes the connection after 2 sooner ("too many pings"): a healthy idle stream of a
    client with keepalive died (here after ~5 s). Here 6 s idle, pings every 1 s (gRPC's
    client sends none more often)."""
    gate = threading.Event()
    with running_server(tmp_path, min_client_ping_seconds=0.5) as ts:
        client = ts.client(timeout=None, keepalive=1, keepalive_timeout=5)
        request = client.match_request([("pdq", _hexes(1, seed=13)[0])], request_id="later")

        def requests():
            yield request
            gate.wait(30)
            yield request

        with _held_open() as held:
            stream = client.match_stream(held(requests()))
            next(stream)
            time.sleep(6)  # idle: only pings on the connection
            gate.set()
            assert next(stream).request_id == "later"


def test_the_server_frees_the_stream_of_a_client_that_vanished_without_a_word(tmp_path):
    """A client whose connection a network dropped silently (no FIN, no RST) and that
    sends no keepalive of its own: its open MatchStream held a request-stream slot for
    hours (gRPC's server pings every 2 h). The server's own pings go unanswered, it
    closes the connection, and the slot is free again."""
    with running_server(tmp_path, keepalive_seconds=0.5, keepalive_timeout_seconds=0.5) as ts:
        slots = ts.server.host.slots
        proxy = CuttableProxy(("127.0.0.1", ts.server.port))
        client = HashmatchClient(proxy.target, timeout=None, keepalive=None)
        with client, _held_open() as held:
            stream = client.match_stream(held([client.match_request([("pdq", "0" * 64)])]))
            next(stream)
            assert slots._used == 1  # the open stream holds its slot
            proxy.blackhole()
            deadline = time.monotonic() + 30
            while slots._used and time.monotonic() < deadline:
                time.sleep(0.1)
            assert slots._used == 0, "the vanished client's stream still holds its slot"


def test_client_keepalive_settings_are_checked(tmp_path):
    """keepalive=0 pinged every millisecond (the server closed the connection "too many
    pings"); now 0 is off, as the server's keepalive_seconds, and a timeout that is not a
    positive number of seconds is refused (inf raised OverflowError)."""
    from hashmatch.server.client_shared import keepalive_options

    assert keepalive_options(0, 20) == [] == keepalive_options(None, 20)
    for keepalive, timeout in ((-1, 20), (30, 0), (30, float("inf")), (float("nan"), 20)):
        with pytest.raises(ValueError, match="must be a positive number of seconds"):
            HashmatchClient("127.0.0.1:1", keepalive=keepalive, keepalive_timeout=timeout)
    with running_server(tmp_path) as ts, HashmatchClient(ts.target, keepalive=0) as client:
        assert client.list_hash_lists().lists == []  # a working channel without pings


def test_a_large_backoff_still_waits_at_most_two_seconds_between_tries():
    """The client's doc says retries pause 'at most 2 s', but a backoff above it was used
    as is for the first retry and for the channel's first reconnect."""
    from hashmatch.server.client_shared import MAX_BACKOFF, Attempts, reconnect_options

    assert dict(reconnect_options(30.0))["grpc.initial_reconnect_backoff_ms"] == 2000
    attempts = Attempts(None, 3, 30.0)
    unavailable = grpc.RpcError()
    unavailable.code = lambda: grpc.StatusCode.UNAVAILABLE  # the status a retry needs
    with attempts:
        raise unavailable
    assert 0 < attempts.pause <= MAX_BACKOFF * 1.1


def _stream_requests(client: HashmatchClient, hexes: list[str]) -> list[matcher_pb2.MatchRequest]:
    """Three requests, the second of all ``hexes`` (over a max_batch of 100)."""
    return [
        client.match_request([("pdq", h) for h in hexes[:3]], request_id="a"),
        client.match_request([("pdq", h) for h in hexes], request_id="big"),
        client.match_request([("pdq", hexes[230])], request_id="c"),
    ]


def test_match_stream_splits_a_request_over_max_batch_and_answers_in_order(tmp_path):
    """A streamed request of 250 hashes, over the server's max_batch of 100: sent as 3
    messages and answered as one, in its place (before, INVALID_ARGUMENT for the whole
    stream); a bad hash in its third message is named in the caller's requests, as a
    split ``match`` names it in the whole call."""
    import asyncio

    from hashmatch.server.aio_client import AsyncHashmatchClient
    from hashmatch.server.errors import bad_request_fields

    hexes = _hexes(250, seed=20)
    with running_server(tmp_path, max_batch=100) as ts:
        client = ts.client(max_batch=100)
        client.ingest("partner", [signal("pdq", h) for h in (hexes[5], hexes[230])])
        requests = _stream_requests(client, hexes)
        expected = [client.match(r.hashes, request_id=r.request_id) for r in requests]
        streamed = list(client.match_stream(iter(requests)))
        bad = client.match_request([("pdq", h) for h in [*hexes[:230], "zz", *hexes[231:]]])
        with pytest.raises(grpc.RpcError) as refused:
            list(client.match_stream([requests[0], bad, requests[2]]))

        async def aio_stream():
            async with AsyncHashmatchClient(ts.target, max_batch=100) as aio:
                return [reply async for reply in aio.match_stream(requests)]

        assert streamed == expected and asyncio.run(aio_stream()) == expected
    assert [r.request_id for r in streamed] == ["a", "big", "c"]
    hits = [(r.index, [m.query_index for m in r.matches]) for r in streamed[1].results if r.matches]
    assert hits == [(5, [5]), (230, [230])]
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.results_delivered == 1
    expected_field = ("stream[1].hashes[230].hex", "pdq hash must be 64 hex characters, got 2")
    assert bad_request_fields(refused.value) == [expected_field]


def test_a_match_stream_refused_for_a_busy_stream_slot_is_retried(tmp_path):
    """Two workers = one request-stream slot, held by an open match_stream. Another
    stream is refused (RESOURCE_EXHAUSTED with a RetryInfo) after gRPC read its first
    requests from the caller's iterator; it is retried once the slot is free, those
    requests sent again, and every reply comes, in order (before, the refusal was
    raised: requests already read could not be retried)."""
    import asyncio

    from hashmatch.server.aio_client import AsyncHashmatchClient

    hexes = _hexes(250, seed=21)
    refused = {"method": "MatchStream", "code": "RESOURCE_EXHAUSTED"}
    with running_server(tmp_path, workers=2, max_batch=100) as ts:
        client = ts.client(max_batch=100, timeout=30)
        client.ingest("partner", [signal("pdq", h) for h in (hexes[5], hexes[230])])
        requests = _stream_requests(client, hexes)
        expected = [client.match(r.hashes, request_id=r.request_id) for r in requests]
        sample = ts.server.host.metrics.registry.get_sample_value

        def refusals() -> float:
            return sample("hashmatch_requests_total", refused) or 0.0

        def sync_stream() -> list:
            return list(client.match_stream(iter(requests), timeout=30))

        async def aio_stream() -> list:
            async with AsyncHashmatchClient(ts.target, max_batch=100) as aio:
                return [reply async for reply in aio.match_stream(iter(requests), timeout=30)]

        for run in (sync_stream, lambda: asyncio.run(aio_stream())):
            with futures.ThreadPoolExecutor(1) as pool, _held_open() as held:
                holder = client.match_stream(held([requests[0]]))
                next(holder)  # the holder's stream has the only slot
                before = refusals()
                streamed = pool.submit(run)
                while refusals() == before and not streamed.done():
                    time.sleep(0.01)
            holder.close()  # the slot is free once the held stream ends
            assert streamed.result() == expected
        assert refusals() >= 2


def test_a_split_match_keeps_to_one_deadline_for_all_its_parts(tmp_path):
    """``timeout`` is the whole call's budget, as a pipeline expects: a match of two
    parts over a link that makes each take 1.6 s fails at the second part with a 3.1 s
    timeout (before, each part had its own 3.1 s, and the call took 3.2 s+). Two parts
    take >= 3.2 s whatever the load; 3.1 s leaves the first part 1.5 s of slack."""
    import asyncio

    from hashmatch.server.aio_client import AsyncHashmatchClient

    hexes = [("pdq", h) for h in _hexes(150, seed=22)]
    with running_server(tmp_path) as ts:
        proxy = CuttableProxy(("127.0.0.1", ts.server.port))
        client = HashmatchClient(proxy.target, max_batch=100)

        async def aio_match():
            async with AsyncHashmatchClient(proxy.target, max_batch=100) as aio:
                await aio.list_hash_lists()  # connected before the link slows down
                proxy.delay = 1.6
                with pytest.raises(grpc.RpcError) as late:
                    await aio.match(hexes, timeout=3.1)
                proxy.delay = 0.0
                return late.value

        with client:
            client.list_hash_lists()
            proxy.delay = 1.6
            with pytest.raises(grpc.RpcError) as late:
                client.match(hexes, timeout=3.1)
            proxy.delay = 0.0
            errors = [late.value, asyncio.run(aio_match())]
    for error in errors:
        assert error.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        assert "this one held hashes[100:150]" in "\n".join(error.__notes__)


def test_a_split_retract_keeps_to_one_deadline_for_all_its_requests(tmp_path):
    """``retract``'s ``timeout`` is the whole call's budget, as ``match``'s: a retract of
    two requests over a link that makes each take 1.6 s fails at the second with a 3.1 s
    timeout, the first's retractions in ``retracted_before`` (before, each request had
    its own 3.1 s and the call took 3.2 s+); ``signal_states`` alike (sync client)."""
    import asyncio

    from hashmatch.server.aio_client import AsyncHashmatchClient

    hexes = _hexes(300, seed=24)
    with running_server(tmp_path) as ts:
        proxy = CuttableProxy(("127.0.0.1", ts.server.port))
        client = HashmatchClient(proxy.target)
        ts.client().ingest("partner", [signal("pdq", h) for h in hexes])

        async def aio_retract():
            async with AsyncHashmatchClient(proxy.target) as aio:
                await aio.list_hash_lists()  # connected before the link slows down
                proxy.delay = 1.6
                with pytest.raises(grpc.RpcError) as late:
                    targets = [("pdq", h) for h in hexes[150:]]
                    await aio.retract("partner", hashes=targets, batch_size=100, timeout=3.1)
                proxy.delay = 0.0
                return late.value

        with client:
            client.list_hash_lists()
            proxy.delay = 1.6
            with pytest.raises(grpc.RpcError) as late:
                targets = [("pdq", h) for h in hexes[:150]]
                client.retract("partner", hashes=targets, batch_size=100, timeout=3.1)
            with pytest.raises(grpc.RpcError) as states_late:
                client.signal_states(list(range(1, 151)), batch_size=100, timeout=3.1)
            proxy.delay = 0.0
            errors = [late.value, asyncio.run(aio_retract())]
    assert states_late.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    for error in errors:
        assert error.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        assert error.retracted_before.retracted == 100


def test_a_cut_match_stream_resends_only_what_was_not_answered(tmp_path):
    """A stream cut after its first reply (a restart, a proxy dropping the connection)
    while the caller's iterable waits inside its next request: retried on a new stream
    with the requests not answered, that one included (read by the failed stream's
    reader), never the answered one: the server looks 3 queries up for 3 requests.
    (The 0.5 s pause lets the retry begin while the iterable still waits.)"""
    import asyncio

    from hashmatch.server.aio_client import AsyncHashmatchClient

    hexes = _hexes(3, seed=23)
    gate = threading.Event()
    requests = [match_request([("pdq", h)], request_id=str(i)) for i, h in enumerate(hexes)]

    def sync_requests():
        yield requests[0]
        gate.wait(30)  # a pipeline waiting for its next upload
        yield from requests[1:]

    async def aio_cut(proxy: CuttableProxy) -> list:
        ready = asyncio.Event()

        async def aio_requests():
            yield requests[0]
            await ready.wait()
            for request in requests[1:]:
                yield request

        async with AsyncHashmatchClient(proxy.target, timeout=30) as aio:
            stream = aio.match_stream(aio_requests(), timeout=30)
            first = await anext(stream)
            proxy.drop()
            rest = asyncio.ensure_future(_collected(stream))
            await asyncio.sleep(0.5)
            ready.set()
            return [first, *await rest]

    looked_up = []
    with running_server(tmp_path) as ts, futures.ThreadPoolExecutor(1) as pool:
        ts.client().ingest("partner", [signal("pdq", h) for h in hexes])
        queries = ts.server.host.metrics.registry.get_sample_value
        proxy = CuttableProxy(("127.0.0.1", ts.server.port))
        with HashmatchClient(proxy.target, timeout=30) as client:
            stream = client.match_stream(sync_requests(), timeout=30)
            first = next(stream)
            proxy.drop()
            rest = pool.submit(list, stream)
            time.sleep(0.5)
            gate.set()
            replies = [[first, *rest.result()]]
        looked_up.append(queries("hashmatch_queries_total", {"signal_type": "pdq"}))
        replies.append(asyncio.run(aio_cut(CuttableProxy(("127.0.0.1", ts.server.port)))))
        looked_up.append(queries("hashmatch_queries_total", {"signal_type": "pdq"}))
    for answered in replies:
        assert [r.request_id for r in answered] == ["0", "1", "2"]
        assert [r.results[0].matches[0].hash_hex for r in answered] == hexes
    assert looked_up == [3, 6]


async def _collected(stream) -> list:
    return [reply async for reply in stream]
