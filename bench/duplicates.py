"""Near-duplicate detection on real images: ours vs imagededup, plus a dedup scale curve on synthetic vectors.

Datasets (real images, planted near-duplicates with recorded ground truth):

* ``photos`` — every real photograph that ships with scikit-learn (``load_sample_images``) and scikit-image
  (``skimage.data``, when installed), cut into a grid of non-overlapping crops.  Crops of one photograph are
  *distinct images of the same scene / texture* (hard negatives); a share of the crops get planted near-copies
  by JPEG recompression (quality 30-70), downscaling (0.5-0.8x), a small crop (keep 85-92% per side), a
  horizontal flip, and a colour jitter (brightness and saturation +-15-20%).
* ``digits`` — the demo dataset (``engine.demo.build_demo_dataset``: 64x64 digits; its own planted resize /
  JPEG / shift / brightness copies and byte-identical copies).
* ``shared:<name>`` — image folders under /work/shared/data/ when present (the same transforms are planted).

Methods, same files, same run:

* ``ours`` — effnet-lite0 embeddings (``engine.encoders``, the offline default) + our 64-bit pHash of the files
  + :func:`find_near_duplicates` (exact range search, pHash pairs within 2 bits, greedy complete-linkage sets,
  content-hash exact duplicates) at the default threshold; ``ours, embeddings only`` drops the pHash;
* ``imagededup PHash`` — perceptual hash, its default Hamming threshold 10;
* ``imagededup CNN`` — its default MobileNetV3 needs a weight download, impossible offline; reported as
  unavailable.  Instead ``imagededup CNN search (our effnet vectors)`` runs imagededup's cosine search on our
  vectors (``encoding_map``) at the same threshold, so the difference to ours is the grouping, not the features.

Scores are pair-level: predicted pairs (two files in one predicted set / duplicate list) vs true pairs (two files
in one planted group), precision / recall / F1, plus recall per transform.  A threshold sweep of ours (raw
above-threshold pairs and guarded sets) is the calibration behind ``DEFAULT_THRESHOLD``.

Scale curve: clustered synthetic unit vectors (128-d, 1% planted near-copies at cosine ~0.97, cluster members
at ~0.5) from 10k to 1M: exact range search (up to 100k), the approximate partitioned range search (k-means
partitions of ~1000, each row in its 2 nearest; recall of planted pairs and vs exact measured), grouping, and
the SemDeDup curve.

Usage::

    python bench/duplicates.py           # full run (~10 min on 2 cores)
    python bench/duplicates.py --quick   # photos + a digits subset, scale 10k-30k (~2 min)

Writes bench/results/duplicates.json and duplicates.md (``--quick``: duplicates_quick.*) and prints tables plus
the markdown table for the README.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from curate.engine.analyses.duplicates import (  # noqa: E402
    DEFAULT_HASH_DISTANCE,
    DEFAULT_THRESHOLD,
    file_perceptual_hashes,
    find_near_duplicates,
    group_near_duplicates,
    near_duplicate_pairs,
    semdedup_curve,
)

RESULTS = ROOT / "bench" / "results"
SHARED = Path("/work/shared/data")
TRANSFORMS = ("jpeg", "resize", "crop", "flip", "jitter")
SWEEP = (0.80, 0.85, 0.88, 0.90, 0.92, 0.93, 0.94, 0.95, 0.96, 0.97, 0.98)


# ------------------------------------------------------------------------------------------- datasets
def real_photos() -> list[tuple[str, np.ndarray]]:
    """(name, RGB uint8 array) of the photographs packaged with sklearn and (if installed) scikit-image."""
    from sklearn.datasets import load_sample_images

    data = load_sample_images()
    out = [(Path(f).stem, img) for f, img in zip(data.filenames, data.images)]
    try:
        import skimage.data as sd
    except ImportError:
        return out
    # natural photographs and textures only; 'cat' is the same picture as 'chelsea'
    for name in ("astronaut", "brick", "camera", "cell", "chelsea", "clock", "coffee", "coins", "grass", "gravel",
                 "hubble_deep_field", "immunohistochemistry", "moon", "retina", "rocket"):
        try:
            a = getattr(sd, name)()
        except Exception:  # some skimage images need a download: skip them offline
            continue
        if a.ndim == 2:
            a = np.repeat(a[..., None], 3, axis=2)
        out.append((name, np.ascontiguousarray(a[..., :3]).astype(np.uint8)))
    return out


def grid_crops(img: np.ndarray, parts: int = 3, min_side: int = 128) -> list[np.ndarray]:
    h, w = img.shape[:2]
    side = max(min_side, min(h, w) // parts)
    return [img[y:y + side, x:x + side] for y in range(0, h - side + 1, side) for x in range(0, w - side + 1, side)]


def plant(img, how: str, rng: np.random.Generator):
    """A near-duplicate of ``img`` (PIL RGB); returns (image, file extension, JPEG quality or None)."""
    from PIL import Image, ImageEnhance

    if how == "jpeg":
        q = int(rng.integers(30, 71))
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=q)
        return Image.open(io.BytesIO(buf.getvalue())).convert("RGB"), ".jpg", q
    if how == "resize":
        s = float(rng.uniform(0.5, 0.8))
        return img.resize((max(16, int(img.width * s)), max(16, int(img.height * s))), Image.BICUBIC), ".png", None
    if how == "crop":
        kw, kh = rng.uniform(0.85, 0.92, size=2)
        cw, ch = int(img.width * kw), int(img.height * kh)
        x, y = int(rng.integers(0, img.width - cw + 1)), int(rng.integers(0, img.height - ch + 1))
        return img.crop((x, y, x + cw, y + ch)), ".png", None
    if how == "flip":
        return img.transpose(Image.FLIP_LEFT_RIGHT), ".png", None
    if how == "jitter":
        out = ImageEnhance.Brightness(img).enhance(float(rng.uniform(0.85, 1.15)))
        return ImageEnhance.Color(out).enhance(float(rng.uniform(0.8, 1.2))), ".png", None
    raise ValueError(how)


def build_planted(bases: list, out_dir: Path, seed: int, plant_fraction: float = 0.4) -> dict:
    """Write ``bases`` (PIL images) and planted copies; returns files, truth groups and per-copy transform."""
    rng = np.random.default_rng(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    files, groups, copy_kind = [], [], {}
    for i, img in enumerate(bases):
        p = out_dir / f"base_{i:05d}.png"
        img.save(p)
        files.append(str(p))
    chosen = rng.choice(len(bases), size=int(round(plant_fraction * len(bases))), replace=False)
    for j, i in enumerate(chosen.tolist()):
        kinds = [TRANSFORMS[j % len(TRANSFORMS)]]
        if j % 4 == 3:  # every 4th original gets a second, different copy (sets of three)
            kinds.append(TRANSFORMS[(j + 2) % len(TRANSFORMS)])
        group = [i]
        for c, how in enumerate(kinds):
            img, ext, _ = plant(bases[i], how, rng)
            p = out_dir / f"copy_{i:05d}_{c}_{how}{ext}"
            img.save(p, "JPEG", quality=95) if ext == ".jpg" else img.save(p)
            copy_kind[len(files)] = how
            group.append(len(files))
            files.append(str(p))
        groups.append(group)
    return {"files": files, "groups": groups, "copy_kind": copy_kind}


def photos_dataset(work: Path, seed: int, quick: bool) -> dict:
    from PIL import Image

    bases = []
    for _, a in real_photos():
        for crop in grid_crops(a, parts=2 if quick else 3):
            bases.append(Image.fromarray(crop))
    ds = build_planted(bases, work / "photos", seed)
    ds["description"] = f"{len(bases)} crops of {len(real_photos())} packaged photographs + planted copies"
    return ds


def digits_dataset(work: Path, seed: int, quick: bool) -> dict:
    """The demo dataset's files and its recorded near/exact duplicate pairs as truth groups."""
    from PIL import Image

    from curate.engine.demo import build_demo_dataset

    truth = build_demo_dataset(work / "digits", seed=seed)
    paths = sorted({truth.abspath(p) for p in truth.true_label} - {truth.abspath(p) for p in truth.corrupt})
    pairs = [(truth.abspath(a), truth.abspath(b), kind) for kind, lst in (("near", truth.near_duplicates),
                                                                          ("exact", truth.exact_duplicates))
             for a, b in lst]
    if quick:  # every planted pair + 300 other images
        keep = {p for a, b, _ in pairs for p in (a, b)}
        rng = np.random.default_rng(seed)
        others = [p for p in paths if p not in keep]
        keep |= set(rng.choice(others, size=min(300, len(others)), replace=False).tolist())
        paths = sorted(keep)
    ok = []
    for p in paths:
        try:
            with Image.open(p) as im:
                im.load()
            ok.append(p)
        except Exception:
            continue
    pos = {p: k for k, p in enumerate(ok)}
    groups, copy_kind = {}, {}
    for a, b, kind in pairs:
        if a in pos and b in pos:
            groups.setdefault(pos[b], [pos[b]]).append(pos[a])
            stem = Path(a).stem
            copy_kind[pos[a]] = "exact" if kind == "exact" else _demo_kind(stem)
    return {"files": ok, "groups": list(groups.values()), "copy_kind": copy_kind,
            "description": f"demo digits ({len(ok)} files{', subset' if quick else ''})"}


