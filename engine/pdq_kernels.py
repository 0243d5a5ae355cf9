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
* column passes keep one running sum per column and walk down the rows (each
  column's sum still sees the reference sequence). Pass 2 goes 32 columns at a time
  through a block of 16 output rows, its sums held in four 8-float registers, and its
  outputs go from an L1 tile straight into row pass 3's lanes (_column_block); its
  divisions are an FMA-corrected multiply by the float32 reciprocal, checked equal to
  float32 division for every dividend (_v8_div_fma, FMA_DIVISOR_MAX);
* row passes run 16 rows at once as the lanes of two 8-float LLVM vectors: a block of
  rows is transposed in 8x8 register tiles (pure data movement) so that each column
  step is one vector add and one vector subtract per 8 rows, each lane seeing the
  reference sequence; pass 1's outputs are divided in the same loop and, 8 columns
  at a time, transposed back into rows for the column pass; pass 3 only divides and
  keeps the 64 sampled columns. (numba alone would not do this: with scalar code the
  lane sums stay in scalar registers or memory, so the vector type and the tile
  transpose are numba intrinsics emitting plain LLVM vector IR, portable to any
  target LLVM knows);
* luma is ``float32(299R + 587G + 114B) / 1000``: the weighted sum of integers is
  exact, and one correctly rounded float32 division of it equals the bindings' float64
  ``R*0.299 + G*0.587 + B*0.114`` for every one of the 2**24 colours (the test checks
  all of them). On x86-64 the integer sum is SSE2 ``pmaddwd`` on byte pairs, and luma
  goes from the RGB bytes straight into the row passes' lane layout, 8x8 pixels at a
  time (the image is never held as a float copy);
* ``error_model="numpy"`` drops numba's divide-by-zero branch (it blocked SIMD) and
  ``nogil=True`` lets callers hash images on several threads at once.

numba never contracts a*b+c into an FMA without ``fastmath``, so float32 products and
sums round exactly as the reference's separate multiply and add.

At 1920x1080 (2-core AMD EPYC "Naples", AVX2 split into 128-bit halves) the time
splits roughly into luma into lanes ~1.4 ms, row pass 1 ~1.0 ms (0.45 ms the running
sums, the rest its division: the float32 divider is the limit), back into rows ~0.4 ms,
column pass 2 ~0.7 ms, rows into lanes again ~0.45 ms and row pass 3 ~0.45 ms.
Pass 1's way back into rows now goes through an 8-column tile as it runs (see
_row_pass_rows). The same for pass 3's way into lanes (a ring of lane tiles filled as
the pass reaches them) was ~3x slower: not kept.

