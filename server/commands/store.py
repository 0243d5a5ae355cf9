"""CLI verbs over the local store: lists, ingest, retract/restore, match, index, tenants, audit.

Each verb is one library call on :class:`hashmatch.engine.runtime.Engine` opened on
``--data-dir`` (else ``$HASHMATCH_DATA_DIR``, else the ``data_dir`` of
``$HASHMATCH_CONFIG``, else ``./hashmatch-data``: :func:`default_data_dir`), the
same directory ``hashmatch serve`` uses; a running server picks the changes up
on its next lookup. Every verb prints what it did with counts; long work shows a
progress bar when stderr is a terminal.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import sqlite3
import stat
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import click

from hashmatch.engine import signal_types
from hashmatch.engine.errors import (
    HashmatchError,
    InvalidInput,
    MediaError,
    is_disk_full,
    is_locked,
)
from hashmatch.engine.shown_text import escape_controls
from hashmatch.server.commands.bare_hex import bare_hex_hint
from hashmatch.server.commands.hashing import file_timeout_option
from hashmatch.server.commands.store_lock_notice import LockWaitNotice

DATA_DIR_HELP = (
    "Store + snapshots directory ($HASHMATCH_DATA_DIR, else the data_dir of"
    " $HASHMATCH_CONFIG, else ./hashmatch-data)."
)


def default_data_dir() -> str:
    """The data dir of a store verb given neither --data-dir nor $HASHMATCH_DATA_DIR:
    that of the config file ``$HASHMATCH_CONFIG`` names, as ``serve`` and the token verbs
    resolve it, else ``hashmatch-data``.

    Why: ``hashmatch token`` and the ``tokens`` verbs followed $HASHMATCH_CONFIG to the
    server's tokens file and store, but ``tenants create``/``grant``, ``lists``,
    ``ingest`` ... used ./hashmatch-data: an operator who exported it (the systemd
    setup's /etc/hashmatch/hashmatch.toml) made a tenant's token for the server and
    its grant in a new store in the current directory."""
    if not os.environ.get("HASHMATCH_CONFIG", "").strip():
        return "hashmatch-data"
    from hashmatch.server import config as config_mod

    try:
        return str(config_mod.load(None).data_dir)
    except (HashmatchError, OSError) as exc:
        raise click.ClickException(f"--data-dir from $HASHMATCH_CONFIG: {exc}") from None


def _data_dir_option(f):
    return click.option(
        "--data-dir",
        envvar="HASHMATCH_DATA_DIR",
        default=default_data_dir,
        show_default="hashmatch-data",
        type=click.Path(file_okay=False),
        help=DATA_DIR_HELP,
    )(f)


@contextmanager
def _engine(data_dir: str, *, create: bool = False, resumable: bool = False) -> Iterator:
    """Open the engine lazily (no index load unless a verb needs it); map errors to one
    line and exit 1. ``resumable``: the verb commits in batches (ingest), so the message
    says that what was committed stays and a re-run finishes the work. ``create``: a
    verb that may create the store says so on stderr when it does (a typo in --data-dir
    then shows at once instead of a second, empty store)."""
    from hashmatch.engine import store
    from hashmatch.engine.runtime import Engine

    store_path = Path(data_dir) / "store.sqlite"
    new_store = create and not store_path.exists()
    # a write waiting on another process says who: the open's own (a migration) too
    notice = LockWaitNotice(store_path, store.BUSY_TIMEOUT)
    try:
        engine = Engine.open(data_dir, create=create, eager=False, on_lock_wait=notice)
    except HashmatchError as exc:
        missing = "no hashmatch store in" in str(exc)  # not a full disk or a damaged store
        hint = (
            " (give the server's data dir: --data-dir, HASHMATCH_DATA_DIR, or its config"
            " file as HASHMATCH_CONFIG)"
            if missing and not create
            else ""
        )
        raise click.ClickException(f"{exc}{hint}") from None
    if new_store:
        click.echo(f"created a new store in {data_dir}", err=True)
    resume = (
        "; batches committed before this are stored: re-run to finish, it is idempotent"
        if resumable
        else ""
    )
    try:
        yield engine
    except HashmatchError as exc:
        raise click.ClickException(str(exc)) from None
    except sqlite3.OperationalError as exc:  # locked (the 60 s busy timeout), disk full, I/O
        hint = ""
        if is_locked(exc):
            hint = notice.locked_hint()
        elif is_disk_full(exc):
            hint = " (the disk is full: free space and re-run)"
        raise click.ClickException(f"{data_dir}/store.sqlite: {exc}{hint}{resume}") from None
    except MemoryError:
        smaller = "; re-run with a smaller --batch-size" if resumable else ""
        raise click.ClickException(
            f"out of memory (a ulimit -v or container limit?){resume}{smaller}"
        ) from None
    except BrokenPipeError:
        raise  # stdout closed by the reader (`| head`): not the store's error
    except OSError as exc:  # a full disk or an I/O error outside SQLite
        full = " (the disk is full: free space and re-run)" if is_disk_full(exc) else ""
        where = exc.filename or data_dir
        raise click.ClickException(f"{where}: {exc.strerror or exc}{full}{resume}") from None
    finally:
        engine.close()


def _bar(total: int | None, desc: str, unit: str = "rec"):
    """A tqdm bar on an interactive stderr, else None (logs and pipes stay clean)."""
    if not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, unit_scale=True, file=sys.stderr)


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _echo_json(obj) -> None:
    click.echo(json.dumps(obj, indent=1, default=str))


def _shown(text: str | None) -> str:
    """``text`` with its control characters escaped (``\x1b``, ``\n``), for the text
    output of what a remote tenant wrote (labels, external ids, retraction reasons, an
    ingest's source). Why: printed raw, a write-role tenant's label or reason holding an
    ANSI escape reached the operator's terminal (retitling it, hiding or recolouring
    lines) and a newline forged whole output lines; ``--json`` output was already
    escaped."""
    if not text:
        return text or ""
    return escape_controls(text)


# ----------------------------------------------------------------------------- lists


@click.group("lists")
def lists_group() -> None:
    """Hash lists (banks): create, ls, set, rename, disable, enable, export, delete."""


@lists_group.command("create")
@click.argument("name")
@click.option("--description", default="", help="What the list holds.")
@click.option("--owner", default="", help="The partner or program that shares it.")
@click.option("--label", "labels", multiple=True, help="A label (harm category); repeatable.")
@click.option("--actor", default="local", help="Who to record in the audit log.")
@_data_dir_option
def lists_create(name, description, owner, labels, actor, data_dir) -> None:
    """Create a hash list.

    \b
      hashmatch lists create partner-a --owner "Partner A" --label csam
    """
    with _engine(data_dir, create=True) as engine:
        info = engine.store.create_list(
            name, description=description, owner=owner, labels=labels, actor=actor
        )
    click.echo(f"created list {info.name!r} (id {info.id})")


@lists_group.command("ls")
@click.option("--tenant", default=None, help="Only lists shared with this tenant.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@_data_dir_option
def lists_ls(tenant, as_json, data_dir) -> None:
    """List hash lists with their live, expired and retracted counts (live: neither)."""
    with _engine(data_dir) as engine:
        if tenant is not None:
            engine.store.get_tenant(tenant)  # a typo is "no tenant named", not "0 list(s)"
        found = engine.store.lists(tenant=tenant)
    if as_json:
        _echo_json([info.__dict__ for info in found])
        return
    click.echo(
        f"{'name':24} {'enabled':7} {'live':>9} {'expired':>9} {'retracted':>9}  types  owner"
    )
    for info in found:
        click.echo(
            f"{info.name:24} {'yes' if info.enabled else 'no':7} "
            f"{info.signal_count - info.expired_count:>9} {info.expired_count:>9} "
            f"{info.retracted_count:>9}  {','.join(info.signal_types) or '-'}  {info.owner}"
        )
    live = sum(i.signal_count - i.expired_count for i in found)
    expired = sum(i.expired_count for i in found)
    click.echo(f"{len(found)} list(s), {live} live signal(s), {expired} expired")


@lists_group.command("set")
@click.argument("name")
@click.option("--description", default=None, help="New description.")
@click.option("--owner", default=None, help="New owner (partner or program).")
@click.option(
    "--label", "labels", multiple=True, help="Replace the list's labels with these; repeatable."
)
@click.option("--clear-labels", is_flag=True, help="Remove every label of the list.")
@click.option("--actor", default="local", help="Who to record in the audit log.")
@_data_dir_option
def lists_set(name, description, owner, labels, clear_labels, actor, data_dir) -> None:
    """Edit a list's metadata; fields not given stay as they are. Audited (old and new).

    \b
      hashmatch lists set partner-a --owner "Partner A (program X)" --label csam --label ncii
    """
    if labels and clear_labels:
        raise click.UsageError("give --label or --clear-labels, not both")
    new_labels = () if clear_labels else (labels or None)
    if description is None and owner is None and new_labels is None:
        raise click.UsageError("nothing to set: give --description, --owner, --label or"
                               " --clear-labels")  # fmt: skip
    with _engine(data_dir) as engine:
        info = engine.store.update_list(name, description=description, owner=owner,
                                        labels=new_labels, actor=actor)  # fmt: skip
    click.echo(f"list {info.name!r}: owner {info.owner!r}, labels"
               f" {','.join(info.labels) or '-'}, description {info.description!r}")  # fmt: skip


@lists_group.command("rename")
@click.argument("old")
@click.argument("new")
@click.option("--actor", default="local", help="Who to record in the audit log.")
@_data_dir_option
def lists_rename(old, new, actor, data_dir) -> None:
    """Rename a list (refused if the new name is in use, or if a mirror owns the list).
    Grants follow the list; catalog matches recorded before keep the old name.

    \b
      hashmatch lists rename partner-a partner-a-2026
    """
    with _engine(data_dir) as engine:
        info = engine.store.rename_list(old, new, actor=actor)
    click.echo(f"renamed list {old.strip()!r} to {info.name!r} (id {info.id})")


@lists_group.command("delete")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Really delete (without it: say what would go).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--actor", default="local", help="Who to record in the audit log.")
@_data_dir_option
def lists_delete(name, yes, as_json, actor, data_dir) -> None:
    """Delete a list and all its signals from the store for good (a partner agreement
    ended, or the law requires it); `lists disable` or `retract` keep them instead.

    Without --yes nothing is deleted: it prints what would be (counts) and exits 1.
    A running `hashmatch serve` on the data dir stops matching them at its next lookup;
    the next `rescan` reports their held matches as retractions (reason `deleted`).

    \b
      hashmatch lists delete partner-a          # what would go
      hashmatch lists delete partner-a --yes
    """
    with _engine(data_dir) as engine:
        store = engine.store
        contents = store.delete_list(name, actor=actor) if yes else store.list_contents(name)
        stale = engine.snapshots_before_purge() if yes else []
    if as_json:
        _echo_json({"deleted": yes, "list": contents.name, **contents.as_dict()})
    if not yes:
        raise click.ClickException(
            f"not deleted: list {contents.name!r} holds {contents.line()}; re-run with --yes"
            " to delete them from the store for good"
        )
    if not as_json:
        click.echo(f"deleted list {contents.name!r}: {contents.line()}")
    if contents.wal_cleared is False:
        click.echo(
            "note: a reader held the store (a server's index rebuild or Changes stream, a"
            " backup): the deleted rows' old pages stay in store.sqlite until SQLite's next"
            " checkpoint (after ~32 MiB of writes, or when the last process closes the store)",
            err=True,
        )
    note_stale_snapshots(stale)
    if contents.mirror:
        click.echo(
            f"note: mirror {contents.mirror!r} created this list; its next run is a full"
            " resync and creates it again if the hub still shares it (see README: Mirrors"
            " and deletion)",
            err=True,
        )


def note_stale_snapshots(stale: list[Path]) -> None:
    """Name on stderr the index snapshots taken before a list delete (``lists delete``,
    a mirror deleting what the hub deleted): they hold its codes on disk until the next
    snapshot prunes them, and no server may be running to take one."""
    if stale:
        click.echo(
            f"note: {len(stale)} index snapshot(s) in {stale[0].parent} were taken before this"
            " delete and still hold its codes: the next snapshot prunes them (`hashmatch index"
            " snapshot`, or a running server's Admin.Snapshot)",
            err=True,
        )


def _set_enabled(enabled: bool):
    @click.argument("name")
    @click.option("--actor", default="local", help="Who to record in the audit log.")
    @_data_dir_option
    def command(name, actor, data_dir) -> None:
        with _engine(data_dir) as engine:
            info = engine.store.set_list_enabled(name, enabled, actor=actor)
        state = "enabled" if enabled else "disabled"
        click.echo(f"{state} list {info.name!r} ({info.signal_count} signal(s) affected)")

    return command


lists_group.command("disable", help="Stop a list matching (its signals stay stored).")(
    _set_enabled(False)
)
lists_group.command("enable", help="Let a disabled list match again.")(_set_enabled(True))


@lists_group.command("export")
@click.argument("name")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["jsonl", "csv", "hex"]),
    default=None,
    help="jsonl keeps every label whole; csv has HMA/ThreatExchange's columns; hex is"
    " 'TYPE HASH' a line, hashes only (python-threatexchange's local_file)."
    " Default: --out's suffix (.jsonl, .csv, .txt), else jsonl.",
)
@click.option(
    "--out",
    "out_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write to this file (complete or not at all); default stdout.",
)
@click.option(
    "--retracted",
    is_flag=True,
    help="The list's retracted signals instead, one type:hex a line (what retract --file reads).",
)
@click.option(
    "--skip-expired", is_flag=True, help="Leave out live signals whose expiry has passed."
)
@click.option("--actor", default="local", help="Who to record in the audit log.")
@_data_dir_option
def lists_export(name, fmt, out_path, retracted, skip_expired, actor, data_dir) -> None:
    """Write a list's signals as a file `hashmatch ingest` reads back into the same
    signals: to contribute them to a sharing program, move a list between stores, or
    hand a partner the retractions (--retracted). Recorded in the audit log once the
    file is complete; on error nothing is written (stdout included)."""
    from hashmatch.engine.export import export_list, record_export

    fmt = _export_format(fmt, out_path, retracted, skip_expired)
    with _engine(data_dir) as engine:
        with _output(out_path) as out:
            report = export_list(engine.store, name, out, format=fmt, retracted=retracted,
                                 skip_expired=skip_expired, audit=False)  # fmt: skip
        record_export(engine.store, report, actor=actor, destination=out_path)
    what = "retracted signal(s)" if retracted else f"signal(s) as {report.format}"
    where = f" to {out_path}" if out_path else ""
    left_out = f"; {report.skipped_expired} expired left out" if skip_expired else ""
    click.echo(f"exported {report.written} {what} of {report.list_name!r}{where}{left_out}",
               err=True)  # fmt: skip


_FORMAT_SUFFIXES = {".csv": "csv", ".jsonl": "jsonl", ".txt": "hex"}


def _export_format(fmt: str | None, out_path: str | None, retracted: bool,
                   skip_expired: bool) -> str:  # fmt: skip
    """The export's format: --format, else --out's suffix, else jsonl. Refuses what
    would mislead: a suffix naming the other format (ingest reads the format from the
    suffix, so every line would be rejected) and options --retracted does not use."""
    if retracted:
        if fmt is not None or skip_expired:
            raise click.UsageError(
                "--retracted writes every retracted signal as a type:hex line;"
                " leave out --format and --skip-expired"
            )
        return "jsonl"  # unused
    named = _unzipped_name(out_path) if out_path else None
    suffix = _FORMAT_SUFFIXES.get(Path(named).suffix.lower()) if named else None
    if fmt is not None and suffix is not None and fmt != suffix:
        raise click.UsageError(
            f"--format {fmt} but --out ends in {Path(named).suffix}: ingest reads the"
            " format from the suffix"
        )
    return fmt or suffix or "jsonl"


def _unzipped_name(path: str) -> str:
    """``--out``'s name without ``.gz``: the suffix beneath names the format (as ingest
    reads it), ``.gz`` asks for gzip."""
    return path[:-3] if path.lower().endswith(".gz") else path


@contextmanager
def _output(path: str | None) -> Iterator:
    """Where an export goes, complete or not at all: stdout is buffered in a temp file
    and copied out only when the export finished (else a refusal part way, say a label
    CSV cannot carry, would have sent valid-looking rows down a pipe into someone's
    ingest); a file is written beside ``path`` and renamed over it. Both are UTF-8
    whatever the locale (what ingest reads). OS errors name the output (``path``, or
    the temp dir of the stdout buffer), not the temp file and not the store: the
    export only reads the store (SQLite errors), its OS errors are its writes."""
    import io
    import shutil
    import tempfile

    if path is None:
        try:
            with tempfile.TemporaryFile("w+b") as raw:
                buffer = io.TextIOWrapper(raw, encoding="utf-8", newline="")
                yield buffer
                buffer.flush()
                raw.seek(0)
                sys.stdout.flush()
                shutil.copyfileobj(raw, sys.stdout.buffer)
                sys.stdout.buffer.flush()
                buffer.detach()
        except BrokenPipeError:
            raise  # the reader went away (`| head`): click ends quietly
        except OSError as exc:
            raise click.ClickException(
                f"a buffer in {tempfile.gettempdir()} (TMPDIR): {exc.strerror or exc}"
            ) from None
        return
    import fcntl

    target = Path(path)
    temp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    zipped = _unzipped_name(path) != path  # `--out list.csv.gz`: gzip, what ingest reads
    _remove_abandoned_exports(target)
    try:
        with open(temp, "wb") as raw:
            fcntl.flock(raw.fileno(), fcntl.LOCK_EX)  # dropped by the kernel if we die
            packed = None
            if zipped:  # no name or time in the header: the same list, the same bytes
                import gzip

                packed = gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0)
            out = io.TextIOWrapper(packed or raw, encoding="utf-8", newline="")
            yield out
            out.flush()
            out.detach()
            if packed is not None:
                packed.close()  # its trailer; leaves raw open
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(temp, target)
    except OSError as exc:
        raise click.ClickException(f"{path}: {exc.strerror or exc}") from None
    finally:
        temp.unlink(missing_ok=True)


def _remove_abandoned_exports(target: Path) -> None:
    """Remove the temp files of exports to ``target`` that died midway (kill -9, an OOM
    kill, `timeout -s KILL`): each is a hidden partial copy of a list's hashes that
    nothing else would ever free. Abandoned as a snapshot's temp is: no export holds
    its lock, and its pid is gone or it was last written over an hour ago (a reused
    pid). Best effort: a temp that cannot be removed never stops the export."""
    from hashmatch.engine.durable import pid_alive
    from hashmatch.engine.snapshot_files import TMP_MAX_AGE_SECONDS, held

    name = re.compile(rf"\.{re.escape(target.name)}\.tmp-(\d+)")
    try:
        entries = list(os.scandir(target.parent))
    except OSError:
        return
    for entry in entries:
        m = name.fullmatch(entry.name)
        if not m or not entry.is_file(follow_symlinks=False):
            continue
        try:
            left = Path(entry.path)
            young = time.time() - entry.stat().st_mtime < TMP_MAX_AGE_SECONDS
            if held(left) or (pid_alive(int(m.group(1))) and young):
                continue
            left.unlink()
        except OSError:
            continue


# ----------------------------------------------------------------------------- ingest


@click.command("ingest")
@click.argument(
    "files",
    nargs=-1,
    required=True,
    type=click.Path(exists=True, dir_okay=False, allow_dash=True),  # before the list is made
)
@click.option("--list", "list_name", required=True, help="Target hash list (created if missing).")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["auto", "jsonl", "csv", "hex", "vpdq", "te-simple"]),
    default="auto",
    show_default=True,
)
@click.option("--type", "signal_type", default=None, help="Signal type of plain hex lines.")
@click.option("--label", "labels", multiple=True, help="Add this label to every signal.")
@click.option("--strict", is_flag=True, help="Refuse the whole file if any line is bad.")
@click.option("--actor", default="local", help="Who to record in the audit log.")
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=50_000,
    show_default=True,
    help="Records per transaction.",
)
@click.option("--show", default=20, show_default=True, help="How many bad lines to print.")
@_data_dir_option
def ingest_command(
    files, list_name, fmt, signal_type, labels, strict, actor, batch_size, show, data_dir
) -> None:
    """Ingest hash-list files (JSONL, CSV with a signal_type,signal_value header or a
    column per hash type, plain hex with --type or TYPE HASH lines, ThreatExchange's
    simple dumps, vPDQ text files; gzip read through; '-' reads stdin).

    \b
      hashmatch ingest partner-a.csv --list partner-a
      hashmatch ingest hashes.txt --list partner-a --type pdq --label csam
      hashmatch ingest video1.vpdq video2.vpdq --list videos
    """
    from hashmatch.engine.ingest import check_source, read_records
    from hashmatch.engine.store import IngestRefused
    from hashmatch.server.interrupts import Interrupted

    if signal_type:
        signal_type = signal_types.get(signal_type, field="--type").name
    for path in files:  # before the store and the list are made ("list 'x' is new")
        try:
            if path != "-":
                check_source(path)
        except InvalidInput as exc:
            raise click.ClickException(exc.message) from None
    failed = False
    with _engine(data_dir, create=True, resumable=True) as engine:
        new = _say_if_disabled(engine, list_name)
        for number, path in enumerate(files):
            bar = _bar(None, f"ingest {Path(path).name}")
            last = [0]

            def progress(done: int, bar=bar, last=last) -> None:
                if bar is not None:
                    bar.update(done - last[0])
                    last[0] = done

            records = read_records(
                path, format=None if fmt == "auto" else fmt, signal_type=signal_type, labels=labels
            )
            refused = False
            try:
                report = engine.ingest(
                    records, list_name=list_name, actor=actor, source=str(path), strict=strict,
                    batch_size=batch_size, progress=progress,
                )  # fmt: skip
            except IngestRefused as exc:
                report = exc.report
                refused = True
                click.echo(
                    f"{path}: REFUSED (strict): {report.rejected} bad line(s), nothing written"
                )
            except Interrupted as exc:  # then `hashmatch: interrupted (SIGINT)`, exit 130
                _say_ingest_stopped(path, exc, list_name, strict, files[number + 1 :])
                if new:  # its committed batches made it
                    _said_new(engine, list_name)
                raise
            except InvalidInput as exc:  # the file as a whole (a CSV header): which file?
                if new:  # batches before a damaged line were stored (not with --strict)
                    _said_new(engine, list_name)
                if exc.field == "file":  # the message names it
                    raise
                raise click.ClickException(f"{path}: {exc}") from None
            finally:
                if bar is not None:
                    bar.close()
            # exit 1 when a file was refused or none of its lines was good (as `hash`
            # does when every file fails): a script must not read that as success
            failed |= refused or (report.rejected > 0 and report.accepted == 0)
            if not refused:
                click.echo(
                    f"{path}: added {report.added}, updated {report.updated}, unchanged "
                    f"{report.unchanged}, rejected {report.rejected} into {list_name!r} "
                    f"({report.accepted / max(report.seconds, 1e-9):,.0f} rec/s)"
                )
                if report.still_retracted:
                    click.echo(
                        f"  {report.still_retracted} re-ingested signal(s) stay retracted "
                        "(use hashmatch restore)"
                    )
                    _name_still_retracted(report)
            new = new and not _said_new(engine, list_name)
            for r in report.rejections[:show]:
                click.echo(f"  {path}: {r}", err=True)
            if report.rejected > show:
                click.echo(f"  ... and {report.rejected - show} more bad line(s)", err=True)
    if failed:
        sys.exit(1)


def _said_new(engine, list_name: str) -> bool:
    """Say on stderr that this ingest created ``list_name`` (a typo in --list?), once it
    exists: a file, stopped or damaged part way too, stored a signal into it. Whether
    it was said."""
    if not engine.store.lists(names=[list_name.strip()]):
        return False
    click.echo(
        f"list {list_name.strip()!r} is new: created by this ingest (a typo in"
        " --list? `hashmatch lists delete` removes it)",
        err=True,
    )
    return True


def _say_ingest_stopped(
    path: str, exc: BaseException, list_name: str, strict: bool, not_started: Sequence[str]
) -> None:
    """On stderr: how much of ``path`` a stop signal left stored, and that a re-run is
    safe. Why: the bare "interrupted (SIGTERM)" left an operator to guess whether a
    10M-line file was half in, and whether running it again would duplicate it."""
    from hashmatch.server.interrupts import say_ingest_stopped

    report = getattr(exc, "ingest_report", None)
    if strict and (report is None or not report.batches):
        said = f"{path}: stopped: nothing of it was written (--strict: one transaction)"
    elif report is None:  # stopped outside the store's ingest (the file was done)
        return
    elif strict:  # the stop came after the one COMMIT (e.g. in the index update)
        stored = report.added + report.updated + report.unchanged
        said = (
            f"{path}: stopped after its transaction committed (--strict): the whole file"
            f" is stored, {stored:,} signal(s) into {list_name!r} (added {report.added},"
            f" updated {report.updated}, unchanged {report.unchanged})"
        )
    else:
        stored = report.added + report.updated + report.unchanged
        said = (
            f"{path}: stopped after {report.batches} committed batch(es): {stored:,} signal(s)"
            f" stored into {list_name!r} (added {report.added}, updated {report.updated},"
            f" unchanged {report.unchanged})"
        )
        if report.rolled_back_batch:  # not so for a stop between batches or after the last
            said += "; the batch in flight was rolled back"
    if not_started:
        said += f"; not started: {', '.join(not_started)}"
    say_ingest_stopped(said)


def _name_still_retracted(report) -> None:
    """On stderr, which re-sent signals stay retracted, one ``type:hex`` a line: the file
    ``hashmatch restore --list L --file`` reads, if the sharer restored them."""
    shown = report.still_retracted_targets
    for target in shown:
        click.echo(f"    {target}", err=True)
    if report.still_retracted > len(shown):
        click.echo(
            f"    ... and {report.still_retracted - len(shown)} more (`hashmatch retracted"
            f" --list {shlex.quote(report.list_name)}` lists them)",
            err=True,
        )


def _say_if_disabled(engine, list_name: str) -> bool:
    """Warn on stderr of a disabled list; whether the list does not exist yet.

    Why: a typo in --list creates a list without complaint (that is how the first
    ingest works), so ingest says "list 'x' is new" -- but only once a file stored
    something into it: said up front, it was false when the file was then refused
    whole (--strict) or every line rejected, and no list was made. (A new store: _engine.)
    """
    name = list_name.strip()  # as the store names it
    found = engine.store.lists(names=[name])
    if not found:
        return True
    if not found[0].enabled:
        click.echo(
            f"list {name!r} is disabled: its signals do not match until `hashmatch lists enable`",
            err=True,
        )
    return False


# ----------------------------------------------------------------------------- retraction


def _refuse_special_file(query: str) -> None:
    """A query naming something that exists but is no regular file says what it is.

    Why: such a query fell through to the hash parser, so a FIFO or /dev/zero was
    "no such file" and a directory "pdq hash must be 64 hex characters". Only stat is
    called (never open: a FIFO's open blocks until a writer comes)."""
    from hashmatch.engine.scan import file_kind

    try:
        st = os.stat(query)
    except FileNotFoundError:
        if os.path.islink(query):
            raise click.ClickException(f"{query}: broken symbolic link") from None
        return
    except OSError as exc:
        raise click.ClickException(f"{query}: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        hint = " (`hashmatch scan` walks directories)" if stat.S_ISDIR(st.st_mode) else ""
        raise click.ClickException(
            f"{query}: not a regular file but {file_kind(st.st_mode)}{hint}"
        ) from None


def _looks_like_a_path(value: str) -> bool:
    """A query that is neither a file nor a hash, but reads like a file name: a hash
    ('type:hex' or hex) holds no dot or path separator, so any suffix names a file
    (`clip.vpdq`, `hashes.json` as well as photos and videos)."""
    return "/" in value or "\\" in value or Path(value).suffix != ""


def _targets(values, signal_type, where=None) -> list[tuple[str, str]]:
    """'type:hex', 'type hex' (python-threatexchange's lines, `lists export --format hex`)
    or bare hex (with --type, default pdq) -> [(type, hex)]; ``where[i]`` names value i
    in an error (an argument, or a --file line)."""
    from hashmatch.engine.ingest import typed_line

    out = []
    for i, value in enumerate(values):
        typed = typed_line(value.strip())
        if typed is not None:
            name, hex_ = typed
        else:
            name, hex_ = (signal_type or "pdq"), value
        try:
            st = signal_types.get(name, field=f"hashes[{i}]")
            if st.name == "vpdq" and hex_.lstrip().startswith("["):
                out.append((st.name, _video_target(hex_)))
                continue
            out.append((st.name, st.format(st.parse(hex_, field="hashes", index=i))))
        except InvalidInput as exc:
            if typed is None and signal_type is None:
                exc = InvalidInput(exc.message + bare_hex_hint(hex_), field=exc.field,
                                   index=exc.index)  # fmt: skip
            if where is None:
                raise exc from None
            raise InvalidInput(f"{where[i]}: {exc.message}") from None
    return out


def _video_target(frames_json: str) -> str:
    """A video's serialized frame list (``vpdq [...]``, how `lists export --format hex`
    and python-threatexchange's local_file write one) -> the hex that names it as a
    target, what ``--retracted`` writes after ``vpdq:``: its frames' fingerprint."""
    from hashmatch.engine.store import video_key
    from hashmatch.engine.video import parse_vpdq_json

    return video_key(parse_vpdq_json(frames_json).codes).hex()


def _retract_like(restore: bool):
    @click.argument("hashes", nargs=-1)
    @click.option("--list", "list_name", required=True, help="The hash list.")
    @click.option("--type", "signal_type", default=None, help="Type of bare hex (default pdq).")
    @click.option("--id", "ids", multiple=True, type=int, help="Signal id; repeatable.")
    @click.option("--external-id", "external_ids", multiple=True, help="Sharer's id; repeatable.")
    @click.option(
        "--file",
        "from_file",
        type=click.Path(dir_okay=False, allow_dash=True),
        help="Hashes, one per line (gzip read through; '-' = stdin).",
    )
    @click.option("--actor", default="local", help="Who to record in the audit log.")
    @_data_dir_option
    def command(hashes, list_name, signal_type, ids, external_ids, from_file, actor, data_dir,
                reason=None) -> None:  # fmt: skip
        values = list(hashes)
        where = [f"argument {i + 1}" for i in range(len(values))]
        if from_file is not None:
            from hashmatch.engine.ingest import read_lines

            try:
                for number, line in enumerate(read_lines(from_file), 1):
                    text = line.partition("#")[0].strip()  # `# comment`, `HEX # note`
                    if text:
                        values.append(text)
                        where.append(f"{from_file} line {number}")
            except InvalidInput as exc:
                raise click.ClickException(exc.message) from None
        try:
            targets = _targets(values, signal_type, where)
        except InvalidInput as exc:
            raise click.ClickException(str(exc)) from None
        if not (targets or ids or external_ids):
            raise click.UsageError("give hashes, --id, --external-id or --file")
        missing: list[str] = []
        unchanged: list[str] = []
        with _engine(data_dir) as engine:
            if restore:
                n = engine.store.restore(list_name=list_name, hashes=targets, signal_ids=ids,
                                         external_ids=external_ids, actor=actor,
                                         missing=missing, unchanged=unchanged)  # fmt: skip
            else:
                n = engine.store.retract(list_name=list_name, hashes=targets, signal_ids=ids,
                                         external_ids=external_ids, reason=reason, actor=actor,
                                         missing=missing, unchanged=unchanged)  # fmt: skip
        asked = len(targets) + len(ids) + len(external_ids)
        verb = "restored" if restore else "retracted"
        click.echo(f"{verb} {n} signal(s) in {list_name!r} ({asked} requested)")
        if missing:  # on stderr: stdout keeps its one summary line
            click.echo(f"not in {list_name!r}: {_some_named(missing, 20)}", err=True)
        if unchanged:  # "restored 1 (2 requested)" said neither which nor why
            state = "not retracted (nothing to restore)" if restore else "already retracted"
            click.echo(f"{state} in {list_name!r}: {_some_named(unchanged, 10)}", err=True)

    return command


def _some_named(items: Sequence[str], most: int) -> str:
    """The first ``most`` of ``items``, then how many more: a long refusal stays a line."""
    more = len(items) - most
    return ", ".join(items[:most]) + (f" and {more} more" if more > 0 else "")


retract_command = click.option("--reason", default=None, help="Why (kept in the store and audit).")(
    _retract_like(False)
)
retract_command = click.command(
    "retract", help="Retract signals from a list: they stop matching at the next lookup."
)(retract_command)
restore_command = click.command("restore", help="Restore retracted signals.")(_retract_like(True))


@click.command("retracted")
@click.option("--list", "list_name", default=None, help="Only this list.")
@click.option("--limit", default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@_data_dir_option
def retracted_command(list_name, limit, as_json, data_dir) -> None:
    """List retracted signals, newest first."""
    with _engine(data_dir) as engine:
        found = engine.store.retracted(list_name=list_name, limit=limit)
    if as_json:
        _echo_json([s.__dict__ for s in found])
        return
    for s in found:
        click.echo(
            f"{s.id}\t{_shown(s.list_name)}\t{s.signal_type}:{s.hash_hex}"
            f"\t{_when(s.retracted_at)}\t{_shown(s.retract_reason)}"
        )
    click.echo(f"{len(found)} retracted signal(s)")


# ----------------------------------------------------------------------------- match


@click.command("match")
@click.argument("queries", nargs=-1, required=True)
@click.option("--type", "signal_type", default=None, help="Type of bare hex (default pdq).")
@click.option(
    "--media-type", "media_types", multiple=True,
    help="Hash files as (default: vpdq for videos by extension, else pdq).",
)  # fmt: skip
@click.option("--threshold", type=int, default=None, help="Max distance (type default if unset).")
@click.option("--tenant", default=None, help="Match as this tenant (default: local admin).")
@click.option("--list", "lists", multiple=True, help="Only these lists; repeatable.")
@click.option("--dihedral", is_flag=True, help="Files: also match rotated/flipped copies.")
@click.option("--max-results", type=int, default=None)
@click.option(
    "--min-quality", type=click.IntRange(0, 100), default=None,
    help="Files: PDQ quality floor (default 50, as HMA).",
)  # fmt: skip
@click.option(
    "--low-quality-queries", type=click.Choice(["match_quality_stored", "skip"]), default=None,
    help="Files under the floor: match stored signals of known quality >= the floor only "
    "(match_quality_stored, default) or look nothing up (skip, as HMA).",
)  # fmt: skip
@file_timeout_option("the command stops with an error")
@click.option("--json", "as_json", is_flag=True)
@_data_dir_option
def match_command(
    queries, signal_type, media_types, threshold, tenant, lists, dihedral, max_results,
    min_quality, low_quality_queries, file_timeout, as_json, data_dir,
) -> None:  # fmt: skip
    """Match hashes ('type:hex' or hex) or media files against the local store.

    \b
      hashmatch match pdq:f8f8f0cee0f4a84f06370a22038f63f0b36e2ed596621e1d33e6b39c4e9c9b22
      hashmatch match photo.jpg --dihedral
      hashmatch match clip.mp4 clip.vpdq
      hashmatch match blurry.jpg --low-quality-queries skip
    """
    from hashmatch.engine.decode import LOCAL_LIMITS
    from hashmatch.engine.hashing import HashOptions
    from hashmatch.engine.scan import FileTimedOut, file_hash_hex, with_time_budget
    from hashmatch.server.commands.hashing import default_media_types

    out = []
    total = 0
    with _engine(data_dir) as engine:
        if tenant is not None:  # a typo is "no tenant named", not "0 match(es)", as lists ls
            engine.store.get_tenant(tenant)
        for query in queries:
            if Path(query).is_file():
                # each orientation hashed exactly, as the server and `scan --dihedral` do
                # and the stored pixels of an EXIF-oriented photo, as the server does;
                # local files: a film's frames as `hash` and `scan` take them
                options = with_time_budget(HashOptions(
                    dihedral=dihedral, dihedral_exact=dihedral, exif_as_stored=True,
                    limits=LOCAL_LIMITS,
                ), file_timeout)  # fmt: skip
                how = dict(
                    tenant=tenant, threshold=threshold, lists=lists or None,
                    max_results=max_results, min_quality=min_quality,
                    low_quality_queries=low_quality_queries,
                )  # fmt: skip
                video = vpdq_hash_file(query)
                if video is not None:  # a video's hashes already: match its frames
                    mm = engine.match_hashes([video], **how)
                else:
                    try:
                        mm = engine.match_media(
                            query, types=media_types or default_media_types(query), options=options,
                            **how,
                        )  # fmt: skip
                    except (MediaError, FileTimedOut) as exc:  # which of the files: say it
                        raise click.ClickException(f"{query}: {exc}") from None
                matches, skipped = mm.matches, mm.skipped_low_quality
                stored_only = mm.quality_stored_only
                # a video by its SHA-256 of frame codes, how the store (and scan) name it
                computed = [
                    f"{h.signal_type}:{file_hash_hex(signal_types.get(h.signal_type), h.codes)}"
                    for h in mm.hashes
                ]
            else:
                _refuse_special_file(query)
                try:
                    ((name, hex_),) = _targets([query], signal_type)
                except InvalidInput as exc:
                    if _looks_like_a_path(query):  # a mistyped file name, not a bad hash
                        raise click.ClickException(f"{query}: no such file") from None
                    raise click.ClickException(str(exc)) from None
                st = signal_types.get(name)
                found = engine.match(
                    name, st.parse(hex_)[None, :], tenant=tenant, threshold=threshold,
                    lists=lists or None, max_results=max_results,
                )[0]  # fmt: skip
                matches, skipped, computed = list(found), found.skipped_low_quality, []
                stored_only = found.quality_stored_only
            total += len(matches)
            out.append({"query": query, "hashes": computed, "skipped_low_quality": skipped,
                        "quality_stored_only": stored_only,
                        "matches": [m.__dict__ for m in matches]})  # fmt: skip
    if as_json:
        _echo_json(out)
        return
    for entry in out:
        extra = f" [{', '.join(entry['hashes'])}]" if entry["hashes"] else ""
        note = ""
        if entry["quality_stored_only"]:
            note = " (PDQ quality below the floor: stored quality >= the floor only)"
        elif entry["skipped_low_quality"]:
            note = " (skipped: PDQ quality below the floor)"
        click.echo(f"{entry['query']}{extra}: {len(entry['matches'])} match(es){note}")
        for m in entry["matches"]:
            pct = ""
            if m["signal_type"] == "vpdq":
                pct = f" query {m['query_match_pct']:.0f}% target {m['target_match_pct']:.0f}%"
            click.echo(
                f"  d={m['distance']:<3} {_shown(m['list_name'])}  {m['signal_type']}:"
                f"{m['hash_hex']}  id={m['signal_id']}"
                f" labels={','.join(map(_shown, m['labels'])) or '-'}"
                f" ext={_shown(m['external_id']) or '-'}{pct}"
                + (f" variant={m['variant']}" if m["variant"] else "")
            )
    click.echo(f"{len(out)} quer(ies), {total} match(es)")


def vpdq_hash_file(path: str):
    """A vPDQ hash file's video as a ``HashResult``, or None for any other file (media).

    Why: ``hashmatch hash``/``lists export`` users, vpdq's tools and python-threatexchange
    keep a video as its vPDQ (vpdq text, or the serialized JSON list); matching that file
    as the video's frames is what the server does with a video's vPDQ. Recognised as
    ``hashmatch ingest`` recognises the ``vpdq`` format (a ``.vpdq`` name, or a first
    line in one of those forms), and read by its parser: one format, one reader.

    A hash list (CSV, JSONL) holding one video's vPDQ is that video too:
    ``hashmatch hash clip.mp4 --format te`` (HMA's CSV) and its default JSONL give one
    row whose value is the frame list, which match hashed as a photo ("not an image").
    Any other hash list is refused saying what to give instead (see
    :func:`_one_video_of_a_list`).
    """
    from hashmatch.engine.ingest import file_format, read_records
    from hashmatch.engine.store import SignalRecord

    fmt = file_format(path)
    if fmt in ("csv", "jsonl"):  # not "hex": a plain PPM (P3) reads as TYPE HASH lines
        return _one_video_of_a_list(path, fmt)
    if fmt != "vpdq":
        return None
    (found,) = list(read_records(path, format="vpdq"))  # one video, or why not
    if not isinstance(found, SignalRecord):
        where = f"line {found.line}: " if found.line is not None else ""
        raise InvalidInput(f"{path}: not a vPDQ hash file: {where}{found.reason}")
    return _video_result(path, found)


def _video_result(path: str, found):
    """``found`` (a vPDQ SignalRecord with its frames) as the ``HashResult`` to match."""
    from hashmatch.engine.hashing import HashResult

    try:
        signal_types.check_frame_extras(len(found.frames), found.frame_qualities, found.timestamps)
    except InvalidInput as exc:
        raise InvalidInput(f"{path}: not a vPDQ hash file: {exc}") from None
    return HashResult(
        "vpdq", found.frames, list(found.frame_qualities or []), list(found.timestamps or [])
    )


def _one_video_of_a_list(path: str, fmt: str):
    """The video of a hash list ``path`` (format ``fmt``) holding one vPDQ signal and
    nothing else; any other list is refused with what to give instead (its one hash as
    TYPE:HEX; for several, a file per video or the hashes as arguments). At most two
    records are read: a list of millions is refused as fast as a list of two."""
    import itertools

    from hashmatch.engine.errors import UnknownSignalType
    from hashmatch.engine.ingest import read_records
    from hashmatch.engine.store import Rejection, frames_from_value

    try:
        records = list(itertools.islice(read_records(path, format=fmt), 2))
    except InvalidInput as exc:  # a header without the needed columns, untyped hex
        raise InvalidInput(f"{path}: not media, nor a hash file match reads: {exc}") from None
    if not records:
        raise InvalidInput(f"{path}: a hash list ({fmt}) with no signal in it, not media")
    found = records[0]
    where = f"line {found.line}: " if found.line is not None else ""
    if isinstance(found, Rejection):
        raise InvalidInput(f"{path}: not media, nor a hash file match reads: {where}{found.reason}")
    try:
        name = signal_types.get(found.signal_type).name
    except UnknownSignalType as exc:  # prose, say: "Hello world" reads as TYPE HASH
        raise InvalidInput(
            f"{path}: not media, nor a hash file match reads: {where}{exc}"
        ) from None
    if len(records) > 1:
        raise InvalidInput(
            f"{path}: a hash list ({fmt}) of several signals; match takes one video's vPDQ"
            " file (as `hashmatch hash clip.mp4 --format te` writes it), hashes as TYPE:HEX,"
            " or media: give its hashes as TYPE:HEX arguments, or each video's vPDQ in a"
            " file of its own"
        )
    if name != "vpdq":
        raise InvalidInput(
            f"{path}: holds one {name} hash, not media nor a video's vPDQ: match it as"
            f" {name}:{found.hash_hex}"
        )
    try:
        found = frames_from_value(found)
    except InvalidInput as exc:
        raise InvalidInput(f"{path}: not a vPDQ hash file: {where}{exc}") from None
    if found.frames is None:
        raise InvalidInput(
            f"{path}: not a vPDQ hash file: {where}the vpdq value is no frame list (a JSON"
            " list of 'hex,quality,timestamp', as `hashmatch hash --format te` writes it)"
        )
    return _video_result(path, found)


# ----------------------------------------------------------------------------- index


@click.group("index")
def index_group() -> None:
    """The live indexes derived from the store: rebuild, verify, stats, snapshot."""


def _stage_progress() -> tuple[Callable[[str, int, int], None], Callable[[], None]]:
    bars: dict[str, object] = {}

    def progress(stage: str, done: int, total: int) -> None:
        bar = bars.get(stage)
        if bar is None:
            bar = bars[stage] = _bar(total, stage, "sig")
        if bar is not None:
            bar.n = done
            bar.refresh()

    def close() -> None:
        for bar in bars.values():
            if bar is not None:
                bar.close()

    return progress, close


@index_group.command("rebuild")
@click.option("--no-snapshot", is_flag=True, help="Do not write a snapshot afterwards.")
@_data_dir_option
def index_rebuild(no_snapshot, data_dir) -> None:
    """Rebuild the indexes from the store (aside, then swap) and write a snapshot,
    so the next start-up loads it instead of reading the whole store."""
    progress, close = _stage_progress()
    failed = ""
    with _engine(data_dir) as engine:
        try:
            summary = engine.rebuild_index(progress=progress)
        finally:
            close()
        signals = engine.store.count_live(frames=False)
        try:
            path = None if no_snapshot else engine.snapshot()
        except (HashmatchError, OSError) as exc:  # the rebuild is done: say so, and the state
            path, failed = None, _after_failed_snapshot(engine, summary, exc)
    click.echo(
        f"rebuilt {sum(signals.values())} signal(s) in {summary['seconds']:.2f}s "
        f"({_per_type(signals, summary['types']) or 'empty'}) at change {summary['change_counter']}"
    )
    if summary["recounted_lists"]:
        click.echo(f"list counters corrected: {summary['recounted_lists']} (list, type) pair(s)")
    if path:
        click.echo(f"snapshot written: {path}")
    if failed:
        raise click.ClickException(failed)


def _after_failed_snapshot(engine, summary: dict, exc: BaseException) -> str:
    """What ``index rebuild`` says when its snapshot fails: that the rebuild itself
    succeeded, what the data dir now holds, and what to run.

    Why: it said only the snapshot's error ("... the live index is unaffected"), so an
    operator could not tell whether the rebuild had run, or what the next start loads."""
    from hashmatch.engine.snapshot_files import list_snapshots, snapshot_counter

    counter = engine.store.change_counter()
    newest = next(iter(list_snapshots(engine.snapshot_dir)), None)
    if newest is None:
        next_start = "it holds no snapshot, so the next start builds the index from the store"
    else:
        at = snapshot_counter(newest.parent.name)
        since = f", {counter - at} change(s) behind the store" if at is not None else ""
        next_start = (
            f"the next start loads the newest snapshot there, {newest.parent.name}{since},"
            " and replays the changes since (or builds from the store if it is unusable)"
        )
    recounted = " except the list counters it corrected" if summary.get("recounted_lists") else ""
    return (
        f"the rebuild itself succeeded (above; in the audit log as index.rebuild) but its"
        f" snapshot failed: {exc}. The data dir: the store is unchanged{recounted}, and"
        f" {engine.snapshot_dir} has no new snapshot: {next_start}. Make"
        f" {engine.snapshot_dir} writable (or free space), then run `hashmatch index"
        " snapshot` (`index rebuild --no-snapshot` skips the snapshot)"
    )


def _per_type(signals: dict[str, int], rows: dict[str, int]) -> str:
    """`pdq: 2, vpdq: 1 (1178 frames)`: signals per type, as `lists ls` and `index stats`
    count them, with the index rows where a signal has several (a video's frames); the
    rebuild used to call its 1,179 rows here "1179 signal(s)"."""
    return ", ".join(
        f"{t}: {signals.get(t, 0)}" + (f" ({n} frames)" if n != signals.get(t, 0) else "")
        for t, n in rows.items()
    )


@index_group.command("snapshot")
@_data_dir_option
def index_snapshot(data_dir) -> None:
    """Write a snapshot of the live indexes (loaded from the last one + replay)."""
    with _engine(data_dir) as engine:
        path = engine.snapshot()
        counter = engine.stats()["applied_counter"]
    click.echo(f"snapshot written: {path} (change {counter})")


@index_group.command("verify")
@click.option("--sample", default=20_000, show_default=True, help="Signals checked per type.")
@click.option("--json", "as_json", is_flag=True)
@_data_dir_option
def index_verify(sample, as_json, data_dir) -> None:
    """Check index <=> store: counts agree, live signals are found, retracted ones are not."""
    with _engine(data_dir) as engine:
        report = engine.verify_index(sample=sample)
    if as_json:
        _echo_json(report)
    else:
        _echo_skipped(report.get("skipped_snapshots", []))
        for stype, e in report["types"].items():
            click.echo(
                f"{stype}: store {e['store']}, index {e['index']}, checked {e['checked']}, "
                f"missing {len(e['missing'])}, stale {len(e['stale'])}: "
                f"{'ok' if e['ok'] else 'MISMATCH'}"
            )
        click.echo("index verify: " + ("ok" if report["ok"] else "FAILED"))
        if any(e["store"] != e["index"] for e in report["types"].values()):
            click.echo(
                "the counts disagree: run `hashmatch index rebuild` (it rebuilds the index"
                " and recounts the lists from the signals)"
            )
    if not report["ok"]:
        sys.exit(1)


@index_group.command("stats")
@click.option("--json", "as_json", is_flag=True)
@_data_dir_option
def index_stats(as_json, data_dir) -> None:
    """Signals per type and list, index kinds, load source, memory."""
    with _engine(data_dir) as engine:
        stats = engine.stats()
    if as_json:
        _echo_json(stats)
        return
    click.echo(f"total signals (not retracted; expired included): {stats['total_signals']}")
    for stype, e in stats["types"].items():
        frames = f" ({e['rows']} frames)" if e.get("rows", e["count"]) != e["count"] else ""
        kind = e["kind"] or "no index"
        click.echo(f"  {stype}: {e['count']} stored{frames}, {e['indexed']} indexed ({kind})")
    for name, count in stats["lists"].items():
        click.echo(f"  list {name}: {count}")
    load = stats.get("load") or {}
    click.echo(
        f"loaded from {load.get('source', '?')} in {load.get('seconds', 0)}s, change counter "
        f"{stats['change_counter']}, memory {stats['memory_bytes'] / 2**20:.0f} MiB"
    )
    _echo_skipped(load.get("skipped_snapshots", []))


def _echo_skipped(skipped: list[str]) -> None:
    """Snapshots the load refused, with why (damaged, stale, another store's)."""
    for entry in skipped:
        click.echo(f"skipped snapshot {entry}")


# ----------------------------------------------------------------------------- tenants


@click.group("tenants")
def tenants_group() -> None:
    """Tenants (calling platforms) and the lists shared with them."""


@tenants_group.command("create")
@click.argument("name")
@click.option("--admin", is_flag=True, help="Sees and writes every list.")
@_data_dir_option
def tenants_create(name, admin, data_dir) -> None:
    """Create a tenant (a calling platform): the store's side of a token. Lists are
    shared with it by `tenants grant`; the token that authenticates it is made with
    `hashmatch token NAME` (same name)."""
    with _engine(data_dir, create=True) as engine:
        engine.store.create_tenant(name, admin=admin)
    click.echo(f"created tenant {name!r}{' (admin)' if admin else ''}")


@tenants_group.command("grant")
@click.argument("tenant")
@click.argument("list_name")
@click.option("--write", is_flag=True, help="Also let it ingest and retract.")
@_data_dir_option
def tenants_grant(tenant, list_name, write, data_dir) -> None:
    """Share a list with a tenant (read, or read+write). A grant never takes a right
    away: a tenant that writes the list keeps write (`tenants revoke --write-only`
    takes it back)."""
    with _engine(data_dir) as engine:
        t = engine.store.grant(tenant, list_name, write=write)
    name = list_name.strip()
    kept = not write and name in t.writes
    right = "read+write" if write or kept else "read"
    said = f"shared {list_name!r} with {tenant!r} ({right}"
    if kept:
        said += "; it already wrote it: `hashmatch tenants revoke --write-only` takes write back"
    click.echo(f"{said}); it now reads {len(t.reads)} list(s)")


@tenants_group.command("revoke")
@click.argument("tenant")
@click.argument("list_name")
@click.option("--write-only", is_flag=True, help="Take back only write: it still reads the list.")
@_data_dir_option
def tenants_revoke(tenant, list_name, write_only, data_dir) -> None:
    """Stop sharing a list with a tenant (from its next lookup), or with --write-only
    stop its ingests and retractions into it (it still matches against it)."""
    name = list_name.strip()
    with _engine(data_dir) as engine:
        before = engine.store.get_tenant(tenant)
        t = engine.store.revoke(tenant, list_name, write_only=write_only)
    if write_only:
        if name not in before.writes:
            click.echo(f"{tenant!r} could not write {list_name!r}; nothing to revoke")
            return
        click.echo(f"{tenant!r} can no longer write {list_name!r}; it still reads it")
        return
    if name not in before.reads:
        click.echo(f"{tenant!r} was not granted {list_name!r}; nothing to revoke")
        return
    click.echo(f"revoked {list_name!r} from {tenant!r}; it now reads {len(t.reads)} list(s)")


@tenants_group.command("ls")
@_data_dir_option
def tenants_ls(data_dir) -> None:
    """Tenants and the lists each reads and writes."""
    with _engine(data_dir) as engine:
        found = engine.store.tenants()
    for t in found:
        if t.is_admin:  # its grants (none, usually) are not what it sees: every list
            click.echo(f"{t.name} (admin): reads every list; writes every list")
            continue
        click.echo(
            f"{t.name}: reads {','.join(t.reads) or '-'}; writes {','.join(t.writes) or '-'}"
        )
    click.echo(f"{len(found)} tenant(s)")


# ----------------------------------------------------------------------------- audit


@click.command("audit")
@click.option("--limit", default=50, show_default=True)
@click.option("--action", default=None, help="Only this action (ingest, retract, ...).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@_data_dir_option
def audit_command(limit, action, as_json, data_dir) -> None:
    """The audit log, newest first: who did what, when, how many, from which file, and
    the details (tenant, write flag, retraction reason, ids)."""
    with _engine(data_dir) as engine:
        entries = engine.store.audit(limit=limit, action=action)
        if action and not entries:  # a typo reads as "nothing happened" otherwise
            logged = sorted(
                a for (a,) in engine.store.conn().execute("SELECT DISTINCT action FROM audit_log")
            )
            click.echo(
                f"no entries with action {action!r}; actions logged: {', '.join(logged) or '-'}",
                err=True,
            )
    if as_json:
        _echo_json([e.__dict__ for e in entries])
        return
    for e in entries:
        details = json.dumps(e.details, separators=(",", ":"), default=str) if e.details else ""
        click.echo(
            f"{_when(e.at)}  {_shown(e.actor):10} {e.action:14} {_shown(e.list_name) or '-':16} "
            f"n={e.count:<8} {_shown(e.source)} {details}".rstrip()
        )
    click.echo(f"{len(entries)} entr(ies)")


@click.command("backup")
@click.argument("dest", type=click.Path(dir_okay=True, file_okay=True))
@click.option("--actor", default="local", help="Who to record in the audit log.")
@_data_dir_option
def backup_command(dest, actor, data_dir) -> None:
    """Copy the store to DEST while it keeps serving: one consistent, checked file.

    \b
    DEST: a new file, or an existing directory (the file is named
    store-<UTC time>.sqlite).
    The store is the one thing that cannot be rebuilt (indexes and snapshots are
    derived from it); ingests and lookups go on during the copy. An existing file is
    never overwritten. Restore: stop every hashmatch process on the data dir, copy
    the backup over DATA_DIR/store.sqlite, delete store.sqlite-wal and -shm, start.

    \b
    Example:
      hashmatch backup /backups/hashmatch/ --data-dir /srv/hashmatch-data
    """
    from hashmatch.engine.backup import backup_store

    with _engine(data_dir) as engine:
        report = backup_store(engine.store, dest)
        try:
            engine.store.record("store.backup", actor=actor, count=report.signals,
                                source=str(report.path),
                                details={"change_counter": report.change_counter,
                                         "bytes": report.bytes})  # fmt: skip
        except (sqlite3.Error, OSError) as exc:  # the backup itself is complete
            click.echo(f"warning: backup written, but not recorded in the audit log: {exc}",
                       err=True)  # fmt: skip
    click.echo(
        f"backup written: {report.path} ({report.signals} signal(s), change"
        f" {report.change_counter}, {report.bytes:,} bytes, {report.seconds:.2f}s)"
    )


COMMANDS: list[click.Command] = [
    lists_group,
    ingest_command,
    retract_command,
    restore_command,
    retracted_command,
    match_command,
    index_group,
    tenants_group,
    audit_command,
    backup_command,
]
