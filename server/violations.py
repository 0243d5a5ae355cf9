"""Every bad field of a request, not just the first.

Why: an upload pipeline that sends 1,000 hashes of which 40 are malformed must learn
all 40 from one refusal; told only the first, it needs 40 round trips to clean the
batch. Validation adds each :class:`~hashmatch.engine.errors.InvalidInput` it meets to
a :class:`Violations` and carries on with the next item; at the end of a stage
:meth:`Violations.raise_any` raises one :class:`InvalidRequest` holding them all (the
request is still refused whole: nothing is matched or stored for it). The status built
from it (:func:`hashmatch.server.errors.to_status`) lists them in its
``google.rpc.BadRequest``, as many as fit gRPC's trailer limit.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from hashmatch.engine.errors import HashmatchError, InvalidInput
from hashmatch.server.errors import clip, field_path

T = TypeVar("T")

#: violations kept per request (the rest are only counted): a 10,000-item garbage
#: batch costs a bounded list, and no reply could carry more (see errors.to_status)
MAX_KEPT = 100


class InvalidRequest(InvalidInput):
    """A request with one or more bad fields (INVALID_ARGUMENT).

    ``violations``: (field path, "" for the request as a whole, description) of the
    first :data:`MAX_KEPT`, in the order validation met them (the first is the one a
    first-error check names); ``total``: how many there were in all. ``field`` and
    ``message`` are the first's, the message saying how many more:
    "hashes[1].hex: ...; and 2 more".
    """

    def __init__(self, violations: list[tuple[str, str]], total: int):
        field, message = violations[0]
        more = f"; and {total - 1} more" if total > 1 else ""
        super().__init__(message + more, field=field)
        self.first = message
        self.violations = violations
        self.total = total

    def summary(self) -> str:
        """The status message: the first, clipped, then the count of the others (and
        what a layer above appended to ``message``: an Ingest's stored messages)."""
        tail = self.message[len(self.first) :] if self.message.startswith(self.first) else ""
        return clip(f"{self.field or 'request'}: {self.first}") + tail

    def nest(self, prefix: str) -> None:
        """Put every path under ``prefix`` (a stream message: ``stream[2]``)."""
        self.violations = [(_under(prefix, f), d) for f, d in self.violations]
        self.field = self.violations[0][0]


def _under(prefix: str, path: str) -> str:
    return prefix + (f".{path}" if path[:1] not in ("", "[") else path)


def nest(exc: HashmatchError, prefix: str) -> None:
    """Name ``exc``'s field (every one, for an :class:`InvalidRequest`) inside ``prefix``."""
    if isinstance(exc, InvalidRequest):
        exc.nest(prefix)
        return
    exc.field = _under(prefix, field_path(exc))
    exc.index = None


class Violations:
    """Collects one request's bad fields; :meth:`raise_any` refuses it with them all."""

    def __init__(self, keep: int = MAX_KEPT):
        self.keep = keep
        self.kept: list[tuple[str, str]] = []
        self.total = 0

    def __bool__(self) -> bool:
        return self.total > 0

    def add(self, exc: InvalidInput) -> None:
        """Note ``exc`` (each of an :class:`InvalidRequest`'s, counting its unlisted)."""
        if isinstance(exc, InvalidRequest):
            room = max(0, self.keep - len(self.kept))
            self.kept.extend(exc.violations[:room])
            self.total += exc.total
            return
        self.total += 1
        if len(self.kept) < self.keep:
            self.kept.append((field_path(exc), exc.message))

    def attempt(self, check: Callable[..., T], *args, **kwargs) -> T | None:
        """``check(*args, **kwargs)``, or None with its InvalidInput noted."""
        try:
            return check(*args, **kwargs)
        except InvalidInput as exc:
            self.add(exc)
            return None

    def raise_any(self) -> None:
        """Raise :class:`InvalidRequest` if anything was noted."""
        if self.total:
            raise InvalidRequest(list(self.kept), self.total)
