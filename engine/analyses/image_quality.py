"""Image-property issues (CleanVision-like): blurry, dark, bright, low information, odd aspect ratio, odd size,
grayscale.

Per-image statistics are cheap, computed once per sample from the file (PIL + NumPy on a copy downscaled to
the dataset's median longer side, at most ``WORK_SIZE`` pixels, never upscaled; JPEGs are decoded at reduced
size with ``Image.draft``; a thread pool over files) and stored in the ``image_stats`` table, so reruns only
read new samples.

Statistics (``image_stats`` columns)
-----------------------------------
``brightness``    mean luminance (Rec. 601 luma) in [0, 1]
``contrast``      standard deviation of luminance (RMS contrast)
``blur``          *sharpness*: variance of the 4-neighbour Laplacian of the luminance divided by the luminance
                  variance — the share of the image's energy at the highest spatial frequencies, independent of
                  contrast and (on the downscaled working copy) comparable across image sizes; higher = sharper
``entropy``       Shannon entropy of the 256-bin luminance histogram, bits (0 = constant, 8 = maximal)
``colorfulness``  Hasler & Süsstrunk colourfulness on [0, 1] RGB (0 for grey images)
``aspect_ratio``  width / height of the original file;  ``area`` width x height of the original file
``is_grayscale``  99% of pixels have a channel spread (max - min over R, G, B) of at most 3/255 after scaling the
                  image's 99th-percentile white level to 1 (at most 85x, so noise in a black image stays small)

Flag rules: relative to the dataset, with absolute floors
--------------------------------------------------------
Relative rules use the modified z-score ``z = 0.6745 (x - median) / MAD`` (MAD = median absolute deviation;
mean absolute deviation x 1.2533 when the MAD is 0), so a few bad images do not move the threshold.  Absolute
floors flag images that are bad by any standard, so that a dataset made mostly of dark images still reports
them (the relative rule alone would call them normal).  ``highlight = brightness + 2 contrast`` approximates the
brightest pixels and ``shadow = brightness - 2 contrast`` the darkest ones, so a dark-ink-on-white page is not
"bright" and a white-on-black digit is not "dark".

========================  ==========================================================  =========================
issue                     relative rule (z = ``z_threshold``, default 3.5)             absolute floor
========================  ==========================================================  =========================
``dark``                  z(highlight) < -z and highlight < 0.45                      highlight < 0.20
``bright``                z(shadow) > z and shadow > 0.75                             shadow > 0.92
``blurry``                z(log sharpness) < -z and < median / 8 (contrast > 0.02)    sharpness < 0.002
``low_information``       z(entropy) < -z and entropy < half the median               entropy < 0.5 bits
``odd_aspect_ratio``      z(log aspect) beyond +-z and >= 1.5x off the median aspect  long/short side >= 6
``odd_size``              z(log area) beyond +-z and >= 4x off the median area        shorter side < 16 px
``grayscale``             grey image while grey images are < 50% of the dataset       (none)
========================  ==========================================================  =========================

Scores follow cleanlab's convention: in [0, 1], lower = worse.  ``image_issues`` holds one row per flagged
(sample, issue) with that issue's score.

The registered analysis ``image_quality`` (:func:`compute`, options :class:`ImageQualityConfig`) reads only the
files; its run writes the newly measured ``image_stats`` rows and the whole ``image_issues`` table in one
transaction.  :func:`run` is the same through keyword arguments.
"""

from __future__ import annotations

import dataclasses
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np
import pandas as pd
from PIL import Image

from curate.engine.analyses.registry import Config, Result, register
from curate.engine.analyses.registry import run as registry_run
from curate.engine.catalog import Catalog, CurateError

WORK_SIZE = 256
STAT_COLUMNS = ("brightness", "contrast", "blur", "entropy", "colorfulness", "aspect_ratio", "area", "is_grayscale")
ISSUE_TYPES = ("dark", "bright", "blurry", "low_information", "odd_aspect_ratio", "odd_size", "grayscale")


