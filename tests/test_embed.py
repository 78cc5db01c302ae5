"""The embedding pipeline (real EfficientNet-Lite0, real DuckDB, real files) and bring-your-own imports."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from curate.engine.catalog import CurateError, init_project
from curate.engine.embed import (
    EmbedReport,
    embed_project,
    embedding_sets,
    embedding_version,
    embeddings_dir,
    encoder_slug,
    load_embeddings,
)
from curate.engine.ingest import ingest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def effnet():
    from curate.engine.encoders import get_encoder

    return get_encoder("effnet-lite0", device="cpu")


def write_images(root: Path, n: int, seed: int = 0, classes=("cat", "dog"), start: int = 0) -> list[Path]:
    """ImageFolder root/<class>/<i>.{png,jpg}: smooth random colour blobs (distinct per image)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(start, start + n):
        cls = classes[i % len(classes)]
        small = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((48, 40), Image.BILINEAR)
        path = root / cls / f"{i:03d}.{'jpg' if i % 3 == 0 else 'png'}"
        path.parent.mkdir(parents=True, exist_ok=True)
        img.save(path)
        out.append(path)
    return out


def make_project(tmp_path: Path, n: int, name: str = "project"):
    data = tmp_path / f"{name}-data"
    paths = write_images(data, n)
    cat = init_project(tmp_path / name)
    ingest(cat, data)
    return cat, data, paths


def vectors_by_path(cat, es) -> dict[str, np.ndarray]:
    paths = dict(cat.query("SELECT id, path FROM samples"))
    return {paths[int(s)]: v for s, v in zip(es.sample_ids, es.vectors)}


# ------------------------------------------------------------------------------------------------ pipeline
def test_embed_writes_checksummed_shards_and_loads_them(tmp_path, effnet):
    cat, data, paths = make_project(tmp_path, 7)
    rep = EmbedReport(encoder="")
    name = embed_project(cat, encoder=effnet, batch_size=4, workers=0, shard_size=3, report=rep)
    assert name == "effnet-lite0" and rep.embedded == 7 and rep.shards == 3 and not rep.quarantined

    es = load_embeddings(cat)
    ids = cat.samples()["id"].to_numpy()
    assert es.encoder == name and es.sample_ids.dtype == np.int64 and es.vectors.dtype == np.float32
    assert np.array_equal(es.sample_ids, ids)
    assert es.vectors.shape == (7, 1280)
    assert np.allclose(np.linalg.norm(es.vectors, axis=1), 1.0, atol=1e-5)

    # the stored vectors are what the encoder computes for those files (float16 storage)
    by_path = vectors_by_path(cat, es)
    direct = effnet.encode_images(torch.stack([effnet.transform(Image.open(p).convert("RGB")) for p in paths])).numpy()
    for p, v in zip(paths, direct):
        assert np.abs(by_path[str(p)] - v).max() < 2e-3

    folder = embeddings_dir(cat, name)
    assert folder.name == encoder_slug(name) == "effnet-lite0"
    shards = cat.query_df("SELECT shard, n, sha256 FROM embedding_shards WHERE encoder = ? ORDER BY shard", [name])
    assert list(shards["shard"]) == ["shard-000000", "shard-000001", "shard-000002"]
    assert list(shards["n"]) == [3, 3, 1]
    import hashlib

    for shard, sha in zip(shards["shard"], shards["sha256"]):
        assert hashlib.sha256((folder / f"{shard}.npy").read_bytes()).hexdigest() == sha
        arr = np.load(folder / f"{shard}.npy")
        shard_ids = np.load(folder / f"{shard}.ids.npy")
        assert arr.dtype == np.float16 and shard_ids.dtype == np.int64 and len(arr) == len(shard_ids)
        rows = cat.query("SELECT sample_id, row FROM embedded WHERE encoder = ? AND shard = ? ORDER BY row", [name, shard])
        assert [r[0] for r in rows] == shard_ids.tolist() and [r[1] for r in rows] == list(range(len(shard_ids)))

    sets = embedding_sets(cat)
    assert list(sets["encoder"]) == [name] and int(sets["dim"][0]) == 1280 and sets["dtype"][0] == "float16"
    pre = json.loads(cat.scalar("SELECT preprocessing FROM embedding_sets WHERE encoder = ?", [name]))
    assert pre["preprocessing"]["crop"] == 224 and pre["preprocessing"]["mean"] == [0.5, 0.5, 0.5]
    run = cat.last_run("embed")
    assert run["summary"]["embedded"] == 7 and run["params"]["encoder"] == name
    assert es.rows([int(ids[3]), 10_000]).tolist() == [3, -1]


