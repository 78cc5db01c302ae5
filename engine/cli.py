"""`curate` command line: each command is a few lines calling the Python API.

Errors derived from :class:`engine.catalog.CurateError` are printed as one line (no traceback) with exit code 2.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from engine.catalog import DEFAULT_PROJECT, CurateError, init_project, open_project

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Curate: find and fix label errors, duplicates and outliers in image datasets.")
audit_app = typer.Typer(no_args_is_help=False, help="Run analyses and print their summaries.")
app.add_typer(audit_app, name="audit")
console = Console()

ProjectOpt = typer.Option(DEFAULT_PROJECT, "--project", "-p", help="Project workspace folder.")


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
    """Create a project workspace (catalog.duckdb, embeddings/, indexes/, thumbnails/, exports/)."""
    cat = init_project(directory)
    console.print(f"project ready at {cat.root} (schema v{cat.schema_version()})")


@app.command()
def ingest(
    source: Path = typer.Argument(..., help="ImageFolder root, unlabeled folder, or a CSV/Parquet manifest."),
    project: Path = ProjectOpt,
    kind: str = typer.Option("auto", help="auto | imagefolder | manifest | unlabeled"),
    split: Optional[str] = typer.Option(None, help="Split to assign when the layout has none (train/val/test)."),
):
    """Ingest images into the catalog (idempotent: re-ingesting the same files is a no-op)."""
    from engine.ingest import ingest as do_ingest

    cat = open_project(project, create=True)
    report = do_ingest(cat, source, kind=kind, split=split, progress=True)
    report.print(console)


@app.command()
def status(project: Path = ProjectOpt):
    """Print what the project holds: samples, classes, quarantine, analyses that ran."""
    from engine.report import print_status

    print_status(open_project(project), console)


@app.command()
def demo(
    project: Path = typer.Option(Path("curate-project"), "--project", "-p", help="Project folder for the demo."),
    data: Optional[Path] = typer.Option(None, help="Where to write the demo images (default: <project>/demo-data)."),
    seed: int = typer.Option(0, help="Seed for the injected label noise / duplicates / corrupt files."),
    ui: bool = typer.Option(True, "--ui/--no-ui", help="Start the review UI at the end."),
    port: int = typer.Option(8501, help="UI port."),
    encoder: str = typer.Option("auto", help="Encoder for the embeddings (auto picks CLIP when its weights are local)."),
):
    """Build the embedded demo dataset, run the full audit, print measured scores, then open the UI."""
    from engine.demo import run_demo

    run_demo(project, data_dir=data, seed=seed, encoder=encoder, console=console)
    if ui:
        _serve_ui(project, port=port, host="127.0.0.1")


# ------------------------------------------------------------------------------------------- embeddings (issue 3)
# ------------------------------------------------------------------------------------------- indexes (issue 4)
# ------------------------------------------------------------------------------------------- analyses (issues 5-8)
# ------------------------------------------------------------------------------------------- UI, decisions, export (issue 9)


def _serve_ui(project: Path, port: int = 8501, host: str = "127.0.0.1") -> None:
    from engine.ui_launcher import serve

    serve(project, port=port, host=host)


@app.command()
def ui(
    project: Path = ProjectOpt,
    port: int = typer.Option(8501, help="Port to serve on."),
    host: str = typer.Option("127.0.0.1", help="Address to bind (127.0.0.1 keeps it local)."),
):
    """Serve the Streamlit review UI over the project's catalog."""
    open_project(project)
    _serve_ui(project, port=port, host=host)


def main() -> None:
    try:
        app(standalone_mode=False)
    except CurateError as exc:
        console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except typer.Abort:
        sys.exit(130)
    except (typer.Exit, SystemExit) as exc:  # normal exits
        code = getattr(exc, "exit_code", getattr(exc, "code", 0))
        sys.exit(code or 0)
    except Exception as exc:  # click usage errors etc.
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        raise


if __name__ == "__main__":
    main()
