"""Checkable claims of README.md that no other test reads from the README itself: the
config keys and their defaults, the `hash` CSV columns, the scan report's fields, the
exit status of a local ingest and of `serve`'s flag errors, the flags of the README's
command lines, the service section's first block run against a real server. Each test
reads the claim out of the README, so an edit of either side that lets them drift apart
fails here."""

from __future__ import annotations

import csv
import dataclasses
import gzip
import hashlib
import io
import json
import re
import shlex
from pathlib import Path

import numpy as np
import skimage.data
from click.testing import CliRunner
from PIL import Image
from readme_example import python_example, run_python_example
from test_cli_video import write_video

from hashmatch.server import config
from hashmatch.server.cli import cli

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def _between(start: str, end: str) -> str:
    return README.split(start, 1)[1].split(end, 1)[0]


def _value(text: str) -> object:
    """A README default as the config holds it: `32 MiB` -> 33554432, `50 M` ->
    50000000, `10,000` -> 10000, `false` -> False, `127.0.0.1:50051` as it is."""
    text = text.strip().strip("`")
    units = {"MiB": 1024 * 1024, "M": 1_000_000}
    number = re.fullmatch(r"(-?[\d,]+)(?: (MiB|M))?(?: .*)?", text)
    if number:
        return int(number.group(1).replace(",", "")) * units.get(number.group(2), 1)
    return {"true": True, "false": False}.get(text, text)


def test_every_config_key_is_documented_with_its_default():
    paragraph = " ".join(
        _between("Keys and defaults (`server/config.py`):", "The `remote`").split()
    )
    defaults = config.ServerConfig()
    documented: dict[str, object] = {}
    pair = re.search(r"`(\w+)` / `(\w+)` \((\d+) / (\d+)", paragraph)  # keepalive's two
    documented[pair.group(1)], documented[pair.group(2)] = int(pair.group(3)), int(pair.group(4))
    for key, value in re.findall(r"`(\w+)`\s+\((.+?)(?:;|\)|: )", paragraph):
        if re.match(r"`|-?\d|true|false", value):  # a default, not "(turns on mutual TLS)"
            documented.setdefault(key, _value(value))
    named = set(re.findall(r"`(\w+)`", paragraph))
    missing = [f.name for f in dataclasses.fields(defaults) if f.name not in named]
    assert not missing, f"config keys the README does not name: {missing}"
    documented["auth_file"] = None  # `<data_dir>/auth.toml`: the auth_path property
    assert defaults.auth_path == Path(defaults.data_dir) / "auth.toml"
    wrong = {
        key: (value, getattr(defaults, key))
        for key, value in documented.items()
        if hasattr(defaults, key) and getattr(defaults, key) != value
    }
    assert not wrong, f"README default vs config (README, code): {wrong}"
    assert len(documented) >= 25  # the parse found the list, not a fragment of it


def test_hash_csv_has_the_documented_columns(tmp_path):
    columns = re.search(r"`csv` has `([a-z_,]+)`", README).group(1)
    photo = tmp_path / "camera.png"
    Image.fromarray(skimage.data.camera()).save(photo)
    result = CliRunner().invoke(cli, ["hash", str(photo), "--types", "pdq", "--format", "csv"])
    assert result.exit_code == 0, result.output
    header = next(csv.reader(io.StringIO(result.stdout)))
    assert ",".join(header) == columns


def test_scan_report_records_have_the_documented_fields(tmp_path):
    """The report example's keys (match, failure, warning, summary) are what a scan
    writes."""
    example = _between("Report (JSONL;", "`videos_without_vpdq` counts")
    shown = {}
    for line in re.findall(r"^\{.*\}$", example, re.M):
        record = json.loads(line.replace("…", ""))
        shown[record["kind"]] = set(record)
    media = tmp_path / "media"
    media.mkdir()
    Image.fromarray(skimage.data.astronaut()).save(media / "a.png")
    (media / "b.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a whole JPEG")
    jpeg = io.BytesIO()
    Image.fromarray(skimage.data.coffee()).save(jpeg, "JPEG")
    sos = jpeg.getvalue().index(b"\xff\xda")  # stray bytes before it: libjpeg warns
    (media / "c.jpg").write_bytes(jpeg.getvalue()[:sos] + b"\x01\x02" + jpeg.getvalue()[sos:])
    data = str(tmp_path / "data")
    hashed = CliRunner().invoke(cli, ["hash", str(media / "a.png"), "--format", "te"])
    (tmp_path / "l.csv").write_text(hashed.stdout)
    ingested = CliRunner().invoke(
        cli, ["ingest", str(tmp_path / "l.csv"), "--list", "partner-a", "--data-dir", data]
    )
    assert ingested.exit_code == 0, ingested.output
    out = tmp_path / "report.jsonl"
    scan = CliRunner().invoke(
        cli, ["scan", str(media), "--data-dir", data, "--workers", "1", "--out", str(out)]
    )
    assert scan.exit_code == 0, scan.output
    written = {}
    for line in out.read_text().splitlines():
        record = json.loads(line)
        written.setdefault(record["kind"], set(record))
    assert set(written) == {"match", "failure", "warning", "summary"}
    for kind, keys in shown.items():
        assert written[kind] == keys, (kind, written[kind] ^ keys)


