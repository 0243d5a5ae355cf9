"""Every RPC over a real socket against a real engine (SQLite store + FAISS indexes).

One server per module (tenants: an operator with every role, a matching-only tenant,
a writer, an outsider); each test seeds what it needs through the public API.
"""

from __future__ import annotations

import hashlib
import io
import json
import threading
import time

import grpc
import numpy as np
import pytest
from PIL import Image
from skimage import data

from hashmatch.server.client import HashmatchClient, signal, video_signal
from hashmatch.server.errors import bad_request_fields
from hashmatch.server.testing import running_server
from hashmatch.v1 import common_pb2, matcher_pb2

TENANTS = {
    "ops": (["match", "write", "admin"], True),
    "acme": (["match"], False),
    "writer": (["match", "write"], False),
    "outsider": (["match"], False),
}


def _codes(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 32), dtype=np.uint8)


def _flip(code: np.ndarray, bits: int) -> np.ndarray:
    out = code.copy()
    for b in range(bits):
        out[b] ^= 0x80  # one bit in each of the first `bits` bytes
    return out


def _jpeg(image: np.ndarray, quality: int = 92) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _share(engine, list_name: str, tenant: str) -> None:
    """Share a hash list with a tenant (an operator action on the store)."""
    engine.store.create_tenant(tenant, exist_ok=True)
    engine.store.grant(tenant, list_name)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    with running_server(tmp_path_factory.mktemp("served"), tenants=TENANTS, shards=2) as ts:
        yield ts


@pytest.fixture(scope="module")
def ops(served):
    return served.client("ops")


def _code(exc_info) -> grpc.StatusCode:
    return exc_info.value.code()


# -- Signals + Matcher round trip ---------------------------------------------------------


def test_ingest_then_match_by_hex_and_raw_with_options(ops):
    codes = _codes(50, seed=1)
    hexes = [c.tobytes().hex() for c in codes]
    signals = [signal("pdq", h, labels=["demo"], external_id=f"e{i}") for i, h in enumerate(hexes)]
    signals.insert(3, signal("pdq", "zz" * 32))  # rejected, the rest still stored
    reply = ops.ingest("roundtrip", signals, source="unit-test", batch_size=20)
    assert reply.added == 50 and reply.rejected == 1
    assert (
        reply.rejections[0].index == 3
        and "hex" in reply.rejections[0].reason + reply.rejections[0].field
    )
    again = ops.ingest("roundtrip", signals[:2])
    assert again.added == 0 and again.unchanged + again.updated == 2

    near = _flip(codes[7], 5)
    result = ops.match(
        [("pdq", hexes[0]), ("pdq", near.tobytes()), ("PDQ", hexes[9].upper())],
        lists=["roundtrip"],
    )
    first, second, third = result.results
    assert [m.distance for m in first.matches] == [0]
    assert first.matches[0].list_name == "roundtrip"
    assert list(first.matches[0].labels) == ["demo"] and first.matches[0].external_id == "e0"
    assert second.matches[0].distance == 5 and second.matches[0].hash_hex == hexes[7]
    assert second.matches[0].query_index == 1
    assert third.matches[0].hash_hex == hexes[9]
    # A lower threshold drops the distance-5 match; raising up to the max is allowed.
    assert not ops.match([("pdq", near.tobytes())], threshold=4).results[0].matches
    assert ops.match([("pdq", near.tobytes())], threshold=63).results[0].matches
    # max_results keeps the nearest.
    twin = ops.ingest("roundtrip-2", [signal("pdq", _flip(codes[0], 2).tobytes().hex())])
    assert twin.added == 1
    capped = ops.match([("pdq", hexes[0])], max_results=1).results[0].matches
    assert len(capped) == 1 and capped[0].distance == 0
    both = ops.match([("pdq", hexes[0])]).results[0].matches
    assert [m.distance for m in both] == [0, 2]
    only_second = ops.match([("pdq", hexes[0])], lists=["roundtrip-2"]).results[0].matches
    assert [m.list_name for m in only_second] == ["roundtrip-2"]


