"""The embedded demo dataset: real handwritten digits with planted, recorded problems.

``build_demo_dataset`` writes the 1,797 digits of ``sklearn.datasets.load_digits`` as 64x64 RGB PNG files (dark
ink on a lightly tinted page) in an ImageFolder tree, then plants problems whose ground truth is recorded in
``ground_truth.json`` so every run can score itself:

* label noise: ~8% of labeled images are filed under a wrong class folder;
* near-duplicates: ~3% of images get a resized / JPEG-recompressed / shifted / brightened copy, a third of them
  in the other split (train/test leakage);
* exact duplicates: byte-identical copies under another name;
* corrupt files: zero-byte, truncated PNG/JPEG, a text file named ``.png``;
* outliers: crops of real photographs (sklearn's sample images) filed as digits;
* image-quality problems: very dark and heavily blurred digits;
* an unlabeled pool in ``unlabeled/``.

Everything is driven by one seed; the same seed writes byte-identical files.
"""

from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from curate.engine.catalog import Catalog, CurateError

SIZE = 64
# two outlier crops of one photo sharing at least this much of their pixels are near-duplicates: the overlap of the
# real-data bench's crop / translate copies (2-4 px off a 32 px photo keeps 77-88 % of it)
RECROP_SHARED_PIXELS = 0.75
DEMO_VERSION = 3  # 3: overlapping outlier crops recorded as near-duplicates, crop boxes recorded


@dataclass
class DemoTruth:
    """Recorded ground truth of a demo dataset; paths are relative to ``root``."""

    root: Path
    seed: int
    n_digits: int | None = None  # None = all 1,797 digits
    labeled_dir: str = "labeled"
    unlabeled_dir: str = "unlabeled"
    true_label: dict[str, str] = field(default_factory=dict)  # every valid image -> its true class
    label_noise: dict[str, str] = field(default_factory=dict)  # path -> given (wrong) label
    near_duplicates: list[tuple[str, str]] = field(default_factory=list)  # (copy, original)
    exact_duplicates: list[tuple[str, str]] = field(default_factory=list)  # (copy, original)
    leakage: list[tuple[str, str]] = field(default_factory=list)  # near/exact pairs that cross splits
    corrupt: list[str] = field(default_factory=list)
    outliers: list[str] = field(default_factory=list)
    outlier_crops: dict[str, list[int]] = field(default_factory=dict)  # outlier -> [photo, y, x, size] of its crop
    dark: list[str] = field(default_factory=list)
    blurry: list[str] = field(default_factory=list)
    unlabeled: list[str] = field(default_factory=list)

    def abspath(self, rel: str) -> str:
        return str((self.root / rel).resolve())

    def to_json(self) -> dict:
        d = {k: v for k, v in self.__dict__.items() if k != "root"}
        d["version"] = DEMO_VERSION
        return d

    @classmethod
    def load(cls, root: str | Path) -> "DemoTruth":
        root = Path(root)
        data = json.loads((root / "ground_truth.json").read_text())
        data.pop("version", None)
        for k in ("near_duplicates", "exact_duplicates", "leakage"):
            data[k] = [tuple(p) for p in data[k]]
        return cls(root=root, **data)


