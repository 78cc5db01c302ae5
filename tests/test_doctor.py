import shutil

import numpy as np

from curate.engine.byo import import_embeddings
from curate.engine.doctor import check
from curate.engine.ingest import ingest


def _healthy_project(project, image_folder, tmp_path):
    ingest(project, image_folder)
    ids = np.array([r[0] for r in project.query("SELECT id FROM samples ORDER BY id")])
    vecs = np.random.default_rng(0).normal(size=(len(ids), 16)).astype(np.float32)
    np.savez(tmp_path / "emb.npz", vectors=vecs, ids=ids)
    import_embeddings(project, tmp_path / "emb.npz", encoder="byo:test")
    from curate.indexes.graph import load_or_build_graph

    load_or_build_graph(project, "byo:test", k=3)
    return ids


def test_doctor_healthy_then_detects_and_repairs(project, image_folder, tmp_path):
    _healthy_project(project, image_folder, tmp_path)
    rep = check(project)
    assert rep.healthy, [f for f in rep.findings if f.severity != "ok"]

    # an interrupted run, a moved image, a corrupt graph file, an orphan shard and an orphan thumbnail
    project.start_run("embed")
    moved_from = image_folder / "train" / "cat" / "1.png"
    new_home = tmp_path / "elsewhere"
    new_home.mkdir()
    shutil.move(moved_from, new_home / "renamed.png")
    graph_file = next(project.project.indexes_dir.rglob("knn_graph.npz"))
    graph_file.write_bytes(graph_file.read_bytes()[:-10] + b"0123456789")
    shard_dir = next(project.project.embeddings_dir.iterdir())
    (shard_dir / "shard-999999.npy").write_bytes(b"junk")
    (project.project.thumbnails_dir / "424242.jpg").write_bytes(b"x")

    rep = check(project)
    assert not rep.healthy
    msgs = " | ".join(f"{f.check}: {f.message}" for f in rep.findings if f.severity != "ok")
    assert "never finished" in msgs and "missing" in msgs and "checksum mismatch" in msgs
    assert "orphan shard" in msgs and "thumbnail" in msgs

    rep = check(project, repair=True, search_roots=[new_home])
    assert rep.healthy, [f for f in rep.findings if f.severity != "ok" and not f.repaired]
    assert project.scalar("SELECT count(*) FROM samples WHERE path = ?", [str(new_home / "renamed.png")]) == 1
    assert not (shard_dir / "shard-999999.npy").exists()
    assert check(project).healthy


def test_doctor_finds_stale_and_orphan_indexes_bad_shards_and_leftovers_and_the_cli_repairs(tmp_path):
    import os
    import time

    from curate.engine.embed import embeddings_dir, load_embeddings
    from curate.indexes import store
    from curate.indexes.search import load_or_build_index
    from tests.fault_helpers import byo_project, curate

    cat, _ = byo_project(tmp_path)
    load_or_build_index(cat, "byo:test")
    from curate.indexes.graph import load_or_build_graph

    load_or_build_graph(cat, "byo:test", k=3)
    ids = cat.samples()["id"].to_numpy()
    # a second set imported in two shards, one of which will go bad
    np.savez(tmp_path / "other.npz", vectors=np.random.default_rng(3).normal(size=(len(ids), 8)).astype(np.float32),
             ids=ids)
    import_embeddings(cat, tmp_path / "other.npz", encoder="byo:other", shard_size=12)
    assert check(cat).healthy

    # the embeddings of byo:test change (re-imported): its index and graph are now stale
    np.savez(tmp_path / "new.npz", vectors=np.random.default_rng(4).normal(size=(len(ids), 16)).astype(np.float32),
             ids=ids)
    import_embeddings(cat, tmp_path / "new.npz", encoder="byo:test")
    # an index folder of an encoder that no longer exists
    orphan = cat.project.indexes_dir / "byo-gone-12345678"
    orphan.mkdir()
    (orphan / store.INDEX_FILE).write_bytes(b"old")
    # a truncated shard of byo:other
    shard = embeddings_dir(cat, "byo:other") / "shard-000001.npy"
    shard.write_bytes(shard.read_bytes()[:64])
    # leftovers of killed processes: a partial export and an hour-old temp file of an index write
    (cat.project.exports_dir / ".20250101-000000.partial-99999999" / "imagefolder").mkdir(parents=True)
    tmp_file = store.index_dir(cat.root, "byo:test") / ".index.faiss.4242.deadbeef.tmp"
    tmp_file.write_bytes(b"half")
    os.utime(tmp_file, (time.time() - 7200, time.time() - 7200))

    r = curate("doctor", "-p", cat.root)
    assert r.returncode == 1, r.stdout + r.stderr
    out = r.stdout
    assert "stale (embeddings changed since it was built)" in out
    assert "byo-gone-12345678/: orphan index folder" in out
    assert "shard-000001.npy is corrupt (checksum mismatch)" in out
    assert "partial export folder(s) / temporary file(s)" in out
    assert "rerun with --repair" in out

    rep = check(cat, repair=True)  # what `curate doctor --repair` runs
    assert rep.healthy and all(f.repaired for f in rep.findings if f.severity != "ok")
    assert not orphan.exists() and not tmp_file.exists()
    assert not list(cat.project.exports_dir.glob(".*partial-*"))
    assert store.read_index_meta(store.index_dir(cat.root, "byo:test")) is None  # stale index removed: rebuilt on use
    # only the bad shard was dropped: the other shard's 12 vectors are still there, nothing wrong is loaded
    assert len(load_embeddings(cat, "byo:other")) == 12
    assert check(cat).healthy
    assert load_or_build_index(cat, "byo:test").status == "built"
