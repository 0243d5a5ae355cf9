"""Tenant isolation and authentication against an attacker who holds a low-privilege
token, or none (security review), over a real socket: what one tenant can learn about,
or do to, another's lists through paging, stats, removed tokens and oversized requests.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from hashmatch.server.auth import TokenAuth, tenant_entry
from hashmatch.server.client import signal
from hashmatch.server.errors import bad_request_fields
from hashmatch.server.testing import access_log_line, running_server
from hashmatch.v1 import admin_pb2, common_pb2, matcher_pb2, signals_pb2, signals_pb2_grpc

TENANTS = {
    "ops": (["match", "write", "admin", "export"], True),
    "alice": (["match", "write", "export"], False),
    "bob": (["match", "write"], False),
    "eve": (["admin"], False),  # the admin role, but no all_lists and no grants
}


@pytest.fixture
def served(tmp_path):
    with running_server(tmp_path / "data", tenants=TENANTS) as ts:
        store = ts.engine.store
        for name in ("alice", "bob", "eve"):
            store.create_tenant(name, exist_ok=True)
        ts.client("ops").ingest("alice-list", [signal("pdq", "a1" * 32)])
        ts.client("ops").ingest("bob-secret", [signal("pdq", "b1" * 32)])
        store.grant("alice", "alice-list", write=True)
        store.grant("bob", "bob-secret", write=True)
        yield ts


def test_changes_paging_counts_only_what_the_caller_is_shown(served):
    """Before, max_changes counted every logged id: paging with 1..N told alice the size
    and type of bob's ingests in lists she cannot see."""
    alice = served.client("alice")
    (first,) = list(alice.changes(0))
    bob = served.client("bob")
    assert bob.ingest("bob-secret", [signal("pdq", f"{i:064x}") for i in range(37)]).added == 37
    assert bob.ingest("bob-secret", [signal("pdq", f"{i:064x}") for i in range(50, 55)]).added == 5
    heads = set()
    for limit in (1, 5, 36, 37, 38):
        pages = list(alice.changes(first.head, max_changes=limit))
        assert [c for p in pages for c in p.changes] == []
        heads.add((pages[-1].head, pages[-1].more))
    assert len(heads) == 1  # the same answer whatever the page size


def test_stats_for_the_admin_role_without_all_lists_name_only_its_lists(served):
    """The admin role is store-wide by definition (README): the counts are the whole
    server's, only other tenants' list names are kept back."""
    eve = served.client("eve")
    assert [x.name for x in eve.stats().lists] == []
    assert eve.stats().total_signals == served.client("ops").stats().total_signals == 2
    assert json.loads(eve.stats().details_json).get("lists", {}) == {}
    served.engine.store.grant("eve", "alice-list")
    assert [x.name for x in eve.stats().lists] == ["alice-list"]
    assert {x.name for x in served.client("ops").stats().lists} >= {"alice-list", "bob-secret"}


def test_a_refused_write_is_logged_with_its_target_list(served, caplog):
    alice = served.client("alice", retries=0)
    with caplog.at_level("INFO", logger="hashmatch.access"):
        with pytest.raises(grpc.RpcError) as err:
            alice.ingest("bob-secret", [signal("pdq", "c1" * 32)])
        assert err.value.code() is grpc.StatusCode.NOT_FOUND
        record = access_log_line(caplog, "Ingest")  # (the fixture ran before capture)
    assert record["tenant"] == "alice" and record["list"] == "bob-secret"


