"""The signal-type registry: the one place that knows what a "pdq" or an "md5" is.

Everything else (indexes, store, server, CLI) asks the registry for bit width,
thresholds and hex parsing, so adding a hash type is one entry here plus its hasher.

Codes are packed ``uint8`` arrays, ``bytes.fromhex(hex)`` order: the hex string that
python-threatexchange, HMA, pdqhash and imagehash print is exactly the packed code.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from hashmatch.engine.errors import InvalidHash, InvalidInput, InvalidThreshold, UnknownSignalType
from hashmatch.engine.lazy_numpy import is_numpy, numpy_on_first_use

if TYPE_CHECKING:
    import numpy as np
else:  # every CLI verb imports the registry; few need numpy (engine/lazy_numpy.py)
    np = numpy_on_first_use(globals())

_HEX = re.compile(r"[0-9a-fA-F]*")


def _is_integer(value: object) -> bool:
    """An ``int`` or a numpy integer, not a ``bool``; numpy is not imported to tell."""
    return not isinstance(value, bool) and (isinstance(value, int) or is_numpy(value, "integer"))


@dataclass(frozen=True)
class SignalType:
    """A kind of hash: how wide it is, how far apart two matching values may be."""

    name: str
    bits: int
    default_threshold: int
    max_threshold: int
    content: str  # "photo", "video" or "bytes": what media the hasher reads
    exact: bool = False  # cryptographic: only distance 0 means a match
    description: str = ""

    @property
    def nbytes(self) -> int:
        return self.bits // 8

    @property
    def hex_length(self) -> int:
        return self.bits // 4

    def parse(
        self, value: str | bytes, *, field: str = "hash", index: int | None = None
    ) -> np.ndarray:
        """Parse one hex string (or raw bytes of the right length) into a packed code."""
        if isinstance(value, bytes | bytearray | memoryview):
            raw = bytes(value)
            if len(raw) != self.nbytes:
                raise InvalidHash(
                    f"{self.name} hash must be {self.nbytes} bytes, got {len(raw)}",
                    field=field,
                    index=index,
                )
            return np.frombuffer(raw, dtype=np.uint8).copy()
        text = value.strip()
        if len(text) != self.hex_length:
            raise InvalidHash(
                f"{self.name} hash must be {self.hex_length} hex characters, got {len(text)}"
                + _length_hint(text, self),
                field=field,
                index=index,
            )
        if not _HEX.fullmatch(text):
            bad = next(c for c in text if c not in "0123456789abcdefABCDEF")
            raise InvalidHash(
                f"{self.name} hash has a non-hex character {bad!r}", field=field, index=index
            )
        return np.frombuffer(bytes.fromhex(text), dtype=np.uint8).copy()

    def parse_many(self, values: Sequence[str | bytes], *, field: str = "hashes") -> np.ndarray:
        """Parse a batch into ``uint8[n, nbytes]``; the error names the first bad item."""
        out = np.empty((len(values), self.nbytes), dtype=np.uint8)
        for i, v in enumerate(values):
            out[i] = self.parse(v, field=field, index=i)
        return out

    def format(self, code: np.ndarray | bytes) -> str:
        """Packed code -> lowercase hex (the form hash lists exchange)."""
        raw = code.tobytes() if is_numpy(code, "ndarray") else bytes(code)
        if len(raw) != self.nbytes:
            raise InvalidHash(f"{self.name} code must be {self.nbytes} bytes, got {len(raw)}")
        return raw.hex()

    def format_many(self, codes: np.ndarray) -> list[str]:
        return [row.tobytes().hex() for row in np.asarray(codes, dtype=np.uint8)]

    def check_threshold(self, threshold: int | None, *, field: str = "threshold") -> int:
        """Resolve a request's threshold: None -> default; out of range -> InvalidThreshold."""
        if threshold is None:
            return self.default_threshold
        if not _is_integer(threshold):
            raise InvalidThreshold(f"must be an integer, got {threshold!r}", field=field)
        if threshold < 0 or threshold > self.max_threshold:
            raise InvalidThreshold(
                f"{self.name} threshold must be 0..{self.max_threshold}, got {threshold}",
                field=field,
            )
        return int(threshold)

    def shared_threshold(self, threshold: int | None, *, field: str = "threshold") -> int | None:
        """This type's share of ONE threshold given for several types (a scan's
        ``--threshold``, a media Match's ``options.threshold``): perceptual types check it
        against their range; exact types (md5, sha256) always match at 0, whatever
        distance was asked (a negative one is still refused). None stays None: each
        type's default."""
        if threshold is None:
            return None
        if self.exact:
            if not _is_integer(threshold):
                raise InvalidThreshold(f"must be an integer, got {threshold!r}", field=field)
            if threshold < 0:
                raise InvalidThreshold(f"must be >= 0, got {threshold}", field=field)
            return 0
        return self.check_threshold(threshold, field=field)


_REGISTRY: dict[str, SignalType] = {}


def _length_hint(text: str, wanted: SignalType) -> str:
    """Why a hash may have the wrong length, for a list's most common mix-ups: a ``0x``
    prefix (refused, as python-threatexchange and HMA refuse it: lists exchange bare
    hex), or another type's hash in this type's column (an MD5 where a SHA-256 goes)."""
    if text[:2].lower() == "0x" and len(text) - 2 == wanted.hex_length:
        return " (drop the 0x prefix)"
    if not _HEX.fullmatch(text):
        return ""
    others = sorted(
        t.name
        for t in _REGISTRY.values()
        if t.hex_length == len(text) and t.name != "vpdq" and t.exact == wanted.exact
    )
    if not others:
        return ""
    article = "an" if others[0][0] in "aeimo" else "a"  # an md5, an ahash, a sha256
    return f" (the length of {article} {' or '.join(others)} hash)"


