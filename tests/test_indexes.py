"""indexes/: exact and approximate kNN graphs, range pairs, index choice, persistence, staleness, search."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from curate.engine.catalog import CurateError, init_project, utcnow
from curate.indexes import build, store
from curate.indexes.build import build_index, choose_factory, exact_search, recall_at_k
from curate.indexes.graph import cached_graph, load_or_build_graph
from curate.indexes.knn import KnnGraph, extend_graph, knn_graph, range_pairs
from curate.indexes.search import index_for_embeddings, load_or_build_index, search_sample, search_vectors

ENCODER = "test-vectors"


# ------------------------------------------------------------------------------------------------ helpers
def unit(X: np.ndarray) -> np.ndarray:
    return (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)


def random_unit(n: int, d: int, seed: int = 0) -> np.ndarray:
    return unit(np.random.default_rng(seed).standard_normal((n, d)))


def clustered(n: int, d: int = 32, centers: int = 20, spread: float = 0.6, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centers, d))
    return unit(c[rng.integers(0, centers, n)] + spread * rng.standard_normal((n, d)))


def numpy_knn(X: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Reference: full similarity matrix, self masked by position, stable descending sort."""
    S = X.astype(np.float64) @ X.T.astype(np.float64)
    np.fill_diagonal(S, -np.inf)
    idx = np.argsort(-S, axis=1, kind="stable")[:, :k]
    return idx, np.take_along_axis(S, idx, axis=1)


def measured_recall(graph: KnnGraph, X: np.ndarray) -> float:
    """Recall of ``graph`` on every row against the exact graph (itself checked against numpy above)."""
    exact = knn_graph(X, graph.k, device="cpu", exact=True)
    return recall_at_k(exact.indices, exact.similarities, graph.indices,
                       build.gather_similarities(X, X, graph.indices))


def add_samples(cat, ids) -> None:
    ids = np.asarray(ids, dtype=np.int64)
    cat.append_rows("samples", pd.DataFrame({
        "id": ids, "content_hash": [f"h{i}" for i in ids], "path": [f"/data/img{i}.png" for i in ids],
        "ingested_at": [utcnow()] * len(ids)}))


def add_embeddings(cat, ids, vectors, encoder: str = ENCODER) -> None:
    from curate.engine.embed import write_shard

    write_shard(cat, encoder, np.asarray(ids, np.int64), vectors, {"encoder": encoder, "dim": vectors.shape[1]})


@pytest.fixture
def vector_project(tmp_path):
    """A real project whose 600 samples have 24-d clustered embeddings (one exact twin pair: ids 11 and 12)."""
    cat = init_project(tmp_path / "proj")
    X = clustered(600, 24, seed=3)
    X[11] = X[10]  # ids are 1-based: samples 11 and 12 are identical twins
    ids = np.arange(1, 601)
    add_samples(cat, ids)
    add_embeddings(cat, ids, X)
    return cat


# ------------------------------------------------------------------------------------------------ kNN graph
def test_exact_graph_equals_numpy_and_blocks_equal_one_shot():
    X = random_unit(500, 32, seed=1)
    ref_i, ref_s = numpy_knn(X, 10)
    one = knn_graph(X, 10, block_size=10_000, device="cpu")
    blocks = knn_graph(X, 10, block_size=37, device="cpu")
    assert one.method == "exact:faiss-cpu" and one.recall == 1.0
    np.testing.assert_array_equal(one.indices, ref_i)
    np.testing.assert_allclose(one.similarities, ref_s, atol=1e-5)
    np.testing.assert_array_equal(blocks.indices, one.indices)
    np.testing.assert_allclose(blocks.similarities, one.similarities, atol=1e-6)
    assert one.indices.dtype == np.int64 and one.similarities.dtype == np.float32
    assert (np.diff(one.similarities, axis=1) <= 1e-7).all()


