"""vPDQ lookups in batches: many query videos, one index search, one store read.

A vPDQ query is a video (a list of frame hashes). The index nominates stored videos
sharing a frame within the threshold; each nominee is then scored exactly by vPDQ's
rule (:func:`hashmatch.engine.video.vpdq_match`: frames under the quality floor
ignored, repeated frames counted once, ``query_match_pct >= 80``).

Why batches: a Match whose rows are client-hashed vPDQ frames made one engine call per
row (index search, store sync, list table, a SQLite read and a ``np.unique`` per
nominated video): ~1-3 ms of CPU a row, 34 s for 10,000 rows. Here the frames of many
videos go to the index in one search, the nominees' frames are read in one query and
prepared (deduped, quality-filtered) once per call, and each video is scored against
all its nominees with one vectorised distance block. The per-video ``checkpoint`` (the
server's deadline and cancel check) still runs between videos.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from hashmatch.engine.lazy_numpy import numpy_on_first_use
from hashmatch.engine.matcher import Match, MatchList, Visibility, visible_hits
from hashmatch.engine.store import FRAME_BITS, SignalStore, split_labels

if TYPE_CHECKING:
    import numpy as np
else:  # the engine imports this module, and store verbs need no numpy: lazy_numpy.py
    np = numpy_on_first_use(globals())

#: Frames sent to the index in one search (a group of videos is cut at a video's end):
#: enough that the search's fixed cost is shared (the CPU per row measured the same
#: from 64 to 4096), few enough that the deadline is checked often even when every
#: frame hits thousands of stored frames (4096 rows x 2,400 hits each ran 7.8 s
#: before the first check; 256 rows stop within ~0.5 s).
GROUP_FRAMES = 256
#: Query-frame x stored-frame pairs compared in one numpy block (32 bytes each).
PAIRS_PER_BLOCK = 1 << 18

VideoQuery = tuple["np.ndarray", Sequence[int | None] | None]  # (uint8[k, 32], qualities)


def first_occurrences(words: np.ndarray, groups: np.ndarray | None = None) -> np.ndarray:
    """Mask of the rows of ``words`` (``uint64[n, 4]``) that are the first of their
    value (within their ``groups`` entry, when given): vPDQ's dedupe. Equal to
    ``np.unique(..., axis=0, return_index=True)``'s first indices, without its
    structured-dtype sort (the bulk of a 300-frame video's scoring time)."""
    n = len(words)
    keep = np.zeros(n, dtype=bool)
    if n == 0:
        return keep
    keys = [words[:, 3], words[:, 2], words[:, 1], words[:, 0]]
    if groups is not None:
        keys.append(groups)
    order = np.lexsort(keys)  # stable: equal rows keep their order, the first leads
    ranked = words[order]
    new = np.ones(n, dtype=bool)
    new[1:] = (ranked[1:] != ranked[:-1]).any(axis=1)
    if groups is not None:
        g = groups[order]
        new[1:] |= g[1:] != g[:-1]
    keep[order[new]] = True
    return keep


def prepare_frames(
    codes: np.ndarray, qualities: Sequence[int | None] | None, quality_floor: int, dedupe: bool
) -> np.ndarray:
    """The frames vPDQ compares (``uint64[n, 4]``), in order: repeated hashes dropped
    (the first stays), then frames under ``quality_floor``; qualities None (or any
    None among them) keeps every quality. python-threatexchange dedupes *before* the
    quality filter, so a hash whose first frame is under the floor is dropped even where
    it repeats at a higher quality."""
    words, first, passes = _frame_masks(codes, qualities, quality_floor, dedupe)
    return words[first & passes]


def _frame_masks(
    codes: np.ndarray, qualities: Sequence[int | None] | None, quality_floor: int, dedupe: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(frames as ``uint64[n, 4]``, first of their value, of quality at the floor)."""
    from hashmatch.engine.errors import InvalidInput

    codes = np.ascontiguousarray(codes, dtype=np.uint8).reshape(-1, 32)
    words = codes.view(np.uint64)
    every = np.ones(len(codes), dtype=bool)
    first = first_occurrences(words) if dedupe and len(codes) > 1 else every
    passes = every
    if qualities is not None:
        if len(qualities) != len(codes):
            raise InvalidInput(
                f"{len(codes)} frames but {len(qualities)} qualities", field="qualities"
            )
        if not any(q is None for q in qualities):
            passes = np.asarray(qualities, dtype=np.int64).reshape(-1) >= quality_floor
    return words, first, passes


class StoredVideos:
    """The prepared frames of stored videos, read from the store in one query for all
    the videos a group of queries nominated, and kept while the group is scored."""

    def __init__(self, store: SignalStore, quality_floor: int) -> None:
        self.store = store
        self.quality_floor = quality_floor
        self.prepared: dict[int, np.ndarray] = {}

    def get(self, signal_ids: Sequence[int]) -> list[np.ndarray]:
        missing = sorted({s for s in signal_ids if s not in self.prepared})
        if missing:
            self._read(missing)
        return [self.prepared[s] for s in signal_ids]

    def _read(self, signal_ids: list[int]) -> None:
        sids, codes, qualities = self.store.frames_of_videos(signal_ids)
        words = codes.view(np.uint64)
        keep = first_occurrences(words, sids)
        # a video with any frame of unknown quality keeps every quality (vpdq_match's None)
        unknown = qualities < 0
        no_rule = np.zeros(len(sids), dtype=bool)
        if unknown.any():
            no_rule = np.isin(sids, np.unique(sids[unknown]))
        keep &= no_rule | (qualities >= self.quality_floor)
        bounds = np.searchsorted(sids, signal_ids, side="left").tolist()
        ends = np.searchsorted(sids, signal_ids, side="right").tolist()
        for sid, a, b in zip(signal_ids, bounds, ends, strict=True):
            self.prepared[sid] = words[a:b][keep[a:b]]


def match_counts(
    query: np.ndarray, targets: Sequence[np.ndarray], threshold: int
) -> tuple[np.ndarray, np.ndarray]:
    """For prepared query frames and each prepared target: (query frames within
    ``threshold`` of some target frame, target frames within it of some query frame)."""
    k = len(targets)
    q_count = np.zeros(k, dtype=np.int64)
    t_count = np.zeros(k, dtype=np.int64)
    sizes = np.array([len(t) for t in targets], dtype=np.int64)
    live = np.flatnonzero(sizes > 0)
    if len(query) == 0 or len(live) == 0:
        return q_count, t_count
    frames = np.concatenate([targets[i] for i in live.tolist()])
    starts = np.concatenate(([0], np.cumsum(sizes[live])[:-1]))
    q_hit = np.zeros((len(query), len(live)), dtype=bool)
    t_hit = np.zeros(len(frames), dtype=bool)
    rows = max(1, PAIRS_PER_BLOCK // len(frames))
    for r in range(0, len(query), rows):
        block = query[r : r + rows]
        near = (
            np.bitwise_count(block[:, None, :] ^ frames[None, :, :]).sum(axis=2, dtype=np.int32)
            <= threshold
        )
        q_hit[r : r + rows] = np.logical_or.reduceat(near, starts, axis=1)
        t_hit |= near.any(axis=0)
    q_count[live] = q_hit.sum(axis=0)
    t_count[live] = np.add.reduceat(t_hit.astype(np.int64), starts)
    return q_count, t_count


def match_videos(
    store: SignalStore,
    index: object | None,
    videos: Sequence[VideoQuery],
    threshold: int,
    vis: Visibility,
    *,
    max_results: int | None = None,
    checkpoint: Callable[[], None] | None = None,
    query_min_pct: float = 80.0,
    target_min_pct: float = 0.0,
    group_frames: int = GROUP_FRAMES,
) -> list[MatchList]:
    """One :class:`MatchList` per query video: a Match per stored video passing vPDQ's
    rule (``query_match_pct >= query_min_pct`` and ``target_match_pct >=
    target_min_pct``, python-threatexchange's 80 and 0), sorted by query %, target %,
    then signal id; ``distance`` is the nearest frame hit (any quality). Every list is
    marked ``skipped_low_quality`` when all its frames' known qualities are under the
    floor. ``checkpoint`` runs before each video (it raises to stop). ``group_frames``:
    frames per index search (:data:`GROUP_FRAMES`)."""
    from hashmatch.engine.video import VPDQ_QUALITY_THRESHOLD

    out: list[MatchList] = []
    for group in _groups(videos, group_frames):
        if checkpoint is not None:
            checkpoint()
        # kept for the group only: memory stays bounded by what ~256 frames nominate,
        # not by the whole store a 10,000-row request could nominate
        stored = StoredVideos(store, VPDQ_QUALITY_THRESHOLD)
        compared, distinct = [], []
        for i in group:
            words, first, passes = _frame_masks(*videos[i], VPDQ_QUALITY_THRESHOLD, True)
            compared.append(words[first & passes])
            # a repeated frame has its first's hits: only distinct frames are searched
            distinct.append(words[first].view(np.uint8))
        # a video none of whose frames vPDQ compares matches nothing: not searched
        searched = [j for j, c in enumerate(compared) if len(c)]
        spans, sids, distances = _search(index, [distinct[j] for j in searched], threshold)
        # one store read of the hits' signals, and the hits the caller may not see
        # dropped before any per-hit work (as matcher.join_hits)
        info, keep = visible_hits(store, sids, vis) if len(sids) else ({}, None)
        if keep is not None:
            sids, distances, spans = _kept(sids, distances, spans, keep)
        now = time.time()
        stored.get([s for s in np.unique(sids).tolist() if _live(info.get(s), vis, now)])
        span_of = dict(zip(searched, spans, strict=True))
        for j, query in enumerate(compared):
            if checkpoint is not None and j:
                checkpoint()
            found = MatchList()
            a, b = span_of.get(j, (0, 0))
            if b > a:
                found.extend(_score(stored, query, sids[a:b], distances[a:b], info, threshold,
                                    vis, now, query_min_pct, target_min_pct))  # fmt: skip
                if max_results:
                    del found[max_results:]
            qualities = videos[group[j]][1]
            if (
                qualities is not None
                and len(qualities)
                and all(q is not None and int(q) < VPDQ_QUALITY_THRESHOLD for q in qualities)
            ):
                found.skipped_low_quality = True
            out.append(found)
    return out


def _kept(
    sids: np.ndarray, distances: np.ndarray, spans: list[tuple[int, int]], keep: np.ndarray
) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int]]]:
    """The hits where ``keep``, each video's span renumbered."""
    at = np.concatenate(([0], np.cumsum(keep))).tolist()
    return sids[keep], distances[keep], [(at[a], at[b]) for a, b in spans]


def _live(meta: tuple | None, vis: Visibility, now: float) -> bool:
    """A stored video that may match now: known, unretracted, unexpired, visible."""
    if meta is None:
        return False
    list_id, expires, retracted = meta[0], meta[5], meta[6]
    if retracted is not None or (expires is not None and expires <= now):
        return False
    return vis.ok(list_id)


def _groups(videos: Sequence[VideoQuery], group_frames: int) -> list[list[int]]:
    """Consecutive videos cut into groups of about ``group_frames`` frames."""
    groups: list[list[int]] = []
    current: list[int] = []
    size = 0
    for i, (codes, _) in enumerate(videos):
        if current and size + len(codes) > group_frames:
            groups.append(current)
            current, size = [], 0
        current.append(i)
        size += len(codes)
    if current:
        groups.append(current)
    return groups


def _search(
    index: object | None, frames: list[np.ndarray], threshold: int
) -> tuple[list[tuple[int, int]], np.ndarray, np.ndarray]:
    """One index search of every video's frames: (each video's span of the hits, the
    hits' stored video ids, their distances)."""
    if index is None or not frames:
        return [(0, 0)] * len(frames), np.zeros(0, np.int64), np.zeros(0, np.int32)
    lims, distances, ids = index.search_radius(np.concatenate(frames), threshold)  # type: ignore[attr-defined]
    ends = np.cumsum([len(f) for f in frames])
    at = lims[np.concatenate(([0], ends))].tolist()
    spans = list(itertools.pairwise(at))
    return spans, (np.asarray(ids) >> FRAME_BITS).astype(np.int64), np.asarray(distances)


def _score(
    stored: StoredVideos,
    query: np.ndarray,
    sids: np.ndarray,
    distances: np.ndarray,
    info: dict[int, tuple],
    threshold: int,
    vis: Visibility,
    now: float,
    query_min_pct: float,
    target_min_pct: float,
) -> list[Match]:
    """The Matches of one query video among the stored videos its frames hit (those the
    caller may see); ``info`` is the store's provenance of those videos."""
    order = np.lexsort((distances, sids))
    sids, distances = sids[order], distances[order]
    first = np.ones(len(sids), dtype=bool)
    first[1:] = sids[1:] != sids[:-1]
    nominees: list[tuple[int, int, tuple]] = []
    for sid, dmin in zip(sids[first].tolist(), distances[first].tolist(), strict=True):
        meta = info.get(sid)
        if _live(meta, vis, now):
            nominees.append((sid, dmin, meta))
    if not nominees:
        return []
    targets = stored.get([sid for sid, _, _ in nominees])
    q_count, t_count = match_counts(query, targets, threshold)
    found = []
    for (sid, dmin, meta), qn, tn, target in zip(
        nominees, q_count.tolist(), t_count.tolist(), targets, strict=True
    ):
        if not len(target):
            qpct = tpct = 0.0
        else:  # as vpdq_match computes them (same float operations)
            qpct, tpct = 100.0 * qn / len(query), 100.0 * tn / len(target)
        if qpct < query_min_pct or tpct < target_min_pct:
            continue
        list_id, stype, code, labels, ext = meta[:5]
        found.append(
            Match(
                query_index=0,
                signal_id=sid,
                signal_type=stype,
                hash_hex=bytes(code).hex(),
                distance=int(dmin),
                list_name=vis.lists[list_id][0],
                labels=split_labels(labels),
                external_id=ext,
                query_match_pct=float(qpct),
                target_match_pct=float(tpct),
            )
        )
    found.sort(key=lambda m: (-m.query_match_pct, -m.target_match_pct, m.signal_id))
    return found
