"""Config precedence, token auth and the error -> status mapping (no socket needed)."""

from __future__ import annotations

import os

import grpc
import pytest
from google.rpc import error_details_pb2

from hashmatch.engine import errors as engine_errors
from hashmatch.server import auth, config, errors


def test_config_precedence_file_env_flags(tmp_path):
    path = tmp_path / "hashmatch.toml"
    path.write_text('[server]\nlisten = "127.0.0.1:6000"\nmax_batch = 5\nworkers = 3\n')
    env = {"HASHMATCH_MAX_BATCH": "7", "HASHMATCH_INSECURE_NO_AUTH": "true"}
    cfg = config.load(path, flags={"workers": 9, "listen": None}, environ=env)
    assert cfg.listen == "127.0.0.1:6000"  # file (flag None = not given)
    assert cfg.max_batch == 7  # env beats file
    assert cfg.workers == 9  # flag beats file
    assert cfg.insecure_no_auth is True
    assert config.load(environ={}).listen == "127.0.0.1:50051"


def test_config_rejects_unknown_keys_and_bad_values(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("no_such_setting = 1\n")
    with pytest.raises(engine_errors.InvalidInput, match="no_such_setting"):
        config.load(path, environ={})
    with pytest.raises(engine_errors.InvalidInput, match="max_batch"):
        config.load(environ={"HASHMATCH_MAX_BATCH": "many"})
    with pytest.raises(engine_errors.InvalidInput, match="tls"):
        config.load(environ={}, flags={"tls_cert": "x.pem"})


def test_tokens_are_stored_hashed_and_resolve_to_tenants(tmp_path):
    path = tmp_path / "auth.toml"
    path.write_text(auth.tenant_entry("acme", "s3cret", ["match"]))
    assert "s3cret" not in path.read_text()
    table = auth.TokenAuth.from_file(path)
    principal = table.authenticate([("authorization", "Bearer s3cret")])
    assert principal.tenant == "acme" and principal.engine_tenant == "acme"
    principal.require("match")
    with pytest.raises(auth.Forbidden):
        principal.require("write")
    for metadata in ([], [("authorization", "Bearer nope")], [("authorization", "s3cret")]):
        with pytest.raises(auth.Unauthenticated):
            table.authenticate(metadata)


def test_bootstrap_admin_once(tmp_path):
    path = tmp_path / "data" / "auth.toml"
    token = auth.bootstrap_admin(path)
    assert token and token not in path.read_text()
    assert (path.parent / "admin.token").stat().st_mode & 0o077 == 0
    assert auth.bootstrap_admin(path) is None
    admin = auth.TokenAuth.from_file(path).authenticate([("authorization", f"Bearer {token}")])
    assert admin.engine_tenant is None and admin.roles == frozenset(auth.ROLES)
    assert path.parent.stat().st_mode & 0o077 == 0  # a new data dir is the owner's only
    assert auth.permission_warning(path) is None


def test_bootstrap_tokens_file_is_owner_only_whatever_the_umask(tmp_path):
    """The first start's auth.toml is 0600 like admin.token (it was 0644 under the
    usual umask 022: every local user could read who may call with which roles)."""
    old = os.umask(0o022)
    try:
        path = tmp_path / "data" / "auth.toml"
        auth.bootstrap_admin(path)
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o600


def test_a_tokens_file_others_may_write_is_warned_about(tmp_path):
    path = tmp_path / "data" / "auth.toml"
    auth.bootstrap_admin(path)
    path.chmod(0o666)
    assert "writable by others (mode 666)" in auth.permission_warning(path)
    path.chmod(0o600)
    path.parent.chmod(0o777)  # a directory others may write: they can swap the file
    assert f"{path.parent} is writable by others" in auth.permission_warning(path)
    path.parent.chmod(0o700)


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (
            engine_errors.InvalidHash("bad", field="hashes", index=2),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (engine_errors.MediaTooLarge("big", field="media[0]"), grpc.StatusCode.INVALID_ARGUMENT),
        (engine_errors.NotFound("no list"), grpc.StatusCode.NOT_FOUND),
        (engine_errors.PermissionDenied("no"), grpc.StatusCode.PERMISSION_DENIED),
        (auth.Unauthenticated("who"), grpc.StatusCode.UNAUTHENTICATED),
        (errors.Overloaded("busy"), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (errors.DiskFull("the disk is full"), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (engine_errors.Conflict("busy"), grpc.StatusCode.FAILED_PRECONDITION),
        (engine_errors.CorruptData("bad file"), grpc.StatusCode.DATA_LOSS),
        (NotImplementedError("later"), grpc.StatusCode.UNIMPLEMENTED),
        (RuntimeError("secret detail"), grpc.StatusCode.INTERNAL),
    ],
)
def test_error_mapping(exc, code):
    mapped, message, status = errors.to_status(exc)
    assert mapped is code
    if code is grpc.StatusCode.RESOURCE_EXHAUSTED:  # clients back off on a QuotaFailure
        assert status.details[0].Is(error_details_pb2.QuotaFailure.DESCRIPTOR)
        # and retry only an overload, marked with a RetryInfo (not a full disk)
        retry = [d for d in status.details if d.Is(error_details_pb2.RetryInfo.DESCRIPTOR)]
        assert len(retry) == isinstance(exc, errors.Overloaded)
    if code is grpc.StatusCode.INTERNAL:
        assert "secret detail" not in message  # internals never leak to clients
    if code is grpc.StatusCode.INVALID_ARGUMENT:
        bad = error_details_pb2.BadRequest()
        assert status.details[0].Unpack(bad)
        assert bad.field_violations[0].field == errors.field_path(exc)
    assert errors.field_path(engine_errors.InvalidHash("x", field="hashes", index=2)) == "hashes[2]"


DIGEST = auth.hash_token("s3cret")


@pytest.mark.parametrize(
    ("text", "named"),
    [
        # a string is truthy: it used to grant every list
        (f'[tenants.acme]\ntokens_sha256 = ["{DIGEST}"]\nall_lists = "false"\n', "all_lists"),
        (f'[tenants.acme]\ntokens_sha256 = ["{DIGEST}"]\nrole = ["admin"]\n', "'role'"),
        (f'[tenants.acme]\ntoken_sha256 = ["{DIGEST}"]\n', "'token_sha256'"),
        (f'[tenant.acme]\ntokens_sha256 = ["{DIGEST}"]\n', "tenant"),
        (f'[tenants.acme]\ntokens_sha256 = ["{"g" * 64}"]\n', "tokens_sha256"),
        (f'[tenants.acme]\ntokens_sha256 = "{DIGEST}"\n', "tokens_sha256"),
        (f'[tenants.acme]\ntokens_sha256 = ["{DIGEST}"]\nroles = "admin"\n', "roles"),
        (
            f'[tenants.acme]\ntokens_sha256 = ["{DIGEST}"]\n'
            f'[tenants.evil]\ntokens_sha256 = ["{DIGEST.upper()}"]\nroles = ["admin"]\n',
            "'acme'",
        ),
        ('tenants = ["acme"]\n', "tenants"),
    ],
)
def test_tokens_file_typos_are_refused_naming_the_tenant_and_key(tmp_path, text, named):
    path = tmp_path / "auth.toml"
    path.write_text(text)
    with pytest.raises(engine_errors.InvalidInput) as err:
        auth.TokenAuth.from_file(path)
    assert named in str(err.value)
    if "tenants.acme" in text or "tenants.evil" in text:
        assert "'acme'" in str(err.value) or "'evil'" in str(err.value)


def test_tokens_file_documented_forms_still_load(tmp_path):
    path = tmp_path / "auth.toml"
    path.write_text(
        "# comment\n"
        f'[tenants.acme]\ntokens_sha256 = ["{DIGEST}", "{DIGEST}"]\n'
        'roles = ["match", "write"]\nall_lists = false\n'
        f'[tenants.ops]\ntokens_sha256 = ["{auth.hash_token("other").upper()}"]\n'
        "all_lists = true\n"
        "[tenants.empty]\n"
    )
    table = auth.TokenAuth.from_file(path)
    assert len(table) == 2
    acme = table.authenticate([("authorization", "Bearer s3cret")])
    assert acme.roles == {"match", "write"} and not acme.all_lists
    ops = table.authenticate([("authorization", "Bearer other")])
    assert ops.all_lists and ops.roles == {"match"}


@pytest.mark.parametrize("name", ["a.b", "my tenant", 'quo"te\\back]', "naïve"])
def test_tenant_entry_quotes_the_name_as_one_key(tmp_path, name):
    path = tmp_path / "auth.toml"
    path.write_text(auth.tenant_entry(name, "s3cret", ["match"]))
    principal = auth.TokenAuth.from_file(path).authenticate([("authorization", "Bearer s3cret")])
    assert principal.tenant == name


def test_a_dotted_tenant_an_older_token_command_wrote_is_refused_saying_how_to_fix(tmp_path):
    """`hashmatch token acme.eu` before 231bed9 wrote ``[tenants.acme.eu]`` (a table 'eu'
    in tenant 'acme'): the old server started (that token just never worked), this one
    refuses the file. Before, the refusal named an unknown key 'eu' and no remedy."""
    path = tmp_path / "auth.toml"
    path.write_text(  # as that build's tenant_entry wrote it
        f'[tenants.acme.eu]\ntokens_sha256 = ["{DIGEST}"]\nroles = ["match"]\nall_lists = false\n'
    )
    with pytest.raises(engine_errors.InvalidInput) as err:
        auth.TokenAuth.from_file(path)
    assert "[tenants.acme.eu] is a table 'eu' inside tenant 'acme'" in str(err.value)
    assert '[tenants."acme.eu"]' in str(err.value)
    fixed = path.read_text().replace("[tenants.acme.eu]", '[tenants."acme.eu"]')
    path.write_text(fixed)  # the fix the message gives loads
    principal = auth.TokenAuth.from_file(path).authenticate([("authorization", "Bearer s3cret")])
    assert principal.tenant == "acme.eu"


@pytest.mark.parametrize("name", ["", "line\nbreak"])
def test_tenant_entry_refuses_empty_or_control_characters(name):
    with pytest.raises(engine_errors.InvalidInput, match="tenant"):
        auth.tenant_entry(name, "s3cret", ["match"])


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ('index_kind = "hnsw"', "index_kind"),
        ("shards = -2", "shards"),
        ("shards = 5000", "shards"),
        ("media_queue = -1", "media_queue"),
        ("max_media_pixels = 0", "max_media_pixels"),
        ("max_pending_lookups = -1", "max_pending_lookups"),
        ("lookup_batch = 0", "lookup_batch"),
        ("lookup_threads = -1", "lookup_threads"),
        ("metrics_port = 70000", "metrics_port"),
        ("metrics_port = -2", "metrics_port"),
        ("drain_seconds = -1", "drain_seconds"),
        ('drain_seconds = "soon"', "drain_seconds"),
        ("drain_seconds = inf", "drain_seconds"),
        ("min_client_ping_seconds = 0", "min_client_ping_seconds"),
        ("min_client_ping_seconds = inf", "min_client_ping_seconds"),
        ('log_level = "verbose"', "log_level"),
        ("listen = 45002", "listen"),
        ("workers = 1.5", "workers"),
        ("workers = true", "workers"),
        ('insecure_no_auth = "maybe"', "insecure_no_auth"),
        ("insecure_no_auth = 1", "insecure_no_auth"),
        ('tls_client_ca = ""', "tls_client_ca"),
        ('auth_file = " "', "auth_file"),
    ],
)
def test_config_refuses_bad_values_naming_the_key(tmp_path, toml, key):
    path = tmp_path / "hashmatch.toml"
    path.write_text(f"[server]\n{toml}\n")
    with pytest.raises(engine_errors.InvalidInput) as err:
        config.load(path, environ={})
    assert str(err.value).startswith(f"{key}: "), err.value


