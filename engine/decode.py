"""Media bytes -> RGB pixels, safely.

Why this module exists: every hasher needs the same pixels from the same bytes, and
bytes arrive from untrusted callers. So decoding is one place that

* bounds the work before it starts: ``max_bytes`` is checked before a file is read and
  ``max_pixels`` against the header's dimensions before any pixel is decoded (a 100 kB
  PNG can claim 100000 x 100000 pixels), raising :class:`MediaTooLarge`;
* only opens formats that announce themselves with a magic number (JPEG, PNG, GIF, WebP,
  BMP, TIFF, PPM/PGM, ICO, JPEG 2000, AVIF when Pillow has it), so random bytes are
  :class:`UnsupportedMedia` instead of being guessed as a header-less format, and no
  external program (Ghostscript for EPS/PDF) is ever started;
* names the problem: empty -> :class:`EmptyMedia`, a known format that does not decode
  (truncated, corrupt) -> :class:`CorruptMedia` naming the format and Pillow's reason.
  No other exception escapes.

Pixel conventions (what hashes see):

* EXIF orientation is applied (the image is hashed upright, as viewers show it). Note
  python-threatexchange's ``pdq_from_file`` and the reference C++ CLI ignore the tag, so
  for a JPEG with orientation 3/6/8 our hash is the hash of the upright picture, which is
  what its re-encoded or screenshotted copies will hash to.
* Alpha is dropped (the stored colour channels are kept, not composited), as
  python-threatexchange and the reference tools do, so hashes of transparent images agree
  with hash lists those tools produced.
* 16-bit integer images (``I;16`` PNG/TIFF) are scaled to 8 bits (``>> 8``); 32-bit ``I``
  and float ``F`` images are clipped to 0..255 (Pillow's own ``convert`` rule, right for
  images converted from 8-bit data). Palette, bilevel, CMYK, YCbCr, HSV and LAB images go
  through Pillow's ``convert("RGB")``.
* Animated GIF/WebP/PNG: :func:`decode_image` gives the first frame,
  :func:`decode_frames` every frame (each fully composed, as displayed).
"""

from __future__ import annotations

import io
import os
import re
import stat
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, TypeVar

import cv2
import numpy as np
import simplejpeg
from PIL import Image, ImageOps, ImageSequence

from hashmatch.engine.errors import (
    CorruptMedia,
    EmptyMedia,
    MediaError,
    MediaTooLarge,
    UnsupportedMedia,
)
from hashmatch.engine.media_limits import LOCAL_MAX_VIDEO_FRAMES, MAX_FRAMES


@dataclass(frozen=True)
class DecodeLimits:
    """Guards against huge files and decompression bombs."""

    max_bytes: int = 256 * 1024 * 1024
    max_pixels: int = 100_000_000
    # Frames hashed per media item: an animation's frames (``all_frames``), a video's
    # *sampled* frames (vPDQ). Why: the pixel budget counts a 1x1 frame as 1 pixel, so
    # a 135 kB GIF of 9000 1x1 frames stays under it, yet each frame costs a fixed
    # ~0.05 ms (plain PDQ) to ~0.85 ms (every PDQ option on: ~30 rows) and its rows go
    # into the reply. 10_000 bounds that at ~0.5-9 s and 10k-300k rows, and refuses no
    # plausible media: animations have hundreds to a few thousand frames, and vPDQ's
    # default one hash a second is 2 h 46 min of video. Over it: MediaTooLarge, never
    # a silently partial answer.
    max_frames: int = MAX_FRAMES
    # A video's sampled frames alone, when they may run longer than an animation's
    # frames (None: ``max_frames``). Why apart: ``hash`` and ``scan`` read the operator's
    # own files, where films run past 2 h 46 min, so they raise the video cap to 100k;
    # that one field raised the animation cap with it, and ``hash --all-frames`` hashed
    # up to 100k frames of a GIF (~85 s with every PDQ option on) instead of refusing it.
    max_video_frames: int | None = None

    @property
    def video_frames(self) -> int:
        """The cap on a video's sampled frames (vPDQ)."""
        return self.max_frames if self.max_video_frames is None else self.max_video_frames


