"""vPDQ: a video as the PDQ hashes of its sampled frames, plus vPDQ's match rule.

Compatible with Meta's vpdq (facebook/ThreatExchange ``vpdq/``) and python-threatexchange:

* Sampling follows vpdq's file hasher: frame ``n`` (0-based, decode order) is hashed when
  ``n % int(seconds_per_hash * fps) == 0`` (a step of 0 means every frame), its timestamp
  is ``n / fps``, and frames are hashed at full resolution unless a downsample size is
  given (vpdq's ``-d WxH``). vpdq's default is one hash per second; the reference files
  in ``../shared/reference/vpdq-hashes`` list every frame (``seconds_per_hash=0``).
* Frames are decoded by FFmpeg through PyAV and converted to RGB24 as vpdq converts
  them (one libswscale pass, ``SWS_AREA``, BT.601, to the downsample size if any), then
  hashed with our PDQ, as vpdq does with ``fillFloatLumaFromRGB`` +
  ``pdqHash256FromFloatLuma``. libswscale's C path is used for that pass: its
  rounding is the same on every machine and is the reference files' (x86 SIMD rounds
  a few pixels differently: see :class:`_CpuFlags`).
  Like vpdq, the coded frames are hashed: a track's rotation (display matrix, as in
  portrait phone videos) is not applied.
* The text format is vpdq's: ``frame_number,quality,pdq_hex,timestamp`` per line.
* Matching (:func:`vpdq_match`) is python-threatexchange's ``match_VPDQ_hash_brute``:
  drop repeated identical hashes (the first stays), then frames under the quality
  floor, then
  query% = share of query frames within ``threshold`` (inclusive) of some target frame
  and target% = the converse. (vpdq's C++ brute matcher counts ``distance <
  tolerance``: its tolerance T is our threshold T-1.)
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import av
import numpy as np
from av.video.reformatter import ColorRange, Colorspace, Interpolation, VideoReformatter

from hashmatch.engine.decode import (
    DEFAULT_LIMITS,
    DecodeLimits,
    read_source,
    sniff_format,
    sniff_video,
)
from hashmatch.engine.errors import (
    CorruptMedia,
    InvalidInput,
    MediaError,
    MediaTooLarge,
    UnsupportedMedia,
)
from hashmatch.engine.pdq import pdq_hash

# which suffixes are videos and the FFmpeg demuxers (format_whitelist) they are read
# with: one table, shared with scan and the CLI
from hashmatch.engine.video_formats import FFMPEG_FORMATS
from hashmatch.engine.video_join import prepare_frames

VPDQ_DISTANCE_THRESHOLD = 31  # python-threatexchange VPDQ_DISTANCE_THRESHOLD (inclusive)
VPDQ_QUALITY_THRESHOLD = 50  # python-threatexchange VPDQ_QUALITY_THRESHOLD
DEFAULT_SECONDS_PER_HASH = 1.0  # vpdq's default sampling
# Only the local file protocol: no demuxer reaches the network or a pipe.
FFMPEG_PROTOCOLS = "file"
# Bytes that announce a playlist (concat, HLS): refused before FFmpeg sees them.
_PLAYLIST_SIGNATURES = (b"ffconcat", b"#EXTM3U")
_CAPTURE_OPTIONS_ENV = "OPENCV_FFMPEG_CAPTURE_OPTIONS"


def capture_options(operator: str | None) -> str:
    """The demuxer options: the operator's ``OPENCV_FFMPEG_CAPTURE_OPTIONS`` plus ours.

    The format is OpenCV's (``key;value`` pairs joined by ``|``; a repeated key: the
    last wins), kept from when OpenCV opened videos so an operator's setting still
    applies. Every option the operator set is kept as written, and ours are appended
    only for keys they did not set: an operator who wrote their own
    ``format_whitelist`` (say, to add ``ogg``) made that security decision on
    purpose, so it is not overridden (uploads still go through a private directory
    and the playlist check).
    """
    pairs = [p for p in (operator or "").split("|") if p.strip()]
    keys = {p.split(";", 1)[0].strip() for p in pairs}
    for key, value in (("format_whitelist", FFMPEG_FORMATS),
                       ("protocol_whitelist", FFMPEG_PROTOCOLS)):  # fmt: skip
        if key not in keys:
            pairs.append(f"{key};{value}")
    return "|".join(pairs)


def _open_options() -> dict[str, str]:
    """``capture_options`` as the dict ``avformat_open_input`` takes (read per open)."""
    options: dict[str, str] = {}
    for pair in capture_options(os.environ.get(_CAPTURE_OPTIONS_ENV)).split("|"):
        key, _, value = pair.partition(";")
        options[key.strip()] = value.strip()
    return options


@dataclass
class VideoHash:
    """The vPDQ signal of one video: one row per sampled frame."""

    codes: np.ndarray  # uint8[n, 32]
    qualities: list[int] = field(default_factory=list)
    frame_numbers: list[int] = field(default_factory=list)
    timestamps: list[float] = field(default_factory=list)
    fps: float = 0.0

    def __len__(self) -> int:
        return len(self.codes)


def frame_step(fps: float, seconds_per_hash: float) -> int:
    """vpdq's frame modulus: hash every ``int(seconds_per_hash * fps)``-th frame (>= 1)."""
    if seconds_per_hash < 0:
        raise InvalidInput(
            f"seconds_per_hash must be >= 0, got {seconds_per_hash}", field="seconds_per_hash"
        )
    return max(int(seconds_per_hash * fps), 1)


