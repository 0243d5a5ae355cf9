"""The server logs who holds its store's write lock when a write waits for it.

Why: an Ingest (Retract, RebuildIndex) behind a CLI process holding the store's write
lock (an operator's ``ingest --strict`` on the server's data dir) waited up to 60 s
without a line in the server's log, and a wait that ran out was INTERNAL "internal
error (logged on the server)". Now, after the store's second of grace, one WARNING
names the holder (pid, command line) once per holder per wait episode, and a wait that
runs out is UNAVAILABLE saying the store is locked (no pid: that is for the operator's
log, not for a remote tenant). A real ``hashmatch serve`` subprocess on a real socket, a
real second process holding ``BEGIN IMMEDIATE`` on the store.
"""

from __future__ import annotations

import json
import queue
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest
from test_cli_store_lock_wait import (
    PDQ,
    PROMPTLY,
    WAITING,
    _let_go,
    _lines,
    _store_with_a_list,
    _until,
)
from test_cli_tokens_edits import _holding
from test_operator_setup import SERVE, _clean_env

from hashmatch.server.client import signal
from hashmatch.v1 import common_pb2, signals_pb2, signals_pb2_grpc

#: ``hashmatch serve`` with the store's busy timeout as given (argv[1])
_SERVE_BUSY = (
    "import sys; import hashmatch.engine.store as s; s.BUSY_TIMEOUT = float(sys.argv.pop(1));"
    " from hashmatch.server.cli import main; main()"
)
HOLDS = "holds the store's write lock; store writes (Ingest, Retract, RebuildIndex) wait"


@contextmanager
def _serving(
    data: Path, busy: float, ready: str = "serving on"
) -> Iterator[tuple[str, queue.Queue, list[str]]]:
    """``hashmatch serve`` on an ephemeral port, read up to its line holding ``ready``:
    (its address, "" when ``ready`` is another line; its stderr's lines to come; the
    lines read)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _SERVE_BUSY, str(busy), "serve", "--insecure-no-auth",
         "--data-dir", str(data), "--listen", "127.0.0.1:0", "--metrics-port", "-1"],
        env=_clean_env(), stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        lines = _lines(proc.stderr)
        seen = _until(lines, ready, 120)
        address = ""
        if ready == "serving on":
            address = seen[-1].split("serving on ", 1)[1].split(" ", 1)[0]
        yield address, lines, seen
    finally:
        proc.kill()
        proc.wait()


#: holds the store's write lock, lets it go, takes it again: a line on stdin each
_HOLD_TWICE = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
for _ in range(2):
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("UPDATE hash_lists SET name = name")
    print("held", flush=True)
    sys.stdin.readline()
    conn.execute("COMMIT")
    print("free", flush=True)
    sys.stdin.readline()
"""


def _next(holder: subprocess.Popen, said: str) -> None:
    """Let ``holder`` go on (let go, or take the lock again) and wait till it did."""
    _let_go(holder)
    assert holder.stdout is not None and holder.stdout.readline() == said + "\n"


def _ingest(address: str, list_name: str, timeout: float = 90):
    with grpc.insecure_channel(address) as channel:
        stub = signals_pb2_grpc.SignalsStub(channel)
        request = signals_pb2.IngestRequest(list_name=list_name, signals=[signal("pdq", PDQ)])
        return stub.Ingest(iter([request]), timeout=timeout)


def _drain(lines) -> list[str]:
    out = []
    while not lines.empty():
        line = lines.get()
        if line is not None:
            out.append(line)
    return out


def test_an_ingest_behind_a_held_lock_is_logged_naming_the_holder_then_completes(tmp_path):
    data = _store_with_a_list(tmp_path)
    with _serving(data, 60.0) as (address, lines, _):
        with _holding(data / "store.sqlite") as holder:
            replies: list = []
            call = threading.Thread(target=lambda: replies.append(_ingest(address, "partner-a")))
            started = time.monotonic()
            call.start()
            said = _until(lines, HOLDS, PROMPTLY)
            logged_after = time.monotonic() - started
            assert call.is_alive()  # still waiting for the lock, not failed
            _let_go(holder)
            call.join(timeout=60)
        assert not call.is_alive()
        line = said[-1]
        # one line: the holder's command line (a python -c script) has its newlines escaped
        assert f"{data / 'store.sqlite'}: pid {holder.pid} (python -c \\nimport sqlite3" in line
        assert "each up to 60 s" in line
        assert logged_after < PROMPTLY
        assert replies and replies[0].added == 1


