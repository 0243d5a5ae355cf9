"""Media formats the media review found mishandled: an APNG whose default image is not
an animation frame, rotated (portrait phone) MP4s, videos sent as photos and truncated
MP4s, and the wording of the animation pixel-total error. Every input is generated here
(skimage's chelsea, small mp4v videos); nothing binary is checked in."""

from __future__ import annotations

import io
import struct
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pdqhash
import pytest
import skimage.data
from PIL import Image

from hashmatch.engine.decode import DecodeLimits, decode_frames, decode_image
from hashmatch.engine.errors import CorruptMedia, MediaTooLarge, UnsupportedMedia
from hashmatch.engine.hashing import hash_media
from hashmatch.engine.video import hash_video

# ---------------------------------------------------------------- helpers


def _chelsea() -> Image.Image:
    return Image.fromarray(skimage.data.chelsea())  # 451x300 RGB


def _apng(default_image: bool) -> bytes:
    """Three distinct pictures as an APNG; with ``default_image`` the first is the PNG's
    default image only (shown by viewers without APNG support), not an animation frame."""
    cat = _chelsea()
    frames = [cat, cat.rotate(90), Image.fromarray(skimage.data.astronaut()).resize(cat.size)]
    buf = io.BytesIO()
    frames[0].save(
        buf,
        "PNG",
        save_all=True,
        append_images=frames[1:],
        duration=100,
        loop=0,
        default_image=default_image,
    )
    return buf.getvalue()


def _pillow_pdq_frame0(data: bytes) -> bytes:
    """pdqhash of what Pillow (and python-threatexchange) call frame 0, as RGB."""
    with Image.open(io.BytesIO(data)) as im:
        rgb = np.ascontiguousarray(np.asarray(im.convert("RGB")))
    vec, _ = pdqhash.compute(rgb)
    return np.packbits(vec.astype(np.uint8)).tobytes()


def _mp4(path: Path, frames: int = 4, size: tuple[int, int] = (96, 64)) -> Path:
    """A small real mp4 (mp4v) of a moving photo: a non-square frame, so that a
    rotation would change the hash."""
    cat = cv2.resize(cv2.cvtColor(skimage.data.chelsea(), cv2.COLOR_RGB2BGR), size)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, size)
    assert writer.isOpened()
    for i in range(frames):
        writer.write(np.roll(cat, i * 7, axis=1))
    writer.release()
    return path


def _rotate_tkhd_90(mp4: bytes) -> bytes:
    """The video with its track header's display matrix set to a 90-degree rotation,
    as phones write portrait videos (the coded frames are untouched)."""
    i = mp4.find(b"tkhd")
    assert i > 0
    version = mp4[i + 4]
    # version+flags, creation/modification times, track id, reserved, duration,
    # reserved(8), layer/alternate group/volume/reserved(8): then the 3x3 matrix.
    off = i + 4 + 4 + (8 if version == 0 else 16) + 4 + 4 + (4 if version == 0 else 8) + 8 + 8
    patched = bytearray(mp4)
    identity = struct.pack(">9i", 65536, 0, 0, 0, 65536, 0, 0, 0, 1 << 30)
    assert patched[off : off + 36] == identity  # found the matrix
    patched[off : off + 36] = struct.pack(">9i", 0, 65536, 0, -65536, 0, 0, 0, 0, 1 << 30)
    return bytes(patched)


# ---------------------------------------------------------------- APNG default image


def test_apng_default_image_is_hashed_not_the_first_animation_frame():
    """Before: OpenCV decoded the first *animation* frame (rotated cat), 128 bits off
    what Pillow, pdqhash and python-threatexchange hash (the default image)."""
    data = _apng(default_image=True)
    (pdq,) = hash_media(data, ["pdq"])
    assert pdq.codes[0].tobytes() == _pillow_pdq_frame0(data)
    assert np.array_equal(decode_image(data), np.asarray(_chelsea()))


