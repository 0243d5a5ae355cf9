"""Text from elsewhere (a tenant's label, another process's command line) made safe to
print on one line: its control characters escaped.

Why one home: the store verbs' text output and the store-lock notice escaped the same
characters with a regex each (the lists had to be kept equal by hand); a terminal or
log viewer acts on any of them (an ANSI escape retitles or recolours, a newline forges a
line). Standard library only: the store verbs import it and load no numpy or grpc.
"""

from __future__ import annotations

import re

#: C0 and C1 control characters, DEL (a tab too: text output is tab-separated), and the
#: line separators a terminal or log viewer breaks on
CONTROL_CHARACTERS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def escape_controls(text: str) -> str:
    """``text`` with each control character as its Python escape (``\\n``, ``\\x1b``)."""
    return CONTROL_CHARACTERS.sub(
        lambda m: m.group().encode("unicode_escape").decode("ascii"), text
    )
