"""Any timm image backbone as an encoder — DINOv2 and other self-supervised ViTs with weights you have on disk.

Names
-----
* ``timm:<model>`` — a timm model whose pretrained weights are in the local Hugging Face cache (timm's own
  download location; nothing is downloaded here), e.g. ``timm:vit_small_patch14_dinov2.lvd142m``.
* ``timm:<model>@<weights file>`` — the same architecture with a local state dict (``.pth``, ``.bin`` or
  ``.safetensors``).  timm's loader adapts the file: it drops the mask token of Meta's DINOv2 release files (so
  ``dinov2_vits14_pretrain.pth`` goes into ``vit_small_patch14_dinov2``), resamples position embeddings to the
  input size and drops classifier heads.
* ``timm:<model>:<input size>@...`` — run at another input side (ViTs resample their position embeddings; e.g.
  ``:224`` instead of DINOv2's 518, about 5x faster on a CPU).

The vector is the backbone's pooled feature (``num_classes=0``: the class token for ViTs, global average pooling
for CNNs); preprocessing (mean/std, interpolation, crop fraction, input size) comes from the model's timm config.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from curate.engine.catalog import CurateError
from curate.engine.encoders.base import Encoder, Preprocessing

PREFIX = "timm"
DINOV2_SMALL = "timm:vit_small_patch14_dinov2.lvd142m"
USAGE = f"{PREFIX}:<timm model>[:<input size>][@<weights file>]"


@dataclass(frozen=True)
class TimmSpec:
    model: str
    size: int | None = None
    weights: Path | None = None

    @property
    def name(self) -> str:
        return (f"{PREFIX}:{self.model}" + (f":{self.size}" if self.size else "")
                + (f"@{self.weights}" if self.weights is not None else ""))


def parse_name(name: str) -> TimmSpec:
    """``timm:<model>[:<size>][@<weights file>]`` -> :class:`TimmSpec` (the path made absolute)."""
    import timm

    rest = name[len(PREFIX) + 1:] if name.startswith(PREFIX + ":") else ""
    rest, at, path = rest.partition("@")
    model, colon, size = rest.partition(":")
    if not model:
        raise CurateError(f"encoder {name!r}: name a timm model, {USAGE}, e.g. {DINOV2_SMALL}")
    if not timm.is_model(model):
        close = timm.list_models(f"*{model.split('.')[0][:12]}*")[:5]
        raise CurateError(f"encoder {name!r}: timm has no model {model!r}"
                          + (f"; close names: {', '.join(close)}" if close else "") + f" (write it as {USAGE})")
    if colon and not re.fullmatch(r"\d{2,4}", size):
        raise CurateError(f"encoder {name!r}: the input size after ':' must be a number of pixels, e.g. :224")
    if at and not path:
        raise CurateError(f"encoder {name!r}: give the weights file after '@', e.g. {PREFIX}:{model}@/models/w.pth")
    return TimmSpec(model, int(size) if colon else None, Path(path).expanduser().resolve() if at else None)


def canonical(name: str) -> str:
    return parse_name(name).name


def cached_weights(model: str) -> str | None:
    """Path of ``model``'s weights in the local Hugging Face cache (timm's hub repo ``timm/<model>``), or None."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - a dependency of timm
        return None
    for fname in ("model.safetensors", "pytorch_model.bin"):
        hit = try_to_load_from_cache(f"timm/{model}", fname)
        if isinstance(hit, str):
            return hit
    return None


def probe(name: str) -> tuple[bool, str]:
    """(whether ``name`` can be loaded here without a network, why)."""
    try:
        spec = parse_name(name)
    except CurateError as exc:
        return False, str(exc)
    if spec.weights is not None:
        return (True, f"weights file {spec.weights}") if spec.weights.is_file() else (
            False, f"weights file {spec.weights} does not exist")
    hit = cached_weights(spec.model)
    return (True, f"weights in the local cache ({hit})") if hit else (
        False, f"no weights for {spec.model} in the local Hugging Face cache; point at a file: "
               f"{PREFIX}:{spec.model}@/path/to/weights.pth")


class TimmEncoder(Encoder):
    """A timm backbone's pooled features (see the module docstring for the names)."""

    family = PREFIX
    supports_text = False

    def __init__(self, name: str, device: str | torch.device = "auto"):
        import timm
        from timm.data import resolve_model_data_config

        spec = parse_name(name)
        ok, reason = probe(spec.name)
        if not ok:
            raise CurateError(f"encoder {spec.name}: {reason}")
        kwargs: dict = {"num_classes": 0}
        if spec.size:
            kwargs["img_size"] = spec.size
        overlay = {"file": str(spec.weights)} if spec.weights is not None else {"file": cached_weights(spec.model)}
        try:
            model = timm.create_model(spec.model, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)
        except TypeError as exc:  # e.g. img_size on a CNN
            raise CurateError(f"encoder {spec.name}: {exc}; drop the ':<input size>' part for this model") from None
        except (RuntimeError, KeyError, ValueError) as exc:
            raise CurateError(f"encoder {spec.name}: the weights do not fit {spec.model} "
                              f"({str(exc).splitlines()[0][:200]}); check the architecture name") from None
        self.model = model.eval()
        cfg = resolve_model_data_config(self.model)
        side = int(spec.size or cfg["input_size"][-1])
        crop_pct = float(cfg.get("crop_pct") or 1.0)
        interp = cfg.get("interpolation", "bicubic")
        self.name = spec.name
        self.dim = int(self.model.num_features)
        self.weights = str(spec.weights or overlay["file"])
        self.channels_last = not spec.model.startswith(("vit", "deit", "beit", "eva", "swin"))
        self.preprocessing = Preprocessing(
            resize=max(side, int(round(side / crop_pct))), crop=side,
            mean=tuple(float(v) for v in cfg["mean"]), std=tuple(float(v) for v in cfg["std"]),
            interpolation=interp if interp in ("bicubic", "bilinear", "nearest") else "bicubic")
        self.to(device)

    def _move(self, device: torch.device) -> None:
        self.model.to(device)

    def _forward_images(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)
