"""Outlier scores from the kNN graph: ranking, flags, and agreement with cleanlab's OutOfDistribution."""

from __future__ import annotations

from types import SimpleNamespace

import faiss
import numpy as np
import pytest

from curate.engine.analyses.outliers import find_outliers, mean_neighbor_distance, outlier_scores


def unit(x):
    x = np.asarray(x, np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def exact_graph(X: np.ndarray, k: int) -> SimpleNamespace:
    index = faiss.IndexFlatIP(X.shape[1])
    index.add(X)
    sims, idx = index.search(X, k + 1)
    return SimpleNamespace(indices=idx[:, 1:].astype(np.int64), similarities=sims[:, 1:])


def clustered(n_per: int = 60, d: int = 32, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = unit(rng.normal(size=(4, d)))
    return unit(np.repeat(centers, n_per, axis=0) + 0.15 * rng.normal(size=(4 * n_per, d)))


def test_far_point_ranks_first_and_is_flagged():
    rng = np.random.default_rng(1)
    X = clustered()
    far = unit(rng.normal(size=(1, X.shape[1])))
    X = np.vstack([X[:100], far, X[100:]])  # the far point at row 100
    res = find_outliers(exact_graph(X, 10), k=10)
    assert res.rank[100] == 1
    assert res.is_outlier[100]
    assert res.is_outlier.sum() <= 0.03 * len(X)
    assert np.all((res.score > 0) & (res.score <= 1))
    assert res.score[100] == res.score.min()
    assert sorted(res.rank.tolist()) == list(range(1, len(X) + 1))


def test_scores_match_cleanlab_out_of_distribution():
    from cleanlab.outlier import OutOfDistribution

    X = clustered(n_per=40, seed=2)
    ours = outlier_scores(exact_graph(X, 10), k=10)
    theirs = OutOfDistribution(params={"k": 10}).fit_score(features=X)
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5)


def test_padding_and_k_subset():
    g = SimpleNamespace(indices=np.array([[1, 2], [0, -1], [-1, -1]]),
                        similarities=np.array([[0.9, 0.5], [0.9, -1.0], [-1.0, -1.0]], np.float32))
    d = mean_neighbor_distance(g)
    np.testing.assert_allclose(d, [0.3, 0.1, 1.0], atol=1e-6)
    np.testing.assert_allclose(mean_neighbor_distance(g, k=1), [0.1, 0.1, 1.0], atol=1e-6)
    with pytest.raises(ValueError):
        mean_neighbor_distance(SimpleNamespace(indices=np.zeros((2, 2)), similarities=np.zeros((2, 3))))


def test_identical_points_do_not_flag_everything():
    X = np.vstack([np.tile(unit(np.ones(8)), (30, 1)), unit(np.arange(1, 9, dtype=np.float32)[::-1] ** 3)])
    res = find_outliers(exact_graph(X, 5), k=5)
    assert res.is_outlier.tolist() == [False] * 30 + [True]
