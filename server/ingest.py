"""Signals RPCs: Ingest (client stream of batches), Retract, ListHashLists.

Items that do not parse are rejected here with their stream-wide index (the
engine never sees them); the rest go to ``engine.ingest``, which reports its own
rejections. Either way the reply counts both and names the rejected items, as many as
its budget holds (:mod:`.rejection_list`).
"""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING

from hashmatch.engine import signal_types
from hashmatch.engine.errors import HashmatchError, InvalidInput, is_disk_full
from hashmatch.engine.ingest import parse_time
from hashmatch.engine.store import MAX_TARGETS_KEPT, IngestRefused, Rejection, SignalRecord
from hashmatch.server import convert

# how many unknown targets a RetractResponse names (not_found_total counts all): one
# number for both ends, so the client's sum of batched replies keeps the same cap
from hashmatch.server.client import MAX_NOT_FOUND_LISTED
from hashmatch.server.errors import DiskFull, clip, disk_full_message
from hashmatch.server.matching import check_size
from hashmatch.server.rejection_list import RejectionList
from hashmatch.server.replies import RequestBody
from hashmatch.server.violations import InvalidRequest, Violations
from hashmatch.v1 import signals_pb2

if TYPE_CHECKING:
    from hashmatch.server.app import ServiceHost
    from hashmatch.server.calls import Call


def _record(signal: signals_pb2.Signal, field: str) -> SignalRecord:
    if signal.frames:
        return _video_record(signal, field)
    name, code = convert.parse_hash(signal.hash, f"{field}.hash")
    quality = signal.hash.quality if signal.hash.HasField("quality") else None
    return SignalRecord(
        signal_type=name,
        hash_hex=signal_types.get(name).format(code),
        labels=tuple(signal.labels),
        external_id=signal.external_id or None,
        quality=quality,
        expires_at=_expires_at(signal, field),
    )


def _expires_at(signal: signals_pb2.Signal, field: str) -> float | None:
    """The file parsers' rule (finite epoch seconds a datetime can show), so a NaN or a
    millisecond epoch is refused here as it is in a CSV."""
    if not signal.HasField("expires_at"):
        return None
    try:
        return parse_time(signal.expires_at)
    except InvalidInput as exc:
        raise InvalidInput(exc.message, field=f"{field}.expires_at") from None


def _video_record(signal: signals_pb2.Signal, field: str) -> SignalRecord:
    """A vPDQ signal: one video, its frames given one PDQ hex each."""
    st = convert.signal_type(signal.hash.signal_type or "vpdq", f"{field}.hash.signal_type")
    if st.name != "vpdq":
        raise InvalidInput(f"frames are for vpdq signals, not {st.name}", field=f"{field}.frames")
    frames = convert.parse_frames(signal.frames, signal.frame_qualities, field, "frame_qualities")
    # timestamps: checked by the store (signal_types.check_frame_extras), for every path
    return SignalRecord(
        signal_type="vpdq",
        hash_hex="",
        labels=tuple(signal.labels),
        external_id=signal.external_id or None,
        frames=frames,
        frame_qualities=list(signal.frame_qualities) or None,
        timestamps=list(signal.timestamps) or None,
        expires_at=_expires_at(signal, field),
    )


#: a message's items with several bad fields (a video's bad frames), by index in the
#: message: every one of them, as a refusal lists them (see :func:`_item_errors`)
Several = dict[int, InvalidRequest]


def _items(
    request: signals_pb2.IngestRequest, offset: int
) -> tuple[list[SignalRecord | Rejection], Several]:
    """Records, with a :class:`Rejection` in place of each item that does not parse (the
    engine counts one per item), and the items with several bad fields."""
    items: list[SignalRecord | Rejection] = []
    several: Several = {}
    for i, signal in enumerate(request.signals):
        field = f"signals[{offset + i}]"
        try:
            items.append(_record(signal, field))
        except InvalidInput as exc:
            items.append(Rejection(exc.message, index=i, field=exc.field or field))
            if isinstance(exc, InvalidRequest) and exc.total > 1:
                several[i] = exc
    return items, several


def _bad_fields(
    rejection: Rejection, offset: int, several: Several
) -> tuple[list[tuple[str, str]], int]:
    """(field, reason) of each bad field of a rejected item, and how many it has: one, or
    every bad frame of a video (before, only the first: fixing a video with 40 bad
    frames took 40 round trips), the first :data:`~hashmatch.server.violations.MAX_KEPT`
    listed, as a refusal's violations are."""
    found = several.get(rejection.index) if rejection.index is not None else None
    if found is None or not (rejection.field or "").startswith("signals["):
        return [(_field(rejection, offset), rejection.reason)], 1
    return list(found.violations), found.total


