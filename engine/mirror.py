"""Mirror a hub's hash lists into the local store (``hashmatch mirror``).

A platform that runs its own hashmatch wants the lists a hub (an industry program
running hashmatch) shares with it, kept current locally. The hub's ``Signals.Changes``
stream says what was added, updated, restored and retracted since a log position,
with each live signal's current code and provenance; this module applies it:

* each remote list lands in a local list named ``prefix + remote name``, created by
  the mirror and recorded in ``mirror_lists``: a local list the mirror did not create
  is never written into (refused by name);
* an ADDED change of a live signal adds or updates the local copy (labels, external
  id, quality, expiry, vPDQ frames) and restores it if the mirror had retracted it;
  a REMOVED change, or an ADDED one of a signal retracted or expired there, retracts
  it; an ADDED one of a signal whose list the hub disabled (``Change.state``) is
  stored like a live one, and its local list disabled. Which
  local signal a remote id names is kept in ``mirror_signals`` (REMOVED carries no
  code); a retraction made locally by someone else is left alone;
* a list the hub deleted (``lists delete``, named in the page's ``deleted_lists``) is
  deleted here too, before the page's changes; one it merely stopped sharing is disabled;
* a hub that sends list uids (``HashList.uid``) names a list by it across renames: each
  copy records the uid of the list it copies (``mirror_list_uids``), a list the hub
  renamed has its copy renamed at the start of a run (no resync), a copy whose name the
  hub gave to another list is set aside under a "(retired N)" name, and a delete
  deletes every copy of the list's uid (:func:`_follow_renames`, :func:`_purge_deleted`);
* **exactly once**: each page (``max_changes``) of changes is applied, and the cursor
  (hub store id, log position, digest of the change there) advanced, in ONE
  transaction (:meth:`SignalStore.transaction`): killed at any point, a re-run gives
  the state an uninterrupted run gives;
* a cursor that no longer names the same point of the hub's log (another store id, or
  a different change at the position: a hub restored from a backup or replaced) is
  refused (:func:`hashmatch.engine.rescan.cursor_mismatch`, the rule ``rescan``
  uses); ``resync`` reads the log from 0 and, at its end, retracts the local copies
  of signals the hub no longer has live.

A running ``hashmatch serve`` on the same data dir sees the writes at its next
lookup, as it sees any CLI write (the change log).
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from hashmatch.engine import signal_types
from hashmatch.engine.errors import Conflict, InvalidInput, NotFound
from hashmatch.engine.ingest import parse_time
from hashmatch.engine.rescan import LogIdentity, change_pages, cursor_mismatch, page_mismatch
from hashmatch.engine.store import (
    SignalRecord,
    SignalStore,
    _check_name,
    fingerprints,
    join_labels,
    video_key,
)

DEFAULT_PAGE = 10_000  # changes per transaction (max_changes of each Changes call)
CHUNK = 900  # SQLite parameters per statement
#: store_meta key (+ prefix): [hub store id, log position, digest of the change there]
#: this mirror has applied the hub's list deletes to (:func:`_purge_deleted`)
_DELETES_READ = "mirror_deletes_read:"


@dataclass
class MirrorSummary:
    """What one mirror run did (counts are of local signals)."""

    prefix: str
    server: str
    store_id: str = ""
    since: int = 0
    head: int = 0
    added: int = 0
    updated: int = 0
    retracted: int = 0
    restored: int = 0
    unchanged: int = 0
    kept_retracted: int = 0  # live on the hub, retracted here by someone else: left so
    pages: int = 0
    resync: bool = False
    lists: list[str] = field(default_factory=list)  # local lists written
    # local lists that follow the hub's: disabled (the hub disabled it or stopped
    # sharing it), enabled again, or kept disabled until a resync (shared again: its
    # changes while it was not shared were never shown)
    lists_disabled: list[str] = field(default_factory=list)
    lists_enabled: list[str] = field(default_factory=list)
    lists_stale: list[str] = field(default_factory=list)
    # local lists deleted (as `lists delete` does) because the hub deleted its list:
    # a hard purge there (agreement ended, legal duty), not a list no longer shared
    lists_purged: list[str] = field(default_factory=list)
    # [old, new] local names: a copy renamed as the hub renamed its list, or set aside
    # (retired) because the hub gave its name to another list
    lists_renamed: list[list[str]] = field(default_factory=list)
    # lists the hub shares with this token (0: a token whose tenant was never granted
    # any, which otherwise reads as a hub with nothing new)
    lists_shared: int = 0
    # hub lists with signals this mirror never wrote (shared with the token after its
    # first run): their past is behind the cursor, so this run resyncs
    lists_new: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def changed(self) -> int:
        return self.added + self.updated + self.retracted + self.restored

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "seconds": round(self.seconds, 3)}

    def line(self) -> str:
        return (
            f"added {self.added}, updated {self.updated}, retracted {self.retracted},"
            f" restored {self.restored}, unchanged {self.unchanged}"
        )


@dataclass(frozen=True)
class MirrorState:
    """A mirror's row in ``mirrors``: its cursor and what it mirrors."""

    prefix: str
    server: str
    store_id: str
    seq: int
    head_digest: str
    selection: dict
    resync: bool
    signal_id: int = 0  # inside entry seq + 1: its changes up to this remote id are applied
    entry_digest: str = ""  # that entry's digest (when signal_id > 0)


def mirror_state(store: SignalStore, prefix: str) -> MirrorState | None:
    row = (
        store.conn()
        .execute(
            "SELECT prefix, server, store_id, seq, head_digest, selection, resync, signal_id,"
            " entry_digest FROM mirrors WHERE prefix = ?",
            (prefix,),
        )
        .fetchone()
    )
    if row is None:
        return None
    return MirrorState(row[0], row[1], row[2], int(row[3]), row[4], json.loads(row[5]),
                       bool(row[6]), int(row[7]), row[8])  # fmt: skip


