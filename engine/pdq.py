"""PDQ hashing: hashmatch's own implementation, bit-identical to ``pdqhash.compute``.

Why our own: the reference bindings walk image columns with a stride and keep three
image-sized float buffers, so a 12 MP photo costs ~0.4 s. Here the same float32
arithmetic (see :mod:`hashmatch.engine.pdq_kernels` for how exactness is kept) runs
as streamed, SIMD-friendly numba kernels. ``pdqhash`` stays the test oracle.

Codes are ``uint8[32]`` in the reference hex order (``code.tobytes().hex()`` equals what
python-threatexchange's ``pdq_from_file`` prints).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from hashmatch.engine import pdq_kernels as _k
from hashmatch.engine.errors import InvalidInput

#: Images with a side below this hash to all zeros with quality 0 (reference rule).
MIN_HASHABLE_DIM = 5
#: The reference CLI's resize target for ``reference_resize``.
REFERENCE_RESIZE_DIM = 512


@lru_cache(maxsize=1)
def _dct_matrix() -> np.ndarray:
    return _k.dct_matrix()


@lru_cache(maxsize=256)
def _samples(n: int) -> np.ndarray:
    return _k.sample_indices(n)


def _as_pixels(rgb: np.ndarray) -> np.ndarray:
    """Contiguous ``uint8[h, w, 3]``, or ``uint8[h, w]`` for a grey image.

    A grey image is hashed as its own luma plane: the reference bindings see it as
    R = G = B, whose luma is exactly the grey value (see ``pdq_kernels._grey_to_lanes``),
    so the hash is the same without the three-channel copy and luma pass (~0.7 ms at
    1080p: the ``--fast-decode`` path hands PDQ JPEG luma planes).
    """
    arr = np.asarray(rgb)
    if arr.ndim == 2:
        if arr.dtype != np.uint8:
            raise InvalidInput(f"expected uint8 pixels, got {arr.dtype}", field="image")
        return np.ascontiguousarray(arr)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise InvalidInput(
            f"expected an RGB image uint8[h, w, 3] or grey uint8[h, w], got shape {arr.shape}",
            field="image",
        )
    if arr.shape[2] == 4:
        arr = arr[:, :, :3]
    if arr.dtype != np.uint8:
        raise InvalidInput(f"expected uint8 pixels, got {arr.dtype}", field="image")
    return np.ascontiguousarray(arr)


def pdq_float(rgb: np.ndarray, *, dihedral: bool = False) -> tuple[np.ndarray, int]:
    """The 16x16 float32 DCT block and quality (before the median threshold).

    ``dihedral=True`` follows the reference dihedral entry point, which always filters
    (the single-hash entry point copies a 64x64 image unfiltered).
    """
    arr = _as_pixels(rgb)
    h, w = arr.shape[:2]
    if h == 64 and w == 64 and not dihedral:
        block = np.empty((64, 64), np.float32)
        if arr.ndim == 2:
            _k._grey_full(arr, block)
        else:
            _k._luma_full(arr, block)
    else:
        block = _k.downsample64(arr, _k.window_size(w), _k.window_size(h), _samples(w), _samples(h))
    return _k.dct16(block, _dct_matrix()), int(_k.quality(block))


def pdq_hash(rgb: np.ndarray, *, reference_resize: bool = False) -> tuple[np.ndarray, int]:
    """PDQ of an RGB ``uint8[h, w, 3]`` image -> (``uint8[32]`` code, quality 0..100).

    A grey ``uint8[h, w]`` image (e.g. a JPEG's luma plane) hashes as R = G = B would,
    without the copy: the same code and quality.

    ``reference_resize=True`` first shrinks images larger than 512 on a side to 512x512
    the way the reference C++ command-line hasher does (CImg nearest-neighbour resize),
    so hashes line up with lists produced by that tool.
    """
    arr = _as_pixels(rgb)
    if reference_resize:
        arr = reference_downsize(arr)
    h, w = arr.shape[:2]
    if h < MIN_HASHABLE_DIM or w < MIN_HASHABLE_DIM:
        return np.zeros(32, np.uint8), 0
    dct, q = pdq_float(arr)
    return _k.bits_from_dct(dct), q


# The 8 dihedral variants as (transpose?, sign pattern) on the 16x16 DCT, in
# pdqhash.compute_dihedral order: original, rot90, rot180, rot270, flipx, flipy,
# flip+1, flip-1. Index parities of frequencies decide the sign flips.
_I = np.arange(16)[:, None]
_J = np.arange(16)[None, :]
_DIHEDRAL = (
    (False, np.ones((16, 16), np.float32)),
    (True, np.where(_J % 2 == 1, 1, -1).astype(np.float32)),
    (False, np.where((_I + _J) % 2 == 1, -1, 1).astype(np.float32)),
    (True, np.where(_I % 2 == 1, 1, -1).astype(np.float32)),
    (False, np.where(_I % 2 == 1, 1, -1).astype(np.float32)),
    (False, np.where(_J % 2 == 1, 1, -1).astype(np.float32)),
    (True, np.ones((16, 16), np.float32)),
    (True, np.where((_I + _J) % 2 == 1, -1, 1).astype(np.float32)),
)


def pdq_hash_dihedral(rgb: np.ndarray) -> tuple[np.ndarray, int]:
    """The 8 dihedral PDQs (pdqhash.compute_dihedral order) -> (``uint8[8, 32]``, quality).

    One downsample and one DCT: each rotation/flip of the image only flips the signs of
    odd frequencies and/or transposes the DCT block, so the extra cost is 7 medians.
    """
    arr = _as_pixels(rgb)
    h, w = arr.shape[:2]
    if h < MIN_HASHABLE_DIM or w < MIN_HASHABLE_DIM:
        return np.zeros((8, 32), np.uint8), 0
    dct, q = pdq_float(arr, dihedral=True)
    out = np.empty((8, 32), np.uint8)
    for n, (transpose, signs) in enumerate(_DIHEDRAL):
        variant = dct * signs  # multiply by +-1 is exact (a sign flip)
        out[n] = _k.bits_from_dct(np.ascontiguousarray(variant.T if transpose else variant))
    return out, q


def reference_downsize(rgb: np.ndarray, dim: int = REFERENCE_RESIZE_DIM) -> np.ndarray:
    """Resize to ``dim`` x ``dim`` when either side exceeds it (reference CLI rule)."""
    h, w = rgb.shape[:2]
    if h <= dim and w <= dim:
        return rgb
    rows = (np.arange(dim) * h) // dim
    cols = (np.arange(dim) * w) // dim
    return np.ascontiguousarray(rgb[rows][:, cols])
