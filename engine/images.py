"""Decode image files the same way everywhere: EXIF orientation applied, any pixel mode to 8-bit RGB.

Embedding, thumbnails, image statistics, perceptual hashes and the UI's large view all read images through
:func:`open_rgb` (or :func:`to_rgb` on an already opened image), so a photo whose camera stored it sideways
with an EXIF rotation is seen upright by the model *and* by the reviewer, and a 16-bit scan is not turned
into a white square by Pillow's clipping ``convert("RGB")``.
"""

from __future__ import annotations

import os
import warnings
from typing import IO

import numpy as np
from PIL import Image, ImageOps

# Decompression-bomb guard: images above this many pixels are refused (quarantined at ingest) rather than decoded.
# Pillow's own guard is aligned with it (it warns above the limit, which we treat as an error, and refuses at twice
# it), so raising CURATE_MAX_PIXELS for genuinely huge images works everywhere images are opened.
MAX_PIXELS = int(os.environ.get("CURATE_MAX_PIXELS", 178_956_970))
Image.MAX_IMAGE_PIXELS = MAX_PIXELS

# Pillow modes that hold more than 8 bits per pixel; ``convert("RGB")`` clips them to 255 instead of scaling.
HIGH_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
# EXIF Orientation values that swap width and height.
TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)


def exif_orientation(im: Image.Image) -> int:
    """The EXIF Orientation tag (1 = upright, no change); 1 when absent or unreadable."""
    try:
        return int(im.getexif().get(0x0112, 1) or 1)
    except Exception:  # a broken EXIF block must not make an otherwise fine image unreadable
        return 1


def upright_size(im: Image.Image) -> tuple[int, int]:
    """(width, height) as displayed, i.e. after the EXIF rotation."""
    w, h = im.size
    return (h, w) if exif_orientation(im) in TRANSPOSING_ORIENTATIONS else (w, h)


def to_rgb(im: Image.Image) -> Image.Image:
    """An 8-bit RGB copy of ``im``: high-bit-depth grey scaled (not clipped), transparency flattened on white,
    CMYK / palette / LAB / grey converted."""
    if im.mode in HIGH_BIT_MODES:
        a = np.asarray(im, dtype=np.float32)
        hi = float(a.max()) if a.size else 0.0
        if im.mode.startswith("I;16") or hi > 255:
            a = a * (255.0 / 65535.0)
        elif im.mode == "F" and hi <= 1.0:
            a = a * 255.0
        return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L").convert("RGB")
    if im.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    return im.convert("RGB")


def open_rgb(source: str | os.PathLike | IO[bytes], draft: int | None = None) -> Image.Image:
    """Open an image file as upright 8-bit RGB; raises (OSError, ValueError, ...) on broken files.

    Parameters
    ----------
    source : path or binary file object.
    draft : for JPEGs, let the decoder produce a reduced-scale image whose sides are still at least this many
        pixels (much faster on large photos); other formats ignore it.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(source) as im:
            if draft:
                im.draft("RGB", (draft, draft))
            return to_rgb(ImageOps.exif_transpose(im))