@pytest.mark.parametrize(
    ("env", "key"),
    [
        ({"HASHMATCH_DRAIN_SECONDS": "abc"}, "drain_seconds"),
        ({"HASHMATCH_LOG_LEVEL": "verbose"}, "log_level"),
        ({"HASHMATCH_METRICS_PORT": "70000"}, "metrics_port"),
        ({"HASHMATCH_INSECURE_NO_AUTH": "ture"}, "insecure_no_auth"),
        # an unset shell variable: mutual TLS must not turn itself off without a word
        ({"HASHMATCH_TLS_CLIENT_CA": ""}, "tls_client_ca"),
    ],
)
def test_config_refuses_bad_environment_values_naming_the_key(env, key):
    with pytest.raises(engine_errors.InvalidInput) as err:
        config.load(environ=env)
    assert str(err.value).startswith(f"{key}: "), err.value


def test_config_accepts_documented_forms(tmp_path):
    path = tmp_path / "hashmatch.toml"
    path.write_text(
        'listen = "127.0.0.1:7000"\nshards = 0\nindex_kind = "mih"\nmetrics_port = -1\n'
        'drain_seconds = 3\nlog_level = "debug"\nmedia_queue = 0\nlookup_threads = 0\n'
    )
    cfg = config.load(path, environ={"HASHMATCH_DRAIN_SECONDS": "2.5"})
    assert cfg.shards == 0 and cfg.index_kind == "mih" and cfg.drain_seconds == 2.5
    env = {"HASHMATCH_INSECURE_NO_AUTH": "off", "HASHMATCH_SHARDS": "4"}
    assert config.load(environ=env).insecure_no_auth is False
    assert config.load(environ=env).shards == 4


