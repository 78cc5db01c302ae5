"""Label issues: which samples are probably filed under the wrong class, and what the right class likely is.

How it works
------------
1. **Out-of-sample class probabilities** for every labeled sample, without training a deep model:

   * a *linear probe* (multinomial logistic regression, :mod:`engine.analyses.probe`) on the embeddings,
     cross-validated with stratified K folds (default 5, seeded), so each sample is predicted by a probe that never
     saw it;
   * a *kNN vote* on the project's shared kNN graph: the similarity-weighted label distribution of a sample's
     labeled neighbours (self excluded, unlabeled neighbours ignored) smoothed towards the class frequencies with
     ``knn_prior`` pseudo-neighbours;
   * combined as ``probe_weight * probe + (1 - probe_weight) * knn``.  The default weight is a measured choice:
     ``bench/label_issues.py`` reports probe-only, kNN-only and combined side by side.

   User-supplied predictions (the ``predictions`` table, ``curate import-predictions``) take precedence: rows that
   have them use them as they are; the others are estimated as above.

2. **Confident learning** (cleanlab) on top of those probabilities: :func:`cleanlab.filter.find_label_issues`
   flags the issues (``filter_by="prune_by_noise_rate"`` by default), :func:`cleanlab.rank.get_label_quality_scores`
   gives each sample a label quality in [0, 1] (lower = more likely wrong; ``method`` = ``"self_confidence"`` or
   ``"normalized_margin"``), and :func:`cleanlab.count.estimate_joint` estimates the joint distribution of given
   vs true labels, from which come the per-class noise rates and the most confused class pairs.  The suggested
   label is the argmax of the out-of-sample probabilities and its confidence the probability there.

Cleaning rounds and the flag count
----------------------------------
* The probe sees the whitened principal components (``probe_dims``, strongly regularised ``C``): as accurate as the
  full vectors and much faster.
* ``rounds=2``: the second estimate trains the probe without, and ignores the votes of, the samples the first one
  flagged.
* ``flag_count="calibrated"``: the number flagged is ``calibrated_noise_rate(...) x n`` instead of confident
  learning's own count, which counts the encoder's confusions as label noise.

Why each default is what it is, with the measurements behind it (``bench/label_issues.py --sweep`` on planted
noise, ``bench/real_data.py`` on CIFAR-10N human noise): docs/analyses.md, "Label issues".  Numbers live there and
in ``bench/results/``, not here, so that they are rerun rather than left to go stale.

Small classes
-------------
* Classes with at least 2 labeled samples go through the probe and confident learning, however small: the stratified
  split puts members of a class in different folds, so each held-out member still has a class-mate in training.
  Classes with fewer than ``n_folds`` samples are reported in the summary (``small_classes``) because their
  estimates are noisier.
* A class with a single labeled sample cannot be confirmed by anything out-of-sample (no other example of it
  exists), and one sample cannot set confident learning's per-class threshold.  Such *singleton* samples are scored
  with the kNN vote alone (or imported predictions), left out of confident learning (their class column too), and
  flagged when the vote clearly favours one other class (its probability >= ``singleton_flag_confidence``, default
  0.5: most of the similarity-weighted neighbours agree on it) — the typical typo-class case ("dgo" among "dog").
  They are listed in the summary (``unverifiable_classes``).

Unlabeled samples (label NULL) are not scored; samples with a live ``relabel`` decision are scored with their new
label (``Catalog.current_labels`` applies decisions).

The registered analysis, in memory and out of core
--------------------------------------------------
The analysis is registered as ``label_issues`` (:data:`ANALYSIS`, options :class:`LabelIssuesConfig`) and
:func:`compute` is its one entry for both sizes; :func:`run` is the thin wrapper that returns the run summary.  It
reads the graph through ``inputs.graph(k)`` and the vectors through ``inputs.embeddings``
(:class:`curate.engine.inputs.Inputs` decides the size).  Out of core the cross-validated probe and imported
predictions are left out (the probe needs every vector in memory): the kNN-vote probabilities are computed block by
block over the memory-mapped graph and streamed twice through cleanlab's batched ``LabelInspector``
(:func:`label_issues_out_of_core`); the summary says ``"probabilities": "knn vote (out of core)"`` and the runner
lists the left-out parts (``left_out``).  Both paths build their summary with :func:`summarize` and write the same
``label_issues`` table.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import pandas as pd

from curate.engine.analyses.probe import PROBE_BACKENDS, cross_val_predict_proba
from curate.engine.analyses.registry import Config, Result, register
from curate.engine.analyses.registry import run as registry_run
from curate.engine.catalog import Catalog, CurateError
from curate.engine.shards import write_parquet_parts

DEFAULT_N_FOLDS = 5
DEFAULT_K = 10
DEFAULT_PROBE_WEIGHT = 0.7  # measured: docs/analyses.md, bench/real_data.py
DEFAULT_KNN_PRIOR = 1.0  # pseudo-neighbours of smoothing towards the class frequencies
DEFAULT_KNN_TEMPERATURE: float | None = None
DEFAULT_SINGLETON_FLAG_CONFIDENCE = 0.5
DEFAULT_LABEL_C = 0.003  # probe C on whitened principal components, measured on CIFAR-10N (bench/real_data.py)
DEFAULT_PROBE_DIMS = 256
DEFAULT_ROUNDS = 2
DEFAULT_ANCHOR_FRACTION = 0.1
RESOLUTION_RATIO = 4.0  # confident-learning / anchor noise estimates above this ratio: the encoder's confusions dominate
FLAG_COUNTS = ("calibrated", "confident_learning")
RANK_METHODS = ("self_confidence", "normalized_margin", "confidence_weighted_entropy")
FILTER_METHODS = ("prune_by_noise_rate", "prune_by_class", "both", "confident_learning", "predicted_neq_given",
                  "low_normalized_margin", "low_self_confidence")


@dataclass
class LabelIssuesResult:
    """Per-sample label-issue scores (arrays aligned with the input rows) plus dataset-level estimates.

    Attributes
    ----------
    is_labeled : bool array
        Rows that had a label and were scored; all other per-sample fields are empty for unlabeled rows
        (``label_quality`` NaN, ``is_issue`` False, ``suggested_label`` None, ``rank`` 0).
    given_label : object array
        The label that was checked.
    label_quality : float array in [0, 1]
        cleanlab label quality score; LOWER = more likely a wrong label.
    is_issue : bool array
        Flagged by confident learning (or, for singleton classes, by the neighbour vote).
    suggested_label : object array
        Argmax of the out-of-sample probabilities.
    suggested_confidence : float array
        The out-of-sample probability of ``suggested_label``.
    rank : int array
        1 = most likely issue (ascending ``label_quality``), over labeled rows; 0 for unlabeled rows.
    prob_source : object array
        Where each row's probabilities came from: ``"imported"``, ``"probe+knn"``, ``"probe"``, ``"knn"``.
    pred_probs : float32 array (n, len(class_names))
        The out-of-sample probabilities (zeros for unlabeled rows).
    class_names : list
        Columns of ``pred_probs``.
    joint : float array (len(joint_classes), len(joint_classes))
        Estimated joint distribution P(given label, true label) over the classes that went through confident
        learning (rows: given, columns: true); sums to 1.
    joint_classes : list
        Row/column names of ``joint``.
    noise_rates : dict
        Per class: estimated fraction of samples given that label whose true label is another class.
    small_classes : dict
        Classes with fewer than ``n_folds`` labeled samples -> their count.
    unverifiable_classes : list
        Classes with exactly one labeled sample (scored by the neighbour vote only, see module docstring).
    details : dict
        How the probabilities were made (sources, probe backend, weights, out-of-sample accuracies, timings).
    """

    is_labeled: np.ndarray
    given_label: np.ndarray
    label_quality: np.ndarray
    is_issue: np.ndarray
    suggested_label: np.ndarray
    suggested_confidence: np.ndarray
    rank: np.ndarray
    prob_source: np.ndarray
    pred_probs: np.ndarray
    class_names: list
    joint: np.ndarray
    joint_classes: list
    noise_rates: dict
    small_classes: dict
    unverifiable_classes: list
    details: dict = field(default_factory=dict)

    @property
    def n_issues(self) -> int:
        return int(self.is_issue.sum())

    @property
    def estimated_noise_rate(self) -> float:
        """Estimated fraction of labeled samples whose given label is wrong: the calibrated estimate
        (:func:`calibrated_noise_rate`) when it was made, else 1 - trace of the confident-learning joint."""
        if "noise_rate_calibrated" in self.details:
            return float(self.details["noise_rate_calibrated"])
        return float(1.0 - np.trace(self.joint)) if self.joint.size else 0.0

    def top_confused_pairs(self, top: int = 10) -> list[dict]:
        """The largest off-diagonal entries of the joint: (given, true) pairs confused most often."""
        return confused_pairs(self.joint, self.joint_classes, int(self.is_labeled.sum()), top)

    def summary(self, top_pairs: int = 10) -> dict:
        """The dataset-level findings as a JSON-able record (see :func:`summarize`)."""
        return summarize(n_labeled=int(self.is_labeled.sum()), n_issues=self.n_issues,
                         noise_rate=self.estimated_noise_rate, noise_rates=self.noise_rates, joint=self.joint,
                         joint_classes=self.joint_classes, small_classes=self.small_classes,
                         unverifiable_classes=self.unverifiable_classes, n_classes=len(self.class_names),
                         details=self.details, top_pairs=top_pairs)

    def to_frame(self, sample_ids: np.ndarray) -> pd.DataFrame:
        """Rows of the ``label_issues`` table (labeled rows only), ordered by rank."""
        m = self.is_labeled
        df = pd.DataFrame({
            "sample_id": np.asarray(sample_ids, dtype=np.int64)[m],
            "given_label": [_str_or_none(v) for v in self.given_label[m]],
            "suggested_label": [_str_or_none(v) for v in self.suggested_label[m]],
            "suggested_confidence": self.suggested_confidence[m].astype(float),
            "label_quality": self.label_quality[m].astype(float),
            "is_issue": self.is_issue[m].astype(bool),
            "rank": self.rank[m].astype(np.int32),
        })
        return df.sort_values("rank", kind="stable").reset_index(drop=True)


def summarize(*, n_labeled: int, n_issues: int, noise_rate: float, noise_rates: dict, joint: np.ndarray,
              joint_classes: Sequence[Any], small_classes: dict, unverifiable_classes: Sequence[Any], n_classes: int,
              details: dict, top_pairs: int = 10) -> dict:
    """The one summary of a label-issue estimate, in memory (:meth:`LabelIssuesResult.summary`) and out of core.

    Parameters
    ----------
    n_labeled, n_issues : labeled samples checked, samples flagged.
    noise_rate : estimated fraction of wrong given labels.
    noise_rates : per given class, the estimated fraction of its samples whose true class is another one.
    joint, joint_classes : the estimated joint ``p(given, true)`` and its row/column names.
    small_classes : class -> labeled count of the classes reported as small; ``unverifiable_classes`` the
        single-sample ones.
    n_classes : classes in the probabilities.
    details : how the probabilities were made (copied in; ``timings`` goes last).
    top_pairs : how many confused pairs to list.
    """
    return {
        "n_labeled": int(n_labeled),
        "n_issues": int(n_issues),
        "issue_fraction": n_issues / n_labeled if n_labeled else 0.0,
        "estimated_noise_rate": float(noise_rate),
        "noise_rate_per_class": {str(k): float(v) for k, v in noise_rates.items()},
        "top_confused_pairs": confused_pairs(joint, joint_classes, int(n_labeled), top_pairs),
        "joint": joint_summary(joint, joint_classes),
        "small_classes": {str(k): int(v) for k, v in small_classes.items()},
        "unverifiable_classes": [str(c) for c in unverifiable_classes],
        "n_classes": int(n_classes),
        **{k: v for k, v in details.items() if k != "timings"},
        "timings": details.get("timings", {}),
    }


def confused_pairs(joint: np.ndarray, classes: Sequence[Any], n_labeled: int, top: int = 10) -> list[dict]:
    """The ``top`` largest off-diagonal entries of an estimated joint ``p(given, true)`` as summary records."""
    if not joint.size:
        return []
    J = np.array(joint, dtype=np.float64)
    np.fill_diagonal(J, 0.0)
    flat = np.argsort(-J, axis=None, kind="stable")[:top]
    row_sums = np.asarray(joint).sum(axis=1)
    out = []
    for f in flat:
        i, j = np.unravel_index(f, J.shape)
        if J[i, j] <= 0:
            break
        out.append({
            "given": _py(classes[i]), "true": _py(classes[j]),
            "joint": float(J[i, j]), "estimated_count": int(round(J[i, j] * n_labeled)),
            "rate_within_given": float(J[i, j] / row_sums[i]) if row_sums[i] > 0 else 0.0,
        })
    return out


MAX_JOINT_CLASSES = 100  # classes of the joint kept in the run summary (100 x 100 floats ~ 100 kB of JSON)


def joint_summary(joint: np.ndarray, classes: Sequence[Any], max_classes: int = MAX_JOINT_CLASSES) -> dict:
    """The estimated joint ``p(given, true)`` as a small JSON record for the run summary (report, UI heatmap).

    Above ``max_classes`` classes only the ``max_classes`` with the most off-diagonal mass (given or true) are kept,
    in their original order; ``n_classes`` says how many there were.  Entries are rounded to 6 decimals.

    >>> joint_summary(np.array([[0.5, 0.1], [0.0, 0.4]]), ["a", "b"])
    {'classes': ['a', 'b'], 'matrix': [[0.5, 0.1], [0.0, 0.4]], 'n_classes': 2}
    """
    J = np.asarray(joint, dtype=np.float64)
    names = [_py(c) for c in classes]
    keep = np.arange(len(names))
    if len(names) > max_classes:
        off = J.copy()
        np.fill_diagonal(off, 0.0)
        mass = off.sum(axis=0) + off.sum(axis=1)
        keep = np.sort(np.argsort(-mass, kind="stable")[:max_classes])
    return {"classes": [str(names[i]) for i in keep],
            "matrix": np.round(J[np.ix_(keep, keep)], 6).tolist() if J.size else [],
            "n_classes": len(names)}


def calibrated_joint(confident_joint: np.ndarray, label_counts: np.ndarray) -> np.ndarray:
    """cleanlab's calibration: each given-class row rescaled to that class's count, then normalised to sum 1."""
    cj = np.asarray(confident_joint, dtype=np.float64)
    counts = np.asarray(label_counts, dtype=np.float64)
    tot = cj.sum(axis=1)
    cal = np.where(tot[:, None] > 0, cj / np.maximum(tot, 1.0)[:, None] * counts[:, None], np.diag(counts))
    return cal / max(cal.sum(), 1.0)


def _py(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


def _str_or_none(v: Any) -> str | None:
    return None if v is None else str(_py(v))


# ---------------------------------------------------------------------------------------------- kNN vote
def knn_vote_proba(indices: np.ndarray, similarities: np.ndarray, label_codes: np.ndarray, n_classes: int,
                   rows: np.ndarray | None = None, prior: np.ndarray | None = None,
                   prior_strength: float = DEFAULT_KNN_PRIOR,
                   temperature: float | None = DEFAULT_KNN_TEMPERATURE) -> np.ndarray:
    """Class probabilities from the labels of each row's neighbours in a kNN graph.

    ``p(c | i) = (sum_j w_ij [y_j = c] + prior_strength * prior_c) / (sum_j w_ij + prior_strength)`` over the
    neighbours ``j`` of ``i`` that are labeled, with ``w_ij = max(cosine similarity, 0)`` by default.

    Parameters
    ----------
    indices, similarities : np.ndarray, shape (n, k)
        The kNN graph (row positions, -1 = padding; cosine similarities).  A row listed as its own neighbour is
        ignored, so the vote is out-of-sample even for a graph built with self-matches.
    label_codes : np.ndarray of int, shape (n,)
        Class index of every graph row, -1 for unlabeled rows (their votes are ignored).
    n_classes : int
    rows : np.ndarray of int, optional
        Rows to score (default: all).
    prior : np.ndarray, shape (n_classes,), optional
        Smoothing distribution (default: class frequencies of the labeled rows).
    prior_strength : float
        Weight of the prior, in units of one fully similar neighbour (0 = no smoothing).
    temperature : float, optional
        None: ``w_ij = max(cos, 0)``; T > 0: ``w_ij = exp((cos - 1) / T)`` (sharper, favours the closest).

    Returns
    -------
    np.ndarray, shape (len(rows), n_classes), float32; rows sum to 1.
    """
    indices = np.asarray(indices)
    similarities = np.asarray(similarities, dtype=np.float32)
    label_codes = np.asarray(label_codes, dtype=np.int64)
    rows = np.arange(len(indices)) if rows is None else np.asarray(rows, dtype=np.int64)
    if prior is None:
        counts = np.bincount(label_codes[label_codes >= 0], minlength=n_classes).astype(np.float64)
        prior = counts / counts.sum() if counts.sum() else np.full(n_classes, 1.0 / n_classes)
    idx = indices[rows]
    valid = (idx >= 0) & (idx != rows[:, None])
    nb = np.where(valid, label_codes[np.where(valid, idx, 0)], -1)
    use = nb >= 0
    sims = similarities[rows]
    if temperature:
        w = np.exp((np.minimum(sims, 1.0) - 1.0) / temperature) * use  # 1 for an identical neighbour
    else:
        w = np.clip(sims, 0.0, None) * use
    out = np.zeros((len(rows), n_classes), dtype=np.float32)
    r = np.broadcast_to(np.arange(len(rows))[:, None], nb.shape)
    np.add.at(out, (r[use], nb[use]), w[use])
    total = w.sum(axis=1, keepdims=True, dtype=np.float64) + prior_strength
    out += (prior_strength * np.asarray(prior, dtype=np.float64)).astype(np.float32)[None, :]
    zero = total[:, 0] <= 0  # no labeled neighbour and no prior: uniform
    total[zero] = 1.0
    out /= total.astype(np.float32)
    if zero.any():
        out[zero] = 1.0 / n_classes
    return out


# ---------------------------------------------------------------------------------------------- noise rate
def anchor_noise_rate(probs: np.ndarray, labels: np.ndarray, fraction: float = DEFAULT_ANCHOR_FRACTION) -> float:
    """Share of given labels that disagree with the most confident out-of-sample predictions.

    For every class ``c``, the ``fraction`` of samples predicted as ``c`` with the highest ``p(c)`` are the class's
    *anchors* (samples the encoder is surest about); the estimate is the class-size-weighted share of anchors whose
    given label is not ``c``, plus half a pseudo-disagreement over all anchors (so a handful of anchors never reads
    as exactly clean).  Anchors are rarely the encoder's mistakes, so, unlike confident learning, this
    estimate does not count the encoder's own confusions as label noise; it sees only easy images, so it
    underestimates noise that concentrates on hard images (as human mistakes do).

    >>> P = np.array([[0.9, 0.1], [0.8, 0.2], [0.2, 0.8], [0.1, 0.9]])
    >>> anchor_noise_rate(P, np.array([0, 1, 1, 1]), fraction=1.0)
    0.25
    """
    probs = np.asarray(probs)
    labels = np.asarray(labels, dtype=np.int64)
    pred = probs.argmax(axis=1)
    rates, weights = [], []
    n_anchors = 0
    for c in range(probs.shape[1]):
        members = np.flatnonzero(pred == c)
        if not len(members):
            continue
        top = members[np.argsort(-probs[members, c], kind="stable")[: max(1, int(round(fraction * len(members))))]]
        rates.append(float(np.mean(labels[top] != c)))
        n_anchors += len(top)
        weights.append(max(int(np.sum(labels == c)), 1))
    return float(np.average(rates, weights=weights)) + 0.5 / n_anchors if rates else 0.0


def calibrated_noise_rate(rate_confident_learning: float, rate_anchor: float,
                          resolution_ratio: float = RESOLUTION_RATIO) -> tuple[float, bool]:
    """One noise-rate estimate from the confident-learning one (too high: it counts the encoder's confusions as
    noise) and the anchor one (too low: it sees only easy images).

    A weighted geometric mean whose weight on the anchor rate grows with their ratio: when the two agree, the
    encoder confuses little and confident learning is trusted; when confident learning reaches ``resolution_ratio``
    times the anchor rate, the anchor rate alone is used.  Beyond that most disagreements are the encoder's own
    confusions (a clean set seen through a weaker encoder): the estimate shrinks below the anchor rate
    (``anchor x ratio_limit / ratio``) and the second value says so.  Never above the confident-learning rate.
    Measured on CIFAR-10N with two encoders (``bench/real_data.py``: clean labels, 17 % and 40 % human noise).

    Returns
    -------
    (rate, resolution_limited)

    >>> calibrated_noise_rate(0.25, 0.25)
    (0.25, False)
    >>> round(calibrated_noise_rate(0.25, 0.125)[0], 4)
    0.1984
    >>> calibrated_noise_rate(0.12, 0.01)
    (0.0033333333333333335, True)
    >>> calibrated_noise_rate(0.004, 0.05)
    (0.004, False)
    """
    cl, an = float(max(rate_confident_learning, 0.0)), float(max(rate_anchor, 0.0))
    if an <= 0.0 or cl <= 0.0:
        return min(cl, an), cl > 0.0
    ratio = cl / an
    if ratio <= 1.0:  # the anchors were too few to say more than confident learning
        return cl, False
    if ratio <= resolution_ratio:
        w = (ratio - 1.0) / (resolution_ratio - 1.0)
        return float(np.exp((1.0 - w) * np.log(cl) + w * np.log(an))), False
    return float(an * resolution_ratio / ratio), True


def flag_lowest(quality: np.ndarray, candidates: np.ndarray, count: int) -> np.ndarray:
    """Boolean flags for the ``count`` lowest-``quality`` rows among ``candidates`` (ties: row order)."""
    flags = np.zeros(len(quality), dtype=bool)
    rows = np.flatnonzero(candidates)
    if count > 0 and len(rows):
        flags[rows[np.lexsort((rows, np.asarray(quality)[rows]))[:count]]] = True
    return flags


# ---------------------------------------------------------------------------------------------- estimate
def reduce_for_probe(embeddings: np.ndarray, dims: int | None, seed: int = 0) -> np.ndarray:
    """The probe's features: PCA to ``dims`` components when the vectors are wider (and there are enough rows)."""
    X = np.asarray(embeddings, dtype=np.float32)
    if not dims or X.shape[1] <= dims or len(X) <= 2 * dims:
        return X
    from sklearn.decomposition import PCA

    return PCA(n_components=int(dims), random_state=seed, svd_solver="randomized").fit_transform(X).astype(np.float32)


