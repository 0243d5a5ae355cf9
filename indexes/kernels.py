"""Compiled (numba) inner loops of the Hamming indexes.

Why numba: the per-candidate work of an exact index (pull a substring key, walk a
bucket, popcount a few words) is a handful of instructions; in numpy each step is
a separate pass with call overhead that dominates at PDQ radii. Every kernel is
``nogil=True`` so the shard thread pool runs them in parallel, and
``cache=True`` so the compiled code is written next to this file and reused by
later processes (CI and the server pay the JIT once, not per run).

Codes arrive here as native ``uint64`` words (``words[n, W]``): Hamming distance
does not care about byte order, and MIH substrings may be any disjoint cover of
the bits, so substring ``i`` is simply bits ``[start, start + width)`` of the
concatenated words (little-end bit numbering within each word).
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

_ONE = np.uint64(1)


@intrinsic
def popcount64(typingctx, x):
    """The POPCNT instruction (llvm.ctpop); numba has no popcount of its own and
    the bit-twiddling version is not pattern-matched to it (measured 5-10x slower)."""
    sig = types.int64(types.uint64)

    def codegen(context, builder, signature, args):
        return builder.zext(builder.ctpop(args[0]), context.get_value_type(types.int64))

    return sig, codegen


@intrinsic
def prefetch(typingctx, arr, i):
    """Hint the cache to fetch ``arr[i]`` (row i of a 2-D array): LLVM's prefetch.

    Why: MIH at 10M codes is a stream of independent cache misses (offsets, row
    lists, codes); a prefetch retires at once, so a loop can start many misses
    before it needs the first, instead of the few the reorder window allows."""
    sig = types.void(arr, i)

    def codegen(context, builder, signature, args):
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        idx = [context.cast(builder, args[1], signature.args[1], types.intp)]
        idx += [context.get_constant(types.intp, 0)] * (aryty.ndim - 1)
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, idx, wraparound=False)
        i8p = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0i8")
        builder.call(fn, [builder.bitcast(ptr, i8p), i32(0), i32(3), i32(1)])
        return context.get_dummy_value()

    return sig, codegen


@njit(inline="always")
def _dist(q, c, i):
    d = 0
    for w in range(q.shape[0]):
        d += popcount64(q[w] ^ c[i, w])
    return d


@njit(inline="always")
def _grow(a, size):
    out = np.empty(max(2 * a.shape[0], size), a.dtype)
    out[: a.shape[0]] = a
    return out


@njit(inline="always")
def _next_hit(q, cwords, start, radius):
    """First row >= start within radius (or n): a tight loop LLVM can optimise."""
    n = cwords.shape[0]
    for i in range(start, n):
        if _dist(q, cwords, i) <= radius:
            return i
    return n


@njit(cache=True, nogil=True)
def scan_radius(qwords, cwords, dead, radius):
    """Brute force: every row with distance <= radius and dead[row] == 0 (CSR out)."""
    nq = qwords.shape[0]
    n = cwords.shape[0]
    has_dead = dead.shape[0] == n and n > 0
    lims = np.zeros(nq + 1, np.int64)
    dist = np.empty(64, np.int32)
    pos = np.empty(64, np.int64)
    k = 0
    for qi in range(nq):
        q = qwords[qi]
        i = _next_hit(q, cwords, 0, radius)
        while i < n:
            if not (has_dead and dead[i]):
                if k == dist.shape[0]:
                    dist = _grow(dist, k + 1)
                    pos = _grow(pos, k + 1)
                dist[k] = _dist(q, cwords, i)
                pos[k] = i
                k += 1
            i = _next_hit(q, cwords, i + 1, radius)
        lims[qi + 1] = k
    return lims, dist[:k].copy(), pos[:k].copy()


@njit(cache=True, nogil=True)
def scan_knn(qwords, cwords, dead, k, bits):
    """The k nearest live rows per query (distance, then row order); -1 pads."""
    nq = qwords.shape[0]
    n = cwords.shape[0]
    has_dead = dead.shape[0] == n and n > 0
    out_d = np.full((nq, k), -1, np.int32)
    out_p = np.full((nq, k), -1, np.int64)
    d_all = np.empty(n, np.int32)
    hist = np.zeros(bits + 2, np.int64)
    for qi in range(nq):
        q = qwords[qi]
        hist[:] = 0
        for i in range(n):
            if has_dead and dead[i]:
                d_all[i] = bits + 1
            else:
                d = _dist(q, cwords, i)
                d_all[i] = d
                hist[d] += 1
        # smallest cut so that rows with d <= cut number at least k
        acc = 0
        cut = bits
        for d in range(bits + 1):
            acc += hist[d]
            if acc >= k:
                cut = d
                break
        # fill per distance bucket in row order: slots start at the prefix count
        start = np.zeros(bits + 2, np.int64)
        for d in range(1, bits + 2):
            start[d] = start[d - 1] + hist[d - 1]
        for i in range(n):
            d = d_all[i]
            if d <= cut:
                s = start[d]
                if s < k:
                    out_d[qi, s] = d
                    out_p[qi, s] = i
                start[d] = s + 1
    return out_d, out_p


@njit(inline="always")
def _key(row, start, width):
    a = start >> 6
    off = start & 63
    lo = row[a] >> np.uint64(off)
    if off + width > 64:
        lo |= row[a + 1] << np.uint64(64 - off)
    if width == 64:
        return lo
    return lo & ((_ONE << np.uint64(width)) - _ONE)


@njit(cache=True, nogil=True)
def build_table(cwords, start, width, shift, rb, rows):
    """One MIH table as CSR: returns offsets[2**(width - shift) + 1] (uint32);
    fills ``rows`` (uint32[n]) with the row numbers sorted by bucket.

    The bucket is the key's top ``width - shift`` bits; the low ``shift`` bits
    ride in each entry above the row number (``row | low << rb``: a row needs
    only rb bits, e.g. 24 at 10M rows), so a probe can drop entries whose low
    bits are too far from the query's before reading their codes. With
    ``rb >= 32`` the entries are plain row numbers.

    A counting sort (bincount + prefix sum + scatter): O(n + 2**width), no
    per-item hash map, stable (rows within a bucket stay in row order).
    """
    n = cwords.shape[0]
    nb = 1 << (width - shift)
    low_mask = (_ONE << np.uint64(shift)) - _ONE
    keys = np.empty(n, np.uint32)
    counts = np.zeros(nb + 1, np.uint32)
    for i in range(n):
        keys[i] = np.uint32(_key(cwords[i], start, width) >> np.uint64(shift))
    # the counters are random accesses into 4 * 2**width bytes: prefetch ahead
    for i in range(n):
        if i + 16 < n:
            prefetch(counts, keys[i + 16] + 1)
        counts[keys[i] + 1] += 1
    for b in range(nb):
        counts[b + 1] += counts[b]
    fill = counts[:nb].copy()
    for i in range(n):
        if i + 16 < n:
            prefetch(fill, keys[i + 16])
        key = keys[i]
        e = np.uint64(i)
        if shift > 0 and rb < 32:
            e |= (_key(cwords[i], start, width) & low_mask) << np.uint64(rb)
        rows[fill[key]] = np.uint32(e)
        fill[key] += 1
    return counts


@njit(cache=True, nogil=True)
def gather_rows(cwords, ids, order, out_w, out_i):
    """out_w, out_i = cwords[order], ids[order] in one pass (numpy's 2-D fancy
    indexing is ~3x slower at 10M rows). The outputs come from numpy, not from
    here: numpy asks the kernel for transparent huge pages on big arrays, and the
    MIH probes' random reads need them (TLB misses otherwise doubled the time)."""
    n = order.shape[0]
    nw = cwords.shape[1]
    for j in range(n):
        if j + 16 < n:
            prefetch(cwords, order[j + 16])
        r = np.int64(order[j])
        for w in range(nw):
            out_w[j, w] = cwords[r, w]
        out_i[j] = ids[r]


