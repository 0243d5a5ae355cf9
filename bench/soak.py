"""Soak: a real ``hashmatch serve`` under mixed load, then exact answers checked.

``python -m bench soak --seconds 120 [--signals 50000] [--dir D]``

Why: the unit tests race two things at a time; operators run everything at once
(matchers of two tenants, a writer, list edits and deletes from the CLI on the same
data dir, rebuilds and snapshots, token reloads, a mirror). For ``--seconds`` this
runs all of them concurrently against a server subprocess and records every call's
status; then it stops the load and checks: no status outside the documented ones, no
call past its deadline, the server's RSS, each tenant's Match equal to a brute force
over the store's live visible signals, the mirror equal to the hub's shared view,
``index verify``, and a restart that loads the snapshot. Exit 1 on any failure.
"""

from __future__ import annotations

import argparse
import collections
import io
import os
import random
import secrets
import signal as signals
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
from PIL import Image

from hashmatch.engine.store import SignalRecord, SignalStore
from hashmatch.server.auth import tenant_entry
from hashmatch.server.client import HashmatchClient, signal
from hashmatch.server.client_shared import retry_delay

LISTS = ("l0", "l1", "l2", "l3")
GRANTS = {"acme": ("l0", "l1", "l2"), "beta": ("l2", "l3"), "mirror": ("l0", "l1", "l2")}
THRESHOLD = 31
HUB_VIEW = "mirror"
HASHMATCH = str(Path(sys.executable).with_name("hashmatch"))


class Record:
    """Every call's outcome, by kind and status; anything unexpected kept in full."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts: collections.Counter = collections.Counter()
        self.problems: list[str] = []
        self.restarting = threading.Event()  # UNAVAILABLE is expected meanwhile

    def ok(self, kind: str, status: str = "OK") -> None:
        with self.lock:
            self.counts[(kind, status)] += 1

    def bad(self, kind: str, what: str) -> None:
        with self.lock:
            self.counts[(kind, "BAD")] += 1
            if len(self.problems) < 200:
                self.problems.append(f"{time.strftime('%H:%M:%S')} {kind}: {what}")
                print(f"PROBLEM {kind}: {what}", file=sys.stderr, flush=True)


def random_codes(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, 256, (n, 32), dtype=np.uint8)


def near(code: np.ndarray, rng: random.Random, bits: int) -> np.ndarray:
    out = code.copy()
    for b in rng.sample(range(256), bits):
        out[b // 8] ^= 1 << (b % 8)
    return out


def jpeg(rng: random.Random) -> bytes:
    """A small generated photo-like image (smooth gradients + blocks)."""
    y, x = np.mgrid[0:96, 0:128]
    img = np.stack([(x * rng.randint(1, 3) + y) % 256, (y * 2) % 256, (x ^ y) % 256], -1)
    img[rng.randint(0, 60) :][:30, rng.randint(0, 90) :][:, :30] = rng.randint(0, 255)
    buf = io.BytesIO()
    Image.fromarray(img.astype(np.uint8)).save(buf, "JPEG", quality=85)
    return buf.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- setup --------------------------------------------------------------------------


def populate(hub: Path, n: int, rng: np.random.Generator) -> np.ndarray:
    """Lists, tenants, grants and ``n`` PDQ signals (some shared between lists)."""
    store = SignalStore(hub / "store.sqlite")
    codes = random_codes(rng, n)
    per = n // len(LISTS)
    for k, name in enumerate(LISTS):
        store.create_list(name, owner="soak", labels=(f"lab{k}",))
        part = codes[k * per : (k + 1) * per]
        if k == 2:  # l2 shares 500 hashes with l0: one hash, two lists' hits
            part = np.concatenate([part[:-500], codes[:500]])
        records = [SignalRecord("pdq", c.tobytes().hex(), labels=(f"s{k}",), external_id=f"e{i}")
                   for i, c in enumerate(part)]  # fmt: skip
        store.ingest(records, list_name=name, actor="soak")
    for tenant, lists in GRANTS.items():
        store.create_tenant(tenant)
        for name in lists:
            store.grant(tenant, name)
    store.close()
    return codes


def write_tokens(hub: Path, tokens: dict[str, str]) -> None:
    roles = {"admin": ["match", "write", "admin", "export"], "mirror": ["match", "export"]}
    text = "".join(
        tenant_entry(t, tok, roles.get(t, ["match"]), all_lists=t == "admin") + "\n"
        for t, tok in tokens.items()
    )
    tmp = hub / "auth.toml.tmp"
    tmp.write_text(text)
    tmp.chmod(0o600)
    tmp.replace(hub / "auth.toml")


class Server:
    def __init__(self, hub: Path, port: int, log: Path, extra: list[str]):
        self.hub, self.port, self.log, self.extra = hub, port, log, extra
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        argv = [HASHMATCH, "serve", "--data-dir", str(self.hub), "--metrics-port", "-1",
                "--listen", f"127.0.0.1:{self.port}", "--drain-seconds", "5",
                *self.extra]  # fmt: skip
        with open(self.log, "a") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=log)

    def rss_mb(self) -> float | None:
        """The server's resident memory, None while it restarts."""
        try:
            text = Path(f"/proc/{self.proc.pid}/status").read_text()
        except OSError:
            return None
        for line in text.splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return None

    def stop(self) -> int:
        self.proc.send_signal(signals.SIGTERM)
        return self.proc.wait(60)


