"""The store verbs of the ``hashmatch`` CLI, run through click against a real data dir."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from hashmatch.server.cli import cli

H0 = "f8f8f0cee0f4a84f06370a22038f63f0b36e2ed596621e1d33e6b39c4e9c9b22"
H1 = "1111111111111111111111111111111111111111111111111111111111111111"


@pytest.fixture
def run(tmp_path):
    runner = CliRunner()
    env = {"HASHMATCH_DATA_DIR": str(tmp_path / "data")}

    def invoke(*args: str, ok: bool = True):
        result = runner.invoke(cli, list(args), env=env, catch_exceptions=False)
        if ok:
            assert result.exit_code == 0, result.output
        return result

    return invoke


def test_lists_ingest_match_retract_restore(run, tmp_path):
    out = run("lists", "create", "partner", "--owner", "Partner A", "--label", "csam").output
    assert "created list 'partner'" in out
    csv_file = tmp_path / "in.csv"
    csv_file.write_text(
        f"signal_type,signal_value,labels,external_id\npdq,{H0},csam,e0\npdq,{H1},,e1\npdq,zz,,\n"
    )
    out = run("ingest", str(csv_file), "--list", "partner").output
    assert "added 2, updated 0, unchanged 0, rejected 1 into 'partner'" in out
    assert "line 4: pdq hash must be 64 hex characters, got 2" in out
    again = run("ingest", str(csv_file), "--list", "partner").output
    assert "added 0, updated 0, unchanged 2, rejected 1" in again

    out = run("lists", "ls").output
    assert "partner" in out and "2 live signal(s), 0 expired" in out

    out = run("match", f"pdq:{H0}").output
    assert "1 match(es)" in out and "ext=e0" in out and "labels=csam" in out
    data = json.loads(run("match", H0, "--json").output)
    assert data[0]["matches"][0]["external_id"] == "e0"

    assert (
        "retracted 1 signal(s)" in run("retract", "--list", "partner", H0, "--reason", "x").output
    )
    assert "0 match(es)" in run("match", H0).output
    typo = "22" * 32
    missed = run("retract", "--list", "partner", typo, "--id", "999", "--external-id", "nope")
    assert "retracted 0 signal(s) in 'partner' (3 requested)" in missed.stdout
    assert f"not in 'partner': pdq:{typo}, id 999, external id nope" in missed.stderr
    assert H0 in run("retracted").output
    assert "restored 1 signal(s)" in run("restore", "--list", "partner", H0).output
    assert "1 match(es)" in run("match", H0).output

    assert "disabled list 'partner'" in run("lists", "disable", "partner").output
    assert "0 match(es)" in run("match", H0).output
    run("lists", "enable", "partner")

    actions = run("audit").output
    assert "ingest" in actions and "retract" in actions and "list.disable" in actions


def test_strict_ingest_exits_nonzero_and_writes_nothing(run, tmp_path):
    f = tmp_path / "h.txt"
    f.write_text(f"{H0}\nnot-a-hash\n")
    result = run("ingest", str(f), "--list", "l", "--type", "pdq", "--strict", ok=False)
    assert result.exit_code == 1
    assert "REFUSED (strict)" in result.output
    assert "0 list(s), 0 live signal(s), 0 expired" in run("lists", "ls").output


def test_ingest_where_no_line_is_good_exits_nonzero_and_reports_every_file(run, tmp_path):
    bad, good = tmp_path / "bad.txt", tmp_path / "good.txt"
    bad.write_text("not-a-hash\nzz\n")
    good.write_text(f"{H0}\n")
    result = run("ingest", str(bad), str(good), "--list", "l", "--type", "pdq", ok=False)
    assert result.exit_code == 1
    assert "bad.txt: added 0, updated 0, unchanged 0, rejected 2" in result.output
    assert "good.txt: added 1" in result.output  # the next file still runs and reports
    ok = run("ingest", str(good), "--list", "l", "--type", "pdq")  # all unchanged: fine
    assert "unchanged 1" in ok.output


def test_index_rebuild_verify_stats(run, tmp_path):
    f = tmp_path / "h.txt"
    f.write_text(f"{H0}\n{H1}\n")
    run("ingest", str(f), "--list", "l", "--type", "pdq")
    out = run("index", "rebuild").output
    assert "rebuilt 2 signal(s)" in out and "snapshot written" in out
    assert "index verify: ok" in run("index", "verify").output
    stats = json.loads(run("index", "stats", "--json").output)
    assert stats["total_signals"] == 2 and stats["load"]["source"] == "snapshot"


def test_tenants_see_only_shared_lists(run, tmp_path):
    f = tmp_path / "h.txt"
    f.write_text(f"{H0}\n")
    run("ingest", str(f), "--list", "shared", "--type", "pdq")
    run("ingest", str(f), "--list", "private", "--type", "pdq")
    run("tenants", "create", "acme")
    assert "shared 'shared' with 'acme' (read)" in run("tenants", "grant", "acme", "shared").output
    out = run("match", H0, "--tenant", "acme", "--json").output
    assert [m["list_name"] for m in json.loads(out)[0]["matches"]] == ["shared"]
    assert "acme: reads shared" in run("tenants", "ls").output
    assert "was not granted 'private'" in run("tenants", "revoke", "acme", "private").output
    assert "revoked 'shared' from 'acme'" in run("tenants", "revoke", "acme", "shared").output
    # an admin tenant sees and writes every list (README): `ls` said "reads -; writes -"
    run("tenants", "create", "ops", "--admin")
    out = run("tenants", "ls").output
    assert "ops (admin): reads every list; writes every list" in out, out
    out = run("match", H0, "--tenant", "ops", "--json").output
    assert sorted(m["list_name"] for m in json.loads(out)[0]["matches"]) == ["private", "shared"]


def test_grant_never_takes_write_away_and_revoke_write_only_does(run):
    """`tenants grant acme L` without --write, run to make sure acme reads L, silently
    downgraded acme's read+write grant (its next ingest refused)."""
    run("lists", "create", "shared")
    run("tenants", "create", "acme")
    assert "(read+write)" in run("tenants", "grant", "acme", "shared", "--write").output
    again = run("tenants", "grant", "acme", "shared").output
    assert "(read+write; it already wrote it: `hashmatch tenants revoke --write-only`" in again
    assert "acme: reads shared; writes shared" in run("tenants", "ls").output
    down = run("tenants", "revoke", "acme", "shared", "--write-only").output
    assert "'acme' can no longer write 'shared'; it still reads it" in down
    assert "acme: reads shared; writes -" in run("tenants", "ls").output
    assert "nothing to revoke" in run("tenants", "revoke", "acme", "shared", "--write-only").output
    assert "(read)" in run("tenants", "grant", "acme", "shared").output
    assert "acme: reads shared; writes -" in run("tenants", "ls").output


