"""Fault tests: SIGKILL the real `curate` CLI in the middle of an index build, an analysis and an export, then rerun.

Each test checks the same four things: the catalog still opens, nothing half-written is visible (no partial rows,
no file used without its checksum record), the rerun completes, and its result equals an uninterrupted run.
(Ingest and embed kills are in test_ingest.py and test_embed.py.)  Also: truncated shard / index / graph files are
detected by their checksums and rebuilt, never used.
"""

from __future__ import annotations

import filecmp
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from curate.engine.catalog import CurateError, open_project
from curate.engine.embed import embeddings_dir, load_embeddings
from curate.indexes import store
from curate.indexes.graph import load_or_build_graph
from curate.indexes.search import load_or_build_index
from tests.fault_helpers import byo_project, curate, curate_killed_at

ENC = "byo:test"


def _index_dir(cat) -> Path:
    return store.index_dir(cat.root, ENC)


def _search_all(cat) -> tuple[np.ndarray, np.ndarray]:
    pix = load_or_build_index(cat, ENC)
    D, I = pix.index.search(pix.embeddings.vectors, 5)
    return I, D


# ------------------------------------------------------------------------------------------------ index build
def test_sigkill_during_index_and_graph_build_then_rerun_equals_uninterrupted(tmp_path):
    cat, _ = byo_project(tmp_path)
    load_or_build_graph(cat, ENC, k=5)  # an earlier, complete graph (k=5) is already cached
    folder = _index_dir(cat)

    # 1) killed after the new index file is in place but before its metadata: the file is never used
    curate_killed_at("CURATE_TEST_INDEX_PAUSE", "index", "-p", cat.root, "-k", "8", "--rebuild")
    assert (folder / store.INDEX_FILE).exists() and not (folder / store.INDEX_META).exists()
    assert store.load_index(folder) is None  # no checksum record -> not loadable -> rebuilt on next use
    assert open_project(cat.root).counts()["samples"] == 24  # the catalog opens

    # 2) killed while replacing the k=5 graph with a k=8 one: the old record is gone, the new one not yet written
    curate_killed_at("CURATE_TEST_GRAPH_PAUSE", "index", "-p", cat.root, "-k", "8")
    assert store.load_index(folder) is not None  # run 2 completed the index before it was killed
    assert (folder / store.GRAPH_FILE).exists() and store.load_graph(folder) is None

    # 3) a plain rerun (what `curate index -k 8` calls) completes
    assert load_or_build_index(cat, ENC).status == "loaded"
    assert load_or_build_graph(cat, ENC, k=8)[1].cache == "built"

    ref, _ = byo_project(tmp_path, name="uninterrupted")
    load_or_build_graph(ref, ENC, k=8)
    for a, b in zip(_search_all(cat), _search_all(ref)):
        np.testing.assert_array_equal(a, b)
    got, want = store.load_graph(folder)[0], store.load_graph(_index_dir(ref))[0]
    for name in ("indices", "similarities", "sample_ids"):
        np.testing.assert_array_equal(got[name], want[name])


# ------------------------------------------------------------------------------------------------ analysis
def test_sigkill_during_an_analysis_commit_leaves_old_results_and_rerun_equals_uninterrupted(tmp_path):
    from curate.engine.analyses import outliers

    cat, _ = byo_project(tmp_path)
    outliers.run(cat, encoder=ENC, k=5)  # an earlier, complete run
    cols = ["sample_id", "score", "is_outlier", "rank"]
    before = cat.query_df("SELECT * FROM outliers ORDER BY sample_id")
    assert len(before) == 24

    # a newer kNN graph (k=8) changes the scores; the run is killed inside its results transaction, after its
    # DELETE + INSERT, just before COMMIT
    curate_killed_at("CURATE_TEST_ANALYSIS_PAUSE", "audit", "outliers", "-p", cat.root, "--k", "8")
    cat = open_project(cat.root)
    after_kill = cat.query_df("SELECT * FROM outliers ORDER BY sample_id")
    pd.testing.assert_frame_equal(after_kill, before)  # the old results, whole: no partial rows, no mixed runs
    killed = cat.query("SELECT status FROM runs WHERE kind = 'outliers' ORDER BY id")
    assert [s for (s,) in killed] == ["ok", "running"]  # the killed run never claims to have finished

    outliers.run(cat, encoder=ENC, k=8)  # the rerun: what `curate audit outliers --k 8` calls
    rerun = cat.query_df("SELECT * FROM outliers ORDER BY sample_id")
    assert rerun["run_id"].nunique() == 1 and rerun["run_id"].iloc[0] > before["run_id"].iloc[0]
    assert not np.allclose(rerun["score"], before["score"])  # a different result than the one kept after the kill

    ref, _ = byo_project(tmp_path, name="uninterrupted")
    outliers.run(ref, encoder=ENC, k=8)
    want = ref.query_df("SELECT * FROM outliers ORDER BY sample_id")
    pd.testing.assert_frame_equal(rerun[cols].reset_index(drop=True), want[cols].reset_index(drop=True))


# ------------------------------------------------------------------------------------------------ export
def _tree(root: Path) -> dict[str, str]:
    """Relative path -> symlink target (or 'file') of everything under root."""
    return {str(p.relative_to(root)): (os.readlink(p) if p.is_symlink() else "dir" if p.is_dir() else "file")
            for p in sorted(root.rglob("*"))}