# ---- load ---------------------------------------------------------------------------


EXPECTED = {"OK", "RESOURCE_EXHAUSTED"}


def call(rec: Record, kind: str, fn: Callable[..., object], *args: object,
         allowed: set[str] = EXPECTED, **kwargs: object) -> object:  # fmt: skip
    """``fn(*args, **kwargs)``, its status recorded; RESOURCE_EXHAUSTED must carry
    RetryInfo. Returns None when it failed."""
    try:
        result = fn(*args, **kwargs)
    except grpc.RpcError as exc:
        code = exc.code().name
        if code == "RESOURCE_EXHAUSTED" and retry_delay(exc) is None:
            rec.bad(kind, f"RESOURCE_EXHAUSTED without RetryInfo: {exc.details()}")
        elif code == "UNAVAILABLE" and rec.restarting.is_set():
            rec.ok(kind, code)
            time.sleep(0.1)  # callers without retries would spin through the restart
        elif code not in allowed:
            rec.bad(kind, f"{code}: {exc.details()}")
        else:
            rec.ok(kind, code)
        return None
    except AssertionError as exc:  # a check inside ``fn`` (a stream's reply count)
        rec.bad(kind, str(exc))
        return None
    rec.ok(kind)
    return result


def matcher(target: str, token: str, codes: np.ndarray, rec: Record, stop: threading.Event,
            seed: int, tenant: str) -> None:  # fmt: skip
    rng = random.Random(seed)
    client = HashmatchClient(target, token=token, timeout=30, retries=0)
    images = [jpeg(rng) for _ in range(8)]

    def query(k: int) -> list[str]:
        return [near(codes[rng.randrange(len(codes))], rng, rng.randint(0, 40)).tobytes().hex()
                for _ in range(k)]  # fmt: skip

    while not stop.is_set():
        pick = rng.random()
        if pick < 0.3:
            hashes = [("pdq", h) for h in query(1)]
            call(rec, f"{tenant}.match1", client.match, hashes, threshold=THRESHOLD)
        elif pick < 0.5:
            hashes = [("pdq", h) for h in query(rng.choice((100, 1000, 12000)))]
            call(rec, f"{tenant}.matchN", client.match, hashes, threshold=THRESHOLD)
        elif pick < 0.6:
            call(rec, f"{tenant}.longstream", long_stream, client, query, stop, 15.0)
        elif pick < 0.85:
            reqs = [client.match_request([("pdq", h) for h in query(20)], threshold=THRESHOLD)
                    for _ in range(rng.randint(1, 30))]  # fmt: skip

            def stream(reqs=reqs) -> int:
                n = sum(1 for _ in client.match_stream(reqs, timeout=60))
                if n != len(reqs):
                    rec.bad(f"{tenant}.stream", f"{n} replies to {len(reqs)} requests")
                return n

            call(rec, f"{tenant}.stream", stream)
        else:
            media = rng.sample(images, rng.randint(1, 4))
            dihedral = rng.random() < 0.3
            call(rec, f"{tenant}.media", client.match, media=media, threshold=THRESHOLD,
                 dihedral=dihedral)  # fmt: skip
    client.close()