def test_rerun_embeds_only_new_and_changed_samples(tmp_path, effnet):
    cat, data, paths = make_project(tmp_path, 5)
    embed_project(cat, encoder=effnet, batch_size=8, workers=0)
    before = load_embeddings(cat)
    token = embedding_version(cat, "effnet-lite0")

    rep = EmbedReport(encoder="")
    embed_project(cat, encoder=effnet, batch_size=8, workers=0, report=rep)
    assert rep.embedded == 0 and rep.already_embedded == 5 and embedding_version(cat, "effnet-lite0") == token

    write_images(data, 2, seed=99, start=5)
    changed = paths[1]
    Image.fromarray(np.full((40, 48, 3), 200, np.uint8)).save(changed)  # same path, new pixels
    ingest(cat, data)
    rep = EmbedReport(encoder="")
    embed_project(cat, encoder=effnet, batch_size=8, workers=0, report=rep)
    assert rep.embedded == 3 and rep.already_embedded == 4  # 2 new + 1 changed (its old vector was dropped)
    assert embedding_version(cat, "effnet-lite0") != token

    after = load_embeddings(cat)
    assert len(after) == 7 and len(np.unique(after.sample_ids)) == 7
    old, new = vectors_by_path(cat, before), vectors_by_path(cat, after)
    for p in map(str, paths):
        if p == str(changed):
            assert float(old[p] @ new[p]) < 0.99  # recomputed from the new pixels
        else:
            assert np.array_equal(old[p], new[p])  # untouched


