"""Stateful property test of store + engine + snapshots against a brute-force model.

Why: every write (ingest, re-ingest, retract, restore, list disable/rename/delete,
grants) reaches a lookup through the change log, a snapshot or a rebuild, and each
path has its own replay rules. A hypothesis state machine drives random sequences of
them (PDQ, pHash, MD5 and vPDQ; records or the CLI's CSV column path), through the
serving engine or through a second engine on the same data dir (the CLI next to a
running server), with snapshots, restarts, rebuilds and compactions in between.
After every step ``Engine.match`` must return exactly the brute-force answer over the
model's live signals (ids, distances, lists, labels, vPDQ percentages; thresholds,
list filters, tenants, result caps and the PDQ quality floor drawn per lookup), the
counts the engine and store report must agree with the model, a restart must load the
newest snapshot, and no snapshot kept after a newer one may hold a deleted list's
codes. Real SQLite in a temporary directory, real indexes (scan, FAISS, MIH)."""

from __future__ import annotations

import io
import json
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from hashmatch.engine import signal_types
from hashmatch.engine.errors import NotFound
from hashmatch.engine.ingest import read_records, write_records
from hashmatch.engine.runtime import Engine
from hashmatch.engine.store import FRAME_BITS, IngestRefused, SignalRecord, video_key
from hashmatch.engine.video import vpdq_match
from hashmatch.indexes import load_index

TYPES = ("pdq", "phash", "md5", "vpdq")
LIST_NAMES = ("a", "b", "c", "d")
LABELS = ((), ("x",), ("x", "y"), ("y",))
EXTERNAL = (None, "e1", "e2")
HOUR = 3600.0
EXPIRIES = (None, -HOUR, 24 * HOUR)  # relative to now: none, expired, not yet
QUALITIES = (None, 80)
POOL = 8  # codes per type: 3 random bases, then codes near base 0 (shared by lists)


