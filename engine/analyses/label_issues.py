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
     ``bench/label_issues.py`` reports probe-only, kNN-only and combined side by side (README table).

   User-supplied predictions (the ``predictions`` table, ``curate import-predictions``) take precedence: rows that
   have them use them as they are; the others are estimated as above.

2. **Confident learning** (cleanlab) on top of those probabilities: :func:`cleanlab.filter.find_label_issues`
   flags the issues (``filter_by="prune_by_noise_rate"`` by default), :func:`cleanlab.rank.get_label_quality_scores`
   gives each sample a label quality in [0, 1] (lower = more likely wrong; ``method`` = ``"self_confidence"`` or
   ``"normalized_margin"``), and :func:`cleanlab.count.estimate_joint` estimates the joint distribution of given
   vs true labels, from which come the per-class noise rates and the most confused class pairs.  The suggested
   label is the argmax of the out-of-sample probabilities and its confidence the probability there.

Cleaning rounds and the flag count (measured on real human noise, ``bench/real_data.py``)
-------------------------------------------------------------------------------------
* The probe sees the 256 whitened principal components (``probe_dims``, ``C=0.003``): as accurate as the full
  vectors on CIFAR-10 and ~20x faster.
* ``rounds=2``: the second estimate trains the probe without, and ignores the votes of, the samples the first one
  flagged.  CIFAR-10N at 10k: best-possible F1 0.657 -> 0.672 (17 % noise) and 0.731 -> 0.79 (40 %).
* ``flag_count="calibrated"``: the number flagged is ``calibrated_noise_rate(...) x n`` instead of confident
  learning's own count, which counts the encoder's confusions as noise (11 % on clean CIFAR-10 labels through
  ``effnet-lite0:64``, 2.4 % through ``effnet-lite2:128``).

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

Measured defaults (``bench/label_issues.py --sweep``, results in ``bench/results/label_issues_sweep.json``: F1 of
the flags vs injected noise on the demo embeddings, sklearn digits and imbalanced Gaussian blobs, 10/20/40%
symmetric and class-dependent noise, 18 settings; plus the 1,000-class set of the main bench)
--------------------------------------------------------------------------------------------------------------
* ``probe_weight``: 0.7 since the real-noise bench (the 0.5 below was measured on planted noise; on CIFAR-10N 0.7 was
  best or within 0.01 F1 of 0.5 and 1.0).  Earlier sweep: the average of probe and kNN vote was best or within 0.02 F1 of the best weight (0, 0.25,
  0.5, 0.75, 1) in 18 of 18 settings and never lost to probe-only by more than 0.011 or to kNN-only by more than
  0.003; on the demo embeddings it beat probe-only by 0.01-0.04 F1 and kNN-only by 0.04-0.22.  Mean F1: 0.863
  (0.5) vs 0.850 (0.25 and 0.75), 0.829 (probe only), 0.810 (kNN only); cleanlab Datalab 0.805.
* ``C=0.01`` (probe L2): strong regularisation keeps the probe from fitting the noisy labels it is trained on.
  Mean F1 0.869 / 0.863 / 0.837 / 0.817 at C = 0.003 / 0.01 / 0.1 / 1.  We keep 0.01 rather than 0.003 because
  the probe needs weaker regularisation when classes are small: in a separate sweep on 1,000 Gaussian classes of 8
  samples (20% symmetric noise) probe-only F1 rose from 0.89 (C=0.01) to 0.92 (C=0.1), while the combined
  estimate was best at C=0.01 (1.00 vs 0.99).
* kNN weights linear in the cosine (``knn_temperature=None``): exponential weights ``exp((cos - 1) / T)`` lowered
  mean F1 (0.852 at T=0.1, 0.842 at T=0.05; kNN-only 0.793 / 0.729 vs 0.810) and broke the 1,000-class set
  (kNN-only 0.93 -> 0.50 at T=0.05).  They only helped crowded few-shot data (3 samples per class, 1,000 classes in
  8-d), where the own class has fewer voters than the neighbouring classes.  ``knn_prior``: 0.1 and 3 changed mean
  F1 by < 0.003.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pandas as pd

