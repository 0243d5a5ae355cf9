"""Rescan on a bad day: a cursor of another store or of a store since restored from a
backup, a list re-enabled or a signal's expiry extended after its matches were
retracted, and low-quality catalog files the scan matches. Real stores and catalogs;
``--server`` over a real socket."""

from __future__ import annotations

import io
import json
import socket
import sqlite3
import time
from contextlib import closing

import numpy as np
import pytest
from click.testing import CliRunner
from scan_tree import build_tree, ingest_originals

from hashmatch.engine.catalog import Catalog
from hashmatch.engine.errors import Conflict
from hashmatch.engine.rescan import ServerChanges, rescan
from hashmatch.engine.runtime import Engine
from hashmatch.engine.scan import ScanOptions, scan
from hashmatch.engine.store import SignalStore
from hashmatch.server.cli import cli
from hashmatch.server.testing import running_server

TENANTS = {"ops": (["match", "export", "write"], True)}


def _exact_catalog(tmp_path, tree):
    """A catalog of tree/exact (astronaut-copy, coffee-copy), hashed, not matched."""
    catalog = Catalog(tmp_path / "catalog.sqlite")
    scan([tree.root / "exact"], catalog=catalog, matcher=None,
         options=ScanOptions(workers=0, progress=False, follow_symlinks=False))  # fmt: skip
    return catalog


def _names(catalog, rows):
    paths = catalog.path_of(sorted({m.file_id for m in rows}))
    return sorted((paths[m.file_id].rsplit("/", 1)[-1], m.signal_type) for m in rows)


def _backup(src, dst) -> None:
    """A consistent copy of a live SQLite store (what an operator's backup holds)."""
    with sqlite3.connect(src) as a, sqlite3.connect(dst) as b:
        a.backup(b)
    a.close()
    b.close()


# ------------------------------------------------------------------ cursor identity


def test_a_cursor_of_another_store_is_refused_not_trusted(tmp_path):
    tree = build_tree(tmp_path)
    catalog = _exact_catalog(tmp_path, tree)
    ingest_originals(tmp_path / "a", tree, ["coffee"], list_name="partner")
    with closing(SignalStore(tmp_path / "a" / "store.sqlite")) as a:
        assert len(rescan(catalog, a).new) == 2  # coffee-copy: pdq + md5; cursor 2
    # another store, whose counter has passed the cursor: astronaut is at changes 1-2
    for names in (["astronaut"], ["rocket"], ["chelsea"]):
        ingest_originals(tmp_path / "b", tree, names, list_name="other")
    with closing(SignalStore(tmp_path / "b" / "store.sqlite")) as b:
        with pytest.raises(Conflict, match=r"another store.*--since all"):
            rescan(catalog, b)
        assert catalog.get_meta("rescan_seq") == "2"  # nothing committed
        with pytest.raises(Conflict, match="beyond the store's last change"):
            rescan(catalog, b, since=999)
        everything = rescan(catalog, b, since=0)  # what the error says to run
        assert ("astronaut-copy.png", "pdq") in _names(catalog, everything.new)
        # store a's coffee match held signal ids 1-2, which name astronaut in store b
        assert {(r.match.external_id, r.reason) for r in everything.retracted} == {
            ("coffee", "replaced")
        }
        held = catalog.conn.execute("SELECT DISTINCT external_id FROM matches").fetchall()
        assert {e for (e,) in held} == {"astronaut"}
        assert rescan(catalog, b).summary.since == b.change_counter()  # checks out now
    # a store whose counter is still under the cursor: refused too, not "since 6, to 2"
    ingest_originals(tmp_path / "c", tree, ["rocket"], list_name="other")
    with (
        closing(SignalStore(tmp_path / "c" / "store.sqlite")) as c,
        pytest.raises(Conflict, match=r"beyond the store's last change.*--since all"),
    ):
        rescan(catalog, c)
    catalog.close()


