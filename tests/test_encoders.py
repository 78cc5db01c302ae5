"""Encoder registry, EfficientNet-Lite0 with its real packaged weights, and CLIP checkpoint loading."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from curate.engine.catalog import CurateError
from curate.engine.encoders import (
    DEFAULT_CLIP,
    OFFLINE_DEFAULT,
    available_encoders,
    canonical_name,
    get_encoder,
    resolve_auto,
    resolve_device,
)


@pytest.fixture(scope="session")
def effnet():
    return get_encoder("effnet-lite0", device="cpu")


@pytest.fixture(scope="session")
def sample_images() -> list[Image.Image]:
    from sklearn.datasets import load_sample_images

    return [Image.fromarray(a) for a in load_sample_images().images]  # china.jpg, flower.jpg


@pytest.fixture
def empty_hf_cache(tmp_path, monkeypatch) -> Path:
    """Point the Hugging Face cache at an empty folder, so results do not depend on this machine's cache."""
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # open_clip's URL cache lives under ~/.cache/clip
    return cache


def _fake_cached_weights(cache: Path, repo_id: str, filename: str) -> Path:
    """Lay out a file exactly as huggingface_hub stores a downloaded one."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123456789abcdef")
    snap = repo / "snapshots" / "0123456789abcdef"
    snap.mkdir(parents=True)
    (snap / filename).write_bytes(b"weights")
    return snap / filename


# ------------------------------------------------------------------------------------------------ registry
def test_registry_lists_encoders_and_rejects_bad_names(empty_hf_cache):
    infos = {i.name: i for i in available_encoders()}
    assert infos[OFFLINE_DEFAULT].available and not infos[OFFLINE_DEFAULT].supports_text
    assert DEFAULT_CLIP in infos and not infos[DEFAULT_CLIP].available
    assert infos[DEFAULT_CLIP].supports_text and "not found locally" in infos[DEFAULT_CLIP].reason

    assert canonical_name("clip") == DEFAULT_CLIP
    assert canonical_name("effnet-lite0:224") == "effnet-lite0"
    assert canonical_name("effnet-lite0:288") == "effnet-lite0:288"
    for bad, words in [
        ("resnet-9000", "unknown encoder"),
        ("effnet-lite0:big", "effnet-lite0:<input size"),
        ("clip:NoSuchNet/x", "unknown open_clip model"),
        ("clip:ViT-B-32", "names no weights"),
    ]:
        with pytest.raises(CurateError, match=words):
            get_encoder(bad, device="cpu")
    t0 = time.perf_counter()
    with pytest.raises(CurateError, match="not available.*effnet-lite0"):
        get_encoder(DEFAULT_CLIP, device="cpu")  # offline: a quick one-line error, never a download
    assert time.perf_counter() - t0 < 10


def test_resolve_device_rejects_missing_accelerators():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")
    if not torch.cuda.is_available():
        with pytest.raises(CurateError, match="CUDA is not available"):
            resolve_device("cuda")
    with pytest.raises(CurateError, match="unknown device"):
        resolve_device("tpu")


def test_auto_picks_clip_only_when_its_weights_are_local(empty_hf_cache, caplog):
    caplog.set_level(logging.INFO, logger="curate.encoders")
    t0 = time.perf_counter()
    assert resolve_auto() == OFFLINE_DEFAULT
    assert time.perf_counter() - t0 < 10  # offline detection looks at files only
    lines = [r.getMessage() for r in caplog.records if r.name == "curate.encoders"]
    assert len(lines) == 1 and "effnet-lite0" in lines[0] and "not on this machine" in lines[0]

    caplog.clear()
    _fake_cached_weights(empty_hf_cache, "laion/CLIP-ViT-B-32-laion2B-s34B-b79K", "open_clip_model.safetensors")
    assert resolve_auto() == DEFAULT_CLIP
    lines = [r.getMessage() for r in caplog.records if r.name == "curate.encoders"]
    assert len(lines) == 1 and DEFAULT_CLIP in lines[0] and "available locally" in lines[0]
    assert {i.name: i for i in available_encoders()}[DEFAULT_CLIP].available


# ------------------------------------------------------------------------------------------------ effnet
def test_effnet_real_imagenet_predictions(effnet, sample_images):
    x = torch.stack([effnet.transform(im) for im in sample_images])
    assert x.shape == (2, 3, 224, 224)
    probs = effnet.classify(x)
    assert probs.shape == (2, 1000)
    assert torch.allclose(probs.sum(dim=1), torch.ones(2), atol=1e-4)
    top = probs.argmax(dim=1).tolist()
    assert top == [698, 985]  # china.jpg -> palace, flower.jpg -> daisy
    assert [effnet.class_names[i] for i in top] == ["palace", "daisy"]

    feats = effnet.encode_images(x)
    assert feats.shape == (2, effnet.dim) == (2, 1280) and feats.dtype == torch.float32
    assert torch.allclose(feats.norm(dim=1), torch.ones(2), atol=1e-5)
    both_feats, both_probs = effnet.encode_and_classify(x)
    assert torch.allclose(both_feats, feats, atol=1e-5) and torch.allclose(both_probs, probs, atol=1e-5)
    # the two photos are far apart, a photo is identical to itself
    assert float(feats[0] @ feats[1]) < 0.9

    desc = json.loads(json.dumps(effnet.describe()))
    assert desc["preprocessing"] == {"resize": 256, "crop": 224, "mean": [0.5] * 3, "std": [0.5] * 3,
                                     "interpolation": "bicubic", "resize_mode": "shortest"}
    assert desc["dim"] == 1280 and desc["encoder"] == "effnet-lite0"
    with pytest.raises(CurateError, match="cannot encode text"):
        effnet.encode_texts(["a palace"])


def test_tensor_transform_gpu_path_matches_pil_path(effnet, sample_images, tmp_path):
    """The GPU decode path (decode_jpeg + tensor transform) gives the same features as PIL (run here on CPU)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    feats = []
    for i, im in enumerate(sample_images):
        path = tmp_path / f"{i}.jpg"
        im.save(path, quality=95)
        data = torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8)
        via_tensor = effnet.tensor_transform(decode_jpeg(data, mode=ImageReadMode.RGB))
        via_pil = effnet.transform(Image.open(path).convert("RGB"))
        assert via_tensor.shape == via_pil.shape == (3, 224, 224)
        feats.append(effnet.encode_images(torch.stack([via_tensor, via_pil])))
    for f in feats:
        assert float(f[0] @ f[1]) > 0.995


