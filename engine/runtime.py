"""The Engine: the signal store plus the live indexes derived from it.

What a server, scanner or CLI opens (``Engine.open(data_dir)``). The store
(``data_dir/store.sqlite``) is the truth; each signal type's index is derived
and kept in step through the store's change log:

- start-up loads the newest snapshot (``data_dir/snapshots``) taken of this store
  (store id) at a change still in its history (digest of that change-log row, so a
  store restored from a backup or another data dir's snapshots do not fit) and
  replays the changes after it; with no usable snapshot it builds from the store;
- every ingest/retract/restore through this engine applies its change before
  returning, so the next lookup sees it; changes written by another process (the
  CLI next to a running server) are picked up at the start of the next lookup;
- ``rebuild_index`` builds fresh indexes aside from a consistent read of the
  store and swaps them in with one reference assignment: a lookup sees the old or
  the new index, never half of one.

``match`` is safe from many threads at once: readers take a reference to the
current index map; writers serialise on locks.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import resource
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from hashmatch.engine import signal_types
from hashmatch.engine.durable import fsync_path
from hashmatch.engine.errors import (
    CorruptData,
    HashmatchError,
    InvalidHash,
    InvalidInput,
    NotFound,
    SnapshotFailed,
    is_disk_full,
    write_failure,
)
from hashmatch.engine.lazy_numpy import numpy_on_first_use
from hashmatch.engine.matcher import (
    DEFAULT_LOW_QUALITY_QUERIES,
    LOW_QUALITY_QUERIES,
    LOW_QUALITY_SKIP,
    PDQ_MIN_QUALITY,
    Match,
    MatchList,
    MediaMatch,
    Visibility,
    check_low_quality_queries,
    join_hits,
    keeps_row_hit,
    low_quality_rows,
    quality_floor,
)
from hashmatch.engine.snapshot_files import (
    KEEP_SNAPSHOTS,
    SNAPSHOT_FORMAT,
    check_manifest,
    fsync_tree,
    list_snapshots,
    read_manifest_file,
    remove_abandoned_tmp,
    remove_snapshot,
    snapshot_counter,
    writing,
)
from hashmatch.engine.store import (
    DEFAULT_BATCH,
    FRAME_BITS,
    PURGE,
    IngestReport,
    Rejection,
    SignalRecord,
    SignalStore,
    is_corruption,
)
from hashmatch.engine.store_schema import change_digest, store_id
from hashmatch.engine.video_join import GROUP_FRAMES, match_videos

# Imported where used (hashing, store_index, video): the hashing stack (numba,
# OpenCV, PyAV) and the index kernels (FAISS, numba) cost ~1 s to import, and the CLI's
# store verbs (lists, ingest, retract, tenants) open an Engine that neither loads an
# index nor hashes (tests/test_cli_startup.py checks).
if TYPE_CHECKING:
    import numpy as np

    from hashmatch.engine.hashing import HashOptions, HashResult
    from hashmatch.engine.store_lock_wait import LockFree, LockWait
    from hashmatch.engine.store_reads import LookupReads
else:  # store verbs (lists ls, tenants, audit) need no numpy: engine/lazy_numpy.py
    np = numpy_on_first_use(globals())

__all__ = [
    "DEFAULT_LOW_QUALITY_QUERIES",
    "LOW_QUALITY_QUERIES",
    "PDQ_MIN_QUALITY",
    "Engine",
    "IngestReport",
    "Match",
    "MatchList",
    "MediaMatch",
    "RebuildStopped",
    "Rejection",
    "SignalRecord",
]

Progress = Callable[[str, int, int], None]


class RebuildStopped(HashmatchError):
    """:meth:`Engine.rebuild_index` gave up because its ``stop`` said so; the old
    indexes stay live and nothing was swapped."""


#: Index shards per signal type. One: a single lookup then runs inline on one
#: MIH segment (10M PDQ, T=31: p50 0.38 ms vs 0.93 ms with 2 shards), and batches still
#: use every core (the index splits them by query). More shards only build faster
#: (bench indexes, README). None = one per core.
DEFAULT_SHARDS: int | None = 1


class Engine:
    """Store + live indexes + matcher; see the module docstring for the sync story."""

    def __init__(
        self,
        data_dir: Path,
        store: SignalStore,
        *,
        shards: int | None = DEFAULT_SHARDS,
        index_kind: str = "auto",
    ):
        self.data_dir = data_dir
        self.store = store
        self.shards = shards
        self.index_kind = index_kind
        self._indexes: dict[str, object] | None = None  # None until loaded (lazy for the CLI)
        self._applied = 0  # change-log seq the live indexes reflect
        self._sync_lock = threading.RLock()
        self._snapshot_lock = threading.Lock()  # one snapshot written at a time
        # the live indexes hold tombstoned rows of deleted signals (PURGE): their codes
        # stay in the index's arrays, and a snapshot would write them, until a compaction
        self._purged = False
        self._load_info: dict = {}
        self._snapshot_at: float | None = None

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    def open(
        cls,
        data_dir: str | Path,
        *,
        shards: int | None = DEFAULT_SHARDS,
        index_kind: str = "auto",
        create: bool = True,
        eager: bool = True,
        on_lock_wait: LockWait | None = None,
        on_lock_free: LockFree | None = None,
    ) -> Engine:
        """Open (or create) the store in ``data_dir``; with ``eager`` load the indexes now.

        The CLI passes ``eager=False``: verbs that never look up (lists, ingest)
        then never pay for loading the index. ``on_lock_wait`` / ``on_lock_free``: the
        store's hooks (:class:`SignalStore`), from the open's own writes on.
        """
        data_dir = Path(data_dir)
        if not (data_dir / "store.sqlite").exists():
            if not create:
                raise NotFound(f"no hashmatch store in {data_dir}", field="data_dir")
            _refuse_lost_store(data_dir)
        # 0700 when new: the store holds every list's hashes, labels and audit log
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        engine = cls(
            data_dir,
            SignalStore(
                data_dir / "store.sqlite",
                create=create,
                on_lock_wait=on_lock_wait,
                on_lock_free=on_lock_free,
            ),
            shards=shards,
            index_kind=index_kind,
        )
        if eager:
            engine.load()
        return engine

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def snapshot_dir(self) -> Path:
        return self.data_dir / "snapshots"

    @property
    def snapshot_at(self) -> float | None:
        """When (Unix time) the newest snapshot this engine loaded or wrote was made;
        None when it has none (built from the store, nothing written since)."""
        return self._snapshot_at

    @property
    def load_info(self) -> dict:
        """How the indexes came up (source, snapshot, skipped_snapshots, seconds, ...);
        {} until loaded."""
        return self._load_info

    def load(self, progress: Progress | None = None) -> dict:
        """Bring the live indexes up: newest usable snapshot + replay, else build from store."""
        with self._sync_lock:
            if self._indexes is not None:
                return self._load_info
            try:
                return self._load(progress)
            except sqlite3.DatabaseError as exc:  # a damaged page the open did not touch
                if isinstance(exc, sqlite3.OperationalError) and not is_corruption(exc):
                    raise
                raise CorruptData(
                    f"{self.store.path} is damaged ({exc}); restore it from a backup",
                    field="data_dir",
                ) from exc

    def _load(self, progress: Progress | None) -> dict:
        started = time.perf_counter()
        remove_abandoned_tmp(self.snapshot_dir)
        counter = self.store.change_counter()
        info: dict = {"source": "store"}
        for manifest_path in list_snapshots(self.snapshot_dir):
            try:
                indexes, at = self._read_snapshot(manifest_path, counter)
            except (CorruptData, OSError, ValueError, LookupError, TypeError, RuntimeError) as exc:
                info.setdefault("skipped_snapshots", []).append(
                    f"{manifest_path.parent.name}: {exc}"
                )
                continue
            self._indexes, self._applied = indexes, at
            skipped = info.get("skipped_snapshots")
            info = {"source": "snapshot", "snapshot": manifest_path.parent.name, "at": at}
            if skipped:
                info["skipped_snapshots"] = skipped
            break
        if self._indexes is None:
            indexes, at = self._build_from_store(progress)
            self._indexes, self._applied = indexes, at
        replayed = self._apply_changes()
        info.update(
            seconds=round(time.perf_counter() - started, 3),
            replayed_changes=replayed,
            change_counter=self._applied,
        )
        self._load_info = info
        return info

    # ------------------------------------------------------------------ sync

    def sync(self, reads: LookupReads | None = None) -> int:
        """Apply store changes made since the indexes were last brought up to date;
        ``reads``: a lookup's (its change counter read once per store change)."""
        if self._indexes is None:  # nothing to keep in step (CLI): drop handed-over codes
            self.store._drop_fresh()
            return 0
        if (reads or self.store).change_counter() <= self._applied:
            return 0
        with self._sync_lock:
            return self._apply_changes()

    def _apply_changes(self) -> int:
        """Bring the live indexes up to the store's head (caller holds ``_sync_lock``)."""
        assert self._indexes is not None
        replayed, self._applied = self._replay(self._indexes, self._applied)
        return replayed

    def _replay(self, indexes: dict[str, object], since: int) -> tuple[int, int]:
        """Apply the store's changes after ``since`` to ``indexes``; return (how many,
        the last seq applied). ``indexes`` may be ones not yet published: a rebuild
        replays onto its new indexes before the swap, because a lookup that has just
        synced reads the published map without a lock and must never see one missing
        a change whose write had returned."""
        changes = self.store.changes_since(since)
        for change in changes:
            if change.op == PURGE and change.signal_type in indexes:  # index ids as logged
                indexes[change.signal_type].remove(change.ids, missing_ok=True)
                # compact even if no live row went: a signal retracted before its list was
                # deleted is a tombstoned row already, its code still in the index's arrays
                self._purged = True
            elif change.op in ("add", "remove") and len(change.ids):
                index = self._index_for(change.signal_type, indexes)
                if change.op == "add":
                    fresh = self.store.take_fresh(change.seq)
                    if fresh is not None:  # written by this process just now: no re-read
                        ids, codes = fresh
                    else:
                        ids, codes = self.store.codes_for(change.signal_type, change.ids)
                    index.add(codes, ids)
                else:
                    index.remove(self._index_ids(change.signal_type, change.ids), missing_ok=True)
            since = change.seq
        return len(changes), since

    def _index_ids(self, signal_type: str, signal_ids: np.ndarray) -> np.ndarray:
        """Index ids of signals: the ids themselves, or every frame id for vPDQ."""
        if signal_type != "vpdq":
            return signal_ids
        counts = self.store.frame_counts(signal_ids.tolist())
        parts = [
            (np.int64(sid) << FRAME_BITS) | np.arange(counts.get(int(sid), 0), dtype=np.int64)
            for sid in signal_ids
        ]
        return np.concatenate(parts) if parts else np.empty(0, np.int64)

    def _index_for(self, signal_type: str, indexes: dict[str, object]):
        index = indexes.get(signal_type)
        if index is None:
            from hashmatch.engine.store_index import make_live_index

            index = make_live_index(
                signal_types.get(signal_type), kind=self.index_kind, shards=self.shards
            )
            indexes[signal_type] = index
        return index

    def _ensure_loaded(self, reads: LookupReads | None = None) -> dict[str, object]:
        if self._indexes is None:
            self.load()
        else:
            self.sync(reads)
        assert self._indexes is not None
        return self._indexes

    # ------------------------------------------------------------------ matching

    def match(
        self,
        signal_type: str,
        codes: np.ndarray,
        *,
        tenant: str | None = None,
        threshold: int | None = None,
        lists: Sequence[str] | None = None,
        max_results: int | None = None,
        qualities: Sequence[int | None] | None = None,
        min_quality: int | None = None,
        low_quality_queries: str | None = None,
    ) -> list[MatchList]:
        """Look up packed codes; one sorted :class:`MatchList` per query row.

        Only enabled lists visible to ``tenant`` (None = local admin) and, if given,
        named in ``lists`` count; retracted and expired signals never match. PDQ
        rows whose known quality (``qualities``) is under ``min_quality`` (default
        50, as HMA) get ``skipped_low_quality`` set and are matched as
        ``low_quality_queries`` says: ``"match_quality_stored"`` (default) only
        against stored signals of known quality >= the floor
        (``quality_stored_only`` set); ``"skip"`` not at all (empty list, as HMA).

        vPDQ: ``codes`` are the frames of ONE query video; the result has one list
        (one Match per stored video, with query/target match percentages).
        """
        st = signal_types.get(signal_type)
        radius = st.check_threshold(threshold)
        codes = _check_codes(st, codes)
        if max_results is not None and max_results <= 0:
            raise InvalidInput(f"must be positive, got {max_results}", field="max_results")
        rule = check_low_quality_queries(low_quality_queries)
        reads = self.store.lookup_reads()  # one SQLite statement while the store is unchanged
        indexes = self._ensure_loaded(reads)
        vis = self._visibility(tenant, lists, reads)
        index = indexes.get(st.name)
        if st.name == "vpdq":  # the rows are the frames of one query video
            return match_videos(self.store, index, [(codes, qualities)], radius, vis,
                                max_results=max_results)  # fmt: skip
        low = low_quality_rows(st.name, qualities, min_quality, len(codes))
        if qualities is None or not low.any():
            # No row under the quality floor (always so without known qualities): every
            # row is looked up as it is, and join_hits' lists already carry their row as
            # query_index. Why a path of its own: a unary Match is one row, and the
            # masks, index arithmetic and per-match copies below cost ~10% of its lookup.
            if index is None or not len(codes):
                return [MatchList() for _ in range(len(codes))]
            lims, dist, ids = index.search_radius(codes, radius)
            return join_hits(self.store, st.name, len(codes), lims, dist, ids, vis,
                             max_results=max_results)  # fmt: skip
        skip = low if rule == LOW_QUALITY_SKIP else np.zeros_like(low)
        out = [MatchList() for _ in range(len(codes))]
        rows = np.flatnonzero(~skip)
        if index is not None and len(rows):
            lims, dist, ids = index.search_radius(codes[rows], radius)
            # rows under the floor (when looked up): stored quality >= the floor only
            need = np.where(low[rows], quality_floor(min_quality), -1)
            found = join_hits(self.store, st.name, len(rows), lims, dist, ids, vis,
                              max_results=max_results, min_stored_quality=need)  # fmt: skip
            for j, row in enumerate(rows.tolist()):
                for m in found[j]:
                    out[row].append(_with_query(m, row))
        for row in np.flatnonzero(low).tolist():
            out[row].skipped_low_quality = True
            out[row].quality_stored_only = not skip[row]
            out[row].quality = int(qualities[row])  # type: ignore[index]
        return out

    def match_videos(
        self,
        videos: Sequence[tuple[np.ndarray, Sequence[int | None] | None]],
        *,
        tenant: str | None = None,
        threshold: int | None = None,
        lists: Sequence[str] | None = None,
        max_results: int | None = None,
        checkpoint: Callable[[], None] | None = None,
        group_frames: int = GROUP_FRAMES,
    ) -> list[MatchList]:
        """vPDQ: many query videos (frame codes, frame qualities or None) at once; one
        :class:`MatchList` each, as :meth:`match` gives for one. Their frames are
        looked up in batches and each stored video's frames are read once, so a
        request of many videos (or of vPDQ hash rows, each a one-frame video) costs far
        less than a call per video. ``checkpoint`` runs between videos (a deadline or
        cancel check that raises); ``group_frames``: query frames per index search."""
        st = signal_types.get("vpdq")
        radius = st.check_threshold(threshold)
        if max_results is not None and max_results <= 0:
            raise InvalidInput(f"must be positive, got {max_results}", field="max_results")
        queries = [(_check_codes(st, codes), qualities) for codes, qualities in videos]
        reads = self.store.lookup_reads()
        indexes = self._ensure_loaded(reads)
        vis = self._visibility(tenant, lists, reads)
        return match_videos(self.store, indexes.get(st.name), queries, radius, vis,
                            max_results=max_results, checkpoint=checkpoint,
                            group_frames=group_frames)  # fmt: skip

    def match_hex(self, signal_type: str, values: Sequence[str], **options) -> list[MatchList]:
        """Convenience: hex strings instead of packed codes."""
        st = signal_types.get(signal_type)
        return self.match(st.name, st.parse_many(list(values)), **options)

    def match_media(
        self,
        source: bytes | str | Path,
        *,
        types: Sequence[str] = ("pdq",),
        options: HashOptions | None = None,
        tenant: str | None = None,
        threshold: int | None = None,
        lists: Sequence[str] | None = None,
        max_results: int | None = None,
        min_quality: int | None = None,
        low_quality_queries: str | None = None,
    ) -> MediaMatch:
        """Hash media, then match each hash (:meth:`match_hashes`); ``options``: the
        hashing defaults when None."""
        from hashmatch.engine.hashing import DEFAULT_OPTIONS, hash_media

        check_low_quality_queries(low_quality_queries)  # before the (costly) hashing
        options = DEFAULT_OPTIONS if options is None else options
        return self.match_hashes(
            hash_media(source, types, options), tenant=tenant, threshold=threshold,
            lists=lists, max_results=max_results, min_quality=min_quality,
            low_quality_queries=low_quality_queries,
        )  # fmt: skip

    def match_hashes(
        self,
        hashes: Sequence[HashResult],
        *,
        tenant: str | None = None,
        threshold: int | None = None,
        lists: Sequence[str] | None = None,
        max_results: int | None = None,
        min_quality: int | None = None,
        low_quality_queries: str | None = None,
    ) -> MediaMatch:
        """Match the hashes of one piece of media, computed here (:meth:`match_media`) or
        elsewhere (a vPDQ hash file: its frames as one video). Dihedral PDQ queries all 8
        variants and keeps, per stored signal, the nearest (``Match.variant`` says which).
        A PDQ image whose quality (as given) is under ``min_quality`` is matched, every
        row of it, as ``low_quality_queries`` says (:meth:`match`)."""
        rule = check_low_quality_queries(low_quality_queries)
        result = MediaMatch(hashes=list(hashes))
        shared = threshold
        for h in hashes:
            st = signal_types.get(h.signal_type)
            threshold = st.shared_threshold(shared)  # exact types always match at 0
            if st.name == "vpdq":
                found = self.match(
                    "vpdq", h.codes, tenant=tenant, threshold=threshold, lists=lists,
                    max_results=max_results, qualities=h.qualities or None,
                    min_quality=min_quality,
                )[0]  # fmt: skip
                result.matches.extend(found)
                result.skipped_low_quality |= found.skipped_low_quality
                continue
            # every row (variants, trims) is judged by the image's quality as given
            known = st.name == "pdq" and h.quality is not None
            per_row = self.match(
                st.name,
                h.codes,
                tenant=tenant,
                threshold=threshold,
                lists=lists,
                max_results=None,
                qualities=[h.quality] * len(h.codes) if known else None,
                min_quality=min_quality,
                low_quality_queries=rule,
            )
            if per_row and per_row[0].skipped_low_quality:
                result.skipped_low_quality = True
                result.quality_stored_only |= per_row[0].quality_stored_only
            best: dict[int, Match] = {}
            for variant, found in enumerate(per_row):
                turned = h.orientations[variant] if h.orientations else 0
                for m in found:
                    if not keeps_row_hit(turned, m.distance, st.default_threshold, threshold):
                        continue  # re-oriented rows: within the type's default only
                    prev = best.get(m.signal_id)
                    if prev is None or m.distance < prev.distance:
                        best[m.signal_id] = _with_query(m, 0, variant)
            ordered = sorted(best.values(), key=lambda m: (m.distance, m.signal_id))
            result.matches.extend(ordered[:max_results] if max_results else ordered)
        return result

    def _visibility(
        self, tenant: str | None, lists: Sequence[str] | None, reads: LookupReads
    ) -> Visibility:
        table = reads.list_table()
        allowed = reads.visible_list_ids(tenant)
        if lists:
            by_name = {name: lid for lid, (name, _) in table.items()}
            wanted: set[int] = set()
            for i, name in enumerate(lists):
                lid = by_name.get(name.strip())  # as ingest stored it (names are stripped)
                if lid is None or (allowed is not None and lid not in allowed):
                    raise NotFound(f"no hash list named {name!r} is visible", field="lists",
                                   index=i)  # fmt: skip
                wanted.add(lid)
            allowed = wanted
        return Visibility(table, allowed)

    # ------------------------------------------------------------------ writes

    def ingest(
        self,
        records: Iterable[SignalRecord | Rejection],
        *,
        list_name: str,
        actor: str = "local",
        source: str | None = None,
        strict: bool = False,
        tenant: str | None = None,
        create_list: bool | None = None,
        batch_size: int = DEFAULT_BATCH,
        progress: Callable[[int], None] | None = None,
    ) -> IngestReport:
        """Write signals into ``list_name``; each committed batch is in the index at once.

        Idempotent: a hash already in the list is ``unchanged`` (or ``updated`` if its
        labels/external id/quality/expiry differ). Bad records are rejected with a
        reason (and line, when the parser knew it); ``strict`` refuses everything
        (raises :class:`~hashmatch.engine.store.IngestRefused`) if any record is bad.
        ``create_list`` defaults to True for the local admin (``tenant=None``).
        """
        with contextlib.ExitStack() as stack:
            # Defer index merges to the end of the ingest: each committed batch is
            # searchable at once (unmerged rows are scanned), but the shards are
            # re-indexed once, not after every batch. Only for more than one batch:
            # the live indexes' bulk counter is shared, so overlapping one-batch ingests
            # (a server's Ingest messages) kept it above 0 and no write merged or
            # coalesced while they went on (segments and lookup time grew without bound).
            one_batch = isinstance(records, Sequence) and len(records) <= batch_size
            for index in [] if one_batch else list((self._indexes or {}).values()):
                stack.enter_context(index.bulk())
            return self.store.ingest(
                records,
                list_name=list_name,
                actor=actor,
                source=source,
                strict=strict,
                tenant=tenant,
                create_list=(tenant is None) if create_list is None else create_list,
                batch_size=batch_size,
                progress=progress,
                on_commit=self.sync,
            )

    def retract(
        self,
        *,
        list_name: str,
        hashes: Sequence[tuple[str, str]] = (),
        signal_ids: Sequence[int] = (),
        external_ids: Sequence[str] = (),
        reason: str | None = None,
        actor: str = "local",
        tenant: str | None = None,
        missing: list[str] | None = None,
        unchanged: list[str] | None = None,
    ) -> int:
        """Retract signals (by (type, hex), id or external id); gone from the next lookup.
        ``missing``, ``unchanged``: as the store's
        :meth:`~hashmatch.engine.store.SignalStore.retract`."""
        n = self.store.retract(
            list_name=list_name, hashes=hashes, signal_ids=signal_ids,
            external_ids=external_ids, reason=reason, actor=actor, tenant=tenant,
            missing=missing, unchanged=unchanged,
        )  # fmt: skip
        self.sync()
        return n

    def restore(
        self,
        *,
        list_name: str,
        hashes: Sequence[tuple[str, str]] = (),
        signal_ids: Sequence[int] = (),
        external_ids: Sequence[str] = (),
        actor: str = "local",
        tenant: str | None = None,
    ) -> int:
        """Undo retractions; the signals match again from the next lookup."""
        n = self.store.restore(
            list_name=list_name, hashes=hashes, signal_ids=signal_ids,
            external_ids=external_ids, actor=actor, tenant=tenant,
        )  # fmt: skip
        self.sync()
        return n

    # ------------------------------------------------------------------ index ops

    def _build_from_store(self, progress: Progress | None = None) -> tuple[dict, int]:
        """Fresh indexes from one consistent read of the store; returns (indexes, counter).

        A type the change log ever added signals of gets an index even with none live
        (all retracted or deleted): a snapshot of these indexes must hold every such
        type, or the next start refuses it (:meth:`_check_every_type`)."""
        conn = self.store.conn()
        indexes: dict[str, object] = {}
        conn.execute("BEGIN")  # one read snapshot: rows and counter agree
        try:
            counter = self.store.change_counter()
            totals = self.store.count_live()
            total = sum(totals.values())
            done = 0
            for stype in sorted(set(totals) | self.store.added_types(counter)):
                index = self._index_for(stype, indexes)
                with index.bulk():  # merge/index once at the end, not per chunk
                    for ids, codes in self.store.iter_live(stype):
                        index.add(codes, ids)
                        done += len(ids)
                        if progress is not None:
                            progress(f"build:{stype}", done, total)
        finally:
            conn.execute("COMMIT")
        return indexes, counter

    def rebuild_index(
        self,
        progress: Progress | None = None,
        *,
        actor: str = "local",
        stop: Callable[[], bool] | None = None,
    ) -> dict:
        """Rebuild every index from the store aside, then swap atomically.

        Lookups keep using the old indexes while this runs; changes committed
        meanwhile are replayed onto the new ones before the swap. ``stop`` is asked
        after each chunk read and before the swap: once it says True the rebuild
        raises :class:`RebuildStopped` and the old indexes stay (a server shutting
        down must not close the store under a rebuild still reading it).
        """
        started = time.perf_counter()
        indexes, counter = self._build_from_store(_stoppable(progress, stop))
        if stop is not None and stop():
            raise RebuildStopped("stopped before the swap; the old index stays")
        with self._sync_lock:
            # replayed while unpublished (an error leaves the old indexes live), then one
            # swap: a lookup sees the old map or the complete new one
            replayed, applied = self._replay(indexes, counter)
            self._indexes, self._applied = indexes, applied
            built = {t: len(ix) for t, ix in indexes.items() if len(ix)}
            drifted = self.store.count_live() != built
        # the list counters are derived from the store too: when they disagree with the
        # index just built from it (verify's check), recount them (a scan of every signal,
        # so only then; another process's write in between costs a needless recount)
        recounted = self.store.recount_lists() if drifted else 0
        if progress is not None:
            progress("swap", 1, 1)
        summary = {
            "seconds": round(time.perf_counter() - started, 3),
            "change_counter": self._applied,
            "replayed_changes": replayed,
            "types": {t: len(ix) for t, ix in indexes.items()},
            "total": sum(len(ix) for ix in indexes.values()),
            "recounted_lists": recounted,
        }
        try:
            self.store.record("index.rebuild", actor=actor, count=summary["total"], details=summary)
        except sqlite3.OperationalError as exc:
            # the new index is already live: a full disk must not make the rebuild look failed
            if not is_disk_full(exc):
                raise
            summary["audit_error"] = f"the rebuild is live but was not audited: {exc}"
        return summary

    def verify_index(self, *, sample: int = 20_000, seed: int = 0) -> dict:
        """Check index <=> store: counts per type, and that sampled live signals are found
        at distance 0 under their own id while sampled retracted ones are not."""
        indexes = self._ensure_loaded()
        with self._sync_lock:
            counts = self.store.count_live()
            skipped = self._load_info.get("skipped_snapshots", [])
            report: dict = {"ok": True, "change_counter": self._applied, "types": {},
                            "skipped_snapshots": skipped}  # fmt: skip
            rng = np.random.default_rng(seed)
            for stype in sorted(set(counts) | set(indexes)):
                index = indexes.get(stype)
                n_index = len(index) if index is not None else 0
                entry = {"store": counts.get(stype, 0), "index": n_index, "checked": 0,
                         "missing": [], "stale": []}  # fmt: skip
                live_ids, live_codes = self.store.sample_live(stype, sample, rng)
                if len(live_ids) and index is not None:
                    lims, _, ids = index.search_radius(live_codes, 0)
                    for i, want in enumerate(live_ids.tolist()):
                        if want not in set(ids[lims[i] : lims[i + 1]].tolist()):
                            entry["missing"].append(want)
                    entry["checked"] = len(live_ids)
                elif len(live_ids):
                    entry["missing"] = live_ids[:100].tolist()
                dead = self.store.signals(retracted=True, limit=min(sample, 1000))
                dead = [s for s in dead if s.signal_type == stype and stype != "vpdq"]
                if dead and index is not None:
                    st = signal_types.get(stype)
                    q = st.parse_many([s.hash_hex for s in dead])
                    lims, _, ids = index.search_radius(q, 0)
                    for i, s in enumerate(dead):
                        if s.id in set(ids[lims[i] : lims[i + 1]].tolist()):
                            entry["stale"].append(s.id)
                    entry["checked"] += len(dead)
                ok = entry["store"] == entry["index"] and not entry["missing"] and not entry[
                    "stale"]  # fmt: skip
                entry["ok"] = ok
                entry["missing"] = entry["missing"][:100]
                entry["stale"] = entry["stale"][:100]
                report["types"][stype] = entry
                report["ok"] &= ok
        return report

    # ------------------------------------------------------------------ snapshots

    def snapshot(self, *, actor: str = "local") -> Path:
        """Write every live index and a manifest (change counter, store id, digest of
        that change) under ``snapshots/``.

        Written to a temporary directory (named with this pid, so a later snapshot or
        load can tell an abandoned one), fsynced, then renamed: a crash leaves either
        the old snapshots or the new one, never a half-written one.

        Only freezing the indexes holds the sync lock (microseconds); writing and
        fsyncing them (seconds at millions of signals) does not, so lookups and
        writes go on meanwhile. One snapshot at a time (``_snapshot_lock``).
        """
        self._ensure_loaded()
        with self._snapshot_lock:
            indexes, manifest = self._freeze()
            final = self._write_snapshot(indexes, manifest)
            self._snapshot_at = manifest["created_at"]
            self._prune_snapshots(final, purged=self.store.last_purge())
        self.store.record("index.snapshot", actor=actor, count=sum(
            v["count"] for v in manifest["types"].values()), source=str(final),
            details={"change_counter": manifest["change_counter"]})  # fmt: skip
        return final

    def _freeze(self) -> tuple[dict[str, object], dict]:
        """The live indexes as of one change (a frozen view each) and the manifest
        naming that change; taken under the sync lock, so no change is half-applied.

        After a list deletion (``_purged``) the live indexes are first rebuilt without
        tombstones (lookups that need a sync wait meanwhile): the codes of its signals
        must not be written into the snapshot (a tombstoned row keeps its code). The
        flag is read under the lock too: read before it, a lookup's sync in between
        applied the deletion to the indexes frozen here, uncompacted."""
        with self._sync_lock:
            if self._purged:
                for index in (self._indexes or {}).values():
                    index.compact()
                self._purged = False
            indexes = {stype: _frozen(ix) for stype, ix in (self._indexes or {}).items()}
            at = self._applied
            conn = self.store.conn()
            manifest: dict = {"format": SNAPSHOT_FORMAT, "change_counter": at,
                              "store_id": store_id(conn), "change_digest": change_digest(conn, at),
                              "created_at": time.time(), APPLIES_PURGES: True,
                              "types": {}}  # fmt: skip
        return indexes, manifest

    def _write_snapshot(self, indexes: dict[str, object], manifest: dict) -> Path:
        """Save ``indexes`` (frozen views) with ``manifest`` as a new snapshot directory."""
        name = f"snap-{manifest['change_counter']:012d}-{time.time_ns()}"
        tmp = self.snapshot_dir / f"{name}.{os.getpid()}.tmp"
        final = self.snapshot_dir / name
        try:
            self.snapshot_dir.mkdir(parents=True, exist_ok=True)
            remove_abandoned_tmp(self.snapshot_dir)
            tmp.mkdir()
            with writing(tmp):
                for stype, index in indexes.items():
                    fname = f"{stype}.index"
                    index.save(tmp / fname)
                    manifest["types"][stype] = {"file": fname, "count": len(index)}
                (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
                fsync_tree(tmp)
                os.replace(tmp, final)
        except OSError as exc:  # ENOSPC, EIO, EDQUOT...: numpy's own names no file or errno
            failure = _snapshot_failure(self.snapshot_dir, exc)  # free space before cleanup
            shutil.rmtree(tmp, ignore_errors=True)
            raise failure from exc
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        fsync_path(self.snapshot_dir)
        return final

    def _prune_snapshots(self, keep: Path, *, purged: int = 0) -> None:
        """Keep ``keep`` (just written) and the newest others up to KEEP_SNAPSHOTS.

        Snapshots ahead of the store (it was restored from an older backup) go first:
        they can never load, and by name they sort above the one just written. So do
        those taken before change ``purged`` (the last list deletion): they hold the
        deleted signals' codes, as do those of an older build after it (no
        ``applies_purges``: it skipped the purge rows). Directories not named by
        :meth:`snapshot` are left alone.
        """
        counter = self.store.change_counter()
        kept = 1
        for manifest in list_snapshots(self.snapshot_dir):
            snap = manifest.parent
            at = snapshot_counter(snap.name)
            if snap == keep or at is None:
                continue
            if purged and not _applies_purges(manifest):  # an older build's: holds them too
                remove_snapshot(snap)
                continue
            if purged <= at <= counter and kept < KEEP_SNAPSHOTS:
                kept += 1
                continue
            remove_snapshot(snap)

    def snapshots_before_purge(self) -> list[Path]:
        """Snapshots taken before the last list deletion: they still hold its codes,
        until the next :meth:`snapshot` prunes them (``lists delete`` says so)."""
        purged = self.store.last_purge()
        snaps = [m.parent for m in list_snapshots(self.snapshot_dir)]
        return [s for s in snaps if (at := snapshot_counter(s.name)) is not None and at < purged]

    def _read_snapshot(self, manifest_path: Path, counter: int) -> tuple[dict, int]:
        """Load a snapshot if it is one of THIS store's history at or before ``counter``,
        and complete; else CorruptData saying why (the caller skips it)."""
        from hashmatch.engine.store_index import load_live_index

        manifest = check_manifest(read_manifest_file(manifest_path, manifest_path.parent))
        at = manifest["change_counter"]
        if at > counter:
            raise CorruptData(f"snapshot is ahead of the store (counter {at} > {counter})")
        self._check_same_history(manifest)
        self._check_every_type(manifest["types"], at)
        indexes: dict[str, object] = {}
        for stype, entry in manifest["types"].items():
            index = load_live_index(manifest_path.parent / entry["file"], signal_types.get(stype))
            if len(index) != entry["count"]:
                raise CorruptData(f"{stype}: {len(index)} codes, manifest says {entry['count']}")
            indexes[stype] = index
        if not manifest.get(APPLIES_PURGES):
            self._apply_old_purges(indexes, at)
        self._snapshot_at = float(manifest.get("created_at") or 0) or None
        return indexes, at

    def _apply_old_purges(self, indexes: dict[str, object], at: int) -> None:
        """Drop from a loaded snapshot's ``indexes`` the index ids of the lists deleted
        at or before its position ``at``, and compact before the next snapshot. For a
        snapshot of a build that skipped the log's purge rows (older than ``lists
        delete``): written after a delete, it held the deleted videos' frames (their
        ``remove`` needs a frame count, gone with the rows), which this build served
        from and wrote into every later snapshot until an ``index rebuild``."""
        for stype, ids in self.store.purged_ids(through=at):
            if stype in indexes:
                indexes[stype].remove(ids, missing_ok=True)
                self._purged = True

    def _check_same_history(self, manifest: dict) -> None:
        """The snapshot was taken of this store, and the change it was taken at is still
        this store's change at that seq (a counter that merely fits is not enough: a
        store restored from a backup reaches the same counter with other changes)."""
        conn = self.store.conn()
        ours = store_id(conn)
        if manifest["store_id"] != ours:
            raise CorruptData(
                f"taken of another store ({manifest['store_id']!r}, this one is {ours!r})",
                field="store_id",
            )
        at = manifest["change_counter"]
        if manifest["change_digest"] != change_digest(conn, at):
            raise CorruptData(
                f"change {at} is not the one the snapshot was taken at: the store was "
                "restored from a backup or replaced since",
                field="change_digest",
            )

    def _check_every_type(self, types: dict, at: int) -> None:
        """Refuse a snapshot without an index for a type the store had signals of at
        change ``at`` (that type would never match). A type first added after ``at``
        is legitimately missing: replay creates it."""
        missing = set(self.store.count_live()) - set(types)
        if not missing:
            return
        lacking = sorted(missing & self.store.added_types(at))
        if lacking:
            raise CorruptData(
                f"no index of {', '.join(lacking)}, which the store has signals of", field="types"
            )

    # ------------------------------------------------------------------ stats

    def index_sizes(self) -> dict[str, int]:
        """Entries per signal type in the live indexes, O(1) and without touching the
        store or loading anything (for metrics scraped often); {} until loaded."""
        indexes = self._indexes or {}
        return {stype: len(index) for stype, index in list(indexes.items())}

    def stats(self) -> dict:
        """Counts per type (store and index), per list, memory, snapshot age.

        ``count`` and ``total_signals`` count signals (a vPDQ video once, as lists do);
        ``rows`` and ``indexed`` count index rows (a video's frames)."""
        indexes = self._ensure_loaded()
        counts = self.store.count_live(frames=False)  # signals: a video counts once
        rows = self.store.count_live()  # index rows: vPDQ frames
        types = {}
        for stype in sorted(set(counts) | set(indexes)):
            index = indexes.get(stype)
            shard_counts = []
            if index is not None and hasattr(index, "shard_sizes"):
                try:
                    shard_counts = [int(x) for x in index.shard_sizes()]
                except Exception:  # informational only
                    shard_counts = []
            types[stype] = {
                "memory_bytes": int(index.memory_bytes()) if index is not None else 0,
                "count": counts.get(stype, 0),
                "rows": rows.get(stype, 0),
                "indexed": len(index) if index is not None else 0,
                "kind": getattr(index, "kind", type(index).__name__) if index is not None else None,
                "shards": shard_counts,
            }
        try:
            import psutil

            memory = psutil.Process().memory_info().rss
        except Exception:  # psutil is a dependency, but stats must never fail
            memory = 0
        lists = {info.name: info.signal_count for info in self.store.lists()}
        return {
            "total_signals": int(sum(counts.values())),
            "index_kind": self.index_kind,
            "memory_bytes": int(memory),
            "snapshot_age_seconds": (
                time.time() - self._snapshot_at if self._snapshot_at else None
            ),
            "types": types,
            "lists": lists,
            "change_counter": self.store.change_counter(),
            "applied_counter": self._applied,
            "load": self._load_info,
        }


# ---------------------------------------------------------------------- helpers


def _stoppable(progress: Progress | None, stop: Callable[[], bool] | None) -> Progress | None:
    """``progress`` that first raises RebuildStopped once ``stop()`` is True.

    Raised between chunks, so the read ends there; the type's index still merges the
    rows read so far on the way out (its bulk load merges on exit), then is dropped.
    """
    if stop is None:
        return progress

    def checked(stage: str, done: int, total: int) -> None:
        if stop():
            raise RebuildStopped(f"stopped at {stage} {done}/{total}; the old index stays")
        if progress is not None:
            progress(stage, done, total)

    return checked


#: manifest key of snapshots written by a build that applies the log's purge rows
#: (``lists delete``) before it writes one; an older build's lacks it
APPLIES_PURGES = "applies_purges"


def _applies_purges(manifest_path: Path) -> bool:
    """Whether a snapshot's manifest says it was written with purges applied (an
    unreadable one: False, as it cannot be loaded either)."""
    try:
        return bool(json.loads(manifest_path.read_text()).get(APPLIES_PURGES))
    except (OSError, ValueError, AttributeError):
        return False


def _frozen(index: object) -> object:
    """A view of ``index`` that later writes do not change, for saving it unlocked.

    A ShardedIndex's whole state is one immutable tuple (segments, copy-on-write
    tombstone masks) that writers replace, never mutate: a shallow copy keeps the
    tuple of this moment while the live index moves on.
    """
    return copy.copy(index)


def _check_codes(st: signal_types.SignalType, codes: np.ndarray) -> np.ndarray:
    codes = np.asarray(codes)
    if codes.ndim == 1:
        codes = codes[None, :]
    if codes.dtype != np.uint8 or codes.ndim != 2 or codes.shape[1] != st.nbytes:
        raise InvalidHash(
            f"{st.name} codes must be uint8[n, {st.nbytes}], got {codes.dtype}{list(codes.shape)}",
            field="codes",
        )
    return np.ascontiguousarray(codes)


def _with_query(m: Match, query_index: int, variant: int | None = None) -> Match:
    from dataclasses import replace

    if variant is None:
        return replace(m, query_index=query_index)
    return replace(m, query_index=query_index, variant=variant)


def _refuse_lost_store(data_dir: Path) -> None:
    """A data dir with snapshots but no store lost its store (deleted, a failed move):
    creating an empty one would serve "no match" for everything."""
    snaps = data_dir / "snapshots"
    if snaps.is_dir() and any(snaps.iterdir()):
        raise CorruptData(
            f"{data_dir / 'store.sqlite'} is missing but {snaps} holds index snapshots: the"
            " store was lost; restore it from a backup (or remove snapshots/ to start an"
            " empty store)",
            field="data_dir",
        )


def _snapshot_failure(snapshot_dir: Path, exc: OSError) -> SnapshotFailed:
    """The operator's message for a snapshot write that failed: where, why, and that
    nothing is lost. ``disk_full`` also when numpy's short write carries no errno but
    the filesystem has under 1 MiB left (measured before the partial snapshot is removed)."""
    full, why, room = write_failure(snapshot_dir, exc)
    size_limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if not full and exc.errno is None and size_limit != resource.RLIM_INFINITY:
        # numpy's short write ("N requested and M written") carries no errno
        why = f"{exc} (over the file-size limit of {size_limit:,} bytes: ulimit -f)"
    return SnapshotFailed(
        f"cannot write a snapshot in {snapshot_dir}: {why}{room}; the previous snapshot is"
        " kept and the live index is unaffected",
        disk_full=full,
    )
