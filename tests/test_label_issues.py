"""Label-issue detection: out-of-sample probabilities, planted-noise recovery, imported predictions, small and
many classes, and the relabel-decision feedback loop through a real catalog."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from curate.engine.analyses.label_issues import find_label_issues, knn_vote_proba, run, top_issues
from curate.engine.analyses.probe import LinearProbe, cross_val_predict_proba
from curate.engine.catalog import CurateError, utcnow
from curate.engine.devices import cuda_available
from curate.indexes.knn import knn_graph


def unit(X: np.ndarray) -> np.ndarray:
    X = np.asarray(X, dtype=np.float32)
    return X / np.linalg.norm(X, axis=1, keepdims=True)


def blobs(n: int = 1000, n_classes: int = 10, dim: int = 64, spread: float = 0.75, seed: int = 0):
    """Gaussian class blobs, L2-normalised (centres ~N(0, 1): pairwise centre distance ~11, so Bayes error ~0)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, n)
    centers = rng.normal(0, 1, (n_classes, dim))
    return unit(centers[y] + rng.normal(0, spread, (n, dim))), y


def flip_labels(y: np.ndarray, rate: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    K = int(y.max()) + 1
    flip = np.zeros(len(y), bool)
    flip[rng.choice(len(y), int(rate * len(y)), replace=False)] = True
    noisy = y.copy()
    noisy[flip] = (y[flip] + rng.integers(1, K, flip.sum())) % K
    return noisy, flip


# ------------------------------------------------------------------------------------------ out-of-sample
def test_probe_cross_val_is_out_of_sample():
    """Random labels on random features: a probe that saw a sample memorises it; a held-out one is at chance.

    With d=200 > n=150 and a weak penalty the in-sample fit is perfect (asserted, so the test has teeth); if any
    fold leaked its test rows into training, the cross-validated accuracy would jump towards 1.
    """
    rng = np.random.default_rng(0)
    X = rng.normal(size=(150, 200)).astype(np.float32)
    y = rng.integers(0, 3, 150)
    in_sample = LinearProbe(C=100.0, backend="sklearn").fit(X, y).predict(X)
    assert np.mean(in_sample == y) > 0.95
    probs, _, info = cross_val_predict_proba(X, y, n_classes=3, n_folds=5, seed=0, C=100.0, backend="sklearn")
    assert probs.shape == (150, 3) and np.allclose(probs.sum(axis=1), 1, atol=1e-5)
    assert np.mean(probs.argmax(axis=1) == y) < 0.55  # chance is 1/3; 0.55 is > 3 sd above it for n=150
    assert info["n_folds"] == 5


def test_torch_probe_matches_sklearn_on_cpu():
    X, y = blobs(n=300, n_classes=4, dim=16, spread=1.5, seed=1)
    sk = LinearProbe(C=0.5, backend="sklearn").fit(X, y)
    tp = LinearProbe(C=0.5, backend="torch", device="cpu").fit(X, y)
    assert tp.backend_ == "torch" and tp.device_ == "cpu"
    # same objective, both solved to tol 1e-4: probabilities agree closely
    assert np.abs(sk.predict_proba(X) - tp.predict_proba(X)).max() < 0.02
    cv, _, info = cross_val_predict_proba(X, y, n_classes=4, n_folds=3, seed=0, backend="torch", device="cpu")
    assert info["backend"] == "torch" and cv.shape == (300, 4)


@pytest.mark.gpu
@pytest.mark.skipif(not cuda_available(), reason="needs CUDA")
def test_torch_probe_on_cuda_matches_sklearn():
    X, y = blobs(n=600, n_classes=5, dim=32, spread=1.5, seed=8)
    sk = LinearProbe(C=0.5, backend="sklearn").fit(X, y)
    gpu = LinearProbe(C=0.5, backend="auto", device="auto", chunk_size=128).fit(X, y)  # auto -> torch on CUDA
    assert gpu.backend_ == "torch" and gpu.device_.startswith("cuda")
    assert np.abs(sk.predict_proba(X) - gpu.predict_proba(X)).max() < 0.02


def test_knn_vote_ignores_self_and_unlabeled():
    rng = np.random.default_rng(0)
    X = unit(rng.normal(size=(200, 32)))
    y = rng.integers(0, 4, 200)
    g = knn_graph(X, k=10, device="cpu")
    p = knn_vote_proba(g.indices, g.similarities, y, 4)
    assert np.allclose(p.sum(axis=1), 1, atol=1e-5)
    assert np.mean(p.argmax(axis=1) == y) < 0.45  # random labels: the vote is at chance when self is excluded
    # a graph that lists every row as its own first neighbour must give exactly the same vote
    with_self = SimpleNamespace(indices=np.c_[np.arange(200), g.indices],
                                similarities=np.c_[np.ones(200), g.similarities])
    assert np.allclose(knn_vote_proba(with_self.indices, with_self.similarities, y, 4), p)
    # unlabeled neighbours (-1) carry no vote: a row whose neighbours are all unlabeled gets the prior
    y2 = y.copy()
    y2[g.indices[0]] = -1
    p2 = knn_vote_proba(g.indices, g.similarities, y2, 4, rows=np.array([0]), prior=np.full(4, 0.25))
    assert np.allclose(p2, 0.25)


def test_find_label_issues_probabilities_are_out_of_sample():
    """Random labels: out-of-sample self-confidence is ~1/K; any leak (probe or kNN) would push it up."""
    rng = np.random.default_rng(1)
    X = unit(rng.normal(size=(300, 128)))
    y = rng.integers(0, 3, 300)
    res = find_label_issues(X, y, knn_graph(X, k=10, device="cpu"), C=100.0)
    own = res.pred_probs[np.arange(300), y]  # class_names are 0, 1, 2
    assert own.mean() < 0.45
    assert np.mean(res.suggested_label.astype(int) == y) < 0.5
    assert any("agree with only" in w for w in res.summary()["warnings"])  # the user is told not to trust it


# ------------------------------------------------------------------------------------------ planted noise
def test_planted_noise_is_found_with_good_suggestions():
    X, y = blobs(n=1000, n_classes=10, dim=64, seed=0)
    noisy, flip = flip_labels(y, 0.10, seed=0)
    res = find_label_issues(X, noisy, knn_graph(X, k=10, device="cpu"), seed=0)
    tp = (res.is_issue & flip).sum()
    precision, recall = tp / res.is_issue.sum(), tp / flip.sum()
    # The blobs are separable (clean out-of-sample accuracy ~100%), so every flip is detectable in principle.
    # Measured here: precision 1.00, recall 0.92-0.95 over seeds (prune_by_noise_rate removes the estimated count
    # per class pair, which slightly undercounts).  0.9 / 0.8 leave margin for probe variance but would fail
    # a broken ranking, a leaking split or a random flagger (precision 0.1).
    assert precision >= 0.9 and recall >= 0.8
    assert np.mean(res.suggested_label[res.is_issue & flip].astype(int) == y[res.is_issue & flip]) >= 0.95
    # the ranking puts flips first: AUROC of 1 - quality
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(flip, 1 - res.label_quality) > 0.97
    assert set(np.unique(res.rank)) == set(range(1, 1001))
    assert abs(res.estimated_noise_rate - 0.10) < 0.04
    s = res.summary()
    assert s["n_issues"] == res.is_issue.sum() and len(s["top_confused_pairs"]) > 0
    assert 0 <= res.label_quality.min() and res.label_quality.max() <= 1


def test_asymmetric_noise_shows_up_in_confused_pairs():
    X, y = blobs(n=800, n_classes=5, dim=32, seed=3)
    rng = np.random.default_rng(3)
    noisy = y.copy()
    idx = rng.choice(np.flatnonzero(y == 1), 40, replace=False)  # 1 -> 3 only
    noisy[idx] = 3
    names = np.array(["ant", "bee", "cat", "dog", "eel"])
    res = find_label_issues(X, names[noisy], knn_graph(X, k=10, device="cpu"))
    top = res.top_confused_pairs(1)[0]
    assert (top["given"], top["true"]) == ("dog", "bee")
    assert res.noise_rates["dog"] > 0.1 and res.noise_rates["ant"] < 0.05  # true: dog 0.2, ant 0


# ------------------------------------------------------------------------------------------ imported predictions
def test_imported_predictions_take_precedence():
    X, y = blobs(n=300, n_classes=3, dim=16, seed=2)
    names = np.array(["a", "b", "c"])
    labels = names[y]
    g = knn_graph(X, k=10, device="cpu")
    ours = find_label_issues(X, labels, g)
    assert not ours.is_issue[0]
    # the user's model disagrees with the embeddings about sample 0 (and only gives predictions for half the rows)
    pred = np.full((300, 3), np.nan)
    pred[:150] = np.eye(3)[y[:150]] * 0.9 + 0.05
    wrong = (y[0] + 1) % 3
    pred[0] = 0.02
    pred[0, wrong] = 0.96
    res = find_label_issues(X, labels, g, pred_probs=pred, pred_class_names=["a", "b", "c"])
    assert res.is_issue[0] and res.suggested_label[0] == names[wrong]
    assert res.suggested_confidence[0] == pytest.approx(0.96, abs=1e-6)
    assert list(res.prob_source[:150]) == ["imported"] * 150 and set(res.prob_source[150:]) == {"probe+knn"}
    assert res.details["n_imported"] == 150
    # predictions for every row: no embeddings needed at all
    full = np.eye(3)[y] * 0.9 + 0.05
    res2 = find_label_issues(None, labels, pred_probs=full, pred_class_names=["a", "b", "c"])
    assert not res2.is_issue.any() and res2.details["n_estimated"] == 0


# ------------------------------------------------------------------------------------------ small / many classes
def test_tiny_classes_are_reported_not_crashed():
    X, y = blobs(n=400, n_classes=4, dim=32, seed=4)
    labels = np.array(["a", "b", "c", "d"])[y].astype(object)
    in_a = np.flatnonzero(y == 0)
    labels[in_a[0]] = "aa"  # a typo class with one sample, sitting among the a's
    labels[in_a[1:3]] = "a2"  # a two-sample class
    labels[5] = None  # unlabeled rows are skipped
    res = find_label_issues(X, labels, knn_graph(X, k=10, device="cpu"))
    assert res.small_classes == {"a2": 2, "aa": 1}
    assert res.unverifiable_classes == ["aa"]
    assert res.is_issue[in_a[0]] and res.suggested_label[in_a[0]] == "a"
    assert res.prob_source[in_a[0]] == "knn"
    assert not res.is_labeled[5] and res.rank[5] == 0 and np.isnan(res.label_quality[5])
    assert res.suggested_label[5] is None
    assert res.summary()["small_classes"] == {"a2": 2, "aa": 1}
    df = res.to_frame(np.arange(400) + 100)
    assert len(df) == 399 and 105 not in set(df["sample_id"])


def test_one_class_is_a_clear_error():
    X, _ = blobs(n=20, n_classes=2, dim=8)
    with pytest.raises(CurateError, match="at least 2 classes"):
        find_label_issues(X, ["a"] * 19 + ["b"], knn_graph(X, k=5, device="cpu"))
    with pytest.raises(CurateError, match="no labeled samples"):
        find_label_issues(X, [None] * 20)


def test_more_than_a_thousand_classes():
    """1,024 classes of 4 samples in 32-d (3 folds to keep it fast): runs, and the flags are still useful.

    Measured over seeds 0-2: precision 0.84-0.89, recall 0.99-1.00 for 5% symmetric noise.
    """
    rng = np.random.default_rng(0)
    K, per, dim = 1024, 4, 32
    y = np.repeat(np.arange(K), per)
    X = unit(rng.normal(0, 1, (K, dim))[y] + rng.normal(0, 0.3, (len(y), dim)))
    noisy, flip = flip_labels(y, 0.05, seed=0)
    res = find_label_issues(X, noisy, knn_graph(X, k=10, device="cpu"), n_folds=3)
    assert res.joint.shape == (K, K) and len(res.class_names) == K
    tp = (res.is_issue & flip).sum()
    assert tp / res.is_issue.sum() > 0.7 and tp / flip.sum() > 0.9
    assert set(res.small_classes.values()) <= {1, 2}  # only classes that lost members to the noise


# ------------------------------------------------------------------------------------------ catalog round trip
def _project_with_embeddings(tmp_path, X: np.ndarray, labels: list[str]):
    from curate.engine.catalog import init_project
    from curate.engine.embed import write_shard

    cat = init_project(tmp_path / "proj")
    ids = np.arange(1, len(X) + 1, dtype=np.int64)
    with cat.transaction() as con:
        con.executemany(
            "INSERT INTO samples (id, content_hash, path, split, source, ingested_at) VALUES (?, ?, ?, ?, ?, ?)",
            [(int(i), f"h{i}", str(tmp_path / f"img{i}.png"), "train", "test", utcnow()) for i in ids])
        cat.add_labels([(int(i), lab) for i, lab in zip(ids, labels) if lab is not None], source="test", con=con)
    write_shard(cat, "test-enc", ids, X, {"test": True})
    return cat, ids


def test_relabel_decision_feedback_loop(tmp_path):
    from typer.testing import CliRunner

    from curate.engine.cli import app

    X, y = blobs(n=240, n_classes=3, dim=16, seed=6)
    names = np.array(["cat", "dog", "fox"])
    labels = list(names[y])
    wrong = int(np.flatnonzero(y == 0)[0])
    labels[wrong] = "dog"  # planted error
    labels[1] = None  # one unlabeled sample
    cat, ids = _project_with_embeddings(tmp_path, X, labels)

    summary = run(cat, encoder="test-enc")
    assert summary["n_labeled"] == 239 and summary["n_unlabeled"] == 1
    df = cat.query_df("SELECT * FROM label_issues WHERE sample_id = ?", [int(ids[wrong])])
    assert bool(df["is_issue"].iloc[0]) and df["suggested_label"].iloc[0] == "cat"
    assert df["given_label"].iloc[0] == "dog"
    assert cat.last_run("label_issues")["summary"]["n_issues"] >= 1
    top = top_issues(cat, 5)
    assert int(ids[wrong]) in set(top["sample_id"]) and {"path", "given", "suggested"} <= set(top.columns)

    out = CliRunner().invoke(app, ["audit", "labels", "--project", str(cat.root), "--top", "5"])
    assert out.exit_code == 0, out.output
    assert "dog" in out.output and "cat" in out.output and str(ids[wrong]) in out.output

    # the reviewer fixes it; the next run checks the new label and no longer flags the sample
    cat.add_decision(int(ids[wrong]), "relabel", "cat", reason="test")
    run(cat, encoder="test-enc")
    df = cat.query_df("SELECT * FROM label_issues WHERE sample_id = ?", [int(ids[wrong])])
    assert df["given_label"].iloc[0] == "cat" and not bool(df["is_issue"].iloc[0])
    assert cat.scalar("SELECT count(DISTINCT run_id) FROM label_issues") == 1


def test_run_uses_imported_predictions_from_the_catalog(tmp_path):
    from curate.engine.byo import import_predictions

    X, y = blobs(n=120, n_classes=2, dim=8, seed=7)
    labels = list(np.array(["no", "yes"])[y])
    cat, ids = _project_with_embeddings(tmp_path, X, labels)
    probs = np.eye(2)[y] * 0.9 + 0.05
    probs[0] = [0.03, 0.97] if y[0] == 0 else [0.97, 0.03]  # the user's model says sample 1 is mislabeled
    csv = tmp_path / "preds.csv"
    pd.DataFrame({"sample_id": ids, "no": probs[:, 0], "yes": probs[:, 1]}).to_csv(csv, index=False)
    import_predictions(cat, csv, source="my-model")
    summary = run(cat, encoder="test-enc")
    assert summary["predictions_source"] == "my-model" and summary["prob_sources"] == {"imported": 120}
    flagged = set(cat.query_df("SELECT sample_id FROM label_issues WHERE is_issue")["sample_id"])
    assert int(ids[0]) in flagged


def test_run_without_embeddings_needs_full_predictions(tmp_path):
    from curate.engine.byo import import_predictions
    from curate.engine.catalog import init_project

    cat = init_project(tmp_path / "noemb")
    y = np.array([0, 1] * 30)
    with cat.transaction() as con:
        con.executemany("INSERT INTO samples (id, content_hash, path, ingested_at) VALUES (?, ?, ?, ?)",
                        [(i + 1, f"h{i}", f"/x/{i}.png", utcnow()) for i in range(60)])
        cat.add_labels([(i + 1, "ab"[c]) for i, c in enumerate(y)], source="test", con=con)
    probs = np.eye(2)[y] * 0.9 + 0.05
    probs[0] = [0.02, 0.98]
    half = tmp_path / "half.csv"
    pd.DataFrame({"sample_id": np.arange(1, 31), "a": probs[:30, 0], "b": probs[:30, 1]}).to_csv(half, index=False)
    import_predictions(cat, half)
    with pytest.raises(CurateError, match="curate embed"):
        run(cat)
    full = tmp_path / "full.csv"
    pd.DataFrame({"sample_id": np.arange(1, 61), "a": probs[:, 0], "b": probs[:, 1]}).to_csv(full, index=False)
    import_predictions(cat, full)
    summary = run(cat)
    assert summary["encoder"] is None and summary["n_labeled"] == 60
    assert bool(cat.scalar("SELECT is_issue FROM label_issues WHERE sample_id = 1"))


# --------------------------------------------------------------------------------------- calibrated flag count
def test_anchor_and_calibrated_noise_rates():
    from curate.engine.analyses.label_issues import anchor_noise_rate, calibrated_noise_rate

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 3000)
    P = np.full((3000, 3), 0.1)
    P[np.arange(3000), y] = 0.8
    P += rng.uniform(0, 0.05, P.shape)
    assert anchor_noise_rate(P / P.sum(1, keepdims=True), y) < 0.01  # confident predictions agree with the labels
    noisy, flip = flip_labels(y, 0.2, seed=1)
    assert abs(anchor_noise_rate(P, noisy) - flip.mean()) < 0.05  # noise independent of the image: anchors see it
    rate, limited = calibrated_noise_rate(0.24, 0.12)
    assert not limited and 0.12 < rate < 0.24
    rate, limited = calibrated_noise_rate(0.12, 0.01)  # confident learning 12x the anchors: encoder confusion
    assert limited and rate <= 0.01
    assert calibrated_noise_rate(0.004, 0.05) == (0.004, False)  # never above confident learning


