"""Shared fixtures: real image files in temporary folders and fresh project workspaces."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `import curate` from a checkout that is not pip-installed
    sys.path.insert(0, str(ROOT))


class _NoGenericTopLevel:
    """The checkout's folders engine/, indexes/, app/ are importable only as curate.engine, curate.indexes and
    curate.app (that is how they are installed); a stray ``import engine`` (or a string naming the module, as a
    template loader does) must fail here as it fails for users, not find the folder through the checkout root."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname in ("engine", "indexes", "app"):
            raise ModuleNotFoundError(f"No module named {fullname!r} (use curate.{fullname})", name=fullname)
        return None


sys.meta_path.insert(0, _NoGenericTopLevel())

# Tests never wait long on a locked catalog.
os.environ.setdefault("CURATE_LOCK_WAIT", "10")


def write_image(path: Path, seed: int = 0, size=(32, 32), mode: str = "RGB", fmt: str | None = None) -> Path:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    channels = {"RGB": 3, "L": 1}[mode]
    arr = rng.integers(0, 256, size=(size[1], size[0], channels), dtype=np.uint8)
    img = Image.fromarray(arr[..., 0] if channels == 1 else arr, mode)
    img.save(path, fmt)
    return path


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """root/{train,test}/{cat,dog}/*.png with 3 images each, plus broken files."""
    root = tmp_path / "data"
    seed = 0
    for split in ("train", "test"):
        for cls in ("cat", "dog"):
            for i in range(3):
                write_image(root / split / cls / f"{i}.png", seed=seed)
                seed += 1
    (root / "train" / "cat" / "zero.png").write_bytes(b"")
    (root / "train" / "dog" / "notes.jpg").write_text("not an image")
    good = (root / "train" / "cat" / "0.png").read_bytes()
    (root / "test" / "dog" / "truncated.png").write_bytes(good[: len(good) // 2])
    return root


@pytest.fixture
def project(tmp_path: Path):
    from curate.engine.catalog import init_project

    return init_project(tmp_path / "project")


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory):
    """The real demo dataset, built once per test session."""
    from curate.engine.demo import build_demo_dataset

    root = tmp_path_factory.mktemp("demo") / "data"
    return build_demo_dataset(root, seed=0)
