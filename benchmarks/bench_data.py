"""Data pipeline throughput on CPU: cache building (images/s) and the cached loader (batches/s).

Prints one JSON row per measurement. The encoders are stand-ins with Sana's output shapes so the
figures measure the pipeline itself (decode, resize, crop, hash, shard I/O, batch assembly),
not DC-AE or Gemma: a parameter-free autoencoder (32x average pooling tiled to 32 channels) and
a text encoder returning deterministic (B, 300, 2304) features.

    python benchmarks/bench_data.py --images 64 --batches 300
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from sanakit.config import DataConfig, from_dict
from sanakit.data import build_cache, make_loader

STEP_RATE_ASSUMED = 2.0  # 1.6B Sana training steps/s at batch 4, 1024px, one H100 (assumption)
TARGET_FACTOR = 50  # the loader must be >= 50x faster than training consumes batches


class PooledAutoencoder:
    """DC-AE-shaped stand-in: (B, 3, H, W) -> (B, 32, H/32, W/32) by average pooling."""

    latent_channels = 32
    downsample_factor = 32
    dtype = torch.float32
    device = torch.device("cpu")

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(images, 32).repeat(1, 11, 1, 1)[:, :32]

    def fingerprint(self) -> str:
        return "bench-pooled-ae"


class ShapeTextEncoder:
    """Gemma-2-2B-shaped stand-in: (B, 300, 2304) features, mask of the word count + 1."""

    max_length = 300
    hidden_size = 2304

    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        gen = torch.Generator().manual_seed(len(prompts))
        embeds = torch.randn(len(prompts), 300, 2304, generator=gen)
        mask = torch.zeros(len(prompts), 300, dtype=torch.int64)
        for i, p in enumerate(prompts):
            mask[i, : len(p.split()) + 1] = 1
        return embeds, mask

    def encode_empty(self, batch: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        embeds, mask = self.encode([""])
        return embeds.expand(batch, -1, -1), mask.expand(batch, -1)

    def fingerprint(self) -> str:
        return "bench-text"


def make_images(folder: Path, count: int, resolution: int) -> None:
    """Random JPEGs around ``resolution**2`` pixels at several aspect ratios, with captions."""
    rng = np.random.default_rng(0)
    aspects = (1.0, 0.75, 1.33, 0.56, 1.78)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        a = aspects[i % len(aspects)]
        h, w = int(resolution * 1.2 * a**0.5), int(resolution * 1.2 / a**0.5)
        base = rng.integers(0, 256, size=(h // 8, w // 8, 3), dtype=np.uint8)
        img = Image.fromarray(base).resize((w, h), Image.Resampling.BILINEAR)
        img.save(folder / f"img_{i:05d}.jpg", quality=90)
        (folder / f"img_{i:05d}.txt").write_text(f"a photo number {i} of a thing in a place")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--resolution", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--batches", type=int, default=300)
    parser.add_argument("--workers", type=int, default=0, help="decode threads while caching")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_images(root / "imgs", args.images, args.resolution)
        raw = {
            "cache_dir": str(root / "cache"),
            "num_workers": args.workers,
            "datasets": [
                {"id": "bench", "path": str(root / "imgs"), "resolution": args.resolution}
            ],
        }
        cfg = from_dict(DataConfig, raw, where="data")
        ae, te = PooledAutoencoder(), ShapeTextEncoder()
        start, cpu = time.perf_counter(), time.process_time()
        report = build_cache(cfg, ae, te, batch_size=args.batch, progress=False)
        first, first_cpu = time.perf_counter() - start, time.process_time() - cpu
        print(json.dumps({
            "bench": "data.cache_build", "images": args.images, "resolution": args.resolution,
            "seconds": round(first, 3), "images_per_s": round(args.images / first, 2),
            "images_per_cpu_s": round(args.images / first_cpu, 2),
            "buckets": report.buckets, "decode_threads": max(1, args.workers),
        }))  # fmt: skip
        start = time.perf_counter()
        build_cache(cfg, ae, te, batch_size=args.batch, progress=False)
        second = time.perf_counter() - start
        print(json.dumps({
            "bench": "data.cache_rerun_all_hits", "images": args.images,
            "seconds": round(second, 3), "images_per_s": round(args.images / second, 2),
        }))  # fmt: skip

        # Windows of 25 batches, alternating dtypes. This 2-core machine is shared, so besides
        # wall-clock rates (median and least-disturbed window) the CPU-time rate is reported:
        # batches per second of CPU time used by this process (all threads), which contention
        # does not change.
        loaders = {
            dt: make_loader(cfg, batch_size=args.batch, dtype=dt)
            for dt in (torch.float32, torch.bfloat16)
        }
        walls: dict[torch.dtype, list[float]] = {dt: [] for dt in loaders}
        cpus: dict[torch.dtype, list[float]] = {dt: [] for dt in loaders}
        shapes = {dt: next(loader) for dt, loader in loaders.items()}
        for _ in range(max(1, args.batches // 25)):
            for dt, loader in loaders.items():
                wall, cpu = time.perf_counter(), time.process_time()
                for _ in range(25):
                    next(loader)
                walls[dt].append(time.perf_counter() - wall)
                cpus[dt].append(time.process_time() - cpu)
        target = TARGET_FACTOR * STEP_RATE_ASSUMED
        for dt in loaders:
            batch, n = shapes[dt], 25 * len(walls[dt])
            median = 25 / float(np.median(walls[dt]))
            cpu_rate = n / max(sum(cpus[dt]), 1e-9)
            print(json.dumps({
                "bench": "data.loader", "batch": args.batch, "dtype": str(dt).split(".")[-1],
                "latents": list(batch["latents"].shape[1:]), "text": list(batch["text"].shape[1:]),
                "batches": n, "batches_per_s_median": round(median, 1),
                "batches_per_s_best": round(25 / min(walls[dt]), 1),
                "batches_per_cpu_s": round(cpu_rate, 1), "target_batches_per_s": target,
                "assumed_train_steps_per_s": STEP_RATE_ASSUMED,
                "meets_target": median >= target, "meets_target_cpu_time": cpu_rate >= target,
                "torch_threads": torch.get_num_threads(),
                "load_average_1min": round(os.getloadavg()[0], 2), "cpus": os.cpu_count(),
            }))  # fmt: skip


if __name__ == "__main__":
    main()