@dataclass(frozen=True)
class ImageQualityConfig(Config):
    """Thresholds of the image-property issues (see the module doc for the rules), and how the statistics are read.

    ``workers``: threads reading images (None: ``min(8, CPUs)``); ``recompute``: measure again the images that
    already have statistics; ``max_side``: side of the working copy (None: :func:`working_side` of the dataset).
    """

    z_threshold: float = 3.5
    dark_abs: float = 0.20
    dark_rel_max: float = 0.45
    bright_abs: float = 0.92
    bright_rel_min: float = 0.75
    blur_abs: float = 0.002
    blur_rel_factor: float = 8.0
    blur_min_contrast: float = 0.02
    low_info_abs: float = 0.5
    low_info_rel_fraction: float = 0.5
    aspect_abs: float = 6.0
    aspect_rel_min: float = 1.5
    size_rel_min: float = 4.0
    size_min_side: float = 16.0
    grayscale_max_fraction: float = 0.5
    workers: int | None = None
    recompute: bool = False
    max_side: int | None = None

    def validate(self) -> None:
        if not float(self.z_threshold) > 0:
            raise CurateError(f"image-quality z_threshold must be > 0, got {self.z_threshold}; try 3.5")
        for name in ("blur_rel_factor", "aspect_abs", "aspect_rel_min", "size_rel_min"):
            if not float(getattr(self, name)) >= 1.0:
                raise CurateError(f"image-quality {name} is a ratio and must be >= 1, got {getattr(self, name)}")
        for name in ("dark_abs", "dark_rel_max", "bright_abs", "bright_rel_min", "blur_abs", "blur_min_contrast",
                     "low_info_rel_fraction", "grayscale_max_fraction"):
            if not float(getattr(self, name)) >= 0.0:
                raise CurateError(f"image-quality {name} must be >= 0, got {getattr(self, name)}")
        if self.workers is not None and int(self.workers) < 1:
            raise CurateError(f"workers must be at least 1, got {self.workers}; try --workers 4")
        if self.max_side is not None and int(self.max_side) < 8:
            raise CurateError(f"max_side must be at least 8 pixels, got {self.max_side}; try 256")


# ------------------------------------------------------------------------------------------- statistics
def _to_rgb_array(image: Image.Image | np.ndarray) -> np.ndarray:
    """float32 RGB array in [0, 1], shape (h, w, 3)."""
    if isinstance(image, Image.Image):
        if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
            a = np.asarray(image, dtype=np.float32)
            hi = float(a.max()) if a.size else 1.0
            a = a / (65535.0 if hi > 255 else 255.0)
            return np.repeat(np.clip(a, 0, 1)[..., None], 3, axis=2)
        if image.mode != "RGB":
            image = image.convert("RGB")
        return np.asarray(image, dtype=np.float32) / 255.0
    a = np.asarray(image)
    scale = 255.0 if a.dtype == np.uint8 or (a.size and float(np.max(a)) > 1.0) else 1.0
    a = a.astype(np.float32) / scale
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    elif a.ndim == 3 and a.shape[2] == 4:
        a = a[..., :3]
    elif a.ndim == 3 and a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    if a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"expected an image array of shape (h, w), (h, w, 3) or (h, w, 4), got {a.shape}")
    return np.clip(a, 0.0, 1.0)


def _downscale(image: Image.Image | np.ndarray, max_side: int) -> Image.Image | np.ndarray:
    if isinstance(image, Image.Image):
        if max(image.size) > max_side:
            image = image.copy()
            image.thumbnail((max_side, max_side), Image.BILINEAR)
        return image
    a = np.asarray(image)
    h, w = a.shape[:2]
    if max(h, w) > max_side:
        pil = Image.fromarray(a if a.dtype == np.uint8 else (np.clip(a, 0, 1) * 255).astype(np.uint8))
        pil.thumbnail((max_side, max_side), Image.BILINEAR)
        return pil
    return a


