"""The store verbs follow $HASHMATCH_CONFIG to the server's data dir, as `hashmatch
token` and the `tokens` verbs do, when neither --data-dir nor $HASHMATCH_DATA_DIR says.

Before, an operator who exported HASHMATCH_CONFIG (the systemd setup's
/etc/hashmatch/hashmatch.toml) made a tenant's token in the server's tokens file and its
`tenants create` / `grant` in a new store in the current directory.
"""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from hashmatch.server.cli import cli


def _setup(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    data = tmp_path / "srv-data"
    config = tmp_path / "hashmatch.toml"
    config.write_text(f'[server]\ndata_dir = "{data}"\n')
    return data, {"HASHMATCH_CONFIG": str(config)}


def _run(args: list[str], env: dict[str, str]):
    """The CLI with ``env`` only of the two variables (the caller's are unset)."""
    unset = {"HASHMATCH_DATA_DIR": None, "HASHMATCH_CONFIG": None}
    return CliRunner().invoke(cli, args, env={**unset, **env})


def test_token_and_tenant_land_in_the_configs_data_dir(tmp_path, monkeypatch):
    data, env = _setup(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert _run(["token", "acme", "--role", "match"], env).exit_code == 0
    assert _run(["lists", "create", "partner-a"], env).exit_code == 0
    assert _run(["tenants", "create", "acme"], env).exit_code == 0
    result = _run(["tenants", "grant", "acme", "partner-a"], env)
    assert result.exit_code == 0, result.output
    assert (data / "auth.toml").exists() and (data / "store.sqlite").exists()
    assert not (tmp_path / "hashmatch-data").exists()  # no second store here
    listed = _run(["tenants", "ls", "--data-dir", str(data)], {})
    assert "acme: reads partner-a" in listed.output


def test_data_dir_and_its_variable_still_win(tmp_path, monkeypatch):
    _data, env = _setup(tmp_path)
    monkeypatch.chdir(tmp_path)
    other = tmp_path / "other"
    result = _run(["lists", "create", "only-in-other", "--data-dir", str(other)], env)
    assert result.exit_code == 0, result.output
    result = _run(["lists", "ls"], {**env, "HASHMATCH_DATA_DIR": str(other)})
    assert result.exit_code == 0 and "only-in-other" in result.output
    assert not (tmp_path / "srv-data").exists()


def test_a_config_that_does_not_load_is_named(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = _run(["lists", "ls"], {"HASHMATCH_CONFIG": str(tmp_path / "missing.toml")})
    assert result.exit_code == 1
    assert result.output.startswith("Error: --data-dir from $HASHMATCH_CONFIG: ")
    assert "missing.toml" in result.output
