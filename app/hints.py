"""The commands the review app's empty states suggest, with this project's folder filled in.

Every hint is built here so that ``tests/test_cli_hints.py`` can parse each command with the real CLI: a renamed
command or option cannot leave a broken hint behind.  The pages show them with :func:`app.components.no_data`.
"""

from __future__ import annotations

import shlex


def cmd(root: str, *args: str) -> str:
    """The command line: curate, then ``args``, then ``-p ROOT`` (the folder quoted for a shell when it needs it)."""
    return " ".join(["curate", *args, "-p", shlex.quote(str(root))])


def audit(root: str) -> str:
    return cmd(root, "audit", "all")


def empty_catalog(root: str) -> str:
    return (f"The catalog is empty: run `{cmd(root, 'ingest', 'FOLDER')}` (or `curate demo`), "
            f"then `{audit(root)}`.")


def no_results(root: str) -> str:
    return f"No analysis results yet: run `{audit(root)}`."


def no_label_issues(root: str) -> str:
    return (f"No label issues scored yet: run `{audit(root)}` (or just this analysis: "
            f"`{cmd(root, 'audit', 'labels')}`).")


def no_duplicates(root: str) -> str:
    return (f"No unreviewed duplicate sets. (Run `{audit(root)}` or `{cmd(root, 'audit', 'duplicates')}` to find "
            "them; switch Status to 'all' to see reviewed ones.)")


def no_noise_estimate(root: str) -> str:
    return f"No noise estimate recorded: re-run `{cmd(root, 'audit', 'labels')}`."


def no_semdedup_curve(root: str) -> str:
    return f"No SemDeDup curve recorded: run `{cmd(root, 'audit', 'duplicates')}`."


def no_outliers(root: str) -> str:
    return f"No unreviewed outliers (run `{audit(root)}` or `{cmd(root, 'audit', 'outliers')}` to score them)."


def no_image_issues(root: str) -> str:
    return f"No image-quality issues recorded (run `{audit(root)}` or `{cmd(root, 'audit', 'quality')}`)."


def no_map(root: str) -> str:
    return f"No 2-D map yet: run `{audit(root)}` (its clusters step computes it) or `{cmd(root, 'cluster')}`."


def no_queue(root: str) -> str:
    return f"No annotation queue yet: run `{audit(root)}` (its active-learning step fills it) or `{cmd(root, 'query')}`."


def queue_done(root: str) -> str:
    return f"The queue is done. Export it or run `{cmd(root, 'query')}` for a new batch."


def no_embeddings(root: str) -> str:
    return f"Similarity search needs embeddings: run `{cmd(root, 'embed')}` (or `{audit(root)}`)."


def text_needs_clip(root: str, encoder: str) -> str:
    return (f"Text search needs CLIP embeddings; this project's `{encoder}` cannot encode text. Run "
            f"`{cmd(root, 'embed', '--encoder', 'clip')}` (needs CLIP weights on disk), or search by sample or image.")


def all_hints(root: str) -> list[str]:
    """Every hint above for ``root`` (what the parse test checks)."""
    return [empty_catalog(root), no_results(root), no_label_issues(root), no_noise_estimate(root), no_duplicates(root), no_semdedup_curve(root), no_outliers(root),
            no_image_issues(root), no_map(root), no_queue(root), queue_done(root), no_embeddings(root),
            text_needs_clip(root, "effnet-lite0")]