from curate.engine.analyses.probe import DEFAULT_C, cross_val_predict_proba
from curate.engine.catalog import Catalog, CurateError

DEFAULT_N_FOLDS = 5
DEFAULT_K = 10
DEFAULT_PROBE_WEIGHT = 0.7  # measured: see "Measured defaults" above and bench/real_data.py
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
        labeled = int(self.is_labeled.sum())
        return {
            "n_labeled": labeled,
            "n_issues": self.n_issues,
            "issue_fraction": self.n_issues / labeled if labeled else 0.0,
            "estimated_noise_rate": self.estimated_noise_rate,
            "noise_rate_per_class": {str(k): float(v) for k, v in self.noise_rates.items()},
            "top_confused_pairs": self.top_confused_pairs(top_pairs),
            "joint": joint_summary(self.joint, self.joint_classes),
            "small_classes": {str(k): int(v) for k, v in self.small_classes.items()},
            "unverifiable_classes": [str(c) for c in self.unverifiable_classes],
            "n_classes": len(self.class_names),
            **{k: v for k, v in self.details.items() if k != "timings"},
            "timings": self.details.get("timings", {}),
        }

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
def _labeled_mask(labels: np.ndarray) -> np.ndarray:
    return ~pd.isna(pd.Series(labels, dtype=object)).to_numpy() & np.array(
        [not (isinstance(v, str) and v.strip() == "") for v in labels], dtype=bool)


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
    from cleanlab.count import estimate_joint
    from cleanlab.filter import find_label_issues as cl_find_label_issues

    from curate.engine.progress import step as progress_step
    from cleanlab.rank import get_label_quality_scores

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    labels = np.asarray(labels, dtype=object)
    n = len(labels)
    if method not in RANK_METHODS:
        raise CurateError(f"unknown label quality method {method!r}; use one of {', '.join(RANK_METHODS)}")
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
    if embeddings is not None:
        embeddings = np.asarray(embeddings, dtype=np.float32)
        if embeddings.ndim != 2 or len(embeddings) != n:
            raise CurateError(f"embeddings must be (n, d) with n = {n} labels; got shape {embeddings.shape}")

    labeled = _labeled_mask(labels)
    if not labeled.any():
        raise CurateError("no labeled samples to check; ingest labels (ImageFolder or a manifest with a label column)")
    label_classes, codes_l = np.unique(labels[labeled], return_inverse=True)
    class_names = list(label_classes)
    if pred_class_names is not None:
        extra = [c for c in pred_class_names if c not in set(class_names)]
        class_names = class_names + sorted(extra, key=str)
    K = len(class_names)
    col_of = {c: i for i, c in enumerate(class_names)}
    codes = np.full(n, -1, dtype=np.int64)
    codes[labeled] = codes_l
    counts = np.bincount(codes[labeled], minlength=K)
    small_classes = {_py(class_names[c]): int(counts[c]) for c in range(len(label_classes)) if counts[c] < n_folds}
    singleton_cls = np.flatnonzero((counts == 1)[: len(label_classes)])
    is_singleton_row = labeled & np.isin(codes, singleton_cls)

    # ----------------------------------------------------------------- imported predictions (take precedence)
    probs = np.zeros((n, K), dtype=np.float32)
    source = np.array([None] * n, dtype=object)
    has_import = np.zeros(n, dtype=bool)
    if pred_probs is not None:
        pp = np.asarray(pred_probs, dtype=np.float64)
        names = list(pred_class_names) if pred_class_names is not None else list(label_classes)
        if pp.shape != (n, len(names)):
            raise CurateError(f"pred_probs must have shape ({n}, {len(names)}) (rows x classes), got {pp.shape}")
        has_import = labeled & np.isfinite(pp).all(axis=1)
        cols = [col_of[c] for c in names]
        imported = np.clip(pp[has_import], 0.0, None)
        sums = imported.sum(axis=1, keepdims=True)
        if (sums <= 0).any():
            raise CurateError("imported predictions contain a row of zeros; every row needs positive probabilities")
        probs[np.ix_(np.flatnonzero(has_import), cols)] = (imported / sums).astype(np.float32)
        source[has_import] = "imported"
    timings["imported"] = round(time.perf_counter() - t0, 3)

    # ----------------------------------------------------------------- our estimate for the rest
    todo = labeled & ~has_import
    details: dict[str, Any] = {"n_folds": n_folds, "method": method, "filter_by": filter_by, "seed": seed,
                               "n_imported": int(has_import.sum()), "n_estimated": int(todo.sum())}
    if todo.any():
        if embeddings is None:
            raise CurateError(f"{int(todo.sum())} labeled samples have no imported prediction and no embedding; "
                              "run `curate embed` first")
        probe_rows = np.flatnonzero(labeled & ~is_singleton_row)  # train/evaluate on every non-singleton class
        probe_ok = probe_weight > 0 and len(np.unique(codes[probe_rows])) >= 2
        # singleton rows always need the vote: the probe cannot know their class
        use_knn = probe_weight < 1 or not probe_ok or bool(is_singleton_row[todo].any())
        probe_X = reduce_for_probe(embeddings, probe_dims, seed) if probe_ok else None
        gi = gs = None
        if use_knn:
            graph = knn_graph
            if graph is None:
                if embeddings is None:
                    raise CurateError("the kNN vote needs embeddings or a kNN graph")
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
                suspects = _round_suspects(est, codes, probe_rows, singleton_cls, K, filter_by)
                details["round_suspects"] = details.get("round_suspects", []) + [int(suspects.sum())]
        details["rounds"] = max(1, rounds)
        probs[todo] = est[todo]
        source[todo] = np.asarray(src, dtype=object)[todo]
        details["probe_weight"] = probe_weight if probe_ok else 0.0
        for name, p in (("probe", p_probe), ("knn", p_knn)):
            if p is not None:
                r = np.flatnonzero(todo)
                details[f"{name}_agreement_with_given"] = float(np.mean(p[r].argmax(axis=1) == codes[r]))

    # ----------------------------------------------------------------- confident learning on non-singleton rows
    t = time.perf_counter()
    cl_rows = np.flatnonzero(labeled & ~is_singleton_row)
    cl_cols = np.setdiff1d(np.arange(K), singleton_cls)
    if len(np.unique(codes[cl_rows])) < 2:
        raise CurateError(
            f"label issues need at least 2 classes with >= 2 labeled samples each; found {len(label_classes)} "
            f"class(es) with counts {dict(zip(map(str, label_classes), counts[: len(label_classes)].tolist()))}")
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
    timings["cleanlab"] = round(time.perf_counter() - t, 3)

    label_quality = np.full(n, np.nan)
    is_issue = np.zeros(n, dtype=bool)
    sugg_idx = np.full(n, -1, dtype=np.int64)
    sugg_conf = np.full(n, np.nan)
    label_quality[cl_rows] = quality_cl
    sugg_idx[cl_rows] = cl_cols[P_cl.argmax(axis=1)]
    sugg_conf[cl_rows] = P_cl.max(axis=1)
    rate_cl = float(1.0 - np.trace(joint))
    rate_anchor = anchor_noise_rate(P_cl, y_cl, anchor_fraction)
    rate, resolution_limited = calibrated_noise_rate(rate_cl, rate_anchor)
    details["noise_rate_confident_learning"] = rate_cl
    details["noise_rate_anchor"] = rate_anchor
    details["noise_rate_calibrated"] = rate
    details["noise_below_encoder_resolution"] = resolution_limited
    details["flag_count"] = flag_count
    if flag_count == "calibrated":
        issues_cl = flag_lowest(quality_cl, P_cl.argmax(axis=1) != y_cl, int(round(rate * len(cl_rows))))
    is_issue[cl_rows] = issues_cl

    single_rows = np.flatnonzero(is_singleton_row)
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

    rank = np.zeros(n, dtype=np.int64)
    lab_rows = np.flatnonzero(labeled)
    order = lab_rows[np.lexsort((lab_rows, label_quality[lab_rows]))]  # ties: input order
    rank[order] = np.arange(1, len(order) + 1)

    names_arr = np.array(class_names + [None], dtype=object)
    suggested = names_arr[sugg_idx]  # -1 -> None
    joint_classes = [_py(class_names[c]) for c in cl_cols]
    row_sums = joint.sum(axis=1)
    noise_rates = {c: float(1.0 - joint[i, i] / row_sums[i]) if row_sums[i] > 0 else 0.0
                   for i, c in enumerate(joint_classes)}
    timings["total"] = round(time.perf_counter() - t0, 3)
    details["timings"] = timings
    details["prob_sources"] = {str(k): int(v) for k, v in pd.Series(source[labeled]).value_counts().items()}
    details["agreement_with_given"] = float(np.mean(sugg_idx[labeled] == codes[labeled]))
    details["warnings"] = _warnings(details["agreement_with_given"], rate, small_classes,
                                    int(labeled.sum()), resolution_limited, rate_cl, rate_anchor)
    given = np.array([None] * n, dtype=object)
    given[labeled] = labels[labeled]
    return LabelIssuesResult(
        is_labeled=labeled, given_label=given, label_quality=label_quality, is_issue=is_issue,
        suggested_label=suggested, suggested_confidence=sugg_conf, rank=rank, prob_source=source,
        pred_probs=probs, class_names=[_py(c) for c in class_names], joint=joint, joint_classes=joint_classes,
        noise_rates=noise_rates, small_classes=small_classes,
        unverifiable_classes=[_py(class_names[c]) for c in singleton_cls], details=details,
    )


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