def _item_errors(
    rejection: Rejection, offset: int, several: Several
) -> tuple[list[tuple[str, str]], int]:
    """A rejected item's entries in a reply's ``rejections``: each bad field, then one
    saying how many more when they were too many to list; and how many it has."""
    listed, total = _bad_fields(rejection, offset, several)
    if total > len(listed):
        item = f"signals[{offset + (rejection.index or 0)}]"
        listed.append((item, f"and {total - len(listed)} more not listed ({total} in all)"))
    return listed, total


def ingest(host: ServiceHost, requests, call: Call) -> signals_pb2.IngestResponse:
    """Each stream message is stored as it arrives (its own commit), so a stream that
    fails part way has stored the messages before the failing one: the error says how
    many, so a caller does not resend them blindly (a resend is harmless: unchanged).
    A stream repeating a request_id gets the first's reply (:mod:`.replies`)."""
    body = RequestBody(requests, stream=True)
    return host.replies.once(
        call, body, lambda start, skip: _ingest_stream(host, body, call, start, skip)
    )


def _ingest_stream(
    host: ServiceHost,
    requests,
    call: Call,
    start: signals_pb2.IngestResponse | None = None,
    skip: int = 0,
) -> signals_pb2.IngestResponse:
    """Store the stream's messages; the first ``skip`` are only read (a repeat of a
    remembered call, whose reply ``start`` the rest add to: see ``replies.once``)."""
    # still_retracted set: "this server keeps expiries"
    reply = start or signals_pb2.IngestResponse(still_retracted=0)
    listing = RejectionList(reply)
    list_name = ""
    offset = stored = 0
    try:
        for n, request in enumerate(requests):
            list_name = request.list_name.strip() or list_name
            call.log["list"] = clip(list_name)  # a refused write's log line names its target too
            if n >= skip:
                _ingest_message(host, call, n, request, list_name, offset, listing)
            else:
                call.check_deadline()
            offset += len(request.signals)
            stored = n + 1
    except (OSError, sqlite3.Error) as exc:
        if not is_disk_full(exc):
            raise
        # each message is its own commit: stream[stored] was rolled back, those before kept
        kept = (
            f"messages before stream[{stored}] were stored and are kept, stream[{stored}]"
            " was rolled back (resending the stream is harmless: an ingest is an upsert)"
            if stored
            else "no signal of this call was stored"
        )
        data_dir = str(host.config.data_dir)
        raise DiskFull(disk_full_message(exc, data_dir=data_dir, kept=kept)) from exc
    except HashmatchError as exc:
        if offset and stored > skip:  # (may fail reading message `stored`, not storing it)
            exc.message += (
                f" (messages before stream[{stored}] were stored: added {reply.added}, updated"
                f" {reply.updated}, unchanged {reply.unchanged}, rejected {reply.rejected})"
            )
        raise
    if offset == 0:
        raise InvalidInput("the stream carried no signals", field="signals")
    listing.finish(offset)
    call.log.update(list=list_name, items=offset, added=reply.added, rejected=reply.rejected)
    return reply


def _ingest_message(
    host: ServiceHost,
    call: Call,
    n: int,
    request: signals_pb2.IngestRequest,
    list_name: str,
    offset: int,
    listing: RejectionList,
) -> None:
    """Validate and store stream message ``n``, adding its counts and rejections to
    ``listing.reply``."""
    config = host.config
    call.check_deadline()
    check_size(request, config.max_message_bytes, field=f"stream[{n}]")
    if len(request.signals) > config.max_batch:
        raise InvalidInput(
            f"{len(request.signals)} signals is over the limit of {config.max_batch} per "
            "message; split the batch",
            field=f"stream[{n}].signals",
        )
    if not list_name:
        raise InvalidInput("list_name is required", field=f"stream[{n}].list_name")
    check_stored_text(request.source, MAX_SOURCE_CHARS, f"stream[{n}].source")
    if not request.signals:
        return
    items, several = _items(request, offset)
    try:
        report = host.engine.ingest(
            items,
            list_name=list_name,
            actor=call.principal.tenant,
            source=request.source or None,
            strict=request.strict,
            tenant=call.principal.engine_tenant,
        )
    except IngestRefused as exc:
        raise _strict_refusal(exc, offset, several) from None
    reply = listing.reply
    reply.added += report.added
    reply.updated += report.updated
    reply.unchanged += report.unchanged
    reply.still_retracted += report.still_retracted
    room = MAX_TARGETS_KEPT - len(reply.still_retracted_targets)  # across the stream
    reply.still_retracted_targets.extend(report.still_retracted_targets[:room])
    reply.rejected += report.rejected
    for r in report.rejections:
        listing.add(offset + (r.index or 0), *_item_errors(r, offset, several))