def test_image_broken_after_ingest_is_quarantined_not_fatal(tmp_path, effnet):
    cat, data, paths = make_project(tmp_path, 4)
    bad = paths[2]
    good_bytes = bad.read_bytes()
    bad.write_bytes(good_bytes[: len(good_bytes) // 3])  # truncated after ingest
    rep = EmbedReport(encoder="")
    embed_project(cat, encoder=effnet, batch_size=4, workers=0, report=rep)
    assert rep.embedded == 3 and [p for p, _ in rep.quarantined] == [str(bad)]
    q = cat.quarantine_rows()
    assert list(q["path"]) == [str(bad)] and list(q["stage"]) == ["embed"]
    assert "cannot decode at embed time" in q["reason"][0]
    es = load_embeddings(cat)
    assert len(es) == 3 and str(bad) not in vectors_by_path(cat, es)

    rep = EmbedReport(encoder="")  # not retried while the file is unchanged
    embed_project(cat, encoder=effnet, batch_size=4, workers=0, report=rep)
    assert rep.embedded == 0 and rep.skipped_quarantined == 1

    Image.fromarray(np.zeros((40, 48, 3), np.uint8)).save(bad)  # repaired and re-ingested: retried
    ingest(cat, data)
    rep = EmbedReport(encoder="")
    embed_project(cat, encoder=effnet, batch_size=4, workers=0, report=rep)
    assert rep.embedded == 1 and len(load_embeddings(cat)) == 4
    assert cat.quarantine_rows().empty


def test_sigkill_mid_shard_then_rerun_equals_uninterrupted_run(tmp_path, effnet):
    cat, data, _ = make_project(tmp_path, 8)
    folder = embeddings_dir(cat, "effnet-lite0")
    script = (
        "from curate.engine.catalog import open_project\n"
        "from curate.engine.embed import embed_project\n"
        f"embed_project(open_project({str(cat.root)!r}), encoder='effnet-lite0', device='cpu', workers=0,"
        " batch_size=4, shard_size=4)\n"
    )
    # each shard file sits in place for 2 s before its catalog commit: the kill lands inside that window
    env = dict(os.environ, CURATE_TEST_EMBED_PAUSE_PRECOMMIT="2", PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, cwd=str(ROOT),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not (folder / "shard-000001.npy").exists():
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "embed subprocess made no progress"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL

    # exactly one complete shard is recorded; the second file is an orphan without catalog rows
    assert cat.query("SELECT shard, n FROM embedding_shards") == [("shard-000000", 4)]
    assert cat.scalar("SELECT count(*) FROM embedded") == 4
    assert (folder / "shard-000001.npy").exists()
    assert cat.last_run("embed", status="running") is not None  # the killed run never finished

    rep = EmbedReport(encoder="")
    embed_project(cat, encoder=effnet, batch_size=4, workers=0, shard_size=4, report=rep)
    assert rep.embedded == 4 and rep.already_embedded == 4
    resumed = load_embeddings(cat)
    assert len(resumed) == 8 and len(np.unique(resumed.sample_ids)) == 8
    assert cat.scalar("SELECT count(*) FROM embedded") == 8
    assert [r[0] for r in cat.query("SELECT shard FROM embedding_shards ORDER BY shard")] == ["shard-000000", "shard-000001"]

    clean = init_project(tmp_path / "uninterrupted")
    ingest(clean, data)
    embed_project(clean, encoder=effnet, batch_size=4, workers=0, shard_size=4)
    reference = load_embeddings(clean)
    a, b = vectors_by_path(cat, resumed), vectors_by_path(clean, reference)
    assert a.keys() == b.keys()
    for p in a:
        assert np.abs(a[p] - b[p]).max() < 2e-3


def test_dataloader_workers_give_the_same_vectors(tmp_path, effnet):
    cat, _, _ = make_project(tmp_path, 4)
    embed_project(cat, encoder=effnet, batch_size=3, workers=1)
    with_workers = load_embeddings(cat)
    embed_project(cat, encoder=effnet, batch_size=4, workers=0, rebuild=True)
    without = load_embeddings(cat)
    assert np.array_equal(with_workers.sample_ids, without.sample_ids)
    assert np.abs(with_workers.vectors - without.vectors).max() < 2e-3


def test_corrupt_or_missing_shard_is_a_clear_error_and_rebuild_fixes_it(tmp_path, effnet):
    cat, _, _ = make_project(tmp_path, 4)
    embed_project(cat, encoder=effnet, batch_size=4, workers=0, shard_size=2)
    shard = embeddings_dir(cat, "effnet-lite0") / "shard-000001.npy"
    raw = bytearray(shard.read_bytes())
    raw[-3] ^= 0xFF
    shard.write_bytes(bytes(raw))
    with pytest.raises(CurateError, match=r"shard-000001\.npy is corrupt.*curate embed --encoder effnet-lite0 --rebuild"):
        load_embeddings(cat)
    shard.unlink()
    with pytest.raises(CurateError, match=r"shard-000001\.npy is missing.*--rebuild"):
        load_embeddings(cat, "effnet-lite0")

    rep = EmbedReport(encoder="")
    embed_project(cat, encoder=effnet, batch_size=4, workers=0, rebuild=True, report=rep)
    assert rep.embedded == 4 and len(load_embeddings(cat)) == 4


def test_load_without_embeddings_says_what_to_run(tmp_path):
    cat, _, _ = make_project(tmp_path, 2)
    with pytest.raises(CurateError, match="run `curate embed`"):
        load_embeddings(cat)
    empty = init_project(tmp_path / "empty")
    with pytest.raises(CurateError, match="no samples.*curate ingest"):
        embed_project(empty, encoder="effnet-lite0")


# ------------------------------------------------------------------------------------------------ bring your own
@pytest.fixture
def byo_project(tmp_path):
    cat, data, _ = make_project(tmp_path, 6)
    samples = cat.samples()
    ids = samples["id"].to_numpy()
    paths = [Path(p) for p in samples["path"]]  # aligned with ids (ascending)
    return cat, data, paths, ids


def test_import_embeddings_formats_and_coexistence(byo_project, tmp_path, effnet):
    from curate.engine.byo import import_embeddings

    cat, data, paths, ids = byo_project
    embed_project(cat, encoder=effnet, batch_size=6, workers=0)
    rng = np.random.default_rng(0)
    vecs = rng.normal(size=(6, 8)).astype(np.float32)
    unit = vecs / np.linalg.norm(vecs, axis=1, keepdims=True)

    # .npz with ids, rows in any order
    order = rng.permutation(6)
    np.savez(tmp_path / "mine.npz", vectors=vecs[order], ids=ids[order])
    rep = import_embeddings(cat, tmp_path / "mine.npz")
    assert rep.target == "byo:mine" and rep.rows == 6
    es = load_embeddings(cat)  # the most recent set
    assert es.encoder == "byo:mine" and np.array_equal(es.sample_ids, ids)
    assert np.abs(es.vectors - unit).max() < 2e-3
    assert load_embeddings(cat, "effnet-lite0").vectors.shape == (6, 1280)  # several encoders coexist
    assert set(embedding_sets(cat)["encoder"]) == {"effnet-lite0", "byo:mine"}

    # .npy + companion paths file with paths relative to the file's folder
    sub = tmp_path / "exports"
    sub.mkdir()
    np.save(sub / "feats.npy", vecs[:3] * 5)
    (sub / "feats.paths.txt").write_text("\n".join(os.path.relpath(p, sub) for p in paths[:3]) + "\n")
    rep = import_embeddings(cat, sub / "feats.npy", encoder="byo:feats")
    got = load_embeddings(cat, "byo:feats")
    assert rep.rows == 3 and np.array_equal(got.sample_ids, ids[:3]) and np.abs(got.vectors - unit[:3]).max() < 2e-3

    # Parquet with path + list column; a re-import replaces the earlier vectors of those samples
    df = pd.DataFrame({"path": [str(p) for p in paths[3:]], "vector": [list(v) for v in vecs[3:] * -1]})
    df.to_parquet(tmp_path / "more.parquet")
    import_embeddings(cat, tmp_path / "more.parquet", encoder="byo:feats")
    got = load_embeddings(cat, "byo:feats")
    assert len(got) == 6 and np.abs(got.vectors[3:] + unit[3:]).max() < 2e-3
    import_embeddings(cat, tmp_path / "more.parquet", encoder="byo:feats")
    assert len(load_embeddings(cat, "byo:feats")) == 6
    assert cat.scalar("SELECT count(*) FROM embedded WHERE encoder = 'byo:feats'") == 6


def test_import_embeddings_validation_errors(byo_project, tmp_path):
    from curate.engine.byo import import_embeddings

    cat, data, paths, ids = byo_project
    v = np.ones((3, 4), np.float32)

    def check(match: str, **arrays):
        f = tmp_path / "bad.npz"
        np.savez(f, **arrays)
        with pytest.raises(CurateError, match=match):
            import_embeddings(cat, f)

    check(r"2 of 3 sample ids are not in this project: 9999 \(row 2\), 12345 \(row 3\)",
          vectors=v, ids=np.array([ids[0], 9999, 12345]))
    check(r"paths are not samples of this project: '/nope/x.png' \(row 1\)", vectors=v[:1], paths=np.array(["/nope/x.png"]))
    check(r"2-D array", vectors=np.ones(3), ids=ids[:3])
    check(r"3 vectors but 2 ids", vectors=v, ids=ids[:2])
    bad = v.copy()
    bad[1, 2] = np.nan
    check(r"1 vectors contain NaN or infinity \(rows 2\)", vectors=bad, ids=ids[:3])
    check(r"all zeros \(rows 1\)", vectors=np.zeros((1, 4)), ids=ids[:1])
    check(r"repeat a sample listed earlier", vectors=v, ids=np.array([ids[0], ids[1], ids[0]]))
    check(r"no 'vectors' array", feats=v, ids=ids[:3])
    check(r"needs an 'ids'", vectors=v)

    np.save(tmp_path / "lonely.npy", v)
    with pytest.raises(CurateError, match=r"no companion file.*lonely\.ids\.npy"):
        import_embeddings(cat, tmp_path / "lonely.npy")
    pd.DataFrame({"sample_id": ids[:2], "vector": [[1.0, 2.0], [1.0]]}).to_parquet(tmp_path / "ragged.parquet")
    with pytest.raises(CurateError, match=r"different lengths.*rows 2"):
        import_embeddings(cat, tmp_path / "ragged.parquet")
    np.savez(tmp_path / "ok.npz", vectors=v, ids=ids[:3])
    with pytest.raises(CurateError, match="built-in encoder"):
        import_embeddings(cat, tmp_path / "ok.npz", encoder="effnet-lite0")
    import_embeddings(cat, tmp_path / "ok.npz", encoder="byo:x")
    np.savez(tmp_path / "wide.npz", vectors=np.ones((3, 5)), ids=ids[:3])
    with pytest.raises(CurateError, match="5-d but encoder byo:x already holds 4-d"):
        import_embeddings(cat, tmp_path / "wide.npz", encoder="byo:x")


def test_import_predictions(byo_project, tmp_path, caplog):
    from curate.engine.byo import import_predictions

    cat, data, paths, ids = byo_project
    assert cat.class_names() == ["cat", "dog"]
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.5, 0.5]])
    # columns in a different order than the project's; rows named by sample id
    pd.DataFrame({"sample_id": ids[:3], "dog": probs[:, 1], "cat": probs[:, 0]}).to_csv(tmp_path / "p.csv", index=False)
    rep = import_predictions(cat, tmp_path / "p.csv")
    assert rep.rows == 3 and not rep.warnings
    stored = cat.query_df("SELECT sample_id, probs, class_names, source FROM predictions ORDER BY sample_id")
    assert stored["sample_id"].tolist() == ids[:3].tolist()
    assert np.allclose(np.stack(stored["probs"].to_list()), probs, atol=1e-6)
    assert list(stored["class_names"][0]) == ["cat", "dog"] and stored["source"][0] == "import:p.csv"

    # rows close to 1 are renormalised with a warning; paths work as keys; re-import replaces
    pd.DataFrame({"path": [str(p) for p in paths[:2]], "cat": [0.6, 0.3], "dog": [0.402, 0.7]}).to_parquet(tmp_path / "q.parquet")
    rep = import_predictions(cat, tmp_path / "q.parquet")
    assert rep.rows == 2 and any("renormalised" in w for w in rep.warnings)
    assert cat.scalar("SELECT count(*) FROM predictions") == 3
    p0 = np.array(cat.scalar("SELECT probs FROM predictions WHERE sample_id = ?", [int(ids[0])]))
    assert np.isclose(p0.sum(), 1.0, atol=1e-6) and np.isclose(p0[0], 0.6 / 1.002, atol=1e-6)

    # npz without class names but with the project's class count: assumed sorted order, with a warning
    np.savez(tmp_path / "r.npz", probs=np.array([[0.25, 0.75]]), ids=ids[5:6])
    rep = import_predictions(cat, tmp_path / "r.npz")
    assert any("assuming the project's sorted class order" in w for w in rep.warnings)

    def check(df: pd.DataFrame, match: str):
        df.to_csv(tmp_path / "bad.csv", index=False)
        with pytest.raises(CurateError, match=match):
            import_predictions(cat, tmp_path / "bad.csv")

    check(pd.DataFrame({"sample_id": ids[:2], "cat": [0.5, 1.2], "dog": [0.5, 0.5]}), r"1 rows do not sum to 1 \(rows 2 sum to 1\.7\)")
    check(pd.DataFrame({"sample_id": ids[:2], "cat": [0.5, np.nan], "dog": [0.5, 0.5]}), r"NaN or infinity \(rows 2\)")
    check(pd.DataFrame({"sample_id": ids[:1], "cat": [0.5], "bird": [0.5]}), r"classes not in this project: 'bird'")
    check(pd.DataFrame({"sample_id": [ids[0], 777], "cat": [0.5, 0.5], "dog": [0.5, 0.5]}), r"777 \(row 2\)")
    check(pd.DataFrame({"sample_id": ids[:1], "cat": [-1.0], "dog": [2.0]}), r"negative values.*not logits")
    check(pd.DataFrame({"sample_id": ids[:1], "cat": [0.5], "dog": ["x"]}), r"must be numeric.*dog")
    check(pd.DataFrame({"name": ["a"], "cat": [1.0]}), r"needs a sample_id or path column")
    assert cat.scalar("SELECT count(*) FROM predictions") == 4  # failed imports wrote nothing


