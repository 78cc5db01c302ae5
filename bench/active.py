"""Active-learning simulation: every strategy from a cold start, a labeled dataset as the oracle, random as the
baseline in the same run.

Protocol (per dataset and seed):

1. a stratified split of the data into a pool (80%) and a test set (20%), seeded;
2. from zero labels, rounds with cumulative budgets of 1, 2, 5, 10 and 20 labels per class (``--quick``: 1, 2, 5):
   each round the strategy selects the increment from the unlabeled pool with
   :func:`engine.analyses.active.select`, the oracle reveals the true labels, and the same linear probe the
   product uses (:class:`engine.analyses.probe.LinearProbe` with ``active.PROBE_C``) is refit on all labels so far;
3. the score after each round is the probe's accuracy on the test set.

Strategies that need class probabilities (uncertainty, BADGE, margin-diversity) have no probe before the first
labels: their first round is the random baseline's own first batch (same seed, same samples), as is usual in the
active-learning literature.  ProbCover's pseudo-labelling uses the true number of classes (a project knows its
class list); nothing else about the labels is used before they are revealed.

Reported: mean (and std over seeds) test accuracy at each budget, the area under the accuracy-vs-labels curve
(``AUC``: mean accuracy over the budget points, i.e. the normalised area with the budgets equally spaced), and the
selection seconds.  A plot (matplotlib) goes to bench/results/active.png.

Datasets: ``synthetic`` (imbalanced Gaussian clusters, 10 classes, 64-d), ``digits`` (sklearn digits, centred raw
pixels, L2-normalised), ``demo`` (the demo PNG digits embedded with ``effnet-lite0``; built once, reused with
``--workdir``, shared with bench/clusters.py).

Usage::

    python bench/active.py                  # full run: 3 datasets x 3 seeds (~10-20 min on 2 shared cores)
    python bench/active.py --quick          # synthetic + digits, 1 seed, budgets 1/2/5 per class (~1-2 min)
    python bench/active.py --workdir /tmp/curate-bench   # reuse the demo project built by bench/clusters.py
    python bench/active.py --sweep-c        # random baseline at several probe C (how PROBE_C was chosen)

Writes bench/results/active.json (``--quick``: active_quick.json) and active.png (``--quick``: active_quick.png).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
for _p in (ROOT / "bench", ROOT):  # the engine package, and bench/clusters.py for the shared demo loader
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from curate.engine.analyses.active import NEEDS_PROBS, PROBE_C, STRATEGIES, StrategyConfig, select  # noqa: E402
from curate.engine.analyses.probe import LinearProbe  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "active.json"


def l2n(X: np.ndarray) -> np.ndarray:
    X = np.asarray(X, dtype=np.float32)
    return X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)


def synthetic(n: int = 2000, n_classes: int = 10, dim: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Imbalanced clusters (class weights 1 .. 0.15) with overlap: each class is a mixture of two nearby blobs."""
    rng = np.random.default_rng(seed)
    w = np.geomspace(1.0, 0.15, n_classes)
    y = rng.choice(n_classes, size=n, p=w / w.sum())
    centres = rng.normal(0, 1, (n_classes, dim))
    sub = centres[:, None, :] + rng.normal(0, 0.6, (n_classes, 2, dim))
    X = sub[y, rng.integers(0, 2, size=n)] + rng.normal(0, 1.0, (n, dim))
    return l2n(X), y.astype(np.int64)


def digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return l2n(d.data - d.data.mean(axis=0)), d.target.astype(np.int64)


