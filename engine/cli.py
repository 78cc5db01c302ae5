"""`curate` command line: each command is a few lines calling the Python API.

Errors are one line, no traceback: a usage error (unknown command or option, bad value) prints Click's usage line
and ``error: ...`` with exit code 2; a :class:`engine.catalog.CurateError` prints ``error: ...`` with exit code 1;
any other exception prints its type and message and the file its full traceback was written to, exit code 1
(the global ``--debug`` option or ``CURATE_DEBUG=1`` prints the traceback instead).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from curate.engine.catalog import DEFAULT_PROJECT, CurateError, init_project, open_project
from curate.engine.progress import enabled as progress_enabled
from curate.engine.progress import shown

app = typer.Typer(add_completion=False, no_args_is_help=False, help="Curate: find and fix label errors, duplicates and outliers in image datasets.")

# the audit sub-command names of dedicated commands below whose name differs from the registered analysis's name
_AUDIT_ALIASES = {"label_issues": "labels", "label-issues": "labels", "image_quality": "quality",
                  "image-quality": "quality"}


class _AuditGroup(typer.core.TyperGroup):
    """``curate audit``: the commands defined below, plus one generated command per registered analysis that has
    no dedicated command (the registry is read when the command line is parsed, so an analysis registered by a
    plugin or a test shows up in the help of ``curate audit`` and runs as its own sub-command)."""

    def list_commands(self, ctx):
        from curate.engine.analyses import registry

        own = list(super().list_commands(ctx))
        covered = set(own) | set(_AUDIT_ALIASES)
        return own + [n for n in registry.names() if n not in covered]

    def get_command(self, ctx, cmd_name):
        cmd = super().get_command(ctx, _AUDIT_ALIASES.get(cmd_name, cmd_name))
        if cmd is not None:
            return cmd
        from curate.engine.analyses import registry

        try:
            analysis = registry.get(cmd_name)
        except CurateError:
            return None
        return _registry_command(analysis)


audit_app = typer.Typer(cls=_AuditGroup, no_args_is_help=False, help="Run analyses and print their summaries "
                        "(`curate audit list` shows every registered analysis).\n\n"
                        "Example: curate audit all -p my-project")
app.add_typer(audit_app, name="audit")
console = Console() if sys.stdout.isatty() else Console(width=160, soft_wrap=True)

ProjectOpt = typer.Option(DEFAULT_PROJECT, "--project", "-p", help="Project workspace folder.")
QuietOpt = typer.Option(False, "--quiet", "-q", help="No progress bars (they are also off when stderr is not a "
                        "terminal; CURATE_PROGRESS=1 forces plain progress lines).")
OocOpt = typer.Option(None, "--out-of-core/--in-memory",
                      help="Shard-by-shard analyses that never hold all vectors, or the in-memory ones "
                           "(default: out of core above 2,000,000 vectors, CURATE_OUT_OF_CORE_MIN_N).")


# The commands a newcomer needs, in order (`curate` without arguments prints them; tests parse every one).
GETTING_STARTED = [
    ("curate demo", "try it first: a small dataset with planted errors, the full audit, the UI"),
    ("curate ingest FOLDER -p PROJECT", "1. your images (class folders, a CSV/Parquet manifest, or unlabeled)"),
    ("curate audit all -p PROJECT", "2. embed, kNN graph, label issues, duplicates, outliers, quality, clusters"),
    ("curate ui -p PROJECT", "3. review the findings and decide: keep, relabel, remove, merge"),
    ("curate export -p PROJECT -f csv -f imagefolder", "4. the cleaned dataset and a changes report"),
]
_DEBUG = False


@app.callback(invoke_without_command=True)
def _root(ctx: typer.Context,
          debug: bool = typer.Option(False, "--debug", help="Print the full traceback of an unexpected error "
                                     "(also CURATE_DEBUG=1).")):
    """Curate: find and fix label errors, duplicates and outliers in image datasets."""
    global _DEBUG
    _DEBUG = _DEBUG or debug
    if ctx.invoked_subcommand is None and not ctx.resilient_parsing:
        console.print("[bold]Getting started[/]")
        width = max(len(c) for c, _ in GETTING_STARTED)
        for cmd, what in GETTING_STARTED:
            console.print(f"  {cmd.ljust(width)}  {what}", highlight=False, markup=False)
        console.print("`curate COMMAND --help` shows a command's options and an example.\n", markup=False)
        console.print(ctx.get_help(), markup=False, highlight=False)
        raise typer.Exit(0)


def _print_df(df, title: str | None = None, max_rows: int = 20) -> None:
    table = Table(title=title)
    for c in df.columns:
        table.add_column(str(c))
    for _, row in df.head(max_rows).iterrows():
        table.add_row(*[_fmt(v) for v in row.tolist()])
    console.print(table)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


# ------------------------------------------------------------------------------------------- foundation
@app.command()
def init(directory: Path = typer.Argument(Path(DEFAULT_PROJECT), help="Folder for the new project.")):
    """Create a project workspace (catalog.duckdb, embeddings/, indexes/, thumbnails/, exports/).

    Example: curate init my-project
    """
    cat = init_project(directory)
    console.print(f"project ready at {cat.root} (schema v{cat.schema_version()})")


@app.command()
def ingest(
    source: Path = typer.Argument(..., help="ImageFolder root, unlabeled folder, CSV/Parquet manifest, COCO JSON, "
                                  "YOLO data.yaml, Hugging Face save_to_disk folder (or cached dataset name), "
                                  "FiftyOne export folder."),
    project: Path = ProjectOpt,
    kind: str = typer.Option("auto", help="auto | imagefolder | manifest | unlabeled | coco | yolo | hf | fiftyone"),
    split: Optional[str] = typer.Option(None, help="Split to assign when the layout has none (train/val/test)."),
    label_rule: str = typer.Option("majority", "--label-rule", "--coco-label",
                                   help="COCO/YOLO image label from the boxes' categories: majority | single | multi."),
    images: Optional[Path] = typer.Option(None, "--images", help="COCO: folder the file_name entries are relative "
                                          "to (default: found next to the JSON)."),
    quiet: bool = QuietOpt,
):
    """Ingest images into the catalog (idempotent: re-ingesting the same files is a no-op).

    Example: curate ingest path/to/imagefolder -p my-project
    """
    from curate.engine.ingest import ingest as do_ingest

    cat = open_project(project, create=True)
    report = do_ingest(cat, str(source), kind=kind, split=split, progress=progress_enabled(quiet),
                       label_rule=label_rule, images_dir=images)
    report.print(console)


@app.command()
def status(project: Path = ProjectOpt):
    """Print what the project holds: samples, classes, quarantine, analyses that ran.

    Example: curate status -p my-project
    """
    from curate.engine.report import print_status

    print_status(open_project(project), console)


@app.command()
def demo(
    project: Path = typer.Option(Path("curate-project"), "--project", "-p", help="Project folder for the demo."),
    data: Optional[Path] = typer.Option(None, help="Where to write the demo images (default: <project>/demo-data)."),
    seed: int = typer.Option(0, help="Seed for the injected label noise / duplicates / corrupt files."),
    ui: bool = typer.Option(True, "--ui/--no-ui", help="Start the review UI at the end."),
    port: int = typer.Option(8501, help="UI port."),
    encoder: str = typer.Option("auto", help="Encoder for the embeddings (auto picks CLIP when its weights are local)."),
    size: Optional[int] = typer.Option(None, help="Use a seeded subset of this many digits (100..1797) for a quicker run."),
):
    """Build the embedded demo dataset, run the full audit, print measured scores, then open the UI.

    Example: curate demo --size 300 --no-ui
    """
    from curate.engine.demo import run_demo

    run_demo(project, data_dir=data, seed=seed, encoder=encoder, console=console, n_digits=size)
    if ui:
        _serve_ui(project, port=port, host="127.0.0.1")


@app.command()
def doctor(
    project: Path = ProjectOpt,
    repair: bool = typer.Option(False, "--repair", help="Fix what can be fixed without losing data."),
    search: list[Path] = typer.Option([], "--search", help="Folder(s) to look in for moved image files (by content hash)."),
):
    """Check the workspace: schema, interrupted runs, missing files, shard/index checksums, staleness, orphans.

    Example: curate doctor -p my-project --repair
    """
    from curate.engine.doctor import check

    rep = check(open_project(project), repair=repair, search_roots=search)
    rep.print(console)
    if not rep.healthy:
        raise typer.Exit(1)


# ------------------------------------------------------------------------------------------- embeddings (issue 3)
class _OptionalValueCommand(typer.core.TyperCommand):
    """Lets ``--ray`` be given without a value (``curate embed --ray``) as well as with one (``--ray ray://h:1``).

    Typer has no optional-value options: a bare ``--ray`` followed by another option or by nothing gets the
    value ``default`` inserted here, before click parses the arguments.
    """

    optional_value = {"--ray": "default"}

    def parse_args(self, ctx, args):
        out = []
        for i, a in enumerate(args):
            out.append(a)
            if a in self.optional_value and (i + 1 == len(args) or args[i + 1].startswith("-")):
                out.append(self.optional_value[a])
        return super().parse_args(ctx, out)


@app.command(cls=_OptionalValueCommand)
def embed(
    project: Path = ProjectOpt,
    encoder: str = typer.Option("auto", help="auto | effnet-lite0 | clip:<model>/<tag> | clip:<model>@<checkpoint>."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Images per batch (default: 32 on CPU, from free memory on GPU)."),
    device: str = typer.Option("auto", help="auto | cpu | cuda | mps (auto: cuda > mps > cpu)."),
    workers: Optional[int] = typer.Option(None, help="Image-decoding worker processes (default: CPUs - 1)."),
    rebuild: bool = typer.Option(False, "--rebuild", help="Drop this encoder's stored vectors and embed everything again."),
    ray: Optional[str] = typer.Option(None, "--ray", metavar="[ADDRESS]",
                                      help="Run the encoders on a Ray cluster: bare --ray = Ray's default "
                                      "(RAY_ADDRESS / the cluster on this machine / a new local instance); or "
                                      "local, auto, ray://head:10001.  --workers then = encoder actors."),
    quiet: bool = QuietOpt,
):
    """Embed every sample that has no vector yet (resumable; several encoders can coexist).

    Example: curate embed -p my-project --encoder effnet-lite0
    """
    from curate.engine.embed import EmbedReport, embed_project

    rep = EmbedReport(encoder=encoder)
    if ray is not None:
        from curate.engine.distributed.embed import embed_project_ray

        embed_project_ray(open_project(project), encoder=encoder, address=None if ray == "default" else ray,
                          workers=workers,
                          batch_size=batch_size, device=device, rebuild=rebuild, report=rep, progress=not quiet)
    else:
        embed_project(open_project(project), encoder=encoder, batch_size=batch_size, device=device, progress=not quiet,
                      workers=workers, rebuild=rebuild, report=rep)
    if rep.run_id is not None:  # something was embedded (embed_project already said when all was up to date)
        console.print(f"{rep.encoder}: {rep.embedded} embedded ({rep.images_per_s:.1f} img/s on {rep.device}), "
                      f"{rep.already_embedded} already had vectors, {len(rep.quarantined)} quarantined", highlight=False)
    for path, reason in rep.quarantined:
        console.print(f"  quarantined {path}: {reason}", highlight=False)


@app.command()
def encoders():
    """List the built-in encoders and whether their weights are available on this machine.

    Example: curate encoders
    """
    from curate.engine.encoders import available_encoders, explain_auto

    for info in available_encoders():
        mark = "[green]available[/]" if info.available else "[red]unavailable[/]"
        console.print(f"{info.name}  {mark}  text={'yes' if info.supports_text else 'no'}  {info.reason}", highlight=False)
    name, why = explain_auto()
    console.print(f"auto -> {name} ({why})", highlight=False)


@app.command("import-embeddings")
def import_embeddings_cmd(
    file: Path = typer.Argument(..., help=".npy (+ FILE.ids.npy/.ids.txt/.paths.txt), .npz (vectors + ids|paths) or .parquet."),
    project: Path = ProjectOpt,
    encoder: Optional[str] = typer.Option(None, help="Name for the imported set (default: byo:<file stem>)."),
    ids: Optional[Path] = typer.Option(None, "--ids", help="File naming the rows (ids or paths), if not next to FILE."),
):
    """Import your own embeddings (stored like `curate embed` output).

    Example: curate import-embeddings vectors.npz -p my-project
    """
    from curate.engine.byo import import_embeddings

    rep = import_embeddings(open_project(project), file, encoder=encoder, ids_file=ids)
    console.print(f"imported {rep.rows} vectors as encoder {rep.target}", highlight=False)


@app.command("import-predictions")
def import_predictions_cmd(
    file: Path = typer.Argument(..., help="Parquet/CSV (sample_id|path + one column per class) or .npz (probs, ids|paths, class_names)."),
    project: Path = ProjectOpt,
):
    """Import per-sample class probabilities from your own model (used by label-issue detection).

    Example: curate import-predictions probs.csv -p my-project
    """
    from curate.engine.byo import import_predictions

    rep = import_predictions(open_project(project), file)
    for w in rep.warnings:
        console.print(f"[yellow]warning:[/] {w}", highlight=False)
    console.print(f"imported predictions for {rep.rows} samples", highlight=False)


# ------------------------------------------------------------------------------------------- indexes (issue 4)
@app.command()
def index(
    project: Path = ProjectOpt,
    encoder: Optional[str] = typer.Option(None, help="Embedding set to index (default: the most recent)."),
    factory: str = typer.Option("auto", help="auto, or a FAISS index_factory string (e.g. 'HNSW32,Flat', 'IVF4096,PQ32')."),
    k: int = typer.Option(10, "-k", "--k", help="Neighbours per sample in the kNN graph."),
    rebuild: bool = typer.Option(False, "--rebuild", help="Ignore saved files and rebuild both."),
    out_of_core: Optional[bool] = OocOpt,
    quiet: bool = QuietOpt,
):
    """Build or refresh the search index and the shared kNN graph; print what they are and their recall.

    Example: curate index -p my-project -k 10
    """
    from curate.engine.inputs import Inputs
    from curate.indexes.graph import load_or_build_graph, load_or_build_sharded_graph
    from curate.indexes.search import load_or_build_index

    cat = open_project(project)
    big = Inputs.open(cat, encoder, out_of_core).out_of_core
    show = progress_enabled(quiet)
    pix = load_or_build_index(cat, encoder, factory, rebuild=rebuild, progress=show, out_of_core=big)
    if big:
        _, graph = load_or_build_sharded_graph(cat, pix.embeddings.encoder, k=k, rebuild=rebuild)
        console.print(f"out of core: {pix.meta.n_vectors} vectors read shard by shard "
                      f"(threshold: CURATE_OUT_OF_CORE_MIN_N, --out-of-core/--in-memory)")
    else:
        _, graph = load_or_build_graph(cat, pix.embeddings.encoder, k=k, rebuild=rebuild, progress=show)
    m = pix.meta
    console.print(f"search index ({pix.status}): {m.n_vectors} x {m.dim} {m.factory} {m.search_params or '(exact)'}, "
                  f"recall@10 {m.recall_at_10:.3f}, built in {m.build_seconds:.1f}s")
    console.print(f"kNN graph ({graph.cache}): {graph.n} samples x k={graph.k}, {graph.method}, recall {graph.recall:.3f}")


@app.command()
def search(
    project: Path = ProjectOpt,
    image: Optional[Path] = typer.Option(None, "--image", help="Find samples similar to this image file."),
    sample: Optional[int] = typer.Option(None, "--sample", help="Find samples similar to this sample id."),
    text: Optional[str] = typer.Option(None, "--text", help="Find samples matching this text (CLIP encoders only)."),
    k: int = typer.Option(10, "-k", "--k", help="Number of results."),
    encoder: Optional[str] = typer.Option(None, help="Embedding set to search (default: the most recent)."),
):
    """Similarity search: top-k sample ids, cosine scores and paths.

    Example: curate search -p my-project --sample 42 -k 10
    """
    from curate.indexes.search import search_image, search_sample, search_text

    if sum(q is not None for q in (image, sample, text)) != 1:
        raise CurateError("pass exactly one of --image PATH, --sample ID or --text \"...\"")
    cat = open_project(project)
    if image is not None:
        hits, what = search_image(cat, image, k, encoder), f"image {image}"
    elif sample is not None:
        hits, what = search_sample(cat, sample, k, encoder), f"sample {sample}"
    else:
        hits, what = search_text(cat, text, k, encoder), f"text {text!r}"
    _print_df(hits, title=f"most similar to {what}", max_rows=k)


# ------------------------------------------------------------------------------------------- analyses (issues 5-8)
# label issues (issue 5)
@audit_app.command("all")
def audit_all(
    project: Path = ProjectOpt,
    encoder: str = typer.Option("auto", help="Encoder for the embeddings (auto picks CLIP when its weights are local)."),
    k: int = typer.Option(10, help="Neighbours per sample in the shared kNN graph."),
    cluster_k: Optional[int] = typer.Option(None, "--cluster-k", help="Number of clusters (default: the number of labelled classes, or chosen by kNN-graph modularity without labels)."),
    strict: bool = typer.Option(False, "--strict", help="Stop at the first failing step instead of reporting it and going on."),
    out_of_core: Optional[bool] = OocOpt,
    quiet: bool = QuietOpt,
):
    """The full audit: embed -> kNN graph -> label issues, duplicates, outliers, image quality, clusters, query.

    Example: curate audit all -p my-project
    """
    from curate.engine.pipeline import run_audit
    from curate.engine.report import print_status

    cat = open_project(project)
    timings = run_audit(cat, encoder=encoder, k=k, console=console, strict=strict, cluster_k=cluster_k,
                        out_of_core=out_of_core, progress=progress_enabled(quiet))
    print_status(cat, console)
    if any(t["status"] == "failed" for t in timings.values()):
        raise typer.Exit(1)


def _print_lines(result) -> None:
    """An analysis's printable findings (:meth:`Result.printable`), one per line."""
    for line in result.printable():
        console.print(line, markup=False, highlight=False, style="yellow" if line.startswith("warning:") else None)


def _parse_setting(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` of ``--set``; the value read as JSON (numbers, true/false, null) or else as a string."""
    import json

    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise CurateError(f"--set takes KEY=VALUE, got {text!r}; e.g. --set k=20")
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    return key.strip().replace("-", "_"), value


def _registry_command(analysis):
    """The ``curate audit`` sub-command of a registered analysis: its config fields are set with ``--set``."""
    import dataclasses

    fields = ", ".join(f"{f.name}={f.default!r}" for f in dataclasses.fields(analysis.config)
                       if f.default is not dataclasses.MISSING) or "none"
    sub = typer.Typer()

    @sub.command(name=analysis.name, help=f"{analysis.title or analysis.name} (registered analysis; tables: "
                 f"{', '.join(analysis.tables) or 'none'}).\n\nOptions for --set (defaults): {fields}.\n\n"
                 f"Example: curate audit {analysis.name} -p my-project")
    def _run(project: Path = ProjectOpt,
             settings: Optional[list[str]] = typer.Option(None, "--set", help="KEY=VALUE: one of the analysis's "
                                                          "options (repeatable)."),
             encoder: Optional[str] = typer.Option(None, help="Embedding set (default: the most recent)."),
             out_of_core: Optional[bool] = OocOpt,
             quiet: bool = QuietOpt):
        from curate.engine.analyses import registry

        options = dict(_parse_setting(t) for t in settings or [])
        cat = open_project(project)
        with shown(analysis.name, progress_enabled(quiet)) as progress:
            res = registry.run(cat, analysis, encoder=encoder, out_of_core=out_of_core, progress=progress, **options)
        _print_lines(res)
        for table, df in res.tables.items():
            console.print(f"{table}: {len(df)} rows written", highlight=False)

    return typer.main.get_command(sub)


@audit_app.command("list")
def audit_list():
    """The registered analyses, in the order `curate audit all` runs them.

    Example: curate audit list
    """
    from curate.engine.analyses import registry

    table = Table(title="registered analyses")
    for col in ("name", "command", "what", "tables", "reads"):
        table.add_column(col)
    for a in registry.analyses():
        table.add_row(a.name, f"curate audit {_AUDIT_ALIASES.get(a.name, a.name)}", a.title, ", ".join(a.tables),
                      ", ".join(sorted(a.needs)))
    console.print(table)


@audit_app.command("labels")
def audit_labels(
    project: Path = ProjectOpt,
    top: int = typer.Option(20, help="How many of the most likely label issues to list."),
    encoder: Optional[str] = typer.Option(None, help="Embedding set (default: the most recent)."),
    folds: int = typer.Option(5, help="Folds of the cross-validated linear probe."),
    method: str = typer.Option("self_confidence", help="Label quality score: self_confidence | normalized_margin."),
    seed: int = typer.Option(0, help="Seed of the fold split."),
    out_of_core: Optional[bool] = OocOpt,
    quiet: bool = QuietOpt,
):
    """Find probably-wrong labels (confident learning on out-of-sample probe + kNN probabilities).

    Example: curate audit labels -p my-project --top 20
    """
    from curate.engine.analyses import label_issues

    cat = open_project(project)
    with shown("label issues", progress_enabled(quiet)) as progress:
        res = label_issues.run_result(cat, encoder=encoder, n_folds=folds, method=method, seed=seed,
                                      out_of_core=out_of_core, progress=progress)
    _print_lines(res)
    _print_df(label_issues.top_issues(cat, limit=top), title="most likely label issues", max_rows=top)


# duplicates + leakage, outliers, image quality (issue 6)
@audit_app.command("duplicates")
def audit_duplicates(
    project: Path = ProjectOpt,
    threshold: Optional[float] = typer.Option(None, help="Cosine threshold for near-duplicates (default: calibrated "
                                              "for the encoder, see engine.analyses.duplicates)."),
    encoder: Optional[str] = typer.Option(None, help="Embedding set (default: the most recent)."),
    k: int = typer.Option(10, help="Neighbours per sample in the shared kNN graph."),
    hash_distance: int = typer.Option(2, help="Perceptual-hash Hamming distance that also counts as a near-duplicate "
                                      "(-1: embeddings only)."),
    seed: int = typer.Option(0, help="Seed of the SemDeDup k-means partitions."),
    semdedup: bool = typer.Option(True, "--semdedup/--no-semdedup", help="Also compute the SemDeDup pruning curve."),
    pixel_check: bool = typer.Option(True, "--pixel-check/--no-pixel-check",
                                     help="Confirm close neighbours below the threshold by their pixels (crops, "
                                          "shifts, mirror images, small rotations)."),
    out_of_core: Optional[bool] = OocOpt,
    quiet: bool = QuietOpt,
):
    """Exact + near-duplicate sets with proposed keepers, train/test leakage and the SemDeDup pruning curve.

    Example: curate audit duplicates -p my-project --threshold 0.95
    """
    from curate.engine.analyses import duplicates, registry

    cat = open_project(project)
    with shown("duplicates", progress_enabled(quiet)) as progress:
        res = registry.run(cat, "duplicates", encoder=encoder, out_of_core=out_of_core, graph_k=k, progress=progress,
                           threshold=threshold, k=k, seed=seed, semdedup=semdedup,
                           hash_distance=hash_distance, pixel_check=pixel_check)  # -1: off (the config's rule)
    _print_lines(res)
    s = res.summary
    top = duplicates.largest_sets(cat, limit=10)
    if len(top):
        _print_df(top, title="largest duplicate sets")
    if s["leakage_top"]:
        import pandas as pd

        _print_df(pd.DataFrame(s["leakage_top"]), title="leakage pairs (most similar first)", max_rows=10)
    if "semdedup" in s:
        import pandas as pd

        _print_df(pd.DataFrame(s["semdedup"]["curve"]),
                  title=f"SemDeDup curve ({s['semdedup']['n_partitions']} k-means partitions)")


@audit_app.command("outliers")
def audit_outliers(
    project: Path = ProjectOpt,
    encoder: Optional[str] = typer.Option(None, help="Embedding set (default: the most recent)."),
    k: int = typer.Option(10, help="Neighbours averaged for the score."),
    z: float = typer.Option(3.5, help="Robust z-score of log kNN distance above which a sample is flagged."),
    out_of_core: Optional[bool] = OocOpt,
    quiet: bool = QuietOpt,
):
    """Out-of-distribution scores from the kNN graph (lower = more outlying) and the flagged outliers.

    Example: curate audit outliers -p my-project
    """
    from curate.engine.analyses import outliers, registry

    cat = open_project(project)
    with shown("outliers", progress_enabled(quiet)) as progress:
        res = registry.run(cat, "outliers", encoder=encoder, out_of_core=out_of_core, graph_k=k, progress=progress,
                           k=k, z_threshold=z)
    _print_lines(res)
    _print_df(outliers.top_outliers(cat, limit=15), title="most outlying samples")


@audit_app.command("quality")
def audit_quality(
    project: Path = ProjectOpt,
    workers: Optional[int] = typer.Option(None, help="Threads reading images (default: min(8, CPUs))."),
    recompute: bool = typer.Option(False, help="Recompute image statistics already stored."),
    quiet: bool = QuietOpt,
):
    """Image-property issues: blurry, dark, bright, low information, odd aspect ratio / size, grayscale.

    Example: curate audit quality -p my-project
    """
    from curate.engine.analyses import image_quality

    cat = open_project(project)
    with shown("image quality", progress_enabled(quiet)) as progress:
        s = image_quality.run(cat, workers=workers, recompute=recompute, progress=progress)
    console.print(f"{s['images']} images ({s['stats_computed']} newly measured, {s['unreadable']} unreadable); "
                  f"{s['samples_with_issues']} with at least one issue")
    import pandas as pd

    _print_df(pd.DataFrame({"issue": list(s["issues"]), "images": list(s["issues"].values())}), title="issues")
    worst = image_quality.worst_examples(cat, per_issue=3)
    if len(worst):
        _print_df(worst, title="worst examples per issue", max_rows=30)


# clusters + 2-D map (issue 7), active learning (issue 8)
@app.command()
def cluster(
    project: Path = ProjectOpt,
    k: Optional[int] = typer.Option(None, "--k", help="Number of k-means clusters (default: the number of labelled classes, or chosen by kNN-graph modularity without labels)."),
    method: str = typer.Option("kmeans", help="kmeans | hdbscan (density clusters with a noise label -1)."),
    encoder: Optional[str] = typer.Option(None, help="Embedding set to cluster (default: the most recent)."),
    seed: int = typer.Option(0, help="Random seed (k-means, the k sweep's sample, UMAP)."),
    names: bool = typer.Option(True, "--names/--no-names", help="Suggest a name per cluster with the encoder."),
    out_of_core: Optional[bool] = OocOpt,
    quiet: bool = QuietOpt,
):
    """Cluster the embeddings, summarise each cluster and compute the 2-D map.

    Example: curate cluster -p my-project --k 20
    """
    from curate.engine.analyses import clusters

    cat = open_project(project)
    with shown("clusters", progress_enabled(quiet)) as progress:
        res = clusters.run(cat, encoder=encoder, k=k, method=method, seed=seed, name_clusters=names,
                           out_of_core=out_of_core, progress=progress)
    console.print(f"{res.k} clusters ({res.method}, k chosen by {res.summary['k_chosen_by']}) over {res.n} samples"
                  f"{f', {res.n_noise} noise' if res.n_noise else ''}; map: {res.map_method}; {res.seconds:.1f}s")
    df = cat.query_df("SELECT cluster, size, name, majority_label, purity FROM cluster_summaries ORDER BY cluster")
    _print_df(df.astype(object).where(df.notna(), "-"), title="clusters", max_rows=30)


@app.command()
def query(
    project: Path = ProjectOpt,
    strategy: str = typer.Option("typiclust", help="random | least_confidence | margin | entropy | coreset | "
                                 "typiclust | probcover | badge | margin_diversity"),
    budget: int = typer.Option(100, help="How many samples to select."),
    encoder: Optional[str] = typer.Option(None, help="Embedding set (default: the most recent)."),
    seed: int = typer.Option(0, help="Random seed."),
    max_per_class: Optional[int] = typer.Option(None, help="At most this many picks per predicted class."),
    include_outliers: bool = typer.Option(False, help="Also select samples flagged as outliers."),
    url_prefix: Optional[str] = typer.Option(None, help="Image URL prefix for the Label Studio tasks, "
                                             "e.g. /data/local-files/?d="),
    balance_by: Optional[str] = typer.Option(None, "--balance-by", help="Sample metadata key (e.g. camera) whose "
                                             "values the batch is spread across."),
    out_of_core: Optional[bool] = OocOpt,
    quiet: bool = QuietOpt,
):
    """Select the next batch to label (table `queries`) and export it as CSV/JSON/Label Studio tasks.

    Example: curate query -p my-project --strategy typiclust --budget 100
    """
    from curate.engine.analyses import active

    with shown("query", progress_enabled(quiet)) as progress:
        res = active.run(open_project(project), strategy=strategy, budget=budget, encoder=encoder, seed=seed,
                         max_per_class=max_per_class, exclude_outliers=not include_outliers, url_prefix=url_prefix,
                         out_of_core=out_of_core, balance_by=balance_by, progress=progress)
    if res.batch_id is None:
        console.print("nothing to query: every embedded sample is labeled or excluded")
        return
    excluded = ", ".join(f"{v} {k}" for k, v in res.excluded.items() if v) or "none"
    console.print(f"batch {res.batch_id}: {len(res.table)} samples by {res.strategy}; excluded: {excluded}")
    _print_df(res.table[["rank", "sample_id", "score", "reason"]], title=f"query batch {res.batch_id}")
    for f in res.files:
        console.print(f"wrote {f}")


@app.command("import-labels")
def import_labels_cmd(
    file: Path = typer.Argument(..., help="CSV/TSV/Parquet/JSON with sample_id or path + label, or a Label Studio export."),
    project: Path = ProjectOpt,
    source: str = typer.Option("annotation", help="Label source recorded in the catalog."),
):
    """Add labels that came back from annotators; the next `curate query` excludes them.

    Example: curate import-labels labels.csv -p my-project
    """
    from curate.engine.labels_io import import_labels

    rep = import_labels(open_project(project), file, source=source)
    console.print(f"{rep.added} labels added ({rep.already_same} unchanged, {rep.skipped_empty} empty rows skipped)"
                  + (f"; new classes: {', '.join(rep.new_classes)}" if rep.new_classes else ""))


# ------------------------------------------------------------------------------------------- UI, decisions, export (issue 9)


def _serve_ui(project: Path, port: int = 8501, host: str = "127.0.0.1") -> None:
    from curate.engine.ui_launcher import serve

    serve(project, port=port, host=host)


@app.command()
def ui(
    project: Path = ProjectOpt,
    port: int = typer.Option(8501, help="Port to serve on."),
    host: str = typer.Option("127.0.0.1", help="Address to bind (127.0.0.1 keeps it local)."),
):
    """Serve the Streamlit review UI over the project's catalog.

    Example: curate ui -p my-project --port 8501
    """
    open_project(project)
    _serve_ui(project, port=port, host=host)


@app.command()
def decide(
    sample_id: int = typer.Argument(..., help="Sample id (see `curate status` or the UI)."),
    action: str = typer.Argument(..., help="keep | relabel | remove | merge (merge = keep this copy of its duplicate set)."),
    label: Optional[str] = typer.Option(None, "--label", "-l", help="New label (relabel only)."),
    reason: str = typer.Option("", "--reason", "-r", help="Why (kept in the history and the export's changes report)."),
    project: Path = ProjectOpt,
):
    """Record a review decision for one sample (appended to the history; undo with `curate undo`).

    Example: curate decide 42 relabel --label dog --reason \"clearly a dog\" -p my-project
    """
    did = open_project(project).add_decision(sample_id, action.lower(), new_label=label, reason=reason)
    console.print(f"decision {did}: sample {sample_id} {action.lower()}" + (f" -> {label}" if label else ""))


@app.command()
def undo(decision_id: int = typer.Argument(..., help="Id of the decision to undo."), project: Path = ProjectOpt):
    """Undo a decision (an undo record is appended; nothing is deleted).

    Example: curate undo 12 -p my-project
    """
    did = open_project(project).undo_decision(decision_id)
    console.print(f"decision {decision_id} undone (undo record {did})")


@app.command()
def decisions(
    project: Path = ProjectOpt,
    limit: int = typer.Option(50, help="How many to list (newest first)."),
    offset: int = typer.Option(0, help="Skip this many newest ones."),
):
    """List the decision history, newest first, with whether each was undone.

    Example: curate decisions -p my-project --limit 20
    """
    import pandas as pd

    df = open_project(project).decisions(limit=limit, offset=offset)
    if df.empty:
        console.print("no decisions yet")
        return
    df["status"] = [f"undo of {int(u)}" if pd.notna(u) else ("undone" if d else "live")
                    for u, d in zip(df["undoes"], df["undone"])]
    df["created_at"] = df["created_at"].dt.strftime("%Y-%m-%d %H:%M:%S")
    _print_df(df[["id", "sample_id", "action", "new_label", "reason", "status", "created_at"]].fillna(""),
              title="decisions", max_rows=limit)


@app.command()
def export(
    project: Path = ProjectOpt,
    format: list[str] = typer.Option(["csv"], "--format", "-f", help="csv | parquet | imagefolder | coco | yolo | hf | "
                                     "labelstudio | source (the format(s) the samples came from); repeatable."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="New or empty folder (default: <project>/exports/<timestamp>)."),
    copy: bool = typer.Option(False, "--copy/--symlink", help="ImageFolder / COCO / YOLO images: copy files instead of symlinking."),
    queue: bool = typer.Option(True, "--queue/--no-queue", help="Also export the annotation queue (CSV, JSON, Label Studio)."),
    url_prefix: Optional[str] = typer.Option(None, help="Label Studio data.image prefix, e.g. '/data/local-files/?d='."),
    review: str = typer.Option("label-issues", "--for", help="--format labelstudio: review tasks for label-issues | duplicates."),
):
    """Export the cleaned dataset (live decisions applied), a changes report and the annotation queue.

    Example: curate export --format coco --format labelstudio --for label-issues -o cleaned -p proj
    """
    from curate.engine.export import export_dataset

    res = export_dataset(open_project(project), out_dir=out, formats=format, link="copy" if copy else "symlink",
                         queue=queue, url_prefix=url_prefix, review=review)
    console.print(f"exported {res.n_exported} of {res.n_samples} samples to {res.out_dir} "
                  f"({res.n_removed} removed, {res.n_relabelled} relabelled, {res.n_labelled} newly labelled"
                  + (f", {res.n_queue} queue items" if res.n_queue else "") + ")")
    for fmt, counts in res.format_counts.items():
        console.print(f"  {fmt}: " + ", ".join(f"{k} {v}" for k, v in counts.items()), highlight=False)
    for p in res.files:
        console.print(f"  {p}")


@app.command()
def report(
    project: Path = ProjectOpt,
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="HTML file to write (default: "
                                       "<project>/exports/report.html); the Markdown summary goes next to it (.md)."),
    top: int = typer.Option(12, "--top", help="Thumbnails per gallery (label issues, duplicate sets, outliers)."),
):
    """Write a self-contained HTML report (health scores, plots, thumbnails, decisions) and a Markdown summary.

    Example: curate report -p curate-project --out report.html --top 20
    """
    from curate.engine.html_report import write_report

    files = write_report(open_project(project), out=out, top=top)
    console.print(f"wrote {files.html}", highlight=False, soft_wrap=True)
    console.print(f"wrote {files.markdown}", highlight=False, soft_wrap=True)


@app.command("import-labelstudio")
def import_labelstudio_cmd(
    file: Path = typer.Argument(..., help="Label Studio JSON export of tasks made by `curate export --format labelstudio`."),
    project: Path = ProjectOpt,
):
    """Record the annotators' review choices as decisions (relabel / keep / remove, who = the annotator).

    Example: curate import-labelstudio project-3-at-2026-12-01.json -p proj
    """
    from curate.engine.formats.labelstudio import import_review

    rep = import_review(open_project(project), file)
    console.print(f"{rep.tasks} tasks: {rep.relabelled} relabelled, {rep.kept} kept, {rep.removed} removed, "
                  f"{rep.already_recorded} already recorded, {rep.not_annotated} without an annotation",
                  highlight=False)


def _click_exceptions():
    """(ClickException, UsageError) of the Click that typer runs on (recent typer releases vendor their own)."""
    mod = sys.modules[typer.BadParameter.__module__]
    return mod.ClickException, mod.UsageError


def _usage_error(exc) -> None:
    """Click's usage line, then one ``error:`` line that names the command's --help (and a group's commands)."""
    ctx = exc.ctx
    msg = exc.format_message().rstrip(".")
    if ctx is not None:
        group = getattr(ctx.command, "commands", None)
        if group and msg.startswith(("No such option", "Missing command")):
            msg += f"; `{ctx.command_path}` takes a command first: {', '.join(group)}"
        msg += ("" if msg.endswith("?") else ".") + f" See `{ctx.command_path} --help`."
        typer.echo(ctx.get_usage(), err=True)
    typer.echo(f"error: {msg}", err=True)


def _unexpected(exc: BaseException) -> str:
    """Write the traceback of an unexpected error to a file; return its path ('' when it cannot be written)."""
    import tempfile
    import time
    import traceback

    path = Path(tempfile.gettempdir()) / f"curate-traceback-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    try:
        path.write_text(f"curate {' '.join(sys.argv[1:])}\n\n" + "".join(traceback.format_exception(exc)))
        return str(path)
    except OSError:
        return ""


def main() -> None:
    click_exception, usage_error = _click_exceptions()
    debug = os.environ.get("CURATE_DEBUG", "").strip().lower() in ("1", "true", "yes", "on")
    try:
        # Without standalone mode Click *returns* the code of a `typer.Exit(n)` instead of exiting with it, and
        # leaves its own errors to us (below), so that none of them ends in a traceback.
        code = app(standalone_mode=False, prog_name="curate")
        if isinstance(code, int) and code:
            sys.exit(code)
    except usage_error as exc:  # unknown command/option, bad or missing value
        _usage_error(exc)
        sys.exit(2)
    except click_exception as exc:
        typer.echo(f"error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except CurateError as exc:
        if debug or _DEBUG:
            import traceback

            traceback.print_exc()
        console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except typer.Abort:
        sys.exit(130)
    except (typer.Exit, SystemExit) as exc:  # normal exits
        code = getattr(exc, "exit_code", getattr(exc, "code", 0))
        sys.exit(code or 0)
    except Exception as exc:  # a bug or an environment problem: one line, the traceback in a file
        if debug or _DEBUG:
            import traceback

            traceback.print_exc()
            sys.exit(1)
        where = _unexpected(exc)
        first = str(exc).splitlines()[0] if str(exc) else ""
        typer.echo(f"error: {type(exc).__name__}: {first} "
                   + (f"(full traceback in {where}; rerun with --debug)" if where else "(rerun with --debug)"), err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
