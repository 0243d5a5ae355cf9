"""systemd's readiness protocol (``sd_notify``), without libsystemd.

Why: under ``Type=notify`` systemd waits for ``READY=1`` before it calls a service
started; hashmatch loads its index after the port opens (health NOT_SERVING until
then), so "started" should mean "index loaded", and units ordered after hashmatch (a
pipeline worker) start only when lookups can be answered. ``STOPPING=1`` tells systemd
the drain has begun; ``RELOADING=1`` + ``READY=1`` bracket a SIGHUP token reload
(``Type=notify-reload``); ``STATUS=`` shows in ``systemctl status``.

The protocol is one datagram of ``KEY=value`` lines to the ``AF_UNIX`` socket named
by ``$NOTIFY_SOCKET`` (a leading ``@`` is the abstract namespace). Without the
variable (not under systemd) every call is a no-op.
"""

from __future__ import annotations

import os
import socket
import time

ENV = "NOTIFY_SOCKET"


def notify(*fields: str) -> bool:
    """Send ``fields`` (``"READY=1"``, ``"STATUS=..."``) to systemd; True if sent.

    Never raises nor blocks: a supervisor that went away, or stopped reading, must not
    take the server with it."""
    address = os.environ.get(ENV, "")
    if not address or not fields:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    message = "\n".join(f.replace("\n", " ") for f in fields).encode("utf-8", "replace")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            # a supervisor that stopped reading fills the socket's queue (ten datagrams
            # by default): a blocking send then hung serve, in its signal handler too
            sock.setblocking(False)
            sock.connect(address)
            sock.sendall(message)
    except OSError:
        return False
    return True


def reloading() -> bool:
    """``RELOADING=1`` with the monotonic time systemd's notify-reload asks for."""
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify("RELOADING=1", f"MONOTONIC_USEC={usec}")
