"""`curate doctor`: check a workspace and optionally repair it.

Checks (each yields findings with a severity and, where possible, a repair):

* schema version of the catalog;
* runs left in status ``running`` by a killed process (repair: mark them ``interrupted``);
* sample files that no longer exist at their path (repair with ``search_roots``: find the same bytes elsewhere by
  content hash and update the path, one transaction);
* embedding shards: recorded shards whose file is missing or fails its SHA-256 (repair: forget that encoder's
  vectors so the next ``curate embed`` recomputes them), and orphan shard files no record points to (repair: delete);
* index / kNN-graph files whose checksum fails or that are stale for the current embeddings (repair: delete, they
  are rebuilt on next use);
* index folders of encoders whose embeddings were dropped (repair: delete);
* orphan thumbnails of samples that no longer exist (repair: delete);
* partial export folders and temporary files left by killed processes (repair: delete).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from curate.engine.catalog import SCHEMA_VERSION, Catalog, sha256_file


@dataclass
class Finding:
    check: str
    severity: str  # "ok" | "warning" | "error"
    message: str
    repaired: bool = False


@dataclass
class DoctorReport:
    findings: list[Finding] = field(default_factory=list)

    def add(self, check: str, severity: str, message: str, repaired: bool = False) -> None:
        self.findings.append(Finding(check, severity, message, repaired))

    @property
    def healthy(self) -> bool:
        return all(f.severity == "ok" or f.repaired for f in self.findings)

    def print(self, console=None) -> None:
        out = console.print if console is not None else print
        for f in self.findings:
            mark = {"ok": "ok  ", "warning": "WARN", "error": "FAIL"}[f.severity]
            out(f"[{mark}] {f.check}: {f.message}" + (" (repaired)" if f.repaired else ""))
        out("workspace is healthy" if self.healthy else "problems found; rerun with --repair to fix what can be fixed")


def check(cat: Catalog, repair: bool = False, search_roots: Iterable[str | os.PathLike] = ()) -> DoctorReport:
    """Run every check; with ``repair`` fix what can be fixed without losing data."""
    rep = DoctorReport()

    v = cat.schema_version()
    rep.add("schema", "ok" if v == SCHEMA_VERSION else "error", f"catalog schema v{v} (this curate: v{SCHEMA_VERSION})")

    # ------------------------------------------------------------------ interrupted runs
    stuck = cat.query("SELECT id, kind FROM runs WHERE status = 'running' ORDER BY id")
    if stuck:
        msg = ", ".join(f"{k} #{i}" for i, k in stuck)
        if repair:
            with cat.transaction() as con:
                con.execute("UPDATE runs SET status = 'interrupted' WHERE status = 'running'")
        rep.add("runs", "warning", f"{len(stuck)} run(s) never finished (killed?): {msg}", repaired=repair)
    else:
        rep.add("runs", "ok", "no interrupted runs")

    # ------------------------------------------------------------------ moved / missing image files
    samples = cat.query("SELECT id, path, content_hash FROM samples ORDER BY id")
    missing = [(i, p, h) for i, p, h in samples if not os.path.exists(p)]
    if not missing:
        rep.add("files", "ok", f"all {len(samples)} sample files present")
    else:
        found: dict[str, str] = {}
        if repair and search_roots:
            wanted = {h for _, _, h in missing}
            for root in search_roots:
                for dirpath, _, files in os.walk(root):
                    for name in files:
                        p = os.path.abspath(os.path.join(dirpath, name))
                        try:
                            h = sha256_file(Path(p))
                        except OSError:
                            continue
                        if h in wanted and h not in found:
                            found[h] = p
            known_paths = {p for _, p, _ in samples}
            moves = [(found[h], i) for i, _, h in missing if h in found and found[h] not in known_paths]
            if moves:
                with cat.transaction() as con:
                    con.executemany("UPDATE samples SET path = ? WHERE id = ?", moves)
            still = len(missing) - len(moves)
            rep.add("files", "warning" if still == 0 else "error",
                    f"{len(missing)} sample file(s) missing; relocated {len(moves)} by content hash, {still} not found",
                    repaired=still == 0)
        else:
            ex = ", ".join(p for _, p, _ in missing[:3])
            rep.add("files", "error", f"{len(missing)} sample file(s) missing (e.g. {ex}); "
                    "rerun with --repair --search DIR to find moved files by content hash")

    # ------------------------------------------------------------------ embedding shards
    from curate.engine.embed import drop_bad_shards, embeddings_dir, recompute_hint, remove_orphan_shards, shard_problem

    for (encoder,) in cat.query("SELECT encoder FROM embedding_sets ORDER BY encoder"):
        folder = embeddings_dir(cat, encoder)
        bad = [p for shard, n, sha in cat.query(
                   "SELECT shard, n, sha256 FROM embedding_shards WHERE encoder = ? ORDER BY shard", [encoder])
               if (p := shard_problem(folder, shard, n, sha))]
        if bad:
            if repair:
                drop_bad_shards(cat, encoder)  # only those shards: their samples are embedded again next run
            rep.add(f"embeddings {encoder}", "error",
                    f"{len(bad)} bad shard(s): {', '.join(bad[:3])}"
                    + (f"; dropped, {recompute_hint(encoder)}" if repair else ""),
                    repaired=repair)
            continue
        recorded = {s for (s,) in cat.query("SELECT shard FROM embedding_shards WHERE encoder = ?", [encoder])}
        orphans = [p for p in folder.glob("shard-*") if p.name.split(".")[0] not in recorded or ".tmp" in p.name]
        if orphans:
            if repair:
                remove_orphan_shards(cat, encoder)
            rep.add(f"embeddings {encoder}", "warning", f"{len(orphans)} orphan shard file(s) from an interrupted run",
                    repaired=repair)
        else:
            rep.add(f"embeddings {encoder}", "ok", f"{len(recorded)} shard(s) verified")

    # ------------------------------------------------------------------ indexes and kNN graphs
    _check_indexes(cat, rep, repair)

    # ------------------------------------------------------------------ thumbnails
    ids = {i for i, _, _ in samples}
    orphan_thumbs = []
    if cat.project.thumbnails_dir.exists():
        for f in cat.project.thumbnails_dir.rglob("*"):
            if f.is_file():
                stem = f.stem.split("_")[0]
                if stem.isdigit() and int(stem) not in ids:
                    orphan_thumbs.append(f)
    if orphan_thumbs:
        if repair:
            for f in orphan_thumbs:
                f.unlink(missing_ok=True)
        rep.add("thumbnails", "warning", f"{len(orphan_thumbs)} thumbnail(s) of unknown samples", repaired=repair)
    else:
        rep.add("thumbnails", "ok", "no orphan thumbnails")

    # ------------------------------------------------------------------ leftovers of killed processes
    _check_leftovers(cat, rep, repair)
    return rep


def _check_leftovers(cat: Catalog, rep: DoctorReport, repair: bool) -> None:
    """Temporary files of atomic writes and partial exports whose writer died (a live writer's are left alone)."""
    import shutil
    import time

    from curate.engine.export import stale_partial_exports

    leftovers: list[Path] = list(stale_partial_exports(cat.project.exports_dir))
    cutoff = time.time() - 3600  # a temp file older than an hour has no writer left (writes take seconds)
    for folder in (cat.project.indexes_dir, cat.project.thumbnails_dir):
        if folder.exists():
            leftovers += [f for f in folder.rglob(".*.tmp") if f.is_file() and f.stat().st_mtime < cutoff]
    if leftovers:
        if repair:
            for f in leftovers:
                shutil.rmtree(f, ignore_errors=True) if f.is_dir() else f.unlink(missing_ok=True)
        ex = ", ".join(str(f.relative_to(cat.root)) for f in leftovers[:3])
        rep.add("leftovers", "warning", f"{len(leftovers)} partial export folder(s) / temporary file(s) of killed "
                f"processes (e.g. {ex})" + ("; removed" if repair else ""), repaired=repair)
    else:
        rep.add("leftovers", "ok", "no partial exports or temporary files")


def _check_indexes(cat: Catalog, rep: DoctorReport, repair: bool) -> None:
    from curate.engine.embed import load_embeddings
    from curate.indexes import store

    root = cat.project.indexes_dir
    if not root.exists():
        return
    encoders = {r[0] for r in cat.query("SELECT encoder FROM embedding_sets")}
    from curate.engine.embed import encoder_slug

    slugs = {encoder_slug(e) for e in encoders}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        if folder.name not in slugs and any(folder.iterdir()):
            # built from an embedding set that was dropped since: nothing can use it
            if repair:
                import shutil

                shutil.rmtree(folder, ignore_errors=True)
            rep.add("indexes", "warning", f"{folder.name}/: orphan index folder (no embeddings of that encoder in "
                    "the catalog)" + ("; removed" if repair else ""), repaired=repair)
            continue
        for data_name, meta_name, reader in ((store.INDEX_FILE, store.INDEX_META, store.read_index_meta),
                                             (store.GRAPH_FILE, store.GRAPH_META, store.read_graph_meta)):
            data = folder / data_name
            if not data.exists():
                continue
            what = f"{folder.name}/{data_name}"
            try:
                meta = reader(folder)
            except Exception as exc:  # unreadable metadata
                meta, err = None, str(exc).splitlines()[0]
            else:
                err = None
            problem = None
            if meta is None:
                problem = f"metadata unreadable ({err})" if err else "metadata missing"
            elif getattr(meta, "sha256", None) and store.file_sha256(data) != meta.sha256:
                problem = "checksum mismatch (corrupt file)"
            elif getattr(meta, "encoder", None) in encoders:
                try:
                    es = load_embeddings(cat, meta.encoder, verify=False)
                    key = store.content_key(es.sample_ids, es.vectors)
                    if getattr(meta, "content_key", key) != key:
                        problem = "stale (embeddings changed since it was built)"
                except Exception:
                    pass
            if problem:
                if repair:
                    data.unlink(missing_ok=True)
                    (folder / meta_name).unlink(missing_ok=True)
                rep.add("indexes", "warning" if "stale" in problem else "error",
                        f"{what}: {problem}" + ("; removed, it is rebuilt on next use" if repair else ""), repaired=repair)
            else:
                rep.add("indexes", "ok", f"{what} verified")
