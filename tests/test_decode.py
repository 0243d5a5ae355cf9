"""Decoding: every mode, EXIF, animation, limits and every bad-input path (real files)."""

from __future__ import annotations

import io
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

from hashmatch.engine.decode import (
    DecodeLimits,
    decode_frames,
    decode_image,
    iter_frames,
    read_source,
    to_rgb,
)
from hashmatch.engine.errors import (
    CorruptMedia,
    EmptyMedia,
    InvalidInput,
    MediaError,
    MediaTooLarge,
    UnsupportedMedia,
)


def _picture(w: int = 96, h: int = 64) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // w, y * 255 // h, (x + y) % 256], axis=2).astype(np.uint8)


def _save(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "BMP", "TIFF", "PPM", "WEBP"])
def test_lossless_formats_round_trip_exactly(fmt):
    rgb = _picture()
    kw = {"lossless": True} if fmt == "WEBP" else {}
    out = decode_image(_save(Image.fromarray(rgb), fmt, **kw))
    assert out.dtype == np.uint8 and out.shape == (64, 96, 3)
    np.testing.assert_array_equal(out, rgb)


def test_jpeg_fast_path_equals_pillow(tmp_path: Path):
    data = _save(Image.fromarray(_picture(300, 200)), "JPEG", quality=85)
    expected = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    np.testing.assert_array_equal(decode_image(data), expected)
    path = tmp_path / "a.jpg"
    path.write_bytes(data)
    np.testing.assert_array_equal(decode_image(path), expected)
    np.testing.assert_array_equal(decode_image(str(path)), expected)


@pytest.mark.parametrize(
    "mode", ["1", "L", "LA", "P", "PA", "RGB", "RGBA", "CMYK", "YCbCr", "HSV", "I", "F", "LAB"]
)
def test_every_pillow_mode_decodes(mode):
    rgb = _picture()
    im = Image.fromarray(rgb).convert(mode)
    fmt = "PNG" if mode in ("1", "L", "LA", "P", "RGB", "RGBA") else "TIFF"
    # No container stores HSV: decode that one from memory.
    out = to_rgb(im) if mode == "HSV" else decode_image(_save(im, fmt))
    assert out.shape == (64, 96, 3) and out.dtype == np.uint8 and out.flags.c_contiguous
    assert out.flags.writeable
    expected = np.asarray(im.convert("RGB")).astype(int)
    assert np.abs(out.astype(int) - expected).mean() < 1.0


def test_alpha_is_dropped_not_composited():
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = 0  # fully transparent red
    out = decode_image(_save(Image.fromarray(rgba, "RGBA"), "PNG"))
    assert (out[..., 0] == 200).all() and (out[..., 1:] == 0).all()


def test_sixteen_bit_grey_is_scaled_not_clipped():
    grey16 = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16).astype(np.uint16)
    out = decode_image(_save(Image.fromarray(grey16), "PNG"))
    np.testing.assert_array_equal(out[..., 0], (grey16 >> 8).astype(np.uint8))


_T = Image.Transpose
# The transpose that undoes what a viewer applies for each EXIF orientation.
_INVERSE = {
    1: None,
    2: _T.FLIP_LEFT_RIGHT,
    3: _T.ROTATE_180,
    4: _T.FLIP_TOP_BOTTOM,
    5: _T.TRANSPOSE,
    6: _T.ROTATE_90,
    7: _T.TRANSVERSE,
    8: _T.ROTATE_270,
}


@pytest.mark.parametrize("orientation", sorted(_INVERSE))
def test_exif_orientation_is_applied(orientation):
    upright = _picture(90, 60)
    stored = Image.fromarray(upright)
    if _INVERSE[orientation] is not None:
        stored = stored.transpose(_INVERSE[orientation])
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = _save(stored, "PNG", exif=exif.tobytes())
    np.testing.assert_array_equal(decode_image(data), upright)
    pillow = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
    np.testing.assert_array_equal(np.asarray(pillow), upright)
    frames = decode_frames(data)
    assert len(frames) == 1
    np.testing.assert_array_equal(frames[0], upright)


def test_exif_jpeg_fast_path_applies_orientation():
    upright = _picture(120, 80)
    exif = Image.Exif()
    exif[0x0112] = 6  # viewer rotates 90 degrees clockwise
    stored = Image.fromarray(np.ascontiguousarray(np.rot90(upright, 1)))
    data = _save(stored, "JPEG", quality=95, exif=exif.tobytes())
    out = decode_image(data)
    assert out.shape == upright.shape
    assert np.abs(out.astype(int) - upright).mean() < 4


