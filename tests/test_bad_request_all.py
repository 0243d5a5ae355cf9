"""A refused request names every bad field, not just the first (real socket, real engine).

An upload pipeline cleaning a batch needs all of a request's violations from one
refusal: before, Match with three hashes of which two were malformed, or
``media=[bad, good, bad]``, named only the first, so cleaning N bad items took N round
trips. The list is capped so that a garbage batch cannot make the status's trailers
pass gRPC's 8 KiB metadata limit (the client would then see RESOURCE_EXHAUSTED instead
of the refusal).
"""

from __future__ import annotations

import asyncio
import base64
import io
import logging

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from PIL import Image
from skimage import data

from hashmatch.server.aio_client import AsyncHashmatchClient
from hashmatch.server.client import signal, video_signal
from hashmatch.server.errors import MAX_STATUS_TRAILER_BYTES, bad_request_fields
from hashmatch.server.testing import access_log_line, running_server

TENANTS = {"ops": (["match", "write", "admin"], True)}
GOOD = "f8f8f0cee0f4a84f06370a22038f63f0b36e2ed596621e1d33e6b39c4e9c9b22"
# gRPC's default limit on the metadata a client accepts (grpc-java refuses above it,
# the C core at random above it)
GRPC_METADATA_LIMIT = 8 * 1024


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    with running_server(
        tmp_path_factory.mktemp("bad_request_all"),
        tenants=TENANTS,
        max_batch=3000,
        max_media_items=8,
        max_media_bytes=100_000,
    ) as ts:
        ts.client("ops").ingest("keep", [signal("pdq", GOOD)])
        yield ts