def test_an_open_stream_ends_when_its_token_is_removed(served, tmp_path):
    """A reload that drops a token used to leave the tenant's open streams working."""
    alice = served.client("alice", retries=0)
    gate = threading.Event()
    query = matcher_pb2.MatchRequest(hashes=[common_pb2.HashValue(signal_type="pdq",
                                                                  hex="a1" * 32)])  # fmt: skip

    def requests():
        yield query
        gate.wait(10)
        yield query

    replies = alice.matcher.MatchStream(requests(), metadata=alice.metadata, timeout=20)
    assert next(replies).results[0].matches  # open, and alice's list matches
    kept = tmp_path / "auth-without-alice.toml"
    kept.write_text(tenant_entry("ops", "x" * 32, ["match"], all_lists=True) + "\n")
    served.server.host.auth = TokenAuth.from_file(kept)  # what SIGHUP does
    gate.set()
    with pytest.raises(grpc.RpcError) as err:
        next(replies)
    assert err.value.code() is grpc.StatusCode.UNAUTHENTICATED


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _peak_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_a_caller_without_a_token_cannot_make_the_server_hold_big_requests(tmp_path):
    """grpcio read and decoded a whole request (up to 2 x max_message_bytes) before the
    token was checked: four ~60 MB Match calls without a token took ~450 MB of server
    memory. Now they are refused before their bodies are read."""
    port = _free_port()
    argv = [sys.executable, "-m", "hashmatch.server.cli", "serve", "--listen",
            f"127.0.0.1:{port}", "--data-dir", str(tmp_path / "data"),
            "--metrics-port", "-1"]  # fmt: skip
    log = tmp_path / "server.log"
    with open(log, "w") as out:  # a file, not a pipe nobody drains
        proc = subprocess.Popen(argv, stderr=out, stdout=out)
    try:
        deadline = time.monotonic() + 60
        while "serving on" not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            grpc.channel_ready_future(channel).result(timeout=30)
            raw = channel.unary_unary(
                "/hashmatch.v1.Matcher/Match",
                request_serializer=bytes,
                response_deserializer=bytes,
            )
            before = _peak_rss_kib(proc.pid)
            body = b"\x0a" + b"\x80\x80\x80\x1c" + b"\x00" * (56 << 20)  # a 56 MiB field

            def call() -> grpc.StatusCode:
                try:
                    raw(body, timeout=60)
                except grpc.RpcError as exc:
                    return exc.code()
                return grpc.StatusCode.OK

            with ThreadPoolExecutor(4) as pool:
                codes = list(pool.map(lambda _: call(), range(4)))
            grown = (_peak_rss_kib(proc.pid) - before) // 1024
        assert codes == [grpc.StatusCode.UNAUTHENTICATED] * 4
        assert grown < 100, f"the server's peak memory grew by {grown} MiB"
    finally:
        proc.terminate()
        proc.wait(30)
        assert os.path.exists(tmp_path / "data" / "auth.toml")


def test_start_up_warns_of_no_auth_and_of_plaintext_tokens_off_loopback(tmp_path, caplog):
    with caplog.at_level("WARNING", logger="hashmatch.server"):
        with running_server(tmp_path / "a", tenants=TENANTS, listen="0.0.0.0:0", wait=False):
            pass
        with running_server(tmp_path / "b", listen="0.0.0.0:0", wait=False):  # no auth
            pass
        with running_server(tmp_path / "c", tenants=TENANTS, wait=False):  # loopback: quiet
            pass
        socket = f"unix:{tmp_path}/hashmatch.sock"  # this machine's too: quiet
        with running_server(tmp_path / "d", tenants=TENANTS, listen=socket, wait=False):
            pass
        with running_server(tmp_path / "e", listen=socket, wait=False):  # no auth, no "reachable"
            pass
    said = [r.getMessage() for r in caplog.records if r.name == "hashmatch.server"]
    assert any("tokens travel in plaintext: 0.0.0.0:0 is not a loopback" in m for m in said)
    assert any(
        "NO AUTHENTICATION" in m and "0.0.0.0:0 is reachable from other machines" in m for m in said
    )
    assert sum("plaintext" in m for m in said) == 1  # not for the loopback server
    assert not any("hashmatch.sock" in m for m in said), said  # nor the unix socket's


def test_sighup_while_the_server_starts_does_not_kill_it(tmp_path):
    """SIGHUP's default action ended `serve` before its reload handler was installed."""
    import signal as signals

    port = _free_port()
    log = tmp_path / "server.log"
    argv = [sys.executable, "-m", "hashmatch.server.cli", "serve", "--listen",
            f"127.0.0.1:{port}", "--data-dir", str(tmp_path / "data"),
            "--metrics-port", "-1"]  # fmt: skip

    def default_sighup() -> None:  # SIGHUP's default action: a parent may ignore it
        signals.signal(signals.SIGHUP, signals.SIG_DFL)

    with open(log, "w") as out:
        proc = subprocess.Popen(argv, stderr=out, stdout=out, preexec_fn=default_sighup)
    try:
        deadline = time.monotonic() + 60
        while "admin token" not in log.read_text():  # printed before the server starts
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.01)
        proc.send_signal(signals.SIGHUP)
        while "serving on" not in log.read_text():
            assert proc.poll() is None, f"exit {proc.returncode}: {log.read_text()}"
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        assert proc.poll() is None
    finally:
        proc.terminate()
        assert proc.wait(30) == 0