def test_calls_queued_behind_one_holder_log_it_once_per_episode_and_fail_unavailable(
    tmp_path,
):
    """Two calls whose waits (3 s here) run out behind the same holder: one WARNING, and
    each fails UNAVAILABLE saying the store is locked, without the holder's pid (was
    INTERNAL). Once the holder lets go a write goes through without waiting, which ends
    the episode: the same process taking the lock again is logged again."""
    data = _store_with_a_list(tmp_path)
    with _serving(data, 3.0) as (address, lines, _):
        failures = []
        with _holding(data / "store.sqlite", _HOLD_TWICE) as holder:
            for _ in range(2):
                try:
                    _ingest(address, "partner-a", timeout=30)
                except grpc.RpcError as exc:
                    failures.append(exc)
            logged = [line for line in _drain(lines) if HOLDS in line]
            _next(holder, "free")
            assert _ingest(address, "partner-a").added == 1  # no wait: the episode ends
            _next(holder, "held")
            again = threading.Thread(target=_ingest, args=(address, "partner-a", 30))
            again.start()
            said = _until(lines, HOLDS, PROMPTLY)
            _next(holder, "free")
            again.join(timeout=60)
    assert len(failures) == 2
    for exc in failures:
        assert exc.code() is grpc.StatusCode.UNAVAILABLE, exc
        assert "store is locked by another process" in exc.details(), exc.details()
        assert str(holder.pid) not in exc.details()
        assert "python" not in exc.details()
    assert len(logged) == 1, logged
    assert f"pid {holder.pid} (" in logged[0]
    assert f"pid {holder.pid} (" in said[-1]


#: the access-log line of an Ingest: written as its handler returns (its thread is free)
_INGEST_LOGGED = '"method": "Ingest"'


def test_an_ingest_whose_deadline_passes_behind_a_held_lock_frees_its_thread_storing_nothing(
    tmp_path,
):
    """A client whose deadline (2 s here; the Python client's default is 30 s) is shorter
    than the 60 s wait saw DEADLINE_EXCEEDED while the server's worker thread went on
    waiting for the lock, for a caller that is gone, then stored its signal once the
    holder let go. Now the wait ends with the deadline: the handler returns (its
    access-log line, DEADLINE_EXCEEDED) within about a second of it, the lock still
    held, and the same signal ingested once the holder lets go is new."""
    data = _store_with_a_list(tmp_path)
    with _serving(data, 60.0) as (address, lines, _), _holding(data / "store.sqlite") as holder:
        with pytest.raises(grpc.RpcError) as failed:
            _ingest(address, "partner-a", timeout=2)
        # the old code logged it only once the holder let go (or after 60 s)
        logged = _until(lines, _INGEST_LOGGED, 5)[-1]
        assert holder.poll() is None  # the lock was held throughout
        _let_go(holder)
        after = _ingest(address, "partner-a", timeout=30)
    assert failed.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED, failed.value
    access = json.loads(logged[logged.index("{") :])
    assert access["status"] == "DEADLINE_EXCEEDED", access
    assert access["ms"] < 3000, access  # the 2 s deadline, then at most ~1 s
    assert after.added == 1, after  # nothing of the abandoned call was stored


def test_an_ingest_cancelled_behind_a_held_lock_frees_its_thread_storing_nothing(tmp_path):
    """A client that cancels (or goes away) while its Ingest waits for the lock: the
    wait ends within about a second, CANCELLED, the lock still held, nothing stored."""
    data = _store_with_a_list(tmp_path)
    with _serving(data, 60.0) as (address, lines, _), _holding(data / "store.sqlite") as holder:
        with grpc.insecure_channel(address) as channel:
            stub = signals_pb2_grpc.SignalsStub(channel)
            request = signals_pb2.IngestRequest(list_name="partner-a", signals=[signal("pdq", PDQ)])
            future = stub.Ingest.future(iter([request]), timeout=60)
            _until(lines, HOLDS, PROMPTLY)  # waiting for the lock past the grace
            future.cancel()
            cancelled = time.monotonic()
            logged = _until(lines, _INGEST_LOGGED, 5)[-1]
            freed_after = time.monotonic() - cancelled
        assert holder.poll() is None  # the lock was held throughout
        _let_go(holder)
        after = _ingest(address, "partner-a", timeout=30)
    access = json.loads(logged[logged.index("{") :])
    assert access["status"] == "CANCELLED", access
    assert freed_after < 1.5, freed_after
    assert after.added == 1, after  # nothing of the cancelled call was stored


