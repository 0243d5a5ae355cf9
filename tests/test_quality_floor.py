"""The quality floor's ``match_quality_stored`` rule, through a real Engine on real images.

A PDQ query under the floor (quality < 50: a blurred or heavily downscaled upload) is
looked up, but only stored signals whose quality is KNOWN and >= the floor can match
it; stored signals of unknown or low quality never do. ``"skip"`` keeps HMA's rule
(not looked up). A query at or above the floor matches as before, whatever the stored
quality.
"""

from __future__ import annotations

import io
import json

import cv2
import numpy as np
import pytest
import skimage.data
from click.testing import CliRunner
from PIL import Image

from hashmatch.engine.errors import InvalidInput
from hashmatch.engine.hashing import HashOptions, hash_media
from hashmatch.engine.pdq import pdq_hash
from hashmatch.engine.runtime import Engine
from hashmatch.engine.store import SignalRecord
from hashmatch.server.cli import cli


def _png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def pictures() -> dict[str, np.ndarray]:
    moon = np.ascontiguousarray(np.stack([skimage.data.moon()] * 3, axis=-1))  # 512 px
    tile = np.ascontiguousarray(moon[:256, :256])
    return {
        "moon": moon,
        "blurred": cv2.GaussianBlur(moon, (0, 0), 5),  # a heavily blurred upload
        "tile": tile,
        "tiny": cv2.resize(tile, (32, 32), interpolation=cv2.INTER_AREA),  # 1/8 size
    }


def _pdq(rgb: np.ndarray) -> tuple[str, int]:
    (h,) = hash_media(_png(rgb), ["pdq"])
    return h.hex, h.quality


def _distance(a: str, b: str) -> int:
    return int(np.unpackbits(np.frombuffer(bytes.fromhex(a), np.uint8) ^
                             np.frombuffer(bytes.fromhex(b), np.uint8)).sum())  # fmt: skip


def test_the_pictures_are_what_the_tests_need(pictures):
    """Stored photos >= 50, their copies under 50 yet within PDQ's 31 bits."""
    for stored, copy in (("moon", "blurred"), ("tile", "tiny")):
        (s_hex, s_q), (c_hex, c_q) = _pdq(pictures[stored]), _pdq(pictures[copy])
        assert s_q >= 50 and c_q < 50
        assert _distance(s_hex, c_hex) <= 31
    assert pdq_hash(pictures["moon"])[1] == _pdq(pictures["moon"])[1]


@pytest.fixture
def engine(tmp_path, pictures):
    """Three lists: the moon as stored with its known quality (83), the same hash with
    no quality, and the blurred copy's own hash with its true low quality."""
    moon_hex, moon_q = _pdq(pictures["moon"])
    blur_hex, blur_q = _pdq(pictures["blurred"])
    tile_hex, tile_q = _pdq(pictures["tile"])
    with Engine.open(tmp_path / "data") as e:
        e.ingest([SignalRecord("pdq", moon_hex, external_id="moon-known", quality=moon_q),
                  SignalRecord("pdq", tile_hex, external_id="tile-known", quality=tile_q)],
                 list_name="known")  # fmt: skip
        e.ingest([SignalRecord("pdq", moon_hex, external_id="moon-unknown")], list_name="unknown")
        e.ingest([SignalRecord("pdq", blur_hex, external_id="blur-low", quality=blur_q)],
                 list_name="low")  # fmt: skip
        yield e


def test_a_low_quality_copy_matches_the_stored_photo_of_known_quality_only(engine, pictures):
    found = engine.match_media(_png(pictures["blurred"]))
    assert [m.external_id for m in found.matches] == ["moon-known"]
    assert found.matches[0].distance <= 31
    assert found.skipped_low_quality and found.quality_stored_only
    # a heavily downscaled tile (1/8 size, quality < 50) finds its stored tile
    tiny = engine.match_media(_png(pictures["tiny"]))
    assert [m.external_id for m in tiny.matches] == ["tile-known"]
    assert tiny.skipped_low_quality and tiny.quality_stored_only