def _estimate_round(probe_X, gi, gs, codes, K, todo, probe_rows, is_singleton_row, suspects, probe_ok, use_knn, *,
                    probe_weight, knn_prior, knn_temperature, n_folds, C, backend, device, seed, progress, timings,
                    details):
    """One round of out-of-sample probabilities: cross-validated probe + kNN vote, ``suspects`` left out of the
    probe's training folds and of the votes (they are still scored)."""
    from curate.engine.progress import step as progress_step

    n = len(codes)
    p_probe = p_knn = None
    if probe_ok:
        t = time.perf_counter()
        single_rows = np.flatnonzero(is_singleton_row)
        cv, extra, info = cross_val_predict_proba(
            probe_X[probe_rows], codes[probe_rows], n_classes=K, n_folds=n_folds, seed=seed,
            extra_X=probe_X[single_rows] if len(single_rows) else None, C=C, backend=backend, device=device,
            progress=progress, train_mask=~suspects[probe_rows] if suspects.any() else None)
        p_probe = np.zeros((n, K), dtype=np.float32)
        p_probe[probe_rows] = cv
        if len(single_rows):
            p_probe[single_rows] = extra
        details["probe"] = {"C": C, "dims": int(probe_X.shape[1]), **info}
        timings["probe"] = round(timings.get("probe", 0.0) + time.perf_counter() - t, 3)
    if use_knn:
        t = time.perf_counter()
        rows = np.flatnonzero(todo)
        voters = np.where(suspects, -1, codes)
        # votes at several neighbourhood sizes, averaged (SimiFeat-style): no single k suits every class density
        ks = sorted({max(1, gi.shape[1] // 2), gi.shape[1]})
        p_knn = np.zeros((n, K), dtype=np.float32)
        with progress_step(progress, "kNN vote"):
            for kk in ks:
                p_knn[rows] += knn_vote_proba(gi[:, :kk], gs[:, :kk], voters, K, rows=rows, prior_strength=knn_prior,
                                              temperature=knn_temperature) / len(ks)
        details["knn"] = {"k": [int(v) for v in ks], "prior_strength": knn_prior, "temperature": knn_temperature}
        timings["knn"] = round(timings.get("knn", 0.0) + time.perf_counter() - t, 3)
    if p_probe is not None and p_knn is not None:
        w = probe_weight
        est = p_probe * w  # n x K: combined without extra full-size temporaries
        est += (1.0 - w) * p_knn
        src = np.full(n, "probe+knn" if w < 1 else "probe", dtype=object)
        # singletons: the probe never saw their class, so their own column would only be diluted; vote only
        est[is_singleton_row] = p_knn[is_singleton_row]
        src[is_singleton_row] = "knn"
    elif p_probe is not None:
        est, src = p_probe, np.full(n, "probe", dtype=object)
    else:
        est, src = p_knn, np.full(n, "knn", dtype=object)
    return est, src, p_probe, p_knn


def _round_suspects(est, codes, probe_rows, singleton_cls, K, filter_by) -> np.ndarray:
    """Rows confident learning flags on one round's probabilities (non-singleton classes only)."""
    from cleanlab.filter import find_label_issues as cl_find_label_issues

    suspects = np.zeros(len(codes), dtype=bool)
    cols = np.setdiff1d(np.arange(K), singleton_cls)
    remap = np.full(K, -1, dtype=np.int64)
    remap[cols] = np.arange(len(cols))
    y = remap[codes[probe_rows]]
    if len(np.unique(y)) < 2:
        return suspects
    P = np.clip(est[np.ix_(probe_rows, cols)].astype(np.float64), 1e-12, None)
    P /= P.sum(axis=1, keepdims=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        suspects[probe_rows] = cl_find_label_issues(y, P, filter_by=filter_by, n_jobs=1)
    return suspects


# ---------------------------------------------------------------------------------------------- main entry
def _check_options(*, method: str, filter_by: str, probe_weight: float, n_folds: int, flag_count: str,
                   anchor_fraction: float) -> None:
    """The option checks shared by :func:`find_label_issues` and :class:`LabelIssuesConfig` (one line each)."""
    if method not in RANK_METHODS:
        raise CurateError(f"unknown method {method!r} (the label quality score); use one of {', '.join(RANK_METHODS)}")
    if filter_by not in FILTER_METHODS:
        raise CurateError(f"unknown filter_by {filter_by!r}; use one of {', '.join(FILTER_METHODS)}")
    if not 0.0 <= probe_weight <= 1.0:
        raise CurateError(f"probe_weight must be in [0, 1], got {probe_weight}")
    if n_folds < 2:
        raise CurateError(f"n_folds must be >= 2, got {n_folds}")
    if flag_count not in FLAG_COUNTS:
        raise CurateError(f"unknown flag_count {flag_count!r}; use one of {', '.join(FLAG_COUNTS)}")
    if not 0.0 < anchor_fraction <= 1.0:
        raise CurateError(f"anchor_fraction must be in (0, 1], got {anchor_fraction}")


def _labeled_mask(labels: np.ndarray) -> np.ndarray:
    return ~pd.isna(pd.Series(labels, dtype=object)).to_numpy() & np.array(
        [not (isinstance(v, str) and v.strip() == "") for v in labels], dtype=bool)


@dataclass
class _Classes:
    """The given labels encoded once (step 1 of :func:`find_label_issues`).

    ``label_classes`` are the sorted distinct given labels; ``class_names`` add, after them, the classes only
    imported predictions know (the probability columns).  ``codes`` index ``class_names`` (-1 = unlabeled),
    ``counts`` are the labeled samples per column.  Singleton classes (one labeled sample) are scored by the kNN
    vote alone and kept out of confident learning.
    """

    labels: np.ndarray
    labeled: np.ndarray
    label_classes: np.ndarray
    class_names: list
    codes: np.ndarray
    counts: np.ndarray
    small_classes: dict
    singleton_cls: np.ndarray
    is_singleton_row: np.ndarray

    @property
    def n_classes(self) -> int:
        return len(self.class_names)


def _prepare_labels(labels: np.ndarray, pred_class_names: Sequence | None, n_folds: int) -> _Classes:
    """Labeled rows, class columns and codes, small and singleton classes."""
    n = len(labels)
    labeled = _labeled_mask(labels)
    if not labeled.any():
        raise CurateError("no labeled samples to check; ingest labels (ImageFolder or a manifest with a label column)")
    label_classes, codes_l = np.unique(labels[labeled], return_inverse=True)
    class_names = list(label_classes)
    if pred_class_names is not None:
        extra = [c for c in pred_class_names if c not in set(class_names)]
        class_names = class_names + sorted(extra, key=str)
    codes = np.full(n, -1, dtype=np.int64)
    codes[labeled] = codes_l
    counts = np.bincount(codes[labeled], minlength=len(class_names))
    small_classes = {_py(class_names[c]): int(counts[c]) for c in range(len(label_classes)) if counts[c] < n_folds}
    singleton_cls = np.flatnonzero((counts == 1)[: len(label_classes)])
    return _Classes(labels=labels, labeled=labeled, label_classes=label_classes, class_names=class_names,
                    codes=codes, counts=counts, small_classes=small_classes, singleton_cls=singleton_cls,
                    is_singleton_row=labeled & np.isin(codes, singleton_cls))


def _imported_probabilities(cls: _Classes, pred_probs: np.ndarray | None, pred_class_names: Sequence | None
                            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(probs, source, has_import)``: the imported predictions of the labeled rows that have a complete one,
    normalised into the class columns; the other rows are zeros (source None) until estimated."""
    n, K = len(cls.codes), cls.n_classes
    probs = np.zeros((n, K), dtype=np.float32)
    source = np.array([None] * n, dtype=object)
    has_import = np.zeros(n, dtype=bool)
    if pred_probs is None:
        return probs, source, has_import
    col_of = {c: i for i, c in enumerate(cls.class_names)}
    pp = np.asarray(pred_probs, dtype=np.float64)
    names = list(pred_class_names) if pred_class_names is not None else list(cls.label_classes)
    if pp.shape != (n, len(names)):
        raise CurateError(f"pred_probs must have shape ({n}, {len(names)}) (rows x classes), got {pp.shape}")
    has_import = cls.labeled & np.isfinite(pp).all(axis=1)
    cols = [col_of[c] for c in names]
    imported = np.clip(pp[has_import], 0.0, None)
    sums = imported.sum(axis=1, keepdims=True)
    if (sums <= 0).any():
        raise CurateError("imported predictions contain a row of zeros; every row needs positive probabilities")
    probs[np.ix_(np.flatnonzero(has_import), cols)] = (imported / sums).astype(np.float32)
    source[has_import] = "imported"
    return probs, source, has_import


def _estimate_probabilities(embeddings: np.ndarray | None, knn_graph: Any, cls: _Classes, todo: np.ndarray, *,
                            k: int, probe_dims: int | None, rounds: int, filter_by: str, probe_weight: float,
                            knn_prior: float, knn_temperature: float | None, n_folds: int, C: float, backend: str,
                            device: str, seed: int, progress: Any, timings: dict, details: dict
                            ) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-sample ``(probabilities, source)`` for every row (used for the ``todo`` rows): ``rounds`` estimation
    rounds (:func:`_estimate_round`), each after the first without the previous round's suspects."""
    n, K = len(cls.codes), cls.n_classes
    if embeddings is None:
        raise CurateError(f"{int(todo.sum())} labeled samples have no imported prediction and no embedding; "
                          "run `curate embed` first")
    codes, is_singleton_row = cls.codes, cls.is_singleton_row
    probe_rows = np.flatnonzero(cls.labeled & ~is_singleton_row)  # train/evaluate on every non-singleton class
    probe_ok = probe_weight > 0 and len(np.unique(codes[probe_rows])) >= 2
    # singleton rows always need the vote: the probe cannot know their class
    use_knn = probe_weight < 1 or not probe_ok or bool(is_singleton_row[todo].any())
    probe_X = reduce_for_probe(embeddings, probe_dims, seed) if probe_ok else None
    gi = gs = None
    if use_knn:
        graph = knn_graph
        if graph is None:
            from curate.indexes.knn import knn_graph as build_knn_graph

            graph = build_knn_graph(embeddings, k=k)
        gi, gs = np.asarray(graph.indices), np.asarray(graph.similarities)
        if len(gi) != n:
            raise CurateError(f"the kNN graph has {len(gi)} rows but there are {n} samples; rebuild the graph")
    suspects = np.zeros(n, dtype=bool)
    for rnd in range(max(1, rounds)):
        est, src, p_probe, p_knn = _estimate_round(
            probe_X, gi, gs, codes, K, todo, probe_rows, is_singleton_row, suspects, probe_ok, use_knn,
            probe_weight=probe_weight, knn_prior=knn_prior, knn_temperature=knn_temperature, n_folds=n_folds,
            C=C, backend=backend, device=device, seed=seed, progress=progress, timings=timings, details=details)
        if rnd + 1 < max(1, rounds):
            # the next round refits the probe and recounts the votes without this round's suspects, so wrong
            # labels stop pulling the estimate towards themselves (the cleaning step of CleanLearning / co-teaching)
            suspects = _round_suspects(est, codes, probe_rows, cls.singleton_cls, K, filter_by)
            details["round_suspects"] = details.get("round_suspects", []) + [int(suspects.sum())]
    details["rounds"] = max(1, rounds)
    details["probe_weight"] = probe_weight if probe_ok else 0.0
    for name, p in (("probe", p_probe), ("knn", p_knn)):
        if p is not None:
            r = np.flatnonzero(todo)
            details[f"{name}_agreement_with_given"] = float(np.mean(p[r].argmax(axis=1) == codes[r]))
    return est, src


@dataclass
class _ConfidentLearning:
    """Confident learning on the non-singleton rows ``rows`` and class columns ``cols`` (step 3)."""

    rows: np.ndarray
    cols: np.ndarray
    y: np.ndarray
    P: np.ndarray
    quality: np.ndarray
    issues: np.ndarray
    joint: np.ndarray


def _confident_learning(probs: np.ndarray, cls: _Classes, method: str, filter_by: str) -> _ConfidentLearning:
    """cleanlab's label quality, issue filter and joint estimate on the rows of non-singleton classes."""
    from cleanlab.count import estimate_joint
    from cleanlab.filter import find_label_issues as cl_find_label_issues
    from cleanlab.rank import get_label_quality_scores

    codes, K = cls.codes, cls.n_classes
    cl_rows = np.flatnonzero(cls.labeled & ~cls.is_singleton_row)
    cl_cols = np.setdiff1d(np.arange(K), cls.singleton_cls)
    if len(np.unique(codes[cl_rows])) < 2:
        n_given = len(cls.label_classes)
        raise CurateError(
            f"label issues need at least 2 classes with >= 2 labeled samples each; found {n_given} "
            f"class(es) with counts {dict(zip(map(str, cls.label_classes), cls.counts[:n_given].tolist()))}")
    remap = np.full(K, -1, dtype=np.int64)
    remap[cl_cols] = np.arange(len(cl_cols))
    y_cl = remap[codes[cl_rows]]
    P_cl = probs[np.ix_(cl_rows, cl_cols)].astype(np.float64)
    P_cl = np.clip(P_cl, 1e-12, None)  # cleanlab rejects exact zeros in some code paths
    P_cl /= P_cl.sum(axis=1, keepdims=True)
    with warnings.catch_warnings():
        # "may not flag all label issues in class X, it has too few examples": reported via small_classes instead
        warnings.filterwarnings("ignore", message=".*too few examples.*")
        warnings.filterwarnings("ignore", category=UserWarning, module="cleanlab")
        quality_cl = get_label_quality_scores(y_cl, P_cl, method=method)
        issues_cl = cl_find_label_issues(y_cl, P_cl, filter_by=filter_by, n_jobs=1)
        joint = estimate_joint(y_cl, P_cl)
    return _ConfidentLearning(cl_rows, cl_cols, y_cl, P_cl, quality_cl, issues_cl, joint)


def _calibrate_noise_rate(cl: _ConfidentLearning, anchor_fraction: float, details: dict) -> tuple[float, bool]:
    """``(calibrated noise rate, resolution limited)`` from the confident-learning joint and the anchors
    (:func:`calibrated_noise_rate`); the three estimates go into ``details``."""
    rate_cl = float(1.0 - np.trace(cl.joint))
    rate_anchor = anchor_noise_rate(cl.P, cl.y, anchor_fraction)
    rate, resolution_limited = calibrated_noise_rate(rate_cl, rate_anchor)
    details["noise_rate_confident_learning"] = rate_cl
    details["noise_rate_anchor"] = rate_anchor
    details["noise_rate_calibrated"] = rate
    details["noise_below_encoder_resolution"] = resolution_limited
    return rate, resolution_limited


def _flag(cls: _Classes, probs: np.ndarray, cl: _ConfidentLearning, rate: float, *, flag_count: str, method: str,
          singleton_flag_confidence: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-row ``(label_quality, is_issue, suggested column, suggested confidence)``: confident learning's scores
    for non-singleton rows (flag count calibrated or cleanlab's own), the neighbour vote for singleton rows."""
    codes = cls.codes
    n = len(codes)
    label_quality = np.full(n, np.nan)
    is_issue = np.zeros(n, dtype=bool)
    sugg_idx = np.full(n, -1, dtype=np.int64)
    sugg_conf = np.full(n, np.nan)
    label_quality[cl.rows] = cl.quality
    sugg_idx[cl.rows] = cl.cols[cl.P.argmax(axis=1)]
    sugg_conf[cl.rows] = cl.P.max(axis=1)
    issues_cl = cl.issues
    if flag_count == "calibrated":
        issues_cl = flag_lowest(cl.quality, cl.P.argmax(axis=1) != cl.y, int(round(rate * len(cl.rows))))
    is_issue[cl.rows] = issues_cl

    single_rows = np.flatnonzero(cls.is_singleton_row)
    if len(single_rows):
        P_s = probs[single_rows].astype(np.float64)
        P_s /= np.clip(P_s.sum(axis=1, keepdims=True), 1e-12, None)
        own = P_s[np.arange(len(single_rows)), codes[single_rows]]
        # quality on cleanlab's scale: self-confidence, or margin own - best other mapped to [0, 1]
        other = P_s.copy()
        other[np.arange(len(single_rows)), codes[single_rows]] = -1.0
        if method == "normalized_margin":
            label_quality[single_rows] = (own - other.max(axis=1) + 1.0) / 2.0
        else:
            label_quality[single_rows] = own
        sugg_idx[single_rows] = P_s.argmax(axis=1)
        sugg_conf[single_rows] = P_s.max(axis=1)
        is_issue[single_rows] = (sugg_idx[single_rows] != codes[single_rows]) & (
            sugg_conf[single_rows] >= singleton_flag_confidence)
    return label_quality, is_issue, sugg_idx, sugg_conf


def _assemble(cls: _Classes, probs: np.ndarray, source: np.ndarray, cl: _ConfidentLearning, flags: tuple, *,
              rate: float, resolution_limited: bool, details: dict, timings: dict, t0: float) -> LabelIssuesResult:
    """Ranks, suggested label names, per-class noise rates, warnings: the :class:`LabelIssuesResult`."""
    label_quality, is_issue, sugg_idx, sugg_conf = flags
    labeled, codes, class_names, joint = cls.labeled, cls.codes, cls.class_names, cl.joint
    n = len(codes)
    rank = np.zeros(n, dtype=np.int64)
    lab_rows = np.flatnonzero(labeled)
    order = lab_rows[np.lexsort((lab_rows, label_quality[lab_rows]))]  # ties: input order
    rank[order] = np.arange(1, len(order) + 1)

    names_arr = np.array(class_names + [None], dtype=object)
    suggested = names_arr[sugg_idx]  # -1 -> None
    joint_classes = [_py(class_names[c]) for c in cl.cols]
    row_sums = joint.sum(axis=1)
    noise_rates = {c: float(1.0 - joint[i, i] / row_sums[i]) if row_sums[i] > 0 else 0.0
                   for i, c in enumerate(joint_classes)}
    timings["total"] = round(time.perf_counter() - t0, 3)
    details["timings"] = timings
    details["prob_sources"] = {str(k): int(v) for k, v in pd.Series(source[labeled]).value_counts().items()}
    details["agreement_with_given"] = float(np.mean(sugg_idx[labeled] == codes[labeled]))
    details["warnings"] = _warnings(details["agreement_with_given"], rate, cls.small_classes,
                                    int(labeled.sum()), resolution_limited, details["noise_rate_confident_learning"],
                                    details["noise_rate_anchor"])
    given = np.array([None] * n, dtype=object)
    given[labeled] = cls.labels[labeled]
    return LabelIssuesResult(
        is_labeled=labeled, given_label=given, label_quality=label_quality, is_issue=is_issue,
        suggested_label=suggested, suggested_confidence=sugg_conf, rank=rank, prob_source=source,
        pred_probs=probs, class_names=[_py(c) for c in class_names], joint=joint, joint_classes=joint_classes,
        noise_rates=noise_rates, small_classes=cls.small_classes,
        unverifiable_classes=[_py(class_names[c]) for c in cls.singleton_cls], details=details,
    )


def find_label_issues(
    embeddings: np.ndarray | None,
    labels: Sequence | np.ndarray,
    knn_graph: Any = None,
    pred_probs: np.ndarray | None = None,
    pred_class_names: Sequence | None = None,
    *,
    n_folds: int = DEFAULT_N_FOLDS,
    method: str = "self_confidence",
    filter_by: str = "prune_by_noise_rate",
    probe_weight: float = DEFAULT_PROBE_WEIGHT,
    knn_prior: float = DEFAULT_KNN_PRIOR,
    knn_temperature: float | None = DEFAULT_KNN_TEMPERATURE,
    k: int = DEFAULT_K,
    C: float = DEFAULT_LABEL_C,
    backend: str = "auto",
    device: str = "auto",
    singleton_flag_confidence: float = DEFAULT_SINGLETON_FLAG_CONFIDENCE,
    probe_dims: int | None = DEFAULT_PROBE_DIMS,
    rounds: int = DEFAULT_ROUNDS,
    flag_count: str = "calibrated",
    anchor_fraction: float = DEFAULT_ANCHOR_FRACTION,
    seed: int = 0,
    progress: Any = None,
) -> LabelIssuesResult:
    """Find samples whose given label is probably wrong (confident learning on out-of-sample probabilities).

    Parameters
    ----------
    embeddings : np.ndarray, shape (n, d), or None
        One row per sample (L2-normalised embeddings).  May be None only when ``pred_probs`` covers every labeled
        row.
    labels : array-like, shape (n,)
        Given labels (str or int); ``None``/NaN/empty string = unlabeled (not scored, their votes ignored).
    knn_graph : object with ``indices`` and ``similarities`` (n, k) arrays, optional
        The shared kNN graph over the same rows (``indexes.knn.KnnGraph``).  Built with
        :func:`indexes.knn.knn_graph` when None (``k`` neighbours).
    pred_probs : np.ndarray, shape (n, len(pred_class_names)), optional
        Out-of-sample probabilities from your own model.  They take precedence over our estimate; rows that are all
        NaN mean "no prediction for this sample" and are estimated.
    pred_class_names : sequence, optional
        Column names of ``pred_probs``; default: the sorted distinct labels.  Classes nobody is labeled as are kept
        as columns (they can be suggested).
    n_folds : int
        Folds of the cross-validated probe (stratified, shuffled with ``seed``).
    method : {"self_confidence", "normalized_margin", "confidence_weighted_entropy"}
        cleanlab label quality score (and ranking).
    filter_by : str
        cleanlab's ``find_label_issues`` rule; ``"prune_by_noise_rate"`` (its default) flags as many samples per
        (given, true) pair as the estimated joint says are wrong, lowest margin first.
    probe_weight : float in [0, 1]
        Weight of the probe in the combined estimate (1 = probe only, 0 = kNN vote only).
    knn_prior : float
        Smoothing of the kNN vote towards class frequencies, in pseudo-neighbours.
    knn_temperature : float, optional
        None (default): neighbour weights are the cosine similarity (clipped at 0).  T > 0: weights
        ``exp((cos - 1) / T)``, which favour the closest neighbours — only worth it for crowded few-shot classes
        (see "Measured defaults" above).
    k : int
        Neighbours for the kNN graph when it has to be built here.
    C, backend, device :
        Linear probe settings (:class:`engine.analyses.probe.LinearProbe`).
    singleton_flag_confidence : float
        A sample of a single-sample class is flagged when its neighbour vote gives another class at least this
        probability.
    probe_dims : int or None
        The probe sees the embeddings reduced by PCA to this many dimensions (whitened by the probe's
        standardisation) when they have more; None = the full vectors.  Faster and, on real photos, as good or
        better (the regularised probe on whitened principal components ignores the noisy tail).
    rounds : int
        1 = one cross-validated estimate.  2 (default) = a second estimate in which the probe trains without,
        and the kNN vote ignores, the samples the first round flagged (see "Cleaning rounds" above).
    flag_count : {"calibrated", "confident_learning"}
        How many samples are flagged.  ``"calibrated"`` (default): the ``round(calibrated noise rate x n)``
        lowest-quality samples whose suggested label differs from the given one (:func:`calibrated_noise_rate`);
        ``"confident_learning"``: cleanlab's ``filter_by`` rule as it is.
    anchor_fraction : float in (0, 1]
        Share of each predicted class's most confident samples used by :func:`anchor_noise_rate`.
    seed : int
        Seeds the fold split and the probe.
    progress : callable, optional
        An :data:`engine.progress.Progress` callback told of each probe fold and of the kNN vote.

    Returns
    -------
    LabelIssuesResult

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> centers = rng.normal(size=(3, 16)) * 4
    >>> y = np.repeat(np.arange(3), 30)
    >>> X = centers[y] + rng.normal(size=(90, 16))
    >>> noisy = y.copy(); noisy[0] = 2
    >>> res = find_label_issues(X / np.linalg.norm(X, axis=1, keepdims=True), noisy)
    >>> bool(res.is_issue[0]), int(res.suggested_label[0])
    (True, 0)
    """
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    labels = np.asarray(labels, dtype=object)
    n = len(labels)
    _check_options(method=method, filter_by=filter_by, probe_weight=probe_weight, n_folds=n_folds,
                   flag_count=flag_count, anchor_fraction=anchor_fraction)
    if embeddings is not None:
        embeddings = np.asarray(embeddings, dtype=np.float32)
        if embeddings.ndim != 2 or len(embeddings) != n:
            raise CurateError(f"embeddings must be (n, d) with n = {n} labels; got shape {embeddings.shape}")

    # 1. labels -> class columns and codes; 2. imported predictions (they take precedence)
    cls = _prepare_labels(labels, pred_class_names, n_folds)
    probs, source, has_import = _imported_probabilities(cls, pred_probs, pred_class_names)
    timings["imported"] = round(time.perf_counter() - t0, 3)

    # 3. our out-of-sample estimate for the rest: probe + kNN vote, in cleaning rounds
    todo = cls.labeled & ~has_import
    details: dict[str, Any] = {"n_folds": n_folds, "method": method, "filter_by": filter_by, "seed": seed,
                               "n_imported": int(has_import.sum()), "n_estimated": int(todo.sum())}
    if todo.any():
        est, src = _estimate_probabilities(
            embeddings, knn_graph, cls, todo, k=k, probe_dims=probe_dims, rounds=rounds, filter_by=filter_by,
            probe_weight=probe_weight, knn_prior=knn_prior, knn_temperature=knn_temperature, n_folds=n_folds, C=C,
            backend=backend, device=device, seed=seed, progress=progress, timings=timings, details=details)
        probs[todo] = est[todo]
        source[todo] = np.asarray(src, dtype=object)[todo]

    # 4. confident learning on non-singleton rows, 5. noise-rate calibration, 6. flags, 7. the result
    t = time.perf_counter()
    cl = _confident_learning(probs, cls, method, filter_by)
    timings["cleanlab"] = round(time.perf_counter() - t, 3)
    rate, resolution_limited = _calibrate_noise_rate(cl, anchor_fraction, details)
    details["flag_count"] = flag_count
    flags = _flag(cls, probs, cl, rate, flag_count=flag_count, method=method,
                  singleton_flag_confidence=singleton_flag_confidence)
    return _assemble(cls, probs, source, cl, flags, rate=rate, resolution_limited=resolution_limited,
                     details=details, timings=timings, t0=t0)


def _warnings(agreement: float, noise_rate: float, small_classes: dict, n_labeled: int,
              resolution_limited: bool = False, rate_cl: float | None = None,
              rate_anchor: float | None = None) -> list[str]:
    """Plain-language cautions for results that should not be taken at face value."""
    out = []
    if resolution_limited:
        out.append(f"the labels look cleaner than this encoder can resolve: its confident predictions disagree with "
                   f"only {rate_anchor:.1%} of the given labels while all its predictions disagree with "
                   f"{rate_cl:.0%}, so most disagreements are the encoder's own confusions; flags are capped at "
                   f"{noise_rate:.1%} of the samples (a stronger encoder, e.g. CLIP, can resolve more)")
    if agreement < 0.5:
        out.append(f"out-of-sample predictions agree with only {agreement:.0%} of the given labels: the embeddings "
                   "may not separate these classes (try another encoder), so many flags can be false alarms")
    elif noise_rate > 0.4:
        out.append(f"estimated label noise is {noise_rate:.0%}: above ~40% confident learning cannot tell the "
                   "true class from the noise reliably; review flags by hand")
    if small_classes and sum(small_classes.values()) > 0.2 * n_labeled:
        out.append(f"{len(small_classes)} classes have fewer samples than folds and hold "
                   f"{sum(small_classes.values())} of {n_labeled} labeled samples: estimates for them are noisy")
    return out


# ---------------------------------------------------------------------------------------------- out of core
@dataclass
class StreamedLabelIssues:
    """Per-sample label-issue results of :func:`label_issues_out_of_core` (row order = the graph's rows).

    Attributes
    ----------
    label_quality : float32 [n]; cleanlab self-confidence, LOWER = more likely a wrong label.
    is_issue : bool [n]; the ``num_issues`` lowest-quality rows (cleanlab's estimate of how many are wrong).
    suggested_label : int64 [n]; argmax of the kNN-vote probabilities.
    suggested_confidence : float32 [n].
    num_issues : cleanlab's estimate of the number of label issues.
    confident_thresholds : float [n_classes] from pass 1.
    confident_joint : int64 [n_classes, n_classes] counts (given, confidently predicted) of pass 2 (cleanlab's
        confident joint: a row counts for the highest-probability class whose probability reaches that class's
        threshold); rows whose probabilities reach no threshold are not counted.

    Unlabeled rows (label -1) have ``label_quality`` NaN, ``is_issue`` False and still get a suggestion.
    """

    label_quality: np.ndarray
    is_issue: np.ndarray
    suggested_label: np.ndarray
    suggested_confidence: np.ndarray
    num_issues: int
    confident_thresholds: np.ndarray
    seconds: dict = field(default_factory=dict)
    confident_joint: np.ndarray | None = None

    def noise_rates(self) -> np.ndarray:
        """Per given class: the fraction of its confidently-counted rows whose confident class is another one."""
        cj = np.asarray(self.confident_joint, dtype=np.float64)
        tot = cj.sum(axis=1)
        return np.where(tot > 0, 1.0 - np.diag(cj) / np.maximum(tot, 1.0), 0.0)

    def ranked_issues(self) -> np.ndarray:
        """Row positions of the flagged rows, most likely wrong first (ties by row)."""
        rows = np.flatnonzero(self.is_issue)
        return rows[np.lexsort((rows, self.label_quality[rows]))]


def _blocks(n: int, block_rows: int) -> Iterator[tuple[int, int]]:
    for s in range(0, n, block_rows):
        yield s, min(n, s + block_rows)


def label_issues_out_of_core(knn_indices: np.ndarray, knn_similarities: np.ndarray, labels: np.ndarray,
                             n_classes: int, *, block_rows: int = 65_536, prior_strength: float = DEFAULT_KNN_PRIOR,
                             out_dir: str | Path | None = None, sample_ids: np.ndarray | None = None
                             ) -> StreamedLabelIssues:
    """Label issues for every row from the (possibly memory-mapped) kNN graph, one block at a time.

    kNN-vote class probabilities per block (:func:`knn_vote_proba` on the shared graph) are streamed twice through
    cleanlab's batched API (:class:`cleanlab.experimental.label_issues_batched.LabelInspector`): pass 1 the
    per-class confident thresholds, pass 2 the label quality scores, the issue count and the confident joint.
    Memory: one block of probabilities plus a few bytes per row.

    Parameters
    ----------
    knn_indices, knn_similarities : [n, k] arrays of the shared kNN graph (row positions, -1 padding).
    labels : int [n] given class codes in ``0..n_classes-1``, -1 for unlabeled rows (they vote for nobody and are
        not scored).
    n_classes : number of classes.
    block_rows : rows per block (memory: ``block_rows x n_classes`` probabilities).
    prior_strength : smoothing of the kNN vote towards the class frequencies (see :func:`knn_vote_proba`).
    out_dir : when given, one Parquet part per block (``sample_id`` from ``sample_ids``, ``label_quality``,
        ``is_issue``, ``suggested_label``, ``suggested_confidence``) is written there
        (:func:`curate.engine.shards.write_parquet_parts`; DuckDB reads them through
        :meth:`~curate.engine.catalog.Catalog.register_parquet_view`).
    sample_ids : int [n], needed with ``out_dir``.

    Returns
    -------
    StreamedLabelIssues
    """
    from cleanlab.experimental.label_issues_batched import LabelInspector

    labels = np.asarray(labels, dtype=np.int64)
    n = len(labels)
    if knn_indices.shape[0] != n:
        raise ValueError(f"kNN graph has {knn_indices.shape[0]} rows but there are {n} labels")
    if n and (labels.min() < -1 or labels.max() >= n_classes):
        raise ValueError(f"labels must be class codes in [0, {n_classes}) or -1; got {labels.min()}..{labels.max()}")
    labeled = labels >= 0
    if not labeled.any():
        raise ValueError("no labeled row: label issues need given labels")
    prior = np.bincount(labels[labeled], minlength=n_classes).astype(np.float64)
    prior /= max(prior.sum(), 1.0)
    inspector = LabelInspector(num_class=n_classes, store_results=True, verbose=False)
    timings = {}

    def probs(s: int, e: int) -> np.ndarray:
        # rows= keeps global row numbers, so a row listed as its own neighbour is still skipped; indexing a
        # memory-mapped graph with them reads only this block
        return knn_vote_proba(knn_indices, knn_similarities, labels, n_classes, rows=np.arange(s, e),
                              prior=prior, prior_strength=prior_strength)

    t = time.perf_counter()
    for s, e in _blocks(n, block_rows):  # pass 1: per-class confident thresholds
        m = labeled[s:e]
        if not m.any():
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            inspector.update_confident_thresholds(labels[s:e][m], probs(s, e)[m])
    timings["pass1"] = round(time.perf_counter() - t, 3)
    t = time.perf_counter()
    quality = np.full(n, np.nan, np.float32)
    suggested = np.empty(n, np.int64)
    confidence = np.empty(n, np.float32)
    thresholds = np.asarray(inspector.get_confident_thresholds(silent=True), dtype=np.float64)
    cj = np.zeros((n_classes, n_classes), np.int64)
    for s, e in _blocks(n, block_rows):  # pass 2: scores, the issue count and the confident joint
        P = probs(s, e)
        m = labeled[s:e]
        if m.any():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                quality[s:e][m] = inspector.score_label_quality(labels[s:e][m], P[m])
            above = np.where(P[m] >= thresholds[None, :] - 1e-6, P[m], -np.inf)
            counted = np.isfinite(above).any(axis=1)
            np.add.at(cj, (labels[s:e][m][counted], above[counted].argmax(axis=1)), 1)
        suggested[s:e] = P.argmax(axis=1)
        confidence[s:e] = P[np.arange(e - s), suggested[s:e]]
    num_issues = int(inspector.get_num_issues(silent=True))
    # the inspector numbers the labeled rows in the order they were streamed
    issue_rows = inspector.get_label_issues() if num_issues else np.empty(0, np.int64)
    is_issue = np.zeros(n, bool)
    is_issue[np.flatnonzero(labeled)[np.asarray(issue_rows, dtype=np.int64)]] = True
    timings["pass2"] = round(time.perf_counter() - t, 3)
    res = StreamedLabelIssues(quality, is_issue, suggested, confidence, num_issues, thresholds, timings, cj)
    if out_dir is not None:
        if sample_ids is None:
            raise ValueError("sample_ids are needed to write Parquet parts")
        write_parquet_parts(out_dir, n, block_rows, lambda s, e: pd.DataFrame({
            "sample_id": np.asarray(sample_ids[s:e], np.int64), "given_label": labels[s:e],
            "label_quality": quality[s:e], "is_issue": is_issue[s:e], "suggested_label": suggested[s:e],
            "suggested_confidence": confidence[s:e]}))
    return res


# ---------------------------------------------------------------------------------------------- the analysis
@dataclass(frozen=True)
class LabelIssuesConfig(Config):
    """Options of the ``label_issues`` analysis; each is the :func:`find_label_issues` argument of that name.

    ``k`` is also the degree of the shared kNN graph read; ``block_rows`` the graph rows per block out of core.
    Out of core only ``k``, ``knn_prior`` and ``block_rows`` apply (the kNN vote is the only estimate there).
    """

    k: int = DEFAULT_K
    n_folds: int = DEFAULT_N_FOLDS
    method: str = "self_confidence"
    filter_by: str = "prune_by_noise_rate"
    probe_weight: float = DEFAULT_PROBE_WEIGHT
    knn_prior: float = DEFAULT_KNN_PRIOR
    knn_temperature: float | None = DEFAULT_KNN_TEMPERATURE
    C: float = DEFAULT_LABEL_C
    backend: str = "auto"
    device: str = "auto"
    singleton_flag_confidence: float = DEFAULT_SINGLETON_FLAG_CONFIDENCE
    probe_dims: int | None = DEFAULT_PROBE_DIMS
    rounds: int = DEFAULT_ROUNDS
    flag_count: str = "calibrated"
    anchor_fraction: float = DEFAULT_ANCHOR_FRACTION
    seed: int = 0
    block_rows: int = 65_536

    def validate(self) -> None:
        _check_options(method=self.method, filter_by=self.filter_by, probe_weight=self.probe_weight,
                       n_folds=self.n_folds, flag_count=self.flag_count, anchor_fraction=self.anchor_fraction)
        if int(self.k) < 1:
            raise CurateError(f"label issues k must be >= 1, got {self.k}; try --k 10")
        if not float(self.C) > 0:
            raise CurateError(f"C (the probe's inverse regularisation) must be > 0, got {self.C}; try 0.003")
        if self.backend not in PROBE_BACKENDS:
            raise CurateError(f"unknown probe backend {self.backend!r}; use one of {', '.join(PROBE_BACKENDS)}")
        if float(self.knn_prior) < 0:
            raise CurateError(f"knn_prior must be >= 0 pseudo-neighbours, got {self.knn_prior}")
        if self.knn_temperature is not None and float(self.knn_temperature) < 0:
            raise CurateError(f"knn_temperature must be None or >= 0, got {self.knn_temperature}")
        if self.probe_dims is not None and int(self.probe_dims) < 0:
            raise CurateError(f"probe_dims must be None or >= 0, got {self.probe_dims}")
        if int(self.rounds) < 0:
            raise CurateError(f"rounds must be a count of estimation rounds (1 = one estimate), got {self.rounds}")
        if int(self.block_rows) < 1:
            raise CurateError(f"block_rows must be >= 1, got {self.block_rows}")

    def estimate_options(self) -> dict[str, Any]:
        """The :func:`find_label_issues` keyword arguments."""
        opts = self.as_dict()
        opts.pop("block_rows")
        return opts


def _imported_predictions(cat: Catalog, sample_ids: np.ndarray) -> tuple[np.ndarray | None, list | None, str | None]:
    """The ``predictions`` table aligned to ``sample_ids``: (probs with NaN rows where absent, class names, source)."""
    df = cat.query_df("SELECT sample_id, probs, class_names, source FROM predictions ORDER BY sample_id")
    if df.empty:
        return None, None, None
    df["key"] = [tuple(cn) for cn in df["class_names"]]
    names = list(dict.fromkeys(c for key in df["key"].unique() for c in key))  # first-seen order
    col = {c: i for i, c in enumerate(names)}
    pos = pd.Series(np.arange(len(sample_ids)), index=np.asarray(sample_ids, dtype=np.int64))
    out = np.full((len(sample_ids), len(names)), np.nan, dtype=np.float64)
    for key, group in df.groupby("key", sort=False):  # usually one group: every row has the same class names
        rows = pos.reindex(group["sample_id"].to_numpy(np.int64)).to_numpy()
        keep = ~pd.isna(rows)
        lengths = group["probs"].map(len).to_numpy()
        if (lengths != len(key)).any():
            bad = int(group["sample_id"].to_numpy()[np.flatnonzero(lengths != len(key))[0]])
            raise CurateError(f"prediction for sample {bad} has a different number of probabilities than class "
                              "names; re-run `curate import-predictions`")
        if not keep.any():
            continue
        P = np.stack([np.asarray(p, dtype=np.float64) for p in group["probs"].to_numpy()[keep]])
        r = rows[keep].astype(np.int64)
        out[r] = 0.0
        out[np.ix_(r, [col[c] for c in key])] = P
    sources = sorted(set(df["source"].astype(str)))
    return out, names, ", ".join(sources)


def _labeled_ids(cat: Catalog) -> tuple[pd.DataFrame, np.ndarray]:
    """The current labels (after live relabel decisions) and the ids of the labeled samples."""
    labels_df = cat.current_labels()
    return labels_df, labels_df.loc[labels_df["label"].notna(), "sample_id"].to_numpy(np.int64)


def _predictions_cover_labels(cat: Catalog, labeled_ids: np.ndarray | None = None) -> bool:
    """Whether imported predictions exist for every labeled sample (then no embedding is needed)."""
    if labeled_ids is None:
        labeled_ids = _labeled_ids(cat)[1]
    pp, _, _ = _imported_predictions(cat, labeled_ids)
    return pp is not None and bool(np.isfinite(pp).all(axis=1).all())


def _run_summary(core: dict, *, encoder: str | None, n_unlabeled: int, n_labeled_not_embedded: int,
                 predictions_source: str | None) -> dict:
    """The run summary of both paths: :func:`summarize`'s record plus what the catalog adds."""
    return {"encoder": encoder, **core, "n_unlabeled": int(n_unlabeled),
            "n_labeled_not_embedded": int(n_labeled_not_embedded), "predictions_source": predictions_source}


def summary_lines(summary: dict, small_below: int) -> list[str]:
    """What ``curate audit labels`` prints: the flag count and noise estimate, the noisiest classes, the most
    confused pairs, the small classes (fewer than ``small_below`` labeled samples) and the warnings."""
    s = summary
    lines = [f"{s['n_issues']} of {s['n_labeled']} labeled samples flagged; estimated label noise "
             f"{s['estimated_noise_rate']:.1%} ({s['encoder'] or 'imported predictions'})"]
    noisiest = sorted(s["noise_rate_per_class"].items(), key=lambda kv: -kv[1])[:5]
    lines.append("noisiest classes: " + ", ".join(f"{c} {r:.1%}" for c, r in noisiest))
    if s["top_confused_pairs"]:
        pairs = [f"{p['given']} -> {p['true']} (~{p['estimated_count']})" for p in s["top_confused_pairs"][:5]]
        lines.append("most confused (given -> true): " + ", ".join(pairs))
    if s["small_classes"]:
        lines.append(f"small classes (< {small_below} samples): "
                     + ", ".join(f"{c} ({n})" for c, n in list(s["small_classes"].items())[:10]))
    lines += [f"warning: {w}" for w in s.get("warnings", [])]
    return lines


def _compute_in_memory(inputs: Any, config: LabelIssuesConfig) -> Result:
    """Probe + kNN vote (or imported predictions) over every vector: :func:`find_label_issues`."""
    cat = inputs.cat
    labels_df, labeled_ids = _labeled_ids(cat)
    if inputs.encoder is None:  # no embeddings: imported predictions for every labeled sample (see _check)
        sample_ids, vectors, graph = labeled_ids, None, None
    else:
        graph = inputs.graph(config.k)
        emb = inputs.embeddings
        sample_ids = inputs.sample_ids()
        _, vectors = emb.sample(len(emb))  # every row, in row order (no copy in memory)
    labels = labels_df.set_index("sample_id")["label"].reindex(sample_ids).to_numpy(dtype=object)
    labels = np.array([None if pd.isna(v) else str(v) for v in labels], dtype=object)
    pred_probs, pred_names, pred_source = _imported_predictions(cat, sample_ids)
    res = find_label_issues(vectors, labels, knn_graph=graph, pred_probs=pred_probs, pred_class_names=pred_names,
                            progress=inputs.progress, **config.estimate_options())
    summary = _run_summary(res.summary(), encoder=inputs.encoder, n_unlabeled=int((~res.is_labeled).sum()),
                           n_labeled_not_embedded=len(np.setdiff1d(labeled_ids, sample_ids)),
                           predictions_source=pred_source)
    return Result(summary, tables={"label_issues": res.to_frame(sample_ids)},
                  lines=summary_lines(summary, config.n_folds), detail=res)


def _compute_out_of_core(inputs: Any, config: LabelIssuesConfig) -> Result:
    """The kNN vote over the memory-mapped graph, streamed through cleanlab (:func:`label_issues_out_of_core`);
    labels are encoded inside DuckDB (:meth:`Catalog.label_codes`), the table is built from categoricals."""
    from curate.engine.progress import step

    cat = inputs.cat
    t0 = time.perf_counter()
    graph = inputs.graph(config.k)
    t_graph = time.perf_counter() - t0
    ids = inputs.sample_ids()
    names, codes = inputs.label_codes()
    if not names:
        raise CurateError(f"no labeled samples among the {len(ids)} embedded ones; import labels first "
                          "(`curate import-labels FILE.csv` or class folders at ingest)")
    with step(inputs.progress, "streamed kNN vote (out of core)"):
        res = label_issues_out_of_core(graph.indices, graph.similarities, codes, len(names),
                                       block_rows=config.block_rows, prior_strength=config.knn_prior)
    lab = np.flatnonzero(codes >= 0)
    order = lab[np.lexsort((lab, res.label_quality[lab]))]  # rank 1 = most likely wrong; ties by row
    df = pd.DataFrame({
        "sample_id": ids[order],
        "given_label": pd.Categorical.from_codes(codes[order], names),
        "suggested_label": pd.Categorical.from_codes(res.suggested_label[order], names),
        "suggested_confidence": res.suggested_confidence[order].astype(np.float64),
        "label_quality": res.label_quality[order].astype(np.float64),
        "is_issue": res.is_issue[order],
        "rank": np.arange(1, len(order) + 1, dtype=np.int32),
    })
    counts = np.bincount(codes[lab], minlength=len(names))
    joint = calibrated_joint(res.confident_joint, counts)
    rates = res.noise_rates()
    n_lab = int(len(lab))
    noise_rate = float(1.0 - np.trace(joint))
    agreement = float(np.mean(res.suggested_label[lab] == codes[lab]))
    small = {names[c]: int(counts[c]) for c in range(len(names)) if counts[c] < 2}
    details = {"probabilities": "knn vote (out of core)",
               "graph": {"method": graph.method, "recall": graph.recall, "cache": graph.cache},
               "agreement_with_given": agreement, "warnings": _warnings(agreement, noise_rate, {}, n_lab),
               "timings": {"graph": round(t_graph, 3), **res.seconds, "total": round(time.perf_counter() - t0, 3)}}
    core = summarize(n_labeled=n_lab, n_issues=int(res.is_issue.sum()), noise_rate=noise_rate,
                     noise_rates={names[c]: float(rates[c]) for c in range(len(names))}, joint=joint,
                     joint_classes=names, small_classes=small,
                     unverifiable_classes=[c for c, v in small.items() if v == 1], n_classes=len(names),
                     details=details)
    not_embedded = cat.scalar(
        "SELECT count(*) FROM current_labels cl WHERE cl.label IS NOT NULL AND cl.sample_id NOT IN "
        "(SELECT e.sample_id FROM embedded e WHERE e.encoder = ?)", [inputs.encoder])
    summary = _run_summary(core, encoder=inputs.encoder, n_unlabeled=len(ids) - n_lab,
                           n_labeled_not_embedded=int(not_embedded), predictions_source=None)
    return Result(summary, tables={"label_issues": df}, lines=summary_lines(summary, 2), detail=res)


def compute(inputs: Any, config: LabelIssuesConfig) -> Result:
    """Score every labeled sample: the registered ``label_issues`` computation, in memory and out of core.

    In memory: :func:`find_label_issues` on the vectors, the shared kNN graph, the current labels (after live
    relabel decisions) and imported predictions (without embeddings, imported predictions that cover every labeled
    sample are used alone).  Out of core (``inputs.out_of_core``): the streamed kNN vote; the cross-validated probe
    and imported predictions are left out.  Both paths write the ``label_issues`` table and a summary built by
    :func:`summarize`.
    """
    if inputs.out_of_core and inputs.encoder is not None:
        return _compute_out_of_core(inputs, config)
    return _compute_in_memory(inputs, config)


def _check(inputs: Any, config: LabelIssuesConfig) -> None:
    """Before a run is recorded: the embeddings exist, or (a project without them) imported predictions cover every
    labeled sample, which are then used alone; else the "run curate embed" error."""
    if inputs.encoder is None and _predictions_cover_labels(inputs.cat):
        return
    inputs.embeddings  # noqa: B018  # raises the error that says to run `curate embed`


ANALYSIS = register("label_issues", compute, config=LabelIssuesConfig,
                    title="probably wrong labels and what they should be", tables=("label_issues",),
                    needs=frozenset({"embeddings", "graph", "labels"}), graph_option="k", order=10,
                    in_memory_only=("cross-validated probe", "imported predictions"), check=_check)


def _config(**options: Any) -> LabelIssuesConfig:
    """The config from keyword options; unlike ``Config.from_options`` an explicit None is kept (``probe_dims=None``
    means the full vectors)."""
    names = {f.name for f in dataclasses.fields(LabelIssuesConfig)}
    unknown = sorted(set(options) - names)
    if unknown:
        raise CurateError(f"unknown option(s) {', '.join(unknown)} for label issues; valid options: "
                          f"{', '.join(sorted(names))}")
    return LabelIssuesConfig(**options)


def run(cat: Catalog, encoder: str | None = None, k: int = DEFAULT_K, out_of_core: bool | None = None,
        progress: Any = None, **cfg: Any) -> dict:
    """:func:`run_result`'s summary."""
    return run_result(cat, encoder=encoder, k=k, out_of_core=out_of_core, progress=progress, **cfg).summary


def run_result(cat: Catalog, encoder: str | None = None, k: int = DEFAULT_K, out_of_core: bool | None = None,
               progress: Any = None, **cfg: Any) -> Result:
    """Score every labeled sample and write the ``label_issues`` table plus a run record; returns the Result.

    The registry's runner does the work (:func:`curate.engine.analyses.registry.run` with :func:`compute`);
    ``cfg`` are the :class:`LabelIssuesConfig` options (the :func:`find_label_issues` arguments, ``block_rows``).
    ``out_of_core`` None lets :meth:`curate.engine.inputs.Inputs.open` decide.  When no embeddings exist but
    imported predictions cover every labeled sample, those alone are used.  ``progress``: an
    :data:`curate.engine.progress.Progress` callback.
    """
    from curate.engine.inputs import Inputs

    config = _config(k=k, **cfg)
    try:
        inputs = Inputs.open(cat, encoder=encoder, out_of_core=out_of_core, k=k, progress=progress)
    except CurateError:  # the named encoder has no embeddings: imported predictions may still do (see _check)
        if not _predictions_cover_labels(cat):
            raise
        inputs = Inputs(cat, None, False, k=k, progress=progress)
    return registry_run(cat, ANALYSIS, config, inputs=inputs)


def top_issues(cat: Catalog, limit: int = 20, issues_only: bool = True) -> pd.DataFrame:
    """The best-ranked rows of the ``label_issues`` table joined with sample paths (for the CLI and reports)."""
    where = "WHERE li.is_issue" if issues_only else ""
    return cat.query_df(
        f"""SELECT li.sample_id, s.path, li.given_label AS given, li.suggested_label AS suggested,
                   li.suggested_confidence AS confidence, li.label_quality AS quality
            FROM label_issues li JOIN samples s ON s.id = li.sample_id {where}
            ORDER BY li.rank LIMIT ?""",
        [int(limit)],
    )
