"""Choosing multi-index-hashing parameters, and when a plain scan wins instead.

Multi-index hashing (Norouzi et al.) cuts each code into m disjoint substrings
and keeps one bucket table per substring. By the (generalised) pigeonhole
principle, if per-substring radii t_i satisfy ``sum(t_i + 1) >= T + 1`` then any
code within T of the query is within t_i of it on at least one substring, so
probing every key within t_i in table i finds every hit: the search is exact.
(t_i = -1 means table i is not probed; the t_i need not be equal.)

Cost of one query ~ probes * C_PROBE + candidates * C_CAND, where table i costs
``masks(w_i, t_i)`` probes that each return about ``n / 2**w_i`` candidates;
the flat scan costs ``n * words * C_SCAN``. The constants were measured on the
development machine (numba kernels, 256-bit codes); only their ratios matter.

Build-time choice (``plan_tables``): the number of substrings m (hence widths,
~log2 n bits each) that minimises the cost at the type's default radius while
the whole segment fits a memory budget (codes + int64 ids + offsets + row
lists <= 3x the raw codes by default).
Query-time choice (``assign_radii``): the t_i for the requested radius, greedily
spending the ``T + 1`` units where they cost least; if the best MIH cost is above
the scan cost, the segment scans.
"""

from __future__ import annotations

import heapq
from functools import lru_cache
from math import comb

C_SCAN = 4.0e-9  # per 64-bit word scanned: 2x the raw ~2 ns, because the MIH constants
# below overestimate the prefetching kernel (1M clustered: est 5-6x, scan est 1.8x;
# 10M: both ~2x); measured crossover T ~ 51-55 on 1M clustered codes
C_PROBE = 25e-9  # per bucket probed (two offset reads, usually a cache miss)
C_CAND = 70e-9  # per candidate verified (random row access + popcount): measured
# at 1M random codes, 35-45x the per-word scan cost on the development machine

C_ENTRY = 14e-9  # per row-list entry read and filtered by its split-key bits (measured
# ~0.2x a candidate at 10M clustered: the entries are sequential, the codes are not)

MAX_WIDTH = 30  # 2**30 uint32 offsets = 4 GiB: never sensible beyond this
MAX_SPLIT = 8  # split-key bits per row-list entry (a 10M-row segment has 8 spare)
MIN_WIDTH = 6


@lru_cache(maxsize=4096)
def masks_upto(width: int, t: int) -> int:
    """How many width-bit keys lie within Hamming distance t of a key."""
    if t < 0:
        return 0
    return sum(comb(width, i) for i in range(min(t, width) + 1))


def split_widths(bits: int, m: int) -> list[int]:
    """m near-equal substring widths covering ``bits`` (wider ones first)."""
    base, extra = divmod(bits, m)
    return [base + 1] * extra + [base] * (m - extra)


@lru_cache(maxsize=1 << 16)  # a plan costs the same few (width, t) pairs ~10^5 times
def table_cost(
    n: int, width: int, t: int, density: float | None = None, obits: int | None = None
) -> float:
    """Seconds to probe one table at radius t; ``density`` = entries per bucket
    (default: uniform keys, n / 2**obits). ``obits`` < width: a split key (buckets
    on the top obits bits, the rest filtered in the row list): probes and bucket
    entries are those of an obits-bit table, candidates those of a width-bit one."""
    ob = width if obits is None else obits
    probes = masks_upto(ob, t)
    per_probe = n / float(1 << ob) if density is None else density
    cands = per_probe * probes
    cost = probes * C_PROBE
    if ob < width:
        cost += cands * C_ENTRY
        cands = per_probe * masks_upto(width, t) / float(1 << (width - ob))
    return cost + cands * C_CAND


