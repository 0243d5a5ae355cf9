"""The clients' arguments as an upload pipeline writes them, over a real socket: one
upload as ``bytes`` (or a bytearray / memoryview buffer), one label, list or type
name as a ``str``, a hash pair forgotten outside its list, and ``match``'s typed
options.

Why: a ``str`` is an iterable of ``str`` and ``bytes`` one of ``int``, so these were
taken apart: ``labels="csam"`` was stored as four labels ``c s a m`` without a word,
``hash([data], "md5")`` and ``lists="partner-a"`` failed as the type ``m`` or the list
``p``, ``hash(data)`` failed "expected bytes, int found", and ``match(("pdq", hex))``
"too many values to unpack (expected 2)".
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import io
import typing

import pytest
from PIL import Image
from readme_example import run_python_example
from skimage import data

from hashmatch.server import client_shared
from hashmatch.server.aio_client import AsyncHashmatchClient
from hashmatch.server.client import HashmatchClient, match_request, signal
from hashmatch.server.testing import running_server

OPS = {"ops": (["match", "write", "admin", "export"], True)}


def _jpeg() -> bytes:
    out = io.BytesIO()
    Image.fromarray(data.astronaut()).save(out, format="JPEG", quality=90)
    return out.getvalue()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A server whose list 'uploads' holds the astronaut's PDQ, labelled with one str."""
    with running_server(tmp_path_factory.mktemp("inputs"), tenants=OPS) as ts:
        client = ts.client("ops")
        upload = _jpeg()
        pdq = client.hash([upload]).items[0].hashes[0].hex[0]
        reply = client.ingest("uploads", [signal("pdq", pdq, labels="csam")])
        assert reply.added == 1 and reply.rejected == 0, reply
        yield ts, client, upload, pdq


def test_one_label_given_as_a_str_is_stored_as_that_label(served):
    _ts, client, _upload, pdq = served
    found = client.match([("pdq", pdq)]).results[0].matches
    assert [list(m.labels) for m in found] == [["csam"]]  # was ['c', 's', 'a', 'm']


def test_one_upload_given_as_bytes_or_a_buffer_is_hashed_and_matched(served):
    _ts, client, upload, pdq = served
    assert client.hash(upload).items[0].hashes[0].hex[0] == pdq
    for given in (upload, bytearray(upload), memoryview(upload), [memoryview(upload)]):
        reply = client.match(media=given)
        assert len(reply.results) == 1, type(given)
        assert [m.list_name for m in reply.results[0].matches] == ["uploads"], type(given)


def test_one_type_or_list_given_as_a_str_is_that_name(served):
    _ts, client, upload, pdq = served
    hashed = client.hash([upload], "md5").items[0].hashes
    assert [(h.signal_type, h.hex[0]) for h in hashed] == [("md5", hashlib.md5(upload).hexdigest())]
    reply = client.match([("pdq", pdq)], lists="uploads")
    assert [m.list_name for m in reply.results[0].matches] == ["uploads"]
    reply = client.match(media=[upload], media_types="pdq")
    assert [c.signal_type for c in reply.results[0].computed] == ["pdq"]
    changes = list(client.changes(0, signal_types="pdq"))
    assert [c.hash.hex() for m in changes for c in m.changes] == [pdq]


def test_the_asyncio_client_takes_them_alike(served):
    ts, _client, upload, pdq = served

    async def scenario() -> None:
        async with AsyncHashmatchClient(ts.target, token=ts.tokens["ops"]) as client:
            hashed = (await client.hash(upload, "pdq")).items[0].hashes
            assert hashed[0].hex[0] == pdq
            reply = await client.match(media=memoryview(upload), lists="uploads")
            assert [list(m.labels) for m in reply.results[0].matches] == [["csam"]]

    asyncio.run(scenario())


def test_an_upload_given_as_a_file_object_says_to_pass_its_bytes(served):
    """A file object iterates its lines: ``match(media=f)`` sent each as an upload of
    its own (the astronaut JPEG: refused as media items over the limit, 16)."""
    _ts, client, upload, _pdq = served
    said = r"media: a file object \(BytesIO\) is not sent as it is: pass its bytes, f.read\(\)"
    for call in (
        lambda: client.match(media=io.BytesIO(upload)),
        lambda: client.match(media=[io.BytesIO(upload)]),
        lambda: client.hash(io.BytesIO(upload)),
    ):
        with pytest.raises(TypeError, match=said):
            call()


