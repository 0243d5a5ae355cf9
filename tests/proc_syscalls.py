"""The system call a thread is in, as /proc shows it, with the numbers of the calls the
tests wait for: a test waits until a process is really blocked (reading its stdin,
sleeping in SQLite's busy wait) rather than sleeping a fixed time and assuming it.
None where this architecture's numbers are not listed here."""

from __future__ import annotations

import platform
from pathlib import Path

_NUMBERS = {
    "x86_64": {"read": {"0"}, "sleep": {"35", "230"}},  # nanosleep, clock_nanosleep
    "aarch64": {"read": {"63"}, "sleep": {"101", "115"}},
}.get(platform.machine())
#: read(2)'s number(s), or None
READ = None if _NUMBERS is None else _NUMBERS["read"]
#: the sleep calls' numbers (nanosleep, clock_nanosleep), or None
SLEEP = None if _NUMBERS is None else _NUMBERS["sleep"]


def syscall(task: str | Path) -> list[str]:
    """The fields of ``task``'s syscall file (``/proc/PID`` or ``/proc/PID/task/TID``):
    the call's number, then its arguments (OSError once the task is gone)."""
    return (Path(task) / "syscall").read_text().split()
