"""Exact kNN graph and range pairs with torch: tiled matmul + top-k, streamed so memory stays bounded.

This is the CUDA path for machines whose FAISS has no GPU support.  Similarities of a ``block_size x
db_block_size`` tile are computed in half precision (fp16 on CUDA: 10 mantissa bits beat bf16's 7 for cosines
in [-1, 1]), the best ``2k`` candidates per row are kept with a running top-k merge, and the candidates are
re-scored in float32 on the host before the final top-k — so reduced-precision rounding cannot reorder the
returned neighbours or distort their similarities.

The code is device-agnostic: with ``device="cpu"`` the very same tiling runs in float32 on the CPU, which is how
the tests exercise it on machines without a GPU.
"""

from __future__ import annotations

import warnings
from typing import Iterator

import numpy as np
import torch

from curate.indexes.build import check_pair_count, gather_similarities

_RESIDENT_FRACTION = 0.5  # keep the database on the GPU when it takes at most this share of free memory


def default_dtype(device: torch.device) -> torch.dtype:
    """fp16 on CUDA (tensor cores), float32 elsewhere (CPU half-precision matmul is slow and inexact)."""
    return torch.float16 if device.type == "cuda" else torch.float32


class _Database:
    """Row blocks of the database on ``device``: resident when it fits, else copied block by block."""

    def __init__(self, X: np.ndarray, device: torch.device, dtype: torch.dtype):
        self.n = len(X)
        self.device, self.dtype = device, dtype
        with warnings.catch_warnings():  # read-only inputs (memory maps) are only ever read here
            warnings.simplefilter("ignore", UserWarning)
            host = torch.from_numpy(X)
        nbytes = X.shape[0] * X.shape[1] * torch.finfo(dtype).bits // 8
        resident = device.type != "cuda" or nbytes <= _RESIDENT_FRACTION * torch.cuda.mem_get_info(device)[0]
        if resident:
            self.resident = host.to(device=device, dtype=dtype)
            self.host = None
        else:  # pragma: no cover - needs a GPU smaller than the data
            self.resident = None
            self.host = host.pin_memory()

    def rows(self, start: int, stop: int) -> torch.Tensor:
        if self.resident is not None:
            return self.resident[start:stop]
        return self.host[start:stop].to(self.device, dtype=self.dtype, non_blocking=True)  # pragma: no cover

    def blocks(self, size: int) -> Iterator[tuple[int, int, torch.Tensor]]:
        for start in range(0, self.n, size):
            stop = min(self.n, start + size)
            yield start, stop, self.rows(start, stop)


def torch_knn_graph(X: np.ndarray, k: int, block_size: int = 4096, device: str | torch.device = "cuda",
                    dtype: torch.dtype | None = None, db_block_size: int | None = None, oversample: int = 2,
                    progress: bool = False) -> tuple[np.ndarray, np.ndarray, str]:
    """Exact k nearest other rows of every row of ``X`` (cosine; self excluded by position).

    Parameters
    ----------
    X : float32 array [n, d]
        Unit-length rows (see :func:`indexes.build.as_unit_vectors`); ``k <= n - 1``.
    k : int
        Neighbours per row.
    block_size : int
        Query rows per tile.
    device : torch device
        ``"cuda"``, ``"cuda:1"`` or ``"cpu"``.
    dtype : torch dtype, optional
        Tile precision; default fp16 on CUDA, float32 on CPU.
    db_block_size : int, optional
        Database rows per tile (default ``4 * block_size``); peak tile memory is
        ``block_size * db_block_size`` elements.
    oversample : int
        Candidates kept per row before the float32 re-scoring, as a multiple of ``k`` (used below float32).
    progress : bool
        Show a progress bar over query blocks.

    Returns
    -------
    (indices int64 [n, k], similarities float32 [n, k], dtype name)
    """
    dev = torch.device(device)
    dtype = dtype or default_dtype(dev)
    n = len(X)
    if not 1 <= k <= n - 1:
        raise ValueError(f"k must be in [1, n-1] = [1, {n - 1}], got {k}")
    kc = k if dtype == torch.float32 else min(n - 1, max(k, oversample * k))
    db = _Database(X, dev, dtype)
    db_block = db_block_size or 4 * block_size
    out_i = np.empty((n, k), np.int64)
    out_s = np.empty((n, k), np.float32)
    from curate.engine.progress import track

    starts = track(range(0, n, block_size), f"kNN graph (torch {dev.type})", progress=progress)
    with torch.inference_mode():
        for s in starts:
            e = min(n, s + block_size)
            q = db.rows(s, e)
            best_v = torch.full((e - s, kc), float("-inf"), device=dev)
            best_i = torch.full((e - s, kc), -1, dtype=torch.int64, device=dev)
            for t, u, d in db.blocks(db_block):
                sims = q @ d.T
                lo, hi = max(s, t), min(e, u)
                if lo < hi:  # this tile holds the queries themselves: mask self by position
                    r = torch.arange(lo, hi, device=dev)
                    sims[r - s, r - t] = float("-inf")
                v, i = torch.topk(sims, min(kc, u - t), dim=1)
                merged_v = torch.cat([best_v, v.float()], dim=1)
                merged_i = torch.cat([best_i, i + t], dim=1)
                best_v, pos = torch.topk(merged_v, kc, dim=1)
                best_i = torch.gather(merged_i, 1, pos)
            cand = best_i.cpu().numpy()
            cand[~np.isfinite(best_v.cpu().numpy())] = -1
            # re-score the candidates exactly in float32, then keep the best k
            exact = gather_similarities(X[s:e], X, cand)
            order = np.argsort(-exact, axis=1, kind="stable")[:, :k]
            out_i[s:e] = np.take_along_axis(cand, order, axis=1)
            out_s[s:e] = np.take_along_axis(exact, order, axis=1)
    return out_i, out_s, str(dtype).removeprefix("torch.")


def torch_range_pairs(X: np.ndarray, threshold: float, block_size: int = 4096, device: str | torch.device = "cuda",
                      max_pairs: int = 50_000_000) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs ``i < j`` with cosine ``>= threshold``, from upper-triangle tiles in float32 on ``device``.

    Float32 (TF32 disabled) keeps the threshold test exact to float32 rounding, as on the CPU path.

    Returns
    -------
    (i int64, j int64, sim float32), unsorted.
    """
    dev = torch.device(device)
    db = _Database(X, dev, torch.float32)
    out_i, out_j, out_s = [], [], []
    total = 0
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.inference_mode():
            for s in range(0, db.n, block_size):
                e = min(db.n, s + block_size)
                q = db.rows(s, e)
                for t in range(s, db.n, block_size):
                    u = min(db.n, t + block_size)
                    sims = q @ db.rows(t, u).T
                    hit = sims >= threshold
                    if t == s:
                        hit = torch.triu(hit, diagonal=1)
                    ii, jj = torch.nonzero(hit, as_tuple=True)
                    total += int(ii.numel())
                    check_pair_count(total, max_pairs, threshold)
                    out_s.append(sims[ii, jj].cpu().numpy())
                    out_i.append(ii.cpu().numpy().astype(np.int64) + s)
                    out_j.append(jj.cpu().numpy().astype(np.int64) + t)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    if not out_i:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32)
    return np.concatenate(out_i), np.concatenate(out_j), np.concatenate(out_s).astype(np.float32)
