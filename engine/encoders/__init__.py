"""Encoder registry: turn a name into a ready-to-use image encoder.

>>> from curate.engine.encoders import get_encoder
>>> enc = get_encoder("effnet-lite0", device="cpu")        # doctest: +SKIP
>>> feats = enc.encode_images(batch)                        # [n, 1280], rows L2-normalised  # doctest: +SKIP

Families (one file each): ``clip`` (open_clip, image + text, weights from the local cache or a checkpoint path)
and ``effnet`` (EfficientNet-Lite0 with packaged ImageNet weights — the offline default).  ``auto`` picks CLIP
when its weights are on disk and EfficientNet-Lite0 otherwise, logging one line that says which and why.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from curate.engine.catalog import CurateError
from curate.engine.encoders import clip as _clip
from curate.engine.encoders import effnet as _effnet
from curate.engine.encoders.base import Encoder, Preprocessing, amp_dtype, resolve_device

__all__ = [
    "Encoder",
    "EncoderInfo",
    "Preprocessing",
    "amp_dtype",
    "available_encoders",
    "canonical_name",
    "explain_auto",
    "get_encoder",
    "is_builtin_name",
    "resolve_auto",
    "resolve_device",
    "DEFAULT_CLIP",
    "OFFLINE_DEFAULT",
]

DEFAULT_CLIP = _clip.DEFAULT_NAME
OFFLINE_DEFAULT = _effnet.NAME

log = logging.getLogger("curate.encoders")


@dataclass(frozen=True)
class EncoderInfo:
    """One row of :func:`available_encoders`."""

    name: str
    family: str
    available: bool
    supports_text: bool
    reason: str


def is_builtin_name(name: str) -> bool:
    """Whether ``name`` belongs to a built-in encoder family (``clip...`` or ``effnet-lite0...``)."""
    return name == _clip.PREFIX or name.startswith(_clip.PREFIX + ":") or _effnet.variant_of(name) is not None


def canonical_name(name: str) -> str:
    """The name vectors are stored under (``clip`` -> the default CLIP name, paths made absolute)."""
    if name == "auto":
        return resolve_auto()
    if name == _clip.PREFIX or name.startswith(_clip.PREFIX + ":"):
        return _clip.parse_name(name).name
    if _effnet.variant_of(name) is not None:
        return _effnet.canonical(name)
    raise CurateError(f"unknown encoder {name!r}; use auto, {OFFLINE_DEFAULT}, effnet-lite2, clip:<model>/<tag> or "
                      "clip:<model>@<path> "
                      "(`curate encoders` lists what is available)")


def explain_auto() -> tuple[str, str]:
    """(encoder name, why) for ``auto``: CLIP when its weights are on disk, else the offline default."""
    ok, reason = _clip.probe(DEFAULT_CLIP)
    if ok:
        return DEFAULT_CLIP, f"its weights are available locally ({reason})"
    cached = _clip.cached_names()
    if cached:
        return cached[0], f"{DEFAULT_CLIP} is not cached but {cached[0]} is"
    return OFFLINE_DEFAULT, (f"{DEFAULT_CLIP} weights are not on this machine; {OFFLINE_DEFAULT} ships with the "
                             "package (put CLIP weights in the Hugging Face cache to use CLIP)")


def resolve_auto() -> str:
    """Name chosen by ``auto``; logs one line saying which and why.  Quick: only looks at local files."""
    name, why = explain_auto()
    log.info("encoder auto -> %s: %s", name, why)
    return name


def available_encoders() -> list[EncoderInfo]:
    """Built-in encoders and whether each can be loaded here (default CLIP, any cached CLIP, EfficientNet-Lite0)."""
    out: list[EncoderInfo] = []
    for variant in _effnet.VARIANTS:
        try:
            path = _effnet.weights_path(variant)
            out.append(EncoderInfo(variant, "effnet", True, False, f"packaged weights {path}"))
        except CurateError as exc:
            out.append(EncoderInfo(variant, "effnet", False, False, str(exc)))
    ok, reason = _clip.probe(DEFAULT_CLIP)
    out.append(EncoderInfo(DEFAULT_CLIP, "clip", ok, True, reason))
    for name in _clip.cached_names():
        if name != DEFAULT_CLIP:
            out.append(EncoderInfo(name, "clip", True, True, "weights in the local cache"))
    return out


def get_encoder(name: str = "auto", device: str | torch.device = "auto") -> Encoder:
    """Load the encoder called ``name`` onto ``device``.

    Parameters
    ----------
    name : ``auto``, ``effnet-lite0`` / ``effnet-lite2`` (or ``...:<input size>``), ``clip`` / ``clip:<model>/<tag>`` /
        ``clip:<model>@<checkpoint path>``.
    device : ``auto`` (cuda > mps > cpu), ``cpu``, ``cuda`` or ``mps``.

    Raises
    ------
    CurateError : unknown name, or weights that are not available offline.
    """
    name = canonical_name(name or "auto")
    dev = resolve_device(device)
    if name.startswith(_clip.PREFIX + ":"):
        return _clip.ClipEncoder(name, device=dev)
    return _effnet.EffnetLite0Encoder(device=dev, image_size=_effnet.parse_name(name),
                                      variant=_effnet.variant_of(name).name)
