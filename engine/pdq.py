"""PDQ hashing.

INTERFACE OWNED BY THE HASHING WORK (issue 2). This first version delegates to the
pdqhash reference bindings so other layers can build on the signatures below; the
hashing work replaces it with hashmatch's own implementation (pdqhash stays a test
oracle and benchmark peer only) without changing the signatures.
"""

from __future__ import annotations

import numpy as np


def pdq_hash(rgb: np.ndarray, *, reference_resize: bool = False) -> tuple[np.ndarray, int]:
    """PDQ of an RGB ``uint8[h, w, 3]`` image -> (``uint8[32]`` code, quality 0..100)."""
    import pdqhash

    bits, quality = pdqhash.compute(np.ascontiguousarray(rgb))
    return _pack(bits), int(quality)


def pdq_hash_dihedral(rgb: np.ndarray) -> tuple[np.ndarray, int]:
    """The 8 dihedral PDQs (pdqhash.compute_dihedral order) -> (``uint8[8, 32]``, quality)."""
    import pdqhash

    hashes, quality = pdqhash.compute_dihedral(np.ascontiguousarray(rgb))
    return np.stack([_pack(h) for h in hashes]), int(quality)


def _pack(bits: np.ndarray) -> np.ndarray:
    # pdqhash's bit vector reads most-significant first, the order of the hex form that
    # python-threatexchange and the reference tools print.
    return np.packbits(np.asarray(bits, dtype=np.uint8))
