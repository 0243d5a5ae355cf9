"""Match coverage: which hash lists each catalogued file's hashes were matched in.

Why: a rescan matches the catalog against the signals shared since its cursor only;
the scans answer for the signals before it. A ``--list a`` scan (or a ``--no-match``
one, or one whose lookups failed) answers for list a only (or none), so list b's
signals shared before the cursor never met its files. Recording what each file was
matched in lets the next rescan fill exactly that gap (a second pass over those
files' catalogued hashes, in the lists they missed) and then mark them whole.

Kept compact: a ``coverage`` row per distinct set of lists (a handful: one per
``--list`` combination in use), and ``files.coverage_id`` pointing at it; NULL means
every list, which is what a scan of every list and a rescan leave, and what a file
catalogued before coverage was kept is taken to be (a scan of every list was the
only way its gap could be filled then: the README told ``--list`` users to run one).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable

#: the lists a file's catalogued hashes were all matched in; None = every list
Coverage = frozenset[str] | None

COVERAGE_DDL = """
CREATE TABLE IF NOT EXISTS coverage (
    id INTEGER PRIMARY KEY,
    lists TEXT NOT NULL UNIQUE  -- JSON array of list names, sorted; [] = none
);
"""


def covered_by(lists: Iterable[str] | None, *, matched: bool = True) -> Coverage:
    """What a lookup in ``lists`` covers (None or empty: every list); ``matched``
    False (no lookup: ``--no-match``, a failed lookup) covers none."""
    if not matched:
        return frozenset()
    names = frozenset(lists or ())
    return names or None


def union(a: Coverage, b: Coverage) -> Coverage:
    """Matched in ``a`` before and in ``b`` now (the same hashes)."""
    return None if a is None or b is None else a | b


def intersection(a: Coverage, b: Coverage) -> Coverage:
    """Some hashes matched in ``a`` (kept), the others in ``b`` (new)."""
    if a is None:
        return b
    return a if b is None else a & b


def upgrade(conn: sqlite3.Connection) -> None:
    """Give a catalog written before coverage was kept its table and column (idempotent).

    The schema version stays 1 (a nullable column added at the end, as the stat
    columns were): an older hashmatch still reads and writes the catalog. A file it
    rewrites keeps the coverage recorded before, which at worst makes a rescan match
    that file again in lists it was matched in already (its matches are keyed: none is
    reported twice), or, for an older ``--list`` scan, leaves the gap as that build
    always left it.
    """
    conn.executescript(COVERAGE_DDL)
    have = {row[1] for row in conn.execute("PRAGMA table_info(files)")}
    if "coverage_id" not in have:
        conn.execute("ALTER TABLE files ADD COLUMN coverage_id INTEGER REFERENCES coverage(id)")
    conn.execute(
        "CREATE INDEX IF NOT EXISTS files_coverage ON files(coverage_id)"
        " WHERE coverage_id IS NOT NULL"
    )


def coverage_id(conn: sqlite3.Connection, coverage: Coverage) -> int | None:
    """The row naming ``coverage`` (made when new); None for every list."""
    if coverage is None:
        return None
    key = json.dumps(sorted(coverage))
    row = conn.execute("SELECT id FROM coverage WHERE lists = ?", (key,)).fetchone()
    if row is None:  # a read first: a file's write adds no write of its own for this
        row = conn.execute("INSERT INTO coverage(lists) VALUES (?) RETURNING id", (key,)).fetchone()
    return int(row[0])


def coverages(conn: sqlite3.Connection) -> dict[int, frozenset[str]]:
    """Every coverage row: id -> its lists (a few rows: one per set of lists in use)."""
    rows = conn.execute("SELECT id, lists FROM coverage")
    return {int(cid): frozenset(json.loads(lists)) for cid, lists in rows}
