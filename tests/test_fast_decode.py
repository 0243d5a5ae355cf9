"""``HashOptions.fast_decode`` / ``hashmatch scan --fast-decode[-shrink]``: PDQ from
JPEG luma (1), also shrunk in the DCT domain (2). Not bit-identical by design, so the
tests bound the distance to the exact path on real photos, check that orientation
survives, and that everything that is not a plain JPEG (or asks for more than PDQ)
goes through the exact path.
"""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps
from skimage import data

from hashmatch.engine.catalog import Catalog
from hashmatch.engine.decode import LUMA_MIN_SIDE, decode_image
from hashmatch.engine.hashing import HashOptions, hash_media
from hashmatch.engine.scan import ScanOptions, scan

EXACT = HashOptions()
LUMA = HashOptions(fast_decode=1)
SHRINK = HashOptions(fast_decode=2)
# luma alone: rounding only (0-2 bits on photos; README, batch scans)
LUMA_BITS = 4
# shrunk: another resolution; photos move a few bits (fine textures much more: the
# bench's brick texture 46, so level 2 is not for textures); the threshold is 31
SHRINK_BITS = 16


def _jpeg(rgb: np.ndarray, quality: int = 90, **save) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=quality, **save)
    return buf.getvalue()


def _enlarged(rgb: np.ndarray, scale: int) -> np.ndarray:
    h, w = rgb.shape[:2]
    return cv2.resize(rgb, (w * scale, h * scale), interpolation=cv2.INTER_CUBIC)


def _bits(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.unpackbits(a ^ b).sum())


def _pdq(blob: bytes, options: HashOptions = EXACT) -> np.ndarray:
    return hash_media(blob, ["pdq"], options)[0].codes


@pytest.mark.parametrize("name", ["astronaut", "coffee", "chelsea", "camera", "rocket"])
@pytest.mark.parametrize("scale", [1, 3])
def test_fast_pdq_is_within_a_few_bits_of_the_exact_path(name, scale):
    rgb = getattr(data, name)()
    if rgb.ndim == 2:
        rgb = np.repeat(rgb[:, :, None], 3, axis=2)
    blob = _jpeg(_enlarged(rgb, scale))
    exact = _pdq(blob)
    assert _bits(exact[0], _pdq(blob, LUMA)[0]) <= LUMA_BITS
    assert _bits(exact[0], _pdq(blob, SHRINK)[0]) <= SHRINK_BITS
    # the luma path was taken: one plane; shrunk by 2 when that keeps >= 512 px
    luma = decode_image(blob, luma=True)
    assert luma.shape == (rgb.shape[0] * scale, rgb.shape[1] * scale)
    short = min(rgb.shape[:2]) * scale
    shrunk = decode_image(blob, luma=True, shrink=True)
    half = -(-short // 2)  # libjpeg rounds scaled sizes up
    assert min(shrunk.shape[:2]) == (half if half >= LUMA_MIN_SIDE else short)


def test_exif_rotated_jpeg_is_hashed_upright():
    upright = _enlarged(data.coffee(), 3)  # 1200x1800: shrunk by 2 on the luma path
    exif = Image.Exif()
    exif[0x0112] = 6  # a viewer rotates 90 degrees clockwise
    blob = _jpeg(np.ascontiguousarray(np.rot90(upright, 1)), exif=exif.tobytes())
    assert decode_image(blob, luma=True).shape[:2] == (1200, 1800)  # upright
    assert decode_image(blob, luma=True, shrink=True).shape[:2] == (600, 900)  # and halved
    exact = _pdq(blob)
    stored = _pdq(_jpeg(np.ascontiguousarray(np.rot90(upright, 1))))
    assert _bits(exact[0], stored[0]) > 2 * SHRINK_BITS  # the rotation matters
    for options, bound in ((LUMA, LUMA_BITS), (SHRINK, SHRINK_BITS)):
        fast = _pdq(blob, options)
        assert _bits(fast[0], exact[0]) <= bound
        assert _bits(fast[0], _pdq(_jpeg(upright))[0]) <= bound + 2


def test_reference_exif_rotations_with_fast_decode(reference_dir: Path):
    folder = reference_dir / "pdq-images" / "reg-test-input" / "exif-rotn"
    for path in sorted(folder.glob("*.jpg")):
        with Image.open(path) as im:
            upright = ImageOps.exif_transpose(im)
            size = upright.size
        assert decode_image(path, luma=True).shape[1::-1] == size
        blob = path.read_bytes()
        assert _bits(_pdq(blob, LUMA)[0], _pdq(blob)[0]) <= LUMA_BITS


def test_png_and_other_requests_go_through_the_exact_path():
    rgb = data.astronaut()
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "PNG")
    png = buf.getvalue()
    np.testing.assert_array_equal(decode_image(png, luma=True, shrink=True), decode_image(png))
    np.testing.assert_array_equal(_pdq(png, SHRINK), _pdq(png))
    jpeg = _jpeg(_enlarged(rgb, 3))
    exact = _pdq(jpeg)
    # colour pixels needed (another photo type, trimming): exact decode, exact PDQ
    both = hash_media(jpeg, ["pdq", "ahash"], SHRINK)
    np.testing.assert_array_equal(both[0].codes, exact)
    assert both[1].codes.tobytes() == hash_media(jpeg, ["ahash"])[0].codes.tobytes()
    trim = HashOptions(fast_decode=2, trim_borders=True)
    np.testing.assert_array_equal(_pdq(jpeg, trim), _pdq(jpeg, HashOptions(trim_borders=True)))
    # a CMYK JPEG is not an 8-bit luma JPEG for this path
    cmyk = io.BytesIO()
    Image.fromarray(rgb).convert("CMYK").save(cmyk, "JPEG", quality=90)
    np.testing.assert_array_equal(_pdq(cmyk.getvalue(), SHRINK), _pdq(cmyk.getvalue()))
    # the fast path differs from the exact one at all (it is not silently off)
    assert not np.array_equal(decode_image(jpeg, luma=True), decode_image(jpeg))


