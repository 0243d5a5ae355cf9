"""A rescan's second pass: the catalogued files a scan matched in some lists only,
matched in the others.

Why: a rescan matches the catalog against the signals shared since its cursor; the
scans answer for those before it. A ``--list a`` scan (or ``--no-match``, or one whose
lookups failed) answered for list a only (or none), so list b's signals shared before
the cursor never met its files: no incremental rescan found those matches, and the
scan could only say so. The catalog records what each file was matched in
(:mod:`hashmatch.engine.catalog_coverage`); the rescan then looks those files'
catalogued hashes up in the lists they missed, as a scan of those lists would (the
same matcher, rules and thresholds), and records them as matched in every list.

Cost: one lookup per catalogued hash of those files, in the lists they missed (the
store's index, loaded locally, or the server's ``Match``); no file is read or hashed.
Files a scan matched in every list, and every file after a rescan, need none.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from hashmatch.engine.catalog import Catalog, MatchRow
from hashmatch.engine.scan import match_files

if TYPE_CHECKING:
    from hashmatch.engine.rescan import ChangeSource
    from hashmatch.engine.scan import Matcher

#: files whose hashes are read and looked up at a time
CHUNK = 500


def fill_gaps(
    catalog: Catalog, source: ChangeSource, threshold: int | None
) -> tuple[list[MatchRow], int, float]:
    """(the matches of the partly covered files in the lists they missed, how many
    files were looked up, seconds). ``source``: its :meth:`~ChangeSource.list_names`
    and :meth:`~ChangeSource.matcher`. The caller inserts the rows (the new ones are
    reported) and marks every file covered in the same commit."""
    started = time.monotonic()
    visible: set[str] | None = None  # asked once, and only when some file needs it
    matchers: dict[frozenset[str], Matcher | None] = {}
    rows: list[MatchRow] = []
    files = 0
    for covered, file_ids in catalog.partly_covered(CHUNK):
        if covered not in matchers:
            visible = source.list_names() if visible is None else visible
            missing = sorted(visible - covered)
            matchers[covered] = source.matcher(missing, threshold) if missing else None
        matcher = matchers[covered]
        if matcher is None:  # matched in every list there is
            continue
        hashes = catalog.hashes_of(file_ids)
        files += len(hashes)
        for found in match_files(matcher, list(hashes.items())).values():
            rows.extend(found)
    return rows, files, time.monotonic() - started
