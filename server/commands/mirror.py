"""CLI verb ``hashmatch mirror``: keep local lists in step with a hub's shared lists.

One call of :func:`hashmatch.engine.mirror.mirror` per pass (``--follow``: one pass
every ``--interval`` seconds until SIGINT/SIGTERM), on the local data dir the other
store verbs use; the hub is reached as ``rescan --server`` reaches a server.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import threading
import time
from pathlib import Path

import click

from hashmatch.server.commands.scan import _one_line_errors, _serving_client
from hashmatch.server.commands.service import server_access_options
from hashmatch.server.commands.store import (
    _data_dir_option,
    _engine,
    note_stale_snapshots,
)
from hashmatch.server.commands.store_lock_notice import locked_hint


@click.command("mirror")
@click.option("--server", required=True, help="The hub (host:port) whose lists are mirrored.")
@click.option("--token", envvar="HASHMATCH_TOKEN", help="Bearer token with the export role.")
@click.option("--tls", is_flag=True, help="Use TLS to reach --server.")
@server_access_options
@click.option(
    "--prefix",
    required=True,
    help="Local list name = PREFIX + the hub's list name (e.g. 'hub/'); also the mirror's"
    " name: its cursor and lists are kept under it.",
)
@click.option("--list", "lists", multiple=True, help="Only this remote list; repeatable.")
@click.option("--types", default="", help="Comma-separated signal types (default: all).")
@click.option("--resync", is_flag=True, help="Re-read the hub's log from the start.")
@click.option("--follow", is_flag=True, help="Keep mirroring, one pass every --interval.")
@click.option("--interval", type=float, default=60.0, show_default=True, help="Seconds.")
@click.option(
    "--page-size",
    type=click.IntRange(min=1),
    default=10_000,
    show_default=True,
    help="Changes per transaction (a big hub log entry spans pages; a vPDQ video counts"
    " one per 10 frames; an older hub sends whole entries).",
)
@click.option("--wait", type=float, default=30.0, show_default=True,
              help="Seconds to wait for the hub to answer SERVING.")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="One JSON object per pass.")
@_data_dir_option
def mirror_command(server, token, tls, token_file, ca, cert, key, server_name, prefix, lists,
                   types, resync, follow, interval, page_size, wait, as_json,
                   data_dir) -> None:  # fmt: skip
    """Mirror the hash lists a hub shares with you into the local store.

    \b
      hashmatch mirror --server hub.example:50051 --token-file hub.token --prefix hub/
      hashmatch mirror --server hub.example:50051 --prefix hub/ --follow --interval 300

    Each remote list lands in local list PREFIX+NAME (created by the mirror; a local
    list it did not create is never written into). Added, updated, retracted and
    restored signals are applied with their labels, external id, quality, expiry and
    vPDQ frames; each page of changes and the cursor commit together, so a killed run
    is simply run again. A hub restored from a backup or replaced is refused:
    --resync re-reads it and retracts what it no longer has live.
    """
    from hashmatch.engine.errors import HashmatchError, is_locked
    from hashmatch.engine.mirror import check_prefix, check_selection, mirror

    type_list = [t.strip() for t in types.split(",") if t.strip()]
    if follow and interval <= 0:
        raise click.BadParameter("must be > 0", param_hint="--interval")
    try:
        check_prefix(prefix)
    except HashmatchError as exc:
        raise click.BadParameter(str(exc), param_hint="--prefix") from None
    access = {"token_file": token_file, "ca": ca, "cert": cert, "key": key,
              "server_name": server_name}  # fmt: skip
    with _one_line_errors(server, name_server=False):
        client = _serving_client(server, token, tls, wait=wait, **access)
        try:
            _check_export(client)
            if not (Path(data_dir) / "store.sqlite").exists():  # refused before it is created
                hub_lists = [h.name for h in client.list_hash_lists().lists]
                check_selection(hub_lists, lists, type_list)
        except BaseException:
            client.close()
            raise
    from hashmatch.server.interrupts import STOP_SIGNALS, wait_in_steps

    done = threading.Event()
    if follow:  # every stop signal ends it between passes (SIGHUP stopped it mid-pass,
        for signum in STOP_SIGNALS:  # exit 129); one ignored from the start (nohup) stays so
            if signal.getsignal(signum) != signal.SIG_IGN:
                signal.signal(signum, lambda *_: done.set())
    quiet_since = float("-inf")  # when a pass was last printed (--follow)
    try:
        with _engine(data_dir, create=True) as engine:
            while True:
                try:
                    with _one_line_errors(server, name_server=False):
                        summary = mirror(
                            engine.store, client, server=server, prefix=prefix, lists=lists,
                            types=type_list, resync=resync, page_size=page_size,
                        )  # fmt: skip
                except click.ClickException as exc:
                    if not follow or not _transient(exc):
                        raise
                    click.echo(f"{exc.format_message()} (retrying in {interval:g} s)", err=True)
                except sqlite3.OperationalError as exc:
                    if not follow or not is_locked(exc):
                        raise  # _engine words it, and the one-shot run exits 1
                    hint = locked_hint(engine.store)  # who held it
                    click.echo(f"{data_dir}/store.sqlite: {exc}{hint} (retrying in"
                               f" {interval:g} s)", err=True)  # fmt: skip
                else:
                    resync = False
                    if as_json or not follow or _worth_a_line(summary, quiet_since):
                        _report(summary, as_json, server)
                        quiet_since = time.monotonic()
                    if summary.lists_purged:
                        note_stale_snapshots(engine.snapshots_before_purge())
                # in steps: a signal another thread (gRPC's) took runs its handler only
                # when the main thread's wait ends, which was --interval later
                if not follow or wait_in_steps(done.wait, interval):
                    return
    finally:
        client.close()


def _check_export(client) -> None:
    """PERMISSION_DENIED now, before the local store is opened (or created), when the
    token lacks the export role: a Changes call past any head reads nothing."""
    for _reply in client.changes(1 << 62, max_changes=1):
        pass


def _transient(exc: click.ClickException) -> bool:
    """A pass that failed for a reason the next pass may not meet (hub down, slow, busy:
    RESOURCE_EXHAUSTED is gRPC's "Concurrent RPC limit exceeded!" of a hub at its
    max_concurrent_rpcs; or another run of the same mirror, e.g. from cron, committed the
    page first, or a local ``lists delete`` of one of its lists reset its cursor, or the
    hub renamed a list between the pass's ListHashLists and its pages): a
    --follow that exited then stopped mirroring until someone restarted it.
    The local store's write lock held past the busy timeout is the other such reason
    (an ``sqlite3.OperationalError``, retried in the loop itself)."""
    return any(
        code in exc.format_message()
        for code in ("UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED",
                     "advanced its cursor meanwhile", "deleted locally during this run",
                     "nothing of this page was written: re-run")
    )  # fmt: skip


#: a --follow pass that changed nothing is printed at most this often (a heartbeat)
QUIET_PASS_SECONDS = 3600.0


def _worth_a_line(summary, printed_at: float) -> bool:
    """Whether a --follow pass is printed (text output): one that applied a change or
    has something to say, the first, and else one an hour. Why: a follow every 60 s
    wrote 1,440 identical "added 0, updated 0, ..." lines a day into the journal.
    (``--json`` prints every pass: a machine reading it may count on them.)"""
    said = (summary.since != summary.head or not summary.lists_shared or summary.lists_new
            or summary.lists_disabled or summary.lists_enabled or summary.lists_stale
            or summary.lists_purged or summary.lists_renamed)  # fmt: skip
    return bool(said) or time.monotonic() - printed_at >= QUIET_PASS_SECONDS


def _report(summary, as_json: bool, server: str) -> None:
    if not summary.lists_shared:
        click.echo(
            f"  {server} shares no hash list with this token: nothing to mirror (on the hub:"
            " `hashmatch tenants grant TENANT LIST` for the token's tenant)",
            err=True,
        )
    if summary.lists_new:
        click.echo(
            f"  newly shared by the hub: {', '.join(summary.lists_new)}: their signals predate"
            " this mirror's cursor, so this run resynced",
            err=True,
        )
    if as_json:
        click.echo(json.dumps(summary.as_dict(), sort_keys=True))
        return
    resync = ", resync" if summary.resync else ""
    click.echo(
        f"mirror {summary.prefix!r} from {server}: {summary.line()} (changes {summary.since}"
        f" -> {summary.head}, {summary.pages} page(s){resync}, {summary.seconds:.2f} s)"
    )
    for names, what in (
        (summary.lists_disabled, "disabled: the hub disabled it or no longer shares it"),
        (summary.lists_enabled, "enabled again: the hub enabled it"),
        (summary.lists_stale, "kept disabled: shared again by the hub, but changes made while"
         " it was not shared were never shown; run with --resync"),
        (summary.lists_purged, "deleted with its signals: the hub deleted its list"),
    ):  # fmt: skip
        for name in names:
            click.echo(f"  list {name!r} {what}", err=True)
    for old, new in summary.lists_renamed:
        click.echo(f"  list {old!r} renamed {new!r}: the hub renamed its list, or gave its name"
                   " to another (retired)", err=True)  # fmt: skip
    if summary.kept_retracted:
        click.echo(
            f"  {summary.kept_retracted} signal(s) live on the hub stay retracted here"
            " (retracted locally, not by the mirror: `hashmatch restore` them to follow the hub)",
            err=True,
        )


COMMANDS: list[click.Command] = [mirror_command]
