"""Which files are videos, and the FFmpeg demuxers a video may be read with: one table.

Why one table: ``scan`` kept its own extension list (with ``.ogv``) beside
``engine.video``'s (without), which ``hash``, ``match`` and ``remote match`` use, and
FFmpeg's container whitelist was a third list (without Ogg). So a ``.ogv`` was a video
to ``scan`` and a photo to ``hash``, and could not be opened as a video by either.
Each extension now names its demuxer here, and the whitelist is made from the table.
No cv2 import: the scanning process reads the extensions without the video stack.
"""

from __future__ import annotations

import os

# extension -> FFmpeg's demuxer name. FFmpeg's format_whitelist matches any
# comma-separated part of a demuxer's name ("mov" is the mp4 demuxer, "matroska"
# mkv/webm, "asf" wmv, "mpeg" program streams, "mpegts" .ts/.mts, "ogg" .ogv).
_DEMUXER = {
    ".mp4": "mov,mp4,m4a,3gp,3g2,mj2",
    ".m4v": "mov,mp4,m4a,3gp,3g2,mj2",
    ".mov": "mov,mp4,m4a,3gp,3g2,mj2",
    ".3gp": "mov,mp4,m4a,3gp,3g2,mj2",
    ".mkv": "matroska,webm",
    ".webm": "matroska,webm",
    ".avi": "avi",
    ".ts": "mpegts",
    ".mts": "mpegts",
    ".flv": "flv",
    ".mpg": "mpeg",
    ".mpeg": "mpeg",
    ".wmv": "asf",
    ".ogv": "ogg",
}

#: File suffixes treated as video (vPDQ) rather than photo, by scan, hash and match.
VIDEO_EXTENSIONS = frozenset(_DEMUXER)

#: The demuxers of VIDEO_EXTENSIONS, FFmpeg's ``format_whitelist``. Why a whitelist:
#: uploaded bytes pick their own demuxer by content, and some demuxers open *other*
#: files: an ``ffconcat`` or HLS (``#EXTM3U``) playlist follows relative paths, so an
#: upload could hash (and probe the existence of) any file beside it.
FFMPEG_FORMATS = ",".join(dict.fromkeys(_DEMUXER.values()))


def is_video_path(path: str | os.PathLike) -> bool:
    """Whether ``path`` is hashed as a video (by its extension, case-insensitively)."""
    return os.path.splitext(os.fspath(path))[1].lower() in VIDEO_EXTENSIONS
