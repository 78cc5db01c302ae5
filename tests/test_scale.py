"""Scale (issue 10): Ray embedding, sharded indexes and out-of-core analyses give the same results as the local,
in-memory paths.  Real Ray (a local 2-CPU instance shared by the whole session), real FAISS, real files."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from curate.engine.catalog import init_project
from curate.engine.distributed.embed import add_synthetic_samples, embed_synthetic, open_image
from curate.engine.distributed.synthetic import SyntheticConfig, given_labels, is_duplicate, true_classes
from curate.engine.embed import EmbedReport, load_embeddings, write_shard
from curate.engine.shards import ShardedEmbeddings

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_embed import make_project, write_images  # noqa: E402

CFG = SyntheticConfig(dim=32, n_classes=10, seed=3)


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray instance (2 CPUs, no dashboard) for every Ray test of the session."""
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'curate[scale]')")
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def synthetic_project(tmp_path_factory):
    """6,000 synthetic samples embedded locally into 6 shards of 1,000 (32-d, 10 classes)."""
    cat = init_project(tmp_path_factory.mktemp("scale") / "project")
    add_synthetic_samples(cat, 6000)
    embed_synthetic(cat, CFG, batch_size=500, shard_size=1000)
    return cat


def _catalog_records(cat, encoder):
    return {
        "sets": cat.query("SELECT encoder, dim, dtype, preprocessing FROM embedding_sets WHERE encoder = ?", [encoder]),
        "shards": cat.query("SELECT shard, n, sha256 FROM embedding_shards WHERE encoder = ? ORDER BY shard", [encoder]),
        "embedded": cat.query("SELECT sample_id, shard, row FROM embedded WHERE encoder = ? ORDER BY sample_id",
                              [encoder]),
    }


# ------------------------------------------------------------------------------------------------ embedding
def test_ray_embed_equals_local(tmp_path, ray_local):
    """Same files, same model: Ray actors and the local pipeline store byte-identical shards and catalog rows and
    quarantine the same broken file."""
    import torch

    from curate.engine.distributed.embed import embed_project_ray
    from curate.engine.embed import embed_project

    cats = {}
    for name in ("local", "ray"):
        cat, data, paths = make_project(tmp_path, 10, name)
        paths[3].write_bytes(paths[3].read_bytes()[:60])  # broken after ingest: quarantined at embed time
        cats[name] = (cat, data)
    enc = "effnet-lite0:64"
    # a 1-CPU Ray actor runs torch with one thread; so does the local run here: bit-identical float sums
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        embed_project(cats["local"][0], encoder=enc, device="cpu", batch_size=2, workers=0, shard_size=4)
    finally:
        torch.set_num_threads(threads)
    rep = EmbedReport(encoder="")
    embed_project_ray(cats["ray"][0], encoder=enc, workers=1, batch_size=2, shard_size=4, report=rep)
    assert rep.embedded == 9 and rep.shards == 3 and len(rep.quarantined) == 1 and rep.device.startswith("ray:1")

    a, b = load_embeddings(cats["local"][0]), load_embeddings(cats["ray"][0])
    assert np.array_equal(a.sample_ids, b.sample_ids) and np.array_equal(a.vectors, b.vectors)
    assert _catalog_records(cats["local"][0], enc) == _catalog_records(cats["ray"][0], enc)
    q = "SELECT replace(path, ?, ''), reason, stage FROM quarantine"
    assert cats["local"][0].query(q, [str(cats["local"][1])]) == cats["ray"][0].query(q, [str(cats["ray"][1])])
    run = cats["ray"][0].last_run("embed")
    assert run["params"]["ray"] == "default" and run["summary"]["embedded"] == 9


def test_cli_embed_ray_option(tmp_path):
    """`--ray` takes an optional address and routes to the Ray pipeline (whose batch-size check answers first)."""
    from typer.testing import CliRunner

    from curate.engine.cli import app

    cat, _, _ = make_project(tmp_path, 2)
    for extra in (["--ray"], ["--ray", "local"], ["--ray", "--workers", "1"], ["--workers", "1", "--ray"]):
        res = CliRunner().invoke(app, ["embed", "-p", str(cat.root), "--batch-size", "3", *extra])
        assert res.exit_code != 0 and "not a multiple of the batch size 3" in str(res.exception), (extra, res.output)
    assert cat.scalar("SELECT count(*) FROM runs") == 1  # the ingest run only: nothing started