def test_effnet_input_size_is_a_parameter(sample_images):
    enc = get_encoder("effnet-lite0:192", device="cpu")
    assert enc.name == "effnet-lite0:192"
    assert (enc.preprocessing.resize, enc.preprocessing.crop) == (219, 192)
    x = torch.stack([enc.transform(im) for im in sample_images])
    assert x.shape == (2, 3, 192, 192)
    assert enc.classify(x).argmax(dim=1).tolist() == [698, 985]  # still palace and daisy at 192 px
    assert enc.encode_images(x).shape == (2, 1280)


def test_effnet_lite2_real_imagenet_predictions(sample_images):
    """The second packaged network: its tensors load one to one into timm's tf_efficientnet_lite2."""
    enc = get_encoder("effnet-lite2", device="cpu")
    assert enc.name == "effnet-lite2" and canonical_name("effnet-lite2:260") == "effnet-lite2"
    assert (enc.preprocessing.resize, enc.preprocessing.crop) == (292, 260)
    x = torch.stack([enc.transform(im) for im in sample_images])
    probs = enc.classify(x)
    assert enc.class_names[int(probs[0].argmax())] == "palace" and float(probs[0].max()) > 0.3
    # Lite2's centre crop of flower.jpg is the daisy's disc of florets: it answers honeycomb, then bee and ant
    # (weights copied into the wrong tensors give no such coherent answer)
    top5 = {enc.class_names[i].split(",")[0] for i in probs[1].topk(5).indices.tolist()}
    assert {"honeycomb", "bee"} <= top5, top5
    assert enc.encode_images(x).shape == (2, 1280)
    assert canonical_name("effnet-lite2:128") == "effnet-lite2:128"
    assert {i.name for i in available_encoders()} >= {"effnet-lite0", "effnet-lite2"}
    with pytest.raises(CurateError, match="effnet-lite2:<input size"):
        canonical_name("effnet-lite2:tiny")


