"""One place that turns exceptions into gRPC status codes.

Why: servicers stay thin (validate -> call the engine -> map errors). A client's
mistake (any :class:`~hashmatch.engine.errors.InvalidInput`) becomes
INVALID_ARGUMENT with a ``google.rpc.BadRequest`` detail naming the field and the
item index; nothing a client sends can produce INTERNAL. A full disk on the server
(ENOSPC/EDQUOT, SQLITE_FULL, a snapshot that found no room) is RESOURCE_EXHAUSTED
saying so: the caller can tell an operator, and retry once space is freed. A snapshot
that failed for another reason (EIO, a read-only or damaged data dir) is INTERNAL, but
with the engine's own message (which dir, why, that the previous snapshot is kept): only
admins call Snapshot, and "logged on the server" would send them to read logs for it.
A write that waited out the busy timeout behind another process's write lock ("database
is locked") is UNAVAILABLE, saying the store is locked (it was INTERNAL, "logged on the
server", with a traceback): it passes, and the clients retry UNAVAILABLE; which process
held it goes to the server's log only (:mod:`.store_lock_log`).
"""

from __future__ import annotations

import logging
import re

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from hashmatch.engine import errors as engine_errors
from hashmatch.engine.errors import is_disk_full, is_locked
from hashmatch.server.auth import Forbidden, Unauthenticated

log = logging.getLogger("hashmatch.server")


class Overloaded(engine_errors.HashmatchError):
    """A bounded queue is full (maps to RESOURCE_EXHAUSTED); the client should back off.
    Its status carries a ``google.rpc.RetryInfo``, the mark the Python clients retry on:
    other RESOURCE_EXHAUSTED (a full disk, a reply over the limit) would fail again."""


# RetryInfo.retry_delay of an Overloaded status: the least a client should wait
OVERLOADED_RETRY_DELAY = duration_pb2.Duration(nanos=100_000_000)


class DeadlineExceeded(engine_errors.HashmatchError):
    """The call's deadline passed before its work finished; the work was cancelled."""


class NotServing(engine_errors.HashmatchError):
    """The index is not loaded yet, or the server is shutting down (UNAVAILABLE)."""


class Cancelled(engine_errors.HashmatchError):
    """The client cancelled the call (or went away) while the server was working on it."""


class DiskFull(engine_errors.HashmatchError):
    """A write found the server's disk (or quota) full; its transaction was rolled back
    (RESOURCE_EXHAUSTED). Raised by a servicer that can say what was stored before."""


def disk_full_message(exc: BaseException, *, data_dir: str = "", kept: str = "") -> str:
    """Why the write failed, for the caller (who cannot see the server's log).

    A :class:`~hashmatch.engine.errors.HashmatchError` (``SnapshotFailed``) is worded
    for its reader already; a raw ``OSError``/``sqlite3`` error is not, so it is wrapped.
    """
    if isinstance(exc, engine_errors.HashmatchError):
        return str(exc)
    where = f" (data dir {data_dir})" if data_dir else ""
    kept = kept or "what was acknowledged before is kept"
    return f"the server's disk is full{where}: {exc}; {kept}; free space on the server, then retry"


#: a store write that waited the whole busy timeout for another process's write lock
#: (an operator's ingest or rebuild on the server's data dir): which process is for the
#: server's log (store_lock_log), not for a remote tenant
STORE_LOCKED_MESSAGE = (
    "the server's store is locked by another process's write; retry later (what this call"
    " stored before is kept, and resending an ingest or retract is harmless)"
)


