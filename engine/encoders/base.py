"""What every encoder is: a name, a vector size, a preprocessing recipe and ``encode_images``.

An encoder turns decoded images into L2-normalised feature vectors.  Preprocessing is described by a small
:class:`Preprocessing` record (resize, centre crop, mean/std) so the same recipe can run two ways:

* ``pil_transform()`` — PIL image -> float tensor, used by the CPU DataLoader workers;
* ``tensor_transform()`` — uint8 CHW tensor (e.g. decoded on the GPU by ``torchvision.io.decode_jpeg``) -> float
  tensor on the same device, so JPEG batches never round-trip through the CPU on CUDA machines.

Both paths give the same pixels up to interpolation rounding (tested).
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass
from typing import Callable, Iterator, Sequence

import torch
from PIL import Image

from curate.engine.catalog import CurateError
from curate.engine.devices import resolve_device


def amp_dtype(device: torch.device) -> torch.dtype | None:
    """Mixed-precision dtype for inference on ``device``: bf16 where supported, else fp16; None on CPU/MPS."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


_INTERPOLATIONS = ("nearest", "bilinear", "bicubic")


@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes a model input.

    Parameters
    ----------
    resize : the shorter side is resized to this many pixels (``resize_mode='shortest'``), or both sides
        (``'squash'``).
    crop : side of the centre crop fed to the model.
    mean, std : per-channel normalisation applied to pixels scaled to [0, 1].
    interpolation : ``bicubic``, ``bilinear`` or ``nearest``.
    resize_mode : ``shortest`` (keep aspect ratio, then crop) or ``squash`` (ignore aspect ratio).
    """

    resize: int
    crop: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"

    def __post_init__(self) -> None:
        if self.interpolation not in _INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {_INTERPOLATIONS}, got {self.interpolation!r}")
        if self.resize_mode not in ("shortest", "squash"):
            raise ValueError(f"resize_mode must be 'shortest' or 'squash', got {self.resize_mode!r}")
        if self.crop > self.resize:
            raise ValueError(f"crop ({self.crop}) larger than resize ({self.resize})")

    def as_dict(self) -> dict:
        d = asdict(self)
        d["mean"] = [float(v) for v in self.mean]
        d["std"] = [float(v) for v in self.std]
        return d

    def _resize_size(self) -> int | list[int]:
        return self.resize if self.resize_mode == "shortest" else [self.resize, self.resize]

    def pil_transform(self) -> Callable[[Image.Image], torch.Tensor]:
        """PIL RGB image -> normalised float32 CHW tensor."""
        from torchvision import transforms as T

        interp = T.InterpolationMode(self.interpolation)
        return T.Compose(
            [
                T.Resize(self._resize_size(), interpolation=interp, antialias=True),
                T.CenterCrop(self.crop),
                T.ToTensor(),
                T.Normalize(self.mean, self.std),
            ]
        )

    def tensor_transform(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """uint8 CHW RGB tensor (any device) -> normalised float32 CHW tensor on the same device."""
        from torchvision.transforms.v2 import functional as F

        interp = F.InterpolationMode(self.interpolation)
        size = self._resize_size()
        size = [size] if isinstance(size, int) else size
        mean, std = list(self.mean), list(self.std)

        def apply(img: torch.Tensor) -> torch.Tensor:
            x = img.float().div_(255.0)
            x = F.resize(x, size, interpolation=interp, antialias=True)
            x = F.center_crop(x, [self.crop, self.crop]).clamp_(0.0, 1.0)
            return F.normalize(x, mean, std)

        return apply


class Encoder:
    """Base class of all image encoders.

    Subclasses set ``name``, ``dim``, ``preprocessing`` and ``supports_text`` and implement
    :meth:`_forward_images` (and :meth:`_forward_texts` when they support text).  Callers use
    :meth:`encode_images` / :meth:`encode_texts`, which run in inference mode with mixed precision on GPUs and
    return float32, L2-normalised rows.

    Attributes
    ----------
    name : canonical encoder name (the key under which its vectors are stored).
    dim : length of a feature vector.
    preprocessing : the :class:`Preprocessing` recipe.
    supports_text : whether :meth:`encode_texts` works (CLIP-style encoders).
    channels_last : whether the model runs faster on channels-last inputs (convolutional nets).
    device : the torch device the model lives on.
    """

    name: str = ""
    family: str = ""
    dim: int = 0
    preprocessing: Preprocessing
    supports_text: bool = False
    channels_last: bool = False
    device: torch.device = torch.device("cpu")
    weights: str = ""  # where the weights came from (file path / package), for the record

    # ------------------------------------------------------------------ API
    @property
    def transform(self) -> Callable[[Image.Image], torch.Tensor]:
        """PIL image -> model input tensor (CHW float32)."""
        return self.preprocessing.pil_transform()

    @property
    def tensor_transform(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """uint8 CHW tensor -> model input tensor, on the tensor's device (GPU decode path)."""
        return self.preprocessing.tensor_transform()

    def load_batch(self, paths: Sequence[str]) -> torch.Tensor:
        """Read image files (EXIF orientation applied, alpha on white) into a preprocessed batch [n, 3, H, W]."""
        from curate.engine.images import open_rgb

        return torch.stack([self.transform(open_rgb(p)) for p in paths])

    def describe(self) -> dict:
        """JSON-able description stored with the embedding set."""
        return {
            "encoder": self.name,
            "family": self.family,
            "dim": self.dim,
            "weights": self.weights,
            "preprocessing": self.preprocessing.as_dict(),
        }

    def encode_images(self, batch: torch.Tensor) -> torch.Tensor:
        """Features of a batch of preprocessed images.

        Parameters
        ----------
        batch : float tensor [n, 3, H, W] as produced by :attr:`transform` (any device; moved to ours).

        Returns
        -------
        float32 tensor [n, dim] on :attr:`device`, each row L2-normalised.
        """
        x = self._prepare(batch)
        with torch.inference_mode(), self.autocast():
            feats = self._forward_images(x)
        return torch.nn.functional.normalize(feats.float(), dim=-1)

    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """L2-normalised text features [n, dim] (only when :attr:`supports_text`)."""
        if not self.supports_text:
            raise CurateError(f"encoder {self.name} cannot encode text; use a CLIP encoder (clip:...) for text search")
        with torch.inference_mode(), self.autocast():
            feats = self._forward_texts(list(texts))
        return torch.nn.functional.normalize(feats.float(), dim=-1)

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        dtype = amp_dtype(self.device)
        if dtype is None:
            yield
        else:
            with torch.autocast(device_type=self.device.type, dtype=dtype):
                yield

    def to(self, device: str | torch.device) -> "Encoder":
        self.device = resolve_device(device)
        self._move(self.device)
        return self

    # ------------------------------------------------------------------ for subclasses
    def _prepare(self, batch: torch.Tensor) -> torch.Tensor:
        if batch.ndim != 4 or batch.shape[1] != 3:
            raise ValueError(f"expected a batch [n, 3, H, W], got shape {tuple(batch.shape)}")
        x = batch.to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def _forward_images(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _forward_texts(self, texts: list[str]) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _move(self, device: torch.device) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, dim={self.dim}, device={self.device})"
