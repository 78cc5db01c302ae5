"""A linear probe on embeddings: multinomial logistic regression, on the GPU when there is one.

The probe is the cheapest honest classifier we can put on top of frozen embeddings.  Two analyses use it:

* label issues (:mod:`engine.analyses.label_issues`) need *out-of-sample* class probabilities for every labeled
  sample — :func:`cross_val_predict_proba` fits one probe per stratified fold and predicts only the held-out fold;
* active learning (:mod:`engine.analyses.active`) fits one probe on the labeled pool and scores the unlabeled pool
  with :meth:`LinearProbe.predict_proba`.

Two interchangeable backends minimise the same objective (scikit-learn's)::

    C * sum_i cross_entropy(softmax(x_i W + b), y_i) + 0.5 * ||W||^2        (the intercept is not penalised)

* ``"sklearn"`` — :class:`sklearn.linear_model.LogisticRegression` (lbfgs); the default on CPU;
* ``"torch"``  — full-batch L-BFGS (strong-Wolfe line search) on the same loss in torch; the default when CUDA is
  available.  The loss is accumulated over row chunks, so a million samples x a thousand classes fits in GPU
  memory.  It runs on CPU too (``device="cpu"``), which is how the tests check it against the sklearn backend.

For two classes the sklearn backend fits a single logit (penalising ``||w_1 - w_0||^2``) while the torch backend
keeps one weight vector per class, so their binary solutions differ slightly (a different effective penalty);
with three or more classes both solve the same problem.

Features are standardised (mean 0, unit variance per dimension, statistics from the training rows only) before
the fit: L2-normalised embeddings have per-dimension scales around ``1/sqrt(d)``, and standardising makes one
value of ``C`` work across encoders of different widths and lets L-BFGS converge in far fewer iterations.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from curate.engine.catalog import CurateError
from curate.engine.devices import resolve_device

PROBE_BACKENDS = ("auto", "sklearn", "torch")
DEFAULT_C = 0.01  # measured on the label-issue bench (see engine/analyses/label_issues.py, "Measured defaults")


def resolve_backend(backend: str = "auto", device: str = "auto") -> str:
    """``"auto"`` -> ``"torch"`` on a CUDA device, ``"sklearn"`` otherwise.

    ``device`` is resolved by :func:`engine.devices.resolve_device` with ``mps=False``: ``"auto"`` means CUDA when
    torch sees it, else the CPU (the torch backend is never picked for Apple MPS on its own).
    """
    if backend not in PROBE_BACKENDS:
        raise CurateError(f"unknown probe backend {backend!r}; use one of {', '.join(PROBE_BACKENDS)}")
    if backend != "auto":
        return backend
    return "torch" if resolve_device(device, mps=False).type == "cuda" else "sklearn"


SMALL_PROBLEM = 1 << 26  # rows x features x classes below which BLAS runs single-threaded


def _blas_threads_for(work: int):
    """One BLAS thread for small fits.

    Measured on a busy 2-core machine: a 1,440 x 64 x 10-class fit took 2 s per fold with the default BLAS thread
    pool (threads spin-waiting for a core) and 0.04 s single-threaded; large fits still get every thread.
    """
    import contextlib

    if work >= SMALL_PROBLEM:
        return contextlib.nullcontext()
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


class LinearProbe:
    """Multinomial logistic regression with an L2 penalty, scikit-learn style.

    Parameters
    ----------
    C : float
        Inverse L2 strength, as in scikit-learn (larger = weaker regularisation).  Applies to standardised
        features when ``standardize`` is true.
    backend : {"auto", "sklearn", "torch"}
        ``"auto"`` uses torch on a CUDA device and scikit-learn otherwise.
    device : str
        Torch device for the torch backend (``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"`` ...); ``"auto"`` is CUDA
        when available, else the CPU (:func:`engine.devices.resolve_device` with ``mps=False``).
    max_iter : int
        L-BFGS iteration cap (both backends).
    tol : float
        Gradient tolerance for convergence.
    standardize : bool
        Centre and scale features with statistics of the training rows.
    chunk_size : int
        Rows per chunk when the torch backend accumulates the loss (bounds memory at ``chunk_size x n_classes``).
    random_state : int
        Seed; the fit is deterministic given it (L-BFGS from zero weights), kept for API symmetry.

    Attributes
    ----------
    classes_ : np.ndarray
        Sorted distinct labels seen in ``fit``; the columns of :meth:`predict_proba`.
    coef_ : np.ndarray, shape (n_classes, n_features)
        Weights in the standardised feature space.
    intercept_ : np.ndarray, shape (n_classes,)
    backend_ : str
        The backend actually used.
    n_iter_ : int
        Iterations run by the optimiser.

    Examples
    --------
    >>> X = np.r_[np.random.default_rng(0).normal(0, 1, (20, 4)), np.random.default_rng(1).normal(3, 1, (20, 4))]
    >>> y = np.array(["a"] * 20 + ["b"] * 20)
    >>> LinearProbe().fit(X, y).predict_proba(X).shape
    (40, 2)
    """

    def __init__(self, C: float = DEFAULT_C, backend: str = "auto", device: str = "auto", max_iter: int = 200,
                 tol: float = 1e-4, standardize: bool = True, chunk_size: int = 65536, random_state: int = 0):
        self.C = C
        self.backend = backend
        self.device = device
        self.max_iter = max_iter
        self.tol = tol
        self.standardize = standardize
        self.chunk_size = chunk_size
        self.random_state = random_state

    # ------------------------------------------------------------------------------------------ fit
    def fit(self, X: np.ndarray, y: np.ndarray) -> "LinearProbe":
        """Fit on features ``X`` (n x d) and labels ``y`` (n,), any hashable dtype; needs >= 2 distinct labels."""
        X = np.asarray(X, dtype=np.float32)
        y = np.asarray(y)
        if X.ndim != 2 or len(X) != len(y):
            raise CurateError(f"linear probe: X must be (n, d) and y (n,), got {X.shape} and {y.shape}")
        if not np.isfinite(X).all():
            raise CurateError("linear probe: features contain NaN or inf; re-run `curate embed`")
        if self.C <= 0:
            raise CurateError(f"linear probe: C must be > 0, got {self.C}")
        self.classes_, y_idx = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise CurateError(f"linear probe: needs at least 2 classes, got {len(self.classes_)}")
        if self.standardize:
            self.mean_ = X.mean(axis=0)
            std = X.std(axis=0)
            self.scale_ = np.where(std > 1e-12, std, 1.0).astype(np.float32)
        else:
            self.mean_ = np.zeros(X.shape[1], dtype=np.float32)
            self.scale_ = np.ones(X.shape[1], dtype=np.float32)
        Z = (X - self.mean_) / self.scale_
        self.backend_ = resolve_backend(self.backend, self.device)
        with _blas_threads_for(Z.shape[0] * Z.shape[1] * len(self.classes_)):
            if self.backend_ == "sklearn":
                self._fit_sklearn(Z, y_idx)
            else:
                self._fit_torch(Z, y_idx)
        return self

    def _fit_sklearn(self, Z: np.ndarray, y_idx: np.ndarray) -> None:
        import warnings

        from sklearn.exceptions import ConvergenceWarning
        from sklearn.linear_model import LogisticRegression

        clf = LogisticRegression(C=self.C, max_iter=self.max_iter, tol=self.tol, random_state=self.random_state)
        with warnings.catch_warnings():
            # a probe that stops at max_iter is still a good probe; the iteration count is recorded in n_iter_
            warnings.simplefilter("ignore", ConvergenceWarning)
            clf.fit(Z, y_idx)
        coef, intercept = clf.coef_, clf.intercept_
        if len(self.classes_) == 2:  # sklearn stores one row for binary problems: expand to a symmetric pair
            coef = np.vstack([-coef[0] / 2, coef[0] / 2])
            intercept = np.array([-intercept[0] / 2, intercept[0] / 2])
        self.coef_ = np.asarray(coef, dtype=np.float32)
        self.intercept_ = np.asarray(intercept, dtype=np.float32)
        self.n_iter_ = int(np.max(clf.n_iter_))
        self.device_ = "cpu"

    def _fit_torch(self, Z: np.ndarray, y_idx: np.ndarray) -> None:
        import torch

        device = resolve_device(self.device, mps=False)
        torch.manual_seed(self.random_state)
        threads = torch.get_num_threads()
        if device.type == "cpu" and Z.shape[0] * Z.shape[1] * len(self.classes_) < SMALL_PROBLEM:
            torch.set_num_threads(1)  # see _blas_threads_for
        try:
            self._lbfgs_torch(Z, y_idx, device)
        finally:
            torch.set_num_threads(threads)

    def _lbfgs_torch(self, Z: np.ndarray, y_idx: np.ndarray, device) -> None:
        import torch
        import torch.nn.functional as F

        n, d = Z.shape
        k = len(self.classes_)
        Xt = torch.from_numpy(np.ascontiguousarray(Z)).to(device)
        yt = torch.from_numpy(y_idx.astype(np.int64)).to(device)
        W = torch.zeros(d, k, device=device, requires_grad=True)
        b = torch.zeros(k, device=device, requires_grad=True)
        # Same objective as sklearn divided by C*n: mean cross-entropy + ||W||^2 / (2 C n).
        reg = 1.0 / (2.0 * self.C * n)
        opt = torch.optim.LBFGS([W, b], lr=1.0, max_iter=self.max_iter, tolerance_grad=self.tol,
                                tolerance_change=1e-10, history_size=20, line_search_fn="strong_wolfe")
        evals = 0

        def closure():
            nonlocal evals
            evals += 1
            opt.zero_grad(set_to_none=False)
            total = torch.zeros((), device=device)
            for s in range(0, n, self.chunk_size):  # accumulate grads chunk by chunk: memory ~ chunk x classes
                logits = Xt[s:s + self.chunk_size] @ W + b
                loss = F.cross_entropy(logits, yt[s:s + self.chunk_size], reduction="sum") / n
                loss.backward()
                total += loss.detach()
            penalty = reg * (W * W).sum()
            penalty.backward()
            return total + penalty.detach()

        opt.step(closure)
        self.coef_ = W.detach().T.contiguous().cpu().numpy().astype(np.float32)
        self.intercept_ = b.detach().cpu().numpy().astype(np.float32)
        self.n_iter_ = int(opt.state[opt._params[0]].get("n_iter", evals))
        self.device_ = str(device)

    # ------------------------------------------------------------------------------------------ predict
    def decision_function(self, X: np.ndarray) -> np.ndarray:
        """Logits (n x n_classes)."""
        self._check_fitted()
        Z = (np.asarray(X, dtype=np.float32) - self.mean_) / self.scale_
        return Z @ self.coef_.T + self.intercept_

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Class probabilities (n x n_classes), columns ordered as ``classes_``; float32, rows sum to 1."""
        if getattr(self, "device_", "cpu").startswith("cuda"):
            return self._predict_proba_torch(X)
        logits = self.decision_function(X)
        logits -= logits.max(axis=1, keepdims=True)
        np.exp(logits, out=logits)
        logits /= logits.sum(axis=1, keepdims=True)
        return logits

    def _predict_proba_torch(self, X: np.ndarray) -> np.ndarray:
        """The same computation on the fitting GPU, chunk by chunk (n x d x classes is large at scale)."""
        import torch

        self._check_fitted()
        dev = torch.device(self.device_)
        W = torch.from_numpy(self.coef_).to(dev)
        b = torch.from_numpy(self.intercept_).to(dev)
        mean, scale = torch.from_numpy(self.mean_).to(dev), torch.from_numpy(self.scale_).to(dev)
        X = np.asarray(X, dtype=np.float32)
        out = np.empty((len(X), len(self.classes_)), dtype=np.float32)
        with torch.no_grad():
            for s in range(0, len(X), self.chunk_size):
                Z = (torch.from_numpy(X[s:s + self.chunk_size]).to(dev) - mean) / scale
                out[s:s + self.chunk_size] = torch.softmax(Z @ W.T + b, dim=1).cpu().numpy()
        return out

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.classes_[np.argmax(self.decision_function(X), axis=1)]

    def _check_fitted(self) -> None:
        if not hasattr(self, "coef_"):
            raise CurateError("linear probe is not fitted; call fit(X, y) first")

    def get_params(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("C", "backend", "device", "max_iter", "tol", "standardize",
                                             "chunk_size", "random_state")}


def cross_val_predict_proba(X: np.ndarray, y: np.ndarray, n_classes: int | None = None, n_folds: int = 5,
                            seed: int = 0, extra_X: np.ndarray | None = None, progress: Any = None,
                            train_mask: np.ndarray | None = None,
                            **probe_params: Any) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """Out-of-sample class probabilities from a stratified K-fold linear probe.

    Every row of ``X`` is predicted by the one probe whose training folds did not contain it, so no sample ever
    predicts itself.

    Parameters
    ----------
    X : np.ndarray, shape (n, d)
        Features of the labeled samples.
    y : np.ndarray of int, shape (n,)
        Class indices in ``[0, n_classes)``.  A class with at least 2 rows always has a member in training when one
        of its rows is held out (the split is stratified), however few rows it has; a class with a single row does
        not, so that row gets probability 0 for its own class — leave such rows out and pass them as ``extra_X``
        (as :func:`engine.analyses.label_issues.find_label_issues` does).
    n_classes : int, optional
        Number of output columns (default ``y.max() + 1``).
    n_folds : int
        Number of folds (>= 2); :class:`sklearn.model_selection.StratifiedKFold` with ``shuffle=True``.
    seed : int
        Seeds the fold split and the probes.
    extra_X : np.ndarray, shape (m, d), optional
        Rows that are in no training fold (e.g. samples of classes too small to cross-validate): they are predicted
        by the average of the fold probes, which is out-of-sample for them as well.
    train_mask : np.ndarray of bool, shape (n,), optional
        Rows allowed into the training folds (default: all).  Rows outside it are still predicted out-of-sample;
        label issues use it to refit without the samples an earlier round suspected (their labels would pull the
        probe towards the noise).  A fold whose allowed training rows span fewer than 2 classes trains on all of
        its rows instead.
    **probe_params
        Passed to :class:`LinearProbe` (``C``, ``backend``, ``device``, ``max_iter`` ...).

    Returns
    -------
    probs : np.ndarray, shape (n, n_classes), float32
        Out-of-sample probabilities; rows sum to 1.
    extra_probs : np.ndarray, shape (m, n_classes) or None
        Probabilities for ``extra_X``.
    info : dict
        ``backend``, ``device``, ``n_folds``, ``n_iter`` (per fold), ``seconds``.
    """
    import time
    import warnings

    from sklearn.model_selection import StratifiedKFold

    t0 = time.perf_counter()
    X = np.asarray(X, dtype=np.float32)
    y = np.asarray(y, dtype=np.int64)
    n_classes = int(y.max()) + 1 if n_classes is None else int(n_classes)
    if n_folds < 2:
        raise CurateError(f"n_folds must be >= 2, got {n_folds}")
    if len(np.unique(y)) < 2:
        raise CurateError("the linear probe needs at least 2 classes with labeled samples")
    folds = min(n_folds, int(np.bincount(y).max()))
    probs = np.zeros((len(X), n_classes), dtype=np.float32)
    extra = None if extra_X is None else np.zeros((len(extra_X), n_classes), dtype=np.float32)
    probe_params.setdefault("random_state", seed)
    n_iter: list[int] = []
    backend = device = None
    skf = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        splits = list(skf.split(np.zeros(len(y)), y))
    from curate.engine.progress import track

    allowed = None if train_mask is None else np.asarray(train_mask, dtype=bool)
    for train, test in track(splits, "probe folds", progress=progress):
        if allowed is not None and len(np.unique(y[train[allowed[train]]])) >= 2:
            train = train[allowed[train]]
        probe = LinearProbe(**probe_params).fit(X[train], y[train])
        cols = probe.classes_.astype(np.int64)  # a class absent from this training fold keeps probability 0
        probs[np.ix_(test, cols)] = probe.predict_proba(X[test])
        if extra is not None and len(extra):
            extra[:, cols] += probe.predict_proba(extra_X) / len(splits)
        n_iter.append(probe.n_iter_)
        backend, device = probe.backend_, probe.device_
    info = {"backend": backend, "device": device, "n_folds": folds, "n_iter": n_iter,
            "seconds": round(time.perf_counter() - t0, 3)}
    return probs, extra, info