def test_self_excluded_by_position_and_twins_kept():
    X = random_unit(40, 16, seed=2)
    X[5] = X[0]  # a pair of twins
    X[20:34] = X[19]  # 15 identical copies: more than k + 1
    g = knn_graph(X, 4, block_size=7, device="cpu")
    rows = np.arange(40)[:, None]
    assert not (g.indices == rows).any()
    assert g.indices[0, 0] == 5 and g.indices[5, 0] == 0
    assert g.similarities[0, 0] == pytest.approx(1.0, abs=1e-6)
    copies = set(range(19, 34))
    for r in range(19, 34):
        assert set(g.indices[r]) <= copies - {r}
        np.testing.assert_allclose(g.similarities[r], 1.0, atol=1e-6)
    t = knn_graph(X, 4, block_size=7, device="cpu", backend="torch")
    assert not (t.indices == rows).any() and t.indices[0, 0] == 5


def test_graph_padding_when_fewer_than_k_others():
    g = knn_graph(random_unit(3, 8), 5, device="cpu")
    assert g.indices.shape == (3, 5)
    assert (g.indices[:, 2:] == -1).all() and np.isneginf(g.similarities[:, 2:]).all()
    assert (g.indices[:, :2] >= 0).all()
    single = knn_graph(random_unit(1, 8), 3, device="cpu")
    assert (single.indices == -1).all()


def test_torch_tiled_path_on_cpu_equals_faiss():
    X = random_unit(700, 48, seed=4)
    ref = knn_graph(X, 8, device="cpu", backend="faiss")
    from curate.indexes.torch_knn import torch_knn_graph

    idx, sims, dtype = torch_knn_graph(X, 8, block_size=64, device="cpu", db_block_size=100)
    assert dtype == "float32"
    np.testing.assert_array_equal(idx, ref.indices)
    np.testing.assert_allclose(sims, ref.similarities, atol=1e-5)
    via_api = knn_graph(X, 8, block_size=64, device="cpu", backend="torch")
    assert via_api.method == "exact:torch-cpu-float32"
    np.testing.assert_array_equal(via_api.indices, ref.indices)


def test_torch_reduced_precision_candidates_are_rescored_in_float32():
    """The CUDA path selects candidates in half precision; here the same code runs in bfloat16 on the CPU."""
    import torch

    from curate.indexes.torch_knn import torch_knn_graph

    X = random_unit(400, 32, seed=5)
    ref = knn_graph(X, 6, device="cpu")
    idx, sims, dtype = torch_knn_graph(X, 6, block_size=50, device="cpu", dtype=torch.bfloat16)
    assert dtype == "bfloat16"
    # similarities are exact float32 values of the returned pairs, whatever precision selected them
    np.testing.assert_allclose(sims, build.gather_similarities(X, X, idx), atol=1e-6)
    assert recall_at_k(ref.indices, ref.similarities, idx, sims) >= 0.99


def test_approximate_graph_reaches_target_recall():
    X = clustered(6000, 32, centers=30, seed=6)
    g = knn_graph(X, 10, device="cpu", exact=False, seed=0)
    assert g.method.startswith("approx:faiss IVF") and "nprobe=" in g.method
    assert g.recall >= 0.95  # measured at build time on sampled rows ...
    assert measured_recall(g, X) >= 0.95  # ... and confirmed against exact search on every row
    assert not (g.indices == np.arange(len(X))[:, None]).any()


def test_extend_graph_equals_full_rebuild():
    X = random_unit(460, 24, seed=7)
    X[450] = X[3]  # a new row that is an exact twin of an old one
    old = knn_graph(X[:400], 7, device="cpu")
    ext = extend_graph(old, X, np.arange(400), block_size=50)
    full = knn_graph(X, 7, device="cpu")
    # the twins 3 and 450 tie: compare neighbour sets, and similarities position by position
    np.testing.assert_array_equal(np.sort(ext.indices, axis=1), np.sort(full.indices, axis=1))
    np.testing.assert_allclose(ext.similarities, full.similarities, atol=1e-6)
    assert ext.indices[3, 0] == 450 and ext.indices[450, 0] == 3
    assert ext.method.endswith("+extended")