def _open_container(path: str) -> av.container.InputContainer:
    """The container, or the typed error saying why FFmpeg could not open it.

    PyAV applies no display matrix: the coded frames are hashed, as vpdq hashes them
    (a portrait phone video's rotation is not applied; rotating would put every frame
    ~128 bits away from hash lists made by vpdq or HMA)."""
    try:
        container = av.open(path, options=_open_options())
    except (av.FFmpegError, OSError, UnicodeDecodeError):
        raise _unopenable(path) from None
    if not container.streams.video:
        container.close()
        raise _unopenable(path)
    return container


_A_CONTAINER = {"MP4/MOV": "an MP4/MOV", "AVI": "an AVI", "Matroska/WebM": "a Matroska/WebM"}


def _unopenable(path: str) -> MediaError:
    """Why FFmpeg could not open ``path``, as well as its first bytes tell: a file that
    starts like a video container is a damaged video (truncated uploads lose the MP4
    ``moov`` index at the end) unless its index lists no video track (an audio-only
    MP4/M4A: no video at all); one whose index lists no track at all is named a video of
    no frames; a photo is named as one (a JPEG saved as ``.mp4``); anything else is not
    a video."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(16)
            container = sniff_video(head)
            tracks = _mp4_handlers(fh) if container == "MP4/MOV" else None
    except OSError:
        head, container, tracks = b"", None, None
    if tracks == set():  # an index of no tracks (a writer closed before any frame)
        return CorruptMedia(
            "an MP4/MOV with no tracks: video has no frames, nothing to hash as vpdq",
            field="media",
        )
    if tracks and b"vide" not in tracks:
        kinds = ", ".join(sorted(_TRACK_KINDS.get(t, t.decode("latin-1")) for t in tracks))
        return UnsupportedMedia(
            f"an MP4/MOV with no video track (only {kinds}): nothing to hash as vpdq",
            field="media",
        )
    if container is not None:
        return CorruptMedia(
            f"{_A_CONTAINER.get(container, container)} container FFmpeg cannot open "
            "(truncated or damaged?)",
            field="media",
        )
    image = sniff_format(head)
    if image is not None:
        return UnsupportedMedia(
            f"not a video: looks like an image ({image}); hash it as pdq", field="media"
        )
    return UnsupportedMedia("not a video FFmpeg can open", field="media")


_TRACK_KINDS = {b"soun": "audio", b"subt": "subtitles", b"text": "text", b"meta": "metadata"}


def _mp4_handlers(fh: BinaryIO) -> set[bytes] | None:
    """The handler types (``vide``, ``soun``, ...) of an ISO BMFF file's tracks
    (``moov/trak/mdia/hdlr``), or None when it has no ``moov`` (truncated: the index
    was never written). Only box headers are read on the way, never the media data."""
    moov = _first(_boxes(fh, 0, os.fstat(fh.fileno()).st_size), b"moov")
    if moov is None:
        return None
    handlers = set()
    for trak in (b for b in _boxes(fh, *moov[1:]) if b[0] == b"trak"):
        mdia = _first(_boxes(fh, *trak[1:]), b"mdia")
        hdlr = mdia and _first(_boxes(fh, *mdia[1:]), b"hdlr")
        if hdlr:
            fh.seek(hdlr[1] + 8)  # version+flags, pre_defined, then handler_type
            handlers.add(fh.read(4))
    return handlers


def _first(boxes: Iterator[tuple[bytes, int, int]], kind: bytes) -> tuple[bytes, int, int] | None:
    return next((b for b in boxes if b[0] == kind), None)


def _boxes(fh: BinaryIO, start: int, end: int) -> Iterator[tuple[bytes, int, int]]:
    """(type, payload start, end) of each box between start and end; stops at a
    damaged header (a size smaller than the header, or past the end)."""
    at = start
    while at + 8 <= end:
        fh.seek(at)
        header = fh.read(16)
        size, kind, skip = int.from_bytes(header[:4], "big"), header[4:8], 8
        if size == 1 and len(header) == 16:  # a 64-bit size follows the type
            size, skip = int.from_bytes(header[8:16], "big"), 16
        elif size == 0:  # to the end of the enclosing box
            size = end - at
        if size < skip or at + size > end:
            return
        yield kind, at + skip, at + size
        at += size


def _fps(stream: av.video.stream.VideoStream, limits: DecodeLimits) -> float:
    """vpdq's frame rate (the stream's average rate, else its base rate), after
    checking the frame size against the pixel limit."""
    rate = stream.average_rate or stream.base_rate
    fps = float(rate) if rate else 0.0
    if not fps > 0:
        raise CorruptMedia("video has no frame rate", field="media")
    _check_frame_size(stream.codec_context.width, stream.codec_context.height, limits)
    return fps


def _check_frame_size(width: int, height: int, limits: DecodeLimits) -> None:
    if width * height > limits.max_pixels:
        raise MediaTooLarge(
            f"video frames are {width}x{height}, over the {limits.max_pixels}-pixel limit",
            field="media",
        )


class _CpuFlags:
    """Switch FFmpeg's SIMD off while a libswscale context is set up (PyAV's own
    libavutil: ``av_force_cpu_flags``).

    Why: vpdq converts with libswscale, whose YUV->RGB24 rounding depends on the CPU
    code path: the C path (what ``../shared/reference/vpdq-hashes`` were made with,
    and the same on every machine) and x86's SSSE3/AVX2 path differ in a few pixels,
    enough to move 1-6 bits of about half the frame hashes. The flags are read when a
    context is set up, so only that first conversion runs under the switch (decoding,
    bit-exact either way, keeps SIMD). The flags are process-wide: a lock keeps two
    set-ups from restoring them under each other, and a decoder opened by another
    thread during the switch only runs slower. None when the library is not found
    (PyAV built against a system FFmpeg): conversions then keep SIMD.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lib: ctypes.CDLL | None = None
        libs = Path(av.__file__).resolve().parent.parent / "av.libs"
        found = sorted(libs.glob("libavutil*.so*")) or [None]
        name = str(found[0]) if found[0] else ctypes.util.find_library("avutil")
        if name:
            try:
                self._lib = ctypes.CDLL(name)
            except OSError:
                self._lib = None

    @property
    def available(self) -> bool:
        return self._lib is not None

    def __call__(self, convert: Callable[[], np.ndarray]) -> np.ndarray:
        if self._lib is None:
            return convert()
        with self._lock:
            saved = self._lib.av_get_cpu_flags()
            self._lib.av_force_cpu_flags(0)
            try:
                return convert()
            finally:
                self._lib.av_force_cpu_flags(saved)


