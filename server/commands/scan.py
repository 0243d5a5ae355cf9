"""CLI verbs for batch scans: ``hashmatch scan`` and ``hashmatch rescan``.

Thin skins over :func:`hashmatch.engine.scan.scan` and
:func:`hashmatch.engine.rescan.rescan`: parse options, open the catalog and the
matcher (local data dir or ``--server``), call the library, print the summary.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import os
import resource
import signal
import sqlite3
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import click

from hashmatch.engine.errors import HashmatchError, is_disk_full, nearly_full
from hashmatch.engine.media_limits import LOCAL_MAX_VIDEO_FRAMES
from hashmatch.engine.scan_pool_start import WorkersFailedToStart
from hashmatch.server.commands.hashing import file_timeout_option
from hashmatch.server.commands.scan_no_store import no_store
from hashmatch.server.commands.service import (
    connect,
    server_access_options,
    unauthenticated_hint,
)

DEFAULT_DATA_DIR = "./hashmatch-data"


def _catalog_path(data_dir: str, catalog: str | None) -> Path:
    return Path(catalog) if catalog else Path(data_dir) / "catalog.sqlite"


def _print_summary(summary: dict) -> None:
    click.echo(json.dumps(summary, sort_keys=False), err=True)


@click.command("scan")
@click.argument("paths", nargs=-1, type=click.Path(path_type=str))
@click.option(
    "--from-list",
    "from_list",
    # names are bytes: one not in UTF-8 must reach the scan as itself, not stop it
    type=click.File("r", encoding="utf-8", errors="surrogateescape"),
    help="File of paths or file:// URIs, one a line ('-' = stdin).",
)
@click.option(
    "--types",
    default="pdq,md5",
    show_default=True,
    help="Comma-separated signal types. The report has matches of these types only "
    "(the catalog keeps other types' matches of earlier scans).",
)
@click.option(
    "--data-dir",
    default=lambda: os.environ.get("HASHMATCH_DATA_DIR", DEFAULT_DATA_DIR),
    show_default="$HASHMATCH_DATA_DIR or ./hashmatch-data",
    help="Local store to match against (and default catalog location).",
)
@click.option("--catalog", help="Catalog database [default: DATA_DIR/catalog.sqlite].")
@click.option("--server", help="Match through a running server (host:port) instead of locally.")
@click.option("--token", envvar="HASHMATCH_TOKEN", help="Bearer token for --server.")
@click.option("--tls", is_flag=True, help="Use TLS to reach --server.")
@server_access_options
@click.option(
    "--out",
    "out",
    default="-",
    show_default=True,
    help="Report (JSONL: match and failure records, then a summary); '-' = stdout.",
)
@click.option(
    "--workers",
    type=click.IntRange(min=0),
    help="Hashing processes [default: all cores; 0 = inline].",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=256,
    show_default=True,
    help="Files per match/commit.",
)
@click.option("--threshold", type=int, help="Match distance [default: the type's].")
@click.option(
    "--list",
    "lists",
    multiple=True,
    help="Only these hash lists (repeatable); the report has their matches only. The next "
    "rescan matches the files in the other lists, from the catalog.",
)
@click.option("--dihedral", is_flag=True, help="PDQ: also match rotated/flipped copies.")
@click.option(
    "--fast-decode", is_flag=True, help="PDQ from JPEG luma: faster, a few bits from pdqhash."
)
@click.option(
    "--fast-decode-shrink",
    is_flag=True,
    help="PDQ from JPEG luma shrunk while decoding: faster still, but fine textures "
    "can move past the match threshold.",
)
@click.option(
    "--max-bytes", default=256 * 1024 * 1024, show_default=True, help="Skip larger files."
)
@click.option(
    "--max-video-frames",
    type=click.IntRange(min=1),
    default=LOCAL_MAX_VIDEO_FRAMES,
    show_default=True,
    help="vPDQ: refuse videos with more sampled frames (100k = 27 h at one a second).",
)
@file_timeout_option("it fails as 'timeout'")
@click.option("--no-follow-symlinks", is_flag=True, help="Do not follow symbolic links.")
@click.option(
    "--check-stat",
    type=click.Choice(["full", "minimal"]),
    default="full",
    show_default=True,
    help="What proves a file unchanged: size, mtime, inode and ctime, or (minimal, for "
    "filesystems that make inode numbers up: CIFS noserverino, sshfs) size and mtime.",
)
@click.option(
    "--no-match",
    is_flag=True,
    help="Only hash into the catalog; no lookups. The next rescan matches the files in "
    "every list, from the catalog.",
)
@click.option(
    "--progress/--no-progress",
    default=None,
    help="Progress bar [default: on a terminal; log lines otherwise].",
)
def scan_command(
    paths,
    from_list,
    types,
    data_dir,
    catalog,
    server,
    token,
    tls,
    token_file,
    ca,
    cert,
    key,
    server_name,
    out,
    workers,
    batch_size,
    threshold,
    lists,
    dihedral,
    fast_decode,
    fast_decode_shrink,
    max_bytes,
    max_video_frames,
    file_timeout,
    no_follow_symlinks,
    check_stat,
    no_match,
    progress,
) -> None:
    """Hash every file under PATHS (or in --from-list) and report matches.

    \b
      hashmatch scan /srv/media --types pdq,md5 --out report.jsonl
      find /srv/media -name '*.jpg' | hashmatch scan --from-list - --workers 4
      hashmatch scan /srv/media --server 127.0.0.1:50051 --out report.jsonl

    Files are recorded in the catalog: a re-run (or a run resumed after a crash)
    skips unchanged files and writes the same report.
    """
    from hashmatch.engine.catalog import Catalog
    from hashmatch.engine.rescan import claim_tenant
    from hashmatch.engine.scan import LocalMatcher, RemoteMatcher, ScanOptions, scan
    from hashmatch.server import interrupts

    if not paths and from_list is None:
        raise click.UsageError("give PATHS or --from-list")
    type_list = tuple(t.strip().lower() for t in types.split(",") if t.strip())
    if not type_list:
        raise click.BadParameter("give at least one signal type", param_hint="--types")
    catalog_path = _catalog_path(data_dir, catalog)
    matcher = tenant = None
    other_lists: list[str] = []  # visible lists a --list scan did not look in
    with (
        _report_reader_gone_said(),
        _stopped_scan_said(),
        _one_line_errors(server, name_server=True),
    ):
        try:
            _check_roots(paths)  # before anything: a typo'd root is no "nothing matched"
            _check_threshold(type_list, threshold)  # now, not after the first batch is hashed
            _check_out(out, catalog_path, Path(data_dir))  # (the report is written last)
            options = ScanOptions(
                types=type_list,
                workers=workers,
                batch_size=batch_size,
                follow_symlinks=not no_follow_symlinks,
                check_stat=check_stat,
                max_bytes=max_bytes,
                max_video_frames=max_video_frames,
                file_timeout=file_timeout or None,
                dihedral=dihedral,
                fast_decode=2 if fast_decode_shrink else int(fast_decode),
                progress=progress,
            )
            if no_match:
                matcher = None
            elif server:
                client = _serving_client(server, token, tls, token_file=token_file, ca=ca,
                                         cert=cert, key=key, server_name=server_name)  # fmt: skip
                matcher = RemoteMatcher(client, threshold=threshold, lists=lists)
                shared = client.list_hash_lists()
                tenant = shared.tenant  # "" from an older server
                if lists:
                    _check_lists(lists, {x.name for x in shared.lists})
                    other_lists = sorted({x.name for x in shared.lists} - set(lists))
            else:
                if not (Path(data_dir) / "store.sqlite").exists():
                    raise no_store("scan", data_dir, catalog_path)
                matcher = LocalMatcher.open(data_dir, threshold=threshold, lists=lists)
                if lists:
                    visible = {x.name for x in matcher.engine.store.lists()}
                    _check_lists(lists, visible)
                    other_lists = sorted(visible - set(lists))
            with _catalog_errors(catalog_path), Catalog(catalog_path) as cat:
                if tenant is not None:  # the matches are this tenant's view: rescans check it
                    claim_tenant(cat, server, tenant)
                # a stop is cooperative only once the scan runs: before, the wait for a
                # server (--server: 60 s) or an index load only noted a Ctrl-C, then the
                # scan stopped at once, or the wait failed on its own (exit 1, not 130)
                with interrupts.cooperative() as stop:
                    summary = scan(
                        paths,
                        catalog=cat,
                        matcher=matcher,
                        from_list=from_list,
                        report=out,
                        options=dataclasses.replace(options, stop=stop),
                    )
        finally:
            if matcher is not None:
                matcher.close()
    _print_summary(summary.as_dict())
    _note_decoder_warnings(summary.decoded_with_warnings, summary.warnings_not_listed, out)
    if other_lists and summary.hashed:
        _note_lists_not_matched(summary.hashed, lists, other_lists)
    if summary.videos_without_vpdq:
        named = summary.videos_without_vpdq_named
        more = summary.videos_without_vpdq - len(named)
        click.echo(
            f"note: {summary.videos_without_vpdq} video file(s) were not hashed as video"
            f" (--types {','.join(options.types)}): only an exact copy can match them; add"
            " vpdq to --types to match edited copies: "
            + ", ".join(map(_shown_path, named))
            + (f" and {more} more" if more else ""),
            err=True,
        )


def _note_decoder_warnings(count: int, not_listed: int, out: str) -> None:
    """Name the files decoded past damage: their libjpeg warnings no longer show on
    stderr (scan_stderr), so the analyst learns of them here and in the report (which
    lists the first MAX_WARNED_LISTED of them: ``not_listed`` are only counted)."""
    if count:
        where = "the report's" if out != "-" else "the"
        unlisted = f" ({not_listed} of them not listed: counted only)" if not_listed else ""
        click.echo(
            f"note: {count} file(s) decoded with decoder warnings (corrupt data decoded past:"
            f' their hashes may not be of the intended picture): see {where} "warning"'
            f" records{unlisted}",
            err=True,
        )


@contextlib.contextmanager
def _report_reader_gone_said() -> Iterator[None]:
    """``--out - | head``: the reader left before the report's end. The scan itself
    was done (every file committed, the run finished): its summary and what a re-run
    gives, on stderr; exit 1 without a traceback (as click ends on a broken pipe). It
    used to end with click's bare exit 1: no summary, the run left unfinished.

    A reader that left while files were still being hashed stopped the scan there
    (``interrupted``, as a stop signal does): it used to be noticed only by the
    report's write, once every remaining file had been hashed for nobody."""
    from hashmatch.engine.scan import ReportReaderGone
    from hashmatch.server import interrupts

    try:
        yield
    except ReportReaderGone as exc:
        # stdout is gone: Python's flush of it at exit must not print a BrokenPipeError
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        s = exc.summary
        with contextlib.suppress(OSError):  # stderr may be the same closed pipe
            _print_summary(s.as_dict())
            if s.interrupted:
                click.echo(
                    "scan: the report's reader (stdout) closed the pipe before the scan's end:"
                    f" stopped; {_done_files(s)}",
                    err=True,
                )
            else:
                click.echo(
                    "scan: the report's reader closed the pipe before its end; every file is"
                    " committed to the catalog: run the same command again for the whole"
                    " report (no file is hashed again)",
                    err=True,
                )
        if s.interrupted and interrupts.received() is not None:  # a signal came too
            raise interrupts.Interrupted(interrupts.received()) from None
        sys.exit(1)


