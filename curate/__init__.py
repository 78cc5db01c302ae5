"""Curate: find wrong labels, duplicates, leakage, outliers and what to annotate next in an image dataset.

The front door.  One import, one project object::

    import curate
    project = curate.open("my-project")          # created when missing
    project.ingest("photos/")                    # a folder, CSV/JSONL manifest, COCO, YOLO, HF, FiftyOne
    project.audit()                              # embed -> kNN graph -> every registered analysis
    project.label_issues()                       # pandas DataFrames, best first
    project.export("clean/")

The implementation lives in three sub-packages, installed under this one so that they do not claim generic
top-level names: ``curate.engine`` (ingest, catalog, encoders, embeddings, analyses, CLI), ``curate.indexes``
(FAISS indexes and kNN graphs) and ``curate.app`` (the Streamlit review UI).  In a source checkout they are the
folders ``engine/``, ``indexes/`` and ``app/`` next to this one.
"""

from __future__ import annotations

import os as _os

# A source checkout keeps engine/, indexes/ and app/ beside curate/ (pyproject maps them under curate.* when it
# builds a wheel); there, let the package's search path reach them.  An installed wheel has them inside.
_here = _os.path.dirname(_os.path.abspath(__file__))
if not _os.path.isdir(_os.path.join(_here, "engine")):
    _root = _os.path.dirname(_here)
    if _os.path.isfile(_os.path.join(_root, "engine", "__init__.py")):
        __path__.append(_root)  # type: ignore[name-defined]  # noqa: F821

__version__ = "0.1.0"

__all__ = ["Project", "open", "__version__"]


def __getattr__(name: str):
    # the API is imported on first use, so `curate` (and the CLI, which lives under it) starts without loading it
    if name in ("Project", "open"):
        from curate import api

        return getattr(api, name)
    raise AttributeError(f"module 'curate' has no attribute {name!r}")