_portable_cpu = _CpuFlags()


class _ToRGB:
    """vpdq's conversion of a decoded frame: one libswscale pass to RGB24 (and to the
    downsample size, if any) with ``SWS_AREA``, BT.601 coefficients and the range the
    pixel format says (``yuvj*``: full), as ``sws_getContext`` without colorspace
    details does. Colour tags on the stream (BT.709 on most HD video) are ignored, as
    vpdq ignores them. A new context (run portably, see :class:`_CpuFlags`) whenever
    the frames' format changes, as libswscale would set itself up again."""

    def __init__(self, downsample: tuple[int, int] | None) -> None:
        self._size = downsample
        self._key: tuple[object, ...] | None = None
        self._reformatter = VideoReformatter()

    def __call__(self, frame: av.VideoFrame) -> np.ndarray:
        key = (frame.width, frame.height, frame.format.name, frame.colorspace,
               frame.color_range, frame.interlaced_frame)  # fmt: skip
        if key != self._key:
            self._key, self._reformatter = key, VideoReformatter()
            return _portable_cpu(lambda: self._convert(frame))
        return self._convert(frame)

    def _convert(self, frame: av.VideoFrame) -> np.ndarray:
        width, height = self._size or (frame.width, frame.height)
        full = frame.format.name.startswith("yuvj")
        out = self._reformatter.reformat(
            frame, width, height, "rgb24",
            src_colorspace=Colorspace.DEFAULT, dst_colorspace=Colorspace.DEFAULT,
            interpolation=Interpolation.AREA,
            src_color_range=ColorRange.JPEG if full else ColorRange.MPEG,
            dst_color_range=ColorRange.JPEG,
        )  # fmt: skip
        return out.to_ndarray()


