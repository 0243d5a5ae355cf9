"""Signals RPCs for readers of the change log: Changes (server stream) and SignalStates.

What ``hashmatch rescan --server`` needs: the signals added and removed since a log
position, with each added signal's current code and provenance, and whether the
signals a catalog holds matches of still match. A tenant sees only the lists shared
with it (the same rule as Match): log entries of other lists are left out, and their
signals read as DELETED; a list deleted while shared with it is named as deleted
(``deleted_lists``). Changes needs the "export" role (it hands over whole lists),
SignalStates the "match" role.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from hashmatch.engine.errors import InvalidInput
from hashmatch.engine.rescan import READ_OPS, read_as, why_gone
from hashmatch.engine.store import split_labels
from hashmatch.server import convert
from hashmatch.v1 import signals_pb2

if TYPE_CHECKING:
    from hashmatch.engine.store import SignalStore
    from hashmatch.server.app import ServiceHost
    from hashmatch.server.calls import Call

CHUNK = 900  # ids per store lookup (SQLite's parameter limit)
#: a vPDQ ADDED change of F frames counts as ceil(F / FRAMES_PER_CHANGE) changes of
#: max_changes (at least 1): a page was sized in signals, so 10,000 hour-long videos
#: (~0.4 KB a frame in the reader) made one page of ~14 GB
FRAMES_PER_CHANGE = 10
#: frames read from the store at a time (~0.1 KB of Python objects each, then the
#: reply built from them): the hub read the frames of 900 videos at once (+447 MB for
#: 900 videos of 3,000 frames)
FRAME_READ = 20_000
MESSAGE_BYTES = 1 << 20  # flush a streamed message past ~1 MiB of codes
#: an entry's ids blob from this size on (bytes: 128k ids) is kept between the calls
#: that page through it, with its digest (one entry and a few digests at a time)
BIG_ENTRY = 1 << 20
MAX_SEQ = 2**63 - 1  # SQLite's largest integer: the change log's positions are below it
_cache_lock = threading.Lock()
_cache: dict[tuple, np.ndarray] = {}
_digests: dict[tuple, str] = {}

_STATES = {
    None: signals_pb2.SIGNAL_STATE_LIVE,
    "retracted": signals_pb2.SIGNAL_STATE_RETRACTED,
    "expired": signals_pb2.SIGNAL_STATE_EXPIRED,
    "list-disabled": signals_pb2.SIGNAL_STATE_LIST_DISABLED,
    "deleted": signals_pb2.SIGNAL_STATE_DELETED,
}
#: the states of an ADDED change sent with its code and provenance: live, and list
#: disabled (intact, live = false): a mirror retracted its copy of every signal of a
#: list the hub disabled (resync: all of them), and restored them all on re-enable
_SENT = (None, "list-disabled")


def changes(
    host: ServiceHost, request: signals_pb2.ChangesRequest, call: Call
) -> Iterator[signals_pb2.ChangesResponse]:
    if request.since < 0:
        raise InvalidInput("since must be >= 0 (0 = from the beginning)", field="since")
    if request.since_signal_id < 0:
        raise InvalidInput("since_signal_id must be >= 0 (0 = none of entry since + 1)",
                           field="since_signal_id")  # fmt: skip
    types = {
        convert.signal_type(name, f"signal_types[{i}]").name
        for i, name in enumerate(request.signal_types)
    }
    store = host.engine.store
    visible = store.visible_list_ids(call.principal.engine_tenant)
    split = request.split_entries
    after = int(request.since_signal_id) if split else 0
    head = store.change_counter()
    entries = _entries(store, request.since, head, types)
    stop = _Stop(len(entries) - 1, 0, False)
    if request.max_changes:
        stop = _stop_at(store, entries, (request.since, after), visible,
                        int(request.max_changes), split)  # fmt: skip
        if stop.more:
            head = entries[stop.index].seq - (1 if stop.signal_id else 0)
    entries = entries[: stop.index + 1]
    lists = store.list_table()
    now = time.time()
    log = {  # which history since and head are positions in (see ChangesResponse)
        "store_id": store.store_id(),
        "since_digest": _digest(store, request.since),
        "head_digest": _digest(store, head),
        "split_entries": split,
        "head_signal_id": stop.signal_id,
        "head_entry_digest": _digest(store, head + 1) if stop.signal_id else "",
        "since_entry_digest": _digest(store, request.since + 1) if after else "",
        "tenant": call.principal.tenant,  # whose view: a reader keeps it with its cursor
    }
    reply = signals_pb2.ChangesResponse(head=head, more=stop.more, **log)
    tenant = call.principal.engine_tenant
    reply.deleted_lists.extend(  # first message only
        signals_pb2.DeletedList(list_name=name, seq=seq, deleted_at=at, list_uid=uid)
        for name, seq, at, uid in store.deleted_lists(request.since, head, tenant)
    )
    uids = store.list_uids()
    size = sent = 0
    for n, entry in enumerate(entries):
        added = entry.op == "add"
        action = signals_pb2.CHANGE_ACTION_ADDED if added else signals_pb2.CHANGE_ACTION_REMOVED
        ids = _cut(_ids(store, entry), after if entry.seq == request.since + 1 else 0,
                   stop.signal_id if n == stop.index else 0)  # fmt: skip
        with_frames = added and entry.signal_type == "vpdq"
        for chunk in _slices(store, ids, with_frames):  # details per slice only
            call.check_deadline()
            with _one_read(store):  # a video's state and its frames from one snapshot
                info = store.lookup(chunk, with_quality=True)
                frames = _frames(store, chunk) if with_frames else {}
            for sid in chunk:
                meta = info.get(sid)
                if visible is not None and (meta is None or meta[0] not in visible):
                    continue  # not shared with the caller: not shown at all
                change = signals_pb2.Change(
                    seq=entry.seq, action=action, signal_id=sid, signal_type=entry.signal_type
                )
                why = why_gone(meta and meta[:7], lists, now) if added else "removed"
                if added:
                    change.state = _STATES[why]
                if why in _SENT:
                    list_id, _stype, code, labels, ext, expires, _retracted, quality = meta
                    change.live = why is None
                    change.list_name = lists[list_id][0]
                    change.list_uid = uids.get(list_id, "")
                    change.labels.extend(split_labels(labels))
                    change.external_id = ext or ""
                    change.hash = bytes(code)
                    if quality is not None:
                        change.quality = int(quality)
                    if expires is not None:
                        change.expires_at = float(expires)
                    if entry.signal_type == "vpdq":
                        codes, qualities, stamps = frames.get(sid, ((), (), ()))
                        change.frames.extend(codes)
                        if None not in qualities:  # all known, or none sent
                            change.frame_qualities.extend(qualities)
                        if None not in stamps:
                            change.timestamps.extend(stamps)
                        size += 40 * len(change.frames)
                reply.changes.append(change)
                size += 64
                if size >= MESSAGE_BYTES:
                    sent += len(reply.changes)
                    yield reply
                    reply = signals_pb2.ChangesResponse(head=head, more=stop.more, **log)
                    size = 0
    sent += len(reply.changes)
    call.log.update(since=request.since, head=head, changes=sent, more=stop.more)
    if stop.signal_id:
        call.log.update(head_signal_id=stop.signal_id)
    yield reply  # always at least one message: it carries head


@dataclass(frozen=True)
class _Entry:
    """A change-log row the stream reads: its ids are loaded one entry at a time."""

    seq: int
    op: str  # "add" (add, revive, update: the signal matches, maybe anew) | "remove"
    signal_type: str
    first: int | None
    last: int | None
    nbytes: int  # of the ids blob (0: the ids are first..last)


def _entries(store: SignalStore, since: int, head: int, types: set[str]) -> list[_Entry]:
    """The entries after ``since`` up to ``head`` with ids, of ``types`` (empty = all),
    as :meth:`StoreChanges.read` reads them, without their ids (a first mirror of a big
    hub held every id of its log, as Python ints, in one call)."""
    out = []
    for seq, op, stype, first, last, nbytes in store.conn().execute(
        "SELECT seq, op, signal_type, first_id, last_id, length(ids) FROM changes"
        f" WHERE seq > ? AND seq <= ? AND op IN ({','.join('?' * len(READ_OPS))}) ORDER BY seq",
        (since, head, *READ_OPS),
    ):
        if types and stype not in types:
            continue
        if nbytes or (nbytes is None and first is not None and last is not None):
            out.append(_Entry(seq, read_as(op), stype, first, last, nbytes or 0))
    return out


def _ids(store: SignalStore, entry: _Entry) -> np.ndarray:
    """An entry's ids in ascending order, each once (how every writer logs them; sorted
    here if an entry is not, as the position inside an entry is a signal id)."""
    if not entry.nbytes:
        return np.arange(entry.first, entry.last + 1, dtype=np.int64)
    key = _entry_key(store, entry.seq) if entry.nbytes >= BIG_ENTRY else None
    with _cache_lock:
        if key is not None and key in _cache:
            return _cache[key]
    (blob,) = store.conn().execute("SELECT ids FROM changes WHERE seq = ?", (entry.seq,)).fetchone()
    ids = np.frombuffer(blob, dtype=np.int64)
    ids = ids if bool(np.all(ids[1:] > ids[:-1])) else np.unique(ids)
    if key is not None:
        with _cache_lock:
            _cache.clear()  # one big entry: the one whose pages are being read
            _cache[key] = ids
    return ids


def _digest(store: SignalStore, seq: int) -> str:
    """:meth:`SignalStore.change_digest` (""), kept for a big entry: a caller paging
    through one hashed its whole ids blob two or three times a page. A position past
    SQLite's integer range names no entry: since = 2**63 - 1 with since_signal_id asked
    for entry since + 1, which SQLite could not even be asked about (INTERNAL)."""
    if seq > MAX_SEQ:
        return ""
    key = ("digest", *_entry_key(store, seq))
    with _cache_lock:
        if key in _digests:
            return _digests[key]
    digest = store.change_digest(seq) or ""
    row = store.conn().execute("SELECT length(ids) FROM changes WHERE seq = ?", (seq,)).fetchone()
    if row and (row[0] or 0) >= BIG_ENTRY:
        with _cache_lock:
            if len(_digests) > 8:
                _digests.clear()
            _digests[key] = digest
    return digest


def _entry_key(store: SignalStore, seq: int) -> tuple:
    """What names one entry of one history: a store restored from a backup reuses seq
    for another write, with another random tag."""
    row = store.conn().execute("SELECT tag FROM change_tags WHERE seq = ?", (seq,)).fetchone()
    return (store.store_id(), seq, row[0] if row else None)


def _cut(ids: np.ndarray, after: int, through: int) -> np.ndarray:
    """``ids`` (ascending) above ``after`` and up to ``through`` (0 = no bound)."""
    lo = int(np.searchsorted(ids, after, side="right")) if after else 0
    hi = int(np.searchsorted(ids, through, side="right")) if through else len(ids)
    return ids[lo:hi]


@dataclass(frozen=True)
class _Stop:
    """Where a page stops: after entry ``index``, or inside it after ``signal_id``."""

    index: int
    signal_id: int  # 0 = the whole entry
    more: bool


def _stop_at(store: SignalStore, entries: list[_Entry], since: tuple[int, int],
             visible: set[int] | None, limit: int, split: bool) -> _Stop:  # fmt: skip
    """Where ``max_changes`` stops the page. Only what the caller will be shown counts:
    paging on every logged id let a tenant measure other tenants' ingests/retractions
    (size, type); a video counts by its frames (:func:`_weights`), never less than one
    change a page. Without ``split`` (an older client) a page ends after the entry that
    reaches the limit; with it, at the limit, inside an entry if need be. ``since``: the
    request's (since, since_signal_id)."""
    total = 0
    for n, entry in enumerate(entries):
        ids = _cut(_ids(store, entry), since[1] if entry.seq == since[0] + 1 else 0, 0)
        for start in range(0, len(ids), CHUNK):
            shown = _shown(store, ids[start : start + CHUNK], visible)
            if not len(shown):
                continue
            reach = total + np.cumsum(_weights(store, entry, shown))  # total after each id
            if split and reach[-1] >= limit:
                last = int(shown[np.searchsorted(reach, limit)])  # the first to reach it
                if last != int(ids[-1]):
                    return _Stop(n, last, True)
            total = int(reach[-1])
        if total >= limit and n + 1 < len(entries):
            return _Stop(n, 0, True)
    return _Stop(len(entries) - 1, 0, False)


