"""A file gets the same matches from ``Match`` with media as from ``scan --dihedral``
and ``rescan``: a re-oriented (dihedral) row matches only within the type's default
threshold (31 for PDQ) even when ``--threshold`` is looser (4ce76b8 for ``Match``,
``matcher.keeps_row_hit``); the rows as given go as far as the threshold.

Real components: a scikit-image photo scanned by real worker processes, a real store
and catalog (SQLite), a real gRPC server for ``Match`` and ``scan --server``.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import skimage.data
from click.testing import CliRunner
from PIL import Image

from hashmatch.engine.decode import decode_image
from hashmatch.engine.hashing import HashOptions, hash_media
from hashmatch.engine.pdq import pdq_hash
from hashmatch.engine.runtime import Engine
from hashmatch.engine.store import SignalRecord
from hashmatch.server.cli import cli
from hashmatch.server.testing import running_server

MIRROR = 5  # the left-right mirror among the 8 rows (pdq_hash_dihedral order)
LOOSE = "50"  # a --threshold looser than PDQ's default 31


def _encoded(rgb: np.ndarray, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format=fmt, **kw)
    return buf.getvalue()


def _moved(code: np.ndarray, away_from: np.ndarray, bits: int) -> str:
    """``code`` with ``bits`` bits flipped, each where it agrees with ``away_from``: it
    moves ``bits`` further from ``away_from`` too."""
    same = np.flatnonzero(np.unpackbits(code) == np.unpackbits(away_from))[:bits]
    flat = np.unpackbits(code)
    flat[same] ^= 1
    return np.packbits(flat).tobytes().hex()


def _world(tmp_path: Path) -> tuple[Path, list[SignalRecord], set[tuple]]:
    """A photo in ``tmp_path/media`` and the signals: ``flipped`` (a real mirrored JPEG
    copy: its mirror row within 31), ``turned40`` (40 bits from the photo's mirror row,
    far from its upright one: within --threshold 50 through a re-oriented row only)
    and ``upright45`` (45 bits from the upright row: matched at --threshold 50). And
    what ``Match`` with media finds at 50: (external id, variant, distance)."""
    im = skimage.data.astronaut()[::2, ::2].copy()
    media = tmp_path / "media"
    media.mkdir()
    photo = _encoded(im, "PNG")
    (media / "photo.png").write_bytes(photo)
    rows = hash_media(photo, ["pdq"], HashOptions(dihedral=True, dihedral_exact=True))[0]
    assert rows.orientations == list(range(8))
    upright, mirror = rows.codes[0], rows.codes[MIRROR]
    flipped = decode_image(_encoded(im[:, ::-1].copy(), "JPEG", quality=60))
    records = [
        SignalRecord("pdq", pdq_hash(flipped)[0].tobytes().hex(), external_id="flipped"),
        SignalRecord("pdq", _moved(mirror, upright, 40), external_id="turned40"),
        SignalRecord("pdq", _moved(upright, mirror, 45), external_id="upright45"),
    ]
    codes = np.array([bytearray.fromhex(r.hash_hex) for r in records], np.uint8)
    dist = np.bitwise_count(rows.codes[:, None, :] ^ codes[None, :, :]).sum(axis=2)
    # turned40: 40 bits from the mirror row, no other row within 50 (the upright one far)
    assert dist[MIRROR, 1] == 40 and np.delete(dist[:, 1], MIRROR).min() > 50
    assert dist[MIRROR, 0] <= 31 < dist[0, 0] and dist[0, 2] == 45
    expected = {
        ("flipped", MIRROR, int(dist[MIRROR, 0])),
        ("upright45", 0, 45),
    }
    return media, records, expected


def _found(report: Path) -> set[tuple]:
    recs = [json.loads(x) for x in report.read_text().splitlines()]
    return {
        (r["external_id"], r.get("variant", 0), r["distance"]) for r in recs if r["kind"] == "match"
    }


def _ok(*args: str) -> None:
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == 0, result.output


def _scan(media: Path, catalog: Path, out: Path, *where: str) -> set[tuple]:
    _ok("scan", str(media), *where, "--catalog", str(catalog), "--dihedral",
        "--threshold", LOOSE, "--workers", "1", "--no-progress", "--out", str(out))  # fmt: skip
    return _found(out)


def test_match_scan_and_scan_server_hold_reoriented_rows_to_31(tmp_path):
    media, records, expected = _world(tmp_path)
    data = tmp_path / "data"
    with Engine.open(data) as eng:
        eng.ingest(records, list_name="partner")
        options = HashOptions(dihedral=True, dihedral_exact=True)
        local = eng.match_media(media / "photo.png", options=options, threshold=int(LOOSE))
    assert {(m.external_id, m.variant, m.distance) for m in local.matches} == expected

    # a local scan (hashed by a worker), then a re-run matched from the catalog
    catalog = tmp_path / "local.sqlite"
    assert _scan(media, catalog, tmp_path / "first.jsonl", "--data-dir", str(data)) == expected
    again = _scan(media, catalog, tmp_path / "again.jsonl", "--data-dir", str(data))
    summary = json.loads((tmp_path / "again.jsonl").read_text().splitlines()[-1])
    assert summary["skipped_unchanged"] == 1 and again == expected

    with running_server(data, tenants={"scanner": (["match"], True)}) as ts:
        token = ts.tokens["scanner"]
        reply = ts.client("scanner").match(
            media=[(media / "photo.png").read_bytes()], dihedral=True, threshold=int(LOOSE)
        )
        served = {(m.external_id, m.variant, m.distance) for m in reply.results[0].matches}
        assert served == expected
        remote = tmp_path / "remote.sqlite"
        where = ("--server", ts.target, "--token", token)
        assert _scan(media, remote, tmp_path / "remote.jsonl", *where) == expected
        assert _scan(media, remote, tmp_path / "remote2.jsonl", *where) == expected


def test_rescan_holds_reoriented_rows_to_31(tmp_path):
    media, records, expected = _world(tmp_path)
    data = tmp_path / "data"
    with Engine.open(data) as eng:  # the photo is catalogued before the signals come
        eng.ingest([SignalRecord("md5", "0" * 32, external_id="other")], list_name="other")
    catalog = tmp_path / "catalog.sqlite"
    assert _scan(media, catalog, tmp_path / "scan.jsonl", "--data-dir", str(data)) == set()
    with Engine.open(data) as eng:
        eng.ingest(records, list_name="partner")
    out = tmp_path / "rescan.jsonl"
    # the new signals search the catalog's rows (rescan's pass 1)
    _ok("rescan", "--data-dir", str(data), "--catalog", str(catalog), "--threshold", LOOSE,
        "--out", str(out))  # fmt: skip
    assert _found(out) == expected

    # a --no-match scan after the cursor: the rescan's gap pass looks the catalogued rows
    # up in every list (scan.match_files)
    gap, empty = tmp_path / "gap.sqlite", tmp_path / "empty"
    empty.mkdir()
    _ok("scan", str(empty), "--data-dir", str(data), "--catalog", str(gap), "--no-progress",
        "--out", str(tmp_path / "e.jsonl"))  # fmt: skip
    _ok("rescan", "--data-dir", str(data), "--catalog", str(gap), "--out", str(out))
    _ok("scan", str(media), "--data-dir", str(data), "--catalog", str(gap), "--dihedral",
        "--no-match", "--workers", "1", "--no-progress",
        "--out", str(tmp_path / "n.jsonl"))  # fmt: skip
    _ok("rescan", "--data-dir", str(data), "--catalog", str(gap), "--threshold", LOOSE,
        "--out", str(out))  # fmt: skip
    summary = json.loads(out.read_text().splitlines()[-1])
    assert summary["gap_files"] == 1 and summary["new_signals"] == {}
    assert _found(out) == expected


def test_rescan_through_a_server_holds_reoriented_rows_to_31(tmp_path):
    """``rescan --server``: the new signals from the server's change log search the
    catalog (pass 1), and the gap pass looks a --no-match file up with the server's
    ``Match`` of hashes (which knows nothing of orientations: the rule is the scan's)."""
    media, records, expected = _world(tmp_path)
    data, empty = tmp_path / "data", tmp_path / "empty"
    empty.mkdir()
    with Engine.open(data) as eng:
        eng.ingest(records, list_name="partner")

    def no_match_scan(catalog: Path, root: Path) -> None:
        _ok("scan", str(root), "--data-dir", str(data), "--catalog", str(catalog),
            "--dihedral", "--no-match", "--workers", "1", "--no-progress",
            "--out", str(tmp_path / "n.jsonl"))  # fmt: skip

    first, gap = tmp_path / "first.sqlite", tmp_path / "gap.sqlite"
    no_match_scan(first, media)
    no_match_scan(gap, empty)
    with running_server(data, tenants={"ops": (["match", "export"], True)}) as ts:
        where = ("--server", ts.target, "--token", ts.tokens["ops"])
        out = tmp_path / "rescan.jsonl"
        _ok("rescan", *where, "--catalog", str(first), "--threshold", LOOSE, "--out", str(out))
        assert _found(out) == expected
        _ok("rescan", *where, "--catalog", str(gap), "--out", str(out))  # the cursor: head
        no_match_scan(gap, media)
        _ok("rescan", *where, "--catalog", str(gap), "--threshold", LOOSE, "--out", str(out))
        assert json.loads(out.read_text().splitlines()[-1])["gap_files"] == 1
        assert _found(out) == expected
