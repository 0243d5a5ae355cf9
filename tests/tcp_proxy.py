"""A TCP relay between a test's client and server that can slow, cut or silence the
link: what a network or a load balancer does to a call, over real sockets."""

from __future__ import annotations

import contextlib
import queue
import socket
import threading
import time


class CuttableProxy:
    """A TCP relay to ``upstream`` that :meth:`cut` drops, refusing new connections
    after: a server or load balancer going away in the middle of a stream (or that
    :meth:`blackhole` silences). ``delay``: seconds each chunk towards the server is
    held back (a slow link: every request takes that much longer)."""

    def __init__(self, upstream: tuple[str, int]):
        self.upstream = upstream
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.target = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.sockets: list[socket.socket] = []
        self.closed = False
        self.blackholed = False
        self.delay = 0.0
        self.refused: list[float] = []  # when each connection made while closed came
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                down, _ = self.listener.accept()
            except OSError:
                return
            if self.closed:
                self.refused.append(time.monotonic())
                down.close()
                continue
            up = socket.create_connection(self.upstream)
            self.sockets += [down, up]
            for src, dst, delayed in ((down, up, True), (up, down, False)):
                args = (src, dst, delayed)
                threading.Thread(target=self._pump, args=args, daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, delayed: bool) -> None:
        """Relay ``src`` to ``dst``; ``delayed``: each chunk ``delay`` s after it came
        (a chunk's own wait, not the sum of the waits of the chunks before it)."""
        chunks: queue.Queue = queue.Queue()
        threading.Thread(target=self._forward, args=(chunks, dst), daemon=True).start()
        try:
            while data := src.recv(65536):
                chunks.put((time.monotonic() + (self.delay if delayed else 0.0), data))
        except OSError:
            pass
        chunks.put(None)

    def _forward(self, chunks: queue.Queue, dst: socket.socket) -> None:
        while (chunk := chunks.get()) is not None:
            due, data = chunk
            time.sleep(max(0.0, due - time.monotonic()))
            if not self.blackholed:
                try:
                    dst.sendall(data)
                except OSError:
                    return

    def blackhole(self) -> None:
        """Stop forwarding, both ways, with every connection left open: a network that
        drops a connection silently (a NAT or firewall forgetting it)."""
        self.blackholed = True

    def drop(self) -> None:
        """Drop the open connections but keep accepting: a server restart the client
        reconnects to."""
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def cut(self) -> None:
        self.closed = True
        for sock in [self.listener, *self.sockets]:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