def test_open_image_reads_fsspec_urls(tmp_path):
    path = write_images(tmp_path / "imgs", 1)[0]
    local, url = open_image(str(path)), open_image(path.resolve().as_uri())
    assert local.size == url.size and local.tobytes() == url.tobytes()


def test_synthetic_embed_on_ray_equals_local_and_resumes(tmp_path, ray_local):
    cats = []
    for name, use_ray in (("a", False), ("b", True)):
        cat = init_project(tmp_path / name)
        add_synthetic_samples(cat, 3000)
        rep = EmbedReport(encoder="")
        embed_synthetic(cat, CFG, use_ray=use_ray, workers=2, batch_size=250, shard_size=1000, report=rep)
        assert rep.embedded == 3000 and rep.shards == 3
        add_synthetic_samples(cat, 700)  # resume: only the new samples are embedded, into new shards
        rep = EmbedReport(encoder="")
        embed_synthetic(cat, CFG, use_ray=use_ray, workers=2, batch_size=250, shard_size=1000, report=rep)
        assert (rep.embedded, rep.already_embedded, rep.shards) == (700, 3000, 1)
        cats.append(cat)
    assert _catalog_records(cats[0], CFG.encoder_name) == _catalog_records(cats[1], CFG.encoder_name)
    assert len(_catalog_records(cats[0], CFG.encoder_name)["embedded"]) == 3700


# ------------------------------------------------------------------------------------------------ shards
def test_sharded_embeddings_equal_loaded_embeddings_with_superseded_rows(tmp_path):
    cat = init_project(tmp_path / "p")
    add_synthetic_samples(cat, 900)
    embed_synthetic(cat, CFG, batch_size=100, shard_size=300)
    ids = cat.samples()["id"].to_numpy()
    # a later shard replaces the vectors of 50 samples spread over the first two shards
    redo = ids[100:500:8]
    write_shard(cat, CFG.encoder_name, redo, np.random.default_rng(0).standard_normal((len(redo), CFG.dim)),
                CFG.describe())
    es = load_embeddings(cat)
    sh = ShardedEmbeddings.open(cat, verify=True)
    assert len(sh) == len(es) == 900 and len(sh.shards) == 4
    assert sh.shards[0].rows is not None and sh.shards[2].rows is None
    order = np.argsort(sh.sample_ids())
    assert np.array_equal(sh.sample_ids()[order], es.sample_ids)
    whole = np.concatenate([v for _, _, v in sh.iter_blocks(128)])
    assert np.array_equal(whole[order], es.vectors)
    pos = np.random.default_rng(1).choice(900, 77, replace=False)
    assert np.array_equal(sh.take(pos), whole[pos])
    # a corrupt shard is named, never read
    sh.shards[1].path.write_bytes(sh.shards[1].path.read_bytes()[:-8] + b"\0" * 8)
    from curate.engine.catalog import CurateError

    with pytest.raises(CurateError, match="shard-000001.npy is corrupt"):
        ShardedEmbeddings.open(cat)


