"""An Ingest reply's ``rejections`` are bounded across the stream (real socket, real
engine): unbounded, a stream of videos of bad one-character frames (one entry per
frame, 101 a video) made a reply over gRPC's message limit, and the client got
RESOURCE_EXHAUSTED instead of the counts of what was stored."""

from __future__ import annotations

from hashmatch.server.client import signal, video_signal
from hashmatch.server.rejection_list import MAX_BYTES, MAX_LISTED, SUMMARY_FIELD
from hashmatch.server.testing import running_server

GOOD = "f8f8f0cee0f4a84f06370a22038f63f0b36e2ed596621e1d33e6b39c4e9c9b22"
VIDEOS = 1400  # ~10.4 MB of entries on the old code: over this server's 9 MiB send limit
BAD_HASHES = 9000  # then enough one-entry items to pass the new budget


def test_a_flood_of_bad_frames_gets_a_bounded_reply_with_exact_counts(tmp_path):
    # max_message_bytes 4 MiB: the server sends at most 2 x 4 + 1 MiB (the old reply of
    # this 0.4 MB stream was over it; at the default 32 MiB, 9,200 such videos were)
    tenants = {"ops": (["match", "write", "admin"], True)}
    with running_server(tmp_path, tenants=tenants, max_message_bytes=4 * 1024 * 1024) as ts:
        client = ts.client("ops", retries=0)
        signals = [signal("pdq", GOOD)]
        signals += [video_signal(["a"] * 101) for _ in range(VIDEOS)]
        signals += [signal("pdq", "ab")] * BAD_HASHES + [signal("pdq", GOOD.replace("f", "e"))]
        reply = client.ingest("flood", signals)

    rejected = VIDEOS + BAD_HASHES
    assert (reply.added, reply.rejected) == (2, rejected)
    assert reply.ByteSize() <= MAX_BYTES
    entries = list(reply.rejections)
    assert len(entries) <= MAX_LISTED
    # the first videos in full: 100 frames, then the count of the rest
    assert [e.field for e in entries[:101]] == [f"signals[1].frames[{j}]" for j in range(100)] + [
        "signals[1]"
    ]
    assert entries[100].reason == "and 1 more not listed (101 in all)"
    # then one entry per video, each saying how many more it had
    last_video = [e for e in entries if e.index == VIDEOS]
    assert [e.field for e in last_video] == [f"signals[{VIDEOS}].frames[0]"]
    video = last_video[0]
    assert video.reason.endswith("; and 100 more not listed (101 in all)")
    assert entries[-2].field == f"signals[{entries[-2].index}].hash.hex"
    # then one saying how many items are not listed; it names no item
    summary = entries[-1]
    listed = len({e.index for e in entries[:-1]})
    assert VIDEOS < listed < rejected
    assert (summary.index, summary.field) == (len(signals), SUMMARY_FIELD)
    assert summary.reason == (
        f"and {rejected - listed} more rejected items not listed ({rejected} in all)"
    )
    # the listed items are the stream's first rejected ones, in order
    assert sorted({e.index for e in entries[:-1]}) == list(range(1, listed + 1))


def test_a_continued_reply_keeps_one_summary_with_exact_counts():
    """A repeated request_id continues the first call's remembered reply (see
    replies.once): its summary entry is made again for the whole stream, not kept
    beside a second one, and its full list takes no more entries."""
    from hashmatch.server.rejection_list import RejectionList
    from hashmatch.v1 import signals_pb2

    first = signals_pb2.IngestResponse(rejected=MAX_LISTED + 5)
    listing = RejectionList(first)
    for i in range(MAX_LISTED + 5):
        listing.add(i, [(f"signals[{i}].hash.hex", "bad")], 1)
    listing.finish(MAX_LISTED + 5)
    assert len(first.rejections) == MAX_LISTED
    assert first.rejections[-1].reason == "and 6 more rejected items not listed (10005 in all)"

    remembered = signals_pb2.IngestResponse.FromString(first.SerializeToString())
    remembered.rejected += 3
    listing = RejectionList(remembered)
    for i in range(MAX_LISTED + 5, MAX_LISTED + 8):
        listing.add(i, [(f"signals[{i}].hash.hex", "bad")], 1)
    listing.finish(MAX_LISTED + 8)
    assert len(remembered.rejections) == MAX_LISTED
    assert [e.field for e in remembered.rejections].count(SUMMARY_FIELD) == 1
    assert remembered.rejections[-1].index == MAX_LISTED + 8
    assert remembered.rejections[-1].reason == (
        "and 9 more rejected items not listed (10008 in all)"
    )
