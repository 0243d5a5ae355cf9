"""``scan`` and ``rescan`` in a directory with no store say what to give: a rescan of a
catalog filled through ``scan --server`` names that server with the command that works,
and a local scan says where the store is looked for ($HASHMATCH_CONFIG is not read).

Why: the README's order (scan through a server, then ``hashmatch rescan``) ended in
``no hashmatch store in ./hashmatch-data``, naming neither the server the catalog's scans
went through nor what to give.
"""

from __future__ import annotations

import os
import subprocess
import sys

from PIL import Image
from skimage import data

from hashmatch.server.testing import running_server


def _hashmatch(cwd, env, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "hashmatch.server.cli", *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=180)


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HASHMATCH_")}
    return {**env, **extra}


def test_a_rescan_without_a_store_names_the_server_the_catalog_was_scanned_through(tmp_path):
    media = tmp_path / "media"
    media.mkdir()
    Image.fromarray(data.astronaut()).save(media / "a.jpg")
    work = tmp_path / "work"
    work.mkdir()
    env = _clean_env()
    tenants = {"scanner": (["match", "export"], True)}
    with running_server(tmp_path / "server-data", tenants=tenants) as ts:
        token = work / "scan.token"
        token.write_text(ts.tokens["scanner"] + "\n")
        address = f"127.0.0.1:{ts.server.port}"
        scanned = _hashmatch(
            work, env, "scan", str(media), "--server", address, "--token-file", str(token),
            "--workers", "0", "--out", "report.jsonl",
        )  # fmt: skip
        assert scanned.returncode == 0, scanned.stderr

        local = _hashmatch(work, env, "rescan")
        assert local.returncode == 1
        assert "no hashmatch store in ./hashmatch-data" in local.stderr
        assert f"scanned through {address}" in local.stderr
        assert f"`hashmatch rescan --server {address}` with that scan's token" in local.stderr

        through = _hashmatch(work, env, "rescan", "--server", address, "--token-file", str(token))
        assert through.returncode == 0, through.stderr
        assert '"kind": "summary"' in through.stdout


def test_a_local_scan_without_a_store_says_where_it_looked(tmp_path):
    media = tmp_path / "media"
    media.mkdir()
    Image.fromarray(data.camera()).save(media / "c.png")
    plain = _hashmatch(tmp_path, _clean_env(), "scan", str(media), "--workers", "0")
    assert plain.returncode == 1
    assert "no hashmatch store in ./hashmatch-data (give the store's data dir:" in plain.stderr
    assert "--data-dir or $HASHMATCH_DATA_DIR;" in plain.stderr
    assert "`hashmatch scan --server HOST:PORT`" in plain.stderr
    assert "HASHMATCH_CONFIG" not in plain.stderr

    config = tmp_path / "hashmatch.toml"
    config.write_text(f'data_dir = "{tmp_path / "elsewhere"}"\n')
    env = _clean_env(HASHMATCH_CONFIG=str(config))
    configured = _hashmatch(tmp_path, env, "scan", str(media), "--workers", "0")
    assert configured.returncode == 1
    assert "scan reads no $HASHMATCH_CONFIG" in configured.stderr
