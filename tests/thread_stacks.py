"""Whether a thread of this process is running a given function, from its Python stack:
a test acts once another thread is really inside a wait or a piece of work, rather than
after a sleep that guesses how long getting there takes (too short on a loaded machine,
and the test passes without testing what it says)."""

from __future__ import annotations

import sys
import time


def running(function: str, thread: int | None = None) -> bool:
    """Whether ``thread`` (an ident; None: any thread) has a frame of ``function`` (its
    name) on its stack now."""
    frames = sys._current_frames()
    for frame in frames.values() if thread is None else [frames.get(thread)]:
        while frame is not None:
            if frame.f_code.co_name == function:
                return True
            frame = frame.f_back
    return False


def wait_running(function: str, seconds: float, thread: int | None = None) -> bool:
    """Whether ``thread`` (None: any) was seen running ``function`` within ``seconds``."""
    deadline = time.monotonic() + seconds
    while not running(function, thread):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
    return True
