"""Shared fixtures: the reference data in ../shared (skipped cleanly when absent)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import settings

# Property tests check results, not speed (speed is measured in bench/): no per-example
# deadline, so a slow or loaded CI machine cannot fail one with DeadlineExceeded/Flaky.
settings.register_profile("hashmatch", deadline=None)
settings.load_profile("hashmatch")

PROJECT_ROOT = Path(__file__).resolve().parent.parent
REFERENCE = PROJECT_ROOT.parent / "shared" / "reference"


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """``../shared/reference``; tests needing it skip with a clear message on a bare clone."""
    if not REFERENCE.is_dir():
        pytest.skip("../shared/reference is absent (a bare clone); CI always has it")
    return REFERENCE
