"""``hashmatch mirror``: a local store kept in step with a real hub server's shared lists
(real gRPC over a real socket, real SQLite on both sides): field-by-field equality
after adds, updates, retractions, restores and re-ingests; tenant visibility; kill -9
part way; a replaced hub refused and --resync; list-name collisions; bad tokens; a
local server answering with mirrored signals; --follow."""

from __future__ import annotations

import json
import logging
import os
import re
import signal as signals
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import proc_syscalls
import pytest
from click.testing import CliRunner
from thread_stacks import wait_running

from hashmatch.engine.store import SignalStore
from hashmatch.server.cli import cli
from hashmatch.server.client import signal, video_signal
from hashmatch.server.testing import access_log_line, running_server

TENANTS = {
    "ops": (["match", "export", "write", "admin"], True),
    "partner": (["match", "export"], False),
    "matcher": (["match"], False),
}
PREFIX = "hub/"


def _pdq(rng: np.random.Generator, n: int) -> list[str]:
    return [rng.bytes(32).hex() for _ in range(n)]


def _fill(client, rng, *, later: float) -> None:
    """Two lists with every field set somewhere: labels, external ids, quality,
    expiry, MD5 and vPDQ videos (frames)."""
    items = [
        signal("pdq", h, labels=[f"l{i % 3}", "csam"], external_id=f"e{i}",
               quality=50 + i % 50, expires_at=later if i % 2 else None)
        for i, h in enumerate(_pdq(rng, 40))
    ]  # fmt: skip
    items.append(signal("md5", rng.bytes(16).hex(), labels=["file"], external_id="m1"))
    items.append(video_signal(_pdq(rng, 5), qualities=[90, 10, 80, 100, 30],
                              timestamps=[0.0, 0.5, 1.0, 1.5, 2.0], labels=["video"],
                              external_id="v1"))  # fmt: skip
    items.append(video_signal(_pdq(rng, 2), labels=["video"], external_id="v2"))
    assert client.ingest("shared", items).rejected == 0
    other = [signal("pdq", h, labels=["other"]) for h in _pdq(rng, 10)]
    assert client.ingest("private", other).rejected == 0


def _view(store: SignalStore, names: dict[str, str]) -> dict:
    """Live signals of the given lists (local name -> compared name), every field."""
    out = {}
    for local, shown in names.items():
        for s in store.iter_signals(local):
            frames = ""
            if s.signal_type == "vpdq":  # codes, qualities and timestamps of every frame
                codes, qualities, stamps = store.frames(s.id)
                frames = f"{codes.tobytes().hex()} {qualities} {stamps}"
            out[(shown, s.signal_type, s.hash_hex)] = (
                s.labels,
                s.external_id,
                s.quality,
                s.expires_at,
                frames,
            )
    return out


def _hub_view(hub_store: SignalStore, tenant: str | None) -> dict:
    names = {h.name: h.name for h in hub_store.lists(tenant=tenant)}
    return _view(hub_store, names)


def _local_view(data_dir: Path) -> dict:
    store = SignalStore(data_dir / "store.sqlite", create=False)
    try:
        names = {h.name: h.name[len(PREFIX) :] for h in store.lists() if h.name.startswith(PREFIX)}
        return _view(store, names)
    finally:
        store.close()


def _mirror(ts, tenant, data_dir, *extra, code=0):
    result = CliRunner().invoke(
        cli,
        ["mirror", "--server", ts.target, "--token", ts.tokens[tenant], "--prefix", PREFIX,
         "--data-dir", str(data_dir), "--json", *extra],
    )  # fmt: skip
    assert result.exit_code == code, result.output
    if code:
        return result.output
    return [json.loads(line) for line in result.output.splitlines() if line.startswith("{")]


def test_mirror_equals_the_hub_through_updates_retractions_and_restores(tmp_path):
    rng = np.random.default_rng(1)
    later = time.time() + 86400
    local = tmp_path / "local"
    with running_server(tmp_path / "hub", tenants=TENANTS) as ts:
        ops, hub = ts.client("ops"), ts.engine.store
        _fill(ops, rng, later=later)
        (run,) = _mirror(ts, "ops", local)
        assert (run["added"], run["updated"], run["retracted"], run["restored"]) == (53, 0, 0, 0)
        assert _local_view(local) == _hub_view(hub, None) and len(_hub_view(hub, None)) == 53

        # a re-run reads nothing new
        (run,) = _mirror(ts, "ops", local)
        assert run["added"] + run["updated"] + run["unchanged"] == 0 and run["pages"] == 1

        # update (labels, expiry, quality), retract, re-ingest with a new signal
        shared = hub.iter_signals("shared")
        first, second, third = [next(shared) for _ in range(3)]
        ops.ingest("shared", [
            signal("pdq", first.hash_hex, labels=["relabelled"], external_id="E0", quality=99),
            signal("pdq", second.hash_hex, labels=list(second.labels), external_id="e1",
                   quality=second.quality),  # expiry dropped
            signal("pdq", rng.bytes(32).hex(), labels=["new"]),
        ])  # fmt: skip
        ops.retract("shared", signal_ids=[third.id], reason="false positive")
        (run,) = _mirror(ts, "ops", local, "--page-size", "1")
        assert (run["added"], run["updated"], run["retracted"]) == (1, 2, 1)
        assert run["pages"] >= 3  # one log entry a page
        assert _local_view(local) == _hub_view(hub, None)

        # restore on the hub: the local copy comes back
        hub.restore(list_name="shared", signal_ids=[third.id], actor="ops")
        (run,) = _mirror(ts, "ops", local)
        assert run["restored"] == 1 and _local_view(local) == _hub_view(hub, None)

        # provenance and audit: who, what, how many
        store = SignalStore(local / "store.sqlite", create=False)
        try:
            info = store.get_list(PREFIX + "shared")
            assert info.owner == ts.target
            (entry, *_) = store.audit(action="mirror")
            assert entry.actor == f"mirror:{ts.target}" and entry.details["restored"] == 1
            retracted = {s.hash_hex: s.retract_reason for s in store.retracted()}
            assert retracted == {}
        finally:
            store.close()


def test_a_partner_mirrors_only_the_lists_shared_with_it(tmp_path):
    rng = np.random.default_rng(2)
    local = tmp_path / "local"
    with running_server(tmp_path / "hub", tenants=TENANTS) as ts:
        _fill(ts.client("ops"), rng, later=time.time() + 3600)
        hub = ts.engine.store
        hub.create_tenant("partner", exist_ok=True)
        hub.grant("partner", "shared")
        _mirror(ts, "partner", local)
        view = _local_view(local)
        assert view == _hub_view(hub, "partner") and {k[0] for k in view} == {"shared"}
        # --list must name a list the token sees
        out = _mirror(ts, "partner", local, "--list", "private", code=1)
        assert "the hub shares no list named 'private'" in out
        # the first run's choice (all lists, all types) is kept: another needs --resync
        out = _mirror(ts, "partner", local, "--types", "md5", code=1)
        assert "mirrors types all" in out and "--resync" in out
        (run,) = _mirror(ts, "partner", local, "--types", "md5", "--resync")
        assert run["retracted"] == 42  # the PDQ and vPDQ copies: no longer mirrored
        assert {k[1] for k in _local_view(local)} == {"md5"}
        (run,) = _mirror(ts, "partner", local)  # the new choice is kept
        assert run["retracted"] == 0 and {k[1] for k in _local_view(local)} == {"md5"}


