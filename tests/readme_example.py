"""Run a README code example as written, against a test server (client examples)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def run_python_example(after: str, served) -> subprocess.CompletedProcess:
    """The first ```python block after the README text ``after``, run in a fresh
    interpreter with $HASHMATCH_SERVER / $HASHMATCH_TOKEN naming ``served`` (its "ops"
    tenant), as a reader pasting it would."""
    section = README.read_text().split(after, 1)[1]
    example = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    env = {**os.environ, "HASHMATCH_SERVER": served.target, "HASHMATCH_TOKEN": served.tokens["ops"]}
    return subprocess.run(
        [sys.executable, "-c", example], capture_output=True, text=True, timeout=60, env=env
    )
