"""Training throughput: sanakit's Trainer step vs a plain loop over diffusers' SanaTransformer2DModel.

Both sides get the same model config and initial weights, the same cached batches (two loaders
with one seed), the same objective (flow matching, logit-normal σ, per-sample noise), AdamW,
gradient clipping and autocast precision. Step times alternate in one process; peak memory is
measured per side in a fresh subprocess. Prints one JSON row.

Default ("tiny-but-real" CPU config): 4 blocks x 512 hidden (16 x 32 heads), cross 16 x 32,
caption 2304 (a 1-layer random Gemma-2 of Sana's width), latents 48 x 32 x 32 (pixel-shuffle of
128 px images: 1024 tokens, as a 1024 px DC-AE latent), 300 text tokens with Sana's instruction,
batch 2, bf16 autocast, 2 threads.

    python benchmarks/bench_train.py
    python benchmarks/bench_train.py --batch 4 --precision no --steps 6
    python benchmarks/bench_train.py --compile   # sanakit with train.compile = true

sanakit's loader trims each batch's text to its longest caption (issue 19); the plain loop gets
the batch padded back to the 300-token window with masked zeros, which is what diffusers' users
feed (its pipeline and training scripts encode a fixed 300-token window).
With ``--compile`` the first (warm-up) sanakit steps include the compile and are reported
separately (``sanakit_compile_s``: the warm-up steps minus as many steady steps).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bench_transformer import BENCH_BLOCKS, peak_rss, reset_peak_rss
from sanakit.train.config import run_config_from_dict
from sanakit.train.objective import flow_matching_step, step_generator
from sanakit.train.trainer import Trainer

MODEL = dict(BENCH_BLOCKS, sample_size=32)


def setup(root: Path, images: int = 16) -> None:
    from sanakit.tiny import build_text_model, build_tokenizer, save_text_components

    if (root / "text" / "text_encoder").is_dir():
        return
    tokenizer = build_tokenizer()
    save_text_components(
        root / "text",
        tokenizer,
        build_text_model(tokenizer.vocab_size, hidden_size=2304, layers=1, heads=8),
    )
    folder = root / "images"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(images):
        Image.fromarray(rng.integers(0, 255, (128, 128, 3), dtype=np.uint8)).save(
            folder / f"{i:03d}.png"
        )
        (folder / f"{i:03d}.txt").write_text(
            f"a photo of object number {i} on a table, studio light"
        )


def config(root: Path, args) -> dict:
    return {
        "model": {
            "preset": "tiny",
            "preset_overrides": MODEL,
            "autoencoder": "pixel-shuffle",
            "pixel_shuffle_factor": 4,
            "text_encoder": str(root / "text"),
            "encoder_dtype": "fp32",
        },
        "data": {
            "datasets": [
                {
                    "id": "bench",
                    "path": str(root / "images"),
                    "resolution": 128,
                    "resolution_type": "pixel",
                }
            ],
            "cache_dir": str(root / "cache"),
        },
        "train": {
            "max_steps": 10**6,
            "batch_size": args.batch,
            "lr": 1e-4,
            "mixed_precision": args.precision,
            "weight_decay": 0.01,
            "compile": args.compile,
        },
        "output": {"dir": str(root / "out"), "checkpoint_every": 10**6, "log_with": "none"},
    }


class PlainLoop:
    """The reference: diffusers' model, AdamW, clip, autocast — no sanakit model code."""

    def __init__(self, trainer: Trainer, args) -> None:
        from diffusers import SanaTransformer2DModel

        from sanakit.data import make_loader

        ours = trainer.accelerator.unwrap_model(trainer.ddp_model)
        kwargs = {k: v for k, v in ours.config.to_diffusers().items() if not k.startswith("_")}
        self.model = SanaTransformer2DModel(**kwargs)
        self.model.load_state_dict(ours.state_dict(), strict=False)
        self.model.train()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4, weight_decay=0.01)
        self.loader = make_loader(
            trainer.config.data, batch_size=args.batch, seed=trainer.config.train.seed
        )
        self.train = trainer.config.train
        self.dtype = {"bf16": torch.bfloat16, "no": None}[args.precision]
        self.window = trainer.config.model.text_max_length
        self.step = 0

    def velocity(self, x, t, text, mask):
        return self.model(
            x, encoder_hidden_states=text, timestep=t, encoder_attention_mask=mask
        ).sample

    def train_step(self) -> float:
        batch = next(self.loader)
        pad = self.window - batch["text"].shape[1]  # back to the full window (masked zeros)
        batch["text"] = torch.nn.functional.pad(batch["text"], (0, 0, 0, pad))
        batch["text_mask"] = torch.nn.functional.pad(batch["text_mask"], (0, pad))
        gens = [step_generator(0, self.step, 0, i) for i in range(len(batch["ids"]))]
        with torch.autocast(
            "cpu", dtype=self.dtype or torch.float32, enabled=self.dtype is not None
        ):
            loss, _ = flow_matching_step(
                self.velocity,
                batch,
                self.train,
                gens,
                torch.device("cpu"),
                timestep_scale=self.model.config.timestep_scale,
            )
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return float(loss)


