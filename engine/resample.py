"""Pillow's ``convert("L")`` and LANCZOS ``resize`` of a greyscale image, bit for bit.

Why: resampling is nearly all of imagehash's cost, and identical hashes need identical
resampled pixels. These numba kernels compute Pillow's integer pipeline
(``libImaging/Convert.c`` and ``Resample.c``) with 32-bit SIMD arithmetic:

* ``L = (R*19595 + G*38470 + B*7471 + 0x8000) >> 16``.
* Separable resize: each output sample's taps are the Lanczos-3 window (support
  3 x scale) evaluated in double at ``(x + xmin - center + 0.5) / scale``, normalised to
  sum 1 and rounded to 22-bit fixed point away from zero; an output is
  ``clip8(((1 << 21) + sum(pixel * tap)) >> 22)``. Between the passes pixels are
  clipped to uint8, so the pass order matters.

The pass order is the one thing not derived from first principles: Pillow 13 picks
horizontal-first or vertical-first by a rule of the sizes that we do not reproduce. So
for each (input size, output size) :func:`resize_lanczos` *asks Pillow once*: it resizes
a random probe image of that size with Pillow and with both of our orders, and keeps the
order that reproduces Pillow exactly (or, if neither does, Pillow itself) for every later
image of that size. The probe costs one Pillow resize per new size; scans see few sizes.
"""

from __future__ import annotations

import math
import threading
from functools import lru_cache

import numpy as np
from numba import njit
from PIL import Image

PRECISION_BITS = 32 - 8 - 2
_LANCZOS = Image.Resampling.LANCZOS


def _sinc(x: float) -> float:
    if x == 0.0:
        return 1.0
    x = x * math.pi
    return math.sin(x) / x


def _lanczos(x: float) -> float:
    if -3.0 <= x < 3.0:
        return _sinc(x) * _sinc(x / 3.0)
    return 0.0