def _done_files(s) -> str:
    """What a stopped scan kept, and that running it again resumes."""
    return (
        f"{s.hashed + s.skipped_unchanged + s.failed} file(s) done and committed to the"
        f" catalog ({s.hashed} hashed, {s.skipped_unchanged} unchanged, {s.failed} failed),"
        " the files in flight dropped; no report was written: run the same command again"
        " to resume (done files are not hashed again)"
    )


def _note_lists_not_matched(hashed: int, lists: tuple[str, ...], others: list[str]) -> None:
    """Say that the files this --list scan hashed were not matched in the other lists,
    so its report has none of those matches, and that the next rescan matches them
    there (the catalog records what each file was matched in: catalog_coverage), with
    the earlier signals too, from their catalogued hashes. (A --no-match scan asked
    for no matching: nothing to say; the next rescan matches its files likewise.)"""
    shown = ", ".join(others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5 else "")
    click.echo(
        f"note: the {hashed} file(s) hashed by this scan were matched in --list"
        f" {', '.join(lists)} only; the next `hashmatch rescan` matches them in the other"
        f" lists ({shown}) as well, with the signals shared before it too, from their"
        " catalogued hashes (no file is hashed again)",
        err=True,
    )


@contextlib.contextmanager
def _stopped_scan_said() -> Iterator[None]:
    """A scan a signal stopped: its summary (``"interrupted": true``: how far it got) and
    what a re-run does, on stderr; then the CLI exits 128 + the signal (130 on Ctrl-C)."""
    from hashmatch.engine.scan import ScanInterrupted
    from hashmatch.server import interrupts

    try:
        yield
    except ScanInterrupted as exc:
        s = exc.summary
        with contextlib.suppress(OSError):  # a closed terminal (SIGHUP)
            _print_summary(s.as_dict())
            click.echo(f"scan: stopped; {_done_files(s)}", err=True)
        raise interrupts.Interrupted(interrupts.received() or signal.SIGINT) from None


