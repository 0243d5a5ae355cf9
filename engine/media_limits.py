"""How many frames one media item may have hashed: the numbers every hashing path shares.

A module of constants alone (no imports): :mod:`hashmatch.engine.scan` and the CLI's
option defaults read them without loading the decoders (OpenCV, Pillow).
"""

from __future__ import annotations

#: Frames hashed per media item: an animation's, and a video's sampled frames in media
#: sent to the server (``DecodeLimits.max_frames`` says why 10k). The server keeps it
#: for videos too: uploads are strangers' bytes, and 10k sampled frames is already
#: 2 h 46 min at vPDQ's one hash a second.
MAX_FRAMES = 10_000

#: A video's sampled frames in the operator's own files (``hash``, ``scan``'s default,
#: ``match``): 27 h 46 min at one hash a second. Why one constant: ``match`` kept the
#: 10k upload cap while ``hash`` and ``scan`` had 100k each, so a film over 2 h 46 min
#: hashed and scanned, and ``match film.mp4`` refused it.
LOCAL_MAX_VIDEO_FRAMES = 100_000

#: Seconds one video may take to hash (``scan``, ``hash``, ``match``: ``--file-timeout``):
#: one pathological video must not hold a run forever.
DEFAULT_FILE_TIMEOUT = 3600.0
