"""Server configuration: defaults < TOML file < ``HASHMATCH_*`` environment < CLI flags.

Why one dataclass: every limit the service enforces (message size, batch size,
media bytes and pixels, concurrency) is written down here once, and the same
object drives ``hashmatch serve``, the tests and the benchmark.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from hashmatch.engine.errors import InvalidInput
from hashmatch.engine.media_limits import MAX_FRAMES

ENV_PREFIX = "HASHMATCH_"


@dataclass(frozen=True)
class ServerConfig:
    """Everything ``hashmatch serve`` can be told. Field names are the TOML keys."""

    listen: str = "127.0.0.1:50051"
    data_dir: str = "./hashmatch-data"
    shards: int | None = 1  # per signal type; 0 or none = one per core (see engine.runtime)
    index_kind: str = "auto"
    # Auth: tokens file (TOML, tokens stored as SHA-256); default <data_dir>/auth.toml.
    auth_file: str | None = None
    insecure_no_auth: bool = False
    # TLS: server cert + key; client_ca turns on mutual TLS (client certs required).
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None
    # gRPC server reflection (grpcurl and other generic clients discover the API). Off
    # hides the schema from whoever can reach the port; the .proto files are public
    # anyway, so this is hardening, not access control (tokens are).
    reflection: bool = True
    # Prometheus metrics on a separate HTTP port (-1 = off, 0 = any free port).
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 9464
    # Limits: a request over any of these is INVALID_ARGUMENT naming the field.
    max_message_bytes: int = 32 * 1024 * 1024
    max_batch: int = 10_000  # hashes per Match / signals per Ingest message
    max_media_items: int = 16  # media items per request
    max_media_bytes: int = 20 * 1024 * 1024  # per media item
    max_media_pixels: int = 50_000_000  # per decoded image
    # Sampled frames hashed per video sent to the server (10,000 is 2 h 46 min at vPDQ's
    # one hash a second); more is INVALID_ARGUMENT. Below the CLI's cap for the
    # operator's own files: uploads are callers' bytes, each frame costs CPU and a reply
    # row. An animation's frames keep the fixed MAX_FRAMES.
    max_video_frames: int = MAX_FRAMES
    # Concurrency: gRPC worker threads; RPCs beyond max_concurrent_rpcs are refused with
    # RESOURCE_EXHAUSTED (a bounded queue); request streams get at most half the threads
    # (see request_streams_limit).
    workers: int = 32
    max_concurrent_rpcs: int = 256
    # Hash lookups: concurrent requests with the same options are merged into one engine
    # call on these threads (0 = call the engine on the gRPC thread, no batching).
    lookup_threads: int = 2
    lookup_batch: int = 512  # rows per merged engine call
    max_pending_lookups: int = 20_000  # queued rows beyond this: RESOURCE_EXHAUSTED
    # Media hashing runs on its own bounded pool so large images cannot starve lookups;
    # beyond workers + queue waiting items, media requests get RESOURCE_EXHAUSTED.
    media_workers: int = 2
    media_queue: int = 8
    # Clients may ping (keepalive) this often, no more: more often, the server closes the
    # connection ("too many pings"). The Python clients ping every 30 s.
    min_client_ping_seconds: float = 10.0
    # The server pings each connection this often (0 = never) and closes one whose ping
    # goes unanswered for keepalive_timeout_seconds: the calls of a client that vanished
    # without a word (a NAT or firewall forgetting the connection) end, and a request
    # stream's slot is freed, instead of being held until TCP gives up (hours).
    keepalive_seconds: float = 60.0
    keepalive_timeout_seconds: float = 20.0
    # Graceful shutdown: in-flight calls get this long to finish.
    drain_seconds: float = 10.0
    log_level: str = "INFO"

    def with_overrides(
        self, values: Mapping[str, Any], origin: Callable[[str], str] | None = None
    ) -> ServerConfig:
        """A copy with the non-None ``values`` applied (unknown keys are an error).

        ``origin(key)`` says where a value came from (the config file, ``HASHMATCH_KEY``,
        ``--key``); an error about a value names it, as ``workers: not an integer: 'abc'
        (from HASHMATCH_WORKERS)``: the same key can be set in three places.
        """
        known = {f.name for f in fields(self)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise _from(
                InvalidInput(f"unknown setting(s) {_with_hints(unknown, known)}", field="config"),
                origin and origin(unknown[0]),
            )
        clean = {}
        for key, value in values.items():
            if value is not None:
                try:
                    clean[key] = _coerce(key, value)
                except InvalidInput as exc:
                    raise _from(exc, origin and origin(key)) from None
        return dataclasses.replace(self, **clean)

    @property
    def auth_path(self) -> Path:
        return Path(self.auth_file) if self.auth_file else Path(self.data_dir) / "auth.toml"

    @property
    def request_streams_limit(self) -> int:
        """How many streaming calls (MatchStream, Ingest, Changes) may run at once:
        half the worker threads (at least 1); beyond it, RESOURCE_EXHAUSTED at once.

        Why: such a call holds a worker thread for as long as its client keeps the stream
        open, sending (or, for Changes, reading) or not, so a few idle streams could take
        every thread and make all other calls, health checks too, wait until their
        deadlines. Unary calls finish on their own, so they still queue (up to
        ``max_concurrent_rpcs``) for the other half rather than being refused: 64
        concurrent upload-pipeline callers on 32 threads wait a few milliseconds instead
        of half of them failing.
        """
        return max(1, self.workers // 2)

    def validate(self) -> ServerConfig:
        """Refuse at start-up what would otherwise fail later, on every call or on stop.

        Why: an unknown ``index_kind`` or negative ``shards`` used to reach SERVING and
        then fail every lookup with INVALID_ARGUMENT (blaming the client) after ingests
        had been committed; a ``metrics_port`` over 65535 was a traceback.
        """
        for name in _POSITIVE:
            if getattr(self, name) <= 0:
                raise InvalidInput("must be positive", field=name)
        for name in _NOT_NEGATIVE:
            if getattr(self, name) < 0:
                raise InvalidInput("must be >= 0", field=name)
        for name in ("drain_seconds", "min_client_ping_seconds", "keepalive_seconds",
                     "keepalive_timeout_seconds"):  # fmt: skip
            if not math.isfinite(getattr(self, name)):
                raise InvalidInput("must be a finite number of seconds", field=name)
        for name in ("workers", "media_workers", "max_concurrent_rpcs"):
            if getattr(self, name) < 1:  # by name: the error says where it was set
                raise InvalidInput(f"must be >= 1, got {getattr(self, name)}", field=name)
        if self.shards is not None and not 0 <= self.shards <= MAX_SHARDS:
            raise InvalidInput(
                f"must be 0 (one per core) .. {MAX_SHARDS}, got {self.shards}", field="shards"
            )
        if self.index_kind not in INDEX_KINDS:
            raise InvalidInput(
                f"unknown index kind {self.index_kind!r} (known: {', '.join(INDEX_KINDS)})",
                field="index_kind",
            )
        if not self.listen.startswith(UNIX_SCHEMES):
            _check_listen(self.listen)
        if not -1 <= self.metrics_port <= 65535:
            raise InvalidInput(
                f"must be -1 (off), 0 (any free port) .. 65535, got {self.metrics_port}",
                field="metrics_port",
            )
        if self.log_level.upper() not in LOG_LEVELS:
            raise InvalidInput(
                f"unknown level {self.log_level!r} (known: {', '.join(LOG_LEVELS)})",
                field="log_level",
            )
        for name in PATH_KEYS:
            value = getattr(self, name)
            if value is not None and not str(value).strip():
                # e.g. HASHMATCH_TLS_CLIENT_CA= from an unset variable: mutual TLS would
                # be off without a word
                raise InvalidInput("must be a path, not empty (leave it unset)", field=name)
        if bool(self.tls_cert) != bool(self.tls_key):
            raise InvalidInput("tls_cert and tls_key go together", field="tls_cert")
        if self.tls_client_ca and not self.tls_cert:
            raise InvalidInput("mutual TLS needs tls_cert and tls_key", field="tls_client_ca")
        return self


#: gRPC's Unix-socket listen addresses (``unix:/run/hashmatch.sock``): no port to check.
UNIX_SCHEMES = ("unix:", "unix-abstract:")


def _check_listen(listen: str) -> None:
    """Refuse a ``listen`` that gRPC would bind otherwise than written.

    Why: gRPC took ``127.0.0.1`` as port 443 (https's), ``:99999`` as 34463 (modulo
    65536) and ``:-1`` as 65535, and ``serve`` said "serving on" the address as written,
    where no client found it.
    """
    host, _, port = listen.rpartition(":")
    v6_unbracketed = ":" in host and not (host.startswith("[") and host.endswith("]"))
    if not host or v6_unbracketed or not port.isdigit() or int(port) > 65535:
        raise InvalidInput(
            "must be HOST:PORT, PORT 0..65535 (0 = any free), e.g. 127.0.0.1:50051 or"
            f" [::1]:50051; got {listen!r}",
            field="listen",
        )


#: Settings that are file or directory paths ("~/..." is the home directory).
PATH_KEYS = ("data_dir", "auth_file", "tls_cert", "tls_key", "tls_client_ca")
#: Settings that must be > 0 / >= 0 (the rest have their own checks in validate).
_POSITIVE = (
    "max_message_bytes", "max_batch", "max_media_items", "max_media_bytes",
    "max_media_pixels", "max_video_frames", "lookup_batch", "min_client_ping_seconds",
    "keepalive_timeout_seconds",
)  # fmt: skip
_NOT_NEGATIVE = ("media_queue", "lookup_threads", "max_pending_lookups", "drain_seconds",
                 "keepalive_seconds")  # fmt: skip
#: indexes.sharded.KINDS and its shard bound (not imported: that pulls in FAISS).
INDEX_KINDS = ("auto", "flat", "mih", "exact")
MAX_SHARDS = 1024
LOG_LEVELS = ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG")


def _field_types() -> dict[str, str]:
    return {f.name: str(f.type) for f in fields(ServerConfig)}


def _coerce(name: str, value: Any) -> Any:
    """Env values arrive as strings; turn them into the field's type. TOML and flag
    values arrive typed: check them, so a wrong type is refused by name at start-up
    (``listen = 45002`` used to be an AttributeError, ``workers = 1.5`` accepted)."""
    kind = _field_types()[name].split(" | ")[0]  # "int | None" -> "int"
    if isinstance(value, str) and kind != "str":
        return _parse(name, kind, value.strip())
    if kind == "float" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    want = {"bool": bool, "int": int, "float": float, "str": str}[kind]
    if not isinstance(value, want) or (isinstance(value, bool) and kind != "bool"):
        shown = {"bool": "true or false", "int": "an integer", "float": "a number"}
        raise InvalidInput(f"must be {shown.get(kind, 'a string')}, got {value!r}", field=name)
    if name in PATH_KEYS:
        # "~/hashmatch" in a config file or a unit's Environment= (no shell expands it
        # there) made a directory named "~" in the working directory
        return os.path.expanduser(value)
    return value


def _parse(name: str, kind: str, text: str) -> Any:
    """A string (from the environment, or quoted in TOML) as a bool, int or float."""
    if kind == "bool":
        if text.lower() in _TRUE | _FALSE:
            return text.lower() in _TRUE
        raise InvalidInput(f"not true or false: {text!r}", field=name)
    try:
        return int(text) if kind == "int" else float(text)
    except ValueError:
        what = "an integer" if kind == "int" else "a number"
        raise InvalidInput(f"not {what}: {text!r}", field=name) from None


_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})


#: The variables of the client verbs' --token-file, --ca, --cert and --key (``remote``,
#: ``scan``/``rescan --server``, ``mirror``), by option
ACCESS_ENV = {name: ENV_PREFIX + name.upper() for name in ("token_file", "ca", "cert", "key")}

#: ``HASHMATCH_*`` variables that are not settings: read by the other verbs (``remote``
#: and the clients: TOKEN, SERVER, :data:`ACCESS_ENV`) or naming the config file itself.
OTHER_ENV = (*(ENV_PREFIX + name for name in ("CONFIG", "TOKEN", "SERVER")), *ACCESS_ENV.values())


def from_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The settings given as ``HASHMATCH_<KEY>`` variables.

    Why strict: a misspelt variable (``HASHMATCH_WORKER``, ``HASHMATCH_DRAIN_SECOND``
    in a unit's ``Environment=``) used to be ignored without a word, as a misspelt key
    in the config file is not.
    """
    env = os.environ if environ is None else environ
    by_var = {ENV_PREFIX + name.upper(): name for name in _field_types()}
    unknown = sorted(
        key for key in env if key.startswith(ENV_PREFIX) and key not in by_var
        and key not in OTHER_ENV
    )  # fmt: skip
    if unknown:
        raise InvalidInput(
            f"environment variable {_with_hints(unknown, [*by_var, *OTHER_ENV])}: not a"
            " hashmatch variable (settings are HASHMATCH_<KEY>, the config keys in upper"
            " case); unset it"
        )
    return {name: env[key] for key, name in by_var.items() if key in env}


