"""/metrics as an operator reads it, over real sockets: streams are timed apart from
unary calls, refusals are counted but not timed, deleted lists lose their series."""

from __future__ import annotations

import json
import threading
import time
import urllib.request

import grpc
import pytest

from hashmatch.server.client import signal
from hashmatch.server.testing import access_log_line, held_engine, running_server
from hashmatch.v1 import common_pb2, matcher_pb2, signals_pb2, signals_pb2_grpc

ADMIN = {"admin": (["match", "write", "admin", "export"], True)}
READER = {"reader": (["match"], True)}
CODES = [f"{i + 1:064x}" for i in range(3)]


def _scrape(ts) -> dict[str, float]:
    """The /metrics page as sample name (with labels) -> value, over HTTP."""
    url = f"http://127.0.0.1:{ts.server.metrics_port}/metrics"
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }


def _wait_for(read, key: str, value: float, timeout: float = 5.0) -> dict[str, float]:
    """The server counts a call as its handler finishes, maybe after the client's reply."""
    deadline = time.monotonic() + timeout
    while True:
        samples = read()
        if samples.get(key) == value or time.monotonic() > deadline:
            return samples
        time.sleep(0.05)


def test_streams_are_timed_apart_from_unary_latency(tmp_path):
    """A stream's whole duration (a MatchStream held for hours) went into
    hashmatch_request_seconds with the unary calls, past its 10 s top bucket: every
    quantile of the histogram was the streams'. Now streams have their own histogram
    (long buckets), their messages a counter, and MatchStream's messages a latency."""
    with running_server(tmp_path, tenants=ADMIN, metrics_port=0) as ts:
        client = ts.client("admin", retries=0)
        client.ingest("a", [signal("pdq", c) for c in CODES])
        client.match([("pdq", CODES[0])], threshold=0)

        def requests():
            for code in CODES:
                yield matcher_pb2.MatchRequest(
                    hashes=[common_pb2.HashValue(signal_type="pdq", hex=code)]
                )
                time.sleep(0.2)  # the stream stays open ~0.6 s

        replies = list(client.matcher.MatchStream(requests(), metadata=client.metadata))
        assert len(replies) == 3
        assert len(list(client.changes())) >= 1
        key = 'hashmatch_stream_seconds_count{method="Changes"}'  # the last call
        samples = _wait_for(lambda: _scrape(ts), key, 1.0)

    assert samples['hashmatch_request_seconds_count{method="Match"}'] == 1.0
    (build,) = [key for key in samples if key.startswith("hashmatch_build_info{")]
    assert 'version="' in build and samples[build] == 1.0
    for method in ("MatchStream", "Ingest", "Changes"):
        assert f'hashmatch_request_seconds_count{{method="{method}"}}' not in samples, method
        assert samples[f'hashmatch_stream_seconds_count{{method="{method}"}}'] == 1.0, method
    assert samples['hashmatch_stream_seconds_sum{method="MatchStream"}'] >= 0.5
    assert samples['hashmatch_stream_seconds_bucket{le="86400.0",method="MatchStream"}'] == 1.0
    messages = 'hashmatch_stream_messages_total{{direction="{}",method="{}"}}'
    assert samples[messages.format("received", "MatchStream")] == 3.0
    assert samples[messages.format("sent", "MatchStream")] == 3.0
    assert samples[messages.format("received", "Ingest")] >= 1.0
    assert samples[messages.format("sent", "Changes")] >= 1.0
    per_message = samples['hashmatch_stream_message_seconds_count{method="MatchStream"}']
    assert per_message == 3.0
    # the lookups only, not the client's pauses between its messages (0.4 s in all)
    lookups = samples['hashmatch_stream_message_seconds_sum{method="MatchStream"}']
    assert samples['hashmatch_stream_seconds_sum{method="MatchStream"}'] - lookups >= 0.35


