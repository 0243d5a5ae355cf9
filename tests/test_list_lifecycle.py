"""`hashmatch lists set / rename / delete`: a list's metadata, name and existence change
as partnerships do. Real store, the real CLI (click's runner), and a real gRPC server on
the same data dir for what a delete does to a running service."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from hashmatch.engine.errors import NotFound
from hashmatch.engine.runtime import Engine
from hashmatch.engine.store import SignalRecord, SignalStore
from hashmatch.server.cli import cli
from hashmatch.server.client import signal, video_signal
from hashmatch.server.testing import running_server


def _codes(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [rng.bytes(32).hex() for _ in range(n)]


def _csv(tmp_path, name: str, codes: list[str]) -> str:
    path = tmp_path / f"{name}.csv"
    path.write_text("signal_type,signal_value\n" + "".join(f"pdq,{c}\n" for c in codes))
    return str(path)


def _audit(run, action: str) -> list[dict]:
    return [e for e in json.loads(run("audit", "--json").output) if e["action"] == action]


def test_set_edits_metadata_fields_given_and_audits_old_and_new(run):
    run("lists", "create", "p", "--owner", "Partner A", "--label", "csam", "--description", "d")
    out = run("lists", "set", "p", "--owner", "Program X", "--label", "ncii", "--label", "csam")
    assert "owner 'Program X', labels ncii,csam, description 'd'" in out.output
    (info,) = json.loads(run("lists", "ls", "--json").output)
    assert (info["owner"], info["labels"], info["description"]) == ("Program X", ["ncii", "csam"],
                                                                    "d")  # fmt: skip
    (entry,) = _audit(run, "list.update")
    assert entry["details"] == {"owner": ["Partner A", "Program X"],
                                "labels": [["csam"], ["ncii", "csam"]]}  # fmt: skip
    run("lists", "set", "p", "--clear-labels", "--description", "")
    assert json.loads(run("lists", "ls", "--json").output)[0]["labels"] == []
    run("lists", "set", "p", "--description", "")  # nothing changes: no audit entry
    assert len(_audit(run, "list.update")) == 2
    assert "nothing to set" in run("lists", "set", "p", code=2).output
    assert "no hash list named 'q'" in run("lists", "set", "q", "--owner", "x", code=1).output


def test_rename_keeps_grants_and_matches_and_refuses_a_name_in_use(run, tmp_path):
    (code,) = _codes(1, seed=1)
    run("ingest", _csv(tmp_path, "a", [code]), "--list", "a")
    run("lists", "create", "b")
    run("tenants", "create", "acme")
    run("tenants", "grant", "acme", "a")
    refused = run("lists", "rename", "a", "b", code=1).output
    assert "hash list 'b' already exists" in refused
    assert "renamed list 'a' to 'c'" in run("lists", "rename", "a", "c").output
    # the grant is by list id: acme still matches, under the new name
    found = json.loads(run("match", code, "--tenant", "acme", "--json").output)
    assert [m["list_name"] for m in found[0]["matches"]] == ["c"]
    assert "c" in run("tenants", "ls").output
    (entry,) = _audit(run, "list.rename")
    assert (entry["list_name"], entry["details"]) == ("c", {"from": "a", "to": "c"})
    assert "no hash list named 'a'" in run("lists", "rename", "a", "d", code=1).output


def test_delete_without_yes_says_what_would_go_and_deletes_nothing(run, tmp_path):
    run("ingest", _csv(tmp_path, "a", _codes(3, seed=2)), "--list", "a")
    run("retract", "--list", "a", "--id", "1")
    run("tenants", "create", "acme")
    run("tenants", "grant", "acme", "a")
    refused = run("lists", "delete", "a", code=1).output
    assert "not deleted: list 'a' holds 3 signal(s) (2 live, 1 retracted; pdq 3)" in refused
    assert "1 grant(s) (acme)" in refused and "--yes" in refused
    assert "1 list(s), 2 live signal(s)" in run("lists", "ls").output
    out = run("lists", "delete", "a", "--yes", "--actor", "legal").output
    assert "deleted list 'a': 3 signal(s)" in out
    assert "0 list(s)" in run("lists", "ls").output
    assert "acme" in run("tenants", "ls").output and " a" not in run("tenants", "ls").output
    (entry,) = _audit(run, "list.delete")
    assert (entry["actor"], entry["list_name"], entry["count"]) == ("legal", "a", 3)
    assert entry["details"]["grants"] == ["acme"] and entry["details"]["retracted"] == 1
    # the list's name is free again, and a new list of that name starts empty
    run("lists", "create", "a")
    assert "1 list(s), 0 live signal(s)" in run("lists", "ls").output


def _index_ids(engine, stype: str) -> set[int]:
    """Every live id in the served engine's index of a type (all codes' radius search)."""
    index = engine._indexes.get(stype)
    if index is None or not len(index):
        return set()
    out: set[int] = set()
    for shard in index._state:
        for seg, dead in zip(shard.segments, shard.dead, strict=True):
            ids = np.asarray(seg.ids)
            out |= set((ids if dead is None else ids[dead == 0]).tolist())
    return out


def test_delete_under_a_running_server_stops_matches_changes_and_snapshots(tmp_path):
    """The CLI deletes while `hashmatch serve` runs on the same data dir: the next lookup
    over the socket no longer finds the list's signals (PDQ, MD5, vPDQ frames), a hash
    the kept list also holds still matches there, Changes shows the removals, and the
    next snapshot holds none of the deleted codes (the one before it is pruned)."""
    data = tmp_path / "data"
    gone, kept = _codes(6, seed=3), _codes(2, seed=4)
    frames = _codes(4, seed=5)
    md5 = "d41d8cd98f00b204e9800998ecf8427e"
    with running_server(data) as ts:
        client = ts.client()
        client.ingest("gone", [signal("pdq", c) for c in gone] + [signal("md5", md5)]
                      + [video_signal(frames, external_id="clip")])  # fmt: skip
        client.ingest("kept", [signal("pdq", c) for c in [*kept, gone[0]]])
        client.retract("gone", hashes=[("pdq", gone[1])])
        before = client.match([("pdq", c) for c in gone] + [("md5", md5)], threshold=0)
        assert [len(r.matches) for r in before.results] == [2, 0, 1, 1, 1, 1, 1]
        assert client.match(videos=[frames]).results[0].matches[0].external_id == "clip"
        ts.engine.snapshot()
        head = ts.engine.store.change_counter()

        out = CliRunner().invoke(cli, ["lists", "delete", "gone", "--yes", "--data-dir", str(data)])
        assert out.exit_code == 0, out.output
        assert "8 signal(s) (7 live, 1 retracted; md5 1, pdq 6, vpdq 1), 4 vPDQ frame(s)" in (
            out.output
        )

        after = client.match([("pdq", c) for c in gone] + [("md5", md5)], threshold=0)
        assert [[m.list_name for m in r.matches] for r in after.results] == [["kept"]] + [[]] * 6
        assert not client.match(videos=[frames]).results[0].matches
        left = {s.id for s in ts.engine.store.signals(limit=100)}
        for stype in ("pdq", "md5", "vpdq"):  # the frames too: by their logged index ids
            ids = _index_ids(ts.engine, stype)
            assert {i >> 20 for i in ids} <= left if stype == "vpdq" else ids <= left
        assert not _index_ids(ts.engine, "vpdq") and not _index_ids(ts.engine, "md5")
        assert ts.engine.verify_index()["ok"]

        removed = [(c.signal_id, c.action) for r in client.changes(head) for c in r.changes]
        assert len(removed) == 7 and {a for _, a in removed} == {2}  # CHANGE_ACTION_REMOVED

        snap = ts.engine.snapshot()
        snaps = sorted(p.name for p in snap.parent.iterdir())
        assert snaps == [snap.name]  # the snapshot from before the delete is gone
        saved = b"".join(p.read_bytes() for p in snap.rglob("*") if p.is_file())
        for code in [*gone[1:], *frames]:
            assert bytes.fromhex(code) not in saved
        assert bytes.fromhex(md5) not in saved and bytes.fromhex(kept[0]) in saved

    # a restart from that snapshot serves the same answers
    with running_server(data) as ts:
        after = ts.client().match([("pdq", c) for c in gone], threshold=0)
        assert [[m.list_name for m in r.matches] for r in after.results] == [["kept"]] + [[]] * 5


def test_after_a_delete_no_lookup_returns_a_deleted_signal(tmp_path):
    """Exactness: two lists sharing some codes, one deleted; every stored code and a
    near copy of it, looked up through a loaded engine, finds only the other list."""
    rng = np.random.default_rng(6)
    shared = [rng.bytes(32) for _ in range(50)]
    only_a = [rng.bytes(32) for _ in range(200)]
    only_b = [rng.bytes(32) for _ in range(100)]
    with Engine.open(tmp_path / "data") as engine:
        engine.load()
        for name, codes in (("a", shared + only_a), ("b", shared + only_b)):
            engine.ingest([SignalRecord("pdq", c.hex()) for c in codes], list_name=name,
                          create_list=True)  # fmt: skip
        other = SignalStore(tmp_path / "data" / "store.sqlite")  # as another process would
        other.delete_list("a")
        other.close()
        queries = np.frombuffer(b"".join(shared + only_a + only_b), np.uint8).reshape(-1, 32)
        flipped = queries.copy()
        flipped[:, 0] ^= 0x07  # 3 bits away
        for q in (queries, flipped):
            results = engine.match("pdq", q, threshold=31)
            assert {m.list_name for r in results for m in r} == {"b"}
            hits = [len(r) for r in results]
            assert hits == [1] * 50 + [0] * 200 + [1] * 100


def test_rescan_after_a_rename_and_a_delete(tmp_path):
    """Held matches against a deleted list's signals come back as retractions with
    reason "deleted" (their record names the list); matches against a renamed list are
    kept as recorded (the old name), and new ones carry the new name."""
    from scan_tree import build_tree, ingest_originals

    from hashmatch.engine.catalog import Catalog
    from hashmatch.engine.rescan import rescan
    from hashmatch.engine.scan import LocalMatcher, ScanOptions, scan

    tree = build_tree(tmp_path)
    data = tmp_path / "data"
    ingest_originals(data, tree, ["astronaut"], list_name="gone")
    ingest_originals(data, tree, ["coffee"], list_name="old-name")
    catalog = Catalog(tmp_path / "catalog.sqlite")
    matcher = LocalMatcher.open(data)
    scan([tree.root], catalog=catalog, matcher=matcher,
         options=ScanOptions(workers=1, progress=False))  # fmt: skip
    matcher.close()
    store = SignalStore(data / "store.sqlite", create=False)
    assert rescan(catalog, store).retracted == []  # caught up
    held = set(catalog.conn.execute("SELECT list_name, signal_type FROM matches"))
    assert {("gone", "pdq"), ("gone", "md5"), ("old-name", "pdq")} <= held

    store.rename_list("old-name", "new-name")
    store.delete_list("gone")
    store.close()
    ingest_originals(data, tree, ["chelsea"], list_name="new-name")
    store = SignalStore(data / "store.sqlite", create=False)
    result = rescan(catalog, store, report=tmp_path / "rescan.jsonl")
    store.close()
    assert {(r.match.list_name, r.reason) for r in result.retracted} == {("gone", "deleted")}
    assert {m.list_name for m in result.new} == {"new-name"}
    lists = {name for (name,) in catalog.conn.execute("SELECT list_name FROM matches")}
    assert "gone" not in lists and {"old-name", "new-name"} <= lists
    records = [json.loads(x) for x in (tmp_path / "rescan.jsonl").read_text().splitlines()]
    gone = [r for r in records if r["kind"] == "retraction"]
    assert gone and all((r["list"], r["reason"]) == ("gone", "deleted") for r in gone)
    catalog.close()


def test_the_readme_lines_run(run):
    """The README's `lists set / rename / delete` lines, in order, on a list like its own."""
    import shlex
    from pathlib import Path

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    lines = [ln.split("#")[0] for ln in readme.splitlines()
             if ln.startswith(("hashmatch lists set", "hashmatch lists delete"))]  # fmt: skip
    commands = [shlex.split(c)[1:] for ln in lines for c in ln.split(";  ") if c.strip()]
    assert [c[:2] for c in commands] == [["lists", "set"], ["lists", "rename"],
                                         ["lists", "delete"], ["lists", "delete"]]  # fmt: skip
    run("lists", "create", "partner-a", "--owner", "Partner A", "--label", "csam")
    codes = [0, 0, 1, 0]  # the delete without --yes says what would go and exits 1
    for args, code in zip(commands, codes, strict=True):
        run(*args, code=code)
    assert "0 list(s)" in run("lists", "ls").output


