"""Immutable segments: a block of codes + ids with one search structure.

A shard is a tuple of segments plus one tombstone mask per segment. Segments
never change after construction, so a reader holding a reference can search it
while a writer builds the next state; see :mod:`hashmatch.indexes.sharded`.

Kinds:
- :class:`ScanSegment`: numba brute force (recent additions, small indexes).
- :class:`FlatSegment`: FAISS ``IndexBinaryFlat`` (range_search is strict '<',
  so it is called with radius + 1).
- :class:`MIHSegment`: exact multi-index hashing, falls back to a scan when the
  radius makes that cheaper (see :mod:`hashmatch.indexes.planner`).
- :class:`ExactSegment`: byte-equality table for md5/sha256 (radius 0 only).

Each segment saves itself as ``.npy`` files (memory-mapped on load) or, for
FAISS, a FAISS index file read with ``IO_FLAG_MMAP_IFC``.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import ClassVar

import faiss
import numpy as np

from hashmatch.indexes import kernels, planner

#: A segment's radius answer: (lims int64[nq + 1], distances int32, rows int64) in CSR
#: form; rows are this segment's (the shard maps them to ids).
RowHits = tuple[np.ndarray, np.ndarray, np.ndarray]
#: A segment's k-NN answer: (distances int32[nq, k], rows int64[nq, k]; -1 = none).
RowKnn = tuple[np.ndarray, np.ndarray]

EMPTY_U8 = np.zeros(0, np.uint8)


def to_words(codes: np.ndarray) -> np.ndarray:
    """Packed uint8 codes -> uint64 words (zero-padded to 8 bytes; a view when aligned)."""
    n, nbytes = codes.shape
    if nbytes % 8:
        padded = np.zeros((n, -(-nbytes // 8) * 8), np.uint8)
        padded[:, :nbytes] = codes
        codes = padded
    return np.ascontiguousarray(codes).view(np.uint64)


def to_codes(words: np.ndarray, nbytes: int) -> np.ndarray:
    return np.ascontiguousarray(words.view(np.uint8)[:, :nbytes])


class Segment:
    kind: ClassVar[str] = "?"
    files: ClassVar[frozenset[str]] = frozenset()  # what save() writes (dead.npy aside)
    indexed: bool = True  # False: a recent-additions chunk waiting to be merged

    def __init__(self, ids: np.ndarray, bits: int):
        self.ids = ids
        self.bits = bits
        self._sorted: tuple[np.ndarray, np.ndarray] | None = None
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.ids)

    def rows_of(self, ids: np.ndarray) -> np.ndarray:
        """Row of each id in this segment, -1 where absent."""
        if self._sorted is None:
            with self._lock:
                if self._sorted is None:
                    order = np.argsort(self.ids, kind="stable")
                    self._sorted = (np.ascontiguousarray(self.ids[order]), order)
        sorted_ids, order = self._sorted
        return kernels.lookup_ids(sorted_ids, order, ids)

    # -- overridden
    def cost(self, radius: int) -> float:
        """Estimated seconds per query at this radius (decides inline vs thread pool)."""
        return planner.scan_cost(len(self.ids), self.bits)

    def words(self) -> np.ndarray:
        raise NotImplementedError

    def radius(
        self, qwords: np.ndarray, qcodes: np.ndarray, radius: int, dead: np.ndarray | None
    ) -> RowHits:
        raise NotImplementedError

    def knn(
        self, qwords: np.ndarray, qcodes: np.ndarray, k: int, dead: np.ndarray | None
    ) -> RowKnn:
        return kernels.scan_knn(qwords, self.words(), _dead(dead), k, self.bits)

    def nbytes(self) -> int:
        return self.ids.nbytes + self._sorted_nbytes()

    def _sorted_nbytes(self) -> int:
        """The id lookup arrays, once a removal has built them."""
        return 0 if self._sorted is None else self._sorted[0].nbytes + self._sorted[1].nbytes

    def save(self, directory: Path) -> dict:
        """Write files into ``directory``; return metadata for the manifest."""
        np.save(directory / "ids.npy", self.ids)
        return {}

    @classmethod
    def load(cls, directory: Path, meta: dict, bits: int, mmap: bool) -> Segment:
        raise NotImplementedError


def _dead(dead: np.ndarray | None) -> np.ndarray:
    return EMPTY_U8 if dead is None else dead


# numpy parses a .npy header with ``ast.literal_eval``; CPython 3.11's AST builder keeps
# one recursion-depth count per interpreter, so two threads parsing at once (a snapshot's
# shards load in parallel) can fail "SystemError: AST constructor recursion depth
# mismatch" when a garbage collection switches threads mid-parse: a sound snapshot was
# refused as corrupt (seen in CI). The parses are made one at a time.
_NPY_HEADER_LOCK = threading.Lock()


def load_npy(path: Path, mmap: bool) -> np.ndarray:
    """One array file, or ValueError naming it (the loader reports it as CorruptData).

    A damaged header can fail in any way (numpy parses it with ``ast``/``tokenize``),
    or parse and describe other bytes: np.save writes the data right after the header
    up to the end of the file, so a header whose length or shape was changed is
    caught by its size before the data is mapped. One thread at a time (see
    ``_NPY_HEADER_LOCK``; np.load parses the header again).
    """
    with _NPY_HEADER_LOCK:
        return _load_npy(path, mmap)


def _load_npy(path: Path, mmap: bool) -> np.ndarray:
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version not in ((1, 0), (2, 0)):
                raise ValueError(f"unsupported .npy version {version}")
            read = np.lib.format.read_array_header_1_0
            if version == (2, 0):
                read = np.lib.format.read_array_header_2_0
            shape, _, dtype = read(f)
            end = f.tell() + dtype.itemsize * math.prod(shape)
            size = os.fstat(f.fileno()).st_size
        if end != size:
            raise ValueError(f"its header describes {end} bytes, the file has {size}")
        # "c": private copy-on-write map (writable arrays: one numba signature; never written)
        return np.load(path, mmap_mode="c" if mmap else None, allow_pickle=False)
    except Exception as exc:
        raise ValueError(f"{path.name}: unreadable ({type(exc).__name__}: {exc})") from exc


# Structural checks on load. The checksums prove the files are the ones the manifest
# lists, not that they form a valid segment (another version or layout, or a tool
# that rewrote a file and its manifest entry); and the numba kernels index these
# arrays without bounds checks, so an out-of-range row or offset from a file would
# read outside them (garbage or SIGSEGV). Every check is one vectorised O(n) pass.


def check_stored_ids(ids: np.ndarray) -> int:
    """A loaded ids.npy must be int64[n]; returns n (input ids: ``base.check_ids``)."""
    if ids.dtype != np.int64 or ids.ndim != 1:
        raise ValueError(f"ids.npy: expected int64[n], got {ids.dtype} {ids.shape}")
    return len(ids)


def check_words(words: np.ndarray, n: int, bits: int) -> None:
    """words.npy must be C-ordered uint64[n, ceil(bits / 64)], zero past ``bits``."""
    nw = -(-bits // 64)
    if words.dtype != np.uint64 or words.shape != (n, nw) or not words.flags.c_contiguous:
        raise ValueError(
            f"words.npy: expected C-ordered uint64[{n}, {nw}] for {n} {bits}-bit codes, "
            f"got {words.dtype} {words.shape}"
        )
    if bits % 64 and n and np.any(words[:, -1] >> np.uint64(bits % 64)):
        raise ValueError(f"words.npy: codes wider than {bits} bits")


def check_sorted(a: np.ndarray) -> bool:
    return bool(np.all(a[1:] >= a[:-1]))


class ScanSegment(Segment):
    kind = "scan"
    files = frozenset({"ids.npy", "words.npy"})

    def __init__(self, words: np.ndarray, ids: np.ndarray, bits: int, indexed: bool = False):
        super().__init__(ids, bits)
        self._words = words
        self.indexed = indexed

    def words(self) -> np.ndarray:
        return self._words

    def radius(
        self, qwords: np.ndarray, qcodes: np.ndarray, radius: int, dead: np.ndarray | None
    ) -> RowHits:
        return kernels.scan_radius(qwords, self._words, _dead(dead), radius)

    def nbytes(self) -> int:
        return self.ids.nbytes + self._words.nbytes + self._sorted_nbytes()

    def save(self, directory: Path) -> dict:
        np.save(directory / "words.npy", self._words)
        return super().save(directory)

    @classmethod
    def load(cls, directory: Path, meta: dict, bits: int, mmap: bool) -> Segment:
        ids = load_npy(directory / "ids.npy", mmap)
        words = load_npy(directory / "words.npy", mmap)
        check_words(words, check_stored_ids(ids), bits)
        return cls(words, ids, bits)


class FlatSegment(Segment):
    """FAISS IndexBinaryFlat; rows are FAISS labels (0..n-1)."""

    kind = "flat"
    files = frozenset({"ids.npy", "flat.faissindex"})

    def __init__(self, index: faiss.IndexBinaryFlat, ids: np.ndarray, bits: int):
        super().__init__(ids, bits)
        self.index = index

    @classmethod
    def build(cls, words: np.ndarray, ids: np.ndarray, bits: int) -> FlatSegment:
        index = faiss.IndexBinaryFlat(bits)
        if len(ids):
            index.add(to_codes(words, bits // 8))
        return cls(index, ids, bits)

    def words(self) -> np.ndarray:
        n = self.index.ntotal
        if n == 0:
            return np.zeros((0, (self.bits + 63) // 64), np.uint64)
        return to_words(self.index.reconstruct_n(0, n))

    def radius(
        self, qwords: np.ndarray, qcodes: np.ndarray, radius: int, dead: np.ndarray | None
    ) -> RowHits:
        if self.index.ntotal == 0:
            return np.zeros(len(qcodes) + 1, np.int64), np.empty(0, np.int32), np.empty(0, np.int64)
        lims, dist, rows = self.index.range_search(qcodes, radius + 1)
        lims, dist, rows = lims.astype(np.int64), dist.astype(np.int32), rows.astype(np.int64)
        if dead is not None and len(rows):
            keep = dead[rows] == 0
            if not keep.all():
                qidx = np.repeat(np.arange(len(qcodes)), np.diff(lims))[keep]
                lims = np.zeros(len(qcodes) + 1, np.int64)
                np.cumsum(np.bincount(qidx, minlength=len(qcodes)), out=lims[1:])
                dist, rows = dist[keep], rows[keep]
        return lims, dist, rows

    def knn(
        self, qwords: np.ndarray, qcodes: np.ndarray, k: int, dead: np.ndarray | None
    ) -> RowKnn:
        n = self.index.ntotal
        ndead = 0 if dead is None else int(np.count_nonzero(dead))
        kk = min(n, k + ndead)
        out_d = np.full((len(qcodes), k), -1, np.int32)
        out_r = np.full((len(qcodes), k), -1, np.int64)
        if kk == 0:
            return out_d, out_r
        d, r = self.index.search(qcodes, kk)
        for qi in range(len(qcodes)):
            rows = r[qi]
            ok = rows >= 0
            if ndead:
                ok &= dead[np.maximum(rows, 0)] == 0
            rows, dd = rows[ok][:k], d[qi][ok][:k]
            out_d[qi, : len(rows)] = dd
            out_r[qi, : len(rows)] = rows
        return out_d, out_r

    def nbytes(self) -> int:
        return self.ids.nbytes + self.index.ntotal * self.bits // 8 + self._sorted_nbytes()

    def save(self, directory: Path) -> dict:
        faiss.write_index_binary(self.index, str(directory / "flat.faissindex"))
        return super().save(directory)

    @classmethod
    def load(cls, directory: Path, meta: dict, bits: int, mmap: bool) -> Segment:
        ids = load_npy(directory / "ids.npy", mmap)
        n = check_stored_ids(ids)
        flags = faiss.IO_FLAG_MMAP_IFC if mmap else 0
        index = faiss.read_index_binary(str(directory / "flat.faissindex"), flags)
        if (
            not isinstance(index, faiss.IndexBinaryFlat)
            or index.d != bits
            or index.code_size != bits // 8
            or index.ntotal != n
        ):
            raise ValueError(
                f"flat.faissindex: expected a {bits}-bit IndexBinaryFlat of {n} codes, got a "
                f"{index.d}-bit {type(index).__name__} of {index.ntotal}"
            )
        return cls(index, ids, bits)


class MIHSegment(Segment):
    """Multi-index hashing tables over a block of codes (exact for any radius)."""

    kind = "mih"
    files = frozenset({"ids.npy", "words.npy", "offsets.npy", "rows.npy"})

    def __init__(
        self,
        words: np.ndarray,
        ids: np.ndarray,
        bits: int,
        widths: Sequence[int],
        offsets: np.ndarray,
        rows: np.ndarray,
        ident: int = 0,
        shifts: Sequence[int] | None = None,
        rb: int = 32,
    ):
        super().__init__(ids, bits)
        self._words = words
        self.widths = np.asarray(widths, np.int64)
        self.starts = np.concatenate([[0], np.cumsum(self.widths)[:-1]]).astype(np.int64)
        # split keys: table i's buckets are the top widths[i] - shifts[i] bits of its
        # substring; the low shifts[i] bits ride in its row-list entries above the
        # row number (rb bits)
        self.shifts = (
            np.zeros(len(widths), np.int64) if shifts is None else np.asarray(shifts, np.int64)
        )
        self.obits = self.widths - self.shifts
        self.rb = int(rb)
        base = np.zeros(len(widths) + 1, np.int64)
        np.cumsum([(1 << int(w)) + 1 for w in self.obits], out=base[1:])
        self.off_base = base[:-1]
        self.offsets = offsets  # uint32, every table's CSR offsets concatenated
        # ident = 1: rows are stored in table 0's key order, so table 0 needs no
        # row list; rows[i - ident] (uint32[m - ident, n]) is table i's, in key order
        self.ident = int(ident)
        self.rows = rows
        self._probe_cache: dict[int, tuple] = {}
        self.scan_fallback = True
        self.adaptive: bool | None = None  # per-query radii: None = when cheap enough
        self.lazy = LAZY_LEVEL  # adaptive: one more level, estimated, read only if taken
        self.densities = self._densities()
        # adaptive radii: cost weights per table (in candidates verified); table 0's
        # buckets are runs of codes read in order, cheaper than random rows
        self.cand_w = np.ones(len(widths), np.float64)
        self.cand_w[: self.ident] = IDENT_WEIGHT
        self.entry_w = np.where(self.shifts > 0, ENTRY_WEIGHT, 0.0)
        self.entry_w[: self.ident] = 0.0

    def _densities(self) -> list[float]:
        """Candidates per probe of each table as the data is really spread."""
        n = max(len(self.ids), 1)
        out = []
        for i, w in enumerate(self.obits):
            base = int(self.off_base[i])
            sizes = np.diff(self.offsets[base : base + (1 << int(w)) + 1]).astype(np.float64)
            out.append(max(float(sizes @ sizes) / n, n / float(1 << int(w))))
        return out

    @classmethod
    def build(
        cls,
        words: np.ndarray,
        ids: np.ndarray,
        bits: int,
        widths: Sequence[int],
        obits: int | None = None,
        pool: ThreadPoolExecutor | None = None,
    ) -> MIHSegment:
        """Tables by counting sort. Table 0's sort also reorders the codes and ids
        (so that table is just runs of consecutive rows: no row list, and its
        candidates are read sequentially); the other tables index that order.
        ``obits``: bucket bits per table (split keys; default: the widths)."""
        widths = [int(w) for w in widths]
        shifts = [w - int(o) for w, o in zip(widths, obits or widths, strict=True)]
        starts = np.concatenate([[0], np.cumsum(widths)[:-1]]).astype(np.int64)
        n = len(ids)
        rb = 32 - max(shifts[1:], default=0)
        if max(shifts[1:], default=0) and n > (1 << rb):
            raise ValueError(f"{n} rows leave no room for {32 - rb} split-key bits")
        order = np.empty(n, np.uint32)
        off0 = kernels.build_table(words, int(starts[0]), widths[0], shifts[0], 32, order)
        out_w, out_i = np.empty_like(words), np.empty(n, np.int64)
        kernels.gather_rows(words, np.ascontiguousarray(ids, np.int64), order, out_w, out_i)
        words, ids = out_w, out_i
        del order
        rows = np.empty((len(widths) - 1, n), np.uint32)

        def one(i: int) -> np.ndarray:
            return kernels.build_table(words, int(starts[i]), widths[i], shifts[i], rb, rows[i - 1])

        idx = range(1, len(widths))
        offsets = list(pool.map(one, idx)) if pool is not None else [one(i) for i in idx]
        return cls(words, ids, bits, widths, np.concatenate([off0, *offsets]), rows, 1, shifts, rb)

    def words(self) -> np.ndarray:
        return self._words

    def cost(self, radius: int) -> float:
        plan = self._probe_plan(radius)
        if plan is None:
            return planner.scan_cost(len(self.ids), self.bits)
        return plan[4]

    def _probe_plan(self, radius: int):
        """(tvals, mask_base, masks, mask_count, cost, levels, adaptive, frac, lazy)
        for this radius, or None when a scan is cheaper. Adaptive plans carry every
        table's masks up to the plan's largest t (the kernel picks the t_i per
        query), plus one lazily read level when ``self.lazy``; they are used when
        the read levels cost at most ADAPTIVE_PROBES x the static plan's probes."""
        if radius in self._probe_cache:
            return self._probe_cache[radius]
        n = len(self.ids)
        widths = [int(w) for w in self.widths]
        obits = [int(w) for w in self.obits]
        tvals, cost = planner.assign_radii(n, widths, radius, self.densities, obits)
        if self.scan_fallback and cost >= planner.scan_cost(n, self.bits):
            plan = None
        else:
            tcap = max(tvals)
            static = sum(planner.masks_upto(w, t) for w, t in zip(obits, tvals, strict=True))
            every = sum(planner.masks_upto(w, tcap) for w in obits)
            adaptive = self.adaptive
            if adaptive is None:
                adaptive = every <= ADAPTIVE_PROBES * static
            adaptive = bool(adaptive) and len(widths) * (tcap + 1) >= radius + 1
            lazy = int(adaptive and self.lazy)
            parts, base, count = [], [], []
            levels = np.zeros((len(widths), tcap + 1 + lazy if adaptive else 1), np.int64)
            # share of entries whose split-key bits lie within r of the query's
            # (uniform bits; table 0 verifies whole buckets: 1)
            frac = np.ones(levels.shape, np.float64)
            for i, sh in enumerate(self.shifts[self.ident :], start=self.ident):
                for r in range(levels.shape[1]):
                    frac[i, r] = planner.masks_upto(int(sh), r) / float(1 << int(sh))
            at = 0
            for i, (w, t) in enumerate(zip(obits, tvals, strict=True)):
                top = tcap + lazy if adaptive else t
                masks, counts = _masks(w, max(top, 0))
                c = int(counts[top]) if top >= 0 else 0
                if adaptive:
                    levels[i] = counts[: top + 1]
                parts.append(masks[:c])
                base.append(at)
                count.append(c)
                at += c
            plan = (
                np.asarray(tvals, np.int64),
                np.asarray(base, np.int64),
                np.concatenate(parts) if parts else np.zeros(0, np.uint32),
                np.asarray(count, np.int64),
                cost,
                levels,
                adaptive,
                frac,
                lazy,
            )
        if len(self._probe_cache) < 128:
            self._probe_cache[radius] = plan
        return plan

    def radius(
        self, qwords: np.ndarray, qcodes: np.ndarray, radius: int, dead: np.ndarray | None
    ) -> RowHits:
        plan = self._probe_plan(radius)
        if plan is None:
            return kernels.scan_radius(qwords, self._words, _dead(dead), radius)
        tvals, mask_base, masks, mask_count, _, levels, adaptive, frac, lazy = plan
        return kernels.mih_radius(
            qwords, self._words, _dead(dead), radius, self.starts, self.widths, self.shifts,
            self.rb, tvals, self.off_base, self.offsets, self.rows, self.ident, mask_base, masks,
            mask_count, levels, adaptive, self.cand_w, self.entry_w, frac, lazy,
        )  # fmt: skip

    def nbytes(self) -> int:
        return (
            self.ids.nbytes + self._words.nbytes + self.offsets.nbytes + self.rows.nbytes
            + self._sorted_nbytes()
        )  # fmt: skip

    def save(self, directory: Path) -> dict:
        np.save(directory / "words.npy", self._words)
        np.save(directory / "offsets.npy", self.offsets)
        np.save(directory / "rows.npy", self.rows)
        super().save(directory)
        return {
            "widths": [int(w) for w in self.widths],
            "ident": self.ident,
            "shifts": [int(s) for s in self.shifts],
            "rb": self.rb,
        }

    @classmethod
    def load(cls, directory: Path, meta: dict, bits: int, mmap: bool) -> Segment:
        widths = [int(w) for w in meta["widths"]]
        words = load_npy(directory / "words.npy", mmap)
        ids = load_npy(directory / "ids.npy", mmap)
        offsets = load_npy(directory / "offsets.npy", mmap)
        rows = load_npy(directory / "rows.npy", mmap)
        ident = int(meta.get("ident", 0))
        # snapshots from before split keys have neither: plain tables
        shifts = [int(s) for s in meta.get("shifts", [0] * len(widths))]
        rb = int(meta.get("rb", 32))
        if (
            sum(widths) > bits
            or ident not in (0, 1)
            or len(shifts) != len(widths)
            or not all(0 <= s < w for s, w in zip(shifts, widths, strict=True))
            or not 1 <= rb <= 32
            or max(shifts[ident:], default=0) > 32 - rb
            or len(ids) > (1 << rb)
            or len(offsets) != sum((1 << (w - s)) + 1 for w, s in zip(widths, shifts, strict=True))
            or rows.shape != (len(widths) - ident, len(ids))
        ):
            raise ValueError("MIH tables do not match their codes")
        n = check_stored_ids(ids)
        check_words(words, n, bits)
        check_mih_tables(offsets, rows, n, widths, shifts, ident, rb)
        return cls(words, ids, bits, widths, offsets, rows, ident, shifts, rb)