def _render_digit(pix8: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """8x8 intensities (0..16) -> 64x64 RGB: dark ink on a lightly tinted page."""
    ink_alpha = np.asarray(Image.fromarray((pix8 * (255.0 / 16.0)).astype(np.uint8)).resize((SIZE, SIZE), Image.BICUBIC),
                           dtype=np.float32) / 255.0
    # near-neutral paper and ink with a little per-image tint: the digit's shape, not its colour, should
    # dominate what an encoder sees
    page = rng.uniform(228, 248) + rng.uniform(-5, 5, size=3)
    ink = rng.uniform(15, 55) + rng.uniform(-8, 8, size=3)
    rgb = page[None, None, :] * (1 - ink_alpha[..., None]) + ink[None, None, :] * ink_alpha[..., None]
    noise = rng.normal(0, 3.0, size=rgb.shape)
    return Image.fromarray(np.clip(rgb + noise, 0, 255).astype(np.uint8), "RGB")


def _near_copy(img: Image.Image, how: str, rng: np.random.Generator) -> tuple[Image.Image, str]:
    """A visually near-identical copy; returns (image, file extension)."""
    if how == "resize":
        s = int(rng.integers(80, 112))
        return img.resize((s, s), Image.BICUBIC), ".png"
    if how == "jpeg":
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=int(rng.integers(60, 85)))
        return Image.open(io.BytesIO(buf.getvalue())).convert("RGB"), ".jpg"
    if how == "shift":
        dx, dy = (int(v) for v in rng.integers(-3, 4, size=2))
        arr = np.asarray(img)
        fill = arr[0, 0]
        out = np.empty_like(arr)
        out[:] = fill
        h, w = arr.shape[:2]
        out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = arr[max(-dy, 0):h - max(dy, 0), max(-dx, 0):w - max(dx, 0)]
        return Image.fromarray(out), ".png"
    if how == "bright":
        arr = np.asarray(img).astype(np.float32) * float(rng.uniform(0.9, 1.1))
        return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)), ".png"
    raise ValueError(how)


def shared_pixels(a: tuple[int, int], b: tuple[int, int], size: int) -> float:
    """Fraction of a ``size`` x ``size`` crop at ``a`` = (y, x) that the same-size crop at ``b`` also covers."""
    return max(0, size - abs(a[0] - b[0])) * max(0, size - abs(a[1] - b[1])) / size ** 2