def check_prefix(prefix: str) -> str:
    """A prefix that makes valid list names and survives the store's trimming."""
    if not prefix or prefix != prefix.lstrip():
        raise InvalidInput(
            f"--prefix {prefix!r}: give a non-empty prefix that does not start with a space"
            " (e.g. 'hub/')",
            field="prefix",
        )
    _check_name(prefix + "x", "prefix")
    return prefix


def local_name(prefix: str, remote: str) -> str:
    return prefix + remote


def list_owner(store: SignalStore, name: str) -> tuple[bool, str | None]:
    """(whether local list ``name`` exists, the mirror prefix that created it or None)."""
    row = (
        store.conn()
        .execute(
            "SELECT l.id, m.prefix FROM hash_lists l LEFT JOIN mirror_lists m"
            " ON m.list_id = l.id WHERE l.name = ?",
            (name,),
        )
        .fetchone()
    )
    return (row is not None, row[1] if row else None)


def refuse_foreign_lists(store: SignalStore, prefix: str, remote_names: Sequence[str]) -> None:
    """Conflict naming a local list the mirror would write into that it did not create."""
    for remote in remote_names:
        name = local_name(prefix, remote)
        exists, owner = list_owner(store, name)
        if exists and owner != prefix:
            made = f"by the mirror with prefix {owner!r}" if owner else "locally"
            raise Conflict(
                f"local list {name!r} (for the hub's {remote!r}) exists and was created {made},"
                " not by this mirror: it is never written into; choose another --prefix",
                field="prefix",
            )


def check_selection(shared: Collection[str], lists: Sequence[str], types: Sequence[str], *,
                    recorded: Collection[str] = ()) -> None:  # fmt: skip
    """NotFound for a ``--list`` the hub does not share with the token (and that is not
    in the mirror's ``recorded`` selection), InvalidInput for an unknown type. Run by the
    CLI before it creates a store: a typo left a new empty store behind."""
    for name in types:
        signal_types.get(name, field="types")
    missing = [name for name in lists if name not in shared and name not in recorded]
    if missing:
        raise NotFound(
            f"--list: the hub shares no list named {', '.join(map(repr, missing))} with this"
            f" token (shared: {', '.join(sorted(shared)) or 'none'})",
            field="lists",
        )


def selection_for(state: MirrorState | None, lists: Sequence[str], types: Sequence[str],
                  resync: bool) -> dict:  # fmt: skip
    """The lists and types this run mirrors: as given, else as the mirror recorded.

    Why refuse a change without ``resync``: the cursor has moved past changes of the
    lists or types left out so far; mirroring them from here would miss their past."""
    given = {
        "lists": sorted(set(lists)),
        "types": sorted({signal_types.get(t, field="types").name for t in types}),
    }
    if state is None or resync:
        return given
    kept = {"lists": state.selection.get("lists", []), "types": state.selection.get("types", [])}
    for key in ("lists", "types"):
        if given[key] and given[key] != kept[key]:
            shown = ", ".join(kept[key]) or "all"
            raise Conflict(
                f"mirror {state.prefix!r} mirrors {key} {shown}; to mirror"
                f" {', '.join(given[key])} instead, run it with --resync (the cursor is past"
                " their earlier changes)",
                field=key,
            )
    return kept


def _shared_since(store: SignalStore, prefix: str, hub_lists: Sequence[Any],
                  selection: dict) -> list[str]:  # fmt: skip
    """Hub lists in the selection that hold signals of its types but that this mirror has
    never written: shared with the token after the mirror's first run. Their signals were
    logged before the cursor, which the next passes never read again, so without a
    resync they were never mirrored (and no run said so)."""
    known = {
        row[0]
        for row in store.conn().execute(
            "SELECT remote_name FROM mirror_lists WHERE prefix = ?", (prefix,)
        )
    }
    wanted, types = set(selection["lists"]), set(selection["types"])
    return sorted(
        h.name
        for h in hub_lists
        if h.signal_count > 0
        and h.name not in known
        and (not wanted or h.name in wanted)
        and (not types or types & {t.lower() for t in h.signal_types})
    )