def test_refusals_are_counted_but_not_timed(tmp_path, caplog):
    """Calls refused before any work (no token, a role the token lacks, the index not
    loaded, a full queue) were observed in hashmatch_request_seconds at ~0 s (the
    no-token refusal at exactly 0.0, and logged "ms": 0.0): a flood of them made the
    latency quantiles look better the more the server refused. They are counted in
    hashmatch_requests_total by code, and the access log has their real time."""
    caplog.set_level("INFO", logger="hashmatch.access")
    gate = threading.Event()
    with running_server(
        tmp_path,
        tenants=ADMIN | READER,
        engine_factory=held_engine(gate),
        wait=False,
        metrics_port=0,
    ) as ts:
        sample = ts.server.host.metrics.registry.get_sample_value
        stranger = ts.client(None, retries=0)
        with pytest.raises(grpc.RpcError) as no_token:
            stranger.match([("pdq", CODES[0])], timeout=5)
        assert no_token.value.code() is grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as loading:
            ts.client("reader", retries=0).match([("pdq", CODES[0])], timeout=5)
        assert loading.value.code() is grpc.StatusCode.UNAVAILABLE
        gate.set()
        assert ts.server.wait_ready(60)
        with pytest.raises(grpc.RpcError) as role:
            ts.client("reader", retries=0).stats()
        assert role.value.code() is grpc.StatusCode.PERMISSION_DENIED
        ts.client("reader", retries=0).match([("pdq", CODES[0])], timeout=5)

        finished = ("hashmatch_requests_total", {"method": "Stats", "code": "PERMISSION_DENIED"})
        _wait_for(lambda: {"x": sample(*finished)}, "x", 1.0)
        assert sample("hashmatch_requests_total", {"method": "Match", "code": "UNAUTHENTICATED"})
        assert sample("hashmatch_requests_total", {"method": "Match", "code": "UNAVAILABLE"})
        # only the one call that was served is timed
        assert sample("hashmatch_request_seconds_count", {"method": "Match"}) == 1.0
        assert sample("hashmatch_request_seconds_count", {"method": "Stats"}) is None
        refused = access_log_line(caplog, "Match")
        assert refused["status"] == "UNAUTHENTICATED"
        assert refused["ms"] > 0.0


def test_a_full_request_stream_slot_is_a_refusal_not_a_latency(tmp_path):
    """RESOURCE_EXHAUSTED for a full slot is answered at once: counted, not timed."""
    with running_server(tmp_path, tenants=ADMIN, metrics_port=0, workers=2) as ts:
        client = ts.client("admin", retries=0)
        stub = signals_pb2_grpc.SignalsStub(grpc.insecure_channel(ts.target))
        hold = threading.Event()

        def slow():
            hold.wait(10)
            yield signals_pb2.IngestRequest(list_name="a", signals=[signal("pdq", CODES[0])])

        held = stub.Ingest.future(slow(), metadata=client.metadata)
        sample = ts.server.host.metrics.registry.get_sample_value
        _wait_for(lambda: {"x": sample("hashmatch_inflight_rpcs")}, "x", 1.0)
        with pytest.raises(grpc.RpcError) as full:
            stub.Ingest(iter([signals_pb2.IngestRequest(list_name="a")]),
                        metadata=client.metadata, timeout=5)  # fmt: skip
        assert full.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        hold.set()
        held.result(timeout=10)
        key = ("hashmatch_requests_total", {"method": "Ingest", "code": "OK"})
        _wait_for(lambda: {"x": sample(*key)}, "x", 1.0)
        assert sample("hashmatch_requests_total",
                      {"method": "Ingest", "code": "RESOURCE_EXHAUSTED"}) == 1.0  # fmt: skip
        assert sample("hashmatch_stream_seconds_count", {"method": "Ingest"}) == 1.0


def test_a_deleted_list_loses_its_match_series(tmp_path):
    """hashmatch_matches_total{list} kept the series of a deleted (or renamed) list at
    its last value for the life of the process: a stale series per list ever matched."""
    with running_server(tmp_path, tenants=ADMIN, metrics_port=0) as ts:
        client = ts.client("admin", retries=0)
        client.ingest("gone", [signal("pdq", CODES[0])])
        client.ingest("kept", [signal("pdq", CODES[1])])
        client.match([("pdq", CODES[0]), ("pdq", CODES[1])], threshold=0)
        before = _scrape(ts)
        assert before['hashmatch_matches_total{list="gone",signal_type="pdq"}'] == 1.0
        ts.engine.store.delete_list("gone")  # as `hashmatch lists delete gone --yes` does
        after = _scrape(ts)
        assert not any('list="gone"' in key for key in after), after
        assert after['hashmatch_matches_total{list="kept",signal_type="pdq"}'] == 1.0
        client.ingest("gone", [signal("pdq", CODES[0])])  # the name again: from 0
        client.match([("pdq", CODES[0])], threshold=0)
        again = _scrape(ts)
        assert again['hashmatch_matches_total{list="gone",signal_type="pdq"}'] == 1.0


