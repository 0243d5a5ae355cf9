"""Match and Hash request handling: validate, look up (or hash then look up), build replies.

Hash lookups run on the calling gRPC thread (the engine fans out over the index
shards); media goes through the bounded :class:`~hashmatch.server.limits.MediaPool`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, TypeVar

from hashmatch.engine.decode import DecodeLimits
from hashmatch.engine.errors import EmptyMedia, InvalidInput, MediaError, MediaTooLarge
from hashmatch.engine.hashing import HashOptions, hash_media
from hashmatch.engine.matcher import LOW_QUALITY_MATCH_QUALITY_STORED, LOW_QUALITY_SKIP
from hashmatch.engine.media_limits import MAX_FRAMES
from hashmatch.server import convert
from hashmatch.server.errors import Overloaded
from hashmatch.server.violations import Violations
from hashmatch.v1 import matcher_pb2

if TYPE_CHECKING:
    from google.protobuf.message import Message

    from hashmatch.engine.matcher import MatchList, MediaMatch
    from hashmatch.server.app import ServiceHost
    from hashmatch.server.calls import Call

HASH = matcher_pb2.QueryResult.SOURCE_HASH
MEDIA = matcher_pb2.QueryResult.SOURCE_MEDIA
VIDEO = matcher_pb2.QueryResult.SOURCE_VIDEO

_Reply = TypeVar("_Reply", bound="Message")


def check_size(message: Message, limit: int, field: str = "request") -> None:
    size = message.ByteSize()
    if size > limit:
        raise InvalidInput(f"message is {size} bytes, over the {limit}-byte limit", field=field)


def check_media(host: ServiceHost, media: Sequence[bytes], field: str = "media") -> None:
    """The item count, then each item's size (every empty or oversized one, together)."""
    config = host.config
    if len(media) > config.max_media_items:
        raise InvalidInput(
            f"{len(media)} media items is over the limit of {config.max_media_items} per request",
            field=field,
        )
    found = Violations()
    for i, item in enumerate(media):
        if not item:
            found.add(EmptyMedia("media item is empty (0 bytes)", field=f"{field}[{i}]"))
        elif len(item) > config.max_media_bytes:
            found.add(
                MediaTooLarge(
                    f"{len(item)} bytes is over the {config.max_media_bytes}-byte limit",
                    field=f"{field}[{i}]",
                )
            )
    found.raise_any()


def media_types(names: Iterable[str], field: str) -> list[str]:
    """The requested media types, each once (a repeat would hash the media again); the
    bad ones are raised together."""
    chosen: list[str] = []
    found = Violations()
    for i, name in enumerate(names):
        st = found.attempt(convert.signal_type, name, f"{field}[{i}]")
        if st is None:
            continue
        if st.name in chosen:
            found.add(InvalidInput(f"{st.name} is requested twice", field=f"{field}[{i}]"))
        chosen.append(st.name)
    found.raise_any()
    return chosen or ["pdq"]


class ReplyTooLarge(Overloaded):
    """A reply over the message limit (RESOURCE_EXHAUSTED, as gRPC's own size refusal)."""


def check_reply(reply: _Reply, limit: int) -> _Reply:
    """Refuse a reply over ``limit`` bytes with a message saying what to change.

    Why: otherwise gRPC fails the send after the work is done, the client sees only
    "message larger than max" and the access log says OK.
    """
    size = reply.ByteSize()
    if size > limit:
        raise ReplyTooLarge(
            f"the reply would be {size} bytes, over the {limit}-byte message limit: send "
            "fewer items per request, set max_results, or ask for fewer types and options"
        )
    return reply


