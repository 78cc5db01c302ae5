import shutil

import numpy as np

from engine.byo import import_embeddings
from engine.doctor import check
from engine.ingest import ingest


def _healthy_project(project, image_folder, tmp_path):
    ingest(project, image_folder)
    ids = np.array([r[0] for r in project.query("SELECT id FROM samples ORDER BY id")])
    vecs = np.random.default_rng(0).normal(size=(len(ids), 16)).astype(np.float32)
    np.savez(tmp_path / "emb.npz", vectors=vecs, ids=ids)
    import_embeddings(project, tmp_path / "emb.npz", encoder="byo:test")
    from indexes.graph import load_or_build_graph

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