def test_a_low_quality_copy_never_matches_unknown_or_low_stored_quality(engine, pictures):
    """Not the same hash stored without a quality (distance as above), not the copy's own
    hash stored with its low quality (distance 0)."""
    for name in ("unknown", "low"):
        found = engine.match_media(_png(pictures["blurred"]), lists=[name])
        assert found.matches == [] and found.skipped_low_quality and found.quality_stored_only
    blur_hex, blur_q = _pdq(pictures["blurred"])
    (row,) = engine.match_hex("pdq", [blur_hex], qualities=[blur_q])
    assert [m.external_id for m in row] == ["moon-known"]
    assert row.skipped_low_quality and row.quality_stored_only and row.quality == blur_q


def test_a_query_at_or_above_the_floor_matches_as_before(engine, pictures):
    found = engine.match_media(_png(pictures["moon"]))
    assert sorted(m.external_id for m in found.matches) == ["blur-low", "moon-known",
                                                            "moon-unknown"]  # fmt: skip
    assert not found.skipped_low_quality and not found.quality_stored_only
    # the floor is the request's: at min_quality=0 the blurred copy is an ordinary query
    low = engine.match_media(_png(pictures["blurred"]), min_quality=0)
    assert sorted(m.external_id for m in low.matches) == ["blur-low", "moon-known",
                                                          "moon-unknown"]  # fmt: skip
    assert not low.skipped_low_quality


def test_skip_keeps_hmas_rule(engine, pictures):
    found = engine.match_media(_png(pictures["blurred"]), low_quality_queries="skip")
    assert found.matches == [] and found.skipped_low_quality and not found.quality_stored_only
    moon_hex, _ = _pdq(pictures["moon"])
    rows = engine.match_hex("pdq", [moon_hex, moon_hex], qualities=[10, 90],
                            low_quality_queries="skip")  # fmt: skip
    assert rows[0] == [] and rows[0].skipped_low_quality and not rows[0].quality_stored_only
    assert len(rows[1]) == 3 and not rows[1].skipped_low_quality
    # the default on the same rows: row 0 meets the known-quality moon only
    rows = engine.match_hex("pdq", [moon_hex, moon_hex], qualities=[10, 90])
    assert [m.external_id for m in rows[0]] == ["moon-known"] and rows[0].quality_stored_only
    assert len(rows[1]) == 3


def test_a_bad_rule_is_invalid_input(engine, pictures):
    with pytest.raises(InvalidInput) as err:
        engine.match_media(_png(pictures["blurred"]), low_quality_queries="drop")
    assert err.value.field == "low_quality_queries"
    with pytest.raises(InvalidInput, match="low_quality_queries: must be one of"):
        engine.match("pdq", np.zeros((1, 32), np.uint8), low_quality_queries="")


def test_cli_match_takes_the_rule(engine, pictures, tmp_path):
    path = tmp_path / "blurred.png"
    path.write_bytes(_png(pictures["blurred"]))
    env = {"HASHMATCH_DATA_DIR": str(tmp_path / "data")}
    runner = CliRunner()
    out = runner.invoke(cli, ["match", str(path), "--json"], env=env, catch_exceptions=False)
    assert out.exit_code == 0, out.output
    (entry,) = json.loads(out.output)
    assert [m["external_id"] for m in entry["matches"]] == ["moon-known"]
    assert entry["skipped_low_quality"] and entry["quality_stored_only"]
    text = runner.invoke(cli, ["match", str(path)], env=env).output
    assert "stored quality >= the floor only" in text and "1 match(es)" in text
    args = ["match", str(path), "--low-quality-queries", "skip"]
    skip = runner.invoke(cli, args, env=env, catch_exceptions=False).output
    assert "skipped: PDQ quality below the floor" in skip and "0 match(es)" in skip
    args = ["match", str(path), "--min-quality", "0", "--json"]
    (plain,) = json.loads(runner.invoke(cli, args, env=env, catch_exceptions=False).output)
    assert len(plain["matches"]) == 3 and not plain["skipped_low_quality"]


# -- the same rule over gRPC (MatchOptions.low_quality_queries) ---------------------------


