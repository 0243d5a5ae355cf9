"""Renaming and deleting lists on either side of `hashmatch mirror` (a real hub server
over a real socket, real stores on both sides, the real CLI)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from hashmatch.engine.store import SignalStore
from hashmatch.server.cli import cli
from hashmatch.server.client import signal
from hashmatch.server.testing import running_server

TENANTS = {
    "ops": (["match", "export", "write", "admin"], True),
    "partner": (["match", "export"], False),
    "stranger": (["match", "export"], False),
}
PREFIX = "hub/"
README = Path(__file__).resolve().parents[1] / "README.md"


def _codes(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [rng.bytes(32).hex() for _ in range(n)]


def _cli(*args: str, code: int = 0) -> str:
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == code, result.output
    return result.output


def _mirror_output(ts, tenant: str, local, *extra: str) -> str:
    return _cli("mirror", "--server", ts.target, "--token", ts.tokens[tenant], "--prefix",
                PREFIX, "--data-dir", str(local), "--json", *extra)  # fmt: skip


def _mirror(ts, tenant: str, local, *extra: str) -> dict:
    return _summary(_mirror_output(ts, tenant, local, *extra))


def _summary(out: str) -> dict:
    (summary,) = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return summary


def _local(local) -> dict[str, tuple[bool, int, int]]:
    """Local list -> (enabled, live, retracted)."""
    store = SignalStore(local / "store.sqlite", create=False)
    try:
        return {i.name: (i.enabled, i.signal_count, i.retracted_count) for i in store.lists()}
    finally:
        store.close()


def _refused_run(local, client, server: str, match: str, **options) -> None:
    """One mirror pass in this process through ``client`` (a wrapper that makes
    something happen during the pass): it must be refused with a Conflict matching
    ``match``."""
    from hashmatch.engine.errors import Conflict
    from hashmatch.engine.mirror import mirror

    store = SignalStore(local / "store.sqlite", create=True)
    try:
        with pytest.raises(Conflict, match=match):
            mirror(store, client, server=server, prefix=PREFIX, **options)
    finally:
        store.close()


def test_a_mirrors_list_is_not_renamed_locally_and_the_mirror_goes_on(tmp_path):
    local = tmp_path / "local"
    with running_server(tmp_path / "hub", tenants=TENANTS) as ts:
        ops = ts.client("ops")
        ops.ingest("shared", [signal("pdq", c) for c in _codes(3, seed=1)])
        _mirror(ts, "ops", local)
        refused = _cli("lists", "rename", PREFIX + "shared", "mine", "--data-dir", str(local),
                       code=1)  # fmt: skip
        assert "is the mirror 'hub/''s copy of the hub's 'shared'" in refused
        assert "another --prefix" in refused
        ops.ingest("shared", [signal("pdq", c) for c in _codes(1, seed=2)])
        assert _mirror(ts, "ops", local)["added"] == 1
        assert _local(local) == {PREFIX + "shared": (True, 4, 0)}


def _shared_with_partner(ts, seed: int):
    """The hub's store, its list 'shared' holding 3 signals and shared with 'partner'."""
    ts.client("ops").ingest("shared", [signal("pdq", c) for c in _codes(3, seed=seed)])
    hub = ts.engine.store
    hub.create_tenant("partner")
    hub.grant("partner", "shared")
    return hub


def test_a_list_renamed_on_the_hub_moves_to_the_new_local_name(tmp_path):
    """The hub's list uid says the new name is the list the mirror copies: the copy is
    renamed (no resync, no second copy under the new name), its signals still mapped
    (a retraction on the hub reaches it), and a --list selection follows the rename."""
    local = tmp_path / "local"
    with running_server(tmp_path / "hub", tenants=TENANTS) as ts:
        hub = _shared_with_partner(ts, seed=3)
        _mirror(ts, "partner", local, "--list", "shared")
        hub.rename_list("shared", "renamed")
        run = _mirror(ts, "partner", local)
        assert not run["resync"] and run["lists_new"] == []
        assert run["lists_renamed"] == [[PREFIX + "shared", PREFIX + "renamed"]]
        assert _local(local) == {PREFIX + "renamed": (True, 3, 0)}
        (first,) = [c for r in ts.client("ops").changes(0) for c in r.changes][:1]
        ts.client("ops").retract("renamed", signal_ids=[first.signal_id])
        assert _mirror(ts, "partner", local, "--list", "renamed")["retracted"] == 1
        assert _local(local) == {PREFIX + "renamed": (True, 2, 1)}


