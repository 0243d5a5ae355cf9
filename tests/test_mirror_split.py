"""``hashmatch mirror`` and ``Signals.Changes`` inside one big log entry: a hub list
re-enabled is ONE entry naming every signal of the list (so is one big strict ingest);
a page stopped only at an entry's end, so one page held them all (1.5 GB at 1M
signals) and the local write lock for seconds. Real hub server over a real socket,
real SQLite on both sides."""

from __future__ import annotations

import os
import signal as signals
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest
from test_mirror import TENANTS, _hub_view, _local_view, _mirror, _mirror_process, _pdq

from hashmatch.engine.store import SignalRecord
from hashmatch.server import changes as changes_rpc
from hashmatch.server.client import signal, video_signal
from hashmatch.server.testing import running_server
from hashmatch.v1 import signals_pb2

N = 30_000


def _big_hub(ts, rng, *, private: int = 500) -> None:
    """A shared list of N PDQ signals written as one log entry (one strict ingest), a
    private list the partner does not see, and the partner's grant."""
    hub = ts.engine.store
    for name, n in (("shared", N), ("private", private)):
        if not n:
            continue
        codes = rng.integers(0, 256, (n, 32), dtype=np.uint8)
        records = [SignalRecord("pdq", c.tobytes().hex(), (name, f"l{i % 5}"), f"e{i}", 60 + i % 40)
                   for i, c in enumerate(codes)]  # fmt: skip
        hub.create_list(name, actor="ops")
        hub.ingest(records, list_name=name, actor="ops", strict=True)
    hub.create_tenant("partner", exist_ok=True)
    hub.grant("partner", "shared")


def _position(data_dir: Path) -> tuple[int, int]:
    """The mirror's cursor: (entries read, remote id read to inside the next one)."""
    if not (data_dir / "store.sqlite").exists():
        return (0, 0)
    conn = sqlite3.connect(data_dir / "store.sqlite", timeout=30)
    try:
        row = conn.execute("SELECT seq, signal_id FROM mirrors").fetchone()
    except sqlite3.OperationalError:
        row = None
    finally:
        conn.close()
    return (row[0], row[1]) if row else (0, 0)


def _older_hub(monkeypatch) -> None:
    """The hub as one built before positions inside an entry: its parser drops the
    fields it does not know, so it pages by whole entries and echoes nothing."""
    real = changes_rpc.changes

    def older(host, request, call):
        request = signals_pb2.ChangesRequest(since=request.since, max_changes=request.max_changes,
                                             signal_types=request.signal_types)  # fmt: skip
        for reply in real(host, request, call):
            reply.split_entries = False
            yield reply

    monkeypatch.setattr(changes_rpc, "changes", older)


@pytest.mark.parametrize("kept", [False, True])
def test_changes_pages_inside_an_entry_show_the_same_changes_to_a_tenant(
    tmp_path, monkeypatch, kept
):
    """The partner's pages of max_changes each, resumed by (head, head_signal_id), are
    exactly the one-call stream: nothing of the private list, no change twice or lost.
    ``kept``: the entry is big enough to be kept between calls (as a 1M one is)."""
    if kept:
        monkeypatch.setattr(changes_rpc, "BIG_ENTRY", 1)
    with running_server(tmp_path / "hub", tenants=TENANTS) as ts:
        _big_hub(ts, np.random.default_rng(1))
        client = ts.client("partner")
        whole = [c.signal_id for r in client.changes(0) for c in r.changes]
        assert len(whole) == N
        paged, pages, since, at = [], 0, 0, 0
        while True:
            replies = list(client.changes(since, max_changes=1000, since_signal_id=at))
            page = [c.signal_id for r in replies for c in r.changes]
            last = replies[-1]
            assert last.split_entries and len(page) <= 1000
            if last.head_signal_id:  # inside the entry: its digest comes with the position
                assert last.head_entry_digest == ts.engine.store.change_digest(last.head + 1)
            if at:
                assert last.since_entry_digest == ts.engine.store.change_digest(since + 1)
            paged += page
            pages += 1
            if not last.more:
                break
            since, at = last.head, last.head_signal_id
        assert paged == whole and pages >= N // 1000
        # an older client (no split_entries) still gets whole entries
        (reply, *_) = list(client.changes(0, max_changes=1000))
        assert not reply.split_entries and reply.head_signal_id == 0


