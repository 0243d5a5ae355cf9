"""Hostile media: playlists that make FFmpeg open other files, frame-count bombs, and
pixel-limit messages. Every input is generated here (tiny mp4s, GIFs, PNG headers)."""

from __future__ import annotations

import json
import struct
import tempfile
import time
import zlib
from pathlib import Path

import cv2
import grpc
import numpy as np
import pytest

from hashmatch.engine import video
from hashmatch.engine.decode import DEFAULT_LIMITS, DecodeLimits, decode_frames, decode_image
from hashmatch.engine.errors import MediaTooLarge, UnsupportedMedia
from hashmatch.engine.hashing import HashOptions, hash_media
from hashmatch.engine.video import capture_options, hash_video
from hashmatch.server.testing import running_server


def _mp4(path: Path, frames: int = 5, fps: float = 10.0, size: int = 64) -> Path:
    """A small real mp4 (MPEG-4 part 2), each frame a different grey gradient."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (size, size))
    assert writer.isOpened()
    ramp = np.linspace(0, 255, size, dtype=np.float32)
    for i in range(frames):
        grey = ((ramp[None, :] * (i + 1) + ramp[:, None]) % 256).astype(np.uint8)
        writer.write(np.repeat(grey[:, :, None], 3, axis=2))
    writer.release()
    return path


# ---------------------------------------------------------------- playlists


def test_ffconcat_upload_does_not_open_a_file_beside_it(tmp_path, monkeypatch):
    """Uploaded bytes that are an ffconcat playlist must not hash the file it names.

    The temp dir is where uploads are written, as on the server (there: /tmp), and the
    mp4 sits in it: before the fix FFmpeg followed ``file other.mp4`` and returned that
    video's frames.
    """
    other = _mp4(tmp_path / "other.mp4")
    assert len(hash_video(other, seconds_per_hash=0)) == 5  # a video we can hash
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with pytest.raises(UnsupportedMedia, match="a playlist"):
        hash_video(b"ffconcat version 1.0\nfile other.mp4\n", seconds_per_hash=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.mp4"]  # nothing left


def test_server_answers_a_playlist_upload_with_invalid_argument(tmp_path, monkeypatch):
    """Over a real socket: the Hash RPC neither returns the neighbour's frames nor OK."""
    uploads = tmp_path / "tmp"
    uploads.mkdir()
    mp4 = _mp4(uploads / "other.mp4").read_bytes()
    monkeypatch.setattr(tempfile, "tempdir", str(uploads))  # the server's /tmp
    with running_server(tmp_path / "data") as server:
        client = server.client()
        (vpdq,) = client.hash([mp4], ["vpdq"]).items[0].hashes
        assert vpdq.signal_type == "vpdq" and len(vpdq.hex) == 1  # 5 frames at 10 fps
        with pytest.raises(grpc.RpcError) as err:
            client.hash([b"ffconcat version 1.0\nfile other.mp4\n"], ["vpdq"])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_ffconcat_file_is_refused_by_the_demuxer_whitelist(tmp_path):
    """A playlist *file* (a scanned tree) bypasses the bytes check: FFmpeg's format
    whitelist alone refuses it."""
    _mp4(tmp_path / "other.mp4")
    playlist = tmp_path / "clip.mp4"
    playlist.write_bytes(b"ffconcat version 1.0\nfile other.mp4\n")
    with pytest.raises(UnsupportedMedia):
        hash_video(playlist, seconds_per_hash=0)


@pytest.mark.parametrize(
    "data",
    [b"ffconcat version 1.0\nfile a.mp4\n", b"#EXTM3U\n#EXTINF:1,\na.ts\n",
     b"\xef\xbb\xbf#EXTM3U\na.ts\n"],
)  # fmt: skip
def test_playlist_bytes_are_unsupported_media(data):
    with pytest.raises(UnsupportedMedia, match="media: a playlist"):
        hash_video(data)