class _RenamesAfterListing:
    """The partner's real client, but the hub renames 'shared' right after the pass
    reads ListHashLists: the rename lands between the listing and the Changes stream."""

    def __init__(self, client, hub: SignalStore):
        self.client, self.hub = client, hub

    def list_hash_lists(self, **kw):
        listing = self.client.list_hash_lists(**kw)
        self.hub.rename_list("shared", "renamed")
        return listing

    def __getattr__(self, name: str):
        return getattr(self.client, name)


def test_a_hub_rename_during_a_pass_makes_no_second_copy(tmp_path):
    """Soak finding: the page's changes came named 'renamed', a list the pass's listing
    did not show, so a second copy 'hub/renamed' was made (no uid) and took the new
    signal; the next pass found the name claimed, so the real copy stayed 'hub/shared'
    and was disabled as no longer shared: the list stopped matching until a --resync.
    Refused (the change's uid names a copy under another name), the next pass renames
    the copy and applies the page."""

    local = tmp_path / "local"
    with running_server(tmp_path / "hub", tenants=TENANTS) as ts:
        hub = _shared_with_partner(ts, seed=5)
        _mirror(ts, "partner", local)
        ts.client("ops").ingest("shared", [signal("pdq", c) for c in _codes(1, seed=6)])
        client = _RenamesAfterListing(ts.client("partner"), hub)
        _refused_run(local, client, ts.target, "during this run; nothing of this page was")
        run = _mirror(ts, "partner", local)
        assert run["lists_renamed"] == [[PREFIX + "shared", PREFIX + "renamed"]]
        assert _local(local) == {PREFIX + "renamed": (True, 4, 0)}


def test_follow_retries_a_pass_refused_for_a_hub_rename():
    """`mirror --follow` exited on that refusal, and mirroring stopped until restarted."""
    import click

    from hashmatch.server.commands.mirror import _transient

    refused = (
        "h:1 renamed its list 'b', or gave that name to another list, during this run;"
        " nothing of this page was written: re-run (it follows the rename)"
    )
    assert _transient(click.ClickException(refused))


def test_a_hub_without_list_uids_renames_by_a_resync(tmp_path):
    """A hub older than list uids (here: its uids removed, so it sends none): the new
    name is a list the mirror never wrote, so the run resyncs, copies its signals under
    the new name and retracts (and disables) the old copy, as before uids."""
    local = tmp_path / "local"
    with running_server(tmp_path / "hub", tenants=TENANTS) as ts:
        hub = _shared_with_partner(ts, seed=3)
        with hub.transaction() as conn:
            conn.execute("DROP TRIGGER hash_lists_uid")
            conn.execute("DELETE FROM list_uids")
        _mirror(ts, "partner", local)
        hub.rename_list("shared", "renamed")
        run = _mirror(ts, "partner", local)
        assert run["lists_new"] == ["renamed"] and run["resync"]
        assert _local(local) == {PREFIX + "shared": (False, 0, 3), PREFIX + "renamed": (True, 3, 0)}