# ------------------------------------------------------------------------------------------------ indexes
def test_sharded_search_equals_in_memory_search(synthetic_project, ray_local):
    from curate.indexes.build import build_index, exact_search, set_search_params
    from curate.indexes.sharded import RayShardedIndex, build_sharded_index, exact_topk

    sh = ShardedEmbeddings.open(synthetic_project)
    X = load_embeddings(synthetic_project).vectors  # ids are consecutive: global row == sorted position
    Q = X[::37]
    D0, I0 = exact_search(Q, X, 10)
    D1, I1 = exact_topk(sh, Q, 10)
    assert np.array_equal(I0, I1) and np.allclose(D0, D1, atol=1e-6)
    flat = build_sharded_index(sh, "Flat", groups=4)
    assert len(flat.parts) == 4 and flat.ntotal == len(X)
    D2, I2 = flat.search(Q, 10)
    assert np.array_equal(I0, I2)

    # IVF trained on the same sample as the in-memory builder: one index, 3 groups and 2 Ray actors agree
    mem, _ = build_index(X, factory="IVF32,Flat", seed=0)
    set_search_params(mem, "nprobe=3")
    Dm, Im = mem.search(Q, 10)
    local = build_sharded_index(sh, "IVF32,Flat", groups=3, seed=0)
    local.set_params("nprobe=3")
    Dl, Il = local.search(Q, 10)
    assert np.array_equal(Im, Il) and np.allclose(Dm, Dl, atol=1e-6)
    remote = RayShardedIndex.build(sh, "IVF32,Flat", workers=2, seed=0)
    try:
        remote.set_params("nprobe=3")
        Dr, Ir = remote.search(Q, 10)
        assert remote.ntotal == len(X) and np.array_equal(Il, Ir) and np.allclose(Dl, Dr, atol=1e-6)
    finally:
        remote.close()

    pq1 = build_sharded_index(sh, "IVF16,PQ8x4", groups=1, seed=0)
    pq3 = build_sharded_index(sh, "IVF16,PQ8x4", groups=3, seed=0)
    for ix in (pq1, pq3):
        ix.set_params("nprobe=4")
    (Dp1, Ip1), (Dp3, Ip3) = pq1.search(Q, 10), pq3.search(Q, 10)
    assert np.allclose(Dp1, Dp3, atol=1e-5)
    # PQ codes collide: equal distances may swap places; above the 10th distance the lists must agree
    for a, b, d in zip(Ip1, Ip3, Dp1):
        assert set(a[d > d[-1] + 1e-5]) == set(b[d > d[-1] + 1e-5])


def test_sharded_knn_graph_equals_in_memory_graph(synthetic_project, ray_local, tmp_path):
    from curate.indexes.build import recall_at_k
    from curate.indexes.knn import knn_graph
    from curate.indexes.sharded import sharded_knn_graph

    sh = ShardedEmbeddings.open(synthetic_project)
    X = load_embeddings(synthetic_project).vectors
    mem = knn_graph(X, 10, device="cpu")
    ooc = sharded_knn_graph(sh, 10, out_dir=tmp_path / "g", block_rows=1500)
    assert ooc.method == "exact:sharded-faiss" and isinstance(ooc.indices, np.memmap)
    # identical up to exact ties (float rounding order differs between one FAISS call and a merge of six)
    assert recall_at_k(mem.indices, mem.similarities, np.asarray(ooc.indices), np.asarray(ooc.similarities),
                       tol=1e-6) == 1.0
    assert np.allclose(mem.similarities, ooc.similarities, atol=1e-6)

    for approx in ("partitions", "ivf"):
        kw = dict(exact=False, approx=approx, factory="IVF32,Flat", target_recall=0.95, recall_queries=500)
        local = sharded_knn_graph(sh, 10, work_dir=tmp_path, **kw)
        on_ray = sharded_knn_graph(sh, 10, work_dir=tmp_path, ray_workers=2, **kw)
        assert local.recall >= 0.95 and on_ray.recall == local.recall
        assert "(ray x2" in on_ray.method and np.array_equal(local.indices, on_ray.indices)
        # the tuned recall holds on all rows, not just the tuning sample
        assert recall_at_k(mem.indices, mem.similarities, local.indices, local.similarities, tol=1e-6) >= 0.93