def test_uploaded_mp4_still_hashes_like_its_file(tmp_path):
    path = _mp4(tmp_path / "clip.mp4")
    a = hash_video(path, seconds_per_hash=0)
    b = hash_video(path.read_bytes(), seconds_per_hash=0)
    assert np.array_equal(a.codes, b.codes) and b.frame_numbers == [0, 1, 2, 3, 4]


def test_capture_options_keep_the_operators_and_add_the_whitelists():
    ours = f"format_whitelist;{video.FFMPEG_FORMATS}|protocol_whitelist;file"
    assert capture_options(None) == ours
    assert capture_options("") == ours
    assert capture_options("rtsp_transport;udp") == f"rtsp_transport;udp|{ours}"
    # an operator's own whitelist is their decision: kept, not overridden
    assert capture_options("format_whitelist;mov,ogg") == (
        "format_whitelist;mov,ogg|protocol_whitelist;file"
    )
    assert "concat" not in video.FFMPEG_FORMATS and "hls" not in video.FFMPEG_FORMATS


# ---------------------------------------------------------------- frame-count bombs


def _tiny_gif(frames: int) -> bytes:
    """A GIF of ``frames`` 1x1 frames, 15 bytes each (what the fuzzer sent, generated)."""
    header = b"GIF89a" + struct.pack("<HH", 1, 1) + b"\x80\x00\x00" + b"\x00" * 3 + b"\xff" * 3
    frame = b"," + struct.pack("<HHHH", 0, 0, 1, 1) + b"\x00" + b"\x02\x02\x44\x01\x00"
    return header + frame * frames + b";"


def test_animation_over_the_frame_limit_is_refused_naming_it():
    data = _tiny_gif(11)
    with pytest.raises(MediaTooLarge, match="media: animation has 11 frames, over the 10-frame"):
        decode_frames(data, limits=DecodeLimits(max_frames=10))
    assert len(decode_frames(data, limits=DecodeLimits(max_frames=11))) == 11
    # a caller taking only the first frames asked for a partial answer: no error
    assert len(decode_frames(data, max_frames=5, limits=DecodeLimits(max_frames=10))) == 5
    with pytest.raises(MediaTooLarge, match="10-frame limit"):
        decode_frames(data, max_frames=20, limits=DecodeLimits(max_frames=10))


def test_default_limit_refuses_a_10001_frame_gif_before_hashing_it():
    """The fuzzer's bomb (135 kB, 9000 frames: 10 s CPU, 18 MB reply) one frame over the
    default: refused by the frame count, before any frame is hashed."""
    assert DEFAULT_LIMITS.max_frames == 10_000
    data = _tiny_gif(10_001)
    options = HashOptions(all_frames=True, dihedral=True, uncrop=True, derotate=True)
    start = time.process_time()
    with pytest.raises(MediaTooLarge, match="10001 frames, over the 10000-frame limit"):
        hash_media(data, ["pdq"], options)
    assert time.process_time() - start < 1.0  # hashing 10k frames takes ~8 s
    # first frame only (the default) is one frame's work: still hashed
    (pdq,) = hash_media(data, ["pdq"])
    assert pdq.codes.shape == (1, 32)


def test_hash_all_frames_keeps_the_animation_cap_where_videos_get_100k(run, tmp_path):
    """``hash`` raises the frame cap to 100k for films (local files, as ``scan``); that
    one field capped animations too, so ``--all-frames`` hashed a 10,001-frame GIF frame
    by frame instead of refusing it as the server does. Videos keep the raised cap."""
    gif = tmp_path / "bomb.gif"
    gif.write_bytes(_tiny_gif(10_001))
    out = run("hash", str(gif), "--types", "pdq", "--all-frames", code=1).output
    rec = json.loads(out)
    assert rec["reason"] == "MediaTooLarge", str(rec)[:300]
    assert "10001 frames, over the 10000-frame limit" in rec["error"]
    limits = DecodeLimits(max_video_frames=11)
    assert (limits.max_frames, limits.video_frames) == (10_000, 11)
    clip = _mp4(tmp_path / "clip.mp4", frames=12, fps=10.0, size=32)
    with pytest.raises(MediaTooLarge, match="more sampled frames than the 11-frame limit"):
        hash_video(clip, seconds_per_hash=0, limits=limits)