def register(signal_type: SignalType) -> SignalType:
    if signal_type.name in _REGISTRY:
        raise ValueError(f"signal type {signal_type.name!r} registered twice")
    _REGISTRY[signal_type.name] = signal_type
    return signal_type


#: Other tools' names for our types (matched case-blind). python-threatexchange / HMA
#: write ``video_md5`` / ``video_sha256`` for the digest of a video file's bytes, which
#: is our ``md5`` / ``sha256``; ThreatExchange's indicator types (``HASH_PDQ``,
#: ``HASH_MD5``, ``HASH_VIDEO_MD5``, ...: what its API dumps and pytx's ``simple.*.te``
#: files are named after) and StopNCII's (``ImagePDQ``, ``VideoMD5``) name the same
#: hashes. Not aliased: ``url_md5`` (the MD5 of a URL, not of media bytes), ``tmk``,
#: ``photodna``: no hasher here computes them, so they stay unknown, named per line.
ALIASES = {
    "video_md5": "md5",
    "video_sha256": "sha256",
    "hash_pdq": "pdq",
    "hash_md5": "md5",
    "hash_video_md5": "md5",
    "hash_sha256": "sha256",
    "hash_video_sha256": "sha256",
    "imagepdq": "pdq",
    "videomd5": "md5",
}


def get(name: str, *, field: str = "signal_type") -> SignalType:
    """Look a type up by name; unknown names raise UnknownSignalType listing the known ones."""
    try:
        key = name.strip().lower()
        return _REGISTRY[ALIASES.get(key, key)]
    except (KeyError, AttributeError):
        if isinstance(name, str) and not name.strip():
            raise UnknownSignalType("missing signal type (empty)", field=field) from None
        known = ", ".join(sorted(_REGISTRY))
        raise UnknownSignalType(
            f"unknown signal type {name!r} (known: {known})", field=field
        ) from None


def names() -> list[str]:
    return sorted(_REGISTRY)


def all_types() -> Iterable[SignalType]:
    return list(_REGISTRY.values())


PDQ = register(
    SignalType(
        "pdq", 256, 31, 63, "photo", description="Meta's PDQ perceptual hash (industry standard)"
    )
)
PHASH = register(
    SignalType("phash", 64, 10, 32, "photo", description="imagehash.phash, hash_size 8")
)
DHASH = register(
    SignalType("dhash", 64, 10, 32, "photo", description="imagehash.dhash, hash_size 8")
)
AHASH = register(
    SignalType("ahash", 64, 10, 32, "photo", description="imagehash.average_hash, hash_size 8")
)
WHASH = register(
    SignalType("whash", 64, 10, 32, "photo", description="imagehash.whash, hash_size 8")
)
VPDQ = register(
    SignalType(
        "vpdq",
        256,
        31,
        63,
        "video",
        description="vPDQ: one PDQ per sampled frame; threshold applies per frame",
    )
)
MD5 = register(
    SignalType("md5", 128, 0, 0, "bytes", exact=True, description="MD5 of the file bytes")
)
SHA256 = register(
    SignalType("sha256", 256, 0, 0, "bytes", exact=True, description="SHA-256 of the file bytes")
)


def check_frame_extras(
    count: int,
    qualities: Sequence | None,
    timestamps: Sequence | None,
    *,
    field: str = "",
    qualities_name: str = "frame_qualities",
) -> None:
    """A vPDQ video's per-frame qualities (integers 0..100) and timestamps (finite
    seconds >= 0): each either absent or one per frame, else InvalidInput naming the item.

    Why one check for every path (gRPC, CSV/JSONL, vPDQ text, the store itself): the
    store keeps what it is given, and a quality of 500 or a NaN timestamp would then
    skew every later vPDQ match percentage without any error to trace it to.
    """
    prefix = f"{field}." if field else ""
    for name, values in ((qualities_name, qualities), ("timestamps", timestamps)):
        if values is not None and len(values) and len(values) != count:
            raise InvalidInput(
                f"{len(values)} {name} for {count} frames (give none or one per frame)",
                field=prefix + name,
            )
    for j, quality in enumerate(qualities or ()):
        if not _is_integer(quality):
            raise InvalidInput(
                f"quality must be an integer 0..100, got {quality!r}",
                field=f"{prefix}{qualities_name}[{j}]",
            )
        if not 0 <= quality <= 100:
            raise InvalidInput(
                f"quality must be 0..100, got {quality}", field=f"{prefix}{qualities_name}[{j}]"
            )
    for j, seconds in enumerate(timestamps or ()):
        if isinstance(seconds, bool) or not (
            isinstance(seconds, int | float) or is_numpy(seconds, "number")
        ):
            raise InvalidInput(
                f"a timestamp must be a number of seconds, got {seconds!r}",
                field=f"{prefix}timestamps[{j}]",
            )
        if not (math.isfinite(seconds) and seconds >= 0):
            raise InvalidInput(
                f"a timestamp must be finite and >= 0, got {seconds}",
                field=f"{prefix}timestamps[{j}]",
            )