def test_config_index_kinds_are_the_index_layers(tmp_path):
    from hashmatch.indexes import sharded

    assert config.INDEX_KINDS == sharded.KINDS


def test_config_keys_outside_the_server_table_are_refused(tmp_path):
    path = tmp_path / "hashmatch.toml"
    path.write_text('data_dir = "/srv/hm"\n[server]\nlisten = "127.0.0.1:7000"\n')
    with pytest.raises(engine_errors.InvalidInput, match="data_dir outside the \\[server\\]"):
        config.load(path, environ={})


def test_config_syntax_error_names_the_file(tmp_path):
    path = tmp_path / "hashmatch.toml"
    path.write_text("[server\nlisten = 1\n")
    with pytest.raises(engine_errors.InvalidInput) as err:
        config.load(path, environ={})
    assert str(path) in str(err.value)


def test_only_the_bearer_scheme_is_accepted():
    tokens = auth.TokenAuth.from_mapping({"tenants": {"a": {"tokens_sha256": [DIGEST]}}})
    assert tokens.authenticate([("authorization", "Bearer s3cret")]).tenant == "a"
    assert tokens.authenticate([("authorization", "bearer s3cret")]).tenant == "a"
    with pytest.raises(auth.Unauthenticated):
        tokens.authenticate([("authorization", "Basic s3cret")])