def test_a_video_in_another_tenants_list_matches_nothing_and_the_owner_still_matches(served):
    from hashmatch.server.client import video_signal

    frames = [f"{7 * i + 1:064x}" for i in range(6)]
    assert served.client("bob").ingest("bob-secret", [video_signal(frames)]).added == 1
    theirs = served.client("alice").match(videos=[frames]).results[0].matches
    mine = served.client("bob").match(videos=[frames]).results[0].matches
    assert list(theirs) == []
    assert [m.list_name for m in mine] == ["bob-secret"]


def test_start_up_warns_when_the_metrics_port_is_reachable_from_other_machines(tmp_path, caplog):
    """/metrics has no authentication and names every hash list (hashmatch_matches_total
    {list}), which no tenant may learn of another's; on 0.0.0.0 any tenant could."""
    with caplog.at_level("WARNING", logger="hashmatch.server"):
        with running_server(tmp_path / "a", tenants=TENANTS, metrics_host="0.0.0.0",
                            metrics_port=0, wait=False):  # fmt: skip
            pass
        with running_server(tmp_path / "b", tenants=TENANTS, metrics_port=0, wait=False):
            pass  # loopback: quiet
    said = [r.getMessage() for r in caplog.records if r.name == "hashmatch.server"]
    warned = [m for m in said if "metrics" in m and "0.0.0.0" in m]
    assert len(warned) == 1 and "every hash list" in warned[0], said
    assert sum("/metrics" in m for m in said) == 1, said


def test_idle_reflection_streams_without_a_token_leave_threads_for_tenants(tmp_path):
    """Reflection answers without a token, and each open stream held a worker thread
    while idle: workers + 2 of them (4 here) left every tenant's call hanging to its
    deadline. Now a quarter of the workers (one here) may be open; more are refused."""
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    from hashmatch.server.app import RESERVED_WORKERS

    listing = reflection_pb2.ServerReflectionRequest(list_services="")
    done = threading.Event()

    def one_then_idle():  # answered, then holds its thread sending nothing
        yield listing
        done.wait(30)

    def first(stream) -> grpc.StatusCode:
        try:
            next(stream)
        except grpc.RpcError as exc:
            return exc.code()
        return grpc.StatusCode.OK

    with running_server(tmp_path / "data", tenants=TENANTS, workers=2) as ts:
        channels = [grpc.insecure_channel(ts.target) for _ in range(2 + RESERVED_WORKERS)]
        try:
            streams = [
                reflection_pb2_grpc.ServerReflectionStub(ch).ServerReflectionInfo(
                    one_then_idle(), timeout=30
                )
                for ch in channels
            ]
            codes = [first(stream) for stream in streams]  # each running, or refused
            assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) == len(streams) - 1, codes
            lists = ts.client("alice", retries=0).list_hash_lists(timeout=20)
            assert lists.tenant == "alice"
        finally:
            done.set()
            for channel in channels:
                channel.close()
        # the slot is free again, once the closed streams' handlers have returned (on the
        # server's threads, after close(): CI once asked a moment too soon)
        deadline = time.monotonic() + 10
        with grpc.insecure_channel(ts.target) as channel:
            while True:
                try:
                    (reply,) = reflection_pb2_grpc.ServerReflectionStub(
                        channel
                    ).ServerReflectionInfo(iter([listing]), timeout=10)
                    break
                except grpc.RpcError as exc:
                    if exc.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                        raise
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
        assert "hashmatch.v1.Matcher" in {s.name for s in reply.list_services_response.service}


