"""Duplicate sets, chaining guard, keepers, leakage and the SemDeDup curve on planted vectors."""

from __future__ import annotations

from types import SimpleNamespace

import faiss
import numpy as np
import pandas as pd
import pytest

from curate.engine.analyses.duplicates import (
    DuplicatePairs,
    choose_keepers,
    duplicates_table,
    exact_duplicate_groups,
    find_near_duplicates,
    group_near_duplicates,
    leakage_pairs,
    near_duplicate_pairs,
    semdedup_curve,
)


def unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def exact_graph(X: np.ndarray, k: int) -> SimpleNamespace:
    """A kNN graph (self excluded) computed with FAISS exact search, in the shared graph's layout."""
    index = faiss.IndexFlatIP(X.shape[1])
    index.add(X)
    sims, idx = index.search(X, k + 1)
    out_i = np.full((len(X), k), -1, np.int64)
    out_s = np.full((len(X), k), -1.0, np.float32)
    for r in range(len(X)):
        keep = [c for c in range(k + 1) if idx[r, c] != r][:k]
        out_i[r, : len(keep)] = idx[r, keep]
        out_s[r, : len(keep)] = sims[r, keep]
    return SimpleNamespace(indices=out_i, similarities=out_s)


def planted(n_base: int = 60, n_copies: int = 8, d: int = 48, noise: float = 0.03, seed: int = 0):
    """Random base vectors plus near-copies of the first ``n_copies`` of them."""
    rng = np.random.default_rng(seed)
    base = unit(rng.normal(size=(n_base, d)))
    copies = unit(base[:n_copies] + noise * rng.normal(size=(n_copies, d)))
    X = np.vstack([base, copies])
    truth = {(i, n_base + i) for i in range(n_copies)}
    return X, truth


def set_pairs(members) -> set[tuple[int, int]]:
    out = set()
    for m in members:
        m = sorted(int(v) for v in m)
        out |= {(a, b) for ai, a in enumerate(m) for b in m[ai + 1:]}
    return out


def test_planted_near_duplicates_found_exactly():
    X, truth = planted()
    sets = find_near_duplicates(X, threshold=0.9)
    assert set_pairs(sets.members) == truth
    assert all(not e for e in sets.exact)


def test_graph_pairs_match_exhaustive_pairs_including_saturated_rows():
    rng = np.random.default_rng(11)
    X, _ = planted(seed=1)
    # a set of 12 near-identical vectors: larger than k, so the graph alone cannot see all pairs
    hub = unit(rng.normal(size=48))
    big = unit(hub + 0.01 * rng.normal(size=(12, 48)))
    X = np.vstack([X, big])
    exhaustive = near_duplicate_pairs(X, 0.9, method="exact")
    via_graph = near_duplicate_pairs(X, 0.9, knn_graph=exact_graph(X, k=4))
    assert list(zip(exhaustive.i, exhaustive.j)) == list(zip(via_graph.i, via_graph.j))
    sets = find_near_duplicates(X, 0.9, knn_graph=exact_graph(X, k=4))
    big_rows = set(range(len(X) - 12, len(X)))
    assert any(set(m.tolist()) == big_rows for m in sets.members)


def test_chain_is_not_merged():
    """a~b and b~c above the threshold but a, c unrelated: a and c never share a set."""
    rng = np.random.default_rng(2)
    d = 32
    a = unit(rng.normal(size=d))
    r = unit(rng.normal(size=d))
    r = unit(r - (r @ a) * a)  # orthogonal to a
    c = unit(0.6 * a + 0.8 * r)  # cos(a, c) = 0.6
    b = unit(a + c)  # cos(a, b) = cos(b, c) ~ 0.894
    filler = unit(rng.normal(size=(20, d)))
    X = np.vstack([a, b, c, filler])
    assert X[0] @ X[1] > 0.88 and X[1] @ X[2] > 0.88 and X[0] @ X[2] < 0.61
    sets = find_near_duplicates(X, threshold=0.85)
    for m in sets.members:
        assert not {0, 2} <= set(m.tolist())
    # the pair list still records both edges (leakage uses it), only the grouping refuses to chain
    pairs = set(zip(sets.pairs.i.tolist(), sets.pairs.j.tolist()))
    assert {(0, 1), (1, 2)} <= pairs and (0, 2) not in pairs
    # plain connected components would have merged them: the guard is what prevents it
    grouped = group_near_duplicates(X, sets.pairs, 0.85)
    assert len(grouped) == 1 and len(grouped[0]) == 2 and 1 in grouped[0]