def test_a_list_deleted_on_the_hub(tmp_path):
    """A hub's `lists delete` (agreement ended, legal duty) deletes the mirrors' copies,
    for an all-lists token and for a partner's too: the partner's grant went with the
    list, so it was shown neither the list nor its removals, and its copy was only
    disabled, still holding every signal. A list the hub merely stops sharing is still
    disabled, its copy kept; a tenant the deleted list was not shared with is not told
    of it."""
    local, other = tmp_path / "local", tmp_path / "other"
    with running_server(tmp_path / "hub", tenants=TENANTS) as ts:
        hub = _shared_with_partner(ts, seed=4)
        ts.client("ops").ingest("kept", [signal("pdq", c) for c in _codes(2, seed=9)])
        hub.grant("partner", "kept")
        hub.create_tenant("stranger")
        _mirror(ts, "ops", local)
        _mirror(ts, "partner", other)
        _cli("index", "snapshot", "--data-dir", str(other))
        hub.delete_list("shared")
        hub.revoke("partner", "kept")
        run = _mirror(ts, "ops", local)
        assert run["lists_purged"] == [PREFIX + "shared"] and run["retracted"] == 0
        assert _local(local) == {PREFIX + "kept": (True, 2, 0)}
        out = _mirror_output(ts, "partner", other)
        assert "1 index snapshot(s)" in out and "were taken before this delete" in out
        run = _summary(out)
        assert run["lists_purged"] == [PREFIX + "shared"]
        assert run["lists_disabled"] == [PREFIX + "kept"]
        assert _local(other) == {PREFIX + "kept": (False, 2, 0)}
        store = SignalStore(other / "store.sqlite", create=False)
        try:  # purged, not retracted: no row of the hub's deleted list is left
            (rows,) = store.conn().execute("SELECT COUNT(*) FROM signals").fetchone()
            assert rows == 2
        finally:
            store.close()
        run = _mirror(ts, "partner", other)
        assert run["added"] == 0 and not run["lists_purged"]
        assert _local(other) == {PREFIX + "kept": (False, 2, 0)}
        shown = {
            tenant: [d.list_name for r in ts.client(tenant).changes(0) for d in r.deleted_lists]
            for tenant in ("ops", "partner", "stranger")
        }
        assert shown == {"ops": ["shared"], "partner": ["shared"], "stranger": []}


def test_a_mirrors_list_deleted_locally_comes_back_while_the_hub_shares_it(tmp_path):
    local = tmp_path / "local"
    with running_server(tmp_path / "hub", tenants=TENANTS) as ts:
        ts.client("ops").ingest("shared", [signal("pdq", c) for c in _codes(2, seed=5)])
        _mirror(ts, "ops", local)
        out = _cli("lists", "delete", PREFIX + "shared", "--yes", "--data-dir", str(local))
        assert _local(local) == {}
        # the note points at a README paragraph that exists ('Deleting a list' did not)
        (title,) = re.findall(r"see README: ([^)]+)\)", out)
        assert f"**{title}.**" in README.read_text()
        run = _mirror(ts, "ops", local)
        assert run["lists_new"] == ["shared"] and run["added"] == 2
        assert _local(local) == {PREFIX + "shared": (True, 2, 0)}


class _DuringRun:
    """The hub's client, but ``action`` runs before page ``on_call`` of a run is read:
    something done elsewhere while the mirror is between pages."""

    def __init__(self, client, action, on_call: int = 2):
        self._client, self._action, self._calls, self._on_call = client, action, 0, on_call

    def __getattr__(self, attr):
        return getattr(self._client, attr)

    def changes(self, *args, **kwargs):
        self._calls += 1
        if self._calls == self._on_call:
            self._action()
        return self._client.changes(*args, **kwargs)


def _DeletingDuringRun(client, local, name: str, on_call: int = 2) -> _DuringRun:
    """The mirror's local list deleted by another process (another store connection)
    before page ``on_call``: a `lists delete` run while the mirror is between pages."""

    def delete() -> None:
        store = SignalStore(local / "store.sqlite", create=False)
        try:
            store.delete_list(name)
        finally:
            store.close()

    return _DuringRun(client, delete, on_call)


def test_a_local_delete_during_a_mirror_run_is_mended_by_the_next_run(tmp_path):
    """The run's later pages created the list again with only their own signals, and the
    next run, finding the list known, never re-read the earlier ones: an incomplete copy
    until a --resync. Now the delete resets the mirror's cursor (a full resync is due):
    the overlapping run stops at its next page, and the next run copies the list whole."""

    local = tmp_path / "local"
    with running_server(tmp_path / "hub", tenants=TENANTS) as ts:
        ops = ts.client("ops")
        for seed in (6, 7, 8):  # three log entries: three pages of 2
            ops.ingest("shared", [signal("pdq", c) for c in _codes(2, seed=seed)])
        client = _DeletingDuringRun(ops, local, PREFIX + "shared")
        _refused_run(local, client, ts.target, r"deleted locally during this run.*next run"
                     " resyncs", page_size=2)  # fmt: skip
        run = _mirror(ts, "ops", local)
        assert _local(local) == {PREFIX + "shared": (True, 6, 0)}
        assert run["resync"]
        assert not _mirror(ts, "ops", local)["resync"]  # the marker is cleared by the resync


