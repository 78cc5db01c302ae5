"""CLIP image/text encoders through open_clip, loaded strictly from local files.

Names:

* ``clip:<open_clip model>/<pretrained tag>`` — e.g. ``clip:ViT-B-32/laion2b_s34b_b79k`` (the default).  The
  weights must already be in the Hugging Face hub cache (or open_clip's URL cache ``~/.cache/clip``); we look for
  the files on disk first and never start a download, so an offline machine gets a one-line answer at once.
* ``clip:<open_clip model>@<checkpoint path>`` — a local checkpoint (a state dict or open_clip training
  checkpoint) for that architecture.
* ``clip`` — the default above.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

from curate.engine.catalog import CurateError
from curate.engine.encoders.base import Encoder, Preprocessing

PREFIX = "clip"
DEFAULT_MODEL = "ViT-B-32"
DEFAULT_TAG = "laion2b_s34b_b79k"
DEFAULT_NAME = f"{PREFIX}:{DEFAULT_MODEL}/{DEFAULT_TAG}"

log = logging.getLogger("curate.encoders")


@dataclass(frozen=True)
class ClipSpec:
    """A parsed ``clip:`` name."""

    model: str
    tag: str | None = None
    checkpoint: Path | None = None

    @property
    def name(self) -> str:
        if self.checkpoint is not None:
            return f"{PREFIX}:{self.model}@{self.checkpoint}"
        return f"{PREFIX}:{self.model}/{self.tag}"


def parse_name(name: str) -> ClipSpec:
    """Parse ``clip``, ``clip:MODEL/TAG`` or ``clip:MODEL@PATH`` (the model must be an open_clip config)."""
    import open_clip

    if name == PREFIX:
        return ClipSpec(DEFAULT_MODEL, DEFAULT_TAG)
    if not name.startswith(PREFIX + ":"):
        raise CurateError(f"bad encoder name {name!r}; CLIP encoders are named clip:<model>/<tag> or clip:<model>@<path>")
    rest = name[len(PREFIX) + 1:]
    if "@" in rest:
        model, path = rest.split("@", 1)
        spec = ClipSpec(model, checkpoint=Path(path).expanduser().resolve())
    elif "/" in rest:
        model, tag = rest.split("/", 1)
        spec = ClipSpec(model, tag=tag)
    else:
        raise CurateError(
            f"encoder {name!r} names no weights; use clip:{rest}/<pretrained tag> "
            f"(tags: {', '.join(open_clip.list_pretrained_tags_by_model(rest)[:6]) or 'none'}) or clip:{rest}@<checkpoint path>"
        )
    if spec.model not in open_clip.list_models():
        raise CurateError(f"unknown open_clip model {spec.model!r} in {name!r}; see open_clip.list_models() for names")
    return spec


@contextlib.contextmanager
def _offline() -> Iterator[None]:
    """Force Hugging Face libraries offline while we probe/load (no HTTP request can hang us)."""
    keys = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    saved = {k: os.environ.get(k) for k in keys}
    try:
        for k in keys:
            os.environ[k] = "1"
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _hf_cache_dir() -> str:
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def local_weights(model: str, tag: str) -> tuple[Path | None, str]:
    """Where the weights of ``model``/``tag`` are on disk, without touching the network.

    Returns
    -------
    (path or None, reason): ``reason`` says where the file was found, or why it is not available.
    """
    from open_clip.pretrained import get_pretrained_cfg

    cfg = get_pretrained_cfg(model, tag)
    if not cfg:
        return None, f"open_clip has no pretrained tag {tag!r} for {model}"
    if cfg.get("file") and Path(cfg["file"]).is_file():
        return Path(cfg["file"]), f"file {cfg['file']}"
    hub = cfg.get("hf_hub", "")
    if hub:
        from huggingface_hub import try_to_load_from_cache

        repo_id, filename = os.path.split(hub)
        filename = filename or "open_clip_pytorch_model.bin"
        candidates = [filename]
        if filename == "open_clip_pytorch_model.bin":
            candidates.insert(0, "open_clip_model.safetensors")
        elif filename.endswith((".bin", ".pth")):
            candidates.insert(0, filename.rsplit(".", 1)[0] + ".safetensors")
        cache = _hf_cache_dir()
        with _offline():
            for fn in candidates:
                try:
                    found = try_to_load_from_cache(repo_id, fn, cache_dir=cache)
                except Exception:  # malformed cache entries count as absent
                    found = None
                if isinstance(found, str) and os.path.isfile(found):
                    return Path(found), f"Hugging Face cache ({repo_id})"
        where = f"{repo_id} in the Hugging Face cache {cache}"
    else:
        where = ""
    url = cfg.get("url", "")
    if url:
        target = Path(os.path.expanduser("~/.cache/clip")) / os.path.basename(url)
        if target.is_file():
            return target, f"open_clip cache ({target})"
        where = (where + " or " if where else "") + str(target)
    return None, f"weights not found locally (looked for {where or 'a download source'}); Curate never downloads weights"


def probe(name: str) -> tuple[bool, str]:
    """Is ``name`` loadable from local files?  (available, reason); fast, never downloads."""
    try:
        spec = parse_name(name)
    except CurateError as exc:
        return False, str(exc)
    if spec.checkpoint is not None:
        if spec.checkpoint.is_file():
            return True, f"checkpoint {spec.checkpoint}"
        return False, f"checkpoint {spec.checkpoint} does not exist"
    path, reason = local_weights(spec.model, spec.tag)
    return path is not None, reason


def cached_names() -> list[str]:
    """Every open_clip (model, tag) whose weights are present locally."""
    import open_clip

    out = []
    for model, tag in open_clip.list_pretrained():
        path, _ = local_weights(model, tag)
        if path is not None:
            out.append(f"{PREFIX}:{model}/{tag}")
    return out


class ClipEncoder(Encoder):
    """An open_clip model as image (and text) encoder.

    Parameters
    ----------
    name : ``clip``, ``clip:MODEL/TAG`` or ``clip:MODEL@PATH``.
    device : ``auto``, ``cpu``, ``cuda`` or ``mps``.
    """

    family = "clip"
    channels_last = False

    def __init__(self, name: str = DEFAULT_NAME, device: str | torch.device = "auto"):
        import open_clip

        spec = parse_name(name)
        self.spec = spec
        self.name = spec.name
        kwargs: dict = {}
        if spec.checkpoint is not None:
            if not spec.checkpoint.is_file():
                raise CurateError(f"CLIP checkpoint {spec.checkpoint} does not exist; check the path after '@'")
            weights = spec.checkpoint
            self.weights = str(weights)
        else:
            from open_clip.pretrained import get_pretrained_cfg

            weights, reason = local_weights(spec.model, spec.tag)
            if weights is None:
                raise CurateError(
                    f"encoder {self.name} is not available: {reason}; copy the weights into the cache, pass "
                    f"clip:{spec.model}@<checkpoint path>, or use --encoder effnet-lite0"
                )
            cfg = get_pretrained_cfg(spec.model, spec.tag)
            # we load the file by path, so hand over what open_clip would have taken from the tag's config
            for key, arg in (("mean", "image_mean"), ("std", "image_std"), ("interpolation", "image_interpolation"),
                             ("resize_mode", "image_resize_mode")):
                if cfg.get(key) is not None:
                    kwargs[arg] = cfg[key]
            if cfg.get("quick_gelu"):
                kwargs["force_quick_gelu"] = True
            self.weights = f"{spec.model}/{spec.tag} ({weights})"
        try:
            with _offline():
                model = open_clip.create_model(spec.model, pretrained=str(weights), device="cpu", **kwargs)
        except Exception as exc:
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise CurateError(f"cannot load CLIP weights {weights} into {spec.model}: {msg[:300]}; "
                              "check that the checkpoint matches the architecture") from exc
        self.model = model.eval()
        pcfg = dict(getattr(model.visual, "preprocess_cfg", {}) or {})
        size = pcfg.get("size", 224)
        size = int(size[0] if isinstance(size, (tuple, list)) else size)
        resize_mode = pcfg.get("resize_mode", "shortest")
        self.preprocessing = Preprocessing(
            resize=size,
            crop=size,
            mean=tuple(float(v) for v in pcfg.get("mean", (0.48145466, 0.4578275, 0.40821073))),
            std=tuple(float(v) for v in pcfg.get("std", (0.26862954, 0.26130258, 0.27577711))),
            interpolation=pcfg.get("interpolation", "bicubic"),
            resize_mode="squash" if resize_mode == "squash" else "shortest",
        )
        out_dim = getattr(model.visual, "output_dim", None)
        if not isinstance(out_dim, int):
            with torch.inference_mode():
                out_dim = model.encode_image(torch.zeros(1, 3, size, size)).shape[-1]
        self.dim = int(out_dim)
        try:
            with _offline():
                self.tokenizer = open_clip.get_tokenizer(spec.model)
            self.supports_text = True
        except Exception as exc:  # e.g. a Hugging Face tokenizer that is not cached
            log.warning("encoder %s: text encoding disabled (tokenizer unavailable offline: %s)", self.name,
                        str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__)
            self.tokenizer = None
            self.supports_text = False
        self.to(device)

    def _move(self, device: torch.device) -> None:
        self.model.to(device)

    def _forward_images(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(x)

    def _forward_texts(self, texts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(texts).to(self.device)
        return self.model.encode_text(tokens)
