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
checked against the manifest (size always, sha256 unless ``verify=False``), every
count is cross-checked, and the contents are checked against the manifest and each
other before the index is returned: the directory holds exactly the listed shards,
segments and files; segment types fit the kind; arrays have the dtypes and shapes
``bits`` implies and table offsets/rows stay in range (the numba kernels do no bounds
checks); every id sits in the shard the sharding function assigns and is live once.
A corrupt or mismatched snapshot raises :class:`CorruptData` and nothing is
half-loaded. The checks are vectorised O(n) passes (plus, when ids are sparse, one
sort of each shard's live ids).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hashmatch.engine.durable import fsync_path, pid_alive
from hashmatch.engine.errors import CorruptData
from hashmatch.engine.snapshot_files import read_manifest_file, snapshot_counter
from hashmatch.indexes.segments import SEGMENT_TYPES, MIHSegment, Segment, load_npy

if TYPE_CHECKING:  # sharded imports this module: a runtime import would be circular
    from hashmatch.indexes.sharded import ShardedIndex

log = logging.getLogger(__name__)

FORMAT = "hashmatch-index"
VERSION = 1
MANIFEST = "manifest.json"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def save_index(index: ShardedIndex, path: Path) -> None:
    """Write ``index`` (a ShardedIndex) to the directory ``path`` (replaced if present).

    Replacing is two renames (``path`` -> ``path.old-<ns>``, temp -> ``path``): if the
    second fails the old snapshot is moved back; after a crash between them
    :func:`load_index` opens the ``.old`` one. Temp directories of dead processes
    (killed mid-save) are removed first, superseded ``.old`` ones after.
    """
    state = index._state  # one consistent, immutable view
    path = Path(path)
    _remove_stale_temps(path)
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}-{time.time_ns()}")
    tmp.mkdir(parents=True)
    old = None
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
                    fsync_path(f)
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
        fsync_path(tmp / MANIFEST)
        if path.exists():
            old = path.with_name(path.name + f".old-{time.time_ns()}")
            os.replace(path, old)
        os.replace(tmp, path)
    except BaseException:
        if old is not None and not path.exists():
            with contextlib.suppress(OSError):  # else load_index falls back to it
                os.replace(old, path)  # the previous snapshot, back where it was
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for superseded in _siblings(path, ".old-"):
        shutil.rmtree(superseded[1], ignore_errors=True)


def _siblings(path: Path, marker: str) -> list[tuple[list[int], Path]]:
    """``<path><marker><n>[-<n>...]`` siblings with their numbers (pid, ns), unsorted."""
    found = []
    prefix = path.name + marker
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(path.parent):
            if entry.name.startswith(prefix):
                parts = entry.name[len(prefix) :].split("-")
                if all(p.isdigit() for p in parts):
                    found.append(([int(p) for p in parts], Path(entry.path)))
    return found


def _remove_stale_temps(path: Path) -> None:
    """Remove ``<path>.tmp-<pid>-<ns>`` left by a process killed mid-save (its pid no
    longer runs): each is a full-size copy of an index, and nothing else frees it."""
    for (pid, *_), tmp in _siblings(path, ".tmp-"):
        if pid != os.getpid() and not pid_alive(pid):
            log.info("removing %s, left by process %d (no longer running)", tmp, pid)
            shutil.rmtree(tmp, ignore_errors=True)


def _snapshot_dir(path: Path) -> Path:
    """``path``, or, when it has no manifest, the newest ``<path>.old-<ns>`` that has:
    a save killed between its two renames leaves the previous snapshot only there."""
    if (path / MANIFEST).exists() or (path / MANIFEST).is_symlink():
        return path
    olds = [(ns, old) for ns, old in _siblings(path, ".old-") if (old / MANIFEST).is_file()]
    if not olds:
        return path
    old = max(olds)[1]
    log.warning("%s has no %s (a save was interrupted): loading %s instead", path, MANIFEST, old)
    return old


def _load_segment(
    seg_type: type[Segment], path: Path, g: dict, d: Path, bits: int, mmap: bool
) -> Segment:
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


def _snapshot_of(path: Path) -> Path:
    """The engine snapshot directory an index directory is in (``snapshots/snap-*/``),
    for the advice to delete it; the index directory itself when it is in none."""
    return path.parent if snapshot_counter(path.parent.name) is not None else path