def test_truncated_jpeg_is_still_corrupt_on_the_fast_path():
    from hashmatch.engine.errors import CorruptMedia

    blob = _jpeg(_enlarged(data.chelsea(), 4))
    with pytest.raises(CorruptMedia):
        hash_media(blob[: len(blob) // 2], ["pdq"], SHRINK)


def test_scan_records_fast_hashes_and_an_exact_scan_rehashes_them(tmp_path):
    root = tmp_path / "media"
    root.mkdir()
    photo = _jpeg(_enlarged(data.astronaut(), 3))
    (root / "a.jpg").write_bytes(photo)
    buf = io.BytesIO()
    Image.fromarray(data.coffee()).save(buf, "PNG")
    (root / "b.png").write_bytes(buf.getvalue())
    catalog = Catalog(tmp_path / "catalog.sqlite")
    # level 2: its code differs from the exact one here (luma alone often does not)
    fast = ScanOptions(workers=1, fast_decode=2, progress=False)
    first = scan([root], catalog=catalog, matcher=None, report=None, options=fast)
    assert first.hashed == 2
    rows = catalog.lookup([str(root / "a.jpg")])
    assert "pdq+fast" in rows[str(root / "a.jpg")].types
    stored = catalog.hashes_of([rows[str(root / "a.jpg")].id])
    code = next(h for h in next(iter(stored.values())) if h.signal_type == "pdq").codes[0]
    np.testing.assert_array_equal(code, _pdq(photo, SHRINK)[0])
    assert not np.array_equal(code, _pdq(photo)[0])
    again = scan([root], catalog=catalog, matcher=None, report=None, options=fast)
    assert again.hashed == 0 and again.skipped_unchanged == 2
    exact = scan([root], catalog=catalog, matcher=None, report=None,
                 options=ScanOptions(workers=0, progress=False))  # fmt: skip
    assert exact.hashed == 1  # the JPEG's fast hash is not reused; the PNG's PDQ was exact
    rows = catalog.lookup([str(root / "a.jpg")])
    assert "pdq+fast" not in rows[str(root / "a.jpg")].types
    stored = catalog.hashes_of([rows[str(root / "a.jpg")].id])
    code = next(h for h in next(iter(stored.values())) if h.signal_type == "pdq").codes[0]
    np.testing.assert_array_equal(code, _pdq(photo)[0])
    # exact hashes are good enough for a fast scan: reused
    third = scan([root], catalog=catalog, matcher=None, report=None, options=fast)
    assert third.hashed == 0
    catalog.close()


def test_cli_fast_decode_flags(tmp_path):
    from click.testing import CliRunner

    from hashmatch.server.cli import cli

    root = tmp_path / "media"
    root.mkdir()
    photo = root / "a.jpg"
    photo.write_bytes(_jpeg(_enlarged(data.astronaut(), 3)))
    blob = photo.read_bytes()
    runs = ((["--fast-decode"], LUMA), (["--fast-decode-shrink"], SHRINK), ([], EXACT))
    for n, (flags, options) in enumerate(runs):
        catalog = tmp_path / f"c{n}.sqlite"
        out = tmp_path / f"r{n}.jsonl"
        args = ["scan", *flags, str(root), "--no-match", "--catalog", str(catalog),
                "--workers", "0", "--out", str(out), "--no-progress"]  # fmt: skip
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 0, result.output
        with Catalog(catalog) as cat:
            rec = cat.lookup([str(photo)])[str(photo)]
            assert ("pdq+fast" in rec.types) == bool(flags)
            stored = next(iter(cat.hashes_of([rec.id]).values()))
            code = next(h for h in stored if h.signal_type == "pdq").codes[0]
            np.testing.assert_array_equal(code, _pdq(blob, options)[0])


@pytest.mark.parametrize("name", ["astronaut", "coffee", "camera", "brick", "grass", "colorwheel"])
def test_fast_pdq_is_pdqhash_of_the_luma_plane_as_rgb(name):
    """PDQ hashes the luma plane directly (no R = G = B copy): the codes and qualities
    are pdqhash's of that plane repeated to RGB, which is what this path hashed before
    (JPEG quality, subsampling, odd sizes, EXIF rotation)."""
    import pdqhash

    rgb = getattr(data, name)()
    if rgb.ndim == 2:
        rgb = np.repeat(rgb[:, :, None], 3, axis=2)
    exif = Image.Exif()
    exif[0x0112] = 8
    blobs = [
        _jpeg(rgb, 75, subsampling=2),
        _jpeg(np.ascontiguousarray(rgb[:301, :437]), 95, subsampling=0),
        _jpeg(_enlarged(rgb, 3), 90, exif=exif.tobytes()),
    ]
    for blob in blobs:
        for options in (LUMA, SHRINK):
            plane = decode_image(blob, luma=True, shrink=options.fast_decode == 2)
            assert plane.ndim == 2 and plane.dtype == np.uint8
            bits, quality = pdqhash.compute(
                np.ascontiguousarray(np.repeat(plane[:, :, None], 3, 2))
            )
            got = hash_media(blob, ["pdq"], options)[0]
            assert got.codes[0].tobytes() == np.packbits(np.asarray(bits, np.uint8)).tobytes()
            assert got.qualities == [int(quality)]