def _demo_kind(stem: str) -> str:
    # the demo cycles resize / jpeg / shift / bright over its copies: copy<j> used kinds[j % 4]
    j = int(stem.rsplit("_copy", 1)[1])
    return ("resize", "jpeg", "shift", "bright")[j % 4]


def shared_datasets(work: Path, seed: int, limit: int) -> list[tuple[str, dict]]:
    """Image folders under /work/shared/data/ (if any), with planted copies."""
    from PIL import Image

    if not SHARED.is_dir():
        return []
    out = []
    exts = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
    for d in sorted(p for p in SHARED.iterdir() if p.is_dir()):
        files = sorted(p for p in d.rglob("*") if p.suffix.lower() in exts)[:limit]
        bases = []
        for f in files:
            try:
                bases.append(Image.open(f).convert("RGB"))
            except Exception:
                continue
        if len(bases) >= 20:
            ds = build_planted(bases, work / f"shared_{d.name}", seed)
            ds["description"] = f"{len(bases)} images from {d} + planted copies"
            out.append((f"shared:{d.name}", ds))
    return out


# ------------------------------------------------------------------------------------------- scoring
def true_pairs(groups: list[list[int]]) -> set[tuple[int, int]]:
    out = set()
    for g in groups:
        g = sorted(g)
        out |= {(a, b) for k, a in enumerate(g) for b in g[k + 1:]}
    return out


