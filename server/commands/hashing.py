"""``hashmatch hash``: hash files and print one record per file and signal type.

Output formats:

* ``jsonl`` (default): ``{"path", "type", "hash", "quality", ...}`` per line; dihedral
  PDQ adds ``"dihedral"`` (the 8 hashes), vPDQ adds ``"frames"`` (frame, quality, hash,
  timestamp), ``--all-frames`` PDQ adds ``"frames"`` (frame, quality, hash; with
  ``--dihedral`` 8 entries per frame); a file that cannot be hashed gives
  ``{"path", "error", "reason"}``.
* ``csv``: ``path,type,hash,quality,frame,timestamp,error`` (one row per frame).
* ``te``: ThreatExchange/HMA style ``signal_type,signal_value`` (vPDQ's value is
  python-threatexchange's JSON list of ``"hex,quality,timestamp"`` strings).

A bad file never stops the run; the exit status is 1 only when every file failed.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import TYPE_CHECKING

import click

from hashmatch.engine import signal_types
from hashmatch.engine.errors import HashmatchError, UnknownSignalType
from hashmatch.engine.media_limits import DEFAULT_FILE_TIMEOUT
from hashmatch.engine.video_formats import is_video_path

if TYPE_CHECKING:  # the hashing stack (numba, OpenCV, PyAV): imported when a verb hashes
    from hashmatch.engine.hashing import HashOptions, HashResult
    from hashmatch.engine.scan import Entry

CSV_FIELDS = ("path", "type", "hash", "quality", "frame", "timestamp", "error")


def file_timeout_option(then: str) -> Callable[[Callable], Callable]:
    """``--file-timeout``, the same for ``scan``, ``hash`` and ``match``: one
    pathological video (hours of frames, or a frame rate that decodes thousands of
    frames per sampled one) must not hold any of them forever. ``then``: what happens."""
    return click.option(
        "--file-timeout", type=click.FloatRange(min=0), default=DEFAULT_FILE_TIMEOUT,
        show_default=True,
        help=f"Seconds one video may take to hash before {then} (0 = no limit).",
    )  # fmt: skip


def iter_paths(paths: tuple[str, ...]) -> Iterator[Entry]:
    """Files as given; directories walked in sorted order (stable output).

    The walk is ``hashmatch scan``'s (:func:`hashmatch.engine.scan.walk`): directory
    symlinks are followed with loops reported once, and FIFOs, sockets and devices are
    reported as ``not-a-file`` instead of being opened (reading a FIFO blocks forever).
    Paths keep the form they were given in (relative stays relative).
    """
    from hashmatch.engine.scan import walk

    for given in paths:
        root = os.path.abspath(given)
        for entry in walk([given], max_bytes=sys.maxsize):  # size limits: hash_media's
            shown = (
                given
                if entry.path == root
                else os.path.join(given, os.path.relpath(entry.path, root))
            )
            yield replace(entry, path=shown)


def applicable(path: str, types: list[str]) -> list[str]:
    """vPDQ for videos, photo types for everything else, byte digests for all."""
    is_video = is_video_path(path)
    out = []
    for name in types:
        content = signal_types.get(name).content
        if content == "bytes" or (content == "video") == is_video:
            out.append(name)
    return out


def default_media_types(path: str) -> tuple[str, ...]:
    """A file's types when none are given: vPDQ for a video, PDQ otherwise, told by the
    extension as ``hash`` and ``scan`` tell them (``match clip.mp4`` hashed a video as a
    photo and was refused: 'looks like a video; hash it as vpdq')."""
    return tuple(applicable(path, ["pdq", "vpdq"]))


def _records(path: str, result: HashResult) -> list[dict]:
    st = signal_types.get(result.signal_type)
    rec: dict = {"path": path, "type": st.name, "hash": result.hex, "quality": result.quality}
    if st.name == "vpdq":
        rec["frames"] = [
            {"frame": n, "quality": q, "hash": st.format(c), "timestamp": round(t, 3)}
            for n, q, c, t in zip(
                result.frame_numbers, result.qualities, result.codes, result.timestamps,
                strict=True,
            )
        ]  # fmt: skip
    elif result.frame_numbers:  # pdq --all-frames: every row with its frame
        rec["frames"] = [
            {"frame": n, "quality": q, "hash": st.format(c)}
            for n, q, c in zip(result.frame_numbers, result.qualities, result.codes, strict=True)
        ]
    elif len(result.codes) > 1:
        rec["dihedral"] = st.format_many(result.codes)
    return [rec]


def _error(path: str, message: str, reason: str) -> dict:
    return {"path": path, "type": None, "hash": None, "quality": None,
            "error": message, "reason": reason}  # fmt: skip


def hash_one(path: str, types: list[str], options: HashOptions) -> list[dict]:
    """All records of one file; errors become one error record (never raised)."""
    from hashmatch.engine.hashing import hash_media
    from hashmatch.engine.scan import FileTimedOut

    wanted = applicable(path, types)
    if not wanted:  # say which kind the file was taken for and what would hash it
        kind, other = ("a video", "vpdq") if is_video_path(path) else ("an image", "pdq")
        asked = ",".join(types)
        message = f"no requested type applies to {kind} ({asked}): add {other} to --types"
        return [_error(path, message, "NoApplicableType")]
    try:
        results = hash_media(path, wanted, options)
    except (HashmatchError, OSError, NotImplementedError, FileTimedOut) as exc:
        return [_error(path, str(exc), type(exc).__name__)]
    out: list[dict] = []
    for r in results:
        out.extend(_records(path, r))
    return out


def _te_value(rec: dict) -> str:
    if rec["type"] == "vpdq":
        frames = rec["frames"]
        return json.dumps([f"{f['hash']},{f['quality']},{f['timestamp']:.3f}" for f in frames])
    return rec["hash"]


def _csv_rows(rec: dict) -> Iterator[dict]:
    if "error" in rec:
        yield {"path": rec["path"], "error": rec["error"]}
    elif "frames" in rec:
        for f in rec["frames"]:
            yield {"path": rec["path"], "type": rec["type"], "hash": f["hash"],
                   "quality": f["quality"], "frame": f["frame"],
                   "timestamp": f.get("timestamp", "")}  # fmt: skip
    else:
        for i, h in enumerate(rec.get("dihedral", [rec["hash"]])):
            yield {"path": rec["path"], "type": rec["type"], "hash": h,
                   "quality": rec["quality"], "frame": i if "dihedral" in rec else ""}  # fmt: skip


def parse_types(value: str) -> list[str]:
    names = [t.strip() for t in value.split(",") if t.strip()]
    try:
        return [signal_types.get(t, field="--types").name for t in names]
    except UnknownSignalType as exc:
        raise click.BadParameter(exc.message, param_hint="--types") from None


@click.command("hash")
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option(
    "--types",
    "types_",
    default="pdq,vpdq",
    show_default=True,
    help=f"Comma-separated signal types ({', '.join(signal_types.names())}); "
    "photo types apply to images, vpdq to videos.",
)
@click.option(
    "--format", "fmt", type=click.Choice(["jsonl", "csv", "te"]), default="jsonl",
    show_default=True, help="jsonl records, csv rows, or te = signal_type,signal_value.",
)  # fmt: skip
@click.option(
    "--dihedral", is_flag=True,
    help="PDQ: also the 7 rotations/flips, pdqhash's compute_dihedral rows (match --dihedral"
    " hashes each re-oriented image instead: its rows 1-7 differ).",
)  # fmt: skip
@click.option(
    "--all-frames", is_flag=True,
    help="PDQ: every frame of an animated GIF/WebP/PNG (default: the first frame).",
)  # fmt: skip
@click.option(
    "--reference-resize", is_flag=True,
    help="PDQ: shrink images over 512 px to 512x512 first, like Meta's C++ CLI.",
)  # fmt: skip
@click.option(
    "--every-n-seconds", "seconds", type=float, default=1.0, show_default=True,
    help="vPDQ: hash one frame every N seconds (0 = every frame).",
)  # fmt: skip
@file_timeout_option("its record is an error (reason FileTimedOut)")
def hash_command(
    paths: tuple[str, ...],
    types_: str,
    fmt: str,
    dihedral: bool,
    all_frames: bool,
    reference_resize: bool,
    seconds: float,
    file_timeout: float,
) -> None:
    """Hash images and videos (files or directories), one record per file and type."""
    from hashmatch.engine.decode import LOCAL_LIMITS
    from hashmatch.engine.hashing import HashOptions
    from hashmatch.engine.scan import with_time_budget

    types = parse_types(types_)
    if seconds < 0:
        raise click.BadParameter("must be >= 0", param_hint="--every-n-seconds")
    options = HashOptions(
        dihedral=dihedral,
        all_frames=all_frames,
        reference_resize=reference_resize,
        seconds_per_hash=seconds,
        # local files, as scan and match: the server's 10k-frame upload guard would
        # refuse films; an animation keeps the 10k cap (--all-frames hashes each frame)
        limits=LOCAL_LIMITS,
    )
    out = sys.stdout
    writer = None
    if fmt == "csv":
        writer = csv.DictWriter(out, fieldnames=CSV_FIELDS, lineterminator="\n")
        writer.writeheader()
    te = csv.writer(out, lineterminator="\n") if fmt == "te" else None
    if te is not None:  # the header `hashmatch ingest` (and HMA) expect
        te.writerow(["signal_type", "signal_value"])
    files = failed = 0
    for entry in iter_paths(paths):
        files += 1
        if entry.reason is not None:  # the walk already knows: not a file, loop, no access
            records = [_error(entry.path, entry.error or entry.reason, entry.reason)]
        else:
            records = hash_one(entry.path, types, with_time_budget(options, file_timeout))
        if any("error" in r for r in records):
            failed += 1
        for rec in records:
            if fmt == "jsonl":
                out.write(json.dumps(rec) + "\n")
            elif writer is not None:
                writer.writerows(_csv_rows(rec))
            elif "error" in rec:
                click.echo(f"{rec['path']}: {rec['error']}", err=True)
            elif rec["type"] == "pdq" and "frames" in rec:  # one signal per frame
                te.writerows([["pdq", f["hash"]] for f in rec["frames"]])
            else:
                te.writerow([rec["type"], _te_value(rec)])
        out.flush()
    if files and failed == files:
        sys.exit(1)


COMMANDS: list[click.Command] = [hash_command]