def test_a_list_deleted_then_created_again_on_the_hub_is_copied_anew(tmp_path):
    """The delete and the new list's signals in one page: the old copy is deleted first,
    then the new list copied (not the other way round, which would delete the new one)."""
    local = tmp_path / "local"
    with running_server(tmp_path / "hub", tenants=TENANTS) as ts:
        hub = _shared_with_partner(ts, seed=10)
        _mirror(ts, "partner", local)
        hub.delete_list("shared")
        fresh = _codes(2, seed=11)
        ts.client("ops").ingest("shared", [signal("pdq", c) for c in fresh])
        hub.grant("partner", "shared")
        run = _mirror(ts, "partner", local)
        assert run["lists_purged"] == [PREFIX + "shared"] and run["added"] == 2
        assert run["lists_renamed"] == run["lists_disabled"] == []
        store = SignalStore(local / "store.sqlite", create=False)
        try:
            assert sorted(s.hash_hex for s in store.iter_signals(PREFIX + "shared")) == sorted(
                fresh
            )
            assert store.get_list(PREFIX + "shared").enabled
        finally:
            store.close()


class _StopAfterFirstPage:
    """The hub's client, but the second page read fails: a run killed part way. (A
    page is read with since_signal_id; a resync's check of where it read deletes to,
    one change at that position, is not a page.)"""

    def __init__(self, client):
        self._client, self._calls = client, 0

    def __getattr__(self, attr):
        return getattr(self._client, attr)

    def changes(self, *args, **kwargs):
        self._calls += "since_signal_id" in kwargs
        if self._calls == 2:
            raise ConnectionError("killed")
        return self._client.changes(*args, **kwargs)


def test_a_local_delete_before_a_killed_resync_goes_on_is_mended_too(tmp_path):
    """A resync killed part way goes on from its cursor; its first page skipped the
    cursor check (a resync from 0 has to), so a delete between the run's start and that
    page was written over: the list came back from the later pages only."""
    from hashmatch.engine.errors import Conflict
    from hashmatch.engine.mirror import mirror

    local = tmp_path / "local"
    with running_server(tmp_path / "hub", tenants=TENANTS) as ts:
        ops = ts.client("ops")
        for seed in (12, 13, 14):
            ops.ingest("shared", [signal("pdq", c) for c in _codes(2, seed=seed)])
        _mirror(ts, "ops", local)
        store = SignalStore(local / "store.sqlite", create=False)
        try:
            with pytest.raises(ConnectionError):
                mirror(store, _StopAfterFirstPage(ops), server=ts.target, prefix=PREFIX,
                       page_size=2, resync=True)  # fmt: skip
            client = _DeletingDuringRun(ops, local, PREFIX + "shared", on_call=1)
            with pytest.raises(Conflict, match="deleted locally during this run"):
                mirror(store, client, server=ts.target, prefix=PREFIX, page_size=2)
        finally:
            store.close()
        assert _mirror(ts, "ops", local)["resync"]
        assert _local(local) == {PREFIX + "shared": (True, 6, 0)}


def test_a_resync_keeps_the_copy_of_a_list_the_hub_created_again_after_a_delete(tmp_path):
    """A resync reads the hub's log from 0, so it is told again of every delete: one this
    mirror already applied deleted the current copy (the list the hub created again
    under the name) and copied it anew, losing what was set on it locally (grants to
    local tenants); a resync killed part way and gone on, too. A mirror that had not
    read the delete yet still deletes its old copy in a resync."""
    from hashmatch.engine.mirror import mirror

    local, behind = tmp_path / "local", tmp_path / "behind"
    with running_server(tmp_path / "hub", tenants=TENANTS) as ts:
        hub = _shared_with_partner(ts, seed=15)
        _mirror(ts, "partner", local)
        _mirror(ts, "partner", behind)
        hub.delete_list("shared")
        ts.client("ops").ingest("shared", [signal("pdq", c) for c in _codes(2, seed=16)])
        for seed in (17, 18):  # entries after the delete: pages of a resync after it
            ts.client("ops").ingest("other", [signal("pdq", c) for c in _codes(2, seed=seed)])
        hub.grant("partner", "shared")
        hub.grant("partner", "other")
        assert _mirror(ts, "partner", local)["lists_purged"] == [PREFIX + "shared"]
        store = SignalStore(local / "store.sqlite", create=False)
        try:
            store.create_tenant("analyst")
            store.grant("analyst", PREFIX + "shared")
            with pytest.raises(ConnectionError):  # killed after its first page
                mirror(store, _StopAfterFirstPage(ts.client("partner")), server=ts.target,
                       prefix=PREFIX, page_size=2, resync=True)  # fmt: skip
            run = mirror(store, ts.client("partner"), server=ts.target, prefix=PREFIX,
                         page_size=2)  # fmt: skip
            assert run.resync and run.lists_purged == []
            assert store.get_tenant("analyst").reads == (PREFIX + "shared",)
        finally:
            store.close()
        assert _mirror(ts, "partner", local, "--resync")["lists_purged"] == []
        assert _local(local) == {PREFIX + "shared": (True, 2, 0), PREFIX + "other": (True, 4, 0)}
        run = _mirror(ts, "partner", behind, "--resync")
        assert run["lists_purged"] == [PREFIX + "shared"]
        assert _local(behind) == {PREFIX + "shared": (True, 2, 0), PREFIX + "other": (True, 4, 0)}