def set_pairs(members) -> set[tuple[int, int]]:
    return true_pairs([list(map(int, m)) for m in members])


def prf(pred: set, truth: set) -> dict:
    tp = len(pred & truth)
    p = tp / len(pred) if pred else 1.0
    r = tp / len(truth) if truth else 1.0
    return {"precision": round(p, 4), "recall": round(r, 4), "f1": round(2 * p * r / (p + r), 4) if p + r else 0.0,
            "predicted_pairs": len(pred), "true_pairs": len(truth), "tp": tp}


def per_transform_recall(pred: set, groups, copy_kind) -> dict:
    hits: dict[str, list[bool]] = {}
    for g in groups:
        orig = g[0]
        for c in g[1:]:
            hits.setdefault(copy_kind.get(c, "?"), []).append((min(orig, c), max(orig, c)) in pred)
    return {k: round(float(np.mean(v)), 3) for k, v in sorted(hits.items())}


# ------------------------------------------------------------------------------------------- methods
def embed_files(files: list[str], batch: int = 32) -> tuple[np.ndarray, float]:
    import torch
    from PIL import Image

    from curate.engine.encoders import get_encoder

    enc = get_encoder("effnet-lite0", device="auto")
    tf = enc.transform
    t0 = time.perf_counter()
    out = []
    for s in range(0, len(files), batch):
        ims = [tf(Image.open(f).convert("RGB")) for f in files[s:s + batch]]
        out.append(enc.encode_images(torch.stack(ims)).cpu().numpy())
    return np.concatenate(out).astype(np.float32), time.perf_counter() - t0


def file_hashes(files: list[str]) -> list[str]:
    return [hashlib.sha256(Path(f).read_bytes()).hexdigest() for f in files]


def run_ours(X: np.ndarray, hashes: list[str], threshold: float, files: list[str] | None = None,
             hash_distance: int = DEFAULT_HASH_DISTANCE) -> tuple[set, float]:
    """Our dedup: content hashes + embedding pairs (+ pHash pairs when ``files`` are given) + guarded sets."""
    t0 = time.perf_counter()
    ph = valid = None
    if files is not None:
        ph, valid = file_perceptual_hashes(files)
    sets = find_near_duplicates(X, threshold, content_hashes=hashes, perceptual_hashes=ph, hash_valid=valid,
                                hash_distance=hash_distance)
    return set_pairs(sets.members), time.perf_counter() - t0


