"""A lookup's small store reads are read again only when the store changed, and never
serve a stale answer after any writer's change.

Why: every unary Match read the change counter, the list table and the tenant's visible
lists (3-4 SQLite statements, ~10 us each) from a store that changes a few times a day.
They are now kept per connection and read again once ``PRAGMA data_version`` (another
connection or process committed) or the connection's own ``total_changes`` moved, so
an unchanged store costs that one pragma. What must not break: a change made by another
process (the CLI on the server's data dir), by another thread of the server, by the
same thread, or a write rolled back, is (or is not) seen by the very next lookup.
Real SQLite, real CLI processes, a real gRPC server.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest
from test_operator_setup import SERVE, _clean_env

from hashmatch.engine.runtime import Engine
from hashmatch.engine.store import SignalRecord
from hashmatch.server.testing import running_server

PDQ = "f8f8f0cee0f4a84f06370a22038f63f0b36e2ed596621e1d33e6b39c4e9c9b22"
PDQ2 = "0" * 32 + "f" * 32


def _cli(data: Path, *args: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", SERVE, *args, "--data-dir", str(data)],
        cwd=data.parent, env=_clean_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, (args, done.stderr)


def _record(hex_: str) -> SignalRecord:
    return SignalRecord(signal_type="pdq", hash_hex=hex_)


def _found(engine: Engine, hex_: str, tenant: str | None = None) -> bool:
    return bool(engine.match_hex("pdq", [hex_], tenant=tenant)[0])


@pytest.fixture
def engine(tmp_path):
    with Engine.open(tmp_path / "data") as opened:
        opened.store.create_list("l")
        opened.store.create_tenant("acme")
        opened.store.grant("acme", "l")
        opened.ingest([_record(PDQ)], list_name="l")
        yield opened


def _statements(engine: Engine, lookup) -> list[str]:
    """The SQL statements ``lookup()`` runs on this thread's store connection."""
    said: list[str] = []
    conn = engine.store.conn()
    conn.set_trace_callback(said.append)
    try:
        lookup()
    finally:
        conn.set_trace_callback(None)
    return said


def test_an_unchanged_store_costs_one_statement_per_lookup(engine):
    """A tenant's lookup without hits (no signal row to read): the second one runs one
    statement (the old code ran four: change counter, list table, the tenant's admin
    flag, its granted lists)."""
    miss = PDQ2
    assert not _found(engine, miss, "acme")
    said = _statements(engine, lambda: _found(engine, miss, "acme"))
    assert said == ["PRAGMA data_version"], said


def test_this_threads_own_writes_and_rollbacks_are_seen_by_its_next_lookup(engine):
    """The same connection's commits do not move its data_version: its total_changes
    does. A write rolled back is never served (a lookup inside a transaction reads
    afresh and is not kept)."""
    assert _found(engine, PDQ, "acme")
    engine.store.set_list_enabled("l", False)
    assert not _found(engine, PDQ, "acme")
    engine.store.set_list_enabled("l", True)
    engine.ingest([_record(PDQ2)], list_name="l")
    assert _found(engine, PDQ2, "acme")
    engine.retract(list_name="l", hashes=[("pdq", PDQ2)])
    assert not _found(engine, PDQ2, "acme")
    with pytest.raises(RuntimeError), engine.store.transaction():
        engine.store.revoke("acme", "l")
        assert not _found(engine, PDQ, "acme")  # inside: the transaction's own view
        raise RuntimeError("roll back")
    assert _found(engine, PDQ, "acme")  # the revoke was rolled back


def test_another_threads_writes_are_seen_by_the_next_lookup(engine):
    assert _found(engine, PDQ, "acme")

    def revoke() -> None:
        engine.store.revoke("acme", "l")
        engine.store.release_thread_conn()

    writer = threading.Thread(target=revoke)
    writer.start()
    writer.join()
    assert not _found(engine, PDQ, "acme")


def test_another_processs_changes_are_seen_by_the_servers_next_match(tmp_path):
    """A real server with a tenant's token; between two Matches the CLI, in its own
    process on the server's data dir, ingests, retracts, disables and enables the list
    and revokes the tenant's grant: each change shows in the very next Match."""
    data = tmp_path / "data"
    (tmp_path / "one.txt").write_text(f"pdq {PDQ}\n")
    (tmp_path / "two.txt").write_text(f"pdq {PDQ2}\n")
    _cli(data, "lists", "create", "l")
    _cli(data, "tenants", "create", "acme")
    _cli(data, "tenants", "grant", "acme", "l")
    with running_server(data, tenants={"acme": (["match"], False)}) as served:
        client = served.client("acme")

        def found(hex_: str) -> bool:
            return bool(client.match([("pdq", hex_)], timeout=30).results[0].matches)

        assert not found(PDQ) and not found(PDQ)  # (the second: from the kept reads)
        _cli(data, "ingest", str(tmp_path / "one.txt"), "--list", "l")
        assert found(PDQ)
        _cli(data, "retract", PDQ, "--list", "l")
        assert not found(PDQ)
        _cli(data, "ingest", str(tmp_path / "two.txt"), "--list", "l")
        assert found(PDQ2)
        _cli(data, "lists", "disable", "l")
        assert not found(PDQ2)
        _cli(data, "lists", "enable", "l")
        assert found(PDQ2)
        _cli(data, "tenants", "revoke", "acme", "l")
        assert not found(PDQ2)