# ------------------------------------------------------------------------------------------------ range pairs
@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_range_pairs_equal_brute_force(backend):
    X = clustered(530, 16, centers=8, spread=0.4, seed=8)
    X[100] = X[7]
    threshold = 0.8
    i, j, s = range_pairs(X, threshold, block_size=128, backend=backend, device="cpu")
    S = X.astype(np.float64) @ X.T.astype(np.float64)
    ri, rj = np.nonzero(np.triu(S >= threshold, k=1))
    assert len(ri) > 100
    np.testing.assert_array_equal(i, ri)
    np.testing.assert_array_equal(j, rj)
    np.testing.assert_allclose(s, S[ri, rj], atol=1e-5)
    assert ((i == 7) & (j == 100)).any()
    with pytest.raises(CurateError, match="raise the threshold"):
        range_pairs(X, threshold, block_size=128, backend=backend, device="cpu", max_pairs=10)


# ------------------------------------------------------------------------------------------------ index choice
def test_choose_factory_follows_size_and_memory():
    gib = 1 << 30
    assert choose_factory(10_000, 512, 4 * gib) == "Flat"
    assert choose_factory(300_000, 512, 4 * gib) == "HNSW32,Flat"
    assert choose_factory(1_000_000, 512, 4 * gib).startswith("IVF") and \
        choose_factory(1_000_000, 512, 4 * gib).endswith(",Flat")
    assert ",PQ" in choose_factory(1_000_000, 512, 512 << 20)
    with pytest.raises(CurateError, match="memory budget"):
        choose_factory(10_000_000, 512, 1 << 20)
    with pytest.raises(CurateError, match="invalid FAISS factory"):
        build_index(random_unit(50, 8), factory="NotAnIndex42")


def test_exact_index_search_equals_numpy():
    X = random_unit(300, 16, seed=9)
    ids = np.arange(300) * 10 + 5
    index, factory = build_index(X, ids, factory="auto")
    assert factory == "IDMap,Flat"
    Q = random_unit(7, 16, seed=10)
    D, I = index.search(Q, 5)
    S = Q @ X.T
    ref = np.argsort(-S, axis=1)[:, :5]
    np.testing.assert_array_equal(I, ids[ref])
    np.testing.assert_allclose(D, np.take_along_axis(S, ref, axis=1), atol=1e-5)


@pytest.mark.parametrize("factory", ["IVF64,Flat", "HNSW16,Flat"])
def test_approximate_index_is_tuned_to_target_recall(tmp_path, factory):
    X = clustered(4000, 32, centers=25, seed=11)
    ids = np.arange(4000, dtype=np.int64) + 1
    index, meta, status = index_for_embeddings(tmp_path, ENCODER, ids, X, factory)
    assert status == "built" and meta.factory == f"IDMap,{factory}"
    assert meta.recall_at_10 >= 0.95 and meta.recall_queries == 1000 and meta.search_params
    # independent check on fresh queries (perturbed data points) against exact search
    Q = unit(X[::37] + 0.05 * np.random.default_rng(1).standard_normal(X[::37].shape))
    true_s, true_p = exact_search(Q, X, 10)
    _, found = index.search(Q, 10)
    pos = np.where(found >= 0, found - 1, -1)
    assert recall_at_k(true_p, true_s, pos, build.gather_similarities(Q, X, pos)) >= 0.95


# ------------------------------------------------------------------------------------------------ persistence
def test_index_round_trip_stale_update_and_rebuild(tmp_path):
    X = clustered(1800, 24, seed=12)
    ids = np.arange(1800, dtype=np.int64) * 2 + 1
    old = slice(0, 1500)
    index, meta, status = index_for_embeddings(tmp_path, ENCODER, ids[old], X[old], "IVF32,Flat",
                                               catalog_version="1500:2999")
    assert status == "built"
    record = json.loads((tmp_path / store.INDEX_META).read_text())
    assert record["sha256"] == store.file_sha256(tmp_path / store.INDEX_FILE)
    assert record["n_vectors"] == 1500 and record["catalog_version"] == "1500:2999"
    assert record["content_key"].startswith("sha256:") and record["recall_at_10"] >= 0.95

    again, meta2, status = index_for_embeddings(tmp_path, ENCODER, ids[old], X[old], "IVF32,Flat")
    assert status == "loaded" and meta2.search_params == meta.search_params
    Q = X[:20]
    np.testing.assert_array_equal(again.search(Q, 5)[1], index.search(Q, 5)[1])

    # 300 new samples embedded: added to the saved index, not rebuilt
    upd, meta3, status = index_for_embeddings(tmp_path, ENCODER, ids, X, "IVF32,Flat")
    assert status == "updated (+300 vectors)"
    assert upd.ntotal == 1800 and meta3.incremental_adds == 1 and meta3.recall_at_10 >= 0.95
    assert upd.search(X[1700:1701], 1)[1][0, 0] == ids[1700]
    assert index_for_embeddings(tmp_path, ENCODER, ids, X, "IVF32,Flat")[2] == "loaded"

    # an old vector changed (re-embedded): not an append, so rebuilt
    X2 = X.copy()
    X2[3] = X[4]
    assert index_for_embeddings(tmp_path, ENCODER, ids, X2, "IVF32,Flat")[2] == "rebuilt: embeddings changed"