def test_every_pair_inside_a_set_is_above_threshold():
    rng = np.random.default_rng(3)
    centers = unit(rng.normal(size=(5, 24)))
    X = unit(np.repeat(centers, 8, axis=0) + 0.06 * rng.normal(size=(40, 24)))
    t = 0.9
    above = (X @ X.T >= t) & ~np.eye(40, dtype=bool)
    assert not above[:8, :8][~np.eye(8, dtype=bool)].all()  # groups are not cliques: the guard has work to do
    sets = find_near_duplicates(X, t)
    assert sets.n_sets >= 5
    for m in sets.members:
        S = X[m] @ X[m].T
        assert (S >= t - 1e-5).all()


def test_exact_duplicates_by_hash_and_mixed_sets():
    X, _ = planted(n_copies=2)
    X = np.vstack([X, X[10], X[10], X[0]])  # rows 62, 63 copy row 10; row 64 copies row 0 (which has a near copy 60)
    hashes = [f"h{i}" for i in range(len(X))]
    hashes[62] = hashes[63] = hashes[10]
    hashes[64] = hashes[0]
    assert [g.tolist() for g in exact_duplicate_groups(hashes)] == [[0, 64], [10, 62, 63]]
    sets = find_near_duplicates(X, 0.9, content_hashes=hashes)
    by_rows = {tuple(m.tolist()): e for m, e in zip(sets.members, sets.exact)}
    assert by_rows[(10, 62, 63)] is True
    assert by_rows[(0, 60, 64)] is False  # exact pair 0/64 joined by near copy 60
    assert by_rows[(1, 61)] is False
    ids = np.arange(100, 100 + len(X))
    keepers = choose_keepers(sets.members, ids)
    table = duplicates_table(sets, keepers, X, ids, content_hashes=hashes)
    mixed = table[table["sample_id"].isin([100, 160, 164])].set_index("sample_id")
    assert mixed.loc[100, "is_keeper"] and mixed.loc[100, "kind"] == "exact"
    assert mixed.loc[164, "kind"] == "exact" and mixed.loc[164, "similarity"] == 1.0
    assert mixed.loc[160, "kind"] == "near" and 0.9 <= mixed.loc[160, "similarity"] < 1.0
    assert table.groupby("set_id")["is_keeper"].sum().eq(1).all()


def test_keeper_rules_in_order():
    sets = [np.array([0, 1, 2])]
    ids = np.array([30, 20, 10])
    # 1. largest resolution wins
    assert choose_keepers(sets, ids, area=np.array([100, 400, 100]))[0] == 1
    # 2. equal resolution: the one without a label issue
    assert choose_keepers(sets, ids, area=np.array([400, 400, 100]), has_label_issue=np.array([False, True, False]))[0] == 0
    # 3. then the one carrying the set's majority label
    labels = ["cat", "dog", "dog"]
    assert choose_keepers(sets, ids, area=np.array([400, 400, 400]), labels=labels)[0] == 2  # dog, lowest id 10
    labels = ["dog", "cat", "dog"]
    assert choose_keepers(sets, np.array([30, 5, 40]), labels=labels)[0] == 0
    # 4. then the lowest sample id
    assert choose_keepers(sets, ids)[0] == 2
    # the user's merge decision overrides everything; the latest decision wins
    assert choose_keepers(sets, ids, area=np.array([100, 400, 100]), overrides={0: 7})[0] == 0
    assert choose_keepers(sets, ids, overrides={0: 7, 1: 9})[0] == 1