def test_a_store_restored_from_a_backup_does_not_skip_its_new_signals(tmp_path):
    tree = build_tree(tmp_path)
    catalog = _exact_catalog(tmp_path, tree)
    data = tmp_path / "data"
    ingest_originals(data, tree, ["rocket"], list_name="partner")
    _backup(data / "store.sqlite", tmp_path / "backup.sqlite")  # at change 2
    ingest_originals(data, tree, ["chelsea"], list_name="partner")
    with closing(SignalStore(data / "store.sqlite")) as store:
        rescan(catalog, store)  # cursor 4
    # the store is lost and restored from the backup; coffee and chelsea are ingested
    # again: changes 3-6 are other writes, coffee's at 3-4 (under the cursor)
    for suffix in ("", "-wal", "-shm"):
        (data / f"store.sqlite{suffix}").unlink(missing_ok=True)
    _backup(tmp_path / "backup.sqlite", data / "store.sqlite")
    ingest_originals(data, tree, ["coffee"], list_name="partner")
    ingest_originals(data, tree, ["chelsea"], list_name="partner")
    with closing(SignalStore(data / "store.sqlite")) as store:
        assert store.change_counter() == 6
        with pytest.raises(Conflict, match=r"restored from a backup.*--since all"):
            rescan(catalog, store)
        redone = rescan(catalog, store, since=0)
    assert _names(catalog, redone.new) == [("coffee-copy.png", "md5"), ("coffee-copy.png", "pdq")]
    catalog.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_server_whose_store_was_replaced_is_refused(tmp_path):
    """The same address, another store behind it: the Changes stream names its store
    and the digests of since and head, so the remote rescan checks the cursor too."""
    tree = build_tree(tmp_path)
    _exact_catalog(tmp_path, tree).close()
    listen = f"127.0.0.1:{_free_port()}"
    runner = CliRunner()

    def cli_rescan(ts, *extra):
        return runner.invoke(cli, ["rescan", "--server", ts.target, "--token", ts.tokens["ops"],
                                   "--catalog", str(tmp_path / "catalog.sqlite"),
                                   "--out", str(tmp_path / "r.jsonl"), *extra])  # fmt: skip

    ingest_originals(tmp_path / "a", tree, ["coffee"], list_name="partner")
    with running_server(tmp_path / "a", tenants=TENANTS, listen=listen) as ts:
        (reply,) = list(ts.client("ops").changes(0))
        assert reply.store_id == ts.engine.store.store_id() and reply.head == 2
        assert reply.head_digest == ts.engine.store.change_digest(2) and not reply.since_digest
        assert cli_rescan(ts).exit_code == 0
    for names in (["astronaut"], ["rocket"]):
        ingest_originals(tmp_path / "b", tree, names, list_name="other")
    with running_server(tmp_path / "b", tenants=TENANTS, listen=listen) as ts:
        refused = cli_rescan(ts)
        assert refused.exit_code == 1 and "another store" in refused.output
        assert "--since all" in refused.output
        beyond = cli_rescan(ts, "--since", "999")
        assert beyond.exit_code == 1 and "beyond the store's last change" in beyond.output
        assert cli_rescan(ts, "--since", "all").exit_code == 0
        records = [json.loads(x) for x in (tmp_path / "r.jsonl").read_text().splitlines()]
        assert {(r["file"].rsplit("/", 1)[-1], r["type"]) for r in records[:-1]} >= {
            ("astronaut-copy.png", "pdq"),
            ("astronaut-copy.png", "md5"),
        }
        with Catalog(tmp_path / "catalog.sqlite") as catalog:  # and the API, same check
            assert rescan(catalog, ServerChanges(ts.client("ops"), ts.target)).new == []


# ------------------------------------------------------------------ matches that come back


def test_matches_come_back_when_their_list_is_re_enabled(tmp_path):
    tree = build_tree(tmp_path)
    catalog = _exact_catalog(tmp_path, tree)
    ingest_originals(tmp_path / "data", tree, ["coffee"], list_name="partner")
    with closing(SignalStore(tmp_path / "data" / "store.sqlite")) as store:
        assert len(rescan(catalog, store).new) == 2
        store.set_list_enabled("partner", False)
        assert [r.reason for r in rescan(catalog, store).retracted] == ["list-disabled"] * 2
        store.set_list_enabled("partner", True)
        back = rescan(catalog, store)
        assert _names(catalog, back.new) == [("coffee-copy.png", "md5"), ("coffee-copy.png", "pdq")]
        store.set_list_enabled("partner", True)  # already enabled: nothing to announce
        assert rescan(catalog, store).new == []
    assert catalog.stats()["matches"] == 2
    catalog.close()


def _coffee(tree, expires_at):
    from hashmatch.engine.hashing import hash_media
    from hashmatch.engine.store import SignalRecord

    return [
        SignalRecord(h.signal_type, h.hex, external_id="coffee", expires_at=expires_at)
        for h in hash_media(tree.originals["coffee"], ["pdq", "md5"])
    ]


def test_matches_come_back_when_an_expiry_is_extended(tmp_path):
    tree = build_tree(tmp_path)
    catalog = _exact_catalog(tmp_path, tree)
    data = tmp_path / "data"
    with Engine.open(data, eager=False) as engine:
        engine.ingest(_coffee(tree, time.time() + 1.0), list_name="partner")
        assert len(rescan(catalog, engine.store).new) == 2
        time.sleep(1.1)
        assert [r.reason for r in rescan(catalog, engine.store).retracted] == ["expired"] * 2
        report = engine.ingest(_coffee(tree, time.time() + 3600), list_name="partner")
        assert report.updated == 2
        back = rescan(catalog, engine.store)
    assert _names(catalog, back.new) == [("coffee-copy.png", "md5"), ("coffee-copy.png", "pdq")]
    catalog.close()


