"""Tolerant request decoding: bytes that are not a valid request become INVALID_ARGUMENT.

Why: grpcio decodes a request before any handler runs. When that fails (garbage
bytes, a truncated message, invalid UTF-8 in a proto3 string field) it answers
INTERNAL "Exception deserializing request!", logs a traceback, and our skin never
sees the call: no authentication, no access-log line, no metrics. On request
streams it can also leave the call so that ``Server.stop(grace)`` never returns
(grpcio 1.85). README promises that nothing a client sends produces INTERNAL.

How: :class:`TolerantDecoding` (a server interceptor) swaps the request decoder of
each ``hashmatch.v1`` method whose behaviour comes from
:func:`hashmatch.server.calls.rpc` for one that returns an :class:`Undecodable`
marker instead of raising. The skin checks for the marker after authentication
(so an unauthenticated caller still gets UNAUTHENTICATED); for request streams the
iterator is wrapped here and raises when the bad message is reached, naming it
``stream[n]``. Health and reflection keep grpcio's own handlers, untouched.
The wrapped handler is built once per method and reused: per call the cost is one
dict lookup (plus one generator for request streams).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import grpc

from hashmatch.engine.errors import InvalidInput

# Set on the behaviours made by calls.rpc: they check for Undecodable themselves.
CHECKS_UNDECODABLE = "checks_undecodable"


class Undecodable:
    """Stands in for a request whose bytes did not decode; ``reason`` says why."""

    __slots__ = ("reason",)

    def __init__(self, reason: str):
        self.reason = reason

    def error(self, field: str = "request") -> InvalidInput:
        return InvalidInput(f"not a valid protobuf message: {self.reason}", field=field)


def tolerant(decode: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    """``decode``, returning an :class:`Undecodable` where it would raise."""

    def decode_or_mark(data: bytes) -> Any:
        try:
            return decode(data)
        except Exception as exc:  # DecodeError, or anything a decoder raises on bad bytes
            return Undecodable(str(exc) or type(exc).__name__)

    return decode_or_mark


def checked_stream(requests: Iterable[Any]) -> Iterator[Any]:
    """The stream's messages; raises InvalidInput at the first undecodable one."""
    for n, request in enumerate(requests):
        if type(request) is Undecodable:
            raise request.error(f"stream[{n}]")
        yield request


class TolerantDecoding(grpc.ServerInterceptor):
    """Swap request decoders of the methods under ``prefix`` (see the module doc)."""

    def __init__(self, prefix: str = "/hashmatch.v1."):
        self._prefix = prefix
        # method -> (handler as registered, handler to use); rebuilt if it changes.
        self._cache: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        cached = self._cache.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._wrap(method, handler)
        self._cache[method] = (handler, wrapped)  # a race only builds it twice
        return wrapped

    def _wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        decode = handler.request_deserializer
        if not method.startswith(self._prefix) or decode is None:
            return handler
        kind = ("stream_" if handler.request_streaming else "unary_") + (
            "stream" if handler.response_streaming else "unary"
        )
        behavior = getattr(handler, kind)
        if not getattr(behavior, CHECKS_UNDECODABLE, False):
            return handler  # not behind our skin: it would not recognise the marker
        if handler.request_streaming:
            inner = behavior

            def behavior(requests: Iterable[Any], context: grpc.ServicerContext) -> Any:
                return inner(checked_stream(requests), context)

        return handler._replace(request_deserializer=tolerant(decode), **{kind: behavior})


def interceptors() -> list[grpc.ServerInterceptor]:
    """The interceptors every hashmatch server installs."""
    return [TolerantDecoding()]