def test_a_re_enabled_list_is_mirrored_in_pages_of_page_size(tmp_path):
    rng = np.random.default_rng(2)
    split, whole = tmp_path / "split", tmp_path / "whole"
    with running_server(tmp_path / "hub", tenants=TENANTS) as ts:
        _big_hub(ts, rng)
        hub = ts.engine.store
        (run,) = _mirror(ts, "partner", split, "--page-size", "1000")
        assert run["pages"] >= N // 1000 and run["added"] == N
        (run,) = _mirror(ts, "partner", whole, "--page-size", str(10 * N))
        assert run["pages"] == 1
        assert _local_view(split) == _local_view(whole) == _hub_view(hub, "partner")
        # disabled, some retracted and some relabelled meanwhile, re-enabled: one entry
        hub.set_list_enabled("shared", False)
        ids = [s.id for s in hub.iter_signals("shared")]
        hub.retract(list_name="shared", signal_ids=ids[::97], actor="ops")
        hub.set_list_enabled("shared", True)
        (run,) = _mirror(ts, "partner", split, "--page-size", "1000")
        assert run["pages"] >= N // 1000 and run["retracted"] == len(ids[::97])
        (run,) = _mirror(ts, "partner", whole, "--page-size", str(10 * N))
        assert run["pages"] == 1
        assert _local_view(split) == _local_view(whole) == _hub_view(hub, "partner")


def test_pages_of_videos_end_by_frames_and_mirror_the_same(tmp_path, monkeypatch):
    """Pages were sized in signals only: 300 videos of 3,000 frames were one page of
    615 MB in the mirror, 10,000 hour-long ones would be ~14 GB. A video now counts
    ceil(frames / FRAMES_PER_CHANGE) changes: a page ends once its frames reach
    max_changes * FRAMES_PER_CHANGE (inside an entry), and the pages resumed by
    (head, head_signal_id) are still exactly the one-call stream. The hub reads the
    frames of at most FRAME_READ frames' worth of videos at a time (it read 900
    videos' at once)."""
    reads = []
    real_frames = changes_rpc._frames

    def frames(store, ids):
        found = real_frames(store, ids)
        reads.append((len(ids), sum(len(codes) for codes, _, _ in found.values())))
        return found

    monkeypatch.setattr(changes_rpc, "FRAME_READ", 100)
    monkeypatch.setattr(changes_rpc, "_frames", frames)
    rng = np.random.default_rng(21)
    limit, budget = 20, 20 * changes_rpc.FRAMES_PER_CHANGE
    videos = [video_signal(_pdq(rng, 20 + i), labels=[f"v{i}"]) for i in range(30)]
    with running_server(tmp_path / "hub", tenants=TENANTS) as ts:
        ops = ts.client("ops")
        assert ops.ingest("shared", videos).rejected == 0  # one log entry of 30 videos
        ops.ingest("shared", [signal("pdq", h) for h in _pdq(rng, 30)])
        whole = [(c.signal_id, len(c.frames)) for r in ops.changes(0) for c in r.changes]
        assert all(n == 1 or frames <= 100 for n, frames in reads) and len(reads) > 5, reads
        pages, since, at = [], 0, 0
        while True:
            replies = list(ops.changes(since, max_changes=limit, since_signal_id=at))
            pages.append([(c.signal_id, len(c.frames)) for r in replies for c in r.changes])
            if not replies[-1].more:
                break
            since, at = replies[-1].head, replies[-1].head_signal_id
        assert [change for page in pages for change in page] == whole
        for page in pages:  # each stops at the change that reaches the budget
            assert sum(frames for _, frames in page[:-1]) < budget, page
            assert len(page) <= limit
        assert len(pages) >= sum(frames for _, frames in whole) // budget + 1
        (run,) = _mirror(ts, "ops", tmp_path / "local", "--page-size", str(limit))
        assert run["pages"] == len(pages) and run["added"] == 60
        (run,) = _mirror(ts, "ops", tmp_path / "one", "--page-size", "1000")
        assert run["pages"] == 1
        hub = _hub_view(ts.engine.store, None)
        assert _local_view(tmp_path / "local") == _local_view(tmp_path / "one") == hub