DEFAULT_LIMITS = DecodeLimits()
#: The operator's own files (``hash``, ``scan``'s default, ``match``): films may run past
#: 2 h 46 min; an animation keeps MAX_FRAMES.
LOCAL_LIMITS = DecodeLimits(max_video_frames=LOCAL_MAX_VIDEO_FRAMES)

Source = bytes | bytearray | memoryview | str | Path
_T = TypeVar("_T")  # what a guarded decoding step returns

# Formats whose files start with a magic number Pillow checks. Header-less formats
# (TGA, raw) would "identify" random bytes; EPS/PDF would start Ghostscript.
_WANTED_FORMATS = (
    "JPEG",
    "MPO",  # multi-picture JPEGs straight from phone cameras open as MPO
    "PNG",
    "GIF",
    "WEBP",
    "BMP",
    "DIB",
    "TIFF",
    "PPM",
    "ICO",
    "JPEG2000",
    "AVIF",
)

# Magic numbers, to tell "a PNG that is broken" (CorruptMedia) from "not an image".
_MAGIC = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"\x00\x00\x00\x0cjP  ", "JPEG2000"),
    (b"\xff\x4f\xff\x51", "JPEG2000"),
)


def _open_formats() -> tuple[str, ...]:
    Image.init()
    return tuple(f for f in _WANTED_FORMATS if f in Image.OPEN)


def sniff_format(data: bytes) -> str | None:
    """The image format the first bytes announce, or None (used to word errors)."""
    head = bytes(data[:16])
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    for magic, name in _MAGIC:
        if head.startswith(magic):
            return name
    return None


# ISO BMFF major brands of *still-image* files (HEIF/HEIC, AVIF): an ``ftyp`` with one of
# these is a photo in a format we do not decode, not a video.
_IMAGE_BRANDS = frozenset(
    [b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1", b"avif",
     b"avis", b"avci", b"avcs"]
)  # fmt: skip


def sniff_video(data: bytes) -> str | None:
    """The video container the first bytes announce (``"MP4/MOV"``, ``"AVI"``,
    ``"Matroska/WebM"``), or None. Only used to word errors: a video sent as a photo
    type, or a video container FFmpeg cannot open."""
    head = bytes(data[:16])
    box = head[4:8]
    if box == b"ftyp" and head[8:12] not in _IMAGE_BRANDS:
        return "MP4/MOV"
    if box in (b"moov", b"mdat", b"wide"):  # QuickTime files without an ftyp box
        return "MP4/MOV"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "AVI"
    if head[:4] == b"\x1a\x45\xdf\xa3":  # EBML
        return "Matroska/WebM"
    return None