def test_ingest_of_a_missing_file_creates_nothing(run, tmp_path):
    result = run("ingest", str(tmp_path / "nope.csv"), "--list", "x", ok=False)
    assert result.exit_code == 2 and "does not exist" in result.output
    assert not (tmp_path / "data").exists()  # no store, no empty list


def test_read_verbs_do_not_create_a_store(run):
    for verb in (["match", "pdq:" + "0" * 64], ["lists", "ls"], ["retracted"], ["audit"]):
        result = run(*verb, ok=False)
        assert result.exit_code == 1 and "no hashmatch store" in result.output


def test_errors_are_one_line_messages(run):
    run("lists", "create", "x")
    result = run("match", "pdq:abc", ok=False)
    assert result.exit_code == 1 and "64 hex characters" in result.output
    result = run("match", "photos/astronut.jpg", ok=False)  # a typo, not a hash
    assert result.exit_code == 1 and "photos/astronut.jpg: no such file" in result.output
    result = run("lists", "disable", "nope", ok=False)
    assert result.exit_code == 1 and "no hash list named 'nope'" in result.output


def test_match_of_a_fifo_device_or_directory_says_what_it_is(run, tmp_path):
    """A query that exists but is no regular file fell through to the hash parser: a
    FIFO or /dev/zero was "no such file", a directory "64 hex characters". Never
    opened (a FIFO's open blocks until a writer comes)."""
    import os
    import socket

    run("lists", "create", "x")
    os.mkfifo(tmp_path / "pipe.jpg")
    (tmp_path / "photos").mkdir()
    os.symlink("/dev/zero", tmp_path / "zero.jpg")
    os.symlink(tmp_path / "gone.jpg", tmp_path / "dangling.jpg")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp_path / "s.jpg"))
    for name, what in [
        ("pipe.jpg", "not a regular file but a FIFO"),
        ("photos", "not a regular file but a directory (`hashmatch scan` walks directories)"),
        ("zero.jpg", "not a regular file but a character device"),
        ("s.jpg", "not a regular file but a socket"),
        ("dangling.jpg", "broken symbolic link"),
    ]:
        result = run("match", str(tmp_path / name), ok=False)
        assert result.exit_code == 1
        assert result.output.strip() == f"Error: {tmp_path / name}: {what}"
    sock.close()