def image_statistics(image: Image.Image | np.ndarray, size: tuple[int, int] | None = None,
                     max_side: int = WORK_SIZE) -> dict[str, Any]:
    """Cheap per-image statistics (see the module doc for their definitions).

    Parameters
    ----------
    image : PIL image or array (h, w[, c]) — uint8 0..255 or float 0..1.
    size : (width, height) of the original file when ``image`` is already a reduced copy; default: its own size.
    max_side : the statistics are computed on a copy at most this many pixels a side.

    Returns
    -------
    dict with keys ``brightness, contrast, blur, entropy, colorfulness, aspect_ratio, area, is_grayscale``.
    """
    if size is None:
        if isinstance(image, Image.Image):
            size = image.size
        else:
            size = (np.asarray(image).shape[1], np.asarray(image).shape[0])
    w, h = int(size[0]), int(size[1])
    rgb = _to_rgb_array(_downscale(image, max_side))
    R, G, B = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    lum = 0.299 * R + 0.587 * G + 0.114 * B
    brightness = float(lum.mean())
    variance = float(lum.var())
    contrast = math.sqrt(variance)
    if lum.shape[0] >= 3 and lum.shape[1] >= 3:
        lap = (lum[1:-1, :-2] + lum[1:-1, 2:] + lum[:-2, 1:-1] + lum[2:, 1:-1] - 4.0 * lum[1:-1, 1:-1])
        sharpness = float(lap.var()) / variance if variance > 1e-10 else 0.0
    else:
        sharpness = 0.0
    hist = np.bincount(np.clip(np.rint(lum * 255), 0, 255).astype(np.int64).ravel(), minlength=256).astype(np.float64)
    p = hist[hist > 0] / hist.sum()
    entropy = float(-(p * np.log2(p)).sum()) + 0.0
    rg = R - G
    yb = 0.5 * (R + G) - B
    colorfulness = float(math.sqrt(rg.std() ** 2 + yb.std() ** 2) + 0.3 * math.sqrt(rg.mean() ** 2 + yb.mean() ** 2))
    # channel spread relative to the image's own white level, so a dim but tinted image is not called grey
    top = rgb.max(axis=2)
    white = max(float(np.quantile(top, 0.99)), 1.0 / 255.0)
    spread = (top - rgb.min(axis=2)) * min(1.0 / white, 255.0 / 3.0)
    is_gray = bool(np.quantile(spread, 0.99) <= 3.0 / 255.0 + 1e-6)
    return {
        "brightness": brightness,
        "contrast": contrast,
        "blur": sharpness,
        "entropy": entropy,
        "colorfulness": colorfulness,
        "aspect_ratio": w / h if h else float("nan"),
        "area": float(w * h),
        "is_grayscale": is_gray,
    }


def file_statistics(path: str | os.PathLike, max_side: int = WORK_SIZE) -> dict[str, Any]:
    """:func:`image_statistics` of an image file, decoding JPEGs at reduced size."""
    from PIL import ImageOps

    from curate.engine.images import upright_size

    with Image.open(path) as im:
        size = upright_size(im)  # as displayed: a portrait photo stored sideways with an EXIF rotation is portrait
        im.draft("RGB", (max_side, max_side))  # JPEG: decode at 1/2..1/8 scale; other formats ignore it
        im.load()
        return image_statistics(ImageOps.exif_transpose(im), size=size, max_side=max_side)


def compute_statistics(paths: Iterable[str], workers: int | None = None, max_side: int = WORK_SIZE,
                       progress=False) -> tuple[list[dict | None], list[str | None]]:
    """:func:`file_statistics` over many files with a thread pool (PIL decoding and NumPy release the GIL).

    ``progress``: True (a bar) or an :data:`engine.progress.Progress` callback told of each file.

    Returns per-path stats (None when the file cannot be read) and per-path error messages.
    """
    paths = list(paths)
    workers = workers or min(8, (os.cpu_count() or 2))

    def one(p: str):
        try:
            return file_statistics(p, max_side=max_side), None
        except Exception as exc:  # a file that vanished or broke after ingest must not stop the run
            return None, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"

    with ThreadPoolExecutor(max_workers=workers) as pool:
        from curate.engine.progress import track

        out = list(track(pool.map(one, paths), "image stats", len(paths), progress))
    return [r[0] for r in out], [r[1] for r in out]


# ------------------------------------------------------------------------------------------- issue rules
def robust_z(x: np.ndarray) -> np.ndarray:
    """Modified z-score ``0.6745 (x - median) / MAD``; when the MAD is 0, ``(x - median) / (1.2533 mean|x - median|)``.

    All-equal (or non-finite) values get z = 0.
    """
    x = np.asarray(x, dtype=np.float64)
    out = np.zeros_like(x)
    ok = np.isfinite(x)
    if not ok.any():
        return out
    med = np.median(x[ok])
    dev = np.abs(x[ok] - med)
    mad = np.median(dev)
    if mad > 1e-12:
        out[ok] = 0.6745 * (x[ok] - med) / mad
    else:
        mean_ad = dev.mean()
        if mean_ad > 1e-12:
            out[ok] = (x[ok] - med) / (1.2533 * mean_ad)
    return out