def test_corrupt_index_file_is_detected_and_rebuilt(tmp_path, caplog):
    X = random_unit(200, 16, seed=13)
    ids = np.arange(200, dtype=np.int64)
    index_for_embeddings(tmp_path, ENCODER, ids, X)
    path = tmp_path / store.INDEX_FILE
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte: FAISS would happily read it
    path.write_bytes(bytes(data))
    with pytest.raises(store.CorruptIndexError, match="checksum mismatch"):
        store.load_index(tmp_path)
    with caplog.at_level(logging.WARNING):
        index, meta, status = index_for_embeddings(tmp_path, ENCODER, ids, X)
    assert status.startswith("rebuilt: corrupt index") and "corrupt" in caplog.text
    assert store.load_index(tmp_path) is not None
    D, I = index.search(X[:3], 1)
    np.testing.assert_array_equal(I[:, 0], [0, 1, 2])


def test_content_key_of_subset_rows_equals_key_of_subset():
    X = random_unit(100, 8, seed=14)
    ids = np.arange(100) + 7
    rows = np.array([0, 3, 4, 50, 99])
    assert store.content_key(ids, X, rows=rows) == store.content_key(ids[rows], X[rows])
    assert store.content_key(ids, X) != store.content_key(ids, X + np.float32(1e-6))
    assert store.content_key(ids, X) != store.content_key(ids + 1, X)


# ------------------------------------------------------------------------------------------------ cached graph
def test_graph_cache_hit_extend_rebuild_and_corruption(tmp_path):
    X = random_unit(500, 16, seed=15)
    ids = np.arange(500, dtype=np.int64) + 1
    g1 = cached_graph(tmp_path, ENCODER, ids[:450], X[:450], 8)
    assert g1.cache == "built"
    hit = cached_graph(tmp_path, ENCODER, ids[:450], X[:450], 5)
    assert hit.cache == "hit" and hit.k == 5
    np.testing.assert_array_equal(hit.indices, g1.indices[:, :5])

    ext = cached_graph(tmp_path, ENCODER, ids, X, 8)
    assert ext.cache == "extended (+50 samples)"
    full = knn_graph(X, 8, device="cpu")
    np.testing.assert_array_equal(ext.indices, full.indices)
    assert json.loads((tmp_path / store.GRAPH_META).read_text())["incremental_adds"] == 1

    assert cached_graph(tmp_path, ENCODER, ids, X, 12).cache.startswith("rebuilt: cached graph has k=8")
    path = tmp_path / store.GRAPH_FILE
    data = bytearray(path.read_bytes())
    data[-100] ^= 0x01
    path.write_bytes(bytes(data))
    again = cached_graph(tmp_path, ENCODER, ids, X, 12)
    assert again.cache.startswith("rebuilt: corrupt cache") and "checksum mismatch" in again.cache
    np.testing.assert_array_equal(again.indices, knn_graph(X, 12, device="cpu").indices)