def check_mih_tables(
    offsets: Sequence[np.ndarray],
    rows: Sequence[np.ndarray],
    n: int,
    widths: Sequence[int],
    shifts: Sequence[int],
    ident: int,
    rb: int,
) -> None:
    """Each table's CSR offsets run 0..n without going back, and each row list names
    rows < n (the kernels read codes at these rows unchecked), each once."""
    if offsets.dtype != np.uint32 or offsets.ndim != 1:
        raise ValueError(f"offsets.npy: expected uint32[m], got {offsets.dtype} {offsets.shape}")
    if rows.dtype != np.uint32 or not rows.flags.c_contiguous:
        raise ValueError(f"rows.npy: expected C-ordered uint32 rows, got {rows.dtype}")
    base = 0
    for i, (w, sh) in enumerate(zip(widths, shifts, strict=True)):
        table = offsets[base : base + (1 << (w - sh)) + 1]
        base += len(table)
        if int(table[0]) != 0 or int(table[-1]) != n or not check_sorted(table):
            raise ValueError(f"offsets.npy: table {i} does not run from 0 to {n} in order")
        if i < ident or not n:
            continue
        entries = rows[i - ident]
        if sh:  # entries of split-key tables carry the key's low bits above the row number
            entries = entries & np.uint32((1 << rb) - 1)
        top = int(entries.max())
        if top >= n:
            raise ValueError(f"rows.npy: table {i} lists row {top}, past the {n} codes")
        # each row once: in range, n entries summing to 0 + 1 + ... + (n - 1) (a full
        # permutation check, a scatter per table, cost ~7x as much at 10M; the
        # checksums are what prove the contents)
        if int(entries.sum(dtype=np.uint64)) != n * (n - 1) // 2:
            raise ValueError(f"rows.npy: table {i} does not list every row once")


