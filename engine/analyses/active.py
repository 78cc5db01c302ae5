"""Active learning: which unlabeled samples to send to annotators next.

Every strategy is a pure function of the embeddings, the labeled mask, a budget and (for some) the class
probabilities of a linear probe, in the style of modAL / Lightly.  :func:`select` dispatches by name and applies
the constraints that every strategy shares:

* candidates are the unlabeled rows that are not excluded (``exclude_mask``: near-duplicates of labeled samples,
  quarantined or removed images, outliers — see :func:`exclusion_mask`);
* ``max_per_class`` caps how many picks share one *predicted* class (class-balance target);
* ``groups`` (``curate query --balance-by KEY``: a sample metadata value per row, e.g. the camera) spreads the
  batch across the groups: each group gets at most the water-filling share :func:`balanced_group_cap`, so no
  group takes more than one pick beyond any other unless it ran out of candidates;
* with a kNN graph and ``near_duplicate_similarity``, picking a sample also drops its near-duplicates from the
  rest of the batch, so one batch never asks twice for the same image.

Strategies (``score``: higher = more valuable to label, under that strategy's criterion)
------------------------------------------------------------------------------------
``random``            seeded uniform sample (the baseline every bench compares against).
``least_confidence``  ``1 - max_c p_c``.
``margin``            ``1 - (p_top1 - p_top2)``  (alias ``uncertainty``).
``entropy``           ``H(p) / log C``.
``coreset``           k-center greedy (Sener & Savarese 2018): repeatedly the sample farthest from every labeled or
                      already selected sample.
``typiclust``         TypiClust (Hacohen et al. 2022), for cold start / low budgets: k-means into
                      ``|labeled| + budget`` clusters, then from the largest clusters holding the fewest labeled
                      samples the most *typical* member (inverse mean distance to its 20 nearest neighbours in the
                      cluster).
``probcover``         ProbCover (Yehuda et al. 2022), for cold start / low budgets: greedy maximum coverage of
                      delta-balls (cosine similarity ``>= tau``; exact FAISS range search, or the kNN graph for
                      very large sets); ``tau`` is the loosest threshold at which 95% of the balls are *pure* w.r.t.
                      a k-means pseudo-labelling with one cluster per class, unless given.
``badge``             BADGE (Ash et al. 2020): k-means++ seeding on the gradient embeddings
                      ``(p - onehot(argmax p)) x embedding`` of a linear probe, computed through the kernel trick
                      (no ``C x d`` vectors are materialised).
``margin_diversity``  uncertainty + diversity (after Zhdanov 2019 / cluster-margin): the ``10 x budget`` lowest-margin
                      samples are clustered into ``budget`` groups and the most uncertain member of each group is
                      taken (aliases ``combined``, ``hybrid``).

The registered analysis ``query`` (:func:`compute`, options :class:`QueryConfig`) is the catalog side
(``curate query``): it reads the candidates through the one embeddings interface (every row in memory, a seeded
pool out of core), fits the probe (:mod:`engine.analyses.probe`) on the current labels, builds the exclusions from
the ``duplicates``/``outliers``/``quarantine``/``decisions`` tables, appends the batch to ``queries`` (every batch
is kept; the newest has the largest ``batch_id``) and exports it as CSV/JSON/Label Studio tasks
(:func:`curate.engine.labels_io.export_batch`).  :func:`run` is the same through keyword arguments.  The labels
that come back are read by :func:`curate.engine.labels_io.import_labels` (``curate import-labels``).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from curate.engine.analyses.registry import Config, Result, register
from curate.engine.analyses.registry import run as registry_run
from curate.engine.catalog import Catalog, CurateError
from curate.engine.labels_io import export_batch

log = logging.getLogger(__name__)

STRATEGIES = ("random", "least_confidence", "margin", "entropy", "coreset", "typiclust", "probcover", "badge",
              "margin_diversity")
ALIASES = {"uncertainty": "margin", "kcenter": "coreset", "k_center": "coreset", "combined": "margin_diversity",
           "hybrid": "margin_diversity", "least-confidence": "least_confidence", "margin-diversity": "margin_diversity"}
NEEDS_PROBS = frozenset({"least_confidence", "margin", "entropy", "badge", "margin_diversity"})
PROBE_C = 1.0
"""Inverse L2 strength of the active-learning probe.  The label-issue default (``probe.DEFAULT_C``) is tuned for
thousands of labels; with the 10-200 labels of an active-learning loop it underfits badly.  ``python bench/active.py
--sweep-c`` (random baseline, AUC over 1-20 labels per class, 3 seeds): synthetic 0.686 / 0.881 / 0.905 / 0.912 at
C = 0.01 / 0.1 / 1 / 10, digits 0.546 / 0.681 / 0.701 / 0.706, demo 0.424 / 0.434 / 0.438 / 0.447; 1.0 (scikit-learn's
default) is within 0.01 of the best everywhere without going to the weakest regularisation."""
COLD_START = ("typiclust", "probcover", "coreset", "random")


@dataclass
class StrategyConfig:
    """Knobs of the strategies; the defaults follow the papers.

    Attributes
    ----------
    typiclust_neighbors : neighbours for TypiClust's typicality (paper: 20).
    typiclust_min_cluster_size : clusters smaller than this are picked from last (paper: 5).
    typiclust_max_clusters : cap on TypiClust's number of clusters (paper: 500).
    probcover_tau : cosine-similarity radius of ProbCover's balls; None = chosen by purity.
    probcover_purity : target ball purity for choosing ``tau`` (paper: alpha = 0.95).
    probcover_n_classes : k of the pseudo-labelling k-means (default: the number of probability columns, else the
        project's classes in :func:`run`, else chosen by silhouette as in :func:`engine.analyses.clusters.choose_k`).
    probcover_k : neighbours per sample in ProbCover's graph when the exact balls are too big (above
        ``probcover_exact_max`` samples or ``probcover_max_edges`` ball memberships).
    probcover_exact_max : up to this many samples ProbCover computes exact purities and balls with FAISS range search.
    probcover_max_edges : cap on the total size of the exact balls (memory); beyond it the kNN graph is used.
    diversity_factor : ``margin_diversity`` clusters the ``diversity_factor x budget`` most uncertain samples.
    """

    typiclust_neighbors: int = 20
    typiclust_min_cluster_size: int = 5
    typiclust_max_clusters: int = 500
    probcover_tau: float | None = None
    probcover_purity: float = 0.95
    probcover_n_classes: int | None = None
    probcover_k: int = 30
    probcover_exact_max: int = 50_000
    probcover_max_edges: int = 20_000_000
    diversity_factor: int = 10


@dataclass
class Selection:
    """A query batch.

    Attributes
    ----------
    indices : int64 [m] row positions of the selected samples, in selection order (rank 1 first).
    scores : float64 [m] the strategy's score of each pick (higher = more valuable to label).
    reasons : one short human-readable reason per pick.
    strategy : canonical strategy name.
    info : strategy details worth recording (e.g. ProbCover's ``tau``, TypiClust's number of clusters).
    """

    indices: np.ndarray
    scores: np.ndarray
    reasons: list[str]
    strategy: str
    info: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.indices)


def canonical_strategy(name: str) -> str:
    """Canonical strategy name (aliases resolved); a one-line error for unknown names."""
    key = str(name).strip().lower()
    key = ALIASES.get(key, key)
    if key not in STRATEGIES:
        raise CurateError(f"unknown strategy {name!r}; use one of {', '.join(STRATEGIES)} "
                          f"(aliases: {', '.join(sorted(ALIASES))})")
    return key


# ------------------------------------------------------------------------------------------------ helpers
def _graph_arrays(knn_graph: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """(indices, similarities) from a KnnGraph-like object or a tuple; None passes through."""
    if knn_graph is None:
        return None
    if isinstance(knn_graph, tuple):
        idx, sim = knn_graph
    else:
        idx, sim = knn_graph.indices, knn_graph.similarities
    return np.asarray(idx, dtype=np.int64), np.asarray(sim, dtype=np.float32)


def _normalize(X: np.ndarray) -> np.ndarray:
    X = np.asarray(X, dtype=np.float32)
    return X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)


def compute_knn(X: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Cosine kNN graph ``(indices, similarities)`` with :func:`indexes.knn.knn_graph` (exact up to its size limit,
    GPU when available).  Used only when the caller has no (large enough) shared graph."""
    from curate.indexes.knn import knn_graph

    g = knn_graph(np.asarray(X, dtype=np.float32), k=int(min(k, max(1, len(X) - 1))))
    return np.asarray(g.indices, dtype=np.int64), np.asarray(g.similarities, dtype=np.float32)