def hash_options(
    host: ServiceHost,
    *,
    dihedral: bool,
    trim_borders: bool = False,
    all_frames: bool = False,
    uncrop: bool = False,
    derotate: bool = False,
    upscale_small: bool = False,
    upscale_small_replicate: bool = False,
    upscale_small_phases: bool = False,
    for_matching: bool = False,
    checkpoint: Callable[[], None] | None = None,
) -> HashOptions:
    """Matching hashes each orientation exactly (best flip recall); the Hash RPC keeps
    pdqhash's one-DCT dihedral codes, the ones partners' tools produce. ``checkpoint``
    (the call's deadline check) stops a running video or animation hash once the
    client has gone."""
    # Frames: MAX_FRAMES per animation; a video's sampled frames ``max_video_frames``
    # (10,000 by default), deliberately below the CLI's LOCAL_MAX_VIDEO_FRAMES for the
    # operator's own files: uploads are callers' bytes, each sampled frame costs CPU on
    # the serving host and rows in the reply (README, "Errors and limits").
    limits = DecodeLimits(
        max_bytes=host.config.max_media_bytes,
        max_pixels=host.config.max_media_pixels,
        max_frames=MAX_FRAMES,
        max_video_frames=host.config.max_video_frames,
    )
    return HashOptions(
        dihedral=dihedral,
        dihedral_exact=for_matching,
        trim_borders=trim_borders,
        all_frames=all_frames,
        uncrop=uncrop,
        derotate=derotate,
        upscale_small=upscale_small,
        upscale_small_replicate=upscale_small_replicate,
        upscale_small_phases=upscale_small_phases,
        exif_as_stored=for_matching,  # lists made by HMA/pytx hash the unrotated pixels
        limits=limits,
        checkpoint=checkpoint,
    )


def _media_job(fn: Callable, index: int, field: str = "media") -> Callable:
    """Run ``fn``; a media error is returned (not raised), labelled with the item's
    index, so the pool runs every item and :func:`_refuse_failed` names each bad one.

    The pixel limit needs no check here: decoding refuses an image whose header
    declares more than ``max_media_pixels`` before any pixel is decoded (and a request
    for MD5/SHA-256 only never decodes, so a pixel bomb's digest is still answered).
    """

    def job():
        try:
            return fn()
        except MediaError as exc:
            return type(exc)(exc.message, field=f"{field}[{index}]")
        except InvalidInput as exc:
            name = f"{field}[{index}]" + (f".{exc.field}" if exc.field else "")
            return type(exc)(exc.message, field=name)

    return job


def _refuse_failed(outcomes: Sequence[object]) -> None:
    """Raise every media item that did not hash (the request is refused whole, as for
    a malformed hash: no partial results)."""
    found = Violations()
    for outcome in outcomes:
        if isinstance(outcome, InvalidInput):
            found.add(outcome)
    found.raise_any()