def _rows(local) -> int:
    """Signal rows in the local store, retracted ones included."""
    store = SignalStore(local / "store.sqlite", create=False)
    try:
        return store.conn().execute("SELECT COUNT(*) FROM signals").fetchone()[0]
    finally:
        store.close()


def test_a_list_renamed_then_deleted_on_the_hub_leaves_no_copy(tmp_path):
    """The hub renames a shared list, then deletes it: its signals were left on the
    partner's side in the copy under the old name (retracted and disabled by the
    rename's resync), which the delete, naming only the new name, never reached. Now
    the list's uid names it in the feed: the rename renames the copy (no resync, no
    second copy), and the delete purges every copy of that list."""
    local = tmp_path / "local"
    with running_server(tmp_path / "hub", tenants=TENANTS) as ts:
        hub = _shared_with_partner(ts, seed=20)
        _mirror(ts, "partner", local)
        hub.rename_list("shared", "renamed")
        run = _mirror(ts, "partner", local)
        assert _local(local) == {PREFIX + "renamed": (True, 3, 0)} and not run["resync"]
        ts.client("ops").ingest("renamed", [signal("pdq", c) for c in _codes(1, seed=21)])
        assert _mirror(ts, "partner", local)["added"] == 1
        hub.delete_list("renamed")
        assert _mirror(ts, "partner", local)["lists_purged"] == [PREFIX + "renamed"]
        assert _local(local) == {} and _rows(local) == 0


def test_a_list_deleted_and_its_name_given_to_another_keeps_the_others_copy(tmp_path):
    """The hub deletes 'a' and renames 'b' to 'a'. By name, the delete purged the local
    copy named 'a' after 'b's signals had been written into it, and later changes made
    it again holding those alone (the rest of 'b' was left in a disabled 'hub/b').
    By uid: 'a's copy is set aside and purged, 'b's is renamed and kept whole, and a
    --resync afterwards purges nothing."""
    local = tmp_path / "local"
    with running_server(tmp_path / "hub", tenants=TENANTS) as ts:
        ops = ts.client("ops")
        hub = _shared_with_partner(ts, seed=22)  # 'shared' plays 'a'
        ops.ingest("b", [signal("pdq", c) for c in _codes(2, seed=23)])
        hub.grant("partner", "b")
        _mirror(ts, "partner", local)
        hub.delete_list("shared")
        hub.rename_list("b", "shared")
        ops.ingest("shared", [signal("pdq", c) for c in _codes(1, seed=24)])
        run = _mirror(ts, "partner", local)
        assert run["lists_purged"] == [PREFIX + "shared"]
        assert run["lists_renamed"] == [[PREFIX + "b", PREFIX + "shared"]]
        assert _local(local) == {PREFIX + "shared": (True, 3, 0)} and _rows(local) == 3
        run = _mirror(ts, "partner", local, "--resync")
        assert run["lists_purged"] == [] and run["retracted"] == 0
        assert _local(local) == {PREFIX + "shared": (True, 3, 0)}
        hub.delete_list("shared")
        assert _mirror(ts, "partner", local)["lists_purged"] == [PREFIX + "shared"]
        assert _rows(local) == 0


