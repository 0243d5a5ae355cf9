"""engine.stats() (a dict) -> StatsResponse, tolerant of keys the engine adds later."""

from __future__ import annotations

import json
from typing import Any

from hashmatch.v1 import admin_pb2


def total_signals(stats: dict[str, Any]) -> int:
    for key in ("total_signals", "signals", "live_signals"):
        value = stats.get(key)
        if isinstance(value, int):
            return value
    return sum(int(t.get("count", 0)) for t in _types(stats))


def _types(stats: dict[str, Any]) -> list[dict[str, Any]]:
    types = stats.get("types") or stats.get("by_type") or {}
    if isinstance(types, dict):
        return [
            {"signal_type": k, **(v if isinstance(v, dict) else {"count": v})}
            for k, v in types.items()
        ]
    return list(types)


def stats_pb(stats: dict[str, Any]) -> admin_pb2.StatsResponse:
    reply = admin_pb2.StatsResponse(
        total_signals=total_signals(stats),
        index_kind=str(stats.get("index_kind", "")),
        memory_bytes=int(stats.get("memory_bytes", 0) or 0),
        snapshot_age_seconds=float(
            stats.get("snapshot_age_seconds")
            if stats.get("snapshot_age_seconds") is not None
            else -1.0
        ),
        details_json=json.dumps(stats, default=str, sort_keys=True),
    )
    for entry in _types(stats):
        shards = entry.get("shards") or entry.get("shard_counts") or []
        reply.types.append(
            admin_pb2.TypeStats(
                signal_type=str(entry.get("signal_type", "")),
                count=int(entry.get("count", 0) or 0),
                shard_counts=[int(s) for s in shards],
            )
        )
    lists = stats.get("lists") or {}
    items = lists.items() if isinstance(lists, dict) else ((x["name"], x) for x in lists)
    for name, value in items:
        count = value.get("count", 0) if isinstance(value, dict) else value
        reply.lists.append(admin_pb2.ListStats(name=str(name), count=int(count or 0)))
    return reply
