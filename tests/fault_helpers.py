"""Helpers for the fault and bad-input tests: run the real `curate` CLI in a subprocess (importing this tree), kill
it at a named point, and build tiny projects with imported (bring-your-own) embeddings so analyses cost no model
forward passes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ("cat", "dog", "fox")


def cli_env(**extra: str) -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(ROOT), COLUMNS="200", **extra)


def curate(*args, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``python -m engine.cli ARGS`` to completion."""
    return subprocess.run([sys.executable, "-m", "curate.engine.cli", *map(str, args)], capture_output=True, text=True,
                          env=env or cli_env(), timeout=timeout, cwd=str(ROOT))


def curate_killed_at(hook: str, *args, seconds: float = 60, nth: int = 1, timeout: float = 180) -> str:
    """Run ``curate ARGS`` with the fault hook env ``hook`` set, SIGKILL it when it reports its ``nth`` pause
    (``CURATE_TEST_PAUSED ...`` on stderr) and return the stderr it wrote; fails if it never got there."""
    proc = subprocess.Popen([sys.executable, "-m", "curate.engine.cli", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=cli_env(**{hook: str(seconds)}), cwd=str(ROOT))
    watchdog = threading.Timer(timeout, proc.kill)
    watchdog.start()
    seen, lines = 0, []
    try:
        for line in proc.stderr:
            lines.append(line)
            if "CURATE_TEST_PAUSED" in line:
                seen += 1
                if seen == nth:
                    os.kill(proc.pid, signal.SIGKILL)
                    break
    finally:
        watchdog.cancel()
        proc.wait(timeout=30)
        proc.stdout.close()
        proc.stderr.close()
    assert seen == nth and proc.returncode == -signal.SIGKILL, \
        f"curate {' '.join(map(str, args))} ended ({proc.returncode}) before pause {nth}:\n{''.join(lines)[-3000:]}"
    return "".join(lines)


def write_dataset(root: Path, per_class: int = 8, size: int = 16) -> list[Path]:
    """root/<class>/<i>.png: small PNGs, distinct per file."""
    rng = np.random.default_rng(0)
    out = []
    for c in CLASSES:
        for i in range(per_class):
            p = root / c / f"{c}{i}.png"
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(p)
            out.append(p)
    return out


def byo_project(tmp: Path, name: str = "project", per_class: int = 8, dim: int = 16, noisy: int = 2):
    """An ingested ImageFolder project with clustered imported embeddings (one cluster per class) and ``noisy``
    samples whose vectors sit in another class's cluster (label issues to find)."""
    from curate.engine.byo import import_embeddings
    from curate.engine.catalog import init_project
    from curate.engine.ingest import ingest

    data = tmp / f"{name}-data"
    if not data.exists():
        write_dataset(data, per_class)
    cat = init_project(tmp / name)
    ingest(cat, data)
    lab = cat.current_labels()
    rng = np.random.default_rng(1)
    centers = rng.normal(size=(len(CLASSES), dim)) * 4
    cls = np.array([CLASSES.index(v) for v in lab["label"]])
    cls[:noisy] = (cls[:noisy] + 1) % len(CLASSES)  # vectors of another class: these labels look wrong
    X = (centers[cls] + rng.normal(size=(len(cls), dim))).astype(np.float32)
    npz = tmp / f"{name}-emb.npz"
    np.savez(npz, vectors=X, ids=lab["sample_id"].to_numpy())
    import_embeddings(cat, npz, encoder="byo:test")
    return cat, data
