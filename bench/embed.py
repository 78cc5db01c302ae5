"""Embedding throughput: images/s of each encoder, end to end from files on disk and model-only.

Data: ``--n`` photo-sized files (default 256; a 500x375 crop of sklearn's two sample photos, randomly scaled,
cropped and flipped per file), half JPEG and half PNG, written once to a temp folder.  Decoding is therefore
realistic (the demo's 64x64 digits would make decode look free).

Measured for every available encoder on the CPU (and on CUDA when present), same files, same run:

* ``model-only`` — ``encoder.encode_images`` over pre-made tensors at ``--batch-size`` (the ceiling);
* ``end-to-end`` — :func:`engine.embed.embed_project` on an ingested project: DataLoader decode + resize in
  ``--workers`` processes, model, float16 shards, checksums and catalog writes (ingest not timed, model load not
  timed: the encoder is passed in loaded);
* ``baseline: naive loop`` — the obvious script: for each file ``PIL.open -> transform -> model`` one image at a
  time, no batching, no workers (on the first ``--naive-n`` files);

and for EfficientNet-Lite0 also the unmodified network (BatchNorm not folded, contiguous memory) model-only —
the baseline for the fold + channels-last optimisation the encoder applies.

When no CLIP weights are cached, CLIP ViT-B-32 is timed with random weights loaded through a local checkpoint
(``clip:ViT-B-32@tmp``; speed does not depend on the weight values) and labelled so.

Usage::

    nice -n 10 python bench/embed.py            # 256 images (~3-5 min on 2 busy cores)
    python bench/embed.py --quick               # 48 images, effnet only

Writes bench/results/embed.json (``--quick``: embed_quick.json) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "bench" / "results"


def make_files(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """``n`` 500x375 photo crops, alternating JPEG (quality 90) and PNG, under folder/{a,b}/."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    rng = np.random.default_rng(seed)
    photos = [Image.fromarray(a) for a in load_sample_images().images]
    out = []
    for i in range(n):
        im = photos[i % len(photos)]
        scale = rng.uniform(0.8, 1.2)
        im = im.resize((int(im.width * scale), int(im.height * scale)), Image.BILINEAR)
        x = int(rng.integers(0, max(1, im.width - 500)))
        y = int(rng.integers(0, max(1, im.height - 375)))
        im = im.crop((x, y, x + 500, y + 375))
        if rng.random() < 0.5:
            im = im.transpose(Image.FLIP_LEFT_RIGHT)
        path = folder / ("a" if i % 2 else "b") / f"{i:05d}.{'jpg' if i % 2 == 0 else 'png'}"
        path.parent.mkdir(parents=True, exist_ok=True)
        im.save(path, quality=90) if path.suffix == ".jpg" else im.save(path)
        out.append(path)
    return out


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def model_only(enc, n: int, batch_size: int, forward=None) -> float:
    """images/s of the forward pass on pre-made tensors (one warm-up batch not timed)."""
    import torch

    size = enc.preprocessing.crop
    g = torch.Generator().manual_seed(0)
    batch = torch.randn(batch_size, 3, size, size, generator=g).to(enc.device)
    forward = forward or enc.encode_images
    forward(batch)
    _sync(enc.device)
    done = 0
    t0 = time.perf_counter()
    while done < n:
        m = min(batch_size, n - done)
        forward(batch[:m])
        done += m
    _sync(enc.device)
    return n / (time.perf_counter() - t0)


def end_to_end(enc, data: Path, workdir: Path, batch_size: int, workers: int) -> dict:
    from curate.engine.catalog import init_project
    from curate.engine.embed import EmbedReport, embed_project
    from curate.engine.ingest import ingest

    cat = init_project(workdir / f"proj-{enc.device.type}-{abs(hash(enc.name)) % 10**8}")
    ingest(cat, data, kind="unlabeled")
    rep = EmbedReport(encoder=enc.name)
    embed_project(cat, encoder=enc, batch_size=batch_size, workers=workers, report=rep)
    return {"images_per_s": rep.images_per_s, "seconds": rep.seconds, "embedded": rep.embedded}


def naive_loop(enc, files: list[Path]) -> float:
    """The obvious per-image script: open, transform, encode one at a time."""
    from PIL import Image

    enc.encode_images(enc.transform(Image.open(files[0]).convert("RGB"))[None])  # warm-up
    _sync(enc.device)
    t0 = time.perf_counter()
    for f in files:
        with Image.open(f) as im:
            enc.encode_images(enc.transform(im.convert("RGB"))[None]).cpu()
    _sync(enc.device)
    return len(files) / (time.perf_counter() - t0)