def _shown_path(path: str) -> str:
    """A path for a stderr line: a name that is not UTF-8 (kept as surrogate escapes)
    shows its bytes as \\xNN instead of failing to print."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


@click.command("rescan")
@click.option(
    "--since",
    default="last",
    show_default=True,
    help="'last' (since the previous rescan), 'all', or a store change number.",
)
@click.option(
    "--data-dir",
    default=lambda: os.environ.get("HASHMATCH_DATA_DIR", DEFAULT_DATA_DIR),
    show_default="$HASHMATCH_DATA_DIR or ./hashmatch-data",
    help="The local store whose new signals are matched (and default catalog location).",
)
@click.option("--catalog", help="Catalog database [default: DATA_DIR/catalog.sqlite].")
@click.option("--server", help="Read the new signals from a running server (host:port).")
@click.option("--token", envvar="HASHMATCH_TOKEN", help="Bearer token for --server.")
@click.option("--tls", is_flag=True, help="Use TLS to reach --server.")
@server_access_options
@click.option("--threshold", type=int, help="Match distance [default: the type's].")
@click.option("--out", "out", default="-", show_default=True, help="Report (JSONL); '-' = stdout.")
def rescan_command(
    since, data_dir, catalog, server, token, tls, token_file, ca, cert, key, server_name,
    threshold, out,
) -> None:  # fmt: skip
    """Match the catalog of scanned files against signals added since the last rescan.

    \b
      hashmatch ingest partner.csv --list partner-a
      hashmatch rescan --out new-matches.jsonl
      hashmatch rescan --server 127.0.0.1:50051 --catalog catalog.sqlite

    No file is re-hashed: the catalog's hashes are indexed and queried with only
    the new signals; the files a scan matched in some lists only (--list,
    --no-match) are also looked up in the others, from their catalogued hashes.
    Matches whose signal was retracted since are reported as retractions. With
    --server, the signals come from the server's change log (only the lists shared
    with the token's tenant); the cursor is kept per server and belongs to one
    tenant: another tenant's token is refused (--since all re-baselines the catalog
    as that tenant).
    """
    from hashmatch.engine.catalog import Catalog
    from hashmatch.engine.rescan import ServerChanges, rescan
    from hashmatch.engine.store import SignalStore

    if since == "last":
        since_seq = None
    elif since == "all":
        since_seq = 0
    else:
        try:
            since_seq = int(since)
        except ValueError:
            since_seq = -1
        if since_seq < 0:
            raise click.BadParameter(
                "'last', 'all' or a log position >= 0", param_hint="--since"
            ) from None
    path = _catalog_path(data_dir, catalog)
    if not path.exists():
        raise click.ClickException(f"no catalog at {path}: run `hashmatch scan` first")
    store_path = Path(data_dir) / "store.sqlite"
    if not server and not store_path.exists():
        raise no_store("rescan", data_dir, path)
    with _one_line_errors(server, name_server=False), contextlib.ExitStack() as stack:
        if server:
            client = stack.enter_context(
                _serving_client(server, token, tls, token_file=token_file, ca=ca, cert=cert,
                                key=key, server_name=server_name)
            )  # fmt: skip
            source = ServerChanges(client, server)
        else:
            source = stack.enter_context(contextlib.closing(SignalStore(store_path, create=False)))
        stack.enter_context(_catalog_errors(path))  # its SQLite errors: one line naming it
        cat = stack.enter_context(Catalog(path))
        result = rescan(cat, source, since=since_seq, threshold=threshold, report=out)
    _print_summary(result.summary.as_dict())


COMMANDS: list[click.Command] = [scan_command, rescan_command]


def _check_threshold(type_list: tuple[str, ...], threshold: int | None) -> None:
    """A --threshold every requested type accepts (exact types always match at 0)."""
    from hashmatch.engine import signal_types

    for name in type_list:
        st = signal_types.get(name, field="--types")
        if threshold is not None and not st.exact:
            st.check_threshold(threshold, field="--threshold")


def _check_roots(paths: tuple[str, ...]) -> None:
    """Every PATH can be reached, or the scan is refused before anything is done.

    Why: a root that is not there (a typo, a share not mounted: its dead mount point, a
    broken symlink) was one ``not-found`` failure in a scan that exited 0, a report a
    cron job or an analyst read as "nothing matched". ``find`` and ``rsync`` refuse
    such a root too. Files that vanish during the walk, and --from-list names, are
    still ``not-found`` failures of a scan that goes on."""
    for path in paths:
        try:
            os.stat(path)
        except OSError as exc:
            broken = " (a broken symbolic link)" if os.path.islink(path) else ""
            raise click.ClickException(
                f"{_shown_path(path)}: {exc.strerror or exc}{broken}: nothing was scanned"
            ) from None


def _check_out(out: str, catalog_path: Path, data_dir: Path) -> None:
    """The report can be written, and is not one of hashmatch's own databases.

    Why now: the report is written after the last file is hashed; a typo in --out
    used to surface only then. And --out pointing at the catalog or the store would
    replace a database with a report.
    """
    from hashmatch.engine.catalog import CATALOG_SUFFIXES

    if out == "-":
        return
    target = Path(out)
    if target.is_dir():
        raise click.ClickException(f"--out: {out} is a directory")
    if target.exists() and not target.is_file():  # /dev/stdout, a FIFO: written as is
        return
    resolved = target.resolve()
    own = [Path(f"{catalog_path}{suffix}") for suffix in CATALOG_SUFFIXES]
    own += [data_dir / f"store.sqlite{suffix}" for suffix in CATALOG_SUFFIXES]
    if any(resolved == p.resolve() for p in own):
        raise click.ClickException(f"--out: {out} is hashmatch's own database, not a report")
    try:  # the real test (permissions, read-only filesystems, missing directories)
        with tempfile.TemporaryFile(dir=resolved.parent):
            pass
    except OSError as exc:
        raise click.ClickException(
            f"--out: cannot write a report in {resolved.parent}: {exc.strerror or exc}"
        ) from None


@contextlib.contextmanager
def _catalog_errors(path: Path) -> Iterator[None]:
    """SQLite errors of the catalog (not a database, disk full, unwritable) as one line
    naming it, instead of a traceback; so are OS errors on its files (its lock)."""
    try:
        yield
    except sqlite3.Error as exc:
        full = " (the disk is full: free space and re-run)" if _disk_full(exc, path) else ""
        raise click.ClickException(f"catalog {path}: {exc}{full}") from exc
    except OSError as exc:
        from hashmatch.engine.catalog import CATALOG_SUFFIXES

        own = {f"{path}{suffix}" for suffix in CATALOG_SUFFIXES}
        own |= {str(p) for p in path.parents}  # its directory, which the catalog creates
        if str(exc.filename) not in own:
            raise  # e.g. the report's: named by _one_line_errors
        raise click.ClickException(
            f"catalog {path}: {exc.filename}: {exc.strerror or exc}"
        ) from exc


def _disk_full(exc: sqlite3.Error, path: Path) -> bool:
    """SQLITE_FULL, or a bare "disk I/O error" with under 1 MiB left where the catalog
    lives (SQLite could not create its -wal/-shm files: the usual cause)."""
    return is_disk_full(exc) or nearly_full(path)


def _os_hint(exc: OSError) -> str:
    """What to do about the OS errors an operator can fix: open-file and disk limits."""
    if exc.errno == errno.EMFILE:
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        return f" (open-file limit {soft}: raise ulimit -n, or use fewer --workers)"
    if is_disk_full(exc):
        return " (the disk is full: free space and re-run; the catalog keeps what was done)"
    return ""


def _check_lists(lists: tuple[str, ...], known: set[str]) -> None:
    """Every --list names a list the caller can see: refused now, not after the first
    batch of files is hashed (where a resume would only fail again)."""
    missing = [name for name in lists if name not in known]
    if missing:
        raise click.ClickException(
            f"--list: no hash list named {', '.join(map(repr, missing))} is visible "
            f"(lists: {', '.join(sorted(known)) or 'none'})"
        )


def _serving_client(
    server: str, token: str | None, tls: bool, *, wait: float = 60.0, **access: str | None
):
    """A client of ``server`` (:func:`connect`; ``access``: its --token-file, --ca, --cert,
    --key, --server-name) once its health says SERVING (up to ``wait`` s; closed if not)
    and the token is accepted (checked before any file is hashed)."""
    import grpc

    client = connect(server, token, tls, **access)
    try:
        try:
            client.wait_until_serving(timeout=wait)
        except ConnectionError as exc:  # a certificate that will not verify
            raise click.ClickException(f"{server}: {exc}") from None
        # a missing or wrong token used to show only after the first batch was hashed, as
        # "matching failed (UNAUTHENTICATED ...): run the same scan again to resume"
        client.list_hash_lists()
    except grpc.RpcError as exc:
        client.close()
        hint = ""
        if exc.code() is grpc.StatusCode.UNAUTHENTICATED:
            hint = f" ({unauthenticated_hint(exc.details() or '')})"
        raise click.ClickException(f"{server}: {exc.code().name}: {exc.details()}{hint}") from None
    except BaseException:
        client.close()
        raise
    return client


@contextlib.contextmanager
def _one_line_errors(server: str | None, *, name_server: bool) -> Iterator[None]:
    """What a scan or rescan can meet, as one-line click errors (exit 1, no traceback).

    ``name_server``: prefix hashmatch errors with the server's address too (a scan's
    errors come from files or the server; a rescan's name their source themselves).
    grpc is imported only when a server is given.
    """
    rpc_errors: tuple[type[Exception], ...] = ()
    if server:
        import grpc

        rpc_errors = (grpc.RpcError,)
    try:
        yield
    except (HashmatchError, TimeoutError) as exc:
        ours = isinstance(exc, WorkersFailedToStart)  # this machine's workers, not the server
        raise click.ClickException(
            f"{server}: {exc}" if server and name_server and not ours else str(exc)
        ) from exc
    except BrokenPipeError:  # --out - | head: click ends quietly, as `cat | head` would
        raise
    except OSError as exc:  # e.g. a full disk while the report is written
        where = f"{exc.filename}: " if exc.filename else ""
        raise click.ClickException(f"{where}{exc.strerror or exc}{_os_hint(exc)}") from exc
    except rpc_errors as exc:
        raise click.ClickException(f"{server}: {exc.code().name}: {exc.details()}") from exc