def test_lists_whose_names_the_hub_swapped_swap_their_copies(tmp_path):
    """Each copy takes its list's new name, through a temporary one (both names are
    taken), and a change of each list after the swap lands in its own copy."""
    local = tmp_path / "local"
    with running_server(tmp_path / "hub", tenants=TENANTS) as ts:
        ops = ts.client("ops")
        ops.ingest("a", [signal("pdq", c) for c in _codes(1, seed=25)])
        ops.ingest("b", [signal("pdq", c) for c in _codes(2, seed=26)])
        _mirror(ts, "ops", local)
        hub = ts.engine.store
        hub.rename_list("a", "tmp")
        hub.rename_list("b", "a")
        hub.rename_list("tmp", "b")
        ops.ingest("b", [signal("pdq", c) for c in _codes(1, seed=27)])
        run = _mirror(ts, "ops", local)
        assert not run["resync"] and run["added"] == 1
        assert run["lists_renamed"] == [[PREFIX + "a", PREFIX + "b"], [PREFIX + "b", PREFIX + "a"]]
        assert _local(local) == {PREFIX + "a": (True, 2, 0), PREFIX + "b": (True, 2, 0)}
        hub.delete_list("b")
        assert _mirror(ts, "ops", local)["lists_purged"] == [PREFIX + "b"]
        assert _local(local) == {PREFIX + "a": (True, 2, 0)}


def test_a_codename_renamed_to_a_shared_name_reaches_the_partner_by_its_new_name_only(tmp_path):
    """A list the partner was never shared (an admin's codename), renamed and then shared:
    the partner's mirror copies it as a new list; no reply it is sent names the codename,
    and its uid is one the partner was never shown."""
    local = tmp_path / "local"
    with running_server(tmp_path / "hub", tenants=TENANTS) as ts:
        hub = _shared_with_partner(ts, seed=28)
        ts.client("ops").ingest("codename", [signal("pdq", c) for c in _codes(2, seed=29)])
        partner = ts.client("partner")
        _mirror(ts, "partner", local)
        seen = {h.uid for h in partner.list_hash_lists().lists}
        hub.rename_list("codename", "public")
        hub.grant("partner", "public")
        run = _mirror(ts, "partner", local)
        assert run["lists_new"] == ["public"] and run["lists_renamed"] == []
        listing = partner.list_hash_lists()
        replies = [listing, *partner.changes(0)]
        assert not any(b"codename" in r.SerializeToString() for r in replies)
        (public,) = [h.uid for h in listing.lists if h.name == "public"]
        assert public and public not in seen


def test_a_list_renamed_on_the_hub_during_a_run_is_renamed_by_the_next_run(tmp_path):
    """The rename lands between two pages of a run: the later pages name the list by its
    new name. They made a second copy holding only their signals, and the next runs,
    finding both names known, never mended it (the old copy disabled, holding the
    rest). Now the page naming the list's uid under a name its copy does not have stops
    the run, and the next run renames the copy and goes on: one copy, whole."""

    local = tmp_path / "local"
    with running_server(tmp_path / "hub", tenants=TENANTS) as ts:
        ops = ts.client("ops")
        for seed in (30, 31, 32):  # three log entries: three pages of 2
            ops.ingest("shared", [signal("pdq", c) for c in _codes(2, seed=seed)])
        client = _DuringRun(ops, lambda: ts.engine.store.rename_list("shared", "renamed"))
        _refused_run(local, client, ts.target, r"renamed its list 'renamed'.*re-run", page_size=2)
        run = _mirror(ts, "ops", local)
        assert run["lists_renamed"] == [[PREFIX + "shared", PREFIX + "renamed"]]
        assert _local(local) == {PREFIX + "renamed": (True, 6, 0)}


def test_a_selected_list_renamed_past_the_name_limit_is_refused_naming_the_way_out(tmp_path):
    """Shared names are checked against the 200-character limit before anything is
    written, but only those of the --list selection, and the new name of a selected
    list is not in it yet: the rename failed with the store's bare "invalid list_name
    name 'hub/xxx...'". Now it is refused as the other names are, nothing renamed."""
    local = tmp_path / "local"
    with running_server(tmp_path / "hub", tenants=TENANTS) as ts:
        hub = _shared_with_partner(ts, seed=33)
        _mirror(ts, "partner", local, "--list", "shared")
        hub.rename_list("shared", "x" * 199)
        out = _cli("mirror", "--server", ts.target, "--token", ts.tokens["partner"], "--prefix",
                   PREFIX, "--data-dir", str(local), code=1)  # fmt: skip
        assert "shares list 'xxx" in out and "under a shorter --prefix" in out
        assert _local(local) == {PREFIX + "shared": (True, 3, 0)}