def _flip(code: bytes, bits: list[int]) -> bytes:
    out = bytearray(code)
    for b in bits:
        out[b // 8] ^= 1 << (b % 8)
    return bytes(out)


def _pool(stype: str) -> list[bytes]:
    """Stored codes a step may ingest: near each other, so thresholds matter."""
    bits = signal_types.get(stype).bits
    rng = np.random.default_rng(len(stype) * 7 + bits)
    bases = [rng.bytes(bits // 8) for _ in range(3)]
    near = []
    for k in range(POOL - 3):
        d = min(bits, [1, 5, 12, 31, 40][k])
        near.append(_flip(bases[0], rng.choice(bits, d, replace=False).tolist()))
    return bases + near


def _videos() -> list[np.ndarray]:
    """vPDQ videos (frames): overlapping, reordered, with repeated frames, so the
    percentages and the per-frame index rows both matter."""
    f = np.frombuffer(b"".join(_pool("pdq")), np.uint8).reshape(-1, 32)
    rng = np.random.default_rng(5)
    other = rng.integers(0, 256, (4, 32), dtype=np.uint8)
    picks = [f[[0, 1, 2]], f[[2, 1, 0]], f[[3, 4]], np.vstack([f[[0, 0]], other[:2]]),
             other, f[[5]], np.vstack([f[[6, 7]], other[3:]]), f[[1]]]  # fmt: skip
    return [np.ascontiguousarray(v) for v in picks]


VIDEOS = _videos()
CODES = {t: _pool(t) for t in TYPES if t != "vpdq"}
CODES["vpdq"] = [video_key(v) for v in VIDEOS]
FRAMES = dict(zip(CODES["vpdq"], VIDEOS, strict=True))


def _code(rec: SignalRecord) -> bytes:
    """The identity of a record in a list: its code, or a video's key."""
    return video_key(rec.frames) if rec.signal_type == "vpdq" else bytes.fromhex(rec.hash_hex)


def _distance(a: bytes, b: bytes) -> int:
    xor = np.bitwise_xor(np.frombuffer(a, np.uint8), np.frombuffer(b, np.uint8))
    return int(np.unpackbits(xor).sum())


@dataclass
class Sig:
    sid: int
    stype: str
    code: bytes
    list_id: int
    labels: tuple[str, ...]
    ext: str | None
    quality: int | None
    expires: float | None
    retracted: bool = False

    def payload(self) -> tuple:
        return (self.labels, self.ext, self.quality, self.expires)

    @property
    def rows(self) -> int:
        """Index rows: a video's frames, else one."""
        return len(FRAMES[self.code]) if self.stype == "vpdq" else 1


@dataclass
class ListM:
    id: int
    enabled: bool = True
    granted: bool = False  # shared with tenant "t"


@dataclass
class Model:
    lists: dict[str, ListM] = field(default_factory=dict)
    sigs: dict[int, Sig] = field(default_factory=dict)
    list_ids_ever: set[int] = field(default_factory=set)
    deleted: set[int] = field(default_factory=set)  # ids of signals of deleted lists
    max_sid: int = 0

    def name_of(self, list_id: int) -> str:
        return next(n for n, m in self.lists.items() if m.id == list_id)

    def in_list(self, name: str) -> list[Sig]:
        lid = self.lists[name].id
        return [s for s in self.sigs.values() if s.list_id == lid]

    def find(self, name: str, stype: str, code: bytes) -> Sig | None:
        for s in self.in_list(name):
            if s.stype == stype and s.code == code:
                return s
        return None


def _record(now: float, stype, i, labels, ext, quality, expiry) -> SignalRecord:
    video = stype == "vpdq"
    return SignalRecord(
        stype,
        "" if video else CODES[stype][i].hex(),
        frames=VIDEOS[i] if video else None,
        labels=labels,
        external_id=ext,
        quality=quality if stype == "pdq" else None,
        expires_at=None if expiry is None else now + expiry,
    )


record = st.tuples(
    st.sampled_from(TYPES),
    st.integers(0, POOL - 1),
    st.sampled_from(LABELS),
    st.sampled_from(EXTERNAL),
    st.sampled_from(QUALITIES),
    st.sampled_from(EXPIRIES),
)
# a retract/restore target: (kind, type, pool index, or a signal chosen by position)
target = st.tuples(
    st.sampled_from(("hash", "id", "ext")),
    st.sampled_from(TYPES),
    st.integers(0, POOL - 1),
    st.integers(0, 50),
)


class StoreEngineMachine(RuleBasedStateMachine):
    """The serving engine (``self.engine``), a CLI-like engine on the same data dir
    (``self.cli``, never loads an index), and the model both must agree with."""

    @initialize(kind=st.sampled_from(("auto", "flat", "mih")), shards=st.integers(1, 2))
    def setup(self, kind, shards) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="hm-stateful-"))
        self.data = self.tmp / "data"
        self.options = {"index_kind": kind, "shards": shards}
        self.engine = Engine.open(self.data, **self.options)
        self.cli = Engine.open(self.data, eager=False)
        self.cli.store.create_tenant("t")
        self.model = Model()
        self.now = time.time()
        self.snapshots = 0

    def teardown(self) -> None:
        for name in ("engine", "cli"):
            eng = getattr(self, name, None)
            if eng is not None:
                eng.close()
        if hasattr(self, "tmp"):
            shutil.rmtree(self.tmp, ignore_errors=True)

    def _writer(self, via_cli: bool) -> Engine:
        return self.cli if via_cli else self.engine

    # ------------------------------------------------------------------ writes

    @rule(
        name=st.sampled_from(LIST_NAMES),
        records=st.lists(record, min_size=1, max_size=6),
        bad=st.lists(st.integers(0, 6), max_size=2),
        strict=st.booleans(),
        via_cli=st.booleans(),
        batch_size=st.integers(1, 4),
        pad=st.booleans(),
        as_csv=st.booleans(),
    )
    def ingest(self, name, records, bad, strict, via_cli, batch_size, pad, as_csv) -> None:
        """Good records (re-ingests and duplicates among them) and, at ``bad``
        positions, malformed ones; strict refuses everything if any record is refused."""
        m = self.model
        recs = [_record(self.now, *r) for r in records]
        for at in bad:
            recs.insert(min(at, len(recs)), SignalRecord("pdq", "not hex"))
        expect = {"added": 0, "updated": 0, "unchanged": 0, "rejected": 0}
        seen: set[tuple[str, bytes]] = set()
        new: list[SignalRecord] = []
        updates: list[tuple[Sig, SignalRecord]] = []
        for rec in recs:
            if rec.hash_hex == "not hex":
                expect["rejected"] += 1
                continue
            key = (rec.signal_type, _code(rec))
            if key in seen:
                expect["rejected"] += 1
                continue
            seen.add(key)
            old = m.find(name, *key) if name in m.lists else None
            if old is None:
                expect["added"] += 1
                new.append(rec)
            elif old.payload() != (rec.labels, rec.external_id, rec.quality, rec.expires_at):
                expect["updated"] += 1
                updates.append((old, rec))
            else:
                expect["unchanged"] += 1
        writer = self._writer(via_cli)
        spelled = f" {name} " if pad else name  # stored stripped
        if as_csv and all(r.signal_type != "vpdq" for r in recs):  # the CLI's column path
            text = io.StringIO()
            write_records(recs, text, format="csv")
            recs = read_records(io.StringIO(text.getvalue()), format="csv")
        if strict and expect["rejected"]:
            with pytest.raises(IngestRefused):
                writer.ingest(recs, list_name=spelled, batch_size=batch_size, strict=True)
            return
        report = writer.ingest(recs, list_name=spelled, batch_size=batch_size, strict=strict)
        got = {k: getattr(report, k) for k in expect}
        assert got == expect, (got, expect, report.rejections)
        for old, rec in updates:
            old.labels, old.ext = rec.labels, rec.external_id
            old.quality, old.expires = rec.quality, rec.expires_at
        if name not in m.lists and new:
            info = self.engine.store.get_list(name)
            assert info.id not in m.list_ids_ever, "a list id was given out twice"
            m.list_ids_ever.add(info.id)
            m.lists[name] = ListM(info.id)
        self._learn_ids(name, new)
        assert sorted(m.lists) == sorted(i.name for i in self.engine.store.lists())

    def _learn_ids(self, name: str, new: list[SignalRecord]) -> None:
        """Ids of the signals just added: the store assigns them, the model checks they
        are new (never reused) and then holds them."""
        m = self.model
        if not new:
            return
        lid = m.lists[name].id
        conn = self.engine.store.conn()
        learned = []
        for rec in new:
            code = _code(rec)
            (sid,) = conn.execute(
                "SELECT id FROM signals WHERE list_id = ? AND signal_type = ? AND code = ?",
                (lid, rec.signal_type, code),
            ).fetchone()
            learned.append(Sig(sid, rec.signal_type, code, lid, tuple(rec.labels),
                               rec.external_id, rec.quality, rec.expires_at))  # fmt: skip
        assert min(s.sid for s in learned) > m.max_sid, "a signal id was given out twice"
        m.max_sid = max(s.sid for s in learned)
        m.sigs.update((s.sid, s) for s in learned)

    def _targets(self, name: str, targets) -> tuple[dict, set[int]]:
        """Retract/restore arguments and the model's signals they name in ``name``."""
        m = self.model
        own = sorted(m.in_list(name), key=lambda s: s.sid)
        everyone = sorted(m.sigs.values(), key=lambda s: s.sid)
        hashes, ids, exts = [], [], []
        hit: set[int] = set()
        for kind, stype, i, pick in targets:
            if kind == "hash":
                code = CODES[stype][i]
                hashes.append((stype, code.hex()))
                hit |= {s.sid for s in own if s.stype == stype and s.code == code}
            elif kind == "id":
                # mostly the list's own signals, sometimes another list's (not touched)
                pool = own if pick % 3 and own else everyone
                sid = pool[pick % len(pool)].sid if pool else 10**6
                ids.append(sid)
                hit |= {s.sid for s in own if s.sid == sid}
            else:
                ext = EXTERNAL[1 + pick % 2]
                exts.append(ext)
                hit |= {s.sid for s in own if s.ext == ext}
        return {"hashes": hashes, "signal_ids": ids, "external_ids": exts}, hit

    def _pick_list(self, data) -> str:
        return data.draw(st.sampled_from(sorted(self.model.lists)))

    @precondition(lambda self: self.model.lists)
    @rule(data=st.data(), picks=st.lists(target, min_size=1, max_size=3),
          via_cli=st.booleans(), retract=st.booleans())  # fmt: skip
    def retract_or_restore(self, data, picks, via_cli, retract) -> None:
        name = self._pick_list(data)
        args, hit = self._targets(name, picks)
        changed = [sid for sid in hit if self.model.sigs[sid].retracted != retract]
        eng = self._writer(via_cli)
        n = eng.retract(list_name=name, **args) if retract else eng.restore(list_name=name, **args)
        assert n == len(changed), (n, changed, args)
        for sid in changed:
            self.model.sigs[sid].retracted = retract

    @precondition(lambda self: self.model.lists)
    @rule(data=st.data(), via_cli=st.booleans())
    def delete_list(self, data, via_cli) -> None:
        m = self.model
        name = self._pick_list(data)
        contents = self._writer(via_cli).store.delete_list(name)
        gone = m.in_list(name)
        by_type = {
            t: (sum(not s.retracted for s in of), sum(s.retracted for s in of))
            for t in TYPES
            if (of := [s for s in gone if s.stype == t])
        }
        assert contents.signals == by_type
        assert contents.frames == sum(s.rows for s in gone if s.stype == "vpdq")
        assert contents.grants == (["t"] if m.lists[name].granted else [])
        for s in gone:
            del m.sigs[s.sid]
        m.deleted |= {s.sid for s in gone}
        del m.lists[name]

    @precondition(lambda self: self.model.lists)
    @rule(data=st.data(), new=st.sampled_from(LIST_NAMES), via_cli=st.booleans())
    def rename_list(self, data, new, via_cli) -> None:
        m = self.model
        old = self._pick_list(data)
        if new in m.lists:
            return
        self._writer(via_cli).store.rename_list(old, new)
        m.lists[new] = m.lists.pop(old)

    @precondition(lambda self: self.model.lists)
    @rule(data=st.data(), enabled=st.booleans(), via_cli=st.booleans(), pad=st.booleans())
    def set_enabled(self, data, enabled, via_cli, pad) -> None:
        name = self._pick_list(data)
        self._writer(via_cli).store.set_list_enabled(f"{name} " if pad else name, enabled)
        self.model.lists[name].enabled = enabled

    @precondition(lambda self: self.model.lists)
    @rule(data=st.data(), granted=st.booleans(), via_cli=st.booleans())
    def grant_or_revoke(self, data, granted, via_cli) -> None:
        name = self._pick_list(data)
        store = self._writer(via_cli).store
        store.grant("t", name) if granted else store.revoke("t", name)
        self.model.lists[name].granted = granted

    # ------------------------------------------------------------------ index life

    @rule()
    def snapshot(self) -> None:
        """A snapshot; every snapshot kept after it is free of deleted lists' codes
        (tombstoned rows included): a deletion's promise (README, ``lists delete``)."""
        self.engine.snapshot()
        self.snapshots += 1
        assert not self.engine.snapshots_before_purge()
        for manifest in (self.data / "snapshots").glob("*/manifest.json"):
            for stype, entry in json.loads(manifest.read_text())["types"].items():
                index = load_index(manifest.parent / entry["file"], mmap=False)
                ids = [np.asarray(seg.ids) for shard in index._state for seg in shard.segments]
                held = np.concatenate([np.empty(0, np.int64), *ids])
                if stype == "vpdq":
                    held = held >> FRAME_BITS
                leaked = set(held.tolist()) & self.model.deleted
                assert not leaked, (manifest.parent.name, stype, sorted(leaked))

    @rule()
    def cli_snapshot(self) -> None:
        """``hashmatch index snapshot`` next to the running server: a short-lived engine
        loads (newest snapshot + replay) and writes the next snapshot."""
        with Engine.open(self.data, eager=False, **self.options) as cli:
            cli.snapshot()
            assert not cli.load_info.get("skipped_snapshots"), cli.load_info
        self.snapshots += 1

    @precondition(lambda self: self.model.lists)
    @rule(data=st.data())
    def snapshot_delete_restart(self, data) -> None:
        """The order a deletion most often meets a restart in: the snapshot the server
        comes back from still holds the deleted list."""
        self.snapshot()
        self.delete_list(data, via_cli=True)
        self.restart()

    @precondition(lambda self: self.model.lists)
    @rule(data=st.data(), picks=st.lists(target, min_size=1, max_size=3),
          new=st.sampled_from(LIST_NAMES))  # fmt: skip
    def retract_rename_restore(self, data, picks, new) -> None:
        """Retract, rename, then restore by the new name (through the CLI, unsynced)."""
        name = self._pick_list(data)
        args, hit = self._targets(name, picks)
        n = self.cli.retract(list_name=name, **args)
        assert n == sum(not self.model.sigs[sid].retracted for sid in hit)
        for sid in hit:
            self.model.sigs[sid].retracted = True
        if new not in self.model.lists:
            self.cli.store.rename_list(name, new)
            self.model.lists[new] = self.model.lists.pop(name)
            name = new
        if data.draw(st.booleans()):
            self.engine.snapshot()
            self.snapshots += 1
        assert self.cli.restore(list_name=name, **args) == len(hit)
        for sid in hit:
            self.model.sigs[sid].retracted = False

    @rule()
    def restart(self) -> None:
        """A fresh engine from the store and the newest snapshot (a server restart)."""
        self.engine.close()
        self.engine = Engine.open(self.data, **self.options)
        info = self.engine.load_info
        assert not info.get("skipped_snapshots"), info
        if self.snapshots:
            assert info["source"] == "snapshot", info

    @rule()
    def rebuild(self) -> None:
        self.engine.rebuild_index()

    @rule()
    def compact(self) -> None:
        """What a snapshot after a list deletion does: every shard merged into one
        indexed segment (at these sizes the only way MIH and FAISS segments get built)."""
        for index in self.engine._indexes.values():
            index.compact()

    @rule()
    def verify(self) -> None:
        """``hashmatch index verify``: counts, every live signal found, no retracted one."""
        report = self.engine.verify_index()
        assert report["ok"], report

    @rule()
    def sync(self) -> None:
        self.engine.sync()

    # ------------------------------------------------------------------ checks

    def _live(self, stype: str, lists: set[int] | None) -> list[Sig]:
        m = self.model
        enabled = {v.id for v in m.lists.values() if v.enabled}
        return [
            s
            for s in m.sigs.values()
            if s.stype == stype
            and not s.retracted
            and s.list_id in enabled
            and (lists is None or s.list_id in lists)
            and (s.expires is None or s.expires > time.time())
        ]

    def _wanted(self, lists: list[str] | None, tenant: str | None) -> set[int] | None:
        """List ids a request may match: its filter, within what the tenant sees."""
        m = self.model
        seen = {v.id for v in m.lists.values() if v.granted} if tenant else None
        if lists is None:
            return seen
        return {m.lists[n].id for n in lists}

    def _check(self, stype, queries: list, threshold: int, lists=None, tenant=None, *,
               max_results=None, qualities=None, rule=None) -> None:  # fmt: skip
        """One lookup of ``queries`` against the brute-force answer (``max_results``:
        the first ones in the engine's order; ``qualities``: PDQ queries under the
        quality floor of 50 match stored quality >= 50 only, or nothing with "skip")."""
        live = self._live(stype, self._wanted(lists, tenant))
        options = {"threshold": threshold, "lists": lists, "tenant": tenant,
                   "max_results": max_results}  # fmt: skip
        if stype == "vpdq":
            for frames in queries:  # one query video per call
                (found,) = self.engine.match(stype, frames, **options)
                want = self._want_video(frames, live, threshold)
                want.sort(key=lambda r: (-r[7], -r[8], r[0]))
                self._compare(found, want[:max_results])
            return
        codes = np.frombuffer(b"".join(queries), np.uint8).reshape(len(queries), -1)
        got = self.engine.match(stype, codes, qualities=qualities, low_quality_queries=rule,
                                **options)  # fmt: skip
        for j, (q, found) in enumerate(zip(queries, got, strict=True)):
            low = qualities is not None and qualities[j] is not None and qualities[j] < 50
            assert found.skipped_low_quality == low
            near = [s for s in live if not low or (s.quality is not None and s.quality >= 50)]
            if low and rule == "skip":
                near = []
            want = [self._row(s, d) for s in near if (d := _distance(q, s.code)) <= threshold]
            want.sort(key=lambda r: (r[1], r[0]))
            self._compare(found, want[:max_results])
            assert [(x.distance, x.signal_id) for x in found] == [
                r[1::-1] for r in want[:max_results]
            ]

    def _row(self, s: Sig, d: int, *pct: float) -> tuple:
        name = self.model.name_of(s.list_id)
        return (s.sid, d, name, s.labels, s.ext, s.code.hex(), s.stype, *pct)

    def _want_video(self, frames: np.ndarray, live: list[Sig], threshold: int) -> list[tuple]:
        """vPDQ's rule over the model's videos: >= 80% of the query's frames matched;
        the distance is the nearest frame pair's."""
        want = []
        for s in live:
            target = FRAMES[s.code]
            qpct, tpct = vpdq_match(frames, None, target, None, threshold)
            if qpct >= 80.0:
                d = min(_distance(a.tobytes(), b.tobytes()) for a in frames for b in target)
                want.append(self._row(s, d, qpct, tpct))
        return want

    @staticmethod
    def _compare(found, want: list[tuple]) -> None:
        pct = bool(want) and len(want[0]) > 7
        have = sorted(
            (x.signal_id, x.distance, x.list_name, x.labels, x.external_id, x.hash_hex,
             x.signal_type, *((x.query_match_pct, x.target_match_pct) if pct else ()))
            for x in found
        )  # fmt: skip
        assert have == sorted(want)

    @precondition(lambda self: hasattr(self, "engine"))
    @rule(
        stype=st.sampled_from(TYPES),
        threshold=st.integers(0, 63),
        picks=st.lists(st.tuples(st.integers(0, POOL - 1), st.integers(0, 40),
                                 st.integers(0, 2**32 - 1)), min_size=1, max_size=4),
        lists=st.none() | st.sets(st.sampled_from(LIST_NAMES), min_size=1, max_size=2),
        tenant=st.sampled_from((None, "t")),
        max_results=st.none() | st.integers(1, 3),
        quality=st.sampled_from((None, 30, 90)),
        low_rule=st.sampled_from((None, "skip", "match_quality_stored")),
    )  # fmt: skip
    def match(self, stype, threshold, picks, lists, tenant, max_results, quality, low_rule) -> None:
        """Queries planted 0..40 bits from pool codes (every frame of a pool video), a
        random threshold, list filter, tenant, result cap and (PDQ) query quality."""
        sig = signal_types.get(stype)
        threshold = min(threshold, sig.max_threshold)
        queries = []
        for i, d, seed in picks:
            rng = np.random.default_rng(seed)
            if stype == "vpdq":
                d = min(d, threshold + 2)  # near enough that some videos still match
                queries.append(np.array([np.frombuffer(_flip(f.tobytes(), rng.choice(
                    256, d, replace=False).tolist()), np.uint8) for f in VIDEOS[i]]))  # fmt: skip
                continue
            flips = rng.choice(sig.bits, min(d, sig.bits), replace=False).tolist()
            queries.append(_flip(CODES[stype][i], flips))
        if lists is not None:
            lists = sorted(n for n in lists if n in self.model.lists) or None
        hidden = tenant and lists and not all(self.model.lists[n].granted for n in lists)
        if hidden:  # a list not shared with the tenant: as if it did not exist
            one = VIDEOS[0] if stype == "vpdq" else np.frombuffer(queries[0], np.uint8)
            with pytest.raises(NotFound):
                self.engine.match(stype, one, threshold=threshold, lists=lists, tenant=tenant)
            return
        qualities = [quality] * len(queries) if stype == "pdq" else None
        self._check(stype, queries, threshold, lists, tenant, max_results=max_results,
                    qualities=qualities, rule=low_rule)  # fmt: skip

    @invariant()
    def matches_and_counts_agree(self) -> None:
        if not hasattr(self, "engine"):
            return
        for stype in TYPES:  # every pool code (video), at the widest threshold
            sig = signal_types.get(stype)
            pool = VIDEOS if stype == "vpdq" else CODES[stype]
            self._check(stype, pool, sig.max_threshold)
        m = self.model
        stats = self.engine.stats()
        for stype in TYPES:
            kept = [s for s in m.sigs.values() if s.stype == stype and not s.retracted]
            rows = sum(s.rows for s in kept)
            entry = stats["types"].get(stype, {"count": 0, "rows": 0, "indexed": 0})
            got = (entry["count"], entry["rows"], entry["indexed"])
            assert got == (len(kept), rows, rows), (stype, entry)
        want_lists = {}
        for name, lst in m.lists.items():
            sigs = m.in_list(name)
            want_lists[name] = (sum(not s.retracted for s in sigs), sum(s.retracted for s in sigs),
                                lst.enabled)  # fmt: skip
        got_lists = {
            info.name: (info.signal_count, info.retracted_count, info.enabled)
            for info in self.engine.store.lists()
        }
        assert got_lists == want_lists
        shared = sorted(n for n, lst in m.lists.items() if lst.granted)
        assert sorted(self.engine.store.get_tenant("t").reads) == shared
        assert stats["applied_counter"] == stats["change_counter"]


# ~10-40 s on a loaded 2-core machine; the health checks on generation speed and size
# only say that long step sequences are long (they are meant to be)
StoreEngineMachine.TestCase.settings = settings(
    max_examples=50,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                           HealthCheck.data_too_large, HealthCheck.large_base_example],
)  # fmt: skip
TestStoreEngine = StoreEngineMachine.TestCase