def test_a_misspelt_environment_variable_is_refused_naming_it():
    # HASHMATCH_WORKER (no S) in a unit's Environment= used to be ignored without a word
    with pytest.raises(engine_errors.InvalidInput) as err:
        config.load(environ={"HASHMATCH_WORKER": "4"})
    assert "HASHMATCH_WORKER " in str(err.value) and "HASHMATCH_WORKERS?" in str(err.value)
    with pytest.raises(engine_errors.InvalidInput, match="HASHMATCH_listen"):
        config.load(environ={"HASHMATCH_listen": "127.0.0.1:1"})  # names are upper case
    # the variables of the other verbs may share serve's environment
    others = {"HASHMATCH_TOKEN": "t", "HASHMATCH_SERVER": "h:1", "HASHMATCH_WORKERS": "3"}
    assert config.load(environ=others).workers == 3


def test_a_misspelt_config_key_is_refused_with_the_likely_one(tmp_path):
    path = tmp_path / "hashmatch.toml"
    path.write_text("[server]\ndrain_second = 5\n")
    with pytest.raises(engine_errors.InvalidInput) as err:
        config.load(path, environ={})
    assert "drain_second (did you mean drain_seconds?)" in str(err.value), err.value


def test_a_home_relative_path_is_the_home_directory(tmp_path, monkeypatch):
    """`data_dir = "~/hashmatch"` in a config file (or a unit's Environment=, which no
    shell expands) made a directory literally named '~' in the working directory: a
    second, empty store beside the one `--data-dir ~/hashmatch` names."""
    monkeypatch.setenv("HOME", str(tmp_path))
    path = tmp_path / "hashmatch.toml"
    path.write_text('data_dir = "~/hm"\ntls_cert = "~/tls/c.pem"\ntls_key = "~/tls/k.pem"\n')
    cfg = config.load(path, environ={"HASHMATCH_AUTH_FILE": "~/auth.toml"})
    assert cfg.data_dir == str(tmp_path / "hm")
    assert (cfg.tls_cert, cfg.tls_key) == (str(tmp_path / "tls/c.pem"), str(tmp_path / "tls/k.pem"))
    assert cfg.auth_path == tmp_path / "auth.toml"


