"""Numba kernels for PDQ that reproduce the reference float32 arithmetic bit for bit.

Why bit-identical matters: a PDQ bit is "this DCT coefficient is above the median".
On flat areas, chessboards and synthetic art, coefficients tie or sit one float32 ulp
from the median, so any change in rounding flips bits. The reference (ThreatExchange
``pdqhashing.cpp`` + ``downscaling.cpp``, as compiled by the ``pdqhash`` bindings) defines
the bits through:

* luma: ``float32(R*0.299 + G*0.587 + B*0.114)`` computed in float64 (the bindings do it
  in numpy before calling C++);
* four 1-D box filters (rows, columns, rows, columns; window ``ceil(n/128)``), each a
  float32 *running sum* (add the entering sample, then subtract the leaving one) divided
  by the current window length;
* nearest sampling at 64x64 pixel centres, a 16x64 then 16x16 float32 DCT accumulated in
  index order without FMA, and Torben's median.

Where the reference is slow we reorganise *which* element is computed when, never the
sequence of operations applied to any one element:

* the passes are streamed: luma + row pass 1 fill a small ring of rows that column
  pass 2 consumes as soon as it needs them; row pass 3 keeps only the 64 sampled
  columns and column pass 4 runs on those 64 columns only. Nothing image-sized is
  allocated (the reference keeps two full float copies of the image);
* column passes keep one running sum per column and walk down the rows, so the inner
  loop is contiguous and SIMD (each column's sum still sees the reference sequence);
  add, subtract and divide of one row step are one fused loop;
* row passes run 4 rows' running sums interleaved (independent chains hide the add
  latency) and store the raw sums; the division by the window length is a separate
  contiguous, vectorised loop (the same float32 division, just later);
* luma is ``float32(float64(299R + 587G + 114B) * 0.001)``: the weighted sum of
  integers is exact in float32, and the result equals the bindings' float64
  ``R*0.299 + G*0.587 + B*0.114`` for every one of the 2**24 colours (the test checks
  all of them), in 8 float32 lanes instead of 4 float64 ones;
* ``error_model="numpy"`` drops numba's divide-by-zero branch (it blocked SIMD) and
  ``nogil=True`` lets callers hash images on several threads at once.

numba never contracts a*b+c into an FMA without ``fastmath``, so float32 products and
sums round exactly as the reference's separate multiply and add.

Tried and not kept (2-core AMD EPYC, AVX2): running the row passes with rows as SIMD
lanes (a block of rows transposed so each column gives 8-16 rows' values) keeps each
lane's exact add/subtract sequence, but numba/LLVM do not vectorise the lane loop with
the sums held in registers, and the transposes in and out cost more than the 4-chain
scalar pass (~0.7 ns per element) they would replace; 8 interleaved chains run slower
than 4 (register pressure). At 1920x1080 the time splits roughly into luma ~2.3 ms,
each row pass ~1.5 ms, the pass-1 division ~0.9 ms and the fused column pass ~0.9 ms.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

BLOCK = 8  # rows luma + row pass 1 produce at a time (two groups of 4 chains)


def dct_matrix() -> np.ndarray:
    """The reference 16x64 DCT-II matrix, float32, rounded exactly like the C++ one."""
    scale = float(np.float32(math.sqrt(2.0 / 64.0)))
    out = np.empty((16, 64), np.float32)
    for i in range(16):
        for j in range(64):
            out[i, j] = np.float32(scale * math.cos((math.pi / 2.0 / 64.0) * (i + 1) * (2 * j + 1)))
    return out


def window_size(old: int, new: int = 64) -> int:
    """Reference ``computeJaroszFilterWindowSize``: half a destination cell, rounded up."""
    return (old + 2 * new - 1) // (2 * new)


def sample_indices(n: int, out: int = 64) -> np.ndarray:
    """Reference ``decimateFloat`` source index for each output cell (cell centres)."""
    return np.array([int(((k + 0.5) * n) / out) for k in range(out)], np.int64)


@njit(cache=True, nogil=True, error_model="numpy")
def box_divisors(n, w):
    """float32 window length in effect when output k of a length-n box filter is written."""
    half = (w + 2) // 2
    d = np.empty(n, np.float32)
    cws = half - 1
    o = 0
    for _ in range(w - half + 1):
        cws += 1
        d[o] = cws
        o += 1
    for _ in range(n - w):
        d[o] = cws
        o += 1
    for _ in range(half - 1):
        cws -= 1
        d[o] = cws
        o += 1
    return d


@njit(cache=True, nogil=True, error_model="numpy")
def _running_sums4(x0, x1, x2, x3, y0, y1, y2, y3, n, w):
    """Reference ``box1DFloat`` running sums (before the division) of 4 rows at once.

    Four independent chains interleaved hide the float-add latency; each chain sees
    exactly the reference sequence: add the entering sample, then subtract the leaving
    one. ``y[k]`` receives the sum that the reference divides to produce output ``k``.
    """
    half = (w + 2) // 2
    s0 = np.float32(0.0)
    s1 = np.float32(0.0)
    s2 = np.float32(0.0)
    s3 = np.float32(0.0)
    ri = 0
    for _ in range(half - 1):
        s0 += x0[ri]
        s1 += x1[ri]
        s2 += x2[ri]
        s3 += x3[ri]
        ri += 1
    oi = 0
    for _ in range(w - half + 1):
        s0 += x0[ri]
        s1 += x1[ri]
        s2 += x2[ri]
        s3 += x3[ri]
        y0[oi] = s0
        y1[oi] = s1
        y2[oi] = s2
        y3[oi] = s3
        ri += 1
        oi += 1
    li = 0
    for _ in range(n - w):
        s0 += x0[ri]
        s1 += x1[ri]
        s2 += x2[ri]
        s3 += x3[ri]
        s0 -= x0[li]
        s1 -= x1[li]
        s2 -= x2[li]
        s3 -= x3[li]
        y0[oi] = s0
        y1[oi] = s1
        y2[oi] = s2
        y3[oi] = s3
        ri += 1
        li += 1
        oi += 1
    for _ in range(half - 1):
        s0 -= x0[li]
        s1 -= x1[li]
        s2 -= x2[li]
        s3 -= x3[li]
        y0[oi] = s0
        y1[oi] = s1
        y2[oi] = s2
        y3[oi] = s3
        li += 1
        oi += 1


@njit(cache=True, nogil=True, error_model="numpy")
def _divide(y, div):
    for k in range(y.shape[0]):
        y[k] = y[k] / div[k]


@njit(cache=True, nogil=True, error_model="numpy")
def _luma_row(row, out):
    """float32(R*0.299 + G*0.587 + B*0.114) in float64, as the pdqhash bindings do.

    Computed as ``float32(float64(299R + 587G + 114B) * 0.001)``: the integer weighted
    sum is exact in float32 lanes (every intermediate is an integer below 2**24), and
    for all 2**24 RGB triples the result equals the bindings' float64 formula (checked
    exhaustively by tests/test_pdq.py). 8 float32 lanes instead of 4 float64 ones.
    """
    c0 = np.float32(299.0)
    c1 = np.float32(587.0)
    c2 = np.float32(114.0)
    for k in range(out.shape[0]):
        key = (np.float32(row[3 * k]) * c0 + np.float32(row[3 * k + 1]) * c1) + np.float32(
            row[3 * k + 2]
        ) * c2
        out[k] = np.float32(np.float64(key) * 0.001)


@njit(cache=True, nogil=True, error_model="numpy")
def _luma_full(rgb, out):
    nrows, ncols = rgb.shape[0], rgb.shape[1]
    flat = rgb.reshape(nrows, ncols * 3)
    for i in range(nrows):
        _luma_row(flat[i], out[i])


@njit(cache=True, nogil=True, error_model="numpy")
def _column_schedule(n, w):
    """The reference box1DFloat along a column as events (add row, sub row, out row)."""
    half = (w + 2) // 2
    total = (half - 1) + (w - half + 1) + (n - w) + (half - 1)
    add = np.full(total, -1, np.int64)
    sub = np.full(total, -1, np.int64)
    out = np.full(total, -1, np.int64)
    e = 0
    ri = 0
    li = 0
    oi = 0
    for _ in range(half - 1):
        add[e] = ri
        ri += 1
        e += 1
    for _ in range(w - half + 1):
        add[e] = ri
        out[e] = oi
        ri += 1
        oi += 1
        e += 1
    for _ in range(n - w):
        add[e] = ri
        sub[e] = li
        out[e] = oi
        ri += 1
        li += 1
        oi += 1
        e += 1
    for _ in range(half - 1):
        sub[e] = li
        out[e] = oi
        li += 1
        oi += 1
        e += 1
    return add, sub, out


@njit(cache=True, nogil=True, error_model="numpy")
def _column_step(acc, x_add, do_add, x_sub, do_sub, dst, do_out, d):
    """One event of a column pass over every column: add, subtract, divide out.

    One fused loop per event (the separate add / subtract / divide loops each streamed
    the running sums through memory); every column still sees add, then subtract,
    then the division, exactly as the reference.
    """
    n = acc.shape[0]
    if do_add and do_sub and do_out:
        for k in range(n):
            v = acc[k] + x_add[k]
            v = v - x_sub[k]
            acc[k] = v
            dst[k] = v / d
    elif do_add and do_out:
        for k in range(n):
            v = acc[k] + x_add[k]
            acc[k] = v
            dst[k] = v / d
    elif do_sub and do_out:
        for k in range(n):
            v = acc[k] - x_sub[k]
            acc[k] = v
            dst[k] = v / d
    else:
        if do_add:
            for k in range(n):
                acc[k] += x_add[k]
        if do_sub:
            for k in range(n):
                acc[k] -= x_sub[k]
        if do_out:
            for k in range(n):
                dst[k] = acc[k] / d


@njit(cache=True, nogil=True, error_model="numpy")
def downsample64(rgb, wr, wc, col_samples, row_samples):
    """Luma + the reference 2x(rows, columns) box filters + 64x64 decimation."""
    nrows, ncols = rgb.shape[0], rgb.shape[1]
    flat = rgb.reshape(nrows, ncols * 3)
    div_r = box_divisors(ncols, wr)
    div_c = box_divisors(nrows, wc)
    add, sub, out = _column_schedule(nrows, wc)

    # Ring of pass-1 rows: the column pass needs rows li..ri (wc + 1 of them) and rows
    # arrive a block at a time.
    ring = wc + 2 * BLOCK
    b1 = np.empty((ring, ncols), np.float32)
    luma = np.zeros((BLOCK, ncols), np.float32)
    colsum = np.zeros(ncols, np.float32)
    # Pass-2 output rows waiting for row pass 3, and their pass-3 running sums.
    p = np.zeros((BLOCK, ncols), np.float32)
    q = np.empty((BLOCK, ncols), np.float32)
    p_rows = np.empty(BLOCK, np.int64)
    npend = 0
    b3 = np.empty((nrows, 64), np.float32)
    done = 0  # pass-1 rows computed

    for e in range(add.shape[0]):
        a = add[e]
        if a >= done:  # (a = -1: no row enters at this event)
            rows = min(BLOCK, nrows - done)
            for g in range(rows):
                _luma_row(flat[done + g], luma[g])
            for g0 in range(0, rows, 4):
                r0 = (done + g0) % ring
                r1 = (done + min(g0 + 1, rows - 1)) % ring
                r2 = (done + min(g0 + 2, rows - 1)) % ring
                r3 = (done + min(g0 + 3, rows - 1)) % ring
                _running_sums4(
                    luma[g0],
                    luma[min(g0 + 1, rows - 1)],
                    luma[min(g0 + 2, rows - 1)],
                    luma[min(g0 + 3, rows - 1)],
                    b1[r0],
                    b1[r1],
                    b1[r2],
                    b1[r3],
                    ncols,
                    wr,
                )
            for g in range(rows):
                _divide(b1[(done + g) % ring], div_r)
            done += rows
        s = sub[e]
        o = out[e]
        dst = p[npend]
        d = div_c[max(o, 0)]
        _column_step(colsum, b1[a % ring] if a >= 0 else colsum, a >= 0,
                     b1[s % ring] if s >= 0 else colsum, s >= 0, dst, o >= 0, d)  # fmt: skip
        if o >= 0:
            p_rows[npend] = o
            npend += 1
            if npend == BLOCK or o == nrows - 1:
                for g0 in range(0, npend, 4):
                    _running_sums4(
                        p[g0],
                        p[g0 + 1],
                        p[g0 + 2],
                        p[g0 + 3],
                        q[g0],
                        q[g0 + 1],
                        q[g0 + 2],
                        q[g0 + 3],
                        ncols,
                        wr,
                    )
                for g in range(npend):
                    dst = b3[p_rows[g]]
                    for j in range(64):
                        c = col_samples[j]
                        dst[j] = q[g, c] / div_r[c]
                npend = 0

    return _column_pass4(b3, add, sub, out, div_c, row_samples)


@njit(cache=True, nogil=True, error_model="numpy")
def quality(a):
    """Reference image-domain quality: quantised gradient sum over the 64x64 block."""
    one_hundred = np.float32(100.0)
    two_five_five = np.float32(255.0)
    total = 0
    for i in range(63):
        for j in range(64):
            d = int(((a[i, j] - a[i + 1, j]) * one_hundred) / two_five_five)
            total += abs(d)
    for i in range(64):
        for j in range(63):
            d = int(((a[i, j] - a[i, j + 1]) * one_hundred) / two_five_five)
            total += abs(d)
    q = total // 90
    return min(q, 100)


@njit(cache=True, nogil=True, error_model="numpy")
def dct16(a, dm):
    """B = D A D^T keeping the reference summation order (k ascending, no FMA)."""
    t = np.zeros((16, 64), np.float32)
    for i in range(16):
        for k in range(64):
            c = dm[i, k]
            for j in range(64):
                t[i, j] += c * a[k, j]
    b = np.empty((16, 16), np.float32)
    for i in range(16):
        for j in range(16):
            s = np.float32(0.0)
            for k in range(64):
                s += t[i, k] * dm[j, k]
            b[i, j] = s
    return b


@njit(cache=True, nogil=True, error_model="numpy")
def torben(m):
    """Torben Mogensen's median, as the reference computes it (ties included)."""
    n = m.shape[0]
    mn = m[0]
    mx = m[0]
    for i in range(1, n):
        if m[i] < mn:
            mn = m[i]
        if m[i] > mx:
            mx = m[i]
    half = (n + 1) // 2
    while True:
        guess = (mn + mx) / np.float32(2.0)
        less = 0
        greater = 0
        equal = 0
        maxlt = mn
        mingt = mx
        for i in range(n):
            v = m[i]
            if v < guess:
                less += 1
                if v > maxlt:
                    maxlt = v
            elif v > guess:
                greater += 1
                if v < mingt:
                    mingt = v
            else:
                equal += 1
        if less <= half and greater <= half:
            break
        elif less > greater:
            mx = maxlt
        else:
            mn = mingt
    if less >= half:
        return maxlt
    elif less + equal >= half:
        return guess
    return mingt