# Most specific first: the first isinstance match wins.
_CODES: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
    (engine_errors.InvalidInput, grpc.StatusCode.INVALID_ARGUMENT),
    (engine_errors.NotFound, grpc.StatusCode.NOT_FOUND),
    (engine_errors.PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (Forbidden, grpc.StatusCode.PERMISSION_DENIED),
    (Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (engine_errors.Conflict, grpc.StatusCode.FAILED_PRECONDITION),
    (engine_errors.CorruptData, grpc.StatusCode.DATA_LOSS),
    (DiskFull, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (Overloaded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED),
    (Cancelled, grpc.StatusCode.CANCELLED),
    (NotServing, grpc.StatusCode.UNAVAILABLE),
    (NotImplementedError, grpc.StatusCode.UNIMPLEMENTED),
)


# Client text (a list name, a signal type) can be echoed in a message; the status goes
# back in trailers (message + details, percent/base64-encoded) and a client refuses
# trailers over 16 KiB (RESOURCE_EXHAUSTED "metadata size exceeds hard limit"), which
# would hide the real status. 300 characters keep even 4-byte UTF-8 far below that.
MAX_MESSAGE_CHARS = 300


def clip(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """``text`` cut to ``limit`` characters, saying how long it was."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text)} chars)"


def field_path(exc: BaseException) -> str:
    """``hashes[3]`` style path of the offending field ("" when unknown)."""
    field = getattr(exc, "field", None) or ""
    index = getattr(exc, "index", None)
    if index is not None:
        return f"{field}[{index}]" if field else f"[{index}]"
    return field


def _code(exc: BaseException) -> grpc.StatusCode:
    for kind, mapped in _CODES:
        if isinstance(exc, kind):
            return mapped
    # Not a bug of ours but the server's disk: an error the engine does not word itself
    # (sqlite3, OSError) reaches here raw from any write path.
    if is_disk_full(exc):
        return grpc.StatusCode.RESOURCE_EXHAUSTED
    if is_locked(exc):  # another process's write on the data dir: it passes
        return grpc.StatusCode.UNAVAILABLE
    return grpc.StatusCode.INTERNAL


def to_status(exc: BaseException) -> tuple[grpc.StatusCode, str, status_pb2.Status]:
    """Map an exception to (code, message, rich status)."""
    code = _code(exc)
    if code is grpc.StatusCode.INTERNAL:
        message = (
            clip(str(exc))
            if isinstance(exc, engine_errors.SnapshotFailed)
            else "internal error (logged on the server)"
        )
    elif code is grpc.StatusCode.RESOURCE_EXHAUSTED and is_disk_full(exc):
        message = clip(disk_full_message(exc))
    elif code is grpc.StatusCode.UNAVAILABLE and is_locked(exc):
        message = STORE_LOCKED_MESSAGE
    elif isinstance(exc, NotImplementedError):
        message = f"not implemented: {exc}" if str(exc) else "not implemented"
    elif code is grpc.StatusCode.INVALID_ARGUMENT and hasattr(exc, "violations"):
        message = exc.summary()  # type: ignore[attr-defined]  # violations.InvalidRequest
    else:
        message = clip(str(exc))
    status = status_pb2.Status(code=code.value[0], message=message)
    if code is grpc.StatusCode.INVALID_ARGUMENT:
        status.details.append(_bad_request(exc, status))
    elif code is grpc.StatusCode.RESOURCE_EXHAUSTED:
        detail = any_pb2.Any()
        detail.Pack(
            error_details_pb2.QuotaFailure(
                violations=[
                    error_details_pb2.QuotaFailure.Violation(subject="server", description=message)
                ]
            )
        )
        status.details.append(detail)
        if isinstance(exc, Overloaded):  # momentary: the clients retry it (RetryInfo)
            retry = any_pb2.Any()
            retry.Pack(error_details_pb2.RetryInfo(retry_delay=OVERLOADED_RETRY_DELAY))
            status.details.append(retry)
    return code, message, status


# The status goes back in the trailers: grpc-message (percent-encoded) and
# grpc-status-details-bin (base64 of the Status, message included). gRPC's default
# limit on received metadata is 8 KiB (C core: refused at random above it, always
# above 16 KiB, as RESOURCE_EXHAUSTED hiding the real status; grpc-java: always
# above 8 KiB). The two stay under this, leaving room for the other trailers.
MAX_STATUS_TRAILER_BYTES = 7 * 1024


def _bad_request(exc: BaseException, status: status_pb2.Status) -> any_pb2.Any:
    """A BadRequest detail: each of the exception's violations (``InvalidRequest``) or
    its one field, as many as fit (see :func:`fitting_violations`)."""
    pairs = getattr(exc, "violations", None) or [
        (field_path(exc) or "request", getattr(exc, "message", None) or str(exc))
    ]
    total = getattr(exc, "total", len(pairs))
    detail = any_pb2.Any()
    detail.Pack(
        error_details_pb2.BadRequest(field_violations=fitting_violations(pairs, total, status))
    )
    return detail


def fitting_violations(
    pairs: list[tuple[str, str]], total: int, status: status_pb2.Status
) -> list[error_details_pb2.BadRequest.FieldViolation]:
    """``pairs`` (field, description) as the BadRequest of ``status`` lists them: as many
    as fit :data:`MAX_STATUS_TRAILER_BYTES` with its message (the first always), then one
    more, field ``request``, saying how many of ``total`` were left out."""
    listed = [
        error_details_pb2.BadRequest.FieldViolation(field=clip(f or "request"), description=clip(d))
        for f, d in pairs
    ]
    # an upper bound on the unlisted note, so it always fits once the others do
    note_bytes = 140
    room = (MAX_STATUS_TRAILER_BYTES - _percent_encoded_len(status.message)) * 3 // 4
    room -= status.ByteSize() + 80 + note_bytes  # the Any's type URL and framing
    kept = 1
    used = _field_bytes(listed[0])
    while kept < len(listed) and used + _field_bytes(listed[kept]) <= room:
        used += _field_bytes(listed[kept])
        kept += 1
    violations = listed[:kept]
    if total > kept:
        violations.append(
            error_details_pb2.BadRequest.FieldViolation(
                field="request",
                description=f"and {total - kept} more violations not listed"
                f" ({total} in all): fix those listed and send again to see the rest",
            )
        )
    return violations


_UNLISTED = re.compile(r"and \d+ more violations not listed \((\d+) in all\)")


def counted_violations(fields: list[tuple[str, str]]) -> tuple[list[tuple[str, str]], int]:
    """Client side: a BadRequest's (field, description) pairs (:func:`bad_request_fields`)
    without the last one saying how many were left out, and how many there were in all."""
    if fields and fields[-1][0] == "request" and (found := _UNLISTED.match(fields[-1][1])):
        return fields[:-1], int(found.group(1))
    return fields, len(fields)


def _field_bytes(violation: error_details_pb2.BadRequest.FieldViolation) -> int:
    """Bytes ``violation`` takes in its BadRequest (tag, length, body)."""
    size = violation.ByteSize()
    return 1 + (1 if size < 128 else 2 if size < 16384 else 3) + size


def _percent_encoded_len(message: str) -> int:
    """Length of ``message`` as gRPC sends it in grpc-message: each byte outside
    printable ASCII, and ``%``, as three."""
    return sum(1 if 0x20 <= b <= 0x7E and b != 0x25 else 3 for b in message.encode())


def abort(context: grpc.ServicerContext, exc: BaseException) -> None:
    """Abort the call with the mapped status (raises, as ``context.abort`` does)."""
    code, message, status = to_status(exc)
    if code is grpc.StatusCode.INTERNAL:
        log.exception("internal error", exc_info=exc)
    elif code is grpc.StatusCode.RESOURCE_EXHAUSTED and is_disk_full(exc):
        log.error("a write failed: %s", message)  # the operator must free space
    context.abort_with_status(rpc_status.to_status(status))


def bad_request_fields(call_error: grpc.RpcError) -> list[tuple[str, str]]:
    """Client side: the (field, description) pairs of a BadRequest detail, if any: every
    bad field of the request, the first as the status message names it; when the server
    left some out (it lists at most 100, fewer when long, to keep the trailers under
    gRPC's 8 KiB), a last pair ``("request", "and N more violations not listed ...")``.

    Empty when the call carries no such detail, or a status detail that does not agree
    with the call's code (``from_call`` raises ValueError: e.g. the trailers were
    dropped by the client's metadata limit and the code is RESOURCE_EXHAUSTED). A
    client ``match`` sent as several requests sets ``item_offsets`` on the error: a
    field's ``hashes[i]`` / ``videos[i]`` then counts in the whole call, not in the
    request the server saw; a ``match_stream`` that split or re-sent its requests also
    sets ``item_offsets["stream"]``, so ``stream[n]`` counts the caller's requests.
    When several parts of a split ``match`` were refused, the pairs are those of every
    refused part (``whole_call_violations``), within the same 100-field / 7 KiB budget.
    """
    merged = getattr(call_error, "whole_call_violations", None)
    if merged is not None:  # a split match's refused parts, as one (client_shared)
        return list(merged)
    try:
        status = rpc_status.from_call(call_error)
    except ValueError:
        return []
    out: list[tuple[str, str]] = []
    if status is None:
        return out
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            offsets = getattr(call_error, "item_offsets", None) or {}
            out.extend((_in_whole_call(v.field, offsets), v.description)
                       for v in bad.field_violations)  # fmt: skip
    return out


_ITEM = re.compile(r"(stream|hashes|videos)\[(\d+)\]\.?")


def _in_whole_call(field: str, offsets: dict[str, int]) -> str:
    """``field`` (``hashes[3].hex``, ``stream[2].hashes[3].hex``) with each leading
    index moved by its ``offsets`` entry."""
    found = _ITEM.match(field)
    if found is None:
        return field
    name, rest = found.group(1), field[found.end() :]
    index = int(found.group(2)) + offsets.get(name, 0)
    dot = "." if found.group(0).endswith(".") else ""
    inner = _in_whole_call(rest, offsets) if name == "stream" else rest
    return f"{name}[{index}]{dot}{inner}"