def test_match_takes_a_film_as_hash_and_scan_do_and_the_server_keeps_its_cap(run, tmp_path):
    """``match film.mp4`` kept the 10k-frame upload cap while ``hash`` and ``scan`` take
    100k sampled frames of the operator's own files: a film over 2 h 46 min hashed and
    scanned, and match refused it. One constant now; the server's 10k is deliberate."""
    from hashmatch.engine.media_limits import LOCAL_MAX_VIDEO_FRAMES, MAX_FRAMES
    from hashmatch.engine.scan import ScanOptions
    from hashmatch.server.commands.scan import scan_command

    (frames_option,) = [p for p in scan_command.params if p.name == "max_video_frames"]
    assert ScanOptions().max_video_frames == frames_option.default == LOCAL_MAX_VIDEO_FRAMES
    film = _mp4(tmp_path / "film.mp4", frames=MAX_FRAMES + 10, fps=1.0, size=16)  # 2 h 46 min
    listed = tmp_path / "film.csv"  # the film's vPDQ as a list `ingest` reads
    listed.write_text(run("hash", str(film), "--types", "vpdq", "--format", "te").output)
    assert run("ingest", str(listed), "--list", "films").output.count("added 1,") == 1

    found = json.loads(run("match", str(film), "--media-type", "vpdq", "--json").output)
    assert [m["list_name"] for m in found[0]["matches"]] == ["films"]
    assert found[0]["matches"][0]["query_match_pct"] == 100
    # uploads: the server's own cap, deliberately the lower one
    with running_server(tmp_path / "data") as server, pytest.raises(grpc.RpcError) as err:
        server.client().match(media=[film.read_bytes()], media_types=["vpdq"])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"{MAX_FRAMES}-frame limit" in err.value.details()


def test_all_frames_pdq_passes_the_limits_through():
    data = _tiny_gif(4)
    limits = DecodeLimits(max_frames=3)
    with pytest.raises(MediaTooLarge, match="3-frame limit"):
        hash_media(data, ["pdq"], HashOptions(all_frames=True, limits=limits))
    (pdq,) = hash_media(data, ["pdq"], HashOptions(all_frames=True))
    assert pdq.frame_numbers == [0, 1, 2, 3]


def test_video_over_the_sampled_frame_limit_is_refused(tmp_path):
    path = _mp4(tmp_path / "clip.mp4", frames=12, fps=10.0, size=32)
    limits = DecodeLimits(max_frames=10)
    with pytest.raises(MediaTooLarge, match="media: video has more sampled frames than the 10-"):
        hash_video(path, seconds_per_hash=0, limits=limits)
    with pytest.raises(MediaTooLarge):
        hash_video(path.read_bytes(), seconds_per_hash=0, limits=limits)
    # the limit counts frames hashed, not decoded: one a second is 2 of the 12
    assert hash_video(path, seconds_per_hash=1, limits=limits).frame_numbers == [0, 10]
    assert len(hash_video(path, seconds_per_hash=0, limits=DecodeLimits(max_frames=12))) == 12


def test_server_refuses_an_all_frames_bomb_with_invalid_argument(tmp_path):
    """Over a real socket with the server's own limits (its config sets no frame limit:
    the default protects it)."""
    with running_server(tmp_path / "data") as server:
        client = server.client()
        ok = client.match(media=[_tiny_gif(3)], all_frames=True)
        assert len(ok.results[0].computed[0].hex) == 3
        with pytest.raises(grpc.RpcError) as err:
            client.match(media=[_tiny_gif(10_001)], all_frames=True, dihedral=True)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "10000-frame limit" in err.value.details()