def encoders_to_bench(device, quick: bool, tmp: Path) -> list[tuple[str, object]]:
    """(label, loaded encoder) for every available encoder on ``device``."""
    import torch

    from curate.engine.encoders import available_encoders, get_encoder

    out = []
    infos = [i for i in available_encoders() if i.available]
    for info in infos:
        if quick and info.family != "effnet":
            continue
        out.append((info.name, get_encoder(info.name, device=device)))
    if not quick and not any(i.family == "clip" for i in infos):
        import open_clip

        ckpt = tmp / "vit-b-32-random.pt"
        if not ckpt.exists():
            torch.manual_seed(0)
            torch.save(open_clip.create_model("ViT-B-32").state_dict(), ckpt)
        out.append(("clip:ViT-B-32 (random weights, speed only)", get_encoder(f"clip:ViT-B-32@{ckpt}", device=device)))
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="48 images, effnet only")
    ap.add_argument("--n", type=int, default=None, help="images (default 256, quick 48)")
    ap.add_argument("--naive-n", type=int, default=None, help="images for the naive per-image baseline (default n/8)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: CPUs - 1)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)

    import torch

    from curate.engine.encoders.effnet import build_model

    load_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    n = args.n or (48 if args.quick else 256)
    naive_n = args.naive_n or max(8, n // 8)
    workers = args.workers if args.workers is not None else max(0, min(8, (os.cpu_count() or 1) - 1))
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    out = args.out or RESULTS / ("embed_quick.json" if args.quick else "embed.json")
    rows = []
    with tempfile.TemporaryDirectory(prefix="curate-bench-embed-") as tmpdir:
        tmp = Path(tmpdir)
        data = tmp / "images"
        files = make_files(data, n)
        for device in devices:
            for label, enc in encoders_to_bench(device, args.quick, tmp):
                print(f"[{device.type}] {label}: model-only ...", flush=True)
                mo = model_only(enc, n, args.batch_size)
                print(f"[{device.type}] {label}: end-to-end ...", flush=True)
                e2e = end_to_end(enc, data, tmp, args.batch_size, workers)
                print(f"[{device.type}] {label}: naive baseline ...", flush=True)
                naive = naive_loop(enc, files[:naive_n])
                row = {
                    "encoder": label, "device": device.type, "dim": enc.dim, "batch_size": args.batch_size,
                    "workers": workers, "model_only_img_s": round(mo, 2), "end_to_end_img_s": round(e2e["images_per_s"], 2),
                    "naive_loop_img_s": round(naive, 2), "e2e_over_model_only": round(e2e["images_per_s"] / mo, 3),
                    "e2e_over_naive": round(e2e["images_per_s"] / naive, 2),
                }
                if enc.family == "effnet":
                    plain = build_model().to(device)
                    with torch.inference_mode():
                        unfolded = model_only(enc, n, args.batch_size,
                                              forward=lambda x: plain.forward_head(plain.forward_features(x), pre_logits=True))
                    row["unfolded_contiguous_model_only_img_s"] = round(unfolded, 2)
                    row["fold_channels_last_speedup"] = round(mo / unfolded, 2)
                rows.append(row)
                del enc
    result = {
        "bench": "embed",
        "quick": args.quick,
        "n_images": n,
        "naive_n": naive_n,
        "files": "500x375 photo crops, half JPEG q90, half PNG",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
                    "torch_threads": torch.get_num_threads(), "cuda": torch.cuda.is_available(),
                    "load_avg_1m_start": load_start,
                    "load_avg_1m_end": os.getloadavg()[0] if hasattr(os, "getloadavg") else None},
        "rows": rows,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    _print(rows)
    print(f"wrote {out}")
    return result


def _print(rows: list[dict]) -> None:
    head = ("encoder", "device", "model-only img/s", "end-to-end img/s", "e2e/model", "naive img/s", "e2e/naive",
            "unfolded img/s")
    print(" | ".join(head))
    print(" | ".join("---" for _ in head))
    for r in rows:
        print(" | ".join(str(v) for v in (r["encoder"], r["device"], r["model_only_img_s"], r["end_to_end_img_s"],
                                          r["e2e_over_model_only"], r["naive_loop_img_s"], r["e2e_over_naive"],
                                          r.get("unfolded_contiguous_model_only_img_s", "-"))))


if __name__ == "__main__":
    main()