class _Picker:
    """Bookkeeping shared by all strategies: eligibility, class caps, in-batch near-duplicate suppression."""

    def __init__(self, candidates: np.ndarray, budget: int, pred_class: np.ndarray | None, max_per_class: int | None,
                 graph: tuple[np.ndarray, np.ndarray] | None, dup_sim: float | None,
                 groups: np.ndarray | None = None, group_cap: int | None = None):
        self.eligible = candidates.copy()
        self.groups = groups
        self.group_cap = group_cap
        self.group_counts: dict[int, int] = {}
        self.budget = budget
        self.pred_class = pred_class
        self.max_per_class = max_per_class
        self.graph = graph if dup_sim is not None else None
        self.dup_sim = dup_sim
        self.class_counts: dict[int, int] = {}
        self.picked: list[int] = []
        self.scores: list[float] = []
        self.reasons: list[str] = []

    @property
    def done(self) -> bool:
        return len(self.picked) >= self.budget or not self.eligible.any()

    def take(self, i: int, score: float, reason: str) -> None:
        i = int(i)
        assert self.eligible[i], "strategy picked an ineligible row"
        self.picked.append(i)
        self.scores.append(float(score))
        self.reasons.append(reason)
        self.eligible[i] = False
        if self.pred_class is not None and self.max_per_class is not None:
            c = int(self.pred_class[i])
            self.class_counts[c] = self.class_counts.get(c, 0) + 1
            if self.class_counts[c] >= self.max_per_class:
                self.eligible[self.pred_class == c] = False
        if self.groups is not None and self.group_cap is not None:
            g = int(self.groups[i])
            self.group_counts[g] = self.group_counts.get(g, 0) + 1
            if self.group_counts[g] >= self.group_cap:
                self.eligible[self.groups == g] = False
        if self.graph is not None:
            nb_i, nb_s = self.graph
            dups = nb_i[i][(nb_s[i] >= self.dup_sim) & (nb_i[i] >= 0)]
            self.eligible[dups] = False

    def take_in_order(self, order: np.ndarray, scores: np.ndarray, reason: Callable[[int], str]) -> None:
        for i in order:
            if self.done:
                break
            if self.eligible[i]:
                self.take(i, scores[i], reason(int(i)))

    def result(self, strategy: str, info: dict | None = None) -> Selection:
        return Selection(indices=np.asarray(self.picked, dtype=np.int64), scores=np.asarray(self.scores, np.float64),
                         reasons=self.reasons, strategy=strategy, info=info or {})


def uncertainty_scores(probs: np.ndarray, kind: str = "margin") -> np.ndarray:
    """Per-sample uncertainty in [0, 1] (higher = more uncertain).

    Parameters
    ----------
    probs : [n, C] class probabilities (rows sum to 1).
    kind : ``least_confidence`` (1 - max p), ``margin`` (1 - (p1 - p2)) or ``entropy`` (H(p) / log C).
    """
    p = np.clip(np.asarray(probs, dtype=np.float64), 0, 1)
    if p.ndim != 2 or p.shape[1] < 1:
        raise ValueError(f"probs must be [n, C], got shape {p.shape}")
    if kind == "least_confidence":
        return 1.0 - p.max(axis=1)
    if kind == "margin":
        if p.shape[1] < 2:
            return np.zeros(len(p))
        top2 = -np.partition(-p, 1, axis=1)[:, :2]
        return 1.0 - (top2[:, 0] - top2[:, 1])
    if kind == "entropy":
        if p.shape[1] < 2:
            return np.zeros(len(p))
        h = -(p * np.log(np.where(p > 0, p, 1.0))).sum(axis=1)
        return h / math.log(p.shape[1])
    raise ValueError(f"unknown uncertainty {kind!r}; use least_confidence, margin or entropy")


def _class_name(class_names: Sequence[str] | None, c: int) -> str:
    return str(class_names[c]) if class_names is not None and c < len(class_names) else str(c)


# ------------------------------------------------------------------------------------------------ strategies
def _random(X, labeled, picker: _Picker, rng: np.random.Generator, **_) -> dict:
    u = rng.random(len(X))
    order = np.argsort(u, kind="stable")
    picker.take_in_order(order, 1.0 - u, lambda i: "random sample (baseline)")
    return {}


def _uncertainty(kind: str):
    label = {"least_confidence": "confidence", "margin": "margin", "entropy": "normalised entropy"}[kind]

    def strategy(X, labeled, picker: _Picker, rng, probs, class_names=None, **_) -> dict:
        u = uncertainty_scores(probs, kind)
        order = np.lexsort((np.arange(len(u)), -u))  # most uncertain first, ties by row
        top2 = np.argsort(-probs, axis=1, kind="stable")[:, :2] if probs.shape[1] >= 2 else None

        def reason(i: int) -> str:
            if kind == "least_confidence":
                return f"probe is unsure: top class {_class_name(class_names, int(np.argmax(probs[i])))} " \
                       f"at {probs[i].max():.2f} {label}"
            if kind == "margin" and top2 is not None:
                a, b = top2[i]
                return f"{label} {probs[i, a] - probs[i, b]:.3f} between {_class_name(class_names, a)} " \
                       f"and {_class_name(class_names, b)}"
            return f"{label} {u[i]:.3f} of the probe's prediction"

        picker.take_in_order(order, u, reason)
        return {"uncertainty": kind}
    return strategy