def test_a_deleted_lists_id_is_never_given_to_another_list(tmp_path):
    """List ids are not AUTOINCREMENT: the newest list's id, once deleted, went to the
    next list created, and whatever still held it (an ingest between two batches, a
    lookup's visible lists) took the new list for the deleted one."""
    path = tmp_path / "store.sqlite"
    store = SignalStore(path)
    store.create_list("a")
    gone = store.create_list("b").id
    store.delete_list("b")
    assert store.create_list("c").id > gone
    store.delete_list("c")
    store.close()
    store = SignalStore(path)  # the floor is in the store, not in this process
    report = store.ingest([SignalRecord("pdq", _codes(1, seed=9)[0])], list_name="d",
                          actor="t", create_list=True, strict=True)  # fmt: skip
    assert report.added == 1 and store.get_list("d").id > gone + 1
    store.close()


def test_an_ingest_whose_list_is_deleted_between_batches_writes_into_no_other_list(tmp_path):
    """Another process deletes the list after the ingest's first batch and creates one:
    the later batches are refused, saying so, instead of landing in the new list."""
    path = tmp_path / "store.sqlite"
    store, other = SignalStore(path), SignalStore(path)  # two connections, as two processes
    store.create_list("kept")
    store.create_list("partner-a")
    commits = []

    def deleted_after_the_first_batch() -> None:
        commits.append(1)
        if len(commits) == 1:
            other.delete_list("partner-a")
            other.create_list("partner-b")

    records = [SignalRecord("pdq", c) for c in _codes(12, seed=10)]
    with pytest.raises(NotFound, match="'partner-a' was deleted while this ingest ran"):
        store.ingest(records, list_name="partner-a", actor="t", batch_size=4,
                     on_commit=deleted_after_the_first_batch)  # fmt: skip
    assert [(i.name, i.signal_count) for i in store.lists()] == [("kept", 0), ("partner-b", 0)]
    orphan = "SELECT COUNT(*) FROM signals WHERE list_id NOT IN (SELECT id FROM hash_lists)"
    (orphans,) = store.conn().execute(orphan).fetchone()
    assert orphans == 0 and len(commits) == 1
    store.close()
    other.close()


