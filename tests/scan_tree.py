"""A generated tree of benign images for the scan tests (shared by test_scan*.py, test_rescan.py).

Originals come from scikit-image's bundled sample images; the tree holds exact copies,
near-duplicates (re-encoded, resized, mirrored), unrelated images and broken files.
"""

from __future__ import annotations

import io
import os
import signal
import sqlite3
import struct
import subprocess
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from skimage import data

from hashmatch.engine.hashing import hash_media
from hashmatch.engine.runtime import Engine
from hashmatch.engine.store import SignalRecord


def _png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def _jpeg(rgb: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _small(rgb: np.ndarray, width: int = 256) -> np.ndarray:
    im = Image.fromarray(rgb)
    h = round(im.height * width / im.width)
    return np.asarray(im.resize((width, h), Image.Resampling.LANCZOS))


ORIGINALS = {
    "astronaut": lambda: _small(data.astronaut()),
    "coffee": lambda: _small(data.coffee()),
    "chelsea": lambda: _small(data.chelsea()),
    "rocket": lambda: _small(data.rocket()),
}


@dataclass
class Tree:
    root: Path  # the scanned directory
    originals: dict[str, bytes]  # name -> PNG bytes (not inside root)


def build_tree(base: Path) -> Tree:
    """Write the tree under ``base/tree``; returns it with the originals' bytes."""
    originals = {name: _png(make()) for name, make in ORIGINALS.items()}
    pixels = {
        name: np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for name, b in originals.items()
    }
    root = base / "tree"
    files: dict[str, bytes] = {
        "exact/astronaut-copy.png": originals["astronaut"],
        "exact/coffee-copy.png": originals["coffee"],
        "near/astronaut-q60.jpg": _jpeg(pixels["astronaut"], 60),
        "near/coffee-half.png": _png(_small(pixels["coffee"], 128)),
        "near/chelsea-q80.jpg": _jpeg(pixels["chelsea"], 80),
        "near/astronaut-mirror.png": _png(np.ascontiguousarray(pixels["astronaut"][:, ::-1])),
        "unrelated/rocket.png": originals["rocket"],
        "unrelated/moon.png": _png(_small(np.stack([data.moon()] * 3, axis=-1))),
        "broken/empty.jpg": b"",
        "broken/truncated.jpg": _jpeg(pixels["chelsea"], 90)[:700],
        "broken/garbage.png": b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4,
    }
    for rel, blob in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(blob)
    os.symlink("..", root / "exact" / "loop")  # a directory symlink back up: a loop
    os.symlink("does-not-exist.png", root / "broken" / "dangling.png")
    return Tree(root, originals)


def ingest_originals(data_dir: Path, tree: Tree, names, *, list_name: str, md5: bool = True):
    """Ingest PDQ (and MD5) of the named originals; returns {(name, type): signal id}."""
    records = []
    for name in names:
        hashes = {h.signal_type: h.hex for h in hash_media(tree.originals[name], ["pdq", "md5"])}
        records.append(SignalRecord("pdq", hashes["pdq"], labels=(name,), external_id=name))
        if md5:
            records.append(SignalRecord("md5", hashes["md5"], labels=(name,), external_id=name))
    with Engine.open(data_dir, eager=False) as engine:
        report = engine.ingest(records, list_name=list_name)
        assert report.rejected == 0, report
        ids = {}
        for info in engine.store.signals(list_name=list_name, limit=100_000):
            ids[(info.external_id, info.signal_type)] = info.id
    return ids


def committed_files(catalog: Path) -> int:
    """Files a (possibly running) scan has committed to ``catalog``: 0 before it exists
    or has its schema. Read-only, so a scan in progress is not disturbed."""
    if not catalog.exists():
        return 0
    try:
        conn = sqlite3.connect(f"file:{catalog}?mode=ro", uri=True, timeout=1)
        try:
            return conn.execute("SELECT COUNT(*) FROM files").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.OperationalError:  # schema not created yet
        return 0


def slow_png(path: Path, side: int = 9000) -> None:
    """A 243 kB PNG of 9000x9000 black pixels (81 MP, under the pixel limit): ~2 s
    to decode, with no checkpoint inside (a still image is one decode)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    packer = zlib.compressobj(9)
    row = bytes(1 + 3 * side)  # filter byte 0, then black RGB
    idat = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


def kill_listed_scan_once(
    args: list[str],
    paths: list[Path],
    ready: Callable[[], bool],
    said: Path,
    *,
    env: dict[str, str] | None = None,
) -> None:
    """Run a ``scan --from-list -`` command (``args``), feed it ``paths`` and keep its
    list open (the scan then waits for more), SIGKILL it once ``ready()`` holds, reap it.
    Its stderr goes to ``said``, shown by the assertion when the scan ends before
    ``ready`` (or 120 s pass): a killed scan the test caught in the act, never a guess."""
    with open(said, "wb") as stderr:
        killed = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                  stderr=stderr, env=env)  # fmt: skip
    try:
        killed.stdin.write("".join(f"{p}\n" for p in paths).encode())
        killed.stdin.flush()
        deadline = time.monotonic() + 120
        while not ready():
            assert killed.poll() is None, said.read_text()
            assert time.monotonic() < deadline, said.read_text()
            time.sleep(0.05)
        killed.send_signal(signal.SIGKILL)
        killed.wait(timeout=30)
    finally:
        if killed.poll() is None:
            killed.kill()
            killed.wait()
        killed.stdin.close()