def test_match_and_signal_states_answer_for_an_unshared_list_as_for_none(served):
    """Regression (security review): a name or signal id of another tenant's list reads as
    one that does not exist, and a nearer hit there neither hides nor displaces the
    caller's own (max_results is applied after the lists it cannot see are dropped)."""
    near = "a1" * 31 + "a0"  # 1 bit from alice's signal; bob's is "b1" * 32
    served.client("ops").ingest("bob-secret", [signal("pdq", near)])
    alice = served.client("alice", retries=0)
    answers = []
    for name in ("bob-secret", "no-such-list"):
        request = matcher_pb2.MatchRequest(
            hashes=[common_pb2.HashValue(signal_type="pdq", hex=near)],
            options=matcher_pb2.MatchOptions(lists=[name]),
        )
        for call in (
            lambda r=request: alice.matcher.Match(r, metadata=alice.metadata),
            lambda r=request: next(alice.matcher.MatchStream(iter([r]), metadata=alice.metadata)),
        ):
            with pytest.raises(grpc.RpcError) as err:
                call()
            answers.append((err.value.code(), err.value.details().replace(name, "NAME")))
    assert len(set(answers)) == 2, answers  # Match and MatchStream: the same either way
    assert {code for code, _ in answers} == {grpc.StatusCode.NOT_FOUND}
    (found,) = alice.match([("pdq", near)], max_results=1).results[0].matches
    assert (found.list_name, found.distance) == ("alice-list", 1)
    ops_ids = {c.list_name: c.signal_id for p in served.client("ops").changes(0) for c in p.changes}
    states = alice.signal_states([ops_ids["bob-secret"], ops_ids["alice-list"], 10**9])
    assert states[0] == states[2] != states[1]


def test_an_open_changes_stream_ends_when_a_reload_takes_all_lists_back(tmp_path):
    """Changes reads the lists it may show once, as it starts: a reload that set
    all_lists = false for a tenant (same token) let its open stream go on handing over
    every list's hashes to its end. Now a reload that changes the token's tenant or
    all_lists ends the call. The client's window is kept small (no BDP probing) so the
    server cannot have sent the whole stream before the reload."""
    tenants = {"ops": (["match", "write"], True), "carol": (["match", "export"], True)}
    with running_server(tmp_path / "data", tenants=tenants) as ts:
        n = 40_000  # ~2.5 MB of changes: three messages of up to 1 MiB
        ts.client("ops").ingest("not-carols", [signal("pdq", f"{i + 1:064x}") for i in range(n)])
        options = [("grpc.http2.bdp_probe", 0)]
        with grpc.insecure_channel(ts.target, options=options) as channel:
            stub = signals_pb2_grpc.SignalsStub(channel)
            metadata = (("authorization", f"Bearer {ts.tokens['carol']}"),)
            replies = stub.Changes(signals_pb2.ChangesRequest(), metadata=metadata, timeout=60)
            shown = len(next(replies).changes)
            narrowed = tmp_path / "auth-carol-narrowed.toml"
            narrowed.write_text(
                tenant_entry("ops", "x" * 32, ["match"], all_lists=True)
                + "\n"
                + tenant_entry("carol", ts.tokens["carol"], ["match", "export"])
            )
            ts.server.host.auth = TokenAuth.from_file(narrowed)  # what SIGHUP does
            with pytest.raises(grpc.RpcError) as err:
                for reply in replies:
                    shown += len(reply.changes)
        assert err.value.code() is grpc.StatusCode.UNAUTHENTICATED
        assert "all_lists" in err.value.details()
        assert shown < n


def test_a_rebuild_stops_reporting_to_a_token_removed_while_it_runs(served, tmp_path):
    """RebuildIndex streamed its progress and its summary (counts, the snapshot's path)
    to the end after a reload removed its token; Changes and the request streams
    re-check the token per message. The rebuild is held before its swap (the engine's
    sync lock) while the token is removed, so the messages after it come after the
    reload; the rebuild itself still runs to completion (documented)."""
    ops = served.client("ops", retries=0)
    engine = served.engine
    with engine._sync_lock:
        replies = ops.admin.RebuildIndex(
            admin_pb2.RebuildIndexRequest(), metadata=ops.metadata, timeout=60
        )
        assert not next(replies).finished
        kept = tmp_path / "auth-without-ops.toml"
        kept.write_text(tenant_entry("alice", "y" * 32, ["match"]) + "\n")
        served.server.host.auth = TokenAuth.from_file(kept)  # what SIGHUP does
    with pytest.raises(grpc.RpcError) as err:
        for reply in replies:
            assert not reply.finished, "the summary went to a removed token"
    assert err.value.code() is grpc.StatusCode.UNAUTHENTICATED
    record = None
    deadline = time.monotonic() + 30
    while record is None and time.monotonic() < deadline:  # it runs to its end anyway
        record = next(iter(engine.store.audit(action="index.rebuild")), None)
        time.sleep(0.05)
    assert record is not None