def _weights(store: SignalStore, entry: _Entry, ids: np.ndarray) -> np.ndarray:
    """What each of ``ids`` counts against max_changes: 1, or for a video sent with its
    frames (a vPDQ ADDED change) ceil(frames / FRAMES_PER_CHANGE), so that a page's
    size in the reader follows its frames."""
    if entry.op != "add" or entry.signal_type != "vpdq":
        return np.ones(len(ids), np.int64)
    counts = store.frame_counts(ids.tolist())
    frames = np.array([counts.get(s, 0) for s in ids.tolist()], np.int64)
    return np.maximum(1, -(-frames // FRAMES_PER_CHANGE))


def _slices(store: SignalStore, ids: np.ndarray, with_frames: bool) -> Iterator[list[int]]:
    """``ids`` in slices read at once: CHUNK ids, and for videos sent with their frames
    at most FRAME_READ frames (or one video) a slice."""
    for start in range(0, len(ids), CHUNK):
        chunk = ids[start : start + CHUNK].tolist()
        if not with_frames:
            yield chunk
            continue
        counts = store.frame_counts(chunk)
        part, frames = [], 0
        for sid in chunk:
            if part and frames + counts.get(sid, 0) > FRAME_READ:
                yield part
                part, frames = [], 0
            part.append(sid)
            frames += counts.get(sid, 0)
        if part:
            yield part


def _shown(store: SignalStore, ids: np.ndarray, visible: set[int] | None) -> np.ndarray:
    """Those of ``ids`` (at most CHUNK) that are signals of lists in ``visible`` (None = all)."""
    if visible is None:
        return ids
    info = store.lookup(ids.tolist())
    return np.array([s for s in ids.tolist() if s in info and info[s][0] in visible], np.int64)


@contextlib.contextmanager
def _one_read(store: SignalStore) -> Iterator[None]:
    """One SQLite read transaction on this thread's connection. Why: a retract committed
    between store.lookup (live) and _frames (frames_of reads live frames only) gave an
    ADDED change with live = true and no frames. Not held across a yield (a slow
    client would pin the WAL)."""
    conn = store.conn()
    conn.execute("BEGIN")
    try:
        yield
    finally:
        conn.execute("COMMIT")


def _frames(store: SignalStore, ids: list[int]) -> dict[int, tuple[list, list, list]]:
    """vPDQ: live frames (codes, qualities, timestamps) of each signal, in frame order."""
    return store.frames_of(ids)


def signal_states(
    host: ServiceHost, request: signals_pb2.SignalStatesRequest, call: Call
) -> signals_pb2.SignalStatesResponse:
    ids = list(request.signal_ids)
    if len(ids) > host.config.max_batch:
        raise InvalidInput(
            f"{len(ids)} ids is over the limit of {host.config.max_batch}; split the batch",
            field="signal_ids",
        )
    store = host.engine.store
    visible = store.visible_list_ids(call.principal.engine_tenant)
    lists = store.list_table()
    now = time.time()
    info = store.lookup(ids)
    states = []
    for sid in ids:
        meta = info.get(sid)
        if visible is not None and meta is not None and meta[0] not in visible:
            meta = None  # not shared with the caller: as if it did not exist
        states.append(_STATES[why_gone(meta, lists, now)])
    call.log.update(ids=len(ids))
    return signals_pb2.SignalStatesResponse(states=states)