def test_a_mirrored_list_carries_the_hubs_labels_owner_and_description(tmp_path):
    """The local copy said only "mirror of 'shared' on <hub>": an analyst reading
    `lists ls` could not tell which partner shares it or what content it holds."""
    local = tmp_path / "local"
    with running_server(tmp_path / "hub", tenants=TENANTS) as ts:
        ts.engine.store.create_list("shared", description="known images", owner="Partner A",
                                    labels=["csam", "ncii"])  # fmt: skip
        ts.client("ops").ingest("shared", [signal("pdq", "ab" * 32)])
        ts.client("ops").ingest("plain", [signal("pdq", "cd" * 32)])
        _mirror(ts, "ops", local)
    store = SignalStore(local / "store.sqlite", create=False)
    try:
        copy, plain = store.get_list(PREFIX + "shared"), store.get_list(PREFIX + "plain")
    finally:
        store.close()
    assert copy.labels == ("csam", "ncii") and copy.owner == ts.target
    assert copy.description == (
        f"mirror of 'shared' on {ts.target}, shared by Partner A: known images"
    )
    assert (plain.labels, plain.description) == ((), f"mirror of 'plain' on {ts.target}")


def test_a_list_shared_after_the_first_run_is_mirrored_whole(tmp_path):
    """A hub operator who made the token but never granted its tenant a list: the run
    printed only 'added 0, ...', like a hub with nothing new; and once the list was
    granted, its signals (logged before the cursor) were never mirrored."""
    local = tmp_path / "local"
    with running_server(tmp_path / "hub", tenants=TENANTS) as ts:
        ts.client("ops").ingest("shared", [signal("pdq", "ab" * 32)])
        for extra in ((), ("--json",)):
            result = CliRunner().invoke(
                cli, ["mirror", "--server", ts.target, "--token", ts.tokens["partner"],
                      "--prefix", PREFIX, "--data-dir", str(local), *extra],
            )  # fmt: skip
            assert result.exit_code == 0, result.output
            assert "shares no hash list with this token" in result.output
            assert "tenants grant" in result.output
        assert json.loads(result.stdout)["lists_shared"] == 0
        ts.engine.store.create_tenant("partner", exist_ok=True)
        ts.engine.store.grant("partner", "shared")
        # shared after the mirror's first run: its signal is behind the cursor, which a
        # plain pass never reads again (it used to say "added 0" for good)
        (run,) = _mirror(ts, "partner", local)
        assert run["added"] == 1 and run["lists_shared"] == 1
        assert run["lists_new"] == ["shared"] and run["resync"] is True
        assert _local_view(local) == _hub_view(ts.engine.store, "partner")
        ts.client("ops").ingest("shared", [signal("pdq", "cd" * 32)])
        (run,) = _mirror(ts, "partner", local)  # known now: a plain pass
        assert (run["added"], run["lists_new"], run["resync"]) == (1, [], False)


def test_a_local_server_matches_mirrored_signals_and_stops_after_a_retraction(tmp_path):
    rng = np.random.default_rng(3)
    local = tmp_path / "local"
    code = rng.bytes(32).hex()
    with running_server(tmp_path / "hub", tenants=TENANTS) as ts:
        ops = ts.client("ops")
        ops.ingest("shared", [signal("pdq", code, labels=["x"], external_id="ext-1")])
        _mirror(ts, "ops", local)
        with running_server(local) as mine:  # serve on the mirror's data dir
            client = mine.client()
            (result,) = client.match([("pdq", code)]).results
            (hit,) = result.matches
            assert (hit.list_name, hit.external_id, hit.distance) == (PREFIX + "shared", "ext-1", 0)
            ops.retract("shared", hashes=[("pdq", code)])
            (run,) = _mirror(ts, "ops", local)  # while the local server runs
            assert run["retracted"] == 1
            (result,) = client.match([("pdq", code)]).results
            assert not result.matches


def _slow_hub(ts, rng, entries: int, per: int) -> None:
    ops = ts.client("ops")
    for i in range(entries):
        ops.ingest("shared", [signal("pdq", h, labels=[f"b{i}"], external_id=f"{i}-{j}")
                              for j, h in enumerate(_pdq(rng, per))])  # fmt: skip
    ops.retract("shared", signal_ids=list(range(1, entries * per, 7)))


def _mirror_process(ts, data_dir, *extra) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "hashmatch.server.cli", "mirror", "--server", ts.target,
         "--token", ts.tokens["ops"], "--prefix", PREFIX, "--data-dir", str(data_dir), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _cursor(data_dir: Path) -> int:
    path = data_dir / "store.sqlite"
    if not path.exists():
        return 0
    import sqlite3

    conn = sqlite3.connect(path, timeout=30)
    try:
        row = conn.execute("SELECT seq FROM mirrors").fetchone()
    except sqlite3.OperationalError:
        row = None
    finally:
        conn.close()
    return row[0] if row else 0


def _resyncing(data_dir: Path) -> int:
    """The cursor of a resync under way (0 when none is)."""
    import sqlite3

    conn = sqlite3.connect(data_dir / "store.sqlite", timeout=30)
    try:
        row = conn.execute("SELECT seq, resync FROM mirrors").fetchone()
    finally:
        conn.close()
    return row[0] if row and row[1] else 0


def test_kill_9_part_way_then_a_rerun_gives_the_uninterrupted_state(tmp_path):
    rng = np.random.default_rng(4)
    with running_server(tmp_path / "hub", tenants=TENANTS) as ts:
        _slow_hub(ts, rng, entries=120, per=100)
        whole, killed = tmp_path / "whole", tmp_path / "killed"
        _mirror(ts, "ops", whole, "--page-size", "100")  # an entry a page
        proc = _mirror_process(ts, killed, "--page-size", "100")
        deadline = time.monotonic() + 60
        while _cursor(killed) < 10 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.01)
        assert proc.poll() is None, "the mirror finished before it could be killed"
        os.kill(proc.pid, signals.SIGKILL)
        proc.wait()
        head = ts.engine.store.change_counter()
        assert 0 < _cursor(killed) < head  # killed part way
        _mirror(ts, "ops", killed, "--page-size", "70")  # pages inside entries
        assert _cursor(killed) == _cursor(whole) == head
        assert _local_view(killed) == _local_view(whole) == _hub_view(ts.engine.store, None)
        assert len(_local_view(whole)) == 120 * 100 - len(range(1, 12000, 7))

        # a --resync killed part way goes on at the next plain run, and ends the same
        ts.client("ops").retract("shared", signal_ids=list(range(2, 12000, 11)))
        proc = _mirror_process(ts, killed, "--page-size", "100", "--resync")
        while _resyncing(killed) < 10 and time.monotonic() < deadline + 60:
            time.sleep(0.01)
        assert proc.poll() is None, "the resync finished before it could be killed"
        os.kill(proc.pid, signals.SIGKILL)
        proc.wait()
        (run,) = _mirror(ts, "ops", killed, "--page-size", "50")
        assert run["resync"] and _resyncing(killed) == 0
        assert _local_view(killed) == _hub_view(ts.engine.store, None)