def run_ours_with_pixels(X: np.ndarray, hashes: list[str], threshold: float, files: list[str],
                         hash_distance: int = DEFAULT_HASH_DISTANCE, k: int = 10) -> tuple[set, float, dict]:
    """What ``curate audit duplicates`` runs in memory: :func:`run_ours` plus the pixel check of close neighbours
    below the threshold (candidate pairs from the kNN graph, verified on 32 px signatures against a reference
    neighbour; :func:`candidate_pairs`, :func:`verify_pairs`)."""
    from curate.engine.analyses.duplicates import file_features, pixel_check_plan, verify_pairs
    from curate.indexes.knn import knn_graph

    t0 = time.perf_counter()
    graph = knn_graph(X, k=min(k, len(X) - 1))
    cand, reference, rows = pixel_check_plan(graph, threshold)
    ph, valid, sig, sig_ok = file_features(files, np.arange(len(files)), rows)
    verified, _ = verify_pairs(cand, sig, sig_ok, reference=reference)
    sets = find_near_duplicates(X, threshold, knn_graph=graph, content_hashes=hashes, perceptual_hashes=ph,
                                hash_valid=valid, hash_distance=hash_distance, verified_pairs=verified)
    return set_pairs(sets.members), time.perf_counter() - t0, {"pixel_candidates": len(cand),
                                                                "pixel_verified": len(verified)}


def run_phash(files: list[str], threshold: int = 10) -> tuple[set, float]:
    from imagededup.methods import PHash

    pos = {Path(f).name: k for k, f in enumerate(files)}
    ph = PHash(verbose=False)
    t0 = time.perf_counter()
    with _quiet():
        enc = {Path(f).name: ph.encode_image(image_file=f) for f in files}
        dups = ph.find_duplicates(encoding_map={k: v for k, v in enc.items() if v}, max_distance_threshold=threshold,
                                  search_method="brute_force_cython")
    secs = time.perf_counter() - t0
    return _dict_pairs(dups, pos), secs


def run_imagededup_cnn_search(files: list[str], X: np.ndarray, threshold: float) -> tuple[set, float]:
    from imagededup.methods import CNN

    pos = {Path(f).name: k for k, f in enumerate(files)}
    enc_map = {Path(f).name: X[k] for k, f in enumerate(files)}
    cnn = CNN.__new__(CNN)  # skip __init__: it downloads MobileNetV3 weights; we only use its search
    from imagededup.utils.logger import return_logger

    cnn.logger = return_logger("imagededup.cnn")
    cnn.verbose = 0
    t0 = time.perf_counter()
    with _quiet():
        dups = cnn.find_duplicates(encoding_map=enc_map, min_similarity_threshold=threshold, num_sim_workers=1)
    return _dict_pairs(dups, pos), time.perf_counter() - t0


@contextlib.contextmanager
def _quiet():
    """Silence imagededup's INFO logging and progress output during a timed call."""
    logging.disable(logging.INFO)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        logging.disable(logging.NOTSET)


def imagededup_cnn_available() -> str:
    """Whether imagededup's own CNN (MobileNetV3 weights) loads here."""
    try:
        import torch.hub

        cached = Path(torch.hub.get_dir()) / "checkpoints"
        if any(cached.glob("mobilenet_v3_small*")):
            return "available (weights cached)"
    except Exception:
        pass
    return "unavailable offline (needs a MobileNetV3 weight download)"


def _dict_pairs(dups: dict, pos: dict) -> set:
    out = set()
    for a, lst in dups.items():
        for b in lst:
            b = b[0] if isinstance(b, (tuple, list)) else b
            if a in pos and b in pos and a != b:
                i, j = pos[a], pos[b]
                out.add((min(i, j), max(i, j)))
    return out