def long_stream(
    client: HashmatchClient,
    query: Callable[[int], list[str]],
    stop: threading.Event,
    seconds: float,
) -> int:
    """One MatchStream kept open ``seconds``, a request every 0.1 s: it spans rebuilds,
    snapshots, list edits and token reloads."""
    end = time.monotonic() + seconds
    sent = 0

    def requests():
        nonlocal sent
        while time.monotonic() < end and not stop.is_set():
            sent += 1
            yield client.match_request([("pdq", h) for h in query(5)], threshold=THRESHOLD)
            time.sleep(0.1)

    got = sum(1 for _ in client.match_stream(requests(), timeout=seconds + 60))
    if got != sent:
        raise AssertionError(f"{got} replies to {sent} requests")
    return got


def revoked_stream(target: str, token: str, rec: Record, rotate: Callable[[], None]) -> None:
    """A stream open on a token the reload removes ends UNAUTHENTICATED (documented)."""
    client = HashmatchClient(target, token=token, timeout=30, retries=0)
    rotated = threading.Event()

    def requests():
        for i in range(300):
            if i == 3:
                rotate()
                rotated.set()
            yield client.match_request([("pdq", "00" * 32)], threshold=0)
            time.sleep(0.1)

    try:
        n = sum(1 for _ in client.match_stream(requests(), timeout=60))
        rec.bad("op.revoked", f"stream on a removed token went on to its end ({n} replies)")
    except grpc.RpcError as exc:
        if exc.code() is grpc.StatusCode.UNAUTHENTICATED and rotated.is_set():
            rec.ok("op.revoked", "UNAUTHENTICATED")
        else:
            rec.bad("op.revoked", f"{exc.code().name}: {exc.details()}")
    finally:
        client.close()


def cli(rec: Record, kind: str, argv: list[str], env: dict, ok_codes=(0,),
        allow: str = "") -> str | None:  # fmt: skip
    try:
        done = subprocess.run([HASHMATCH, *argv], env=env, capture_output=True, text=True,
                              timeout=180)  # fmt: skip
    except subprocess.TimeoutExpired:
        rec.bad(kind, f"hung: {argv}")
        return None
    if done.returncode in ok_codes or (allow and allow in done.stderr):
        rec.ok(kind, f"exit{done.returncode}")
    else:
        rec.bad(kind, f"exit {done.returncode} {argv}: {done.stderr.strip()[-600:]}")
        return None
    return done.stdout


def lists_hit(client: HashmatchClient, hexes: list[str]) -> list[set[str]]:
    """Per hash, the lists it matches exactly (threshold 0) right now."""
    reply = client.match([("pdq", h) for h in hexes], threshold=0, timeout=60)
    out = [set() for _ in hexes]
    for result in reply.results:
        out[result.index] = {m.list_name for m in result.matches}
    return out


def expect(rec: Record, kind: str, client: HashmatchClient, hexes: list[str], what: str, *,
           has: str = "", lacks: str = "", equals: set[str] | None = None) -> None:  # fmt: skip
    """Read-your-writes: once a write is acknowledged, the next lookup shows it. Each
    hash's lists must hold ``has``, not hold ``lacks``, be ``equals``."""

    def good(hit: set[str]) -> bool:
        return ((not has or has in hit) and (not lacks or lacks not in hit)
                and (equals is None or hit == equals))  # fmt: skip

    hits = call(rec, kind, lists_hit, client, hexes)
    if hits is not None and not all(good(h) for h in hits):
        bad = [(h[:12], sorted(x)) for h, x in zip(hexes, hits, strict=True) if not good(x)]
        rec.bad(kind, f"{what}: {len(bad)} of {len(hexes)} wrong, e.g. {bad[:3]}")


