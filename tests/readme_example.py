"""Run a README code example as written, against a test server (client examples)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def python_example(after: str) -> str:
    """The first ```python block after the README text ``after``."""
    section = README.read_text().split(after, 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def run_python_example(
    after: str, served=None, *, cwd: Path | None = None
) -> subprocess.CompletedProcess:
    """The first ```python block after the README text ``after``, run in a fresh
    interpreter (in ``cwd``, where it may write files) as a reader pasting it would;
    with ``served``, $HASHMATCH_SERVER / $HASHMATCH_TOKEN name that test server (its
    "ops" tenant)."""
    env = dict(os.environ)
    if served is not None:
        env.update(HASHMATCH_SERVER=served.target, HASHMATCH_TOKEN=served.tokens["ops"])
    return subprocess.run(
        [sys.executable, "-c", python_example(after)],
        capture_output=True, text=True, timeout=120, env=env, cwd=cwd,
    )  # fmt: skip