def test_kill_9_inside_an_entry_then_a_rerun_against_a_new_or_an_older_hub(tmp_path, monkeypatch):
    rng = np.random.default_rng(3)
    with running_server(tmp_path / "hub", tenants=TENANTS) as ts:
        _big_hub(ts, rng, private=0)  # (a list not reached yet is new: the re-run resyncs)
        hub = ts.engine.store
        head = hub.change_counter()
        for rerun_on_older_hub in (False, True):
            killed = tmp_path / f"killed-{rerun_on_older_hub}"
            proc = _mirror_process(ts, killed, "--page-size", "200")
            deadline = time.monotonic() + 120
            while _position(killed)[1] < 3000 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert proc.poll() is None, "the mirror finished before it could be killed"
            os.kill(proc.pid, signals.SIGKILL)
            proc.wait()
            seq, at = _position(killed)
            assert at > 0 and seq < head  # inside an entry
            with monkeypatch.context() as patch:
                if rerun_on_older_hub:  # the rest of the entry comes whole, from its start
                    _older_hub(patch)
                (run,) = _mirror(ts, "ops", killed, "--page-size", "700")
            assert _position(killed) == (head, 0)
            assert _local_view(killed) == _hub_view(hub, None)
            if rerun_on_older_hub:  # whole entries: the shared list's is one page
                assert run["pages"] <= 3 and run["unchanged"] > 0
            else:  # nothing applied twice
                assert run["unchanged"] == 0 and run["pages"] >= (N - at) // 700


def test_an_older_hub_is_mirrored_by_whole_entries(tmp_path, monkeypatch):
    _older_hub(monkeypatch)
    with running_server(tmp_path / "hub", tenants=TENANTS) as ts:
        _big_hub(ts, np.random.default_rng(4))
        (run,) = _mirror(ts, "partner", tmp_path / "local", "--page-size", "1000")
        # the shared list's entry whole in one page (the private one's shows nothing)
        assert run["pages"] == 2 and _position(tmp_path / "local")[1] == 0
        assert _local_view(tmp_path / "local") == _hub_view(ts.engine.store, "partner")


def test_a_cursor_inside_an_entry_the_hub_no_longer_holds_is_refused(tmp_path):
    """A hub restored from a backup taken before the entry the mirror is inside, then
    written again: its entry since + 1 is another one; resuming inside it would skip
    the first part of that other entry."""
    with running_server(tmp_path / "hub", tenants=TENANTS) as ts:
        _big_hub(ts, np.random.default_rng(5), private=0)
        local = tmp_path / "local"
        proc = _mirror_process(ts, local, "--page-size", "200")
        deadline = time.monotonic() + 120
        while _position(local)[1] < 2000 and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(proc.pid, signals.SIGKILL)
        proc.wait()
        assert _position(local)[1] > 0
        conn = sqlite3.connect(local / "store.sqlite")
        with conn:
            conn.execute("UPDATE mirrors SET entry_digest = 'f00'")  # as another entry's
        conn.close()
        before = _local_view(local)
        out = _mirror(ts, "ops", local, code=1)
        assert "of the hub's log is not the one the mirror read" in out, out
        assert _local_view(local) == before