def test_cli_import_commands(byo_project, tmp_path):
    from typer.testing import CliRunner

    from curate.engine.cli import app

    cat, data, paths, ids = byo_project
    np.savez(tmp_path / "e.npz", vectors=np.eye(6, 4, dtype=np.float32) + 0.1, ids=ids)
    res = CliRunner().invoke(app, ["import-embeddings", str(tmp_path / "e.npz"), "-p", str(cat.root), "--encoder", "byo:cli"])
    assert res.exit_code == 0, res.output
    assert "imported 6 vectors as encoder byo:cli" in res.output
    pd.DataFrame({"sample_id": ids[:1], "cat": [0.3], "dog": [0.7]}).to_csv(tmp_path / "p.csv", index=False)
    res = CliRunner().invoke(app, ["import-predictions", str(tmp_path / "p.csv"), "-p", str(cat.root)])
    assert res.exit_code == 0 and "imported predictions for 1 samples" in res.output
    res = CliRunner().invoke(app, ["import-predictions", str(tmp_path / "missing.csv"), "-p", str(cat.root)])
    assert isinstance(res.exception, CurateError) and "does not exist" in str(res.exception)


def test_gpu_jpeg_path_and_its_cpu_fallback(tmp_path, effnet):
    """The CUDA decode path's logic, run with CPU tensors: batched decode_jpeg, per-file retry, PIL fallback."""
    from curate.engine.embed import _gpu_decodable, _gpu_decode

    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)).resize((64, 48), Image.BILINEAR)
    plain = tmp_path / "plain.jpg"
    img.save(plain, quality=95)
    rotated = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90: nvjpeg ignores EXIF, so this one must take the PIL path
    img.save(rotated, quality=95, exif=exif)
    cmyk = tmp_path / "cmyk.jpg"
    img.convert("CMYK").save(cmyk)
    png = tmp_path / "x.png"
    img.save(png)
    assert _gpu_decodable(plain.read_bytes())
    assert not _gpu_decodable(rotated.read_bytes()) and not _gpu_decodable(cmyk.read_bytes())
    assert not _gpu_decodable(png.read_bytes())

    broken = tmp_path / "broken.jpg"
    broken.write_bytes(plain.read_bytes()[:200])

    def raw(i, p):
        return (i, str(p), torch.frombuffer(bytearray(p.read_bytes()), dtype=torch.uint8))

    ids, tensors, failed = _gpu_decode(effnet, [raw(1, plain), raw(2, broken)], effnet.tensor_transform)
    assert ids == [1] and [f[0] for f in failed] == [2] and "cannot decode" in failed[0][2]
    # same pixels as PIL's decode, same preprocessing recipe (the PIL-vs-tensor resize is compared on photos in
    # test_encoders.py; on this tiny upscaled image uint8 rounding alone moves the features a little)
    pil_pixels = torch.from_numpy(np.array(Image.open(plain).convert("RGB"))).permute(2, 0, 1)
    assert torch.allclose(tensors[0], effnet.tensor_transform(pil_pixels), atol=1e-5)
    via_gpu_path = effnet.encode_images(torch.stack(tensors))
    via_pil = effnet.encode_images(effnet.load_batch([str(plain)]))
    assert float((via_gpu_path * via_pil).sum()) > 0.97


def test_one_writer_per_encoder(tmp_path):
    from curate.engine.embed import drop_embeddings, encoder_lock, remove_orphan_shards

    cat, _, _ = make_project(tmp_path, 2)
    with encoder_lock(cat, "effnet-lite0"):
        for call in (lambda: embed_project(cat, encoder="effnet-lite0"),
                     lambda: drop_embeddings(cat, "effnet-lite0"),
                     lambda: remove_orphan_shards(cat, "effnet-lite0")):
            with pytest.raises(CurateError, match="another curate process is writing embeddings for effnet-lite0"):
                call()
    assert remove_orphan_shards(cat, "effnet-lite0") == []  # released