def _strict_refusal(exc: IngestRefused, offset: int, several: Several) -> InvalidRequest:
    """A strict message's refusal naming every bad item, and every bad frame of a video
    (up to the violations kept), so one round trip says all that must be fixed before
    it is sent again."""
    report = exc.report
    found = Violations()
    unlisted = report.rejected - len(report.rejections)  # past the engine's kept ones
    for rejection in report.rejections:
        listed, total = _bad_fields(rejection, offset, several)
        if not found:  # the status message's first
            field, reason = listed[0]
            listed[0] = (
                field,
                f"strict ingest refused the message ({report.rejected} bad): {reason}",
            )
        found.add(InvalidRequest(listed, total))
    return InvalidRequest(found.kept, found.total + unlisted)


# The engine names record fields; these are where they sit in a Signal message.
_SIGNAL_FIELDS = {"quality": "hash.quality", "signal_type": "hash.signal_type"}


def _field(rejection: Rejection, offset: int) -> str:
    if rejection.field and rejection.field.startswith("signals["):
        return rejection.field  # ours: already stream-wide
    where = f"signals[{offset + (rejection.index or 0)}]"
    if rejection.field:
        where += "." + _SIGNAL_FIELDS.get(rejection.field, rejection.field)
    return where


def retract(
    host: ServiceHost, request: signals_pb2.RetractRequest, call: Call
) -> signals_pb2.RetractResponse:
    """Retract the targets; a request repeating a request_id gets the first's reply
    (:mod:`.replies`)."""
    body = RequestBody([request], stream=False)
    return host.replies.once(
        call, body, lambda start, skip: start if skip else _retract(host, request, call)
    )


#: A retraction's reason is stored on every signal it retracts (and again on those already
#: retracted when it differs): uncapped, a 200 kB Retract of 2,000 signals with a 100 kB
#: reason wrote 400 MB to the store, and one at ``max_message_bytes`` could fill the disk.
MAX_REASON_CHARS = 1000
#: An Ingest message's ``source`` is stored once per message (its audit-log entry), so
#: capped alike: uncapped, a stream of one-signal messages wrote up to
#: ``max_message_bytes`` of source to the store per signal.
MAX_SOURCE_CHARS = 1000


def check_stored_text(text: str, limit: int, field: str) -> None:
    """Refuse client text the store would keep over ``limit`` characters (INVALID_ARGUMENT
    naming ``field``): it is written per row or per message, and unbounded it fills the
    disk of a server whose requests are each within the message limit."""
    if len(text) > limit:
        raise InvalidInput(f"{len(text)} characters is over the limit of {limit}", field=field)


def _retract(host: ServiceHost, request: signals_pb2.RetractRequest, call: Call):
    check_size(request, host.config.max_message_bytes)
    list_name = request.list_name.strip()
    if not list_name:
        raise InvalidInput("list_name is required", field="list_name")
    call.log["list"] = clip(list_name)  # a refused retraction's log line names its target too
    if not request.hashes and not request.signal_ids:
        raise InvalidInput("give hashes or signal_ids to retract", field="hashes")
    check_stored_text(request.reason, MAX_REASON_CHARS, "reason")
    items = len(request.hashes) + len(request.signal_ids)
    if items > host.config.max_batch:
        larger = "hashes" if len(request.hashes) >= len(request.signal_ids) else "signal_ids"
        raise InvalidInput(
            f"{items} hashes and signal ids is over the limit of {host.config.max_batch}",
            field=larger,
        )
    hashes = []
    for i, value in enumerate(request.hashes):
        name, code = convert.parse_hash(value, f"hashes[{i}]")
        hashes.append((name, signal_types.get(name).format(code)))
    missing: list[str] = []  # read with the retraction: a list deleted after it is no error
    already: list[str] = []  # found, but retracted before: why the count fell short
    count = host.engine.retract(
        list_name=list_name,
        hashes=hashes,
        signal_ids=list(request.signal_ids),
        reason=request.reason or None,
        actor=call.principal.tenant,
        tenant=call.principal.engine_tenant,
        missing=missing,
        unchanged=already,
    )
    call.log.update(list=list_name, retracted=count, not_found=len(missing))
    return signals_pb2.RetractResponse(
        retracted=count,
        not_found=missing[:MAX_NOT_FOUND_LISTED],
        not_found_total=len(missing),
        already_retracted=already[:MAX_NOT_FOUND_LISTED],
        already_retracted_total=len(already),
    )


def list_hash_lists(engine, tenant: str | None) -> list[signals_pb2.HashList]:
    out = []
    uids = engine.store.list_uids()
    for info in engine.store.lists(tenant=tenant):
        out.append(
            signals_pb2.HashList(
                name=info.name,
                description=getattr(info, "description", "") or "",
                signal_count=int(getattr(info, "signal_count", 0) or 0),
                expired_count=int(getattr(info, "expired_count", 0) or 0),
                enabled=bool(getattr(info, "enabled", True)),
                signal_types=list(getattr(info, "signal_types", ()) or ()),
                owner=info.owner or "",
                labels=list(info.labels),
                uid=uids.get(info.id, ""),
            )
        )
    return out