# ---------------------------------------------------------------------------------------------- catalog wrapper
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


def run(cat: Catalog, encoder: str | None = None, k: int = DEFAULT_K, out_of_core: bool | None = None,
        progress: Any = None, **cfg: Any) -> dict:
    """Score every labeled sample and write the ``label_issues`` table plus a run record; returns the summary.

    Loads the embeddings and the shared kNN graph (``indexes.graph.load_or_build_graph``), the current labels
    (after live relabel decisions) and imported predictions; ``cfg`` goes to :func:`find_label_issues`.  When no
    embeddings exist but imported predictions cover every labeled sample, those alone are used.

    ``out_of_core`` (None = decided by :func:`engine.shards.use_out_of_core`): take the streamed path
    (:func:`run_out_of_core`) instead.  ``progress``: an :data:`engine.progress.Progress` callback.
    """
    from curate.engine.progress import step
    from curate.engine.shards import use_out_of_core

    try:
        big = use_out_of_core(cat, encoder, out_of_core)
    except CurateError:
        big = False  # no embeddings: the in-memory path reports it (or uses imported predictions)
    if big:
        with step(progress, "streamed kNN vote (out of core)"):
            return run_out_of_core(cat, encoder, k=k)
    labels_df = cat.current_labels()
    labeled_ids = labels_df.loc[labels_df["label"].notna(), "sample_id"].to_numpy(np.int64)
    es = graph = None
    try:
        from curate.indexes.graph import load_or_build_graph

        with step(progress, "kNN graph"):
            es, graph = load_or_build_graph(cat, encoder=encoder, k=k, progress=progress)
    except CurateError:
        # no embeddings: still fine if the user imported predictions for every labeled sample
        pp, _, _ = _imported_predictions(cat, labeled_ids)
        if pp is None or not np.isfinite(pp).all(axis=1).all():
            raise
    if es is not None:
        sample_ids = np.asarray(es.sample_ids, dtype=np.int64)
        vectors = es.vectors
    else:
        sample_ids, vectors = labeled_ids, None
    label_of = labels_df.set_index("sample_id")["label"]
    labels = label_of.reindex(sample_ids).to_numpy(dtype=object)
    labels = np.array([None if pd.isna(v) else str(v) for v in labels], dtype=object)
    pred_probs, pred_names, pred_source = _imported_predictions(cat, sample_ids)
    params = {"encoder": es.encoder if es is not None else None, "k": k, **cfg,
              "predictions": pred_source}
    run_id = cat.start_run("label_issues", params)
    with cat.failing_run(run_id):
        res = find_label_issues(vectors, labels, knn_graph=graph, pred_probs=pred_probs, pred_class_names=pred_names,
                                k=k, progress=progress, **cfg)
        df = res.to_frame(sample_ids)
        n_not_embedded = int(len(np.setdiff1d(labeled_ids, sample_ids)))
        summary = {"encoder": params["encoder"], **res.summary(), "n_unlabeled": int((~res.is_labeled).sum()),
                   "n_labeled_not_embedded": n_not_embedded, "predictions_source": pred_source}
        cat.replace_analysis("label_issues", df, run_id, summary)
    return summary


