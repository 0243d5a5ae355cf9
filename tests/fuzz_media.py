"""Benign media for the service fuzzer (tests/test_service_fuzz.py), and ways to break it.

Every input is generated here from scikit-image's sample pictures: small stills in
each format the server decodes (JPEG, PNG, GIF, WebP, TIFF), an animated GIF, a tiny
MP4, a flat PNG over the fuzz server's pixel limit and a PNG whose header claims a
huge picture. :func:`broken_media` cuts, bit-flips and splices them: what a client's
upload looks like after a bad network or a hostile client got to it.
"""

from __future__ import annotations

import functools
import io
import struct
import tempfile
import zlib
from pathlib import Path

import cv2
import numpy as np
import skimage.data
from hypothesis import strategies as st
from PIL import Image

# The fuzz server's max_media_pixels: OVER_LIMIT is a flat picture a little above it.
PIXEL_LIMIT = 400_000


def _picture(name: str, size: tuple[int, int]) -> Image.Image:
    pixels = getattr(skimage.data, name)()
    return Image.fromarray(pixels).convert("RGB").resize(size)


def _encoded(image: Image.Image, fmt: str, **options: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **options)
    return buf.getvalue()


def _mp4(frames: int = 4, size: tuple[int, int] = (64, 48)) -> bytes:
    """A few frames of a moving cat as an mp4v MP4 (OpenCV writes it; PyAV reads it)."""
    cat = cv2.resize(cv2.cvtColor(skimage.data.chelsea(), cv2.COLOR_RGB2BGR), size)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tiny.mp4"
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, size)
        for i in range(frames):
            writer.write(np.roll(cat, i * 5, axis=1))
        writer.release()
        return path.read_bytes()


def _png_claiming(width: int, height: int) -> bytes:
    """A PNG whose IHDR (with a correct CRC) claims ``width`` x ``height``: the header
    of a decompression bomb, without its pixels."""
    data = bytearray(_encoded(_picture("camera", (8, 8)), "PNG"))
    ihdr = 8 + 8  # signature, then the IHDR chunk's length and type
    data[ihdr : ihdr + 8] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr - 4 : ihdr + 13]))
    data[ihdr + 13 : ihdr + 17] = struct.pack(">I", crc)
    return bytes(data)


@functools.cache
def corpus() -> dict[str, bytes]:
    """name -> benign media bytes (built once per process)."""
    cat = _picture("chelsea", (96, 64))
    astronaut = _picture("astronaut", (80, 80))
    frames = [cat, cat.rotate(90), astronaut.resize(cat.size)]
    flat = Image.new("RGB", (800, PIXEL_LIMIT // 800 + 10), (120, 30, 200))
    return {
        "jpeg": _encoded(cat, "JPEG", quality=80),
        "png": _encoded(astronaut, "PNG"),
        "gif": _encoded(cat, "GIF"),
        "webp": _encoded(astronaut, "WEBP", quality=70),
        "tiff": _encoded(cat, "TIFF"),
        "animated_gif": _encoded(frames[0], "GIF", save_all=True, append_images=frames[1:]),
        "mp4": _mp4(),
        "over_pixel_limit": _encoded(flat, "PNG"),
        "bomb_header": _png_claiming(100_000, 100_000),
    }


def _cut(data: bytes, at: float) -> bytes:
    return data[: int(len(data) * at)]


def _flip(data: bytes, positions: list[float]) -> bytes:
    out = bytearray(data)
    for p in positions:
        i = int(p * (len(out) - 1))
        out[i] ^= 1 << (i % 8)
    return bytes(out)


def _splice(data: bytes, at: float, junk: bytes) -> bytes:
    i = int(len(data) * at)
    return data[:i] + junk + data[i + len(junk) :]


@st.composite
def broken_media(draw: st.DrawFn) -> bytes:
    """One of the corpus' items, intact or cut / bit-flipped / spliced; or random bytes."""
    items = corpus()
    name = draw(st.sampled_from(sorted(items)))
    data = items[name]
    how = draw(
        st.sampled_from(["intact"] * 4 + ["cut", "flip", "splice", "other_header", "random"])
    )
    fraction = st.floats(0.0, 1.0)
    if how == "cut":
        return _cut(data, draw(fraction)) or b"\0"
    if how == "flip":
        return _flip(data, draw(st.lists(fraction, min_size=1, max_size=8)))
    if how == "splice":
        return _splice(data, draw(fraction), draw(st.binary(min_size=1, max_size=64)))
    if how == "other_header":  # one format's first bytes on another's body
        other = items[draw(st.sampled_from(sorted(items)))]
        return other[:16] + data[16:]
    if how == "random":
        return draw(st.binary(min_size=1, max_size=512))
    return data