def test_verbs_that_create_a_store_say_so_and_a_grant_names_the_missing_step(run, tmp_path):
    """A typo in --data-dir must show at once: `lists create` and `tenants create`
    created a store silently (ingest always said so)."""
    created = run("lists", "create", "first")
    assert f"created a new store in {tmp_path / 'data'}" in created.output
    assert "created a new store" not in run("lists", "create", "second").output
    result = run("tenants", "grant", "acme", "first", ok=False)
    assert result.exit_code == 1
    assert "no tenant named 'acme' (create it first: hashmatch tenants create acme" in (
        result.output
    )
    missing = CliRunner().invoke(cli, ["lists", "ls", "--data-dir", str(tmp_path / "typo")])
    assert missing.exit_code == 1
    assert "give the server's data dir: --data-dir, HASHMATCH_DATA_DIR" in missing.output


def _pipe_of(text: str) -> tuple[str, object]:
    """A ``/dev/fd/N`` pipe fed ``text`` by a thread, as bash's ``<(generate-hashes)``
    passes one: (its path, the writer thread)."""
    import os
    import threading

    read_end, write_end = os.pipe()

    def feed() -> None:
        with os.fdopen(write_end, "w") as out:
            out.write(text)

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    return f"/dev/fd/{read_end}", writer


def test_ingest_and_retract_read_hash_lists_from_pipes(run, tmp_path):
    """`ingest <(generate-hashes) --list L` failed "no such file: /dev/fd/63" (only a
    regular file was read) after saying "list 'L' is new". Pipes and named pipes are
    read once, streaming; a device or a directory is refused before the store is made."""
    import os
    import threading

    zero = run("ingest", "/dev/zero", "--list", "v3", "--type", "pdq", ok=False)
    assert zero.exit_code == 1
    assert zero.output.strip() == (
        "Error: /dev/zero: not a regular file or pipe but a character device"
    )
    assert not (tmp_path / "data").exists()  # no store, no "list 'v3' is new"

    path, writer = _pipe_of(f"{H0}\n")
    out = run("ingest", path, "--list", "v3", "--type", "pdq").output
    writer.join(5)
    assert f"{path}: added 1, updated 0, unchanged 0, rejected 0 into 'v3'" in out
    fifo = tmp_path / "partner.jsonl"  # a named pipe: its name still tells the format
    os.mkfifo(fifo)
    feeder = threading.Thread(
        target=fifo.write_text, args=(json.dumps({"signal_type": "pdq", "hash": H1}) + "\n",)
    )
    feeder.start()
    out = run("ingest", str(fifo), "--list", "v3").output
    feeder.join(5)
    assert "added 1, updated 0, unchanged 0, rejected 0 into 'v3'" in out
    path, writer = _pipe_of(f"{H0}\n{H1}\n")
    out = run("retract", "--list", "v3", "--file", path).output
    writer.join(5)
    assert "retracted 2 signal(s) in 'v3' (2 requested)" in out


