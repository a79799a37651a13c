"""Seconds per image: sanakit's TextToImage vs diffusers' SanaPipeline on the same folder.

Both pipelines load the same diffusers-format folder and generate the same prompts with the same
seeds, steps, guidance and size; calls alternate (ours, diffusers, ours, ...) after one warm-up
call each, so machine noise hits both alike. A call covers text encoding, sampling, DC-AE
decoding and conversion to PIL. Prints one JSON row: the best of N runs of each (as ``timeit``:
on a shared CPU other jobs only ever add time) and their ratio ours/diffusers (< 1: we are
faster), the medians and their ratio, and the max pixel difference of the last images.

    python benchmarks/bench_generate.py          # tiny-but-real CPU config, written to a temp dir
    python benchmarks/bench_generate.py --model Sana_1600M_1024px_BF16_diffusers \\
        --device cuda --dtype bf16 --height 1024 --width 1024

Default folder: transformer 4 blocks x 512 wide (sample_size 16, i.e. 512 px native), random
Gemma2 (2 layers x 64), random DC-AE (8 channels), DPM-Solver with flow_shift 3; 512x512,
20 steps, CFG 4.5, fp32, 2 CPU threads.
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

from bench_transformer import BENCH_BLOCKS
from sanakit.models import ModelConfig
from sanakit.pipeline import TextToImage

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "a small red circle above a large blue square on a white background"


def write_default_folder(folder: Path) -> Path:
    sys.path.insert(0, str(ROOT))  # the tiny-folder writer lives with the tests
    from tests.helpers.tiny_pipeline import write_tiny_pipeline

    text_hidden = 64
    config = ModelConfig(
        **BENCH_BLOCKS, in_channels=4, out_channels=4, caption_channels=text_hidden, sample_size=16
    )
    return write_tiny_pipeline(folder, transformer_config=config, text_hidden_size=text_hidden)


def load_reference(folder: Path, dtype: torch.dtype, device: str):
    from diffusers import SanaPipeline, SanaSprintPipeline

    index = json.loads((folder / "model_index.json").read_text())
    cls = SanaSprintPipeline if index["_class_name"] == "SanaSprintPipeline" else SanaPipeline
    pipe = cls.from_pretrained(folder, dtype=dtype).to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="pipeline folder (default: tiny, temp dir)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--height", type=int, default=512)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--steps", type=int, help="default 20 (2 for Sprint folders)")
    parser.add_argument("--guidance", type=float, default=4.5)
    parser.add_argument("--batch", type=int, default=1, help="prompts per call")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (torch)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32

    with tempfile.TemporaryDirectory() as tmp:
        folder = args.model or write_default_folder(Path(tmp) / "tiny-sana")
        ours = TextToImage.from_pretrained(folder, dtype=dtype, device=args.device)
        ref = load_reference(folder, dtype, args.device)
        steps = args.steps or (2 if ours.settings.sampler == "scm" else 20)
        prompts = [PROMPT] * args.batch
        seeds = list(range(args.batch))
        common = dict(height=args.height, width=args.width, guidance_scale=args.guidance)

        def run_ours():
            return ours(prompts, steps=steps, seed=seeds, **common)

        def run_ref():
            gens = [torch.Generator("cpu").manual_seed(s) for s in seeds]
            return ref(prompts, num_inference_steps=steps, generator=gens, **common).images

        def timed(fn):
            """(wall seconds, images) of one call."""
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            images = fn()
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            return time.perf_counter() - start, images

        timed(run_ours), timed(run_ref)  # warm-up
        wall: dict[str, list[float]] = {"ours": [], "diffusers": []}
        for _ in range(args.repeats):
            for impl, fn in (("ours", run_ours), ("diffusers", run_ref)):
                seconds, images = timed(fn)
                wall[impl].append(seconds / args.batch)
                if impl == "ours":
                    ours_images = images
                else:
                    ref_images = images

    diff = max(
        int(np.abs(np.asarray(a, dtype=np.int32) - np.asarray(b, dtype=np.int32)).max())
        for a, b in zip(ours_images, ref_images)
    )
    ours_s, ref_s = min(wall["ours"]), min(wall["diffusers"])
    ours_med, ref_med = statistics.median(wall["ours"]), statistics.median(wall["diffusers"])
    row = {
        "bench": "generate",
        "model": str(args.model) if args.model else "tiny (4 x 512, Gemma2 2 x 64, DC-AE 8 ch)",
        "device": args.device,
        "dtype": args.dtype,
        "threads": args.threads,
        "size": f"{args.height}x{args.width}",
        "steps": steps,
        "sampler": ours.settings.sampler,
        "guidance": args.guidance,
        "batch": args.batch,
        "repeats": args.repeats,
        # Best of N (as timeit): the least disturbed run of each; medians for the spread.
        "ours_s_per_image": round(ours_s, 3),
        "diffusers_s_per_image": round(ref_s, 3),
        "ratio": round(ours_s / ref_s, 3),
        "ours_median_s": round(ours_med, 3),
        "diffusers_median_s": round(ref_med, 3),
        "median_ratio": round(ours_med / ref_med, 3),
        "max_pixel_diff": diff,
    }
    print(json.dumps(row))


if __name__ == "__main__":
    main()