def sweep(X: np.ndarray, hashes: list[str], truth: set, files: list[str]) -> list[dict]:
    """Ours at each threshold: raw embedding pairs, guarded sets, and guarded sets with pHash pairs."""
    allp = near_duplicate_pairs(X, min(SWEEP), method="exact")
    ph, valid = file_perceptual_hashes(files)
    rows = []
    for t in SWEEP:
        keep = allp.similarity >= t - 1e-6
        raw = set(zip(allp.i[keep].tolist(), allp.j[keep].tolist()))
        sets = find_near_duplicates(X, t, content_hashes=hashes)
        both = find_near_duplicates(X, t, content_hashes=hashes, perceptual_hashes=ph, hash_valid=valid)
        rows.append({"threshold": t, "pairs": prf(raw, truth), "sets": prf(set_pairs(sets.members), truth),
                     "sets_with_phash": prf(set_pairs(both.members), truth)})
    return rows


def evaluate_dataset(name: str, ds: dict, threshold: float) -> dict:
    files, groups = ds["files"], ds["groups"]
    truth = true_pairs(groups)
    print(f"[{name}] {ds['description']}: {len(files)} files, {len(truth)} true pairs", flush=True)
    hashes = file_hashes(files)
    X, t_embed = embed_files(files)
    res: dict = {"description": ds["description"], "files": len(files), "true_pairs": len(truth),
                 "planted_groups": len(groups), "methods": {}}
    pred, t_group, info = run_ours_with_pixels(X, hashes, threshold, files)
    res["methods"]["ours, as `curate audit duplicates` (+ pixel check)"] = {
        **prf(pred, truth), "seconds": round(t_embed + t_group, 3), "embed_seconds": round(t_embed, 3),
        "dedup_seconds": round(t_group, 4), "threshold": threshold, **info,
        "recall_by_transform": per_transform_recall(pred, groups, ds["copy_kind"])}
    pred, t_group = run_ours(X, hashes, threshold, files=files)
    res["methods"]["ours without the pixel check (effnet-lite0 + pHash<=2, guarded sets)"] = {
        **prf(pred, truth), "seconds": round(t_embed + t_group, 3), "embed_seconds": round(t_embed, 3),
        "dedup_seconds": round(t_group, 4), "threshold": threshold,
        "recall_by_transform": per_transform_recall(pred, groups, ds["copy_kind"])}
    pred, t_group = run_ours(X, hashes, threshold)
    res["methods"]["ours, embeddings only"] = {
        **prf(pred, truth), "seconds": round(t_embed + t_group, 3), "dedup_seconds": round(t_group, 4),
        "threshold": threshold, "recall_by_transform": per_transform_recall(pred, groups, ds["copy_kind"])}
    pred, secs = run_phash(files)
    res["methods"]["imagededup PHash (hamming<=10)"] = {
        **prf(pred, truth), "seconds": round(secs, 3),
        "recall_by_transform": per_transform_recall(pred, groups, ds["copy_kind"])}
    pred, secs = run_imagededup_cnn_search(files, X, threshold)
    res["methods"]["imagededup CNN search on our effnet vectors"] = {
        **prf(pred, truth), "seconds": round(t_embed + secs, 3), "search_seconds": round(secs, 4),
        "threshold": threshold, "recall_by_transform": per_transform_recall(pred, groups, ds["copy_kind"])}
    res["methods"]["imagededup CNN (MobileNetV3)"] = {"status": imagededup_cnn_available()}
    # similarity of planted pairs vs nearest distinct image: what the threshold must separate
    S = X @ X.T
    np.fill_diagonal(S, -1)
    in_truth = np.zeros_like(S, dtype=bool)
    for a, b in truth:
        in_truth[a, b] = in_truth[b, a] = True
    planted = np.array([S[a, b] for a, b in truth if hashes[a] != hashes[b]])
    distinct_nn = np.where(in_truth, -1, S).max(axis=1)
    res["similarity"] = {
        "planted_pairs_quantiles(5,25,50)": [round(float(q), 4) for q in np.quantile(planted, [0.05, 0.25, 0.5])]
        if len(planted) else [],
        "distinct_nearest_quantiles(50,99,max)": [round(float(q), 4) for q in np.quantile(distinct_nn, [0.5, 0.99, 1])],
    }
    res["sweep"] = sweep(X, hashes, truth, files)
    return res


