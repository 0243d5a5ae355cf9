"""A phone photo with an EXIF orientation tag: hashmatch hashes it upright, but
python-threatexchange/HMA's ``pdq_from_file`` hashes the stored pixels. The server's
matching adds the stored orientation's PDQ as one more row, so a list made by either
tool matches the same file. Generated image; real socket."""

from __future__ import annotations

import io

import numpy as np
import pdqhash
import pytest
from PIL import Image

from hashmatch.engine.hashing import HashOptions, hash_media
from hashmatch.server.client import signal
from hashmatch.server.testing import running_server


def _photo(orientation: int) -> bytes:
    """A 320x240 JPEG with some structure (gradients and a block), EXIF orientation set."""
    y, x = np.mgrid[0:240, 0:320]
    rgb = np.stack([x * 255 // 320, y * 255 // 240, (x * y) % 256], axis=2).astype(np.uint8)
    rgb[40:120, 60:200] = (250, 30, 30)
    im = Image.fromarray(rgb)
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=95, exif=exif.tobytes())
    return buf.getvalue()


def _hma_pdq(data: bytes) -> str:
    """What pdq_from_file computes: Pillow's RGB pixels as stored (no exif_transpose)."""
    rgb = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    bits, _ = pdqhash.compute(rgb)
    return np.packbits(bits.astype(np.uint8)).tobytes().hex()


@pytest.mark.parametrize("orientation", [3, 6, 8, 5])
def test_the_stored_orientation_row_is_the_hma_hash(orientation):
    data = _photo(orientation)
    (plain,) = hash_media(data, ["pdq"])
    (both,) = hash_media(data, ["pdq"], HashOptions(exif_as_stored=True))
    assert len(plain.codes) == 1 and len(both.codes) == 2
    assert both.codes[0].tobytes() == plain.codes[0].tobytes()  # row 0 stays upright
    assert both.codes[1].tobytes().hex() == _hma_pdq(data)
    assert plain.codes[0].tobytes().hex() != _hma_pdq(data)


def test_no_tag_no_extra_row():
    data = _photo(1)
    (result,) = hash_media(data, ["pdq"], HashOptions(exif_as_stored=True))
    assert len(result.codes) == 1


def test_server_matches_an_oriented_upload_against_an_hma_made_list(tmp_path):
    data = _photo(6)
    with running_server(tmp_path / "data") as server:
        client = server.client()
        client.ingest("hma", [signal("pdq", _hma_pdq(data), external_id="from-hma")])
        result = client.match(media=[data], lists=["hma"]).results[0]
        assert [m.external_id for m in result.matches] == ["from-hma"]
        assert result.matches[0].distance == 0 and result.matches[0].variant == 1
        hashed = client.hash([data]).items[0].hashes[0]  # Hash stays pdqhash-identical
        assert len(hashed.hex) == 1


def test_cli_match_of_an_oriented_photo_finds_the_hma_hash(tmp_path):
    from click.testing import CliRunner

    from hashmatch.server.cli import cli

    data = _photo(6)
    photo = tmp_path / "phone.jpg"
    photo.write_bytes(data)
    listed = tmp_path / "hma.csv"
    listed.write_text(f"signal_type,signal_value,external_id\npdq,{_hma_pdq(data)},from-hma\n")
    env = {"HASHMATCH_DATA_DIR": str(tmp_path / "data")}
    runner = CliRunner()
    assert runner.invoke(cli, ["ingest", str(listed), "--list", "hma"], env=env).exit_code == 0
    result = runner.invoke(cli, ["match", str(photo)], env=env)
    assert result.exit_code == 0 and "1 match(es)" in result.output, result.output
    assert "ext=from-hma" in result.output


NUMPY_ORIENT = {  # ImageOps.exif_transpose's operations, written as numpy views
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.swapaxes(0, 1),
    6: lambda a: a.swapaxes(0, 1)[:, ::-1],
    7: lambda a: a.swapaxes(0, 1)[::-1, ::-1],
    8: lambda a: a.swapaxes(0, 1)[::-1],
}


@pytest.mark.parametrize("shape", [(31, 17, 3), (1, 9, 3), (9, 1, 3), (1, 1, 3), (12, 7), (1, 5)])
def test_orientation_ops_are_exif_transposes_and_as_stored_undoes_them(shape):
    from hashmatch.engine.decode import _orient, as_stored

    rgb = np.random.default_rng(sum(shape)).integers(0, 256, shape, dtype=np.uint8)
    for orientation, op in NUMPY_ORIENT.items():
        upright = _orient(rgb, orientation)
        assert np.array_equal(upright, op(rgb)) and upright.flags["C_CONTIGUOUS"]
        assert np.array_equal(as_stored(upright, orientation), rgb)
    assert _orient(rgb, 1) is rgb


@pytest.mark.parametrize("orientation", [2, 3, 4, 5, 6, 7, 8])
def test_with_the_exact_dihedral_the_stored_pixels_row_counts_as_given(orientation):
    """The 8 exact rows include the stored pixels' hash (no row is appended then); that
    row is marked as given, so it matches as far as the request's threshold, as the
    appended row does without dihedral. It was marked re-oriented (matched within 31
    only): turning dihedral on lost an HMA-made list's match beyond 31."""
    data = _photo(orientation)
    options = HashOptions(dihedral=True, dihedral_exact=True, exif_as_stored=True)
    (result,) = hash_media(data, ["pdq"], options)
    assert len(result.codes) == 8
    as_given = [n for n, o in enumerate(result.orientations) if o == 0]
    assert len(as_given) == 2 and as_given[0] == 0  # the upright row and one other
    assert result.codes[as_given[1]].tobytes().hex() == _hma_pdq(data)


def test_an_hma_hash_beyond_31_matches_with_dihedral_as_without(tmp_path):
    """A stored HMA hash 40 bits from the stored pixels' hash (an edited copy, say),
    a request threshold of 50: found with and without dihedral (the old code: only
    without), by a real server."""
    data = _photo(6)
    code = bytearray(bytes.fromhex(_hma_pdq(data)))
    for bit in range(40):  # flip 40 bits: 40 bits from the stored pixels' hash
        code[bit // 8] ^= 1 << (bit % 8)
    with running_server(tmp_path / "data") as server:
        client = server.client()
        client.ingest("hma", [signal("pdq", code.hex(), external_id="edited")])
        for dihedral in (False, True):
            result = client.match(
                media=[data], lists=["hma"], threshold=50, dihedral=dihedral
            ).results[0]
            assert [(m.external_id, m.distance) for m in result.matches] == [("edited", 40)], (
                dihedral
            )
