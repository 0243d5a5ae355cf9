"""The CSV column fast path (``read_records(...).column_batches``) must store and report
exactly what the per-record path does: same signals and metadata, same counts, same
rejections with the same lines, positions and reasons, on first ingest and re-ingest."""

from __future__ import annotations

import numpy as np
import pytest

from hashmatch.engine.ingest import read_records
from hashmatch.engine.runtime import Engine

HEADER = "signal_type,signal_value,labels,external_id,quality,expires_at\n"


def _hexes(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, 32, dtype=np.uint8).tobytes().hex() for _ in range(n)]


def _csv_text(seed: int = 0, *, label: str = "x") -> str:
    h = _hexes(40, seed)
    md5 = "d41d8cd98f00b204e9800998ecf8427e"
    lines = [
        # plain chunks: uniform labels / quality, varying and non-ASCII external ids
        *(f"pdq,{h[i]},{label},ext-{i},90,\n" for i in range(4)),
        f"pdq,{h[4]},{label},é-ü-{4},90,\n",
        f"pdq,{h[5]},{label},,90,\n",
        f"pdq,{h[6]},{label},x6,90,1900000000\n",
        f"pdq,{h[7]},{label},x7,90,1900000000\n",
        # varying labels and quality (quality mixed: the per-record path decides)
        f"pdq,{h[8]},a;b,x8,80,\n",
        f"pdq,{h[9]},c,x9,,\n",
        f"pdq,{h[10]},,x10,70,\n",
        f"pdq,{h[11]},a b,x11,101,\n",  # quality out of range
        # bad lines of every kind
        f"pdq,{h[12][:-2]},{label},x12,90,\n",  # wrong length
        f"pdq,{h[13][:-1]}z,{label},x13,90,\n",  # not hex
        f"tmk,{h[14]},{label},x14,90,\n",  # unknown type
        f"pdq,{h[15]}\n",  # missing columns
        "\n",  # blank: skipped
        f"pdq,{h[0]},{label},dup,90,\n",  # duplicate of line 2 (another batch)
        f"pdq,{h[16]},{label},x16,q,\n",  # quality not an integer
        f"md5,{md5},{label},x17,,\n",  # another type in the batch
        *(f"pdq,{h[i]},{label},x{i},90,\n" for i in range(18, 26)),
        f"pdq,{h[26]},{label},x26,90,\n",
        f"pdq,{h[26]},{label},x26b,90,\n",  # duplicate within one batch
        # quoted fields: the rest of the file goes through csv.reader
        f'pdq,{h[27]},"q,r",x27,90,\n',
        f'pdq,{h[28]},"multi\nline",x28,90,\n',
        *(f"pdq,{h[i]},{label},x{i},90,\n" for i in range(29, 36)),
        f"pdq,{h[36]},{label}\n",  # short
    ]
    return HEADER + "".join(lines)


def _snapshot(engine: Engine) -> list[tuple]:
    rows = engine.store.signals(limit=10_000)
    return sorted(
        (s.list_name, s.signal_type, s.hash_hex, s.labels, s.external_id, s.quality,
         s.expires_at, s.retracted_at is None)
        for s in rows
    )  # fmt: skip


def _report(report) -> tuple:
    # A duplicate's reason names the first copy by line when both sit in one batch and
    # by signal id when the first was committed already: batch edges differ between
    # the paths (the column path counts parser rejections into its chunks), the rest not.
    rejections = [
        (r.line, r.index, r.reason.split(" (")[0] if "duplicate" in r.reason else r.reason,
         r.field)
        for r in report.rejections
    ]  # fmt: skip
    return (report.added, report.updated, report.unchanged, report.rejected, rejections)


@pytest.mark.parametrize("batch_size", [3, 8, 1000])
@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_column_path_equals_record_path(tmp_path, batch_size, newline):
    path = tmp_path / "list.csv"
    changed = tmp_path / "changed.csv"
    path.write_bytes(_csv_text().replace("\n", newline).encode())
    changed.write_bytes(_csv_text(label="y").replace("\n", newline).encode())
    fast = Engine.open(tmp_path / "fast")
    slow = Engine.open(tmp_path / "slow")
    try:
        for source in (path, path, changed):
            stream = read_records(source)
            assert hasattr(stream, "column_batches")
            a = fast.ingest(stream, list_name="l", batch_size=batch_size)
            b = slow.ingest(list(read_records(source)), list_name="l", batch_size=batch_size)
            assert _report(a) == _report(b)
            assert _snapshot(fast) == _snapshot(slow)
        # the paths really ran: something was added, updated, unchanged and rejected
        assert a.updated > 0 and a.rejected > 0
        assert any("é" in (s[4] or "") for s in _snapshot(fast))
        assert ("q", "r") in {s[3] for s in _snapshot(fast)}
        assert fast.verify_index()["ok"]
    finally:
        fast.close()
        slow.close()


def test_plain_csv_lines_and_counts(tmp_path):
    """A large plain CSV takes the fast path end to end; a bad line far in is named."""
    h = _hexes(2_000, 7)
    lines = [f"pdq,{x},lab,id{i}\n" for i, x in enumerate(h)]
    lines[1500] = "pdq,nothex,lab,bad\n"
    path = tmp_path / "big.csv"
    path.write_text("signal_type,signal_value,labels,external_id\n" + "".join(lines))
    with Engine.open(tmp_path / "d") as engine:
        report = engine.ingest(read_records(path), list_name="l", batch_size=500)
        assert (report.added, report.rejected, report.batches) == (1999, 1, 4)
        assert report.rejections[0].line == 1502
        assert report.rejections[0].index == 1500
        again = engine.ingest(read_records(path), list_name="l", batch_size=700)
        assert (again.added, again.unchanged, again.rejected) == (0, 1999, 1)
        got = engine.store.signals(limit=1)[0]
        assert (got.hash_hex, got.labels, got.external_id) == (h[0], ("lab",), "id0")
