"""Flipped, rotated and padded copies match their original THROUGH THE MATCHER.

A real Engine (SQLite store, live index) holds only the original's plain PDQ, as a
shared hash list would; the copies are real decoded image files.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import skimage.data
from PIL import Image

from hashmatch.engine.decode import decode_image
from hashmatch.engine.hashing import HashOptions, hash_media
from hashmatch.engine.multihash import orientations, pdq_query_codes
from hashmatch.engine.pdq import pdq_hash
from hashmatch.engine.runtime import Engine
from hashmatch.engine.store import SignalRecord

DIH = "pdq-images/reg-test-input/dih"


def _png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buf, "PNG")
    return buf.getvalue()


def _bench_quality():
    """bench/quality.py (bench/ is not a package of the install: imported from the tree)."""
    import sys

    from conftest import PROJECT_ROOT

    sys.path.insert(0, str(PROJECT_ROOT))
    try:
        from bench import quality
    finally:
        sys.path.remove(str(PROJECT_ROOT))
    return quality


def _pad(rgb: np.ndarray, share: float = 0.2, colour: int = 20) -> np.ndarray:
    h, w = rgb.shape[:2]
    ph, pw = round(h * share / 2), round(w * share / 2)
    return np.pad(rgb, ((ph, ph), (pw, pw), (0, 0)), constant_values=colour)


@pytest.fixture()
def engine(tmp_path, reference_dir):
    """An engine whose one list holds the bridge photo and the astronaut (plain PDQ)."""
    bridge = reference_dir / DIH / "bridge-1-original.jpg"
    records = [
        SignalRecord("pdq", hash_media(bridge)[0].hex, labels=("bridge",), external_id="bridge"),
        SignalRecord(
            "pdq",
            hash_media(_png(skimage.data.astronaut()))[0].hex,
            labels=("astronaut",),
            external_id="astronaut",
        ),
    ]
    with Engine.open(tmp_path / "data") as eng:
        report = eng.ingest(records, list_name="known")
        assert report.rejected == 0, report
        yield eng


@pytest.mark.parametrize("n", range(1, 9))
def test_every_dihedral_copy_matches_through_match_media(engine, reference_dir, n):
    path = next((reference_dir / DIH).glob(f"bridge-{n}-*.jpg"))
    found = engine.match_media(path, options=HashOptions(dihedral=True)).matches
    assert [m.external_id for m in found] == ["bridge"]
    assert found[0].distance <= 31
    plain = engine.match_media(path).matches
    if n == 1:
        assert [m.external_id for m in plain] == ["bridge"]
    else:  # without the dihedral option a rotated/flipped copy is missed
        assert plain == []


def test_exact_orientations_follow_the_dihedral_order(reference_dir):
    original = decode_image(reference_dir / DIH / "bridge-1-original.jpg")
    mine = [pdq_hash(np.ascontiguousarray(o))[0] for o in orientations(original)]
    for n in range(1, 9):
        ref = pdq_hash(decode_image(next((reference_dir / DIH).glob(f"bridge-{n}-*.jpg"))))[0]
        dists = [int(np.unpackbits(ref ^ m).sum()) for m in mine]
        assert int(np.argmin(dists)) == n - 1 and min(dists) <= 8, (n, dists)


def test_padded_and_flipped_copy_matches_with_query_codes(engine):
    copy = _png(_pad(skimage.data.astronaut()[:, ::-1]))  # mirrored AND padded
    rgb = decode_image(copy)
    codes, _ = pdq_query_codes(rgb)
    assert codes.shape == (16, 32)  # 8 orientations x (as given, trimmed)
    per_row = engine.match("pdq", codes)
    best = min(
        ((m.distance, row, m.external_id) for row, ms in enumerate(per_row) for m in ms),
        default=None,
    )
    assert best is not None and best[2] == "astronaut" and best[0] <= 31
    assert best[1] >= 8  # found by a trimmed row
    # the baseline misses it
    assert engine.match("pdq", pdq_hash(rgb)[0][None, :]) == [[]]


def test_padded_copy_matches_through_match_media_with_trim_borders(engine):
    copy = _png(_pad(skimage.data.astronaut()))
    found = engine.match_media(copy, options=HashOptions(trim_borders=True)).matches
    assert [m.external_id for m in found] == ["astronaut"]
    assert engine.match_media(copy).matches == []


def test_letterboxed_video_matches_its_original_once_frames_are_trimmed(reference_dir):
    from hashmatch.engine.trim import trim_borders
    from hashmatch.engine.video import hash_video, is_vpdq_match, vpdq_match

    videos = reference_dir / "videos"
    barred = videos / "pattern-sd-with-small-logo-bar.mp4"
    original = hash_video(videos / "pattern-hd-no-bar.mp4")
    plain = hash_video(barred)
    trimmed = hash_video(barred, frame_transform=trim_borders)  # what trim_borders=True does
    assert len(trimmed) == len(plain)  # same frames, one code each
    args = (original.codes, original.qualities)
    assert not is_vpdq_match(*vpdq_match(plain.codes, plain.qualities, *args))
    assert is_vpdq_match(*vpdq_match(trimmed.codes, trimmed.qualities, *args))
    # another scene still does not match
    other = hash_video(videos / "doorknob-hd-no-bar.mp4")
    assert vpdq_match(trimmed.codes, trimmed.qualities, other.codes, other.qualities)[0] < 80


def _jpeg(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


@pytest.mark.parametrize("top_left", [(0.0, 0.0), (0.025, 0.025)])
def test_cropped_copy_matches_through_match_media_with_uncrop(engine, top_left):
    im = skimage.data.astronaut()
    h, w = im.shape[:2]
    ch, cw = round(h * 0.05), round(w * 0.05)  # 5% of each side cut away
    t, left = round(h * top_left[0]), round(w * top_left[1])
    copy = _jpeg(im[t : h - (ch - t), left : w - (cw - left)])
    options = HashOptions(dihedral=True, dihedral_exact=True, trim_borders=True, uncrop=True)
    result = hash_media(copy, ["pdq"], options)[0]
    assert result.codes.shape == (8 + 16, 32)  # nothing to trim: 8 orientations + 16
    found = engine.match_media(copy, options=options).matches
    assert [m.external_id for m in found] == ["astronaut"]
    assert found[0].distance <= 31 and found[0].variant >= 8  # an uncrop row found it
    # without uncrop (the rest of the matching options on) the crop is missed
    plain = HashOptions(dihedral=True, dihedral_exact=True, trim_borders=True)
    assert engine.match_media(copy, options=plain).matches == []


def test_uncrop_rows_come_last_and_default_hash_is_unchanged(engine):
    padded = _png(_pad(skimage.data.astronaut()))
    plain = hash_media(padded)[0].codes
    assert plain.shape == (1, 32)  # the default path: one pdqhash-identical code
    assert np.array_equal(plain[0], pdq_hash(decode_image(padded))[0])
    both = hash_media(padded, ["pdq"], HashOptions(trim_borders=True, uncrop=True))[0]
    assert both.codes.shape == (2 + 16, 32) and len(both.qualities) == 18
    assert np.array_equal(both.codes[0], plain[0])
    from hashmatch.engine.multihash import pdq_uncrop_codes, uncrop_images

    assert np.array_equal(both.codes[2:], pdq_uncrop_codes(decode_image(padded))[0])
    images = uncrop_images(skimage.data.astronaut())  # 512 px -> 256 px, + 4.5%
    assert len(images) == 16 and all(x.shape[:2] == (268, 268) for x in images)
    with pytest.raises(ValueError, match="0 < share < 1"):
        uncrop_images(skimage.data.astronaut(), share=1.5)


def test_oriented_copies_are_the_orientations_pixel_for_pixel():
    from hashmatch.engine.multihash import oriented_copies, pdq_orientations

    im = skimage.data.chelsea()[:, :401]  # odd width, not square
    views = orientations(im)
    copies = oriented_copies(im)
    assert all(np.array_equal(v, c) for v, c in zip(views, copies, strict=True))
    rows, _ = pdq_orientations(im)
    assert all(
        np.array_equal(rows[n], pdq_hash(np.ascontiguousarray(v))[0]) for n, v in enumerate(views)
    )


def test_bench_quality_scores_the_engine_path():
    """bench/quality.py measures hash_media with each method's options, not a copy of it."""
    quality = _bench_quality()
    originals = [
        (name, np.ascontiguousarray(getattr(skimage.data, name)()[::2, ::2, :3]))
        for name in ("astronaut", "chelsea", "coffee", "rocket")
    ]
    wanted = ("pdq", "hashmatch", "hashmatch+uncrop")
    methods = [m for m in quality.METHODS if m.name in wanted]
    copy = _png(originals[0][1][:, ::-1])
    for m in methods:  # the query side IS hash_media with the method's options
        expected = hash_media(copy, ["pdq"], m.options)[0]
        codes, qual, limits = m.query(copy)
        assert np.array_equal(codes, expected.codes) and qual == expected.quality
        turned = np.array(expected.orientations or [0] * len(codes)) != 0
        assert (limits is None) == (not turned.any())  # re-oriented rows: <= 31 only
        assert limits is None or set(limits[turned]) == {31}
    res = quality.evaluate(originals, ["flip h", "pad 20% solid", "jpeg q50"], methods)
    per = {n: res["methods"][n]["per_transform"] for n in wanted}
    assert per["pdq"]["flip h"]["recall_plain"] == 0.0
    assert per["hashmatch"]["flip h"]["recall_plain"] == 1.0
    assert per["hashmatch"]["pad 20% solid"]["recall_plain"] == 1.0
    assert all(per[n]["jpeg q50"]["recall_plain"] == 1.0 for n in wanted)
    assert res["methods"]["hashmatch+uncrop"]["query_codes_mean"] > 16


