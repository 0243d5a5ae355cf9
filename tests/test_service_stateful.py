"""Stateful property test of the gRPC service, over a real socket, against a brute-force model.

Why: the engine has its own state machine (tests/test_store_engine_stateful.py); the
server layer adds what it does not cover: tokens and roles, the store's per-tenant
grants applied to every reply, request_id replays, Ingest streams split into
messages, Retract's not_found, ListHashLists, Changes paging, SignalStates, Stats
filtering, rebuilds/snapshots and token reloads. A hypothesis state machine drives a
real ``HashmatchServer`` (127.0.0.1, ephemeral port, real SQLite) with four tenants:

* ``ops``: every role, ``all_lists`` (an operator: sees and writes every list);
* ``pa``: match only (a matching partner);
* ``pb``: match, export and (toggled by token reloads) write: a writing partner;
* ``pc``: match, export, admin without ``all_lists`` (Stats names its lists only).

The CLI's store verbs run on the same data dir beside the server (a second, lazy
engine): lists created, renamed, disabled, deleted, granted and revoked, signals
restored. After every step each tenant's Match of every pool code equals the brute
force over the model restricted to the lists shared with it, and ListHashLists equals
the model; every reply is checked for the names and uids of lists the caller may not
see."""

from __future__ import annotations

import asyncio
import queue
import re
import secrets
import shutil
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from hashmatch.engine import signal_types
from hashmatch.engine.runtime import Engine
from hashmatch.server.aio_client import AsyncHashmatchClient
from hashmatch.server.auth import tenant_entry
from hashmatch.server.client import HashmatchClient, signal
from hashmatch.server.commands.service import _reload_tokens
from hashmatch.server.testing import running_server
from hashmatch.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    common_pb2,
    matcher_pb2,
    matcher_pb2_grpc,
    signals_pb2,
    signals_pb2_grpc,
)

TYPES = ("pdq", "phash", "md5")
# distinct substrings, so a reply's text can be searched for each
NAMES = ("list-alpha", "list-bravo", "list-charlie", "list-delta")
LABELS = ((), ("x",), ("x", "y"))
EXTERNAL = ("", "e1", "e2")
POOL = 6
HOUR, DAY = 3600.0, 86400.0
CLI_VERBS = (
    "create",
    "grant",
    "grant",
    "revoke",
    "rename",
    "enable",
    "disable",
    "delete",
    "restore",
)
TENANTS = ("ops", "pa", "pb", "pc")
ROLES = {
    "ops": ["match", "export", "write", "admin"],
    "pa": ["match"],
    "pb": ["match", "export", "write"],
    "pc": ["match", "export", "admin"],
}
S = signals_pb2
LIVE, RETRACTED = S.SIGNAL_STATE_LIVE, S.SIGNAL_STATE_RETRACTED
DISABLED, DELETED = S.SIGNAL_STATE_LIST_DISABLED, S.SIGNAL_STATE_DELETED
EXPIRED = S.SIGNAL_STATE_EXPIRED


