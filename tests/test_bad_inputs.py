"""Bad-input corpus: every kind of broken, odd or hostile file goes through the real `curate ingest`, the embedder,
the thumbnails and the UI's large view; each gets a clear one-line reason and the run goes on.

(Zero-byte / text-as-.jpg / truncated PNG in an ImageFolder, manifest row problems, labels with commas and quotes,
and hostile labels at export are also covered in test_ingest.py and test_export.py.)
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from curate.engine.catalog import CurateError, init_project
from curate.engine.images import open_rgb
from curate.engine.ingest import ingest
from tests.fault_helpers import curate

RED, BLUE = (220, 30, 30), (30, 30, 220)
NON_UTF8_NAME = b"caf\xe9.png"  # Latin-1 "café.png": not valid UTF-8


def _sideways() -> Image.Image:
    """A 32x16 landscape picture with a distinct layout (smooth random colour blobs) and a red band on its left
    edge; rotated 90 degrees clockwise it is the 16x32 portrait :func:`_portrait`, red band on top."""
    rng = np.random.default_rng(5)
    a = np.asarray(Image.fromarray(rng.integers(0, 256, (4, 8, 3), dtype=np.uint8)).resize((32, 16), Image.BILINEAR)).copy()
    a[:, :4] = RED
    return Image.fromarray(a)


def _portrait() -> Image.Image:
    return _sideways().transpose(Image.Transpose.ROTATE_270)  # 90 degrees clockwise


def _bomb_png(path: Path, side: int = 30_000) -> None:
    """A valid PNG header claiming side x side pixels (900 MP) with almost no data: a decompression bomb."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