def memory_child(args) -> None:
    trainer = Trainer(run_config_from_dict(config(Path(args.root), args)))
    side = trainer if args.memory_child == "sanakit" else PlainLoop(trainer, args)
    if args.memory_child == "diffusers":
        del trainer
    for _ in range(1 + 2 * args.compile):  # warm-up (compiled: the static and dynamic graphs)
        side.train_step()
    base = reset_peak_rss()
    side.train_step()
    print(peak_rss() - base)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--precision", default="bf16", choices=["bf16", "no"])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1, help="untimed first steps per side")
    parser.add_argument("--compile", action="store_true", help="sanakit with train.compile")
    parser.add_argument("--root", default=None, help="work folder (default: a temp folder)")
    parser.add_argument("--memory-child", choices=["sanakit", "diffusers"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.memory_child:
        memory_child(args)
        return
    root = Path(args.root or tempfile.mkdtemp(prefix="sanakit-bench-train-"))
    args.root = str(root)
    setup(root)
    trainer = Trainer(run_config_from_dict(config(root, args)))
    plain = PlainLoop(trainer, args)
    times: dict[str, list[float]] = {"sanakit": [], "diffusers": []}
    warm: dict[str, list[float]] = {"sanakit": [], "diffusers": []}
    for i in range(args.steps + args.warmup):
        for name, fn in (("sanakit", trainer.train_step), ("diffusers", plain.train_step)):
            start = time.perf_counter()
            fn()
            (warm if i < args.warmup else times)[name].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    mem = {}
    for side in ("sanakit", "diffusers"):
        cmd = [
            sys.executable,
            __file__,
            "--memory-child",
            side,
            "--root",
            str(root),
            "--batch",
            str(args.batch),
        ]
        cmd += ["--precision", args.precision, "--threads", str(args.threads)]
        cmd += ["--compile"] if args.compile else []
        mem[side] = int(
            subprocess.run(cmd, capture_output=True, text=True, check=True)
            .stdout.strip()
            .splitlines()[-1]
        )
    row = {
        "bench": "train_step",
        "config": "4L-512h-cross16x32-cap2304-latent48x32x32-text300",
        "batch": args.batch,
        "precision": args.precision,
        "compiled": args.compile,
        "threads": args.threads,
        "steps": args.steps,
        "sanakit_s": round(med["sanakit"], 4),
        "diffusers_loop_s": round(med["diffusers"], 4),
        "time_ratio": round(med["sanakit"] / med["diffusers"], 3),
        "sanakit_images_per_s": round(args.batch / med["sanakit"], 3),
        "diffusers_images_per_s": round(args.batch / med["diffusers"], 3),
        "sanakit_compile_s": round(sum(warm["sanakit"]) - args.warmup * med["sanakit"], 1)
        if args.compile
        else None,
        "sanakit_peak_mb": round(mem["sanakit"] / 2**20, 1),
        "diffusers_peak_mb": round(mem["diffusers"] / 2**20, 1),
        "memory_ratio": round(mem["sanakit"] / max(1, mem["diffusers"]), 3)
        if not math.isnan(mem["diffusers"])
        else None,
    }
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