def test_clean_labels_through_a_weak_encoder_are_not_flagged_by_the_thousand():
    """Overlapping classes, no label noise: confident learning's own count flags the encoder's confusions; the
    calibrated count caps the flags and the summary says why."""
    # like photos: every class has a clear core the encoder is sure of, and a fringe it confuses with other classes
    rng = np.random.default_rng(3)
    y = rng.integers(0, 5, 2000)
    centers = rng.normal(0, 1, (5, 16))
    spread = np.where(rng.random(2000) < 0.6, 0.3, 3.0)[:, None]
    X = unit(centers[y] + rng.normal(0, 1, (2000, 16)) * spread)
    g = knn_graph(X, k=10)
    cl = find_label_issues(X, y, knn_graph=g, flag_count="confident_learning")
    ours = find_label_issues(X, y, knn_graph=g)
    disagree = int((ours.suggested_label.astype(int) != y).sum())
    assert disagree > 150  # the fringes overlap: many out-of-sample predictions disagree with the (correct) labels
    assert ours.n_issues <= min(cl.n_issues, 0.01 * len(y)), (ours.n_issues, cl.n_issues, disagree)
    assert ours.details["noise_rate_confident_learning"] > 4 * ours.details["noise_rate_anchor"]
    assert ours.details["noise_below_encoder_resolution"]
    assert any("cleaner than this encoder can resolve" in w for w in ours.details["warnings"])