def run_out_of_core(cat: Catalog, encoder: str | None = None, k: int = DEFAULT_K, block_rows: int = 65_536) -> dict:
    """Label issues of a project too large for memory; writes the same ``label_issues`` table as :func:`run`.

    The shared graph comes from :func:`indexes.graph.load_or_build_sharded_graph` (memory-mapped), the labels are
    encoded inside DuckDB (:meth:`Catalog.label_codes`), and the scores are the kNN-vote probabilities streamed
    twice through cleanlab's ``LabelInspector`` (:func:`engine.analyses.scale.label_issues_out_of_core`).  The
    cross-validated linear probe and imported predictions are not used on this path (the probe needs every vector
    in memory); the summary says ``"probabilities": "knn vote (out of core)"``.
    """
    from curate.engine.analyses.scale import label_issues_out_of_core
    from curate.indexes.graph import load_or_build_sharded_graph

    t0 = time.perf_counter()
    shards, graph = load_or_build_sharded_graph(cat, encoder, k=k)
    t_graph = time.perf_counter() - t0
    ids = shards.sample_ids()
    names, codes = cat.label_codes(ids)
    if not names:
        raise CurateError(f"no labeled samples among the {len(ids)} embedded ones; import labels first "
                          "(`curate import-labels FILE.csv` or class folders at ingest)")
    params = {"encoder": shards.encoder, "k": k, "out_of_core": True}
    run_id = cat.start_run("label_issues", params)
    with cat.failing_run(run_id):
        res = label_issues_out_of_core(graph.indices, graph.similarities, codes, len(names), block_rows=block_rows)
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
        agreement = float(np.mean(res.suggested_label[lab] == codes[lab]))
        small = {names[c]: int(counts[c]) for c in range(len(names)) if counts[c] < 2}
        summary = {
            "encoder": shards.encoder, "out_of_core": True, "probabilities": "knn vote (out of core)",
            "graph": {"method": graph.method, "recall": graph.recall, "cache": graph.cache},
            "n_labeled": n_lab, "n_issues": int(res.is_issue.sum()),
            "issue_fraction": float(res.is_issue.sum() / n_lab) if n_lab else 0.0,
            "estimated_noise_rate": float(1.0 - np.trace(joint)),
            "noise_rate_per_class": {names[c]: float(rates[c]) for c in range(len(names))},
            "top_confused_pairs": confused_pairs(joint, names, n_lab),
            "joint": joint_summary(joint, names),
            "small_classes": small, "unverifiable_classes": [c for c, v in small.items() if v == 1],
            "n_classes": len(names), "agreement_with_given": agreement,
            "warnings": _warnings(agreement, float(1.0 - np.trace(joint)), {}, n_lab),
            "n_unlabeled": int(len(ids) - n_lab), "n_labeled_not_embedded": int(cat.scalar(
                "SELECT count(*) FROM current_labels cl WHERE cl.label IS NOT NULL AND cl.sample_id NOT IN "
                "(SELECT e.sample_id FROM embedded e WHERE e.encoder = ?)", [shards.encoder])),
            "predictions_source": None,
            "timings": {"graph": round(t_graph, 3), **res.seconds, "total": round(time.perf_counter() - t0, 3)},
        }
        cat.replace_analysis("label_issues", df, run_id, summary)
    return summary


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