def test_a_retract_whose_list_is_deleted_as_it_runs_says_the_list_was_deleted(tmp_path):
    """Another process deletes the list after the retract resolved its targets, before
    its write: it reported 0 retracted, no error, and the server then answered NOT_FOUND
    "no hash list named ..." (read as a mistyped name). Now it names the list and says
    it was deleted; a retract sent after the delete says when it was."""
    import threading

    path = tmp_path / "store.sqlite"
    store, other = SignalStore(path), SignalStore(path)  # two connections, as two processes
    codes = _codes(3, seed=11)
    store.ingest([SignalRecord("pdq", c) for c in codes], list_name="partner-a", actor="t",
                 create_list=True)  # fmt: skip
    outcome: list = []
    waits_to_write = threading.Event()

    def retract() -> None:
        # SQLite names each statement as it starts: BEGIN IMMEDIATE comes after the
        # targets were resolved, and blocks while `other` holds the write lock
        store.conn().set_trace_callback(
            lambda sql: waits_to_write.set() if sql.startswith("BEGIN IMMEDIATE") else None
        )
        try:
            outcome.append(store.retract(list_name="partner-a", hashes=[("pdq", codes[0])]))
        except NotFound as exc:
            outcome.append(exc)

    with other.transaction():  # holds the write lock: the retract resolves, then waits
        worker = threading.Thread(target=retract)
        worker.start()
        assert waits_to_write.wait(30), "the retract never reached its write"
        other.delete_list("partner-a")
    worker.join(30)
    assert len(outcome) == 1 and isinstance(outcome[0], NotFound), outcome
    said = "list 'partner-a' was deleted while this retract ran (its signals went with it):"
    assert outcome[0].message == f"{said} nothing was retracted"
    with pytest.raises(NotFound, match=r"no hash list named 'partner-a'; it was deleted at 20"):
        store.retract(list_name="partner-a", hashes=[("pdq", codes[1])])
    store.close()
    other.close()