def _coreset(X, labeled, picker: _Picker, rng, **_) -> dict:
    Xf = np.asarray(X, dtype=np.float32)
    sq = np.einsum("ij,ij->i", Xf, Xf)
    min_d2 = np.full(len(Xf), np.inf)

    def update(centers: np.ndarray) -> None:
        nonlocal min_d2
        for s in range(0, len(centers), 1024):  # bounded memory: n x 1024 block of distances
            C = Xf[centers[s:s + 1024]]
            d2 = sq[:, None] - 2.0 * (Xf @ C.T) + np.einsum("ij,ij->i", C, C)[None, :]
            min_d2 = np.minimum(min_d2, np.maximum(d2, 0).min(axis=1))

    lab = np.flatnonzero(labeled)
    if len(lab):
        update(lab)
    while not picker.done:
        if not np.isfinite(min_d2[picker.eligible]).any():
            # nothing labeled yet: start from the most central eligible sample (deterministic, typical)
            cand = np.flatnonzero(picker.eligible)
            centre = Xf[cand].mean(axis=0)
            i = int(cand[np.argmin(((Xf[cand] - centre) ** 2).sum(axis=1))])
            picker.take(i, 0.0, "no labeled samples yet: the most central sample")
        else:
            masked = np.where(picker.eligible, min_d2, -np.inf)
            i = int(np.argmax(masked))
            dist = math.sqrt(max(masked[i], 0.0))
            picker.take(i, dist, f"farthest from every labeled or selected sample (distance {dist:.3f})")
        update(np.array([i]))
    return {}


def typicality(X: np.ndarray, k: int = 20) -> np.ndarray:
    """TypiClust's typicality: ``1 / mean Euclidean distance to the k nearest neighbours`` (self excluded)."""
    import faiss

    Xf = np.ascontiguousarray(np.asarray(X, dtype=np.float32))
    m = len(Xf)
    if m <= 1:
        return np.ones(m)
    kk = min(k, m - 1)
    index = faiss.IndexFlatL2(Xf.shape[1])
    index.add(Xf)
    d2, _ = index.search(Xf, kk + 1)
    mean_d = np.sqrt(np.maximum(d2[:, 1:], 0)).mean(axis=1)
    return 1.0 / (mean_d + 1e-8)


def _typiclust(X, labeled, picker: _Picker, rng, config: StrategyConfig, seed: int = 0, **_) -> dict:
    from curate.engine.analyses.clusters import kmeans

    n = len(X)
    n_clusters = int(min(labeled.sum() + picker.budget, config.typiclust_max_clusters, n))
    res = kmeans(X, max(1, n_clusters), seed=seed, nredo=1)
    cl = res.labels
    sizes = np.bincount(cl, minlength=res.k)
    covered = np.bincount(cl[labeled], minlength=res.k).astype(np.int64)
    typ = np.zeros(n)
    for c in range(res.k):
        members = np.flatnonzero(cl == c)
        typ[members] = typicality(X[members], config.typiclust_neighbors)
    open_clusters = set(range(res.k))
    while not picker.done and open_clusters:
        # fewest labeled first; among those the largest; tiny clusters (< min size) last; ties by id
        c = min(open_clusters, key=lambda c: (sizes[c] < config.typiclust_min_cluster_size, covered[c], -sizes[c], c))
        members = np.flatnonzero((cl == c) & picker.eligible)
        if len(members) == 0:
            open_clusters.discard(c)
            continue
        i = int(members[np.argmax(typ[members])])
        what = "uncovered" if covered[c] == 0 else f"{covered[c]} labeled or already selected"
        picker.take(i, typ[i], f"most typical sample of cluster {c} ({sizes[c]} samples, {what})")
        covered[c] += 1
    if not picker.done:  # every cluster exhausted (tiny pools): fill at random
        _random(X, labeled, picker, rng)
    return {"n_clusters": int(res.k)}


def nearest_other_similarity(X: np.ndarray, pseudo_labels: np.ndarray) -> np.ndarray:
    """Exact cosine similarity of every row to its most similar row with another pseudo-label (FAISS, per class)."""
    import faiss

    Xn = np.ascontiguousarray(_normalize(X))
    out = np.full(len(Xn), -np.inf, dtype=np.float32)
    for c in np.unique(pseudo_labels):
        inside = pseudo_labels == c
        if inside.all():
            continue
        index = faiss.IndexFlatIP(Xn.shape[1])
        index.add(Xn[inside])
        sims, _ = index.search(Xn[~inside], 1)
        out[~inside] = np.maximum(out[~inside], sims[:, 0])
    return out


def probcover_tau(nearest_other: np.ndarray, purity: float = 0.95) -> float:
    """Loosest cosine threshold ``tau`` at which a fraction ``purity`` of the delta-balls are pure.

    The ball of ``i`` at threshold ``tau`` is ``{j : sim(i, j) >= tau}``; it is pure when all its members share
    ``i``'s pseudo-label, i.e. iff ``tau > s_i`` where ``s_i = nearest_other[i]`` is the similarity of ``i``'s most
    similar sample with another pseudo-label.  The answer is therefore just above the ``purity``-quantile of ``s``.
    (ProbCover's ``delta`` is the Euclidean radius ``sqrt(2 - 2 tau)`` on unit vectors.)
    """
    s = np.asarray(nearest_other, dtype=np.float64)
    s = np.where(np.isfinite(s), s, -1.0)
    q = float(np.quantile(s, purity, method="higher"))
    return float(np.nextafter(np.float32(q), np.float32(2.0)))


