"""An Ingest reply's ``rejections``, bounded across the whole stream.

Why: a non-strict Ingest lists each rejected item (one entry per bad frame of a video,
up to 100 a video), and the engine keeps 10,000 rejected items per message: nothing
bounded the list across the stream's messages. A 2.9 MB stream of 9,200 videos of 101
one-character frames made a 69 MB reply, over gRPC's send and receive limits: the
client got RESOURCE_EXHAUSTED and lost the counts of what was stored, the worst outcome
for a write. The list now stops at :data:`MAX_LISTED` entries or :data:`MAX_BYTES`,
whichever comes first; the counts (``rejected``, ``added``, ...) stay exact.

In order: items listed in full while the list is within half the budget; then one
entry per item, the first of its own (its reason saying how many more it had), so a
flood of long videos still names thousands of items, not 99; once one does not fit,
no later item is listed, and one last entry, field ``signals``, says ``and N more
rejected items not listed (T in all)`` (N and T count items, as ``rejected`` does).
Its index is one past the stream's last item: it names no item.
"""

from __future__ import annotations

from hashmatch.v1 import common_pb2, signals_pb2

#: entries per reply: one message's full report from the engine (it keeps 10,000
#: rejected items a message) still fits when each item has one entry, as before
#: per-frame entries
MAX_LISTED = 10_000
#: serialized bytes of the entries: a quarter of gRPC's default 4 MiB receive limit (the
#: limit of grpcurl and of the Go, Java and C++ clients left at their defaults), so the
#: reply reaches any client, with room for the rest of it; a remembered reply
#: (:mod:`.replies`) costs as little. ~10,000 entries of a typical ~75 bytes
MAX_BYTES = 1024 * 1024
#: the part of the budget items may fill in full (every bad frame of a video); the rest
#: holds one entry per item
DETAIL_SHARE = 0.5
#: the summary entry's field
SUMMARY_FIELD = "signals"
#: room kept for the summary entry (its reason is two numbers and ~45 characters)
_SUMMARY_BYTES = 128
_ENTRY_OVERHEAD = 4  # tag and length prefix of a repeated message field (generous)


class RejectionList:
    """Adds a stream's rejected items to ``reply.rejections`` within the budget.

    ``reply`` may be a remembered reply a repeated ``request_id`` continues
    (:mod:`.replies`): its summary entry, if any, is taken off and made again at
    :meth:`finish`, and its full list stays full."""

    def __init__(self, reply: signals_pb2.IngestResponse):
        self.reply = reply
        entries = reply.rejections
        self.full = bool(entries) and entries[-1].field == SUMMARY_FIELD
        if self.full:
            del entries[-1]
        self.bytes = sum(e.ByteSize() + _ENTRY_OVERHEAD for e in entries)
        self.items = len({e.index for e in entries})  # listed items, each with 1+ entries

    def add(self, index: int, entries: list[tuple[str, str]], total: int) -> None:
        """One rejected item at stream ``index``: ``entries`` (field, reason), of
        ``total`` bad fields in all (more than listed: the last says how many more)."""
        if self.full:
            return
        made = [common_pb2.ItemError(index=index, field=f, reason=r) for f, r in entries]
        if not self._fits(made, DETAIL_SHARE):
            field, reason = entries[0]
            if total > 1:
                reason += f"; and {total - 1} more not listed ({total} in all)"
            made = [common_pb2.ItemError(index=index, field=field, reason=reason)]
            if not self._fits(made, 1.0):
                self.full = True
                return
        self.reply.rejections.extend(made)
        self.bytes += sum(e.ByteSize() + _ENTRY_OVERHEAD for e in made)
        self.items += 1

    def _fits(self, made: list[common_pb2.ItemError], share: float) -> bool:
        """``made`` fits within ``share`` of the budget, the summary's room kept."""
        size = sum(e.ByteSize() + _ENTRY_OVERHEAD for e in made)
        return (
            len(self.reply.rejections) + len(made) < MAX_LISTED * share
            and self.bytes + size <= MAX_BYTES * share - _SUMMARY_BYTES
        )

    def finish(self, items_in_stream: int) -> None:
        """The summary entry, when some rejected items are not listed (the budget's, or
        past the 10,000 a message the engine keeps)."""
        unlisted = self.reply.rejected - self.items
        if unlisted > 0:
            self.reply.rejections.add(
                index=items_in_stream,
                field=SUMMARY_FIELD,
                reason=f"and {unlisted} more rejected items not listed"
                f" ({self.reply.rejected} in all)",
            )
