"""Token scaling: step time at latent 16², 32², 64² (forward + backward) and 128² (forward only)
for sanakit's SanaTransformer and diffusers' SanaTransformer2DModel, in one run.

Sana's self-attention is linear in the token count N (O(N d²), Sana §2.2), so 4x the tokens
(each side doubled) should cost about 4x the time; softmax attention's O(N² d) term makes a
softmax DiT cost more than 4x once N is large. Both models get the same random weights and
inputs, calls alternate between them (machines are noisy). Prints one JSON row per (impl,
latent) with the median time, then one row of ratios t(2s)/t(s) per impl.

    python benchmarks/bench_scaling.py                      # CPU, 4 blocks x 512 (bench default)
    python benchmarks/bench_scaling.py --dtype bf16 --repeats 5
    python benchmarks/bench_scaling.py --preset sana-1600m --device cuda --dtype bf16
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from bench_transformer import DTYPES, build, default_config, inputs, step, sync
from sanakit.models.sana import trim_text_padding
from sanakit.presets import get_preset

TRAIN_LATENTS = (16, 32, 64)
FORWARD_LATENTS = (64, 128)  # 128² forward only; 64² again forward-only for its ratio


@torch.no_grad()
def forward_only(impl: str, model: torch.nn.Module, batch) -> None:
    x, t, text, mask, guidance = batch
    if impl == "ours":
        model(x, t, *trim_text_padding(text, mask), guidance)
    else:
        model(
            x,
            encoder_hidden_states=text,
            timestep=t,
            guidance=guidance,
            encoder_attention_mask=mask,
        )


def median_times(args, models, latent: int, train: bool) -> dict[str, float]:
    batch = inputs(models["config"], args.batch, latent, args.text_len, args.device, args.dtype_t)
    run = step if train else forward_only
    times: dict[str, list[float]] = {"ours": [], "diffusers": []}
    for i in range(args.warmup + args.repeats):
        for impl in ("ours", "diffusers"):  # alternate so drift hits both equally
            model = models[impl]
            model.zero_grad(set_to_none=True)
            sync(args.device)
            start = time.perf_counter()
            run(impl, model, batch)
            sync(args.device)
            if i >= args.warmup:
                times[impl].append(time.perf_counter() - start)
    return {impl: statistics.median(v) for impl, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", help="a sanakit preset instead of the small default config")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=list(DTYPES))
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--text-len", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--latents", type=int, nargs="+", default=list(TRAIN_LATENTS))
    parser.add_argument("--forward-latents", type=int, nargs="*", default=list(FORWARD_LATENTS))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.dtype_t = DTYPES[args.dtype]
    config = get_preset(args.preset) if args.preset else default_config()
    models = {
        impl: build(impl, config, args.device, args.dtype_t) for impl in ("ours", "diffusers")
    }
    models["config"] = config
    name = args.preset or "4L-512h-cross16x32-cap2304"
    results: dict[str, dict[tuple[str, int], float]] = {"ours": {}, "diffusers": {}}
    plan = [("fwd_bwd", s) for s in args.latents] + [("fwd", s) for s in args.forward_latents]
    for kind, latent in plan:
        med = median_times(args, models, latent, train=kind == "fwd_bwd")
        for impl, seconds in med.items():
            results[impl][(kind, latent)] = seconds
        row = {"bench": "scaling", "config": name, "device": args.device, "dtype": args.dtype}
        row |= {"batch": args.batch, "threads": args.threads, "kind": kind, "latent": latent}
        row |= {"tokens": (latent // config.patch_size) ** 2}
        row |= {"ours_s": round(med["ours"], 4), "diffusers_s": round(med["diffusers"], 4)}
        row |= {"time_ratio": round(med["ours"] / med["diffusers"], 3)}
        print(json.dumps(row), flush=True)
    for impl, times in results.items():
        ratios = {
            f"{kind}_{latent}_vs_{latent // 2}": round(
                times[(kind, latent)] / times[(kind, latent // 2)], 2
            )
            for kind, latent in plan
            if (kind, latent // 2) in times
        }
        row = {"bench": "scaling_ratios", "impl": impl, "config": name, "dtype": args.dtype}
        print(json.dumps(row | ratios), flush=True)


if __name__ == "__main__":
    main()