def test_leakage_pairs_cross_splits_only():
    pairs = DuplicatePairs(np.array([0, 0, 1, 3]), np.array([1, 2, 2, 4]), np.array([0.99, 0.95, 0.97, 1.0], np.float32))
    splits = ["train", "test", "train", None, "test"]
    leaks = leakage_pairs(pairs, splits)
    assert list(zip(leaks["i"], leaks["j"])) == [(0, 1), (1, 2)]  # by descending similarity; NULL split never leaks
    assert set(leaks["split_i"]) | set(leaks["split_j"]) == {"train", "test"}
    sets = find_near_duplicates(np.vstack([np.eye(3)[0], np.eye(3)[0], np.eye(3)[1]]).astype(np.float32), 0.9)
    table = duplicates_table(sets, choose_keepers(sets.members, np.array([1, 2, 3])), np.eye(3)[[0, 0, 1]],
                             np.array([1, 2, 3]), splits=["train", "test", "train"])
    assert table["crosses_splits"].all()


def test_semdedup_curve_counts_planted_copies():
    rng = np.random.default_rng(4)
    centers = unit(rng.normal(size=(4, 32)) * 5)
    base = unit(np.repeat(centers, 50, axis=0) + 0.6 * rng.normal(size=(200, 32)))
    copies = unit(base[:20] + 0.01 * rng.normal(size=(20, 32)))
    X = np.vstack([base, copies])
    one = semdedup_curve(X, thresholds=(0.9, 0.99), n_partitions=1, seed=0)
    assert one.n_removed.tolist()[0] == 20  # each planted pair loses exactly one member
    assert one.removed_mask(0.9).sum() == 20
    many = semdedup_curve(X, thresholds=(0.5, 0.9, 0.99), n_partitions=4, seed=0)
    assert many.n_removed.tolist() == sorted(many.n_removed.tolist(), reverse=True)
    assert many.n_removed[1] == 20  # copies sit next to their originals: same partition
    again = semdedup_curve(X, thresholds=(0.5, 0.9, 0.99), n_partitions=4, seed=0)
    assert np.array_equal(many.max_similarity, again.max_similarity)
    d = many.to_dict()
    assert d["n"] == 220 and len(d["curve"]) == 3 and 0 < d["curve"][1]["keep_fraction"] < 1


def test_approximate_partition_pairs_recall():
    X, truth = planted(n_base=3000, n_copies=100, d=32, noise=0.02, seed=5)
    approx = near_duplicate_pairs(X, 0.9, method="partition", seed=0)
    exact = near_duplicate_pairs(X, 0.9, method="exact")
    assert set(zip(approx.i.tolist(), approx.j.tolist())) <= set(zip(exact.i.tolist(), exact.j.tolist()))
    found = set(zip(approx.i.tolist(), approx.j.tolist()))
    assert len(found & truth) >= 0.95 * len(truth)


def test_partitioned_search_is_one_function_for_a_matrix_and_any_embeddings():
    """near_duplicate_pairs(method="partition") is partitioned_near_duplicates over the matrix as one block; with a
    single partition it is the exact search."""
    from curate.engine.analyses.duplicates import PartitionedPairs, partitioned_near_duplicates
    from curate.engine.embed import EmbeddingSet

    X, _ = planted(n_base=3000, n_copies=100, d=32, noise=0.02, seed=5)
    approx = near_duplicate_pairs(X, 0.9, method="partition", seed=0)
    direct = partitioned_near_duplicates(EmbeddingSet("x", np.arange(len(X)) + 1000, X), 0.9,
                                         points_per_partition=1000, seed=0)
    assert isinstance(approx, PartitionedPairs) and approx.n_partitions == direct.n_partitions == 4
    assert np.array_equal(approx.i, direct.i) and np.array_equal(approx.j, direct.j)
    small, _ = planted(n_base=700, n_copies=50, d=32, noise=0.02, seed=6)
    one = near_duplicate_pairs(small, 0.9, method="partition")
    exact = near_duplicate_pairs(small, 0.9, method="exact")
    assert one.n_partitions == 1 and len(exact) > 0
    assert np.array_equal(one.i, exact.i) and np.array_equal(one.j, exact.j)