def _with_hints(unknown: Iterable[str], known: Iterable[str]) -> str:
    """``"a (did you mean b?), c"``: each unknown name, with the known name it is most
    likely a typo of (if one is close)."""
    known = list(known)
    shown = []
    for name in unknown:
        close = difflib.get_close_matches(name, known, n=1)
        shown.append(f"{name} (did you mean {close[0]}?)" if close else name)
    return ", ".join(shown)


def load(
    path: str | Path | None = None,
    *,
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> ServerConfig:
    """Resolve the configuration: defaults, then the file, then env, then flags."""
    config = ServerConfig()
    env = from_env(environ)
    named_by = "--config"
    if path is None:
        path = (os.environ if environ is None else environ).get(ENV_PREFIX + "CONFIG")
        named_by = ENV_PREFIX + "CONFIG"
    if path is not None and not str(path).strip():
        # `Environment=HASHMATCH_CONFIG=${UNSET}` used to start on the defaults: another
        # data dir, tokens file and port, TLS off, with no word about the config
        raise InvalidInput(
            f"must be a path, not empty (leave it unset) (from {named_by})",
            field="config",
        )
    layers: list[tuple[Mapping[str, Any], Callable[[str], str]]] = []
    if path:
        # "~/hashmatch.toml" in HASHMATCH_CONFIG (a unit's Environment=, no shell) was
        # looked for under a directory named "~", as path settings were
        path = os.path.expanduser(path)
        layers.append((read_file(path), lambda _key: str(path)))
    layers.append((env, lambda key: ENV_PREFIX + key.upper()))
    layers.append((flags or {}, lambda key: "--" + key.replace("_", "-")))
    origins: dict[str, str] = {}
    for values, origin in layers:
        config = config.with_overrides(values, origin)
        origins.update((key, origin(key)) for key, value in values.items() if value is not None)
    try:
        return config.validate()
    except InvalidInput as exc:
        raise _from(exc, origins.get(exc.field or "")) from None


def _from(exc: InvalidInput, origin: str | None) -> InvalidInput:
    """``exc`` with ``(from ORIGIN)`` after its message (the ``key: `` prefix kept)."""
    if not origin:
        return exc
    return type(exc)(f"{exc.message} (from {origin})", field=exc.field, index=exc.index)


def read_file(path: str | Path) -> Mapping[str, Any]:
    """The settings in a TOML config file: the ``[server]`` table, or the whole file.

    Why strict: with a ``[server]`` table, keys written above it (outside it) used to
    be ignored without a word, so ``data_dir`` or ``auth_file`` there silently fell
    back to the defaults.
    """
    data = read_toml(path)
    if "server" not in data:
        return data
    stray = sorted(set(data) - {"server"})
    if stray:
        raise InvalidInput(
            f"{path}: {', '.join(stray)} outside the [server] table would be ignored: "
            "put every setting under [server] (or use no [server] table)",
            field="config",
        )
    if not isinstance(data["server"], Mapping):
        raise InvalidInput(f"{path}: server must be a table [server]", field="config")
    return data["server"]


def read_toml(path: str | Path) -> dict[str, Any]:
    """A TOML file's tables (the config file, the tokens file); a file that is not TOML
    or not UTF-8 is InvalidInput naming the file (OSError as ``open`` raises it).

    Why: tomllib's messages do not name the file, and bytes that are not UTF-8 (a
    comment or tenant name saved by an editor in Latin-1) raised UnicodeDecodeError:
    a traceback at start-up, and on SIGHUP the end of the running server.
    """
    with open(path, "rb") as fh:
        raw = fh.read()
    return toml_from_bytes(raw, path)


def toml_from_bytes(raw: bytes, path: str | Path) -> dict[str, Any]:
    """``raw``, read from ``path``, as :func:`read_toml` parses it (errors name ``path``).

    A leading byte order mark (some Windows editors save UTF-8 with one) is named: TOML
    does not allow it, and tomllib said only "Invalid statement (at line 1, column 1)"
    of a first line that looks fine in any editor."""
    if raw.startswith(b"\xef\xbb\xbf"):
        raise InvalidInput(
            f"{path}: starts with a byte order mark (U+FEFF, as some Windows editors save"
            " UTF-8), which TOML does not allow: save it as UTF-8 without one"
        )
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise InvalidInput(
            f"{path}: not UTF-8 text (byte {raw[exc.start]:#04x} at offset {exc.start});"
            " save it as UTF-8"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise InvalidInput(f"{path}: not valid TOML: {exc}") from None