def mirror(
    store: SignalStore,
    client: Any,
    *,
    server: str,
    prefix: str,
    lists: Sequence[str] = (),
    types: Sequence[str] = (),
    resync: bool = False,
    page_size: int = DEFAULT_PAGE,
    timeout: float = 600.0,
    actor: str | None = None,
) -> MirrorSummary:
    """Bring the local mirror ``prefix`` up to the hub's head; return the counts.

    ``client``: a :class:`hashmatch.server.client.HashmatchClient` of the hub with a
    token holding the ``export`` role; ``server``: its address (audit, provenance).
    ``lists``/``types``: only these remote lists / signal types (empty = all; recorded
    at the first run). ``resync``: read the hub's log from 0 (see the module doc).
    """
    started = time.monotonic()
    check_prefix(prefix)
    actor = actor or f"mirror:{server}"
    state = mirror_state(store, prefix)
    # what the hub shares with this token (a bad token or a dead hub fails here, before
    # anything is written) and whether each list is enabled there
    listing = client.list_hash_lists()
    hub_lists, hub_store = list(listing.lists), listing.store_id  # "": an older hub
    shared = {h.name: bool(h.enabled) for h in hub_lists}
    hub_by_name = {h.name: h for h in hub_lists}
    # a list this mirror already mirrors that the hub stopped sharing is not a typo: its
    # local copy is disabled below (refused, a cron job's fixed --list kept it matching)
    recorded = state.selection.get("lists", []) if state else []
    check_selection(shared, lists, types, recorded=recorded)
    selection = selection_for(state, lists, types, resync)
    _refuse_unwritable(store, prefix, server, selection["lists"] or sorted(shared))
    same_hub = hub_store if state is not None and state.store_id == hub_store else ""
    selection, renamed = _follow_renames(store, prefix, server, hub_lists, same_hub, selection,
                                         actor)  # fmt: skip
    new = [] if state is None or resync else _shared_since(store, prefix, hub_lists, selection)
    resync = resync or bool(state and state.resync) or bool(new)  # a killed resync goes on
    summary = MirrorSummary(prefix=prefix, server=server, resync=resync, lists_shared=len(shared),
                            lists_new=new, lists_renamed=renamed)  # fmt: skip
    if not resync:
        _follow_list_states(store, prefix, shared, actor, summary, resync=False)
    # (store id, digest at since, digest of entry since + 1 when the cursor is inside it)
    expect: tuple[str, str, str] | None = None  # what the log must show
    if state is None or (resync and not state.resync):
        since, at = 0, 0
    else:
        since, at = state.seq, state.signal_id
        expect = (state.store_id, state.head_digest, state.entry_digest)
    summary.since = since
    _check_deletes_read(store, client, prefix, hub_store, since, timeout)
    first = True
    for page in change_pages(client, since, at, selection["types"], page_size, timeout):
        head, more, log = page.head, page.more, page.log
        if expect is not None:  # every page: the hub may be replaced while we read
            why, seq = page_mismatch(since, at, page, expect), since
            if why == "entry":
                why, seq = "digest", since + 1
            if why is not None:
                raise Conflict(_refusal(why, prefix, server, seq, expect[0], log, head),
                               field="cursor")  # fmt: skip
        plan = _plan(page.changes, selection, server)  # outside the write lock: reads no store
        with store.transaction() as conn:
            if first and resync and not (state and state.resync):  # a resync reading from 0
                conn.execute("DELETE FROM mirror_signals WHERE prefix = ?", (prefix,))
            else:
                _check_cursor_kept(prefix, mirror_state(store, prefix), (since, at))
            _purge_deleted(store, conn, prefix, page, actor, summary)
            _apply(store, conn, plan, prefix=prefix, server=server, store_id=log.store_id,
                   actor=actor, summary=summary, hub_lists=hub_by_name)  # fmt: skip
            finishing = resync and not more
            if finishing:
                _retract_unseen(store, conn, prefix, log.store_id, server, actor, summary)
                _follow_list_states(store, prefix, shared, actor, summary, resync=True)
            conn.execute(
                "INSERT OR REPLACE INTO mirrors(prefix, server, store_id, seq, head_digest,"
                " selection, resync, updated_at, signal_id, entry_digest)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (prefix, server, log.store_id, head, log.head_digest or "",
                 json.dumps(selection), int(resync and not finishing), time.time(), page.at,
                 page.entry_digest),
            )  # fmt: skip
        summary.pages += 1
        summary.head, summary.store_id = head, log.store_id
        since, at, first = head, page.at, False
        expect = (log.store_id, log.head_digest or "", page.entry_digest)
    if hub_store and hub_store == summary.store_id:  # the pages came from the store listed
        _record_uids(store, prefix, hub_lists, hub_store)
    _report_retired_purges(summary)
    summary.lists.sort()
    if summary.lists_purged:  # disabled first (no longer listed), then deleted: say deleted
        summary.lists_disabled = [n for n in summary.lists_disabled
                                  if n not in summary.lists_purged]  # fmt: skip
        store.checkpoint_truncate()  # the deleted rows' pages out of the WAL, as `lists delete`
    summary.seconds = time.monotonic() - started
    if summary.changed or summary.resync or summary.lists_purged:
        store.record("mirror", actor=actor, count=summary.changed, source=server,
                     details=summary.as_dict())  # fmt: skip
    return summary


def _report_retired_purges(summary: MirrorSummary) -> None:
    """A copy set aside at the run's start (its name given to another hub list) and
    purged by a delete in the run's pages is reported as the list it was, purged: a
    list deleted and created again under its name read as "'hub/x (retired 3)' purged"."""
    was = {new: old for old, new in summary.lists_renamed}
    purged = set(summary.lists_purged)
    summary.lists_purged = [was.get(name, name) for name in summary.lists_purged]
    summary.lists_renamed = [pair for pair in summary.lists_renamed if pair[1] not in purged]
    summary.lists_disabled = [name for name in summary.lists_disabled if name not in purged]


def _check_cursor_kept(prefix: str, now: MirrorState | None, cursor: tuple[int, int]) -> None:
    """Conflict when the mirror's recorded cursor is no longer where this run left it:
    another run of it committed a page, or a local ``lists delete`` of one of its lists
    set it to a resync from the start (:meth:`SignalStore._restart_mirror`): this run's
    later pages alone would create that list again incomplete."""
    kept = (now.seq, now.signal_id) if now else (0, 0)
    if kept == cursor:
        return
    if now is not None and now.resync and kept == (0, 0):
        raise Conflict(
            f"a list of mirror {prefix!r} was deleted locally during this run; its cursor"
            " was reset, so the next run resyncs (re-reads the hub's lists from the start):"
            " re-run",
            field="cursor",
        )
    raise Conflict(f"another run of mirror {prefix!r} advanced its cursor meanwhile; re-run",
                   field="cursor")  # fmt: skip


def _refusal(why: str, prefix: str, server: str, seq: int, kept_store: str, log: LogIdentity,
             head: int) -> str:  # fmt: skip
    fix = (
        f"run `hashmatch mirror --prefix {prefix} --resync` to re-read the hub's lists from"
        " the start (local copies of signals the hub no longer has live are retracted)"
    )
    if why == "beyond":
        detail = f"its cursor (change {seq}) is beyond the hub's last change ({head})"
    elif why == "store":
        detail = f"the hub is another store ({log.store_id}; the mirror read {kept_store})"
    else:
        detail = f"change {seq} of the hub's log is not the one the mirror read"
    return (
        f"mirror {prefix!r}: {server} no longer holds the history it was mirrored from"
        f" ({detail}: restored from a backup or replaced?); {fix}"
    )