def _decoded(
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    checkpoint: Callable[[], None] | None,
) -> Iterator[av.VideoFrame]:
    """The stream's frames in output order. A stream that breaks part way (a packet
    the decoder refuses, a read error) gives the frames before the break, as vpdq
    stops at its first decode error."""
    try:
        for packet in container.demux(stream):  # the last, empty packet flushes
            if checkpoint is not None:
                checkpoint()  # before every decode, sampled or skipped: both cost CPU
            yield from packet.decode()
    except av.FFmpegError:
        return


def _sampled(
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    fps: float,
    seconds_per_hash: float,
    downsample: tuple[int, int] | None,
    limits: DecodeLimits,
    checkpoint: Callable[[], None] | None = None,
) -> Iterator[tuple[int, float, np.ndarray]]:
    step = frame_step(fps, seconds_per_hash)
    to_rgb = _ToRGB(downsample)
    for n, frame in enumerate(_decoded(container, stream, checkpoint)):
        # Every frame, not only the stream header's size: frames may change size part way
        # (a new H.264 SPS, an MJPEG AVI's JPEGs). A 5 MB AVI declaring 64x64 whose
        # frames were 9000x9000 (81 M pixels) was hashed: +760 MB and 19 s per item.
        _check_frame_size(frame.width, frame.height, limits)
        if n % step == 0:  # skipped frames are decoded, never converted
            yield n, n / fps, to_rgb(frame)


def hash_video(
    source: bytes | str | Path,
    *,
    seconds_per_hash: float = DEFAULT_SECONDS_PER_HASH,
    downsample: tuple[int, int] | None = None,
    limits: DecodeLimits = DEFAULT_LIMITS,
    frame_transform: Callable[[np.ndarray], np.ndarray] | None = None,
    checkpoint: Callable[[], None] | None = None,
) -> VideoHash:
    """vPDQ of a video path or bytes (bytes go through a temporary file for FFmpeg).

    ``frame_transform`` maps each sampled RGB frame before it is hashed (e.g. border
    trimming for letterboxed re-uploads, :func:`hashmatch.engine.trim.trim_borders`).
    ``checkpoint`` is called before each frame is decoded; whatever it raises stops
    the hash (the server stops work at its call's deadline this way).
    """
    frame_step(1.0, seconds_per_hash)  # validate before any work
    if isinstance(source, str | Path):
        _check_file(Path(source), limits)
        return _hash_path(
            str(source), seconds_per_hash, downsample, limits, frame_transform, checkpoint
        )
    data = _refuse_playlist(read_source(source, limits))
    # A fresh private directory (0700, nothing else in it): even a demuxer that follows
    # relative paths finds no other file to open.
    with tempfile.TemporaryDirectory(prefix="hashmatch-video-") as tmpdir:
        tmp = os.path.join(tmpdir, "upload.video")
        with open(tmp, "wb") as fh:
            fh.write(data)
        return _hash_path(tmp, seconds_per_hash, downsample, limits, frame_transform, checkpoint)


def _refuse_playlist(data: bytes) -> bytes:
    """Playlist bytes (concat, HLS) are not a video: refuse them before FFmpeg parses."""
    if data.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(_PLAYLIST_SIGNATURES):
        raise UnsupportedMedia("a playlist (ffconcat/HLS) is not a video", field="media")
    return data