Tried and not kept: 4 or 8 interleaved scalar running-sum chains per row pass
(latency-bound at ~0.7 ns per element, ~1.5 ms per pass at 1920x1080, plus ~0.9 ms
for a separate division loop); rows as lanes written as plain numba code (not
vectorised, see above); pass 1's division as a float64 reciprocal multiply (exact, see
_recips, but the conversions cost what the divider does on this CPU); luma computed
in lanes with float32 arithmetic (no faster than a row loop plus a transpose: the
float path, not memory, was the cost); luma's division by 1000 and pass 1's division
as _v8_div_fma's FMA-corrected multiply (exact for every key and mantissa, but no
faster in an interleaved A/B against these kernels, 2026-12-07: 1080p 2.65 -> 2.77 and
1.93 -> 2.02 ms, so the divider is not what bounds pass 1 after all; commit 87e8b99
has the code and its tests).
"""

from __future__ import annotations

import math
import platform

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic, models, register_model

LANES = 16  # rows per block of the row passes: two 8-lane vector chains
#: Largest window length whose FMA-corrected division (_v8_div_fma) equals float32
#: division for every float32 dividend: tests/test_pdq.py checks every mantissa
#: against every divisor up to it (the result scales exactly with powers of two).
FMA_DIVISOR_MAX = 255

# --- 8-lane float32 vectors for numba ---------------------------------------------
# numba does not vectorise a running sum across rows on its own (the lane sums end up
# in memory, or in scalar registers), so the row passes use LLVM vectors directly:
# each lane is an ordinary IEEE float32 add / subtract / divide, the same operation on
# the same operands as the reference's scalar code, just eight rows at a time.

_VEC = ir.VectorType(ir.FloatType(), 8)
_X86 = platform.machine().lower() in ("x86_64", "amd64")
_I32 = ir.IntType(32)


class _F32x8(types.Type):
    def __init__(self) -> None:
        super().__init__(name="F32x8")


_f32x8 = _F32x8()


@register_model(_F32x8)
class _F32x8Model(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _VEC)


def _vec_ptr(context, builder, arrty, arr, idx):
    data = context.make_array(arrty)(context, builder, arr).data
    return builder.bitcast(builder.gep(data, [idx]), _VEC.as_pointer())


@intrinsic
def _v8_load(typingctx, arr, idx):
    """arr[idx : idx + 8] of a contiguous 1-D float32 array (no bounds check)."""

    def codegen(context, builder, sig, args):
        return builder.load(_vec_ptr(context, builder, sig.args[0], *args), align=4)

    return _f32x8(arr, idx), codegen


@intrinsic
def _v8_store(typingctx, arr, idx, v):
    """arr[idx : idx + 8] = v (no bounds check)."""

    def codegen(context, builder, sig, args):
        builder.store(args[2], _vec_ptr(context, builder, sig.args[0], args[0], args[1]), align=4)
        return context.get_dummy_value()

    return types.void(arr, idx, v), codegen


@intrinsic
def _v8_zero(typingctx):
    def codegen(context, builder, sig, args):
        return ir.Constant(_VEC, [0.0] * 8)

    return _f32x8(), codegen


def _v8_binop(name):
    @intrinsic
    def op(typingctx, a, b):
        def codegen(context, builder, sig, args):
            return getattr(builder, name)(args[0], args[1])

        return _f32x8(a, b), codegen

    return op


_v8_add = _v8_binop("fadd")
_v8_sub = _v8_binop("fsub")
_v8_div = _v8_binop("fdiv")


@intrinsic
def _v8_scale64(typingctx, v, r):
    """float32(float64(v) * r) lane by lane: numba's ``np.float32(v * r)`` for a float32
    ``v`` and a float64 ``r`` (see _recips), eight columns at a time."""

    def codegen(context, builder, sig, args):
        f64x8 = ir.VectorType(ir.DoubleType(), 8)
        wide = builder.fpext(args[0], f64x8)
        rv = builder.insert_element(ir.Constant(f64x8, ir.Undefined), args[1], ir.Constant(_I32, 0))
        rv = builder.shuffle_vector(rv, rv, ir.Constant(ir.VectorType(_I32, 8), [0] * 8))
        return builder.fptrunc(builder.fmul(wide, rv), _VEC)

    return _f32x8(v, r), codegen


@intrinsic
def _v8_div_fma(typingctx, x, y, d):
    """``x / d`` lane by lane via ``y`` = float32(1/d): q = x*y, then one FMA-corrected
    step q + (x - q*d)*y (Markstein). It equals float32 division whenever the residual
    x - q*d is exact and the step rounds like x/d: not a theorem for every d (q can be
    more than one ulp off), so only divisors checked against every float32 mantissa use
    it (FMA_DIVISOR_MAX). Like _recips it needs normal quotients and residuals: column
    pass 2's nonzero sums are at least 2**-82. Why: three FMA-unit operations instead
    of float64 conversions (or the divider): column pass 2 ~0.2 ms faster at 1080p."""

    def codegen(context, builder, sig, args):
        x, y, d = args
        fma = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(_VEC, [_VEC] * 3), "llvm.fma.v8f32"
        )
        zeros = ir.Constant(ir.VectorType(_I32, 8), [0] * 8)

        def splat(f):
            v = builder.insert_element(ir.Constant(_VEC, ir.Undefined), f, ir.Constant(_I32, 0))
            return builder.shuffle_vector(v, v, zeros)

        yv = splat(y)
        q = builder.fmul(x, yv)
        rem = builder.call(fma, [builder.fneg(q), splat(d), x])
        return builder.call(fma, [rem, yv, q])

    return _f32x8(x, y, d), codegen


@intrinsic
def _v8_splat(typingctx, x):
    def codegen(context, builder, sig, args):
        v = builder.insert_element(ir.Constant(_VEC, ir.Undefined), args[0], ir.Constant(_I32, 0))
        return builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(_I32, 8), [0] * 8))

    return _f32x8(x), codegen


def _shuffle(builder, a, b, lanes):
    return builder.shuffle_vector(a, b, ir.Constant(ir.VectorType(_I32, 8), lanes))


def _at(builder, off, stride, i):
    return builder.add(off, builder.mul(stride, ir.Constant(stride.type, i)))


def _store_columns(context, builder, dstty, dst, d_off, d_stride, halves):
    """Codegen: store the 8 columns of an 8x8 tile, column j at ``d_off + j*d_stride``.

    ``halves[h][i]`` holds columns 4h..4h+3 of row i (4 floats). Rows i and i + 4 are
    paired in one register (low / high 128 bits), so every shuffle stays within
    128-bit halves (cross-half shuffles are slow on AVX2): two 4x4 transposes.
    """
    concat = ir.Constant(ir.VectorType(_I32, 8), list(range(8)))
    out = []
    for h in range(2):
        q = [builder.shuffle_vector(halves[h][i], halves[h][i + 4], concat) for i in range(4)]
        t0 = _shuffle(builder, q[0], q[1], [0, 8, 1, 9, 4, 12, 5, 13])
        t1 = _shuffle(builder, q[0], q[1], [2, 10, 3, 11, 6, 14, 7, 15])
        t2 = _shuffle(builder, q[2], q[3], [0, 8, 1, 9, 4, 12, 5, 13])
        t3 = _shuffle(builder, q[2], q[3], [2, 10, 3, 11, 6, 14, 7, 15])
        out.append(_shuffle(builder, t0, t2, [0, 1, 8, 9, 4, 5, 12, 13]))
        out.append(_shuffle(builder, t0, t2, [2, 3, 10, 11, 6, 7, 14, 15]))
        out.append(_shuffle(builder, t1, t3, [0, 1, 8, 9, 4, 5, 12, 13]))
        out.append(_shuffle(builder, t1, t3, [2, 3, 10, 11, 6, 7, 14, 15]))
    for j in range(8):
        ptr = _vec_ptr(context, builder, dstty, dst, _at(builder, d_off, d_stride, j))
        builder.store(out[j], ptr, align=4)


@intrinsic
def _transpose8(typingctx, src, s_off, s_stride, dst, d_off, d_stride):
    """dst[d_off + j*d_stride + i] = src[s_off + i*s_stride + j] for i, j < 8.

    An 8x8 float32 tile transposed in registers, so rows can become vector lanes and
    back. Pure data movement: no value changes.
    """

    def codegen(context, builder, sig, args):
        src, s_off, s_stride, dst, d_off, d_stride = args
        data = context.make_array(sig.args[0])(context, builder, src).data
        half = ir.VectorType(ir.FloatType(), 4).as_pointer()

        def load4(i, offset):
            idx = builder.add(_at(builder, s_off, s_stride, i), ir.Constant(s_off.type, offset))
            return builder.load(builder.bitcast(builder.gep(data, [idx]), half), align=4)

        halves = [[load4(i, offset) for i in range(8)] for offset in (0, 4)]
        _store_columns(context, builder, sig.args[3], dst, d_off, d_stride, halves)
        return context.get_dummy_value()

    return types.void(src, s_off, s_stride, dst, d_off, d_stride), codegen


@njit(cache=True, nogil=True, error_model="numpy")
def _luma_to_lanes(rgb, first, xt):
    """Luma of the 16 image rows from ``first`` into the row passes' lane layout,
    ``xt[c*16 + lane]`` = row ``lane`` at column c (rows past the image repeat its last
    row; their lanes are never used)."""
    nrows, ncols = rgb.shape[0], rgb.shape[1]
    stride = ncols * 3
    src = rgb.reshape(nrows * stride)
    full = 0  # columns done 8x8 tiles at a time (16-byte loads stay in the row)
    if first + LANES <= nrows:
        full = max(0, (ncols - 2) // 8 * 8)
        base = first * stride
        for c in range(0, full, 8):
            _luma_lanes8(src, base + 3 * c, stride, xt, c * LANES, LANES)
            _luma_lanes8(src, base + 8 * stride + 3 * c, stride, xt, c * LANES + 8, LANES)
    tail = np.empty(ncols - full, np.float32)
    for g in range(LANES):
        row = min(first + g, nrows - 1) * stride
        _luma_row_generic(src[row + 3 * full : row + stride], tail)
        for c in range(full, ncols):
            xt[c * LANES + g] = tail[c - full]


@intrinsic
def _grey_lanes8(typingctx, src, s_off, s_stride, dst, d_off, d_stride):
    """An 8x8 tile of a luma plane (bytes) as float32 straight into lanes:
    ``dst[d_off + j*d_stride + i]`` = pixel j of row i, row i at ``src[s_off + i*s_stride]``
    (as _luma_lanes8, without the weighted sum)."""

    def codegen(context, builder, sig, args):
        src, s_off, s_stride, dst, d_off, d_stride = args
        sdata = context.make_array(sig.args[0])(context, builder, src).data
        b4 = ir.VectorType(ir.IntType(8), 4)
        f32x4 = ir.VectorType(ir.FloatType(), 4)
        halves = [[], []]
        for i in range(8):
            row = _at(builder, s_off, s_stride, i)
            for h in range(2):
                at = builder.add(row, ir.Constant(row.type, 4 * h))
                px = builder.load(
                    builder.bitcast(builder.gep(sdata, [at]), b4.as_pointer()), align=1
                )
                halves[h].append(builder.uitofp(px, f32x4))
        _store_columns(context, builder, sig.args[3], dst, d_off, d_stride, halves)
        return context.get_dummy_value()

    return types.void(src, s_off, s_stride, dst, d_off, d_stride), codegen


@njit(cache=True, nogil=True, error_model="numpy")
def _grey_to_lanes(grey, first, xt):
    """:func:`_luma_to_lanes` for a luma plane ``uint8[h, w]``: its bytes as float32.

    Exact: the luma of R = G = B = x is ``float32(1000 x) / 1000`` = x, so these lanes
    hold the very floats :func:`_luma_to_lanes` computes from the grey picture repeated
    to RGB (tests/test_pdq.py checks all 256 values and whole hashes), without the
    three-channel copy and the weighted sums.
    """
    nrows, ncols = grey.shape[0], grey.shape[1]
    src = grey.reshape(nrows * ncols)
    full = 0
    if first + LANES <= nrows:
        full = ncols // 8 * 8
        base = first * ncols
        for c in range(0, full, 8):
            _grey_lanes8(src, base + c, ncols, xt, c * LANES, LANES)
            _grey_lanes8(src, base + 8 * ncols + c, ncols, xt, c * LANES + 8, LANES)
    for g in range(LANES):
        row = min(first + g, nrows - 1) * ncols
        for c in range(full, ncols):
            xt[c * LANES + g] = np.float32(src[row + c])


@njit(cache=True, nogil=True, error_model="numpy")
def _grey_full(grey, out):
    """:func:`_luma_full` for a luma plane (see :func:`_grey_to_lanes`)."""
    for i in range(grey.shape[0]):
        for j in range(grey.shape[1]):
            out[i, j] = np.float32(grey[i, j])


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _row_out(a, b, yt, dst, d):
    if dst >= 0:
        dv = _v8_splat(d)
        _v8_store(yt, dst * LANES, _v8_div(a, dv))
        _v8_store(yt, dst * LANES + 8, _v8_div(b, dv))


@njit(cache=True, nogil=True, error_model="numpy")
def _row_pass(xt, yt, n, w, div, keep):
    """Reference ``box1DFloat`` along 16 rows at once (rows are lanes, see _luma_to_lanes).

    Every lane sees exactly the reference sequence: add the entering sample, subtract
    the leaving one, divide by the window length in effect. Output k is written (to
    ``yt[keep[k]*16 ...]``) only where ``keep[k] >= 0``: row pass 3 keeps 64 columns.
    """
    half = (w + 2) // 2
    a = _v8_zero()
    b = _v8_zero()
    ri = 0
    for _ in range(half - 1):
        a = _v8_add(a, _v8_load(xt, ri * LANES))
        b = _v8_add(b, _v8_load(xt, ri * LANES + 8))
        ri += 1
    oi = 0
    for _ in range(w - half + 1):
        a = _v8_add(a, _v8_load(xt, ri * LANES))
        b = _v8_add(b, _v8_load(xt, ri * LANES + 8))
        _row_out(a, b, yt, keep[oi], div[oi])
        ri += 1
        oi += 1
    li = 0
    for _ in range(n - w):
        a = _v8_sub(_v8_add(a, _v8_load(xt, ri * LANES)), _v8_load(xt, li * LANES))
        b = _v8_sub(_v8_add(b, _v8_load(xt, ri * LANES + 8)), _v8_load(xt, li * LANES + 8))
        _row_out(a, b, yt, keep[oi], div[oi])
        ri += 1
        li += 1
        oi += 1
    for _ in range(half - 1):
        a = _v8_sub(a, _v8_load(xt, li * LANES))
        b = _v8_sub(b, _v8_load(xt, li * LANES + 8))
        _row_out(a, b, yt, keep[oi], div[oi])
        li += 1
        oi += 1


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _row_out_rows(a, b, tile, o, d, rows, wp):
    """_row_out for row pass 1, straight back into rows: output ``o`` goes to slot
    ``o % 8`` of an 8-column tile (L1-sized), and every 8 outputs the tile is
    transposed into columns ``o - 7 .. o`` of the 16 rows. Same values, same divisions;
    only where they are stored changes."""
    dv = _v8_splat(d)
    slot = (o & 7) * LANES
    _v8_store(tile, slot, _v8_div(a, dv))
    _v8_store(tile, slot + 8, _v8_div(b, dv))
    if (o & 7) == 7:
        c = o - 7
        _transpose8(tile, 0, LANES, rows, c, wp)
        _transpose8(tile, 8, LANES, rows, 8 * wp + c, wp)


@njit(cache=True, nogil=True, error_model="numpy")
def _row_pass_rows(xt, tile, n, w, div, rows, wp):
    """Row pass 1: :func:`_row_pass` with every output kept, written back into 16 rows
    of ``wp`` floats (``rows``, flat) as it goes.

    Why: writing all outputs in lanes and transposing the whole block back afterwards
    sent 16 x ``wp`` floats out to L2 and back (123 kB at 1920 wide); through an
    8-column tile the same transposes stay in L1: PDQ ~0.2-0.3 ms faster at 1080p
    (2.1-2.3 -> 1.9-2.1 ms, the scan's path).
    """
    half = (w + 2) // 2
    a = _v8_zero()
    b = _v8_zero()
    ri = 0
    for _ in range(half - 1):
        a = _v8_add(a, _v8_load(xt, ri * LANES))
        b = _v8_add(b, _v8_load(xt, ri * LANES + 8))
        ri += 1
    oi = 0
    for _ in range(w - half + 1):
        a = _v8_add(a, _v8_load(xt, ri * LANES))
        b = _v8_add(b, _v8_load(xt, ri * LANES + 8))
        _row_out_rows(a, b, tile, oi, div[oi], rows, wp)
        ri += 1
        oi += 1
    li = 0
    for _ in range(n - w):
        a = _v8_sub(_v8_add(a, _v8_load(xt, ri * LANES)), _v8_load(xt, li * LANES))
        b = _v8_sub(_v8_add(b, _v8_load(xt, ri * LANES + 8)), _v8_load(xt, li * LANES + 8))
        _row_out_rows(a, b, tile, oi, div[oi], rows, wp)
        ri += 1
        li += 1
        oi += 1
    for _ in range(half - 1):
        a = _v8_sub(a, _v8_load(xt, li * LANES))
        b = _v8_sub(b, _v8_load(xt, li * LANES + 8))
        _row_out_rows(a, b, tile, oi, div[oi], rows, wp)
        li += 1
        oi += 1
    if n & 7:  # the last, partial tile (its spare columns land in the row padding)
        c = n - (n & 7)
        _transpose8(tile, 0, LANES, rows, c, wp)
        _transpose8(tile, 8, LANES, rows, 8 * wp + c, wp)


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
def _recips(div):
    """float64 reciprocals of the window lengths: ``float32(float64(x) * r)`` is ``x / d``.

    Why exact: for float32 x and an integer d < 2**26, x / d is never a float32 rounding
    midpoint (d * midpoint has at least 25 significant bits, x at most 24) and lies at
    least 2**-25 / d (relative) away from one, while ``x * float64(1/d)`` in float64 is
    within 2**-52 of x / d: both round to the same float32. It needs a normal quotient:
    true for column pass 2 (its sums are multiples of 2**-82: pass-1 outputs of sums of
    luma values of at least 0.001), the one place it is used: there it saved ~10% of the
    pass (0.8 -> 0.72 ms at 1080p); in the vector row passes it gained nothing. Column
    pass 2 now divides by _v8_div_fma and uses these only for windows over
    FMA_DIVISOR_MAX (images over 32640 rows).
    """
    r = np.empty(div.shape[0], np.float64)
    for k in range(div.shape[0]):
        r[k] = 1.0 / np.float64(div[k])
    return r


@njit(cache=True, nogil=True, error_model="numpy")
def _luma_row_generic(row, out):
    """float32(R*0.299 + G*0.587 + B*0.114) in float64, as the pdqhash bindings do.

    Computed as ``float32(299R + 587G + 114B) / float32(1000)``: the integer weighted
    sum is exact in float32 lanes (every intermediate is an integer below 2**24), and
    one correctly rounded float32 division of it gives, for all 2**24 RGB triples, the
    bindings' float64 formula (checked exhaustively by tests/test_pdq.py): key / 1000 is
    never a float32 rounding midpoint, so the float64 detour cannot round differently.
    All in 8 float32 lanes (faster than the float64 multiply and its conversions).
    """
    c0 = np.float32(299.0)
    c1 = np.float32(587.0)
    c2 = np.float32(114.0)
    thousand = np.float32(1000.0)
    for k in range(out.shape[0]):
        key = (np.float32(row[3 * k]) * c0 + np.float32(row[3 * k + 1]) * c1) + np.float32(
            row[3 * k + 2]
        ) * c2
        out[k] = key / thousand


def _luma4(context, builder, sdata, at):
    """Codegen: <4 x float> luma of the 4 RGB pixels at byte ``at`` (reads 16 bytes).

    On x86-64 the integer key 299R + 587G + 114B comes from SSE2 ``pmaddwd`` on byte
    pairs shuffled to 16 bits ((R, G) . (299, 587) + (B, 0) . (114, 0), exact in int32):
    about half the instructions of the float path. Then the same float32 conversion
    and division by 1000 as _luma_row_generic. Other CPUs get the float32 key (also
    exact), so the values are the same everywhere.
    """
    b16 = ir.VectorType(ir.IntType(8), 16)
    i16x8 = ir.VectorType(ir.IntType(16), 8)
    i32x4 = ir.VectorType(_I32, 4)
    f32x4 = ir.VectorType(ir.FloatType(), 4)
    zero = ir.Constant(b16, [0] * 16)
    px = builder.load(builder.bitcast(builder.gep(sdata, [at]), b16.as_pointer()), align=1)
    if _X86:
        fnty = ir.FunctionType(i32x4, [i16x8, i16x8])
        pmadd = cgutils.get_or_insert_function(builder.module, fnty, "llvm.x86.sse2.pmadd.wd")
        rg_mask = [i for j in range(4) for i in (3 * j, 16, 3 * j + 1, 16)]
        b_mask = [i for j in range(4) for i in (3 * j + 2, 16, 16, 16)]
        rg = builder.shuffle_vector(px, zero, ir.Constant(ir.VectorType(_I32, 16), rg_mask))
        b = builder.shuffle_vector(px, zero, ir.Constant(ir.VectorType(_I32, 16), b_mask))
        key = builder.sitofp(
            builder.add(
                builder.call(
                    pmadd, [builder.bitcast(rg, i16x8), ir.Constant(i16x8, [299, 587] * 4)]
                ),
                builder.call(pmadd, [builder.bitcast(b, i16x8), ir.Constant(i16x8, [114, 0] * 4)]),
            ),
            f32x4,
        )
    else:
        chan = []
        for c, w in enumerate((299.0, 587.0, 114.0)):
            mask = ir.Constant(ir.VectorType(_I32, 4), [3 * j + c for j in range(4)])
            v = builder.uitofp(builder.shuffle_vector(px, zero, mask), f32x4)
            chan.append(builder.fmul(v, ir.Constant(f32x4, [w] * 4)))
        key = builder.fadd(builder.fadd(chan[0], chan[1]), chan[2])
    return builder.fdiv(key, ir.Constant(f32x4, [1000.0] * 4))


@intrinsic
def _luma8(typingctx, src, s_off, dst, d_off):
    """dst[d_off : d_off + 8] = luma of the 8 RGB pixels at src[s_off : s_off + 24]
    (see _luma4; reads 4 bytes past the 8th pixel)."""

    def codegen(context, builder, sig, args):
        src, s_off, dst, d_off = args
        sdata = context.make_array(sig.args[0])(context, builder, src).data
        ddata = context.make_array(sig.args[2])(context, builder, dst).data
        f32x4 = ir.VectorType(ir.FloatType(), 4)
        for h in range(2):  # pixels 0-3 from bytes 0-11, pixels 4-7 from bytes 12-23
            at = builder.add(s_off, ir.Constant(s_off.type, 12 * h))
            luma = _luma4(context, builder, sdata, at)
            to = builder.add(d_off, ir.Constant(d_off.type, 4 * h))
            ptr = builder.bitcast(builder.gep(ddata, [to]), f32x4.as_pointer())
            builder.store(luma, ptr, align=4)
        return context.get_dummy_value()

    return types.void(src, s_off, dst, d_off), codegen


@intrinsic
def _luma_lanes8(typingctx, src, s_off, s_stride, dst, d_off, d_stride):
    """Luma of an 8x8 pixel tile straight into lanes: ``dst[d_off + j*d_stride + i]``
    = luma of pixel j of row i, row i's RGB bytes at ``src[s_off + i*s_stride]``.

    The 4-pixel halves of rows i and i + 4 share a register, then two in-lane 4x4
    transposes (see _transpose8): luma and the transpose into the row passes' lane
    layout without a trip through memory.
    """

    def codegen(context, builder, sig, args):
        src, s_off, s_stride, dst, d_off, d_stride = args
        sdata = context.make_array(sig.args[0])(context, builder, src).data
        halves = [[], []]
        for i in range(8):
            row = _at(builder, s_off, s_stride, i)
            for h in range(2):
                at = builder.add(row, ir.Constant(row.type, 12 * h))
                halves[h].append(_luma4(context, builder, sdata, at))
        _store_columns(context, builder, sig.args[3], dst, d_off, d_stride, halves)
        return context.get_dummy_value()

    return types.void(src, s_off, s_stride, dst, d_off, d_stride), codegen


@njit(cache=True, nogil=True, error_model="numpy")
def _luma_row_simd(row, out):
    """_luma_row_generic, 8 pixels at a time with _luma8 (the last ones one by one)."""
    n = out.shape[0]
    k = 0
    while 3 * k + 28 <= 3 * n:  # the 16-byte loads must stay inside the row
        _luma8(row, 3 * k, out, k)
        k += 8
    if k < n:
        _luma_row_generic(row[3 * k :], out[k:])


@njit(cache=True, nogil=True, error_model="numpy")
def _luma_full(rgb, out):
    nrows, ncols = rgb.shape[0], rgb.shape[1]
    flat = rgb.reshape(nrows, ncols * 3)
    for i in range(nrows):
        _luma_row_simd(flat[i], out[i])


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


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _col_div(acc, fma, r, y, d):
    if fma:
        return _v8_div_fma(acc, y, d)
    return _v8_scale64(acc, r)


@njit(cache=True, nogil=True, error_model="numpy")
def _column_block(b1f, wp, colsum, aoff, soff, orow, rec, ne, tile, xt, y32, d32, fma):
    """Column pass 2 for ``ne`` events of its schedule, straight into row pass 3's lanes.

    Event k adds the pass-1 row at ``b1f[aoff[k]:]`` (when ``aoff[k] >= 0``), subtracts
    the one at ``soff[k]`` and, when ``orow[k] >= 0``, writes the running sums times
    ``rec[k]`` (float64 1/d, see _recips), or divided by ``d32[k]`` through its float32
    reciprocal ``y32[k]`` when ``fma`` (see _v8_div_fma: both give x / d exactly), as
    output row ``orow[k]`` (0..15) of the block. Columns go 32 at a time,
    as four 8-float running sums held in registers for all ``ne`` events (four
    independent add/subtract chains: one alone waits on its own latency). Every column
    still sees the reference's add, subtract, divide sequence. The block's 16 output
    rows go from an L1 tile into ``xt``'s lanes by 8x8 transposes. Why: the
    event-by-event loop over whole rows loaded and stored the running sums at every
    event and wrote 16 output rows that a separate pass transposed into lanes.
    """
    c = 0
    while c < wp:
        if c + 32 <= wp:
            n = 4
            a0 = _v8_load(colsum, c)
            a1 = _v8_load(colsum, c + 8)
            a2 = _v8_load(colsum, c + 16)
            a3 = _v8_load(colsum, c + 24)
            for k in range(ne):
                at = aoff[k]
                if at >= 0:
                    at += c
                    a0 = _v8_add(a0, _v8_load(b1f, at))
                    a1 = _v8_add(a1, _v8_load(b1f, at + 8))
                    a2 = _v8_add(a2, _v8_load(b1f, at + 16))
                    a3 = _v8_add(a3, _v8_load(b1f, at + 24))
                st = soff[k]
                if st >= 0:
                    st += c
                    a0 = _v8_sub(a0, _v8_load(b1f, st))
                    a1 = _v8_sub(a1, _v8_load(b1f, st + 8))
                    a2 = _v8_sub(a2, _v8_load(b1f, st + 16))
                    a3 = _v8_sub(a3, _v8_load(b1f, st + 24))
                g = orow[k]
                if g >= 0:
                    r, y, d = rec[k], y32[k], d32[k]
                    _v8_store(tile, g * 8, _col_div(a0, fma, r, y, d))
                    _v8_store(tile, 128 + g * 8, _col_div(a1, fma, r, y, d))
                    _v8_store(tile, 256 + g * 8, _col_div(a2, fma, r, y, d))
                    _v8_store(tile, 384 + g * 8, _col_div(a3, fma, r, y, d))
            _v8_store(colsum, c, a0)
            _v8_store(colsum, c + 8, a1)
            _v8_store(colsum, c + 16, a2)
            _v8_store(colsum, c + 24, a3)
        else:
            n = 1
            a0 = _v8_load(colsum, c)
            for k in range(ne):
                if aoff[k] >= 0:
                    a0 = _v8_add(a0, _v8_load(b1f, aoff[k] + c))
                if soff[k] >= 0:
                    a0 = _v8_sub(a0, _v8_load(b1f, soff[k] + c))
                if orow[k] >= 0:
                    _v8_store(tile, orow[k] * 8, _col_div(a0, fma, rec[k], y32[k], d32[k]))
            _v8_store(colsum, c, a0)
        for t in range(n):
            _transpose8(tile, 128 * t, 8, xt, (c + 8 * t) * LANES, LANES)
            _transpose8(tile, 128 * t + 64, 8, xt, (c + 8 * t) * LANES + 8, LANES)
        c += 8 * n


@njit(cache=True, nogil=True, error_model="numpy")
def downsample64(rgb, wr, wc, col_samples, row_samples):
    """Luma + the reference 2x(rows, columns) box filters + 64x64 decimation.

    ``rgb``: ``uint8[h, w, 3]``, or a luma plane ``uint8[h, w]`` (its values are the
    luma; numba compiles one version per input dimension).
    """
    nrows, ncols = rgb.shape[0], rgb.shape[1]
    wp = (ncols + 7) // 8 * 8  # rows padded to whole 8x8 tiles
    div_r = box_divisors(ncols, wr)
    div_c = box_divisors(nrows, wc)
    add, sub, out = _column_schedule(nrows, wc)
    rec_c = _recips(div_c)
    keep64 = np.full(ncols, -1, np.int64)
    for j in range(64):
        keep64[col_samples[j]] = col_samples[j]

    # Ring of pass-1 rows. A block of 16 pass-2 outputs needs the rows from its first
    # subtracted one to its last added one (wc + 16 apart; the first block adds half - 1
    # more before its first output), and pass-1 rows arrive LANES at a time, landing on
    # consecutive ring rows: whole blocks, at least that span + LANES - 1.
    half = (wc + 2) // 2
    ring = (max(wc, half - 1) + 2 * LANES + LANES - 1) // LANES * LANES
    b1f = np.zeros(ring * wp, np.float32)
    xt = np.zeros(wp * LANES, np.float32)
    yt = np.zeros(wp * LANES, np.float32)
    tile = np.zeros(32 * LANES, np.float32)
    colsum = np.zeros(wp, np.float32)
    nev_max = LANES + half
    aoff = np.empty(nev_max, np.int64)
    soff = np.empty(nev_max, np.int64)
    orow = np.empty(nev_max, np.int64)
    rec = np.empty(nev_max, np.float64)
    y32 = np.empty(nev_max, np.float32)
    d32 = np.empty(nev_max, np.float32)
    fma = wc <= FMA_DIVISOR_MAX  # every column divisor is at most wc
    b3 = np.empty((nrows, 64), np.float32)
    done = 0  # pass-1 rows computed
    e = 0  # next event of the column schedule
    o0 = 0  # first output row of the block
    while o0 < nrows:
        o1 = min(o0 + LANES, nrows)
        e_end = o1 + half - 1  # events before it output rows < o1
        ne = e_end - e
        amax = -1
        for k in range(ne):
            a = add[e + k]
            s = sub[e + k]
            o = out[e + k]
            amax = max(amax, a)
            aoff[k] = (a % ring) * wp if a >= 0 else -1
            soff[k] = (s % ring) * wp if s >= 0 else -1
            orow[k] = o - o0 if o >= 0 else -1
            rec[k] = rec_c[max(o, 0)]
            d32[k] = div_c[max(o, 0)]
            y32[k] = np.float32(1.0) / d32[k]
        while done <= amax:
            rows = min(LANES, nrows - done)
            if rgb.ndim == 3:
                _luma_to_lanes(rgb, done, xt)
            else:
                _grey_to_lanes(rgb, done, xt)
            base = (done % ring) * wp
            _row_pass_rows(xt, tile, ncols, wr, div_r, b1f[base : base + LANES * wp], wp)
            done += rows
        _column_block(b1f, wp, colsum, aoff, soff, orow, rec, ne, tile, xt, y32, d32, fma)
        _row_pass(xt, yt, ncols, wr, div_r, keep64)
        for g in range(o1 - o0):
            dst = b3[o0 + g]
            for j in range(64):
                dst[j] = yt[col_samples[j] * LANES + g]
        e = e_end
        o0 = o1

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
