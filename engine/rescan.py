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
   a vPDQ hit only nominates a (file, video) pair, decided by vPDQ's rule as a scan
   decides it (:func:`_video_rows`);
2b. looks the catalogued hashes of the files a scan matched in some lists only
   (``--list``, ``--no-match``, a failed lookup: the catalog's coverage,
   :mod:`hashmatch.engine.catalog_coverage`) up in the lists they missed, as a scan of
   those lists would (:mod:`hashmatch.engine.rescan_gap`): those lists' signals shared
   before the cursor never met them otherwise. Every file is then matched in every
   list (recorded in the same commit); none to do after scans of every list;
3. re-checks every match the catalog holds against the store (their number is tiny
   next to the catalog): a match whose signal was retracted, expired or whose list
   was disabled no longer holds and is reported as a retraction, as is a match of a
   file under the quality floor whose signal a re-ingest left of unsure quality, and a
   vPDQ match an earlier rescan made of a video read again that vPDQ's rule rejects;
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
import dataclasses
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from hashmatch.engine import signal_types
from hashmatch.engine.catalog import Catalog, MatchRow
from hashmatch.engine.errors import Conflict, CorruptData
from hashmatch.engine.matcher import PDQ_MIN_QUALITY, keeps_row_hit
from hashmatch.engine.report_file import write_jsonl_atomically
from hashmatch.engine.rescan_gap import fill_gaps
from hashmatch.engine.rescan_keys import CURSOR_KEY, LOG_KEY
from hashmatch.engine.scan import file_hash_hex, match_record, threshold_for
from hashmatch.engine.store import (
    FRAME_BITS,
    REVIVE,
    UPDATE,
    SignalStore,
    split_labels,
)
from hashmatch.engine.video import (
    VPDQ_QUALITY_THRESHOLD,
    is_vpdq_match,
    nearest_frames_distance,
    vpdq_match,
)
from hashmatch.indexes import load_index, make_index

if TYPE_CHECKING:
    from hashmatch.engine.runtime import Engine
    from hashmatch.engine.scan import Matcher
    from hashmatch.engine.signal_types import SignalType
    from hashmatch.indexes.sharded import ShardedIndex


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
    #: files a scan matched in some lists only (--list, --no-match), looked up in the
    #: others from their catalogued hashes (rescan_gap); 0 after a scan of every list
    gap_files: int = 0
    gap_s: float = 0.0
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
    # "retracted" | "expired" | "list-disabled" | "deleted" | "replaced" | "quality"
    reason: str


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


@dataclass(frozen=True)
class VideoFrames:
    """A stored video's frames, as vPDQ's rule compares them."""

    codes: np.ndarray  # uint8[k, 32], in frame order
    qualities: list[int] | None  # None unless every frame's is known (then all count)


def _video_frames(codes: np.ndarray, qualities: Sequence[int | None]) -> VideoFrames:
    """A video's frames; its qualities only when every one is known, as the engine
    compares a stored video (:func:`hashmatch.engine.video_join.match_videos`)."""
    known = len(qualities) == len(codes) and all(q is not None for q in qualities)
    return VideoFrames(codes, [int(q) for q in qualities] if known else None)  # type: ignore[arg-type]


@dataclass
class NewSignals:
    """The live signals among some added ids of one type, ready for ``search_radius``."""

    index_ids: np.ndarray  # int64; vPDQ: signal_id << FRAME_BITS | frame_no
    codes: np.ndarray  # uint8[n, nbytes]
    meta: Mapping[int, SignalMeta]  # per signal id (made on demand by a server source)
    qualities: np.ndarray  # int32 per row of codes: its signal's stored quality, -1 unknown

    @classmethod
    def empty(cls, st: SignalType) -> NewSignals:
        return cls(np.empty(0, np.int64), np.empty((0, st.nbytes), np.uint8), {},
                   np.empty(0, np.int32))  # fmt: skip


