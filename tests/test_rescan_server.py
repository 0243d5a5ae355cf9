"""``hashmatch rescan --server``: retroactive matching through a real server over a real
socket (Signals.Changes + Signals.SignalStates) finds exactly what a local rescan of the
same store finds, without hashing, and a tenant sees only the lists shared with it."""

from __future__ import annotations

import json
import secrets
import shutil
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from click.testing import CliRunner
from scan_tree import build_tree, ingest_originals

import hashmatch.engine.decode as decode_module
import hashmatch.engine.hashing as hashing_module
from hashmatch.engine.catalog import Catalog
from hashmatch.engine.errors import Conflict
from hashmatch.engine.hashing import hash_media
from hashmatch.engine.rescan import ServerChanges, rescan
from hashmatch.engine.scan import RemoteMatcher, ScanOptions, scan
from hashmatch.engine.store import SignalRecord
from hashmatch.server.auth import TokenAuth, tenant_entry
from hashmatch.server.cli import cli
from hashmatch.server.client import signal
from hashmatch.server.errors import bad_request_fields
from hashmatch.server.testing import running_server
from hashmatch.v1 import signals_pb2

TENANTS = {
    "ops": (["match", "export", "write"], True),
    "partner": (["match", "export"], False),
    "matcher": (["match"], False),
}


