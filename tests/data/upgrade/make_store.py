"""A small data dir written by an OLD hashmatch CLI, for tests/data/upgrade/<name>/.

python make_store.py OLD_WORKTREE OUT_DIR: OLD_WORKTREE is `git worktree add DIR COMMIT` with
`python3 -m venv .venv && .venv/bin/pip install -e .` run in it; every hashmatch call is that
old CLI. Needs ../shared/reference (a vPDQ hash file).
"""

import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

old = Path(sys.argv[1])
out = Path(sys.argv[2])
HM = str(old / ".venv/bin/hashmatch")
work = out.with_name(out.name + ".work")
for p in (out, work):
    if p.exists():
        shutil.rmtree(p)
work.mkdir(parents=True)
data = work / "data"
env = dict(os.environ, HASHMATCH_DATA_DIR=str(data))
REF = Path("/work/shared/reference")


def run(*args):
    p = subprocess.run([HM, *args], env=env, capture_output=True, text=True)
    print(
        "$ hashmatch",
        " ".join(args),
        "->",
        p.returncode,
        p.stdout.strip()[:200],
        p.stderr.strip()[-300:],
    )
    if p.returncode:
        raise SystemExit(f"failed: {args}")
    return p


rnd = random.Random(11)
now = time.time()
hexes = [f"{rnd.getrandbits(256):064x}" for _ in range(12)]
lines = [
    {
        "signal_type": "pdq",
        "signal_value": h,
        "labels": ["tier 1", "x"] if i % 2 else ["y"],
        "external_id": f"A{i}",
        "quality": 40 + 5 * i,
        **({"expires_at": now + 86400 * 365 * 20} if i == 3 else {}),
        **({"expires_at": now - 10} if i == 4 else {}),
    }
    for i, h in enumerate(hexes[:8])
]
lines.append(
    {
        "signal_type": "md5",
        "signal_value": "69fcf178b044ebabd35e800399073487",
        "labels": ["m"],
        "external_id": "M1",
    }
)
lines.append({"signal_type": "phash", "signal_value": "c2924c5532bddfc8", "external_id": "P1"})
(work / "a.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
run("lists", "create", "partner-a", "--owner", "Partner A", "--label", "csam")
run("ingest", str(work / "a.jsonl"), "--list", "partner-a", "--actor", "alice")
(work / "b.csv").write_text(
    "signal_type,signal_value,labels,external_id\n"
    + "".join(f"pdq,{h},b;t2,B{i}\n" for i, h in enumerate(hexes[8:]))
)
run("ingest", str(work / "b.csv"), "--list", "partner-b")
run("ingest", str(REF / "vpdq-hashes/test-padded-dimensions.txt"), "--list", "videos")
run("retract", "--list", "partner-a", "pdq:" + hexes[1], "--reason", "false positive")
run("retract", "--list", "partner-b", "--external-id", "B2")
run("lists", "disable", "partner-b")
run("tenants", "create", "acme")
run("tenants", "grant", "acme", "partner-a")
run("tenants", "grant", "acme", "videos", "--write")
run("tenants", "create", "ops", "--admin")
run("index", "snapshot")
out.mkdir(parents=True)
# one self-contained file (the WAL folded in), as `hashmatch backup` would leave it
src = sqlite3.connect(data / "store.sqlite")
src.execute(f"VACUUM INTO '{out / 'store.sqlite'}'")
src.close()
snaps = sorted((data / "snapshots").iterdir())
shutil.copytree(snaps[-1], out / "snapshots" / snaps[-1].name)
rev = subprocess.run(
    ["git", "-C", str(old), "log", "-1", "--format=%h %ad %s", "--date=short"],
    capture_output=True,
    text=True,
).stdout.strip()
(out / "README.md").write_text(
    f"Written by hashmatch at commit {rev[:120]}\n\n"
    "by tests/data/upgrade/make_store.py (the old CLI: lists create, ingest JSONL/CSV/vPDQ,\n"
    "retract, lists disable, tenants create/grant, index snapshot); store.sqlite is the\n"
    "store after `VACUUM INTO` (its WAL folded in), snapshots/ the index snapshot it wrote.\n"
)
shutil.rmtree(work)
print(sorted(str(p.relative_to(out)) for p in out.rglob("*")))
