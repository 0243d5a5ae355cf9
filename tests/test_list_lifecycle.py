"""`hashmatch lists set / rename / delete`: a list's metadata, name and existence change
as partnerships do. Real store, the real CLI (click's runner), and a real gRPC server on
the same data dir for what a delete does to a running service."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from hashmatch.server.cli import cli


@pytest.fixture
def run(tmp_path):
    runner = CliRunner()
    env = {"HASHMATCH_DATA_DIR": str(tmp_path / "data")}

    def invoke(*args: str, code: int = 0):
        result = runner.invoke(cli, list(args), env=env, catch_exceptions=False)
        assert result.exit_code == code, result.output
        return result

    return invoke


def _codes(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [rng.bytes(32).hex() for _ in range(n)]


def _csv(tmp_path, name: str, codes: list[str]) -> str:
    path = tmp_path / f"{name}.csv"
    path.write_text("signal_type,signal_value\n" + "".join(f"pdq,{c}\n" for c in codes))
    return str(path)


def _audit(run, action: str) -> list[dict]:
    return [e for e in json.loads(run("audit", "--json").output) if e["action"] == action]


def test_set_edits_metadata_fields_given_and_audits_old_and_new(run):
    run("lists", "create", "p", "--owner", "Partner A", "--label", "csam", "--description", "d")
    out = run("lists", "set", "p", "--owner", "Program X", "--label", "ncii", "--label", "csam")
    assert "owner 'Program X', labels ncii,csam, description 'd'" in out.output
    (info,) = json.loads(run("lists", "ls", "--json").output)
    assert (info["owner"], info["labels"], info["description"]) == ("Program X", ["ncii", "csam"],
                                                                    "d")  # fmt: skip
    (entry,) = _audit(run, "list.update")
    assert entry["details"] == {"owner": ["Partner A", "Program X"],
                                "labels": [["csam"], ["ncii", "csam"]]}  # fmt: skip
    run("lists", "set", "p", "--clear-labels", "--description", "")
    assert json.loads(run("lists", "ls", "--json").output)[0]["labels"] == []
    run("lists", "set", "p", "--description", "")  # nothing changes: no audit entry
    assert len(_audit(run, "list.update")) == 2
    assert "nothing to set" in run("lists", "set", "p", code=2).output
    assert "no hash list named 'q'" in run("lists", "set", "q", "--owner", "x", code=1).output


def test_rename_keeps_grants_and_matches_and_refuses_a_name_in_use(run, tmp_path):
    (code,) = _codes(1, seed=1)
    run("ingest", _csv(tmp_path, "a", [code]), "--list", "a")
    run("lists", "create", "b")
    run("tenants", "create", "acme")
    run("tenants", "grant", "acme", "a")
    refused = run("lists", "rename", "a", "b", code=1).output
    assert "hash list 'b' already exists" in refused
    assert "renamed list 'a' to 'c'" in run("lists", "rename", "a", "c").output
    # the grant is by list id: acme still matches, under the new name
    found = json.loads(run("match", code, "--tenant", "acme", "--json").output)
    assert [m["list_name"] for m in found[0]["matches"]] == ["c"]
    assert "c" in run("tenants", "ls").output
    (entry,) = _audit(run, "list.rename")
    assert (entry["list_name"], entry["details"]) == ("c", {"from": "a", "to": "c"})
    assert "no hash list named 'a'" in run("lists", "rename", "a", "d", code=1).output