def test_a_retract_sent_to_a_deleted_list_hears_when_it_was_deleted(tmp_path):
    """Over the server, as an admin: NOT_FOUND naming the list and when it was deleted
    (before: "no hash list named ...", which reads as a typo); a tenant's reply still
    tells nothing of which lists exist."""
    import grpc

    tenants = {"ops": (["admin", "write"], True), "acme": (["write"], False)}
    with running_server(tmp_path, tenants=tenants) as ts:
        client = ts.client("ops")
        client.ingest("gone", [signal("pdq", _codes(1, seed=12)[0])])
        ts.engine.store.delete_list("gone")
        with pytest.raises(grpc.RpcError) as err:
            client.retract("gone", signal_ids=[1])
        with pytest.raises(grpc.RpcError) as tenant_err:
            ts.client("acme").retract("gone", signal_ids=[1])
    assert err.value.code() is grpc.StatusCode.NOT_FOUND
    assert "no hash list named 'gone'; it was deleted at 20" in err.value.details()
    assert tenant_err.value.details() == "list_name: no hash list by that name is shared with you"


def _snapshot_bytes(snap) -> bytes:
    return b"".join(p.read_bytes() for p in snap.rglob("*") if p.is_file())


def test_a_deleted_list_whose_signals_were_all_retracted_leaves_no_code_in_a_snapshot(tmp_path):
    """A retracted signal stays in the index as a tombstoned row, code and all. Deleting a
    list whose signals were all retracted removed no live row, so the engine did not
    compact before its next snapshot, which then wrote the deleted codes to disk."""
    gone, kept = _codes(3, seed=11), _codes(5, seed=12)
    with Engine.open(tmp_path / "data") as engine:
        for name, codes in (("gone", gone), ("kept", kept)):
            engine.ingest([SignalRecord("pdq", c) for c in codes], list_name=name,
                          create_list=True)  # fmt: skip
        engine.retract(list_name="gone", hashes=[("pdq", c) for c in gone])
        assert bytes.fromhex(gone[0]) in _snapshot_bytes(engine.snapshot())  # tombstoned
        other = SignalStore(tmp_path / "data" / "store.sqlite")  # as the CLI would
        other.delete_list("gone")
        other.close()
        saved = _snapshot_bytes(engine.snapshot())
        assert not [c for c in gone if bytes.fromhex(c) in saved]
        assert all(bytes.fromhex(c) in saved for c in kept)
        assert engine.verify_index()["ok"]