def _check_file(path: Path, limits: DecodeLimits) -> None:
    """Missing, empty or over-limit files raise the usual typed errors, unread."""
    try:
        size = path.stat().st_size
    except OSError:
        size = -1
    if size <= 0 or size > limits.max_bytes:
        read_source(path, limits)  # raises MediaError/EmptyMedia/MediaTooLarge naming it


def _hash_path(
    path: str,
    seconds_per_hash: float,
    downsample: tuple[int, int] | None,
    limits: DecodeLimits,
    frame_transform: Callable[[np.ndarray], np.ndarray] | None = None,
    checkpoint: Callable[[], None] | None = None,
) -> VideoHash:
    codes, qualities, numbers, stamps = [], [], [], []
    container = _open_container(path)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # frame threads too: the frames are the same, sooner
        fps = _fps(stream, limits)
        for n, ts, rgb in _sampled(container, stream, fps, seconds_per_hash, downsample,
                                   limits, checkpoint):  # fmt: skip
            if len(codes) >= limits.video_frames:
                raise _too_many_frames(fps, seconds_per_hash, limits)
            if frame_transform is not None:
                rgb = frame_transform(rgb)
            code, quality = pdq_hash(rgb)
            codes.append(code)
            qualities.append(int(quality))
            numbers.append(n)
            stamps.append(ts)
    finally:
        container.close()
    if not codes:
        raise CorruptMedia("video has no decodable frames", field="media")
    return VideoHash(np.stack(codes).astype(np.uint8), qualities, numbers, stamps, fps)


def _too_many_frames(fps: float, seconds_per_hash: float, limits: DecodeLimits) -> MediaTooLarge:
    """Raised at the first sampled frame over ``limits.video_frames``. Not checked up
    front from the container's frame count: that is a header a hostile file can
    understate, and an estimate (duration x fps) for honest ones."""
    step = frame_step(fps, seconds_per_hash)
    return MediaTooLarge(
        f"video has more sampled frames than the {limits.video_frames}-frame limit "
        f"(one hashed in every {step} at {fps:g} fps)",
        field="media",
    )


# ---------------------------------------------------------------- text format


def format_vpdq(
    frame_numbers: Iterable[int],
    qualities: Iterable[int],
    codes: np.ndarray,
    timestamps: Iterable[float],
) -> str:
    """vpdq's text format: ``frame_number,quality,pdq_hex,timestamp`` (3 decimals) a line."""
    lines = [
        f"{n},{q},{bytes(c).hex()},{t:.3f}"
        for n, q, c, t in zip(frame_numbers, qualities, np.asarray(codes), timestamps, strict=True)
    ]
    return "".join(line + "\n" for line in lines)


def parse_vpdq(text: str | Iterable[str]) -> VideoHash:
    """Parse vpdq text (``frame,quality,hex,timestamp``) into a :class:`VideoHash`.

    Blank lines and ``#`` comments are skipped; a bad line raises InvalidInput naming it.
    """
    lines = text.splitlines() if isinstance(text, str) else text
    codes, qualities, numbers, stamps = [], [], [], []
    for lineno, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 4:
            raise InvalidInput(
                f"line {lineno}: expected frame,quality,hash,timestamp, got {len(parts)} fields",
                field="vpdq",
            )
        try:
            number, quality, stamp = int(parts[0]), int(parts[1]), float(parts[3])
        except ValueError:
            raise InvalidInput(
                f"line {lineno}: frame, quality and timestamp must be numbers", field="vpdq"
            ) from None
        if not 0 <= quality <= 100:
            raise InvalidInput(f"line {lineno}: quality {quality} not in 0..100", field="vpdq")
        if len(parts[2]) != 64:
            raise InvalidInput(f"line {lineno}: PDQ hash must be 64 hex characters", field="vpdq")
        try:
            code = np.frombuffer(bytes.fromhex(parts[2]), np.uint8)
        except ValueError:
            raise InvalidInput(f"line {lineno}: PDQ hash is not hex", field="vpdq") from None
        codes.append(code)
        qualities.append(quality)
        numbers.append(number)
        stamps.append(stamp)
    if not codes:
        raise InvalidInput("no frame lines", field="vpdq")
    return VideoHash(np.stack(codes), qualities, numbers, stamps)


