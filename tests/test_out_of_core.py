"""The out-of-core path behind `curate index` / `curate audit` (issue 10): above the size threshold (forced here
with --out-of-core / CURATE_OUT_OF_CORE) every analysis reads the embedding shards and a memory-mapped kNN graph,
writes the same catalog tables, and agrees with the in-memory analyses on the same project."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from curate.engine.analyses import active, clusters, duplicates, label_issues, outliers
from curate.engine.analyses.label_issues import label_issues_out_of_core
from curate.engine.catalog import init_project
from curate.engine.cli import app
from curate.engine.distributed.embed import add_synthetic_samples, embed_synthetic
from curate.engine.distributed.synthetic import SyntheticConfig, given_labels, true_classes
from curate.engine.inputs import Inputs
from curate.engine.shards import ShardRows, ShardedEmbeddings
from curate.indexes.graph import OOC_DIR, load_or_build_sharded_graph
from curate.indexes.search import load_or_build_index, search_sample

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_embed import make_project  # noqa: E402

CFG = SyntheticConfig(dim=32, n_classes=10, seed=5)
N = 5000


@pytest.fixture(scope="module")
def labeled_synthetic(tmp_path_factory):
    """5,000 synthetic vectors in 5 shards; every 7th sample unlabeled, the rest with 5% planted label noise;
    samples 10 and 11 share a content hash (an exact copy the partitions need not find)."""
    cat = init_project(tmp_path_factory.mktemp("ooc") / "project")
    add_synthetic_samples(cat, N)
    embed_synthetic(cat, CFG, batch_size=500, shard_size=1000)
    ids = cat.samples("id")["id"].to_numpy()
    keep = ids % 7 != 0
    lab = given_labels(ids, CFG)
    cat.add_labels([(int(i), f"c{int(c)}") for i, c in zip(ids[keep], lab[keep])], source="test")
    with cat.transaction() as con:
        con.execute("UPDATE samples SET content_hash = (SELECT content_hash FROM samples WHERE id = ?) WHERE id = ?",
                    [int(ids[10]), int(ids[11])])
    return cat, ids, keep, lab


def test_switch_follows_flag_env_and_threshold(labeled_synthetic, monkeypatch):
    cat = labeled_synthetic[0]
    monkeypatch.delenv("CURATE_OUT_OF_CORE", raising=False)
    monkeypatch.delenv("CURATE_OUT_OF_CORE_MIN_N", raising=False)
    def ooc(flag=None):  # the one decision point: Inputs.open
        return Inputs.open(cat, out_of_core=flag).out_of_core

    assert not ooc()  # 5,000 vectors: in memory by default
    assert ooc(True) and not ooc(False)
    monkeypatch.setenv("CURATE_OUT_OF_CORE_MIN_N", str(N - 1))
    assert ooc()
    assert not ooc(False)  # the flag beats the threshold
    monkeypatch.setenv("CURATE_OUT_OF_CORE", "0")
    assert not ooc()


def test_sharded_graph_is_cached_checked_and_rebuilt(labeled_synthetic):
    cat = labeled_synthetic[0]
    shards, g = load_or_build_sharded_graph(cat, k=10, rebuild=True)
    assert g.cache == "rebuilt: requested" and g.indices.shape == (N, 10) and isinstance(g.indices, np.memmap)
    _, again = load_or_build_sharded_graph(cat, k=5)
    assert again.cache == "hit" and again.k == 5 and np.array_equal(again.indices, g.indices[:, :5])
    folder = next((cat.root / "indexes").glob(f"*/{OOC_DIR}"))
    meta = json.loads((folder / "knn_graph.json").read_text())
    assert meta["content_key"] == shards.content_key() and meta["n"] == N
    # the exact sharded graph equals the in-memory one (same ids, same neighbours)
    from curate.indexes.graph import load_or_build_graph

    es, mem = load_or_build_graph(cat, k=10)
    sid = shards.sample_ids()
    assert np.array_equal(sid, es.sample_ids)
    assert np.allclose(np.asarray(g.similarities), mem.similarities, atol=1e-5)
    assert (np.asarray(g.indices) == mem.indices).mean() > 0.999  # only float ties may swap
    # a flipped byte is caught by the checksum and the graph rebuilt
    del g, again
    path = folder / "knn_similarities.npy"
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 0xFF
    path.write_bytes(bytes(raw))
    _, rebuilt = load_or_build_sharded_graph(cat, k=10)
    assert rebuilt.cache.startswith("rebuilt: corrupt cache")
    assert np.array_equal(np.asarray(rebuilt.indices), np.load(folder / "knn_indices.npy"))
    assert not list((cat.root / "indexes").glob("*/.knn-ooc*"))  # no temporary folder left behind


def test_streamed_label_issues_skip_unlabeled_rows():
    rng = np.random.default_rng(0)
    n, k = 400, 8
    labels = np.repeat(np.arange(4), n // 4)
    labels[::10] = -1
    idx = np.stack([rng.choice(np.flatnonzero((labels == labels[i]) | (labels < 0)), k) for i in range(n)])
    sims = np.sort(rng.uniform(0.5, 1.0, (n, k)), axis=1)[:, ::-1].astype(np.float32)
    flipped = np.flatnonzero(labels >= 0)[::25]
    given = labels.copy()
    given[flipped] = (given[flipped] + 1) % 4
    res = label_issues_out_of_core(idx, sims, given, 4, block_rows=64)
    assert np.isnan(res.label_quality[labels < 0]).all() and not res.is_issue[labels < 0].any()
    found = set(flipped) & set(np.flatnonzero(res.is_issue))
    assert len(found) >= 0.8 * len(flipped) and len(found) >= 0.8 * res.is_issue.sum(), (len(found), len(flipped),
                                                                                          res.is_issue.sum())
    assert res.confident_joint.sum() <= (given >= 0).sum() and res.noise_rates().max() < 0.2
    with pytest.raises(ValueError, match="no labeled row"):
        label_issues_out_of_core(idx, sims, np.full(n, -1), 4)


def test_out_of_core_analyses_agree_with_in_memory(labeled_synthetic):
    cat, ids, keep, lab = labeled_synthetic
    wrong = set(ids[keep][lab[keep] != true_classes(ids[keep], CFG)].tolist())
    res = {}
    for ooc in (False, True):
        li = label_issues.run(cat, out_of_core=ooc)
        flagged = set(cat.query_df("SELECT sample_id FROM label_issues WHERE is_issue")["sample_id"])
        n_rows = cat.scalar("SELECT count(*) FROM label_issues")
        out = outliers.run(cat, out_of_core=ooc)
        scores = cat.query_df("SELECT sample_id, score, rank FROM outliers ORDER BY sample_id")
        dup = duplicates.run(cat, out_of_core=ooc, hash_distance=None, semdedup=False)
        sets = cat.query_df("SELECT set_id, sample_id FROM duplicates")
        members = {frozenset(g["sample_id"]) for _, g in sets.groupby("set_id")}
        cl = clusters.run(cat, k=10, out_of_core=ooc, name_clusters=False, map_method="pca")
        sizes = cat.query_df("SELECT size FROM cluster_summaries ORDER BY cluster")["size"].tolist()
        q = active.run(cat, budget=15, out_of_core=ooc, export=False, pool_size=2_000)
        res[ooc] = dict(li=li, flagged=flagged, n_rows=n_rows, out=out, scores=scores, dup=dup, members=members,
                        cl=cl, sizes=sizes, q=q)
    mem, big = res[False], res[True]
    assert big["li"]["out_of_core"] and big["out"]["out_of_core"] and big["dup"]["out_of_core"]
    assert big["cl"].summary["out_of_core"] and big["cl"].map_method.startswith("pca")
    # label issues: same table shape, flags precise, noise estimate close to the in-memory (probe + kNN) one
    assert big["n_rows"] == mem["n_rows"] == int(keep.sum())
    precision = len(big["flagged"] & wrong) / len(big["flagged"])
    recall = len(big["flagged"] & wrong) / len(wrong)
    assert precision > 0.9 and recall > 0.5, (precision, recall)
    assert abs(big["li"]["estimated_noise_rate"] - mem["li"]["estimated_noise_rate"]) < 0.02
    # outliers: identical scores (same exact graph), same flags
    assert np.allclose(big["scores"]["score"], mem["scores"]["score"], atol=1e-5)
    assert big["out"]["flagged"] == mem["out"]["flagged"]
    # duplicates: the same sets, including the content-hash copy
    assert big["members"] == mem["members"] and frozenset(ids[10:12].tolist()) in big["members"]
    assert big["dup"]["candidates"]["candidate_rows"] < N and big["dup"]["samples"] == mem["dup"]["samples"] == N
    assert big["dup"]["leakage_pairs"] == mem["dup"]["leakage_pairs"]
    # clusters: every row assigned, purity close to the in-memory k-means
    assert sum(big["sizes"]) == N and big["cl"].k == 10
    assert abs(big["cl"].summary["weighted_purity"] - mem["cl"].summary["weighted_purity"]) < 0.05
    # active learning: a full batch of unlabeled samples from the pool
    assert len(big["q"].table) == 15
    unlabeled = set(ids[~keep].tolist())
    assert set(big["q"].table["sample_id"]) <= unlabeled
    pool = json.loads(cat.query("SELECT summary FROM runs WHERE kind = 'query' ORDER BY id DESC LIMIT 1")[0][0])
    assert pool["out_of_core_pool"]["pool"] == 2_000 and pool["out_of_core_pool"]["rows"] == N


def test_duplicates_one_compute_for_memory_and_shards(labeled_synthetic):
    """The registered duplicates analysis: the partitioned search gives the same pairs over the shards and over the
    loaded matrix (one implementation, the in-memory set is its one-block case); the registry runner finds the same
    sets either way, returns the lines `curate audit duplicates` prints, and an out-of-core run lists what it left
    out."""
    from curate.engine.analyses import registry
    from curate.engine.analyses.duplicates import ANALYSIS, PartitionedPairs, partitioned_near_duplicates
    from curate.engine.embed import load_embeddings

    cat, ids, _, _ = labeled_synthetic
    on_disk = partitioned_near_duplicates(ShardedEmbeddings.open(cat), 0.97, points_per_partition=500, seed=0)
    in_memory = partitioned_near_duplicates(load_embeddings(cat), 0.97, points_per_partition=500, seed=0)
    assert isinstance(on_disk, PartitionedPairs) and on_disk.n_partitions == in_memory.n_partitions == 10
    assert len(on_disk) > 0 and np.array_equal(on_disk.i, in_memory.i) and np.array_equal(on_disk.j, in_memory.j)
    assert np.allclose(on_disk.similarity, in_memory.similarity, atol=1e-6)
    assert registry.get("duplicates") is ANALYSIS and "SemDeDup curve" in ANALYSIS.in_memory_only
    res = {ooc: registry.run(cat, "duplicates", out_of_core=ooc, hash_distance=-1, pixel_check=False)
           for ooc in (False, True)}
    members = {ooc: {frozenset(r.detail.sample_ids[m].tolist()) for m in r.detail.sets.members}
               for ooc, r in res.items()}
    assert members[False] == members[True] and frozenset(ids[10:12].tolist()) in members[True]
    mem, big = res[False].summary, res[True].summary
    assert big["left_out"] == list(ANALYSIS.in_memory_only) and "left_out" not in mem
    assert "semdedup" in mem and "semdedup" not in big and big["hash_distance"] is None
    assert set(res[True].tables) == {"duplicates", "semdedup"} and res[True].tables["semdedup"].empty
    assert cat.scalar("SELECT count(*) FROM duplicates") == sum(len(m) for m in members[True])
    lines = res[True].printable()
    assert lines[0].startswith(f"{big['sets']} duplicate sets ({big['exact_sets']} exact")
    assert "pHash distance off)" in lines[0] and lines[1].startswith("train/test leakage: ")
    run = cat.last_run("duplicates")
    assert run["params"]["out_of_core"] is True and run["summary"]["left_out"] == big["left_out"]


def test_sharded_search_index_matches_in_memory(labeled_synthetic):
    cat, ids, _, _ = labeled_synthetic
    big = load_or_build_index(cat, out_of_core=True, rebuild=True)
    assert isinstance(big.embeddings, ShardRows) and big.status == "rebuilt: requested"
    assert load_or_build_index(cat, out_of_core=True).status == "loaded"
    mem = load_or_build_index(cat, out_of_core=False)
    a = search_sample(cat, int(ids[42]), k=5, index=big)
    b = search_sample(cat, int(ids[42]), k=5, index=mem)
    assert a["sample_id"].tolist() == b["sample_id"].tolist()
    assert np.allclose(a["score"], b["score"], atol=1e-5)
    shards = ShardedEmbeddings.open(cat)
    rows = ShardRows(shards)
    assert np.allclose(rows.vectors[rows.rows([int(ids[42])])[0]], mem.embeddings.vectors[42], atol=1e-6)


def test_cli_index_and_audit_take_the_out_of_core_path(labeled_synthetic, monkeypatch):
    cat = labeled_synthetic[0]
    runner = CliRunner()
    r = runner.invoke(app, ["index", "-p", str(cat.root), "--out-of-core"])
    assert r.exit_code == 0, r.output
    assert "out of core: 5000 vectors" in r.output and "kNN graph" in r.output
    monkeypatch.setenv("CURATE_OUT_OF_CORE_MIN_N", "1000")  # the automatic switch
    r = runner.invoke(app, ["audit", "outliers", "-p", str(cat.root)])
    assert r.exit_code == 0, r.output
    run = cat.query("SELECT params FROM runs WHERE kind = 'outliers' ORDER BY id DESC LIMIT 1")[0][0]
    assert json.loads(run)["out_of_core"] is True
    r = runner.invoke(app, ["audit", "labels", "-p", str(cat.root), "--in-memory"])
    assert r.exit_code == 0, r.output
    summary = cat.query("SELECT summary FROM runs WHERE kind = 'label_issues' ORDER BY id DESC LIMIT 1")[0][0]
    assert json.loads(summary)["out_of_core"] is False  # the registry runner records the switch either way


def test_full_audit_out_of_core_on_images_and_the_ui_reads_it(tmp_path, monkeypatch):
    """Real images, the real encoder, `run_audit` with the out-of-core switch on: every step succeeds, writes the
    usual tables, and the review app renders them."""
    from curate.engine.pipeline import run_audit
    from tests.test_ui_apptest import open_page

    cat, _, _ = make_project(tmp_path, 24)
    monkeypatch.setenv("CURATE_OUT_OF_CORE", "1")
    timings = run_audit(cat, encoder="effnet-lite0", cluster_k=2)
    assert all(t["status"] == "ok" for t in timings.values()), timings
    for kind in ("label_issues", "outliers", "duplicates", "clusters"):
        params = cat.query("SELECT params FROM runs WHERE kind = ? ORDER BY id DESC LIMIT 1", [kind])[0][0]
        assert json.loads(params)["out_of_core"] is True, kind
    assert cat.scalar("SELECT count(*) FROM label_issues") == 24
    assert cat.scalar("SELECT count(*) FROM clusters") == 24
    assert not list((cat.root / "indexes").glob("*/knn_graph.npz"))  # the in-memory graph was never built
    monkeypatch.setenv("CURATE_PROJECT", str(cat.root))
    for page in ("overview", "label_issues", "outliers", "clusters", "search"):
        open_page(page)
