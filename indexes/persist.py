"""Snapshot directories: a manifest plus per-segment files, loaded memory-mapped.

Layout::

    <path>/manifest.json          format, version, kind, bits, shard layout, counts,
                                  and size + sha256 of every file below
    <path>/s000/g000/ids.npy      one directory per segment of each shard
    <path>/s000/g000/words.npy    (.npy arrays; FAISS flat: flat.faissindex)
    <path>/s000/g000/dead.npy     tombstones, when the segment has any

Why this shape: ``.npy`` files map straight into memory (``np.load(mmap_mode='c')``,
a private copy-on-write map: the arrays are writable, so the numba kernels need no
read-only variants, and nothing ever writes them) and FAISS flat indexes load
with ``IO_FLAG_MMAP_IFC``, so a 10M-code snapshot
opens in well under a second and pages in as it is searched. The manifest is
written last and the directory is assembled under a temporary name then renamed,
so a crash never leaves a directory that looks complete. On load every file is
checked against the manifest (size always, sha256 unless ``verify=False``) and
every count is cross-checked before the index is returned: a corrupt or
mismatched snapshot raises :class:`CorruptData` and nothing is half-loaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

from hashmatch.engine.errors import CorruptData
from hashmatch.indexes.segments import SEGMENT_TYPES, MIHSegment, load_npy

FORMAT = "hashmatch-index"
VERSION = 1
MANIFEST = "manifest.json"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_index(index, path: Path) -> None:
    """Write ``index`` (a ShardedIndex) to the directory ``path`` (replaced if present)."""
    state = index._state  # one consistent, immutable view
    path = Path(path)
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}-{time.time_ns()}")
    tmp.mkdir(parents=True)
    try:
        layout = []
        for s, shard in enumerate(state):
            segs = []
            for g, (seg, dead) in enumerate(zip(shard.segments, shard.dead, strict=True)):
                rel = f"s{s:03d}/g{g:03d}"
                d = tmp / rel
                d.mkdir(parents=True)
                meta = seg.save(d)
                if dead is not None:
                    np.save(d / "dead.npy", np.asarray(dead))
                files = {}
                for f in sorted(d.iterdir()):
                    _fsync(f)
                    files[f.name] = {"bytes": f.stat().st_size, "sha256": _sha256(f)}
                segs.append(
                    {"dir": rel, "type": seg.kind, "rows": len(seg), "meta": meta, "files": files}
                )
            layout.append({"live": shard.live, "segments": segs})
        manifest = {
            "format": FORMAT,
            "version": VERSION,
            "kind": index.kind,
            "bits": index.bits,
            "shards": len(state),
            "count": sum(s.live for s in state),
            "radius_hint": index.radius_hint,
            "memory_ratio": index.memory_ratio,
            "delta_min": index.delta_min,
            "scan_fallback": index.scan_fallback,
            "created_at": time.time(),
            "layout": layout,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        _fsync(tmp / MANIFEST)
        if path.exists():
            old = path.with_name(path.name + f".old-{time.time_ns()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _load_segment(seg_type, path: Path, g: dict, d: Path, bits: int, mmap: bool):
    """One segment, or CorruptData naming its directory (and file: see load_npy).

    Any exception counts: a damaged .npy header raises whatever numpy's header
    parser hits (tokenize.TokenError, SyntaxError, ...), a FAISS file RuntimeError.
    """
    try:
        return seg_type.load(d, g["meta"], bits, mmap)
    except Exception as exc:
        raise CorruptData(f"{path}: {g['dir']}: {exc}") from exc


def _load_array(path: Path, g: dict, f: Path, mmap: bool) -> np.ndarray:
    try:
        return load_npy(f, mmap)
    except ValueError as exc:
        raise CorruptData(f"{path}: {g['dir']}: {exc}") from exc


def read_manifest(path: Path) -> dict:
    try:
        manifest = json.loads((Path(path) / MANIFEST).read_text())
    except FileNotFoundError as exc:
        raise CorruptData(f"{path}: no {MANIFEST} (not an index snapshot)") from exc
    except Exception as exc:  # OSError, bad JSON, RecursionError (deep nesting), ...
        raise CorruptData(f"{path}: unreadable manifest: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CorruptData(f"{path}: not a {FORMAT} snapshot")
    if manifest.get("version") != VERSION:
        raise CorruptData(
            f"{path}: snapshot version {manifest.get('version')!r}, expected {VERSION}"
        )
    return manifest


def load_index(
    path: Path,
    *,
    mmap: bool = True,
    verify: bool = True,
    bits: int | None = None,
    kind: str | None = None,
):
    """Read a snapshot; ``bits``/``kind`` (if given) must match or CorruptData."""
    from hashmatch.indexes.sharded import Shard, ShardedIndex

    path = Path(path)
    manifest = read_manifest(path)
    try:
        if bits is not None and manifest["bits"] != bits:
            raise CorruptData(
                f"{path}: snapshot holds {manifest['bits']}-bit codes, expected {bits}"
            )
        if kind is not None and manifest["kind"] != kind:
            raise CorruptData(
                f"{path}: snapshot is a {manifest['kind']!r} index, expected {kind!r}"
            )
        index = ShardedIndex(
            int(manifest["bits"]),
            manifest["kind"],
            int(manifest["shards"]),
            radius_hint=int(manifest["radius_hint"]),
            memory_ratio=float(manifest["memory_ratio"]),
            delta_min=int(manifest["delta_min"]),
            scan_fallback=bool(manifest.get("scan_fallback", True)),
        )
        layout = manifest["layout"]
        if len(layout) != index.shards:
            raise CorruptData(f"{path}: {len(layout)} shards listed, manifest says {index.shards}")
        shards = []
        for s, entry in enumerate(layout):
            segs, deads, live = [], [], 0
            for g in entry["segments"]:
                d = path / g["dir"]
                for name, want in g["files"].items():
                    f = d / name
                    if not f.is_file():
                        raise CorruptData(f"{path}: missing {g['dir']}/{name}")
                    if f.stat().st_size != want["bytes"]:
                        raise CorruptData(f"{path}: {g['dir']}/{name} has the wrong size")
                    if verify and _sha256(f) != want["sha256"]:
                        raise CorruptData(f"{path}: {g['dir']}/{name} fails its checksum")
                seg_type = SEGMENT_TYPES.get(g["type"])
                if seg_type is None:
                    raise CorruptData(f"{path}: unknown segment type {g['type']!r}")
                seg = _load_segment(seg_type, path, g, d, index.bits, mmap)
                if isinstance(seg, MIHSegment):
                    seg.scan_fallback = index.scan_fallback
                if len(seg) != int(g["rows"]):
                    raise CorruptData(
                        f"{path}: {g['dir']} holds {len(seg)} rows, expected {g['rows']}"
                    )
                dead = None
                if "dead.npy" in g["files"]:
                    dead = _load_array(path, g, d / "dead.npy", mmap)
                    if dead.shape != (len(seg),) or dead.dtype != np.uint8:
                        raise CorruptData(f"{path}: {g['dir']} tombstones do not match its rows")
                    live += len(seg) - int(np.count_nonzero(dead))
                else:
                    live += len(seg)
                segs.append(seg)
                deads.append(dead)
            if live != int(entry["live"]):
                raise CorruptData(
                    f"{path}: shard {s} holds {live} live codes, expected {entry['live']}"
                )
            shards.append(Shard(tuple(segs), tuple(deads), live))
        if sum(s.live for s in shards) != int(manifest["count"]):
            raise CorruptData(f"{path}: counts do not add up to {manifest['count']}")
    except CorruptData:
        raise
    except Exception as exc:  # a damaged manifest can fail in any way: never leak it
        raise CorruptData(f"{path}: damaged snapshot: {type(exc).__name__}: {exc}") from exc
    index._state = tuple(shards)
    return index