def test_a_replaced_hub_is_refused_and_resync_mends_it(tmp_path):
    rng = np.random.default_rng(5)
    local = tmp_path / "local"
    codes = _pdq(rng, 6)
    with running_server(tmp_path / "hub", tenants=TENANTS) as ts:
        ts.client("ops").ingest("shared", [signal("pdq", h) for h in codes[:4]])
        _mirror(ts, "ops", local)
    # another hub (another store) at the same address family: its log is not the one read
    with running_server(tmp_path / "hub2", tenants=TENANTS) as ts:
        ops = ts.client("ops")
        ops.ingest("shared", [signal("pdq", h, labels=["v2"]) for h in codes[2:]])
        ops.ingest("shared", [signal("pdq", rng.bytes(32).hex())])
        before = _local_view(local)
        out = _mirror(ts, "ops", local, code=1)
        assert "no longer holds the history it was mirrored from" in out and "--resync" in out
        assert _local_view(local) == before  # nothing written
        (run,) = _mirror(ts, "ops", local, "--resync")
        assert run["retracted"] == 2 and run["resync"]  # codes[0:2]: not on the new hub
        assert _local_view(local) == _hub_view(ts.engine.store, None)
        (run,) = _mirror(ts, "ops", local)  # and incremental again
        assert not run["resync"] and run["added"] == 0


def test_a_local_list_the_mirror_did_not_create_is_never_written(tmp_path):
    local = tmp_path / "local"
    store = SignalStore(local / "store.sqlite")
    store.create_list(PREFIX + "shared")
    store.close()
    with running_server(tmp_path / "hub", tenants=TENANTS) as ts:
        ts.client("ops").ingest("shared", [signal("pdq", "ab" * 32)])
        out = _mirror(ts, "ops", local, code=1)
    assert f"local list '{PREFIX}shared'" in out and "created locally" in out
    store = SignalStore(local / "store.sqlite", create=False)
    try:
        assert store.get_list(PREFIX + "shared").signal_count == 0
        assert store.conn().execute("SELECT COUNT(*) FROM mirrors").fetchone()[0] == 0
    finally:
        store.close()


def test_unreachable_hub_bad_token_and_missing_export_role_write_nothing(tmp_path):
    local = tmp_path / "local"
    runner = CliRunner()
    result = runner.invoke(cli, ["mirror", "--server", "127.0.0.1:9", "--prefix", PREFIX,
                                 "--data-dir", str(local), "--wait", "0.5"])  # fmt: skip
    assert result.exit_code == 1 and "did not become SERVING" in result.output
    assert len(result.output.strip().splitlines()) == 1
    with running_server(tmp_path / "hub", tenants=TENANTS) as ts:
        ts.client("ops").ingest("shared", [signal("pdq", "ab" * 32)])
        for token, status in (("wrong", "UNAUTHENTICATED"), (ts.tokens["matcher"],
                                                             "PERMISSION_DENIED")):  # fmt: skip
            result = runner.invoke(cli, ["mirror", "--server", ts.target, "--token", token,
                                         "--prefix", PREFIX, "--data-dir", str(local)])  # fmt: skip
            assert result.exit_code == 1 and status in result.output, result.output
            assert "Traceback" not in result.output
            if status == "UNAUTHENTICATED":  # a token given, unknown: not "give a token"
                assert "give a token" not in result.output
                assert "after the server started" in result.output
                assert "SIGHUP" in result.output
        # a --list the hub does not share, a type that does not exist: no store either
        for option, says in ((["--list", "nope"], "the hub shares no list named 'nope'"),
                             (["--types", "pdqq"], "unknown signal type 'pdqq'")):  # fmt: skip
            result = runner.invoke(cli, ["mirror", "--server", ts.target, "--token",
                                         ts.tokens["ops"], "--prefix", PREFIX, "--data-dir",
                                         str(local), *option])  # fmt: skip
            assert result.exit_code == 1 and says in result.output, result.output
            assert len(result.output.strip().splitlines()) == 1, result.output
    assert not local.exists()  # not even a new store


def test_follow_picks_up_a_change(tmp_path):
    rng = np.random.default_rng(6)
    local = tmp_path / "local"
    code = rng.bytes(32).hex()
    with running_server(tmp_path / "hub", tenants=TENANTS) as ts:
        ops = ts.client("ops")
        ops.ingest("shared", [signal("pdq", rng.bytes(32).hex())])
        proc = _mirror_process(ts, local, "--follow", "--interval", "0.2", "--json")
        try:
            deadline = time.monotonic() + 60
            while _cursor(local) == 0 and time.monotonic() < deadline:
                time.sleep(0.05)
            ops.ingest("shared", [signal("pdq", code, labels=["late"])])
            while time.monotonic() < deadline:
                if ("shared", "pdq", code) in _local_view(local):
                    break
                time.sleep(0.05)
            assert _local_view(local)[("shared", "pdq", code)][0] == ("late",)
        finally:
            proc.send_signal(signals.SIGTERM)
            out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        runs = [json.loads(line) for line in out.splitlines()]
        assert sum(r["added"] for r in runs) == 2


def _hub_calls(caplog, method: str) -> int:
    """How many calls of ``method`` the in-process hub has logged (caplog at INFO on
    hashmatch.access)."""
    return sum(r.name == "hashmatch.access" and json.loads(r.getMessage())["method"] == method
               for r in caplog.records)  # fmt: skip


