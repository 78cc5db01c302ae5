"""A small, real project for the UI and export tests: PNG files ingested with engine.ingest, and analysis rows
written through ``Catalog.replace_analysis`` (the write path the analyses use)."""

from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from curate.engine.catalog import Catalog, init_project, open_project, utcnow
from curate.engine.ingest import ingest

CLASSES = ("bird", "cat", "dog")
COLOURS = {"bird": (200, 60, 60), "cat": (60, 200, 60), "dog": (60, 60, 200)}


@dataclass
class UIProject:
    cat: Catalog
    data_dir: Path
    ids: dict[str, int]  # "<split>/<class>/<file>" or "pool/<file>" -> sample id
    flagged: list[int]  # label issues flagged (given != suggested)
    exact_set: list[int]  # keeper first
    near_set: list[int]  # keeper first, crosses splits
    outliers: list[int]
    dark: list[int]
    pool: list[int]  # unlabeled, queued for annotation
    missing: int  # a sample whose file was deleted after ingest


def _png(path: Path, rgb: tuple[int, int, int], seed: int, size: int = 40) -> None:
    rng = np.random.default_rng(seed)
    arr = np.clip(np.array(rgb)[None, None, :] + rng.integers(-40, 40, (size, size, 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, "RGB").save(path)


def build_ui_project(tmp: Path, per_class: int = 5) -> UIProject:
    """Write ``train``/``val`` ImageFolder PNGs plus an unlabeled pool, ingest them and add analysis results."""
    data = tmp / "data"
    seed = 0
    for split, n in (("train", per_class), ("val", 2)):
        for c in CLASSES:
            for i in range(n):
                _png(data / "labeled" / split / c / f"{c}_{i}.png", COLOURS[c], seed)
                seed += 1
    # an exact duplicate (same bytes) inside train/cat
    (data / "labeled" / "train" / "cat" / "cat_dup.png").write_bytes((data / "labeled" / "train" / "cat" / "cat_0.png").read_bytes())
    for i in range(4):
        _png(data / "pool" / f"u{i}.png", (128, 128, 128), 1000 + i)

    cat = init_project(tmp / "project")
    ingest(cat, data / "labeled", kind="imagefolder")
    ingest(cat, data / "pool", kind="unlabeled")
    s = cat.samples("id, path, split")
    ids = {str(Path(p).relative_to(data / "labeled")) if "labeled" in p else "pool/" + Path(p).name: int(i)
           for i, p in zip(s["id"], s["path"])}
    labels = cat.current_labels().dropna(subset=["label"])

    # label issues: every labelled sample scored; 4 flagged with another suggested label
    flagged = [ids["train/bird/bird_1.png"], ids["train/cat/cat_2.png"], ids["train/dog/dog_3.png"], ids["val/dog/dog_0.png"]]
    other = {"bird": "cat", "cat": "dog", "dog": "bird"}
    li = labels[["sample_id", "label"]].rename(columns={"label": "given_label"})
    li["is_issue"] = li["sample_id"].isin(flagged)
    li["suggested_label"] = np.where(li["is_issue"], li["given_label"].map(other), li["given_label"])
    li["suggested_confidence"] = np.where(li["is_issue"], 0.9, 0.8)
    li["label_quality"] = np.where(li["is_issue"], 0.05 + 0.01 * np.arange(len(li)) / len(li), 0.9)
    li = li.sort_values("label_quality").reset_index(drop=True)
    li["rank"] = np.arange(1, len(li) + 1)
    cat.replace_analysis("label_issues", li[["sample_id", "given_label", "suggested_label", "suggested_confidence",
                                             "label_quality", "is_issue", "rank"]], cat.start_run("label_issues"))

    exact_set = [ids["train/cat/cat_0.png"], ids["train/cat/cat_dup.png"]]
    near_set = [ids["train/dog/dog_1.png"], ids["train/dog/dog_2.png"], ids["val/dog/dog_1.png"]]
    dup = pd.DataFrame({
        "set_id": [1] * 2 + [2] * 3, "sample_id": exact_set + near_set,
        "kind": ["exact"] * 2 + ["near"] * 3, "similarity": [1.0, 1.0, 1.0, 0.97, 0.96],
        "is_keeper": [True, False, True, False, False], "crosses_splits": [False] * 2 + [True] * 3,
    })
    cat.replace_analysis("duplicates", dup, cat.start_run("duplicates"))

    all_ids = sorted(ids.values())
    outliers = [ids["train/bird/bird_4.png"], ids["pool/u3.png"]]
    out = pd.DataFrame({"sample_id": all_ids, "score": [0.1 if i in outliers else 0.8 for i in all_ids]})
    out["is_outlier"] = out["sample_id"].isin(outliers)
    out["rank"] = out["score"].rank(method="first").astype(int)
    cat.replace_analysis("outliers", out, cat.start_run("outliers"))

    dark = [ids["train/dog/dog_4.png"], ids["val/bird/bird_0.png"]]
    ii = pd.DataFrame({"sample_id": dark + [ids["train/cat/cat_3.png"]], "issue": ["dark", "dark", "blurry"],
                       "score": [0.05, 0.1, 0.2]})
    cat.replace_analysis("image_issues", ii, cat.start_run("image_quality"))

    rng = np.random.default_rng(0)
    lab = dict(zip(cat.current_labels()["sample_id"], cat.current_labels()["label"]))
    cl_of = {None: 3, "bird": 0, "cat": 1, "dog": 2}
    cl = pd.DataFrame({"sample_id": all_ids})
    cl["cluster"] = [cl_of[lab.get(i) if isinstance(lab.get(i), str) else None] for i in all_ids]
    cl["x"] = cl["cluster"] * 5.0 + rng.normal(0, 0.5, len(cl))
    cl["y"] = (cl["cluster"] % 2) * 5.0 + rng.normal(0, 0.5, len(cl))
    cl["distance"] = rng.uniform(0, 1, len(cl))
    run = cat.start_run("clusters")
    cat.replace_analysis("clusters", cl, run)
    cs = pd.DataFrame({"cluster": [0, 1, 2, 3], "size": cl["cluster"].value_counts().sort_index().tolist(),
                       "name": ["red things", "green things", "blue things", "grey pool"],
                       "majority_label": ["bird", "cat", "dog", None], "purity": [1.0, 1.0, 1.0, None],
                       "representatives": [[], [], [], []], "atypical": [[], [], [], []]})
    cat.replace_analysis("cluster_summaries", cs, cat.start_run("cluster_summaries"))

    pool = [ids[f"pool/u{i}.png"] for i in range(4)]
    q = pd.DataFrame({"batch_id": 1, "sample_id": pool, "strategy": "margin", "score": [0.9, 0.8, 0.7, 0.6],
                      "rank": [1, 2, 3, 4], "reason": "low margin between top-2 classes"})
    cat.replace_analysis("queries", q, cat.start_run("query"))
    preds = pd.DataFrame({"sample_id": pool, "probs": [[0.1, 0.7, 0.2]] * 4, "class_names": [list(CLASSES)] * 4,
                          "source": "test", "created_at": utcnow()})
    cat.append_rows("predictions", preds)

    missing = ids["train/bird/bird_3.png"]
    (data / "labeled" / "train" / "bird" / "bird_3.png").unlink()
    return UIProject(cat, data, ids, flagged, exact_set, near_set, outliers, dark, pool, missing)


def clone_project(template: UIProject, dest: Path) -> UIProject:
    """A private copy of a built project (same image files, own catalog): cheaper than building one per test."""
    shutil.copytree(template.cat.root, dest)
    return dataclasses.replace(template, cat=open_project(dest))


def build_audited_project(tmp: Path) -> UIProject:
    """:func:`build_ui_project`, then the real analyses over imported embeddings (label issues with the noise
    estimate, duplicates with the SemDeDup curve, outliers, image quality), so run summaries are what `curate audit`
    writes.  The vectors put each labelled image near its class, the flagged ones near another class, the members
    of each duplicate set on one point, and the first outlier far from everything."""
    from curate.engine.analyses import duplicates, image_quality, label_issues, outliers
    from curate.engine.byo import import_embeddings

    proj = build_ui_project(tmp)
    cat = proj.cat
    lab = cat.current_labels().set_index("sample_id")["label"]
    ids = np.array(sorted(proj.ids.values()), dtype=np.int64)
    rng = np.random.default_rng(0)
    axis = {c: i for i, c in enumerate(CLASSES)}
    vectors = rng.normal(0, 0.15, (len(ids), 16))
    for r, sid in enumerate(ids):
        label = lab.get(sid)
        vectors[r, axis[label] if isinstance(label, str) else len(CLASSES)] += 1.0
    other = {"bird": "cat", "cat": "dog", "dog": "bird"}
    for sid in proj.flagged:
        r = int(np.searchsorted(ids, sid))
        vectors[r, :4] = 0.0
        vectors[r, axis[other[lab[sid]]]] = 1.0
    for members in (proj.exact_set, proj.near_set):
        for sid in members[1:]:
            vectors[np.searchsorted(ids, sid)] = vectors[np.searchsorted(ids, members[0])] + rng.normal(0, 0.005, 16)
    vectors[np.searchsorted(ids, proj.outliers[0])] = rng.normal(0, 1, 16) * 3
    np.savez(tmp / "vectors.npz", vectors=vectors.astype(np.float32), ids=ids)
    import_embeddings(cat, tmp / "vectors.npz", encoder="byo:test")
    label_issues.run(cat, encoder="byo:test", n_folds=2)
    duplicates.run(cat, encoder="byo:test", threshold=0.95, k=5)
    outliers.run(cat, encoder="byo:test", k=5)
    image_quality.run(cat, workers=1)
    return proj