@njit(cache=True, nogil=True, error_model="numpy")
def bits_from_dct(b):
    """Bit k = i*16+j set when B[i,j] > median, packed in the reference hex order."""
    flat = b.ravel()
    med = torben(flat)
    code = np.zeros(32, np.uint8)
    for k in range(256):
        if flat[k] > med:
            code[31 - (k >> 3)] |= np.uint8(1 << (k & 7))
    return code


@njit(cache=True, nogil=True, error_model="numpy")
def _column_pass4(b3, add, sub, out, div_c, row_samples):
    """Column pass 4 on the 64 sampled columns, keeping the 64 sampled rows."""
    nrows = b3.shape[0]
    full = np.empty((nrows, 64), np.float32)
    acc = np.zeros(64, np.float32)
    for e in range(add.shape[0]):
        a = add[e]
        if a >= 0:
            for j in range(64):
                acc[j] += b3[a, j]
        s = sub[e]
        if s >= 0:
            for j in range(64):
                acc[j] -= b3[s, j]
        o = out[e]
        if o >= 0:
            d = div_c[o]
            for j in range(64):
                full[o, j] = acc[j] / d
    result = np.empty((64, 64), np.float32)
    for i in range(64):
        for j in range(64):
            result[i, j] = full[row_samples[i], j]
    return result
