"""One call from media to signals: the facade the store, server and scanner use.

``hash_media(source, types, options)`` reads the bytes once, decodes a photo at most
once for every photo type (pdq and the imagehash family share the pixels; the four
imagehash types share one greyscale conversion), hashes videos with vPDQ, and digests
the raw bytes for md5/sha256. Unknown type names raise UnknownSignalType; media
problems raise the typed MediaError subclasses from :mod:`hashmatch.engine.errors`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hashmatch.engine import signal_types
from hashmatch.engine.decode import (
    DEFAULT_LIMITS,
    DecodeLimits,
    as_stored,
    decode_image,
    exif_orientation,
    iter_frames,
    read_source,
)
from hashmatch.engine.imagehashes import IMAGEHASH_TYPES, imagehash_codes
from hashmatch.engine.multihash import (
    orientations,
    pdq_derotate_codes,
    pdq_image_codes,
    pdq_small_codes,
    pdq_uncrop_codes,
)
from hashmatch.engine.trim import trim_borders, trim_candidates
from hashmatch.engine.video import DEFAULT_SECONDS_PER_HASH, hash_video


@dataclass(frozen=True)
class HashOptions:
    """How to hash. Defaults are the PDQ-compatible, pdqhash-identical path."""

    # pdq: also the 7 rotated/flipped variants (codes has 8 rows, pdq_hash_dihedral order)
    dihedral: bool = False
    # pdq dihedral: hash each re-oriented image (8 downsamples, ~5x the cost) instead of
    # pdqhash's one-DCT shortcut. PDQ's box filter is not mirror-symmetric, so the
    # shortcut lands 10-30 bits from a flipped copy's own PDQ and the exact path 0-2:
    # matching wants exact (flip recall 68-91% -> 100%, docs/quality/quality.md);
    # ``hashmatch hash --dihedral`` keeps the pdqhash-identical shortcut.
    dihedral_exact: bool = False
    # Trim uniform/blurred borders and letterbox bars. pdq: *adds* the trimmed image's
    # rows after the plain ones (when trimming changed the image), so a wrong trim can
    # never lose a match the plain hash had; when nested bands were cut, also the rows
    # of the image with only the outermost bands cut (trim.border_boxes); imagehash
    # types: hash the trimmed image; vpdq: every sampled frame is trimmed.
    trim_borders: bool = False
    # pdq: *adds* 16 rows after the others: the image as given extended by
    # edge-replicated borders (4.5% of each side, 4x4 splits), as if undoing a small
    # crop (multihash.uncrop_images). Crop 5% recall at PDQ <= 31: 0% -> 61%
    # (docs/quality/quality.md); costs ~8 ms and 16 more rows to search per image.
    uncrop: bool = False
    # pdq: *adds* 4 rows after those: the image as given turned back by -5, -3, 3 and 5
    # degrees (multihash.derotate_images), for slightly rotated copies. Rotate 4
    # degrees at PDQ <= 31: 0% -> 86% (docs/quality/quality.md); ~4.5 ms, 4 more rows.
    derotate: bool = False
    # pdq: *adds* 1 row after those when the image is smaller than 256 px: the image
    # enlarged to 256 px (multihash.upscaled_small), for downscaled copies of small
    # pictures. Resize 0.5/0.25 misses at PDQ <= 31 on the bench: 5 -> 0 of 5 copies
    # of 300 px photos (docs/quality/quality.md); < 1 ms, 1 more row, small images only.
    upscale_small: bool = False
    # pdq: *adds* 1 row after those when the image is smaller than 256 px: each pixel
    # repeated k x k times, k the smallest whole factor reaching 256 px
    # (multihash.replicated_small): a downscaled copy hashed at (a multiple of) its
    # original's size without interpolation blur. Nearer than the bilinear row when the
    # original was larger than 256 px; with it, resize 0.5 at PDQ <= 31: 97.6% -> 100%
    # (docs/quality/quality.md); < 1 ms, 1 more row, small images only.
    upscale_small_replicate: bool = False
    # pdq: *adds* 3 rows after those when the image is smaller than 256 px: the
    # replicated image above moved by half a copy pixel down, right and both
    # (multihash.phase_shifted_small; independent of upscale_small_replicate, which adds
    # the unmoved one). Why: a small copy does not say where PDQ's sampling grid fell
    # on its original. Resize 0.25 at PDQ <= 31: 97.6% -> 98.8% beside the two rows
    # above, the nearest wrong pairs unchanged (docs/quality/quality.md); ~0.4 ms,
    # 3 more rows, small images only.
    upscale_small_phases: bool = False
    # pdq: *adds* 1 row after those when the image has an EXIF orientation other than 1:
    # the PDQ of the pixels as the file stores them, unrotated. Why: hashmatch hashes the
    # upright image (as pdqhash on cv2.imread's pixels does), but python-threatexchange/HMA's
    # pdq_from_file and the C++ CLI ignore the tag, so their hash of the same phone photo
    # is ~128 bits from ours; with this row a list made by either matches. Only oriented
    # images pay (one more re-orientation and PDQ, ~30 ms at 12 MP); the server's
    # matching turns it on.
    exif_as_stored: bool = False
    reference_resize: bool = False  # pdq: resize >512 px to 512x512 first, like the C++ CLI
    # pdq: hash every frame of an animated GIF/WebP/PNG, not only the first (the frame
    # an abuser hides content in need not be the first). Rows go frame by frame, each
    # frame expanded as the options above say; ``HashResult.frame_numbers`` per row.
    all_frames: bool = False
    # pdq, opt-in, NOT pdqhash-identical (README, batch scans, has the measurements):
    # 1 = decode JPEGs straight to luma (PDQ moves by rounding only); 2 = also shrink
    # them in the DCT domain while the short side stays >= 512 (decode.LUMA_MIN_SIDE):
    # faster again, but fine textures move by up to 46 bits, past the match threshold.
    # Only when pdq is the only photo type and none of trim_borders, uncrop, derotate,
    # upscale_small(_replicate, _phases), reference_resize, all_frames is on; other files decode
    # exactly.
    fast_decode: int = 0
    limits: DecodeLimits = DEFAULT_LIMITS
    seconds_per_hash: float = DEFAULT_SECONDS_PER_HASH  # vpdq: sampling; 0 = every frame
    # Called before each video frame is decoded and each animation frame is hashed;
    # raises to stop work nobody waits for any more. Why: the server cancels queued
    # media jobs at a call's deadline, but a running video hash would otherwise go on
    # to its frame limit (minutes of a media worker); the server passes its call's
    # deadline check (server.calls.Call.check_deadline).
    checkpoint: Callable[[], None] | None = field(default=None, compare=False, repr=False)


DEFAULT_OPTIONS = HashOptions()


@dataclass
class HashResult:
    """The signal(s) of one type computed from one piece of media.

    ``codes`` is always 2-D ``uint8[k, nbytes]``: k = 1 normally, 8 for dihedral PDQ
    (row 0 is the image as given), twice that when ``trim_borders`` changed the image
    (the trimmed image's rows follow the as-given ones: rows 8..15, or row 1 without
    dihedral; then, if nested bands were cut, those of the outer-bands-only trim), one
    row per sampled frame for vPDQ. ``uncrop`` appends its 16 rows, then ``derotate``
    its 4, then ``upscale_small`` its 0-1, then ``upscale_small_replicate`` its 0-1,
    then ``upscale_small_phases`` its 0 or 3, then ``exif_as_stored`` its 0-1.
    """

    signal_type: str
    codes: np.ndarray
    qualities: list[int] = field(default_factory=list)  # per row; empty where meaningless
    timestamps: list[float] = field(default_factory=list)  # vPDQ: seconds per frame
    frame_numbers: list[int] = field(default_factory=list)  # vPDQ: decoded frame index
    # PDQ with dihedral: per row, the orientation it was hashed in (0 = as given, 1-7
    # re-oriented, ``pdq_hash_dihedral`` order); empty = every row as given. The matcher
    # holds re-oriented rows to the type's default threshold (Engine.match_hashes).
    orientations: list[int] = field(default_factory=list)

    @property
    def hex(self) -> str:
        """Hex of the first row (the hash for single-code types)."""
        return signal_types.get(self.signal_type).format(self.codes[0])

    @property
    def quality(self) -> int | None:
        return self.qualities[0] if self.qualities else None


def hash_media(
    source: bytes | str | Path,
    types: Sequence[str] = ("pdq",),
    options: HashOptions = DEFAULT_OPTIONS,
) -> list[HashResult]:
    """Hash bytes or a file with each requested type, decoding at most once.

    Results come in the order of ``types`` (repeats are hashed once each time asked).
    """
    wanted = [signal_types.get(t) for t in types]  # UnknownSignalType before any work
    results: dict[str, HashResult] = {}
    data: bytes | None = None
    rgb: np.ndarray | None = None
    trims: list[np.ndarray] = []  # trim_borders: the content boxes, found once for all types
    for st in wanted:
        name = st.name
        if name in results:
            continue
        if name == "vpdq":
            results[name] = _vpdq(source, options)
            continue
        if data is None:
            data = read_source(source, options.limits)
        if name in ("md5", "sha256"):
            digest = hashlib.new(name, data).digest()
            results[name] = HashResult(name, np.frombuffer(digest, np.uint8)[None, :].copy())
            continue
        if name == "pdq" and options.all_frames:
            results[name] = _pdq_frames(data, options)
            continue
        if rgb is None:
            luma = options.fast_decode > 0 and _luma_is_enough(wanted, options)
            shrink = luma and options.fast_decode >= 2
            rgb = decode_image(data, limits=options.limits, luma=luma, shrink=shrink)
            trims = _trims(rgb, options)
        if name == "pdq":
            results[name] = _pdq(rgb, options, trims)
            if options.exif_as_stored:
                _add_as_stored_row(results[name], rgb, data, options)
        elif name in IMAGEHASH_TYPES:
            photo_types = [t.name for t in wanted if t.name in IMAGEHASH_TYPES]
            pixels = trims[0] if trims else rgb  # = trim_borders(rgb)
            for other, code in imagehash_codes(pixels, photo_types).items():
                results[other] = HashResult(other, code[None, :])
        else:  # a registry type without a hasher is a programming error, not input
            raise NotImplementedError(f"no hasher for signal type {name!r}")
    return [results[st.name] for st in wanted]


def _luma_is_enough(wanted: Sequence, options: HashOptions) -> bool:
    """``fast_decode`` applies: PDQ is the only photo type and no option needs the
    full-size colour pixels (those paths were not measured on luma)."""
    photo = {t.name for t in wanted if t.name not in ("md5", "sha256", "vpdq")}
    return photo == {"pdq"} and not (
        options.trim_borders
        or options.uncrop
        or options.derotate
        or options.upscale_small
        or options.upscale_small_replicate
        or options.upscale_small_phases
        or options.reference_resize
        or options.all_frames
        or options.exif_as_stored
    )


def hash_pdq(rgb: np.ndarray, options: HashOptions = DEFAULT_OPTIONS) -> HashResult:
    """PDQ rows of decoded pixels with every option applied (what ``hash_media`` does
    after decoding; benchmarks time it without the decode)."""
    return _pdq(rgb, options, _trims(rgb, options))


def _trims(rgb: np.ndarray, options: HashOptions) -> list[np.ndarray]:
    """The trimmed images to hash beside ``rgb`` (best guess first; empty when no
    border is found or trimming is off)."""
    return trim_candidates(rgb) if options.trim_borders else []


def _pdq(rgb: np.ndarray, options: HashOptions, trims: Sequence[np.ndarray]) -> HashResult:
    codes, qualities = pdq_image_codes(
        [rgb, *trims],
        dihedral=options.dihedral,
        exact=options.dihedral_exact,
        reference_resize=options.reference_resize,
    )
    parts = [codes]
    if options.uncrop:
        rows, quals = pdq_uncrop_codes(rgb)
        parts.append(rows)
        qualities.extend(quals)
    if options.derotate:
        rows, quals = pdq_derotate_codes(rgb)
        parts.append(rows)
        qualities.extend(quals)
    if options.upscale_small or options.upscale_small_replicate or options.upscale_small_phases:
        rows, quals = pdq_small_codes(
            rgb,
            bilinear=options.upscale_small,
            replicate=options.upscale_small_replicate,
            phases=options.upscale_small_phases,
        )
        parts.append(rows)
        qualities.extend(quals)
    result = HashResult("pdq", np.concatenate(parts), qualities)
    if options.dihedral:  # 8 rows per image hashed, then rows of the image as given
        result.orientations = [n % 8 for n in range(len(codes))]
        result.orientations += [0] * (len(result.codes) - len(codes))
    return result


def _add_as_stored_row(
    result: HashResult, upright: np.ndarray, data: bytes, options: HashOptions
) -> None:
    """Append the PDQ of the stored (unrotated) pixels when the file has an EXIF
    orientation (see ``HashOptions.exif_as_stored``).

    With the exact dihedral the 8 rows already hold the stored pixels' hash; that row
    is then marked as given (orientation 0), not re-oriented: it is what EXIF-blind
    tools hash as given, and re-oriented rows match only within the default threshold
    (``matcher.keeps_row_hit``), which the appended row never was held to. Without the
    mark, turning ``dihedral`` on lost an HMA-made list's match beyond 31."""
    orientation = exif_orientation(data)
    if orientation == 1:
        return
    if options.dihedral and options.dihedral_exact:
        stored = _variant_of_stored(orientation)
        result.orientations = [0 if o == stored else o for o in result.orientations]
        return
    stored = hash_pdq(as_stored(upright, orientation), HashOptions(limits=options.limits))
    result.codes = np.concatenate([result.codes, stored.codes[:1]])
    result.qualities.append(stored.qualities[0])
    if result.orientations:
        result.orientations.append(0)  # what EXIF-blind tools hash: their "as given"