def test_grants_restores_renames_and_deletes_from_another_process_reach_every_thread(
    tmp_path,
):
    """The brief of the kept reads: no server thread serves a tenant's grants, a list's
    name or a signal's retraction as they were before another process changed them.
    Eight Matches at once, so several of the server's threads hold reads of the store
    as it was, before each change the CLI makes in its own process; every one of the
    next eight sees it: a grant (the tenant had none), a retraction and its restore, a
    second grant named in ``lists``, a list renamed, a list deleted."""
    import grpc

    data = tmp_path / "data"
    (tmp_path / "one.txt").write_text(f"pdq {PDQ}\n")
    (tmp_path / "two.txt").write_text(f"pdq {PDQ2}\n")
    _cli(data, "lists", "create", "l")
    _cli(data, "lists", "create", "m")
    _cli(data, "ingest", str(tmp_path / "one.txt"), "--list", "l")
    _cli(data, "ingest", str(tmp_path / "two.txt"), "--list", "m")
    _cli(data, "tenants", "create", "acme")
    with running_server(data, tenants={"acme": (["match"], False)}) as served:
        client = served.client("acme")
        lanes = 8
        gate = threading.Barrier(lanes)

        def found(hex_: str, lists: tuple[str, ...]) -> bool | str:
            gate.wait(timeout=30)  # all eight in flight together: several threads
            try:
                reply = client.match([("pdq", hex_)], lists=list(lists), timeout=30)
            except grpc.RpcError as exc:
                return exc.code().name
            return bool(reply.results[0].matches)

        def everyone(hex_: str, *lists: str) -> set[bool | str]:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(lanes) as pool:
                return set(pool.map(lambda _: found(hex_, lists), range(lanes)))

        assert everyone(PDQ) == {False}  # nothing shared with acme yet
        assert everyone(PDQ) == {False}  # (read from the kept reads)
        _cli(data, "tenants", "grant", "acme", "l")
        assert everyone(PDQ) == {True}
        _cli(data, "retract", PDQ, "--list", "l")
        assert everyone(PDQ) == {False}
        _cli(data, "restore", PDQ, "--list", "l")
        assert everyone(PDQ) == {True}
        assert everyone(PDQ2, "m") == {"NOT_FOUND"}  # m is not acme's
        _cli(data, "tenants", "grant", "acme", "m")
        assert everyone(PDQ2, "m") == {True}
        _cli(data, "lists", "rename", "m", "n")
        assert everyone(PDQ2, "m") == {"NOT_FOUND"}
        assert everyone(PDQ2, "n") == {True}
        _cli(data, "lists", "delete", "l", "--yes")
        assert everyone(PDQ) == {False}
        assert everyone(PDQ2) == {True}


def test_an_open_match_stream_sees_another_processs_grant_and_revoke(tmp_path):
    """One MatchStream held open across the CLI's grant and revoke (its handler thread
    keeps its reads between messages): the message after each change sees it."""
    import queue

    from hashmatch.server.client import match_request

    data = tmp_path / "data"
    (tmp_path / "one.txt").write_text(f"pdq {PDQ}\n")
    _cli(data, "lists", "create", "l")
    _cli(data, "ingest", str(tmp_path / "one.txt"), "--list", "l")
    _cli(data, "tenants", "create", "acme")
    with running_server(data, tenants={"acme": (["match"], False)}) as served:
        client = served.client("acme")
        asks: queue.Queue = queue.Queue()

        def requests():
            while (request := asks.get(timeout=60)) is not None:
                yield request

        replies = client.match_stream(requests(), timeout=120)

        def found() -> bool:
            asks.put(match_request([("pdq", PDQ)]))
            return bool(next(replies).results[0].matches)

        try:
            assert not found() and not found()
            _cli(data, "tenants", "grant", "acme", "l")
            assert found()
            _cli(data, "retract", PDQ, "--list", "l")
            assert not found()
            _cli(data, "restore", PDQ, "--list", "l")
            assert found()
            _cli(data, "tenants", "revoke", "acme", "l")
            assert not found()
        finally:
            asks.put(None)
            replies.close()