@dataclass
class _Plan:
    """What a page asks for: changes to store by (remote list, type) with their checked
    codes, the remote lists the hub says are disabled, and the remote ids to retract
    by why (the retract reason)."""

    live: dict[tuple[str, str], list[tuple[Any, bytes]]]
    disabled: set[str]  # remote lists of changes whose state is LIST_DISABLED
    gone: dict[str, list[int]]
    uids: dict[str, str] = field(default_factory=dict)  # remote list -> its Change.list_uid


def _why_gone(change: Any) -> str | None:
    """Why an ADDED change's local copy is retracted (None: it is stored). A signal of
    a list the hub disabled is intact there: stored, its local list disabled. Before,
    it was retracted as "not live" (a --resync retracted the whole list) and the hub's
    re-enable restored every one: alarming churn for an unchanged list."""
    from hashmatch.v1 import signals_pb2 as pb

    state = change.state
    if change.live or state == pb.SIGNAL_STATE_LIST_DISABLED:
        return None
    if state in (pb.SIGNAL_STATE_RETRACTED, pb.SIGNAL_STATE_EXPIRED, pb.SIGNAL_STATE_DELETED):
        return pb.SignalState.Name(state).removeprefix("SIGNAL_STATE_").lower()
    return "not live (retracted or expired)"  # an older hub does not say which


def _plan(page: list, selection: dict, server: str) -> _Plan:
    """The last change of each remote id decides (every ADDED change carries the
    signal's state at read time); every change applied is checked before anything is
    written. Made before the page's transaction: a local writer waited behind a 1M
    page for 25 s, most of it spent here."""
    from hashmatch.v1 import signals_pb2

    last: dict[int, Any] = {}
    for change in page:
        last[int(change.signal_id)] = change
    wanted = set(selection.get("lists") or ())
    plan = _Plan({}, set(), {})
    for rid, change in last.items():
        added = change.action == signals_pb2.CHANGE_ACTION_ADDED
        why = _why_gone(change) if added else "retracted"
        if why is not None:
            plan.gone.setdefault(why, []).append(rid)
        elif not wanted or change.list_name in wanted:
            stype, code = _checked(change, server)
            plan.live.setdefault((change.list_name, stype), []).append((change, code))
            plan.uids[change.list_name] = change.list_uid
            if not change.live:
                plan.disabled.add(change.list_name)
    return plan


def _apply(store: SignalStore, conn, plan: _Plan, *, prefix: str, server: str, store_id: str,
           actor: str, summary: MirrorSummary, hub_lists: Mapping[str, Any]) -> None:  # fmt: skip
    """One page's :class:`_Plan`, inside the caller's transaction. ``hub_lists``: the
    hub's ``HashList`` of each list it shares, by name."""
    for remote in sorted({name for name, _ in plan.live}):
        _own_list(store, conn, prefix, remote, server, actor, hub_lists.get(remote), store_id,
                  plan.uids.get(remote, ""))  # fmt: skip
    for (remote, stype), changes in sorted(plan.live.items(), key=lambda kv: kv[0]):
        _upsert(store, conn, prefix, remote, stype, changes, server, store_id, actor, summary)
    if plan.disabled:  # the hub disabled them after this pass read ListHashLists
        _follow_list_states(store, prefix, dict.fromkeys(plan.disabled, False), actor, summary,
                            resync=False, only=plan.disabled)  # fmt: skip
    for why, ids in sorted(plan.gone.items()):
        _retract(store, conn, prefix, store_id, ids, f"{why} on {server}", actor, summary)


def _purge_deleted(store: SignalStore, conn, prefix: str, page: Any, actor: str,
                   summary: MirrorSummary) -> None:  # fmt: skip
    """Delete the local copies of the hub lists the page says were deleted (the hub's
    ``lists delete``), before the page's changes: a list of the same name created on the
    hub afterwards is copied anew. Every copy of the deleted list's uid goes (a copy
    made under a name the list had before a rename too: it kept the deleted signals),
    never a copy of another uid that has the name now. Why not disable, as for a list
    no longer shared: a partner's token is shown neither the list nor its removals once
    its grant went with it, so its copy was kept, disabled, holding what the hub deleted
    for an ended agreement or a legal duty. Only a list this mirror created is deleted.

    Only deletes past the hub position this mirror has read them to (kept in
    ``store_meta``, per prefix and hub store): a resync reads the log from 0 and is told
    again of every delete, and one already applied deleted the copy of the list the hub
    created again under that name (what was set on it locally, grants included, lost).
    A copy made after the mirror read the delete holds nothing of the deleted list: the
    hub no longer had its signals to send."""
    store_id, done, digest = _deletes_read(conn, prefix)
    done = done if store_id == page.log.store_id else 0
    for gone in page.deleted:
        if gone.seq <= done:
            continue
        uid = gone.list_uid  # "" from an older hub: by name only
        rows = conn.execute(  # every copy of the list; by name one whose uid is unknown
            "SELECT l.name FROM mirror_lists ml JOIN hash_lists l ON l.id = ml.list_id"
            " LEFT JOIN mirror_list_uids u ON u.list_id = ml.list_id AND u.store_id = ?"
            " WHERE ml.prefix = ? AND ((? != '' AND u.uid = ?)"
            " OR ((u.uid IS NULL OR ? = '') AND ml.remote_name = ?)) ORDER BY l.name",
            (page.log.store_id, prefix, uid, uid, uid, gone.list_name),
        ).fetchall()
        for (name,) in rows:
            store.delete_list(name, actor=actor, mirror_resyncs=False)
            summary.lists_purged.append(name)
    if page.head > done:
        done, digest = page.head, page.log.head_digest or ""
    conn.execute(  # in the page's transaction: a killed run reads them again
        "INSERT OR REPLACE INTO store_meta(key, value) VALUES (?, ?)",
        (_DELETES_READ + prefix, json.dumps([page.log.store_id, done, digest])),
    )