def test_slightly_rotated_copy_matches_through_match_media_with_derotate(engine):
    import cv2

    im = skimage.data.astronaut()
    h, w = im.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), 4.0, 1.0)  # 4 degrees, black corners
    copy = _jpeg(cv2.warpAffine(im, m, (w, h), flags=cv2.INTER_LINEAR))
    options = HashOptions(uncrop=True, derotate=True)
    codes = hash_media(copy, ["pdq"], options)[0].codes
    assert codes.shape == (1 + 16 + 4, 32)  # as given, uncrop rows, then derotate rows
    found = engine.match_media(copy, options=options).matches
    assert [m.external_id for m in found] == ["astronaut"]
    assert found[0].distance <= 31 and found[0].variant >= 17  # a derotate row found it
    assert engine.match_media(copy, options=HashOptions(uncrop=True)).matches == []


def test_small_downscaled_copy_matches_through_match_media_with_upscale_small(tmp_path):
    """A 100 px copy of a 200 px picture: plain PDQ lands 42 bits away (the copy's box
    filter is 1 px, its original's 2), enlarged to 256 px first it lands within 31."""
    import cv2

    im = skimage.data.hubble_deep_field()
    small = cv2.resize(
        im, (200, round(im.shape[0] * 200 / im.shape[1])), interpolation=cv2.INTER_AREA
    )
    copy_rgb = cv2.resize(small, (100, small.shape[0] // 2), interpolation=cv2.INTER_AREA)
    record = SignalRecord("pdq", hash_media(_png(small))[0].hex, external_id="hubble")
    options = HashOptions(upscale_small=True)
    rows = hash_media(_png(copy_rgb), ["pdq"], options)[0]
    assert rows.codes.shape == (2, 32)  # as given, then the enlarged image
    assert np.array_equal(rows.codes[0], pdq_hash(copy_rgb)[0])
    assert hash_media(_png(small), ["pdq"], options)[0].codes.shape == (2, 32)
    assert hash_media(_png(im), ["pdq"], options)[0].codes.shape == (1, 32)  # >= 256 px
    with Engine.open(tmp_path / "data") as eng:
        eng.ingest([record], list_name="known")
        assert eng.match_media(_png(copy_rgb)).matches == []
        found = eng.match_media(_png(copy_rgb), options=options).matches
    assert [m.external_id for m in found] == ["hubble"]
    assert found[0].distance <= 31 and found[0].variant == 1


def test_quartered_copy_matches_through_match_media_with_upscale_small_replicate(tmp_path):
    """A quartered copy (144 px) of a 576 px fundus photo: plain PDQ lands 44 bits
    away and the bilinear 256 px row 40; each pixel repeated twice (288 px, half the
    original's size, no interpolation blur) lands within 31 (6 bits)."""
    import cv2

    im = skimage.data.retina()
    original = cv2.resize(im, (576, 576), interpolation=cv2.INTER_AREA)
    copy_rgb = cv2.resize(original, (144, 144), interpolation=cv2.INTER_AREA)
    stored = pdq_hash(original)[0]
    record = SignalRecord("pdq", stored.tobytes().hex(), external_id="retina")
    both = HashOptions(upscale_small=True, upscale_small_replicate=True)
    rows = hash_media(_png(copy_rgb), ["pdq"], both)[0].codes
    assert rows.shape == (3, 32)  # as given, bilinear 256 px, replicated 2 x 2
    assert np.array_equal(rows[2], pdq_hash(np.repeat(np.repeat(copy_rgb, 2, 0), 2, 1))[0])
    only = hash_media(_png(copy_rgb), ["pdq"], HashOptions(upscale_small_replicate=True))[0]
    assert np.array_equal(only.codes, rows[[0, 2]])  # each option adds its own row
    assert hash_media(_png(original), ["pdq"], both)[0].codes.shape == (1, 32)  # >= 256
    with Engine.open(tmp_path / "data") as eng:
        eng.ingest([record], list_name="known")
        assert eng.match_media(_png(copy_rgb)).matches == []
        assert (
            eng.match_media(_png(copy_rgb), options=HashOptions(upscale_small=True)).matches == []
        )
        found = eng.match_media(_png(copy_rgb), options=both).matches
    assert [m.external_id for m in found] == ["retina"]
    assert found[0].distance <= 31 and found[0].variant == 2


def test_reoriented_rows_match_only_within_the_default_threshold(tmp_path):
    """A loosened threshold (63) applies to the rows as given, not to the 7 re-oriented
    ones: astronaut turned by 2 degrees lands 34 bits from the stored astronaut
    (as-given row: matched) and 36 from a stored mirror image of it (mirror row: not
    matched, though within 63). At the default threshold a mirrored copy still matches
    through its mirror row."""
    import cv2

    im = skimage.data.astronaut()
    h, w = im.shape[:2]
    turned = cv2.warpAffine(im, cv2.getRotationMatrix2D((w / 2, h / 2), 2.0, 1.0), (w, h))
    options = HashOptions(dihedral=True, dihedral_exact=True, trim_borders=True)
    rows = hash_media(_png(turned), ["pdq"], options)[0]
    assert rows.orientations == list(range(8)) and rows.codes.shape == (8, 32)
    assert hash_media(_png(turned), ["pdq"], HashOptions())[0].orientations == []
    records = [
        SignalRecord("pdq", pdq_hash(im)[0].tobytes().hex(), external_id="upright"),
        SignalRecord("pdq", pdq_hash(im[:, ::-1])[0].tobytes().hex(), external_id="mirror"),
    ]
    with Engine.open(tmp_path / "data") as eng:
        eng.ingest(records, list_name="known")
        loose = eng.match_media(_png(turned), options=options, threshold=63).matches
        flipped = eng.match_media(_jpeg(im[:, ::-1]), options=options).matches
    assert [(m.external_id, m.variant) for m in loose] == [("upright", 0)]
    assert 31 < loose[0].distance <= 63
    assert {(m.external_id, m.variant) for m in flipped} == {("upright", 5), ("mirror", 0)}


def _generated_photo(seed: int, h: int = 213, w: int = 320) -> np.ndarray:
    """A benign generated picture: smooth colour blobs under a fine wave texture (~4 px
    period, the kind of detail a quartered copy cannot hold)."""
    import cv2

    rng = np.random.default_rng(seed)
    blobs = cv2.GaussianBlur(rng.normal(0, 1, (h, w, 3)), (0, 0), 8)
    y, x = np.mgrid[:h, :w]
    wave = np.sin(2 * np.pi * (0.6 * x + 0.8 * y) / 4.2 + rng.uniform(0, 6))
    return np.clip(blobs / blobs.std() * 30 + 50 * wave[..., None] + 128, 0, 255).astype(np.uint8)


SMALL_ROWS = HashOptions(
    upscale_small=True, upscale_small_replicate=True, upscale_small_phases=True
)


def test_generated_picture_quartered_matches_its_original_and_not_another(tmp_path):
    """Through the matcher, with every small-image row: a generated picture's copy
    downscaled to 0.25 (80 x 53 px) matches the stored original (rows 12, 16, 4, then
    the phases 14, 12, 28 bits away); the copy of another generated picture matches
    nothing (106-114 bits)."""
    import cv2

    original, other = _generated_photo(3), _generated_photo(4)
    stored, quality = pdq_hash(original)
    record = SignalRecord("pdq", stored.tobytes().hex(), external_id="gen3", quality=quality)
    copy, stranger = (
        _png(cv2.resize(im, (80, 53), interpolation=cv2.INTER_AREA)) for im in (original, other)
    )
    rows = hash_media(copy, ["pdq"], SMALL_ROWS)[0].codes
    assert rows.shape == (1 + 1 + 1 + 3, 32)  # as given, bilinear, replicated, 3 phases
    with Engine.open(tmp_path / "data") as eng:
        eng.ingest([record], list_name="known")
        found = eng.match_media(copy, options=SMALL_ROWS).matches
        assert eng.match_media(stranger, options=SMALL_ROWS).matches == []
    assert [m.external_id for m in found] == ["gen3"]
    assert found[0].distance <= 31


def test_quartered_copy_matches_only_with_the_phase_shifted_rows(tmp_path):
    """rocket#00 of the quality bench (a 320 x 213 night-sky tile, PDQ quality 51)
    quartered: the as-given, bilinear and replicated rows land 34-46 bits away; the
    replicated copy moved by half a copy pixel (2 px of the 4 x enlargement) lands 28,
    within 31. The copy's quality is 45, so it meets only stored quality >= 50."""
    import cv2

    from hashmatch.engine.multihash import phase_shifted_small, replicated_small

    sky = np.ascontiguousarray(skimage.data.rocket()[:213, :320])
    stored, quality = pdq_hash(sky)
    record = SignalRecord("pdq", stored.tobytes().hex(), external_id="sky", quality=quality)
    copy_rgb = cv2.resize(sky, (80, 53), interpolation=cv2.INTER_AREA)
    moved = phase_shifted_small(copy_rgb)
    rep = replicated_small(copy_rgb)
    assert len(moved) == 3 and all(m.shape == rep.shape for m in moved)
    assert np.array_equal(moved[2][2:, 2:], rep[:-2, :-2])  # down and right by 2 px
    assert np.array_equal(moved[2][:2, 2:], np.repeat(rep[:1, :-2], 2, axis=0))  # edge
    assert phase_shifted_small(sky) == []  # 256 px or more: no rows
    old = HashOptions(upscale_small=True, upscale_small_replicate=True)
    rows = hash_media(_png(copy_rgb), ["pdq"], SMALL_ROWS)[0]
    assert np.array_equal(rows.codes[:3], hash_media(_png(copy_rgb), ["pdq"], old)[0].codes)
    assert rows.codes.shape == (6, 32) and rows.quality < 50
    with Engine.open(tmp_path / "data") as eng:
        eng.ingest([record], list_name="known")
        assert eng.match_media(_png(copy_rgb), options=old).matches == []
        found = eng.match_media(_png(copy_rgb), options=SMALL_ROWS).matches
    assert [m.external_id for m in found] == ["sky"]
    assert found[0].distance <= 31 and found[0].variant >= 3  # a phase-shifted row


@pytest.mark.filterwarnings("error::RuntimeWarning")  # no mean of an empty size split
def test_bench_quality_floor_counts_flat_copies_as_not_looked_up():
    """As match_media with low_quality_queries="skip", the bench looks nothing up for a
    copy under PDQ quality 50: a near-flat picture's blurred copy is a miss with no
    distance, and never a wrong match. With the engine's default rule the same copy
    matches its stored original (quality 51), and each run scores the other rule too."""
    quality = _bench_quality()
    rocket = skimage.data.rocket()
    sky = np.ascontiguousarray(rocket[:213, :320])  # night sky and a pylon: quality 51
    photo = np.ascontiguousarray(skimage.data.astronaut()[::2, ::2])
    assert pdq_hash(sky)[1] >= 50  # stored ...
    methods = [m for m in quality.METHODS if m.name == "pdq"]
    originals = [("sky", sky), ("astronaut", photo)]
    on = quality.evaluate(originals, ["blur"], methods, low_quality_queries="skip")
    off = quality.evaluate(originals, ["blur"], methods, min_quality=0)
    assert on["methods"]["pdq"]["skipped_low_quality"] == 1  # ... its blurred copy is not
    assert off["methods"]["pdq"]["skipped_low_quality"] == 0
    assert [x["original"] for x in on["methods"]["pdq"]["misses"]] == ["sky"]
    assert on["methods"]["pdq"]["misses"][0]["distance"] is None
    assert on["methods"]["pdq"]["misses"][0]["distance_unfloored"] <= 256  # had it been
    blur = on["methods"]["pdq"]["per_transform"]["blur"]
    assert blur["recall_safe_large"] is None and blur["recall_safe_small"] == 0.5  # no 480 px
    assert "not looked up (" in quality.misses_table(on, names=("pdq",))
    # The engine's default: the blurred sky (quality < 50) meets the stored sky (51).
    stored = quality.evaluate(originals, ["blur"], methods)
    pdq = stored["methods"]["pdq"]
    assert pdq["low_quality_queries"] == "match_quality_stored"
    assert pdq["skipped_low_quality"] == 1 and pdq["misses"] == []
    assert pdq["per_transform"]["blur"]["recall_plain"] == 1.0
    assert pdq["other_rule"]["low_quality_queries"] == "skip"
    assert pdq["other_rule"]["per_transform"]["blur"]["recall_plain"] == 0.5
    assert on["methods"]["pdq"]["other_rule"]["per_transform"]["blur"]["recall_plain"] == 1.0


def test_bench_floor_rule_keeps_low_quality_copies_off_unknown_and_low_stored():
    """The bench's floor is the engine's rule: a copy under the floor keeps its distance
    only to stored pictures of known quality >= the floor."""
    quality = _bench_quality()
    d = np.array([[5, 6, 7], [8, 9, 10]], np.int16)
    low = np.array([True, False])
    ok = np.array([True, False, False])  # quality >= 50 / unknown / under 50
    got = quality.apply_floor(d, low, ok, "match_quality_stored")
    assert got.tolist() == [[5, quality.NO_MATCH, quality.NO_MATCH], [8, 9, 10]]
    assert quality.apply_floor(d, low, ok, "skip")[0].tolist() == [quality.NO_MATCH] * 3
    assert d[0, 1] == 6  # the input is left alone


def test_bench_quality_floor_study_finds_flat_pictures_colliding(reference_dir):
    """Two near-flat photos (PDQ quality 3-4: a grey sky, a wall) of different scenes
    hash alike once tiled and edited (what the floor guards against); their pictures
    stay far from a stored detailed photo."""
    quality = _bench_quality()
    folder = reference_dir / "pdq-images/reg-test-input/labelme-subset"
    flat = [(n, decode_image(folder / n)) for n in ("q0003.jpg", "q0004.jpg")]
    photo = np.ascontiguousarray(skimage.data.astronaut())
    text = quality.floor_table([*flat, ("astronaut", photo)], [("astronaut", photo)], [])
    rows = {tuple(r.split(" | ")[:2]): r.split(" | ") for r in text.splitlines()}
    each_other = rows[("| 0-49", "each other")]
    assert int(each_other[5].split()[0]) > 0  # flat pictures of two scenes within 31
    stored = rows[("| 0-29", "stored (quality >= 50 + haystack)")]
    assert stored[5].split()[0] == "0" and int(stored[4]) > 63  # none near the photo