def test_index_rows_per_type_and_the_snapshot_time(tmp_path):
    """/metrics had only the total of index rows and nothing of snapshots: a type's
    index not growing, or no snapshot for days (a start then replays every change
    since), showed nowhere an alert could read it."""
    with running_server(tmp_path, tenants=ADMIN, metrics_port=0) as ts:
        client = ts.client("admin", retries=0)
        client.ingest("a", [signal("pdq", c) for c in CODES] + [signal("md5", "ab" * 16)])
        before = _scrape(ts)
        assert before['hashmatch_index_rows{signal_type="pdq"}'] == 3.0
        assert before['hashmatch_index_rows{signal_type="md5"}'] == 1.0
        assert "hashmatch_index_snapshot_timestamp_seconds" not in before  # none yet
        started = time.time()
        client.snapshot()
        taken = _scrape(ts)["hashmatch_index_snapshot_timestamp_seconds"]
        assert started - 5 <= taken <= time.time() + 1


def test_the_last_rebuild_its_duration_and_outcome(tmp_path):
    """Nothing on /metrics said when the index was last rebuilt, how long that took or
    whether it worked: a RebuildIndex that failed or lost its snapshot showed only in
    the server's log and the caller's stream."""
    with running_server(tmp_path, tenants=ADMIN, metrics_port=0) as ts:
        client = ts.client("admin", retries=0)
        client.ingest("a", [signal("pdq", c) for c in CODES])
        before = _scrape(ts)
        assert "hashmatch_index_rebuild_seconds" not in before  # none since the start
        assert "hashmatch_index_rebuild_timestamp_seconds" not in before
        for outcome in ("ok", "snapshot_failed", "stopped", "failed"):  # 0 from the start
            assert before[f'hashmatch_index_rebuilds_total{{outcome="{outcome}"}}'] == 0.0

        started, clock = time.time(), time.perf_counter()
        last = list(client.rebuild())[-1]
        took = time.perf_counter() - clock
        assert last.finished and json.loads(last.summary_json)["snapshot"]
        after = _scrape(ts)  # set before the final message was sent: no wait
        assert after['hashmatch_index_rebuilds_total{outcome="ok"}'] == 1.0
        assert after['hashmatch_index_rebuilds_total{outcome="failed"}'] == 0.0
        assert 0.0 < after["hashmatch_index_rebuild_seconds"] <= took
        assert started <= after["hashmatch_index_rebuild_timestamp_seconds"] <= time.time()


def test_the_start_up_load_of_the_index_its_duration_and_source(tmp_path):
    """The rebuild metrics count RebuildIndex only: the start-up load (a snapshot and
    the changes since, or a build from the whole store), the build that keeps a
    restarted server NOT_SERVING, showed only in the log. It has its own gauge now,
    by source; a load counts as no rebuild."""
    with running_server(tmp_path, tenants=ADMIN, metrics_port=0) as ts:
        first = _scrape(ts)
        client = ts.client("admin", retries=0)
        client.ingest("a", [signal("pdq", c) for c in CODES])
        client.snapshot()
    assert first['hashmatch_index_load_seconds{source="store"}'] > 0.0  # no snapshot yet
    assert 'hashmatch_index_load_seconds{source="snapshot"}' not in first
    assert first['hashmatch_index_rebuilds_total{outcome="ok"}'] == 0.0
    assert "hashmatch_index_rebuild_seconds" not in first
    with running_server(tmp_path, tenants=ADMIN, metrics_port=0) as ts:
        again = _scrape(ts)
    assert again['hashmatch_index_load_seconds{source="snapshot"}'] > 0.0
    assert 'hashmatch_index_load_seconds{source="store"}' not in again