def _deletes_read(conn, prefix: str) -> tuple[str, int, str]:
    """(hub store id, log position, digest there: "" if not kept) of mirror ``prefix``'s
    deletes-read mark (:func:`_purge_deleted`); ("", 0, "") when it has none."""
    row = conn.execute("SELECT value FROM store_meta WHERE key = ?",
                       (_DELETES_READ + prefix,)).fetchone()  # fmt: skip
    mark = json.loads(row[0]) if row else ["", 0]
    return str(mark[0]), int(mark[1]), str(mark[2]) if len(mark) > 2 else ""


def _check_deletes_read(store: SignalStore, client: Any, prefix: str, hub_store: str,
                        since: int, timeout: float) -> None:  # fmt: skip
    """Forget the deletes-read mark when the hub's log no longer holds the change the
    mark was taken at (a hub restored from a backup, then written again), before a run
    that reads from before the mark (a resync). Why: the resync the refused cursor asks
    for skipped every delete up to the mark's position, which in the restored history
    are other deletes: a list deleted after the restore kept its copy (disabled, its
    signals retracted) instead of being purged. Deletes read again are harmless: a copy
    with a uid is deleted only by its own list's delete."""
    store_id, done, digest = _deletes_read(store.conn(), prefix)
    if done <= since or not digest or store_id != hub_store:
        return
    log, head = LogIdentity("", None, None), 0
    for reply in client.changes(done, max_changes=1, timeout=timeout):
        log = LogIdentity(reply.store_id, reply.since_digest or None, reply.head_digest or None)
        head = int(reply.head)
    if cursor_mismatch(done, head, log, store_id, digest) is not None:
        with store.transaction() as conn:
            conn.execute("DELETE FROM store_meta WHERE key = ?", (_DELETES_READ + prefix,))


def _refuse_unwritable(store: SignalStore, prefix: str, server: str,
                       remotes: Sequence[str]) -> None:  # fmt: skip
    """Refuse, before anything is written, hub lists ``remotes`` this mirror cannot copy
    under ``prefix``: a local list it did not create has the name, or the name is no
    valid local name (:func:`_name_problem`)."""
    refuse_foreign_lists(store, prefix, remotes)
    for remote in remotes:
        if problem := _name_problem(prefix, remote):
            raise InvalidInput(f"{server} shares list {_shown(remote)}, {problem}; nothing was"
                               " written", field="list_name")  # fmt: skip


def _name_problem(prefix: str, remote: str) -> str | None:
    """Why hub list ``remote`` has no local list name under ``prefix`` (None: it has).
    Why checked before any page: the store caps names at 200 characters, and a hub list
    of 197+ failed every run at its first change with the store's "invalid list_name
    name 'hub/aaa...'", naming neither the hub's list nor a way out."""
    name = local_name(prefix, remote)
    try:
        clean = _check_name(name, "list_name")
    except InvalidInput:
        return (
            f"which makes local list {_shown(name)}: local names are 1-200 characters without"
            " tab, CR, LF or NUL; mirror it under a shorter --prefix, or leave it out with"
            " --list (and --resync)"
        )
    if clean != name:
        return (
            f"a name with surrounding spaces (a hub stores none): local list {name!r} would be"
            f" created as {clean!r}"
        )
    return None


def _shown(name: str) -> str:
    return repr(name) if len(name) <= 60 else f"{name[:60]!r}... ({len(name)} characters)"


def _own_list(store: SignalStore, conn, prefix: str, remote: str, server: str, actor: str,
              hub: Any | None, store_id: str, uid: str = "") -> None:  # fmt: skip
    """Create the local copy of the hub's list ``remote`` unless it exists, with the
    hub's labels and, in its description, who shares it and the hub's description
    (what ``lists ls`` shows an analyst; copied at creation, not followed later).

    ``uid``: the list's uid as the page's changes name it (else the listing's). A name
    that is not the list this run's listing gave it (renamed on the hub during the run)
    is a Conflict: a copy made from the run's later pages held only their signals, and
    the next runs, finding the name known, never read the earlier ones."""
    name = local_name(prefix, remote)
    refuse_foreign_lists(store, prefix, [remote])
    uid = uid or (hub.uid if hub is not None else "")
    if uid and _copied_elsewhere(conn, prefix, name, uid, store_id):
        raise Conflict(f"{server} renamed its list {_shown(remote)}, or gave that name to"
                       " another list, during this run; nothing of this page was written:"
                       " re-run (it follows the rename)", field="list_name")  # fmt: skip
    if list_owner(store, name)[0]:
        return
    problem = _name_problem(prefix, remote)
    if problem:
        raise InvalidInput(
            f"{server} sent a change of list {_shown(remote)}, {problem}; nothing of this page"
            " was written",
            field="list_name",
        )
    description = f"mirror of {remote!r} on {server}"
    if hub is not None and hub.owner:
        description += f", shared by {hub.owner}"
    if hub is not None and hub.description:
        description += f": {hub.description}"
    labels = list(hub.labels) if hub is not None else []
    store.create_list(name, description=description, owner=server, labels=labels,
                      actor=actor)  # fmt: skip
    conn.execute(
        "INSERT INTO mirror_lists(list_id, prefix, remote_name)"
        " SELECT id, ?, ? FROM hash_lists WHERE name = ?",
        (prefix, remote, name),
    )
    if uid:
        conn.execute("INSERT OR REPLACE INTO mirror_list_uids(list_id, store_id, uid)"
                     " SELECT id, ?, ? FROM hash_lists WHERE name = ?",
                     (store_id, uid, name))  # fmt: skip