def writer(target: str, token: str, rec: Record, stop: threading.Event, env: dict,
           seed: int) -> None:  # fmt: skip
    rng = np.random.default_rng(seed)
    prng = random.Random(seed)
    client = HashmatchClient(target, token=token, timeout=60)
    retracted: list[tuple[str, int, str]] = []
    while not stop.is_set():
        name = prng.choice(("l0", "l2", "l3", "scratch"))
        items = [signal("pdq", c.tobytes().hex(), labels=["w"]) for c in random_codes(rng, 300)]
        hexes = [s.hash.hex for s in items]
        checked = name in ("l0", "l2")  # l3 is disabled now and then, scratch deleted
        allowed = EXPECTED | ({"NOT_FOUND"} if name == "scratch" else set())
        stored = call(rec, "write.ingest", client.ingest, name, items, batch_size=50,
                      allowed=allowed)  # fmt: skip
        if stored and checked:
            expect(rec, "write.seen", client, hexes, f"ingested into {name}", has=name)
        targets = [("pdq", h) for h in hexes[:20]]
        reply = call(rec, "write.retract", client.retract, name, hashes=targets, reason="soak",
                     allowed=allowed)  # fmt: skip
        if reply is not None and checked:
            expect(rec, "write.gone", client, hexes[:20], f"retracted from {name}", lacks=name)
            store = SignalStore(Path(env["HASHMATCH_DATA_DIR"]) / "store.sqlite", create=False)
            try:
                retracted += [(name, s.id, s.hash_hex)
                              for s in store.retracted(list_name=name, limit=5)]  # fmt: skip
            finally:
                store.close()
        if retracted and prng.random() < 0.5:
            name, sid, hex_ = retracted.pop(prng.randrange(len(retracted)))
            if (
                cli(rec, "write.restore", ["restore", "--list", name, "--id", str(sid)], env)
                is not None
            ):
                expect(rec, "write.back", client, [hex_], f"restored {sid} in {name}", has=name)
    client.close()


def operator(server: Server, tokens: dict[str, str], rec: Record, stop: threading.Event,
             env: dict, scratch_file: Path, codes: np.ndarray,
             restart_at: int) -> None:  # fmt: skip
    target = f"127.0.0.1:{server.port}"
    per = len(codes) // len(LISTS)
    l1 = [c.tobytes().hex() for c in codes[per : per + 20]]
    l3 = [c.tobytes().hex() for c in codes[3 * per : 3 * per + 20]]
    scratch = scratch_file.read_text().split()[:50]
    acme = HashmatchClient(target, token=tokens["acme"], timeout=60)
    beta = HashmatchClient(target, token=tokens["beta"], timeout=60)
    admin = HashmatchClient(target, token=tokens["admin"], timeout=60)
    remote = ["remote", "--server", target, "--timeout", "120"]
    step = 0
    while not stop.is_set():
        step += 1
        cli(rec, "op.set", ["lists", "set", "l0", "--description", f"d{step}"], env)
        if cli(rec, "op.rename", ["lists", "rename", "l1", "l1r"], env) is not None:
            expect(rec, "op.renamed", acme, l1, "renamed l1 -> l1r", equals={"l1r"})
        if cli(rec, "op.rename", ["lists", "rename", "l1r", "l1"], env) is not None:
            expect(rec, "op.renamed", acme, l1, "renamed l1r -> l1", equals={"l1"})
        if cli(rec, "op.disable", ["lists", "disable", "l3"], env) is not None:
            expect(rec, "op.disabled", beta, l3, "disabled l3", equals=set())
        if cli(rec, "op.enable", ["lists", "enable", "l3"], env) is not None:
            expect(rec, "op.enabled", beta, l3, "enabled l3", equals={"l3"})
        # scratch: created (by the writer or here), shared with the mirror, deleted
        cli(rec, "op.scratch", ["lists", "create", "scratch"], env, allow="already exists")
        cli(rec, "op.scratch", ["tenants", "grant", "mirror", "scratch"], env)
        cli(
            rec,
            "op.scratch",
            ["ingest", str(scratch_file), "--list", "scratch", "--type", "pdq"],
            env,
        )
        if stop.wait(2):
            break
        if cli(rec, "op.delete", ["lists", "delete", "scratch", "--yes"], env) is not None:
            expect(rec, "op.deleted", admin, scratch, "deleted scratch", lacks="scratch")
        if step % 3 == 1:
            cli(rec, "op.rebuild", [*remote, "rebuild"], env)
        if step % 3 == 2:
            cli(rec, "op.snapshot", [*remote, "snapshot"], env)
        if step % 3 == 0:
            cli(rec, "op.isnapshot", ["index", "snapshot"], env)
        if step == restart_at:
            restart(server, tokens["admin"], rec)

        # rotate one tenant's token: the new one must work after the SIGHUP
        def rotate() -> None:
            tokens["rotor"] = secrets.token_urlsafe(16)
            write_tokens(server.hub, tokens)
            server.proc.send_signal(signals.SIGHUP)

        revoked_stream(target, tokens["rotor"], rec, rotate)
        rotor = HashmatchClient(target, token=tokens["rotor"], timeout=10, retries=0)
        for _ in range(100):
            try:
                rotor.list_hash_lists()
                rec.ok("op.sighup")
                break
            except grpc.RpcError as exc:
                if exc.code() is not grpc.StatusCode.UNAUTHENTICATED:
                    rec.bad("op.sighup", f"{exc.code().name}: {exc.details()}")
                    break
                time.sleep(0.1)
        else:
            rec.bad("op.sighup", "new token refused 10 s after SIGHUP")
        rotor.close()
        stop.wait(1)
    for client in (acme, beta, admin):
        client.close()