def test_a_file_refused_as_a_whole_is_named(run, tmp_path):
    """With several files, `Error: header: CSV header lacks ...` did not say which."""
    good, bad = tmp_path / "good.txt", tmp_path / "bad.csv"
    good.write_text(f"pdq {H0}\n")
    bad.write_text(f"id,name\n1,{H1}\n")
    result = run("ingest", str(good), str(bad), "--list", "l", ok=False)
    assert result.exit_code == 1
    assert f"Error: {bad}: header: CSV header lacks column(s)" in result.output


def test_retract_file_lines_may_carry_a_note(run, tmp_path):
    """`HEX # note` in a retraction file was "pdq hash must be 64 hex characters":
    ingest reads such lines, so the partner's retraction file should apply as well."""
    (tmp_path / "in.txt").write_text(f"pdq {H0}\npdq {H1}\n")
    run("ingest", str(tmp_path / "in.txt"), "--list", "l")
    ret = tmp_path / "ret.txt"
    ret.write_text(f"\ufeff# withdrawn 2026-12-06, by partner A\r\npdq:{H0}  # false positive\r\n"
                   f"{H1} # dup, see ticket 7\r\n")  # fmt: skip
    result = run("retract", "--list", "l", "--file", str(ret))
    assert "retracted 2 signal(s) in 'l' (2 requested)" in result.output


def test_index_rebuild_and_stats_count_a_video_once_and_name_an_empty_index(run, tmp_path):
    """`index rebuild` said "rebuilt 4 signal(s)" of one video of 3 frames and one PDQ
    (it counted index rows), and `index stats` printed "(None)" as the kind of an index
    left empty (its md5 signal retracted)."""
    (tmp_path / "clip.vpdq").write_text(f"0,100,{H0},0.0\n1,100,{H1},1.0\n2,90,{'ab' * 32},2.0\n")
    run("ingest", str(tmp_path / "clip.vpdq"), "--list", "videos")
    (tmp_path / "one.txt").write_text(f"pdq {H0}\nmd5 {'cd' * 16}\n")
    run("ingest", str(tmp_path / "one.txt"), "--list", "l")
    run("retract", "--list", "l", f"md5:{'cd' * 16}")
    out = run("index", "rebuild").output
    assert "rebuilt 2 signal(s)" in out and "(md5: 0, pdq: 1, vpdq: 1 (3 frames))" in out
    stats = run("index", "stats").output
    assert "md5: 0 stored, 0 indexed (exact)" in stats and "None" not in stats
    assert "vpdq: 1 stored (3 frames), 3 indexed (auto)" in stats


def test_match_reads_a_vpdq_text_file_led_by_a_comment(run, tmp_path):
    """A vPDQ text file led by `# ...` (vpdq's reader skips such lines) was taken for
    media by `match` ("not an image in a supported format")."""
    clip = tmp_path / "clip7.txt"
    clip.write_text(f"# clip 7, from partner A\n0,100,{H0},0.0\n1,100,{H1},1.0\n")
    (tmp_path / "one.txt").write_text(f"pdq {H0}\n")
    run("ingest", str(tmp_path / "one.txt"), "--list", "l")
    result = run("match", str(clip))
    assert "clip7.txt [vpdq:" in result.output


def test_restore_file_reads_the_gzip_retracted_export_writes(run, tmp_path):
    """`lists export --retracted --out r.txt.gz` writes gzip; `restore --file r.txt.gz`
    opened it as text: a UnicodeDecodeError traceback."""
    (tmp_path / "in.txt").write_text(f"pdq {H0}\n")
    run("ingest", str(tmp_path / "in.txt"), "--list", "l")
    run("retract", "--list", "l", H0)
    out = tmp_path / "r.txt.gz"
    run("lists", "export", "l", "--retracted", "--out", str(out))
    assert out.read_bytes()[:2] == b"\x1f\x8b"
    result = run("restore", "--list", "l", "--file", str(out))
    assert "restored 1 signal(s) in 'l' (1 requested)" in result.output
    (tmp_path / "junk.bin").write_bytes(b"\xff\xfe\x00pdq")
    result = run("retract", "--list", "l", "--file", str(tmp_path / "junk.bin"), ok=False)
    assert result.exit_code == 1
    assert "Error: junk.bin is not UTF-8 text (byte 0xff)" in result.output


