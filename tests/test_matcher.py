"""The matcher end to end on real images: media -> PDQ -> index -> provenance,
dihedral expansion, max_results ordering, exact types, bad queries."""

from __future__ import annotations

import io

import numpy as np
import pdqhash
import pytest
from PIL import Image
from skimage import data as skdata

from hashmatch.engine.errors import InvalidHash, InvalidThreshold
from hashmatch.engine.hashing import HashOptions, hash_media
from hashmatch.engine.runtime import Engine
from hashmatch.engine.store import SignalRecord


def png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def images() -> dict[str, bytes]:
    astronaut = skdata.astronaut()
    return {
        "astronaut": png(astronaut),
        "rotated": png(np.ascontiguousarray(np.rot90(astronaut))),
        "coffee": png(skdata.coffee()),
        "flat": png(np.full((64, 64, 3), 128, np.uint8)),
    }


@pytest.fixture
def engine(tmp_path, images):
    e = Engine.open(tmp_path / "data")
    (h,) = hash_media(images["astronaut"], ("pdq",))
    (m,) = hash_media(images["astronaut"], ("md5",))
    e.ingest(
        [
            SignalRecord("pdq", h.hex, ("demo",), "astro-1", quality=h.quality),
            SignalRecord("md5", m.hex, ("demo",), "astro-md5"),
        ],
        list_name="known",
    )
    yield e
    e.close()


def test_match_media_finds_the_known_image_with_provenance(engine, images):
    result = engine.match_media(images["astronaut"], types=("pdq", "md5"))
    assert sorted((m.signal_type, m.distance, m.external_id) for m in result.matches) == [
        ("md5", 0, "astro-md5"),
        ("pdq", 0, "astro-1"),
    ]
    assert [h.signal_type for h in result.hashes] == ["pdq", "md5"]
    assert engine.match_media(images["coffee"]).matches == []


def test_dihedral_finds_a_rotated_copy_and_says_which_variant(engine, images):
    assert engine.match_media(images["rotated"]).matches == []
    found = engine.match_media(images["rotated"], options=HashOptions(dihedral=True)).matches
    # the oracle: pdqhash's own eight dihedral hashes of the rotated copy, the nearest
    # to its hash of the stored original (variant != 0 and <= 31 let a wrong one pass)
    stored, _ = pdqhash.compute(skdata.astronaut())
    variants, _ = pdqhash.compute_dihedral(np.ascontiguousarray(np.rot90(skdata.astronaut())))
    distances = [int((v != stored).sum()) for v in variants]
    assert len(found) == 1 and found[0].external_id == "astro-1"
    assert (found[0].variant, found[0].distance) == (np.argmin(distances), min(distances))
    assert found[0].variant != 0 and found[0].distance <= 31


def test_low_quality_media_is_matched_against_stored_quality_only(engine, images):
    """Under the floor (default rule, as scan's): looked up, but only signals of known
    quality >= the floor may match; the result says so."""
    result = engine.match_media(images["flat"])
    assert result.skipped_low_quality and result.quality_stored_only
    assert result.matches == []


def test_max_results_keeps_the_nearest(tmp_path):
    rng = np.random.default_rng(1)
    base = rng.integers(0, 256, 32, dtype=np.uint8)
    rows = []
    for d in (9, 3, 6, 0):
        code = base.copy()
        for b in range(d):
            code[b // 8] ^= 1 << (b % 8)
        rows.append(SignalRecord("pdq", code.tobytes().hex(), external_id=f"d{d}"))
    with Engine.open(tmp_path / "d") as e:
        e.ingest(rows, list_name="l")
        found = e.match("pdq", base[None, :], max_results=2)[0]
        assert [m.external_id for m in found] == ["d0", "d3"]
        assert [m.distance for m in e.match("pdq", base[None, :])[0]] == [0, 3, 6, 9]


def test_bad_queries_are_invalid_input(engine):
    with pytest.raises(InvalidHash):
        engine.match("pdq", np.zeros((1, 8), np.uint8))
    with pytest.raises(InvalidThreshold):
        engine.match("md5", np.zeros((1, 16), np.uint8), threshold=3)
    assert engine.match("pdq", np.zeros((0, 32), np.uint8)) == []
    assert engine.match("phash", np.zeros((2, 8), np.uint8)) == [[], []]  # no phash stored