def open_unblocked(path: str | Path) -> BinaryIO:
    """``path`` opened for reading without blocking: a FIFO's plain open() waits for a
    writer forever. Check it with ``os.fstat`` on the descriptor (no second lookup by
    name) before reading: a device's read() never ends."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    return open(os.open(path, flags), "rb")  # the caller closes it


def read_checked(fh: BinaryIO, size: int, max_bytes: int) -> bytes:
    """The bytes of ``fh``, a regular file ``size`` bytes long by its fstat: at most
    ``max_bytes + 1`` (one past the limit says it grew past it).

    Reads ``size`` plus one byte, and on only if that byte came (the file grows):
    read(max_bytes + 1) allocated the whole limit (256 MB) per file, which glibc maps
    fresh and faults in page by page (~0.1 ms per 1080p JPEG)."""
    data = fh.read(size + 1)
    if len(data) > size:
        data += fh.read(max_bytes + 1 - len(data))
    return data


def read_source(source: Source, limits: DecodeLimits = DEFAULT_LIMITS) -> bytes:
    """Bytes of a path or a buffer, refusing more than ``limits.max_bytes``.

    A path's size is checked before it is read, so a huge file costs nothing; a
    path that is no regular file (a FIFO, a device, a directory) is refused unread.
    """
    if isinstance(source, str | Path):
        path = Path(source)
        try:
            with open_unblocked(path) as fh:
                st = os.fstat(fh.fileno())
                if not stat.S_ISREG(st.st_mode):
                    raise MediaError(f"{path} is not a regular file", field="media")
                if st.st_size > limits.max_bytes:
                    raise MediaTooLarge(
                        f"{path} is {st.st_size} bytes, over the {limits.max_bytes}-byte limit",
                        field="media",
                    )
                data = read_checked(fh, st.st_size, limits.max_bytes)
        except OSError as exc:
            raise MediaError(f"cannot read {path}: {exc.strerror or exc}", field="media") from exc
    elif isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
    else:
        raise MediaError(
            f"media must be bytes or a path, not {type(source).__name__}", field="media"
        )
    if len(data) > limits.max_bytes:
        raise MediaTooLarge(
            f"media is {len(data)} bytes, over the {limits.max_bytes}-byte limit",
            field="media",
        )
    if not data:
        raise EmptyMedia("media is empty (0 bytes)", field="media")
    return data


def decode_image(
    source: Source,
    *,
    limits: DecodeLimits = DEFAULT_LIMITS,
    luma: bool = False,
    shrink: bool = False,
) -> np.ndarray:
    """Decode the first frame to ``uint8[h, w, 3]`` RGB (or, with ``luma``, a JPEG's
    ``uint8[h, w]`` luma plane), EXIF orientation applied.

    Complete 8-bit RGB/grey JPEGs are decoded by libjpeg-turbo through ``simplejpeg``
    (OpenCV's pixels, ~10% faster: :func:`_turbo_rgb`), PNGs and any JPEG it refuses by
    OpenCV (same libjpeg-turbo / libpng pixels as Pillow, about 2.5x faster on a 12 MP
    JPEG); everything else, and any file OpenCV refuses, goes through Pillow.

    ``luma=True`` (opt-in, **not** the exact pixels): a complete 8-bit JPEG gives its
    luma plane only, ``uint8[h, w]`` (see :func:`_opencv_luma`; PDQ hashes it as
    R = G = B would hash, without the copy); ``shrink=True`` also shrinks it by 2, 4
    or 8 in the DCT domain while the short side stays >= :data:`LUMA_MIN_SIDE`.
    Anything else decodes as above. For hashes that only look
    at luma (PDQ): luma alone moves PDQ by rounding only, the shrink by up to 46 bits
    on fine textures (README, batch scans).
    """
    data = read_source(source, limits)
    with _open(data, limits) as im:
        if luma:
            grey = _guarded(data, limits, lambda: _opencv_luma(data, im, shrink))
            if grey is not None:
                return grey
        fast = _guarded(data, limits, lambda: _opencv_decode(data, im))
        if fast is not None:
            return fast
        return _guarded(data, limits, lambda: to_rgb(ImageOps.exif_transpose(im)))


def _opencv_decode(data: bytes, im: Image.Image) -> np.ndarray | None:
    """OpenCV fast path, only where it gives Pillow's pixels and Pillow's errors.

    OpenCV decodes a truncated file into a partly grey picture without complaint, so
    the fast path requires the end marker (JPEG EOI, PNG IEND); anything else falls back
    to Pillow, which raises CorruptMedia for it. Animated PNGs go to Pillow too: OpenCV
    decodes an APNG's first *animation* frame, but an APNG's default image may be no
    animation frame at all, and that default image is frame 0 for Pillow, pdqhash and
    python-threatexchange (OpenCV's pick was 128 PDQ bits off theirs).
    """
    if im.mode not in ("RGB", "L") or "transparency" in im.info:
        return None
    rgb = None
    if im.format in ("JPEG", "MPO"):
        if not _jpeg_complete(data):
            return None
        rgb = _turbo_rgb(data)
    elif im.format == "PNG":
        if not data.endswith(b"IEND\xaeB`\x82") or getattr(im, "is_animated", False):
            return None
    else:
        return None
    if rgb is None or rgb.shape != (im.size[1], im.size[0], 3):
        flags = cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION
        rgb = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if rgb is None or rgb.shape[:2] != (im.size[1], im.size[0]):
        return None
    return _orient(rgb, im.getexif().get(0x0112, 1))


def _turbo_rgb(data: bytes) -> np.ndarray | None:
    """A JPEG's RGB pixels from libjpeg-turbo's TurboJPEG API (``simplejpeg``), or None.

    Why: the same library as OpenCV's decoder (libjpeg-turbo 3.1, accurate integer
    IDCT, fancy upsampling) without OpenCV's per-call overhead: ~0.75 ms less per
    1080p file (6.1 instead of 6.9 ms, min of 7 runs on 40 bench JPEGs). The pixels are
    OpenCV's, byte for byte: checked on 4738 JPEGs (the 1000 bench files; scikit-image
    photos in colour and grey, odd and 1-pixel crops, q30-q100, 4:4:4 / 4:2:2 / 4:2:0
    / 4:1:1 / 4:4:0, progressive, optimised Huffman tables, restart intervals, EXIF
    orientation, RGB without the YCbCr transform); tests/test_decode.py keeps checking.
    ``strict``: anything libjpeg only warns about (corrupt data it can decode past)
    raises here, and OpenCV decodes the file as before, so such files get the pixels
    they always got.
    """
    try:
        return simplejpeg.decode_jpeg(data, colorspace="RGB", strict=True)
    except ValueError:
        return None


def _turbo_grey(data: bytes) -> np.ndarray | None:
    """:func:`_turbo_rgb` for the luma plane (``uint8[h, w]``): OpenCV's
    ``IMREAD_GRAYSCALE`` pixels (checked on the same 4738 JPEGs), ~0.2 ms less per
    1080p file (4.4 instead of 4.6 ms)."""
    try:
        return simplejpeg.decode_jpeg(data, colorspace="GRAY", strict=True)[:, :, 0]
    except ValueError:
        return None


def _jpeg_complete(data: bytes) -> bool:
    return data.rstrip(b"\x00").endswith(b"\xff\xd9")


#: ``shrink`` decoding shrinks a JPEG by 2, 4 or 8 in the DCT domain only as far as
#: its short side stays at least this long (PDQ samples a 64x64 grid; the reference
#: CLI hashes 512x512).
LUMA_MIN_SIDE = 512

_REDUCED_GREY = {
    1: cv2.IMREAD_GRAYSCALE,
    2: cv2.IMREAD_REDUCED_GRAYSCALE_2,
    4: cv2.IMREAD_REDUCED_GRAYSCALE_4,
    8: cv2.IMREAD_REDUCED_GRAYSCALE_8,
}


def _opencv_luma(data: bytes, im: Image.Image, shrink: bool) -> np.ndarray | None:
    """A complete 8-bit JPEG's luma plane as ``uint8[h, w]``, or None.

    libjpeg-turbo then skips chroma decoding and colour conversion (a 1080p file: ~5.9
    instead of ~7.2 ms CPU), and with a scale factor (``shrink``) computes a smaller
    inverse DCT per block (~4.8 ms; PDQ then runs on a quarter of the pixels). JPEG's
    Y has PDQ's luma weights (0.299, 0.587, 0.114), so luma alone changes rounding
    only; a shrunk picture is another resolution, and PDQ of fine textures is not
    resolution-stable. EXIF orientation is applied; the same completeness rule as
    :func:`_opencv_decode`. Unshrunk planes come from simplejpeg (:func:`_turbo_grey`,
    OpenCV's pixels), shrunk ones from OpenCV.
    """
    if im.format not in ("JPEG", "MPO") or im.mode not in ("RGB", "L"):
        return None
    if not _jpeg_complete(data):
        return None
    w, h = im.size
    scale = 1
    while shrink and scale < 8 and -(-min(w, h) // (scale * 2)) >= LUMA_MIN_SIDE:
        scale *= 2
    grey = _turbo_grey(data) if scale == 1 else None
    if grey is None or grey.shape != (h, w):
        flags = _REDUCED_GREY[scale] | cv2.IMREAD_IGNORE_ORIENTATION
        grey = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if grey is None or grey.shape != (-(-h // scale), -(-w // scale)):
        return None
    return _orient(grey, im.getexif().get(0x0112, 1))


def decode_frames(
    source: Source,
    *,
    limits: DecodeLimits = DEFAULT_LIMITS,
    max_frames: int | None = None,
) -> list[np.ndarray]:
    """Every frame of an animated GIF/WebP/PNG (one frame for a still image) as RGB.

    EXIF orientation of the container is applied to every frame. ``max_frames`` caps
    how many frames are decoded (the first ones); the pixel limit applies per frame and
    to the total decoded.
    """
    return list(iter_frames(source, limits=limits, max_frames=max_frames))


def iter_frames(
    source: Source,
    *,
    limits: DecodeLimits = DEFAULT_LIMITS,
    max_frames: int | None = None,
) -> Iterator[np.ndarray]:
    """Lazy :func:`decode_frames`: one RGB frame at a time (bounded memory).

    ``max_frames`` (the caller's choice) takes the first frames only; an animation with
    more frames than ``limits.max_frames`` (beyond what the caller takes) raises
    MediaTooLarge, before any frame is decoded where the container tells its count.
    """
    if max_frames is not None and max_frames < 1:
        raise MediaError(f"max_frames must be >= 1, got {max_frames}", field="max_frames")
    data = read_source(source, limits)
    with _open(data, limits) as im:
        capped = max_frames is not None and max_frames <= limits.max_frames
        if not capped:
            _check_frame_count(data, im, limits)
        orientation = _guarded(data, limits, lambda: im.getexif().get(0x0112, 1))
        total = 0
        frames = _guarded(data, limits, lambda: ImageSequence.Iterator(im))
        for n in range(max_frames if max_frames is not None else 1 << 62):
            frame = _guarded(data, limits, lambda: next(frames, None))
            if frame is None:
                return
            if n >= limits.max_frames:  # a count the header understated
                raise _too_many_frames(f"over {n}", limits)
            w, h = frame.size
            total += w * h
            if n and total > limits.max_pixels:
                raise MediaTooLarge(
                    f"animation decodes to over {limits.max_pixels} pixels in total "
                    f"({n + 1} frames of {w}x{h} so far)",  # n is 0-based
                    field="media",
                )
            yield _guarded(data, limits, lambda f=frame: _orient(to_rgb(f), orientation))


def _check_frame_count(data: bytes, im: Image.Image, limits: DecodeLimits) -> None:
    """Refuse an animation over the frame limit before decoding a frame.

    Pillow counts a GIF's frames by parsing (no pixels decoded); WebP and APNG give the
    count their header states (a lie is caught while iterating).
    """
    count = _guarded(data, limits, lambda: getattr(im, "n_frames", 1))
    if count > limits.max_frames:
        raise _too_many_frames(str(count), limits)


def _too_many_frames(count: str, limits: DecodeLimits) -> MediaTooLarge:
    return MediaTooLarge(
        f"animation has {count} frames, over the {limits.max_frames}-frame limit",
        field="media",
    )


def to_rgb(im: Image.Image) -> np.ndarray:
    """A Pillow image in any mode -> contiguous, writable ``uint8[h, w, 3]``."""
    mode = im.mode
    if mode == "RGB":
        arr = np.asarray(im)
    elif mode.startswith("I;16"):
        grey = (np.asarray(im).astype(np.uint32) >> 8).astype(np.uint8)
        arr = np.repeat(grey[:, :, None], 3, axis=2)
    elif mode in ("I", "F"):
        grey = np.clip(np.asarray(im), 0, 255).astype(np.uint8)
        arr = np.repeat(grey[:, :, None], 3, axis=2)
    elif mode in ("RGBA", "RGBX", "RGBa"):
        arr = np.asarray(im.convert("RGB") if mode == "RGBa" else im)[:, :, :3]
    else:
        arr = np.asarray(im.convert("RGB"))
    # Pillow hands out read-only views of its bytes; callers get an array they own.
    return np.require(arr, np.uint8, ["C_CONTIGUOUS", "WRITEABLE"])


# EXIF orientation -> the ops that make the picture upright (ImageOps.exif_transpose's);
# RGB or a luma plane alike.
def _orient(rgb: np.ndarray, orientation: int) -> np.ndarray:
    # OpenCV's flips and rotations, not numpy views made contiguous: the same pixels,
    # but a strided copy of a transposed 12 MP photo took ~86 ms, cv2.rotate a few
    ops = {
        2: lambda a: cv2.flip(a, 1),
        3: lambda a: cv2.rotate(a, cv2.ROTATE_180),
        4: lambda a: cv2.flip(a, 0),
        5: lambda a: cv2.transpose(a),
        6: lambda a: cv2.rotate(a, cv2.ROTATE_90_CLOCKWISE),
        7: lambda a: cv2.flip(cv2.transpose(a), -1),
        8: lambda a: cv2.rotate(a, cv2.ROTATE_90_COUNTERCLOCKWISE),
    }
    op = ops.get(orientation)
    return rgb if op is None else op(np.ascontiguousarray(rgb))


def exif_orientation(data: bytes) -> int:
    """The EXIF orientation tag (1-8) of an image's bytes; 1 when absent or unreadable
    (only the header is parsed)."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            value = int(im.getexif().get(0x0112, 1))
    except Exception:  # the decode itself reports a bad file; here "no tag" is the answer
        return 1
    return value if 1 <= value <= 8 else 1


def as_stored(upright: np.ndarray, orientation: int) -> np.ndarray:
    """Undo :func:`_orient`: the pixels as the file stores them, from the upright image
    (flips, 180 degrees and the two transposes are their own inverses; 6 and 8 undo
    each other)."""
    return _orient(upright, {6: 8, 8: 6}.get(orientation, orientation))


def _open(data: bytes, limits: DecodeLimits) -> Image.Image:
    """Parse the header only, then enforce the pixel limit before anything decodes."""
    fmt = sniff_format(data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data), formats=_open_formats())
    except Image.DecompressionBombError as exc:
        raise decompression_bomb_error(exc, limits.max_pixels, fmt) from exc
    except Image.UnidentifiedImageError as exc:
        if fmt is not None:
            raise CorruptMedia(
                f"{fmt} header is corrupt or truncated ({len(data)} bytes)", field="media"
            ) from exc
        video = sniff_video(data)
        if video is not None:
            raise UnsupportedMedia(
                f"not an image: looks like a video ({video}); hash it as vpdq", field="media"
            ) from exc
        raise UnsupportedMedia(
            f"not an image in a supported format (first bytes {data[:8].hex()})",
            field="media",
        ) from exc
    except Exception as exc:  # Pillow plugins raise many types on bad headers
        raise CorruptMedia(f"{fmt or 'image'} header does not parse: {exc}", field="media") from exc
    w, h = im.size
    if w * h > limits.max_pixels:
        im.close()
        raise MediaTooLarge(
            f"{im.format} image is {w}x{h} = {w * h} pixels, over the "
            f"{limits.max_pixels}-pixel limit (checked before decoding)",
            field="media",
        )
    if w < 1 or h < 1:
        im.close()
        raise CorruptMedia(f"{im.format} image has no pixels ({w}x{h})", field="media")
    return im


def decompression_bomb_error(
    exc: Exception, max_pixels: int, fmt: str | None = None
) -> MediaTooLarge:
    """Pillow's DecompressionBombError, worded with hashmatch's own pixel limit.

    Why: Pillow refuses images over *its* cap (2 x ``Image.MAX_IMAGE_PIXELS``,
    178956970) while parsing the header, before :func:`_open` can check ours, and its
    message names that cap; a caller must see the limit they configured. The image's
    pixel count is only in Pillow's message, so it is read from there (left out if the
    wording ever changes).
    """
    found = re.search(r"\((\d+) pixels\).*?limit of (\d+) pixels", str(exc))
    what = fmt or "image"
    if found is None:
        return MediaTooLarge(
            f"{what} image is over the {max_pixels}-pixel limit (checked before decoding)",
            field="media",
        )
    pixels, cap = int(found[1]), int(found[2])
    if pixels > max_pixels:
        return MediaTooLarge(
            f"{what} image is {pixels} pixels, over the {max_pixels}-pixel limit "
            "(checked before decoding)",
            field="media",
        )
    # The configured limit is above the decoder's hard cap: say which one refused it.
    return MediaTooLarge(
        f"{what} image is {pixels} pixels, over the decoder's {cap}-pixel cap (the "
        f"{max_pixels}-pixel limit configured is above it; checked before decoding)",
        field="media",
    )


def _guarded(data: bytes, limits: DecodeLimits, fn: Callable[[], _T]) -> _T:
    """Run a Pillow decoding step, turning whatever it raises into CorruptMedia (or
    MediaTooLarge naming ``limits.max_pixels``)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return fn()
    except MediaError:
        raise
    except Image.DecompressionBombError as exc:
        raise decompression_bomb_error(exc, limits.max_pixels, sniff_format(data)) from exc
    except MemoryError as exc:
        raise MediaTooLarge("image does not fit in memory", field="media") from exc
    except Exception as exc:
        fmt = sniff_format(data) or "image"
        reason = str(exc) or type(exc).__name__
        raise CorruptMedia(
            f"{fmt} data is corrupt or truncated ({len(data)} bytes): {reason}",
            field="media",
        ) from exc