def _variant_of_stored(orientation: int) -> int:
    """Which of ``multihash.orientations``' 8 rows of the upright image is the image as
    a file of EXIF ``orientation`` stores it (found on a small asymmetric array with
    the same two functions the hashing uses, so the mapping cannot drift from them)."""
    probe = np.arange(6, dtype=np.uint8).reshape(2, 3)
    stored = as_stored(probe, orientation)
    return next(
        n
        for n, view in enumerate(orientations(probe))
        if view.shape == stored.shape and np.array_equal(view, stored)
    )


def _pdq_frames(data: bytes, options: HashOptions) -> HashResult:
    codes, qualities, numbers, turned = [], [], [], []
    for n, frame in enumerate(iter_frames(data, limits=options.limits)):
        if options.checkpoint is not None:
            options.checkpoint()
        one = hash_pdq(frame, options)
        codes.append(one.codes)
        qualities.extend(one.qualities)
        numbers.extend([n] * len(one.codes))
        turned.extend(one.orientations)
    result = HashResult("pdq", np.concatenate(codes), qualities, frame_numbers=numbers)
    result.orientations = turned
    return result


def _vpdq(source: bytes | str | Path, options: HashOptions) -> HashResult:
    video = hash_video(
        source,
        seconds_per_hash=options.seconds_per_hash,
        limits=options.limits,
        frame_transform=trim_borders if options.trim_borders else None,
        checkpoint=options.checkpoint,
    )
    return HashResult(
        "vpdq", video.codes, list(video.qualities), list(video.timestamps),
        list(video.frame_numbers),
    )  # fmt: skip