def _copied_elsewhere(conn, prefix: str, name: str, uid: str, store_id: str) -> bool:
    """Whether local list ``name`` is not the copy of hub list ``uid``: it records
    another uid, or it does not exist and another copy records ``uid``. (A copy that
    records none is taken to be the list of its name, as :func:`_moves` takes it.)"""
    row = conn.execute(
        "SELECT u.uid FROM hash_lists l LEFT JOIN mirror_list_uids u ON u.list_id = l.id"
        " AND u.store_id = ? WHERE l.name = ?", (store_id, name)).fetchone()  # fmt: skip
    if row is not None:
        return row[0] is not None and row[0] != uid
    return conn.execute(
        "SELECT 1 FROM mirror_list_uids u JOIN mirror_lists ml ON ml.list_id = u.list_id"
        " WHERE ml.prefix = ? AND u.store_id = ? AND u.uid = ?", (prefix, store_id, uid)
    ).fetchone() is not None  # fmt: skip


def _copies(store: SignalStore, prefix: str,
            hub_store: str) -> list[tuple[int, str, str | None]]:  # fmt: skip
    """(local list id, hub name, uid on hub store ``hub_store`` or None: not recorded)
    of the mirror's copies."""
    return (
        store.conn()
        .execute(
            "SELECT ml.list_id, ml.remote_name, u.uid FROM mirror_lists ml LEFT JOIN"
            " mirror_list_uids u ON u.list_id = ml.list_id AND u.store_id = ? WHERE ml.prefix = ?"
            " ORDER BY ml.list_id",
            (hub_store, prefix),
        )
        .fetchall()
    )


def _moves(copies: Sequence[tuple[int, str, str | None]],
           hub_uid: Mapping[str, str]) -> dict[int, str | None]:  # fmt: skip
    """Local list id -> the hub name its copy now takes (None: retire it). A copy of a
    list the hub shares under another name follows it, unless a copy already holds that
    name for the list; a copy at a name the hub now gives another list steps aside
    (its uid differs; one without a uid is taken to copy the list of its name)."""
    name_of = {uid: name for name, uid in hub_uid.items()}

    def fits(remote: str, uid: str | None) -> bool:
        return remote in hub_uid and uid in (None, hub_uid[remote])

    claimed = {remote for _, remote, uid in copies if fits(remote, uid)}
    moves: dict[int, str | None] = {}
    for list_id, remote, uid in copies:
        target = name_of.get(uid or "")
        if target is not None and target != remote and target not in claimed:
            moves[list_id] = target
            claimed.add(target)
    for list_id, remote, uid in copies:
        if list_id not in moves and remote in hub_uid and not fits(remote, uid):
            moves[list_id] = None
    return moves


def _follow_renames(store: SignalStore, prefix: str, server: str, hub_lists: Sequence[Any],
                    hub_store: str, selection: dict,
                    actor: str) -> tuple[dict, list[list[str]]]:  # fmt: skip
    """Rename the copies of lists the hub renamed (:func:`_moves`), before anything else
    of the run; return the selection with their new names and [old, new] local names.

    Why: the new name read as a list never written, so a resync copied it again under
    that name, and the old copy, retracted and disabled, still held the signals when
    the hub deleted the list (the delete named only the new name). A copy set aside
    ("retired") holds a list the hub no longer shares under that uid: disabled as not
    shared, deleted when the hub's delete names its uid. ``hub_store``: the listing's
    store id when it is the one the mirror read (else ""): an older hub sends no uid,
    and another store (a replaced hub) has other uids for the same lists; nothing is
    renamed then (the run resyncs on a new name, or refuses the store, as before)."""
    hub_uid = {h.name: h.uid for h in hub_lists if h.uid}
    moves = _moves(_copies(store, prefix, hub_store), hub_uid) if hub_store and hub_uid else {}
    if not moves:
        return selection, []
    _refuse_unwritable(store, prefix, server, sorted({t for t in moves.values() if t is not None}))
    names = dict(store.conn().execute(
        "SELECT ml.list_id, l.name FROM mirror_lists ml JOIN hash_lists l ON l.id = ml.list_id"
        " WHERE ml.prefix = ?", (prefix,)))  # fmt: skip
    final = {i: local_name(prefix, t) if t is not None
             else _retired(store, prefix, names[i], i, hub_uid)
             for i, t in moves.items()}  # fmt: skip
    renamed = [[names[i], final[i]] for i in sorted(moves, key=lambda i: names[i])]
    hub_names = {names[i].removeprefix(prefix): t for i, t in moves.items() if t is not None}
    if selection["lists"]:
        selection = {**selection, "lists": sorted(hub_names.get(n, n) for n in selection["lists"])}
    with store.transaction() as conn:
        _rename_all(store, prefix, {names[i]: final[i] for i in moves}, actor)
        conn.execute("UPDATE mirrors SET selection = ? WHERE prefix = ?",
                     (json.dumps(selection), prefix))  # fmt: skip
    return selection, renamed


def _retired(store: SignalStore, prefix: str, name: str, list_id: int,
             hub_names: Collection[str]) -> str:  # fmt: skip
    """A free local name for a copy set aside: its name, marked (and cut to fit). Not
    the copy's name of a list the hub shares (``hub_names``): that list's changes read
    the retired copy as a list renamed during the run, and the run stopped."""
    mark = f" (retired {list_id})"
    stem = name.removeprefix(prefix)[: max(1, 200 - len(prefix) - len(mark) - 9)]
    retired = local_name(prefix, stem + mark)
    taken = list_owner(store, retired)[0] or stem + mark in hub_names
    return f"{retired} {secrets.token_hex(4)}" if taken else retired