def build_corpus(root: Path) -> dict[str, Path]:
    """root/good/* (odd but valid images) and root/bad/* (broken ones), plus symlink loops; returns name -> path."""
    good, bad = root / "good", root / "bad"
    good.mkdir(parents=True)
    bad.mkdir(parents=True)
    f: dict[str, Path] = {}
    rgb = _sideways()
    # EXIF orientation 6 ("rotate 90 degrees clockwise to display"): stored 32x16 landscape, displayed 16x32 portrait
    exif = Image.Exif()
    exif[0x0112] = 6
    f["exif6"] = good / "exif6.jpg"
    rgb.save(f["exif6"], quality=95, exif=exif.tobytes())
    f["upright"] = good / "upright.png"
    _portrait().save(f["upright"])
    f["cmyk"] = good / "cmyk.jpg"
    rgb.convert("CMYK").save(f["cmyk"], quality=95)
    f["gray16"] = good / "gray16.png"
    Image.fromarray((np.tile(np.linspace(0, 65535, 32), (16, 1))).astype(np.uint16)).save(f["gray16"])
    f["palette"] = good / "palette.png"
    rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=4).save(f["palette"])
    f["palette_alpha"] = good / "palette_alpha.png"
    pa = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    pa.info["transparency"] = 0
    pa.save(f["palette_alpha"], transparency=0)
    f["rgba"] = good / "rgba.png"
    rgba = rgb.convert("RGBA")
    rgba.putalpha(Image.new("L", rgb.size, 0))  # fully transparent: must come out white, not black
    rgba.save(f["rgba"])
    f["tiff"] = good / "scan.tif"
    rgb.save(f["tiff"])
    f["unicode"] = good / "猫 café 🐱 ü.png"
    rgb.save(f["unicode"])

    ok_png = (good / "upright.png").read_bytes()
    ok_jpg = f["exif6"].read_bytes()
    f["truncated_jpg"] = bad / "truncated.jpg"
    f["truncated_jpg"].write_bytes(ok_jpg[: len(ok_jpg) // 2])
    f["truncated_png"] = bad / "truncated.png"
    f["truncated_png"].write_bytes(ok_png[: len(ok_png) // 2])
    f["zero"] = bad / "zero.jpg"
    f["zero"].write_bytes(b"")
    f["text"] = bad / "notes.jpg"
    f["text"].write_text("this is a text file, not a JPEG\n")
    f["bomb"] = bad / "bomb.png"
    _bomb_png(f["bomb"])
    raw = os.fsencode(bad) + b"/" + NON_UTF8_NAME
    with open(raw, "wb") as fh:
        fh.write(ok_png)
    f["non_utf8"] = Path(os.fsdecode(raw))
    # symlink loops: a folder linking to its parent, two files linking to each other, a dangling link
    (bad / "loop").symlink_to(root)
    (bad / "a.jpg").symlink_to(bad / "b.jpg")
    (bad / "b.jpg").symlink_to(bad / "a.jpg")
    (bad / "dangling.png").symlink_to(root / "nowhere.png")
    return f


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    root = tmp_path_factory.mktemp("corpus") / "data"
    return root, build_corpus(root)


def test_bad_input_corpus_through_curate_ingest(tmp_path, corpus):
    root, f = corpus
    r = curate("ingest", root, "-p", tmp_path / "p")
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "Traceback" not in out
    assert "9 new" in out and "9 quarantined" in out, out
    lines = {ln.strip() for ln in out.splitlines()}

    def reason(name: str) -> str:
        hits = [ln for ln in lines if ln.startswith(f"quarantined {root / 'bad' / name}:")]
        assert len(hits) == 1, (name, out)
        return hits[0]

    assert "corrupt or truncated image" in reason("truncated.jpg")
    assert "corrupt or truncated image" in reason("truncated.png")
    assert reason("zero.jpg").endswith("zero-byte file")
    assert "not an image" in reason("notes.jpg")
    assert "image too large" in reason("bomb.png") and "CURATE_MAX_PIXELS" in reason("bomb.png")
    assert "Too many levels of symbolic links" in reason("a.jpg") and "symbolic links" in reason("b.jpg")
    assert "No such file" in reason("dangling.png")
    non_utf8 = [ln for ln in lines if ln.startswith("quarantined") and "caf\\xe9.png" in ln]
    assert len(non_utf8) == 1 and "not valid UTF-8; rename the file" in non_utf8[0]
    assert any(ln.startswith("skipped") and "symlink loop" in ln and str(root / "bad" / "loop") in ln for ln in lines)
    assert "they are retried" in out  # what to do about quarantined files

    from curate.engine.catalog import open_project

    cat = open_project(tmp_path / "p")
    s = cat.samples().set_index("path")
    assert len(s) == 9 and set(cat.current_labels()["label"]) == {"good"}
    assert (s.loc[str(f["exif6"]), "width"], s.loc[str(f["exif6"]), "height"]) == (16, 32)  # as displayed
    assert s.loc[str(f["cmyk"]), "mode"] == "CMYK" and s.loc[str(f["gray16"]), "mode"].startswith("I")
    assert str(f["unicode"]) in s.index
    assert cat.counts()["quarantined"] == 9
    r = curate("ingest", root, "-p", tmp_path / "p")  # rerun: nothing new, nothing repeated, still no crash
    assert r.returncode == 0 and "0 new, 9 unchanged" in r.stdout and cat.counts()["quarantined"] == 9


def test_odd_modes_decode_upright_and_8bit(corpus):
    _, f = corpus
    up = np.asarray(open_rgb(f["upright"]), np.int16)
    ex = np.asarray(open_rgb(f["exif6"]), np.int16)
    assert ex.shape == up.shape == (32, 16, 3)
    assert np.abs(ex - up).mean() < 8  # JPEG noise only: the red band on top, like the upright copy
    assert (ex[:3, :, 0] > 180).all() and (ex[:3, :, 2] < 80).all()
    for name in ("cmyk", "palette", "palette_alpha", "tiff", "unicode"):
        im = open_rgb(f[name])
        assert im.mode == "RGB" and im.size == (32, 16), name
    g = np.asarray(open_rgb(f["gray16"]))[..., 0]
    assert g[:, 0].max() < 10 and g[:, -1].min() > 245 and 100 < g.mean() < 155  # scaled, not clipped to white
    assert (np.asarray(open_rgb(f["rgba"])) == 255).all()  # transparent -> white


def test_embed_thumbnails_and_large_view_see_exif_images_upright(tmp_path, corpus):
    from curate.app.components import full_image
    from curate.engine.embed import embed_project, load_embeddings
    from curate.engine.encoders import get_encoder
    from curate.engine.thumbnails import make_thumbnail

    root, f = corpus
    cat = init_project(tmp_path / "p")
    ingest(cat, root / "good", kind="unlabeled")
    enc = get_encoder("effnet-lite0:64", device="cpu")
    embed_project(cat, encoder=enc, batch_size=5, workers=0)
    assert cat.counts()["quarantined"] == 0  # every odd-but-valid image embeds
    es = load_embeddings(cat)
    vec = dict(zip(cat.samples()["path"], es.vectors))
    sim = lambda a, b: float(vec[str(f[a])] @ vec[str(f[b])])  # noqa: E731
    assert sim("exif6", "upright") > 0.97
    assert sim("exif6", "upright") > sim("tiff", "upright") + 0.05  # the stored (sideways) pixels look different

    thumb = tmp_path / "t.jpg"
    assert make_thumbnail(f["exif6"], thumb, size=32)
    with Image.open(thumb) as t:
        assert t.size == (16, 32)
        band = np.asarray(t)[:3].astype(int)
        assert (band[..., 0] > 150).all() and (band[..., 2] < 100).all()  # the red band on top
    assert make_thumbnail(f["gray16"], thumb, size=32)
    with Image.open(thumb) as t:
        assert 100 < np.asarray(t).mean() < 155

    assert full_image(str(cat.root), str(f["upright"])) == str(f["upright"])  # the browser shows it as is
    for name in ("exif6", "tiff", "gray16", "cmyk"):
        view = full_image(str(cat.root), str(f[name]))
        assert isinstance(view, bytes), name  # decoded upright to a JPEG first
    import io

    with Image.open(io.BytesIO(full_image(str(cat.root), str(f["exif6"])))) as v:
        assert v.size == (16, 32)
    placeholder = full_image(str(cat.root), str(f["truncated_png"]))
    assert isinstance(placeholder, bytes) and placeholder == full_image(str(cat.root), "/no/such/file.png")


def test_image_statistics_and_hashes_use_the_upright_image(corpus):
    from curate.engine.analyses.duplicates import file_perceptual_hashes
    from curate.engine.analyses.image_quality import file_statistics

    _, f = corpus
    assert file_statistics(f["exif6"])["aspect_ratio"] == pytest.approx(0.5)
    H, ok = file_perceptual_hashes([str(f["exif6"]), str(f["upright"]), str(f["tiff"]), str(f["truncated_png"])])
    assert ok.tolist() == [True, True, True, False]
    dist = lambda a, b: int(np.unpackbits(H[a] ^ H[b]).sum())  # noqa: E731
    assert dist(0, 1) <= 4 < dist(0, 2)


def test_manifest_errors_name_the_file_row_and_fix(project, tmp_path):
    m = tmp_path / "m.csv"
    m.write_text("path,label\na.png,cat\nb.png,cat, tabby\n")
    with pytest.raises(CurateError, match=r"cannot read manifest .*m\.csv: .*line 3.*put double quotes around values"):
        ingest(project, m)
    latin = tmp_path / "latin.csv"
    latin.write_bytes("path,label\nchat.png,caf\xe9\n".encode("latin-1"))
    with pytest.raises(CurateError, match=r"latin\.csv: it is not UTF-8 text .*save it as UTF-8"):
        ingest(project, latin)
    nolabel = tmp_path / "nolabel.csv"
    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    nolabel.write_text("path\nx.png\n")  # no label column: ingested unlabeled, not an error
    assert ingest(project, nolabel).added == 1 and project.current_labels()["label"].isna().all()


def test_manifest_paths_outside_the_dataset_and_hostile_labels_never_escape_the_export(project, tmp_path):
    from curate.engine.export import export_dataset

    data = tmp_path / "dataset"
    data.mkdir()
    Image.new("RGB", (8, 8), RED).save(tmp_path / "outside.png")  # next to, not inside, the dataset folder
    Image.new("RGB", (8, 8), BLUE).save(data / "in.png")
    pd.DataFrame({"path": ["../outside.png", "in.png"], "label": ["../../../escape", "/etc/cron.d/x"],
                  "split": ["../../train", "val"]}).to_csv(data / "m.csv", index=False)
    assert ingest(project, data / "m.csv").added == 2
    out = tmp_path / "export"
    export_dataset(project, out_dir=out, formats=["csv", "imagefolder"], link="copy")
    written = [p for p in tmp_path.rglob("*") if p.is_file() and not p.is_relative_to(data)
               and p.name not in ("outside.png",) and not p.is_relative_to(project.root)]
    assert written and all(p.resolve().is_relative_to(out.resolve()) for p in written), written
    assert not (Path("/etc/cron.d/x")).exists()
    assert sorted(p.name for p in (out / "imagefolder").rglob("*.png")) == ["1_outside.png", "2_in.png"]