def test_matches_come_back_through_a_server(tmp_path):
    tree = build_tree(tmp_path)
    catalog = _exact_catalog(tmp_path, tree)
    ingest_originals(tmp_path / "data", tree, ["coffee"], list_name="partner")
    with running_server(tmp_path / "data", tenants=TENANTS) as ts:
        source = ServerChanges(ts.client("ops"), ts.target)
        assert len(rescan(catalog, source).new) == 2
        ts.engine.store.set_list_enabled("partner", False)
        assert len(rescan(catalog, source).retracted) == 2
        ts.engine.store.set_list_enabled("partner", True)
        back = rescan(catalog, source)
        assert _names(catalog, back.new) == [("coffee-copy.png", "md5"), ("coffee-copy.png", "pdq")]
        # and the served engine still matches it once (revive does not touch the index)
        assert len(ts.engine.match_hex("md5", [_coffee(tree, None)[1].hash_hex])[0]) == 1
    catalog.close()


# ------------------------------------------------------------------ low-quality files


def _flat_png(amplitude: int) -> bytes:
    """A faint gradient: PDQ quality 0 (far under the floor of 50)."""
    from PIL import Image

    ramp = np.linspace(0, amplitude, 256)
    gray = (120 + np.add.outer(ramp, ramp)).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(np.stack([gray] * 3, axis=-1)).save(out, "PNG")
    return out.getvalue()


def _matches(catalog):
    paths = catalog.path_of(sorted({fid for (fid,) in catalog.conn.execute(
        "SELECT file_id FROM matches")}))  # fmt: skip
    return sorted(
        (paths[fid].rsplit("/", 1)[-1], stype, lst)
        for fid, stype, lst in catalog.conn.execute(
            "SELECT file_id, signal_type, list_name FROM matches"
        )
    )


def test_low_quality_files_are_rescanned_by_the_scans_rule(tmp_path):
    """A file under PDQ quality 50 matches stored signals of KNOWN quality >= 50 only
    (the scan's default, match_quality_stored): a rescan finds what a scan finds."""
    from hashmatch.engine.hashing import hash_media
    from hashmatch.engine.scan import LocalMatcher
    from hashmatch.engine.store import SignalRecord

    root = tmp_path / "tree"
    root.mkdir()
    (root / "flat.png").write_bytes(_flat_png(8))
    (pdq,) = hash_media((root / "flat.png").read_bytes(), ["pdq"])
    assert pdq.quality < 50
    options = ScanOptions(workers=0, progress=False)
    catalog = Catalog(tmp_path / "catalog.sqlite")
    scan([root], catalog=catalog, matcher=None, options=options)  # hashed, not matched
    data = tmp_path / "data"
    with Engine.open(data, eager=False) as engine:  # the same hash, shared three ways
        for list_name, quality in (("known-good", 80), ("known-low", 10), ("unknown", None)):
            engine.ingest([SignalRecord("pdq", pdq.hex, quality=quality)], list_name=list_name)
        found = rescan(catalog, engine.store)
    assert _matches(catalog) == [("flat.png", "pdq", "known-good")]
    assert len(found.new) == 1
    # what a full scan against the same store finds
    fresh = Catalog(tmp_path / "fresh.sqlite")
    matcher = LocalMatcher.open(data)
    scan([root], catalog=fresh, matcher=matcher, options=options)
    matcher.close()
    assert _matches(fresh) == _matches(catalog)
    # and through a server: the Changes stream carries each signal's stored quality
    with running_server(data, tenants=TENANTS) as ts:
        remote = rescan(fresh, ServerChanges(ts.client("ops"), ts.target), since=0)
        (change,) = [
            c for r in ts.client("ops").changes(0) for c in r.changes if c.list_name == "known-good"
        ]
        assert change.quality == 80
    assert remote.new == [] and _matches(fresh) == [("flat.png", "pdq", "known-good")]
    wiped = Catalog(tmp_path / "wiped.sqlite")
    scan([root], catalog=wiped, matcher=None, options=options)
    with running_server(data, tenants=TENANTS) as ts:
        remote = rescan(wiped, ServerChanges(ts.client("ops"), ts.target))
    assert _matches(wiped) == _matches(catalog) and len(remote.new) == 1
    for cat in (catalog, fresh, wiped):
        cat.close()
