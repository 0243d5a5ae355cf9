"""One call from media to signals: the facade the store, server and scanner use.

``hash_media(source, types, options)`` reads the bytes once, decodes a photo at most
once for every photo type (pdq and the imagehash family share the pixels; the four
imagehash types share one greyscale conversion), hashes videos with vPDQ, and digests
the raw bytes for md5/sha256. Unknown type names raise UnknownSignalType; media
problems raise the typed MediaError subclasses from :mod:`hashmatch.engine.errors`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hashmatch.engine import signal_types
from hashmatch.engine.decode import DEFAULT_LIMITS, DecodeLimits, decode_image, read_source
from hashmatch.engine.imagehashes import IMAGEHASH_TYPES, imagehash_codes
from hashmatch.engine.pdq import pdq_hash, pdq_hash_dihedral, reference_downsize
from hashmatch.engine.video import DEFAULT_SECONDS_PER_HASH, hash_video


@dataclass(frozen=True)
class HashOptions:
    """How to hash. Defaults are the PDQ-compatible, pdqhash-identical path."""

    dihedral: bool = False  # pdq: also the 7 rotated/flipped variants (codes has 8 rows)
    trim_borders: bool = False  # crop uniform/blurred borders and letterbox bars first
    reference_resize: bool = False  # pdq: resize >512 px to 512x512 first, like the C++ CLI
    limits: DecodeLimits = DEFAULT_LIMITS
    seconds_per_hash: float = DEFAULT_SECONDS_PER_HASH  # vpdq: sampling; 0 = every frame


DEFAULT_OPTIONS = HashOptions()


@dataclass
class HashResult:
    """The signal(s) of one type computed from one piece of media.

    ``codes`` is always 2-D ``uint8[k, nbytes]``: k = 1 normally, 8 for dihedral PDQ
    (row 0 is the image as given), one row per sampled frame for vPDQ.
    """

    signal_type: str
    codes: np.ndarray
    qualities: list[int] = field(default_factory=list)  # per row; empty where meaningless
    timestamps: list[float] = field(default_factory=list)  # vPDQ: seconds per frame
    frame_numbers: list[int] = field(default_factory=list)  # vPDQ: decoded frame index

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
        if rgb is None:
            rgb = decode_image(data, limits=options.limits)
            if options.trim_borders:
                rgb = _trim(rgb)
        if name == "pdq":
            results[name] = _pdq(rgb, options)
        elif name in IMAGEHASH_TYPES:
            photo_types = [t.name for t in wanted if t.name in IMAGEHASH_TYPES]
            for other, code in imagehash_codes(rgb, photo_types).items():
                results[other] = HashResult(other, code[None, :])
        else:  # a registry type without a hasher is a programming error, not input
            raise NotImplementedError(f"no hasher for signal type {name!r}")
    return [results[st.name] for st in wanted]


def _pdq(rgb: np.ndarray, options: HashOptions) -> HashResult:
    if options.dihedral:
        pixels = reference_downsize(rgb) if options.reference_resize else rgb
        codes, quality = pdq_hash_dihedral(pixels)
        return HashResult("pdq", codes, [quality] * len(codes))
    code, quality = pdq_hash(rgb, reference_resize=options.reference_resize)
    return HashResult("pdq", code[None, :], [quality])


def _vpdq(source: bytes | str | Path, options: HashOptions) -> HashResult:
    video = hash_video(source, seconds_per_hash=options.seconds_per_hash, limits=options.limits)
    return HashResult(
        "vpdq", video.codes, list(video.qualities), list(video.timestamps),
        list(video.frame_numbers),
    )  # fmt: skip


def _trim(rgb: np.ndarray) -> np.ndarray:
    """Border trimming lives in engine/trim.py (the quality work); imported lazily."""
    try:
        from hashmatch.engine.trim import trim_borders
    except ModuleNotFoundError as exc:
        if exc.name != "hashmatch.engine.trim":
            raise
        raise NotImplementedError(
            "HashOptions.trim_borders needs hashmatch.engine.trim, which is not installed"
        ) from None
    return trim_borders(rgb)