@pytest.fixture
def served(tmp_path, pictures):
    """A real server (no-auth mode) over a store seeded as in ``engine``."""
    from hashmatch.server.testing import running_server

    moon_hex, moon_q = _pdq(pictures["moon"])
    with running_server(tmp_path / "served") as ts:
        ts.engine.ingest([SignalRecord("pdq", moon_hex, external_id="moon-known",
                                       quality=moon_q)], list_name="known")  # fmt: skip
        ts.engine.ingest([SignalRecord("pdq", moon_hex, external_id="moon-unknown")],
                         list_name="unknown")  # fmt: skip
        yield ts


def test_grpc_low_quality_queries_and_quality_stored_only(served, pictures):
    import grpc

    from hashmatch.server.errors import bad_request_fields
    from hashmatch.v1 import common_pb2

    client = served.client()
    blurred = [_png(pictures["blurred"])]
    (result,) = client.match(media=blurred).results  # the server's default rule
    assert [m.external_id for m in result.matches] == ["moon-known"]
    assert result.skipped_low_quality and result.quality_stored_only
    (skipped,) = client.match(media=blurred, low_quality_queries="skip").results
    assert not skipped.matches and skipped.skipped_low_quality
    assert not skipped.quality_stored_only
    # a hash sent with its (low) quality goes the same way, batched or not
    blur_hex, blur_q = _pdq(pictures["blurred"])
    value = common_pb2.HashValue(signal_type="pdq", hex=blur_hex, quality=blur_q)
    (row,) = client.match([value], low_quality_queries="match_quality_stored").results
    assert [m.external_id for m in row.matches] == ["moon-known"] and row.quality_stored_only
    (row,) = client.match([value], low_quality_queries="skip").results
    assert not row.matches and row.skipped_low_quality and not row.quality_stored_only
    # an enum value the server does not know is the caller's mistake, named
    request = client.match_request([value])
    request.options.low_quality_queries = 9
    with pytest.raises(grpc.RpcError) as err:
        client.matcher.Match(request, metadata=client.metadata, timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in bad_request_fields(err.value)] == ["options.low_quality_queries"]


def test_grpc_upscale_small_adds_the_enlarged_row(served, pictures):
    client = served.client()
    tiny = [_png(pictures["tiny"])]  # 32 px: under the 256 px small-image bound
    (plain,) = client.match(media=tiny).results
    (upscaled,) = client.match(media=tiny, upscale_small=True).results
    assert len(plain.computed[0].hex) == 1
    assert len(upscaled.computed[0].hex) == 2  # the as-given row, then the enlarged one
    assert upscaled.computed[0].hex[0] == plain.computed[0].hex[0]


def test_grpc_upscale_small_replicate_adds_the_repeated_row(served, pictures):
    client = served.client()
    tiny = [_png(pictures["tiny"])]
    (repeated,) = client.match(media=tiny, upscale_small_replicate=True).results
    (both,) = client.match(media=tiny, upscale_small=True, upscale_small_replicate=True).results
    (bilinear,) = client.match(media=tiny, upscale_small=True).results
    local = hash_media(tiny[0], ["pdq"], HashOptions(upscale_small_replicate=True))[0]
    expected = [code.tobytes().hex() for code in local.codes]
    assert len(expected) == 2 and expected[0] != expected[1]
    assert list(repeated.computed[0].hex) == expected  # as given, then 8 x 8 repeated
    assert list(both.computed[0].hex) == [*bilinear.computed[0].hex, expected[1]]


def test_grpc_upscale_small_phases_adds_the_three_moved_rows(served, pictures):
    """MatchOptions.upscale_small_phases reaches the hasher: a tiny picture's rows are
    the server's as-given and replicated ones, then the 3 half-pixel moves, as the
    engine hashes them locally."""
    client = served.client()
    tiny = [_png(pictures["tiny"])]
    (phases,) = client.match(
        media=tiny, upscale_small_replicate=True, upscale_small_phases=True
    ).results
    (repeated,) = client.match(media=tiny, upscale_small_replicate=True).results
    local = hash_media(
        tiny[0], ["pdq"], HashOptions(upscale_small_replicate=True, upscale_small_phases=True)
    )[0]
    expected = [code.tobytes().hex() for code in local.codes]
    assert len(expected) == 5 and len(set(expected[1:])) == 4
    assert list(phases.computed[0].hex) == expected
    assert list(phases.computed[0].hex[:2]) == list(repeated.computed[0].hex)
