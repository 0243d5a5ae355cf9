"""One call from media to signals: the facade the store, server and scanner use.

INTERFACE OWNED BY THE HASHING WORK (issue 2). This first version wires the
minimal decoders so other layers can build on the signatures below; the hashing
work fills in every type (imagehash family, vPDQ) and option without changing them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hashmatch.engine import signal_types
from hashmatch.engine.decode import DEFAULT_LIMITS, DecodeLimits, decode_image, read_source
from hashmatch.engine.pdq import pdq_hash, pdq_hash_dihedral


@dataclass(frozen=True)
class HashOptions:
    """How to hash. Defaults are the PDQ-compatible, pdqhash-identical path."""

    dihedral: bool = False  # pdq: also the 7 rotated/flipped variants (codes has 8 rows)
    trim_borders: bool = False  # crop uniform/blurred borders and letterbox bars first
    reference_resize: bool = False  # pdq: resize >512 px to 512x512 first, like the C++ CLI
    limits: DecodeLimits = DEFAULT_LIMITS


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
    """Hash bytes or a file with each requested type, decoding at most once."""
    wanted = [signal_types.get(t) for t in types]
    data = read_source(source, options.limits)
    results: list[HashResult] = []
    rgb: np.ndarray | None = None
    for st in wanted:
        if st.name in ("md5", "sha256"):
            digest = hashlib.new(st.name, data).digest()
            results.append(HashResult(st.name, np.frombuffer(digest, np.uint8)[None, :].copy()))
            continue
        if rgb is None:
            rgb = decode_image(data, limits=options.limits)
        if st.name == "pdq":
            if options.dihedral:
                codes, quality = pdq_hash_dihedral(rgb)
                results.append(HashResult("pdq", codes, [quality] * len(codes)))
            else:
                code, quality = pdq_hash(rgb, reference_resize=options.reference_resize)
                results.append(HashResult("pdq", code[None, :], [quality]))
        else:
            raise NotImplementedError(f"{st.name} hashing lands with issue 2")
    return results