def test_an_empty_data_dir_is_refused():
    # HASHMATCH_DATA_DIR= from an unset variable: the store went to the working directory
    with pytest.raises(engine_errors.InvalidInput, match="data_dir: must be a path"):
        config.load(environ={"HASHMATCH_DATA_DIR": ""})


@pytest.mark.parametrize(
    ("path", "environ", "named"),
    [(None, {"HASHMATCH_CONFIG": ""}, "HASHMATCH_CONFIG"), ("", {}, "--config")],
)
def test_an_empty_config_path_is_refused(path, environ, named):
    """`Environment=HASHMATCH_CONFIG=${UNSET}` (or `--config "$CFG"`) started `serve` on
    the defaults: another data dir, tokens file and port, TLS off, the config file never
    read and nothing said (README: "an empty path is refused")."""
    with pytest.raises(engine_errors.InvalidInput) as err:
        config.load(path, environ=environ)
    assert str(err.value) == f"config: must be a path, not empty (leave it unset) (from {named})"


@pytest.mark.parametrize(
    "listen",
    # gRPC took each: no port = 443 (https's), 99999 = 34463 (mod 65536), -1 = 65535,
    # while serve said "serving on" the address as written
    ["127.0.0.1", "127.0.0.1:99999", "127.0.0.1:-1", "127.0.0.1:http", ":50051", "::1:50051"],
)
def test_a_listen_address_without_a_valid_port_is_refused(listen):
    with pytest.raises(engine_errors.InvalidInput) as err:
        config.load(environ={"HASHMATCH_LISTEN": listen})
    assert str(err.value).startswith("listen: must be HOST:PORT"), err.value


@pytest.mark.parametrize(
    "listen", ["127.0.0.1:0", "0.0.0.0:50051", "[::1]:50051", "[::]:0", "localhost:65535",
               "unix:/run/hashmatch.sock"],
)  # fmt: skip
def test_listen_addresses_of_every_documented_form_load(listen):
    assert config.load(environ={"HASHMATCH_LISTEN": listen}).listen == listen