def build_demo_dataset(out_dir: str | Path, seed: int = 0, noise_rate: float = 0.08, near_dup_rate: float = 0.03,
                       n_unlabeled: int = 300, n_test: int = 250, n_digits: int | None = None) -> DemoTruth:
    """Write the demo dataset to ``out_dir`` (idempotent for the same seed and size) and return its ground truth.

    ``n_digits`` uses a seeded subset of the 1,797 digits (the unlabeled pool and test split shrink in proportion)
    for quick runs; the planted outliers, exact duplicates, corrupt, dark and blurry files keep their counts.
    """
    from sklearn.datasets import load_digits, load_sample_images

    root = Path(out_dir).expanduser().resolve()
    gt = root / "ground_truth.json"
    if gt.exists():
        try:
            truth = DemoTruth.load(root)
            meta = json.loads(gt.read_text())
            if truth.seed == seed and meta.get("version") == DEMO_VERSION and meta.get("n_digits") == n_digits:
                return truth
        except Exception:
            pass  # unreadable truth: rebuild below
        raise CurateError(f"{root} holds a different demo dataset (seed/version); delete it or choose another --data folder")
    if root.exists() and any(root.iterdir()):
        raise CurateError(f"{root} is not empty; choose an empty or new folder for the demo data")

    rng = np.random.default_rng(seed)
    digits = load_digits()
    n = len(digits.target)
    order = rng.permutation(n)
    if n_digits is not None:
        if not 100 <= n_digits <= n:
            raise CurateError(f"demo size {n_digits} is out of range; pick 100..{n} digits")
        order = order[:n_digits]
        n_unlabeled = int(round(n_unlabeled * n_digits / n))
        n_test = int(round(n_test * n_digits / n))
        n = n_digits
    unl_idx, test_idx, train_idx = order[:n_unlabeled], order[n_unlabeled:n_unlabeled + n_test], order[n_unlabeled + n_test:]
    truth = DemoTruth(root=root, seed=seed, n_digits=n_digits)
    images: dict[int, Image.Image] = {int(i): _render_digit(digits.images[i], rng) for i in sorted(order.tolist())}
    classes = [str(c) for c in range(10)]

    labeled_idx = np.concatenate([train_idx, test_idx])
    n_noisy = int(round(noise_rate * len(labeled_idx)))
    noisy = set(rng.choice(labeled_idx, size=n_noisy, replace=False).tolist())
    split_of = {int(i): "train" for i in train_idx} | {int(i): "test" for i in test_idx}

    # image-quality plants (disjoint from noisy ones so each truth set is clean)
    clean_pool = np.array([i for i in labeled_idx if i not in noisy])
    qual = rng.choice(clean_pool, size=12, replace=False)
    dark, blurry = set(qual[:6].tolist()), set(qual[6:].tolist())

    def rel_for(i: int, label: str, split: str, suffix: str = "", ext: str = ".png") -> str:
        return f"{truth.labeled_dir}/{split}/{label}/digit_{i:04d}{suffix}{ext}"

    paths: dict[int, str] = {}
    for i in labeled_idx.tolist():
        true = classes[digits.target[i]]
        given = true
        if i in noisy:
            given = classes[int(rng.choice([c for c in range(10) if c != digits.target[i]]))]
        img = images[i]
        if i in dark:
            img = Image.fromarray((np.asarray(img).astype(np.float32) * 0.12).astype(np.uint8))
        elif i in blurry:
            img = img.filter(ImageFilter.GaussianBlur(radius=5))
        rel = rel_for(i, given, split_of[i])
        _save(root / rel, img)
        paths[i] = rel
        truth.true_label[rel] = true
        if i in noisy:
            truth.label_noise[rel] = given
        if i in dark:
            truth.dark.append(rel)
        if i in blurry:
            truth.blurry.append(rel)
    for i in unl_idx.tolist():
        rel = f"{truth.unlabeled_dir}/digit_{i:04d}.png"
        _save(root / rel, images[i])
        truth.true_label[rel] = classes[digits.target[i]]
        truth.unlabeled.append(rel)

    # near-duplicates of clean labeled images; a third go to the other split (leakage)
    plain = [i for i in clean_pool.tolist() if i not in dark and i not in blurry]
    n_near = int(round(near_dup_rate * n))
    originals = rng.choice(plain, size=n_near, replace=False).tolist()
    kinds = ["resize", "jpeg", "shift", "bright"]
    for j, i in enumerate(originals):
        label = classes[digits.target[i]]
        split = split_of[i]
        if j % 3 == 0:
            split = "test" if split == "train" else "train"
        copy, ext = _near_copy(images[i], kinds[j % len(kinds)], rng)
        rel = rel_for(i, label, split, suffix=f"_copy{j}", ext=ext)
        _save(root / rel, copy, ext)
        truth.true_label[rel] = label
        truth.near_duplicates.append((rel, paths[i]))
        if split != split_of[i]:
            truth.leakage.append((rel, paths[i]))

    # exact duplicates: byte copies under another name
    rest = [i for i in plain if i not in set(originals)]
    for j, i in enumerate(rng.choice(rest, size=5, replace=False).tolist()):
        src = paths[i]
        rel = src.replace(".png", f"_dup{j}.png")
        (root / rel).write_bytes((root / src).read_bytes())
        truth.true_label[rel] = classes[digits.target[i]]
        truth.exact_duplicates.append((rel, src))

    # outliers: crops of real photographs filed under digit classes
    photos = load_sample_images().images
    for j in range(8):
        ph = photos[j % len(photos)]
        y, x = int(rng.integers(0, ph.shape[0] - 200)), int(rng.integers(0, ph.shape[1] - 200))
        crop = Image.fromarray(ph[y:y + 200, x:x + 200]).resize((SIZE, SIZE), Image.BICUBIC)
        rel = f"{truth.labeled_dir}/train/{classes[int(rng.integers(0, 10))]}/photo_{j}.png"
        _save(root / rel, crop)
        truth.outliers.append(rel)
        # two crops of one photo that share most of their pixels (RECROP_SHARED_PIXELS) are a re-crop of one
        # picture: a real near-duplicate pair, recorded as such (the random boxes are not planted to overlap, but may)
        for other in truth.outliers[:-1]:
            pi, yi, xi, _ = truth.outlier_crops[other]
            if pi == j % len(photos) and shared_pixels((y, x), (yi, xi), 200) >= RECROP_SHARED_PIXELS:
                truth.near_duplicates.append((rel, other))
        truth.outlier_crops[rel] = [j % len(photos), y, x, 200]

    # corrupt files
    sample_png = (root / paths[int(train_idx[0])]).read_bytes()
    buf = io.BytesIO()
    images[int(train_idx[1])].save(buf, "JPEG", quality=90)
    corrupt = {
        f"{truth.labeled_dir}/train/3/broken_zero.png": b"",
        f"{truth.labeled_dir}/train/5/broken_truncated.png": sample_png[: len(sample_png) // 2],
        f"{truth.labeled_dir}/train/7/broken_text.png": b"this is not an image\n",
        f"{truth.labeled_dir}/test/1/broken_truncated.jpg": buf.getvalue()[:300],
        f"{truth.labeled_dir}/train/8/broken_random.jpg": rng.integers(0, 256, 2048, dtype=np.uint8).tobytes(),
    }
    for rel, data in corrupt.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
        truth.corrupt.append(rel)

    tmp = gt.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(truth.to_json(), indent=1))
    tmp.replace(gt)
    return truth


