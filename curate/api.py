"""The Python front door: ``curate.open(path)`` returns a :class:`Project`, whose methods run the whole loop.

Every method is a thin call into the engine (the CLI and the UI call the same functions); findings come back as
pandas DataFrames, best first, one row per sample (or per duplicate-set member) with the image path attached.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import pandas as pd

from curate.engine.catalog import Catalog, open_project


def open(path: str | os.PathLike = "curate-project", create: bool = True) -> "Project":  # noqa: A001
    """Open the project workspace at ``path`` (created when missing and ``create``)."""
    return Project(open_project(path, create=create))


class Project:
    """One project workspace (a folder holding ``catalog.duckdb``, embeddings, indexes and exports)."""

    def __init__(self, catalog: Catalog):
        self.catalog = catalog

    def __repr__(self) -> str:
        return f"curate.Project({str(self.root)!r})"

    @property
    def root(self) -> Path:
        return Path(self.catalog.root)

    # ------------------------------------------------------------------------------------------------ input
    def ingest(self, source: str | os.PathLike, kind: str = "auto", split: str | None = None, **options: Any):
        """Add images (a class-folder tree, an unlabeled folder, a CSV/Parquet manifest, COCO, YOLO, a Hugging Face
        dataset, FiftyOne); reruns add only what is new.  Returns the ingest report."""
        from curate.engine.ingest import ingest

        return ingest(self.catalog, source, kind=kind, split=split, **options)

    def embed(self, encoder: str = "auto", **options: Any) -> str:
        """Compute (or resume) the embeddings of every sample; returns the encoder name they are stored under."""
        from curate.engine.embed import embed_project

        return embed_project(self.catalog, encoder=encoder, **options)

    # ------------------------------------------------------------------------------------------------ analyses
    def analyses(self) -> list[str]:
        """The registered analyses, in audit order."""
        from curate.engine.analyses import registry

        return registry.names()

    def audit(self, analyses: Iterable[str] | None = None, encoder: str = "auto", k: int = 10,
              out_of_core: bool | None = None, options: dict[str, dict] | None = None,
              progress: bool = False) -> dict[str, Any]:
        """Embed, build the kNN graph and run the analyses (default: every registered one).

        ``options`` maps an analysis name to its options, e.g. ``{"clusters": {"k": 20}}``.  Returns
        ``{analysis: Result}`` for the analyses that ran; a failing analysis raises.
        """
        from curate.engine.pipeline import run_audit

        results: dict[str, Any] = {}
        run_audit(self.catalog, encoder=encoder, k=k, out_of_core=out_of_core, strict=True, progress=progress,
                  only=None if analyses is None else list(analyses), options=options, results=results)
        return results

    def run(self, name: str, **options: Any):
        """Run one registered analysis with ``options`` (its config fields); returns its Result."""
        from curate.engine.analyses import registry

        return registry.run(self.catalog, name, **options)

    def _frame(self, sql: str, params: Sequence[Any] = ()) -> pd.DataFrame:
        return self.catalog.query_df(sql, list(params))

    def label_issues(self, all: bool = False) -> pd.DataFrame:  # noqa: A002
        """Labelled samples, most likely wrong first (``all=False``: only the flagged ones)."""
        where = "" if all else "WHERE li.is_issue"
        return self._frame(f"""SELECT li.* EXCLUDE (run_id), s.path FROM label_issues li
                               JOIN samples s ON s.id = li.sample_id {where} ORDER BY li.rank""")

    def duplicates(self) -> pd.DataFrame:
        """Members of every duplicate set, largest set first, the proposed keeper first within a set."""
        return self._frame("""SELECT d.* EXCLUDE (run_id), s.split, s.path FROM duplicates d
                              JOIN samples s ON s.id = d.sample_id
                              ORDER BY count(*) OVER (PARTITION BY d.set_id) DESC, d.set_id,
                                       d.is_keeper DESC NULLS LAST, d.sample_id""")

    def outliers(self, all: bool = False) -> pd.DataFrame:  # noqa: A002
        """Samples by outlier rank (1 = most outlying); ``all=False``: only the flagged ones."""
        where = "" if all else "WHERE o.is_outlier"
        return self._frame(f"""SELECT o.* EXCLUDE (run_id), s.path FROM outliers o
                               JOIN samples s ON s.id = o.sample_id {where} ORDER BY o.rank""")

    def image_issues(self) -> pd.DataFrame:
        """Image-property issues (blurry, dark, ...), worst first within each issue."""
        return self._frame("""SELECT i.* EXCLUDE (run_id), s.path FROM image_issues i
                              JOIN samples s ON s.id = i.sample_id ORDER BY i.issue, i.score, i.sample_id""")

    def clusters(self) -> pd.DataFrame:
        """One row per cluster: size, suggested name, majority label, purity, ..."""
        return self._frame("SELECT * EXCLUDE (run_id) FROM cluster_summaries ORDER BY cluster")

    def query(self, strategy: str = "typiclust", budget: int = 100, **options: Any) -> pd.DataFrame:
        """Select the next ``budget`` samples to annotate; returns the batch (rank, sample_id, score, reason, ...)."""
        res = self.run("query", strategy=strategy, budget=budget, **options)
        error = getattr(res, "export_error", None)
        if error is not None:  # the batch is recorded; its files could not be written (as `curate query` says)
            raise error
        return res.detail.table if res.detail is not None else pd.DataFrame()

    # ------------------------------------------------------------------------------------------------ decisions
    def decide(self, sample_id: int, action: str, label: str | None = None, reason: str = "",
               who: str | None = None) -> int:
        """Record a decision (keep / relabel / remove / merge); returns its id."""
        return self.catalog.add_decision(int(sample_id), action, new_label=label, reason=reason, who=who)

    def undo(self, decision_id: int) -> int:
        """Undo a decision (recorded as a new event); returns the undo's id."""
        return self.catalog.undo_decision(int(decision_id))

    def decisions(self, limit: int = 1000) -> pd.DataFrame:
        """Decisions, newest first."""
        return self.catalog.decisions(limit=limit)

    # ------------------------------------------------------------------------------------------------ output
    def export(self, out_dir: str | os.PathLike | None = None, formats: Sequence[str] = ("csv",), **options: Any):
        """Write the cleaned dataset (decisions applied), the changes report and the annotation queue."""
        from curate.engine.export import export_dataset

        return export_dataset(self.catalog, out_dir, formats=tuple(formats), **options)

    def report(self, out: str | os.PathLike | None = None, top: int | None = None) -> Path:
        """Write the self-contained HTML report (and its Markdown summary); returns the HTML path."""
        from curate.engine.html_report import write_report

        files = write_report(self.catalog, out, **({} if top is None else {"top": top}))
        return Path(files.html)

    def status(self) -> dict[str, int]:
        """Row counts: samples, labels, embeddings, each analysis table, decisions."""
        return self.catalog.counts()