class NetEffect:
    """What a stretch of the change log did, per type: the last op on each id wins.

    Fed in log order, entry by entry (a local store) or page by page (a server); kept
    in numpy arrays (16 bytes a logged id, folded to one pair per id as they pile up):
    ``--since all`` on a store of millions must not build a Python object per signal.
    """

    FOLD = 1 << 20  # logged ids kept unfolded at least

    def __init__(self) -> None:
        self._parts: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
        self._order = 0  # ids fed so far: the log order of the next one
        self._unfolded = 0
        self._folded = 0

    def feed(self, signal_type: str, ids: np.ndarray, added: bool | np.ndarray) -> None:
        """``ids`` logged after all fed before, added (True) or removed, each or all."""
        n = len(ids)
        if not n:
            return
        order = np.arange(self._order, self._order + n, dtype=np.int64)
        tags = 2 * order + np.asarray(added, np.int64)  # by when, then the op in bit 0
        self._parts.setdefault(signal_type, []).append((np.asarray(ids, np.int64), tags))
        self._order += n
        self._unfolded += n
        if self._unfolded > max(self.FOLD, self._folded):
            self._fold()

    def _fold(self) -> None:
        self._parts = {t: [_last_ops(chunks)] for t, chunks in self._parts.items()}
        self._folded = sum(len(chunks[0][0]) for chunks in self._parts.values())
        self._unfolded = 0

    def result(self) -> tuple[dict[str, np.ndarray], int]:
        """(sorted ids whose last op is an add, per type that has any; how many ids'
        last op is a remove)."""
        added: dict[str, np.ndarray] = {}
        removed = 0
        for stype, chunks in self._parts.items():
            ids, tags = _last_ops(chunks)
            is_add = (tags & 1).astype(bool)
            removed += int((~is_add).sum())
            if is_add.any():
                added[stype] = ids[is_add]
        return added, removed