def _wait_for_passes(caplog, more: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    """Until the follow ``proc`` has made ``more`` further passes, each begun by a
    ListHashLists the hub logs (one more awaited: the last counted pass has finished,
    printed or not). A fixed sleep for "more passes" passed however few ran."""
    target = _hub_calls(caplog, "ListHashLists") + more + 1
    deadline = time.monotonic() + timeout
    while _hub_calls(caplog, "ListHashLists") < target:
        assert proc.poll() is None, "the follow ended"
        assert time.monotonic() < deadline, f"no {more} more passes in {timeout:g} s"
        time.sleep(0.02)


def _passes_by_peer(caplog) -> dict[str, int]:
    """ListHashLists calls (one a pass) the in-process hub has logged, by client address:
    each mirror process has its own connection."""
    records = [json.loads(r.getMessage()) for r in caplog.records if r.name == "hashmatch.access"]
    counts: dict[str, int] = {}
    for record in records:
        if record["method"] == "ListHashLists":
            counts[record["peer"]] = counts.get(record["peer"], 0) + 1
    return counts


def _wait_for_passes_each(caplog, more: int, procs: list[subprocess.Popen]) -> None:
    """Until every client that has made a pass has made ``more`` further passes (and one
    more begun: the last counted has finished), or one of ``procs`` ended (60 s at
    most). Why: "not dead after more passes" after a fixed sleep passed however few
    passes ran."""
    start = _passes_by_peer(caplog)
    deadline = time.monotonic() + 60
    while all(p.poll() is None for p in procs) and any(
        _passes_by_peer(caplog).get(p, 0) < n + more + 1 for p, n in start.items()
    ):
        assert time.monotonic() < deadline, (start, _passes_by_peer(caplog))
        time.sleep(0.02)


def _wait_for_retries(path, text: str, count: int, proc: subprocess.Popen) -> None:
    """Until the file ``path`` (a follow's stderr) holds ``count`` lines with ``text``
    and "retrying" (60 s at most): each a refused pass the follow meant to go on from.
    A fixed sleep for "more refused passes" passed however few ran."""
    deadline = time.monotonic() + 60
    while (
        sum(text in line and "retrying" in line for line in path.read_text().splitlines()) < count
    ):
        assert proc.poll() is None, path.read_text()
        assert time.monotonic() < deadline, path.read_text()
        time.sleep(0.02)


def test_follow_prints_passes_that_change_something_not_every_pass(tmp_path, caplog):
    """A follow every 60 s wrote 1,440 identical 'added 0, ...' lines a day into the
    journal: in text output a pass that changed nothing is not printed (the first is,
    and one an hour); --json still prints every pass (test_follow_picks_up_a_change)."""
    rng = np.random.default_rng(8)
    local = tmp_path / "local"
    with running_server(tmp_path / "hub", tenants=TENANTS) as ts:
        ops = ts.client("ops")
        ops.ingest("shared", [signal("pdq", rng.bytes(32).hex())])
        caplog.set_level(logging.INFO, logger="hashmatch.access")
        proc = _mirror_process(ts, local, "--follow", "--interval", "0.1")
        try:
            deadline = time.monotonic() + 60
            while _cursor(local) == 0 and time.monotonic() < deadline:
                time.sleep(0.05)
            _wait_for_passes(caplog, 5, proc)  # passes with nothing to do
            code = rng.bytes(32).hex()
            ops.ingest("shared", [signal("pdq", code)])
            while ("shared", "pdq", code) not in _local_view(local):
                assert time.monotonic() < deadline, "the follow did not mirror the change"
                time.sleep(0.05)
            _wait_for_passes(caplog, 3, proc)  # and more after the change
        finally:
            proc.send_signal(signals.SIGTERM)
            out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        lines = out.splitlines()
        assert len(lines) == 2, out  # the first pass, the pass that mirrored the change
        assert "added 1" in lines[0] and "added 1" in lines[1], out


def test_follow_goes_on_when_the_hub_is_at_its_concurrent_call_limit(tmp_path):
    """A busy hub (max_concurrent_rpcs reached: three idle MatchStreams here) refuses a
    pass with RESOURCE_EXHAUSTED; --follow exited on it, so every partner's mirror
    stopped at a hub's busy moment until someone restarted it."""
    import threading

    local = tmp_path / "local"
    with running_server(tmp_path / "hub", tenants=TENANTS, max_concurrent_rpcs=1,
                        workers=6) as ts:  # fmt: skip
        ops = ts.client("ops")
        ops.ingest("shared", [signal("pdq", "ab" * 32)])
        err = tmp_path / "err"
        with err.open("w") as stderr:
            proc = subprocess.Popen(
                [sys.executable, "-m", "hashmatch.server.cli", "mirror", "--server", ts.target,
                 "--token", ts.tokens["ops"], "--prefix", PREFIX, "--data-dir", str(local),
                 "--follow", "--interval", "0.2"],
                stdout=subprocess.DEVNULL, stderr=stderr,
            )  # fmt: skip
        gate = threading.Event()

        def idle():
            gate.wait(60)
            yield from ()

        held = []
        try:
            deadline = time.monotonic() + 60
            while _cursor(local) == 0 and time.monotonic() < deadline:
                time.sleep(0.05)
            # 1 + 2 reserved calls: the hub's limit, held by three tenants' idle streams
            # (a match_stream opens when read: each is read on a thread until the gate)
            held = [
                threading.Thread(target=list, args=(ts.client(t).match_stream(idle()),))
                for t in ("ops", "partner", "matcher")
            ]
            for thread in held:
                thread.start()
            while "RESOURCE_EXHAUSTED" not in err.read_text() and time.monotonic() < deadline:
                time.sleep(0.05)
            assert "RESOURCE_EXHAUSTED" in err.read_text() and "retrying" in err.read_text()
            _wait_for_retries(err, "RESOURCE_EXHAUSTED", 3, proc)  # more refused passes
            assert proc.poll() is None, err.read_text()
            gate.set()
            for thread in held:
                thread.join(30)
            ops.ingest("shared", [signal("pdq", "cd" * 32)])
            while len(_local_view(local)) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert len(_local_view(local)) == 2
        finally:
            gate.set()
            proc.send_signal(signals.SIGTERM)
            proc.wait(timeout=30)
        assert proc.returncode == 0, err.read_text()


#: the CLI with the store's busy timeout cut from 60 s to 0.3 s
_SHORT_BUSY = (
    "import sys; import hashmatch.engine.store as s; s.BUSY_TIMEOUT = 0.3;"
    " from hashmatch.server.cli import cli; cli(sys.argv[1:])"
)


def test_follow_goes_on_when_the_local_store_is_locked_past_the_busy_timeout(tmp_path):
    """Another process holding the local store's write lock past SQLite's busy timeout
    (a long --strict ingest) failed the pass with "database is locked", and that ended
    --follow: the mirror stopped until someone restarted it."""
    import sqlite3

    local, err = tmp_path / "local", tmp_path / "err"
    holder = None
    with running_server(tmp_path / "hub", tenants=TENANTS) as ts:
        ops = ts.client("ops")
        ops.ingest("shared", [signal("pdq", "ab" * 32)])
        with err.open("w") as stderr:
            proc = subprocess.Popen(
                [sys.executable, "-c", _SHORT_BUSY, "mirror", "--server", ts.target, "--token",
                 ts.tokens["ops"], "--prefix", PREFIX, "--data-dir", str(local), "--follow",
                 "--interval", "0.2"],
                stdout=subprocess.DEVNULL, stderr=stderr,
            )  # fmt: skip
        try:
            deadline = time.monotonic() + 60
            while _cursor(local) == 0 and time.monotonic() < deadline:
                time.sleep(0.05)
            holder = sqlite3.connect(local / "store.sqlite", isolation_level=None)
            holder.execute("BEGIN IMMEDIATE")  # held over several passes
            ops.ingest("shared", [signal("pdq", "cd" * 32)])
            while "database is locked" not in err.read_text() and time.monotonic() < deadline:
                time.sleep(0.05)
            assert "database is locked" in err.read_text() and "retrying" in err.read_text()
            # the process holding the lock (this one) is named, not "another process"
            assert f"database is locked (pid {os.getpid()} (" in err.read_text()
            _wait_for_retries(err, "database is locked", 3, proc)  # more locked passes
            assert proc.poll() is None, err.read_text()
            holder.execute("COMMIT")
            while len(_local_view(local)) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert len(_local_view(local)) == 2
        finally:
            if holder is not None:
                holder.close()
            proc.send_signal(signals.SIGTERM)
            proc.wait(timeout=30)
        assert proc.returncode == 0, err.read_text()


def test_writes_inside_a_transaction_commit_together_or_not_at_all(tmp_path):
    from hashmatch.engine.store import SignalRecord

    store = SignalStore(tmp_path / "store.sqlite")
    try:
        store.create_list("a")
        head = store.change_counter()
        with pytest.raises(RuntimeError, match="killed"), store.transaction():
            store.ingest([SignalRecord("pdq", "ab" * 32)], list_name="a", actor="t")
            store.retract(list_name="a", hashes=[("pdq", "ab" * 32)], actor="t")
            raise RuntimeError("killed")
        assert store.change_counter() == head and store.get_list("a").signal_count == 0
        with store.transaction():
            store.ingest([SignalRecord("pdq", "ab" * 32)], list_name="a", actor="t")
            store.ingest([SignalRecord("pdq", "ab" * 32, labels=("x",))], list_name="a",
                         actor="t")  # fmt: skip
        assert [s.labels for s in store.iter_signals("a")] == [("x",)]
        # a re-ingest that changes provenance is in the change log (what a mirror reads)
        assert [c.op for c in store.changes_since(head)] == ["add", "update"]
    finally:
        store.close()


def _readme_mirror_commands() -> list[list[str]]:
    """The README's `hashmatch mirror` example block, one argv per command."""
    import shlex

    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    block = text.split("### Mirroring a hub's lists")[1].split("```sh\n")[1].split("```")[0]
    commands = []
    for line in block.splitlines():
        line = line.split("#")[0].strip()
        for part in (p for chunk in line.split("&&") for p in chunk.split(";")):
            if part.strip():
                commands.append(shlex.split(part))
    return commands


def test_the_readme_example_runs_against_a_real_hub(tmp_path):
    """Each command of the README's block, run as written against a real hub: only the
    address, --tls (the test hub is plaintext), the token file and data dirs differ;
    --follow is left out (test_follow_picks_up_a_change)."""
    from hashmatch.server.auth import TokenAuth

    commands = _readme_mirror_commands()
    assert [c[1] for c in commands] == [
        "token", "-HUP", "tenants", "tenants", "mirror", "mirror", "lists", "audit",
    ]  # fmt: skip
    hub_dir, local = tmp_path / "hub", tmp_path / "local"
    token_file = tmp_path / "hub.token"
    runner = CliRunner()
    with running_server(hub_dir, tenants=TENANTS) as ts:
        ts.client("ops").ingest("ncmec-pdq", [signal("pdq", "ab" * 32, labels=["csam"])])
        outputs = []
        for command in commands:
            if command[0] == "kill":  # what SIGHUP does for a running serve
                ts.server.host.auth = TokenAuth.from_file(hub_dir / "auth.toml")
                outputs.append("")
                continue
            argv = [a for a in command[1:] if a != "--tls"]
            argv = [ts.target if a == "hub.example.org:50051" else a for a in argv]
            argv = [str(token_file) if a == "hub.token" else a for a in argv]
            if "--follow" in argv:
                continue
            if argv[0] == "token":
                argv += ["--auth-file", str(hub_dir / "auth.toml")]
            else:
                argv += ["--data-dir", str(local if argv[0] in ("mirror", "lists", "audit")
                                           else hub_dir)]  # fmt: skip
            result = runner.invoke(cli, argv)
            assert result.exit_code == 0, (argv, result.output)
            outputs.append(result.output)
            if argv[0] == "token":
                token_file.write_text(result.stdout.strip().splitlines()[-1])
    assert "added 1, updated 0, retracted 0, restored 0, unchanged 0" in outputs[4]
    assert "hub/ncmec-pdq" in outputs[5] and f"mirror:{ts.target}" in outputs[6]
    # the pass's line has the shape the README shows under the command, numbers aside
    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    shown = re.search(r"^#   (mirror 'hub/' from .*)$", text, re.M).group(1)
    shown = re.escape(shown.replace("hub.example.org:50051", "ADDRESS"))
    shape = re.sub(r"\d+(?:\\\.\d+)?", r"\\d+(?:\\.\\d+)?", shown)
    shape = shape.replace("ADDRESS", re.escape(ts.target))
    assert re.fullmatch(shape, outputs[4].strip().splitlines()[-1]), (shown, outputs[4])


def test_a_hub_restored_from_a_backup_is_refused(tmp_path):
    """Same store id, but the log at the cursor is another history: behind the cursor
    (restored, no write since), or with another change at it (restored, then written)."""
    import shutil

    from hashmatch.engine.backup import backup_store

    rng = np.random.default_rng(7)
    hub_dir, local = tmp_path / "hub", tmp_path / "local"
    with running_server(hub_dir, tenants=TENANTS) as ts:
        ops = ts.client("ops")
        ops.ingest("shared", [signal("pdq", h) for h in _pdq(rng, 3)])
        backup_store(ts.engine.store, tmp_path / "old.sqlite")
        ops.ingest("shared", [signal("pdq", h) for h in _pdq(rng, 3)])
        _mirror(ts, "ops", local)
    shutil.rmtree(hub_dir / "snapshots", ignore_errors=True)
    for suffix in ("-wal", "-shm"):
        (hub_dir / f"store.sqlite{suffix}").unlink(missing_ok=True)
    shutil.copy(tmp_path / "old.sqlite", hub_dir / "store.sqlite")
    with running_server(hub_dir, tenants=TENANTS) as ts:
        before = _local_view(local)
        out = _mirror(ts, "ops", local, code=1)
        assert "is beyond the hub's last change" in out and "--resync" in out
        ts.client("ops").ingest("shared", [signal("pdq", h) for h in _pdq(rng, 3)])
        out = _mirror(ts, "ops", local, code=1)
        assert "of the hub's log is not the one the mirror read" in out
        assert _local_view(local) == before
        (run,) = _mirror(ts, "ops", local, "--resync")
        assert (run["added"], run["retracted"]) == (3, 3)
        assert _local_view(local) == _hub_view(ts.engine.store, None)


def test_local_lists_follow_the_hubs_disable_enable_and_sharing(tmp_path):
    """Neither a disable nor an unshare logs a change per signal: the mirror follows
    ListHashLists. A list shared again stays disabled until --resync (its changes while
    unshared were never shown: here a retraction)."""
    rng = np.random.default_rng(8)
    local = tmp_path / "local"
    codes = _pdq(rng, 4)

    def enabled() -> bool:
        store = SignalStore(local / "store.sqlite", create=False)
        try:
            return store.get_list(PREFIX + "shared").enabled
        finally:
            store.close()

    with running_server(tmp_path / "hub", tenants=TENANTS) as ts:
        hub = ts.engine.store
        ts.client("ops").ingest("shared", [signal("pdq", h) for h in codes])
        hub.create_tenant("partner", exist_ok=True)
        hub.grant("partner", "shared")
        _mirror(ts, "partner", local)
        hub.set_list_enabled("shared", False)
        (run,) = _mirror(ts, "partner", local)
        assert run["lists_disabled"] == [PREFIX + "shared"] and not enabled()
        hub.set_list_enabled("shared", True)
        (run,) = _mirror(ts, "partner", local)
        assert run["lists_enabled"] == [PREFIX + "shared"] and enabled()
        hub.revoke("partner", "shared")
        ts.client("ops").retract("shared", hashes=[("pdq", codes[0])])  # not shown
        (run,) = _mirror(ts, "partner", local)  # the cursor moves past the retraction
        assert run["lists_disabled"] == [PREFIX + "shared"] and not enabled()
        assert run["retracted"] == 0
        hub.grant("partner", "shared")
        (run,) = _mirror(ts, "partner", local)
        assert run["lists_stale"] == [PREFIX + "shared"] and not enabled()
        hub.set_list_enabled("shared", False)  # the hub's flag moving does not clear it
        _mirror(ts, "partner", local)
        hub.set_list_enabled("shared", True)
        (run,) = _mirror(ts, "partner", local)
        assert run["lists_stale"] == [PREFIX + "shared"] and not enabled()
        (run,) = _mirror(ts, "partner", local, "--resync")
        assert run["retracted"] == 1 and run["lists_enabled"] == [PREFIX + "shared"]
        assert enabled() and _local_view(local) == _hub_view(hub, "partner")


def test_a_list_the_hub_disables_is_disabled_here_not_retracted(tmp_path):
    """An ADDED change of a signal of a disabled hub list (a re-ingest, a new signal
    while it is disabled; every one at a --resync) had live = false, and the mirror
    retracted the local copy as "not live (retracted or expired)": a resync retracted
    the whole list and the hub's re-enable restored it all. The hub now says why
    (Change.state) and sends the signal; the mirror keeps it, in its disabled list."""
    from hashmatch.v1 import signals_pb2

    rng = np.random.default_rng(14)
    local = tmp_path / "local"
    codes = _pdq(rng, 4)
    with running_server(tmp_path / "hub", tenants=TENANTS) as ts:
        ops, hub = ts.client("ops"), ts.engine.store
        ops.ingest("shared", [signal("pdq", h, labels=["a"]) for h in codes])
        ops.ingest("shared", [video_signal(_pdq(rng, 3), labels=["video"])])
        _mirror(ts, "ops", local)
        hub.set_list_enabled("shared", False)
        ops.ingest("shared", [signal("pdq", codes[0], labels=["relabelled"]),
                              signal("pdq", rng.bytes(32).hex(), labels=["new"])])  # fmt: skip
        ops.retract("shared", hashes=[("pdq", codes[1])], reason="wrong")
        states = {c.signal_id: (c.live, c.state, bool(c.hash)) for r in ops.changes(0)
                  for c in r.changes if c.action == signals_pb2.CHANGE_ACTION_ADDED}  # fmt: skip
        assert set(states.values()) == {
            (False, signals_pb2.SIGNAL_STATE_LIST_DISABLED, True),
            (False, signals_pb2.SIGNAL_STATE_RETRACTED, False),
        }
        store_path = local / "store.sqlite"
        for extra in ((), ("--resync",)):
            (run,) = _mirror(ts, "ops", local, *extra)
            assert run["retracted"] == (0 if extra else 1), run  # the hub's own retraction
            assert run["restored"] == 0 and _local_view(local) == _hub_view(hub, None)
            store = SignalStore(store_path, create=False)
            try:
                assert not store.get_list(PREFIX + "shared").enabled
                assert [s.retract_reason for s in store.retracted()] == [
                    f"mirror {PREFIX}: retracted on {ts.target}"
                ]
            finally:
                store.close()
        assert run["lists_disabled"] == [] and run["updated"] == 0 and run["unchanged"] == 5
        hub.set_list_enabled("shared", True)
        (run,) = _mirror(ts, "ops", local)
        assert (run["retracted"], run["restored"]) == (0, 0)
        assert run["lists_enabled"] == [PREFIX + "shared"]
        assert _local_view(local) == _hub_view(hub, None)


def test_a_list_disabled_between_list_states_and_changes_is_disabled_by_the_page(tmp_path):
    """ListHashLists (read first) says enabled, the changes say list disabled (the hub
    disabled it in between): the page disables the local list, not just the next pass."""
    from hashmatch.v1 import signals_pb2

    rng = np.random.default_rng(15)
    local = tmp_path / "local"
    page = [
        _change(1, rng, live=False, state=signals_pb2.SIGNAL_STATE_LIST_DISABLED),
        _change(2, rng, live=False, state=signals_pb2.SIGNAL_STATE_EXPIRED, hash=b""),
    ]
    with _RogueHub([[_change(3, rng)], page]) as target:
        result = CliRunner().invoke(cli, ["mirror", "--server", target, "--prefix", PREFIX,
                                          "--data-dir", str(local), "--json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    run = json.loads(result.output.splitlines()[-1])
    assert run["lists_disabled"] == [PREFIX + "shared"] and run["added"] == 2
    store = SignalStore(local / "store.sqlite", create=False)
    try:
        assert not store.get_list(PREFIX + "shared").enabled
        assert len(list(store.iter_signals(PREFIX + "shared"))) == 2
    finally:
        store.close()


def test_a_list_unshared_under_a_fixed_list_option_is_disabled_not_an_error(tmp_path):
    """A mirror run with the same --list every time (cron, a systemd unit): once the
    hub stopped sharing that list, every run failed ("the hub shares no list named
    ...") before reading the hub's list states, so the local copy stayed enabled and
    kept matching what the hub no longer shares with you."""
    rng = np.random.default_rng(12)
    local = tmp_path / "local"
    with running_server(tmp_path / "hub", tenants=TENANTS) as ts:
        hub = ts.engine.store
        ts.client("ops").ingest("shared", [signal("pdq", h) for h in _pdq(rng, 3)])
        hub.create_tenant("partner", exist_ok=True)
        hub.grant("partner", "shared")
        _mirror(ts, "partner", local, "--list", "shared")
        hub.revoke("partner", "shared")
        (run,) = _mirror(ts, "partner", local, "--list", "shared")
        assert run["lists_disabled"] == [PREFIX + "shared"] and run["lists_shared"] == 0
        store = SignalStore(local / "store.sqlite", create=False)
        try:
            assert not store.get_list(PREFIX + "shared").enabled
        finally:
            store.close()
        hub.grant("partner", "shared")
        (run,) = _mirror(ts, "partner", local, "--list", "shared")
        assert run["lists_stale"] == [PREFIX + "shared"]
        # a name this mirror never mirrored is still a typo
        out = _mirror(ts, "partner", local, "--list", "private", code=1)
        assert "the hub shares no list named 'private'" in out


def test_a_hub_list_name_too_long_for_the_prefix_is_named_with_the_way_out(tmp_path):
    """Local names are capped at 200 characters: a hub list of 197+ under 'hub/' failed
    every run at its first change with the store's "invalid list_name name 'hub/aaa...'",
    naming neither the hub's list nor what to do, and held back every other list."""
    rng = np.random.default_rng(13)
    local, long = tmp_path / "local", "a" * 199
    with running_server(tmp_path / "hub", tenants=TENANTS) as ts:
        ops = ts.client("ops")
        ops.ingest("shared", [signal("pdq", h) for h in _pdq(rng, 2)])
        ops.ingest(long, [signal("pdq", h) for h in _pdq(rng, 2)])
        out = _mirror(ts, "ops", local, code=1)
        assert f"shares list {long[:60]!r}... (199 characters)" in out, out
        assert "shorter --prefix" in out and "--list" in out and "Traceback" not in out
        assert _cursor(local) == 0
        (run,) = _mirror(ts, "ops", tmp_path / "other", "--list", "shared")
        assert run["added"] == 2


def test_a_local_retraction_of_a_signal_the_mirror_retracted_survives_the_hubs_restore(
    tmp_path,
):
    """The hub retracts X, the mirror retracts the local copy, then a local analyst
    retracts X too (their own reason). The analyst's retract changed nothing ("retracted
    0"), so when the hub restored X the mirror restored it here, against the analyst."""
    local, code = tmp_path / "local", "ab" * 32
    with running_server(tmp_path / "hub", tenants=TENANTS) as ts:
        ops = ts.client("ops")
        ops.ingest("shared", [signal("pdq", code), signal("pdq", "cd" * 32)])
        _mirror(ts, "ops", local)
        ops.retract("shared", hashes=[("pdq", code)], reason="hub: wrong")
        assert _mirror(ts, "ops", local)[0]["retracted"] == 1
        argv = ["retract", "--list", PREFIX + "shared", "--reason", "benign here", code]
        result = CliRunner().invoke(cli, [*argv, "--data-dir", str(local)])
        assert result.exit_code == 0, result.output
        ts.engine.store.restore(list_name="shared", hashes=[("pdq", code)], actor="ops")
        (run,) = _mirror(ts, "ops", local)
        assert (run["restored"], run["kept_retracted"]) == (0, 1)
        store = SignalStore(local / "store.sqlite", create=False)
        try:
            assert [(s.hash_hex, s.retract_reason) for s in store.retracted()] == [
                (code, "benign here")
            ]
        finally:
            store.close()


class _RogueHub:
    """A hub that sends the pages it is given (Changes from position i = page i): what
    a buggy or malicious hub can put on the wire that a real one never would."""

    def __init__(self, pages: list[list]) -> None:
        from hashmatch.v1 import signals_pb2_grpc

        self.pages = pages
        self.servicer = type("Rogue", (signals_pb2_grpc.SignalsServicer,), {
            "ListHashLists": lambda _s, request, context: self._lists(),
            "Changes": lambda _s, request, context: self._changes(request.since),
        })()  # fmt: skip

    def _lists(self):
        from hashmatch.v1 import signals_pb2

        shared = signals_pb2.HashList(name="shared", enabled=True)
        return signals_pb2.ListHashListsResponse(lists=[shared])

    def _changes(self, since: int):
        from hashmatch.v1 import signals_pb2

        more = since + 1 < len(self.pages)
        changes = self.pages[since] if since < len(self.pages) else []
        yield signals_pb2.ChangesResponse(head=min(since + 1, len(self.pages)), more=more,
                                          store_id="rogue", changes=changes)  # fmt: skip

    def __enter__(self) -> str:
        from concurrent import futures

        import grpc
        from grpc_health.v1 import health, health_pb2, health_pb2_grpc

        from hashmatch.v1 import signals_pb2_grpc

        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        signals_pb2_grpc.add_SignalsServicer_to_server(self.servicer, self.server)
        status = health.HealthServicer()
        status.set("", health_pb2.HealthCheckResponse.SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(status, self.server)
        port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()
        return f"127.0.0.1:{port}"

    def __exit__(self, *exc) -> None:
        self.server.stop(0)


def _change(sid: int, rng, **fields):
    from hashmatch.v1 import signals_pb2

    fields.setdefault("signal_type", "pdq")
    fields.setdefault("list_name", "shared")
    fields.setdefault("live", True)
    if fields["signal_type"] != "vpdq":
        fields.setdefault("hash", rng.bytes(32))
    return signals_pb2.Change(seq=1, action=signals_pb2.CHANGE_ACTION_ADDED, signal_id=sid,
                              **fields)  # fmt: skip


@pytest.mark.parametrize(
    "bad, says",
    [
        # a 31- and a 33-byte hash were joined and cut into two wrong 32-byte codes
        (lambda rng: [_change(2, rng, hash=rng.bytes(31)), _change(3, rng, hash=rng.bytes(33))],
         "signal 2 of list 'shared', hash): pdq hash must be 32 bytes, got 31"),
        (lambda rng: [_change(2, rng, hash=rng.bytes(31))], "pdq hash must be 32 bytes, got 31"),
        (lambda rng: [_change(2, rng, signal_type="md5", hash=rng.bytes(32))],
         "md5 hash must be 16 bytes, got 32"),
        (lambda rng: [_change(2, rng, expires_at=float("nan"))],
         "expires_at): not a time (epoch seconds or ISO-8601): nan"),
        (lambda rng: [_change(2, rng, signal_type="vpdq", frames=[rng.bytes(31)])],
         "frames[0]): vpdq hash must be 32 bytes, got 31"),
        (lambda rng: [_change(2, rng, signal_type="vpdq")], "a vpdq signal needs at least one"),
        (lambda rng: [_change(2, rng, signal_type="foo")], "unknown signal type 'foo'"),
        # (the store refused these too, as 'record 0' of a strict ingest: no hub, no signal)
        (lambda rng: [_change(2, rng, quality=1000)], "quality): quality must be 0..100"),
        (lambda rng: [_change(2, rng, signal_type="vpdq", frames=[rng.bytes(32)] * 2,
                              frame_qualities=[90, 500])], "frame_qualities[1]"),
        # the store strips names: the list was created as 'hub/other', then not found
        (lambda rng: [_change(2, rng, list_name="other ")], "would be created as 'hub/other'"),
        # a video's hash that is not its frames' (the store keys a video by them)
        (lambda rng: [_change(2, rng, signal_type="vpdq", hash=rng.bytes(32),
                              frames=[rng.bytes(32)]), _change(3, rng, hash=rng.bytes(31))],
         "signal 3 of list 'shared', hash)"),
    ],
)  # fmt: skip
def test_a_hub_sending_a_bad_change_gets_one_clear_error_and_that_page_is_not_written(
    tmp_path, bad, says
):
    rng = np.random.default_rng(7)
    good = [_change(1, rng, labels=["ok"])]
    local = tmp_path / "local"
    with _RogueHub([good, bad(rng)]) as target:
        result = CliRunner().invoke(cli, ["mirror", "--server", target, "--prefix", PREFIX,
                                          "--data-dir", str(local)])  # fmt: skip
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert "Traceback" not in result.output and says in result.output, result.output
    assert "nothing of this page was written" in result.output
    store = SignalStore(local / "store.sqlite", create=False)
    try:  # the good page and its cursor, nothing of the bad one
        assert [s.labels for s in store.iter_signals(PREFIX + "shared")] == [("ok",)]
        assert _cursor(local) == 1
    finally:
        store.close()


def _wait_until_sleeping(procs: list[subprocess.Popen], timeout: float = 60) -> None:
    """Until each process's main thread is seen in a sleep system call 3 times in a row,
    50 ms apart: a mirror waiting for the store's write lock (SQLite's busy handler
    sleeps and retries). Where the calls are unknown, 2 s instead."""
    if proc_syscalls.SLEEP is None:
        time.sleep(2)
        return
    deadline, seen = time.monotonic() + timeout, dict.fromkeys([p.pid for p in procs], 0)
    while min(seen.values()) < 3:
        assert time.monotonic() < deadline, f"not both waiting for the lock: {seen}"
        for pid in seen:
            asleep = proc_syscalls.syscall(f"/proc/{pid}")[0] in proc_syscalls.SLEEP
            seen[pid] = seen[pid] + 1 if asleep else 0
        time.sleep(0.05)


def test_a_follow_that_loses_the_cursor_to_an_overlapping_run_goes_on(tmp_path, caplog):
    """Two mirrors of one prefix at once (a cron run while --follow runs): the loser of
    the page's commit is refused ("advanced its cursor meanwhile"); a --follow retries at
    its next pass instead of exiting. Both wait on the store's write lock held here, so
    both have read the same page when it is released (the lock is released once the hub
    has answered both processes' Changes calls: a fixed 5 s wait was too short for two
    Python start-ups on a loaded box, and one run then read the page after the other
    had committed it)."""
    import logging
    import sqlite3

    caplog.set_level(logging.INFO, logger="hashmatch.access")
    rng = np.random.default_rng(8)
    local = tmp_path / "local"
    with running_server(tmp_path / "hub", tenants=TENANTS) as ts:
        ops = ts.client("ops")
        ops.ingest("shared", [signal("pdq", h) for h in _pdq(rng, 50)])
        SignalStore(local / "store.sqlite", create=True).close()
        lock = sqlite3.connect(local / "store.sqlite", isolation_level=None)
        lock.execute("BEGIN IMMEDIATE")
        procs = [_mirror_process(ts, local, "--follow", "--interval", "0.2") for _ in range(2)]
        try:
            access_log_line(caplog, "Changes", n=2, timeout=60)  # both read the page
            _wait_until_sleeping(procs)  # and wait for the lock (a fixed 0.5 s was short)
            lock.execute("COMMIT")
            deadline = time.monotonic() + 30
            while _cursor(local) == 0 and time.monotonic() < deadline:
                time.sleep(0.05)
            ops.ingest("shared", [signal("pdq", h) for h in _pdq(rng, 5)])
            while len(_local_view(local)) < 55 and time.monotonic() < deadline:
                time.sleep(0.05)
            _wait_for_passes_each(caplog, 2, procs)  # was a 1 s sleep: each goes on passing
            dead = [p.communicate() for p in procs if p.poll() is not None]
            assert not dead, dead
        finally:
            lock.close()
            for p in procs:
                p.send_signal(signals.SIGTERM)
            outs = [p.communicate(timeout=30) for p in procs]
        assert [p.returncode for p in procs] == [0, 0], outs
        assert "advanced its cursor meanwhile" in outs[0][1] + outs[1][1], outs
        assert _local_view(local) == _hub_view(ts.engine.store, None)


def test_a_page_is_checked_before_the_write_lock_is_taken(tmp_path):
    """Planning a page (the last change of each id, every change checked) reads no
    store, so it runs before the page's transaction: a local writer waited 25 s behind
    a hub's 1M-signal page that changed nothing, most of it spent there. Seen from
    outside: with the store's write lock held by another writer, a bad page is refused
    at once instead of after the 60 s busy wait."""
    import sqlite3

    rng = np.random.default_rng(9)
    local = tmp_path / "local"
    SignalStore(local / "store.sqlite", create=True).close()
    lock = sqlite3.connect(local / "store.sqlite", isolation_level=None)
    lock.execute("BEGIN IMMEDIATE")
    try:
        with _RogueHub([[_change(1, rng, hash=rng.bytes(31))]]) as target:
            started = time.monotonic()
            result = CliRunner().invoke(cli, ["mirror", "--server", target, "--prefix", PREFIX,
                                              "--data-dir", str(local)])  # fmt: skip
            took = time.monotonic() - started
    finally:
        lock.close()
    assert result.exit_code == 1 and "pdq hash must be 32 bytes" in result.output, result.output
    assert took < 20, took


def test_an_engine_ingest_inside_a_transaction_reaches_the_index_only_when_it_commits(tmp_path):
    """Ingest's on_commit (the engine's index sync) runs when the ingest's savepoint is
    released, still inside the enclosing transaction: it must not make the live index
    match a signal that is then rolled back (it reads the change log as committed)."""
    from hashmatch.engine.runtime import Engine
    from hashmatch.engine.store import SignalRecord

    code = np.random.default_rng(11).integers(0, 256, 32, dtype=np.uint8)
    with Engine.open(tmp_path / "d") as engine:
        engine.store.create_list("a")
        with (
            pytest.raises(RuntimeError, match="killed before the commit"),
            engine.store.transaction(),
        ):
            engine.ingest([SignalRecord("pdq", code.tobytes().hex())], list_name="a")
            raise RuntimeError("killed before the commit")
        assert engine.match("pdq", code[None, :], threshold=0) == [[]]
        with engine.store.transaction():
            engine.ingest([SignalRecord("pdq", code.tobytes().hex())], list_name="a")
            engine.ingest([SignalRecord("pdq", code.tobytes().hex())], list_name="a",
                          strict=True)  # fmt: skip
        (found,) = engine.match("pdq", code[None, :], threshold=0)
        assert [m.distance for m in found] == [0]


def test_follow_stops_between_passes_on_a_signal_another_thread_received(tmp_path):
    """The kernel may hand SIGTERM to any thread (gRPC's): Python runs the handler in the
    main thread once it next runs bytecode. --follow slept its --interval in one wait, so
    a SIGTERM taken by another thread stopped the mirror only when the interval ended."""
    import threading

    local = tmp_path / "local"
    previous = {s: signals.getsignal(s) for s in (signals.SIGINT, signals.SIGTERM)}
    sent: list[float] = []
    main = threading.get_ident()  # the thread the CLI (and its interval wait) runs in

    def terminate_from_another_thread() -> None:
        # the first pass is done once the main thread waits out its interval
        if wait_running("wait_in_steps", 60, thread=main):
            sent.append(time.monotonic())
        signals.pthread_kill(threading.get_ident(), signals.SIGTERM)

    try:
        with running_server(tmp_path / "hub", tenants=TENANTS) as ts:
            ts.client("ops").ingest("shared", [signal("pdq", "ab" * 32)])
            thread = threading.Thread(target=terminate_from_another_thread)
            thread.start()
            result = CliRunner().invoke(
                cli,
                ["mirror", "--server", ts.target, "--token", ts.tokens["ops"], "--prefix",
                 PREFIX, "--data-dir", str(local), "--follow", "--interval", "20"],
            )  # fmt: skip
            stopped = time.monotonic()
            thread.join()
    finally:
        for s, handler in previous.items():
            signals.signal(s, handler)
    assert result.exit_code == 0, result.output
    assert sent, "the main thread never began its interval wait"
    assert _cursor(local) > 0  # the pass before it mirrored
    assert stopped - sent[0] < 2.0, f"stopped {stopped - sent[0]:.1f} s after SIGTERM"


def test_follow_ends_between_passes_on_a_hang_up_as_on_sigterm(tmp_path):
    """``mirror --follow`` ends between passes on a stop signal, exit 0: on SIGINT and
    SIGTERM it did, but a closed terminal's SIGHUP stopped it wherever it was, as any
    other command (exit 129, 'hashmatch: interrupted (SIGHUP)')."""
    local = tmp_path / "local"
    with running_server(tmp_path / "hub", tenants=TENANTS) as ts:
        ts.client("ops").ingest("shared", [signal("pdq", "ab" * 32)])
        proc = _mirror_process(ts, local, "--follow", "--interval", "0.2")
        try:
            deadline = time.monotonic() + 60
            while _cursor(local) == 0 and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            proc.send_signal(signals.SIGHUP)
            out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "interrupted" not in err, err
    assert "added 1" in out, out