def match(
    host: ServiceHost, request: matcher_pb2.MatchRequest, call: Call
) -> matcher_pb2.MatchResponse:
    """One MatchRequest -> MatchResponse (raises typed errors naming the field)."""
    config = host.config
    check_size(request, config.max_message_bytes)
    n_hashes = len(request.hashes)
    if not n_hashes and not request.media and not request.videos:
        raise InvalidInput("the request has no hashes, media or videos", field="hashes")
    if n_hashes > config.max_batch:
        raise InvalidInput(
            f"{n_hashes} hashes is over the limit of {config.max_batch} per request",
            field="hashes",
        )
    n_frames = sum(len(v.frames) for v in request.videos)
    if n_frames > config.max_batch:
        raise InvalidInput(
            f"{n_frames} video frames is over the limit of {config.max_batch} per request",
            field="videos",
        )
    # Every bad field is noted and validation goes on: the refusal names them all (in
    # the order checked here, so its first is the one a first-error check named).
    found = Violations()
    found.attempt(check_media, host, request.media)
    options = request.options
    threshold = options.threshold if options.HasField("threshold") else None
    min_quality = options.min_quality if options.HasField("min_quality") else None
    if min_quality is not None and not 0 <= min_quality <= 100:
        found.add(InvalidInput(f"must be 0..100, got {min_quality}", field="options.min_quality"))
    if options.low_quality_queries not in LOW_QUALITY_RULES:
        found.add(
            InvalidInput(
                f"unknown value {options.low_quality_queries}",
                field="options.low_quality_queries",
            )
        )
    low_quality = LOW_QUALITY_RULES.get(options.low_quality_queries)
    lists = [name.strip() for name in options.lists] or None  # as Ingest's list_name
    max_results = options.max_results or None
    parsed = convert.parse_hashes(request.hashes, found=found)
    types = (
        (found.attempt(media_types, request.media_types, "media_types") or [])
        if request.media
        else []
    )
    videos = [found.attempt(_video_query, v, f"videos[{i}]") for i, v in enumerate(request.videos)]
    try:  # one options.threshold violation, whichever type it does not fit
        for name in [*(["vpdq"] if videos else []), *parsed.by_type, *types]:
            convert.threshold_for(name, threshold)
    except InvalidInput as exc:
        found.add(exc)
    found.raise_any()
    tenant = call.principal.engine_tenant
    engine = host.engine

    # Results are made inside the reply, in reply order (hashes, media, videos):
    # MatchResponse(results=...) copied every one of them, matches included.
    reply = matcher_pb2.MatchResponse(request_id=request.request_id)
    results = [reply.results.add(source=HASH, index=i) for i in range(n_hashes)]
    for name, (codes, positions, qualities) in parsed.by_type.items():
        call.check_deadline()
        radius = convert.threshold_for(name, threshold)
        known = qualities if any(q is not None for q in qualities) else None
        if name == "vpdq":
            # The engine reads vPDQ rows as the frames of ONE video; here each hash is
            # its own query (a one-frame video). Whole videos go in `videos` or media.
            # All rows go to the engine in one batch (one index search per ~4k frames,
            # each nominated stored video read once); the deadline and a cancel are still
            # checked between rows: the work used to run to its end for a caller long gone.
            per_query = engine.match_videos(
                [(codes[row : row + 1], [qualities[row]] if known else None)
                 for row in range(len(codes))],
                tenant=tenant, threshold=radius, lists=lists, max_results=max_results,
                checkpoint=call.check_deadline,
            )  # fmt: skip
        else:
            # Known PDQ qualities under the floor (min_quality, default 50 as HMA) are
            # matched as low_quality_queries says (stored quality >= the floor only, or
            # not at all); the engine marks them skipped_low_quality.
            per_query = host.lookup(
                name,
                codes,
                tenant=tenant,
                threshold=radius,
                lists=lists,
                max_results=max_results,
                qualities=known,
                min_quality=min_quality,
                timeout=call.time_left,
                low_quality_queries=low_quality,
                share=call.share,
            )
        host.metrics.count_queries(name, len(codes))
        for row, found in enumerate(per_query):
            position = positions[row]
            _mark_floor(results[position], found)
            for m in found:
                convert.add_match(results[position].matches, m, position)

    if request.media:
        options_ = hash_options(
            host,
            dihedral=options.dihedral,
            trim_borders=options.trim_borders,
            all_frames=options.all_frames,
            uncrop=options.uncrop,
            derotate=options.derotate,
            upscale_small=options.upscale_small,
            upscale_small_replicate=options.upscale_small_replicate,
            upscale_small_phases=options.upscale_small_phases,
            for_matching=True,
            checkpoint=call.check_deadline,
        )
        jobs = [
            _media_job(
                functools.partial(
                    engine.match_media,  # exact types match at 0 whatever the threshold
                    bytes(item),
                    types=types,
                    options=options_,
                    tenant=tenant,
                    threshold=threshold,
                    lists=lists,
                    max_results=max_results,
                    min_quality=min_quality,
                    low_quality_queries=low_quality,
                ),
                i,
            )
            for i, item in enumerate(request.media)
        ]
        outcomes = host.media.run_all(
            jobs, timeout=call.time_left, is_active=call.context.is_active, tenant=call.share
        )
        _refuse_failed(outcomes)
        for i, outcome in enumerate(outcomes):
            position = n_hashes + i
            result = reply.results.add(source=MEDIA, index=i)
            result.computed.extend(convert.computed_to_pb(h) for h in outcome.hashes)
            _mark_floor(result, outcome)
            for m in outcome.matches:
                convert.add_match(result.matches, m, position)
            results.append(result)
        host.metrics.count_queries("media", len(request.media))
    # one engine call for every video: their frames are looked up in batches; the
    # deadline and a cancel are checked before each video
    found_videos = engine.match_videos(
        videos, tenant=tenant, threshold=threshold, lists=lists, max_results=max_results,
        checkpoint=call.check_deadline,
    ) if videos else []  # fmt: skip
    for i, found in enumerate(found_videos):
        position = len(results)
        result = reply.results.add(source=VIDEO, index=i)
        _mark_floor(result, found)
        for m in found:
            convert.add_match(result.matches, m, position)
        results.append(result)
    if videos:  # one per video, as the access log's `queries` counts them
        host.metrics.count_queries("vpdq", len(videos))
    call.log["queries"] = n_hashes + len(request.media) + len(videos)
    call.log["matches"] = sum(len(r.matches) for r in results)
    if call.log["matches"]:
        host.metrics.count_matches(results)
    return check_reply(reply, config.max_message_bytes)


