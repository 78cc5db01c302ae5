"""Encoder registry: turn a name into a ready-to-use image encoder.

>>> from curate.engine.encoders import get_encoder
>>> enc = get_encoder("effnet-lite0", device="cpu")        # doctest: +SKIP
>>> feats = enc.encode_images(batch)                        # [n, 1280], rows L2-normalised  # doctest: +SKIP

Families (one file each): ``clip`` (open_clip, image + text, weights from the local cache or a checkpoint path),
``effnet`` (EfficientNet-Lite0 / Lite2 with packaged ImageNet weights — Lite0 is the offline default) and ``timm``
(any timm backbone, e.g. DINOv2, with weights from the local cache or a file: :mod:`.backbone`).
:data:`FAMILIES` is the one table of built-in names: each entry owns a name prefix (a name belongs to it when it
is the prefix alone or ``<prefix>:...``) and says how such a name is canonicalised, loaded and listed, its default
input size and a one-line description.  :func:`family_of` is the one lookup; :func:`canonical_name`,
:func:`is_builtin_name`, :func:`get_encoder` and :func:`available_encoders` all go through it.  Any other name
(``byo:...``, an imported vector set) is not a built-in encoder.

``auto`` picks CLIP when its weights are on disk and EfficientNet-Lite0 otherwise, logging one line that says which
and why.  Devices are resolved by :func:`engine.devices.resolve_device` (``auto``: cuda > mps > cpu).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial
from typing import Callable

import torch

from curate.engine.catalog import CurateError
from curate.engine.devices import resolve_device
from curate.engine.encoders import backbone as _timm
from curate.engine.encoders import clip as _clip
from curate.engine.encoders import effnet as _effnet
from curate.engine.encoders.base import Encoder, Preprocessing, amp_dtype

__all__ = [
    "Encoder",
    "EncoderInfo",
    "FAMILIES",
    "Family",
    "Preprocessing",
    "amp_dtype",
    "available_encoders",
    "canonical_name",
    "explain_auto",
    "family_of",
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


@dataclass(frozen=True)
class Family:
    """One row of the encoder table: the names under ``prefix`` and how to use them.

    Attributes
    ----------
    prefix : the family's names are ``prefix`` alone or ``prefix:<options>`` (``effnet-lite0:64``, ``clip:M/T``).
    family : the family an encoder reports (``Encoder.family``): ``effnet`` or ``clip``.
    description : one line saying what the encoders are.
    input_size : default model input side in pixels; None when the model's own config sets it (CLIP).
    supports_text : whether the encoders embed text too.
    usage : how names are written, for error messages.
    canonical : name -> the name vectors are stored under (raises CurateError on a malformed name).
    load : (canonical name, torch device) -> the loaded :class:`Encoder`.
    listing : () -> the :class:`EncoderInfo` rows ``curate encoders`` shows for the family.
    """

    prefix: str
    family: str
    description: str
    input_size: int | None
    supports_text: bool
    usage: str
    canonical: Callable[[str], str]
    load: Callable[[str, torch.device], Encoder]
    listing: Callable[[], list[EncoderInfo]]


def _effnet_load(variant: str, name: str, device: torch.device) -> Encoder:
    return _effnet.EffnetLite0Encoder(device=device, image_size=_effnet.parse_name(name), variant=variant)


def _effnet_listing(variant: str) -> list[EncoderInfo]:
    try:
        path = _effnet.weights_path(variant)
        return [EncoderInfo(variant, "effnet", True, False, f"packaged weights {path}")]
    except CurateError as exc:
        return [EncoderInfo(variant, "effnet", False, False, str(exc))]


def _clip_canonical(name: str) -> str:
    return _clip.parse_name(name).name


def _clip_load(name: str, device: torch.device) -> Encoder:
    return _clip.ClipEncoder(name, device=device)


def _clip_listing() -> list[EncoderInfo]:
    ok, reason = _clip.probe(DEFAULT_CLIP)
    out = [EncoderInfo(DEFAULT_CLIP, "clip", ok, True, reason)]
    for name in _clip.cached_names():
        if name != DEFAULT_CLIP:
            out.append(EncoderInfo(name, "clip", True, True, "weights in the local cache"))
    return out


def _timm_load(name: str, device: torch.device) -> Encoder:
    return _timm.TimmEncoder(name, device=device)


def _timm_listing() -> list[EncoderInfo]:
    ok, reason = _timm.probe(_timm.DINOV2_SMALL)
    return [EncoderInfo(_timm.DINOV2_SMALL, _timm.PREFIX, ok, False, reason)]


FAMILIES: tuple[Family, ...] = (
    *(Family(prefix=v.name, family="effnet", description=v.description, input_size=v.image_size,
             supports_text=False, usage=v.name, canonical=_effnet.canonical, load=partial(_effnet_load, v.name),
             listing=partial(_effnet_listing, v.name))
      for v in _effnet.VARIANTS.values()),
    Family(prefix=_clip.PREFIX, family="clip",
           description="open_clip image + text encoders; weights from the local Hugging Face cache or a checkpoint",
           input_size=None, supports_text=True,
           usage=f"{_clip.PREFIX}:<model>/<tag> or {_clip.PREFIX}:<model>@<path>",
           canonical=_clip_canonical, load=_clip_load, listing=_clip_listing),
    Family(prefix=_timm.PREFIX, family=_timm.PREFIX,
           description="any timm backbone (DINOv2, ...); weights from the local Hugging Face cache or a file",
           input_size=None, supports_text=False, usage=_timm.USAGE,
           canonical=_timm.canonical, load=_timm_load, listing=_timm_listing),
)
"""The built-in encoder families, in the order ``curate encoders`` lists them."""

_BY_PREFIX = {f.prefix: f for f in FAMILIES}


def family_of(name: str) -> Family | None:
    """The built-in family ``name`` belongs to (``name`` is its prefix or ``<prefix>:...``), None for any other
    name (``auto``, ``byo:...``, an imported set)."""
    return _BY_PREFIX.get(str(name).split(":", 1)[0])


def is_builtin_name(name: str) -> bool:
    """Whether ``name`` belongs to a built-in encoder family (``clip...``, ``effnet-lite0...``, ``effnet-lite2...``)."""
    return family_of(name) is not None


def canonical_name(name: str) -> str:
    """The name vectors are stored under (``auto`` -> the encoder it picks, ``clip`` -> the default CLIP name,
    paths made absolute, ``effnet-lite0:224`` -> ``effnet-lite0``)."""
    if name == "auto":
        return resolve_auto()
    fam = family_of(name)
    if fam is None:
        raise CurateError(f"unknown encoder {name!r}; use auto, {', '.join(f.usage for f in FAMILIES)} "
                          "(`curate encoders` lists what is available)")
    return fam.canonical(name)


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
    """Built-in encoders and whether each can be loaded here, family by family (:data:`FAMILIES`): each
    EfficientNet-Lite variant, the default CLIP and any other cached CLIP."""
    return [info for fam in FAMILIES for info in fam.listing()]


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
    return family_of(name).load(name, resolve_device(device))