# ------------------------------------------------------------------------------------------- scale curve
def synthetic(n: int, d: int = 128, dup_rate: float = 0.01, seed: int = 0) -> tuple[np.ndarray, set]:
    rng = np.random.default_rng(seed)
    n_dup = int(n * dup_rate)
    n_base = n - n_dup
    k = max(10, n_base // 1000)
    centers = rng.standard_normal((k, d), dtype=np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    X = np.empty((n, d), np.float32)
    for s in range(0, n_base, 200_000):  # in chunks to bound memory
        e = min(n_base, s + 200_000)
        X[s:e] = centers[rng.integers(0, k, e - s)] + rng.standard_normal((e - s, d), dtype=np.float32) / np.sqrt(d)
    X[:n_base] /= np.linalg.norm(X[:n_base], axis=1, keepdims=True)
    src = rng.choice(n_base, size=n_dup, replace=False)
    X[n_base:] = X[src] + 0.25 * rng.standard_normal((n_dup, d), dtype=np.float32) / np.sqrt(d)
    X[n_base:] /= np.linalg.norm(X[n_base:], axis=1, keepdims=True)
    truth = {(int(a), int(n_base + b)) for b, a in enumerate(src)}
    return X, truth


def scale_curve(sizes: list[int], exact_max: int, threshold: float = 0.9, seed: int = 0) -> list[dict]:
    rows = []
    for n in sizes:
        X, truth = synthetic(n, seed=seed)
        row: dict = {"n": n, "d": X.shape[1], "planted_pairs": len(truth)}
        if n <= exact_max:
            t0 = time.perf_counter()
            ex = near_duplicate_pairs(X, threshold, method="exact")
            row["exact_pairs_seconds"] = round(time.perf_counter() - t0, 2)
            ex_set = set(zip(ex.i.tolist(), ex.j.tolist()))
            row["exact_recall_planted"] = round(len(ex_set & truth) / len(truth), 4)
        t0 = time.perf_counter()
        ap = near_duplicate_pairs(X, threshold, method="partition", seed=seed)
        row["partition_pairs_seconds"] = round(time.perf_counter() - t0, 2)
        ap_set = set(zip(ap.i.tolist(), ap.j.tolist()))
        row["partition_recall_planted"] = round(len(ap_set & truth) / len(truth), 4)
        if n <= exact_max:
            row["partition_recall_vs_exact"] = round(len(ap_set & ex_set) / max(1, len(ex_set)), 4)
        t0 = time.perf_counter()
        sets = group_near_duplicates(X, ap, threshold)
        row["group_seconds"] = round(time.perf_counter() - t0, 2)
        row["sets"] = len(sets)
        row["total_seconds_partition"] = round(row["partition_pairs_seconds"] + row["group_seconds"], 2)
        t0 = time.perf_counter()
        curve = semdedup_curve(X, thresholds=(0.9, 0.95), seed=seed)
        row["semdedup_seconds"] = round(time.perf_counter() - t0, 2)
        row["semdedup_removed_at_0.9"] = int(curve.n_removed[0])
        row["semdedup_partitions"] = curve.n_partitions
        rows.append(row)
        print(f"  scale n={n:>9,d}: " + ", ".join(f"{k}={v}" for k, v in row.items() if k not in ("n", "d")), flush=True)
        del X
    return rows


# ------------------------------------------------------------------------------------------- output
def print_tables(result: dict) -> str:
    from rich.console import Console
    from rich.table import Table

    con = Console(width=170)
    t = Table(title="near-duplicate detection (pair-level)")
    for c in ("dataset", "method", "P", "R", "F1", "seconds", "recall by transform"):
        t.add_column(c)
    md = ["| dataset | method | precision | recall | F1 | seconds | recall by transform |", "|---|---|---|---|---|---|---|"]
    for dname, ds in result["datasets"].items():
        for m, r in ds["methods"].items():
            if "precision" not in r:
                t.add_row(dname, m, "-", "-", "-", "-", r.get("status", ""))
                md.append(f"| {dname} | {m} | - | - | - | - | {r.get('status', '')} |")
                continue
            rbt = ", ".join(f"{k} {v:.2f}" for k, v in r.get("recall_by_transform", {}).items())
            vals = (f"{r['precision']:.3f}", f"{r['recall']:.3f}", f"{r['f1']:.3f}", f"{r['seconds']:.2f}")
            t.add_row(dname, m, *vals, rbt)
            md.append(f"| {dname} | {m} | " + " | ".join(vals) + f" | {rbt} |")
    con.print(t)
    for dname, ds in result["datasets"].items():
        s = Table(title=f"threshold sweep, ours on {dname}: raw embedding pairs / guarded sets / sets + pHash<=2")
        for c in ("threshold", "pairs P", "pairs R", "pairs F1", "sets P", "sets R", "sets F1", "+pHash P",
                  "+pHash R", "+pHash F1"):
            s.add_column(c)
        for row in ds["sweep"]:
            p, q, b = row["pairs"], row["sets"], row["sets_with_phash"]
            s.add_row(f"{row['threshold']:.2f}", *(f"{v:.3f}" for v in (
                p["precision"], p["recall"], p["f1"], q["precision"], q["recall"], q["f1"],
                b["precision"], b["recall"], b["f1"])))
        con.print(s)
        con.print(f"  similarities on {dname}: {ds['similarity']}")
    if result.get("scale"):
        sc = Table(title="dedup scale curve (synthetic 128-d, 1% planted near-copies)")
        cols = ("n", "exact_pairs_seconds", "exact_recall_planted", "partition_pairs_seconds",
                "partition_recall_planted", "partition_recall_vs_exact", "group_seconds", "total_seconds_partition",
                "semdedup_seconds")
        for c in cols:
            sc.add_column(c.replace("_", " "))
        md2 = ["| n | exact pairs s | partitioned pairs s | partitioned recall (planted) | partitioned recall vs exact "
               "| grouping s | SemDeDup curve s |", "|---|---|---|---|---|---|---|"]
        for r in result["scale"]:
            sc.add_row(*(str(r.get(c, "-")) for c in cols))
            md2.append(f"| {r['n']:,} | {r.get('exact_pairs_seconds', '-')} | {r['partition_pairs_seconds']} | "
                       f"{r['partition_recall_planted']} | {r.get('partition_recall_vs_exact', '-')} | "
                       f"{r['group_seconds']} | {r['semdedup_seconds']} |")
        con.print(sc)
        md += [""] + md2
    return "\n".join(md)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="photos (2x2 crops) + digits subset, scale 10k-30k")
    ap.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD)
    ap.add_argument("--max-scale", type=int, default=None, help="largest synthetic size (default 1M; quick 30k)")
    ap.add_argument("--no-scale", action="store_true")
    ap.add_argument("--reuse-scale", action="store_true",
                    help="keep the scale curve already in the output JSON (it does not depend on the image datasets)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    out = args.out or RESULTS / ("duplicates_quick.json" if args.quick else "duplicates.json")
    result: dict = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
                    "cuda": torch.cuda.is_available()},
        "threshold": args.threshold, "quick": args.quick, "datasets": {},
    }
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="curate-dup-bench-") as tmp:
        work = Path(tmp)
        datasets = [("photos", photos_dataset(work, args.seed, args.quick)),
                    ("digits", digits_dataset(work, args.seed, args.quick))]
        shared = shared_datasets(work, args.seed, limit=500 if args.quick else 3000)
        if not shared:
            print(f"no image folders under {SHARED}; skipped", flush=True)
        for name, ds in datasets + shared:
            result["datasets"][name] = evaluate_dataset(name, ds, args.threshold)
    previous = json.loads(out.read_text()) if args.reuse_scale and out.exists() else {}
    if args.reuse_scale and previous.get("scale"):
        result["scale"] = previous["scale"]
        result["scale_reused_from_run_at"] = previous.get("finished_at", "earlier run")
        print(f"scale curve reused from {out}", flush=True)
    elif not args.no_scale:
        top = args.max_scale or (30_000 if args.quick else 1_000_000)
        sizes = [n for n in (10_000, 30_000, 100_000, 300_000, 1_000_000) if n <= top]
        print("scale curve ...", flush=True)
        result["scale"] = scale_curve(sizes, exact_max=100_000, seed=args.seed)
    result["seconds"] = round(time.perf_counter() - t_all, 1)
    result["finished_at"] = time.strftime("%Y-%m-%d %H:%M:%S")
    md = print_tables(result)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=str))
    out.with_suffix(".md").write_text(md + "\n")
    print("\nTable for docs/benchmarks.md:\n" + md)
    print(f"\nwrote {out} ({result['seconds']}s)")
    return result


if __name__ == "__main__":
    main()