# ---------------------------------------------------------------------------------------------- simulation
def simulate(X: np.ndarray, y: np.ndarray, strategy: str, seed: int, per_class: list[int],
             C: float = PROBE_C) -> dict:
    """One cold-start run; returns labels, accuracy per round and selection seconds."""
    from sklearn.model_selection import train_test_split

    classes = np.unique(y)
    pool_idx, test_idx = train_test_split(np.arange(len(y)), test_size=0.2, stratify=y, random_state=seed)
    Xp, yp, Xt, yt = X[pool_idx], y[pool_idx], X[test_idx], y[test_idx]
    labeled = np.zeros(len(Xp), bool)
    config = StrategyConfig(probcover_n_classes=len(classes))
    probe = None
    out = {"labels": [], "acc": [], "select_s": 0.0, "warmup_random_rounds": 0}
    for b in per_class:
        need = b * len(classes) - int(labeled.sum())
        use = strategy
        probs = None
        if strategy in NEEDS_PROBS:
            if probe is None:
                use = "random"  # no probe before the first labels: start like the baseline
                out["warmup_random_rounds"] += 1
            else:
                probs = probe.predict_proba(Xp)
        t0 = time.perf_counter()
        sel = select(use, Xp, labeled, need, probs=probs, seed=seed, config=config)
        out["select_s"] += time.perf_counter() - t0
        labeled[sel.indices] = True
        if len(np.unique(yp[labeled])) >= 2:
            probe = LinearProbe(C=C, random_state=seed).fit(Xp[labeled], yp[labeled])
            acc = float((probe.predict(Xt) == yt).mean())
        else:  # a single class seen: the best the probe can do is predict it
            probe = None
            acc = float((yt == yp[labeled][0]).mean()) if labeled.any() else 0.0
        out["labels"].append(int(labeled.sum()))
        out["acc"].append(acc)
    return out


def bench_dataset(name: str, X: np.ndarray, y: np.ndarray, seeds: list[int], per_class: list[int],
                  strategies: list[str], C: float = PROBE_C) -> list[dict]:
    rows = []
    for strategy in strategies:
        runs = [simulate(X, y, strategy, s, per_class, C=C) for s in seeds]
        acc = np.array([r["acc"] for r in runs])
        row = {"dataset": name, "n": int(len(X)), "classes": int(len(np.unique(y))), "strategy": strategy,
               "per_class": per_class, "labels": runs[0]["labels"],
               "acc_mean": [round(float(v), 4) for v in acc.mean(axis=0)],
               "acc_std": [round(float(v), 4) for v in acc.std(axis=0)],
               "auc": round(float(acc.mean()), 4), "auc_std_over_seeds": round(float(acc.mean(axis=1).std()), 4),
               "select_s": round(float(np.mean([r["select_s"] for r in runs])), 2),
               "warmup_random_rounds": runs[0]["warmup_random_rounds"], "seeds": len(seeds)}
        rows.append(row)
        print(f"  {name:9s} {strategy:17s} " + " ".join(f"{a:.3f}" for a in row["acc_mean"])
              + f"  AUC={row['auc']:.3f}  select {row['select_s']:.1f}s", flush=True)
    base = next((r for r in rows if r["strategy"] == "random"), None)
    for r in rows:
        r["auc_minus_random"] = None if base is None else round(r["auc"] - base["auc"], 4)
    return rows