# ---------------------------------------------------------------- work nobody waits for


class _Stop(Exception):
    pass


def _stop_after(calls: int) -> tuple[list[int], object]:
    count = [0]

    def checkpoint() -> None:
        count[0] += 1
        if count[0] > calls:
            raise _Stop

    return count, checkpoint


def test_video_checkpoint_runs_before_every_decoded_frame_and_stops_the_hash(tmp_path):
    path = _mp4(tmp_path / "clip.mp4", frames=30, fps=10.0, size=32)
    count, checkpoint = _stop_after(10**6)
    # 3 frames hashed, but every one of the 30 decodes is a checkpoint (+1: end of file)
    assert hash_video(path, seconds_per_hash=1, checkpoint=checkpoint).frame_numbers == [
        0, 10, 20,
    ]  # fmt: skip
    assert count[0] == 31
    count, checkpoint = _stop_after(12)
    with pytest.raises(_Stop):
        hash_media(path.read_bytes(), ["vpdq"], HashOptions(checkpoint=checkpoint))
    assert count[0] == 13  # stopped at once, not at the end of the video


def test_animation_checkpoint_stops_all_frames_pdq():
    count, checkpoint = _stop_after(2)
    with pytest.raises(_Stop):
        hash_media(_tiny_gif(50), ["pdq"], HashOptions(all_frames=True, checkpoint=checkpoint))
    assert count[0] == 3


def _long_video(path: Path, frames: int) -> bytes:
    """One frame a second, so vPDQ hashes every frame: ~0.4 ms each at 320x240."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 1.0, (320, 240))
    ramp = np.add.outer(np.arange(240), np.arange(320))
    for i in range(frames):
        grey = ((ramp + i) % 256).astype(np.uint8)
        writer.write(np.repeat(grey[:, :, None], 3, axis=2))
    writer.release()
    return path.read_bytes()


def test_server_stops_a_running_video_hash_at_the_deadline(tmp_path):
    """Queued media jobs were always cancelled at the deadline; a running video hash
    went on to its end, holding a media worker. Now the media worker is free again
    long before the whole video could have been hashed."""
    data = _long_video(tmp_path / "long.mp4", 2500)
    hash_video(_long_video(tmp_path / "warm.mp4", 3))  # load the PDQ kernels first
    start = time.perf_counter()
    assert len(hash_video(data).codes) == 2500
    whole = time.perf_counter() - start
    with running_server(tmp_path / "data", media_workers=1) as server:
        client = server.client()
        pool = server.server.host.media
        for call in (
            lambda: client.hash([data], ["vpdq"], timeout=0.05),
            lambda: client.match(media=[data], media_types=["vpdq"], timeout=0.05),
        ):
            start = time.perf_counter()
            with pytest.raises(grpc.RpcError) as err:
                call()
            assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            while pool.pending and time.perf_counter() - start < whole:
                time.sleep(0.005)
            freed = time.perf_counter() - start
            assert pool.pending == 0 and freed < whole / 2, (freed, whole)


# ---------------------------------------------------------------- pixel-limit messages


def _png_claim(width: int, height: int) -> bytes:
    """A PNG header claiming ``width x height`` RGB pixels, with no pixel data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
        return struct.pack(">I", len(body)) + kind + body + crc

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


@pytest.mark.parametrize("limit", [1000, DEFAULT_LIMITS.max_pixels])
def test_pillows_bomb_cap_is_reported_as_the_configured_limit(limit):
    """Pillow refuses 10^10 pixels itself (its cap: 178956970); the message names ours."""
    data = _png_claim(100_000, 100_000)
    want = f"media: PNG image is 10000000000 pixels, over the {limit}-pixel limit"
    for decode in (decode_image, decode_frames):
        with pytest.raises(MediaTooLarge) as err:
            decode(data, limits=DecodeLimits(max_pixels=limit))
        assert str(err.value).startswith(want)
        assert "178956970" not in str(err.value) and "DOS" not in str(err.value)