def test_config_validates_each_option_with_a_valid_value():
    from curate.engine.analyses.duplicates import DuplicatesConfig
    from curate.engine.catalog import CurateError

    assert DuplicatesConfig(hash_distance=-1).hash_distance is None  # the CLI's "-1: embeddings only"
    assert DuplicatesConfig(curve_thresholds="0.9, 0.95").curve_thresholds == (0.9, 0.95)
    assert DuplicatesConfig.from_options(threshold=None, k=5).k == 5
    for bad, option in ((dict(threshold=1.5), "threshold"), (dict(k=0), "duplicates k"),
                        (dict(hash_distance=65), "hash_distance"), (dict(curve_thresholds=(0.9, 2)), "curve_thresholds"),
                        (dict(workers=0), "workers"),
                        (dict(verify_k=0), "verify_k"), (dict(candidate_threshold=2), "candidate_threshold"),
                        (dict(pixel_threshold="x"), "pixel_threshold"), (dict(seed=0.5), "seed")):
        with pytest.raises(CurateError, match=option) as err:
            DuplicatesConfig(**bad)
        assert "try " in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(CurateError, match="valid options"):
        DuplicatesConfig.from_options(thresold=0.9)


# --------------------------------------------------------------------------------------- perceptual hashes
def _texture(seed: int, side: int = 96):
    from PIL import Image

    rng = np.random.default_rng(seed)
    coarse = rng.uniform(20, 235, size=(8, 8, 3)).astype(np.uint8)
    img = np.asarray(Image.fromarray(coarse).resize((side, side), Image.BICUBIC), dtype=np.float32)
    return Image.fromarray(np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8))


def _jpeg(img, quality: int = 40):
    import io

    from PIL import Image

    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def test_perceptual_hash_pairs_and_guard():
    from PIL import Image

    from curate.engine.analyses.duplicates import _hamming, hash_pairs, perceptual_hash

    a = _texture(0)
    h = np.stack([perceptual_hash(a), perceptual_hash(_jpeg(a)), perceptual_hash(a.transpose(Image.FLIP_LEFT_RIGHT)),
                  perceptual_hash(_texture(1)), perceptual_hash(a.resize((60, 60)))])
    d = _hamming(h, h)
    assert d[0, 1] <= 2 and d[0, 4] <= 2  # recompression / resize keep the hash
    assert d[0, 2] > 8 and d[0, 3] > 8  # a flip or another image do not
    i, j, dist = hash_pairs(h, 2)
    assert {(0, 1), (0, 4), (1, 4)} >= set(zip(i.tolist(), j.tolist())) >= {(0, 1), (0, 4)}
    assert hash_pairs(h, 2, valid=np.array([True, False, True, True, True]))[0].tolist() == [0]
    # embeddings that disagree (orthogonal) are still joined by the hash, and the guard accepts hash links
    X = np.eye(5, dtype=np.float32)
    sets = find_near_duplicates(X, 0.97, perceptual_hashes=h)
    members = [m.tolist() for m in sets.members]
    if d[1, 4] <= 2:  # all three mutually within 2 bits: one set
        assert members == [[0, 1, 4]]
    else:  # 1 and 4 are not near each other: the guard keeps them apart
        assert len(members) == 1 and members[0][0] == 0 and len(members[0]) == 2
    assert sets.stats["hash_pairs"] >= 2 and sets.stats["embedding_pairs"] == 0
    assert find_near_duplicates(X, 0.97).n_sets == 0