def _probcover_balls(X: np.ndarray, tau: float, graph, max_edges: int) -> tuple[Any, str]:
    """Sparse [n, n] ball-membership matrix (self included): exact range search when the balls fit in
    ``max_edges`` (estimated on a sample of rows), else the kNN graph's neighbours at or above ``tau``."""
    import faiss

    n = len(X)
    Xn = np.ascontiguousarray(_normalize(X))
    index = faiss.IndexFlatIP(Xn.shape[1])
    index.add(Xn)
    probe_rows = np.linspace(0, n - 1, num=min(n, 256)).astype(np.int64)
    lims, _, _ = index.range_search(Xn[probe_rows], float(tau))
    estimate = float(np.diff(lims.astype(np.int64)).mean()) * n
    if estimate > max_edges:
        if graph is None:
            graph = compute_knn(X, max(1, min(int(max_edges // n), n - 1)))
        A, how = _probcover_balls_knn(graph, tau, n)
        return A, how + f"; exact balls would hold ~{estimate:.0f} edges"
    lims, _, nbr = index.range_search(Xn, float(tau))
    rows = np.repeat(np.arange(n), np.diff(lims.astype(np.int64)))
    return _ball_matrix(rows, nbr.astype(np.int64), n), "exact range search"


def _ball_matrix(rows: np.ndarray, cols: np.ndarray, n: int):
    """CSR 0/1 matrix with ``A[i, j] = 1`` when ``j`` is in the ball of ``i``; every ball holds its centre."""
    import scipy.sparse as sp

    A = sp.csr_matrix((np.ones(len(rows) + n, np.float32), (np.r_[rows, np.arange(n)], np.r_[cols, np.arange(n)])),
                      shape=(n, n))
    A.data[:] = 1.0  # duplicates were summed (range search finds the centre too): membership, not multiplicity
    return A


def _probcover(X, labeled, picker: _Picker, rng, config: StrategyConfig, graph=None, probs=None, seed: int = 0,
               **_) -> dict:
    from curate.engine.analyses.clusters import choose_k, kmeans

    n = len(X)
    k = min(config.probcover_k, n - 1)
    big = n > config.probcover_exact_max
    if big and (graph is None or graph[0].shape[1] < k):
        graph = compute_knn(X, k)
    tau = config.probcover_tau
    info: dict = {}
    if tau is None:
        n_classes = config.probcover_n_classes or (probs.shape[1] if probs is not None else None)
        if n_classes is None:  # no classes known yet: the silhouette choice of k stands in for the class count
            n_classes = choose_k(X, seed=seed, sample_size=1000, nredo=1, criterion="silhouette").k if n >= 3 else 1
        pseudo = kmeans(X, max(1, min(int(n_classes), n)), seed=seed, nredo=1).labels
        if big:  # s_i from the kNN graph: the most similar neighbour with another pseudo-label (-inf if none)
            idx, sim = graph
            valid = idx >= 0
            other = valid & (pseudo[np.where(valid, idx, 0)] != pseudo[:, None])
            s = np.where(other, sim, -np.inf).max(axis=1)
        else:
            s = nearest_other_similarity(X, pseudo)
        tau = probcover_tau(s, config.probcover_purity)
        info["tau_chosen_by"] = (f"{config.probcover_purity:.0%} pure balls w.r.t. {int(n_classes)} "
                                 "k-means pseudo-classes")
    info["tau"] = float(tau)
    if big:
        A, info["balls"] = _probcover_balls_knn(graph, tau, n)
    else:
        A, info["balls"] = _probcover_balls(X, tau, graph, config.probcover_max_edges)
    AT = A.T.tocsr()
    covered = np.zeros(n, bool)
    lab = np.flatnonzero(labeled)
    if len(lab):
        covered[np.unique(A[lab].indices)] = True
    gain = np.asarray(A @ (~covered).astype(np.float32)).ravel()
    # ties between equal gains go to the denser sample (larger ball before any coverage; scaled below 1 so it never
    # outweighs one covered sample)
    degree = np.diff(A.indptr).astype(np.float64)
    tiebreak = 0.5 * degree / (degree.max() + 1.0)
    while not picker.done:
        pri = np.where(picker.eligible, gain + tiebreak, -np.inf)
        i = int(np.argmax(pri))
        if gain[i] <= 0:
            break
        g = int(round(gain[i]))
        picker.take(i, float(g), f"covers {g} not-yet-covered samples within cosine {tau:.3f}")
        new = A[i].indices[~covered[A[i].indices]]
        covered[new] = True
        if len(new):
            gain -= np.asarray(AT[new].sum(axis=0)).ravel()
    info["coverage"] = float(covered.mean())
    if not picker.done:  # everything covered: the paper continues at random
        _random(X, labeled, picker, rng)
        info["filled_at_random"] = True
    return info


def _probcover_balls_knn(graph, tau: float, n: int):
    """Balls cut at the graph's k neighbours: ``{i} + {j in kNN(i) : sim >= tau}``."""
    idx, sim = graph
    edge = (idx >= 0) & (sim >= tau)
    rows = np.repeat(np.arange(n), idx.shape[1])[edge.ravel()]
    return _ball_matrix(rows, idx.ravel()[edge.ravel()], n), f"kNN graph (k={idx.shape[1]})"


def _badge(X, labeled, picker: _Picker, rng, probs, **_) -> dict:
    Xf = np.asarray(X, dtype=np.float64)
    p = np.asarray(probs, dtype=np.float64)
    a = p.copy()
    a[np.arange(len(p)), p.argmax(axis=1)] -= 1.0  # gradient of the CE loss w.r.t. logits at the predicted label
    a_sq = (a * a).sum(axis=1)
    x_sq = (Xf * Xf).sum(axis=1)
    g_sq = a_sq * x_sq  # ||a (x) x||^2 = ||a||^2 ||x||^2
    min_d2 = np.full(len(Xf), np.inf)

    def d2_to(j: int) -> np.ndarray:  # ||g_i - g_j||^2 through the kernel trick
        return np.maximum(g_sq + g_sq[j] - 2.0 * (a @ a[j]) * (Xf @ Xf[j]), 0.0)

    first = True
    while not picker.done:
        cand = np.flatnonzero(picker.eligible)
        if first:
            i = int(cand[np.argmax(g_sq[cand])])  # BADGE starts from the largest gradient
            score = float(g_sq[i])
            reason = f"largest gradient embedding (norm {math.sqrt(score):.3f})"
            first = False
        else:
            w = min_d2[cand]
            total = w.sum()
            if not np.isfinite(total) or total <= 0:
                i = int(cand[rng.integers(len(cand))])
            else:
                i = int(cand[min(np.searchsorted(np.cumsum(w), rng.random() * total), len(cand) - 1)])
            score = float(min_d2[i])
            reason = f"gradient embedding far from the batch (k-means++ D^2 {score:.3f})"
        picker.take(i, score, reason)
        min_d2 = np.minimum(min_d2, d2_to(i))
    return {}


def _margin_diversity(X, labeled, picker: _Picker, rng, probs, config: StrategyConfig, class_names=None,
                      seed: int = 0, **_) -> dict:
    from curate.engine.analyses.clusters import kmeans

    u = uncertainty_scores(probs, "margin")
    cand = np.flatnonzero(picker.eligible)
    cand = cand[np.lexsort((cand, -u[cand]))][: max(1, config.diversity_factor * picker.budget)]
    n_groups = min(picker.budget, len(cand))
    groups = kmeans(X[cand], n_groups, seed=seed, nredo=1).labels if n_groups > 1 else np.zeros(len(cand), np.int64)
    # the most uncertain member of each group, groups visited from the most uncertain pick down
    best = {}
    for pos, i in enumerate(cand):  # cand is sorted by uncertainty: the first member seen is the most uncertain
        best.setdefault(int(groups[pos]), int(i))
    order = sorted(best.items(), key=lambda kv: (-u[kv[1]], kv[1]))
    for g, i in order:
        if picker.done:
            break
        if picker.eligible[i]:
            picker.take(i, u[i], f"most uncertain of diversity group {g}: margin {1 - u[i]:.3f}")
        else:  # the group's best was dropped (class cap / in-batch duplicate): its next eligible member
            members = cand[(groups == g) & picker.eligible[cand]]
            if len(members):
                j = int(members[0])
                picker.take(j, u[j], f"most uncertain of diversity group {g}: margin {1 - u[j]:.3f}")
    if not picker.done:  # fewer groups than budget after caps: continue by plain margin
        order2 = np.lexsort((np.arange(len(u)), -u))
        picker.take_in_order(order2, u, lambda i: f"margin {1 - u[i]:.3f} (after diversity groups)")
    return {"n_candidates": int(len(cand)), "n_groups": int(n_groups)}


_STRATEGY_FUNCS: dict[str, Callable[..., dict]] = {
    "random": _random,
    "least_confidence": _uncertainty("least_confidence"),
    "margin": _uncertainty("margin"),
    "entropy": _uncertainty("entropy"),
    "coreset": _coreset,
    "typiclust": _typiclust,
    "probcover": _probcover,
    "badge": _badge,
    "margin_diversity": _margin_diversity,
}


def balanced_group_cap(candidates_per_group: Sequence[int], budget: int) -> int:
    """The smallest per-group cap ``t`` with ``sum(min(n_g, t)) >= min(budget, sum(n_g))`` (water filling).

    Capping every group at ``t`` still lets a batch fill its budget, while no group can take more than ``t``.

    Examples
    --------
    >>> balanced_group_cap([50, 30, 2], 12), balanced_group_cap([4, 4], 3), balanced_group_cap([1, 1], 10)
    (5, 2, 1)
    """
    counts = np.asarray(candidates_per_group, dtype=np.int64)
    want = int(min(budget, counts.sum()))
    t = 0
    while np.minimum(counts, t).sum() < want:
        t += 1
    return max(t, 1)


def select(
    strategy: str,
    embeddings: np.ndarray,
    labeled_mask: np.ndarray,
    budget: int,
    probs: np.ndarray | None = None,
    knn_graph: Any = None,
    exclude_mask: np.ndarray | None = None,
    seed: int = 0,
    max_per_class: int | None = None,
    near_duplicate_similarity: float | None = None,
    class_names: Sequence[str] | None = None,
    config: StrategyConfig | None = None,
    groups: np.ndarray | None = None,
) -> Selection:
    """Select up to ``budget`` unlabeled, non-excluded samples to label next.

    Parameters
    ----------
    strategy : one of :data:`STRATEGIES` (or an alias in :data:`ALIASES`).
    embeddings : float array [n, d] (L2-normalised embeddings; ProbCover uses cosine similarity).
    labeled_mask : bool [n], True where a sample already has a label (never selected).
    budget : number of samples wanted; fewer are returned when fewer candidates remain.
    probs : [n, C] probe probabilities for every row; required by ``least_confidence``, ``margin``, ``entropy``,
        ``badge``, ``margin_diversity`` and by ``max_per_class``.
    knn_graph : the shared kNN graph (``indexes.knn.KnnGraph`` or ``(indices, similarities)``); used by the in-batch
        near-duplicate suppression, and by ProbCover on sets too large for exact balls (when it has at least
        ``config.probcover_k`` neighbours; else one is computed with :func:`indexes.knn.knn_graph`).
    exclude_mask : bool [n], True for samples never to select (see :func:`exclusion_mask`).
    seed : random seed; the same inputs and seed give the same batch.
    max_per_class : at most this many picks per predicted class (``argmax probs``).
    near_duplicate_similarity : with ``knn_graph``, a pick removes its neighbours at or above this cosine similarity
        from the rest of the batch.
    class_names : names of the probability columns, for readable reasons.
    config : :class:`StrategyConfig`.
    groups : int [n] group code per row (e.g. a metadata value such as the camera); the batch is spread across
        the groups — each gets at most :func:`balanced_group_cap` picks, in the strategy's own order.

    Returns
    -------
    Selection

    Examples
    --------
    >>> X = np.random.default_rng(0).normal(size=(100, 8)).astype("float32")
    >>> sel = select("coreset", X, np.zeros(100, bool), budget=5)
    >>> len(sel), len(set(sel.indices.tolist()))
    (5, 5)
    """
    name = canonical_strategy(strategy)
    config = config or StrategyConfig()
    X = np.ascontiguousarray(np.asarray(embeddings, dtype=np.float32))
    if X.ndim != 2:
        raise ValueError(f"embeddings must be [n, d], got shape {X.shape}")
    n = len(X)
    labeled = np.asarray(labeled_mask, dtype=bool)
    if labeled.shape != (n,):
        raise ValueError(f"labeled_mask must have shape ({n},), got {labeled.shape}")
    excluded = np.zeros(n, bool) if exclude_mask is None else np.asarray(exclude_mask, dtype=bool)
    if excluded.shape != (n,):
        raise ValueError(f"exclude_mask must have shape ({n},), got {excluded.shape}")
    budget = int(budget)
    if budget < 0:
        raise ValueError(f"budget must be >= 0, got {budget}")
    if probs is not None:
        probs = np.asarray(probs, dtype=np.float64)
        if probs.shape[0] != n:
            raise ValueError(f"probs has {probs.shape[0]} rows for {n} embeddings")
    if (name in NEEDS_PROBS or max_per_class is not None) and probs is None:
        need = f"strategy {name}" if name in NEEDS_PROBS else "max_per_class"
        raise CurateError(f"{need} needs class probabilities from a probe trained on at least 2 labeled classes; "
                          f"label a first batch with a cold-start strategy ({', '.join(COLD_START[:2])})")
    graph = _graph_arrays(knn_graph)
    if graph is not None and graph[0].shape[0] != n:
        raise ValueError(f"knn_graph has {graph[0].shape[0]} rows for {n} embeddings")
    candidates = ~labeled & ~excluded
    pred = np.argmax(probs, axis=1) if (probs is not None and max_per_class is not None) else None
    group_cap = None
    if groups is not None:
        groups = np.asarray(groups, dtype=np.int64)
        if groups.shape != (n,):
            raise ValueError(f"groups must have shape ({n},), got {groups.shape}")
        _, per_group = np.unique(groups[candidates], return_counts=True)
        group_cap = balanced_group_cap(per_group, budget) if len(per_group) else None
    picker = _Picker(candidates, budget, pred, max_per_class, graph, near_duplicate_similarity, groups, group_cap)
    rng = np.random.default_rng(seed)
    info: dict = {"n_candidates": int(candidates.sum())}
    if group_cap is not None:
        info["group_cap"] = int(group_cap)
    if budget > 0 and candidates.any():
        info.update(_STRATEGY_FUNCS[name](X, labeled, picker, rng, probs=probs, graph=graph, config=config,
                                          seed=seed, class_names=class_names) or {})
    return picker.result(name, info)


# ------------------------------------------------------------------------------------------------ exclusions
@dataclass
class Exclusions:
    """Which samples a query must skip, and why (counts per reason; a sample may have several reasons)."""

    mask: np.ndarray
    counts: dict[str, int]


def exclusion_mask(
    n: int,
    labeled_mask: np.ndarray,
    knn_graph: Any = None,
    near_duplicate_similarity: float | None = None,
    duplicate_set_ids: np.ndarray | None = None,
    outlier_mask: np.ndarray | None = None,
    blocked_mask: np.ndarray | None = None,
) -> Exclusions:
    """Build the ``exclude_mask`` for :func:`select`.

    Parameters
    ----------
    n : number of samples.
    labeled_mask : bool [n]; their near-duplicates are excluded (labeling a copy teaches nothing new).
    knn_graph : kNN graph; neighbours of a labeled sample with cosine ``>= near_duplicate_similarity`` are
        near-duplicates.
    near_duplicate_similarity : threshold for the graph rule (None: graph rule off).
    duplicate_set_ids : int [n] duplicate-set id per sample (-1 = none), from the ``duplicates`` table; every member
        of a set holding a labeled sample is excluded.
    outlier_mask : bool [n] outliers to skip.
    blocked_mask : bool [n] samples quarantined or removed by a decision.
    """
    labeled = np.asarray(labeled_mask, dtype=bool)
    mask = np.zeros(n, bool)
    counts: dict[str, int] = {}
    near = np.zeros(n, bool)
    graph = _graph_arrays(knn_graph)
    if graph is not None and near_duplicate_similarity is not None:
        idx, sim = graph
        hit = (idx >= 0) & (sim >= near_duplicate_similarity)
        lab_rows = np.flatnonzero(labeled)
        near[idx[lab_rows][hit[lab_rows]]] = True  # neighbours of labeled samples
        rev = hit & labeled[np.where(idx >= 0, idx, 0)]  # samples whose neighbour is labeled (kNN is not symmetric)
        near[rev.any(axis=1)] = True
    if duplicate_set_ids is not None:
        sets = np.asarray(duplicate_set_ids, dtype=np.int64)
        lab_sets = np.unique(sets[labeled & (sets >= 0)])
        near |= np.isin(sets, lab_sets) & (sets >= 0)
    near &= ~labeled
    counts["near-duplicate of a labeled sample"] = int(near.sum())
    mask |= near
    if outlier_mask is not None:
        o = np.asarray(outlier_mask, dtype=bool) & ~labeled
        counts["outlier"] = int(o.sum())
        mask |= o
    if blocked_mask is not None:
        b = np.asarray(blocked_mask, dtype=bool) & ~labeled
        counts["quarantined or removed"] = int(b.sum())
        mask |= b
    return Exclusions(mask=mask, counts=counts)


# ------------------------------------------------------------------------------------------------ catalog
@dataclass
class QueryResult:
    """What a query run wrote (``run_id`` and ``batch_id`` are set when the batch is written)."""

    run_id: int
    batch_id: int | None
    strategy: str
    encoder: str
    table: pd.DataFrame  # batch rows: rank, sample_id, path, score, reason
    excluded: dict[str, int]
    files: list[Path] = field(default_factory=list)
    info: dict = field(default_factory=dict)


GRAPH_K = 10
"""Degree of the kNN graph the near-duplicate rules read (ProbCover on sets above ``probcover_exact_max`` asks for
``probcover_k`` neighbours instead)."""

_STRATEGY_KNOBS = tuple(f.name for f in dataclasses.fields(StrategyConfig))


@dataclass(frozen=True)
class QueryConfig(Config):
    """Options of a query (``curate query``); see :func:`run` for their meaning.

    The ``typiclust_*``, ``probcover_*`` and ``diversity_factor`` fields are :class:`StrategyConfig`'s knobs, with
    its defaults.  ``strategy`` is stored under its canonical name (aliases resolved).
    """

    strategy: str = "typiclust"
    budget: int = 100
    seed: int = 0
    max_per_class: int | None = None
    exclude_outliers: bool = True
    outlier_score_threshold: float | None = None
    near_duplicate_similarity: float | None = None
    export: bool = True
    url_prefix: str | None = None
    balance_by: str | None = None
    pool_size: int = 200_000
    typiclust_neighbors: int = StrategyConfig.typiclust_neighbors
    typiclust_min_cluster_size: int = StrategyConfig.typiclust_min_cluster_size
    typiclust_max_clusters: int = StrategyConfig.typiclust_max_clusters
    probcover_tau: float | None = StrategyConfig.probcover_tau
    probcover_purity: float = StrategyConfig.probcover_purity
    probcover_n_classes: int | None = StrategyConfig.probcover_n_classes
    probcover_k: int = StrategyConfig.probcover_k
    probcover_exact_max: int = StrategyConfig.probcover_exact_max
    probcover_max_edges: int = StrategyConfig.probcover_max_edges
    diversity_factor: int = StrategyConfig.diversity_factor

    def __post_init__(self) -> None:
        object.__setattr__(self, "strategy", canonical_strategy(self.strategy))
        super().__post_init__()

    def validate(self) -> None:
        if int(self.budget) < 1:
            raise CurateError(f"--budget must be at least 1, got {self.budget}")
        if int(self.pool_size) < 1:
            raise CurateError(f"pool_size must be at least 1, got {self.pool_size}; try 200000")
        if self.near_duplicate_similarity is not None and not -1.0 <= float(self.near_duplicate_similarity) <= 1.0:
            raise CurateError(f"near_duplicate_similarity is a cosine similarity in [-1, 1], got "
                              f"{self.near_duplicate_similarity}; try 0.95")
        if not 0.0 < float(self.probcover_purity) <= 1.0:
            raise CurateError(f"probcover_purity must be in (0, 1], got {self.probcover_purity}; try 0.95")
        for knob in ("typiclust_neighbors", "typiclust_max_clusters", "probcover_k", "diversity_factor"):
            if int(getattr(self, knob)) < 1:
                raise CurateError(f"{knob} must be at least 1, got {getattr(self, knob)}; try "
                                  f"{getattr(StrategyConfig, knob)}")

    def strategy_config(self) -> StrategyConfig:
        """The strategies' knobs as a :class:`StrategyConfig`."""
        return StrategyConfig(**{k: getattr(self, k) for k in _STRATEGY_KNOBS})


@dataclass
class _Batch(Result):
    """A query's :class:`Result` plus what its write step needs: whether and how to export the batch."""

    export: bool = False
    url_prefix: str | None = None
    export_error: Exception | None = None


def _pool(emb: Any, ids: np.ndarray, codes: np.ndarray, pool_size: int, seed: int) -> tuple[np.ndarray, dict | None]:
    """Global rows of the candidate pool, in sample-id order, and a description of it (None: every row).

    In memory the pool is every row.  Out of core it is a seeded pool of ``pool_size`` rows: the labeled rows
    (sampled when they alone exceed half the pool, so that the probe and the labeled-distance rules keep them)
    plus a uniform sample of the unlabeled ones.
    """
    n = len(emb)
    if emb.in_memory:
        return np.arange(n), None
    rng = np.random.default_rng(seed)
    lab, unl = np.flatnonzero(codes >= 0), np.flatnonzero(codes < 0)
    n_lab = min(len(lab), max(pool_size // 2, pool_size - len(unl)))
    n_unl = min(len(unl), max(0, pool_size - n_lab))
    rows = np.concatenate([rng.choice(lab, n_lab, replace=False) if n_lab < len(lab) else lab,
                           rng.choice(unl, n_unl, replace=False) if n_unl < len(unl) else unl])
    rows = rows[np.argsort(ids[rows], kind="stable")]
    info = {"rows": int(n), "pool": int(len(rows)), "labeled_in_pool": int(n_lab),
            "unlabeled_in_pool": int(n_unl), "unlabeled_total": int(len(unl)), "seed": seed}
    return rows, info


def _groups(cat: Catalog, balance_by: str | None, ids: np.ndarray) -> np.ndarray | None:
    """Group code per row from sample metadata ``balance_by`` (None without it); an error naming the valid keys."""
    if not balance_by:
        return None
    values = cat.metadata_values(balance_by, ids)
    if all(v is None for v in values):
        keys = cat.metadata_keys()["key"].tolist()
        raise CurateError(f"no sample has metadata {balance_by!r}; --balance-by takes one of: "
                          f"{', '.join(keys) if keys else 'none (ingest a manifest with extra columns first)'}")
    groups, _ = pd.factorize(pd.Series(values, dtype=object).fillna("\0missing"), sort=True)
    return groups


def compute(inputs: Any, config: QueryConfig) -> Result:
    """The next batch to label: the strategy over the candidate pool (:func:`_pool`) read through
    ``inputs.embeddings`` (every row in memory; out of core a seeded pool taken from the shards), with the
    exclusions of :func:`exclusion_mask` and, for the probability strategies, a linear probe on the current labels.

    Returns a result whose write step (:func:`_write`) appends the batch to ``queries`` and exports it.
    """
    from curate.engine.analyses.probe import LinearProbe
    from curate.engine.progress import step

    cat, progress, name = inputs.cat, inputs.progress, config.strategy
    emb = inputs.embeddings
    all_ids = np.asarray(emb.ids(), dtype=np.int64)
    names_, all_codes = inputs.label_codes()
    rows, pool_info = _pool(emb, all_ids, all_codes, int(config.pool_size), config.seed)
    ids = all_ids[rows]
    # the whole set is emb.sample(len): the in-memory set hands back its own array (no copy)
    X = emb.sample(len(emb))[1] if pool_info is None else emb.take(rows)
    near_dup = config.near_duplicate_similarity
    if near_dup is None:
        from curate.engine.analyses.duplicates import default_threshold

        near_dup = default_threshold(emb.encoder)
    groups = _groups(cat, config.balance_by, ids)
    strategy_config = config.strategy_config()

    codes = all_codes[rows]
    labels = pd.Series(np.array(list(names_) + [None], dtype=object)[codes], index=ids)  # -1 -> None
    labeled = labels.notna().to_numpy()
    graph = None
    if emb.in_memory:  # the shared graph; ProbCover on very large sets reads its balls from it, so enough neighbours
        big_probcover = name == "probcover" and len(ids) > strategy_config.probcover_exact_max
        graph = inputs.graph(strategy_config.probcover_k if big_probcover else GRAPH_K)
        if np.asarray(graph.indices).shape[0] != len(ids):  # embeddings changed under the cached graph
            graph = None

    pos = pd.Series(np.arange(len(ids)), index=ids)
    dup = cat.query_df("SELECT set_id, sample_id FROM duplicates")
    set_ids = np.full(len(ids), -1, dtype=np.int64)
    if len(dup):
        dup = dup[dup["sample_id"].isin(ids)].drop_duplicates("sample_id", keep="last")
        set_ids[pos[dup["sample_id"]].to_numpy()] = dup["set_id"].to_numpy()
    outlier = None
    if config.exclude_outliers:
        out = cat.query_df("SELECT sample_id, score, is_outlier FROM outliers "
                           "WHERE sample_id IN (SELECT unnest(?))", [ids.tolist()])
        outlier = np.zeros(len(ids), bool)
        flag = (out["score"] < config.outlier_score_threshold) if config.outlier_score_threshold is not None \
            else out["is_outlier"].fillna(False).astype(bool)
        outlier[pos[out.loc[flag, "sample_id"]].to_numpy()] = True
    blocked_ids = _blocked(cat)
    blocked = np.isin(ids, blocked_ids)
    excl = exclusion_mask(len(ids), labeled, graph, near_dup, set_ids, outlier, blocked)

    probs = class_names = None
    lab_rows = np.flatnonzero(labeled)
    n_classes = labels.iloc[lab_rows].nunique() if len(lab_rows) else 0
    if name in NEEDS_PROBS or config.max_per_class is not None:
        if n_classes < 2:
            raise CurateError(
                f"strategy {name} needs a probe trained on at least 2 labeled classes, and this project has "
                f"{n_classes}; start with `curate query --strategy typiclust` (or probcover), label that batch, "
                f"then switch")
        with step(progress, "probe"):
            probe = LinearProbe(C=PROBE_C, random_state=config.seed).fit(
                X[lab_rows], labels.iloc[lab_rows].astype(str).to_numpy())
            probs = probe.predict_proba(X)
        class_names = [str(c) for c in probe.classes_]
    with step(progress, f"{name} selection"):
        sel = select(name, X, labeled, config.budget, probs=probs,
                     knn_graph=graph, exclude_mask=excl.mask, seed=config.seed, max_per_class=config.max_per_class,
                     near_duplicate_similarity=near_dup, class_names=class_names,
                     config=_with_classes(strategy_config, len(cat.class_names())), groups=groups)
    paths = dict(cat.query("SELECT id, path FROM samples WHERE id IN (SELECT unnest(?))",
                           [[int(i) for i in ids[sel.indices]]]))
    table = pd.DataFrame({
        "rank": np.arange(1, len(sel) + 1, dtype=np.int32),
        "sample_id": ids[sel.indices],
        "path": [paths.get(int(i)) for i in ids[sel.indices]],
        "score": sel.scores,
        "reason": sel.reasons,
    })
    summary = {"strategy": name, "selected": len(sel), "candidates": sel.info.get("n_candidates", 0),
               "labeled": int(labeled.sum()), "excluded": excl.counts,
               "near_duplicate_similarity": float(near_dup),
               **({"out_of_core_pool": pool_info} if pool_info else {}),
               **{k: v for k, v in sel.info.items() if k != "n_candidates"}}
    detail = QueryResult(run_id=0, batch_id=None, strategy=name, encoder=emb.encoder, table=table,
                         excluded=excl.counts, info=sel.info)
    return _Batch(summary, tables={"queries": table}, detail=detail, export=bool(config.export),
                  url_prefix=config.url_prefix)


def _write(cat: Catalog, result: _Batch, run_id: int, summary: dict) -> None:
    """Append the batch to ``queries`` under the next ``batch_id`` (every batch is kept) and finish the run, in one
    transaction; then export it.  An export error does not undo the batch: it is kept on the result (and
    :func:`run` raises it)."""
    q: QueryResult = result.detail
    batch_id = None
    with cat.transaction() as con:
        if len(q.table):
            batch_id = int(con.execute("SELECT coalesce(max(batch_id), 0) + 1 FROM queries").fetchall()[0][0])
            rows = pd.DataFrame({"run_id": run_id, "batch_id": batch_id, "sample_id": q.table["sample_id"],
                                 "strategy": q.strategy, "score": q.table["score"], "rank": q.table["rank"],
                                 "reason": q.table["reason"]})
            cat.append_rows("queries", rows, con=con)
        summary["batch_id"] = batch_id
        cat.finish_run(run_id, summary, con=con)
    q.run_id, q.batch_id = run_id, batch_id
    if result.export and batch_id is not None:
        try:
            q.files = export_batch(cat, batch_id, url_prefix=result.url_prefix)
        except Exception as exc:  # the run is finished: report, do not mark it failed
            result.export_error = exc
            log.warning("query batch %s was written but not exported: %s", batch_id, exc)
    result.lines = _lines(q, result.export_error)


def _lines(q: QueryResult, export_error: Exception | None = None) -> list[str]:
    """What ``curate query`` prints about a batch."""
    if q.batch_id is None:
        return ["nothing to query: every embedded sample is labeled or excluded"]
    excluded = ", ".join(f"{v} {k}" for k, v in q.excluded.items() if v) or "none"
    lines = [f"batch {q.batch_id}: {len(q.table)} samples by {q.strategy}; excluded: {excluded}"]
    lines += [f"{r.rank}. sample {r.sample_id} (score {r.score:.4g}): {r.reason}" for r in q.table.itertuples()]
    lines += [f"wrote {f}" for f in q.files]
    if export_error is not None:
        lines.append(f"export failed: {str(export_error).splitlines()[0] if str(export_error) else export_error!r}")
    return lines


ANALYSIS = register("query", compute, config=QueryConfig, title="the next samples to send to annotators",
                    label="active-learning query",
                    tables=("queries",), needs=frozenset({"embeddings", "graph", "labels"}),
                    in_memory_only=("candidates beyond the pool", "kNN-graph near-duplicate rules"), order=60,
                    write=_write)


def run(
    cat: Catalog,
    strategy: str = "typiclust",
    budget: int = 100,
    encoder: str | None = None,
    seed: int = 0,
    max_per_class: int | None = None,
    exclude_outliers: bool = True,
    outlier_score_threshold: float | None = None,
    near_duplicate_similarity: float | None = None,
    export: bool = True,
    url_prefix: str | None = None,
    config: StrategyConfig | None = None,
    out_of_core: bool | None = None,
    pool_size: int = 200_000,
    progress: Any = None,
    balance_by: str | None = None,
) -> QueryResult:
    """Select the next batch to label, write it to ``queries`` and export it.

    The registry's runner does the work (:func:`curate.engine.analyses.registry.run` with :func:`compute`).

    Parameters
    ----------
    cat : the project catalog.
    strategy, budget, seed, max_per_class, config : see :func:`select`.
    encoder : embedding set (None = the most recent).
    exclude_outliers : skip samples the ``outliers`` analysis flagged (``is_outlier``), or, with
        ``outlier_score_threshold``, whose outlier score (lower = more outlying) is below it.
    near_duplicate_similarity : cosine threshold for "near-duplicate of a labeled sample" on the kNN graph and for
        in-batch suppression (default: the duplicates analysis' calibrated threshold for the encoder).  Members of a
        duplicate set that holds a labeled sample are always excluded.
    export : write ``queue.csv``, ``queue.json`` and ``label_studio.json`` to ``<project>/exports/query-<batch>/``.
    url_prefix : prefix of the image URL in the Label Studio tasks (e.g. ``/data/local-files/?d=``).
    balance_by : a sample metadata key (e.g. ``camera``): spread the batch across its values (samples without
        the key form one more group); see ``groups`` in :func:`select`.
    out_of_core : None lets :meth:`curate.engine.inputs.Inputs.open` decide.  Out of core the strategy runs on a
        seeded pool of ``pool_size`` rows read from the shards (the labeled rows, sampled when they alone exceed half
        the pool, plus a uniform sample of the unlabeled ones) without the kNN-graph near-duplicate rules (duplicate
        sets still apply); the summary records the pool.
    progress : an :data:`engine.progress.Progress` callback (probe, selection).

    Returns
    -------
    QueryResult (``batch_id`` None when no candidate was left).
    """
    knobs = dataclasses.asdict(config or StrategyConfig())
    cfg = QueryConfig(strategy=strategy, budget=budget, seed=seed, max_per_class=max_per_class,
                      exclude_outliers=exclude_outliers, outlier_score_threshold=outlier_score_threshold,
                      near_duplicate_similarity=near_duplicate_similarity, export=export, url_prefix=url_prefix,
                      balance_by=balance_by, pool_size=pool_size, **knobs)
    result = registry_run(cat, ANALYSIS, cfg, encoder=encoder, out_of_core=out_of_core, progress=progress)
    if result.export_error is not None:
        raise result.export_error
    return result.detail


def _with_classes(config: StrategyConfig, n_classes: int) -> StrategyConfig:
    """ProbCover's pseudo-labelling uses the project's class count when it has classes."""
    if n_classes < 2 or config.probcover_n_classes is not None:
        return config
    from dataclasses import replace

    return replace(config, probcover_n_classes=int(n_classes))


def _blocked(cat: Catalog) -> np.ndarray:
    """Sample ids that are quarantined or whose latest live decision is ``remove``."""
    df = cat.query_df(
        """SELECT id AS sample_id FROM samples WHERE path IN (SELECT path FROM quarantine)
           UNION
           SELECT sample_id FROM live_decisions WHERE action = 'remove'"""
    )
    return df["sample_id"].to_numpy(dtype=np.int64)
