"""Hostile media: playlists that make FFmpeg open other files, frame-count bombs, and
pixel-limit messages. Every input is generated here (tiny mp4s, GIFs, PNG headers)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import cv2
import grpc
import numpy as np
import pytest

from hashmatch.engine import video
from hashmatch.engine.errors import MediaError, UnsupportedMedia
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
    with pytest.raises(MediaError):
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
