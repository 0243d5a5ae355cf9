"""Why gRPC could not listen on an address, and who holds it when that is knowable.

Why: grpcio says only that no address was added, so ``hashmatch serve`` guessed
"address in use, or not an address of this host?"; an operator then had to find
the other process (an older server left running, a second ``serve``) themselves. A
plain socket bound to the same address gets the errno; the holder of a port in use
is read from /proc (Linux; only processes this user may inspect)."""

from __future__ import annotations

import errno
import os
import socket
from pathlib import Path

from hashmatch.engine.store_lock_holder import describe_process
from hashmatch.server.config import UNIX_SCHEMES

_GENERIC = "address in use, or not an address of this host?"
_LISTEN = "0A"  # /proc/net/tcp's st of a listening socket


def listen_refusal(listen: str) -> str:
    """The reason ``listen`` (host:port) cannot be bound, for an error message."""
    if listen.startswith(UNIX_SCHEMES):
        return _GENERIC
    host, _, port_text = listen.rpartition(":")
    host = host.strip("[]") or "0.0.0.0"
    try:
        port = int(port_text)
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC binds
            probe.bind(address)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            holder = port_holder(port)
            return f"address in use{f' by {holder}' if holder else ''}"
        if exc.errno == errno.EADDRNOTAVAIL:
            return "not an address of this host"
        if exc.errno == errno.EACCES:
            return "permission denied (a port under 1024 needs privileges)"
        return exc.strerror or _GENERIC
    except ValueError:  # no port number: gRPC's own words are all there is
        return _GENERIC
    return _GENERIC  # free now: taken and let go between gRPC's bind and this one


def port_holder(port: int) -> str | None:
    """``pid N (its command line)`` of a process listening on TCP ``port``, as a store
    lock's holder is described (:func:`describe_process`), or None when unknowable (not
    Linux, or the socket is another user's)."""
    inodes = _listening_inodes(port)
    if not inodes:
        return None
    proc = Path("/proc")
    for pid_dir in proc.iterdir():
        if not pid_dir.name.isdigit():
            continue
        try:
            links = {os.readlink(fd) for fd in (pid_dir / "fd").iterdir()}
        except OSError:  # another user's process, or one that just ended
            continue
        if any(f"socket:[{inode}]" in links for inode in inodes):
            return describe_process(int(pid_dir.name))
    return "a process of another user"


def _listening_inodes(port: int) -> set[str]:
    """Inodes of the sockets listening on ``port`` (any address), from /proc/net."""
    found: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            listening = len(fields) > 9 and fields[3] == _LISTEN
            if listening and int(fields[1].rpartition(":")[2], 16) == port:
                found.add(fields[9])
    return found