def _last_ops(chunks: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """(ids, tags) -> each id once with its last tag, by id."""
    ids = np.concatenate([c[0] for c in chunks])
    tags = np.concatenate([c[1] for c in chunks])
    order = np.lexsort((tags, ids))  # by id, then by when
    ids, tags = ids[order], tags[order]
    last = np.r_[ids[1:] != ids[:-1], True]  # the final op on each id
    return ids[last], tags[last]


@dataclass(frozen=True)
class LogIdentity:
    """Which history a change-log read came from: the store's random id and the
    digests of the changes at ``since`` and at ``head`` (None: no such change, e.g. 0),
    and whose view of it (``tenant``: a server shows each tenant its lists only).

    Why: a cursor is only a number. Against another store, or this store restored
    from an older backup, the same number names other changes; trusted as is, the
    rescan would skip that store's signals (for good once its counter passes the
    cursor). The digest covers each change row's random tag, so it differs too.
    """

    store_id: str  # "" = not known (a server older than the field)
    since_digest: str | None
    head_digest: str | None
    tenant: str = ""  # "" = every list (a local store) or not known (an older server)


@runtime_checkable
class ChangeSource(Protocol):
    """Where a rescan reads changed signals from (a local store or a server)."""

    #: catalog meta key of this source's cursor
    cursor_key: str
    #: set by :meth:`read`: the history it read
    log: LogIdentity | None

    def read(self, since: int) -> tuple[int, NetEffect]:
        """(head, the net effect of the log entries with since < seq <= head); sets
        :attr:`log`."""
        ...

    def new_signals(self, signal_type: str, ids: np.ndarray, now: float) -> NewSignals:
        """The live ones among ``ids`` (sorted) with codes and provenance."""
        ...

    def video_frames(self, signal_ids: Sequence[int]) -> dict[int, VideoFrames]:
        """vPDQ: the frames of each live stored video among ``signal_ids``."""
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

    def list_names(self) -> set[str]:
        """The lists this source matches in (a server: those shared with the tenant)."""
        ...

    def matcher(self, lists: Sequence[str], threshold: int | None) -> Matcher:
        """A scan's matcher over ``lists``, for the files a scan matched in other lists
        only (:mod:`hashmatch.engine.rescan_gap`); owned by the source."""
        ...


#: changes per ``Changes`` call of a server rescan (:class:`ServerChanges`)
PAGE_SIZE = 10_000
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
        self._engine: Engine | None = None  # for matcher(): loaded only when needed

    def lists(self) -> dict[int, tuple[str, bool]]:
        if self._lists is None:
            self._lists = self.store.list_table()
        return self._lists

    def read(self, since: int) -> tuple[int, NetEffect]:
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
        effect = NetEffect()
        for c in self.store.changes_since(since):
            if c.seq <= head and c.op in READ_OPS:
                effect.feed(c.signal_type, c.ids, read_as(c.op) == "add")
        return head, effect

    def new_signals(self, signal_type: str, ids: np.ndarray, now: float) -> NewSignals:
        """In arrays; provenance read per signal only when asked (a hit): ``--since
        all`` on a store of 1M signals built a tuple and a SignalMeta of each (~1 GB)."""
        index_ids, codes = self.store.codes_for(signal_type, ids)
        sids = index_ids >> FRAME_BITS if signal_type == "vpdq" else index_ids
        states = self.store.signal_states(np.unique(sids))
        enabled = [lid for lid, (_name, on) in self.lists().items() if on]
        live = states.live(enabled, now)
        keep = np.isin(sids, states.ids[live])  # gone since codes_for: not kept either
        index_ids, codes, sids = index_ids[keep], codes[keep], sids[keep]
        qualities = states.quality[np.searchsorted(states.ids, sids)]
        return NewSignals(index_ids, codes, _StoreMeta(self, states.ids[live]), qualities)

    def video_frames(self, signal_ids: Sequence[int]) -> dict[int, VideoFrames]:
        return {
            sid: _video_frames(np.frombuffer(b"".join(codes), np.uint8).reshape(-1, 32), quals)
            for sid, (codes, quals, _stamps) in self.store.frames_of(signal_ids).items()
        }

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

    def list_names(self) -> set[str]:
        return {name for name, _enabled in self.lists().values()}

    def matcher(self, lists: Sequence[str], threshold: int | None) -> Matcher:
        """The scan's local matcher on an engine over this store (its index loaded on
        the first lookup; the store stays the caller's: the engine is never closed)."""
        from hashmatch.engine.runtime import Engine
        from hashmatch.engine.scan import LocalMatcher

        if self._engine is None:
            self._engine = Engine(self.store.path.parent, self.store)
        return LocalMatcher(self._engine, threshold=threshold, lists=lists)


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

    The log is read in pages of ``page_size`` changes (:func:`change_pages`; a hub of
    millions of signals was one stream whose every change was kept as a protobuf
    message: 1.7 GB for 1M PDQ signals), each folded into numpy arrays as it comes
    (:class:`NetEffect`, :class:`_Received`); every page after the first must continue
    the history of the one before (a hub restored or replaced meanwhile: Conflict).
    ``timeout``: for each page's ``Changes`` call."""

    def __init__(
        self, client: Any, target: str, *, timeout: float = 3600.0, page_size: int = PAGE_SIZE
    ):
        self.client = client
        self.cursor_key = f"{CURSOR_KEY}@{target}"
        self.timeout = timeout
        self.page_size = page_size
        self.pages = 0  # Changes calls of the last read
        self._received: dict[str, _Received] = {}
        self.log: LogIdentity | None = None

    def read(self, since: int) -> tuple[int, NetEffect]:
        effect, self._received, self.pages = NetEffect(), {}, 0
        first: LogIdentity | None = None
        head, at, expect = since, 0, None
        for page in change_pages(self.client, since, 0, (), self.page_size, self.timeout):
            if expect is not None and page_mismatch(head, at, page, expect) is not None:
                raise Conflict(
                    f"the server's change log changed while it was read (change {head} is"
                    " no longer the one read: restored from a backup or replaced?); run the"
                    " rescan again",
                    field="since",
                )
            self._take(page.changes, effect)
            first = first or page.log
            head, at, self.pages = page.head, page.at, self.pages + 1
            expect = (page.log.store_id, page.log.head_digest or "", page.entry_digest)
            self.log = dataclasses.replace(first, head_digest=page.log.head_digest)
        for received in self._received.values():
            received.close()
        return head, effect

    def _take(self, changes: Sequence[Any], effect: NetEffect) -> None:
        """Fold one page's Change messages into ``effect`` and the added signals' arrays."""
        from hashmatch.v1 import signals_pb2

        added = signals_pb2.CHANGE_ACTION_ADDED
        by_type: dict[str, list[Any]] = {}
        for c in changes:
            by_type.setdefault(c.signal_type, []).append(c)
        for stype, group in by_type.items():  # types apart: their ids never meet
            ids = np.fromiter((c.signal_id for c in group), np.int64, len(group))
            adds = np.fromiter((c.action == added for c in group), bool, len(group))
            effect.feed(stype, ids, adds)
            if adds.any():
                if stype not in self._received:
                    self._received[stype] = _Received(signal_types.get(stype))
                self._received[stype].take([c for c in group if c.action == added])

    def new_signals(self, signal_type: str, ids: np.ndarray, now: float) -> NewSignals:
        received = self._received.get(signal_type)
        if received is None:
            return NewSignals.empty(signal_types.get(signal_type))
        return received.new_signals(ids)

    def video_frames(self, signal_ids: Sequence[int]) -> dict[int, VideoFrames]:
        received = self._received.get("vpdq")
        return {} if received is None else received.video_frames(signal_ids)

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

    def list_names(self) -> set[str]:
        return {x.name for x in self.client.list_hash_lists().lists}

    def matcher(self, lists: Sequence[str], threshold: int | None) -> Matcher:
        """The scan's remote matcher on this client (``Match``: the ``match`` role)."""
        from hashmatch.engine.scan import RemoteMatcher

        return RemoteMatcher(self.client, threshold=threshold, lists=lists)


class _Received:
    """The ADDED changes of one type a paged read received, as arrays.

    The last ADDED change of an id wins (the freshest state the server told); a live
    one comes with its code, quality and provenance (vPDQ: its frames). List names and
    label sets are interned, external ids packed in one blob: ~100 bytes a PDQ signal,
    where a kept protobuf message cost ~1.5 KB. Call :meth:`close` after the last page.
    """

    def __init__(self, st: SignalType):
        self.st = st
        self.video = st.name == "vpdq"
        self._width = 32 if self.video else st.nbytes  # vPDQ: hash = the video's SHA-256
        self._parts: dict[str, list[np.ndarray]] = {
            k: [] for k in ("ids", "rows", "codes", "quality", "kind", "ext_len", "frames",
                            "frame_quality", "frame_count")}  # fmt: skip
        self._ext: list[bytes] = []
        self.kinds: dict[tuple[str, tuple[str, ...]], int] = {}  # (list, labels) -> number
        self._rows = 0  # live changes so far

    def take(self, changes: Sequence[Any]) -> None:
        """One page's ADDED changes of this type, in log order."""
        live = [c for c in changes if c.live]
        rows = np.full(len(changes), -1, np.int64)
        rows[[i for i, c in enumerate(changes) if c.live]] = np.arange(len(live)) + self._rows
        self._rows += len(live)
        add = self._add
        add("ids", np.fromiter((c.signal_id for c in changes), np.int64, len(changes)))
        add("rows", rows)
        add("codes", np.frombuffer(b"".join(c.hash for c in live), np.uint8)
            .reshape(-1, self._width))  # fmt: skip
        add("quality", np.array([c.quality if c.HasField("quality") else -1 for c in live],
                                np.int32))  # fmt: skip
        kinds = [self.kinds.setdefault((c.list_name, tuple(c.labels)), len(self.kinds))
                 for c in live]  # fmt: skip
        add("kind", np.array(kinds, np.int32))
        ext = [c.external_id.encode() for c in live]
        add("ext_len", np.array([len(e) for e in ext], np.int64))
        self._ext.append(b"".join(ext))
        if self.video:
            add("frames", np.frombuffer(b"".join(f for c in live for f in c.frames), np.uint8)
                .reshape(-1, self.st.nbytes))  # fmt: skip
            add("frame_count", np.array([len(c.frames) for c in live], np.int64))
            # -1: unknown (a server sends them only when it knows every frame's)
            add("frame_quality", np.array(
                [q for c in live for q in (c.frame_qualities if len(c.frame_qualities)
                                           == len(c.frames) else [-1] * len(c.frames))],
                np.int32))  # fmt: skip

    def _add(self, name: str, array: np.ndarray) -> None:
        self._parts[name].append(array)

    def close(self) -> None:
        """Join the pages; keep each id's last ADDED change."""
        whole = {k: np.concatenate(v) for k, v in self._parts.items() if v}
        self._parts = {}
        order = np.argsort(whole["ids"], kind="stable")  # by id, then by when
        ids, rows = whole["ids"][order], whole["rows"][order]
        last = np.r_[ids[1:] != ids[:-1], True]
        self.ids, self.rows = ids[last], rows[last]
        self.codes, self.quality, self.kind = whole["codes"], whole["quality"], whole["kind"]
        self.ext = b"".join(self._ext)
        self.ext_at = np.r_[0, np.cumsum(whole["ext_len"])]
        self._ext = []
        self.names = {n: key for key, n in self.kinds.items()}
        if self.video:
            self.frames, self.frame_count = whole["frames"], whole["frame_count"]
            self.frame_quality = whole["frame_quality"]
            self.frame_at = np.r_[0, np.cumsum(self.frame_count)]

    def _live_rows(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(the live ones of ``ids``, their rows)."""
        ids = np.asarray(ids, np.int64)
        if not len(self.ids) or not len(ids):
            return ids[:0], ids[:0]
        at = np.minimum(np.searchsorted(self.ids, ids), len(self.ids) - 1)
        rows = np.where(self.ids[at] == ids, self.rows[at], -1)
        keep = rows >= 0
        return ids[keep], rows[keep]

    def new_signals(self, ids: np.ndarray) -> NewSignals:
        sids, rows = self._live_rows(ids)
        if not self.video:
            return NewSignals(sids, self.codes[rows], _MetaView(self, sids, rows),
                              self.quality[rows])  # fmt: skip
        counts = self.frame_count[rows]
        frame_no = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
        index_ids = (np.repeat(sids, counts) << FRAME_BITS) | frame_no
        codes = self.frames[np.repeat(self.frame_at[rows], counts) + frame_no]
        return NewSignals(index_ids, codes, _MetaView(self, sids, rows),
                          np.repeat(self.quality[rows], counts))  # fmt: skip

    def video_frames(self, signal_ids: Sequence[int]) -> dict[int, VideoFrames]:
        sids, rows = self._live_rows(np.asarray(sorted(signal_ids), np.int64))
        out = {}
        for sid, row in zip(sids.tolist(), rows.tolist(), strict=True):
            at = slice(int(self.frame_at[row]), int(self.frame_at[row + 1]))
            quals = self.frame_quality[at].tolist()
            out[sid] = _video_frames(self.frames[at], [None if q < 0 else q for q in quals])
        return out

    def meta(self, row: int) -> SignalMeta:
        list_name, labels = self.names[int(self.kind[row])]
        ext = self.ext[self.ext_at[row] : self.ext_at[row + 1]].decode()
        quality = int(self.quality[row])
        return SignalMeta(list_name, self.codes[row].tobytes(), labels, ext or None,
                          quality if quality >= 0 else None)  # fmt: skip


class _SignalsView(Mapping[int, SignalMeta]):
    """:attr:`NewSignals.meta` over ascending signal ids, each signal's made on demand
    (:meth:`_make`, given its position): only the signals with hits need theirs (a dict
    of them all was ~0.3 GB a million from a server, ~1 GB from a local store)."""

    def __init__(self, sids: np.ndarray):
        self._sids = sids  # ascending

    def _make(self, at: int, sid: int) -> SignalMeta:
        raise NotImplementedError

    def __getitem__(self, sid: int) -> SignalMeta:
        at = int(np.searchsorted(self._sids, sid))
        if at == len(self._sids) or self._sids[at] != sid:
            raise KeyError(sid)
        return self._make(at, sid)

    def __iter__(self) -> Iterator[int]:
        return iter(self._sids.tolist())

    def __len__(self) -> int:
        return len(self._sids)


class _MetaView(_SignalsView):
    """A server read's: its rows hold every received signal's provenance."""

    def __init__(self, received: _Received, sids: np.ndarray, rows: np.ndarray):
        super().__init__(sids)
        self._received, self._rows = received, rows

    def _make(self, at: int, sid: int) -> SignalMeta:
        return self._received.meta(int(self._rows[at]))


class _StoreMeta(_SignalsView):
    """A local store's, read per signal when first asked. A signal deleted since is
    absent (KeyError)."""

    def __init__(self, source: StoreChanges, sids: np.ndarray):
        super().__init__(sids)
        self._source = source
        self._made: dict[int, SignalMeta | None] = {}

    def _make(self, at: int, sid: int) -> SignalMeta:
        if sid not in self._made:
            found = self._source.store.lookup([sid], with_quality=True).get(sid)
            self._made[sid] = None if found is None else _store_meta(found, self._source.lists())
        made = self._made[sid]
        if made is None:
            raise KeyError(sid)
        return made


def _store_meta(found: tuple, lists: dict[int, tuple[str, bool]]) -> SignalMeta:
    list_id, _stype, code, labels, ext, _expires, _retracted, quality = found
    name = lists[list_id][0] if list_id in lists else ""
    return SignalMeta(name, bytes(code), split_labels(labels), ext, quality)


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

    # 1. net effect of the change log: the last op on an id wins
    added, summary.removed_signals = changes.result()

    # 2. new signals -> catalog index
    now = time.time()
    new_rows: list[MatchRow] = []
    unsure = np.empty(0, np.int64)  # live PDQ signals read now, of quality not known >= floor
    undone: list[MatchRow] = []  # vPDQ matches of a rescan that vPDQ's rule rejects now
    for stype in sorted(added):
        st = signal_types.get(stype)
        radius = st.check_threshold(threshold_for(stype, threshold))
        found = source.new_signals(stype, np.sort(added[stype]), now)
        index_ids, codes, info = found.index_ids, found.codes, found.meta
        sids = index_ids >> FRAME_BITS if stype == "vpdq" else index_ids
        summary.new_signals[stype] = len(info)
        if stype == "pdq":
            unsure = sids[found.qualities < floor]
        if not len(codes):
            continue
        # vPDQ: its own floor, whatever ``min_quality`` says, as a scan matches videos
        type_floor = VPDQ_QUALITY_THRESHOLD if stype == "vpdq" else floor
        hits = _search(catalog, st, type_floor, codes, radius, cache_dir, summary)
        if stype == "pdq":  # the scan's default rule for its low-quality files, too
            hits = _add_low_quality_hits(hits, catalog, st, floor, codes, found.qualities,
                                         radius, cache_dir, summary)  # fmt: skip
        qrows, hit_rows, dist = hits
        if stype == "vpdq":
            # what an earlier rescan found of these videos is decided again: one may
            # predate vPDQ's rule (a video sharing one frame of ten was a "match")
            again = catalog.matches_of(np.unique(sids).tolist(), "vpdq", found_by="rescan")
            pairs = [(m.file_id, m.signal_id) for m in again]
            found, rejected = _video_rows(catalog, source, st, index_ids, qrows, hit_rows, info,
                                          radius, pairs)  # fmt: skip
            new_rows.extend(found)
            undone += [m for m in again if (m.file_id, m.signal_id) in rejected]
        elif len(hit_rows):
            new_rows.extend(_rows(catalog, st, sids, qrows, hit_rows, dist, info, radius))

    # 2b. files a scan matched in some lists only (--list, --no-match): pass 1 found
    # their matches of the signals shared since the cursor; the lists they missed are
    # looked up for the earlier ones too (a cursor of 0 read them all: nothing to do)
    if cursor > 0:
        gap_rows, summary.gap_files, summary.gap_s = fill_gaps(catalog, source, threshold)
        new_rows.extend(gap_rows)  # after pass 1's: a match both found is inserted once
        summary.gap_s = round(summary.gap_s, 3)

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
        # a re-ingest that lowered (or unset) a signal's quality: files under the floor,
        # which only a signal of known quality >= the floor matches, no longer match it
        pdq_radius = signal_types.get("pdq").check_threshold(threshold_for("pdq", threshold))
        low = (
            catalog.remove_low_quality_matches(unsure.tolist(), floor, pdq_radius)
            if len(unsure)
            else []
        )
        # held vPDQ matches of live videos read now that vPDQ's rule does not make
        low += catalog.remove_matches([m for m in undone if why.get(m.signal_id) is None])
        # an id that now names another signal ("replaced") drops the old matches above
        # and keeps the ones just found against the signal it names now
        fresh = [r for r in new_rows if why.get(r.signal_id) in (None, "replaced")]
        inserted = _insert_new(catalog, fresh)
        catalog.cover_all()  # every file is matched in every list up to head now
        catalog.set_meta(source.cursor_key, str(head))
        if source.log is not None and source.log.store_id:
            catalog.set_meta(log_key, log_record(source.log, head, catalog.get_meta(log_key)))
        gone = [Retraction(m, why[m.signal_id] or "retracted") for m in removed]
        gone += [Retraction(m, "quality") for m in low]
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
                          st: SignalType, floor: int, codes: np.ndarray, qualities: np.ndarray,
                          radius: int, cache_dir: str | Path | None, summary: RescanSummary,
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """PDQ: ``hits`` plus those of the new signals of known quality >= the floor on the
    catalog's rows under the floor (:func:`catalog_index` ``low``): the scan's default
    (``low_quality_queries="match_quality_stored"``) matches such a file only against
    stored signals whose quality is KNOWN and >= the floor."""
    sure = np.flatnonzero((qualities >= 0) & (qualities >= floor))
    if not len(sure):
        return hits
    qrows, hit_rows, dist = _search(catalog, st, floor, codes[sure], radius, cache_dir,
                                    summary, low=True)  # fmt: skip
    return (
        np.concatenate([hits[0], sure[qrows]]),
        np.concatenate([hits[1], hit_rows]),
        np.concatenate([hits[2], dist]),
    )


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


@dataclass
class ChangePage:
    """One Changes call: its changes and where it stops, (head, at) = every change of
    the hub's entries up to head, plus those of entry head + 1 up to remote id ``at``."""

    changes: list
    head: int
    more: bool
    log: LogIdentity
    at: int = 0
    split: bool = False  # the hub honours positions inside an entry (a newer hub)
    entry_digest: str = ""  # of entry head + 1 when at > 0
    since_entry_digest: str = ""  # of entry since + 1 when the request's position is inside
    deleted: list = field(default_factory=list)  # DeletedList: lists the hub deleted, in the page


def change_pages(
    client: Any, since: int, at: int, types: Sequence[str], page_size: int, timeout: float
) -> Iterator[ChangePage]:
    """One Changes call after another, from (``since``, ``at``) to the hub's head. Each
    call is read whole before it is applied: a stream that breaks part way writes
    nothing. A page holds at most ``page_size`` changes: a hub stops inside a log entry
    (a list re-enabled is one entry of all its signals: one 1M page held 1.5 GB here and
    the local write lock for seconds), and counts a video as one change per 10 frames
    (300 videos of 3,000 frames were one 600 MB page), so a page may hold fewer changes
    than asked: pages are read until ``more`` is false. An older hub ignores the
    position and sends whole entries (entry since + 1 from its start: applied again,
    which changes nothing)."""
    while True:
        page = ChangePage([], since, False, LogIdentity("", None, None))
        for reply in client.changes(since, signal_types=list(types), max_changes=page_size,
                                    since_signal_id=at, timeout=timeout):  # fmt: skip
            page.head, page.more = int(reply.head), bool(reply.more)
            page.log = LogIdentity(reply.store_id, reply.since_digest or None,
                                   reply.head_digest or None, reply.tenant)  # fmt: skip
            page.split, page.since_entry_digest = reply.split_entries, reply.since_entry_digest
            page.at = int(reply.head_signal_id) if reply.split_entries else 0
            page.entry_digest = reply.head_entry_digest if page.at else ""
            page.changes.extend(reply.changes)
            page.deleted.extend(reply.deleted_lists)
        yield page
        if not page.more or (page.head, page.at) <= (since, at):
            return
        since, at = page.head, page.at


def page_mismatch(
    since: int, at: int, page: ChangePage, expect: tuple[str, str, str]
) -> str | None:
    """:func:`cursor_mismatch` of the cursor (since, at), or "entry": entry since + 1,
    which the cursor is inside, is not the one partly applied (a hub restored from a
    backup taken before it, then written again). An older hub sent that entry whole:
    nothing of it is skipped, only since is checked."""
    why = cursor_mismatch(since, page.head, page.log, expect[0] or None, expect[1] or None)
    inside = why is None and at and page.split and page.log.store_id
    return "entry" if inside and page.since_entry_digest != expect[2] else why


def check_cursor(
    cursor: int, head: int, log: LogIdentity | None, saved: str | None, *, given: bool
) -> None:
    """Refuse a cursor that is not a position in the history just read (Conflict), or
    that another tenant's view of it was read to (:func:`check_tenant`).

    ``saved``: the catalog's record of the log its cursor was taken in (JSON; None for
    a catalog rescanned before it was kept: only the head is checked then). ``given``:
    the caller named the position (``--since N``): only that it exists is checked.
    """
    redo = "run `hashmatch rescan --since all` to match the whole store and start the cursor again"
    theirs = digest = None
    record = {} if given else _saved_record(saved)
    if record:
        try:
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
    check_tenant(record.get("tenant"), log.tenant if log is not None else "")


def claim_tenant(catalog: Catalog, target: str, tenant: str) -> None:
    """A scan through server ``target`` as ``tenant``: refuse it if the catalog was
    matched through the server as another tenant (:func:`check_tenant`), else keep the
    tenant with the catalog's record of that server's log, which the next rescan
    through it checks (the first one too: a scan keeps no cursor)."""
    key = f"{LOG_KEY}@{target}"
    record = _saved_record(catalog.get_meta(key))
    check_tenant(record.get("tenant"), tenant)
    if tenant and record.get("tenant") != tenant:
        catalog.set_meta(key, json.dumps({**record, "tenant": tenant}))


def check_tenant(kept: Any, mine: str) -> None:
    """Refuse a rescan or scan through a server as another tenant than the one this
    catalog was matched through it as (Conflict).

    Why: a server shows each tenant only the lists shared with it, and answers DELETED
    for a signal of a list it does not share. A catalog rescanned through an admin's
    token and then a partner's had every match of a list the partner cannot see
    retracted as "deleted" (and gone for good); the other way, the signals of the lists
    only the second tenant sees, logged before the cursor, were never matched. Tokens
    of one tenant (a rotation) are the same view. ``kept``/``mine`` (the tenant the
    server names now): None or "" (a catalog or a server older than the record) is
    not checked."""
    if not isinstance(kept, str) or not kept or not mine or kept == mine:
        return
    raise Conflict(
        f"this catalog was matched through this server as tenant {kept!r}, and this token is"
        f" tenant {mine!r}, which sees other lists: its rescans would report the matches"
        f" found through {kept!r} in lists {mine!r} cannot see as deleted, and miss the"
        f" signals of lists only {mine!r} sees. Use a token of tenant {kept!r}, scan into"
        f" another catalog for {mine!r}, or run `hashmatch rescan --since all` with this"
        f" token to re-baseline this catalog as {mine!r} (its matches of lists {mine!r}"
        " cannot see are then retracted)",
        field="token",
    )


def _saved_record(saved: str | None) -> dict:
    """The catalog's record of the log its cursor is a position in ({}: none, unreadable)."""
    try:
        record = json.loads(saved) if saved is not None else {}
    except ValueError:
        return {}
    return record if isinstance(record, dict) else {}


def log_record(log: LogIdentity, head: int, saved: str | None) -> str:
    """The record kept with the cursor ``head`` (JSON): the store, the digest of the
    change at head, and whose view was read (``tenant``; a server older than the field
    does not say: the tenant kept before, if any, stays)."""
    record: dict[str, Any] = {"store_id": log.store_id, "seq": head, "digest": log.head_digest}
    tenant = log.tenant or _saved_record(saved).get("tenant")
    if tenant:
        record["tenant"] = tenant
    return json.dumps(record)


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
    threshold: int,
) -> list[MatchRow]:
    """Hits of single-code types -> one row per (file, signal), nearest catalog row.
    A re-oriented row of a ``--dihedral`` file matches only within the type's default
    threshold (``keeps_row_hit``), as the scan and ``Match`` with media hold it."""
    if not len(hit_rows):
        return []
    # row id -> (file_id, frame, code, orientation)
    where = catalog.hash_rows(np.unique(hit_rows).tolist())
    best: dict[tuple[int, int], MatchRow] = {}
    for q, row_id, d in zip(qrows.tolist(), hit_rows.tolist(), dist.tolist(), strict=True):
        found = where.get(row_id)
        if found is None:  # the file was re-hashed since the index was read
            continue
        file_id, frame, code, turned = found
        if not keeps_row_hit(turned, d, st.default_threshold, threshold):
            continue  # a re-oriented row beyond the type's default threshold
        sid = int(sids[q])
        key = (file_id, sid)
        if key in best and best[key].distance <= d:
            continue
        meta = info.get(sid)
        if meta is None:  # deleted since the signals were read (lists delete)
            continue
        best[key] = _match_row(st, file_id, sid, code, int(d), frame, meta)
    return list(best.values())


def _video_rows(
    catalog: Catalog,
    source: ChangeSource,
    st: SignalType,
    index_ids: np.ndarray,
    qrows: np.ndarray,
    hit_rows: np.ndarray,
    info: Mapping[int, SignalMeta],
    radius: int,
    held: Sequence[tuple[int, int]] = (),
) -> tuple[list[MatchRow], set[tuple[int, int]]]:
    """vPDQ: frame hits -> (one row per (file, video signal) that vPDQ's rule matches,
    the (file, signal) pairs it rejects).

    The hits only nominate pairs (a frame of the file within the radius of one of the
    video's), as do ``held`` (matches to decide again); each is then decided as a scan
    decides it (the engine's :func:`~hashmatch.engine.video_join.match_videos`):
    :func:`vpdq_match` on both videos' whole frame lists (frames under the quality floor
    ignored, repeated ones counted once), kept when :func:`is_vpdq_match` (>= 80% of the
    file's frames)."""
    where = catalog.hash_rows(np.unique(hit_rows).tolist())
    pairs = sorted({
        (where[row_id][0], int(index_ids[q]) >> FRAME_BITS)
        for q, row_id in zip(qrows.tolist(), hit_rows.tolist(), strict=True)
        if row_id in where  # else the file was re-hashed since the index was read
    } | set(held))  # fmt: skip
    out: list[MatchRow] = []
    rejected: set[tuple[int, int]] = set()
    if not pairs:
        return out, rejected
    files = {
        fid: _video_frames(h.codes, h.qualities)
        for fid, hashes in catalog.hashes_of(sorted({f for f, _ in pairs})).items()
        for h in hashes
        if h.signal_type == "vpdq"
    }
    videos = source.video_frames(sorted({s for _, s in pairs}))
    for file_id, sid in pairs:
        mine, theirs, meta = files.get(file_id), videos.get(sid), info.get(sid)
        if mine is None or theirs is None or meta is None:  # gone since read
            continue
        qpct, tpct = vpdq_match(mine.codes, mine.qualities, theirs.codes, theirs.qualities, radius)
        if not is_vpdq_match(qpct, tpct):
            rejected.add((file_id, sid))
            continue
        row = _match_row(st, file_id, sid, None, nearest_frames_distance(mine.codes, theirs.codes),
                         0, meta)  # fmt: skip
        out.append(dataclasses.replace(row, hash_hex=file_hash_hex(st, mine.codes),
                                       query_match_pct=float(qpct),
                                       target_match_pct=float(tpct)))  # fmt: skip
    return out, rejected


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
