"""Join index hits with provenance and visibility: the answer a caller sees.

The index only knows ids and distances. Whether a hit counts is decided here, at
lookup time, against the store: the list must be enabled and visible to the
tenant (and among the requested lists), the signal unretracted and unexpired.
Deciding at lookup time is what makes a list disable, a grant revoke or an expiry
take effect on the very next lookup without touching the index.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from hashmatch.engine.errors import InvalidInput
from hashmatch.engine.lazy_numpy import numpy_on_first_use
from hashmatch.engine.store import SignalStore, split_labels

if TYPE_CHECKING:
    import numpy as np
else:  # store verbs (lists ls, tenants, audit) need no numpy: engine/lazy_numpy.py
    np = numpy_on_first_use(globals())

PDQ_MIN_QUALITY = 50  # HMA's default: PDQ hashes of quality < 50 are too flat to trust

#: What a PDQ query of known quality under the floor is matched against
#: (``low_quality_queries``). ``"skip"``: nothing, as HMA (the query is not looked up).
#: ``"match_quality_stored"`` (the default): only stored signals whose quality is known
#: and at or above the floor; stored signals of unknown or low quality never match it.
#: Measured (README "Matching quality", docs/quality/quality.md "Quality floor"):
#: low-quality pictures never came near a stored picture of quality >= 50 (0 of 1.69 M
#: pairs within 63), but two low-quality pictures of different scenes often do (3.1e-4
#: within 31), so a flat query may meet detailed stored hashes only.
LOW_QUALITY_SKIP = "skip"
LOW_QUALITY_MATCH_QUALITY_STORED = "match_quality_stored"
LOW_QUALITY_QUERIES = (LOW_QUALITY_SKIP, LOW_QUALITY_MATCH_QUALITY_STORED)
DEFAULT_LOW_QUALITY_QUERIES = LOW_QUALITY_MATCH_QUALITY_STORED


@dataclass(frozen=True)
class Match:
    """One stored signal within the threshold of one query.

    ``variant`` is the query row whose code matched nearest. For media hashed with
    HashOptions the rows go: as given (1, or 8 dihedral: 0 = as given), trimmed (1 or
    8), outer-bands-only trim if any (1 or 8), uncrop (16), derotate (4); with
    all_frames, that block frame by frame.
    vPDQ matches also carry ``query_match_pct`` (share of the query's frames that
    matched the video) and ``target_match_pct`` (share of the stored video's frames).
    """

    query_index: int
    signal_id: int
    signal_type: str
    hash_hex: str
    distance: int
    list_name: str
    labels: tuple[str, ...]
    external_id: str | None
    variant: int = 0
    query_match_pct: float = 0.0
    target_match_pct: float = 0.0


class MatchList(list):
    """The matches of one query (a list), plus how the quality floor treated it.

    ``skipped_low_quality``: the query's known PDQ quality (``quality``) is under the
    floor, so it was NOT looked up against the whole index. ``quality_stored_only``
    says what happened instead: False (``low_quality_queries="skip"``) = not looked up
    at all, the list is empty; True (``"match_quality_stored"``, the default) = looked
    up against stored signals of known quality >= the floor only, and every match in
    the list is one of those.
    """

    skipped_low_quality: bool = False
    quality_stored_only: bool = False
    quality: int | None = None


@dataclass
class MediaMatch:
    """What ``Engine.match_media`` found: the hashes it computed and the matches."""

    hashes: list = field(default_factory=list)  # list[HashResult]
    matches: list[Match] = field(default_factory=list)
    skipped_low_quality: bool = False  # as MatchList: PDQ quality under the floor ...
    quality_stored_only: bool = False  # ... and matched against stored quality >= it only


@dataclass(frozen=True)
class Visibility:
    """Which list ids may produce matches for this request (resolved once per call)."""

    lists: dict[int, tuple[str, bool]]  # id -> (name, enabled)
    allowed: set[int] | None  # None = every enabled list

    def ok(self, list_id: int) -> bool:
        entry = self.lists.get(list_id)
        if entry is None or not entry[1]:
            return False
        return self.allowed is None or list_id in self.allowed


def visible_hits(
    store: SignalStore, sids: np.ndarray, vis: Visibility, *, with_quality: bool = False
) -> tuple[dict, np.ndarray | None]:
    """(``store.lookup`` of the hits' signals, a per-hit mask of those the caller may see;
    None when it sees them all). Why before any per-hit work: else the time a request
    takes grows with the hits in other tenants' lists, and a request repeating one hash
    (``max_batch`` times) tells by its duration whether another tenant's list holds it.
    An all-False mask: nothing to show (return as fast as a request with no hits)."""
    uniq = sids if len(sids) == 1 else np.unique(sids)  # one hit: a unary Match's usual
    ids = uniq.tolist()
    info = store.lookup(ids, with_quality=with_quality)
    shown = [s in info and vis.ok(info[s][0]) for s in ids]
    if all(shown):
        return info, None
    return info, np.array(shown, dtype=bool)[np.searchsorted(uniq, sids)]


def join_hits(
    store: SignalStore,
    signal_type: str,
    nq: int,
    lims: np.ndarray,
    distances: np.ndarray,
    ids: np.ndarray,
    vis: Visibility,
    *,
    max_results: int | None = None,
    variants: np.ndarray | None = None,
    min_stored_quality: np.ndarray | None = None,
) -> list[MatchList]:
    """CSR hits -> per-query sorted Match lists, filtered by visibility and state.

    ``variants`` maps a query row to (original query index, dihedral variant) when
    the rows are dihedral expansions: then per original query and signal the
    nearest variant is kept. ``min_stored_quality`` (per CSR row, -1 = no rule): a
    row's hits count only on stored signals whose quality is known and at least that
    (the ``"match_quality_stored"`` rule for low-quality queries).
    """
    now = time.time()
    out = [MatchList() for _ in range(nq)]
    if len(ids) == 0:
        return out
    need = None
    if min_stored_quality is not None and (np.asarray(min_stored_quality) >= 0).any():
        need = np.asarray(min_stored_quality, dtype=np.int64)
    info, keep = visible_hits(store, ids, vis, with_quality=need is not None)
    if keep is not None:
        if not keep.any():
            return out
        rows = np.repeat(np.arange(len(lims) - 1), np.diff(lims))
        lims = np.concatenate(([0], np.cumsum(np.bincount(rows[keep], minlength=len(lims) - 1))))
        ids, distances = ids[keep], distances[keep]
    best: list[dict[int, Match]] = [{} for _ in range(nq)]
    for row in range(len(lims) - 1):
        q, variant = (
            (row, 0) if variants is None else (int(variants[row][0]), int(variants[row][1]))
        )
        floor = -1 if need is None else int(need[row])
        for k in range(int(lims[row]), int(lims[row + 1])):
            sid = int(ids[k])
            meta = info.get(sid)
            if meta is None:
                continue
            list_id, stype, code, labels, ext, expires, retracted = meta[:7]
            if floor >= 0 and (meta[7] is None or meta[7] < floor):
                continue  # a low-quality query meets stored quality >= the floor only
            if retracted is not None or (expires is not None and expires <= now):
                continue
            if not vis.ok(list_id):
                continue
            d = int(distances[k])
            prev = best[q].get(sid)
            if prev is not None and prev.distance <= d:
                continue
            best[q][sid] = Match(
                query_index=q,
                signal_id=sid,
                signal_type=stype,
                hash_hex=bytes(code).hex(),
                distance=d,
                list_name=vis.lists[list_id][0],
                labels=split_labels(labels),
                external_id=ext,
                variant=variant,
            )
    for q in range(nq):
        found = sorted(best[q].values(), key=lambda m: (m.distance, m.signal_id))
        out[q].extend(found[:max_results] if max_results else found)
    return out


def reoriented_max_distance(default_threshold: int, threshold: int | None) -> int:
    """How far a re-oriented row of a media query (one of the 7 dihedral variants) may
    match: the request's threshold, but never beyond the type's default (31 for PDQ).

    Why: those rows are there for flipped and rotated copies, which the exact dihedral
    path lands within 0-8 bits of their original; beyond PDQ's threshold they only add
    wrong candidates, 7 per image. On the quality bench every wrong pair nearer than
    86 bits came from a re-oriented row (nearest 64: a letterboxed moon tile turned
    upside down against a haystack hash), while the rows as given (and the trimmed and
    small-image ones) met no wrong original nearer than 86: so a caller who loosens the
    threshold for degraded copies (the 99.99%-precision one: 63 -> 85 bits) gets it on
    the rows as given only. At the default threshold nothing changes."""
    return default_threshold if threshold is None else min(default_threshold, int(threshold))


def keeps_row_hit(
    orientation: int, distance: int, default_threshold: int, threshold: int | None
) -> bool:
    """Whether a hit at ``distance`` of a media query's row hashed in ``orientation``
    (0 = as given, 1-7 re-oriented: ``HashResult.orientations``,
    ``FileHashes.orientations``) stands: a row as given as far as ``threshold`` goes
    (the lookup applied it), a re-oriented one only within
    :func:`reoriented_max_distance`.

    The one place the rule is decided, so a file gets the same matches however it is
    matched: ``Match`` with media (``Engine.match_hashes``), a scan's lookups of new
    and catalogued hashes and a rescan's gap pass (``scan.match_files``), and a
    rescan's search of the catalog with new signals (``rescan._rows``)."""
    return orientation == 0 or distance <= reoriented_max_distance(default_threshold, threshold)


def quality_floor(min_quality: int | None) -> int:
    """The PDQ quality floor of a request: ``min_quality``, default 50 (as HMA)."""
    return PDQ_MIN_QUALITY if min_quality is None else int(min_quality)


def check_low_quality_queries(value: str | None) -> str:
    """``low_quality_queries`` of a request: None = the default, else one of
    :data:`LOW_QUALITY_QUERIES` (anything else is InvalidInput)."""
    if value is None:
        return DEFAULT_LOW_QUALITY_QUERIES
    if value not in LOW_QUALITY_QUERIES:
        raise InvalidInput(
            f"must be one of {', '.join(LOW_QUALITY_QUERIES)}, got {value!r}",
            field="low_quality_queries",
        )
    return value


def low_quality_rows(
    signal_type: str, qualities: Sequence[int | None] | None, min_quality: int | None, n: int
) -> np.ndarray:
    """Boolean mask of query rows under the floor: known PDQ quality < ``min_quality``."""
    mask = np.zeros(n, dtype=bool)
    if qualities is None or signal_type != "pdq":
        return mask
    floor = quality_floor(min_quality)
    for i, q in enumerate(qualities):
        if i < n and q is not None and int(q) < floor:
            mask[i] = True
    return mask