def parse_vpdq_json(text: str) -> VideoHash:
    """python-threatexchange's serialized vPDQ (``vpdq_to_json``): a JSON list of
    ``"hex,quality,timestamp"`` strings, one per frame.

    Why: it is the ``signal_value`` of vPDQ rows in ThreatExchange/HMA CSV exports and
    what ``hashmatch hash --format te`` writes, so such a file ingests as it is.
    Ranges (quality 0..100, timestamp >= 0) are the store's check, as for every path.
    """
    try:
        items = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidInput(
            f"vpdq value is not a JSON list: {exc.msg}", field="signal_value"
        ) from None
    if not isinstance(items, list) or not items:
        raise InvalidInput(
            "vpdq value must be a non-empty JSON list of 'hex,quality,timestamp'",
            field="signal_value",
        )
    codes, qualities, stamps = [], [], []
    for j, item in enumerate(items):
        parts = item.split(",") if isinstance(item, str) else []
        try:
            if len(parts) != 3 or len(parts[0].strip()) != 64:
                raise ValueError
            codes.append(np.frombuffer(bytes.fromhex(parts[0].strip()), np.uint8))
            qualities.append(int(parts[1]))
            stamps.append(float(parts[2]))
        except ValueError:
            raise InvalidInput(
                f"frame {j}: expected '<64 hex>,quality,timestamp', got {str(item)[:80]!r}",
                field=f"signal_value[{j}]",
            ) from None
    return VideoHash(np.stack(codes), qualities, list(range(len(codes))), stamps)


# ---------------------------------------------------------------- matching


def _nearest(a: np.ndarray, b: np.ndarray, chunk: int = 512) -> np.ndarray:
    """For each row of ``a``: the distance (bits) to its nearest row of ``b``."""
    out = np.zeros(len(a), dtype=np.int32)
    for start in range(0, len(a), chunk):
        block = a[start : start + chunk]
        dist = np.bitwise_count(block[:, None, :] ^ b[None, :, :]).sum(axis=2, dtype=np.int32)
        out[start : start + chunk] = dist.min(axis=1)
    return out


def _matched_rows(a: np.ndarray, b: np.ndarray, threshold: int) -> np.ndarray:
    """For each row of ``a``: is some row of ``b`` within ``threshold`` bits?"""
    return _nearest(a, b) <= threshold


def nearest_frames_distance(a_codes: np.ndarray, b_codes: np.ndarray) -> int:
    """The smallest distance between any frame of ``a`` and any of ``b``, all frames
    counted (whatever their quality): the ``distance`` a vPDQ match reports (the
    engine's nearest frame hit), so a rescan reports the one a scan would."""
    a, b = (prepare_frames(c, None, 0, dedupe=False) for c in (a_codes, b_codes))
    return int(_nearest(a, b).min()) if len(a) and len(b) else 256


def vpdq_match(
    query_codes: np.ndarray,
    query_qualities: Sequence[int] | None,
    target_codes: np.ndarray,
    target_qualities: Sequence[int] | None,
    threshold: int = VPDQ_DISTANCE_THRESHOLD,
    quality_floor: int = VPDQ_QUALITY_THRESHOLD,
    *,
    dedupe: bool = True,
) -> tuple[float, float]:
    """vPDQ's two percentages: (query frames matched %, target frames matched %).

    Frames under ``quality_floor`` are ignored (qualities may be None: keep all), repeated
    identical hashes count once (``dedupe``, as python-threatexchange), a frame matches
    when some frame of the other video is within ``threshold`` bits (inclusive). Either
    side empty after filtering -> (0.0, 0.0).
    """
    q = prepare_frames(query_codes, query_qualities, quality_floor, dedupe)
    t = prepare_frames(target_codes, target_qualities, quality_floor, dedupe)
    if len(q) == 0 or len(t) == 0:
        return 0.0, 0.0
    q_hit = _matched_rows(q, t, threshold)
    t_hit = _matched_rows(t, q, threshold)
    return 100.0 * q_hit.sum() / len(q), 100.0 * t_hit.sum() / len(t)


def is_vpdq_match(
    query_pct: float,
    target_pct: float,
    query_min_pct: float = 80.0,
    target_min_pct: float = 0.0,
) -> bool:
    """python-threatexchange's decision: query% >= 80 and target% >= 0 by default."""
    return query_pct >= query_min_pct and target_pct >= target_min_pct
