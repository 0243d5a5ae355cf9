"""A script that calls scan() without an ``if __name__ == "__main__":`` guard: its
workers import the script and run it again, and die starting. The scan must say so
and stop, instead of retrying each file alone and cataloguing every one of them
``worker-crashed`` (nothing was wrong with any file). Real scripts, run by a real
interpreter, with real workers from the fork server.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
from PIL import Image

SCAN = """
from pathlib import Path

from hashmatch.engine.catalog import Catalog
from hashmatch.engine.scan import ScanOptions, scan
from hashmatch.engine.scan_pool_start import WorkersFailedToStart


def run():
    options = ScanOptions(types=("md5", "pdq"), workers=1, progress=False)
    with Catalog(Path("catalog.sqlite")) as catalog:
        try:
            summary = scan([Path("tree")], catalog=catalog, matcher=None, options=options)
        except WorkersFailedToStart as exc:
            print("REFUSED", exc)
            return
    print("HASHED", summary.hashed, "FAILED", summary.failed)
"""


def _tree(root: Path, n: int = 4) -> None:
    tree = root / "tree"
    tree.mkdir()
    for i in range(n):
        pixels = np.random.default_rng(i).integers(0, 256, (48, 64, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(tree / f"{i}.png")


def _run(root: Path, body: str) -> subprocess.CompletedProcess:
    script = root / "scan_it.py"
    script.write_text(textwrap.dedent(SCAN) + body)
    return subprocess.run(
        [sys.executable, str(script)], cwd=root, capture_output=True, text=True, timeout=300
    )


def _catalogued(root: Path) -> dict[str, int]:
    with sqlite3.connect(root / "catalog.sqlite") as db:
        rows = db.execute("SELECT coalesce(reason, 'ok'), count(*) FROM files GROUP BY 1")
        return dict(rows.fetchall())


def test_an_unguarded_script_is_told_why_and_no_file_is_blamed(tmp_path: Path):
    _tree(tmp_path)
    done = _run(tmp_path, "\nrun()\n")
    assert done.returncode == 0, done.stderr[-2000:]
    refused = [line for line in done.stdout.splitlines() if line.startswith("REFUSED")]
    assert len(refused) == 1, (done.stdout, done.stderr[-2000:])
    assert "exited while starting, before hashing any file" in refused[0]
    assert 'if __name__ == "__main__":' in refused[0]
    assert "--workers 0" in refused[0]
    assert "worker-crashed" not in _catalogued(tmp_path)  # no file was blamed


def test_the_same_script_guarded_hashes_every_file(tmp_path: Path):
    _tree(tmp_path)
    done = _run(tmp_path, '\nif __name__ == "__main__":\n    run()\n')
    assert done.returncode == 0, done.stderr[-2000:]
    assert "HASHED 4 FAILED 0" in done.stdout, (done.stdout, done.stderr[-2000:])
    assert _catalogued(tmp_path) == {"ok": 4}