def test_reference_exif_rotations_decode_upright(reference_dir: Path):
    folder = reference_dir / "pdq-images" / "reg-test-input" / "exif-rotn"
    paths = sorted(folder.glob("*.jpg"))
    assert len(paths) == 4
    for path in paths:
        with Image.open(path) as im:
            tag = im.getexif().get(0x0112, 1)
            stored = np.asarray(im.convert("RGB"))
            upright = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
        out = decode_image(path)
        np.testing.assert_array_equal(out, upright)
        swapped = tag in (5, 6, 7, 8)
        assert out.shape[:2] == (stored.shape[1::-1] if swapped else stored.shape[:2])
        if tag == 3:
            np.testing.assert_array_equal(out, stored[::-1, ::-1])


def _animated(fmt: str, n: int = 4) -> tuple[bytes, list[np.ndarray]]:
    frames = []
    for k in range(n):
        a = np.zeros((32, 48, 3), np.uint8)
        a[:, k * 8 : k * 8 + 8] = (255, 255, 255)
        a[..., 0] = 40 * k
        frames.append(a)
    ims = [Image.fromarray(f) for f in frames]
    kw = {"lossless": True} if fmt == "WEBP" else {}
    data = _save(ims[0], fmt, save_all=True, append_images=ims[1:], duration=100, loop=0, **kw)
    return data, frames


@pytest.mark.parametrize("fmt", ["GIF", "WEBP", "PNG"])
def test_animation_first_frame_and_all_frames(fmt):
    data, frames = _animated(fmt)
    np.testing.assert_array_equal(decode_image(data), frames[0])
    got = decode_frames(data)
    assert len(got) == len(frames)
    for a, b in zip(got, frames, strict=True):
        np.testing.assert_array_equal(a, b)
    assert len(decode_frames(data, max_frames=2)) == 2
    assert len(list(iter_frames(data, max_frames=10))) == 4


def test_max_frames_must_be_positive():
    data, _ = _animated("GIF")
    with pytest.raises(MediaError, match="max_frames"):
        decode_frames(data, max_frames=0)


def test_animation_total_pixel_limit():
    data, _ = _animated("GIF", n=4)
    with pytest.raises(MediaTooLarge, match="in total"):
        decode_frames(data, limits=DecodeLimits(max_pixels=32 * 48 * 2))
    assert len(decode_frames(data, limits=DecodeLimits(max_pixels=32 * 48 * 4))) == 4


def test_empty_bytes_and_empty_file(tmp_path: Path):
    with pytest.raises(EmptyMedia, match="empty"):
        decode_image(b"")
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(EmptyMedia):
        decode_image(path)


@pytest.mark.parametrize(
    "data",
    [b"hello, this is plainly text and not a picture\n" * 20, bytes(range(256)) * 8],
    ids=["text", "bytes"],
)
def test_non_image_is_unsupported(data):
    with pytest.raises(UnsupportedMedia, match="not an image"):
        decode_image(data)


def test_random_bytes_are_unsupported():
    rng = np.random.default_rng(7)
    for _ in range(20):
        data = rng.integers(0, 256, int(rng.integers(1, 5000)), dtype=np.uint8).tobytes()
        with pytest.raises(UnsupportedMedia, match="not an image"):
            decode_image(data)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "WEBP"])
@pytest.mark.parametrize("keep", [0.5, 0.9])
def test_truncated_files_are_corrupt(fmt, keep):
    noisy = np.random.default_rng(1).integers(0, 256, (200, 200, 3), dtype=np.uint8)
    data = _save(Image.fromarray(noisy), fmt)
    with pytest.raises(CorruptMedia, match=fmt) as err:
        decode_image(data[: int(len(data) * keep)])
    assert err.value.field == "media"


def test_truncated_header_is_corrupt_not_unsupported():
    data = _save(Image.fromarray(_picture()), "PNG")
    with pytest.raises(CorruptMedia, match="PNG"):
        decode_image(data[:20])


def test_corrupt_png_checksum_is_corrupt():
    data = bytearray(_save(Image.fromarray(_picture()), "PNG"))
    idat = data.index(b"IDAT")
    data[idat + 10 : idat + 40] = bytes(30)
    with pytest.raises(CorruptMedia):
        decode_image(bytes(data))