def test_a_delete_a_lookup_applies_while_a_snapshot_starts_is_compacted_away(tmp_path):
    """Under lookup load, a lookup's sync can apply a delete between snapshot() deciding
    whether to compact and freezing the indexes: the snapshot, taken after the delete
    (so kept by the pruning), held the deleted codes. Here that lookup runs at exactly
    that moment (wrapping the engine's own freeze step)."""
    gone, kept = _codes(4, seed=13), _codes(4, seed=14)
    with Engine.open(tmp_path / "data") as engine:
        for name, codes in (("gone", gone), ("kept", kept)):
            engine.ingest([SignalRecord("pdq", c) for c in codes], list_name=name,
                          create_list=True)  # fmt: skip
        freeze = engine._freeze

        def a_lookup_applies_a_delete_first(*args, **kwargs):
            other = SignalStore(tmp_path / "data" / "store.sqlite")
            other.delete_list("gone")
            other.close()
            assert engine.match_hex("pdq", gone[:1]) == [[]]  # the lookup's sync
            return freeze(*args, **kwargs)

        engine._freeze = a_lookup_applies_a_delete_first
        saved = _snapshot_bytes(engine.snapshot())
        assert not [c for c in gone if bytes.fromhex(c) in saved]
        assert all(bytes.fromhex(c) in saved for c in kept)


def test_a_list_label_that_cannot_be_stored_as_given_is_refused(run):
    """Ingest refuses such a signal label; `lists create` and `lists set` split
    "a<U+001F>b" into two labels without a word."""
    why = "labels may not contain NUL (U+0000) or the unit separator (U+001F)"
    assert why in run("lists", "create", "p", "--label", "a\x1fb", code=1).output
    run("lists", "create", "q", "--label", "kept")
    assert why in run("lists", "set", "q", "--label", "ok", "--label", "c\x1fd", code=1).output
    (info,) = json.loads(run("lists", "ls", "--json").output)
    assert (info["name"], info["labels"]) == ("q", ["kept"])
    # an empty --label cleared every label without a word: --clear-labels says it
    blank = run("lists", "set", "q", "--label", " ", code=1).output
    assert "a label may not be empty" in blank and "--clear-labels" in blank
    assert "a label may not be empty" in run("lists", "create", "r", "--label", "", code=1).output
    assert [i["labels"] for i in json.loads(run("lists", "ls", "--json").output)] == [["kept"]]


def test_renaming_a_list_to_its_own_name_says_so(run):
    """It answered "hash list 'p' already exists", as if another list had the name."""
    run("lists", "create", "p")
    for same in ("p", " p "):
        assert "list 'p' already has that name" in run("lists", "rename", "p", same, code=1).output
    assert not _audit(run, "list.rename")