def score_image_issues(stats: pd.DataFrame, config: ImageQualityConfig | None = None) -> tuple[pd.DataFrame, dict]:
    """Per-sample score and flag for every issue type (a wide table, Datalab-style).

    Parameters
    ----------
    stats : DataFrame with ``sample_id`` and the ``STAT_COLUMNS``.
    config : thresholds (defaults: :class:`ImageQualityConfig`).

    Returns
    -------
    (wide DataFrame with ``sample_id``, ``<issue>_score`` and ``is_<issue>_issue`` per issue type,
     dict of the dataset-level medians and cutoffs used)
    """
    cfg = config or ImageQualityConfig()
    missing = [c for c in ("sample_id",) + STAT_COLUMNS if c not in stats.columns]
    if missing:
        raise ValueError(f"image statistics lack columns {missing}")
    s = stats.reset_index(drop=True)
    z = cfg.z_threshold
    out = pd.DataFrame({"sample_id": s["sample_id"].to_numpy(np.int64)})
    if s.empty:
        for issue in ISSUE_TYPES:
            out[f"{issue}_score"] = pd.Series(dtype=float)
            out[f"is_{issue}_issue"] = pd.Series(dtype=bool)
        return out, {}
    bright = s["brightness"].to_numpy(float)
    contrast = s["contrast"].to_numpy(float)
    sharp = s["blur"].to_numpy(float)
    ent = s["entropy"].to_numpy(float)
    aspect = s["aspect_ratio"].to_numpy(float)
    area = s["area"].to_numpy(float)
    gray = s["is_grayscale"].fillna(False).to_numpy(bool)
    colorful = s["colorfulness"].to_numpy(float)
    info: dict[str, Any] = {}

    highlight = np.clip(bright + 2 * contrast, 0, 1)
    zh = robust_z(highlight)
    out["dark_score"] = highlight
    out["is_dark_issue"] = (highlight < cfg.dark_abs) | ((zh < -z) & (highlight < cfg.dark_rel_max))
    info["median_highlight"] = float(np.median(highlight))

    shadow = np.clip(bright - 2 * contrast, 0, 1)
    zs = robust_z(shadow)
    out["bright_score"] = 1.0 - shadow
    out["is_bright_issue"] = (shadow > cfg.bright_abs) | ((zs > z) & (shadow > cfg.bright_rel_min))
    info["median_shadow"] = float(np.median(shadow))

    has_content = contrast > cfg.blur_min_contrast
    log_sharp = np.log(np.maximum(sharp, 1e-9))
    zb = np.zeros(len(s))
    if has_content.any():
        zb[has_content] = robust_z(log_sharp[has_content])
    med_sharp = float(np.median(sharp[has_content])) if has_content.any() else float("nan")
    out["blurry_score"] = sharp / (sharp + med_sharp) if np.isfinite(med_sharp) and med_sharp > 0 else np.ones(len(s))
    rel_blurry = (zb < -z) & (sharp < med_sharp / cfg.blur_rel_factor) if np.isfinite(med_sharp) else False
    out["is_blurry_issue"] = has_content & ((sharp < cfg.blur_abs) | rel_blurry)
    info["median_sharpness"] = med_sharp
    if has_content.sum() > 1:
        lm = np.median(log_sharp[has_content])
        mad = np.median(np.abs(log_sharp[has_content] - lm))
        rel_cut = min(math.exp(lm - z * mad / 0.6745) if mad > 0 else 0.0, med_sharp / cfg.blur_rel_factor)
        info["blurry_below_sharpness"] = float(max(cfg.blur_abs, rel_cut))

    ze = robust_z(ent)
    med_ent = float(np.median(ent))
    out["low_information_score"] = np.clip(ent / 8.0, 0, 1)
    out["is_low_information_issue"] = (ent < cfg.low_info_abs) | ((ze < -z) & (ent < cfg.low_info_rel_fraction * med_ent))
    info["median_entropy"] = med_ent

    log_a = np.log(np.where(aspect > 0, aspect, np.nan))
    med_a = float(np.nanmedian(log_a)) if np.isfinite(log_a).any() else 0.0
    za = robust_z(log_a)
    dev_a = np.abs(log_a - med_a)
    out["odd_aspect_ratio_score"] = np.nan_to_num(np.exp(-dev_a), nan=1.0)
    out["is_odd_aspect_ratio_issue"] = np.nan_to_num(
        ((np.abs(za) > z) & (dev_a >= math.log(cfg.aspect_rel_min))) | (np.abs(log_a) >= math.log(cfg.aspect_abs)),
        nan=0).astype(bool)
    info["median_aspect_ratio"] = float(math.exp(med_a))

    log_area = np.log(np.where(area > 0, area, np.nan))
    med_area = float(np.nanmedian(log_area)) if np.isfinite(log_area).any() else 0.0
    zr = robust_z(log_area)
    dev_r = np.abs(log_area - med_area)
    short_side = np.sqrt(np.where(aspect >= 1, area / aspect, area * aspect))
    out["odd_size_score"] = np.nan_to_num(np.exp(-dev_r / 2.0), nan=1.0)
    out["is_odd_size_issue"] = np.nan_to_num(
        ((np.abs(zr) > z) & (dev_r >= math.log(cfg.size_rel_min))) | (short_side < cfg.size_min_side), nan=0).astype(bool)
    info["median_area"] = float(math.exp(med_area))

    gray_fraction = float(gray.mean())
    out["grayscale_score"] = np.clip(colorful, 0, 1)
    out["is_grayscale_issue"] = gray & (gray_fraction < cfg.grayscale_max_fraction)
    info["grayscale_fraction"] = gray_fraction
    info["grayscale_flagged"] = bool(gray_fraction < cfg.grayscale_max_fraction)
    return out, info