def test_local_ingest_exits_1_only_when_every_line_was_rejected(tmp_path):
    """README: `remote ingest` "exits 1 when every signal was rejected (nothing stored),
    as the local verb does"."""
    assert "as the local verb does" in README
    good = "f8f8f0cee0f4a84f06370a22038f63f0b36e2ed596621e1d33e6b39c4e9c9b22"
    data = str(tmp_path / "data")

    def ingest(text: str, name: str):
        (tmp_path / name).write_text(text)
        return CliRunner().invoke(cli, ["ingest", str(tmp_path / name), "--list", "l",
                                        "--type", "pdq", "--data-dir", data])  # fmt: skip

    some = ingest(f"{good}\nzz\n", "some.txt")
    assert some.exit_code == 0 and "added 1, updated 0, unchanged 0, rejected 1" in some.output
    none = ingest("zz\nyy\n", "none.txt")
    assert none.exit_code == 1 and "added 0, updated 0, unchanged 0, rejected 2" in none.output


def test_serve_flag_errors_exit_as_documented(tmp_path):
    """README's config section gave `(from --workers)` as an example of the exit-1 value
    errors, but `--workers abc` is click's usage error (exit 2, no "(from --workers)").
    Each flag example the section gives is run as written."""
    section = " ".join(_between("Every value is checked at start-up", "an unknown key").split())
    ranged = re.search(r"`((\w+): [^`]*?, got (\S+) \(from (--[\w-]+)\))`", section)
    typed = re.search(
        r"`(--[\w-]+) (\S+)`, is a usage error as in every verb: exit 2, `([^`]+)`", section
    )
    assert ranged and typed, "the README gives no flag example of either kind"
    data = ["--data-dir", str(tmp_path / "data"), "--insecure-no-auth"]
    result = CliRunner().invoke(cli, ["serve", *data, ranged.group(4), ranged.group(3)])
    assert result.exit_code == 1 and result.output.strip() == f"Error: {ranged.group(1)}"
    result = CliRunner().invoke(cli, ["serve", *data, typed.group(1), typed.group(2)])
    assert result.exit_code == 2 and typed.group(3) in result.output, result.output