def test_plain_apng_still_hashes_its_first_frame():
    data = _apng(default_image=False)
    (pdq,) = hash_media(data, ["pdq"])
    assert pdq.codes[0].tobytes() == _pillow_pdq_frame0(data)


# ---------------------------------------------------------------- rotated video


def test_rotated_mp4_hashes_its_coded_frames_like_vpdq(tmp_path: Path):
    """vpdq (and so HMA hash lists) hashes the coded frames and ignores the display
    matrix. Before: OpenCV auto-rotated, ~128 bits per frame off."""
    plain = _mp4(tmp_path / "plain.mp4").read_bytes()
    rotated = _rotate_tkhd_90(plain)
    a = hash_video(plain, seconds_per_hash=0)
    b = hash_video(rotated, seconds_per_hash=0)
    assert len(a) == len(b) == 4
    assert np.array_equal(a.codes, b.codes)
    path = tmp_path / "rotated.mp4"
    path.write_bytes(rotated)
    assert np.array_equal(hash_video(path, seconds_per_hash=0).codes, a.codes)


# ---------------------------------------------------------------- pixel-total wording


def test_animation_pixel_total_error_counts_the_frames_decoded():
    """Three 451x300 frames and a budget of 2.5 frames: refused at the third frame,
    which the message must count (it said 2)."""
    data = _apng(default_image=False)
    frame = 451 * 300
    with pytest.raises(MediaTooLarge) as err:
        decode_frames(data, limits=DecodeLimits(max_pixels=frame * 5 // 2))
    assert "(3 frames of 451x300 so far)" in str(err.value)


# ---------------------------------------------------------------- videos vs photos


def _avi(path: Path) -> bytes:
    cat = cv2.resize(cv2.cvtColor(skimage.data.chelsea(), cv2.COLOR_RGB2BGR), (64, 48))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (64, 48))
    assert writer.isOpened()
    writer.write(cat)
    writer.release()
    return path.read_bytes()


def test_video_sent_as_photo_says_it_looks_like_a_video(tmp_path: Path):
    mp4 = _mp4(tmp_path / "clip.mp4").read_bytes()
    with pytest.raises(UnsupportedMedia, match=r"looks like a video \(MP4/MOV\).*vpdq"):
        hash_media(mp4, ["pdq"])
    with pytest.raises(UnsupportedMedia, match=r"looks like a video \(AVI\).*vpdq"):
        decode_image(_avi(tmp_path / "clip.avi"))
    mkv_head = bytes.fromhex("1a45dfa3") + b"\x9f\x42\x86\x81\x01" + b"\0" * 40
    with pytest.raises(UnsupportedMedia, match=r"looks like a video \(Matroska/WebM\)"):
        decode_image(mkv_head)
    # Not a video: the message is unchanged.
    with pytest.raises(UnsupportedMedia, match=r"not an image in a supported format \(first"):
        decode_image(b"hello world\n" * 4)


def test_heic_is_not_called_a_video():
    """HEIC/AVIF photos are ISO BMFF too (``ftypheic``): not a video."""
    heic = struct.pack(">I", 24) + b"ftypheic" + b"\0\0\0\0" + b"mif1heic" + b"\0" * 200
    with pytest.raises(UnsupportedMedia) as err:
        decode_image(heic)
    assert "video" not in str(err.value)


@pytest.mark.parametrize(
    ("how", "says"),
    [("truncated", "an MP4/MOV container FFmpeg cannot open"),
     ("no frames", "an MP4/MOV with no tracks: video has no frames")],
)  # fmt: skip
def test_broken_mp4_is_corrupt_media_not_unsupported(tmp_path: Path, how: str, says: str):
    """An MP4 FFmpeg cannot open is a damaged video, not an unknown format: its moov
    index is missing (truncated), or lists no track (a writer closed before its first
    frame: it used to read 'truncated or damaged?' too, sending people looking for a
    broken upload)."""
    if how == "truncated":
        data = _mp4(tmp_path / "clip.mp4").read_bytes()
        data = data[: len(data) // 3]
    else:
        data = _mp4(tmp_path / "clip.mp4", frames=0).read_bytes()
    with pytest.raises(CorruptMedia, match=says):
        hash_video(data, seconds_per_hash=0)
    path = tmp_path / "broken.mp4"
    path.write_bytes(data)
    with pytest.raises(CorruptMedia, match=says):
        hash_video(path, seconds_per_hash=0)


def test_broken_avi_and_matroska_are_corrupt_media(tmp_path: Path):
    avi_head = _avi(tmp_path / "clip.avi")[:3000]  # headers only, no frames
    with pytest.raises(CorruptMedia, match=r"an AVI container FFmpeg cannot open"):
        hash_video(avi_head)
    mkv_head = bytes.fromhex("1a45dfa3") + b"\x9f\x42\x86\x81\x01" + b"\0" * 40
    with pytest.raises(CorruptMedia, match=r"a Matroska/WebM container FFmpeg cannot open"):
        hash_video(mkv_head)


def test_non_video_bytes_stay_unsupported():
    with pytest.raises(UnsupportedMedia, match="not a video FFmpeg can open"):
        hash_video(b"this is not a video at all" * 100)
    heic = struct.pack(">I", 24) + b"ftypheic" + b"\0\0\0\0" + b"mif1heic" + b"\0" * 200
    with pytest.raises(UnsupportedMedia, match="not a video FFmpeg can open"):
        hash_video(heic)  # a photo format (ISO BMFF too), not a damaged video


def test_audio_only_mp4_is_unsupported_not_a_damaged_video(tmp_path: Path):
    """An intact MP4 whose only track is sound (an M4A, a voice memo) has no video:
    'truncated or damaged?' sent people looking for a broken upload (scan: corrupt)."""
    data = _mp4(tmp_path / "clip.mp4").read_bytes()
    audio = data.replace(b"vide", b"soun")  # the track's handler: FFmpeg sees no video
    with pytest.raises(UnsupportedMedia, match=r"an MP4/MOV with no video track \(only audio\)"):
        hash_video(audio)
    with pytest.raises(CorruptMedia, match="FFmpeg cannot open"):  # no index: damaged
        hash_video(audio[: len(audio) // 2])


def test_photo_named_as_a_video_says_it_looks_like_an_image(tmp_path: Path):
    photo = tmp_path / "photo.mp4"
    photo.write_bytes(cv2.imencode(".jpg", np.full((32, 48, 3), 128, np.uint8))[1].tobytes())
    with pytest.raises(UnsupportedMedia, match=r"looks like an image \(JPEG\); hash it as pdq"):
        hash_video(photo)


# ---------------------------------------------------------------- FFmpeg's log lines


def test_unopenable_video_adds_no_log_lines_to_stderr(capfd, tmp_path: Path):
    """The CLI's stderr: OpenCV's ``[ WARN...] cap.cpp ... can't be used to capture by
    name`` and FFmpeg's ``moov atom not found`` repeated what the typed error says, once
    per file. PyAV leaves FFmpeg's log off."""
    data = _mp4(tmp_path / "clip.mp4").read_bytes()
    capfd.readouterr()
    with pytest.raises(CorruptMedia):
        hash_video(data[: len(data) // 3])
    err = capfd.readouterr().err
    assert "WARN" not in err and "moov atom" not in err


def test_concurrent_unopenable_videos_are_each_corrupt(tmp_path: Path):
    """Opens failing at once in server threads each raise their own typed error."""
    data = _mp4(tmp_path / "clip.mp4").read_bytes()[:2000]

    def broken(_: int) -> str:
        try:
            hash_video(data)
        except CorruptMedia as exc:
            return type(exc).__name__
        return "hashed"

    with ThreadPoolExecutor(4) as pool:
        assert set(pool.map(broken, range(16))) == {"CorruptMedia"}