def _save(path: Path, img: Image.Image, ext: str = ".png") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if ext == ".jpg":
        img.save(path, "JPEG", quality=92)
    else:
        img.save(path, "PNG", optimize=False)


# --------------------------------------------------------------------------------------------- scoring
def _pr(pred: set, true: set) -> dict:
    tp = len(pred & true)
    p = tp / len(pred) if pred else (1.0 if not true else 0.0)
    r = tp / len(true) if true else 1.0
    f1 = 2 * p * r / (p + r) if p + r else 0.0
    return {"flagged": len(pred), "planted": len(true), "tp": tp, "precision": p, "recall": r, "f1": f1}


def evaluate(cat: Catalog, truth: DemoTruth) -> dict[str, dict]:
    """Score every analysis present in the catalog against the demo's recorded ground truth."""
    A = truth.abspath
    by_path = dict(cat.query("SELECT path, id FROM samples"))
    id_to_path = {v: k for k, v in by_path.items()}
    tables = {r[0] for r in cat.query("SELECT table_name FROM information_schema.tables")}
    scores: dict[str, dict] = {}

    quarantined = {r[0] for r in cat.query("SELECT DISTINCT path FROM quarantine")}
    scores["corrupt files (quarantine)"] = _pr(quarantined, {A(p) for p in truth.corrupt})

    if "label_issues" in tables and cat.scalar("SELECT count(*) FROM label_issues"):
        # planted outliers (photos filed as digits) have no true digit label: left out of this score
        flagged = {id_to_path[r[0]] for r in cat.query("SELECT sample_id FROM label_issues WHERE is_issue")}
        flagged -= {A(p) for p in truth.outliers}
        noisy = {A(p) for p in truth.label_noise}
        s = _pr(flagged, noisy)
        sugg = dict(cat.query("SELECT sample_id, suggested_label FROM label_issues WHERE is_issue"))
        hits = [p for p in flagged & noisy]
        s["suggested_label_accuracy"] = (
            float(np.mean([sugg[by_path[p]] == truth.true_label[_rel(truth, p)] for p in hits])) if hits else float("nan")
        )
        scores["label issues"] = s

    if cat.scalar("SELECT count(*) FROM duplicates"):
        def pairs(kind: str, cross_only: bool = False) -> set:
            q = "SELECT set_id, sample_id FROM duplicates WHERE kind = ?" + (" AND crosses_splits" if cross_only else "")
            sets: dict[int, list[int]] = {}
            for sid, smp in cat.query(q, [kind]):
                sets.setdefault(sid, []).append(smp)
            out = set()
            for members in sets.values():
                ps = sorted(id_to_path[m] for m in members)
                out |= {(a, b) for ai, a in enumerate(ps) for b in ps[ai + 1:]}
            return out

        def truth_pairs(lst) -> set:
            return {tuple(sorted((A(a), A(b)))) for a, b in lst}

        scores["near-duplicates (pairs)"] = _pr(pairs("near"), truth_pairs(truth.near_duplicates))
        scores["exact duplicates (pairs)"] = _pr(pairs("exact"), truth_pairs(truth.exact_duplicates))
        leak_pred = set()
        for kind in ("near", "exact"):
            for a, b in pairs(kind):
                sa = cat.scalar("SELECT split FROM samples WHERE id = ?", [by_path[a]])
                sb = cat.scalar("SELECT split FROM samples WHERE id = ?", [by_path[b]])
                if sa is not None and sb is not None and sa != sb:  # unsplit (unlabeled pool) pairs are not leakage
                    leak_pred.add((a, b))
        scores["train/test leakage (pairs)"] = _pr(leak_pred, truth_pairs(truth.leakage))

    if cat.scalar("SELECT count(*) FROM outliers"):
        flagged = {id_to_path[r[0]] for r in cat.query("SELECT sample_id FROM outliers WHERE is_outlier")}
        s = _pr(flagged, {A(p) for p in truth.outliers})
        top = [id_to_path[r[0]] for r in cat.query("SELECT sample_id FROM outliers ORDER BY rank LIMIT ?", [len(truth.outliers)])]
        s["precision_at_planted"] = len(set(top) & {A(p) for p in truth.outliers}) / max(1, len(truth.outliers))
        scores["outliers"] = s

    if cat.scalar("SELECT count(*) FROM image_issues"):
        for issue, planted in (("dark", truth.dark), ("blurry", truth.blurry)):
            flagged = {id_to_path[r[0]] for r in cat.query("SELECT sample_id FROM image_issues WHERE issue = ?", [issue])}
            scores[f"image quality: {issue}"] = _pr(flagged, {A(p) for p in planted})

    if cat.scalar("SELECT count(*) FROM clusters"):
        rows = cat.query("SELECT sample_id, cluster FROM clusters")
        y_true, y_pred = [], []
        for sid, cl in rows:
            rel = _rel(truth, id_to_path[sid])
            if rel in truth.true_label and rel not in truth.outliers:
                y_true.append(truth.true_label[rel])
                y_pred.append(cl)
        if y_true:
            from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

            scores["clusters vs true digit"] = {
                "accuracy": _hungarian_acc(np.array(y_true), np.array(y_pred)),
                "nmi": float(normalized_mutual_info_score(y_true, y_pred)),
                "ari": float(adjusted_rand_score(y_true, y_pred)),
                "n": len(y_true),
            }
    return scores


