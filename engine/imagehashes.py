"""pHash, dHash, aHash and wHash with exactly imagehash's bits (hash_size 8).

Why not just call imagehash: it converts to greyscale and resamples the image once per
hash type, and its wHash runs a full wavelet decomposition *and* reconstruction of a
power-of-two-sized image in floating point (tens of ms at 512x512). Hash lists made by
imagehash must still match, so every bit here is the bit imagehash gives:

* The same pixels: Pillow's ``convert("L")`` (done once, shared by all four types) and
  Pillow's LANCZOS ``resize`` to the same sizes (8x8, 9x8, 32x32, 2^k x 2^k), computed
  bit for bit by :mod:`hashmatch.engine.resample` (SIMD numba kernels of Pillow's
  integer pipeline, falling back to Pillow itself where it cannot prove equality).
* aHash/dHash threshold integers: ``pixels > mean`` is ``64 * pixels > sum`` (the float
  mean of 64 uint8 values is exact), ``dHash`` compares neighbours. Identical by
  construction.
* pHash uses the same ``scipy.fftpack.dct`` call and ``numpy.median`` on the 32x32
  pixels (a 32x32 DCT costs ~30 us; the resize is the whole cost), so it is identical by
  construction, including ties at the median.
* wHash: removing the top-level Haar LL (``remove_max_haar_ll``) subtracts the global
  mean, and the Haar LL at level k of a 2^k-aligned block is its sum divided by 2^k, so
  in exact arithmetic wHash's bits are ``block_sum > median(block_sums)`` over an 8x8
  grid of blocks. We compute the integer block sums; when the 32nd and 33rd smallest
  sums differ, every sum is at least ``1/(255*2^k)`` (>= 1e-5) away from imagehash's
  median in its float domain while pywt's rounding error is ~1e-12, so the bits are the
  same. When they tie (flat regions, chessboards: the median itself is a block value
  and float noise decides), we delegate to ``imagehash.whash`` on the resized image, so
  the result is imagehash's by definition. Tests check all of this on reference images,
  scikit-image's data, flat/chessboard images and random images of random sizes.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from PIL import Image

from hashmatch.engine.resample import grey_from_rgb, resize_lanczos

IMAGEHASH_TYPES = ("phash", "dhash", "ahash", "whash")
HASH_SIZE = 8


def to_grey(image: np.ndarray | Image.Image) -> np.ndarray:
    """RGB ``uint8[h, w, 3]`` (or a Pillow image) -> ``uint8[h, w]``, as imagehash's
    ``convert("L")`` (a Pillow image converts from its own mode, with Pillow)."""
    if isinstance(image, Image.Image):
        return np.asarray(image if image.mode == "L" else image.convert("L"))
    arr = np.asarray(image, dtype=np.uint8)
    if arr.ndim == 2:
        return np.ascontiguousarray(arr)
    return grey_from_rgb(arr)


def _resized(grey: np.ndarray, width: int, height: int) -> np.ndarray:
    return resize_lanczos(grey, width, height)


def _pack(bits: np.ndarray) -> np.ndarray:
    """Row-major bits, first bit most significant: imagehash's ``str(hash)`` bytes."""
    return np.packbits(np.asarray(bits, dtype=bool).reshape(-1))


def ahash(grey: np.ndarray) -> np.ndarray:
    pixels = _resized(grey, HASH_SIZE, HASH_SIZE).astype(np.int64)
    return _pack(pixels * pixels.size > pixels.sum())


def dhash(grey: np.ndarray) -> np.ndarray:
    pixels = _resized(grey, HASH_SIZE + 1, HASH_SIZE)
    return _pack(pixels[:, 1:] > pixels[:, :-1])


def phash(grey: np.ndarray) -> np.ndarray:
    import scipy.fftpack  # what imagehash uses; lazily, as imagehash does

    pixels = _resized(grey, HASH_SIZE * 4, HASH_SIZE * 4)
    dct = scipy.fftpack.dct(scipy.fftpack.dct(pixels, axis=0), axis=1)
    low = dct[:HASH_SIZE, :HASH_SIZE]
    return _pack(low > np.median(low))


def whash_scale(width: int, height: int) -> int:
    """imagehash's default ``image_scale``: the largest power of two <= the short side."""
    natural = 2 ** int(np.log2(min(width, height)))
    return max(natural, HASH_SIZE)


def whash(grey: np.ndarray) -> np.ndarray:
    scale = whash_scale(grey.shape[1], grey.shape[0])
    pixels = _resized(grey, scale, scale)
    block = scale // HASH_SIZE
    sums = pixels.reshape(HASH_SIZE, block, HASH_SIZE, block).sum(axis=(1, 3), dtype=np.int64)
    ordered = np.sort(sums, axis=None)
    half = ordered.size // 2
    if ordered[half - 1] == ordered[half]:
        return _whash_imagehash(pixels)
    return _pack(sums > ordered[half - 1])


def _whash_imagehash(resized: np.ndarray) -> np.ndarray:
    """The tie case: imagehash's own float computation (its resize is then a copy)."""
    import imagehash

    return _pack(imagehash.whash(Image.fromarray(resized, "L"), hash_size=HASH_SIZE).hash)


_HASHERS = {"phash": phash, "dhash": dhash, "ahash": ahash, "whash": whash}


def imagehash_codes(
    image: np.ndarray | Image.Image, types: Iterable[str] = IMAGEHASH_TYPES
) -> dict[str, np.ndarray]:
    """Packed ``uint8[8]`` codes for each requested type, greyscale converted once."""
    grey = to_grey(image)
    return {name: _HASHERS[name](grey) for name in types}
