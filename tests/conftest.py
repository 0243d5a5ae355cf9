"""Shared fixtures: the reference data in ../shared (skipped cleanly when absent), and
``run``: the CLI in-process against a fresh data dir (files may define their own)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import settings

from hashmatch.server.cli import cli

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


@pytest.fixture
def run(tmp_path):
    """``run(*args, code=0)``: invoke the ``hashmatch`` CLI with ``HASHMATCH_DATA_DIR`` a
    fresh dir; asserts the exit code and returns the click result."""
    runner = CliRunner()
    env = {"HASHMATCH_DATA_DIR": str(tmp_path / "data")}

    def invoke(*args: str, code: int = 0):
        result = runner.invoke(cli, list(args), env=env, catch_exceptions=False)
        assert result.exit_code == code, result.output
        return result

    return invoke