def restart(server: Server, token: str, rec: Record) -> None:
    """A deploy under load: drain, stop, start on the same data dir (loads the newest
    snapshot and replays the log); calls meanwhile may get UNAVAILABLE, nothing else."""
    rec.restarting.set()
    try:
        code = server.stop()
        if code != 0:
            rec.bad("op.restart", f"serve exited {code} on SIGTERM")
        server.start()
        with HashmatchClient(f"127.0.0.1:{server.port}", token=token) as client:
            client.wait_until_serving(120)
        rec.ok("op.restart")
        time.sleep(2)  # calls that failed just before SERVING have been recorded
    finally:
        rec.restarting.clear()


def monitor(server: Server, samples: list, stop: threading.Event) -> None:
    while not stop.wait(1):
        if (rss := server.rss_mb()) is not None:
            samples.append((time.monotonic(), rss))


# ---- checks -------------------------------------------------------------------------


def live_view(store: SignalStore, tenant: str) -> dict[int, tuple[str, bytes]]:
    """Signal id -> (list, code) of the PDQ signals ``tenant`` can match right now."""
    enabled = {h.name for h in store.lists() if h.enabled}
    now = time.time()
    out = {}
    for s in store.signals(tenant=tenant, retracted=False, limit=10**8):
        if (s.signal_type == "pdq" and s.list_name in enabled
                and (s.expires_at is None or s.expires_at > now)):  # fmt: skip
            out[s.id] = (s.list_name, bytes.fromhex(s.hash_hex))
    return out


def brute_force_check(target: str, token: str, store: SignalStore, tenant: str,
                      codes: np.ndarray, rec: Record, seed: int) -> int:  # fmt: skip
    view = live_view(store, tenant)
    ids = np.fromiter(view, np.int64, len(view))
    stored = np.frombuffer(b"".join(c for _, c in view.values()), np.uint8).reshape(-1, 32)
    rng = random.Random(seed)
    pool = np.concatenate([codes, stored])
    queries = [near(pool[rng.randrange(len(pool))], rng, rng.randint(0, 40)) for _ in range(3000)]
    client = HashmatchClient(target, token=token, timeout=120)
    reply = client.match([("pdq", q.tobytes().hex()) for q in queries], threshold=THRESHOLD)
    client.close()
    stored_words = stored.view(np.uint64)
    wrong = 0
    for result in reply.results:
        q = queries[result.index].view(np.uint64)
        dist = np.bitwise_count(stored_words ^ q).sum(axis=1)
        want = {
            (int(i), int(d))
            for i, d in zip(ids[dist <= THRESHOLD], dist[dist <= THRESHOLD], strict=True)
        }
        got = {(m.signal_id, m.distance) for m in result.matches}
        if got != want:
            wrong += 1
            if wrong <= 5:
                rec.bad(f"final.{tenant}", f"query {result.index}: got {sorted(got - want)} "
                        f"extra, {sorted(want - got)} missing")  # fmt: skip
    hits = sum(len(r.matches) for r in reply.results)
    print(f"# {tenant}: {len(queries)} queries, {hits} matches, {wrong} wrong, "
          f"{len(view)} live visible signals")  # fmt: skip
    return wrong