def _records(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def _body(path):
    return [r for r in _records(path) if r["kind"] != "summary"]


def _run_rescan(ts, tenant, catalog, out, *extra):
    return CliRunner().invoke(
        cli,
        ["rescan", "--server", ts.target, "--token", ts.tokens[tenant],
         "--catalog", str(catalog), "--out", str(out), *extra],
    )  # fmt: skip


def _rescan_cli(ts, tenant, catalog, out, *extra):
    result = _run_rescan(ts, tenant, catalog, out, *extra)
    assert result.exit_code == 0, result.output
    return _records(out)


def _rescan_refused(ts, tenant, catalog, out, *extra):
    result = _run_rescan(ts, tenant, catalog, out, *extra)
    assert result.exit_code == 1 and not out.exists(), result.output
    return result.output


def _ingest(client, tree, names, list_name):
    items = []
    for name in names:
        for h in hash_media(tree.originals[name], ["pdq", "md5"]):
            items.append(signal(h.signal_type, h.hex, labels=[name], external_id=name))
    reply = client.ingest(list_name, items)
    assert reply.added == len(items) and reply.rejected == 0


def test_rescan_through_a_server_equals_a_local_rescan(tmp_path, monkeypatch):
    tree = build_tree(tmp_path)
    root = tree.root
    served = tmp_path / "served"
    first = ingest_originals(served, tree, ["astronaut"], list_name="early")
    catalog_path = tmp_path / "catalog.sqlite"
    with running_server(served, tenants=TENANTS) as ts:
        ops = ts.client("ops")
        with Catalog(catalog_path) as catalog:
            scan([root], catalog=catalog, matcher=RemoteMatcher(ts.client("ops")),
                 options=ScanOptions(workers=0, progress=False))  # fmt: skip
            hash_calls = catalog.counter("hash_calls")
            assert hash_calls == 10 and catalog.stats()["matches"] == 3  # astronaut x2, md5
        # the first rescan catches up with the whole log: the scan already found it all
        caught_up = _rescan_cli(ts, "ops", catalog_path, tmp_path / "r0.jsonl")
        assert [r["kind"] for r in caught_up] == ["summary"]

        # a partner shares chelsea and rocket; astronaut's MD5 is retracted
        _ingest(ops, tree, ["chelsea", "rocket"], "later")
        assert ops.retract("early", signal_ids=[first[("astronaut", "md5")]]).retracted == 1
        later = {
            (i.external_id, i.signal_type): i.id
            for i in ts.engine.store.signals(list_name="later", limit=100)
        }
        shutil.copy(catalog_path, tmp_path / "local.sqlite")  # same state, rescanned locally

        def boom(*args, **kwargs):
            raise AssertionError("a rescan must not hash or decode media")

        monkeypatch.setattr(hashing_module, "hash_media", boom)
        monkeypatch.setattr(decode_module, "decode_image", boom)
        records = _rescan_cli(ts, "ops", catalog_path, tmp_path / "r1.jsonl")
        assert [(r["kind"], r["file"], r["type"], r["signal_id"]) for r in records[:-1]] == [
            ("match", str(root / "near/chelsea-q80.jpg"), "pdq", later[("chelsea", "pdq")]),
            ("match", str(root / "unrelated/rocket.png"), "md5", later[("rocket", "md5")]),
            ("match", str(root / "unrelated/rocket.png"), "pdq", later[("rocket", "pdq")]),
            ("retraction", str(root / "exact/astronaut-copy.png"), "md5",
             first[("astronaut", "md5")]),
        ]  # fmt: skip
        assert records[0]["list"] == "later" and records[0]["labels"] == ["chelsea"]
        assert records[0]["external_id"] == "chelsea" and 0 < records[0]["distance"] <= 31
        assert records[3]["reason"] == "retracted"
        summary = records[-1]
        assert summary["new_signals"] == {"md5": 2, "pdq": 2} and summary["removed_signals"] == 1
        assert summary["hash_calls"] == hash_calls  # nothing was hashed

        with Catalog(tmp_path / "local.sqlite") as local:  # the same store, read directly
            since = int(local.get_meta(f"rescan_seq@{ts.target}"))  # where the server one was
            result = rescan(local, ts.engine.store, since=since, report=tmp_path / "local.jsonl")
        assert _body(tmp_path / "local.jsonl") == _body(tmp_path / "r1.jsonl")
        assert result.summary.new_signals == summary["new_signals"]

        again = _rescan_cli(ts, "ops", catalog_path, tmp_path / "r2.jsonl")
        assert [r["kind"] for r in again] == ["summary"]
        assert again[0]["new_signals"] == {} and again[0]["hash_calls"] == hash_calls
        with Catalog(catalog_path) as catalog:
            head = ts.engine.store.change_counter()
            assert catalog.get_meta(f"rescan_seq@{ts.target}") == str(head)
            assert catalog.get_meta("rescan_seq") is None  # the local cursor is separate

        # list disabled on the server: its held matches are reported through SignalStates
        ts.engine.store.set_list_enabled("later", False)
        gone = _rescan_cli(ts, "ops", catalog_path, tmp_path / "r3.jsonl")
        assert (
            sorted((r["kind"], r["reason"]) for r in gone[:-1])
            == [("retraction", "list-disabled")] * 3
        )


def _report(result, catalog):
    """A rescan's new matches and retractions, by file name (comparable across catalogs)."""
    paths = catalog.path_of(sorted({m.file_id for m in result.new}
                                   | {r.match.file_id for r in result.retracted}))  # fmt: skip
    new = sorted((paths[m.file_id], m.signal_type, m.signal_id, m.signal_hex, m.distance,
                  m.list_name, m.labels, m.external_id) for m in result.new)  # fmt: skip
    gone = sorted((paths[r.match.file_id], r.match.signal_id, r.reason) for r in result.retracted)
    return new, gone


def test_a_paged_read_of_the_log_finds_what_one_read_finds(tmp_path):
    """ServerChanges reads the hub's log in pages of page_size changes (a hub of millions
    of signals was one stream kept whole as protobuf messages); what it finds is what one
    read of the whole log finds, whatever the page size, with the net effect of the log
    across pages: signals added in one page and retracted in a later one, signals added
    again after a retraction, a list disabled and re-enabled, videos with their frames."""
    tree = build_tree(tmp_path)
    served = tmp_path / "served"
    catalog_path = tmp_path / "catalog.sqlite"
    with Catalog(catalog_path) as catalog:
        scan([tree.root], catalog=catalog, matcher=None,
             options=ScanOptions(workers=0, progress=False))  # fmt: skip
    rng = np.random.default_rng(7)
    with running_server(served, tenants=TENANTS) as ts:
        ops = ts.client("ops")
        _ingest(ops, tree, ["astronaut", "coffee"], "early")
        _ingest(ops, tree, ["chelsea", "rocket"], "later")
        early = {(i.external_id, i.signal_type): i.id
                 for i in ts.engine.store.signals(list_name="early", limit=100)}  # fmt: skip
        ops.retract("early", signal_ids=[early[("coffee", "md5")], early[("coffee", "pdq")]])
        ts.engine.restore(list_name="early", signal_ids=[early[("coffee", "pdq")]])  # back
        ts.engine.store.set_list_enabled("later", False)
        ts.engine.store.set_list_enabled("later", True)
        videos = [SignalRecord("vpdq", "", frames=rng.integers(0, 256, (n, 32), np.uint8))
                  for n in (1, 25, 40)]  # fmt: skip
        assert ts.engine.ingest(videos, list_name="videos").added == 3
        _ingest(ops, tree, ["astronaut"], "again")  # the same hashes in another list
        video_ids = [i.id for i in ts.engine.store.signals(list_name="videos", limit=10)]

        results, pages = {}, {}
        for page_size in (0, 1, 3, 10_000):  # 0: the whole log in one Changes call
            path = tmp_path / f"c{page_size}.sqlite"
            shutil.copy(catalog_path, path)
            source = ServerChanges(ts.client("ops"), ts.target, page_size=page_size)
            with Catalog(path) as catalog:
                result = rescan(catalog, source, since=0, cache_dir=tmp_path / f"x{page_size}")
                found = _report(result, catalog)
            summary = result.summary
            results[page_size] = (found, summary.new_signals, summary.removed_signals, summary.to)
            assert sorted(len(v.codes) for v in source.video_frames(video_ids).values()) == [
                1,
                25,
                40,
            ]
            pages[page_size] = source.pages
        shutil.copy(catalog_path, tmp_path / "local.sqlite")
        with Catalog(tmp_path / "local.sqlite") as local:
            mine = rescan(local, ts.engine.store, since=0, cache_dir=tmp_path / "xl")
            local_report = _report(mine, local)
    assert pages[0] == 1 and pages[10_000] == 1
    assert pages[1] > pages[3] > 5  # pages inside log entries too (one ingest = one entry)
    assert results[1] == results[3] == results[10_000] == results[0]
    (new, gone), new_signals, removed, _head = results[0]
    assert new_signals == {"md5": 4, "pdq": 5, "vpdq": 3} and removed == 1
    assert {(n[1], n[5], n[7]) for n in new} >= {("pdq", "early", "coffee"),
                                                  ("md5", "later", "rocket"),
                                                  ("pdq", "again", "astronaut")}  # fmt: skip
    assert ("md5", "early", "coffee") not in {(n[1], n[5], n[7]) for n in new}  # retracted
    assert (new, gone) == local_report  # and what a rescan of the store itself finds


def test_added_changes_carry_the_expiry_as_ingested(tmp_path):
    """A mirror of a list must stop matching a signal on time, and no change is logged
    when it expires: the ADDED change says when (unset = never)."""
    later = time.time() + 3600
    with running_server(tmp_path / "served", tenants=TENANTS) as ts:
        ops = ts.client("ops")
        reply = ops.ingest("timed", [
            signal("pdq", "ab" * 32, expires_at=later),
            signal("pdq", "cd" * 32),
            signal("pdq", "ef" * 32, expires_at=time.time() - 1),  # already expired
        ])  # fmt: skip
        assert reply.added == 3
        changes = {c.hash.hex(): c for r in ops.changes(0) for c in r.changes}
    assert changes["ab" * 32].expires_at == pytest.approx(later)
    assert not changes["cd" * 32].HasField("expires_at")
    (gone,) = [c for c in changes.values() if not c.live]  # expired: no code, no expiry
    assert not gone.HasField("expires_at") and not gone.hash


def test_a_tenant_sees_only_changes_of_lists_shared_with_it(tmp_path):
    tree = build_tree(tmp_path)
    served = tmp_path / "served"
    early = ingest_originals(served, tree, ["coffee"], list_name="early")
    later = ingest_originals(served, tree, ["rocket"], list_name="later")
    with running_server(served, tenants=TENANTS) as ts:
        ts.engine.store.create_tenant("partner", exist_ok=True)
        ts.engine.store.grant("partner", "early")
        partner, ops = ts.client("partner"), ts.client("ops")

        def seen(client):
            return {c.signal_id for r in client.changes(0) for c in r.changes}

        assert seen(ops) == set(early.values()) | set(later.values())
        assert seen(partner) == set(early.values())
        coffee_pdq, rocket_pdq = early[("coffee", "pdq")], later[("rocket", "pdq")]
        live, deleted = signals_pb2.SIGNAL_STATE_LIVE, signals_pb2.SIGNAL_STATE_DELETED
        assert ops.signal_states([coffee_pdq, rocket_pdq, 10**9]) == [live, live, deleted]
        assert partner.signal_states([coffee_pdq, rocket_pdq]) == [live, deleted]
        # an added change carries the signal as stored
        (reply,) = list(partner.changes(0, signal_types=["pdq"]))
        (change,) = reply.changes
        assert change.action == signals_pb2.CHANGE_ACTION_ADDED and change.live
        assert (change.signal_id, change.list_name, list(change.labels)) == (
            coffee_pdq,
            "early",
            ["coffee"],
        )
        assert change.hash.hex() == ts.engine.store.signals(ids=[coffee_pdq])[0].hash_hex
        assert reply.head == ts.engine.store.change_counter() and not reply.more

        # max_changes pages at log-entry boundaries; the pages add up to the whole log
        pages, since = [], 0
        while True:
            (page,) = list(ops.changes(since, max_changes=1))
            pages.append(page)
            since = page.head
            if not page.more:
                break
        assert len(pages) == 4  # one log entry per ingest and type
        assert {c.signal_id for p in pages for c in p.changes} == seen(ops)

        # rescan --server as the partner, over every file: only coffee's matches
        with Catalog(tmp_path / "c.sqlite") as catalog:
            scan([tree.root], catalog=catalog, matcher=None,
                 options=ScanOptions(workers=0, progress=False))  # fmt: skip
        records = _rescan_cli(ts, "partner", tmp_path / "c.sqlite", tmp_path / "p.jsonl")
        assert {(r["list"], r["type"]) for r in records[:-1]} == {
            ("early", "md5"),
            ("early", "pdq"),
        }
        # a copy of the catalog made ops's (--since all) adds rocket's matches
        shutil.copy(tmp_path / "c.sqlite", tmp_path / "o.sqlite")
        records = _rescan_cli(
            ts, "ops", tmp_path / "o.sqlite", tmp_path / "o.jsonl", "--since", "all"
        )
        assert {(r["list"], r["type"]) for r in records[:-1]} == {
            ("later", "md5"),
            ("later", "pdq"),
        }
        # the hub deletes 'early' (`lists delete`): the partner, whose grant went with it,
        # is told its name, and its held matches of it are retracted as deleted
        ts.engine.store.delete_list("early")
        assert [d.list_name for r in partner.changes(0) for d in r.deleted_lists] == ["early"]
        records = _rescan_cli(ts, "partner", tmp_path / "c.sqlite", tmp_path / "d.jsonl")
        gone = {(r["kind"], r["list"], r["reason"]) for r in records[:-1]}
        assert gone == {("retraction", "early", "deleted")}


def _held(catalog_path):
    with Catalog(catalog_path) as catalog:
        return sorted((m.file_id, m.list_name, m.signal_type, m.signal_id)
                      for m in catalog._matches_of(catalog.matched_signal_ids()))  # fmt: skip


def test_a_catalog_rescanned_by_another_tenant_is_refused_not_retracted(tmp_path):
    """A catalog's cursor and matches are one tenant's view. Rescanned with a token of
    a tenant that sees fewer lists, every held match of a list it cannot see read as
    DELETED and was retracted (a flood of false "deleted", lost for good); with one
    that sees more, the signals of its other lists before the cursor were never
    matched. So another tenant is refused, nothing committed; a rotated token of the
    same tenant goes on; ``--since all`` makes the catalog the new tenant's."""
    tree = build_tree(tmp_path)
    served = tmp_path / "served"
    ingest_originals(served, tree, ["coffee"], list_name="early")
    ingest_originals(served, tree, ["rocket"], list_name="later")
    catalog_path = tmp_path / "c.sqlite"
    with Catalog(catalog_path) as catalog:
        scan([tree.root], catalog=catalog, matcher=None,
             options=ScanOptions(workers=0, progress=False))  # fmt: skip
    with running_server(served, tenants=TENANTS) as ts:
        ts.engine.store.create_tenant("partner", exist_ok=True)
        ts.engine.store.grant("partner", "early")
        found = _rescan_cli(ts, "ops", catalog_path, tmp_path / "o.jsonl")
        assert {r["list"] for r in found[:-1]} == {"early", "later"}
        held = _held(catalog_path)

        message = _rescan_refused(ts, "partner", catalog_path, tmp_path / "p.jsonl")
        assert "tenant 'ops'" in message and "tenant 'partner'" in message
        assert "--since all" in message
        assert _held(catalog_path) == held  # nothing retracted, nothing committed
        again = _rescan_cli(ts, "ops", catalog_path, tmp_path / "o2.jsonl")
        assert [r["kind"] for r in again] == ["summary"]

        # --since all: the catalog becomes the partner's (its matches of 'later' go)
        adopted = _rescan_cli(ts, "partner", catalog_path, tmp_path / "a.jsonl", "--since", "all")
        assert {(r["kind"], r["list"]) for r in adopted[:-1]} == {("retraction", "later")}
        # a rotated token of the same tenant goes on from the cursor
        rotated = secrets.token_urlsafe(16)
        tokens = Path(ts.server.host.config.data_dir) / "auth.toml"
        tokens.write_text(
            tenant_entry("ops", ts.tokens["ops"], TENANTS["ops"][0], all_lists=True) + "\n"
            + tenant_entry("partner", rotated, TENANTS["partner"][0]) + "\n"
        )  # fmt: skip
        ts.server.host.auth = TokenAuth.from_file(tokens)
        ts.tokens["partner"] = rotated
        assert [r["kind"] for r in _rescan_cli(ts, "partner", catalog_path,
                                               tmp_path / "r.jsonl")] == ["summary"]  # fmt: skip
        assert "tenant 'partner'" in _rescan_refused(ts, "ops", catalog_path, tmp_path / "x.jsonl")


def test_a_catalog_scanned_through_one_tenant_is_refused_to_another(tmp_path):
    """Matches a ``scan --server`` found through an admin's token read as deleted to a
    partner's first rescan (no cursor kept yet): the scan keeps its tenant too, and a
    scan through another tenant is refused before a file is hashed."""
    tree = build_tree(tmp_path)
    served = tmp_path / "served"
    ingest_originals(served, tree, ["coffee"], list_name="early")
    ingest_originals(served, tree, ["rocket"], list_name="later")
    catalog_path = tmp_path / "c.sqlite"
    with running_server(served, tenants=TENANTS) as ts:
        ts.engine.store.create_tenant("partner", exist_ok=True)
        ts.engine.store.grant("partner", "early")

        def scan_as(tenant):
            return CliRunner().invoke(cli, [
                "scan", str(tree.root), "--server", ts.target, "--token", ts.tokens[tenant],
                "--catalog", str(catalog_path), "--workers", "0", "--no-progress",
                "--out", str(tmp_path / f"scan-{tenant}.jsonl")])  # fmt: skip

        assert scan_as("ops").exit_code == 0
        held = _held(catalog_path)
        assert {m[1] for m in held} == {"early", "later"}
        message = _rescan_refused(ts, "partner", catalog_path, tmp_path / "p.jsonl")
        assert "tenant 'ops'" in message and "tenant 'partner'" in message
        refused = scan_as("partner")
        assert refused.exit_code == 1 and "tenant 'ops'" in refused.output
        with Catalog(catalog_path) as catalog:
            assert catalog.counter("hash_calls") == 10  # the ops scan's only
        assert _held(catalog_path) == held
        caught_up = _rescan_cli(ts, "ops", catalog_path, tmp_path / "o.jsonl")
        assert [r["kind"] for r in caught_up] == ["summary"]


class _OlderServer:
    """A real client whose Changes replies lack ``tenant``, as a server older than the
    field sends them."""

    def __init__(self, client):
        self._client = client

    def changes(self, *args, **kwargs):
        for reply in self._client.changes(*args, **kwargs):
            reply.ClearField("tenant")
            yield reply

    def signal_states(self, ids):
        return self._client.signal_states(ids)


def test_a_tenant_is_kept_only_where_known(tmp_path):
    """A catalog rescanned before the tenant was kept, and a server older than the
    field, go on as before: the tenant is checked once both sides name one, and an
    older server's rescan leaves the tenant kept before in place."""
    served = tmp_path / "served"
    with running_server(served, tenants=TENANTS) as ts:
        ts.client("ops").ingest("early", [signal("pdq", "ab" * 32)])
        path = tmp_path / "c.sqlite"
        key = f"rescan_log@{ts.target}"
        with Catalog(path) as catalog:
            rescan(catalog, ServerChanges(ts.client("ops"), ts.target))
            assert json.loads(catalog.get_meta(key))["tenant"] == "ops"
            record = json.loads(catalog.get_meta(key))
            del record["tenant"]  # as a catalog rescanned before it was kept
            catalog.set_meta(key, json.dumps(record))
            rescan(catalog, ServerChanges(ts.client("partner"), ts.target))
            assert json.loads(catalog.get_meta(key))["tenant"] == "partner"
            older = ServerChanges(_OlderServer(ts.client("ops")), ts.target)
            rescan(catalog, older)  # not refused: the server does not say who ops is
            assert older.log.tenant == "" and older.log.store_id
            assert json.loads(catalog.get_meta(key))["tenant"] == "partner"
            with pytest.raises(Conflict, match="tenant 'partner'"):
                rescan(catalog, ServerChanges(ts.client("ops"), ts.target))


def test_bad_changes_requests_name_the_field(tmp_path):
    with running_server(tmp_path / "served", tenants=TENANTS) as ts:
        client = ts.client("partner")
        for kwargs, field in (
            ({"since": -1}, "since"),
            ({"signal_types": ["pdq", "nope"]}, "signal_types[1]"),
        ):
            with pytest.raises(grpc.RpcError) as caught:
                list(client.changes(**kwargs))
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert [f for f, _ in bad_request_fields(caught.value)] == [field]
        with pytest.raises(grpc.RpcError) as caught:
            client.signal_states(list(range(10_001)), batch_size=20_000)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert [f for f, _ in bad_request_fields(caught.value)] == ["signal_ids"]
        # no token: UNAUTHENTICATED, not a stream of everything
        with pytest.raises(grpc.RpcError) as caught:
            list(ts.client().changes(0))
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert ServerChanges(client, ts.target).cursor_key == f"rescan_seq@{ts.target}"


def test_changes_need_the_export_role(tmp_path):
    with running_server(tmp_path / "served", tenants=TENANTS) as ts:
        matcher = ts.client("matcher")  # may match against its lists, not export them
        with pytest.raises(grpc.RpcError) as caught:
            list(matcher.changes(0))
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "'export'" in caught.value.details()
        # an older build's tokens (its first admin's too) predate the role: say what to do
        assert 'add "export" to the tenant\'s roles in the tokens file' in (caught.value.details())
        assert matcher.signal_states([1]) == [signals_pb2.SIGNAL_STATE_DELETED]
        # through the CLI: a clear error naming the server and the status, no report
        Catalog(tmp_path / "c.sqlite").close()
        out = tmp_path / "r.jsonl"
        result = CliRunner().invoke(
            cli,
            ["rescan", "--server", ts.target, "--token", ts.tokens["matcher"],
             "--catalog", str(tmp_path / "c.sqlite"), "--out", str(out)],
        )  # fmt: skip
        assert result.exit_code == 1
        assert f"{ts.target}: PERMISSION_DENIED" in result.output and not out.exists()


@pytest.mark.reference
def test_videos_rescan_through_a_server_equals_a_local_rescan(reference_dir, tmp_path):
    from hashmatch.engine.ingest import read_records
    from hashmatch.engine.runtime import Engine

    videos, hashes = reference_dir / "videos", reference_dir / "vpdq-hashes"
    tree = tmp_path / "tree"
    tree.mkdir()
    shutil.copy(videos / "pattern-sd-grey-bar.mp4", tree / "upload-1.mp4")
    shutil.copy(videos / "test-padded-dimensions.mp4", tree / "upload-2.mp4")
    served = tmp_path / "served"
    with Engine.open(served, eager=False) as engine:
        for name in ("pattern-sd-with-small-logo-bar", "test-padded-dimensions"):
            engine.ingest(read_records(hashes / f"{name}.txt"), list_name="videos")
    with Catalog(tmp_path / "remote.sqlite") as catalog:
        scan([tree], catalog=catalog, matcher=None,
             options=ScanOptions(types=("vpdq",), workers=0, progress=False))  # fmt: skip
    shutil.copy(tmp_path / "remote.sqlite", tmp_path / "local.sqlite")
    shutil.copy(tmp_path / "remote.sqlite", tmp_path / "paged.sqlite")
    with running_server(served, tenants=TENANTS) as ts:
        records = _rescan_cli(ts, "ops", tmp_path / "remote.sqlite", tmp_path / "remote.jsonl")
        with Catalog(tmp_path / "local.sqlite") as local:
            rescan(local, ts.engine.store, report=tmp_path / "local.jsonl")
        paged = ServerChanges(ts.client("ops"), ts.target, page_size=1)  # a video a page
        with Catalog(tmp_path / "paged.sqlite") as catalog:
            rescan(catalog, paged, report=tmp_path / "paged.jsonl")
        assert paged.pages == 2
    body = _body(tmp_path / "remote.jsonl")
    assert body == _body(tmp_path / "local.jsonl") == _body(tmp_path / "paged.jsonl")
    assert sorted(r["file"] for r in body) == [
        str(tree / "upload-1.mp4"),
        str(tree / "upload-2.mp4"),
    ]
    assert all(r["type"] == "vpdq" and len(r["signal_hash"]) == 64 for r in body), body
    assert all(r["query_match_pct"] >= 50 and r["target_match_pct"] > 0 for r in body)
    assert records[-1]["new_signals"] == {"vpdq": 2}