def test_a_resync_after_the_hub_was_restored_applies_the_deletes_of_its_new_history(tmp_path):
    """The mirror read the hub's log to change 7; the hub was restored from a backup of
    change 2, and a list was deleted there at change 3. The resync its refused cursor
    asks for skipped every delete up to 7 as "already applied", so the deleted list's
    copy stayed (disabled, its signals retracted but stored). Now the mark is kept with
    the digest of its change and forgotten when the hub's log no longer has it."""
    import shutil

    from hashmatch.engine.backup import backup_store

    hub_dir, local = tmp_path / "hub", tmp_path / "local"
    with running_server(hub_dir, tenants=TENANTS) as ts:
        ops = ts.client("ops")
        ops.ingest("x", [signal("pdq", c) for c in _codes(2, seed=34)])
        ops.ingest("kept", [signal("pdq", c) for c in _codes(1, seed=35)])
        backup_store(ts.engine.store, tmp_path / "old.sqlite")
        for seed in range(36, 41):
            ops.ingest("kept", [signal("pdq", c) for c in _codes(1, seed=seed)])
        assert _mirror(ts, "ops", local)["head"] == 7
    shutil.rmtree(hub_dir / "snapshots", ignore_errors=True)
    for suffix in ("-wal", "-shm"):
        (hub_dir / f"store.sqlite{suffix}").unlink(missing_ok=True)
    shutil.copy(tmp_path / "old.sqlite", hub_dir / "store.sqlite")
    with running_server(hub_dir, tenants=TENANTS) as ts:
        ts.engine.store.delete_list("x")
        for seed in range(41, 49):
            ts.client("ops").ingest("kept", [signal("pdq", c) for c in _codes(1, seed=seed)])
        refused = _cli("mirror", "--server", ts.target, "--token", ts.tokens["ops"], "--prefix",
                       PREFIX, "--data-dir", str(local), code=1)  # fmt: skip
        assert "no longer holds the history" in refused and "--resync" in refused
        run = _mirror(ts, "ops", local, "--resync")
        assert run["lists_purged"] == [PREFIX + "x"]
        assert _local(local) == {PREFIX + "kept": (True, 9, 5)} and _rows(local) == 14
        assert _mirror(ts, "ops", local, "--resync")["lists_purged"] == []


def test_a_copy_set_aside_does_not_take_the_name_of_a_list_the_hub_shares(tmp_path):
    """The partner's 'a' is revoked and its name given to 'b', while the hub shares a
    list named as the set-aside copy would be ('a (retired N)'): the copy took that
    name, and the run stopped at that list's changes ("renamed during this run")."""
    local = tmp_path / "local"
    with running_server(tmp_path / "hub", tenants=TENANTS) as ts:
        ops, hub = ts.client("ops"), ts.engine.store
        hub.create_tenant("partner")
        for seed, name in ((36, "a"), (37, "b")):
            ops.ingest(name, [signal("pdq", c) for c in _codes(2, seed=seed)])
            hub.grant("partner", name)
        _mirror(ts, "partner", local)
        store = SignalStore(local / "store.sqlite", create=False)
        try:
            mark = f" (retired {store.get_list(PREFIX + 'a').id})"
        finally:
            store.close()
        hub.revoke("partner", "a")
        hub.rename_list("a", "a-old")
        hub.rename_list("b", "a")
        ops.ingest("a" + mark, [signal("pdq", c) for c in _codes(1, seed=38)])
        hub.grant("partner", "a" + mark)
        run = _mirror(ts, "partner", local)
        ((old, retired), (b, a)) = run["lists_renamed"]
        assert (old, b, a) == (PREFIX + "a", PREFIX + "b", PREFIX + "a")
        assert retired.startswith(PREFIX + "a" + mark + " ")
        assert _local(local) == {PREFIX + "a": (True, 2, 0), PREFIX + "a" + mark: (True, 1, 0),
                                 retired: (False, 0, 2)}  # fmt: skip