def test_delete_names_the_snapshots_that_still_hold_the_list(run, tmp_path):
    """The CLI deletes from the store; a snapshot taken before holds the list's codes on
    disk until the next snapshot prunes it (no server may be running to take one)."""
    run("ingest", _csv(tmp_path, "a", _codes(3, seed=15)), "--list", "a")
    run("ingest", _csv(tmp_path, "b", _codes(3, seed=16)), "--list", "b")
    assert "snapshot" not in run("lists", "delete", "b", "--yes").output  # none taken
    run("index", "snapshot")
    out = run("lists", "delete", "a", "--yes").output
    assert "note: 1 index snapshot(s) in" in out and "were taken before this delete" in out
    assert "`hashmatch index snapshot`" in out
    run("index", "snapshot")  # prunes it
    assert len(list((tmp_path / "data" / "snapshots").iterdir())) == 1


def test_a_delete_while_a_reader_holds_the_store_stalls_no_writer(run, tmp_path):
    """A reader of an older snapshot (a server's index rebuild, a backup) keeps the WAL:
    the delete's checkpoint waited for it with the 60 s busy timeout, and SQLite holds
    off every new writer meanwhile. Now it gives up soon and says the old pages stay."""
    import sqlite3
    import threading

    run("ingest", _csv(tmp_path, "a", _codes(3, seed=17)), "--list", "a")
    path = tmp_path / "data" / "store.sqlite"
    reader = sqlite3.connect(path, isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT COUNT(*) FROM signals").fetchone()  # an older snapshot, held
    outcome: list = []

    def another_process_writes() -> None:  # once the delete has committed
        store = SignalStore(path)
        while "a" in {i.name for i in store.lists()}:
            pass
        store.conn().execute("PRAGMA busy_timeout = 10000")  # 10 s: far more than needed
        try:
            store.create_list("b")
            outcome.append("written")
        except sqlite3.OperationalError as exc:
            outcome.append(str(exc))
        store.close()

    writer = threading.Thread(target=another_process_writes)
    writer.start()
    out = run("lists", "delete", "a", "--yes").output
    writer.join()
    reader.execute("COMMIT")
    assert outcome == ["written"]
    assert "note: a reader held the store" in out and "store.sqlite until" in out


def test_an_older_builds_snapshot_after_a_delete_is_cleaned_at_load(tmp_path, monkeypatch):
    """An older build skips the log's `purge` rows: a snapshot it writes after a delete
    still holds the deleted videos' frames (its `remove` of a video needs the frame
    count, gone with the rows), and this build loaded it as it was (`index verify`:
    vpdq MISMATCH) and kept it on disk. Such a snapshot (no `applies_purges` in its
    manifest) now has the purges at or before its position applied at load, and the
    next snapshot is compacted and prunes it."""
    import hashmatch.engine.runtime as runtime

    rng = np.random.default_rng(15)
    frames = [rng.bytes(32).hex() for _ in range(4)]
    data = tmp_path / "data"
    with monkeypatch.context() as older:  # an older build: no purge op
        older.setattr(runtime, "PURGE", "an op this build does not know")
        with Engine.open(data) as engine:
            engine.ingest([SignalRecord("vpdq", "", frames=np.array(
                [np.frombuffer(bytes.fromhex(f), np.uint8) for f in frames]))],
                list_name="gone", create_list=True)  # fmt: skip
            engine.ingest([SignalRecord("pdq", c) for c in _codes(3, seed=16)],
                          list_name="kept", create_list=True)  # fmt: skip
            engine.snapshot()
            other = SignalStore(data / "store.sqlite")
            other.delete_list("gone")
            other.close()
            engine.sync()
            old = engine.snapshot()
    manifest = json.loads((old / "manifest.json").read_text())
    manifest.pop("applies_purges", None)  # an older build writes none
    (old / "manifest.json").write_text(json.dumps(manifest))
    assert bytes.fromhex(frames[0]) in _snapshot_bytes(old)
    with Engine.open(data) as engine:
        engine.load()
        assert engine.load_info["snapshot"] == old.name
        assert engine.verify_index()["ok"], engine.verify_index()
        new = engine.snapshot()
    assert not [f for f in frames if bytes.fromhex(f) in _snapshot_bytes(new)]
    assert [p.name for p in (data / "snapshots").iterdir()] == [new.name]