def _flip(code: bytes, bits: list[int]) -> bytes:
    out = bytearray(code)
    for b in bits:
        out[b // 8] ^= 1 << (b % 8)
    return bytes(out)


def _pool(stype: str) -> list[bytes]:
    """Codes a step may ingest: two random bases and near-duplicates of the first."""
    bits = signal_types.get(stype).bits
    rng = np.random.default_rng(bits + len(stype))
    bases = [rng.bytes(bits // 8) for _ in range(2)]
    near = [_flip(bases[0], rng.choice(bits, d, replace=False).tolist()) for d in (1, 4, 9, 20)]
    return bases + near


CODES = {t: _pool(t) for t in TYPES}


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
    ext: str
    expires: float | None = None
    retracted: bool = False

    @property
    def expired(self) -> bool:
        return self.expires is not None and self.expires <= time.time()


@dataclass
class ListM:
    id: int
    uid: str = ""
    enabled: bool = True
    grants: dict[str, bool] = field(default_factory=dict)  # tenant -> may write


@dataclass
class Model:
    lists: dict[str, ListM] = field(default_factory=dict)
    sigs: dict[int, Sig] = field(default_factory=dict)
    gone: set[int] = field(default_factory=set)  # ids of signals of deleted lists
    uids_gone: set[str] = field(default_factory=set)
    # tenant -> names and uids of lists deleted while shared with it (Changes names them)
    deleted_for: dict[str, set[tuple[str, str]]] = field(default_factory=dict)
    pb_writes: bool = True  # pb's token holds the write role

    def name_of(self, list_id: int) -> str:
        return next(n for n, m in self.lists.items() if m.id == list_id)

    def visible(self, tenant: str) -> set[str]:
        if tenant == "ops":
            return set(self.lists)
        return {n for n, m in self.lists.items() if tenant in m.grants}

    def roles(self, tenant: str) -> list[str]:
        if tenant == "pb" and not self.pb_writes:
            return [r for r in ROLES["pb"] if r != "write"]
        return ROLES[tenant]

    def in_list(self, name: str) -> list[Sig]:
        lid = self.lists[name].id
        return [s for s in self.sigs.values() if s.list_id == lid]

    def find(self, name: str, stype: str, code: bytes) -> Sig | None:
        return next((s for s in self.in_list(name) if (s.stype, s.code) == (stype, code)), None)

    def live(self, tenant: str, stype: str | None = None) -> list[Sig]:
        ids = {self.lists[n].id for n in self.visible(tenant) if self.lists[n].enabled}
        return [s for s in self.sigs.values() if s.list_id in ids and not s.retracted
                and not s.expired
                and (stype is None or s.stype == stype)]  # fmt: skip


class OpenStream:
    """A MatchStream kept open across steps: grants, renames, deletions and token
    reloads must reach a stream that is already open (README: from the next lookup)."""

    def __init__(self, stubs: Stubs):
        self.requests: queue.Queue = queue.Queue()
        self.replies = stubs.matcher.MatchStream(iter(self.requests.get, None), metadata=stubs.md)

    def ask(self, request: matcher_pb2.MatchRequest) -> matcher_pb2.MatchResponse:
        self.requests.put(request)
        return next(self.replies)

    def close(self) -> None:
        self.requests.put(None)
        self.replies.cancel()


class Stubs:
    def __init__(self, channel: grpc.Channel, token: str):
        self.matcher = matcher_pb2_grpc.MatcherStub(channel)
        self.signals = signals_pb2_grpc.SignalsStub(channel)
        self.admin = admin_pb2_grpc.AdminStub(channel)
        self.md = (("authorization", f"Bearer {token}"),)


item = st.tuples(
    st.sampled_from(TYPES),
    st.integers(0, POOL - 1),
    st.sampled_from(LABELS),
    st.sampled_from(EXTERNAL),
    st.integers(0, 12),  # 0: malformed, 1: upper-case hex, 2: raw bytes
    st.sampled_from((None, None, -HOUR, DAY)),  # expiry, from now
)


def _status(fn):
    """(reply, None) or (None, RpcError)."""
    try:
        return fn(), None
    except grpc.RpcError as exc:
        return None, exc


class ServiceMachine(RuleBasedStateMachine):
    @initialize(
        seed=st.lists(st.tuples(st.sampled_from(NAMES[:2]), item), min_size=2, max_size=10),
        grants=st.lists(st.tuples(st.sampled_from(NAMES[:2]), st.sampled_from(TENANTS[1:]),
                                  st.booleans()), max_size=4),
    )  # fmt: skip
    def setup(self, seed, grants) -> None:
        """A server, and (so that steps start from something to match) two lists
        ingested by ops, some shared with the partners."""
        self.tmp = Path(tempfile.mkdtemp(prefix="hm-svc-stateful-"))
        self.data = self.tmp / "data"
        tenants = {t: (ROLES[t], t == "ops") for t in TENANTS}
        self._ctx = running_server(self.data, tenants=tenants, workers=16)
        self.server = self._ctx.__enter__()
        self.tokens = dict(self.server.tokens)
        self.channel = grpc.insecure_channel(self.server.target)
        self.streams = {t: OpenStream(self.stub(t)) for t in TENANTS}
        self.cli = Engine.open(self.data, eager=False)
        for t in ("pa", "pb", "pc"):
            self.cli.store.create_tenant(t)
        self.m = Model()
        self.now = time.time()
        self.replies: dict[tuple, tuple[list[bytes], object]] = {}
        self.not_found: dict[str, set] = {}  # NOT_FOUND texts -> whether the lists existed
        self.rid = 0
        self.cursor = 0  # ops' incremental Changes position
        self.mirror: dict[int, tuple] = {}  # ops' mirror: sid -> (type, code, uid)
        for name in NAMES[:2]:
            items = [it for n, it in seed if n == name]
            if items:
                self.ingest("ops", name, items, 3, [""] * 6, "none", None)
        for name, tenant, write in grants:
            if name in self.m.lists:
                self.cli.store.grant(tenant, name, write=write)
                grants = self.m.lists[name].grants
                grants[tenant] = write or grants.get(tenant, False)  # a grant keeps write

    def teardown(self) -> None:
        if hasattr(self, "cli"):
            for stream in self.streams.values():
                stream.close()
            self.cli.close()
            self.channel.close()
            self._ctx.__exit__(None, None, None)
        if hasattr(self, "tmp"):
            shutil.rmtree(self.tmp, ignore_errors=True)

    def stub(self, tenant: str) -> Stubs:
        return Stubs(self.channel, self.tokens[tenant])

    # ------------------------------------------------------------------ leak check

    def _hidden(self, tenant: str, named: tuple[str, ...] = ()) -> list[str]:
        """Names and uids the tenant must not read in a reply (``named``: its own words)."""
        seen = self.m.visible(tenant)
        out = [n for n in NAMES if n not in seen and n not in named]
        out += [m.uid for n, m in self.m.lists.items() if n not in seen and m.uid]
        return out

    def _no_leak(self, tenant: str, text: str, named: tuple[str, ...] = ()) -> None:
        for word in self._hidden(tenant, named):
            assert word not in text, (tenant, word, text[:2000])

    def _error(self, tenant, exc, code, named=()) -> None:
        assert exc is not None, f"expected {code}"
        event(f"refused {code.name}")
        if code == grpc.StatusCode.NOT_FOUND and tenant != "ops":
            # a partner reads one text per method, whether the list exists or not
            text = exc.details()
            for name in named:
                text = text.replace(repr(name), "'L'").replace(name, "L")
            text = re.sub(r" \(messages before stream\[\d+\] were stored: .*\)$", "", text)
            text = re.sub(r"^[\w.\[\]]+: ", "", text)  # the field: which one varies
            self.not_found.setdefault(text, set()).add(
                tuple(name in self.m.lists for name in named)
            )
            assert len(self.not_found) <= 3, self.not_found  # (one per method)
        assert exc.code() == code, (exc.code(), exc.details())
        trailing = "".join(str(v) for _, v in exc.trailing_metadata() or ())
        self._no_leak(tenant, exc.details() + trailing, named)

    # ------------------------------------------------------------------ writes

    def _messages(self, name, items, per_message, rid, later) -> list[S.IngestRequest]:
        """``later[n - 1]``: message n's list_name ("" = the previous one's, " same " =
        the first's, padded: names are stripped)."""
        sigs = []
        for stype, i, labels, ext, bad, expiry in items:
            code = CODES[stype][i].hex()
            value = {0: "zz" + code[2:], 1: code.upper(), 2: bytes.fromhex(code)}.get(bad, code)
            pb = signal(stype, value, labels=labels, external_id=ext)
            if expiry is not None:
                pb.expires_at = round(self.now + expiry, 3)
            sigs.append(pb)
        messages = []
        for n, start in enumerate(range(0, len(sigs), per_message)):
            messages.append(S.IngestRequest(
                list_name=name if n == 0 else later[n - 1].replace("same", name),
                signals=sigs[start : start + per_message],
                request_id=rid if n == 0 else "",
            ))  # fmt: skip
        return messages

    def _apply_message(self, name: str, msg: S.IngestRequest, counts: dict, offset: int) -> None:
        """One stored message: the model's upsert, and the counts it adds."""
        m = self.m
        seen = set()
        new = []
        for j, pb in enumerate(msg.signals):
            if pb.hash.hex.startswith("zz"):
                counts["rejected"] += 1
                counts["rejections"].append((offset + j, f"signals[{offset + j}].hash.hex"))
                continue
            raw = (
                pb.hash.raw if pb.hash.WhichOneof("value") == "raw" else bytes.fromhex(pb.hash.hex)
            )
            key = (pb.hash.signal_type, raw)
            if key in seen:
                counts["rejected"] += 1
                counts["rejections"].append((offset + j, f"signals[{offset + j}].hash"))
                continue
            seen.add(key)
            old = m.find(name, *key) if name in m.lists else None
            expires = pb.expires_at if pb.HasField("expires_at") else None
            payload = (tuple(pb.labels), pb.external_id, expires)
            if old is None:
                counts["added"] += 1
                new.append((key, payload))
            else:
                if old.retracted:
                    counts["still_retracted"] += 1
                if (old.labels, old.ext, old.expires) != payload:
                    counts["updated"] += 1
                    old.labels, old.ext, old.expires = payload
                else:
                    counts["unchanged"] += 1
        if name not in m.lists and new:
            info = self.cli.store.get_list(name)
            m.lists[name] = ListM(info.id)
        if new:
            lid = m.lists[name].id
            conn = self.cli.store.conn()
            for (stype, code), (labels, ext, expires) in new:
                (sid,) = conn.execute(
                    "SELECT id FROM signals WHERE list_id = ? AND signal_type = ? AND code = ?",
                    (lid, stype, code),
                ).fetchone()
                assert sid not in m.sigs and sid not in m.gone, "a signal id given out twice"
                m.sigs[sid] = Sig(sid, stype, code, lid, labels, ext, expires)

    def _write_refusal(self, tenant: str, name: str) -> grpc.StatusCode | None:
        """The status a write by ``tenant`` to ``name`` gets, None when it is applied."""
        m = self.m
        if "write" not in m.roles(tenant):
            return grpc.StatusCode.PERMISSION_DENIED
        if tenant == "ops":
            return None
        lst = m.lists.get(name)
        if lst is None or tenant not in lst.grants:
            return grpc.StatusCode.NOT_FOUND
        return None if lst.grants[tenant] else grpc.StatusCode.PERMISSION_DENIED

    @rule(
        tenant=st.sampled_from(("ops", "ops", "pb", "pb", "pa", "pc")),
        name=st.sampled_from(NAMES),
        items=st.lists(item, min_size=1, max_size=7),
        per_message=st.integers(1, 4),
        later=st.lists(st.sampled_from(("", "", " same ", *NAMES)), min_size=6, max_size=6),
        rid=st.sampled_from(
            ("none", "new", "repeat", "repeat", "repeat-other", "repeat-more", "foreign")
        ),
        data=st.data(),
    )
    def ingest(self, tenant, name, items, per_message, later, rid, data) -> None:
        """An Ingest stream of several messages, each naming its list, the same one
        (padded), or none (the previous one's); with no request_id, a new one, one this
        tenant used before (same content, other content, or the same messages and more:
        a cut stream's retry, a continuation) or one another tenant used."""
        m = self.m
        mine = sorted(k for k in self.replies if k[:2] == (tenant, "Ingest"))
        used = {k[2] for k in mine}
        others = sorted(k for k in self.replies if k[1] == "Ingest" and k[2] not in used)
        old = None
        if rid.startswith("repeat") and mine:
            key = data.draw(st.sampled_from(mine))
            old = self.replies[key]
            rid_value = key[2]
            if rid in ("repeat", "repeat-more"):
                messages = [S.IngestRequest.FromString(b) for b in old[0]]
                messages[0].request_id = rid_value
                if rid == "repeat-more":  # a cut stream's retry: its first messages, and more
                    messages += self._messages(name, items, per_message, "", later)
            else:
                messages = self._messages(name, items, per_message, rid_value, later)
        elif rid == "foreign" and others:  # another tenant's id: this tenant's is new
            rid_value = data.draw(st.sampled_from(others))[2]
            messages = self._messages(name, items, per_message, rid_value, later)
        else:
            self.rid += 1
            rid_value = f"job-{self.rid}" if rid != "none" else ""
            messages = self._messages(name, items, per_message, rid_value, later)
        stubs = self.stub(tenant)
        reply, exc = _status(
            lambda: stubs.signals.Ingest(iter(messages), metadata=stubs.md, timeout=30)
        )
        plain = [_without_id(x) for x in messages]
        named = tuple({x.list_name.strip() for x in messages} - {""})
        if "write" not in m.roles(tenant):
            return self._error(tenant, exc, grpc.StatusCode.PERMISSION_DENIED, named)
        counts = {**dict.fromkeys(COUNTS, 0), "rejections": []}
        todo = messages
        if old is not None:
            k = len(old[0])
            if plain[:k] != [S.IngestRequest.FromString(b) for b in old[0]]:
                return self._error(tenant, exc, grpc.StatusCode.INVALID_ARGUMENT, named)
            # a replay; or a continuation: the rest applied, added to the first reply
            counts = _counts(old[1])
            todo = messages[k:]
            if not todo:
                assert exc is None, (exc.code(), exc.details())
                assert reply == old[1], (reply, old[1])
                event("ingest: a replay")
                return
            event("ingest: a continuation")
        list_name = ""
        for msg in messages[: len(messages) - len(todo)]:
            list_name = msg.list_name.strip() or list_name
        offset = sum(len(msg.signals) for msg in messages[: len(messages) - len(todo)])
        names = [list_name]
        for msg in todo:
            names.append(msg.list_name.strip() or names[-1])
        if all(self._write_refusal(tenant, n) is None for n in names[1:]):
            assert exc is None, (exc.code(), exc.details())  # before the model applies it
        for msg in todo:
            list_name = msg.list_name.strip() or list_name
            refusal = self._write_refusal(tenant, list_name)
            if refusal is not None:
                event(f"ingest: refused at message {min(messages.index(msg), 1)}")
                return self._error(tenant, exc, refusal, named)
            self._apply_message(list_name, msg, counts, offset)
            offset += len(msg.signals)
        assert exc is None, (exc.code(), exc.details())
        assert _counts(reply) == counts, (_counts(reply), counts, reply)
        event(
            f"ingest: added {min(counts['added'], 1)} updated {min(counts['updated'], 1)}"
            f" still_retracted {min(counts['still_retracted'], 1)}"
        )
        self._no_leak(tenant, str(reply), named)
        if rid_value:
            self.replies[(tenant, "Ingest", rid_value)] = (
                [x.SerializeToString() for x in plain],
                reply,
            )

    @precondition(lambda self: self.m.lists)
    @rule(
        tenant=st.sampled_from(("ops", "pb", "pb", "pa")),
        data=st.data(),
        hashes=st.lists(st.tuples(st.sampled_from(TYPES), st.integers(0, POOL - 1)),
                        max_size=3, unique=True),
        picks=st.lists(st.integers(0, 60), max_size=3, unique=True),
        rid=st.sampled_from(("none", "new", "repeat", "repeat-other")),
        batch=st.sampled_from((0, 0, 1, 2)),
    )  # fmt: skip
    def retract(self, tenant, data, hashes, picks, rid, batch) -> None:
        """Retract by hash and by id (the list's own ids, other lists', deleted ones, and
        one that never existed), with no request_id, a new one or a repeat; by a stub,
        or the client in requests of ``batch`` targets (ids ``<request_id>.<n>``), its
        replies summed: the sum is one request's answer."""
        m = self.m
        name = data.draw(st.sampled_from([*sorted(m.lists), NAMES[-1]]))
        everyone = sorted(m.sigs) + sorted(m.gone) + [10**6]
        ids = sorted({everyone[p % len(everyone)] for p in picks})
        if not hashes and not ids:
            hashes = [("pdq", 0)]
        method = f"RetractClient{batch}" if batch else "Retract"  # a repeat: same batching
        if batch and rid == "repeat-other":  # the parts' ids would differ ("x" vs "x.0")
            rid = "repeat"
        mine = sorted(k for k in self.replies if k[:2] == (tenant, method))
        old_reply = None
        self.rid += 1
        request = S.RetractRequest(
            list_name=name,
            hashes=[common_pb2.HashValue(signal_type=t, hex=CODES[t][i].hex()) for t, i in hashes],
            signal_ids=ids,
            request_id=f"r-{self.rid}" if rid != "none" else "",
        )
        if rid.startswith("repeat") and mine:
            key = data.draw(st.sampled_from(mine))
            old_messages, old_reply = self.replies[key]
            if rid == "repeat":
                request = S.RetractRequest.FromString(old_messages[0])
            request.request_id = key[2]
            name = request.list_name
        stubs = self.stub(tenant)
        if batch:
            reply, exc = _status(lambda: self._client_retract(tenant, request, batch))
        else:
            reply, exc = _status(
                lambda: stubs.signals.Retract(request, metadata=stubs.md, timeout=30)
            )
        if "write" not in m.roles(tenant):
            return self._error(tenant, exc, grpc.StatusCode.PERMISSION_DENIED, (name,))
        if old_reply is not None:
            if _without_id(request).SerializeToString() != old_messages[0]:
                return self._error(tenant, exc, grpc.StatusCode.INVALID_ARGUMENT, (name,))
            assert exc is None, (exc.code(), exc.details())
            assert reply == old_reply, (reply, old_reply)
            event("retract: a replay")
            return
        refusal = self._write_refusal(tenant, name)
        if refusal is None and name not in m.lists:
            refusal = grpc.StatusCode.NOT_FOUND  # ops: no such list
        if refusal is not None:
            return self._error(tenant, exc, refusal, (name,))
        assert exc is None, (exc.code(), exc.details())
        own = m.in_list(name)
        hit, missing = set(), 0
        for h in request.hashes:
            found = [s for s in own if (s.stype, s.code.hex()) == (h.signal_type, h.hex)]
            hit |= {s.sid for s in found}
            missing += not found
        for sid in request.signal_ids:
            found = [s for s in own if s.sid == sid]
            hit |= {s.sid for s in found}
            missing += not found
        changed = [sid for sid in hit if not m.sigs[sid].retracted]
        assert (reply.retracted, reply.not_found_total) == (len(changed), missing), (
            reply, changed, missing)  # fmt: skip
        # each signal found but retracted already, once (however many targets named it)
        assert reply.already_retracted_total == len(hit) - len(changed), (reply, hit, changed)
        event(f"retract: {min(len(changed), 1)} not_found {min(missing, 1)}")
        self._no_leak(tenant, str(reply), (name,))
        for sid in changed:
            m.sigs[sid].retracted = True
        if request.request_id:
            key = (tenant, method, request.request_id)
            self.replies[key] = ([_without_id(request).SerializeToString()], reply)

    def _client_retract(self, tenant, request, batch) -> S.RetractResponse:
        options = {"token": self.tokens[tenant], "retries": 0}
        with HashmatchClient(self.server.target, **options) as client:
            return client.retract(
                request.list_name,
                hashes=[(h.signal_type, h.hex) for h in request.hashes],
                signal_ids=list(request.signal_ids),
                batch_size=batch,
                request_id=request.request_id or None,
            )

    @rule(data=st.data(), kind=st.sampled_from(CLI_VERBS))
    def cli_admin(self, data, kind) -> None:
        """The CLI's store verbs on the data dir, beside the running server."""
        if kind == "create" or not self.m.lists:
            return self.cli_create_list(data.draw(st.sampled_from(NAMES)))
        if kind in ("grant", "revoke"):
            tenant = data.draw(st.sampled_from(("pa", "pb", "pc")))
            return self.cli_grant_or_revoke(data, tenant, data.draw(st.booleans()), kind == "grant")
        if kind == "rename":
            return self.cli_rename(data, data.draw(st.sampled_from(NAMES)))
        if kind in ("enable", "disable"):
            return self.cli_set_enabled(data, kind == "enable")
        if kind == "delete":
            return self.cli_delete(data)
        picks = data.draw(st.lists(st.integers(0, 60), min_size=1, max_size=3))
        return self.cli_restore(data, picks)

    @rule(tenant=st.sampled_from(TENANTS), kind=st.sampled_from(("snapshot", "rebuild", "stats")))
    def admin_rpc(self, tenant, kind) -> None:
        if kind == "stats":
            return self.stats(tenant)
        return self.snapshot_or_rebuild(tenant, kind)

    def cli_restore(self, data, picks) -> None:
        """``hashmatch restore`` beside the server: by id, or by hash."""
        m = self.m
        name = data.draw(st.sampled_from(sorted(m.lists)))
        own = sorted(m.in_list(name), key=lambda s: s.sid)
        if not own:
            return
        chosen = {own[p % len(own)].sid for p in picks}
        by_hash = data.draw(st.booleans())
        if by_hash:
            hashes = sorted({(m.sigs[s].stype, m.sigs[s].code.hex()) for s in chosen})
            n = self.cli.restore(list_name=name, hashes=hashes)
        else:
            n = self.cli.restore(list_name=name, signal_ids=sorted(chosen))
        assert n == sum(m.sigs[s].retracted for s in chosen)
        for s in chosen:
            m.sigs[s].retracted = False

    # ------------------------------------------------------------------ list admin (CLI)

    def cli_create_list(self, name) -> None:
        if name in self.m.lists:
            return
        info = self.cli.store.create_list(name)
        self.m.lists[name] = ListM(info.id)

    def cli_grant_or_revoke(self, data, tenant, write, grant) -> None:
        name = data.draw(st.sampled_from(sorted(self.m.lists)))
        lst = self.m.lists[name]
        if grant:
            self.cli.store.grant(tenant, name, write=write)
            lst.grants[tenant] = write or lst.grants.get(tenant, False)  # a grant keeps write
        else:
            self.cli.store.revoke(tenant, name)
            lst.grants.pop(tenant, None)

    def cli_rename(self, data, new) -> None:
        old = data.draw(st.sampled_from(sorted(self.m.lists)))
        if new in self.m.lists:
            return
        self.cli.store.rename_list(old, new)
        self.m.lists[new] = self.m.lists.pop(old)

    def cli_set_enabled(self, data, enabled) -> None:
        name = data.draw(st.sampled_from(sorted(self.m.lists)))
        self.cli.store.set_list_enabled(name, enabled)
        self.m.lists[name].enabled = enabled

    def cli_delete(self, data) -> None:
        m = self.m
        name = data.draw(st.sampled_from(sorted(m.lists)))
        self.cli.store.delete_list(name)
        for s in m.in_list(name):
            del m.sigs[s.sid]
            m.gone.add(s.sid)
        lst = m.lists[name]
        m.uids_gone.add(lst.uid)
        for tenant in TENANTS:
            if tenant == "ops" or tenant in lst.grants:
                m.deleted_for.setdefault(tenant, set()).add((name, lst.uid))
        del m.lists[name]

    @rule(writes=st.booleans(), rotate=st.sampled_from(TENANTS))
    def reload_tokens(self, writes, rotate) -> None:
        """SIGHUP's reload: one tenant's token rotated, pb's write role given or taken;
        an Ingest stream pb opened before it is re-checked at its next message."""
        could_write = self.m.pb_writes
        ingest_queue: queue.Queue = queue.Queue()
        ingest_queue.put(S.IngestRequest(list_name=NAMES[0]))  # (no signals: stores nothing)
        pb = self.stub("pb")
        ingest = pb.signals.Ingest.future(iter(ingest_queue.get, None), metadata=pb.md,
                                          timeout=30)  # fmt: skip
        if not could_write:  # refused as it begins: let it, before pb's token may rotate
            ingest.exception()  # (a loaded server began it after the reload: UNAUTHENTICATED)
        old = self.tokens[rotate]
        self.tokens[rotate] = secrets.token_urlsafe(16)
        self.m.pb_writes = writes
        text = "".join(
            tenant_entry(t, self.tokens[t], self.m.roles(t), all_lists=t == "ops") + "\n"
            for t in TENANTS
        )
        path = self.data / "auth.toml"
        path.write_text(text)
        path.chmod(0o600)
        _reload_tokens(self.server.server, path)
        ingest_queue.put(S.IngestRequest())
        ingest_queue.put(None)
        exc = ingest.exception()
        if not could_write:
            want = grpc.StatusCode.PERMISSION_DENIED  # refused as it began
        elif rotate == "pb":
            want = grpc.StatusCode.UNAUTHENTICATED
        elif not writes:
            want = grpc.StatusCode.PERMISSION_DENIED
        else:
            want = grpc.StatusCode.INVALID_ARGUMENT  # the stream carried no signals
        assert exc is not None and exc.code() == want, (exc, want)
        event(f"reload: an open Ingest ends {want.name}")
        stale = Stubs(self.channel, old)
        _reply, exc = _status(
            lambda: stale.signals.ListHashLists(
                S.ListHashListsRequest(), metadata=stale.md, timeout=10
            )
        )
        assert exc is not None and exc.code() == grpc.StatusCode.UNAUTHENTICATED
        # the open stream of the old token ends at its next message; the others go on
        probe = common_pb2.HashValue(signal_type="md5", raw=bytes(16))
        request = matcher_pb2.MatchRequest(hashes=[probe])
        for tenant, stream in self.streams.items():
            _reply, exc = _status(lambda stream=stream: stream.ask(request))
            if tenant == rotate:
                assert exc is not None and exc.code() == grpc.StatusCode.UNAUTHENTICATED, exc
                stream.close()
                self.streams[tenant] = OpenStream(self.stub(tenant))
            else:
                assert exc is None, (tenant, exc)

    def snapshot_or_rebuild(self, tenant, kind) -> None:
        stubs = self.stub(tenant)

        def call():
            if kind == "snapshot":
                return stubs.admin.Snapshot(admin_pb2.SnapshotRequest(), metadata=stubs.md,
                                            timeout=60)  # fmt: skip
            return list(stubs.admin.RebuildIndex(admin_pb2.RebuildIndexRequest(),
                                                 metadata=stubs.md, timeout=60))  # fmt: skip

        reply, exc = _status(call)
        if "admin" not in ROLES[tenant]:
            return self._error(tenant, exc, grpc.StatusCode.PERMISSION_DENIED)
        assert exc is None, (exc.code(), exc.details())
        if kind == "rebuild":
            assert reply[-1].finished and not reply[-1].snapshot_error, reply[-1]

    def stats(self, tenant) -> None:
        stubs = self.stub(tenant)
        reply, exc = _status(lambda: stubs.admin.Stats(admin_pb2.StatsRequest(),
                                                       metadata=stubs.md, timeout=30))  # fmt: skip
        if "admin" not in ROLES[tenant]:
            return self._error(tenant, exc, grpc.StatusCode.PERMISSION_DENIED)
        assert exc is None, (exc.code(), exc.details())
        self._no_leak(tenant, str(reply))
        want = {}
        for s in self.m.sigs.values():
            if not s.retracted:
                want[s.stype] = want.get(s.stype, 0) + 1
        got = {t.signal_type: t.count for t in reply.types if t.count}
        assert got == want, (got, want)
        seen = self.m.visible(tenant)
        assert {entry.name for entry in reply.lists} <= seen

    # ------------------------------------------------------------------ reads

    def _brute(self, tenant, stype, query: bytes, threshold, lists) -> list[tuple]:
        live = self.m.live(tenant, stype)
        if lists:
            ids = {self.m.lists[n].id for n in lists}
            live = [s for s in live if s.list_id in ids]
        radius = 0 if signal_types.get(stype).exact else threshold
        rows = [(d, s.sid, self.m.name_of(s.list_id), s.labels, s.ext, s.code.hex())
                for s in live if (d := _distance(query, s.code)) <= radius]  # fmt: skip
        return sorted(rows)

    @staticmethod
    def _rows(result) -> list[tuple]:
        return [(x.distance, x.signal_id, x.list_name, tuple(x.labels), x.external_id,
                 x.hash_hex) for x in result.matches]  # fmt: skip

    @rule(
        tenant=st.sampled_from(TENANTS),
        stype=st.sampled_from(TYPES),
        threshold=st.integers(0, 63),
        picks=st.lists(st.tuples(st.integers(0, POOL - 1), st.sampled_from((0, 0, 1, 3, 8, 12)),
                                 st.integers(0, 2**16)), min_size=1, max_size=4),
        lists=st.lists(st.sampled_from(NAMES), max_size=2, unique=True),
        max_results=st.integers(0, 3),
        via=st.sampled_from(("unary", "stream", "client", "client_stream", "aio")),
        max_batch=st.integers(1, 3),
    )  # fmt: skip
    def match(self, tenant, stype, threshold, picks, lists, max_results, via, max_batch) -> None:
        """Queries a few bits from pool codes, a threshold, a list filter, a result cap;
        unary Match, one MatchStream message per query, or the sync / asyncio client
        (``max_batch``: a request of more hashes is sent as parts, their replies merged)."""
        sig = signal_types.get(stype)
        threshold = min(threshold, sig.max_threshold)
        queries = []
        for i, d, seed in picks:
            rng = np.random.default_rng(seed)
            queries.append(_flip(CODES[stype][i], rng.choice(sig.bits, d, replace=False).tolist()))
        options = matcher_pb2.MatchOptions(threshold=threshold, lists=lists,
                                           max_results=max_results)  # fmt: skip
        hv = [common_pb2.HashValue(signal_type=stype, raw=q) if k % 2 else
              common_pb2.HashValue(signal_type=stype, hex=q.hex().upper() if k % 4 else q.hex())
              for k, q in enumerate(queries)]  # fmt: skip
        stubs = self.stub(tenant)
        stream = via in ("stream", "client_stream")
        if via in ("client", "client_stream", "aio"):
            pairs = [(stype, q) for q in queries]
            kw = {"threshold": threshold, "lists": lists, "max_results": max_results}
            replies, exc = _status(lambda: self._via_client(tenant, via, max_batch, pairs, kw))
        elif stream:
            requests = [matcher_pb2.MatchRequest(hashes=[h], options=options, request_id=f"q{k}")
                        for k, h in enumerate(hv)]  # fmt: skip
            replies, exc = _status(lambda: list(stubs.matcher.MatchStream(
                iter(requests), metadata=stubs.md, timeout=30)))  # fmt: skip
        else:
            request = matcher_pb2.MatchRequest(hashes=hv, options=options)
            reply, exc = _status(lambda: stubs.matcher.Match(request, metadata=stubs.md,
                                                             timeout=30))  # fmt: skip
            replies = None if reply is None else [reply]
        seen = self.m.visible(tenant)
        if any(n not in seen for n in lists):
            return self._error(tenant, exc, grpc.StatusCode.NOT_FOUND, tuple(lists))
        assert exc is None, (exc.code(), exc.details())
        results = [r for reply in replies for r in reply.results]
        if via == "stream":
            assert [r.request_id for r in replies] == [f"q{k}" for k in range(len(hv))]
        assert len(results) == len(queries)
        for k, (q, result) in enumerate(zip(queries, results, strict=True)):
            assert result.index == (0 if stream else k)
            assert all(x.query_index == result.index for x in result.matches), result
            want = self._brute(tenant, stype, q, threshold, lists)
            got = self._rows(result)
            cap = max_results or None
            assert got == want[:cap], (tenant, stype, got, want)
            event(f"match: {tenant} {'hits' if got else 'none'}")
        for reply in replies:
            self._no_leak(tenant, str(reply), tuple(lists))

    @rule(
        calls=st.lists(
            st.tuples(st.sampled_from(TENANTS), st.sampled_from(TYPES), st.integers(0, 63),
                      st.integers(0, 2), st.lists(st.integers(0, POOL - 1), min_size=1,
                                                  max_size=3)),
            min_size=2, max_size=8,
        )
    )  # fmt: skip
    def match_concurrently(self, calls) -> None:
        """Unary Matches of several tenants at once: the server merges queued lookups
        with the same options into one engine call; each caller must still get its own
        tenant's answer."""
        requests = []
        for tenant, stype, threshold, max_results, picks in calls:
            threshold = min(threshold, signal_types.get(stype).max_threshold)
            queries = [CODES[stype][i] for i in picks]
            options = matcher_pb2.MatchOptions(threshold=threshold, max_results=max_results)
            hv = [common_pb2.HashValue(signal_type=stype, raw=q) for q in queries]
            requests.append((tenant, stype, threshold, max_results, queries,
                             matcher_pb2.MatchRequest(hashes=hv, options=options)))  # fmt: skip
        barrier = threading.Barrier(len(requests))

        def one(args):
            tenant, *_rest, request = args
            stubs = self.stub(tenant)
            barrier.wait(10)
            return stubs.matcher.Match(request, metadata=stubs.md, timeout=30)

        with ThreadPoolExecutor(len(requests)) as pool:
            replies = list(pool.map(one, requests))
        for (tenant, stype, threshold, max_results, queries, _r), reply in zip(
            requests, replies, strict=True
        ):
            for q, result in zip(queries, reply.results, strict=True):
                want = self._brute(tenant, stype, q, threshold, [])
                assert self._rows(result) == want[: max_results or None], (tenant, stype)

    def _via_client(self, tenant, via, max_batch, pairs, kw) -> list:
        """The replies of the sync or asyncio client (retries=0: a refusal is raised)."""
        options = {"token": self.tokens[tenant], "max_batch": max_batch, "retries": 0}
        if via == "aio":

            async def run():
                async with AsyncHashmatchClient(self.server.target, **options) as client:
                    return [await client.match(pairs, **kw)]

            return asyncio.run(run())
        with HashmatchClient(self.server.target, **options) as client:
            if via == "client":
                return [client.match(pairs, **kw)]
            requests = [client.match_request([p], **kw) for p in pairs]
            return list(client.match_stream(iter(requests), timeout=30))

    def signal_states(self, tenant, extra) -> None:
        m = self.m
        ids = sorted(m.sigs) + sorted(m.gone) + extra
        if not ids:
            return
        stubs = self.stub(tenant)
        reply = stubs.signals.SignalStates(S.SignalStatesRequest(signal_ids=ids),
                                           metadata=stubs.md, timeout=30)  # fmt: skip
        seen = m.visible(tenant)
        want = []
        for sid in ids:
            s = m.sigs.get(sid)
            if s is None or m.name_of(s.list_id) not in seen:
                want.append(DELETED)
            elif s.retracted:
                want.append(RETRACTED)
            elif s.expired:
                want.append(EXPIRED)
            elif not m.lists[m.name_of(s.list_id)].enabled:
                want.append(DISABLED)
            else:
                want.append(LIVE)
        assert list(reply.states) == want

    def _read_changes(self, tenant: str, since: int, page: int, split: bool, types=()):
        """Every Changes message from ``since`` to the head, paged."""
        stubs = self.stub(tenant)
        out, after = [], 0
        for _ in range(1000):
            request = S.ChangesRequest(since=since, max_changes=page, split_entries=split,
                                       since_signal_id=after, signal_types=types)  # fmt: skip
            messages = list(stubs.signals.Changes(request, metadata=stubs.md, timeout=30))
            out.extend(messages)
            last = messages[-1]
            assert all(x.head == last.head for x in messages)
            if not last.more:
                return out, last.head
            assert (last.head, last.head_signal_id) != (since, after), "a page without progress"
            since, after = last.head, last.head_signal_id
        raise AssertionError("Changes never ended")

    @rule(
        tenant=st.sampled_from(TENANTS),
        page=st.integers(0, 5),
        split=st.booleans(),
        types=st.lists(st.sampled_from(TYPES), max_size=2, unique=True),
    )
    def changes_from_zero(self, tenant, page, split, types) -> None:
        """A mirror built from the whole log, read in pages, holds exactly the tenant's
        live signals, and no page names a list it may not see."""
        m = self.m
        if "export" not in ROLES[tenant]:
            stubs = self.stub(tenant)
            _r, exc = _status(lambda: list(stubs.signals.Changes(
                S.ChangesRequest(), metadata=stubs.md, timeout=30)))  # fmt: skip
            return self._error(tenant, exc, grpc.StatusCode.PERMISSION_DENIED)
        messages, _head = self._read_changes(tenant, 0, page, split, types)
        last: dict[int, S.Change] = {}
        # each page's first message names the deletions in its (since, head]: once each
        told = sorted((x.list_name, x.list_uid) for msg in messages for x in msg.deleted_lists)
        assert told == sorted(m.deleted_for.get(tenant, set())), (tenant, told)
        for msg in messages:
            shown = S.ChangesResponse()
            shown.CopyFrom(msg)
            shown.ClearField("deleted_lists")  # checked above: shared when deleted
            self._no_leak(tenant, str(shown))
            for ch in msg.changes:
                last[ch.signal_id] = ch
        seen = m.visible(tenant)
        for ch in last.values():
            if ch.list_name:
                assert ch.list_name in seen, (tenant, ch)
        mirror = {sid: (ch.signal_type, ch.hash, ch.list_name, tuple(ch.labels), ch.external_id)
                  for sid, ch in last.items()
                  if ch.action == S.CHANGE_ACTION_ADDED and ch.live}  # fmt: skip
        want = {s.sid: (s.stype, s.code, m.name_of(s.list_id), s.labels, s.ext)
                for s in m.live(tenant) if not types or s.stype in types}  # fmt: skip
        assert mirror == want, (tenant, mirror, want)
        event(f"changes: {tenant} holds {min(len(want), 1)}")

    def changes_incremental(self) -> None:
        """ops' mirror kept from its cursor: ADDED live (or intact in a disabled list) ->
        held, anything else -> dropped, deleted lists -> their copies dropped; then it
        holds every signal that is not retracted (a disabled list's too: disabling logs
        nothing, a mirror reads it from ListHashLists)."""
        messages, head = self._read_changes("ops", self.cursor, 0, False)
        uids = {m.uid for m in self.m.lists.values()}
        for msg in messages[:1]:
            for gone in msg.deleted_lists:
                assert gone.list_uid not in uids
                self.mirror = {k: v for k, v in self.mirror.items() if v[2] != gone.list_uid}
        for msg in messages:
            for ch in msg.changes:
                if ch.action == S.CHANGE_ACTION_ADDED and (ch.live or ch.state == DISABLED):
                    self.mirror[ch.signal_id] = (ch.signal_type, ch.hash, ch.list_uid)
                else:
                    self.mirror.pop(ch.signal_id, None)
        self.cursor = head
        want = {s.sid: (s.stype, s.code, self.m.lists[self.m.name_of(s.list_id)].uid)
                for s in self.m.sigs.values() if not s.retracted and not s.expired}  # fmt: skip
        assert self.mirror == want

    # ------------------------------------------------------------------ invariants

    @invariant()
    def lists_and_matches_agree(self) -> None:
        if not hasattr(self, "m"):
            return
        m = self.m
        for tenant in TENANTS:
            stubs = self.stub(tenant)
            reply = stubs.signals.ListHashLists(S.ListHashListsRequest(), metadata=stubs.md,
                                                timeout=30)  # fmt: skip
            assert reply.tenant == tenant
            self._no_leak(tenant, str(reply))
            got = {x.name: (x.signal_count, x.expired_count, x.enabled, tuple(x.signal_types))
                   for x in reply.lists}  # fmt: skip
            want = {}
            for name in m.visible(tenant):
                live = [s for s in m.in_list(name) if not s.retracted]
                want[name] = (len(live), sum(s.expired for s in live), m.lists[name].enabled,
                              tuple(sorted({s.stype for s in live})))  # fmt: skip
            assert got == want, (tenant, got, want)
            for x in reply.lists:  # a uid is the list's for good: kept across renames
                lst = m.lists[x.name]
                assert x.uid and x.uid not in m.uids_gone
                if not lst.uid:
                    lst.uid = x.uid
                assert x.uid == lst.uid, (x.name, x.uid, lst.uid)
            for stype in TYPES:
                sig = signal_types.get(stype)
                hv = [common_pb2.HashValue(signal_type=stype, raw=c) for c in CODES[stype]]
                request = matcher_pb2.MatchRequest(
                    hashes=hv, options=matcher_pb2.MatchOptions(threshold=sig.max_threshold)
                )
                found = self.streams[tenant].ask(request)
                for code, result in zip(CODES[stype], found.results, strict=True):
                    want_rows = self._brute(tenant, stype, code, sig.max_threshold, [])
                    assert self._rows(result) == want_rows, (tenant, stype)
            self.signal_states(tenant, [10**6])
        self.changes_incremental()


COUNTS = ("added", "updated", "unchanged", "rejected", "still_retracted")


def _counts(reply: S.IngestResponse) -> dict:
    """The counts, and each rejection's (stream-wide index, field)."""
    out = {f: getattr(reply, f) for f in COUNTS}
    out["rejections"] = [(r.index, r.field) for r in reply.rejections]
    return out


def _without_id(message):
    copy = type(message)()
    copy.CopyFrom(message)
    copy.request_id = ""
    return copy


# ~25-40 s on the shared 2-core box under load (one server start per example: ~25 ms after the
# first, whose warm-up compiles the kernels)
ServiceMachine.TestCase.settings = settings(
    max_examples=20,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                           HealthCheck.data_too_large],
)  # fmt: skip
TestService = ServiceMachine.TestCase