def test_the_audit_counts_every_line_the_ingest_rejected(run, tmp_path):
    """An ingest batch's audit entry left out the lines its parser refused (a bad expiry
    or quality, a short row): the CLI said `rejected 3`, the audit log 1."""
    rows = [f"pdq,{H0},,1700000000000", f"pdq,{H1},,nan", "pdq,zz,,", f"pdq,{'ab' * 32}"]
    (tmp_path / "in.csv").write_text(
        "signal_type,signal_value,labels,expires_at\n" + "\n".join(rows) + f"\npdq,{'cd' * 32},,\n"
    )
    assert "rejected 4" in run("ingest", str(tmp_path / "in.csv"), "--list", "l").output
    (entry,) = [e for e in json.loads(run("audit", "--json").output) if e["action"] == "ingest"]
    assert (entry["details"]["added"], entry["details"]["rejected"]) == (1, 4)


def test_gzip_errors_name_the_file_as_given_with_its_gz(run, tmp_path):
    """The name a format is told from loses `.gz` (`list.csv.gz` is a CSV); the errors
    reused it, so a damaged `cut.csv.gz` was reported as `cut.csv`, a file the operator
    does not have (beside it, perhaps, an intact one of that name)."""
    import gzip

    body = f"signal_type,signal_value\npdq,{H0}\npdq,{H1}\n".encode()
    cut = tmp_path / "cut.csv.gz"
    cut.write_bytes(gzip.compress(body)[:-12])
    result = run("ingest", str(cut), "--list", "l", ok=False)
    assert ": cut.csv.gz (gzip) is cut short or damaged" in result.output
    latin = tmp_path / "latin1.csv.gz"
    latin.write_bytes(
        gzip.compress("signal_type,signal_value,labels\npdq,x,café\n".encode("latin-1"))
    )
    result = run("ingest", str(latin), "--list", "l", ok=False)
    assert ": latin1.csv.gz is not UTF-8 text (byte 0xe9)" in result.output
    gone = tmp_path / "r.txt.gz"
    gone.write_bytes(gzip.compress(f"pdq {H0}\n".encode())[:-12])
    result = run("retract", "--list", "l", "--file", str(gone), ok=False)
    assert ": r.txt.gz (gzip) is cut short or damaged" in result.output


def test_an_untyped_threatexchange_dump_is_named_with_its_gz(run, tmp_path):
    """A te-simple dump whose name gives no type is refused; the refusal named
    `holidays.csv.gz` as `holidays.csv` (the name its type is looked for in)."""
    import gzip

    dump = tmp_path / "holidays.csv.gz"
    dump.write_bytes(gzip.compress(f"{H0},1,2020-07-31T18:47:52+0000,a b\n".encode()))
    result = run("ingest", str(dump), "--list", "l", "--format", "te-simple", ok=False)
    assert "a ThreatExchange dump (holidays.csv.gz) names its type" in result.output
    assert "holidays.csv)" not in result.output


def _damaged_gzip_csv(path: Path, *, seed: int, keep: int) -> Path:
    """A gzipped CSV of 3,000 random PDQ rows cut to its first ``keep`` bytes (negative:
    all but the last -keep), at ``path``."""
    import gzip
    import random

    rng = random.Random(seed)
    rows = [f"pdq,{rng.getrandbits(256):064x}" for _ in range(3000)]
    body = ("signal_type,signal_value\n" + "\n".join(rows) + "\n").encode()
    path.write_bytes(gzip.compress(body)[:keep])
    return path