def _png_bomb(w: int, h: int) -> bytes:
    """A tiny valid-header PNG that claims w x h pixels (decompression bomb)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return len(body).to_bytes(4, "big") + kind + body + crc.to_bytes(4, "big")

    ihdr = w.to_bytes(4, "big") + h.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    idat = zlib.compress(b"\x00" * 1000)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_decompression_bomb_is_refused_before_decoding():
    data = _png_bomb(100_000, 100_000)
    assert len(data) < 200
    with pytest.raises(MediaTooLarge, match="pixels") as err:
        decode_image(data)
    assert isinstance(err.value, InvalidInput)
    with pytest.raises(MediaTooLarge):
        decode_frames(data)


def test_pixel_limit_is_configurable():
    data = _save(Image.fromarray(_picture(96, 64)), "PNG")
    with pytest.raises(MediaTooLarge, match="6144 pixels"):
        decode_image(data, limits=DecodeLimits(max_pixels=6000))
    assert decode_image(data, limits=DecodeLimits(max_pixels=6144)).shape == (64, 96, 3)


def test_byte_limit_for_bytes_and_paths(tmp_path: Path):
    data = _save(Image.fromarray(_picture()), "PNG")
    small = DecodeLimits(max_bytes=len(data) - 1)
    with pytest.raises(MediaTooLarge, match="byte limit"):
        decode_image(data, limits=small)
    path = tmp_path / "p.png"
    path.write_bytes(data)
    with pytest.raises(MediaTooLarge, match="byte limit"):
        read_source(path, small)
    assert read_source(path, DecodeLimits(max_bytes=len(data))) == data


def test_missing_file_and_wrong_type_name_the_problem(tmp_path: Path):
    with pytest.raises(MediaError, match="cannot read"):
        decode_image(tmp_path / "nope.jpg")
    with pytest.raises(MediaError, match="bytes or a path"):
        decode_image(12345)  # type: ignore[arg-type]


def test_reference_modes_all_decode(reference_dir: Path):
    folder = reference_dir / "pdq-images" / "misc-images" / "modes"
    original = decode_image(folder / "original.jpg")

    def small(rgb: np.ndarray) -> np.ndarray:  # blurs away the bilevel image's dithering
        return cv2.resize(rgb, (100, 63), interpolation=cv2.INTER_AREA).astype(int)

    files = [p for p in sorted(folder.iterdir()) if p.suffix != ".md"]
    assert len(files) >= 14
    for path in files:
        out = decode_image(path)
        assert out.shape == original.shape, path.name
        assert np.abs(small(out) - small(original)).mean() < 20, path.name


# --- JPEG pixels through simplejpeg must be OpenCV's, byte for byte ---------------------


def _cv2_rgb(data: bytes) -> np.ndarray:
    flags = cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION
    return cv2.imdecode(np.frombuffer(data, np.uint8), flags)


def _jpeg_variants():
    """JPEGs as encoders write them: scikit-image photos in colour and grey, odd and tiny
    crops, q30-q100, every chroma subsampling, progressive, optimised tables, restart
    intervals, EXIF orientation, RGB stored without the YCbCr transform."""
    from skimage import data as samples

    colour = {"astronaut": samples.astronaut(), "coffee": samples.coffee()}
    grey = {"camera": samples.camera()}
    for name, rgb in colour.items():
        crops = {"full": rgb, "odd": rgb[:301, :403], "tiny": rgb[:9, :17]}
        for crop, px in crops.items():
            px = np.ascontiguousarray(px)
            im = Image.fromarray(px)
            for q in (30, 90, 100):
                for sub in (0, 1, 2):  # 4:4:4, 4:2:2, 4:2:0
                    blob = _save(im, "JPEG", quality=q, subsampling=sub)
                    yield f"{name}-{crop}-q{q}-s{sub}", blob
            bgr = np.ascontiguousarray(px[..., ::-1])
            for sf in (cv2.IMWRITE_JPEG_SAMPLING_FACTOR_411, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_440):
                buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_SAMPLING_FACTOR, sf])[1]
                yield f"{name}-{crop}-sf{sf:x}", buf.tobytes()
            buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_RST_INTERVAL, 3])[1]
            yield f"{name}-{crop}-restart", buf.tobytes()
            yield f"{name}-{crop}-progressive", _save(im, "JPEG", quality=80, progressive=True)
            yield f"{name}-{crop}-optimized", _save(im, "JPEG", quality=80, optimize=True)
            yield f"{name}-{crop}-keep-rgb", _save(im, "JPEG", quality=90, keep_rgb=True)
            exif = Image.Exif()
            exif[0x0112] = 6
            yield f"{name}-{crop}-exif6", _save(im, "JPEG", quality=85, exif=exif.tobytes())
        yield f"{name}-grey", _save(Image.fromarray(px).convert("L"), "JPEG", quality=90)
    for name, px in grey.items():
        for q in (50, 95):
            yield f"{name}-q{q}", _save(Image.fromarray(px), "JPEG", quality=q)
            yield f"{name}-q{q}-progressive", _save(Image.fromarray(px), "JPEG", progressive=True)
    # a 1920x1080 photo like the scan bench's files (q90, OpenCV's encoder)
    big = cv2.resize(colour["astronaut"][..., ::-1], (1920, 1080), interpolation=cv2.INTER_CUBIC)
    yield "bench-1080p", cv2.imencode(".jpg", big, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()


def test_simplejpeg_pixels_are_opencvs():
    """RGB (the exact path) and the luma plane (``--fast-decode``) alike."""
    from hashmatch.engine.decode import _turbo_grey, _turbo_rgb

    seen = 0
    for name, blob in _jpeg_variants():
        orientation = Image.open(io.BytesIO(blob)).getexif().get(0x0112, 1)
        for turbo, flag, luma in (
            (_turbo_rgb, cv2.IMREAD_COLOR_RGB, False),
            (_turbo_grey, cv2.IMREAD_GRAYSCALE, True),
        ):
            expected = cv2.imdecode(
                np.frombuffer(blob, np.uint8), flag | cv2.IMREAD_IGNORE_ORIENTATION
            )
            got = turbo(blob)
            assert got is not None, name  # the fast path is taken, not silently skipped
            assert got.shape == expected.shape and got.dtype == np.uint8, name
            assert np.array_equal(got, expected), name
            upright = expected if orientation == 1 else np.rot90(expected, -1)
            np.testing.assert_array_equal(decode_image(blob, luma=luma), upright, err_msg=name)
        seen += 1
    assert seen > 80


def test_jpeg_simplejpeg_only_warns_about_falls_back_to_opencv():
    """Corrupt entropy data libjpeg decodes past with a warning: simplejpeg (strict)
    refuses it and the file gets OpenCV's pixels, as it always did."""
    from hashmatch.engine.decode import _turbo_grey, _turbo_rgb

    blob = bytearray(_save(Image.fromarray(_picture(300, 200)), "JPEG", quality=90))
    sos = blob.index(b"\xff\xda")
    blob[sos + 40 : sos + 44] = b"\xff\x00\xff\xd0"  # a stray restart marker mid-scan
    blob = bytes(blob)
    expected = _cv2_rgb(blob)
    assert expected is not None
    assert _turbo_rgb(blob) is None and _turbo_grey(blob) is None
    np.testing.assert_array_equal(decode_image(blob), expected)
    flags = cv2.IMREAD_GRAYSCALE | cv2.IMREAD_IGNORE_ORIENTATION
    grey = cv2.imdecode(np.frombuffer(blob, np.uint8), flags)
    np.testing.assert_array_equal(decode_image(blob, luma=True), grey)


def test_a_fifo_or_a_device_path_is_refused_unread(tmp_path):
    """read_source opened a path with a plain open(): a FIFO blocked until a writer came
    (forever, for `hash_media(path)`), /dev/zero was read up to the byte limit."""
    import os
    import threading

    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    outcome: list[BaseException | bytes] = []

    def read(source: Path) -> None:
        try:
            outcome.append(read_source(source))
        except BaseException as exc:
            outcome.append(exc)

    reader = threading.Thread(target=read, args=(fifo,), daemon=True)
    reader.start()
    reader.join(10)
    if reader.is_alive():  # the old open() waits for a writer: be one, then fail
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        reader.join(10)
    assert len(outcome) == 1 and isinstance(outcome[0], MediaError), outcome
    assert str(outcome[0]) == f"media: {fifo} is not a regular file"
    with pytest.raises(MediaError, match="/dev/zero is not a regular file"):
        read_source("/dev/zero", DecodeLimits(max_bytes=1 << 20))