def mirror_check(hub: Path, mirror_dir: Path, rec: Record) -> None:
    """The mirror's hub/ lists equal what the hub shares with the mirror tenant."""

    def view(store: SignalStore, tenant: str | None, prefix: str) -> dict:
        out: dict = collections.defaultdict(set)
        for h in store.lists(tenant=tenant) if tenant else store.lists():
            if h.name.startswith(prefix):
                out[(h.name[len(prefix) :], h.enabled)]  # an empty list counts too
        states = {h.name: h.enabled for h in store.lists()}
        for s in store.signals(tenant=tenant, retracted=False, limit=10**8):
            if s.list_name.startswith(prefix):
                key = (s.list_name[len(prefix) :], states[s.list_name])
                out[key].add((s.hash_hex, s.labels, s.external_id))
        return dict(out)

    hub_store, mir_store = (
        SignalStore(hub / "store.sqlite"),
        SignalStore(mirror_dir / "store.sqlite"),
    )
    want, got = view(hub_store, HUB_VIEW, ""), view(mir_store, None, "hub/")
    got = {k: v for k, v in got.items() if k[1] or v}  # copies of lists no longer shared
    want = {k: v for k, v in want.items() if k[1] or v}
    if want != got:
        for key in sorted(set(want) | set(got)):
            a, b = want.get(key, set()), got.get(key, set())
            if a != b:
                rec.bad("final.mirror", f"{key}: hub {len(a)} mirror {len(b)} "
                        f"(missing {len(a - b)}, extra {len(b - a)})")  # fmt: skip
    print(f"# mirror: hub view {[(k, len(v)) for k, v in sorted(want.items())]}")
    hub_store.close()
    mir_store.close()


def orphans(hub: Path, rec: Record) -> None:
    """Rows left pointing at a deleted list (a write racing ``lists delete``)."""
    store = SignalStore(hub / "store.sqlite")
    try:
        conn = store.conn()
        for table, column in (("signals", "list_id"), ("tenant_lists", "list_id"),
                              ("list_counts", "list_id")):  # fmt: skip
            n = conn.execute(f"SELECT count(*) FROM {table} WHERE {column} NOT IN"
                             " (SELECT id FROM hash_lists)").fetchone()[0]  # fmt: skip
            if n:
                rec.bad("final.orphans", f"{n} {table} rows of a deleted list")
        print(f"# store integrity: {store.integrity_check()}")
    finally:
        store.close()


