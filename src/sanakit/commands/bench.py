"""``sanakit bench``: training and sampling throughput and MFU of a Sana preset with random
weights on this machine (:mod:`sanakit.bench`)."""

from __future__ import annotations

import argparse
import json


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="measure training/sampling speed and MFU of a model preset (random weights)",
        description="Runs full fine-tune steps (forward + backward + AdamW) and 20-step "
        "Flow-DPM-Solver sampling with CFG on a Sana preset with random weights, and prints "
        "s/step, img/s, samples/s, TFLOP/s and MFU (model FLOPs, analytic, over the device's "
        "peak for the dtype: a table of known GPUs, or --peak-tflops). Text encoder and "
        "autoencoder are not included.",
    )
    p.add_argument("--preset", default="sana-1600m", help="model preset (default sana-1600m)")
    p.add_argument("--resolution", type=int, default=1024, help="image side in px (default 1024)")
    p.add_argument("--batch", type=int, default=1, help="images per step (default 1)")
    p.add_argument(
        "--dtype", default="bf16", choices=["bf16", "fp32"], help="autocast dtype (default bf16)"
    )
    p.add_argument("--compile", action="store_true", help="torch.compile the blocks (regional)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--steps", type=int, default=5, help="timed training steps (default 5)")
    p.add_argument("--warmup", type=int, default=2, help="untimed first steps (default 2)")
    p.add_argument("--sample-steps", type=int, default=20, help="sampler steps (default 20)")
    p.add_argument("--text-len", type=int, default=300, help="text tokens (default 300)")
    p.add_argument("--no-sampling", dest="sampling", action="store_false", help="training only")
    p.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        help="the device's peak TFLOP/s for --dtype (default: sanakit.flops' table of GPUs; "
        "needed on a CPU or an unknown GPU for MFU)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from sanakit.bench import BenchSettings, format_result, run_bench
    from sanakit.presets import get_preset

    settings = BenchSettings(
        preset=args.preset,
        resolution=args.resolution,
        batch=args.batch,
        dtype=args.dtype,
        compile=args.compile,
        device=args.device or ("cuda" if torch.cuda.is_available() else "cpu"),
        steps=args.steps,
        warmup=args.warmup,
        sample_steps=args.sample_steps,
        text_len=args.text_len,
        peak_tflops=args.peak_tflops,
        sampling=args.sampling,
    )
    result = run_bench(settings, get_preset(args.preset))
    print(json.dumps(result.as_dict()) if args.json else format_result(result))
    return 0