def assign_radii(
    n: int,
    widths: list[int],
    radius: int,
    densities: list[float] | None = None,
    obits: list[int] | None = None,
) -> tuple[list[int], float]:
    """Per-table radii t_i with sum(t_i + 1) = radius + 1 at least cost (greedy).

    ``densities``: measured entries per bucket of each built table (sum of
    squared bucket sizes / n: what a query drawn like the data meets), so that
    clustered data, whose buckets are skewed, is costed as it really behaves.
    ``obits``: bucket bits of each table (split keys; default: the widths).
    """
    dens = densities or [None] * len(widths)
    obs = obits or list(widths)
    t = [-1] * len(widths)
    cost = [0.0] * len(widths)

    def next_delta(i: int) -> float:
        if t[i] >= widths[i]:  # a table at t = width already enumerates every key
            return float("inf")
        return table_cost(n, widths[i], t[i] + 1, dens[i], obs[i]) - cost[i]

    # the cheapest next unit first, the lowest table on a tie: only the table that
    # took the unit changes its next cost, so a heap finds the next best in log m
    heap = [(next_delta(i), i) for i in range(len(widths))]
    heapq.heapify(heap)
    for _ in range(radius + 1):
        if not heap or heap[0][0] == float("inf"):
            break  # every table saturated: exhaustive, still exact
        best = heap[0][1]
        t[best] += 1
        cost[best] = table_cost(n, widths[best], t[best], dens[best], obs[best])
        heapq.heapreplace(heap, (next_delta(best), best))
    return t, sum(cost)


def scan_cost(n: int, bits: int) -> float:
    return n * ((bits + 63) // 64) * C_SCAN


def row_bits(n: int) -> int:
    """Bits a row number of an n-row segment needs (the rest of a uint32 row-list
    entry can carry split-key bits)."""
    return max(1, (n - 1).bit_length())


def table_bytes(n: int, obits: list[int]) -> int:
    """Offsets of every table + row lists of all but the first (the codes are
    stored in table 0's bucket order, so its buckets are runs of rows)."""
    return sum(4 * ((1 << w) + 1) for w in obits) + 4 * n * max(len(obits) - 1, 0)


def layouts(bits: int, m: int, spare: int = 0) -> list[tuple[list[int], list[int]]]:
    """Candidate (widths, bucket bits) for m tables: near-equal widths covering
    every bit, and m equal widths of ``bits // m`` leaving ``bits % m`` bits
    uncovered (still exact: a code within T overall is within T on the covered
    bits; it trades a little selectivity for offsets half the size, which can
    fit the budget); then split keys: the covering widths with buckets on up to
    ``spare`` fewer bits (the row lists carry the rest), which fit the budget
    with fewer, wider substrings."""
    widths = split_widths(bits, m)
    out = [(widths, widths)]
    if bits % m:
        out.append(([bits // m] * m, [bits // m] * m))
    for cut in range(1, spare + 1):
        top = max(widths) - cut
        if top < MIN_WIDTH:
            break
        out.append((widths, [min(w, top) for w in widths]))
    return out


Layout = tuple[list[int], list[int]]


def plan_tables(
    n: int, bits: int, radius: int, memory_ratio: float = 3.0, *, force: bool = False
) -> Layout | None:
    """(substring widths, bucket bits) for n codes (None: a flat scan is expected to
    be faster, unless ``force``; or no layout fits the memory budget).

    Budget: codes (1x) + int64 ids + tables <= ``memory_ratio`` x the raw codes."""
    if n == 0:
        return None
    budget = (memory_ratio - 1.0) * n * bits / 8 - 8 * n
    spare = min(MAX_SPLIT, 32 - row_bits(n))
    plans = []
    for m in range(max(1, -(-bits // (MAX_WIDTH + spare))), bits // MIN_WIDTH + 1):
        for widths, obits in layouts(bits, m, spare):
            if (
                max(obits) > MAX_WIDTH
                or max(w - o for w, o in zip(widths, obits, strict=True)) > spare
            ):
                continue
            _, cost = assign_radii(n, widths, radius, obits=obits)
            plans.append((cost, table_bytes(n, obits), widths, obits))
    fits = [p for p in plans if p[1] <= budget]
    # within budget: the fastest; over it everywhere (small n: the row lists alone,
    # 4 bytes per code per table, outgrow it): the smallest
    best = min(fits) if fits else min(plans, key=lambda p: (p[1], p[0]))
    if not force and best[0] >= scan_cost(n, bits):
        return None
    return best[2], best[3]