def image_issues(stats: pd.DataFrame, config: ImageQualityConfig | None = None) -> pd.DataFrame:
    """Flagged (sample, issue) rows for the ``image_issues`` table: ``sample_id``, ``issue``, ``score``.

    Sorted by issue then score (worst first).  ``df.attrs["cutoffs"]`` holds the dataset-level medians and
    cutoffs that were used (see :func:`score_image_issues`).
    """
    wide, info = score_image_issues(stats, config)
    parts = []
    for issue in ISSUE_TYPES:
        flag = wide[f"is_{issue}_issue"].to_numpy(bool)
        if flag.any():
            parts.append(pd.DataFrame({"sample_id": wide["sample_id"].to_numpy(np.int64)[flag], "issue": issue,
                                       "score": wide[f"{issue}_score"].to_numpy(float)[flag]}))
    df = (pd.concat(parts, ignore_index=True) if parts
          else pd.DataFrame({"sample_id": pd.Series(dtype=np.int64), "issue": pd.Series(dtype=object),
                             "score": pd.Series(dtype=float)}))
    df = df.sort_values(["issue", "score", "sample_id"], kind="stable").reset_index(drop=True)
    df.attrs["cutoffs"] = info
    # cleanlab's dataset-level score of an issue type: the mean of every sample's score (flagged or not)
    # (a sample whose score could not be computed does not count; no scored sample at all gives 1.0)
    scores = {issue: wide[f"{issue}_score"].to_numpy(float) for issue in ISSUE_TYPES}
    df.attrs["mean_scores"] = {issue: float(np.mean(v[np.isfinite(v)])) if np.isfinite(v).any() else 1.0
                               for issue, v in scores.items()}
    return df


# ------------------------------------------------------------------------------------------- catalog wrapper
def working_side(widths: Iterable[float], heights: Iterable[float], cap: int = WORK_SIZE) -> int:
    """Side of the working copy: the dataset's median longer side, capped at ``cap`` (at least 8 px).

    Measuring every image at one common scale makes sharpness comparable across sizes: an image upscaled
    from a small original is brought back to the typical size instead of being called blurry.
    """
    w = np.asarray(list(widths), dtype=float)
    h = np.asarray(list(heights), dtype=float)
    longer = np.fmax(w, h)
    longer = longer[np.isfinite(longer) & (longer > 0)]
    if not len(longer):
        return cap
    return int(max(8, min(cap, np.median(longer))))