# --------------------------------------------------------------------------------------- catalog round trip
def test_run_round_trip_with_real_embeddings(tmp_path):
    """ingest -> effnet-lite0 embeddings -> shared graph -> duplicates.run / outliers.run -> catalog tables."""
    from curate.engine.analyses import duplicates, outliers
    from curate.engine.catalog import init_project
    from curate.engine.embed import embed_project
    from curate.engine.ingest import ingest

    root = tmp_path / "data"
    for split, cls, name, img in (
        [("train", "a" if s % 2 else "b", f"img{s}.png", _texture(10 + s)) for s in range(8)]
    ):
        (root / split / cls).mkdir(parents=True, exist_ok=True)
        img.save(root / split / cls / name)
    (root / "test" / "b").mkdir(parents=True)
    _jpeg(_texture(10), 50).save(root / "test" / "b" / "img0_recompressed.jpg", quality=95)  # leak of train img0
    (root / "train" / "a" / "img1_copy.png").write_bytes((root / "train" / "a" / "img1.png").read_bytes())
    cat = init_project(tmp_path / "proj")
    ingest(cat, root)
    embed_project(cat, encoder="effnet-lite0", device="cpu")
    summary = duplicates.run(cat)
    path_of = dict(cat.query("SELECT id, path FROM samples"))
    table = cat.query_df("SELECT * FROM duplicates")
    sets = {sid: {path_of[s].rsplit("/", 1)[-1] for s in g["sample_id"]} for sid, g in table.groupby("set_id")}
    assert {"img1.png", "img1_copy.png"} in sets.values()
    assert any({"img0.png", "img0_recompressed.jpg"} <= m for m in sets.values())
    assert table.groupby("set_id")["is_keeper"].sum().eq(1).all()
    exact = table[table["sample_id"].map(lambda s: path_of[s].endswith("img1_copy.png"))]
    assert exact["kind"].tolist() == ["exact"]
    leak_rows = table[table["sample_id"].map(lambda s: "img0" in path_of[s])]
    assert leak_rows["crosses_splits"].all() and summary["leakage_pairs"] >= 1
    assert summary["semdedup"]["n"] == 10 and cat.last_run("duplicates")["status"] == "ok"
    # the user's merge decision picks the keeper on the next run
    set_id = int(leak_rows["set_id"].iloc[0])
    other = table[(table["set_id"] == set_id) & ~table["is_keeper"]]["sample_id"].iloc[0]
    cat.add_decision(int(other), "merge", reason="keep this one")
    duplicates.run(cat)
    again = cat.query_df("SELECT sample_id FROM duplicates WHERE is_keeper")
    assert int(other) in set(again["sample_id"])
    # outliers over the same graph: every embedded sample ranked once
    out = outliers.run(cat)
    ranks = cat.query_df("SELECT rank, score FROM outliers ORDER BY rank")
    assert out["n"] == 10 and ranks["rank"].tolist() == list(range(1, 11))
    assert ranks["score"].is_monotonic_increasing
    # `curate audit duplicates --hash-distance -1` turns the perceptual hashes off (it once fell back to 2 bits)
    from typer.testing import CliRunner

    from curate.engine.cli import app

    res = CliRunner().invoke(app, ["audit", "duplicates", "-p", str(cat.root), "--hash-distance", "-1", "-q"])
    assert res.exit_code == 0, res.output
    assert "pHash distance off" in res.output and cat.last_run("duplicates")["summary"]["hash_distance"] is None