def test_a_retraction_reason_is_capped_so_one_call_cannot_fill_the_disk(served):
    """The reason is stored on every signal a Retract names: before, a write-role tenant's
    200 kB request (2,000 ids, a 100 kB reason) wrote 400 MB to the store, and one at the
    message limit could fill the server's disk. Now a reason over 1,000 characters is
    INVALID_ARGUMENT naming `reason`, and nothing is retracted."""
    bob = served.client("bob", retries=0)
    assert bob.ingest("bob-secret", [signal("pdq", f"{i:064x}") for i in range(200)]).added == 200
    targets = [("pdq", f"{i:064x}") for i in range(200)]
    with pytest.raises(grpc.RpcError) as err:
        bob.retract("bob-secret", hashes=targets, reason="x" * 1001)
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request_fields(err.value) == [
        ("reason", "1001 characters is over the limit of 1000")
    ]
    assert served.engine.store.retracted(list_name="bob-secret") == []
    assert bob.retract("bob-secret", hashes=targets, reason="y" * 1000).retracted == 200


def test_an_ingest_source_is_capped_as_a_retraction_reason_is(served):
    """An Ingest message's source is stored with it (its audit-log entry) and had no cap:
    each message of a stream of one-signal messages could store up to the message limit
    of it. Now a source over 1,000 characters is INVALID_ARGUMENT naming the message's
    source, and that message stores nothing (those before it are kept, and said)."""
    bob = served.client("bob", retries=0)
    store = served.engine.store
    before = (len(store.signals(list_name="bob-secret")), len(store.audit(action="ingest")))
    with pytest.raises(grpc.RpcError) as err:
        bob.ingest("bob-secret", [signal("pdq", "c4" * 32)], source="s" * 1001)
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request_fields(err.value) == [
        ("stream[0].source", "1001 characters is over the limit of 1000")
    ]
    assert (len(store.signals(list_name="bob-secret")), len(store.audit(action="ingest"))) == before
    bearer = (("authorization", f"Bearer {served.tokens['bob']}"),)
    stream = [
        signals_pb2.IngestRequest(list_name="bob-secret", signals=[signal("pdq", "c5" * 32)]),
        signals_pb2.IngestRequest(signals=[signal("pdq", "c6" * 32)], source="s" * 5000),
    ]
    with grpc.insecure_channel(served.target) as channel, pytest.raises(grpc.RpcError) as err:
        signals_pb2_grpc.SignalsStub(channel).Ingest(iter(stream), metadata=bearer, timeout=30)
    [(field, description)] = bad_request_fields(err.value)
    assert field == "stream[1].source"
    assert description.startswith("5000 characters is over the limit of 1000 (messages before")
    assert "messages before stream[1] were stored: added 1" in err.value.details()
    stored = {s.hash_hex for s in store.signals(list_name="bob-secret")}
    assert "c5" * 32 in stored and "c6" * 32 not in stored
    assert bob.ingest("bob-secret", [signal("pdq", "c7" * 32)], source="t" * 1000).added == 1
    assert store.audit(action="ingest", limit=1)[0].source == "t" * 1000


def test_what_a_tenant_writes_reaches_the_operators_terminal_escaped(served):
    """Labels, external ids, a retraction's reason and an ingest's source are a remote
    tenant's text. Before, `hashmatch match`, `retracted` and `audit` printed them raw:
    bob's ANSI escape reached the operator's terminal and his newline forged an output
    line. Now control characters are shown escaped (\\x1b, \\n)."""
    from click.testing import CliRunner

    from hashmatch.server.cli import cli

    evil = "\x1b]0;pwned\x07\x1b[2K\n1\tbob-secret\tpdq:" + "0" * 64
    bob = served.client("bob", retries=0)
    hex_ = "c3" * 32
    bob.ingest("bob-secret", [signal("pdq", hex_, labels=[evil], external_id=evil)], source=evil)
    bob.retract("bob-secret", hashes=[("pdq", "b1" * 32)], reason=evil)
    env = {"HASHMATCH_DATA_DIR": str(served.server.config.data_dir)}
    for args in (["match", f"pdq:{hex_}"], ["retracted"], ["audit"]):
        out = CliRunner().invoke(cli, args, env=env, catch_exceptions=False).output
        assert "\x1b" not in out and "\x07" not in out, (args, out)
        assert "\\x1b]0;pwned\\x07\\x1b[2K\\n1\\tbob-secret" in out, (args, out)