@njit(cache=True, nogil=True)
def flip_masks(width, tmax):
    """Every width-bit mask with popcount <= tmax, by popcount (Gosper's hack).

    counts[t] = how many masks have popcount <= t (probe prefix for radius t).
    """
    total = 0
    c = 1
    for t in range(tmax + 1):  # sum of C(width, t)
        if t > 0:
            c = c * (width - t + 1) // t
        total += c
    masks = np.empty(total, np.uint32)
    counts = np.zeros(tmax + 1, np.int64)
    k = 0
    for t in range(tmax + 1):
        if t == 0:
            masks[k] = 0
            k += 1
        elif t <= width:
            v = (np.uint64(1) << np.uint64(t)) - _ONE
            limit = np.uint64(1) << np.uint64(width)
            while v < limit:
                masks[k] = np.uint32(v)
                k += 1
                low = v & (~v + _ONE)
                r = v + low
                v = (((r ^ v) >> np.uint64(2)) // low) | r
        counts[t] = k
    return masks, counts


PREFETCH_AHEAD = 24  # candidates whose codes are in flight during verification
PROBE_AHEAD = 16  # probes whose buckets are in flight while entries are gathered
PROBE_WEIGHT = 0.3  # a probe's cost in candidates (adaptive radii)
LAZY_WEIGHT = 1.0  # extra per probe of the estimated level (its bounds are read late)


@njit(inline="always")
def _next_cand(q, cwords, cand, start, stop, radius):
    """First c in [start, stop) whose row cand[c] is within radius (or stop)."""
    for c in range(start, stop):
        if c + PREFETCH_AHEAD < stop:
            prefetch(cwords, cand[c + PREFETCH_AHEAD])
        if _dist(q, cwords, cand[c]) <= radius:
            return c
    return stop


@njit(inline="always")
def _next_cand4(q0, q1, q2, q3, cwords, cand, start, stop, radius):
    """_next_cand for 4-word (256-bit) codes: the query words stay in registers and
    unsigned indices spare numba's negative-index fix-ups (A/B at 10M: ~4% p50)."""
    for c in range(np.uint64(start), np.uint64(stop)):
        if c + PREFETCH_AHEAD < stop:
            prefetch(cwords, cand[c + PREFETCH_AHEAD])
        r = np.uint64(cand[c])
        d = popcount64(q0 ^ cwords[r, 0]) + popcount64(q1 ^ cwords[r, 1])
        if d + popcount64(q2 ^ cwords[r, 2]) + popcount64(q3 ^ cwords[r, 3]) <= radius:
            return np.int64(c)
    return stop


@njit(cache=True, nogil=True)
def mih_radius(
    qwords, cwords, dead, radius, starts, widths, shifts, rb, tvals, off_base, offsets, rows,
    ident, mask_base, masks, mask_count, levels, adaptive, cand_w, entry_w, frac, lazy,
):  # fmt: skip
    """Exact radius search by (generalised) pigeonhole multi-index hashing.

    Table i is probed with every key within t_i of the query's substring
    (t_i = -1: table not probed). Because sum(t_i + 1) >= radius + 1 over bits
    the tables cover, any code within ``radius`` lies within t_i of the query on
    some substring i, so it is found. A code found in table i is reported only
    if no earlier probed table j would have found it (its substring distance
    there exceeds t_j): each hit once, no dedup pass, and the result is exactly
    the brute-force set, for ANY t_i meeting the sum.

    Split keys: table i's buckets are the top ``widths[i] - shifts[i]`` bits of
    its substring; the low ``shifts[i]`` bits sit in each row-list entry above
    the row number (``rb`` bits). A probe whose bucket mask flips a bits keeps
    only entries whose low bits are within t_i - a of the query's, so table i
    behaves exactly as a ``widths[i]``-bit table (same candidates) with the
    offsets of a narrower one: wider substrings, fewer tables, within the memory
    budget. Table 0 (``ident``, no row list) checks its low bits on the code.

    t_i: ``tvals`` (the segment's plan), or with ``adaptive`` chosen per query:
    every table's bucket bounds are read up to popcount ``levels.shape[1] - 1``
    (levels[i, t] = masks of popcount <= t; masks are sorted by popcount), and
    the t_i are assigned greedily by the query's REAL bucket sizes: cost of
    table i at t = PROBE_WEIGHT * probes + entry_w[i] * entries + cand_w[i] *
    expected candidates (entries x frac[i, r], the share of low bits within r).
    On clustered data bucket sizes vary a lot from query to query, and the few
    extra offset reads buy skipping the crowded tables. ``lazy`` = 1: the last
    level is not read up front (at 10M it has ~7x the probes of the others); its
    counts are extrapolated from the read levels (``_estimate_last``), costed with
    LAZY_WEIGHT more per probe, and read only for the tables the greedy gives it
    (10M A/B: p50 unchanged, clustered p90/p99 5-14% lower). Any assignment is
    exact: only the sum matters, and every probe of a taken level is read.

    ``ident`` = 1: the codes are stored in table 0's bucket order, so that table
    has no row list (``rows[i - ident]`` is table i's) and its buckets are runs
    of consecutive rows.

    Why the phases (bucket numbers, bucket bounds, candidate rows, verification):
    at 10M codes nearly every offset, row-list and code read is a cache miss.
    Each phase prefetches what the next one reads, so many misses are in flight
    at once instead of one offset -> row -> code chain at a time. Buckets are
    prefetched PROBE_AHEAD probes ahead of the gather loop (not all at once: a
    table's ~200 prefetches overflow the miss buffers and most were dropped;
    rolling cut the 10M p50 by ~10% clustered, ~23% random).
    """
    nq = qwords.shape[0]
    m = starts.shape[0]
    has_dead = dead.shape[0] == cwords.shape[0] and cwords.shape[0] > 0
    lims = np.zeros(nq + 1, np.int64)
    dist = np.empty(64, np.int32)
    pos = np.empty(64, np.int64)
    qkeys = np.empty(m, np.uint64)
    nall = 0
    for i in range(m):
        nall += mask_count[i]
    lo_b = np.empty(max(nall, 1), np.int64)
    hi_b = np.empty(max(nall, 1), np.int64)
    tq = tvals.copy()
    nlev = levels.shape[1]
    cnt = np.zeros((m, nlev), np.int64)
    cost = np.zeros((m, nlev), np.float64)
    cand = np.empty(4096, np.int64)
    row_mask = (_ONE << np.uint64(min(rb, 32))) - _ONE
    k = 0
    for qi in range(nq):
        q = qwords[qi]
        w4 = q.shape[0] == 4
        q0, q1, q2, q3 = q[0], q[1 % q.shape[0]], q[2 % q.shape[0]], q[3 % q.shape[0]]
        for i in range(m):
            qkeys[i] = _key(q, starts[i], widths[i])
        if adaptive:
            # every table's bucket bounds up to the top level, then a greedy
            # assignment on the query's real bucket sizes
            for i in range(m):
                _bounds(qkeys[i] >> np.uint64(shifts[i]), off_base[i], mask_base[i],
                        levels[i, nlev - 1 - lazy], masks, offsets, lo_b, hi_b)  # fmt: skip
            for i in range(m):
                mb = mask_base[i]
                acc = 0
                p = 0
                for t in range(nlev - lazy):
                    while p < levels[i, t]:
                        u = np.uint64(mb + p)
                        acc += hi_b[u] - lo_b[u]
                        p += 1
                    cnt[i, t] = acc
                if lazy:
                    _estimate_last(cnt[i], levels[i])
                for t in range(nlev):
                    est = 0.0
                    prev = 0
                    for a in range(t + 1):
                        est += (cnt[i, a] - prev) * frac[i, t - a]
                        prev = cnt[i, a]
                    cost[i, t] = (
                        PROBE_WEIGHT * levels[i, t] + entry_w[i] * cnt[i, t] + cand_w[i] * est
                    )
                if lazy:  # its bounds are still to be read
                    cost[i, nlev - 1] += LAZY_WEIGHT * (levels[i, nlev - 1] - levels[i, nlev - 2])
                tq[i] = -1
            for _ in range(radius + 1):
                best = -1
                best_d = 0.0
                for i in range(m):
                    t = tq[i]
                    if t + 1 >= nlev:
                        continue
                    d = cost[i, t + 1]
                    if t >= 0:
                        d -= cost[i, t]
                    if best < 0 or d < best_d:
                        best = i
                        best_d = d
                if best < 0:
                    break  # unreachable when levels cover the plan (checked by caller)
                tq[best] += 1
            if lazy:
                # bounds of the estimated level, for the tables that took it
                top = nlev - 1
                for i in range(m):
                    if tq[i] == top:
                        a = levels[i, top - 1]
                        _bounds(qkeys[i] >> np.uint64(shifts[i]), off_base[i], mask_base[i] + a,
                                levels[i, top] - a, masks, offsets, lo_b, hi_b)  # fmt: skip
        for i in range(m):
            t = tq[i]
            if t < 0:
                continue
            mb = mask_base[i]
            sh = np.uint64(shifts[i])
            if adaptive:
                npr = levels[i, t]
            else:
                npr = mask_count[i]
                _bounds(qkeys[i] >> sh, off_base[i], mb, npr, masks, offsets, lo_b, hi_b)
            ri = i - ident
            total = 0
            for p in range(mb, mb + npr):
                total += hi_b[p] - lo_b[p]
            # the first PROBE_AHEAD buckets now, the rest PROBE_AHEAD ahead below
            if ri < 0:
                for p in range(mb, min(mb + npr, mb + PROBE_AHEAD)):
                    if hi_b[p] > lo_b[p]:
                        prefetch(cwords, lo_b[p])
            else:
                rr = rows[ri]
                for p in range(mb, min(mb + npr, mb + PROBE_AHEAD)):
                    if hi_b[p] > lo_b[p]:
                        prefetch(rr, lo_b[p])
            if total == 0:
                continue
            # candidate rows (split keys: only entries whose low bits are near)
            if total > cand.shape[0]:
                cand = np.empty(max(total, 2 * cand.shape[0]), np.int64)
            # (the bucket of probe p + PROBE_AHEAD is prefetched while probe p is
            # read; written out in each loop, not as a helper: an inlined numba
            # function taking arrays costs NRT incref/decref calls per probe)
            c = 0
            stop = np.uint64(mb + npr)
            ahead = np.uint64(PROBE_AHEAD)
            if ri < 0:
                for p in range(np.uint64(mb), stop):
                    pp = p + ahead
                    if pp < stop and hi_b[pp] > lo_b[pp]:
                        prefetch(cwords, lo_b[pp])
                    for j in range(lo_b[p], hi_b[p]):
                        cand[np.uint64(c)] = j
                        c += 1
            elif shifts[i] == 0:
                rr = rows[ri]
                for p in range(np.uint64(mb), stop):
                    pp = p + ahead
                    if pp < stop and hi_b[pp] > lo_b[pp]:
                        prefetch(rr, lo_b[pp])
                    for j in range(lo_b[p], hi_b[p]):
                        cand[np.uint64(c)] = np.int64(rr[np.uint64(j)])
                        c += 1
            else:
                rr = rows[ri]
                qlow = qkeys[i] & ((_ONE << sh) - _ONE)
                urb = np.uint64(rb)
                for p in range(np.uint64(mb), stop):
                    rem = t - popcount64(np.uint64(masks[p]))
                    pp = p + ahead
                    if pp < stop:
                        lo = lo_b[pp]
                        if hi_b[pp] > lo:
                            prefetch(rr, lo)
                            if hi_b[pp] - lo > 16:  # a second cache line
                                prefetch(rr, lo + 16)
                    for j in range(lo_b[p], hi_b[p]):
                        # branch-free: about a third pass, unpredictably (unsigned
                        # indices: no negative-index fix-ups; A/B at 10M: ~7% p50)
                        e = np.uint64(rr[np.uint64(j)])
                        cand[np.uint64(c)] = np.int64(e & row_mask)
                        c += popcount64((e >> urb) ^ qlow) <= rem
            total = c
            # verification (a tight loop with no stores, so the query words stay
            # in registers; codes prefetched PREFETCH_AHEAD candidates ahead:
            # measured faster than prefetching them all at once, which overflows
            # the miss buffers; hits are rare)
            for c in range(min(PREFETCH_AHEAD, total)):
                prefetch(cwords, cand[c])
            if w4:
                c = _next_cand4(q0, q1, q2, q3, cwords, cand, 0, total, radius)
            else:
                c = _next_cand(q, cwords, cand, 0, total, radius)
            while c < total:
                r = cand[c]
                if w4:
                    c = _next_cand4(q0, q1, q2, q3, cwords, cand, c + 1, total, radius)
                else:
                    c = _next_cand(q, cwords, cand, c + 1, total, radius)
                if has_dead and dead[r]:
                    continue
                # table 0 reads whole buckets: check its split-key low bits here
                if (
                    ri < 0
                    and shifts[i] > 0
                    and popcount64(_key(cwords[r], starts[i], widths[i]) ^ qkeys[i]) > t
                ):
                    continue
                seen = False
                for jj in range(i):
                    tj = tq[jj]
                    if tj >= 0:
                        xk = _key(cwords[r], starts[jj], widths[jj])
                        if popcount64(xk ^ qkeys[jj]) <= tj:
                            seen = True
                            break
                if seen:
                    continue
                if k == dist.shape[0]:
                    dist = _grow(dist, k + 1)
                    pos = _grow(pos, k + 1)
                dist[k] = _dist(q, cwords, r)
                pos[k] = r
                k += 1
        lims[qi + 1] = k
    return lims, dist[:k].copy(), pos[:k].copy()


@njit(inline="always")
def _entries_per_probe(cnt, lev, k):
    """Entries per probe that level k adds over level k - 1 (over nothing for k = 0)."""
    if k == 0:
        return cnt[0] / max(lev[0], 1)
    return (cnt[k] - cnt[k - 1]) / max(lev[k] - lev[k - 1], 1)


@njit(inline="always")
def _estimate_last(cnt, lev):
    """cnt[L] (entries within the last level L, not read) from the read levels:
    per-probe entries of level L-1 times their decay from level L-2 (at most 1)."""
    last = lev.shape[0] - 1
    new = lev[last] - lev[last - 1]
    if new <= 0:
        cnt[last] = cnt[last - 1]
        return
    d1 = _entries_per_probe(cnt, lev, last - 1)
    d0 = _entries_per_probe(cnt, lev, last - 2) if last >= 2 else d1
    decay = 1.0 if d0 <= 0 else min(1.0, d1 / d0)
    cnt[last] = cnt[last - 1] + np.int64(d1 * decay * new)


@njit(inline="always")
def _bounds(qk, ob, mb, npr, masks, offsets, lo_b, hi_b):
    """lo_b/hi_b[mb + p] = bucket bounds of probe p (offsets prefetched first;
    unsigned indices throughout: numba adds negative-index fix-ups to signed ones)."""
    for p in range(np.uint64(mb), np.uint64(mb + npr)):
        b = np.uint64(ob) + (qk ^ np.uint64(masks[p]))
        lo_b[p] = np.int64(b)
        prefetch(offsets, b)
    for p in range(np.uint64(mb), np.uint64(mb + npr)):
        b = np.uint64(lo_b[p])
        lo_b[p] = np.int64(offsets[b])
        hi_b[p] = np.int64(offsets[b + _ONE])


@njit(cache=True, nogil=True)
def exact_lookup(qkeys, qwords, skeys, order, cwords, dead):
    """Rows whose code equals the query: binary search on a sorted 64-bit prefix key."""
    nq = qkeys.shape[0]
    n = skeys.shape[0]
    has_dead = dead.shape[0] == n and n > 0
    lims = np.zeros(nq + 1, np.int64)
    pos = np.empty(16, np.int64)
    k = 0
    for qi in range(nq):
        key = qkeys[qi]
        lo = np.searchsorted(skeys, key)
        j = lo
        while j < n and skeys[j] == key:
            r = order[j]
            if _dist(qwords[qi], cwords, r) == 0 and not (has_dead and dead[r]):
                if k == pos.shape[0]:
                    pos = _grow(pos, k + 1)
                pos[k] = r
                k += 1
            j += 1
        lims[qi + 1] = k
    return lims, np.zeros(k, np.int32), pos[:k].copy()


@njit(cache=True, nogil=True)
def lookup_ids(sorted_ids, order, ids):
    """Row of each id (-1 if absent) via binary search on the sorted ids."""
    out = np.full(ids.shape[0], -1, np.int64)
    n = sorted_ids.shape[0]
    for i in range(ids.shape[0]):
        j = np.searchsorted(sorted_ids, ids[i])
        if j < n and sorted_ids[j] == ids[i]:
            out[i] = order[j]
    return out