def _rel(truth: DemoTruth, abspath: str) -> str:
    try:
        return Path(abspath).relative_to(truth.root.resolve()).as_posix()
    except ValueError:
        return abspath


def _hungarian_acc(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    from scipy.optimize import linear_sum_assignment

    t_vals, t_idx = np.unique(y_true, return_inverse=True)
    p_vals, p_idx = np.unique(y_pred, return_inverse=True)
    m = np.zeros((len(p_vals), len(t_vals)), dtype=np.int64)
    np.add.at(m, (p_idx, t_idx), 1)
    r, c = linear_sum_assignment(-m)
    return float(m[r, c].sum() / len(y_true))


# --------------------------------------------------------------------------------------------- the demo command
def run_demo(project: str | Path, data_dir: str | Path | None = None, seed: int = 0, encoder: str = "auto",
             console=None, n_digits: int | None = None) -> dict:
    """Build the demo data, ingest it, run the full audit and print a scored summary; returns the scores."""
    from rich.console import Console

    from curate.engine.catalog import init_project
    from curate.engine.ingest import ingest
    from curate.engine.pipeline import run_audit
    from curate.engine.report import print_scores

    console = console or Console()
    project = Path(project).expanduser().resolve()
    data_dir = Path(data_dir).expanduser().resolve() if data_dir else project / "demo-data"
    t0 = time.perf_counter()
    console.print(f"[bold]Curate demo[/]: digits dataset in {data_dir}, project {project}")
    truth = build_demo_dataset(data_dir, seed=seed, n_digits=n_digits)
    cat = init_project(project)
    cat.set_meta("demo_data", str(data_dir))
    for src, kind in ((data_dir / truth.labeled_dir, "imagefolder"), (data_dir / truth.unlabeled_dir, "unlabeled")):
        ingest(cat, src, kind=kind, progress=True).print(console)
    # the demo knows its data has 10 digit classes: cluster with k = 10 (`curate cluster` without --k sweeps k itself)
    n_classes = int(cat.scalar("SELECT count(*) FROM classes") or 0) or None
    timings = run_audit(cat, encoder=encoder, console=console, cluster_k=n_classes)
    scores = evaluate(cat, truth)
    print_scores(cat, scores, timings, console=console)
    console.print(f"demo finished in {time.perf_counter() - t0:.1f}s")
    (project / "demo_scores.json").write_text(json.dumps({"scores": scores, "timings": timings}, indent=1, default=float))
    return scores