def test_noisy_labels_flag_about_the_noise_count_and_rounds_help():
    X, y = blobs(n=2000, n_classes=5, dim=16, spread=1.0, seed=4)
    noisy, flip = flip_labels(y, 0.2, seed=5)
    g = knn_graph(X, k=10)
    r = find_label_issues(X, noisy, knn_graph=g)
    assert abs(r.n_issues - flip.sum()) < 0.3 * flip.sum(), (r.n_issues, flip.sum())
    f1 = lambda res: 2 * (res.is_issue & flip).sum() / (res.is_issue.sum() + flip.sum())  # noqa: E731
    assert f1(r) > 0.8
    assert r.details["rounds"] == 2 and len(r.details["round_suspects"]) == 1
    one = find_label_issues(X, noisy, knn_graph=g, rounds=1)
    assert f1(r) >= f1(one) - 0.01


def test_cross_val_train_mask_keeps_rows_out_of_training_but_predicts_them():
    X, y = blobs(n=300, n_classes=3, dim=8, seed=7)
    wrong = y.copy()
    bad = np.arange(0, 300, 4)
    wrong[bad] = (y[bad] + 1) % 3  # 25 % wrong labels
    masked, _, _ = cross_val_predict_proba(X, wrong, 3, train_mask=~np.isin(np.arange(300), bad), C=1.0)
    plain, _, _ = cross_val_predict_proba(X, wrong, 3, C=1.0)
    assert masked.shape == (300, 3) and np.allclose(masked.sum(1), 1, atol=1e-4)
    # trained without the wrong labels, the probe is surer of the true class of the mislabeled rows
    assert masked[bad, y[bad]].mean() > plain[bad, y[bad]].mean()