def test_the_indexes_example_runs_as_written(tmp_path):
    """The Indexes section's example, pasted into Python: it used `codes`, `ids` and
    `queries` without defining them, and rebound `ids` to the search's hits, so its
    `index.remove(ids)` removed whatever the search had found. It prints query 0's
    hits; the comment beside the print says what they are."""
    done = run_python_example("## Indexes", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    printed = re.search(r"print\(.*\)  # query 0's hits: (.*)", python_example("## Indexes"))
    assert done.stdout.strip() == printed.group(1)
    assert (tmp_path / "snap" / "pdq" / "manifest.json").is_file()


def test_the_store_example_block_runs_as_written(tmp_path, monkeypatch):
    """Each command of the store section's example block, run in order on generated
    files named as the block names them; only the backup directory is moved under the
    test's tmp dir and bash's `<(zcat F)` becomes F unpacked. Every command exits 0
    except `lists delete` without `--yes`, which counts and exits 1 (as documented).
    Its `hashmatch backup /backups/hashmatch/` used to fail on a fresh machine (a
    missing DIR/ is refused): the block now creates the directory first."""
    block = (
        _between("## Hash lists and the signal store", "Every verb prints")
        .split("```sh\n", 1)[1]
        .split("```")[0]
    )
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(5)
    pdq = [rng.integers(0, 256, 32, dtype=np.uint8).tobytes().hex() for _ in range(8)]
    Path("partner-a.csv").write_text(
        "signal_type,signal_value,labels,external_id,quality,expires_at\n"
        f"pdq,{pdq[0]},csam,e0,90,\npdq,{pdq[1]},,e1,,\n"
    )
    Path("hashes.txt").write_text(f"{pdq[2]}\n{pdq[3]}\n")
    Path("signals.txt").write_text(f"pdq {pdq[4]}\nmd5:{'ab' * 16}\n")
    frames = "".join(f"{i},100,{pdq[5 + i % 2]},{i}.000\n" for i in range(4))
    for name in ("clip1.vpdq", "clip2.vpdq", "clip.vpdq"):
        Path(name).write_text(frames)
    Path("export.jsonl").write_text(json.dumps({"signal_type": "pdq", "signal_value": pdq[7]}))
    Path("partner-b.csv").write_text(f"signal_type,signal_value\npdq,{pdq[7]}\n")
    Path("partner-b.csv.gz").write_bytes(gzip.compress(Path("partner-b.csv").read_bytes()))
    Image.fromarray(skimage.data.astronaut()).save("photo.jpg")
    write_video(tmp_path / "clip.mp4")
    backups = tmp_path / "backups" / "hashmatch"
    env: dict[str, str] = {}
    ran = []
    for line in block.splitlines():
        line = re.split(r"\s+#\s", line)[0].strip()
        line = line.replace("<(zcat partner-b.csv.gz)", "partner-b.csv")
        line = line.replace("/backups/hashmatch", str(backups))
        line = re.sub(r"\[(--[\w-]+)\]", r"\1", line)  # an optional flag: given
        for part in re.split(r";|&&", line):
            argv = [pdq[2] if a == "HEX" else a for a in shlex.split(part)]
            if not argv:
                continue
            if argv[0] == "export":
                key, value = argv[1].split("=", 1)
                env[key] = value
                continue
            if argv[0] == "mkdir":
                Path(argv[-1]).mkdir(parents=True)
                continue
            assert argv[0] == "hashmatch", argv
            result = CliRunner().invoke(cli, argv[1:], env=env)
            wanted = 1 if argv[1:] == ["lists", "delete", "program-x"] else 0
            assert result.exit_code == wanted, (argv, result.output)
            ran.append(" ".join(argv[1:3]))
    assert len(ran) >= 30 and "backup " + str(backups) + "/" in ran
    assert len(list(backups.glob("store-*.sqlite"))) == 1


def test_the_hashing_example_runs_as_written(tmp_path):
    """The Hashing section's example, pasted into Python beside a photo.jpg: its hashes
    are hash_media's and the shape it prints is the one its comment gives."""
    Image.fromarray(skimage.data.astronaut()).save(tmp_path / "photo.jpg")
    done = run_python_example("## Hashing", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    first, shape = done.stdout.splitlines()
    pdq_hex, quality, md5_hex = first.split()
    assert md5_hex == hashlib.md5((tmp_path / "photo.jpg").read_bytes()).hexdigest()
    assert len(pdq_hex) == 64 and 0 <= int(quality) <= 100
    assert shape == re.search(r"print\(variants.shape\)  # (\(\d+, \d+\))", README).group(1)


def _command_lines() -> list[str]:
    """Each `hashmatch ...` command of the README's shell blocks (continuations joined,
    `a; hashmatch b` split), without its comment or what it is piped into."""
    out = []
    for block in re.findall(r"```(?:sh|bash)\n(.*?)```", README, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.strip()
            if line.startswith("hashmatch "):
                for part in re.split(r";\s+(?=hashmatch )", line):
                    out.append(part.split(" #", 1)[0].split(" | ", 1)[0])
    return out


def test_every_flag_of_a_readme_command_line_is_an_option_of_its_verb():
    """A newcomer copies these lines: a flag the verb does not have is a usage error at
    the first step. Each `--flag` must be an option of the verb it follows (or of the
    group before it, e.g. `hashmatch remote --server X lists`)."""
    import shlex

    import click

    lines = _command_lines()
    assert len(lines) > 50  # the parse found the blocks
    unknown = []
    for line in lines:
        words = shlex.split(line.replace("[", " ").replace("]", " "))
        command, allowed = cli, {"--help"}
        for word in words[1:]:
            if isinstance(command, click.Group) and word in command.commands:
                allowed |= {o for p in command.params for o in p.opts + p.secondary_opts}
                command = command.commands[word]
        allowed |= {o for p in command.params for o in p.opts + p.secondary_opts}
        unknown += [
            (line, w) for w in words if w.startswith("--") and w.split("=")[0] not in allowed
        ]
    assert not unknown, unknown


def _service_block() -> list[str]:
    """The command lines of the gRPC service section's first shell block, as written."""
    block = _between("## The gRPC service", "<!-- END:service -->").split("```sh\n", 1)[1]
    return [line.split(" #", 1)[0].strip() for line in block.split("```", 1)[0].splitlines()]


def _service_block_files(folder: Path) -> None:
    """What the block's commands read: photos/ (one of them photo.jpg), a short video
    clip.mp4 and its vPDQ as vpdq's text (clip.vpdq). Benign generated pictures."""
    import cv2
    import numpy as np

    from hashmatch.engine.hashing import hash_media
    from hashmatch.engine.video import format_vpdq

    (folder / "photos").mkdir()
    for name in ("astronaut", "camera", "coffee"):
        Image.fromarray(getattr(skimage.data, name)()).save(folder / "photos" / f"{name}.jpg")
    (folder / "photo.jpg").write_bytes((folder / "photos" / "astronaut.jpg").read_bytes())
    frames = cv2.resize(skimage.data.astronaut()[:, :, ::-1], (320, 320))
    writer = cv2.VideoWriter(
        str(folder / "clip.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 5, (160, 120)
    )
    for i in range(15):
        writer.write(np.ascontiguousarray(frames[i * 8 : i * 8 + 120, i * 8 : i * 8 + 160]))
    writer.release()
    (video,) = hash_media(folder / "clip.mp4", ["vpdq"])
    n = len(video.codes)
    text = format_vpdq(range(n), video.qualities, video.codes, video.timestamps)
    (folder / "clip.vpdq").write_text(text)


def test_the_service_quickstart_block_runs_as_written(tmp_path, monkeypatch):
    """Each `hashmatch` line of the service section's first block, run against a real
    server with the token the block exports (only the address differs: the test server's
    port). The synopsis line `remote lists | retract LIST HASH... | stats | ...` runs each
    verb (retract: the first hash ingested). Every command exits 0."""
    from hashmatch.server.testing import running_server

    lines = _service_block()
    assert lines[0] == "make run" and lines[1].startswith("export HASHMATCH_TOKEN=")
    _service_block_files(tmp_path)
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    admin = {"admin": (["match", "export", "write", "admin"], True)}
    ran: dict[str, str] = {}  # " ".join(argv) -> stdout
    with running_server(tmp_path / "hashmatch-data", tenants=admin) as served:
        env = {"HASHMATCH_SERVER": served.target, "HASHMATCH_TOKEN": served.tokens["admin"]}
        for line in lines[2:]:
            command, _, redirect = line.partition(" > ")
            words = command.replace("[", "").replace("]", "").split()
            assert words[0] == "hashmatch", line
            verbs = [words[1:]]
            if "|" in words:  # the synopsis: one remote verb per alternative
                assert "".join(words[1:]) == "remotelists|retractLISTHASH...|stats|rebuild|snapshot"
                first = (tmp_path / "hashes.csv").read_text().splitlines()[1].split(",")[1]
                verbs = [["remote", "lists"], ["remote", "retract", "demo", first]]
                verbs += [["remote", verb] for verb in ("stats", "rebuild", "snapshot")]
            for argv in verbs:
                result = runner.invoke(cli, argv, env=env)
                assert result.exit_code == 0, (argv, result.output)
                ran[" ".join(argv)] = result.stdout
                if redirect:
                    (tmp_path / redirect.strip()).write_text(result.stdout)
    assert json.loads(ran["remote ingest demo hashes.csv"])["added"] == 3
    photo = json.loads(ran["remote match --media photo.jpg --dihedral --trim-borders"])
    assert [m["list_name"] for m in photo["matches"]] == ["demo"], photo
    assert json.loads(ran["remote match --media clip.vpdq"])["source"] == "SOURCE_VIDEO"
    assert json.loads(ran["remote match --media clip.mp4"])["source"] == "SOURCE_MEDIA"
    retracted = next(out for argv, out in ran.items() if argv.startswith("remote retract"))
    assert json.loads(retracted)["retracted"] == 1
    assert json.loads(ran["remote health --wait 120"]) == {"status": "SERVING"}
