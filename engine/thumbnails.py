"""Cached thumbnails for the review UI.

A thumbnail is made once, on the first view of a sample, and reused afterwards::

    <project>/thumbnails/<sample_id>.jpg      (longest side ``THUMBNAIL_SIZE`` pixels, JPEG)

Missing or unreadable source files never raise: :func:`thumbnail` returns ``None`` and the UI shows
:func:`placeholder` instead, so a page over a catalog whose images moved still renders.  A thumbnail older
than its source file is made again.
"""

from __future__ import annotations

import functools
import io
import os
import tempfile
from pathlib import Path

THUMBNAIL_SIZE = 128
JPEG_QUALITY = 85


def thumbnail_path(thumbnails_dir: str | os.PathLike, sample_id: int) -> Path:
    """Where the cached thumbnail of ``sample_id`` lives (it may not exist yet)."""
    return Path(thumbnails_dir) / f"{int(sample_id)}.jpg"


def resolve_source(project_root: str | os.PathLike, path: str) -> Path:
    """The image file of a sample: catalog paths are absolute; relative ones are read from the project folder."""
    p = Path(path)
    return p if p.is_absolute() else Path(project_root) / p


def make_thumbnail(source: str | os.PathLike, dest: str | os.PathLike, size: int = THUMBNAIL_SIZE) -> bool:
    """Write a JPEG thumbnail of ``source`` to ``dest`` (atomically); returns False when the source is unreadable.

    Parameters
    ----------
    source : image file (any format Pillow reads).
    dest : output ``.jpg`` path; its folder is created when missing.
    size : longest side of the thumbnail in pixels (the aspect ratio is kept, never upscaled).
    """
    from curate.engine.images import open_rgb

    try:
        # JPEG sources decode at reduced scale (much faster on large photos); EXIF rotation applied, any mode
        # (16-bit, CMYK, palette, alpha) to 8-bit RGB on white
        im = open_rgb(source, draft=size)
        im.thumbnail((size, size))
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=JPEG_QUALITY)
    except Exception:  # missing, truncated, corrupt or unsupported files: the caller shows a placeholder
        return False
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    # write-then-rename so a concurrent reader never sees a half-written file
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.stem}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(buf.getvalue())
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return True


def thumbnail(thumbnails_dir: str | os.PathLike, sample_id: int, source: str | os.PathLike,
              size: int = THUMBNAIL_SIZE) -> Path | None:
    """The cached thumbnail of a sample, creating it on first use; ``None`` when the image cannot be read.

    The cached file is reused while it is at least as new as the source (a re-ingested, changed file keeps its
    sample id, so its thumbnail is remade); a source that no longer exists gives ``None``.
    """
    try:
        src_mtime = os.stat(source).st_mtime
    except OSError:
        return None
    dest = thumbnail_path(thumbnails_dir, sample_id)
    try:
        if dest.stat().st_mtime >= src_mtime:
            return dest
    except OSError:
        pass
    return dest if make_thumbnail(source, dest, size) else None


def ensure_thumbnails(thumbnails_dir: str | os.PathLike, items: list[tuple[int, str | os.PathLike]],
                      size: int = THUMBNAIL_SIZE) -> dict[int, Path | None]:
    """:func:`thumbnail` for many ``(sample_id, source)`` pairs; returns ``{sample_id: path or None}``."""
    return {int(sid): thumbnail(thumbnails_dir, sid, src, size) for sid, src in items}


@functools.lru_cache(maxsize=8)
def placeholder(size: int = THUMBNAIL_SIZE, text: str = "missing") -> bytes:
    """A grey JPEG with ``text`` in it, shown where an image file is missing or unreadable."""
    from PIL import Image, ImageDraw

    im = Image.new("RGB", (size, size), (222, 222, 222))
    draw = ImageDraw.Draw(im)
    draw.rectangle([0, 0, size - 1, size - 1], outline=(170, 170, 170))
    draw.line([0, 0, size - 1, size - 1], fill=(190, 190, 190))
    draw.line([0, size - 1, size - 1, 0], fill=(190, 190, 190))
    bbox = draw.textbbox((0, 0), text)
    w, h = bbox[2] - bbox[0], bbox[3] - bbox[1]
    draw.rectangle([(size - w) // 2 - 3, (size - h) // 2 - 3, (size + w) // 2 + 3, (size + h) // 2 + 5], fill=(222, 222, 222))
    draw.text(((size - w) // 2, (size - h) // 2), text, fill=(90, 90, 90))
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()