# --------------------------------------------------------------------------------------- pixel check
def _photo(seed: int, side: int = 48):
    """A random 'photo': smooth colour field plus fine detail, so shifted copies still line up pixel by pixel."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, size=(6, 6, 3)).astype(np.uint8)
    img = np.asarray(Image.fromarray(coarse).resize((side, side), Image.BICUBIC), dtype=np.float32)
    return Image.fromarray(np.clip(img + rng.normal(0, 25, img.shape), 0, 255).astype(np.uint8))


def test_pixel_similarity_sees_through_shift_mirror_colour_and_rotation():
    from PIL import Image, ImageEnhance

    from curate.engine.analyses.duplicates import pixel_signature, pixel_similarity

    a = _photo(0)
    shifted = Image.new("RGB", a.size)
    shifted.paste(a, (2, -1))
    views = [shifted, a.transpose(Image.FLIP_LEFT_RIGHT), ImageEnhance.Brightness(a).enhance(1.3),
             a.rotate(6, resample=Image.BICUBIC), a.resize((96, 96))]
    sa = np.stack([pixel_signature(a)] * len(views))
    sims = pixel_similarity(sa, np.stack([pixel_signature(v) for v in views]))
    assert (sims >= 0.85).all(), sims
    others = pixel_similarity(np.stack([pixel_signature(a)] * 4), np.stack([pixel_signature(_photo(s)) for s in (1, 2, 3, 4)]))
    assert (others < 0.6).all(), others


def test_verify_pairs_needs_a_copy_to_stand_out_from_its_reference_neighbour():
    from curate.engine.analyses.duplicates import DuplicatePairs, verify_pairs

    rng = np.random.default_rng(0)
    base = rng.random((32, 32)).astype(np.float32)
    sig = np.stack([base, base + 0.01 * rng.random((32, 32)), rng.random((32, 32)),  # 0~1 copy, 2 unrelated
                    base, base * 0.9 + 0.05 * rng.random((32, 32))]).astype(np.float32)  # 3, 4: look-alikes of each other
    pairs = DuplicatePairs(np.array([0, 3]), np.array([1, 4]), np.array([0.8, 0.8], np.float32))
    ok, corr = verify_pairs(pairs, sig)
    assert ok.i.tolist() == [0, 3] and (corr > 0.95).all()
    # with references: 0's reference (2) is unrelated, so 0~1 stands out; 3's reference (0) looks just like it
    reference = np.array([2, 2, 0, 0, 0])
    ok, _ = verify_pairs(pairs, sig, reference=reference, min_pixel_gap=0.25)
    assert list(zip(ok.i.tolist(), ok.j.tolist())) == [(0, 1)]
    # an unreadable file confirms nothing
    ok, corr = verify_pairs(pairs, sig, has_signature=np.array([True, False, True, True, True]))
    assert ok.i.tolist() == [3] and corr[0] == -1


def test_pixels_confirm_only_images_with_fine_detail():
    """Two different smooth, coarse images (an upscaled 8x8 drawing) correlate as well as a copy does; their pixels
    are not evidence.  A detailed image and its shifted copy still are."""
    from PIL import Image

    from curate.engine.analyses.duplicates import (DuplicatePairs, pixel_signature, signature_detail,
                                                   verify_pairs)

    from sklearn.datasets import load_digits

    digits = load_digits().images  # two different writers' sevens, each other's nearest neighbour
    smooth = [Image.fromarray((digits[i] * 15).astype(np.uint8)).resize((64, 64), Image.BILINEAR) for i in (597, 653)]
    photo = _photo(7)
    shifted = Image.new("RGB", photo.size)
    shifted.paste(photo, (2, 1))
    sig = np.stack([pixel_signature(im) for im in smooth + [photo, shifted]])
    detail = signature_detail(sig)
    assert detail[:2].max() < 0.3 <= detail[2:].min(), detail
    pairs = DuplicatePairs(np.array([0, 2]), np.array([1, 3]), np.array([0.9, 0.9], np.float32))
    ok, corr = verify_pairs(pairs, sig, min_detail=0.0)
    assert ok.i.tolist() == [0, 2] and (corr > 0.85).all(), corr  # by correlation alone both pass
    ok, _ = verify_pairs(pairs, sig)  # the default needs fine detail on both sides
    assert ok.i.tolist() == [2]


def test_candidate_pairs_are_the_close_neighbours_that_stand_out():
    from curate.engine.analyses.duplicates import candidate_pairs

    graph = SimpleNamespace(
        indices=np.array([[1, 2, 3], [0, 2, 3], [3, 0, 1], [2, 0, 1]]),
        similarities=np.array([[0.9, 0.5, 0.4], [0.9, 0.5, 0.4], [0.99, 0.5, 0.45], [0.99, 0.5, 0.45]], np.float32))
    c = candidate_pairs(graph, threshold=0.97, verify_k=1, candidate_threshold=0.6, min_gap=0.05)
    assert list(zip(c.i.tolist(), c.j.tolist())) == [(0, 1)]  # 2~3 is above the threshold already: no check
    crowded = SimpleNamespace(indices=graph.indices, similarities=np.full((4, 3), 0.9, np.float32))
    assert len(candidate_pairs(crowded, threshold=0.97, verify_k=1, min_gap=0.05)) == 0


def test_run_finds_shifted_and_mirrored_copies_by_their_pixels(tmp_path):
    """Through files and effnet-lite0: copies the embedding alone misses at 0.97 are found with the pixel check."""
    from PIL import Image

    from curate.engine.analyses import duplicates
    from curate.engine.catalog import init_project
    from curate.engine.embed import embed_project
    from curate.engine.ingest import ingest

    root = tmp_path / "data"
    (root / "train" / "x").mkdir(parents=True)
    (root / "test" / "x").mkdir(parents=True)
    for s in range(24):
        _photo(100 + s).save(root / "train" / "x" / f"p{s}.png")
    shifted = Image.new("RGB", (48, 48))
    shifted.paste(_photo(100), (3, 2))
    shifted.save(root / "test" / "x" / "p0_shifted.png")
    _photo(101).transpose(Image.FLIP_LEFT_RIGHT).save(root / "test" / "x" / "p1_mirror.png")
    cat = init_project(tmp_path / "proj")
    ingest(cat, root)
    embed_project(cat, encoder="effnet-lite0:96", device="cpu")
    path_of = dict(cat.query("SELECT id, path FROM samples"))

    def found():
        table = cat.query_df("SELECT * FROM duplicates")
        return [{path_of[s].rsplit("/", 1)[-1] for s in g["sample_id"]} for _, g in table.groupby("set_id")]

    without = duplicates.run(cat, semdedup=False, hash_distance=None, pixel_check=False)
    assert {"p0.png", "p0_shifted.png"} not in found() and not without["pixel_check"]
    summary = duplicates.run(cat, semdedup=False, hash_distance=None)
    sets = found()
    assert {"p0.png", "p0_shifted.png"} in sets and {"p1.png", "p1_mirror.png"} in sets, sets
    assert len(sets) == 2 and summary["pixel_verified"] >= 2 and summary["leakage_pairs"] == 2


def test_pixel_similarity_equals_the_direct_correlation_at_every_shift():
    """The FFT + summed-area computation is the zero-mean normalised cross-correlation of each overlap, maximised over
    shifts and views, computed here the slow way; and the symmetric default also tries the views of the first side
    (a zoomed-in crop matches the wider picture only when the zoom is applied to the wider one)."""
    from PIL import Image

    from curate.engine.analyses.duplicates import (_one_way_similarity, _signature_variants, pixel_signature,
                                                   pixel_similarity)

    rng = np.random.default_rng(3)
    a = (rng.random((40, 32, 32)) * 255).astype(np.float32)
    b = a + (40 * rng.random((40, 32, 32))).astype(np.float32)
    b[::2] = np.roll(a[::2], (-3, 2), axis=(1, 2))
    b[::7] = 5.0  # flat: correlation ~0, no division by zero

    def direct(x, y, shift):
        out = []
        for xa, yb in zip(x, y):
            best = -1.0
            for v in _signature_variants(yb):
                for dy in range(-shift, shift + 1):
                    for dx in range(-shift, shift + 1):
                        p = xa[max(dy, 0):32 + min(dy, 0), max(dx, 0):32 + min(dx, 0)].ravel().astype(np.float64)
                        q = v[max(-dy, 0):32 + min(-dy, 0), max(-dx, 0):32 + min(-dx, 0)].ravel().astype(np.float64)
                        p, q = p - p.mean(), q - q.mean()
                        best = max(best, float(p @ q / (np.linalg.norm(p) * np.linalg.norm(q) + 1e-6)))
            out.append(best)
        return np.array(out)

    for shift in (0, 3):
        np.testing.assert_allclose(_one_way_similarity(a, b, shift, block=16), direct(a, b, shift), atol=1e-5)
    np.testing.assert_allclose(pixel_similarity(a, b), np.maximum(direct(a, b, 3), direct(b, a, 3)), atol=1e-5)
    # a crop of a photo scaled back up: seen from the crop's side the zoom cannot undo it, from the photo's it can
    photo = _photo(11, side=64)
    crop = photo.crop((4, 4, 60, 60)).resize((64, 64), Image.BILINEAR)
    sp, sc = (pixel_signature(x)[None] for x in (photo, crop))
    assert pixel_similarity(sc, sp)[0] == pixel_similarity(sp, sc)[0] >= 0.9
    assert _one_way_similarity(sp, sc, 3)[0] < pixel_similarity(sp, sc)[0]