def _rename_all(store: SignalStore, prefix: str, renames: dict[str, str], actor: str) -> None:
    """Rename local lists old -> new (in the caller's transaction), in an order that
    frees each name before it is taken; a cycle (the hub swapped two names) goes
    through a temporary name."""
    pending = dict(renames)
    while pending:
        free = [old for old, new in pending.items() if not list_owner(store, new)[0]]
        old = free[0] if free else next(iter(pending))
        target = pending.pop(old)
        new = target if free else f"{prefix}(renaming {secrets.token_hex(8)})"
        store.rename_list(old, new, actor=actor, mirror=True)
        if not free:
            pending[new] = target


def _record_uids(store: SignalStore, prefix: str, hub_lists: Sequence[Any],
                 hub_store: str) -> None:  # fmt: skip
    """End of a run: record the hub's uid of copies that have none on ``hub_store``
    (made before the hub or this mirror knew uids, or from another hub store before a
    resync), by their hub name. Not at the start: a delete of the list a copy was made
    of may be in the run's pages, naming it by name."""
    rows = [(hub_store, h.uid, prefix, h.name) for h in hub_lists if h.uid]
    if not rows:
        return
    with store.transaction() as conn:
        conn.executemany(
            "INSERT INTO mirror_list_uids(list_id, store_id, uid) SELECT list_id, ?, ? FROM"
            " mirror_lists WHERE prefix = ? AND remote_name = ? ON CONFLICT(list_id) DO UPDATE"
            " SET store_id = excluded.store_id, uid = excluded.uid"
            " WHERE mirror_list_uids.store_id != excluded.store_id",
            rows,
        )


def _follow_list_states(store: SignalStore, prefix: str, shared: dict[str, bool], actor: str,
                        summary: MirrorSummary, *, resync: bool,
                        only: Collection[str] | None = None) -> None:  # fmt: skip
    """Local lists follow their hub list's enabled flag, and are disabled when the hub
    stops sharing them: neither is in the change log (a disable logs no change per
    signal; the log of a list no longer shared is not shown). Only transitions are
    applied, so a local operator's own disable stays until the hub's flag changes.

    A list shared again after a gap stays disabled until a resync (``resync``: end of
    one, every list takes the hub's state): retractions made meanwhile were never shown.
    ``only``: just these remote lists (a page's changes said they are disabled).
    """
    rows = (
        store.conn()
        .execute(
            "SELECT ml.list_id, ml.remote_name, ml.hub_state, l.name, l.enabled FROM mirror_lists"
            " ml JOIN hash_lists l ON l.id = ml.list_id WHERE ml.prefix = ? ORDER BY l.name",
            (prefix,),
        )
        .fetchall()
    )
    for list_id, remote, recorded, name, enabled in rows:
        if only is not None and remote not in only:
            continue
        now = "unshared" if remote not in shared else "enabled" if shared[remote] else "disabled"
        if now == recorded and not resync:
            continue
        if recorded == "unshared" and not resync:  # disabled, and marked until a resync
            if now == "enabled":
                summary.lists_stale.append(name)
            continue
        want = now == "enabled"
        with store.transaction() as conn:
            if bool(enabled) != want:
                store.set_list_enabled(name, want, actor=actor)
                (summary.lists_enabled if want else summary.lists_disabled).append(name)
            conn.execute("UPDATE mirror_lists SET hub_state = ? WHERE list_id = ?", (now, list_id))


def _existing(conn, list_id: int, stype: str, codes: np.ndarray) -> dict[bytes, tuple]:
    """code -> (id, labels, external_id, quality, expires_at, retracted_at,
    retract_reason) of the list's signals among ``codes``."""
    fps = fingerprints(stype, codes).tolist()
    out: dict[bytes, tuple] = {}
    for i in range(0, len(fps), CHUNK):
        chunk = fps[i : i + CHUNK]
        for row in conn.execute(
            "SELECT code, id, labels, external_id, quality, expires_at, retracted_at,"
            " retract_reason FROM signals WHERE list_id = ? AND signal_type = ? AND fp IN"
            f" ({','.join('?' * len(chunk))})",
            (list_id, stype, *chunk),
        ):
            out[bytes(row[0])] = row[1:]
    return out


def _check(change: Any) -> tuple[str, bytes]:
    """(type, code in the local store: a video's is the SHA-256 of its frames, as the
    store keys it) of a live ADDED change, every field checked as the hub's own Ingest
    checks a signal. Why: a buggy or malicious hub's hash of the wrong length was
    joined with the others and cut into 32-byte codes, and a NaN expiry or a video hash
    that is not its frames' broke the run with a traceback."""
    st = signal_types.get(change.signal_type, field="signal_type")
    _provenance(change)
    if st.name != "vpdq":
        return st.name, st.parse(bytes(change.hash), field="hash").tobytes()
    frames, qualities, stamps = _frames(change)
    signal_types.check_frame_extras(len(frames), qualities, stamps)
    return st.name, video_key(frames)


def _provenance(change: Any) -> tuple[str, str | None, int | None, float | None]:
    """(labels as stored, external id, quality, expiry) of a change, as the store's
    columns hold them (compared with the local copy's without building a record)."""
    quality = int(change.quality) if change.HasField("quality") else None
    if quality is not None and not 0 <= quality <= 100:
        raise InvalidInput(f"quality must be 0..100, got {quality}", field="quality")
    expires = parse_time(float(change.expires_at)) if change.HasField("expires_at") else None
    return join_labels(change.labels), change.external_id or None, quality, expires


def _frames(change: Any) -> tuple[np.ndarray, list | None, list | None]:
    """A vPDQ change's frames and their qualities and times (all or none: an older hub
    sends none)."""
    st = signal_types.get("vpdq")
    if not change.frames:
        raise InvalidInput("a vpdq signal needs at least one frame", field="frames")
    frames = np.stack(
        [st.parse(bytes(f), field=f"frames[{j}]") for j, f in enumerate(change.frames)]
    )
    n = len(frames)
    qualities = list(change.frame_qualities) if len(change.frame_qualities) == n else None
    stamps = list(change.timestamps) if len(change.timestamps) == n else None
    return frames, qualities, stamps