def read_manifest(path: Path) -> dict:
    path = Path(path)
    try:  # an empty or non-JSON one names its file and the fix (read_manifest_file)
        manifest = read_manifest_file(path / MANIFEST, _snapshot_of(path))
    except FileNotFoundError as exc:
        raise CorruptData(f"{path}: no {MANIFEST} (not an index snapshot)") from exc
    except CorruptData:
        raise
    except Exception as exc:  # OSError, ...
        raise CorruptData(f"{path}: unreadable manifest: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CorruptData(f"{path}: not a {FORMAT} snapshot")
    version = manifest.get("version")
    if type(version) is not int or version != VERSION:  # not 1.0 or true either
        raise CorruptData(f"{path}: snapshot version {version!r}, expected {VERSION}")
    return manifest


def load_index(
    path: Path,
    *,
    mmap: bool = True,
    verify: bool = True,
    bits: int | None = None,
    kind: str | None = None,
) -> ShardedIndex:
    """Read a snapshot; ``bits``/``kind`` (if given) must match or CorruptData.

    When ``path`` has no manifest but a save killed between its renames left the
    previous snapshot as ``path.old-<ns>``, that one is loaded (with a warning).
    """
    path = _snapshot_dir(Path(path))
    manifest = read_manifest(path)
    try:
        index = _empty_index(path, manifest, bits, kind)
        layout = manifest["layout"]
        if not isinstance(layout, list) or len(layout) != index.shards:
            raise CorruptData(f"{path}: shard layout does not list the {index.shards} shards")
        used = {_shard_dir(s) for s, entry in enumerate(layout) if entry["segments"]}
        _check_listing(path, path, {MANIFEST, *used})
        shards = _per_shard(
            lambda s: _load_shard(path, index, s, layout[s], mmap, verify), len(layout)
        )
        if sum(s.live for s in shards) != _int(path, manifest, "count"):
            raise CorruptData(f"{path}: counts do not add up to {manifest['count']}")
    except CorruptData:
        raise
    except Exception as exc:  # a damaged manifest can fail in any way: never leak it
        raise CorruptData(f"{path}: damaged snapshot: {type(exc).__name__}: {exc}") from exc
    index._state = tuple(shards)
    return index


def _per_shard(fn: Callable[[int], Any], shards: int) -> list:
    """``fn(s)`` for every shard, in parallel: the checksums (hashlib) and the checks
    (numpy scans, one sort per shard) release the GIL, so shards load on all cores.
    A pool of its own, not the search pool: load_index may run on a pool thread."""
    workers = min(shards, os.cpu_count() or 1)
    if workers <= 1:
        return [fn(s) for s in range(shards)]
    with ThreadPoolExecutor(workers, thread_name_prefix="hashmatch-load") as ex:
        return list(ex.map(fn, range(shards)))


# the indexed segment type each kind builds; every other segment is a scan (recent
# additions) and comes after it (see ShardedIndex._merge / add)
INDEXED_TYPE = {"flat": "flat", "exact": "exact", "mih": "mih", "auto": "mih"}


def _int(path: Path, entry: dict, key: str) -> int:
    """A count from the manifest: an int, not a float or string that compares equal."""
    value = entry[key]
    if type(value) is not int:
        raise CorruptData(f"{path}: manifest {key} is {value!r}, expected an integer")
    return value


def _shard_dir(s: int) -> str:
    return f"s{s:03d}"


def _check_listing(path: Path, directory: Path, want: set[str]) -> None:
    """``directory`` holds exactly ``want``: a shard or segment directory the manifest
    does not list means the two do not belong together (a shard dropped from the
    layout, a directory from another snapshot)."""
    extra = sorted(set(os.listdir(directory)) - want)
    if extra:
        where = directory.relative_to(path) if directory != path else Path(".")
        raise CorruptData(f"{path}: {where / extra[0]} is not in the manifest")


def _empty_index(path: Path, manifest: dict, bits: int | None, kind: str | None):
    from hashmatch.indexes.sharded import KINDS, ShardedIndex

    have_bits, have_kind = _int(path, manifest, "bits"), manifest["kind"]
    if bits is not None and have_bits != bits:
        raise CorruptData(f"{path}: snapshot holds {have_bits}-bit codes, expected {bits}")
    if kind is not None and have_kind != kind:
        raise CorruptData(f"{path}: snapshot is a {have_kind!r} index, expected {kind!r}")
    if have_kind not in KINDS:
        raise CorruptData(f"{path}: unknown index kind {have_kind!r}")
    return ShardedIndex(
        have_bits,
        have_kind,
        _int(path, manifest, "shards"),
        radius_hint=int(manifest["radius_hint"]),
        memory_ratio=float(manifest["memory_ratio"]),
        delta_min=int(manifest["delta_min"]),
        scan_fallback=bool(manifest.get("scan_fallback", True)),
    )


def _load_shard(path: Path, index: ShardedIndex, s: int, entry: dict, mmap: bool, verify: bool):
    """One shard's segments, checked against the manifest and against each other:
    every id must be one the sharding function sends to shard ``s`` (else remove
    and upsert look in the wrong shard: NotFound for a live id, two live copies),
    and no id may be live twice."""
    from hashmatch.indexes.sharded import Shard

    listed = entry["segments"]
    if not isinstance(listed, list):
        raise CorruptData(f"{path}: shard {s} has no segment list")
    if listed:
        _check_listing(path, path / _shard_dir(s), {f"g{j:03d}" for j in range(len(listed))})
    segs, deads, live_ids = [], [], []
    for j, g in enumerate(listed):
        seg, dead = _load_listed_segment(path, index, s, j, g, mmap, verify)
        ids = np.asarray(seg.ids)
        if index.shards > 1 and len(ids):
            wrong = np.flatnonzero(index._shard_of(ids) != s)
            if len(wrong):
                raise CorruptData(
                    f"{path}: {g['dir']} holds id {ids[wrong[0]]}, which belongs in shard "
                    f"{index._shard_of(ids[wrong[:1]])[0]} (shards from another layout?)"
                )
        live_ids.append(ids if dead is None else ids[dead == 0])
        segs.append(seg)
        deads.append(dead)
    live = sum(len(i) for i in live_ids)
    if live != _int(path, entry, "live"):
        raise CorruptData(f"{path}: shard {s} holds {live} live codes, expected {entry['live']}")
    # ids spread over the shards: a shard's span is about shards x its count
    twice = _repeated(np.concatenate(live_ids), index.shards) if live_ids else None
    if twice is not None:
        raise CorruptData(f"{path}: shard {s} holds id {twice} live twice")
    return Shard(tuple(segs), tuple(deads), live)


def _repeated(ids: np.ndarray, shards: int) -> int | None:
    """An id that occurs twice in ``ids`` (one shard's), else None.

    Dense ids (spanning at most 4 x shards x their count, like the engine's row ids)
    are checked in O(n) with a byte map over their range; others take one sort
    (~0.6 s at 10M, ~10x the map).
    """
    if len(ids) < 2:
        return None
    lo, hi = int(ids.min()), int(ids.max())
    if hi - lo < 4 * shards * len(ids):
        seen = np.zeros(hi - lo + 1, bool)
        seen[ids - lo] = True
        if np.count_nonzero(seen) == len(ids):
            return None
    ids = np.sort(ids)
    twice = np.flatnonzero(ids[1:] == ids[:-1])
    return int(ids[twice[0]]) if len(twice) else None


def _load_listed_segment(
    path: Path, index: ShardedIndex, s: int, j: int, g: dict, mmap: bool, verify: bool
):
    """Segment ``j`` of shard ``s`` and its tombstones (or None), files checked first."""
    rel = f"{_shard_dir(s)}/g{j:03d}"
    if g["dir"] != rel:
        raise CorruptData(f"{path}: shard {s} segment {j} is listed at {g['dir']!r}, not {rel}")
    seg_type = SEGMENT_TYPES.get(g["type"])
    if seg_type is None:
        raise CorruptData(f"{path}: {rel}: unknown segment type {g['type']!r}")
    allowed = {"scan"} if j else {"scan", INDEXED_TYPE[index.kind]}
    if seg_type.kind not in allowed:
        raise CorruptData(f"{path}: {rel}: a {seg_type.kind!r} segment in a {index.kind!r} index")
    files = g["files"]
    if set(files) - {"dead.npy"} != seg_type.files:
        raise CorruptData(
            f"{path}: {rel}: lists files {sorted(files)}, a {seg_type.kind!r} segment has "
            f"{sorted(seg_type.files)}"
        )
    d = path / rel
    _check_listing(path, d, set(files))
    for name, want in files.items():
        f = d / name
        if not f.is_file():
            raise CorruptData(f"{path}: missing {rel}/{name}")
        if f.stat().st_size != want["bytes"]:
            raise CorruptData(f"{path}: {rel}/{name} has the wrong size")
        if verify and _sha256(f) != want["sha256"]:
            raise CorruptData(f"{path}: {rel}/{name} fails its checksum")
    seg = _load_segment(seg_type, path, g, d, index.bits, mmap)
    if isinstance(seg, MIHSegment):
        seg.scan_fallback = index.scan_fallback
    if len(seg) != _int(path, g, "rows"):
        raise CorruptData(f"{path}: {rel} holds {len(seg)} rows, expected {g['rows']}")
    dead = None
    if "dead.npy" in files:
        dead = _load_array(path, g, d / "dead.npy", mmap)
        if dead.shape != (len(seg),) or dead.dtype != np.uint8 or (len(dead) and dead.max() > 1):
            raise CorruptData(f"{path}: {rel} tombstones do not match its rows")
    return seg, dead