def test_a_bad_value_names_where_it_was_set(tmp_path):
    """The same key can be set in the config file, the environment and a flag: "workers:
    not an integer: 'abc'" left the operator to guess which one to fix."""
    path = tmp_path / "hashmatch.toml"
    path.write_text('[server]\nworkers = "abc"\nmetrics_port = 70000\n')
    with pytest.raises(engine_errors.InvalidInput) as err:
        config.load(path, environ={})
    assert str(err.value) == f"workers: not an integer: 'abc' (from {path})"
    with pytest.raises(engine_errors.InvalidInput) as err:
        config.load(environ={"HASHMATCH_WORKERS": "abc"})
    assert str(err.value) == "workers: not an integer: 'abc' (from HASHMATCH_WORKERS)"
    with pytest.raises(engine_errors.InvalidInput) as err:
        config.load(environ={}, flags={"listen": 45002})
    assert str(err.value) == "listen: must be a string, got 45002 (from --listen)"
    # checked once every layer is applied: named by the layer that set it last
    path.write_text("metrics_port = 70000\n")
    with pytest.raises(engine_errors.InvalidInput) as err:
        config.load(path, environ={})
    assert str(err.value).startswith("metrics_port: must be -1 (off)"), err.value
    assert str(err.value).endswith(f"got 70000 (from {path})"), err.value
    with pytest.raises(engine_errors.InvalidInput) as err:
        config.load(path, environ={"HASHMATCH_METRICS_PORT": "-2"})
    assert str(err.value).endswith("(from HASHMATCH_METRICS_PORT)"), err.value
    # the thread counts too (they said "workers, media_workers and max_concurrent_rpcs
    # must be >= 1", naming neither the key that was wrong nor where it was set)
    for key, origin in (("workers", "--workers"), ("media_workers", "--media-workers")):
        with pytest.raises(engine_errors.InvalidInput) as err:
            config.load(environ={}, flags={key: 0})
        assert str(err.value) == f"{key}: must be >= 1, got 0 (from {origin})"
    with pytest.raises(engine_errors.InvalidInput) as err:
        config.load(environ={"HASHMATCH_MAX_CONCURRENT_RPCS": "0"})
    assert str(err.value).endswith("got 0 (from HASHMATCH_MAX_CONCURRENT_RPCS)"), err.value
    path.write_text("[server]\nworker = 4\n")
    with pytest.raises(engine_errors.InvalidInput) as err:
        config.load(path, environ={})
    assert "worker (did you mean workers?)" in str(err.value) and str(path) in str(err.value)


def test_a_home_relative_config_file_is_in_the_home_directory(tmp_path, monkeypatch):
    # HASHMATCH_CONFIG=~/hashmatch.toml in a unit's Environment= (no shell expands it)
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "hashmatch.toml").write_text("workers = 3\n")
    assert config.load(environ={"HASHMATCH_CONFIG": "~/hashmatch.toml"}).workers == 3
    assert config.load("~/hashmatch.toml", environ={}).workers == 3


def test_the_video_frame_cap_is_set_like_the_other_limits(tmp_path):
    """``max_video_frames``: file < environment < flag, checked positive by name."""
    path = tmp_path / "hashmatch.toml"
    path.write_text("[server]\nmax_video_frames = 500\n")
    assert config.load(environ={}).max_video_frames == 10_000
    assert config.load(path, environ={}).max_video_frames == 500
    env = {"HASHMATCH_MAX_VIDEO_FRAMES": "700"}
    assert config.load(path, environ=env).max_video_frames == 700
    flags = {"max_video_frames": 900}
    assert config.load(path, flags=flags, environ=env).max_video_frames == 900
    with pytest.raises(engine_errors.InvalidInput, match="max_video_frames: must be positive"):
        config.load(environ={"HASHMATCH_MAX_VIDEO_FRAMES": "0"})


def test_serve_takes_the_video_frame_cap_as_a_flag():
    from hashmatch.server.commands.service import serve

    assert "max_video_frames" in {p.name for p in serve.params}
