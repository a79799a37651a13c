"""Evaluation cost: images/s of CLIP scoring and of FID features, the FID/KID statistics, and the
overhead of scoring one validation round as a fraction of a training step.

The CLIP model has OpenAI ViT-B/32's sizes (transformers' default ``CLIPConfig``: 224 px, 12 x 768
vision tower, 12 x 512 text tower, 512-d projections) with random weights: speed does not depend
on the weights. ViT-L/14 (SimpleTuner's default) costs ~4.4x the vision FLOPs of B/32 at 224 px
(~13x at 336 px). Each row is one JSON object on stdout::

    python benchmarks/bench_eval.py [--device cpu|cuda] [--images 64] [--batch 32]
        [--round-images 8] [--step-seconds S] [--quick]

``--step-seconds``: the training step time to compare a validation round's scoring with (e.g.
from ``bench_train.py``); ``--quick``: the tiny test CLIP, to check the script runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sanakit.metrics.clip import ClipModel
from sanakit.metrics.fid import clip_features, fid, kid

ROOT = Path(__file__).resolve().parents[1]


def _images(n: int, size: int = 256) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)) for _ in range(n)
    ]


def _timed(fn, repeats: int) -> float:
    """Median seconds of ``repeats`` calls (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--round-images", type=int, default=8, help="images per validation round")
    parser.add_argument("--step-seconds", type=float, default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))  # the CLIP-folder writer lives with the tests
    from tests.helpers.tiny_clip import write_tiny_clip

    common = {"device": args.device, "threads": torch.get_num_threads(), "torch": torch.__version__}
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_tiny_clip(Path(tmp) / "clip", full_size=not args.quick)
        start = time.perf_counter()
        clip = ClipModel.load(folder, device=args.device)
        load_s = time.perf_counter() - start
    model = "tiny-test-clip" if args.quick else "clip-vit-b32-sized"
    images = _images(args.images)
    prompts = [f"a photo of object number {i} on a table, studio light" for i in range(len(images))]

    score_s = _timed(lambda: clip.score(images, prompts, batch_size=args.batch), args.repeats)
    feats = clip_features(clip, batch_size=args.batch)
    feat_s = _timed(lambda: feats.extract(images), args.repeats)
    rows = [
        {"bench": "clip_score", "model": model, "images": len(images), "batch": args.batch,
         "images_per_s": round(len(images) / score_s, 2), "load_s": round(load_s, 2)},
        {"bench": "fid_features", "features": f"clip:{model}", "images": len(images),
         "batch": args.batch, "images_per_s": round(len(images) / feat_s, 2)},
    ]  # fmt: skip
    g = torch.Generator().manual_seed(0)
    for n in (64, 500):
        real = torch.randn(n, 512, generator=g, dtype=torch.float64)
        fake = torch.randn(n, 512, generator=g, dtype=torch.float64) + 0.1
        fid_s = _timed(lambda r=real, f=fake: fid(r, f), 1)
        kid_s = _timed(lambda r=real, f=fake: kid(r, f), 1)
        rows.append(
            {"bench": "fid_kid_statistics", "n": n, "dim": 512, "fid_s": round(fid_s, 3),
             "kid_s": round(kid_s, 3)}
        )  # fmt: skip
    round_s = args.round_images / (len(images) / score_s)
    row = {"bench": "validation_round_overhead", "round_images": args.round_images,
           "clip_seconds": round(round_s, 3)}  # fmt: skip
    if args.step_seconds:
        row |= {"step_seconds": args.step_seconds, "fraction_of_step": round_s / args.step_seconds}
    rows.append(row)
    for r in rows:
        print(json.dumps(common | r))


if __name__ == "__main__":
    main()