def _record(change: Any, stype: str, code: bytes) -> SignalRecord:
    """The record to ingest of a change :func:`_check` accepted."""
    _labels, ext, quality, expires = _provenance(change)
    if stype != "vpdq":
        return SignalRecord(stype, code.hex(), tuple(change.labels), ext, quality, expires)
    frames, qualities, stamps = _frames(change)
    return SignalRecord("vpdq", "", tuple(change.labels), ext, quality, expires, frames=frames,
                        frame_qualities=qualities, timestamps=stamps)  # fmt: skip


def _checked(change: Any, server: str) -> tuple[str, bytes]:
    """:func:`_check`, its refusal naming the hub and the change (the page is not written)."""
    try:
        return _check(change)
    except InvalidInput as exc:
        raise InvalidInput(
            f"{server} sent a change the local store refuses (signal {change.signal_id} of"
            f" list {change.list_name!r}, {exc.field or 'change'}): {exc.message}; nothing of"
            " this page was written",
            field="changes",
        ) from None


def _upsert(store: SignalStore, conn, prefix: str, remote: str, stype: str, changes: list,
            server: str, store_id: str, actor: str, summary: MirrorSummary) -> None:  # fmt: skip
    """Live signals of one remote list and type: add or update, restore what the mirror
    retracted, and map their remote ids to the local ids."""
    name = local_name(prefix, remote)
    list_id = conn.execute("SELECT id FROM hash_lists WHERE name = ?", (name,)).fetchone()[0]
    codes = np.frombuffer(b"".join(code for _, code in changes), np.uint8).reshape(len(changes), -1)
    before = _existing(conn, list_id, stype, codes)
    ours = _reason_prefix(prefix)
    write, restore = [], []
    for change, code in changes:
        old = before.get(code)
        if old is None:
            summary.added += 1
            write.append(_record(change, stype, code))
            continue
        sid, labels, ext, quality, expires, retracted, reason = old
        differs = (labels, ext, quality, expires) != _provenance(change)
        if differs:
            write.append(_record(change, stype, code))
        if retracted is not None and (reason or "").startswith(ours):
            restore.append(sid)
            summary.restored += 1
        elif retracted is not None:
            summary.kept_retracted += 1
        elif differs:
            summary.updated += 1
        else:
            summary.unchanged += 1
    if write:
        store.ingest(write, list_name=name, actor=actor, source=server, strict=True)
    if (write or restore) and name not in summary.lists:
        summary.lists.append(name)
    if restore:
        store.restore(list_name=name, signal_ids=restore, actor=actor)
    new = np.array([c.tobytes() not in before for c in codes], dtype=bool)
    after = {**before, **_existing(conn, list_id, stype, codes[new])} if new.any() else before
    conn.executemany(  # an unchanged row is not rewritten (a 1M page of them held the lock)
        "INSERT INTO mirror_signals(prefix, store_id, remote_id, signal_id) VALUES (?, ?, ?, ?)"
        " ON CONFLICT(prefix, store_id, remote_id) DO UPDATE SET signal_id = excluded.signal_id"
        " WHERE signal_id != excluded.signal_id",
        [(prefix, store_id, int(c.signal_id), after[code][0]) for c, code in changes],
    )  # fmt: skip


def _reason_prefix(prefix: str) -> str:
    """How the mirror's retractions start (``retract_reason``): only those it restores."""
    return f"mirror {prefix}: "


def _retract(store: SignalStore, conn, prefix: str, store_id: str, remote_ids: list[int],
             why: str, actor: str, summary: MirrorSummary) -> None:  # fmt: skip
    """Retract the local copies of ``remote_ids`` (those the mirror maps and are live)."""
    by_list: dict[str, list[int]] = {}
    for i in range(0, len(remote_ids), CHUNK):
        chunk = remote_ids[i : i + CHUNK]
        for sid, name in conn.execute(
            "SELECT s.id, l.name FROM mirror_signals m JOIN signals s ON s.id = m.signal_id"
            " JOIN hash_lists l ON l.id = s.list_id WHERE m.prefix = ? AND m.store_id = ?"
            f" AND s.retracted_at IS NULL AND m.remote_id IN ({','.join('?' * len(chunk))})",
            (prefix, store_id, *chunk),
        ):
            by_list.setdefault(name, []).append(sid)
    _retract_local(store, by_list, prefix, why, actor, summary)


def _retract_local(store: SignalStore, by_list: dict[str, list[int]], prefix: str, why: str,
                   actor: str, summary: MirrorSummary) -> None:  # fmt: skip
    for name, ids in sorted(by_list.items()):
        summary.retracted += store.retract(list_name=name, signal_ids=ids, actor=actor,
                                           reason=_reason_prefix(prefix) + why)  # fmt: skip
        if name not in summary.lists:
            summary.lists.append(name)


def _retract_unseen(store: SignalStore, conn, prefix: str, store_id: str, server: str,
                    actor: str, summary: MirrorSummary) -> None:  # fmt: skip
    """End of a resync: retract the live local signals of the mirror's lists that no
    remote signal read since the resync began maps to (the hub no longer has them live,
    or no longer shares or selects them)."""
    by_list: dict[str, list[int]] = {}
    for sid, name in conn.execute(
        "SELECT s.id, l.name FROM signals s JOIN mirror_lists ml ON ml.list_id = s.list_id"
        " JOIN hash_lists l ON l.id = s.list_id WHERE ml.prefix = ? AND s.retracted_at IS NULL"
        " AND s.id NOT IN (SELECT signal_id FROM mirror_signals WHERE prefix = ? AND"
        " store_id = ?)",
        (prefix, prefix, store_id),
    ):
        by_list.setdefault(name, []).append(sid)
    _retract_local(store, by_list, prefix, f"not live on {server} at a resync", actor, summary)