def test_a_damaged_gzip_says_stored_only_what_was(run, tmp_path):
    """The reader's error said "the batches before the damage were stored" whatever was:
    a --strict ingest (one transaction, rolled back) and damage in the first batch store
    nothing; a non-strict one that stored batches says how many (the store's count)."""
    cut = _damaged_gzip_csv(tmp_path / "cut.csv.gz", seed=3, keep=-400)
    result = run("ingest", str(cut), "--list", "s", "--strict", ok=False)
    assert ": cut.csv.gz (gzip) is cut short or damaged" in result.output
    assert "stored" not in result.output, result.output
    early = _damaged_gzip_csv(tmp_path / "early.csv.gz", seed=3, keep=200)
    result = run("ingest", str(early), "--list", "e", ok=False)
    assert "stored" not in result.output, result.output
    result = run("ingest", str(cut), "--list", "n", "--batch-size", "500", ok=False)
    said = result.output
    assert said.count("stored") == 1 and "batch(es) were stored: added " in said, said


def test_a_new_list_a_damaged_file_stored_batches_into_is_said_new(run, tmp_path):
    """The "list 'x' is new" warning (a typo'd --list?) was said only after a file that ended well:
    the batches a damaged file stored before the damage made the list, unsaid; a
    --strict ingest of it stores nothing and makes no list."""
    cut = _damaged_gzip_csv(tmp_path / "cut.csv.gz", seed=4, keep=-400)
    strict = run("ingest", str(cut), "--list", "typo", "--strict", ok=False)
    assert "is new" not in strict.output, strict.output
    result = run("ingest", str(cut), "--list", "typo", "--batch-size", "500", ok=False)
    assert "list 'typo' is new: created by this ingest" in result.output, result.output