ADAPTIVE_PROBES = 3.0
LAZY_LEVEL = True
IDENT_WEIGHT = 1.0  # a table-0 candidate (read in bucket order) vs a random one
ENTRY_WEIGHT = 0.15  # a split-key row-list entry read and filtered (sequential): measured
# ~3.7 ns vs ~24 ns per random candidate at 10M clustered (0.05 before: 1-5% slower p50)
_MASKS: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
_MASKS_LOCK = threading.Lock()


def _masks(width: int, t: int) -> tuple[np.ndarray, np.ndarray]:
    """Flip masks of popcount <= t for a width (cached; larger t serves smaller)."""
    with _MASKS_LOCK:
        for (w, tt), value in _MASKS.items():
            if w == width and tt >= t:
                return value
        value = kernels.flip_masks(width, t)
        _MASKS[(width, t)] = value
        return value


class ExactSegment(Segment):
    """Equality lookups (md5/sha256): rows sorted by their first 64 bits."""

    kind = "exact"
    files = frozenset({"ids.npy", "words.npy", "skeys.npy", "order.npy"})

    def __init__(
        self, words: np.ndarray, ids: np.ndarray, bits: int, skeys: np.ndarray, order: np.ndarray
    ):
        super().__init__(ids, bits)
        self._words = words
        self.skeys = skeys
        self.order = order

    @classmethod
    def build(cls, words: np.ndarray, ids: np.ndarray, bits: int) -> ExactSegment:
        keys = np.ascontiguousarray(words[:, 0]) if len(words) else np.zeros(0, np.uint64)
        order = np.argsort(keys, kind="stable")
        return cls(words, ids, bits, np.ascontiguousarray(keys[order]), order.astype(np.int64))

    def words(self) -> np.ndarray:
        return self._words

    def cost(self, radius: int) -> float:
        return 1e-6

    def radius(
        self, qwords: np.ndarray, qcodes: np.ndarray, radius: int, dead: np.ndarray | None
    ) -> RowHits:
        qkeys = np.ascontiguousarray(qwords[:, 0])
        return kernels.exact_lookup(qkeys, qwords, self.skeys, self.order, self._words, _dead(dead))

    def nbytes(self) -> int:
        return (
            self.ids.nbytes + self._words.nbytes + self.skeys.nbytes + self.order.nbytes
            + self._sorted_nbytes()
        )  # fmt: skip

    def save(self, directory: Path) -> dict:
        np.save(directory / "words.npy", self._words)
        np.save(directory / "skeys.npy", self.skeys)
        np.save(directory / "order.npy", self.order)
        return super().save(directory)

    @classmethod
    def load(cls, directory: Path, meta: dict, bits: int, mmap: bool) -> Segment:
        ids = load_npy(directory / "ids.npy", mmap)
        words = load_npy(directory / "words.npy", mmap)
        skeys = load_npy(directory / "skeys.npy", mmap)
        order = load_npy(directory / "order.npy", mmap)
        n = check_stored_ids(ids)
        check_words(words, n, bits)
        check_exact_table(words, skeys, order, n)
        return cls(words, ids, bits, skeys, order)


def check_exact_table(words: np.ndarray, skeys: np.ndarray, order: np.ndarray, n: int) -> None:
    """``order`` is a permutation of the rows and ``skeys`` their first words in that
    order, sorted: what the binary search in kernels.exact_lookup relies on."""
    if order.dtype != np.int64 or order.shape != (n,):
        raise ValueError(f"order.npy: expected int64[{n}], got {order.dtype} {order.shape}")
    if skeys.dtype != np.uint64 or skeys.shape != (n,):
        raise ValueError(f"skeys.npy: expected uint64[{n}], got {skeys.dtype} {skeys.shape}")
    if not n:
        return
    if int(order.min()) < 0 or int(order.max()) >= n:
        raise ValueError(f"order.npy: rows outside 0..{n - 1}")
    seen = np.zeros(n, bool)
    seen[order] = True
    if not seen.all():
        raise ValueError("order.npy: not a permutation of the rows")
    if not check_sorted(skeys) or not np.array_equal(skeys, words[:, 0][order]):
        raise ValueError("skeys.npy: not the codes' sorted keys")


SEGMENT_TYPES: dict[str, type[Segment]] = {
    c.kind: c for c in (ScanSegment, FlatSegment, MIHSegment, ExactSegment)
}