# ------------------------------------------------------------------------------------------------ clip
def test_clip_loads_a_local_checkpoint_and_encodes_images_and_texts(tmp_path, sample_images):
    import open_clip

    torch.manual_seed(0)
    arch = "ViT-S-32-alt"  # the smallest open_clip architecture (~43M parameters)
    reference = open_clip.create_model(arch).eval()
    ckpt = tmp_path / "small-clip.pt"
    torch.save(reference.state_dict(), ckpt)

    enc = get_encoder(f"clip:{arch}@{ckpt}", device="cpu")
    assert enc.name == f"clip:{arch}@{ckpt.resolve()}"
    assert enc.supports_text and enc.dim == 256
    x = torch.stack([enc.transform(im) for im in sample_images])
    feats = enc.encode_images(x)
    assert feats.shape == (2, 256)
    assert torch.allclose(feats.norm(dim=1), torch.ones(2), atol=1e-5)
    texts = ["a photo of a palace", "a photo of a daisy", "a dog"]
    tfeats = enc.encode_texts(texts)
    assert tfeats.shape == (3, 256)
    with torch.inference_mode():  # the checkpoint's weights were loaded, not a fresh random init
        ref_img = torch.nn.functional.normalize(reference.encode_image(x), dim=-1)
        ref_txt = torch.nn.functional.normalize(
            reference.encode_text(open_clip.get_tokenizer(arch)(texts)), dim=-1)
    assert torch.allclose(feats, ref_img, atol=1e-4)
    assert torch.allclose(tfeats, ref_txt, atol=1e-4)
    assert json.loads(json.dumps(enc.describe()))["preprocessing"]["crop"] == 224

    with pytest.raises(CurateError, match="does not exist"):
        get_encoder(f"clip:{arch}@{tmp_path / 'missing.pt'}", device="cpu")
    with pytest.raises(CurateError, match="cannot load CLIP weights.*matches the architecture"):
        get_encoder(f"clip:ViT-S-32@{ckpt}", device="cpu")  # a checkpoint for another architecture


def test_folded_batchnorm_matches_the_original_network(effnet, sample_images):
    from curate.engine.encoders.effnet import build_model

    reference = build_model()  # unfolded, as loaded from the packaged weights
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in reference.modules())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in effnet.model.modules())
    x = torch.stack([effnet.transform(im) for im in sample_images])
    with torch.inference_mode():
        ref = torch.nn.functional.normalize(reference.forward_head(reference.forward_features(x), pre_logits=True), dim=-1)
        ref_probs = torch.softmax(reference(x), dim=-1)
    assert torch.allclose(effnet.encode_images(x), ref, atol=1e-5)
    assert torch.allclose(effnet.classify(x), ref_probs, atol=1e-5)


def test_a_timm_backbone_with_local_weights_embeds_a_project(tmp_path, sample_images, image_folder):
    """`timm:<model>@<file>`: the file's weights are the ones used (features equal the reference network's), a
    checkpoint in the original DINOv2 release layout (with its mask token) loads, and the whole embed step runs."""
    import timm

    from curate.engine.catalog import init_project
    from curate.engine.embed import embed_project, load_embeddings
    from curate.engine.ingest import ingest

    torch.manual_seed(0)
    reference = timm.create_model("vit_tiny_patch16_224", pretrained=False)
    ckpt = tmp_path / "vit-tiny.pth"
    torch.save(reference.state_dict(), ckpt)
    enc = get_encoder(f"timm:vit_tiny_patch16_224@{ckpt}", device="cpu")
    assert enc.name == f"timm:vit_tiny_patch16_224@{ckpt.resolve()}" and enc.dim == 192 and enc.family == "timm"
    x = torch.stack([enc.transform(im) for im in sample_images])
    reference.reset_classifier(0)
    with torch.inference_mode():
        expected = torch.nn.functional.normalize(reference.eval()(x), dim=-1)
    assert torch.allclose(enc.encode_images(x), expected, atol=1e-5)

    small = get_encoder(f"timm:vit_tiny_patch16_224:32@{ckpt}", device="cpu")  # position embeddings resampled
    assert small.preprocessing.crop == 32 and small.encode_images(torch.randn(2, 3, 32, 32)).shape == (2, 192)

    dino = timm.create_model("vit_small_patch14_dinov2", pretrained=False, img_size=56)
    sd = dino.state_dict()
    sd["mask_token"] = torch.zeros(1, sd["cls_token"].shape[-1])  # as in Meta's dinov2_vits14_pretrain.pth
    torch.save(sd, tmp_path / "dinov2.pth")
    assert get_encoder(f"timm:vit_small_patch14_dinov2:56@{tmp_path / 'dinov2.pth'}", device="cpu").dim == 384

    with pytest.raises(CurateError, match="does not exist"):
        get_encoder(f"timm:vit_tiny_patch16_224@{tmp_path / 'missing.pth'}", device="cpu")
    with pytest.raises(CurateError, match="timm has no model"):
        get_encoder("timm:no_such_network", device="cpu")
    with pytest.raises(CurateError, match="do not fit"):
        get_encoder(f"timm:vit_small_patch16_224@{ckpt}", device="cpu")  # weights of another architecture

    cat = init_project(tmp_path / "p")
    ingest(cat, image_folder)
    name = embed_project(cat, encoder=f"timm:vit_tiny_patch16_224:32@{ckpt}", device="cpu")
    es = load_embeddings(cat, name)
    assert name.startswith("timm:vit_tiny_patch16_224:32@") and es.dim == 192
    assert len(es) == cat.counts()["samples"] and np.allclose(np.linalg.norm(es.vectors, axis=1), 1, atol=1e-4)