def compute(inputs: Any, config: ImageQualityConfig) -> Result:
    """Measure the images without statistics (all of them with ``recompute``) and flag image-property issues.

    Needs only the catalog and the files (no embeddings).  Samples whose file cannot be read any more are skipped
    and counted in the summary.  The result replaces the ``image_stats`` rows of the measured samples only
    (``Result.where``; the other rows are kept for the next run) and the whole ``image_issues`` table.
    """
    from curate.engine.progress import step

    cat = inputs.cat
    progress = inputs.progress if inputs.progress is not None else False
    samples = cat.samples("id, path, width, height")
    if samples.empty:
        raise CurateError("the project has no samples; run `curate ingest FOLDER` first")
    side = int(config.max_side or working_side(samples["width"], samples["height"]))
    stored = cat.query_df("SELECT s.* FROM image_stats s JOIN samples p ON p.id = s.sample_id ORDER BY s.sample_id")
    todo = samples if config.recompute else samples[~samples["id"].isin(stored["sample_id"])]
    stats_list, errors = compute_statistics(todo["path"].tolist(), workers=config.workers, max_side=side,
                                            progress=progress)
    rows = [dict(sample_id=int(sid), **st) for sid, st in zip(todo["id"], stats_list) if st is not None]
    unreadable = [(int(sid), p, e) for sid, p, e in zip(todo["id"], todo["path"], errors) if e is not None]
    new = pd.DataFrame(rows, columns=["sample_id", *STAT_COLUMNS])
    if len(new):
        new["is_grayscale"] = new["is_grayscale"].astype(bool)
    # every live sample's statistics as they will be stored: the new ones replace their stored rows
    kept = stored[~stored["sample_id"].isin(new["sample_id"])]
    if len(new) and len(kept):
        known = pd.concat([kept, new[kept.columns]], ignore_index=True)
    else:
        known = new if len(new) else kept
    known = known.sort_values("sample_id", kind="stable").reset_index(drop=True)
    with step(progress if callable(progress) else None, "issue rules"):
        issues = image_issues(known, config)
    counts = issues["issue"].value_counts().to_dict()
    summary = {
        "images": int(len(known)),
        "working_side": side,
        "stats_computed": int(len(new)),
        "unreadable": len(unreadable),
        "unreadable_examples": [{"sample_id": s, "path": p, "error": e} for s, p, e in unreadable[:20]],
        "issues": {k: int(counts.get(k, 0)) for k in ISSUE_TYPES},
        "samples_with_issues": int(issues["sample_id"].nunique()),
        "cutoffs": issues.attrs.get("cutoffs", {}),
        "mean_scores": issues.attrs.get("mean_scores", {}),
    }
    lines = [f"{summary['images']} images ({summary['stats_computed']} newly measured, {summary['unreadable']} "
             f"unreadable); {summary['samples_with_issues']} with at least one issue"]
    lines += [f"{issue}: {n} images" for issue, n in summary["issues"].items()]
    if not len(new):  # nothing measured: image_stats stays as it is
        return Result(summary, tables={"image_issues": issues}, lines=lines, detail=issues)
    return Result(summary, tables={"image_stats": new, "image_issues": issues}, lines=lines, detail=issues,
                  where=("sample_id IN (SELECT unnest(?))", [new["sample_id"].tolist()]))


ANALYSIS = register("image_quality", compute, config=ImageQualityConfig,
                    title="blurry, dark, bright, low-information, odd-sized and grayscale images",
                    tables=("image_issues", "image_stats"), needs=frozenset({"files"}), order=40)


def run(cat: Catalog, config: ImageQualityConfig | None = None, workers: int | None = None, recompute: bool = False,
        max_side: int | None = None, progress=False) -> dict:
    """Compute missing image statistics, flag image-property issues, write ``image_stats`` + ``image_issues``.

    The registry's runner does the work (:func:`curate.engine.analyses.registry.run` with :func:`compute`), in one
    transaction.  Statistics already in ``image_stats`` are reused unless ``recompute``; samples whose file cannot
    be read any more are skipped and counted in the summary.  ``config`` gives the thresholds; ``workers``,
    ``recompute`` and ``max_side`` (the working-copy side, default :func:`working_side` of the dataset), when
    given, override its fields.  ``progress``: True (a bar) or an :data:`engine.progress.Progress` callback.

    Returns
    -------
    dict : the run summary (counts per issue, cutoffs, unreadable files).
    """
    base = config or ImageQualityConfig()
    cfg = dataclasses.replace(base, workers=base.workers if workers is None else workers,
                              recompute=base.recompute or bool(recompute),
                              max_side=base.max_side if max_side is None else max_side)
    return registry_run(cat, ANALYSIS, cfg, progress=progress).summary


def worst_examples(cat: Catalog, per_issue: int = 3) -> pd.DataFrame:
    """The ``per_issue`` lowest-scoring samples of each flagged issue: issue, sample_id, score, path."""
    return cat.query_df(
        """SELECT i.issue, i.sample_id, i.score, s.path FROM image_issues i JOIN samples s ON s.id = i.sample_id
           QUALIFY row_number() OVER (PARTITION BY i.issue ORDER BY i.score, i.sample_id) <= ?
           ORDER BY i.issue, i.score, i.sample_id""", [int(per_issue)])