def test_load_or_build_graph_on_a_project(vector_project):
    cat = vector_project
    es, g = load_or_build_graph(cat, k=6)
    assert es.encoder == ENCODER and g.cache == "built" and g.n == 600
    row10, row11 = es.rows([11, 12])
    assert g.indices[row10, 0] == row11 and g.indices[row11, 0] == row10  # twins, each excluding itself only
    folder = cat.root / "indexes" / store.index_dir(cat.root, ENCODER).name
    assert (folder / store.GRAPH_FILE).exists()
    meta = store.read_graph_meta(folder)
    assert meta.catalog_version == cat.version_token() and meta.k == 6

    _, again = load_or_build_graph(cat, k=6)
    assert again.cache == "hit"
    np.testing.assert_array_equal(again.indices, g.indices)

    new_ids = np.arange(601, 621)
    add_samples(cat, new_ids)
    add_embeddings(cat, new_ids, clustered(20, 24, seed=99))
    es2, ext = load_or_build_graph(cat, k=6)
    assert ext.cache == "extended (+20 samples)" and ext.n == 620
    np.testing.assert_array_equal(ext.indices, knn_graph(es2.vectors, 6, device="cpu").indices)


# ------------------------------------------------------------------------------------------------ search API
def test_search_vectors_and_sample(vector_project):
    cat = vector_project
    from curate.engine.embed import load_embeddings

    es = load_embeddings(cat)
    hits = search_vectors(cat, es.vectors[[0, 50]], k=3)
    assert hits.sample_ids.shape == (2, 3)
    assert hits.sample_ids[0, 0] == es.sample_ids[0] and hits.scores[0, 0] == pytest.approx(1.0, abs=1e-5)
    folder = store.index_dir(cat.root, ENCODER)
    assert store.read_index_meta(folder).factory == "IDMap,Flat"

    table = search_sample(cat, 11, k=4)
    assert list(table.columns) == ["rank", "sample_id", "score", "label", "path"]
    assert 11 not in set(table["sample_id"]) and table.iloc[0]["sample_id"] == 12  # its twin, not itself
    assert table.iloc[0]["path"] == "/data/img12.png" and table["rank"].tolist() == [1, 2, 3, 4]
    with pytest.raises(CurateError, match="sample 99999 does not exist"):
        search_sample(cat, 99999)

    loaded = load_or_build_index(cat)  # held by a UI across searches
    assert loaded.status == "loaded" and loaded.meta.n_vectors == 600
    pd.testing.assert_frame_equal(search_sample(cat, 11, k=4, index=loaded), table)


def test_cli_search_by_sample(vector_project):
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(root), COLUMNS="200")
    run = lambda *a: subprocess.run([sys.executable, "-m", "curate.engine.cli", *map(str, a)], capture_output=True,
                                    text=True, env=env, timeout=120)
    r = run("search", "--sample", 11, "-k", 3, "-p", vector_project.root)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "img12.png" in r.stdout and "most similar to sample 11" in r.stdout
    r = run("search", "-p", vector_project.root)
    assert r.returncode == 1 and "exactly one of" in r.stdout + r.stderr


def test_image_and_text_search_with_the_offline_encoder(tmp_path):
    """End to end with a real encoder: ingest images, embed, search by image file; text needs CLIP."""
    from PIL import Image

    from curate.engine.embed import embed_project
    from curate.engine.ingest import ingest
    from curate.indexes import search as search_module
    from curate.indexes.search import search_image, search_text

    rng = np.random.default_rng(0)
    (tmp_path / "data").mkdir()
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, size=(40, 40, 3), dtype=np.uint8)).save(tmp_path / "data" / f"{i}.png")
    cat = init_project(tmp_path / "proj")
    ingest(cat, tmp_path / "data", kind="unlabeled")
    # the search module's encoder cache serves the embedding step too: the weights are loaded once
    embed_project(cat, encoder=search_module._encoder("effnet-lite0", "cpu"), workers=0)
    hits = search_image(cat, tmp_path / "data" / "3.png", k=2, device="cpu")
    assert hits.iloc[0]["path"].endswith("3.png") and hits.iloc[0]["score"] > 0.99
    with pytest.raises(CurateError, match="text search needs a CLIP encoder"):
        search_text(cat, "a red car", device="cpu")
    with pytest.raises(CurateError, match="does not exist"):
        search_image(cat, tmp_path / "missing.png", device="cpu")
