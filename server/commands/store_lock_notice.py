"""What a CLI store verb says while another process holds the store's write lock.

Why: a verb that writes the store (ingest, retract, lists ..., tenants ..., mirror)
behind another process's write transaction waited SQLite's 60 s busy timeout without
a word, then failed with "database is locked" naming nobody. The wait is right (an
ingest behind another ingest should wait) but must show: after a second's grace one
line on stderr names the holder (pid and command line) and how long the verb waits,
and a wait that runs out names it again in the error. One line per holder per run,
terminal or not: an ingest waiting at each of its batches behind the same process is
told once, and a progress bar on a terminal is not broken by it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from hashmatch.engine.store_lock_holder import describe_holder, describe_process, write_lock_holder


class LockWaitNotice:
    """The store's ``on_lock_wait`` for a CLI verb: says who makes it wait; remembers
    the holder for :meth:`locked_hint` when the wait runs out."""

    def __init__(self, store_path: Path, busy_timeout: float):
        self.store_path = store_path
        self.busy_timeout = busy_timeout
        self.holder: int | None = None
        self._told: set[int | None] = set()

    def __call__(self, holder: int | None, wait: float) -> None:
        self.holder = holder
        if holder in self._told:
            return
        self._told.add(holder)
        who = describe_holder(holder)
        _say(
            f"{self.store_path}: {who} holds the store's write lock; waiting for it"
            f" (up to {wait:g} s)"
        )

    def locked_hint(self) -> str:
        """The parenthesis after "database is locked": who held the lock (still holding
        it, else the one last waited for) and for how long."""
        holder = write_lock_holder(self.store_path) or self.holder
        if holder is None:
            return (
                f" (another process held the write lock for over {self.busy_timeout:g} s,"
                " e.g. a --strict ingest of a large file)"
            )
        return (
            f" ({describe_process(holder)} held the write lock for over"
            f" {self.busy_timeout:g} s: let it finish, or see what it is doing)"
        )


def _say(line: str) -> None:
    """One line on stderr; through tqdm on a terminal, where a progress bar may be
    drawn (the bar is redrawn below the line instead of being cut by it)."""
    if sys.stderr.isatty():
        from tqdm import tqdm

        tqdm.write(line, file=sys.stderr)
    else:
        click.echo(line, err=True)


def locked_hint(store) -> str:
    """:meth:`LockWaitNotice.locked_hint` of ``store`` (a SignalStore that ``_engine``
    opened, which set its notice; else one that has seen no wait)."""
    notice = store.on_lock_wait
    if not isinstance(notice, LockWaitNotice):
        notice = LockWaitNotice(store.path, store.busy_timeout)
    return notice.locked_hint()
