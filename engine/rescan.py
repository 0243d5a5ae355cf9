"""Retroactive matching: find what the catalog already holds that newly shared hashes match.

When a partner shares new hashes, a platform must find the stored media they match.
Re-hashing millions of files takes hours or days; the catalog already has every
file's hashes. So a rescan

1. reads the store's change log since the last rescan (``meta.rescan_seq`` in the
   catalog): the signals added (or restored, or matching again: list re-enabled,
   expiry extended) and removed since then. The cursor must be a position in THIS
   store's history (``meta.rescan_log``: the store's id and the digest of the change
   at the cursor): a cursor of another store, of this store before a restore from a
   backup, or beyond its head stops the rescan (``--since all`` starts again);
2. indexes the catalog's hashes of each affected type (the same exact indexes the
   server uses, from :mod:`hashmatch.indexes` through the engine's factory) and
   queries it with **only the new signals** — the search cost grows with the new
   signals, not with the catalog (loading the catalog's codes is one sequential read).
   PDQ files under the quality floor are matched as the scan matches them by default
   (``match_quality_stored``): only by new signals of known quality >= the floor;
3. re-checks every match the catalog holds against the store (their number is tiny
   next to the catalog): a match whose signal was retracted, expired or whose list
   was disabled no longer holds and is reported as a retraction;
4. commits the new matches, the removals and the new cursor in one transaction, so a
   rescan killed midway is simply run again (new matches are keyed, never duplicated).

No file is opened, decoded or hashed: the catalog's ``hash_calls`` counter does not move.

Where the signals come from is a :class:`ChangeSource`: :class:`StoreChanges` reads a
local store; :class:`ServerChanges` reads a hashmatch server's ``Signals.Changes``
stream (the new signals' codes and provenance come with it) and re-checks held matches
with ``Signals.SignalStates``. The matching, net-effect and commit logic is the same.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from hashmatch.engine import signal_types
from hashmatch.engine.catalog import Catalog, MatchRow
from hashmatch.engine.errors import Conflict, CorruptData
from hashmatch.engine.matcher import PDQ_MIN_QUALITY
from hashmatch.engine.scan import (
    file_hash_hex,
    match_record,
    threshold_for,
    write_jsonl_atomically,
)
from hashmatch.engine.store import (
    FRAME_BITS,
    REVIVE,
    UPDATE,
    Change,
    SignalStore,
    split_labels,
)
from hashmatch.indexes import load_index, make_index

if TYPE_CHECKING:
    from hashmatch.engine.signal_types import SignalType
    from hashmatch.indexes.sharded import ShardedIndex

CURSOR_KEY = "rescan_seq"
#: catalog meta key (per cursor key) of the log the cursor is a position in
LOG_KEY = "rescan_log"


@dataclass
class RescanSummary:
    since: int = 0
    to: int = 0
    new_signals: dict[str, int] = field(default_factory=dict)
    removed_signals: int = 0
    catalog_hashes_indexed: dict[str, int] = field(default_factory=dict)
    catalog_rows_read: dict[str, int] = field(default_factory=dict)  # < indexed when cached
    new_matches: int = 0
    retractions: int = 0
    load_s: float = 0.0
    query_s: float = 0.0
    elapsed_s: float = 0.0
    hash_calls: int = 0  # the catalog's counter, unchanged by a rescan
    report: str | None = None

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Retraction:
    match: MatchRow
    reason: str  # "retracted" | "expired" | "list-disabled" | "deleted" | "replaced"


@dataclass
class RescanResult:
    summary: RescanSummary
    new: list[MatchRow]
    retracted: list[Retraction]


@dataclass(frozen=True)
class SignalMeta:
    """What a match row needs to know about a signal."""

    list_name: str
    code: bytes
    labels: tuple[str, ...]
    external_id: str | None
    quality: int | None = None  # as stored (None = unknown)


@dataclass
class NewSignals:
    """The live signals among some added ids of one type, ready for ``search_radius``."""

    index_ids: np.ndarray  # int64; vPDQ: signal_id << FRAME_BITS | frame_no
    codes: np.ndarray  # uint8[n, nbytes]
    meta: dict[int, SignalMeta]


@dataclass(frozen=True)
class LogIdentity:
    """Which history a change-log read came from: the store's random id and the
    digests of the changes at ``since`` and at ``head`` (None: no such change, e.g. 0).

    Why: a cursor is only a number. Against another store, or this store restored
    from an older backup, the same number names other changes; trusted as is, the
    rescan would skip that store's signals (for good once its counter passes the
    cursor). The digest covers each change row's random tag, so it differs too.
    """

    store_id: str  # "" = not known (a server older than the field)
    since_digest: str | None
    head_digest: str | None


@runtime_checkable
class ChangeSource(Protocol):
    """Where a rescan reads changed signals from (a local store or a server)."""

    #: catalog meta key of this source's cursor
    cursor_key: str
    #: set by :meth:`read`: the history it read
    log: LogIdentity | None

    def read(self, since: int) -> tuple[int, Iterable[Change]]:
        """(head, the add/remove log entries with ids and since < seq <= head, oldest
        first); sets :attr:`log`."""
        ...

    def new_signals(self, signal_type: str, ids: np.ndarray, now: float) -> NewSignals:
        """The live ones among ``ids`` (sorted) with codes and provenance."""
        ...

    def frame_counts(self, signal_ids: Sequence[int]) -> dict[int, int]:
        """vPDQ: frames of each stored video."""
        ...

    def why_gone(
        self,
        signal_ids: Sequence[int],
        now: float,
        held: Mapping[int, tuple[str, str]] | None = None,
    ) -> dict[int, str | None]:
        """Per id: None while it still matches, else "retracted" / "expired" /
        "list-disabled" / "deleted", or "replaced" where the source can tell that the id
        now names a signal with another code than ``held`` (id -> (type, hex) the
        catalog's match was made with)."""
        ...


#: the change-log ops a reader of the log sees (a "bump" carries no ids)
READ_OPS = ("add", "remove", REVIVE, UPDATE)


def read_as(op: str) -> str:
    """ "add" or "remove": how a reader of the log sees an entry's op (see StoreChanges.read)."""
    return "remove" if op == "remove" else "add"


class StoreChanges:
    """A local :class:`SignalStore` as a change source."""

    cursor_key = CURSOR_KEY

    def __init__(self, store: SignalStore):
        self.store = store
        self._lists: dict[int, tuple[str, bool]] | None = None
        self.log: LogIdentity | None = None

    def lists(self) -> dict[int, tuple[str, bool]]:
        if self._lists is None:
            self._lists = self.store.list_table()
        return self._lists

    def read(self, since: int) -> tuple[int, list[Change]]:
        """Also what the server's ``Signals.Changes`` streams (server/changes.py).

        :data:`REVIVE` entries (a list re-enabled, an expiry lifted) read as adds: to a
        rescan they are signals that match again, whose matches it may have retracted.
        So do :data:`UPDATE` entries (new labels or expiry): a mirror needs the signal's
        current provenance, and a rescan finds the matches it holds already."""
        self._lists = None  # read once per rescan, as fresh as the log
        head = self.store.change_counter()
        self.log = LogIdentity(
            self.store.store_id(), self.store.change_digest(since), self.store.change_digest(head)
        )
        return head, [
            Change(c.seq, read_as(c.op), c.signal_type, c.ids)
            for c in self.store.changes_since(since)
            if c.seq <= head and c.op in READ_OPS and len(c.ids)
        ]

    def new_signals(self, signal_type: str, ids: np.ndarray, now: float) -> NewSignals:
        index_ids, codes = self.store.codes_for(signal_type, ids)
        sids = index_ids >> FRAME_BITS if signal_type == "vpdq" else index_ids
        info = self.store.lookup(np.unique(sids).tolist(), with_quality=True)
        lists = self.lists()
        live = np.array(
            [why_gone(_meta(info.get(int(s))), lists, now) is None for s in sids.tolist()],
            dtype=bool,
        )
        index_ids, codes, sids = index_ids[live], codes[live], sids[live]
        meta = {}
        for sid in np.unique(sids).tolist():
            list_id, _stype, code, labels, ext, _expires, _retracted, quality = info[sid]
            meta[sid] = SignalMeta(
                lists[list_id][0], bytes(code), split_labels(labels), ext, quality
            )
        return NewSignals(index_ids, codes, meta)

    def frame_counts(self, signal_ids: Sequence[int]) -> dict[int, int]:
        return self.store.frame_counts(signal_ids)

    def why_gone(
        self,
        signal_ids: Sequence[int],
        now: float,
        held: Mapping[int, tuple[str, str]] | None = None,
    ) -> dict[int, str | None]:
        info = self.store.lookup(signal_ids)
        lists = self.lists()
        out = {sid: why_gone(info.get(sid), lists, now) for sid in signal_ids}
        for sid, (stype, hex_) in (held or {}).items():
            found = info.get(sid)
            if out.get(sid) is None and found is not None and _replaced(found, stype, hex_):
                out[sid] = "replaced"
        return out


_STATE_REASON = {
    "SIGNAL_STATE_LIVE": None,
    "SIGNAL_STATE_RETRACTED": "retracted",
    "SIGNAL_STATE_EXPIRED": "expired",
    "SIGNAL_STATE_LIST_DISABLED": "list-disabled",
    "SIGNAL_STATE_DELETED": "deleted",
}


class ServerChanges:
    """A hashmatch server (through :class:`hashmatch.server.client.HashmatchClient`) as
    a change source: the ``Changes`` stream carries each added signal's current code
    and provenance, so nothing else is fetched for the new matches; held matches are
    re-checked with ``SignalStates``. The server shows only the lists shared with the
    client's tenant. The cursor is kept per server address (``rescan_seq@ADDR``).
    ``timeout``: for the whole ``Changes`` stream (``--since all`` can be long)."""

    def __init__(self, client: Any, target: str, *, timeout: float = 3600.0):
        self.client = client
        self.cursor_key = f"{CURSOR_KEY}@{target}"
        self.timeout = timeout
        self._live: dict[int, tuple[str, Any]] = {}  # id -> (type, Change message)
        self.log: LogIdentity | None = None

    def read(self, since: int) -> tuple[int, list[Change]]:
        from hashmatch.v1 import signals_pb2

        added = signals_pb2.CHANGE_ACTION_ADDED
        self._live = {}
        head, out = since, []
        group: tuple[int, str, str] | None = None
        ids: list[int] = []

        def flush() -> None:
            if group is not None and ids:
                out.append(Change(group[0], group[1], group[2], np.asarray(ids, np.int64)))

        for reply in self.client.changes(since, timeout=self.timeout):
            head = int(reply.head)  # the same in every message, as the log identity
            self.log = LogIdentity(
                reply.store_id, reply.since_digest or None, reply.head_digest or None
            )
            for c in reply.changes:
                op = "add" if c.action == added else "remove"
                key = (int(c.seq), op, c.signal_type)
                if key != group:
                    flush()
                    group, ids = key, []
                ids.append(int(c.signal_id))
                if op == "add":
                    if c.live:
                        self._live[int(c.signal_id)] = (c.signal_type, c)
                    else:
                        self._live.pop(int(c.signal_id), None)
        flush()
        return head, out

    def new_signals(self, signal_type: str, ids: np.ndarray, now: float) -> NewSignals:
        st = signal_types.get(signal_type)
        index_ids: list[int] = []
        codes: list[bytes] = []
        meta: dict[int, SignalMeta] = {}
        for sid in ids.tolist():
            found = self._live.get(int(sid))
            if found is None or found[0] != signal_type:
                continue
            c = found[1]
            if signal_type == "vpdq":
                index_ids.extend((sid << FRAME_BITS) | i for i in range(len(c.frames)))
                codes.extend(c.frames)
            else:
                index_ids.append(sid)
                codes.append(c.hash)
            quality = c.quality if c.HasField("quality") else None
            meta[sid] = SignalMeta(
                c.list_name, c.hash, tuple(c.labels), c.external_id or None, quality
            )
        packed = np.frombuffer(b"".join(codes), np.uint8).reshape(-1, st.nbytes)
        return NewSignals(np.asarray(index_ids, np.int64), packed, meta)

    def frame_counts(self, signal_ids: Sequence[int]) -> dict[int, int]:
        return {s: len(self._live[s][1].frames) for s in signal_ids if s in self._live}

    def why_gone(
        self,
        signal_ids: Sequence[int],
        now: float,
        held: Mapping[int, tuple[str, str]] | None = None,
    ) -> dict[int, str | None]:
        """SignalStates answers states only: ``held`` codes are not compared here (an
        incremental rescan of a replaced server store is refused by the cursor check)."""
        from hashmatch.v1 import signals_pb2

        ids = [int(s) for s in signal_ids]
        states = self.client.signal_states(ids)
        name = signals_pb2.SignalState.Name
        return {sid: _STATE_REASON[name(s)] for sid, s in zip(ids, states, strict=True)}


def change_source(source: SignalStore | ChangeSource) -> ChangeSource:
    return source if isinstance(source, ChangeSource) else StoreChanges(source)


def rescan(
    catalog: Catalog,
    store: SignalStore | ChangeSource,
    *,
    since: int | None = None,
    threshold: int | None = None,
    report: str | Path | None = None,
    min_quality: int | None = None,
    cache_dir: str | Path | None = None,
) -> RescanResult:
    """Match the catalog against the signals changed since ``since`` (None = last rescan).

    ``store``: a local :class:`SignalStore` or any :class:`ChangeSource` (e.g.
    :class:`ServerChanges`).

    ``cache_dir`` (default: ``<catalog>.rescan-index``) keeps each type's catalog index
    between rescans; a rescan then reads only the catalog rows added since.
    """
    if cache_dir is None:
        cache_dir = Path(str(catalog.path) + ".rescan-index")
    started = time.monotonic()
    source = change_source(store)
    cursor = int(catalog.get_meta(source.cursor_key) or 0) if since is None else int(since)
    head, changes = source.read(cursor)
    log_key = source.cursor_key.replace(CURSOR_KEY, LOG_KEY, 1)
    check_cursor(cursor, head, source.log, catalog.get_meta(log_key), given=since is not None)
    summary = RescanSummary(since=cursor, to=head)
    floor = PDQ_MIN_QUALITY if min_quality is None else int(min_quality)

    # 1. net effect of the change log: the last op on an id wins (numpy: `--since all`
    #    on a store of millions must not build a Python object per signal)
    parts: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    for order, change in enumerate(changes):
        if change.seq > head or change.op not in ("add", "remove") or not len(change.ids):
            continue
        tag = np.full(len(change.ids), 2 * order + (change.op == "add"), np.int64)
        parts.setdefault(change.signal_type, []).append((change.ids.astype(np.int64), tag))
    added: dict[str, np.ndarray] = {}
    for stype, chunks in parts.items():
        ids = np.concatenate([c[0] for c in chunks])
        tags = np.concatenate([c[1] for c in chunks])
        order = np.lexsort((tags, ids))  # by id, then by when
        ids, tags = ids[order], tags[order]
        last = np.r_[ids[1:] != ids[:-1], True]  # the final op on each id
        ids, is_add = ids[last], (tags[last] & 1).astype(bool)
        added[stype] = ids[is_add]
        summary.removed_signals += int((~is_add).sum())
    added = {t: ids for t, ids in added.items() if len(ids)}

    # 2. new signals -> catalog index
    now = time.time()
    new_rows: list[MatchRow] = []
    for stype in sorted(added):
        st = signal_types.get(stype)
        radius = st.check_threshold(threshold_for(stype, threshold))
        found = source.new_signals(stype, np.sort(added[stype]), now)
        index_ids, codes, info = found.index_ids, found.codes, found.meta
        sids = index_ids >> FRAME_BITS if stype == "vpdq" else index_ids
        summary.new_signals[stype] = len(info)
        if not len(codes):
            continue
        hits = _search(catalog, st, floor, codes, radius, cache_dir, summary)
        if stype == "pdq":  # the scan's default rule for its low-quality files, too
            hits = _add_low_quality_hits(hits, catalog, st, floor, codes, sids, info, radius,
                                         cache_dir, summary)  # fmt: skip
        qrows, hit_rows, dist = hits
        if not len(hit_rows):
            continue
        if stype == "vpdq":
            new_rows.extend(
                _video_rows(catalog, source, st, index_ids, qrows, hit_rows, dist, info, floor)
            )
        else:
            new_rows.extend(_rows(catalog, st, sids, qrows, hit_rows, dist, info))

    # 3. matches that no longer hold
    gone: list[Retraction] = []
    held = catalog.matched_signal_codes()
    matched = sorted(held)
    if matched:
        why = source.why_gone(matched, now, held)
        dead = [sid for sid, reason in why.items() if reason is not None]
    else:
        dead, why = [], {}

    # 4. one commit: new matches, removals, cursor; the report is written before the
    # commit, so a report that cannot be written (bad --out, full disk) rolls the cursor
    # back instead of losing the new matches and retractions it would have announced
    with catalog.transaction():
        removed = catalog.remove_matches_of_signals(dead) if dead else []
        # an id that now names another signal ("replaced") drops the old matches above
        # and keeps the ones just found against the signal it names now
        fresh = [r for r in new_rows if why.get(r.signal_id) in (None, "replaced")]
        inserted = _insert_new(catalog, fresh)
        catalog.set_meta(source.cursor_key, str(head))
        if source.log is not None and source.log.store_id:
            catalog.set_meta(log_key, json.dumps({"store_id": source.log.store_id, "seq": head,
                                                  "digest": source.log.head_digest}))  # fmt: skip
        gone = [Retraction(m, why[m.signal_id] or "retracted") for m in removed]
        summary.new_matches = len(inserted)
        summary.retractions = len(gone)
        summary.hash_calls = catalog.counter("hash_calls")
        summary.load_s = round(summary.load_s, 3)
        summary.query_s = round(summary.query_s, 3)
        summary.elapsed_s = round(time.monotonic() - started, 3)
        if report is not None:
            summary.report = str(report)
            write_jsonl_atomically(report, _report_records(catalog, inserted, gone, summary))
    return RescanResult(summary, inserted, gone)


def _search(
    catalog: Catalog,
    st: SignalType,
    floor: int,
    codes: np.ndarray,
    radius: int,
    cache_dir: str | Path | None,
    summary: RescanSummary,
    *,
    low: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Query one catalog index (:func:`catalog_index`) with ``codes``:
    (query rows, catalog hash row ids, distances), with its counts and times in
    ``summary`` (the low-quality index's added to the type's)."""
    t0 = time.monotonic()
    index, indexed, read = catalog_index(catalog, st, floor, cache_dir=cache_dir, low=low)
    for counts, n in ((summary.catalog_hashes_indexed, indexed), (summary.catalog_rows_read, read)):
        counts[st.name] = counts.get(st.name, 0) + n
    t1 = time.monotonic()
    summary.load_s += t1 - t0
    if index is None:
        empty = np.empty(0, np.int64)
        return empty, empty, empty
    lims, dist, hit_rows = index.search_radius(codes, radius)
    summary.query_s += time.monotonic() - t1
    qrows = np.repeat(np.arange(len(codes)), np.diff(lims))
    return qrows, np.asarray(hit_rows, np.int64), np.asarray(dist, np.int64)


def _add_low_quality_hits(hits: tuple[np.ndarray, np.ndarray, np.ndarray], catalog: Catalog,
                          st: SignalType, floor: int, codes: np.ndarray, sids: np.ndarray,
                          info: Mapping[int, SignalMeta], radius: int,
                          cache_dir: str | Path | None, summary: RescanSummary,
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """PDQ: ``hits`` plus those of the new signals of known quality >= the floor on the
    catalog's rows under the floor (:func:`catalog_index` ``low``)."""
    sure = np.flatnonzero([_quality_known_ok(info[int(s)], floor) for s in sids.tolist()])
    if not len(sure):
        return hits
    qrows, hit_rows, dist = _search(catalog, st, floor, codes[sure], radius, cache_dir,
                                    summary, low=True)  # fmt: skip
    return (
        np.concatenate([hits[0], sure[qrows]]),
        np.concatenate([hits[1], hit_rows]),
        np.concatenate([hits[2], dist]),
    )


def _quality_known_ok(meta: SignalMeta, floor: int) -> bool:
    """Whether a stored PDQ signal may match a catalog file under the quality floor: the
    scan's default (``low_quality_queries="match_quality_stored"``) matches such a file
    only against stored signals whose quality is KNOWN and >= the floor."""
    return meta.quality is not None and meta.quality >= floor


def _meta(found: tuple | None) -> tuple | None:
    """:meth:`SignalStore.lookup`'s tuple without the quality ``with_quality`` adds."""
    return None if found is None else found[:7]


def cursor_mismatch(
    cursor: int, head: int, log: LogIdentity | None, store_id: str | None, digest: str | None
) -> str | None:
    """Why a kept cursor is not a position in the history just read, or None if it is.

    ``cursor``: the position kept, ``store_id``/``digest``: the store id and the digest
    of the change at ``cursor`` kept with it (None: not kept, then only the head is
    checked); ``head``/``log``: what the read returned. "beyond": the cursor is past
    the head; "store": ``log`` is another store's; "digest": the change at ``cursor``
    is another one (a restore from a backup, a replaced store). One rule for every
    reader of a change log (``rescan``, ``mirror``): each words its own remedy.
    """
    if cursor > head:
        return "beyond"
    if store_id is None or log is None or not log.store_id or cursor == 0:
        return None
    if store_id != log.store_id:
        return "store"
    if digest != log.since_digest:
        return "digest"
    return None


def check_cursor(
    cursor: int, head: int, log: LogIdentity | None, saved: str | None, *, given: bool
) -> None:
    """Refuse a cursor that is not a position in the history just read (Conflict).

    ``saved``: the catalog's record of the log its cursor was taken in (JSON; None for
    a catalog rescanned before it was kept: only the head is checked then). ``given``:
    the caller named the position (``--since N``): only that it exists is checked.
    """
    redo = "run `hashmatch rescan --since all` to match the whole store and start the cursor again"
    theirs = digest = None
    if not given and saved is not None:
        try:
            record = json.loads(saved)
            theirs, seq, digest = str(record["store_id"]), int(record["seq"]), record["digest"]
        except (ValueError, KeyError, TypeError):
            theirs = None  # unreadable: as a catalog without the record (the commit rewrites it)
        else:
            if seq != cursor:  # a record of another position: only the store is compared
                digest = log.since_digest if log is not None else None
    why = cursor_mismatch(cursor, head, log, theirs, digest)
    if why == "beyond":
        if given:
            raise Conflict(f"change {cursor} is beyond the store's last change ({head}): give"
                           f" 'all' or a change number up to {head}", field="since")  # fmt: skip
        raise Conflict(
            f"the catalog's rescan cursor (change {cursor}) is beyond the store's last change"
            f" ({head}): it was rescanned against another store, or this one was restored"
            f" from an older backup; {redo}",
            field="since",
        )
    if why == "store":
        raise Conflict(
            f"the catalog's rescan cursor (change {cursor}) is a position in another store's"
            f" log (store {theirs}; this is store {log.store_id}); {redo}",
            field="since",
        )
    if why == "digest":
        raise Conflict(
            f"change {cursor}, where the catalog's last rescan stopped, is not the same"
            f" change in this store: it was restored from a backup or replaced since; {redo}",
            field="since",
        )


def catalog_index(
    catalog: Catalog,
    st: SignalType,
    floor: int,
    *,
    cache_dir: str | Path | None,
    low: bool = False,
) -> tuple[ShardedIndex | None, int, int]:
    """The index over the catalog's hashes of one type: (index or None, rows, rows read).

    PDQ and vPDQ rows of known quality under ``floor`` are left out, as the scan does
    not match them against the whole store; ``low`` (PDQ): the index of only those
    rows, which the scan matches against stored signals of known quality >= the floor
    (kept apart so only such new signals query it).

    Cached on disk with the largest row id it holds: the next call loads it and adds
    only newer rows. Rows of re-hashed files that were deleted stay in the cached index
    but are dropped when a hit is resolved (``hash_rows``); when they grow past a
    quarter of the index it is rebuilt from scratch.
    """
    live, top = catalog.count_hashes(st.name)
    index, after = None, 0
    manifest_path = index_path = None
    if cache_dir is not None:
        cache_dir = Path(cache_dir)
        name = f"{st.name}-low" if low else st.name
        manifest_path = cache_dir / f"{name}.json"
        index_path = cache_dir / f"{name}.index"
        try:
            manifest = json.loads(manifest_path.read_text())
            if (
                manifest.get("format") == 1
                and manifest.get("floor") == floor
                and manifest.get("catalog_id") == catalog.identity()
                and manifest.get("max_id", 0) <= top
                and manifest.get("rows", 0) <= 1.25 * live + 1000
            ):
                index = _load_cached(index_path, st)
                after = int(manifest["max_id"])
        except (CorruptData, OSError, ValueError, KeyError, TypeError, AttributeError,
                RuntimeError):  # fmt: skip
            index, after = None, 0  # a damaged or foreign cache is rebuilt, never fatal
    if index is None:
        index = _new_index(st)
    row_ids, _file_ids, codes, qualities = catalog.codes(st.name, with_quality=True, after_id=after)
    if st.name in ("pdq", "vpdq") and len(row_ids):
        under = np.array([q is not None and q < floor for q in qualities], dtype=bool)
        keep = under if low else ~under
        row_ids, codes = row_ids[keep], codes[keep]
    if len(row_ids):
        index.add(codes, row_ids)
    if cache_dir is not None and (len(row_ids) or after < top or not index_path.exists()):
        manifest = {"format": 1, "floor": floor, "catalog_id": catalog.identity(),
                    "max_id": top, "rows": len(index)}  # fmt: skip
        _keep_cache(cache_dir, index_path, manifest_path, index, manifest)
    n = len(index)
    return (index if n else None), n, len(row_ids)


def _keep_cache(cache_dir: Path, index_path: Path, manifest_path: Path, index: ShardedIndex,
                manifest: dict) -> None:  # fmt: skip
    """Save the catalog index for the next rescan. Only a speed-up: a failure (a full
    disk) is logged and the rescan goes on; without its manifest the cache is not used."""
    tmp = index_path.with_name(index_path.name + ".tmp")
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        manifest_path.unlink(missing_ok=True)  # no manifest = no cache while we write
        _remove(tmp)
        index.save(tmp)  # a snapshot directory
        _remove(index_path)
        os.replace(tmp, index_path)
        tmp_manifest = manifest_path.with_name(manifest_path.name + ".tmp")
        tmp_manifest.write_text(json.dumps(manifest))
        os.replace(tmp_manifest, manifest_path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            _remove(tmp)
        logging.getLogger(__name__).warning(
            "could not keep the catalog index in %s (%s): the next rescan rebuilds it",
            cache_dir,
            exc.strerror or exc,
        )


def _new_index(st: SignalType) -> ShardedIndex:
    """Multi-index hashing for perceptual types: the catalog is large, the queries few
    and the radius small, which is MIH's case (measured: 10k queries at radius 31 on
    1M PDQ codes in ~3 s vs ~40 s for a flat scan); equality for md5/sha256."""
    return make_index(st.bits, kind="exact" if st.exact else "mih")


def _load_cached(path: Path, st: SignalType) -> ShardedIndex:
    """Load into memory (not mmapped): the index is then searched with the same array
    types it was built with (no extra JIT specialisation for read-only maps). Of the
    kind :func:`_new_index` makes, or CorruptData (then rebuilt)."""
    return load_index(path, mmap=False, bits=st.bits, kind="exact" if st.exact else "mih")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _replaced(found: tuple, signal_type: str, signal_hex: str) -> bool:
    """The store's signal under a held match's id has another type or code (vPDQ matches
    hold a frame's hash, not the video's key: not compared)."""
    stype, code = found[1], found[2]
    if signal_type == "vpdq" or stype == "vpdq":
        return stype != signal_type
    return stype != signal_type or bytes(code).hex() != signal_hex.lower()


def why_gone(meta: tuple | None, lists: dict[int, tuple[str, bool]], now: float) -> str | None:
    """Why a stored signal no longer produces matches (None = it still does).

    ``meta``: :meth:`SignalStore.lookup`'s tuple; ``lists``: :meth:`SignalStore.list_table`.
    """
    if meta is None:
        return "deleted"
    list_id, _stype, _code, _labels, _ext, expires, retracted = meta
    if retracted is not None:
        return "retracted"
    if expires is not None and expires <= now:
        return "expired"
    entry = lists.get(list_id)
    if entry is None or not entry[1]:
        return "list-disabled"
    return None


def _rows(
    catalog: Catalog,
    st: SignalType,
    sids: np.ndarray,
    qrows: np.ndarray,
    hit_rows: np.ndarray,
    dist: np.ndarray,
    info: Mapping[int, SignalMeta],
) -> list[MatchRow]:
    """Hits of single-code types -> one row per (file, signal), nearest catalog row."""
    if not len(hit_rows):
        return []
    where = catalog.hash_rows(np.unique(hit_rows).tolist())  # row id -> (file_id, frame, code)
    best: dict[tuple[int, int], MatchRow] = {}
    for q, row_id, d in zip(qrows.tolist(), hit_rows.tolist(), dist.tolist(), strict=True):
        found = where.get(row_id)
        if found is None:  # the file was re-hashed since the index was read
            continue
        file_id, frame, code = found
        sid = int(sids[q])
        key = (file_id, sid)
        if key in best and best[key].distance <= d:
            continue
        best[key] = _match_row(st, file_id, sid, code, int(d), frame, info[sid])
    return list(best.values())


def _video_rows(
    catalog: Catalog,
    source: ChangeSource,
    st: SignalType,
    index_ids: np.ndarray,
    qrows: np.ndarray,
    hit_rows: np.ndarray,
    dist: np.ndarray,
    info: Mapping[int, SignalMeta],
    floor: int,
) -> list[MatchRow]:
    """vPDQ: frame hits -> one row per (file, video signal) with both match percentages."""
    if not len(hit_rows):
        return []
    where = catalog.hash_rows(np.unique(hit_rows).tolist())
    per: dict[tuple[int, int], list] = {}  # (file, sid) -> [file frames, signal frames, dmin]
    for q, row_id, d in zip(qrows.tolist(), hit_rows.tolist(), dist.tolist(), strict=True):
        found = where.get(row_id)
        if found is None:
            continue
        file_id, frame, _code = found
        sid = int(index_ids[q]) >> FRAME_BITS
        entry = per.setdefault((file_id, sid), [set(), set(), d])
        entry[0].add(frame)
        entry[1].add(int(index_ids[q]) & ((1 << FRAME_BITS) - 1))
        entry[2] = min(entry[2], d)
    file_ids = sorted({f for f, _ in per})
    file_frames = catalog.frame_counts("vpdq", file_ids, min_quality=floor)
    signal_frames = source.frame_counts(sorted({s for _, s in per}))
    names = {
        fid: file_hash_hex(st, h.codes)
        for fid, hashes in catalog.hashes_of(file_ids).items()
        for h in hashes
        if h.signal_type == "vpdq"
    }
    out = []
    for (file_id, sid), (fset, sset, dmin) in per.items():
        row = _match_row(st, file_id, sid, None, int(dmin), 0, info[sid])
        out.append(
            MatchRow(
                **{
                    **row.__dict__,
                    "hash_hex": names.get(file_id, ""),
                    "query_match_pct": 100.0 * len(fset) / max(file_frames.get(file_id, 1), 1),
                    "target_match_pct": 100.0 * len(sset) / max(signal_frames.get(sid, 1), 1),
                }
            )
        )
    return out


def _match_row(
    st: SignalType,
    file_id: int,
    sid: int,
    code: bytes | None,
    distance: int,
    frame: int,
    meta: SignalMeta,
) -> MatchRow:
    return MatchRow(
        file_id=file_id,
        signal_type=st.name,
        signal_id=sid,
        hash_hex=bytes(code).hex() if code is not None else "",
        signal_hex=meta.code.hex(),
        distance=distance,
        list_name=meta.list_name,
        labels=meta.labels,
        external_id=meta.external_id,
        variant=frame if st.name == "pdq" else 0,
    )


def _insert_new(catalog: Catalog, rows: list[MatchRow]) -> list[MatchRow]:
    """Insert rows whose (file, type, signal) is not known yet; return exactly those."""
    inserted = []
    for row in rows:
        if catalog.add_matches([row], found_by="rescan"):
            inserted.append(row)
    return inserted


def _report_records(
    catalog: Catalog, new: list[MatchRow], gone: list[Retraction], summary: RescanSummary
) -> Iterator[dict]:
    paths = catalog.path_of(sorted({m.file_id for m in new} | {r.match.file_id for r in gone}))
    for m in sorted(new, key=lambda m: (paths.get(m.file_id, ""), m.signal_type, m.signal_id)):
        yield match_record(paths.get(m.file_id, ""), m)
    for r in sorted(gone, key=lambda r: (paths.get(r.match.file_id, ""), r.match.signal_id)):
        rec = match_record(paths.get(r.match.file_id, ""), r.match)
        rec["kind"] = "retraction"
        rec["reason"] = r.reason
        yield rec
    yield {"kind": "summary", **summary.as_dict()}