def test_the_asyncio_client_refuses_a_file_object_and_a_file_name_alike(served, tmp_path):
    """778dfe2 said both clients refuse a file object; only the sync one was tried. A
    file's name (a str, a Path) is refused the same way, before anything is sent: a
    str was taken apart into one-letter items ('got str'), a Path failed "'PosixPath'
    object is not iterable"."""
    from pathlib import Path

    ts, client, upload, _pdq = served
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(upload)
    named = r"media: a \w*(str|Path) \('.*photo\.jpg'\) is not sent: .* Path\(name\)\.read_bytes"
    for given in (str(photo), photo, [photo], [str(photo)]):
        with pytest.raises(TypeError, match=named):
            client.match(media=given)
        with pytest.raises(TypeError, match=named):
            client.hash(given)

    async def scenario() -> None:
        async with AsyncHashmatchClient(ts.target, token=ts.tokens["ops"]) as aio:
            with pytest.raises(TypeError, match=r"a file object \(BytesIO\) .* f\.read\(\)"):
                await aio.match(media=io.BytesIO(upload))
            with (
                pytest.raises(TypeError, match=r"a file object \(BufferedReader\)"),
                Path(photo).open("rb") as f,
            ):
                await aio.hash([f])
            with pytest.raises(TypeError, match=named):
                await aio.match(media=photo)

    asyncio.run(scenario())


def test_a_hash_pair_or_a_videos_frames_outside_their_list_say_so(served):
    _ts, client, _upload, pdq = served
    with pytest.raises(TypeError, match=r"a single hash goes in a list: \[\(\"pdq\", hex\)\]"):
        client.match(("pdq", pdq))  # was ValueError: too many values to unpack
    with pytest.raises(TypeError, match=r"one video goes in a list: videos=\[frames\]"):
        client.match(videos=[pdq, pdq])  # was INVALID_ARGUMENT "...frames[0]... got 1"


def test_match_options_are_typed_as_match_requests_arguments():
    """``match(**options)`` was ``Any``: an editor or type checker knew none of them."""
    match_args = client_shared.MatchArgs
    keywords = {
        name
        for name, p in inspect.signature(match_request).parameters.items()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    }
    assert set(match_args.__annotations__) == keywords
    for method in (HashmatchClient.match, AsyncHashmatchClient.match):
        hint = typing.get_type_hints(method, include_extras=True)["options"]
        assert typing.get_args(hint) == (match_args,), method


def test_the_readme_upload_pipeline_example_runs(served):
    """The README's upload-pipeline example, run as written: media matched server-side,
    a batch of hex, a bad upload read with bad_request_fields, a MatchStream."""
    ts = served[0]
    done = run_python_example("An upload pipeline keeps one client", ts)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "upload: [('demo-uploads', ['demo'], 0)]", done.stdout
    assert lines[1] == "batch: [(0, 1), (1, 0)]", done.stdout
    assert lines[2].startswith("INVALID_ARGUMENT [('media[1]', 'not an image"), done.stdout
    assert lines[3:] == ["upload-0 1", "upload-1 1", "upload-2 1"], done.stdout


def test_a_matchs_query_index_is_its_results_position_not_its_index_in_media(served):
    """What common.proto's ``Match.query_index`` says (it read "which query (hash or
    media item)", which a reader could take as the index in ``media``)."""
    _ts, client, upload, pdq = served
    reply = client.match([("pdq", "0" * 64), ("pdq", pdq)], media=[upload])
    got = [(r.source, r.index, [m.query_index for m in r.matches]) for r in reply.results]
    hash_, media = 1, 2  # QueryResult.SOURCE_HASH, SOURCE_MEDIA
    assert got == [(hash_, 0, []), (hash_, 1, [1]), (media, 0, [2])]


@pytest.mark.parametrize(
    ("option", "value", "error"),
    [
        ("max_results", -1, ValueError),
        ("threshold", "31", TypeError),
        ("min_quality", 1.5, TypeError),
    ],
)
def test_an_option_protobuf_refuses_is_named(served, option, value, error):
    """Was "Value out of range: -1" or "'str' object cannot be interpreted as an
    integer", naming no argument."""
    _ts, client, _upload, pdq = served
    with pytest.raises(error, match=f"^{option}: "):
        client.match([("pdq", pdq)], **{option: value})
    assert client.match([("pdq", pdq)], threshold=0, min_quality=0).results[0].matches
