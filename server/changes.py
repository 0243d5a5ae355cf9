"""Signals RPCs for readers of the change log: Changes (server stream) and SignalStates.

What ``hashmatch rescan --server`` needs: the signals added and removed since a log
position, with each added signal's current code and provenance, and whether the
signals a catalog holds matches of still match. A tenant sees only the lists shared
with it (the same rule as Match): log entries of other lists are left out, and their
signals read as DELETED. Changes needs the "export" role (it hands over whole lists),
SignalStates the "match" role.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from hashmatch.engine.errors import InvalidInput
from hashmatch.engine.rescan import StoreChanges, why_gone
from hashmatch.engine.store import split_labels
from hashmatch.server import convert
from hashmatch.v1 import signals_pb2

if TYPE_CHECKING:
    from hashmatch.engine.store import SignalStore
    from hashmatch.server.app import ServiceHost
    from hashmatch.server.calls import Call

CHUNK = 900  # ids per store lookup (SQLite's parameter limit)
MESSAGE_BYTES = 1 << 20  # flush a streamed message past ~1 MiB of codes

_STATES = {
    None: signals_pb2.SIGNAL_STATE_LIVE,
    "retracted": signals_pb2.SIGNAL_STATE_RETRACTED,
    "expired": signals_pb2.SIGNAL_STATE_EXPIRED,
    "list-disabled": signals_pb2.SIGNAL_STATE_LIST_DISABLED,
    "deleted": signals_pb2.SIGNAL_STATE_DELETED,
}


def changes(
    host: ServiceHost, request: signals_pb2.ChangesRequest, call: Call
) -> Iterator[signals_pb2.ChangesResponse]:
    if request.since < 0:
        raise InvalidInput("since must be >= 0 (0 = from the beginning)", field="since")
    types = {
        convert.signal_type(name, f"signal_types[{i}]").name
        for i, name in enumerate(request.signal_types)
    }
    store = host.engine.store
    visible = store.visible_list_ids(call.principal.engine_tenant)
    head, logged = StoreChanges(store).read(request.since)
    entries = [c for c in logged if not types or c.signal_type in types]
    more = False
    if request.max_changes:  # stop after the entry that reaches the limit
        total = 0
        for n, entry in enumerate(entries):
            # only what the caller will be shown counts: paging on every logged id
            # let a tenant measure other tenants' ingests/retractions (size, type)
            total += _shown(store, entry.ids.tolist(), visible)
            if total >= request.max_changes and n + 1 < len(entries):
                head, more, entries = entry.seq, True, entries[: n + 1]
                break
    lists = store.list_table()
    now = time.time()
    log = {  # which history since and head are positions in (see ChangesResponse)
        "store_id": store.store_id(),
        "since_digest": store.change_digest(request.since) or "",
        "head_digest": store.change_digest(head) or "",
    }
    reply = signals_pb2.ChangesResponse(head=head, more=more, **log)
    size = sent = 0
    for entry in entries:
        call.check_deadline()
        added = entry.op == "add"
        action = signals_pb2.CHANGE_ACTION_ADDED if added else signals_pb2.CHANGE_ACTION_REMOVED
        ids = entry.ids.tolist()
        for start in range(0, len(ids), CHUNK):
            chunk = ids[start : start + CHUNK]
            with _one_read(store):  # a video's state and its frames from one snapshot
                info = store.lookup(chunk, with_quality=True)
                frames = _frames(store, chunk) if added and entry.signal_type == "vpdq" else {}
            for sid in chunk:
                meta = info.get(sid)
                if visible is not None and (meta is None or meta[0] not in visible):
                    continue  # not shared with the caller: not shown at all
                change = signals_pb2.Change(
                    seq=entry.seq, action=action, signal_id=sid, signal_type=entry.signal_type
                )
                if added and why_gone(meta and meta[:7], lists, now) is None:
                    list_id, _stype, code, labels, ext, expires, _retracted, quality = meta
                    change.live = True
                    change.list_name = lists[list_id][0]
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
                    reply = signals_pb2.ChangesResponse(head=head, more=more, **log)
                    size = 0
    sent += len(reply.changes)
    call.log.update(since=request.since, head=head, changes=sent, more=more)
    yield reply  # always at least one message: it carries head


def _shown(store: SignalStore, ids: list[int], visible: set[int] | None) -> int:
    """How many of ``ids`` are signals of lists in ``visible`` (None = all)."""
    if visible is None:
        return len(ids)
    shown = 0
    for start in range(0, len(ids), CHUNK):
        info = store.lookup(ids[start : start + CHUNK])
        shown += sum(1 for meta in info.values() if meta[0] in visible)
    return shown


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