def test_sigkill_during_export_leaves_no_half_export_and_rerun_equals_uninterrupted(tmp_path):
    from curate.engine.export import export_dataset

    cat, _ = byo_project(tmp_path)
    ids = cat.samples()["id"].tolist()
    cat.add_decisions([(ids[0], "remove", None, "blurry"), (ids[1], "relabel", "fox", "wrong"),
                       (ids[2], "keep", None, "")])
    out = tmp_path / "out"
    args = ("export", "-p", cat.root, "-o", out, "-f", "csv", "-f", "parquet", "-f", "imagefolder")

    curate_killed_at("CURATE_TEST_EXPORT_PAUSE", *args)
    assert not out.exists()  # nothing under the chosen name: never a half export that looks complete
    partial = list(tmp_path.glob(".out.partial-*"))
    assert len(partial) == 1 and (partial[0] / "manifest.csv").exists()
    assert open_project(cat.root).counts()["decisions"] == 3  # the catalog opens

    r = curate(*args)  # the same command again: the folder is still "new", the dead export's leftovers go
    assert r.returncode == 0, r.stdout + r.stderr
    assert not list(tmp_path.glob(".out.partial-*"))

    ref = tmp_path / "ref"
    export_dataset(cat, out_dir=ref, formats=["csv", "parquet", "imagefolder"])  # uninterrupted
    assert _tree(out) == _tree(ref)
    for name in ("manifest.csv", "changes.csv"):
        assert filecmp.cmp(out / name, ref / name, shallow=False), name
    pd.testing.assert_frame_equal(pd.read_parquet(out / "manifest.parquet"), pd.read_parquet(ref / "manifest.parquet"))
    manifest = pd.read_csv(out / "manifest.csv")
    assert len(manifest) == 23 and ids[0] not in manifest["sample_id"].tolist()


def test_export_into_an_empty_folder_the_user_made_and_failures_leave_nothing(tmp_path):
    from curate.engine.export import export_dataset

    cat, _ = byo_project(tmp_path)
    made = tmp_path / "chosen"
    made.mkdir()
    res = export_dataset(cat, out_dir=made, formats=["csv"])
    assert res.out_dir == made.resolve() and (made / "manifest.csv").exists()
    assert all(p.exists() and made.resolve() in p.parents for p in res.files)
    with pytest.raises(CurateError, match="not empty"):
        export_dataset(cat, out_dir=made)
    with pytest.raises(CurateError, match="unknown link mode"):
        export_dataset(cat, out_dir=tmp_path / "x", formats=["imagefolder"], link="hardlink")
    assert not (tmp_path / "x").exists() and not list(tmp_path.glob(".x.partial-*"))


# ------------------------------------------------------------------------------------------------ corrupt files
def test_truncated_index_and_graph_files_are_detected_and_rebuilt(tmp_path):
    cat, _ = byo_project(tmp_path)
    want_I, _ = _search_all(cat)
    _, g = load_or_build_graph(cat, ENC, k=5)
    folder = _index_dir(cat)
    for name in (store.INDEX_FILE, store.GRAPH_FILE):
        data = (folder / name).read_bytes()
        (folder / name).write_bytes(data[: len(data) // 2])  # a torn copy
    with pytest.raises(store.CorruptIndexError, match="checksum mismatch"):
        store.load_index(folder)
    with pytest.raises(store.CorruptIndexError, match="checksum mismatch"):
        store.load_graph(folder)
    pix = load_or_build_index(cat, ENC)
    assert pix.status.startswith("rebuilt: corrupt index")
    _, g2 = load_or_build_graph(cat, ENC, k=5)
    assert g2.cache.startswith("rebuilt: corrupt cache")
    np.testing.assert_array_equal(_search_all(cat)[0], want_I)
    np.testing.assert_array_equal(g2.indices, g.indices)


@pytest.fixture(scope="module")
def small_effnet():
    from curate.engine.encoders import get_encoder

    return get_encoder("effnet-lite0:64", device="cpu")


def test_truncated_shard_is_a_clear_error_and_the_next_embed_recomputes_only_it(tmp_path, small_effnet):
    from curate.engine.catalog import init_project
    from curate.engine.embed import EmbedReport, embed_project
    from curate.engine.ingest import ingest
    from tests.fault_helpers import write_dataset

    write_dataset(tmp_path / "data", per_class=2)
    cat = init_project(tmp_path / "p")
    ingest(cat, tmp_path / "data")
    embed_project(cat, encoder=small_effnet, batch_size=3, workers=0, shard_size=2)
    good = load_embeddings(cat)
    shard = embeddings_dir(cat, "effnet-lite0:64") / "shard-000001.npy"
    shard.write_bytes(shard.read_bytes()[:100])  # truncated, e.g. by a full disk or an interrupted copy
    with pytest.raises(CurateError, match=r"shard-000001\.npy is corrupt.*curate embed --encoder effnet-lite0:64`"):
        load_embeddings(cat)

    rep = EmbedReport(encoder="")
    embed_project(cat, encoder=small_effnet, batch_size=3, workers=0, shard_size=2, report=rep)
    assert len(rep.bad_shards) == 1 and "shard-000001.npy is corrupt" in rep.bad_shards[0]
    assert rep.embedded == 2 and rep.already_embedded == 4  # only the bad shard's samples were recomputed
    again = load_embeddings(cat)
    np.testing.assert_array_equal(again.sample_ids, good.sample_ids)
    assert np.abs(again.vectors - good.vectors).max() < 2e-3
