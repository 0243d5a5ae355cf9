"""Batch scans of stored media: walk, hash in worker processes, match in batches, report.

Why this shape:

- **Workers hash, the parent matches and writes.** Decoding and hashing are CPU-bound
  and hold the GIL, so each file is read, MD5'd and hashed in a worker process
  (:class:`concurrent.futures.ProcessPoolExecutor` over a fork server, default one
  per core); only the small codes travel back. The parent owns the catalog (one
  SQLite writer) and the matcher, and looks hashes up in batches (one index call per
  type per batch).
- **Every result is committed in small transactions** (WAL, ``synchronous=FULL``):
  a scan killed with ``kill -9`` loses at most the batch in flight. A re-run skips
  files whose stat matches the catalog (:func:`same_stat`: size, mtime, inode,
  ctime), without reading them, and re-matches them from their catalogued hashes (a
  lookup, not a decode).
- **The report is written from the catalog at the end** (files seen by this run,
  in path order, to a temporary file renamed into place), so a resumed scan writes
  exactly the report an uninterrupted one would, with no duplicates.
- **One bad file never stops a scan**: it is recorded with a short reason
  (``empty``, ``corrupt``, ``unsupported``, ``too-large``, ``permission-denied``,
  ``symlink-loop``, ``directory-revisited``, ``broken-symlink``, ``not-found``,
  ``not-a-file``, ``io-error``, ``worker-crashed``, ``error``) and the message, in
  the catalog and the report. A file that was read but not decoded keeps its exact
  digests (md5, sha256: :func:`exact_digests`), matched and catalogued all the same.
  A worker's death fails every task in flight: their files are retried one at a
  time, so only a file that kills its worker again is ``worker-crashed`` (or
  ``timeout``, when the watchdog killed it); such a file's digests are then read in a
  process of their own (:mod:`scan_digests`), as a decode failure's are. A file
  catalogued ``worker-crashed`` is tried alone from the start by the next scan.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import copy
import dataclasses
import hashlib
import itertools
import multiprocessing
import os
import re
import signal
import stat
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO
from urllib.parse import unquote, urlparse

import numpy as np

from hashmatch.engine import errors, signal_types
from hashmatch.engine.catalog import (
    CATALOG_SUFFIXES,
    DIHEDRAL_MARK,
    FAILED,
    HASHED,
    Catalog,
    FileHashes,
    FileRecord,
    MatchRow,
)
from hashmatch.engine.catalog_coverage import Coverage, covered_by
from hashmatch.engine.media_limits import DEFAULT_FILE_TIMEOUT, LOCAL_MAX_VIDEO_FRAMES
from hashmatch.engine.report_file import write_jsonl_atomically
from hashmatch.engine.report_reader import ReaderWatch, watch_stdout
from hashmatch.engine.scan_digests import digest_apart, digest_bound
from hashmatch.engine.scan_pool_start import (
    WorkersFailedToStart,
    fork_server_ready,
    short_socket_tempdir,
)
from hashmatch.engine.scan_stderr import (
    InProcessCapture,
    WorkersDir,
    capture_stderr,
    captured,
    last_words,
)
from hashmatch.engine.scan_watchdog import STALL_GRACE, Watch
from hashmatch.engine.shown_text import escape_controls
from hashmatch.engine.video_formats import is_video_path

if TYPE_CHECKING:
    from hashmatch.engine.hashing import HashOptions
    from hashmatch.engine.runtime import Engine
    from hashmatch.engine.signal_types import SignalType
    from hashmatch.server.client import HashmatchClient

DEFAULT_TYPES = ("pdq", "md5")
DEFAULT_MAX_BYTES = 256 * 1024 * 1024
# failures that depend only on the file's bytes: an unchanged file is not retried
DETERMINISTIC_FAILURES = frozenset({"empty", "corrupt", "unsupported"})
# ...except this "unsupported": it depends on --types (a video in a pdq-only scan), so a
# later scan with other types must hash the file, not repeat the cached verdict
NO_TYPE_APPLIES = "no requested type applies"
# a file whose worker died with it alone: tried again by every scan (not a verdict on
# its bytes: memory, a stray kill, a decoder since fixed), but alone from the start
CRASHED = "worker-crashed"
# marks in a file's catalogued types: how its PDQ was made (a later scan that asks for
# something else hashes the file again); DIHEDRAL_MARK ("pdq+dihedral", from catalog:
# which rows are re-oriented follows from it) too
FAST_MARK = "pdq+fast"
SHRINK_MARK = "pdq+fast-shrink"


# ----------------------------------------------------------------------------- walking


@dataclass(frozen=True)
class Entry:
    """One candidate file from the walk (or a failure found while walking)."""

    path: str
    size: int | None = None
    mtime_ns: int | None = None
    reason: str | None = None  # set when the walk already knows the file is bad
    error: str | None = None
    ino: int | None = None
    ctime_ns: int | None = None


def walk(
    roots: Iterable[str | Path],
    *,
    follow_symlinks: bool = True,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Iterator[Entry]:
    """Every regular file under ``roots`` (files may be given directly), depth first.

    Symlinks are followed by default (stored media often live behind them); a directory
    reached twice is walked once and reported the second time, instead of being walked
    forever: ``symlink-loop`` when a symlink led to either visit, else
    ``directory-revisited`` (a bind mount of a parent or sibling, or roots that
    overlap: no symlink to remove, the mount or the arguments to fix). Unreadable
    directories are reported, not fatal.

    Streamed: an entry is yielded as soon as it is stat'ed. The walk holds the sorted
    names of the directories on its current path (the price of a deterministic order:
    memory grows with the largest directory, ~70 B a name, not with the tree) and one
    (device, inode) key per directory visited.
    """
    visited: dict[tuple[int, int], bool] = {}  # (dev, ino) -> reached through a symlink
    for root in roots:
        yield from _walk_one(os.path.abspath(os.fspath(root)), follow_symlinks, max_bytes, visited)


def _walk_one(
    root: str, follow: bool, max_bytes: int, visited: dict[tuple[int, int], bool]
) -> Iterator[Entry]:
    # (directory, whether a symlink led to it, its remaining names in sorted order, the
    # names among them that are symlinks): names, not joined paths, wait
    stack: list[tuple[str, bool, Iterator[str], frozenset[str]]] = [
        ("", False, iter((root,)), frozenset((root,) if os.path.islink(root) else ()))
    ]
    while stack:
        parent, parent_link, names, links = stack[-1]
        name = next(names, None)
        if name is None:
            stack.pop()
            continue
        path = os.path.join(parent, name) if parent else name
        via_link = parent_link or name in links
        try:
            st = os.stat(path, follow_symlinks=follow or path == root)
        except OSError as exc:
            yield _stat_failure(path, exc)
            continue
        if stat.S_ISLNK(st.st_mode):  # only when not following: skipped, like `find -P`
            continue
        if stat.S_ISDIR(st.st_mode):
            key = (st.st_dev, st.st_ino)
            if key in visited:
                reason = "symlink-loop" if via_link or visited[key] else "directory-revisited"
                yield Entry(path, reason=reason, error="directory already visited")
                continue
            visited[key] = via_link
            try:
                with os.scandir(path) as it:  # is_symlink: from the entry, no extra stat
                    entries = [(e.name, e.is_symlink()) for e in it]
                children = sorted(n for n, _ in entries)
                child_links = frozenset(n for n, link in entries if link)
                del entries
            except PermissionError as exc:
                yield Entry(path, reason="permission-denied", error=str(exc))
                continue
            except OSError as exc:
                yield Entry(path, reason="io-error", error=str(exc))
                continue
            stack.append((path, via_link, iter(children), child_links))  # sorted: deterministic
        elif stat.S_ISREG(st.st_mode):
            yield _file_entry(path, st, max_bytes)
        else:
            yield Entry(path, reason="not-a-file", error="not a regular file")


def _file_entry(path: str, st: os.stat_result, max_bytes: int) -> Entry:
    ids = {"ino": st.st_ino, "ctime_ns": st.st_ctime_ns}
    if st.st_size == 0:
        return Entry(path, 0, st.st_mtime_ns, "empty", "file is empty (0 bytes)", **ids)
    if st.st_size > max_bytes:
        return Entry(
            path,
            st.st_size,
            st.st_mtime_ns,
            "too-large",
            f"file is {st.st_size} bytes, over the {max_bytes}-byte limit",
            **ids,
        )
    return Entry(path, st.st_size, st.st_mtime_ns, **ids)


def _stat_failure(path: str, exc: OSError) -> Entry:
    import errno

    if exc.errno == errno.ELOOP:
        return Entry(path, reason="symlink-loop", error=str(exc))
    if isinstance(exc, FileNotFoundError):
        reason = "broken-symlink" if os.path.islink(path) else "not-found"
        return Entry(path, reason=reason, error=str(exc))
    if isinstance(exc, PermissionError):
        return Entry(path, reason="permission-denied", error=str(exc))
    return Entry(path, reason="io-error", error=str(exc))


def read_list(
    lines: Iterable[str], *, follow_symlinks: bool = True, max_bytes: int = DEFAULT_MAX_BYTES
) -> Iterator[Entry]:
    """Entries for a list of local paths or ``file://`` URIs, one per line.

    A line is taken as is but for its line ending (``\n`` or ``\r\n``): names may
    begin or end with spaces. Blank (whitespace-only) lines and ``#`` comments are
    skipped; directories are walked; other URI schemes are reported as
    ``unsupported`` (this scanner reads local files only).

    Streamed: each line's entries are yielded as soon as it is read (lines used to be
    gathered 1000 at a time, so a slow producer's first path waited for 999 more). A
    directory reached again anywhere in the list is reported once, as :func:`walk`
    reports it within its roots.
    """
    visited: dict[tuple[int, int], bool] = {}  # as walk's, across the whole list
    for raw in lines:
        line = raw.rstrip("\r\n")
        if not line.strip() or line.startswith("#"):
            continue
        kind = list_line_kind(line)
        if kind == "uri":
            uri = urlparse(line)
            if uri.scheme.lower() != "file" or uri.netloc not in ("", "localhost"):
                yield Entry(line, reason="unsupported", error=f"not a local file URI: {line}")
                continue
            line = unquote(uri.path, errors="surrogateescape")  # %FF: a non-UTF-8 name byte
        if "\0" in line:  # os.stat raised ValueError: the whole scan stopped, a traceback
            yield Entry(os.path.abspath(line), reason="not-found", error=NUL_IN_NAME)
            continue
        yield from _walk_one(os.path.abspath(line), follow_symlinks, max_bytes, visited)


NUL_IN_NAME = (
    "no file name holds a NUL byte (a NUL-separated list, as find -print0 writes? "
    "give one name a line)"
)
# a URI scheme (RFC 3986: a letter, then letters, digits, "+", "-", "."), then "://"
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


def list_line_kind(line: str) -> str:
    """``"uri"`` or ``"path"``: how :func:`read_list` takes one line.

    Why not just ``"://" in line``: a POSIX name may contain ``://`` anywhere
    (``/media/x://y.jpg``, a directory named ``http:``), and such a file was refused
    as "not a local file URI". An absolute path is always a path; a ``file:`` URI is
    also recognised in its one-slash form (``file:/srv/a.jpg``, RFC 8089, what Java's
    ``File.toURI`` writes), which was read as a relative path named ``file:``; any
    other line is a URI only when it begins with a scheme and ``://`` and names no
    existing local file (write ``./http://x`` for a relative path that does not
    exist yet).
    """
    if line.startswith("/"):
        return "path"
    if line[:6].lower() == "file:/":
        return "uri"
    if _URI.match(line) and not os.path.lexists(line):
        return "uri"
    return "path"


# ----------------------------------------------------------------------------- workers


@dataclass
class WorkResult:
    """What a worker sends back for one file: hashes or a failure (small, picklable)."""

    path: str
    size: int | None
    mtime_ns: int | None
    md5: bytes | None = None
    types: tuple[str, ...] = ()
    hashes: list[FileHashes] = field(default_factory=list)
    reason: str | None = None
    error: str | None = None
    unchanged: bool = False  # same MD5 as catalogued (only touched): not hashed again
    fast: int = 0  # the fast_decode level its PDQ was made at (0 = exact)
    ino: int | None = None
    ctime_ns: int | None = None  # None when too recent to trust (see trusted_time)
    #: what the decoders printed to the worker's fd 2 for this file (libjpeg's "Corrupt
    #: JPEG data: ..." warnings about data it decoded past): see scan_stderr
    warnings: tuple[str, ...] = ()


def _decoded(r: WorkResult) -> bool:
    """``r`` was made by decoding its file (a perceptual type), not from bytes alone."""
    return any(not signal_types.get(t).exact for t in r.types)


def types_for(path: str, types: Sequence[str]) -> tuple[str, ...]:
    """The requested types that apply to this file (video types for videos, photo otherwise)."""
    is_video = is_video_path(path)
    out = []
    for name in types:
        content = signal_types.get(name).content
        if content == "bytes" or (content == "video") == is_video:
            out.append(name)
    return tuple(out)


class FileTimedOut(Exception):
    """A file's hash ran past the scan's per-file time budget (``--file-timeout``).

    Why: one pathological video (hours of frames, or a frame rate that makes vPDQ
    decode thousands of frames per sampled one) would otherwise hold a worker for as
    long as it takes; the scan must never stop, or crawl, for one file. Not a verdict on
    the bytes: a later scan with a larger budget tries the file again."""


def time_budget_checkpoint(seconds: float) -> Callable[[], None]:
    """A ``HashOptions.checkpoint`` (called before each video frame is decoded and each
    animation frame is hashed) that raises :class:`FileTimedOut` once ``seconds`` have
    passed since it was made. A still image is one decode, bounded by the pixel limit."""
    deadline = time.monotonic() + seconds

    def check() -> None:
        if time.monotonic() > deadline:
            raise FileTimedOut(f"hashing took longer than the {seconds:g} s per-file limit")

    return check


def with_time_budget(options: HashOptions, seconds: float | None) -> HashOptions:
    """``options`` whose hash of one file stops past ``seconds`` (None or 0: no limit)
    with :class:`FileTimedOut`. Make one per file: the clock starts here."""
    if not seconds:
        return options
    return dataclasses.replace(options, checkpoint=time_budget_checkpoint(seconds))


def failure_reason(exc: BaseException) -> str:
    """A short, stable reason for a failure (the catalog and report group by it)."""
    for cls, reason in (
        (FileTimedOut, "timeout"),
        (errors.EmptyMedia, "empty"),
        (errors.MediaTooLarge, "too-large"),
        (errors.UnsupportedMedia, "unsupported"),
        (errors.CorruptMedia, "corrupt"),
        (PermissionError, "permission-denied"),
        (FileNotFoundError, "not-found"),
        (IsADirectoryError, "not-a-file"),
        (NotAFile, "not-a-file"),
        (MemoryError, "too-large"),
        (errors.MediaError, "corrupt"),
        (OSError, "io-error"),
    ):
        if isinstance(exc, cls):
            return reason
    return "error"


_WORKER_OPTIONS = None


def worker_context() -> multiprocessing.context.BaseContext:
    """The process start method for hashing workers: ``forkserver`` where it exists.

    Plain ``fork`` copies a parent that may already run thread pools (OpenCV's,
    FAISS's OpenMP, gRPC's); the child inherits their locks held and no threads, and
    deadlocks the first time it touches them (seen: ``cv2.setNumThreads`` hanging in a
    forked worker after the parent had decoded images). A fork server is a clean,
    single-threaded process that imports the hashing stack once and forks workers
    from that, so workers start fast and never inherit a held lock. The server also
    calls the PDQ kernels once (``scan_preload``), so forked workers inherit numba's
    loaded code instead of each loading it from the cache (~1 s per worker start).
    """
    methods = multiprocessing.get_all_start_methods()
    if "forkserver" not in methods:
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    short_socket_tempdir()  # its socket's path must fit, whatever $TMPDIR is
    context.set_forkserver_preload(
        [
            "hashmatch.engine.scan_signals",  # first: before the seconds of imports
            "hashmatch.engine.hashing",
            "hashmatch.engine.scan",
            "hashmatch.engine.scan_preload",
        ]
    )
    return context


#: Scan workers keep up to this much freed memory for the next file (see keep_heap).
WORKER_HEAP_BYTES = 64 * 1024 * 1024


def keep_heap(limit: int = WORKER_HEAP_BYTES) -> bool:
    """Let a worker reuse the pages of the previous file's buffers (glibc only).

    Why: each file allocates a fresh decoded image (6 MB at 1080p) and PDQ buffers.
    glibc serves blocks that large with a new mmap and returns them on free, so every
    file pays first-touch page faults (the kernel zeroes each 4 kB page) and an
    munmap: measured ~4 ms of a 1080p file's ~23 ms (cv2.imread of the same file
    drops from 17.4 to 13.1 ms when the heap is kept). Blocks up to ``limit`` come
    from the heap and up to ``limit`` of freed memory stays mapped, so a worker holds
    at most about ``limit`` beyond its live data (64 MB: a 20 MP image's pixels);
    larger images still get their own mmap. Pixels and hashes are unchanged. Only in
    scan workers (processes hashmatch starts), never in a caller's process. Returns
    whether the settings applied.
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(libc.mallopt(m_mmap_threshold, limit) and libc.mallopt(m_trim_threshold, limit))
    except (OSError, AttributeError):  # not glibc (musl, macOS): keep the defaults
        return False


_WORKER_WATCH: tuple[Watch, int] | None = None  # (shared slots, this worker's slot)


def _init_worker(
    options: HashOptions,
    threads: int,
    scanner: int | None = None,
    watch: Watch | None = None,
    stderr_dir: str | None = None,
) -> None:
    global _WORKER_OPTIONS, _WORKER_WATCH
    _WORKER_OPTIONS = options
    if watch is not None:
        _WORKER_WATCH = (watch, watch.attach())
    if scanner is not None:
        _exit_with_parent(scanner)
    keep_heap()
    capture_stderr(stderr_dir)  # libjpeg's warnings go with their file, not over the bar
    # Ctrl-C reaches the whole process group and a closed terminal hangs it up: the scan
    # decides what stops (it kills its workers), not a KeyboardInterrupt traceback here
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        import cv2

        cv2.setNumThreads(threads)
    except Exception:  # OpenCV is optional for hashing; a failure here is harmless
        pass


@contextlib.contextmanager
def _group_signals_blocked() -> Iterator[None]:
    """SIGHUP and SIGINT blocked in this thread meanwhile (one sent then is delivered
    after).

    Why: a closed terminal hangs up every process of its group, and Ctrl-C interrupts
    them all. multiprocessing's resource tracker ignores SIGINT and SIGTERM but not
    SIGHUP: it died, was started again, and printed a KeyError traceback for each
    semaphore the new one had never seen. The fork server ignores SIGINT only once its
    imports are done (``scan_signals``): a Ctrl-C in its first few tenths of a second
    killed it with a KeyboardInterrupt traceback ("Fatal Python error: init_import_site"),
    and the scan ended with "Aborted!", exit 1. A process started while these are
    blocked keeps them blocked (exec keeps the mask), so the tracker and the fork server
    started here (and the workers it forks) outlive both; the scan stops them (they end
    when it does)."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP, signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _exit_with_parent(scanner: int) -> None:
    """Die when the scan process dies (even by SIGKILL), instead of idling forever.

    A pool worker blocks reading its task pipe and never notices on its own that the
    scan is gone. Its direct parent is the fork server (or the scanner itself under
    ``spawn``); the fork server exits when the scanner dies. On Linux the kernel sends
    SIGKILL on parent death (PR_SET_PDEATHSIG); everywhere a daemon thread also
    notices, within half a second, either the re-parenting or the scanner's exit.
    """
    parent = os.getppid()
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        pass

    def alive() -> bool:
        if os.getppid() != parent:
            return False
        try:
            os.kill(scanner, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # exists, owned by someone else: cannot be ours
            return False
        return True

    if not alive():  # the scan died before we got here
        os._exit(1)

    def watch() -> None:
        while alive():
            time.sleep(0.5)
        os._exit(1)

    import threading

    threading.Thread(target=watch, name="hashmatch-parent-watch", daemon=True).start()


def hash_file(
    path: str,
    types: Sequence[str],
    options: HashOptions | None = None,
    known_md5: bytes | None = None,
    time_budget: float | None = None,
) -> WorkResult:
    """Read one file, MD5 it and hash it with every applicable type. Never raises.

    ``known_md5``: the catalogued MD5 of a file whose stat changed but size did not
    (see :func:`same_stat`); if the content is the same, the file is reported
    ``unchanged`` without decoding.
    ``time_budget``: seconds a video (or animation) may take before it fails as
    ``timeout`` (None: no limit).
    """
    from hashmatch.engine.decode import read_source
    from hashmatch.engine.hashing import DEFAULT_OPTIONS, hash_media

    options = with_time_budget(options or _WORKER_OPTIONS or DEFAULT_OPTIONS, time_budget)
    size = mtime = md5 = data = None
    wanted: tuple[str, ...] = ()
    ids: dict[str, int | None] = {}
    try:
        # the stat taken before the read: a write during it moves the ctime past the
        # recorded one, so the next scan checks the file again
        data, st, fh = _read_regular(path, options.limits.max_bytes)
        size, mtime = st.st_size, trusted_time(st.st_mtime_ns)
        ids = {"ino": st.st_ino, "ctime_ns": trusted_time(st.st_ctime_ns)}
        with fh:  # open until hashed: a video is decoded from this very file (_same_file)
            md5 = hashlib.md5(data).digest()
            if known_md5 is not None and md5 == known_md5:
                return WorkResult(path, size, mtime, md5, unchanged=True, **ids)
            wanted = types_for(path, types)
            if not wanted:
                return WorkResult(
                    path, size, mtime, md5, reason="unsupported", error=NO_TYPE_APPLIES, **ids
                )
            is_video = any(signal_types.get(t).content == "video" for t in wanted)
            # the MD5 is already computed above: hash_media would digest the bytes again
            others = [t for t in wanted if t != "md5"]
            if others:
                results = hash_media(_same_file(fh, path) if is_video else data, others, options)
            else:  # md5 alone: still refuse what hash_media refuses (empty, too large)
                read_source(data, options.limits)
                results = []
        by_type = {
            r.signal_type: FileHashes(
                r.signal_type,
                np.ascontiguousarray(r.codes, dtype=np.uint8),
                list(r.qualities),
                list(r.timestamps),
                list(r.orientations),
            )
            for r in results
        }
        by_type["md5"] = digest_hashes("md5", md5)
        hashes = [by_type[t] for t in wanted]
        fast = _fast_level(data, others, options) if not is_video else 0
        return WorkResult(path, size, mtime, md5, wanted, hashes, fast=fast, **ids)
    except Exception as exc:  # one bad file must never stop the scan
        reason = failure_reason(exc)
        # read but not decodable: its md5/sha256 still name these bytes (exact_digests);
        # unread (permission denied, vanished, too many bytes) or empty: nothing to name
        digests = exact_digests(data, wanted, md5) if data else []
        types = tuple(h.signal_type for h in digests)
        return WorkResult(
            path, size, mtime, md5, types, digests, reason=reason, error=str(exc), **ids
        )


def digest_hashes(signal_type: str, digest: bytes) -> FileHashes:
    """A file's one-row hashes of a cryptographic type (``md5``, ``sha256``)."""
    return FileHashes(signal_type, np.frombuffer(digest, np.uint8)[None, :].copy(), [], [])


def exact_digests(data: bytes, types: Sequence[str], md5: bytes) -> list[FileHashes]:
    """The exact digests (md5, sha256) among ``types`` of a file whose decode failed.

    Why: shared MD5/SHA-256 lists exist for known files, and a file no decoder reads
    (corrupt, truncated, HEIC, an unknown container, over the pixel limit, a video past
    its time budget) can still be byte-identical to a listed one. Its digests depend
    on the bytes alone, so the scan matches them and catalogs them (rescans find them)
    while the file is still reported failed for the perceptual types.
    """
    out = []
    for name in types:
        if signal_types.get(name).exact:
            digest = md5 if name == "md5" else hashlib.new(name, data).digest()
            out.append(digest_hashes(name, digest))
    return out


def _fast_level(data: bytes, types: Sequence[str], options: HashOptions) -> int:
    """The fast_decode level hash_media applied: only JPEGs take the luma path (a PNG's
    PDQ is exact whatever was asked, so an exact scan need not hash it again)."""
    from hashmatch.engine.hashing import _luma_is_enough

    if not options.fast_decode or "pdq" not in types or not data.startswith(b"\xff\xd8\xff"):
        return 0
    return (
        options.fast_decode if _luma_is_enough([signal_types.get(t) for t in types], options) else 0
    )


#: A file modified this recently before it was read may change again within the same
#: timestamp tick (coarse clocks: 4 ms on Linux ext4/XFS, 2 s on FAT, a skewed NFS server).
RACY_MTIME_NS = 5_000_000_000


def trusted_time(stamp_ns: int, now_ns: int | None = None) -> int | None:
    """An mtime or ctime, or None when it is too recent to prove a later scan's file
    unchanged.

    Why (git's "racily clean" entries): a write that lands after the read but within the
    same timestamp tick leaves the stat as it was, so the next scan skipped the file and
    kept the hash of the bytes before it, for good. The ctime too: a ``cp -p`` restores
    an old mtime, and a second one within the tick of the read left even the ctime as
    read. A catalogued None makes the next scan read and MD5 the file (no decode if its
    bytes are the same), then record its settled stat. A file written minutes ago is
    never affected.
    """
    now_ns = time.time_ns() if now_ns is None else now_ns
    return None if now_ns - stamp_ns < RACY_MTIME_NS else stamp_ns


#: ScanOptions.check_stat's values: what same_stat compares.
CHECK_STAT_MODES = ("full", "minimal")


def same_stat(rec: FileRecord, entry: Entry, *, minimal: bool = False) -> bool:
    """Whether the walk's stat of ``entry`` proves its bytes are those catalogued in
    ``rec``: same size, mtime, inode number and ctime (none unknown); ``minimal``:
    same size and mtime only.

    Why all four (git's index does the same): size and mtime alone kept a file replaced
    by other bytes of the same size under a restored mtime (``cp -p``, ``rsync -a``,
    ``touch -r``, ``tar x``) skipped for good, with its old hashes. The ctime cannot be
    set by a user and moves on every write, rename-over, chmod or chown; a replacement
    by rename brings another inode. A chmod alone therefore costs a read and an MD5
    (no decode: the same bytes keep their hashes and matches).

    The device is not compared (git does not either): its number changes when a
    network or removable filesystem is mounted again, with every file unchanged. A
    tree copied to another disk gets new inodes and ctimes anyway, so its files are
    each read and MD5-checked once (not decoded).

    ``minimal`` (git's ``core.checkStat=minimal``): on a filesystem that makes inode
    numbers up (CIFS ``noserverino``, sshfs without ``-o use_ino``) every file's inode
    differs on each mount, so every re-run read and MD5'd every file. Size and mtime
    alone miss a same-size replacement under a restored mtime: the price of the opt-in.
    """
    same_content = (
        rec.size == entry.size and rec.mtime_ns is not None and rec.mtime_ns == entry.mtime_ns
    )
    if minimal:
        return same_content
    return (
        same_content
        and rec.ino is not None
        and rec.ino == entry.ino
        and rec.ctime_ns is not None
        and rec.ctime_ns == entry.ctime_ns
    )


class NotAFile(OSError):
    """The path is no longer a regular file (a FIFO, device or directory swapped in
    after the walk): reported as ``not-a-file``, never read."""


def _read_regular(path: str, max_bytes: int) -> tuple[bytes, os.stat_result, BinaryIO]:
    """(bytes, its stat before the read, the open file) of a regular file of at most
    ``max_bytes``; the caller closes the file.

    The walk's stat is stale by the time a worker gets the file: it may since have
    become a FIFO (a plain open() blocks forever waiting for a writer) or a link to
    a device like /dev/zero (read() never ends, until out of memory). So the file is
    opened non-blocking, checked on the open descriptor (no second lookup by name),
    and read for at most one byte past the limit (a file still growing is refused).
    """
    from hashmatch.engine.decode import open_unblocked, read_checked  # the workers': cv2

    fh = open_unblocked(path)  # returned open (see hash_file)
    try:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise NotAFile(f"not a regular file: {file_kind(st.st_mode)}")
        if st.st_size > max_bytes:
            raise errors.MediaTooLarge(
                f"file is {st.st_size} bytes, over the {max_bytes}-byte limit"
            )
        data = read_checked(fh, st.st_size, max_bytes)
        if len(data) > max_bytes:
            raise errors.MediaTooLarge(f"file grew past the {max_bytes}-byte limit while read")
    except BaseException:
        fh.close()
        raise
    return data, st, fh


def _same_file(fh: BinaryIO, path: str) -> str:
    """A name FFmpeg opens the already-open, already-checked ``fh`` by (Linux's
    ``/proc/self/fd/N``), else ``path``.

    Why: FFmpeg opens a video by name, after the worker read and MD5'd it; a file
    replaced in between was hashed as another file than its MD5 says, and one
    swapped for a FIFO blocked FFmpeg's open() forever (before any ``--file-timeout``
    checkpoint), holding the scan."""
    proc = f"/proc/self/fd/{fh.fileno()}"
    return proc if os.path.exists(proc) else path


def file_kind(mode: int) -> str:
    """What a non-regular file is, for a message (``"a FIFO"``, ``"a directory"``...)."""
    for test, name in (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "special file"


def _hash_chunk(
    paths: Sequence[str],
    types: Sequence[str],
    known: Sequence[bytes | None],
    time_budget: float | None = None,
) -> list[WorkResult]:
    out = []
    for p, k in zip(paths, known, strict=True):
        if _WORKER_WATCH is not None:  # the parent kills a worker stuck on one file
            _WORKER_WATCH[0].begin(_WORKER_WATCH[1])
        try:
            result = hash_file(p, types, known_md5=k, time_budget=time_budget)
            result.warnings = captured()
            out.append(result)
        finally:
            if _WORKER_WATCH is not None:
                _WORKER_WATCH[0].end(_WORKER_WATCH[1])
    return out


# ----------------------------------------------------------------------------- matching


@dataclass(frozen=True)
class Hit:
    """One match of query row ``row`` (independent of where the matching ran)."""

    row: int
    signal_id: int
    signal_type: str
    signal_hex: str
    distance: int
    list_name: str
    labels: tuple[str, ...]
    external_id: str | None
    query_match_pct: float | None = None
    target_match_pct: float | None = None


def threshold_for(signal_type: str, threshold: int | None) -> int | None:
    """One ``--threshold`` for a multi-type scan: it applies to the perceptual types;
    cryptographic ones (md5, sha256) only ever match exactly."""
    return signal_types.get(signal_type).shared_threshold(threshold, field="--threshold")


class Matcher:
    """Where lookups go: the local engine or a server. Batch-first.

    ``match`` takes one row per query, except for ``vpdq`` where ``codes`` are the
    frames of ONE video and every hit has ``row == 0`` (the engine's vPDQ contract).
    """

    #: The hash lists lookups are limited to (None or empty: every list).
    lists: list[str] | None = None
    #: The scan's ``--threshold`` (None: each type's default); see :func:`threshold_for`.
    threshold: int | None = None

    def match(
        self, signal_type: str, codes: np.ndarray, qualities: Sequence[int | None]
    ) -> list[Hit]:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def widened(self) -> Matcher:
        """This matcher over every list it can see, sharing its engine or client
        (close only the original)."""
        wide = copy.copy(self)
        wide.lists = []
        return wide


class LocalMatcher(Matcher):
    """Lookups against a local data dir through :class:`hashmatch.engine.runtime.Engine`."""

    def __init__(
        self, engine: Engine, *, threshold: int | None = None, lists: Iterable[str] | None = None
    ):
        self.engine = engine
        self.threshold = threshold
        self.lists = list(lists) if lists else None

    @classmethod
    def open(cls, data_dir: str | Path, **kwargs) -> LocalMatcher:
        from hashmatch.engine.runtime import Engine

        return cls(Engine.open(data_dir, create=False, eager=True), **kwargs)

    def match(
        self, signal_type: str, codes: np.ndarray, qualities: Sequence[int | None]
    ) -> list[Hit]:
        kwargs = {}
        if signal_type in ("pdq", "vpdq") and any(q is not None for q in qualities):
            kwargs["qualities"] = list(qualities)
        per_row = self.engine.match(
            signal_type,
            codes,
            threshold=threshold_for(signal_type, self.threshold),
            lists=self.lists,
            **kwargs,
        )
        video = signal_type == "vpdq"
        return [
            Hit(
                row,
                m.signal_id,
                m.signal_type,
                m.hash_hex,
                int(m.distance),
                m.list_name,
                tuple(m.labels),
                m.external_id,
                m.query_match_pct if video else None,
                m.target_match_pct if video else None,
            )
            for row, matches in enumerate(per_row)
            for m in matches
        ]

    def close(self) -> None:
        self.engine.close()


class RemoteMatcher(Matcher):
    """Lookups against a running server through :class:`hashmatch.server.client.HashmatchClient`."""

    def __init__(
        self,
        client: HashmatchClient,
        *,
        threshold: int | None = None,
        lists: Iterable[str] | None = None,
        batch: int = 1000,
    ):
        self.client = client
        self.threshold = threshold
        self.lists = list(lists) if lists else []
        self.batch = batch

    def match(
        self, signal_type: str, codes: np.ndarray, qualities: Sequence[int | None]
    ) -> list[Hit]:
        from hashmatch.v1 import common_pb2

        if signal_type == "vpdq":  # one video = one VideoQuery of its frames
            from hashmatch.v1 import matcher_pb2

            video = matcher_pb2.VideoQuery(
                signal_type="vpdq",
                frames=signal_types.get("vpdq").format_many(codes),
                qualities=[int(q) for q in qualities]
                if all(q is not None for q in qualities)
                else [],
            )
            reply = self.client.match(
                (), videos=[video], threshold=self.threshold, lists=self.lists
            )
            return [
                Hit(
                    0,
                    int(m.signal_id),
                    m.signal_type,
                    m.hash_hex,
                    int(m.distance),
                    m.list_name,
                    tuple(m.labels),
                    m.external_id or None,
                    float(m.query_match_pct),
                    float(m.target_match_pct),
                )
                for result in reply.results
                for m in result.matches
            ]

        hits: list[Hit] = []
        for start in range(0, len(codes), self.batch):
            values = []
            for i in range(start, min(start + self.batch, len(codes))):
                value = common_pb2.HashValue(signal_type=signal_type, raw=codes[i].tobytes())
                if qualities and qualities[i] is not None:
                    value.quality = int(qualities[i])
                values.append(value)
            reply = self.client.match(
                values, threshold=threshold_for(signal_type, self.threshold), lists=self.lists
            )
            for result in reply.results:
                for m in result.matches:
                    vpdq = m.signal_type == "vpdq"
                    hits.append(
                        Hit(
                            start + int(result.index),
                            int(m.signal_id),
                            m.signal_type,
                            m.hash_hex,
                            int(m.distance),
                            m.list_name,
                            tuple(m.labels),
                            m.external_id or None,
                            float(m.query_match_pct) if vpdq else None,
                            float(m.target_match_pct) if vpdq else None,
                        )
                    )
        return hits

    def close(self) -> None:
        self.client.close()


def match_files(
    matcher: Matcher, files: Sequence[tuple[int, list[FileHashes]]]
) -> dict[int, list[MatchRow]]:
    """Match many files' hashes with one lookup per type; nearest hit per (file, signal).

    A file's rows of one type are its dihedral variants (PDQ) or frames (vPDQ): a signal
    matched by several rows is reported once, at its smallest distance, with the row as
    ``variant``. A re-oriented row (``FileHashes.orientations``) matches only within the
    type's default threshold, as ``Match`` with media holds it (``keeps_row_hit``).
    """
    # imported here: it imports the store, which a scan's worker processes never use
    from hashmatch.engine.matcher import keeps_row_hit

    out: dict[int, list[MatchRow]] = {file_id: [] for file_id, _ in files}
    by_type: dict[str, list[tuple[int, FileHashes]]] = {}
    for file_id, hashes in files:
        for h in hashes:
            by_type.setdefault(h.signal_type, []).append((file_id, h))
    for stype, items in by_type.items():
        st = signal_types.get(stype)
        owners: list[tuple[int, int, FileHashes]] = []  # (file_id, row within file, hashes)
        blocks, qualities = [], []
        if stype == "vpdq":  # one query = one whole video (the engine aggregates its frames)
            for file_id, h in items:
                for hit in matcher.match(stype, h.codes, h.qualities):
                    out[file_id].append(_row(file_id, st, h, 0, hit))
            continue
        for file_id, h in items:
            for r in range(h.codes.shape[0]):
                owners.append((file_id, r, h))
                qualities.append(h.qualities[r] if r < len(h.qualities) else None)
            blocks.append(h.codes)
        if not blocks:
            continue
        codes = np.ascontiguousarray(np.concatenate(blocks), dtype=np.uint8)
        threshold = threshold_for(stype, matcher.threshold)
        best: dict[tuple[int, int], MatchRow] = {}
        for hit in matcher.match(stype, codes, qualities):
            file_id, variant, h = owners[hit.row]
            turned = h.orientations[variant] if h.orientations else 0
            if not keeps_row_hit(turned, hit.distance, st.default_threshold, threshold):
                continue  # a re-oriented row beyond the type's default threshold
            key = (file_id, hit.signal_id)
            old = best.get(key)
            if old is not None and old.distance <= hit.distance:
                continue
            best[key] = _row(file_id, st, h, variant, hit)
        for row in best.values():
            out[row.file_id].append(row)
    return out


def file_hash_hex(st: SignalType, codes: np.ndarray, row: int = 0) -> str:
    """The hash a report shows for a file: the matching row, or for a video the
    SHA-256 of its frame codes (how the store names a video signal too)."""
    if st.name == "vpdq":
        from hashmatch.engine.store import video_key

        return video_key(codes).hex()
    return st.format(codes[row])


def _row(file_id: int, st: SignalType, h: FileHashes, variant: int, hit: Hit) -> MatchRow:
    return MatchRow(
        file_id=file_id,
        signal_type=st.name,
        signal_id=hit.signal_id,
        hash_hex=file_hash_hex(st, h.codes, variant),
        signal_hex=hit.signal_hex,
        distance=hit.distance,
        list_name=hit.list_name,
        labels=hit.labels,
        external_id=hit.external_id,
        variant=variant if st.name == "pdq" else 0,
        query_match_pct=hit.query_match_pct,
        target_match_pct=hit.target_match_pct,
    )


# ----------------------------------------------------------------------------- progress


class Progress:
    """A tqdm bar (rate, ETA) on a terminal; a plain log line every ``every`` s otherwise.

    The total is not known up front (the walk is streamed, not listed first): it comes
    from ``counter`` (a :class:`TreeCounter` racing ahead of the scan, as ``rsync``'s
    incremental recursion or ``pv -s $(du ...)`` would) or, without one, when the walk
    ends. Until then the bar shows the files done, the rate and how many were found so
    far ("5000+"), and no ETA.
    """

    def __init__(
        self,
        total: int | None,
        *,
        enabled: bool | None = None,
        every: float = 10.0,
        counter: TreeCounter | None = None,
    ):
        self.total = total
        self.counter = counter
        self.seen = 0  # entries the walk has produced so far (a lower bound of the total)
        self.done = 0
        self.failed = 0
        self.matched = 0
        self.every = every
        self.started = time.monotonic()
        self.last_log = self.started
        tty = sys.stderr.isatty() if enabled is None else enabled
        self.bar = None
        self.plain = enabled is None and not tty
        if tty:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="file", dynamic_ncols=True, smoothing=0.1)

    def found(self, seen: int) -> None:
        """The walk has produced ``seen`` entries."""
        self.seen = seen

    def walked(self, seen: int) -> None:
        """The walk is over: ``seen`` is the exact total."""
        self.seen = self.total = seen

    def known_total(self) -> int | None:
        """The total, once the walk or the counter has finished (else None)."""
        if self.total is None and self.counter is not None and self.counter.done:
            self.total = max(self.counter.count, self.seen)
        return self.total

    def update(self, n: int, *, failed: int = 0, matched: int = 0) -> None:
        self.done += n
        self.failed += failed
        self.matched += matched
        total = self.known_total()
        if self.bar is not None:
            if total is not None and self.bar.total != total:
                self.bar.total = total
            self.bar.update(n)
            postfix = {"failed": self.failed, "matched": self.matched}
            if total is None:
                postfix["found"] = f"{self._found()}+"
            self.bar.set_postfix(postfix, refresh=False)
        elif self.plain:
            now = time.monotonic()
            if now - self.last_log >= self.every:
                self.last_log = now
                print(self.line(), file=sys.stderr, flush=True)

    def _found(self) -> int:
        return max(self.seen, self.done, self.counter.count if self.counter else 0)

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        rate = self.done / elapsed
        total = self.known_total()
        if total is None:
            return (
                f"scan: {self.done}/{self._found()}+ files (still counting), "
                f"{rate:.1f} files/s, ETA ?, failed {self.failed}, matched {self.matched}"
            )
        left = (total - self.done) / rate if rate > 0 else float("inf")
        pct = 100.0 * self.done / total if total else 100.0
        eta = "?" if left == float("inf") else _duration(left)
        return (
            f"scan: {self.done}/{total} files ({pct:.1f}%), {rate:.1f} files/s, "
            f"ETA {eta}, failed {self.failed}, matched {self.matched}"
        )

    def note(self, line: str) -> None:
        """``line`` on stderr, above the bar when there is one."""
        if self.bar is not None:
            self.bar.write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class TreeCounter:
    """Counts, in a background thread, the entries :func:`walk` will yield for ``roots``:
    the progress bar's total, without listing the tree first.

    Why a second pass and not a list: the list cost ~350 B a file in the scanning
    process (3.5 GB at 10M files). The count holds only the directories still to read
    and their (device, inode) keys, and reads directories, not files: ``DirEntry``'s
    type comes with the listing (no stat per file; one per directory and per symlink
    followed), so it finishes long before the hashing does. It mirrors the walk's rules
    (symlinks, loops, unreadable directories, the catalog's own files) but not its
    de-duplication of overlapping roots; the total becomes exact when the walk ends.
    """

    def __init__(
        self,
        roots: Iterable[str | Path],
        *,
        follow_symlinks: bool = True,
        skip: tuple[set[str], tuple[str, ...]] = (set(), ()),
    ):
        import threading

        self.count = 0
        self.done = False
        self._roots = [os.path.abspath(os.fspath(r)) for r in roots]
        self._follow = follow_symlinks
        self._skip_files, self._skip_dirs = skip
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hashmatch-count", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def _run(self) -> None:
        visited: set[tuple[int, int]] = set()
        with contextlib.suppress(Exception):  # a count is only ever a progress hint
            for root in self._roots:
                try:
                    st = os.stat(root)
                except OSError:
                    self.count += 1
                    continue
                if stat.S_ISDIR(st.st_mode):
                    self._count_tree(root, st, visited)
                elif root not in self._skip_files:
                    self.count += 1
            self.done = not self._stop.is_set()

    def _count_tree(self, root: str, st: os.stat_result, visited: set[tuple[int, int]]) -> None:
        dirs = [(root, st)]
        while dirs and not self._stop.is_set():
            path, st = dirs.pop()
            if (path + os.sep).startswith(self._skip_dirs):
                continue
            key = (st.st_dev, st.st_ino)
            if key in visited:
                self.count += 1  # the walk's symlink-loop entry
                continue
            visited.add(key)
            try:
                with os.scandir(path) as it:
                    for e in it:
                        self._count_entry(e, dirs)
            except OSError:
                self.count += 1  # the walk's permission-denied / io-error entry

    def _count_entry(self, e: os.DirEntry, dirs: list[tuple[str, os.stat_result]]) -> None:
        try:
            if not self._follow and e.is_symlink():
                return  # the walk skips links when not following
            if e.is_dir(follow_symlinks=self._follow):
                dirs.append((e.path, e.stat(follow_symlinks=self._follow)))
                return
        except OSError:  # a link loop, a vanished entry: the walk reports it
            pass
        if e.path not in self._skip_files:
            self.count += 1


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


# ----------------------------------------------------------------------------- the scan


@dataclass
class ScanSummary:
    seen: int = 0
    hashed: int = 0
    skipped_unchanged: int = 0
    # of skipped_unchanged: files whose stat changed (touched, chmod, moved, a catalog
    # from before inodes were kept) that were read and MD5'd and found the same bytes
    # (not decoded); also of failed: known-bad files so found, whose failure stands
    rechecked: int = 0
    failed: int = 0
    failed_by_reason: dict[str, int] = field(default_factory=dict)
    # of failed: files whose decode failed but whose bytes were read, so their exact
    # digests (the md5/sha256 among --types) were computed (or kept) and matched all
    # the same (exact_digests); their matches are in matched_files and matches
    failed_digested: int = 0
    matched_files: int = 0
    matches: int = 0
    # video files seen while no video type was asked for: only their bytes (md5/sha256)
    # were hashed, so an edited copy of a listed video cannot match (the CLI says so)
    videos_without_vpdq: int = 0
    # files whose decoders printed warnings (libjpeg's "Corrupt JPEG data: ..."): they
    # decoded past damage, so their pixels (and hashes) may not be the intended picture;
    # the report has a "warning" record for each: of the files this run saw, as their
    # last decode left them (this run's, or an earlier run's kept in the catalog)
    decoded_with_warnings: int = 0
    #: of those, the files past the first MAX_WARNED_LISTED: counted, no "warning" record
    #: (only in the dict when not 0)
    warnings_not_listed: int = 0
    elapsed_s: float = 0.0
    files_per_s: float = 0.0
    hashed_per_s: float = 0.0
    run_id: int = 0
    report: str | None = None
    #: True when a stop request ended the run early (only then in the dict)
    interrupted: bool = False
    #: the first few of those videos, for the CLI's note to name (not in the report)
    videos_without_vpdq_named: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        d = {k: v for k, v in self.__dict__.items() if k != "videos_without_vpdq_named"}
        if not self.interrupted:
            del d["interrupted"]
        if not self.warnings_not_listed:
            del d["warnings_not_listed"]
        return d


#: how many of the videos a scan without a video type saw its summary names
VIDEOS_WITHOUT_VPDQ_NAMED = 5
#: files with decoder warnings listed in the report ("warning" records): a store of
#: millions of damaged JPEGs has the rest counted (decoded_with_warnings stays exact,
#: warnings_not_listed says how many)
MAX_WARNED_LISTED = 10_000
#: crashed files named on stderr with their worker's last words, then a count
CRASHES_SHOWN = 5
#: characters of a crashed worker's last words on that stderr line (all in the report)
CRASH_WORDS_SHOWN = 300


@dataclass
class ScanOptions:
    types: tuple[str, ...] = DEFAULT_TYPES
    workers: int | None = None  # None = os.cpu_count(); 0 = hash in this process
    batch_size: int = 256  # files per match + commit batch
    commit_every: float = 1.0  # seconds: commit at least this often
    chunk: int = 4  # files per worker task
    follow_symlinks: bool = True
    max_bytes: int = DEFAULT_MAX_BYTES
    # vPDQ sampled frames per video. Higher than DecodeLimits' 10_000 (2 h 46 min at one
    # hash a second), which guards the server against uploads: a scan reads the
    # platform's own store, where films and stream recordings run longer.
    max_video_frames: int = LOCAL_MAX_VIDEO_FRAMES
    # Seconds one video (or animation) may take to hash before it fails as "timeout"
    # (None: no limit). An hour per file: ordinary uploads take seconds; a recording
    # many hours long may need more (it fails as "timeout", which the next scan retries).
    file_timeout: float | None = DEFAULT_FILE_TIMEOUT
    # Seconds past file_timeout a worker may stay on one file (a read that does not
    # return, a long still-image decode) before the scan kills it: scan_watchdog.
    stall_grace: float = STALL_GRACE
    # Seconds the exact digests of a file whose worker died (worker-crashed, a killed
    # worker's timeout) may take to read, in a process of their own: scan_digests
    # (None: by the file's size, scan_digests.digest_bound: 5 s + 4 MB/s, at most 60 s).
    digest_timeout: float | None = None
    dihedral: bool = False
    # What proves a file unchanged since it was catalogued (same_stat): "full" = size,
    # mtime, inode and ctime (git's default); "minimal" = size and mtime only (git's
    # core.checkStat=minimal), for filesystems that make inode numbers up (CIFS
    # noserverino, sshfs without use_ino) or whose ctimes move on their own
    check_stat: str = "full"
    # PDQ from JPEG luma (1), also shrunk in the DCT domain (2): HashOptions.fast_decode.
    # Faster, not pdqhash-identical; files hashed so are re-hashed by an exact scan.
    fast_decode: int = 0
    progress: bool | None = None  # None = bar on a terminal, log lines otherwise
    log_every: float = 10.0
    # Set (by a signal handler, another thread) to stop the scan: what is hashed is
    # committed, the workers are killed, the run is recorded as interrupted and
    # ScanInterrupted raised; the same scan run again resumes (see Scanner.run).
    stop: threading.Event | None = field(default=None, compare=False, repr=False)


class Scanner:
    """One scan run over a catalog and a matcher (see the module docstring)."""

    def __init__(self, catalog: Catalog, matcher: Matcher | None, options: ScanOptions):
        self.catalog = catalog
        self.matcher = matcher
        self.options = options
        if options.check_stat not in CHECK_STAT_MODES:
            raise errors.InvalidInput(
                f"check_stat must be one of {', '.join(CHECK_STAT_MODES)}", field="check_stat"
            )
        if not options.types:  # every file would fail "no requested type applies"
            raise errors.InvalidInput("give at least one signal type", field="types")
        for name in options.types:
            signal_types.get(name, field="types")
        from hashmatch.engine.decode import DecodeLimits
        from hashmatch.engine.hashing import HashOptions

        self.hash_options = HashOptions(
            dihedral=options.dihedral,
            dihedral_exact=True,  # each orientation hashed: flips land 0-2 bits away
            fast_decode=options.fast_decode,
            limits=DecodeLimits(
                max_bytes=options.max_bytes, max_video_frames=options.max_video_frames
            ),
        )
        self.summary = ScanSummary()
        self._reasons: Counter[str] = Counter()
        self._pending: list[WorkResult] = []
        self._pending_skipped: list[int] = []
        self._last_commit = time.monotonic()
        self._broken = False
        self._lost: list[Entry] = []  # files of tasks a dead worker took down, to retry
        self._pool: cf.ProcessPoolExecutor | None = None
        self._watch: Watch | None = None
        # the workers' fd 2 files, by pid (scan_stderr): a dead worker's last words
        self._stderr_dir: str | None = None
        self._workers_dir: WorkersDir | None = None  # its lock: removed if the scan is killed
        self._here_capture: InProcessCapture | None = None  # --workers 0's fd 2 catcher
        self._stall_killed = False  # the last pool break was the watchdog's kill
        self._known: dict[str, tuple[int, bytes]] = {}  # path -> (file id, md5) to compare
        # path -> catalogued failure reason, of the files skipped (or MD5-rechecked) on a
        # known-bad verdict: failed in the summary, their digests re-matched
        self._failed_verdict: dict[str, str] = {}
        # paths taken by this run and not yet committed (at most a batch plus the tasks
        # in flight): with the catalog's seen_run, what makes a path seen twice a duplicate
        self._open: set[str] = set()
        self._pending_skipped_paths: list[str] = []
        self._crashes_said = 0  # worker-crashed files, for the stderr lines' bound
        # a dead worker's last words when its pool broke with tasks of several files in
        # flight (which file did it is unknown yet), kept by path for the retry alone:
        # read at the second crash only, they were lost when that one left none
        self._break_words = ""
        self._lost_words: dict[str, str] = {}
        self._inflight: dict[cf.Future, list[Entry]] = {}  # worker tasks -> their files
        self._chunk: list[Entry] = []  # files gathered for the next worker task
        # the report's reader, when it is stdout's pipe: its leaving stops the scan
        self._reader: ReaderWatch | None = None

    # -- public -------------------------------------------------------------------------

    def run(
        self,
        entries: Iterable[Entry],
        *,
        report: str | Path | None = None,
        counter: TreeCounter | None = None,
    ) -> ScanSummary:
        """Scan ``entries`` (streamed: consumed as they are hashed, in blocks of
        :data:`BLOCK`). ``counter``: a :class:`TreeCounter` over the same roots, for the
        progress bar's total."""
        return self.run_blocks(fixed_blocks(entries), report=report, counter=counter)

    def run_blocks(
        self,
        blocks: Iterable[list[Entry]],
        *,
        report: str | Path | None = None,
        counter: TreeCounter | None = None,
    ) -> ScanSummary:
        """:meth:`run` over ``blocks`` of entries (one catalog lookup each): a walk's
        fixed blocks, or a list's blocks of what was ready (``prefetch``'s ``batch``),
        so a slow producer's path is hashed as soon as it arrives."""
        opts = self.options
        started = time.monotonic()
        self.run_id = self.catalog.start_run(
            "scan",
            {
                "types": list(opts.types),
                "dihedral": opts.dihedral,
                "fast_decode": opts.fast_decode,
                "check_stat": opts.check_stat,
            },
        )
        self.summary.run_id = self.run_id
        if report is not None and str(report) == "-":
            self._reader = watch_stdout()
        self.progress = Progress(None, enabled=opts.progress, every=opts.log_every, counter=counter)
        try:
            try:
                self._process(blocks)
            except ScanInterrupted:
                self.summary.interrupted = True
            except WorkersFailedToStart:
                self._flush()  # what earlier workers returned is kept
                raise
            self._flush()  # what the workers returned is kept, even when stopped
        finally:
            self.progress.close()
            if self._crashes_said > CRASHES_SHOWN:
                self.progress.note(
                    f"scan: {self._crashes_said - CRASHES_SHOWN} more file(s) crashed their"
                    " worker (their last words: the report's worker-crashed errors)"
                )
            if counter is not None:
                counter.stop()
        s = self.summary
        s.elapsed_s = round(time.monotonic() - started, 3)
        s.files_per_s = round(s.seen / s.elapsed_s, 2) if s.elapsed_s else 0.0
        s.hashed_per_s = round(s.hashed / s.elapsed_s, 2) if s.elapsed_s else 0.0
        s.failed_by_reason = dict(sorted(self._reasons.items()))
        s.failed = sum(self._reasons.values())
        s.decoded_with_warnings = self.catalog.count_warnings_for_run(self.run_id)
        s.warnings_not_listed = max(0, s.decoded_with_warnings - MAX_WARNED_LISTED)
        if s.interrupted:  # no report: one of part of the files would look complete
            self._count_matches()
            self.catalog.finish_run(self.run_id, s.as_dict())
            if self._reader_gone():  # no signal: the report's reader left (report_reader)
                raise ReportReaderGone(s)
            raise ScanInterrupted(s)
        if report is not None:
            s.report = str(report)
            try:
                write_scan_report(
                    self.catalog, self.run_id, report, s, types=opts.types,
                    lists=self._reported_lists(),
                )  # fmt: skip
            except BrokenPipeError as exc:  # `--out - | head`: every file is committed
                self._count_matches()  # (the report's generator counted only what it wrote)
                self.catalog.finish_run(self.run_id, s.as_dict())
                raise ReportReaderGone(s) from exc
        else:
            self._count_matches()
        self.catalog.finish_run(self.run_id, s.as_dict())
        return s

    # -- internals ----------------------------------------------------------------------

    def _own_files_skipped(self, entries: Iterable[Entry]) -> Iterator[Entry]:
        """Never the catalog's own files (it may live in the tree)."""
        own_files, own_dirs = _catalog_own_paths(self.catalog.path)
        for e in entries:
            if e.path not in own_files and not e.path.startswith(own_dirs):
                yield e

    def _new_in_block(self, block: list[Entry], known: dict[str, FileRecord]) -> Iterator[Entry]:
        """Each path once: a path this run already took (committed with its seen_run, or
        still open) or took earlier in ``block`` is dropped (a file given twice, a root
        inside another, a list naming a file twice). Decided against the state when
        ``known`` was read: a path committed since is in ``known`` as it was then."""
        taken = {
            e.path
            for e in block
            if e.path in self._open
            or ((rec := known.get(e.path)) is not None and rec.seen_run == self.run_id)
        }
        for e in block:
            if e.path not in taken:
                taken.add(e.path)
                self._open.add(e.path)
                yield e

    def _submit_chunk(self) -> None:
        """Hand the files gathered for one worker task to the pool (if any)."""
        if self._chunk:
            self._submit(self._inflight, self._chunk)
            self._chunk = []

    def input_idle(self) -> None:
        """Called while the scan waits for its input (a ``--from-list`` producer, as
        :func:`hashmatch.engine.store.prefetch`'s ``idle``): the files in hand are
        hashed and committed meanwhile, instead of waiting for the next path; a stop
        request ends the wait."""
        self._check_stop()
        if self._pool is not None:
            self._submit_chunk()  # fewer than a task's worth: no more are coming yet
            self._collect(self._inflight, block=False)
            self._isolate_crashes(self._inflight)
            self._kill_stalled()
        self._flush_if_due()

    def _process(self, blocks: Iterable[list[Entry]]) -> None:
        opts = self.options
        workers = (os.cpu_count() or 1) if opts.workers is None else opts.workers
        self._workers = workers
        limit = max(2, workers * 3)
        no_video_type = not any(signal_types.get(t).content == "video" for t in opts.types)
        inflight = self._inflight
        try:
            # inside: a stop while the fork server loads ends here, and the workers'
            # directory it has made (and locked) is removed below all the same
            self._pool = self._new_pool() if workers > 0 else None
            pool = self._pool
            for block in blocks:
                block = list(self._own_files_skipped(block))
                known = self.catalog.lookup([e.path for e in block])
                for e in self._new_in_block(block, known):
                    self._check_stop()
                    self.summary.seen += 1
                    self.progress.found(self.summary.seen)
                    if no_video_type and is_video_path(e.path):
                        self._video_without_vpdq(e.path)
                    if e.reason is not None:
                        self._pending.append(_walk_failure(e))
                        continue
                    rec = known.get(e.path)
                    # a known-bad file's verdict (and digests) hold while its bytes do
                    verdict = self._verdict_stands(rec, e)
                    reusable = verdict or self._hashes_reusable(rec, e)
                    if reusable and self._same_stat(rec, e):
                        self._pending_skipped.append(rec.id)
                        self._pending_skipped_paths.append(e.path)
                        if verdict:  # counted as failed (it is one in the report) in _flush
                            self._failed_verdict[e.path] = rec.reason
                        else:
                            self.summary.skipped_unchanged += 1
                        continue
                    if pool is not None and rec is not None and rec.reason == CRASHED:
                        # it killed its worker last time: tried alone at once, so a
                        # crash again takes no other file's task with it, and is one
                        # crash, not two (in a task, then alone)
                        self._lost.append(e)
                        self._isolate_crashes(inflight)
                        self._flush_if_due()
                        continue
                    if reusable and rec.md5 is not None:
                        # touched (new stat, same size): compare MD5 before decoding
                        self._known[e.path] = (rec.id, rec.md5)
                        if verdict:
                            self._failed_verdict[e.path] = rec.reason
                    if pool is None:
                        self._pending.append(self._hash_here(e))
                        self._flush_if_due()
                        continue
                    self._chunk.append(e)
                    if len(self._chunk) >= opts.chunk:
                        self._submit_chunk()
                    while len(inflight) >= limit:
                        self._collect(inflight, block=True)
                    self._collect(inflight, block=False)
                    self._isolate_crashes(inflight)
                    self._flush_if_due()
                self._flush_if_due()
            self.progress.walked(self.summary.seen)  # the total is exact from here on
            if pool is not None:
                self._submit_chunk()
            while inflight:
                self._collect(inflight, block=True)
                self._isolate_crashes(inflight)
                self._flush_if_due()
        finally:
            if self._pool is not None:
                if self._stopping():  # files in flight may take long: not waited for
                    self._kill_workers()
                self._pool.shutdown(wait=True, cancel_futures=True)
            if self._workers_dir is not None:
                self._workers_dir.remove()
            if self._here_capture is not None:
                self._here_capture.close()
                self._here_capture = None

    def _hash_here(self, e: Entry) -> WorkResult:
        """``--workers 0``: hash ``e`` in this process, its decoders' fd 2 output caught
        as a worker's is (scan_stderr.InProcessCapture), else it went to the terminal."""
        opts = self.options
        md5 = self._known.get(e.path, (0, None))[1]
        if self._here_capture is None:
            with contextlib.suppress(OSError):  # no anonymous file: printed, as before
                self._here_capture = InProcessCapture()
        if self._here_capture is None:
            return hash_file(
                e.path, opts.types, self.hash_options, known_md5=md5, time_budget=opts.file_timeout
            )
        with self._here_capture.around() as warned:
            result = hash_file(
                e.path, opts.types, self.hash_options, known_md5=md5, time_budget=opts.file_timeout
            )
        result.warnings = tuple(warned)
        return result

    def _stopping(self) -> bool:
        stop = self.options.stop
        return (stop is not None and stop.is_set()) or self._reader_gone()

    def _reader_gone(self) -> bool:
        """The report goes to stdout and its reader left: nobody can read it."""
        return self._reader is not None and self._reader.gone()

    def _check_stop(self) -> None:
        if self._stopping():
            raise ScanInterrupted(self.summary)

    def _kill_workers(self) -> None:
        """SIGKILL this scan's workers (their pids are in the watch's shared slots): a
        stopped scan drops the files in flight instead of waiting for them."""
        if self._watch is None:
            return
        for pid in self._watch.pids:
            if pid:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)

    def _new_pool(self) -> cf.ProcessPoolExecutor:
        threads = max(1, (os.cpu_count() or 1) // self._workers)
        context = worker_context()
        with _group_signals_blocked():  # the helpers started here inherit the mask
            from multiprocessing import resource_tracker

            resource_tracker.ensure_running()
            # again: starting the tracker unblocks SIGINT and SIGTERM in this thread
            with _group_signals_blocked():
                if context.get_start_method() == "forkserver":
                    from multiprocessing import forkserver

                    forkserver.ensure_running()
                self._watch = Watch(context, self._workers)
        if self._workers_dir is None:
            self._workers_dir = WorkersDir()
            self._stderr_dir = self._workers_dir.path
        # the first worker waits for the fork server's seconds of imports, in a read a
        # stop signal does not end: waited for here, where a stop is seen at once
        if not fork_server_ready(context, self.options.stop):
            raise ScanInterrupted(self.summary)
        return cf.ProcessPoolExecutor(
            self._workers,
            mp_context=context,
            initializer=_init_worker,
            initargs=(self.hash_options, threads, os.getpid(), self._watch, self._stderr_dir),
        )

    def _stall_limit(self) -> float | None:
        """Seconds one file may hold a worker before it is killed (None: never)."""
        t = self.options.file_timeout
        return t + self.options.stall_grace if t else None

    def _kill_stalled(self) -> None:
        """Kill the workers on one file for longer than the stall limit (scan_watchdog)."""
        limit = self._stall_limit()
        if limit is not None and self._watch is not None and self._watch.kill_stalled(limit):
            self._stall_killed = True

    def _wait(self, futures: list[cf.Future]) -> set[cf.Future]:
        """Block until one of ``futures`` is done, killing stalled workers meanwhile (a
        kill breaks the pool: every future then completes, with BrokenProcessPool)."""
        limit = self._stall_limit()
        poll = None if limit is None or self._watch is None else min(1.0, limit / 4)
        if self.options.stop is not None or self._reader is not None:  # never one long
            poll = min(poll or STOP_POLL_SECONDS, STOP_POLL_SECONDS)  # wait: interrupts
        while True:
            self._check_stop()
            done, _ = cf.wait(futures, timeout=poll, return_when=cf.FIRST_COMPLETED)
            if done:
                return done
            self._kill_stalled()

    def _submit(self, inflight: dict, chunk: list[Entry]) -> None:
        if self._broken:  # a worker died: its pool is unusable, start a fresh one
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = self._new_pool()
            self._broken = False
            self._stall_killed = False  # (of the pool that broke)
        known = [self._known.get(c.path, (0, None))[1] for c in chunk]
        fut = self._pool.submit(
            _hash_chunk,
            [c.path for c in chunk],
            self.options.types,
            known,
            self.options.file_timeout,
        )
        inflight[fut] = list(chunk)

    def _stored_dihedral(self, rec: FileRecord) -> bool:
        # dihedral PDQ stores 8 rows per file; remember it through the types string
        return DIHEDRAL_MARK in rec.types

    def _video_without_vpdq(self, path: str) -> None:
        """Count a video seen with no video type asked for, and keep the first few
        names: 'N video file(s)' alone left an operator to find them among millions."""
        self.summary.videos_without_vpdq += 1
        if len(self.summary.videos_without_vpdq_named) < VIDEOS_WITHOUT_VPDQ_NAMED:
            self.summary.videos_without_vpdq_named.append(path)

    def _same_stat(self, rec: FileRecord, entry: Entry) -> bool:
        return same_stat(rec, entry, minimal=self.options.check_stat == "minimal")

    def _verdict_stands(self, rec: FileRecord | None, entry: Entry) -> bool:
        """The catalogued failure of this path is one its bytes decide (``empty``,
        ``corrupt``, ``unsupported`` by format), of the same size, and its catalogued
        digests cover the exact types this scan asks for: while the bytes are the same
        (same stat, or same MD5 after a chmod) the file is not decoded again, only its
        digests re-matched. A failure catalogued without them (by a scan without md5,
        or a hashmatch that kept none) is hashed again once to get them."""
        if (
            rec is None
            or rec.status != FAILED
            or rec.reason not in DETERMINISTIC_FAILURES
            or rec.error == NO_TYPE_APPLIES
            or rec.size != entry.size
        ):
            return False
        exact = {t for t in types_for(entry.path, self.options.types) if signal_types.get(t).exact}
        return exact <= set(rec.types)

    def _hashes_reusable(self, rec: FileRecord | None, entry: Entry) -> bool:
        """The catalog's hashes of this path were made as this scan would make them
        (hashed, same size, every wanted type, same dihedral, exact unless fast is
        allowed): unchanged by mtime, or by MD5 when only the mtime moved."""
        opts = self.options
        return (
            rec is not None
            and rec.status == HASHED
            and rec.size == entry.size
            and set(wanted := types_for(entry.path, opts.types)) <= set(rec.types)
            and ("pdq" not in wanted or self._same_pdq(rec))
        )

    def _same_pdq(self, rec: FileRecord) -> bool:
        """The stored PDQ has this scan's dihedral setting and is at least as exact as
        asked (exact > luma > shrunk luma): a ``--fast-decode`` scan reuses exact hashes
        but not ``--fast-decode-shrink`` ones, an exact scan reuses only exact ones."""
        same_dihedral = bool(self.options.dihedral) == self._stored_dihedral(rec)
        return same_dihedral and stored_fast_level(rec.types) <= self.options.fast_decode

    def _collect(self, inflight: dict, *, block: bool) -> None:
        if not inflight:
            return
        if block:
            done = self._wait(list(inflight))
        else:
            done, _ = cf.wait(list(inflight), timeout=0, return_when=cf.FIRST_COMPLETED)
        for fut in done:
            chunk = inflight.pop(fut)
            try:
                self._pending.extend(fut.result())
            except Exception as exc:  # a worker died (e.g. a decoder crashed): retry, go on
                # one worker's death fails every task in flight, not only its own: which
                # file did it is unknown, so each is tried once more, alone
                self._check_stop()  # ...unless the same signal stopped them and us
                self._refuse_unstarted_pool(exc)
                self._lost.extend(chunk)
                if isinstance(exc, cf.process.BrokenProcessPool):
                    if not self._broken:  # this break's first lost task: read them once
                        self._break_words = self._dead_workers_words()
                    self._broken = True
                    if words := self._break_words:
                        self._lost_words.update((e.path, words) for e in chunk)

    def _isolate_crashes(self, inflight: dict) -> None:
        """Retry the files of tasks lost to a dead worker one at a time, with nothing
        else in flight: a file that kills its worker again is the culprit, marked
        ``worker-crashed``; the others are hashed (they only shared the pool)."""
        if not self._lost:
            return
        while inflight:  # drain first: a crash must not take an innocent retry with it
            self._collect(inflight, block=True)
        lost, self._lost = self._lost, []
        for e in lost:
            alone: dict[cf.Future, list[Entry]] = {}
            self._submit(alone, [e])
            (fut,) = alone
            self._stall_killed = False
            try:
                self._wait([fut])
                self._pending.extend(fut.result())
            except Exception as exc:
                self._check_stop()
                self._refuse_unstarted_pool(exc)
                self._pending.append(self._with_digests(self._lost_alone(e, exc)))
                if isinstance(exc, cf.process.BrokenProcessPool):
                    self._broken = True
            self._lost_words.pop(e.path, None)
            self._flush_if_due()

    def _refuse_unstarted_pool(self, exc: BaseException) -> None:
        """Raise WorkersFailedToStart when ``exc`` broke a pool none of whose workers
        ever started (none claimed its watch slot, which a worker's initializer does
        first): a break that is no file's doing."""
        if (
            isinstance(exc, cf.process.BrokenProcessPool)
            and self._watch is not None
            and not self._stall_killed
            and self._watch.taken.value == 0
        ):
            raise WorkersFailedToStart() from exc

    def _lost_alone(self, e: Entry, exc: BaseException) -> WorkResult:
        """The failure of a file whose worker died with only it in hand."""
        if not self._stall_killed:
            error = repr(exc)
            if words := self._dead_workers_words():
                error += f"; its worker's last words: {words}"
            first = self._lost_words.get(e.path, "")
            if first and first != words:  # the first crash, in a task with other files
                error += f"; its first worker's (in a task of several files): {first}"
            self._say_crashed(e.path, words or first)
            return dataclasses.replace(_walk_failure(e), reason=CRASHED, error=error)
        o = self.options
        return dataclasses.replace(
            _walk_failure(e),
            reason="timeout",
            error=f"no result after {o.file_timeout:g} s (--file-timeout) + {o.stall_grace:g} s: "
            "its worker was killed (a read or a decode that does not return: a hung mount?)",
        )

    def _dead_workers_words(self) -> str:
        """The last words of the workers that died on a file (:func:`last_words`: each
        read once), joined; "" when none said any (or a stall kill broke the pool)."""
        if self._stall_killed or self._watch is None or self._stderr_dir is None:
            return ""
        said = [last_words(self._stderr_dir, pid) for pid in self._watch.on_a_file()]
        return " | ".join(w for w in said if w)

    def _say_crashed(self, path: str, words: str) -> None:
        """One stderr line for a file that killed its worker, with its last words: they
        were only in the report's error, the terminal showing ``worker-crashed: 1``. The
        first :data:`CRASHES_SHOWN`, then a count (a decoder crashing on every file of a
        kind must not flood the terminal)."""
        self._crashes_said += 1
        n = self._crashes_said
        if n > CRASHES_SHOWN:
            return
        shown = escape_controls(os.fsencode(path).decode("utf-8", "backslashreplace"))
        said = words[:CRASH_WORDS_SHOWN] + ("..." if len(words) > CRASH_WORDS_SHOWN else "")
        self.progress.note(f"scan: {shown} crashed its worker: {said or '(no last words)'}")

    def _with_digests(self, failed: WorkResult) -> WorkResult:
        """``failed`` (its worker died with it) with the exact digests among the
        scan's types, read in a process of their own (:mod:`scan_digests`): matched,
        catalogued and rescanned as a file that failed to decode. Without them (the
        read failed, or outlasted ``digest_timeout``) its error says why."""
        exact = tuple(
            t for t in types_for(failed.path, self.options.types) if signal_types.get(t).exact
        )
        if not exact:
            return failed
        got = digest_apart(
            worker_context(),
            failed.path,
            exact,
            max_bytes=self.options.max_bytes,
            timeout=self.options.digest_timeout or digest_bound(failed.size),
            check_stop=self._check_stop,
        )
        if isinstance(got, str):
            return dataclasses.replace(
                failed, error=f"{failed.error}; its digests could not be read: {got}"
            )
        return dataclasses.replace(
            failed,
            size=got.size,
            mtime_ns=got.mtime_ns,
            ino=got.ino,
            ctime_ns=got.ctime_ns,
            md5=got.md5,
            types=tuple(h.signal_type for h in got.hashes),
            hashes=got.hashes,
        )

    def _flush_if_due(self) -> None:
        n = len(self._pending) + len(self._pending_skipped)
        if n >= self.options.batch_size or (
            n and time.monotonic() - self._last_commit >= self.options.commit_every
        ):
            self._flush()

    def _flush(self) -> None:
        results, skipped = self._pending, self._pending_skipped
        if not results and not skipped:
            return
        skipped_paths = self._pending_skipped_paths
        committed = [r.path for r in results] + skipped_paths
        self._pending, self._pending_skipped, self._pending_skipped_paths = [], [], []
        touched = [r for r in results if r.unchanged]  # same bytes: reuse catalogued hashes
        if touched:
            results = [r for r in results if not r.unchanged]
            skipped = skipped + [self._known.pop(r.path)[0] for r in touched]
            skipped_paths = skipped_paths + [r.path for r in touched]
            self.summary.rechecked += len(touched)
            # a known-bad file's stand counts as failed (see _counted_failed_verdicts)
            self.summary.skipped_unchanged += sum(
                r.path not in self._failed_verdict for r in touched
            )
        ok = [r for r in results if r.reason is None]
        failures = [r for r in results if r.reason is not None]
        stored = self.catalog.hashes_of(skipped) if skipped else {}
        # match before the transaction: the lookups may be slow (remote), the write is not;
        # keys: -1 - i for the i-th of ok + failures (failures with digests only), file
        # ids for skipped files
        to_match: list[tuple[int, list[FileHashes]]] = []
        for i, r in enumerate(ok + failures):
            if r.hashes:
                to_match.append((-1 - i, r.hashes))
        wanted = set(self.options.types)  # a file may have been hashed with more types
        for file_id in skipped:
            to_match.append(
                (file_id, [h for h in stored.get(file_id, []) if h.signal_type in wanted])
            )
        elsewhere = self._matched_elsewhere(ok + failures)
        lookup_error: BaseException | None = None
        try:
            matched = self._lookup(to_match)
            self._recheck_elsewhere(ok + failures, elsewhere, matched)
        except Exception as exc:  # e.g. the server went away: keep the hashes, then stop
            # (a re-run skips these files and matches them from the catalog: no re-hash);
            # the unchanged ones were counted as skipped when found: not done after all
            self.summary.skipped_unchanged -= sum(
                p not in self._failed_verdict for p in skipped_paths
            )
            unchanged = len(skipped)
            lookup_error, matched, skipped, skipped_paths = exc, {}, [], []
            # but a file with matches outside a --list scan's lists is not written:
            # written, it would lose them and look unchanged, and a re-run would match
            # its catalogued hashes in its own lists only; as it was, it is hashed again
            held = [r.path for r in ok + failures if r.path in elsewhere]
            ok = [r for r in ok if r.path not in elsewhere]
            failures = [r for r in failures if r.path not in elsewhere]
        failed = self._counted_failed_verdicts(skipped, skipped_paths, stored, wanted)
        matched_files = 0
        # what the new hashes were matched in: the scan's lists, or none when the
        # lookup failed (a rescan then matches them in every list, as the re-run would)
        matched_in = self._matched_in() if lookup_error is None else frozenset()
        with self.catalog.transaction():
            for i, r in enumerate(ok):
                types = list(r.types) + pdq_marks(r, self.options.dihedral)
                file_id = self.catalog.put_hashed(
                    r.path,
                    size=r.size,
                    mtime_ns=r.mtime_ns,
                    md5=r.md5,
                    types=types,
                    hashes=r.hashes,
                    run_id=self.run_id,
                    ino=r.ino,
                    ctime_ns=r.ctime_ns,
                    matched_in=matched_in,
                )
                # a re-run reports them too; a digest-only hash keeps the old ones while
                # the decode's hashes stay (same bytes: put_hashed drops them otherwise)
                if r.warnings or _decoded(r):
                    self.catalog.set_warnings(file_id, r.warnings)
                rows = [_with_file(m, file_id) for m in matched.get(-1 - i, [])]
                matched_files += self._in_scope(rows)
                self.catalog.add_matches(rows, found_by="scan")
            for j, r in enumerate(failures, start=len(ok)):
                failed += 1
                self._reasons[r.reason] += 1
                self.summary.failed_digested += bool(r.hashes)
                file_id = self.catalog.put_failed(
                    r.path,
                    reason=r.reason,
                    error=r.error or "",
                    size=r.size,
                    mtime_ns=r.mtime_ns,
                    run_id=self.run_id,
                    ino=r.ino,
                    ctime_ns=r.ctime_ns,
                    md5=r.md5,
                    digests=r.hashes,
                    matched_in=matched_in,
                )
                self.catalog.set_warnings(file_id, r.warnings)
                rows = [_with_file(m, file_id) for m in matched.get(-1 - j, [])]
                matched_files += self._in_scope(rows)
                # the same bytes' others stay; a failed lookup found nothing to replace
                # them with (as a skipped file's, they stay for the re-run to redo)
                if self.matcher is not None and r.hashes and lookup_error is None:
                    self.catalog.replace_matches(
                        file_id,
                        rows,
                        found_by="scan",
                        types=[h.signal_type for h in r.hashes],
                        lists=self.matcher.lists,
                    )
            for file_id in skipped:
                rows = matched.get(file_id, [])
                matched_files += self._in_scope(rows)
                if self.matcher is not None:
                    self.catalog.replace_matches(
                        file_id,
                        rows,
                        found_by="scan",
                        types=self.options.types,
                        lists=self.matcher.lists,
                    )
            self.catalog.mark_seen(skipped, self.run_id)
            # an unchanged file's hashes, all of the types looked up, were matched again
            self.catalog.widen_coverage(
                [f for f in skipped if all(h.signal_type in wanted for h in stored.get(f, []))],
                matched_in,
            )
            for r in touched:
                self.catalog.set_stat(r.path, r.size, r.mtime_ns, r.ino, r.ctime_ns)
            self.catalog.bump_counter("hash_calls", len(ok) + failed_hashing(results))
        self._open.difference_update(committed)  # the catalog's seen_run says it now
        for path in committed:  # a touched file found changed: its old MD5 is no use now
            self._known.pop(path, None)
            self._failed_verdict.pop(path, None)
        self.summary.hashed += len(ok)
        self.progress.update(len(results) + len(skipped), failed=failed, matched=matched_files)
        self._last_commit = time.monotonic()
        if lookup_error is not None and self._stopping():
            # stopped anyway: the hashes are in, a re-run matches them (no re-hash); the
            # run is an interrupted one even when this was its last batch (the walk is
            # done, no later check sees the stop): else its report read as complete,
            # without this batch's matches
            self.summary.interrupted = True
            return
        if lookup_error is not None:
            reason = lookup_error
            if callable(getattr(lookup_error, "code", None)):  # a grpc.RpcError
                reason = f"{lookup_error.code().name}: {lookup_error.details()}"
            raise LookupFailed(
                f"matching failed ({reason}): "
                + lookup_failed_state(len(ok) + len(failures), unchanged, held)
            ) from lookup_error

    def _counted_failed_verdicts(
        self,
        skipped: Sequence[int],
        paths: Sequence[str],
        stored: dict[int, list[FileHashes]],
        wanted: set[str],
    ) -> int:
        """Count the skipped files whose catalogued failure stands (unchanged, or the
        same MD5 after a chmod) as failed, by their reason, as the run that decoded them
        did (seen = hashed + skipped_unchanged + failed); those with digests of the
        wanted types also as ``failed_digested``. Returns how many."""
        n = 0
        for file_id, path in zip(skipped, paths, strict=True):
            reason = self._failed_verdict.get(path)
            if reason is None:
                continue
            n += 1
            self._reasons[reason] += 1
            self.summary.failed_digested += any(
                h.signal_type in wanted for h in stored.get(file_id, [])
            )
        return n

    def _matched_in(self) -> Coverage:
        """The lists this scan's lookups cover (None: every list; none: ``--no-match``)."""
        matcher = self.matcher
        return covered_by(matcher.lists if matcher else None, matched=matcher is not None)

    def _in_scope(self, rows: Sequence[MatchRow]) -> bool:
        """Whether ``rows`` (one file's) hold a match in the scan's lists: what it reports."""
        lists = self._reported_lists()
        return any(lists is None or m.list_name in lists for m in rows)

    def _matched_elsewhere(self, hashed: Sequence[WorkResult]) -> dict[str, set[tuple[str, str]]]:
        """path -> the (signal type, list) pairs of the catalogued matches of
        ``hashed``'s files with new hashes, in lists outside a ``--list`` scan's own
        (none for a scan of every list): what writing their new hashes replaces."""
        scope = self.matcher.lists if self.matcher is not None else None
        if not scope:
            return {}
        return self.catalog.matched_elsewhere([r.path for r in hashed if r.hashes], scope)

    def _recheck_elsewhere(
        self,
        hashed: Sequence[WorkResult],
        before: dict[str, set[tuple[str, str]]],
        matched: dict[int, list[MatchRow]],
    ) -> None:
        """Add to ``matched`` (keys -1 - i for ``hashed[i]``) the matches a ``--list``
        scan would drop unseen: those of the types hashed again, in lists outside its
        own, that the new hashes still make (looked up in every list, kept only for
        the (type, list) pairs the file matched before).

        Why: the catalog replaces a re-hashed file's matches of those types from every
        list (its bytes may have changed), and a ``--list`` scan looked only in its
        own: a match from another list disappeared, never reported again (a rescan
        matches new signals only). A match the new bytes no longer make is dropped,
        rightly. ``before``: :meth:`_matched_elsewhere` of ``hashed``."""
        if not before:
            return
        again: list[tuple[int, list[FileHashes]]] = []
        for i, r in enumerate(hashed):
            pairs = before.get(r.path, set()) if r.hashes else set()
            types = {t for t, _ in pairs}
            hashes = [h for h in r.hashes if h.signal_type in types]
            if hashes:
                again.append((-1 - i, hashes))
        if not again:
            return
        found = self._lookup(again, self.matcher.widened())
        for key, rows in found.items():
            pairs = before[hashed[-1 - key].path]
            matched.setdefault(key, []).extend(
                m for m in rows if (m.signal_type, m.list_name) in pairs
            )

    def _lookup(
        self, to_match: list[tuple[int, list[FileHashes]]], matcher: Matcher | None = None
    ) -> dict[int, list[MatchRow]]:
        """:func:`match_files`; a server's lookups in a helper thread, waited for in steps.

        Why: the client retries a lost server until its deadline (30 s), and a stop
        signal, which only sets ``options.stop``, was noted and waited out: Ctrl-C did
        nothing for 30 s, then the scan failed "matching failed" (exit 1, its run not
        recorded as interrupted). A lookup still running LOOKUP_STOP_GRACE seconds
        after a stop is left (it ends when the client is closed) and raises
        :class:`_LookupLeft`: the batch's hashes are committed without matches, which
        the re-run looks up from the catalog.
        """
        matcher = matcher or self.matcher
        if matcher is None:
            return {}
        if self.options.stop is None or not isinstance(matcher, RemoteMatcher):
            return match_files(matcher, to_match)
        box: dict[str, Any] = {}

        def run() -> None:
            try:
                box["matched"] = match_files(matcher, to_match)
            except BaseException as exc:  # handed to the scan's thread
                box["error"] = exc

        thread = threading.Thread(target=run, name="scan-lookup", daemon=True)
        thread.start()
        left_at = None
        while thread.is_alive():
            thread.join(STOP_POLL_SECONDS)
            if self._stopping() and thread.is_alive():
                left_at = left_at or time.monotonic() + LOOKUP_STOP_GRACE
                if time.monotonic() >= left_at:
                    raise _LookupLeft("the scan was stopped during a lookup")
        if "error" in box:
            raise box["error"]
        return box["matched"]

    def _reported_lists(self) -> list[str] | None:
        """The lists a ``--list`` scan answers for (None: every list; a ``--no-match``
        scan reports what the catalog holds, as it always did)."""
        lists = self.matcher.lists if self.matcher is not None else None
        return sorted(lists) if lists else None

    def _count_matches(self) -> None:
        files = set()
        n = 0
        for path, _ in self.catalog.matches_for_run(
            self.run_id, self.options.types, self._reported_lists()
        ):
            files.add(path)
            n += 1
        self.summary.matched_files = len(files)
        self.summary.matches = n


def _catalog_own_paths(catalog_path: str | Path) -> tuple[set[str], tuple[str, ...]]:
    """(files, directory prefixes) that belong to the catalog, as the walk spells them.

    Exactly the database, its -wal/-shm/-journal, its .lock and its rescan index
    directory: a prefix match on the catalog's name would also skip the user's media
    that happen to start with it (``catalog.sqlite.bak.jpg``). Both the given and the
    resolved spelling, since the walk may reach the catalog either way.
    """
    bases = {os.path.abspath(catalog_path), os.path.realpath(catalog_path)}
    files = {base + suffix for base in bases for suffix in (*CATALOG_SUFFIXES, ".rescan-index")}
    dirs = tuple(base + ".rescan-index" + os.sep for base in bases)
    return files, dirs


def _walk_failure(e: Entry) -> WorkResult:
    """A failure known without hashing (the walk's, or a cached verdict), with the
    walk's stat of the file."""
    return WorkResult(
        e.path, e.size, e.mtime_ns, reason=e.reason, error=e.error, ino=e.ino, ctime_ns=e.ctime_ns
    )


class ScanInterrupted(Exception):
    """A stop request (``ScanOptions.stop``) ended the scan; ``summary``: how far it got
    (also the run's record in the catalog). Running the same scan again resumes."""

    def __init__(self, summary: ScanSummary):
        super().__init__("scan interrupted")
        self.summary = summary


class ReportReaderGone(BrokenPipeError):
    """The report's reader closed the pipe (``--out - | head``) before it was all
    written. Why apart from a bare BrokenPipeError: the scan itself finished (every file
    committed, the run recorded as finished), so the CLI can still give the summary
    (``summary``) and say that a re-run writes the whole report without hashing again.
    Or, ``summary.interrupted``, the reader left while files were still being hashed:
    the scan stopped as on a stop signal (report_reader), no report written."""

    def __init__(self, summary: ScanSummary):
        super().__init__(32, "the report's reader closed the pipe")  # EPIPE
        self.summary = summary


#: Entries of --from-list read ahead by its helper thread (a handoff per entry with few
#: ahead cost ~50 us each; this many, ~10 us: nothing beside a file's decode).
LIST_PREFETCH_ENTRIES = 1024

#: Entries per block: one catalog lookup each (a list's blocks hold what was ready).
BLOCK = 500


def fixed_blocks(entries: Iterable[Entry], size: int = BLOCK) -> Iterator[list[Entry]]:
    """``entries`` in lists of ``size`` (the last shorter): a walk's blocks."""
    it = iter(entries)
    return iter(lambda: list(itertools.islice(it, size)), [])


#: Seconds between checks of ScanOptions.stop while the scan waits for its workers.
STOP_POLL_SECONDS = 0.2


#: Seconds a server lookup may go on after a stop before the scan leaves it.
LOOKUP_STOP_GRACE = 1.0


class _LookupLeft(Exception):
    """A stopped scan left a lookup still running (see ``Scanner._lookup``)."""


def lookup_failed_state(catalogued: int, unchanged: int, held: Sequence[str]) -> str:
    """What a failed batch left, for the operator deciding to re-run: the files hashed
    and now catalogued (the re-run matches them from the catalog), the unchanged ones
    (catalogued before, matched again by the re-run), and those held back uncatalogued
    (a ``--list`` scan's files with matches in other lists: the re-run hashes them
    again). It used to say "the hashes of this batch are in the catalog" of all."""
    parts = []
    if catalogued:
        parts.append(
            f"{catalogued} file(s) hashed are in the catalog (the re-run matches them, "
            "not hashed again)"
        )
    if unchanged:
        parts.append(
            f"{unchanged} unchanged file(s) keep their catalogued hashes and matches "
            "(the re-run looks them up again)"
        )
    if held:
        # a name that is not UTF-8 (surrogate escapes) shows its bytes as \xNN
        names = ", ".join(os.fsencode(p).decode("utf-8", "backslashreplace") for p in held[:5])
        more = f" and {len(held) - 5} more" if len(held) > 5 else ""
        parts.append(
            f"{len(held)} file(s) with matches in lists outside --list were not catalogued "
            f"(their earlier record stands; the re-run hashes them again): {names}{more}"
        )
    detail = f"; of this batch, {'; '.join(parts)}" if parts else ""
    return f"run the same scan again to resume{detail}"


class LookupFailed(errors.HashmatchError):
    """The matcher (local engine or server) failed mid-scan; the scan can be resumed."""


def failed_hashing(results: Sequence[WorkResult]) -> int:
    """Failures that reached a hasher (walk-time rejections never cost a decode)."""
    return sum(1 for r in results if r.reason is not None and r.md5 is not None)


def pdq_marks(result: WorkResult, dihedral: bool) -> list[str]:
    """How a file's PDQ was made, kept in its catalogued types (only when PDQ was)."""
    if "pdq" not in result.types:
        return []
    marks = [DIHEDRAL_MARK] if dihedral else []
    if result.fast:  # "pdq+fast" for any fast level (what older catalogs hold)
        marks.append(FAST_MARK)
    if result.fast >= 2:
        marks.append(SHRINK_MARK)
    return marks


def stored_fast_level(types: Sequence[str]) -> int:
    """0 exact PDQ, 1 from JPEG luma, 2 luma shrunk while decoding (see pdq_marks).

    A catalog written before the shrink mark has ``pdq+fast`` for both: read as 1.
    """
    if SHRINK_MARK in types:
        return 2
    return 1 if FAST_MARK in types else 0


def _with_file(m: MatchRow, file_id: int) -> MatchRow:
    return dataclasses.replace(m, file_id=file_id)


# ----------------------------------------------------------------------------- reports


def match_record(path: str, m: MatchRow) -> dict:
    """One report line for a match (the JSONL schema users parse)."""
    rec = {
        "kind": "match",
        "file": path,
        "type": m.signal_type,
        "hash": m.hash_hex,
        "distance": m.distance,
        "list": m.list_name,
        "labels": list(m.labels),
        "signal_id": m.signal_id,
        "signal_hash": m.signal_hex,
        "external_id": m.external_id,
    }
    if m.variant:
        rec["variant"] = m.variant
    if m.query_match_pct is not None:
        rec["query_match_pct"] = m.query_match_pct
        rec["target_match_pct"] = m.target_match_pct
    return rec


def write_scan_report(
    catalog: Catalog,
    run_id: int,
    path: str | Path,
    summary: ScanSummary,
    *,
    types: Sequence[str] | None = None,
    lists: Sequence[str] | None = None,
) -> None:
    """Matches then failures of the files this run saw (path order), then the first
    MAX_WARNED_LISTED of them whose last decode printed warnings (the catalog keeps
    them: a re-run that skips a file reports them as the run that decoded it did),
    then the summary.
    ``types``: the run's ``--types``; the catalog's matches of other types (kept from
    an earlier scan with more types) are not this run's answer and are left out.
    ``lists``: the run's ``--list`` (None: every list); matches of other lists, kept
    in the catalog, are left out likewise."""

    def records() -> Iterator[dict]:
        files = set()
        n = 0
        for p, m in catalog.matches_for_run(run_id, types, lists):
            files.add(p)
            n += 1
            yield match_record(p, m)
        summary.matched_files = len(files)
        summary.matches = n
        for rec in catalog.failures_for_run(run_id):
            yield {"kind": "failure", "file": rec.path, "reason": rec.reason, "error": rec.error}
        for path, lines in catalog.warnings_for_run(run_id, MAX_WARNED_LISTED):
            yield {"kind": "warning", "file": path, "warnings": lines}
        yield {"kind": "summary", **summary.as_dict()}

    write_jsonl_atomically(path, records())


def scan(
    paths: Sequence[str | Path] = (),
    *,
    catalog: Catalog,
    matcher: Matcher | None,
    from_list: Iterable[str] | None = None,
    report: str | Path | None = None,
    options: ScanOptions | None = None,
    on_summary: Callable[[ScanSummary], None] | None = None,
) -> ScanSummary:
    """Scan ``paths`` (and/or a list of paths/URIs) into ``catalog``, matching with ``matcher``."""
    options = options or ScanOptions()
    scanner = Scanner(catalog, matcher, options)
    entries: Iterable[Entry] = walk(
        paths, follow_symlinks=options.follow_symlinks, max_bytes=options.max_bytes
    )
    blocks: Iterable[list[Entry]] = fixed_blocks(entries)
    if from_list is not None:
        from hashmatch.engine.store import prefetch

        listed = read_list(
            from_list, follow_symlinks=options.follow_symlinks, max_bytes=options.max_bytes
        )
        # read (and stat'ed) in a helper thread: the scan takes what is ready, up to a
        # block, and works on the files in hand while the producer is slow; a list on
        # an idle stdin does not outwait a stop either (input_idle checks it)
        ready = prefetch(
            listed, LIST_PREFETCH_ENTRIES, idle=scanner.input_idle, name="scan-list", batch=BLOCK
        )
        blocks = itertools.chain(blocks, ready)
    # a list (stdin, maybe) is read once: its total is known when the walk ends
    counter = None
    if from_list is None and paths:
        counter = TreeCounter(
            paths,
            follow_symlinks=options.follow_symlinks,
            skip=_catalog_own_paths(catalog.path),
        )
    summary = scanner.run_blocks(blocks, report=report, counter=counter)
    if on_summary:
        on_summary(summary)
    return summary