# ------------------------------------------------------------------------------------------------ analyses
def test_streamed_label_issues_equal_cleanlab_in_memory(synthetic_project, tmp_path):
    from cleanlab.experimental.label_issues_batched import find_label_issues_batched

    from curate.engine.analyses.label_issues import knn_vote_proba, label_issues_out_of_core
    from curate.indexes.sharded import sharded_knn_graph

    sh = ShardedEmbeddings.open(synthetic_project)
    ids = sh.sample_ids()
    g = sharded_knn_graph(sh, 10, out_dir=tmp_path / "g")
    labels = given_labels(ids, CFG)
    res = label_issues_out_of_core(g.indices, g.similarities, labels, CFG.n_classes, block_rows=700,
                                   out_dir=tmp_path / "li", sample_ids=ids)
    whole = label_issues_out_of_core(g.indices, g.similarities, labels, CFG.n_classes, block_rows=len(ids))
    assert np.array_equal(res.is_issue, whole.is_issue) and np.array_equal(res.label_quality, whole.label_quality)

    prior = np.bincount(labels, minlength=CFG.n_classes) / len(labels)
    P = knn_vote_proba(np.asarray(g.indices), np.asarray(g.similarities), labels, CFG.n_classes, prior=prior)
    reference = find_label_issues_batched(labels, P, batch_size=1000, verbose=False)
    assert np.array_equal(np.sort(reference), np.flatnonzero(res.is_issue))

    wrong = labels != true_classes(ids, CFG)
    assert res.num_issues == res.is_issue.sum() > 0
    assert (res.is_issue & wrong).sum() / res.is_issue.sum() >= 0.95  # flags are planted errors
    assert (res.is_issue & wrong).sum() / wrong.sum() >= 0.6
    assert np.array_equal(res.suggested_label[res.is_issue & wrong], true_classes(ids, CFG)[res.is_issue & wrong])

    synthetic_project.register_parquet_view("label_issues_scale", str(tmp_path / "li" / "*.parquet"))
    n, flagged = synthetic_project.query("SELECT count(*), count(*) FILTER (WHERE is_issue) FROM label_issues_scale")[0]
    assert (n, flagged) == (len(ids), res.num_issues)
    with pytest.raises(ValueError):
        synthetic_project.register_parquet_view("x; DROP TABLE samples", str(tmp_path / "li" / "*.parquet"))


def test_partitioned_dedup_on_ray_equals_local_and_exact(synthetic_project, ray_local):
    from curate.engine.analyses.duplicates import partitioned_near_duplicates
    from curate.indexes.knn import range_pairs

    sh = ShardedEmbeddings.open(synthetic_project)
    local = partitioned_near_duplicates(sh, 0.998, points_per_partition=500, seed=0)
    remote = partitioned_near_duplicates(sh, 0.998, points_per_partition=500, seed=0, ray_tasks=3)
    assert local.n_partitions == 12 and len(local) > 0
    assert np.array_equal(local.i, remote.i) and np.array_equal(local.j, remote.j)
    assert np.allclose(local.similarity, remote.similarity, atol=1e-6)

    X = load_embeddings(synthetic_project).vectors
    i, j, _ = range_pairs(X, 0.998 - 1e-6)
    assert set(zip(i.tolist(), j.tolist())) == set(zip(local.i.tolist(), local.j.tolist()))
    ids = sh.sample_ids()
    planted = np.flatnonzero(is_duplicate(ids, CFG))
    assert set(zip((planted - 1).tolist(), planted.tolist())) <= set(zip(local.i.tolist(), local.j.tolist()))
    drop = local.removal_mask(len(sh))
    assert drop.sum() == len(planted) and not drop[planted - 1].any()


def test_sampled_and_minibatch_kmeans_over_shards(synthetic_project):
    from curate.engine.analyses.clusters import kmeans, sampled_kmeans

    sh = ShardedEmbeddings.open(synthetic_project)
    X = load_embeddings(synthetic_project).vectors
    full = sampled_kmeans(sh, 10, sample_size=len(X), seed=0, block_rows=1000)
    mem = kmeans(X, 10, seed=0, nredo=1)
    assert np.array_equal(full.labels, mem.labels) and full.trained_on == len(X)

    truth = true_classes(sh.sample_ids(), CFG)
    for res in (sampled_kmeans(sh, 10, sample_size=1500, seed=0), sampled_kmeans(sh, 10, method="minibatch")):
        # clusters recover the 10 planted classes: each cluster is dominated by one class
        purity = sum(np.bincount(truth[res.labels == c]).max() for c in range(10) if (res.labels == c).any())
        assert purity / len(truth) >= 0.8 and res.sizes.sum() == len(X)
