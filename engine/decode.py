"""Media bytes -> RGB pixels, safely.

INTERFACE OWNED BY THE HASHING WORK (issue 2). This first version is a minimal
Pillow decoder so other layers can build on the signatures below; the hashing
work replaces the body (EXIF, every mode, animation, limits, OpenCV fast path)
without changing the signatures.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from hashmatch.engine.errors import CorruptMedia, EmptyMedia


@dataclass(frozen=True)
class DecodeLimits:
    """Guards against huge files and decompression bombs."""

    max_bytes: int = 256 * 1024 * 1024
    max_pixels: int = 100_000_000


DEFAULT_LIMITS = DecodeLimits()

Source = bytes | bytearray | memoryview | str | Path


def read_source(source: Source, limits: DecodeLimits = DEFAULT_LIMITS) -> bytes:
    """Bytes of a path or a buffer."""
    if isinstance(source, str | Path):
        return Path(source).read_bytes()
    return bytes(source)


def decode_image(source: Source, *, limits: DecodeLimits = DEFAULT_LIMITS) -> np.ndarray:
    """Decode the first frame to ``uint8[h, w, 3]`` RGB, EXIF orientation applied."""
    data = read_source(source, limits)
    if not data:
        raise EmptyMedia("media is empty (0 bytes)", field="media")
    try:
        with Image.open(io.BytesIO(data)) as im:
            im = ImageOps.exif_transpose(im)
            return np.asarray(im.convert("RGB"))
    except Exception as exc:  # replaced by precise handling in the hashing work
        raise CorruptMedia(f"cannot decode image: {exc}", field="media") from exc