#: MatchOptions.low_quality_queries -> the engine's rule (None = the engine's default).
LOW_QUALITY_RULES = {
    matcher_pb2.LOW_QUALITY_QUERIES_UNSPECIFIED: None,
    matcher_pb2.LOW_QUALITY_QUERIES_MATCH_QUALITY_STORED: LOW_QUALITY_MATCH_QUALITY_STORED,
    matcher_pb2.LOW_QUALITY_QUERIES_SKIP: LOW_QUALITY_SKIP,
}


def _mark_floor(result: matcher_pb2.QueryResult, found: MatchList | MediaMatch) -> None:
    """Copy how the quality floor treated a query (MatchList or MediaMatch) into it."""
    result.skipped_low_quality = bool(getattr(found, "skipped_low_quality", False))
    result.quality_stored_only = bool(getattr(found, "quality_stored_only", False))


def _video_query(video: matcher_pb2.VideoQuery, field: str):
    st = convert.signal_type(video.signal_type or "vpdq", f"{field}.signal_type")
    if st.name != "vpdq":
        raise InvalidInput(f"videos are vpdq queries, not {st.name}", field=f"{field}.signal_type")
    frames = convert.parse_frames(video.frames, video.qualities, field)
    return frames, (list(video.qualities) or None)


def hash_only(
    host: ServiceHost, request: matcher_pb2.HashRequest, call: Call
) -> matcher_pb2.HashResponse:
    """Media bytes -> hashes, on the media pool."""
    check_size(request, host.config.max_message_bytes)
    if not request.media:
        raise InvalidInput("the request has no media", field="media")
    found = Violations()
    found.attempt(check_media, host, request.media)
    types = found.attempt(media_types, request.signal_types, "signal_types")
    found.raise_any()
    options = hash_options(
        host,
        dihedral=request.dihedral,
        trim_borders=request.trim_borders,
        checkpoint=call.check_deadline,
    )
    jobs = [
        _media_job(
            functools.partial(hash_media, bytes(item), types, options),
            i,
        )
        for i, item in enumerate(request.media)
    ]
    outcomes = host.media.run_all(
        jobs, timeout=call.time_left, is_active=call.context.is_active, tenant=call.share
    )
    _refuse_failed(outcomes)
    call.log["items"] = len(outcomes)
    reply = matcher_pb2.HashResponse(
        items=[
            matcher_pb2.MediaHashes(index=i, hashes=[convert.computed_to_pb(h) for h in hashes])
            for i, hashes in enumerate(outcomes)
        ]
    )
    return check_reply(reply, host.config.max_message_bytes)