def test_index_rebuild_with_read_only_snapshots_says_the_rebuild_succeeded_and_the_state(
    tmp_path,
):
    """With snapshots/ not writable, `index rebuild` printed only the snapshot's error:
    no "rebuilt" line, so whether the rebuild had run, and what the next start would
    load, were left to guess. A real process; snapshots/ read-only by its mode, or (root
    writes anywhere) immutable (chattr +i)."""
    import os
    import shutil
    import subprocess
    import sys

    from hashmatch.engine.runtime import Engine
    from hashmatch.engine.store import SignalRecord

    data = tmp_path / "data"
    with Engine.open(data) as engine:
        engine.ingest([SignalRecord("pdq", H0)], list_name="l")
        old = engine.snapshot()
        engine.ingest([SignalRecord("pdq", H1)], list_name="l")
    snapshots = data / "snapshots"
    if os.geteuid() == 0:
        if (
            shutil.which("chattr") is None
            or subprocess.run(["chattr", "+i", str(snapshots)], capture_output=True).returncode
        ):
            pytest.skip("as root, needs chattr +i (an ext4/xfs filesystem) to refuse writes")
        undo = ["chattr", "-i", str(snapshots)]
    else:
        snapshots.chmod(0o555)
        undo = ["chmod", "755", str(snapshots)]
    try:
        done = subprocess.run(
            [sys.executable, "-c", "from hashmatch.server.cli import main; main()",
             "index", "rebuild", "--data-dir", str(data)],
            cwd=tmp_path, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    finally:
        subprocess.run(undo, check=True)
    assert done.returncode == 1, done.stderr
    assert "rebuilt 2 signal(s)" in done.stdout, done.stdout
    err = " ".join(done.stderr.split())
    assert "the rebuild itself succeeded" in err and "in the audit log as index.rebuild" in err
    assert f"cannot write a snapshot in {snapshots}: " in err
    assert "the store is unchanged" in err and f"{snapshots} has no new snapshot" in err
    assert f"loads the newest snapshot there, {old.name}, 1 change(s) behind" in err
    assert "then run `hashmatch index snapshot`" in err and "Traceback" not in err
    assert [p.name for p in snapshots.iterdir()] == [old.name]
    with Engine.open(data, eager=False) as engine:
        assert engine.store.audit(action="index.rebuild")[0].count == 2


def test_match_as_an_unknown_tenant_is_an_error_not_no_match(run, tmp_path):
    """`match --tenant` with a typo said '0 match(es)', exit 0: an operator checking
    what acme would see read "nothing" (`lists ls --tenant` already refused it)."""
    run("lists", "create", "partner")
    hashes = tmp_path / "h.txt"
    hashes.write_text(H0 + "\n")
    run("ingest", str(hashes), "--list", "partner", "--type", "pdq")
    run("tenants", "create", "acme")
    run("tenants", "grant", "acme", "partner")
    seen = run("match", f"pdq:{H0}", "--tenant", "acme").output
    assert "1 match(es)" in seen and "partner" in seen
    typo = run("match", f"pdq:{H0}", "--tenant", "acmee", ok=False)
    assert typo.exit_code == 1
    assert "no tenant named 'acmee'" in typo.output and "match(es)" not in typo.output


def test_bare_hex_of_another_type_says_it_was_read_as_pdq(run, tmp_path):
    """`match <an MD5>` said only "pdq hash must be 64 hex characters, got 32": bare hex
    is pdq unless --type says otherwise, which nothing said; the hint's forms work."""
    md5 = "8088c0a735d0478be8730969a49dc9c7"
    listed = tmp_path / "md5.txt"
    listed.write_text(f"md5:{md5}\n")
    run("ingest", str(listed), "--list", "digests")
    refused = run("match", md5, ok=False)
    assert refused.exit_code == 1
    assert (
        "pdq hash must be 64 hex characters, got 32; bare hex is read as pdq: write md5:HEX"
        " or give --type md5"
    ) in refused.output
    assert "1 match(es)" in run("match", f"md5:{md5}").output
    assert "1 match(es)" in run("match", md5, "--type", "md5").output
    kept = run("retract", "--list", "digests", md5, ok=False)
    assert "bare hex is read as pdq: write md5:HEX" in kept.output
    assert "retracted 1" in run("retract", "--list", "digests", f"md5:{md5}").output
    short = run("match", "c2924c5532bddfc8", ok=False)
    assert "write TYPE:HEX (ahash, dhash, phash or whash) or give --type" in short.output
    typed = run("match", "--type", "md5", "abcd", ok=False)  # a --type given: no such hint
    assert "bare hex" not in typed.output


def test_restore_names_the_signals_it_left_as_they_were(run, tmp_path):
    """`restore --file F` with some of F's signals not retracted said only "restored 1
    (13 requested)"; it now names them (10 at most, then a count), retract alike."""
    hexes = [f"{i:02x}" * 32 for i in range(1, 13)]
    (tmp_path / "in.csv").write_text(
        "signal_type,signal_value,external_id\n"
        + "".join(f"pdq,{h},e{i}\n" for i, h in enumerate(hexes))
    )
    run("ingest", str(tmp_path / "in.csv"), "--list", "l")
    run("retract", "--list", "l", hexes[0])
    (tmp_path / "restore.txt").write_text("".join(f"pdq:{h}\n" for h in hexes))
    result = run("restore", "--list", "l", "--file", str(tmp_path / "restore.txt"),
                 "--external-id", "e1")  # fmt: skip
    assert "restored 1 signal(s) in 'l' (13 requested)" in result.stdout
    named = ", ".join(f"pdq:{h}" for h in hexes[1:11])
    assert f"not retracted (nothing to restore) in 'l': {named} and 1 more" in result.stderr
    assert result.stderr.count(f"pdq:{hexes[1]}") == 1  # named by hash and external id: once
    run("retract", "--list", "l", hexes[0], "--external-id", "e2")
    again = run("retract", "--list", "l", hexes[0], "--external-id", "e2")
    assert "retracted 0 signal(s) in 'l' (2 requested)" in again.stdout
    assert f"already retracted in 'l': pdq:{hexes[0]}, external id e2" in again.stderr
    none_left = run("restore", "--list", "l", hexes[0], hexes[2])
    assert "restored 2 signal(s)" in none_left.stdout and not none_left.stderr