@pytest.fixture(scope="module")
def client(served):
    return served.client("ops", retries=0, max_batch=3000)


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(data.camera()[:128, :128]).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _refusal(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        call()
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    return err.value


def _fields(error: grpc.RpcError) -> list[str]:
    return [field for field, _ in bad_request_fields(error)]


def _trailer_bytes(error: grpc.RpcError) -> int:
    """What the status takes in the trailers: grpc-message percent-encoded, and
    grpc-status-details-bin (base64 of the Status)."""
    status = rpc_status.from_call(error)
    message = sum(1 if 0x20 <= b <= 0x7E and b != 0x25 else 3 for b in error.details().encode())
    return message + len(base64.b64encode(status.SerializeToString()))


def test_match_names_every_malformed_hash_and_the_count(client):
    error = _refusal(lambda: client.match([("pdq", "zz" * 32), ("pdq", GOOD), ("pdq", "ab")]))
    assert _fields(error) == ["hashes[0].hex", "hashes[2].hex"]
    assert error.details().startswith("hashes[0].hex: pdq hash has a non-hex character")
    assert error.details().endswith("; and 1 more"), error.details()


def test_match_names_every_bad_field_of_each_kind(client):
    """Hashes, options, media types and video frames: all of them, in the order the
    server checks them (its first is the one a first-error check named)."""
    error = _refusal(
        lambda: client.match(
            [("pdq", "ab"), ("nope", GOOD), ("pdq", GOOD), ("md5", "00")],
            media=[_jpeg()],
            media_types=["pdq", "pdq", "bogus"],
            videos=[[GOOD, "12"], [GOOD], ["zz" * 32, GOOD, "34"]],
            min_quality=101,
        )
    )
    assert _fields(error) == [
        "options.min_quality",
        "hashes[0].hex",
        "hashes[1].signal_type",
        "hashes[3].hex",
        "media_types[1]",
        "media_types[2]",
        "videos[0].frames[1]",
        "videos[2].frames[0]",
        "videos[2].frames[2]",
    ]
    assert error.details().endswith("; and 8 more"), error.details()
    assert client.match([("pdq", GOOD)]).results[0].matches  # still serving


def test_match_names_each_empty_or_oversized_media_item(client):
    error = _refusal(lambda: client.match(media=[b"", _jpeg(), b"\xff" * 100_001, b""]))
    assert _fields(error) == ["media[0]", "media[2]", "media[3]"]


def test_match_names_each_undecodable_media_item_and_returns_nothing(client):
    """Decoding fails later than syntax checks: every item is still tried, each that
    does not decode is named, and the request is refused whole (no partial results),
    as one with a malformed hash is."""
    jpeg = _jpeg()
    error = _refusal(
        lambda: client.match(
            [("pdq", GOOD)], media=[b"not an image", jpeg, jpeg[: len(jpeg) // 3], jpeg]
        )
    )
    assert _fields(error) == ["media[0]", "media[2]"]
    assert error.details().startswith("media[0]: ") and error.details().endswith("; and 1 more")


def test_hash_names_every_bad_media_item_and_type(client):
    error = _refusal(lambda: client.hash([b"", _jpeg(), b"garbage"], ["pdq", "what"]))
    assert _fields(error) == ["media[0]", "signal_types[1]"]  # syntax first: nothing decoded
    error = _refusal(lambda: client.hash([b"garbage", _jpeg(), b"\x89PNG\r\n\x1a\nxx"]))
    assert _fields(error) == ["media[0]", "media[2]"]


def test_match_stream_names_every_bad_field_of_the_refused_message(client):
    requests = [
        client.match_request([("pdq", GOOD)]),
        client.match_request([("pdq", "ab"), ("pdq", GOOD), ("pdq", "cd")], threshold=999),
    ]
    replies = []
    error = _refusal(lambda: replies.extend(client.match_stream(iter(requests))))
    assert len(replies) == 1  # the first message was answered
    assert _fields(error) == [
        "stream[1].hashes[0].hex",
        "stream[1].hashes[2].hex",
        "stream[1].options.threshold",
    ]
    assert error.details().startswith("stream[1].hashes[0].hex: ")
    assert error.details().endswith("; and 2 more")


def test_strict_ingest_names_every_bad_signal(client):
    before = client.stats().total_signals
    signals = [
        signal("pdq", "zz" * 32),
        signal("pdq", "1" * 64),
        signal("pdq", "ab"),
        video_signal([GOOD, "12"]),
    ]
    error = _refusal(lambda: client.ingest("strict-all", signals, strict=True))
    assert _fields(error) == ["signals[0].hash.hex", "signals[2].hash.hex", "signals[3].frames[1]"]
    assert "strict ingest refused the message (3 bad)" in error.details()
    assert client.stats().total_signals == before


def test_ingest_names_every_bad_frame_of_a_video(client):
    """A rejected video named only its first bad frame (strict or not): fixing one with
    three bad frames took three round trips. Each is named now, the first 100 of a video
    listed and the rest counted, as a refusal's violations are."""
    video = video_signal([GOOD, "12", "zz" * 32, GOOD, "ab"])
    reply = client.ingest("frames-all", [signal("pdq", GOOD), video])
    assert (reply.added, reply.rejected) == (1, 1)
    assert [(r.index, r.field) for r in reply.rejections] == [
        (1, "signals[1].frames[1]"),
        (1, "signals[1].frames[2]"),
        (1, "signals[1].frames[4]"),
    ]
    assert reply.rejections[1].reason == "vpdq hash has a non-hex character 'z'"

    many = video_signal(["ab"] * 150)
    reply = client.ingest("frames-all", [signal("pdq", GOOD), many])
    fields = [r.field for r in reply.rejections]
    assert fields == [f"signals[1].frames[{j}]" for j in range(100)] + ["signals[1]"]
    assert reply.rejections[-1].reason == "and 50 more not listed (150 in all)"
    assert reply.rejected == 1

    before = client.stats().total_signals
    signals = [signal("pdq", "ab"), video]
    error = _refusal(lambda: client.ingest("frames-strict", signals, strict=True))
    assert _fields(error) == [
        "signals[0].hash.hex",
        "signals[1].frames[1]",
        "signals[1].frames[2]",
        "signals[1].frames[4]",
    ]
    assert "strict ingest refused the message (2 bad)" in error.details()
    assert error.details().endswith("; and 3 more"), error.details()
    error = _refusal(lambda: client.ingest("frames-strict", [many], strict=True))
    fields = bad_request_fields(error)
    assert [f for f, _ in fields[:-1]] == [
        f"signals[0].frames[{j}]" for j in range(len(fields) - 1)
    ]
    assert fields[-1][0] == "request" and "(150 in all)" in fields[-1][1]
    assert client.stats().total_signals == before


def test_a_split_match_names_the_bad_fields_of_every_refused_part(served):
    """A match the client splits over ``max_batch`` raised its first refused part's
    error alone: the bad hashes of the other parts were named one round trip later
    each. The error now names every refused part's fields, indexes in the whole call,
    sync and asyncio clients alike."""
    hashes = [("pdq", h) for h in ("ab", GOOD, GOOD, "cd", "zz" * 32, GOOD, GOOD)]
    split = served.client("ops", retries=0, max_batch=2)  # parts of 2: three refused
    error = _refusal(lambda: split.match(hashes))
    assert _fields(error) == ["hashes[0].hex", "hashes[3].hex", "hashes[4].hex"]
    assert error.details().startswith("hashes[0].hex: ")

    async def refused_async() -> grpc.RpcError:
        token = served.tokens["ops"]
        async with AsyncHashmatchClient(served.target, token=token, retries=0, max_batch=2) as aio:
            with pytest.raises(grpc.RpcError) as err:
                await aio.match(hashes)
        return err.value

    assert _fields(asyncio.run(refused_async())) == _fields(error)


def test_a_split_match_lists_its_parts_fields_within_one_refusals_budget(served):
    """Three parts of 60 malformed hashes: at most 100 listed and within 7 KiB, as one
    server refusal's, then one saying how many of all 180 were left out."""
    split = served.client("ops", retries=0, max_batch=60)
    error = _refusal(lambda: split.match([("pdq", f"{i:x}") for i in range(180)]))
    fields = bad_request_fields(error)
    listed = fields[:-1]
    assert 40 <= len(listed) <= 100, len(listed)
    assert [f for f, _ in listed] == [f"hashes[{i}].hex" for i in range(len(listed))]
    assert fields[-1][0] == "request"
    assert fields[-1][1].startswith(
        f"and {180 - len(listed)} more violations not listed (180 in all)"
    )
    violations = [
        error_details_pb2.BadRequest.FieldViolation(field=f, description=d) for f, d in fields
    ]
    assert (
        error_details_pb2.BadRequest(field_violations=violations).ByteSize()
        <= MAX_STATUS_TRAILER_BYTES
    )


def test_a_garbage_batch_lists_the_first_violations_and_counts_the_rest(client):
    """3,000 malformed hashes: the reply lists the first ones (at most 100), then one
    saying how many more, within the trailer budget, and arrives as INVALID_ARGUMENT
    every time (over gRPC's 8 KiB limit a client refuses the trailers at random)."""
    garbage = [("pdq", f"{i:x}") for i in range(3000)]
    for _ in range(5):
        error = _refusal(lambda: client.match(garbage))
        fields = bad_request_fields(error)
        listed = fields[:-1]
        assert 40 <= len(listed) <= 100, len(listed)
        assert [f for f, _ in listed] == [f"hashes[{i}].hex" for i in range(len(listed))]
        last_field, last = fields[-1]
        assert last_field == "request"
        assert last.startswith(f"and {3000 - len(listed)} more violations not listed (3000 in all)")
        assert error.details().endswith("; and 2999 more")
        assert _trailer_bytes(error) <= MAX_STATUS_TRAILER_BYTES < GRPC_METADATA_LIMIT


@pytest.mark.parametrize("text", ["x", "\U0001f600"], ids=["ascii", "4-byte-utf8"])
def test_long_client_text_keeps_the_status_under_the_metadata_limit(client, text):
    """Descriptions echoing the caller's text (an unknown type name, clipped to 300
    characters) are large: fewer are listed, and the status still fits."""
    name = text * 5000
    error = _refusal(lambda: client.match([(name, GOOD)] * 500))
    fields = bad_request_fields(error)
    assert fields[0][0] == "hashes[0].signal_type"
    assert fields[-1][0] == "request" and "(500 in all)" in fields[-1][1]
    assert _trailer_bytes(error) < GRPC_METADATA_LIMIT, _trailer_bytes(error)


def test_the_access_log_keeps_a_refusals_count_after_a_long_first_violation(client, caplog):
    """The access log cut each error at 300 characters: a refusal whose first violation
    echoed a long client string lost its "; and N more", the count an operator reads
    to tell one bad item from a garbage batch. It now logs the status message the
    client got: the first clipped, the count kept."""
    name = "x" * 5000
    with caplog.at_level(logging.INFO, logger="hashmatch.access"):
        error = _refusal(lambda: client.match([(name, GOOD)] * 3))
        logged = access_log_line(caplog, "Match")["error"]
    assert error.details().endswith("; and 2 more"), error.details()
    assert logged == error.details()
    assert len(logged) < 400


def test_one_bad_field_is_named_as_before(client):
    error = _refusal(lambda: client.match([("pdq", GOOD), ("pdq", "ab")]))
    assert bad_request_fields(error) == [
        ("hashes[1].hex", "pdq hash must be 64 hex characters, got 2")
    ]
    assert error.details() == "hashes[1].hex: pdq hash must be 64 hex characters, got 2"


def test_strict_ingest_refusal_of_a_later_message_still_says_what_was_stored(client):
    """The stream's note (what the messages before were stored as) follows the count."""
    good = [signal("pdq", f"{i:02x}" * 32) for i in range(2)]
    bad = [signal("pdq", "ab"), signal("pdq", "cd")]
    error = _refusal(lambda: client.ingest("strict-later", good + bad, strict=True, batch_size=2))
    assert _fields(error) == ["signals[2].hash.hex", "signals[3].hash.hex"]
    details = error.details()
    assert details.startswith("signals[2].hash.hex: strict ingest refused the message (2 bad)")
    assert "; and 1 more (messages before stream[1] were stored: added 2," in details, details
