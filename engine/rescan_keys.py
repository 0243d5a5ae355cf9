"""The catalog meta keys a rescan keeps its place under: a module of its own so that a
CLI error path (``server/commands/scan_no_store.py``) can read them without loading
:mod:`hashmatch.engine.rescan` (numpy, the indexes)."""

from __future__ import annotations

#: catalog meta key of the rescan cursor (``CURSOR_KEY@ADDRESS`` for a server's)
CURSOR_KEY = "rescan_seq"
#: catalog meta key (per cursor key) of the log the cursor is a position in
LOG_KEY = "rescan_log"