def _without_identity(store: Path) -> None:
    """Drop the store's id row: the next open writes it (``_ensure_identity``), as an
    open that migrates a store does, so it needs the write lock."""
    conn = sqlite3.connect(store, isolation_level=None)
    try:
        conn.execute("DELETE FROM store_meta WHERE key = 'store_id'")
    finally:
        conn.close()


def test_a_store_verbs_open_behind_a_held_lock_names_the_holder(tmp_path):
    """The open's own writes (a migration, the store's identity) waited silently: a
    store verb now says who it waits for there too, then goes on."""
    data = _store_with_a_list(tmp_path)
    _without_identity(data / "store.sqlite")
    with _holding(data / "store.sqlite") as holder:
        cli = subprocess.Popen(
            [sys.executable, "-c", SERVE, "lists", "ls", "--data-dir", str(data)],
            cwd=tmp_path, env=_clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        said = _until(_lines(cli.stderr), WAITING, PROMPTLY)
        assert cli.poll() is None  # still waiting, not failed
        _let_go(holder)
        out = cli.communicate(timeout=60)[0]
    assert said[-1].startswith(f"{data / 'store.sqlite'}: pid {holder.pid} (python"), said
    assert cli.returncode == 0
    assert "partner-a" in out


def test_the_servers_open_behind_a_held_lock_is_logged(tmp_path):
    data = _store_with_a_list(tmp_path)
    _without_identity(data / "store.sqlite")
    with (
        _holding(data / "store.sqlite") as holder,
        _serving(data, 60.0, ready=HOLDS) as (_, lines, said),
    ):
        _let_go(holder)
        _until(lines, "serving on", 120)
    assert f"pid {holder.pid} (python -c \\nimport sqlite3" in said[-1]


#: the access-log line of a Retract: written as its handler returns (its thread is free)
_RETRACT_LOGGED = '"method": "Retract"'


def _retract(address: str, timeout: float) -> signals_pb2.RetractResponse:
    with grpc.insecure_channel(address) as channel:
        request = signals_pb2.RetractRequest(
            list_name="partner-a", hashes=[common_pb2.HashValue(signal_type="pdq", hex=PDQ)]
        )
        return signals_pb2_grpc.SignalsStub(channel).Retract(request, timeout=timeout)


def test_a_retract_whose_deadline_passes_behind_a_held_lock_frees_its_thread_retracting_nothing(
    tmp_path,
):
    """Retract's lock wait ends with the call's deadline as Ingest's does (the unary
    skin's still-wanted check): DEADLINE_EXCEEDED at the 2 s deadline, its handler
    returned within about a second of it (its access-log line) with the lock still
    held, nothing retracted (the same retraction once the holder lets go retracts the
    signal), and the server goes on answering."""
    data = _store_with_a_list(tmp_path)
    with _serving(data, 60.0) as (address, lines, _):
        assert _ingest(address, "partner-a").added == 1
        with _holding(data / "store.sqlite") as holder:
            with pytest.raises(grpc.RpcError) as failed:
                _retract(address, timeout=2)
            logged = _until(lines, _RETRACT_LOGGED, 5)[-1]
            assert holder.poll() is None  # the lock was held throughout
            _let_go(holder)
            after = _retract(address, timeout=30)
    assert failed.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED, failed.value
    access = json.loads(logged[logged.index("{") :])
    assert access["status"] == "DEADLINE_EXCEEDED", access
    assert access["ms"] < 3000, access  # the 2 s deadline, then at most ~1 s
    assert after.retracted == 1, after  # the abandoned call retracted nothing