# ---- main ---------------------------------------------------------------------------


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench soak")
    ap.add_argument("--seconds", type=float, default=120)
    ap.add_argument("--signals", type=int, default=50_000)
    ap.add_argument("--dir", default=None, help="work dir (default: a new temp dir)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--matchers", type=int, default=2, help="matcher threads per tenant")
    ap.add_argument(
        "--restart-at",
        type=int,
        default=3,
        help="restart the server after this operator round (0: never)",
    )
    ap.add_argument("--serve-args", default="", help="more `hashmatch serve` options")
    args = ap.parse_args(argv)
    root = Path(args.dir or tempfile.mkdtemp(prefix="hashmatch-soak-"))
    hub, mirror_dir = root / "hub", root / "mirror"
    hub.mkdir(parents=True, mode=0o700)
    mirror_dir.mkdir(mode=0o700)
    rng = np.random.default_rng(args.seed)
    print(f"# soak in {root}: {args.signals} PDQ signals, {args.seconds:.0f} s of load")
    codes = populate(hub, args.signals, rng)
    tokens = {t: secrets.token_urlsafe(16) for t in ("admin", "acme", "beta", "mirror", "rotor")}
    write_tokens(hub, tokens)
    (root / "mirror.token").write_text(tokens["mirror"] + "\n")
    scratch = root / "scratch.txt"
    scratch.write_text("\n".join(c.tobytes().hex() for c in random_codes(rng, 2000)) + "\n")
    server = Server(hub, free_port(), root / "server.log", args.serve_args.split())
    server.start()
    target = f"127.0.0.1:{server.port}"
    HashmatchClient(target, token=tokens["admin"]).wait_until_serving(120)
    env = {**os.environ, "HASHMATCH_DATA_DIR": str(hub), "HASHMATCH_TOKEN": tokens["admin"]}
    mirror_env = {**os.environ, "HASHMATCH_DATA_DIR": str(mirror_dir)}
    mirror_argv = [HASHMATCH, "mirror", "--server", target, "--token-file",
                   str(root / "mirror.token"), "--prefix", "hub/"]  # fmt: skip
    with open(root / "mirror.log", "w") as mirror_log:
        mirror = subprocess.Popen([*mirror_argv, "--follow", "--interval", "2"], env=mirror_env,
                                  stdout=mirror_log, stderr=subprocess.STDOUT)  # fmt: skip
    rec, stop, rss = Record(), threading.Event(), []
    workers = [
        threading.Thread(target=matcher, args=(target, tokens[t], codes, rec, stop, i, t))
        for i, t in enumerate(("acme", "beta") * args.matchers)
    ]
    workers += [
        threading.Thread(target=writer, args=(target, tokens["admin"], rec, stop, env, 99)),
        threading.Thread(
            target=operator, args=(server, tokens, rec, stop, env, scratch, codes, args.restart_at)
        ),
        threading.Thread(target=monitor, args=(server, rss, stop)),
    ]
    started = time.monotonic()
    for w in workers:
        w.start()
    stop.wait(args.seconds)
    stop.set()
    for w in workers:
        w.join(300)
        if w.is_alive():
            rec.bad("load", f"worker {w.name} did not finish 300 s after the stop")
    print(f"# load ran {time.monotonic() - started:.0f} s")
    mirror.send_signal(signals.SIGTERM)
    if mirror.wait(60) not in (0, 130, -15, 143):
        rec.bad("mirror.follow", f"exit {mirror.returncode}; see {root / 'mirror.log'}")
    for line in (root / "mirror.log").read_text().splitlines():
        if "disabled" in line and "scratch" not in line:  # the hub never unshares the others
            rec.bad("mirror.follow", line.strip())
    final = subprocess.run(mirror_argv, env=mirror_env, capture_output=True, text=True, timeout=300)
    if final.returncode:
        rec.bad("mirror.final", final.stderr.strip()[-600:])
    for tenant in ("acme", "beta"):
        brute_force_check(target, tokens[tenant], SignalStore(hub / "store.sqlite"), tenant,
                          codes, rec, args.seed)  # fmt: skip
    mirror_check(hub, mirror_dir, rec)
    orphans(hub, rec)
    cli(rec, "final.verify", ["index", "verify"], env)
    cli(rec, "final.snapshot", ["remote", "--server", target, "snapshot"], env)
    if server.stop() != 0:
        rec.bad("final.stop", f"server exit {server.proc.returncode}")
    server.start()
    HashmatchClient(target, token=tokens["admin"]).wait_until_serving(120)
    log = (root / "server.log").read_text()
    tail = log[log.rfind("hashmatch listening") :]
    if "snapshot skipped" in tail or "no usable index snapshot" in tail:
        rec.bad("final.restart", "the restart did not load the snapshot")
    for tenant in ("acme", "beta"):
        brute_force_check(target, tokens[tenant], SignalStore(hub / "store.sqlite"), tenant,
                          codes, rec, args.seed + 1)  # fmt: skip
    cli(rec, "final.verify", ["index", "verify"], env)
    server.stop()
    report(rec, rss)
    sys.exit(1 if rec.problems else 0)


def report(rec: Record, rss: list) -> None:
    print("# calls by kind and status:")
    for (kind, status), n in sorted(rec.counts.items()):
        print(f"  {kind:16s} {status:20s} {n}")
    if rss:
        values = [m for _, m in rss]
        quarter = values[len(values) // 4]
        print(f"# server RSS MB: start {values[0]:.0f}, 25% {quarter:.0f}, "
              f"max {max(values):.0f}, end {values[-1]:.0f}")  # fmt: skip
    print(f"# problems: {len(rec.problems)}")
    for p in rec.problems:
        print("  " + p)
