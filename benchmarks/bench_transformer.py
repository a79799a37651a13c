"""Forward+backward step time and peak memory: sanakit's SanaTransformer vs diffusers'.

Both models get the same random weights and inputs; timings alternate between the two in
one process (machines are noisy), peak memory is measured per implementation in a fresh
subprocess (CPU: peak RSS growth during the step; CUDA: max_memory_allocated). Prints one
JSON row per (batch, dtype) with the ratio ours/diffusers (< 1 means we are faster/leaner).

    python benchmarks/bench_transformer.py                       # CPU default config
    python benchmarks/bench_transformer.py --preset sana-1600m --device cuda --batch 4 --dtype bf16
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from sanakit.models import ModelConfig, SanaTransformer
from sanakit.models.sana import trim_text_padding
from sanakit.presets import get_preset

# The benchmarks' transformer: 4 blocks x 512 wide (16 x 32 heads), cross-attention 16 x 32
# (bench_train.py and bench_generate.py use it too).
BENCH_BLOCKS = dict(
    num_attention_heads=16,
    attention_head_dim=32,
    num_layers=4,
    num_cross_attention_heads=16,
    cross_attention_head_dim=32,
    cross_attention_dim=512,
)


def default_config() -> ModelConfig:
    return ModelConfig(**BENCH_BLOCKS, caption_channels=2304, sample_size=32)


def build(
    impl: str,
    config: ModelConfig,
    device: str,
    dtype: torch.dtype,
    seed: int = 0,
    checkpointing: bool = False,
) -> torch.nn.Module:
    from diffusers import SanaTransformer2DModel

    torch.manual_seed(seed)
    ours = SanaTransformer(config)
    ours.set_gradient_checkpointing(checkpointing)
    if impl == "ours":
        return ours.to(device, dtype)
    kwargs = {k: v for k, v in config.to_diffusers().items() if not k.startswith("_")}
    ref = SanaTransformer2DModel(**kwargs)
    ref.load_state_dict(ours.state_dict(), strict=False)
    if checkpointing:
        ref.enable_gradient_checkpointing()
    return ref.to(device, dtype)


def inputs(
    config: ModelConfig, batch: int, latent: int, text_len: int, device: str, dtype: torch.dtype
):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, config.in_channels, latent, latent, generator=g).to(device, dtype)
    t = (torch.rand(batch, generator=g) * 1000).to(device)
    text = torch.randn(batch, text_len, config.caption_channels, generator=g).to(device, dtype)
    mask = torch.ones(batch, text_len, dtype=torch.long, device=device)
    mask[:, text_len // 3 :] = 0
    guidance = torch.full((batch,), 4.5, device=device) if config.guidance_embeds else None
    return x, t, text, mask, guidance


def step(impl: str, model: torch.nn.Module, batch) -> None:
    x, t, text, mask, guidance = batch
    if impl == "ours":  # the padding trimmed once per batch, as sanakit's loader and sampler do
        out = model(x, t, *trim_text_padding(text, mask), guidance)
    else:
        out = model(
            x,
            encoder_hidden_states=text,
            timestep=t,
            guidance=guidance,
            encoder_attention_mask=mask,
        ).sample
    out.float().square().mean().backward()


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def saved_activation_bytes(impl: str, model: torch.nn.Module, batch) -> int:
    """Bytes of the tensors autograd keeps for backward in one forward (each storage once):
    the activation memory of a training step, exact and independent of the allocator."""
    x, t, text, mask, guidance = batch
    seen: set[int] = set()
    total = 0

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal total
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            total += storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
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
    return total


class _Allocations(TorchDispatchMode):
    """Weak references to every storage an op creates while the mode is on."""

    def __init__(self) -> None:
        super().__init__()
        self.storages: dict[int, tuple[StorageWeakRef, int]] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor):
                storage = tensor.untyped_storage()
                self.storages.setdefault(
                    storage.data_ptr(), (StorageWeakRef(storage), storage.nbytes())
                )
        return out


def held_activation_bytes(impl: str, model: torch.nn.Module, batch) -> int:
    """Bytes of the tensors one forward creates that are still alive after it, the output
    excepted: what autograd holds for backward, including the inputs a checkpointed region keeps
    by reference (which :func:`saved_activation_bytes`' hooks do not see), excluding the weights."""
    x, t, text, mask, guidance = batch
    mode = _Allocations()
    with mode:
        if impl == "ours":
            out = model(x, t, *trim_text_padding(text, mask), guidance)
        else:
            out = model(
                x,
                encoder_hidden_states=text,
                timestep=t,
                guidance=guidance,
                encoder_attention_mask=mask,
            ).sample
    output = out.untyped_storage().data_ptr()
    return sum(
        size for ptr, (ref, size) in mode.storages.items() if ptr != output and not ref.expired()
    )


def time_pair(args, config, dtype) -> dict[str, float]:
    models = {
        impl: build(impl, config, args.device, dtype, checkpointing=args.gradient_checkpointing)
        for impl in ("ours", "diffusers")
    }
    batch = inputs(config, args.batch, args.latent, args.text_len, args.device, dtype)
    times: dict[str, list[float]] = {"ours": [], "diffusers": []}
    for _ in range(args.warmup):
        for impl, model in models.items():
            step(impl, model, batch)
    for _ in range(args.repeats):
        for impl, model in models.items():  # alternate so drift hits both equally
            model.zero_grad(set_to_none=True)
            sync(args.device)
            start = time.perf_counter()
            step(impl, model, batch)
            sync(args.device)
            times[impl].append(time.perf_counter() - start)
    result = {impl: statistics.median(v) for impl, v in times.items()}
    for impl, model in models.items():
        result[f"{impl}_saved"] = saved_activation_bytes(impl, model, batch)
        result[f"{impl}_held"] = held_activation_bytes(impl, model, batch)
    return result


def reset_peak_rss() -> int:
    """Reset the kernel's peak-RSS mark of this process (Linux clear_refs 5); returns the RSS."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def peak_rss() -> int:
    """Peak RSS since the last reset (VmHWM), bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def peak_memory_child(args, config, dtype, impl: str) -> int:
    """Runs in a fresh process: bytes of peak memory growth of one step after a warm-up step
    (CPU: peak RSS above the RSS before the step, with the kernel's peak mark reset)."""
    model = build(impl, config, args.device, dtype, checkpointing=args.gradient_checkpointing)
    batch = inputs(config, args.batch, args.latent, args.text_len, args.device, dtype)
    if args.device.startswith("cuda"):
        step(impl, model, batch)
        model.zero_grad(set_to_none=True)
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step(impl, model, batch)
        return torch.cuda.max_memory_allocated() - base
    step(impl, model, batch)  # warm-up: allocator caches, autocast weight casts
    model.zero_grad(set_to_none=True)
    base = reset_peak_rss()
    step(impl, model, batch)
    return peak_rss() - base


def peak_memory(args, dtype_name: str, impl: str) -> int:
    cmd = [
        sys.executable,
        __file__,
        "--memory-child",
        impl,
        "--dtype",
        dtype_name,
        "--batch",
        str(args.batch),
    ]
    cmd += ["--latent", str(args.latent), "--text-len", str(args.text_len), "--device", args.device]
    cmd += ["--threads", str(args.threads)] + (["--preset", args.preset] if args.preset else [])
    cmd += ["--gradient-checkpointing"] if args.gradient_checkpointing else []
    return int(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip())


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", help="a sanakit preset instead of the small default config")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--dtype", nargs="+", default=["fp32", "bf16"], choices=list(DTYPES))
    parser.add_argument("--latent", type=int, default=32, help="latent side (32 = 1024 px)")
    parser.add_argument("--text-len", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--memory-child", choices=["ours", "diffusers"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = get_preset(args.preset) if args.preset else default_config()
    if args.memory_child:
        args.batch = args.batch[0]
        print(peak_memory_child(args, config, DTYPES[args.dtype[0]], args.memory_child))
        return
    for dtype_name in args.dtype:
        for batch in args.batch:
            run = argparse.Namespace(**{**vars(args), "batch": batch})
            times = time_pair(run, config, DTYPES[dtype_name])
            row = {
                "bench": "transformer_fwd_bwd",
                "config": args.preset or "4L-512h-cross16x32-cap2304",
                "device": args.device,
                "dtype": dtype_name,
                "batch": batch,
                "latent": args.latent,
                "text_len": args.text_len,
                "threads": args.threads,
                "ours_s": round(times["ours"], 4),
                "diffusers_s": round(times["diffusers"], 4),
                "time_ratio": round(times["ours"] / times["diffusers"], 3),
                "ours_saved_mb": round(times["ours_saved"] / 2**20, 1),
                "diffusers_saved_mb": round(times["diffusers_saved"] / 2**20, 1),
                "saved_ratio": round(times["ours_saved"] / times["diffusers_saved"], 3),
                "ours_held_mb": round(times["ours_held"] / 2**20, 1),
                "diffusers_held_mb": round(times["diffusers_held"] / 2**20, 1),
                "held_ratio": round(times["ours_held"] / times["diffusers_held"], 3),
            }
            if not args.no_memory:
                mem = {impl: peak_memory(run, dtype_name, impl) for impl in ("ours", "diffusers")}
                row["ours_peak_mb"] = round(mem["ours"] / 2**20, 1)
                row["diffusers_peak_mb"] = round(mem["diffusers"] / 2**20, 1)
                row["memory_ratio"] = round(mem["ours"] / mem["diffusers"], 3)
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