def markdown(rows: list[dict]) -> str:
    per_class = rows[0]["per_class"]
    head = ("| dataset | strategy | " + " | ".join(f"acc @{b}/class" for b in per_class)
            + " | AUC | vs random | select s |")
    lines = [head, "|" + "---|" * (len(per_class) + 5)]
    for r in rows:
        best = max(x["auc"] for x in rows if x["dataset"] == r["dataset"])
        auc = f"**{r['auc']:.3f}**" if r["auc"] == best else f"{r['auc']:.3f}"
        lines.append(f"| {r['dataset']} (n={r['n']}) | {r['strategy']} | "
                     + " | ".join(f"{a:.3f}" for a in r["acc_mean"])
                     + f" | {auc} | {r['auc_minus_random']:+.3f} | {r['select_s']:.1f} |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib not installed: no plot"
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    fig, axes = plt.subplots(1, len(datasets), figsize=(5.2 * len(datasets), 4.2), squeeze=False)
    for ax, ds in zip(axes[0], datasets):
        for r in (r for r in rows if r["dataset"] == ds):
            style = dict(color="black", linestyle="--", linewidth=2) if r["strategy"] == "random" else {}
            ax.errorbar(r["labels"], r["acc_mean"], yerr=r["acc_std"], label=f"{r['strategy']} ({r['auc']:.3f})",
                        marker="o", markersize=3, capsize=2, **style)
        ax.set_xscale("log")
        ticks = next(r["labels"] for r in rows if r["dataset"] == ds)
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel("labels (cumulative)")
        ax.set_ylabel("linear-probe test accuracy")
        ax.set_title(f"{ds} (n={next(r['n'] for r in rows if r['dataset'] == ds)})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, title="strategy (AUC)", title_fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="synthetic + digits, 1 seed, budgets 1/2/5 per class")
    ap.add_argument("--datasets", default=None, help="comma list of synthetic,digits,demo")
    ap.add_argument("--strategies", default=None, help=f"comma list (default: all of {', '.join(STRATEGIES)})")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=None, help="where to build/reuse the demo project")
    ap.add_argument("--probe-c", type=float, default=PROBE_C, help="inverse L2 strength of the probe")
    ap.add_argument("--sweep-c", action="store_true", help="only the random baseline at C = 0.01, 0.1, 1, 10 (how "
                                                           "PROBE_C was chosen)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.sweep_c:
        args.strategies = "random"
    stem = "active" + ("_sweep_c" if args.sweep_c else "") + ("_quick" if args.quick else "")
    out = args.out or RESULTS.with_name(stem + ".json")
    names = (args.datasets or ("synthetic,digits" if args.quick else "synthetic,digits,demo")).split(",")
    strategies = (args.strategies or ",".join(STRATEGIES)).split(",")
    if "random" not in strategies:
        strategies = ["random"] + strategies
    seeds = list(range(1 if args.quick else args.seeds))
    per_class = [1, 2, 5] if args.quick else [1, 2, 5, 10, 20]
    t0 = time.perf_counter()
    rows: list[dict] = []
    info: dict = {}
    with tempfile.TemporaryDirectory(prefix="curate-bench-active-") as tmp:
        workdir = args.workdir or Path(tmp)
        for name in names:
            print(f"dataset {name} ...", flush=True)
            if name == "synthetic":
                X, y = synthetic()
                info[name] = {"features": "imbalanced 2-blob-per-class Gaussian mixture, 64-d, L2-normalised"}
            elif name == "digits":
                X, y = digits()
                info[name] = {"features": "raw 8x8 pixels, centred, L2-normalised"}
            elif name == "demo":
                from clusters import demo_embeddings

                X, y, info[name] = demo_embeddings(workdir)
            else:
                raise SystemExit(f"unknown dataset {name!r}; use synthetic, digits, demo")
            if args.sweep_c:
                for C in (0.01, 0.1, 1.0, 10.0):
                    for r in bench_dataset(name, X, y, seeds, per_class, strategies, C=C):
                        rows.append({**r, "strategy": f"random, C={C:g}", "probe_c": C})
            else:
                rows += [{**r, "probe_c": args.probe_c}
                         for r in bench_dataset(name, X, y, seeds, per_class, strategies, C=args.probe_c)]
    png = out.with_suffix(".png")
    note = plot(rows, png)
    md = markdown(rows)
    result = {"bench": "active", "quick": args.quick, "seeds": seeds, "per_class_budgets": per_class,
              "probe_c": None if args.sweep_c else args.probe_c,
              "seconds": round(time.perf_counter() - t0, 1), "datasets": info, "plot": note or str(png),
              "rows": rows, "markdown": md}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=str))
    print("\n" + md)
    print(f"\nwrote {out}" + (f" and {png}" if note is None else f" ({note})") + f" in {result['seconds']}s")
    return result


if __name__ == "__main__":
    main()