def test_a_limit_above_pillows_cap_says_which_refused():
    with pytest.raises(MediaTooLarge) as err:
        decode_image(_png_claim(100_000, 100_000), limits=DecodeLimits(max_pixels=10**11))
    assert "over the decoder's 178956970-pixel cap" in str(err.value)
    assert "100000000000-pixel limit configured is above it" in str(err.value)


def test_the_server_video_frame_cap_is_its_max_video_frames_setting(tmp_path):
    """The server's cap on a video's sampled frames was a constant (10,000): an
    operator who wanted longer uploads, or a tighter bound on a small host, had to edit
    code. It is the ``max_video_frames`` setting now (file, HASHMATCH_MAX_VIDEO_FRAMES,
    ``serve --max-video-frames``); an animation keeps the fixed cap."""
    from hashmatch.engine.media_limits import MAX_FRAMES

    clip = _mp4(tmp_path / "clip.mp4", frames=12, fps=1.0, size=32).read_bytes()  # 12 s
    with running_server(tmp_path / "tight", max_video_frames=10) as server:
        client = server.client()
        with pytest.raises(grpc.RpcError) as err:
            client.match(media=[clip], media_types=["vpdq"])
        ok = client.match(media=[_tiny_gif(11)], all_frames=True)  # not a video
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "10-frame limit" in err.value.details()
    assert len(ok.results[0].computed[0].hex) == 11
    with running_server(tmp_path / "default") as server:
        assert server.server.config.max_video_frames == MAX_FRAMES
        reply = server.client().match(media=[clip], media_types=["vpdq"])
    assert len(reply.results[0].computed[0].hex) == 12


def _avi_growing_frames(path: Path, declared: int, actual: int, frames: int = 3) -> bytes:
    """An MJPEG AVI whose header declares ``declared`` x ``declared`` frames and whose
    JPEGs after the first are ``actual`` x ``actual``: FFmpeg decodes each at its own
    size (packets written by PyAV's muxer, JPEGs by Pillow)."""
    import io
    from fractions import Fraction

    import av
    from PIL import Image

    def jpeg(side: int) -> bytes:
        out = io.BytesIO()
        Image.new("RGB", (side, side), (200, 10, 10)).save(out, "JPEG", quality=10)
        return out.getvalue()

    small, big = jpeg(declared), jpeg(actual)
    with av.open(str(path), "w", format="avi") as container:
        stream = container.add_stream("mjpeg", rate=1)
        stream.width = stream.height = declared
        stream.pix_fmt = "yuvj420p"
        for i in range(frames):
            packet = av.Packet(small if i == 0 else big)
            packet.stream, packet.pts, packet.dts = stream, i, i
            packet.time_base = Fraction(1, 1)
            container.mux(packet)
    return path.read_bytes()


def test_a_video_whose_frames_outgrow_its_header_is_refused_at_the_pixel_limit(tmp_path):
    """The pixel limit was checked against the stream header only: a 5 MB AVI declaring
    64x64 whose frames were 9000x9000 (81 M pixels, over the 50 M default) was hashed,
    +760 MB and 19 s for one item. Each decoded frame is checked now."""
    data = _avi_growing_frames(tmp_path / "grows.avi", 64, 1000)
    assert len(hash_video(data, seconds_per_hash=1)) == 3  # under the default limit
    with (
        running_server(tmp_path / "data", max_media_pixels=500_000) as server,
        pytest.raises(grpc.RpcError) as err,
    ):
        server.client(retries=0).hash([data], ["vpdq"])
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "video frames are 1000x1000, over the 500000-pixel limit" in err.value.details()