def test_match_media_dihedral_and_quality_floor(ops):
    photo = data.astronaut()
    hashed = ops.hash([_jpeg(photo)], ["pdq", "md5"])
    pdq_hex = hashed.items[0].hashes[0].hex[0]
    md5_hex = hashed.items[0].hashes[1].hex[0]
    assert hashed.items[0].hashes[0].qualities[0] > 50
    ops.ingest("media", [signal("pdq", pdq_hex, labels=["astronaut"])])

    reply = ops.match(media=[_jpeg(photo, quality=70)], lists=["media"])
    result = reply.results[0]
    assert result.source == matcher_pb2.QueryResult.SOURCE_MEDIA
    assert result.computed[0].signal_type == "pdq"
    assert result.matches and result.matches[0].distance <= 31

    flipped = np.ascontiguousarray(photo[:, ::-1])
    assert not ops.match(media=[_jpeg(flipped)], lists=["media"]).results[0].matches
    dihedral = ops.match(media=[_jpeg(flipped)], lists=["media"], dihedral=True).results[0]
    assert dihedral.matches and dihedral.matches[0].variant == 5  # the mirror
    assert dihedral.matches[0].distance <= 8  # exact orientation hashing, not the DCT trick

    # Mirrored AND padded with a 20% black frame: only dihedral + trimming finds it.
    h, w = photo.shape[:2]
    framed = np.zeros((h + 2 * (h // 5), w + 2 * (w // 5), 3), np.uint8)
    framed[h // 5 : h // 5 + h, w // 5 : w // 5 + w] = flipped
    media = [_jpeg(framed)]
    assert not ops.match(media=media, lists=["media"], dihedral=True).results[0].matches
    both = ops.match(media=media, lists=["media"], dihedral=True, trim_borders=True).results[0]
    assert [m.labels for m in both.matches] == [["astronaut"]]
    assert both.matches[0].variant == 8 + 5  # rows 8.. are the trimmed image's

    # An animation whose third frame is the photo: found only with all_frames.
    rng = np.random.default_rng(11)
    small = np.ascontiguousarray(photo[::2, ::2])
    frames = [Image.fromarray(rng.integers(0, 256, small.shape, dtype=np.uint8)) for _ in range(2)]
    buf = io.BytesIO()
    frames[0].save(buf, "WEBP", save_all=True, append_images=[frames[1], Image.fromarray(small)],
                   lossless=True)  # fmt: skip
    animation = [buf.getvalue()]
    assert not ops.match(media=animation, lists=["media"]).results[0].matches
    every = ops.match(media=animation, lists=["media"], all_frames=True).results[0]
    assert [m.labels for m in every.matches] == [["astronaut"]]
    assert every.matches[0].variant == 2

    # 5% of each side cropped away (centred): found only with uncrop, by an extra row.
    dh, dw = round(h * 0.025), round(w * 0.025)
    cropped = [_jpeg(np.ascontiguousarray(photo[dh : h - dh, dw : w - dw]))]
    assert not ops.match(media=cropped, lists=["media"]).results[0].matches
    uncropped = ops.match(media=cropped, lists=["media"], uncrop=True).results[0]
    assert [m.labels for m in uncropped.matches] == [["astronaut"]]
    assert uncropped.matches[0].variant >= 1  # not the as-given row

    flat = np.full((256, 256, 3), 128, np.uint8)
    low = ops.match(media=[_jpeg(flat)], min_quality=50).results[0]
    assert low.skipped_low_quality and not low.matches
    # Hash queries carry their own quality.
    value = common_pb2.HashValue(signal_type="pdq", hex=pdq_hex, quality=10)
    skipped = ops.match([value], min_quality=50).results[0]
    assert skipped.skipped_low_quality and not skipped.matches
    assert ops.match([value]).results[0].skipped_low_quality  # the default floor is 50
    assert ops.match([value], min_quality=0).results[0].matches
    assert md5_hex and len(md5_hex) == 32
    # One threshold for mixed media types: PDQ uses it, MD5 stays exact.
    ops.ingest("media", [signal("md5", md5_hex)])
    mixed = ops.match(media=[_jpeg(photo)], media_types=["pdq", "md5"], threshold=40,
                      lists=["media"]).results[0]  # fmt: skip
    assert {m.signal_type for m in mixed.matches} == {"pdq", "md5"}
    assert [c.signal_type for c in mixed.computed] == ["pdq", "md5"]


def test_match_stream_answers_in_order(ops):
    code = _codes(1, seed=2)[0]
    ops.ingest("stream", [signal("pdq", code.tobytes().hex())])
    requests = [
        ops.match_request([("pdq", _flip(code, k).tobytes())], lists=["stream"], request_id=f"r{k}")
        for k in range(4)
    ]
    replies = list(ops.match_stream(iter(requests), timeout=20))
    assert [r.request_id for r in replies] == ["r0", "r1", "r2", "r3"]
    assert [r.results[0].matches[0].distance for r in replies] == [0, 1, 2, 3]


def test_match_stream_bad_message_names_it(ops):
    good = ops.match_request([("pdq", "00" * 32)])
    bad = ops.match_request([("pdq", "00" * 31)])
    stream = ops.match_stream(iter([good, bad, good]), timeout=20)
    with pytest.raises(grpc.RpcError) as err:
        list(stream)
    assert _code(err) is grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request_fields(err.value)[0][0] == "stream[1].hashes[0].hex"


def test_retract_and_list_hash_lists(ops):
    codes = _codes(3, seed=3)
    hexes = [c.tobytes().hex() for c in codes]
    ops.ingest("retract-me", [signal("pdq", h) for h in hexes])
    assert ops.match([("pdq", hexes[1])], lists=["retract-me"]).results[0].matches
    assert (
        ops.retract("retract-me", hashes=[("pdq", hexes[1])], reason="false positive").retracted
        == 1
    )
    assert not ops.match([("pdq", hexes[1])], lists=["retract-me"]).results[0].matches
    assert ops.match([("pdq", hexes[0])], lists=["retract-me"]).results[0].matches
    unknown = "ab" * 32  # a typo: no signal of the list; retracting it is not an error
    reply = ops.retract("retract-me", hashes=[("pdq", hexes[1]), ("pdq", unknown)],
                        signal_ids=[10**12])  # fmt: skip
    assert reply.retracted == 0  # hexes[1] was already retracted: found, not counted again
    assert list(reply.not_found) == [f"pdq:{unknown}", f"id {10**12}"]
    assert reply.not_found_total == 2
    # why the count fell short: named, as the local `retract` names it on stderr
    assert list(reply.already_retracted) == [f"pdq:{hexes[1]}"]
    assert reply.already_retracted_total == 1
    # split into requests of one target each, the replies add up alike
    reply = ops.retract("retract-me", hashes=[("pdq", hexes[1]), ("pdq", hexes[2])],
                        batch_size=1)  # fmt: skip
    assert (reply.retracted, list(reply.already_retracted)) == (1, [f"pdq:{hexes[1]}"])
    assert reply.already_retracted_total == 1
    names = {item.name: item for item in ops.list_hash_lists().lists}
    assert "retract-me" in names


def test_list_hash_lists_says_who_shares_each_list_and_its_labels(served, ops):
    """A tenant could see a list's name and counts but not its owner or labels, what
    `lists ls` shows locally (which partner, what kind of content)."""
    served.engine.store.create_list("owned", owner="Partner A", labels=["csam", "ncii"])
    ops.ingest("owned", [signal("pdq", _codes(1, seed=31)[0].tobytes().hex())])
    ops.ingest("unowned", [signal("pdq", _codes(1, seed=32)[0].tobytes().hex())])
    names = {item.name: item for item in ops.list_hash_lists().lists}
    assert (names["owned"].owner, list(names["owned"].labels)) == ("Partner A", ["csam", "ncii"])
    assert (names["owned"].signal_count, names["owned"].signal_types) == (1, ["pdq"])
    assert (names["unowned"].owner, list(names["unowned"].labels)) == ("", [])


def test_admin_stats_snapshot_and_rebuild(ops):
    ops.ingest("admin", [signal("pdq", h.tobytes().hex()) for h in _codes(10, seed=4)])
    stats = ops.stats()
    assert stats.total_signals >= 10
    assert json.loads(stats.details_json)
    snap = ops.snapshot()
    assert snap.path
    progress = list(ops.rebuild(timeout=60))
    assert progress[-1].finished
    assert json.loads(progress[-1].summary_json)["snapshot"]  # written after the rebuild
    assert progress[-1].snapshot_error == ""
    assert ops.stats().total_signals == stats.total_signals


# -- bad input: INVALID_ARGUMENT naming the field, and the server keeps answering ---------


def _big_png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.zeros((3000, 3000), np.uint8)).save(buf, "PNG")  # 9 Mpx > the limit
    return buf.getvalue()


BAD_MATCHES = {
    "malformed hex": (dict(hashes=[("pdq", "00" * 32), ("pdq", "zz" * 32)]), "hashes[1].hex"),
    "wrong length": (dict(hashes=[("pdq", "ab" * 31)]), "hashes[0].hex"),
    "wrong raw length": (dict(hashes=[("pdq", b"\x00" * 8)]), "hashes[0].raw"),
    "unknown type": (dict(hashes=[("pdq", "00" * 32), ("nope", "00")]), "hashes[1].signal_type"),
    "threshold too high": (dict(hashes=[("pdq", "00" * 32)], threshold=64), "options.threshold"),
    "negative threshold": (dict(hashes=[("pdq", "00" * 32)], threshold=-1), "options.threshold"),
    "empty request": (dict(), "hashes"),
    "oversized batch": (dict(hashes=[("pdq", "00" * 32)] * 101), "hashes"),
    "undecodable media": (dict(media=[b"\x89PNG\r\n\x1a\n garbage"]), "media[0]"),
    "empty media": (dict(media=[b""]), "media[0]"),
    "media over pixel limit": (dict(media=["BIG"]), "media[0]"),
    "unknown media type": (dict(media=["JPEG"], media_types=["bogus"]), "media_types[0]"),
    "too many media": (dict(media=["JPEG"] * 5), "media"),
    "quality floor out of range": (dict(hashes=[("pdq", "00" * 32)], min_quality=101),
                                   "options.min_quality"),
    "repeated media type": (dict(media=["JPEG"], media_types=["pdq", "md5", "pdq"]),
                            "media_types[2]"),
    "video frame quality out of range": (
        dict(videos=[matcher_pb2.VideoQuery(frames=["00" * 32] * 2, qualities=[50, 101])]),
        "videos[0].qualities[1]"),
    "video frames over the batch limit": (  # 101 frames over two videos, max_batch 100
        dict(videos=[matcher_pb2.VideoQuery(frames=["00" * 32] * 50),
                     matcher_pb2.VideoQuery(frames=["00" * 32] * 51)]),
        "videos"),
}  # fmt: skip


@pytest.fixture(scope="module")
def strict(tmp_path_factory):
    """A server with small limits so every limit is reachable cheaply."""
    with running_server(
        tmp_path_factory.mktemp("strict"),
        tenants=TENANTS,
        max_batch=100,
        max_media_items=4,
        max_media_pixels=4_000_000,
        max_message_bytes=200_000,
    ) as ts:
        client = ts.client("ops")
        client.ingest("keep", [signal("pdq", h.tobytes().hex()) for h in _codes(5, seed=5)])
        yield ts


@pytest.mark.parametrize("case", sorted(BAD_MATCHES))
def test_bad_match_input_is_invalid_argument_naming_the_field(strict, case):
    client = strict.client("ops", retries=0)
    kwargs, field = BAD_MATCHES[case]
    kwargs = dict(kwargs)
    jpeg = _jpeg(data.camera()[:64, :64])
    if "media" in kwargs:
        kwargs["media"] = [
            _big_png() if m == "BIG" else jpeg if m == "JPEG" else m for m in kwargs["media"]
        ]
    hashes = kwargs.pop("hashes", [])
    before = client.stats().total_signals
    with pytest.raises(grpc.RpcError) as err:
        client.match(hashes, **kwargs)
    assert _code(err) is grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    fields = bad_request_fields(err.value)
    assert fields and fields[0][0] == field, (fields, err.value.details())
    assert field in err.value.details()
    # Still serving, data untouched.
    assert client.match([("pdq", "00" * 32)]).results
    assert client.stats().total_signals == before


def test_oversized_message_is_invalid_argument(strict):
    client = strict.client("ops", retries=0)
    with pytest.raises(grpc.RpcError) as err:
        client.match(media=[b"\xff" * 300_000])
    assert _code(err) is grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request_fields(err.value)[0][0] == "request"
    assert client.match([("pdq", "00" * 32)]).results


def _png_header_claiming(width: int, height: int) -> bytes:
    """A small PNG whose header declares width x height (a few bytes of pixel data)."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_a_pixel_bomb_is_refused_naming_the_configured_limit(strict):
    client = strict.client("ops", retries=0)
    with pytest.raises(grpc.RpcError) as err:
        client.match(media=[_png_header_claiming(100_000, 100_000)])
    assert _code(err) is grpc.StatusCode.INVALID_ARGUMENT
    assert "4000000-pixel limit" in err.value.details().replace(",", ""), err.value.details()
    assert "178956970" not in err.value.details()  # not Pillow's own cap
    # Only digests asked for: nothing is decoded, so the file's MD5 is answered.
    bomb = _png_header_claiming(100_000, 100_000)
    (item,) = client.hash([bomb], ["md5"]).items
    assert list(item.hashes[0].hex) == [hashlib.md5(bomb).hexdigest()]


def test_a_reply_over_the_message_limit_is_refused_with_what_to_change(strict):
    """Thousands of frames in a small animated GIF: the reply (one computed hash per
    frame) would pass the 200 kB limit; the server says so instead of failing the send."""
    frames = [Image.new("L", (1, 1), color=i % 256) for i in range(4000)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=10)
    client = strict.client("ops", retries=0)
    with pytest.raises(grpc.RpcError) as err:
        client.match(media=[buf.getvalue()], all_frames=True)
    assert _code(err) is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "over the 200000-byte message limit" in err.value.details()
    assert client.match([("pdq", "00" * 32)]).results  # still serving


def test_bad_ingest_and_retract_inputs(strict):
    client = strict.client("ops", retries=0)
    before = client.stats().total_signals
    cases = [
        (lambda: client.ingest("", [signal("pdq", "00" * 32)]), "stream[0].list_name"),
        (lambda: client.ingest("x", [signal("pdq", "00" * 32)] * 101, batch_size=101),
         "stream[0].signals"),
        (lambda: client.ingest("x", [signal("pdq", "00"), signal("pdq", "1" * 64)], strict=True),
         "signals[0].hash.hex"),
        (lambda: client.ingest("x", []), "signals"),
        (lambda: client.retract("keep"), "hashes"),
        (lambda: client.retract("keep", hashes=[("md5", "00")]), "hashes[0].hex"),
        (lambda: client.retract("", hashes=[("pdq", "00" * 32)]), "list_name"),
        (lambda: client.retract("keep", signal_ids=range(1, 102)), "signal_ids"),
        (lambda: client.ingest("x", [video_signal(["00" * 32], qualities=[999])], strict=True),
         "signals[0].frame_qualities[0]"),
        (lambda: client.ingest("x", [video_signal(["00" * 32] * 2, timestamps=[0.0, float("nan")])],
                               strict=True), "signals[0].timestamps[1]"),
    ]  # fmt: skip
    for call, field in cases:
        with pytest.raises(grpc.RpcError) as err:
            call()
        assert _code(err) is grpc.StatusCode.INVALID_ARGUMENT, (field, err.value.details())
        assert bad_request_fields(err.value)[0][0] == field, err.value.details()
    assert client.stats().total_signals == before
    with pytest.raises(grpc.RpcError) as err:
        client.hash([b"not media at all"])
    assert bad_request_fields(err.value)[0][0] == "media[0]"


# -- auth and tenant isolation ------------------------------------------------------------


def test_unauthenticated_without_or_with_a_bad_token(served):
    from hashmatch.server.client import HashmatchClient

    for token in (None, "wrong-token"):
        with HashmatchClient(served.target, token=token, retries=0) as client:
            for call in (
                lambda c=client: c.match([("pdq", "00" * 32)]),
                lambda c=client: c.list_hash_lists(),
                lambda c=client: c.stats(),
                lambda c=client: c.ingest("x", [signal("pdq", "00" * 32)]),
            ):
                with pytest.raises(grpc.RpcError) as err:
                    call()
                assert _code(err) is grpc.StatusCode.UNAUTHENTICATED


def test_roles_permission_denied(served):
    acme = served.client("acme", retries=0)
    writer = served.client("writer", retries=0)
    for call in (
        lambda: acme.ingest("x", [signal("pdq", "00" * 32)]),
        lambda: acme.retract("x", hashes=[("pdq", "00" * 32)]),
        lambda: acme.stats(),
        lambda: list(acme.rebuild()),
        lambda: acme.snapshot(),
        lambda: writer.stats(),
    ):
        with pytest.raises(grpc.RpcError) as err:
            call()
        assert _code(err) is grpc.StatusCode.PERMISSION_DENIED


def test_a_refused_write_or_admin_call_says_how_to_grant_the_role(served):
    """A PERMISSION_DENIED for a missing write or admin role names the command that
    grants it, as the one for export did: it said only "lacks the 'write' role"."""
    acme = served.client("acme", retries=0)
    for call, role in (
        (lambda: acme.ingest("x", [signal("pdq", "00" * 32)]), "write"),
        (lambda: acme.stats(), "admin"),
    ):
        with pytest.raises(grpc.RpcError) as err:
            call()
        assert _code(err) is grpc.StatusCode.PERMISSION_DENIED
        details = err.value.details()
        assert f"lacks the '{role}' role" in details, details
        assert f"`hashmatch tokens set acme --add-role {role}`" in details, details
        assert "SIGHUP the server" in details, details


def test_tenants_see_only_lists_shared_with_them(served, ops):
    code_shared, code_private = (c.tobytes().hex() for c in _codes(2, seed=6))
    ops.ingest("tenant-shared", [signal("pdq", code_shared)])
    ops.ingest("tenant-private", [signal("pdq", code_private)])
    _share(served.engine, "tenant-shared", "acme")
    acme = served.client("acme", retries=0)
    outsider = served.client("outsider", retries=0)

    reply = acme.match([("pdq", code_shared), ("pdq", code_private)])
    assert [m.list_name for m in reply.results[0].matches] == ["tenant-shared"]
    assert not reply.results[1].matches
    assert {item.name for item in acme.list_hash_lists().lists} == {"tenant-shared"}
    with pytest.raises(grpc.RpcError) as err:
        acme.match([("pdq", code_private)], lists=["tenant-private"])
    with pytest.raises(grpc.RpcError) as absent:
        acme.match([("pdq", code_private)], lists=["no-such-list-anywhere"])
    # as for a list that does not exist: nothing tells the tenant it does
    assert _code(err) is _code(absent) is grpc.StatusCode.NOT_FOUND
    said = err.value.details()
    assert said == absent.value.details().replace("no-such-list-anywhere", "tenant-private"), said
    assert not outsider.match([("pdq", code_shared)]).results[0].matches
    assert not outsider.list_hash_lists().lists
    # The operator sees both.
    both = ops.match([("pdq", code_shared), ("pdq", code_private)])
    assert all(r.matches for r in both.results)


# -- a rebuild under continuous lookups --------------------------------------------------


def test_rebuild_under_lookup_load_fails_no_lookup(served, ops):
    codes = _codes(20_000, seed=8)
    reply = ops.ingest("rebuild-load", [signal("pdq", c.tobytes().hex()) for c in codes],
                       batch_size=5000)  # fmt: skip
    assert reply.added == len(codes)
    stop = threading.Event()
    outcomes: list[tuple[float, str]] = []

    def lookups(k: int) -> None:
        client = served.client("ops", retries=0)
        i = k
        while not stop.is_set():
            code = codes[(i * 7919) % len(codes)]
            try:
                reply = client.match([("pdq", code.tobytes())], lists=["rebuild-load"], timeout=10)
                found = any(m.distance == 0 for m in reply.results[0].matches)
                outcome = "ok" if found else "missing"
            except grpc.RpcError as exc:
                outcome = exc.code().name
            outcomes.append((time.perf_counter(), outcome))
            i += 4

    threads = [threading.Thread(target=lookups, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30  # the lookups are under way (was a 0.2 s sleep)
    while len(outcomes) < len(threads) and time.monotonic() < deadline:
        time.sleep(0.01)
    windows = []
    try:
        for _ in range(2):
            began = time.perf_counter()
            progress = list(ops.rebuild(timeout=120))
            windows.append((began, time.perf_counter()))
            assert progress[-1].finished
            assert any(p.stage == "swap" for p in progress)
    finally:
        time.sleep(0.2)
        stop.set()
        for t in threads:
            t.join(10)
    during = [o for at, o in outcomes if any(a <= at <= b for a, b in windows)]
    assert len(during) >= 10, f"only {len(during)} lookups overlapped the rebuilds"
    kinds = [o for _, o in outcomes]
    assert set(kinds) == {"ok"}, {o: kinds.count(o) for o in set(kinds)}


def test_writer_tenant_writes_only_lists_granted_for_writing(served, ops):
    ops.ingest("writable", [signal("pdq", _codes(1, seed=9)[0].tobytes().hex())])
    ops.ingest("read-only", [signal("pdq", _codes(1, seed=10)[0].tobytes().hex())])
    store = served.engine.store
    store.create_tenant("writer", exist_ok=True)
    store.grant("writer", "writable", write=True)
    store.grant("writer", "read-only")
    writer = served.client("writer", retries=0)
    new = _codes(1, seed=11)[0].tobytes().hex()
    assert writer.ingest("writable", [signal("pdq", new)]).added == 1
    assert writer.match([("pdq", new)]).results[0].matches[0].list_name == "writable"
    with pytest.raises(grpc.RpcError) as err:
        writer.ingest("read-only", [signal("pdq", new)])
    assert _code(err) is grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.RpcError) as err:
        writer.ingest("tenant-private-or-absent", [signal("pdq", new)])
    assert _code(err) is grpc.StatusCode.NOT_FOUND


def test_writer_cannot_tell_unshared_lists_from_absent_ones(served, ops):
    ops.ingest("hidden-from-writer", [signal("pdq", _codes(1, seed=12)[0].tobytes().hex())])
    served.engine.store.create_tenant("writer", exist_ok=True)
    writer = served.client("writer", retries=0)
    code = _codes(1, seed=13)[0].tobytes().hex()
    answers = []
    for name in ("hidden-from-writer", "no-such-list-anywhere"):
        for call in (
            lambda name=name: writer.ingest(name, [signal("pdq", code)]),
            lambda name=name: writer.retract(name, hashes=[("pdq", code)]),
        ):
            with pytest.raises(grpc.RpcError) as err:
                call()
            answers.append((_code(err), err.value.details()))
    assert {code for code, _ in answers} == {grpc.StatusCode.NOT_FOUND}
    assert len({details for _, details in answers}) == 1, answers  # nothing to tell apart


def test_labels_and_external_ids_that_cannot_be_stored_are_rejected_by_name(ops):
    """NUL and U+001F (the store's label separator) would come back split or cut."""
    codes = [c.tobytes().hex() for c in _codes(4, seed=14)]
    reply = ops.ingest(
        "odd-labels",
        [
            signal("pdq", codes[0], labels=["a\x1fb"]),
            signal("pdq", codes[1], labels=["p", "q\x00r"]),
            signal("pdq", codes[2], external_id="ext\x00tail"),
            signal("pdq", codes[3], labels=["ok label", "é"], external_id="ext-3"),
        ],
    )
    assert (reply.added, reply.rejected) == (1, 3)
    assert [(r.index, r.field) for r in reply.rejections] == [
        (0, "signals[0].labels[0]"),
        (1, "signals[1].labels[1]"),
        (2, "signals[2].external_id"),
    ]
    found = ops.match([("pdq", codes[3])]).results[0].matches[0]
    assert (list(found.labels), found.external_id) == (["ok label", "é"], "ext-3")
    assert not ops.match([("pdq", c) for c in codes[:3]]).results[0].matches


def test_failed_ingest_stream_says_what_earlier_messages_stored(ops):
    good = _codes(1, seed=15)[0].tobytes().hex()
    with pytest.raises(grpc.RpcError) as err:
        ops.ingest(
            "partial-stream", [signal("pdq", good), signal("pdq", "zz")], strict=True, batch_size=1
        )
    assert _code(err) is grpc.StatusCode.INVALID_ARGUMENT
    assert "messages before stream[1] were stored: added 1" in err.value.details()
    assert ops.match([("pdq", good)]).results[0].matches[0].list_name == "partial-stream"


def test_other_signal_types_md5_and_vpdq_hashes(ops):
    md5 = "d41d8cd98f00b204e9800998ecf8427e"
    frame = _codes(1, seed=12)[0]
    ops.ingest("types", [signal("md5", md5)])
    reply = ops.match([("md5", md5), ("md5", "0" * 32)], threshold=31, lists=["types"])
    assert [len(r.matches) for r in reply.results] == [1, 0]
    # A vPDQ hash value is one frame; with no stored videos it simply finds nothing.
    assert not ops.match([("vpdq", frame.tobytes())]).results[0].matches


def test_one_access_log_line_per_request(ops, caplog):
    with caplog.at_level("INFO", logger="hashmatch.access"):
        ops.match([("pdq", "00" * 32)])
        with pytest.raises(grpc.RpcError):
            ops.match([("pdq", "00")])
    records = [json.loads(r.getMessage()) for r in caplog.records if r.name == "hashmatch.access"]
    assert [(r["method"], r["status"], r["tenant"]) for r in records] == [
        ("Match", "OK", "ops"),
        ("Match", "INVALID_ARGUMENT", "ops"),
    ]
    assert all(r["ms"] >= 0 and r["peer"] for r in records)
    assert "hashes[0].hex" in records[1]["error"]


def test_a_refused_call_is_logged_with_its_tenant(served, caplog):
    acme = served.client("acme", retries=0)
    with caplog.at_level("INFO", logger="hashmatch.access"), pytest.raises(grpc.RpcError):
        acme.ingest("anything", [signal("pdq", "00" * 32)])  # acme may not write
    records = [json.loads(r.getMessage()) for r in caplog.records if r.name == "hashmatch.access"]
    assert [(r["method"], r["status"], r["tenant"]) for r in records] == [
        ("Ingest", "PERMISSION_DENIED", "acme")
    ]


def test_list_names_in_match_options_are_trimmed_like_ingest(ops):
    code = _codes(1, seed=16)[0].tobytes().hex()
    ops.ingest("trimmed", [signal("pdq", code)])
    found = ops.match([("pdq", code)], lists=["  trimmed "]).results[0].matches
    assert [m.list_name for m in found] == ["trimmed"]


def test_vpdq_video_ingest_and_match_by_frames(ops):
    from hashmatch.server.client import video_signal

    frames = [c.tobytes().hex() for c in _codes(10, seed=13)]
    before = {t.signal_type: t.count for t in ops.stats().types}
    reply = ops.ingest(
        "videos",
        [video_signal(frames, qualities=[90] * 10, timestamps=[float(i) for i in range(10)],
                      external_id="clip-1")],
    )  # fmt: skip
    assert reply.added == 1, reply
    # Stats counts the video once, as its list does (its 10 frames are index rows)
    after = {t.signal_type: t.count for t in ops.stats().types}
    assert after["vpdq"] - before.get("vpdq", 0) == 1
    near = [_flip(c, 3).tobytes().hex() for c in _codes(10, seed=13)[:5]]
    result = ops.match(videos=[near], lists=["videos"]).results[0]
    assert result.source == matcher_pb2.QueryResult.SOURCE_VIDEO
    match = result.matches[0]
    assert match.signal_type == "vpdq" and match.external_id == "clip-1"
    assert match.query_match_pct == pytest.approx(100.0)
    assert match.target_match_pct == pytest.approx(50.0)
    with pytest.raises(grpc.RpcError) as err:
        ops.match(videos=[[frames[0], "xyz"]])
    assert bad_request_fields(err.value)[0][0] == "videos[0].frames[1]"
    # every frame under vPDQ's quality floor: nothing can match, and the reply says why
    low = matcher_pb2.VideoQuery(frames=near, qualities=[10] * len(near))
    result = ops.match(videos=[low], lists=["videos"]).results[0]
    assert not result.matches and result.skipped_low_quality
    assert not ops.match(videos=[near], lists=["videos"]).results[0].skipped_low_quality


def test_arbitrary_requests_never_get_internal(strict):
    """Whatever a client sends, the answer is OK or a client-error status, never INTERNAL."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    client = strict.client("ops", retries=0, timeout=60)
    types = st.sampled_from(["pdq", "md5", "phash", "vpdq", "sha256", "PDQ", "", "nope"])
    hash_values = st.builds(
        lambda t, v: (t, v), types, st.one_of(st.text(max_size=70), st.binary(max_size=40))
    )
    server_faults = {"INTERNAL", "UNKNOWN", "DATA_LOSS"}

    @settings(max_examples=20, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
    @given(
        hashes=st.lists(hash_values, max_size=4),
        media=st.lists(st.binary(max_size=64), max_size=2),
        threshold=st.one_of(st.none(), st.integers(-5, 300)),
        lists=st.lists(st.sampled_from(["keep", "missing"]), max_size=2),
        max_results=st.integers(0, 3),
    )
    def check(hashes, media, threshold, lists, max_results):
        try:
            client.match(hashes, media=media, threshold=threshold, lists=lists,
                         max_results=max_results)  # fmt: skip
            code = "OK"
        except grpc.RpcError as exc:
            code = exc.code().name
        assert code not in server_faults, code

    check()
    assert client.match([("pdq", "00" * 32)]).results


def test_a_unix_socket_listen_serves_and_is_announced_without_a_port(tmp_path, caplog):
    """`listen = "unix:PATH"` (README, Configuration): gRPC reports such a port as 1, and
    start-up said "listening on unix:/run/hashmatch.sock (port 1)"."""
    sock = tmp_path / "hm.sock"
    with (
        caplog.at_level("INFO", logger="hashmatch.server"),
        running_server(tmp_path / "d", listen=f"unix:{sock}"),
        HashmatchClient(f"unix:{sock}") as client,
    ):
        assert client.health() == "SERVING"
    (line,) = [r.getMessage() for r in caplog.records if "listening on" in r.getMessage()]
    assert line == f"hashmatch listening on unix:{sock}", line