@lru_cache(maxsize=256)
def lanczos_coeffs(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pillow's ``precompute_coeffs`` + ``normalize_coeffs_8bpc`` for the full image.

    Returns (first input index int64[out], tap count int64[out], taps float64[out, ksize]).
    """
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 3.0 * filterscale
    ksize = math.ceil(support) * 2 + 1
    xmins = np.zeros(out_size, np.int64)
    xlens = np.zeros(out_size, np.int64)
    taps = np.zeros((out_size, ksize), np.float64)  # integer-valued (see _horizontal)
    ss = 1.0 / filterscale
    one = float(1 << PRECISION_BITS)
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size) - xmin
        weights = [_lanczos((x + xmin - center + 0.5) * ss) for x in range(xmax)]
        total = 0.0
        for w in weights:
            total += w
        for x, w in enumerate(weights):
            if total != 0.0:
                w = w / total
            taps[xx, x] = int(-0.5 + w * one) if w < 0 else int(0.5 + w * one)
        xmins[xx] = xmin
        xlens[xx] = xmax
    return xmins, xlens, taps


@njit(cache=True, nogil=True)
def _clip8(ss):
    if ss >= (1 << (PRECISION_BITS + 8)):
        return np.uint8(255)
    if ss <= 0:
        return np.uint8(0)
    return np.uint8(ss >> PRECISION_BITS)


# The passes sum in float64 with fastmath: every product (<= 255 * 2^22) and every partial
# sum is an integer below 2^53, so float64 arithmetic is exact in ANY order, and fastmath
# may reorder the sums into SIMD lanes without changing a single result.
@njit(cache=True, nogil=True, fastmath=True)
def _horizontal(src, y0, y1, xmins, xlens, taps):
    """Rows y0..y1 of ``src`` resampled along x."""
    out = np.empty((y1 - y0, len(xmins)), np.uint8)
    half = float(1 << (PRECISION_BITS - 1))
    row = np.empty(src.shape[1], np.float64)
    for y in range(y0, y1):
        for x in range(src.shape[1]):
            row[x] = src[y, x]
        for xx in range(len(xmins)):
            n = xlens[xx]
            seg = row[xmins[xx] : xmins[xx] + n]
            k = taps[xx]
            ss = 0.0
            for x in range(n):
                ss += seg[x] * k[x]
            out[y - y0, xx] = _clip8(np.int64(ss + half))
    return out


@njit(cache=True, nogil=True, fastmath=True)
def _vertical(src, ymins, ylens, taps):
    """``src`` resampled along y; ``ymins`` index rows of ``src``."""
    width = src.shape[1]
    out = np.empty((len(ymins), width), np.uint8)
    acc = np.empty(width, np.float64)
    half = float(1 << (PRECISION_BITS - 1))
    for yy in range(len(ymins)):
        acc[:] = half
        m = ymins[yy]
        for y in range(ylens[yy]):
            k = taps[yy, y]
            line = src[m + y]
            for x in range(width):
                acc[x] += line[x] * k
        for x in range(width):
            out[yy, x] = _clip8(np.int64(acc[x]))
    return out


@njit(cache=True, nogil=True)
def _grey(rgb):
    h, w = rgb.shape[0], rgb.shape[1]
    out = np.empty((h, w), np.uint8)
    for y in range(h):
        for x in range(w):
            v = (
                np.int32(rgb[y, x, 0]) * 19595
                + np.int32(rgb[y, x, 1]) * 38470
                + np.int32(rgb[y, x, 2]) * 7471
                + 0x8000
            )
            out[y, x] = np.uint8(v >> 16)
    return out


def grey_from_rgb(rgb: np.ndarray) -> np.ndarray:
    """``uint8[h, w, 3]`` -> ``uint8[h, w]``, exactly Pillow's ``convert("L")``."""
    return _grey(np.ascontiguousarray(rgb[:, :, :3], dtype=np.uint8))


def _h_first(src: np.ndarray, width: int, height: int) -> np.ndarray:
    h, w = src.shape
    tmp, base = src, 0
    if height != h:
        ymins, ylens, ytaps = lanczos_coeffs(h, height)
        y0, y1 = int(ymins[0]), int(ymins[-1] + ylens[-1])
    else:
        y0, y1 = 0, h
    if width != w:
        xmins, xlens, xtaps = lanczos_coeffs(w, width)
        tmp, base = _horizontal(src, y0, y1, xmins, xlens, xtaps), y0
    if height == h:
        return tmp
    return _vertical(tmp, ymins - base, ylens, ytaps)


def _v_first(src: np.ndarray, width: int, height: int) -> np.ndarray:
    return _h_first(_h_first(src, src.shape[1], height), width, height)


_ORDERS = {"h": _h_first, "v": _v_first}
_order_cache: dict[tuple[int, int, int, int], str] = {}
_seen: dict[tuple[int, int, int, int], int] = {}
_lock = threading.Lock()


def _pillow(src: np.ndarray, width: int, height: int) -> np.ndarray:
    return np.asarray(Image.fromarray(src, "L").resize((width, height), _LANCZOS))


def learn_pass_order(w: int, h: int, width: int, height: int) -> str:
    """ "h", "v" or "pillow": which of our pass orders equals Pillow for these sizes.

    Decided on a random probe image (every tap of every output sample then matters), so
    a coefficient that differed from Pillow's would show as "neither" -> "pillow".
    """
    key = (w, h, width, height)
    found = _order_cache.get(key)
    if found is None:
        probe = np.random.default_rng(0x5EED).integers(0, 256, (h, w), dtype=np.uint8)
        truth = _pillow(probe, width, height)
        same = [n for n, fn in _ORDERS.items() if np.array_equal(fn(probe, width, height), truth)]
        found = same[0] if len(same) == 1 else "pillow"
        with _lock:
            if len(_order_cache) > 65536:  # bounded in long-running services
                _order_cache.clear()
            _order_cache[key] = found
    return found


def resize_lanczos(grey: np.ndarray, width: int, height: int) -> np.ndarray:
    """``uint8[h, w]`` -> ``uint8[height, width]``, exactly Pillow's LANCZOS ``resize``.

    One-pass resizes need no order. Otherwise a size seen for the first time goes to
    Pillow (a collection of all-different sizes costs nothing extra); the second time
    the order is learned once with a probe; from then on our kernels run.
    """
    src = np.ascontiguousarray(grey, dtype=np.uint8)
    h, w = src.shape
    if (w, h) == (width, height):
        return src.copy()
    if w == width or h == height:
        return _h_first(src, width, height)
    key = (w, h, width, height)
    order = _order_cache.get(key)
    if order is None:
        with _lock:
            count = _seen[key] = _seen.get(key, 0) + 1
            if len(_seen) > 4096:  # bounded memory in long-running services
                _seen.clear()
        order = learn_pass_order(*key) if count >= 2 else "pillow"
    if order == "pillow":
        return _pillow(src, width, height)
    return _ORDERS[order](src, width, height)
