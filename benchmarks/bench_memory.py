"""Memory of one LoRA training step on the Sana-1.6B architecture: frozen base in bf16 vs int8
vs nf4 (sanakit.quantize), random weights, one fresh process per base. Prints one JSON row per
base and a summary row with the ratios to bf16.

Each row: ``base_bytes`` (the frozen transformer: quantised codes + scales, and the layers kept
in bf16), ``adapter_bytes`` (fp32 LoRA weights), ``optimizer_bytes`` (optimizer state after a
step), ``saved_activation_bytes`` (tensors autograd keeps for the backward, counted once per
storage; with checkpointing only the checkpointed blocks' inputs and the parts outside blocks),
``step_peak_bytes`` (CPU: peak RSS during a step above the RSS before the model was built, i.e.
model + optimizer + activations + temporaries; CUDA: torch.cuda.max_memory_allocated) and
``step_growth_bytes`` (peak above the RSS just before the step).

    python benchmarks/bench_memory.py                       # 512 px, checkpointing on, CPU
    python benchmarks/bench_memory.py --resolution 1024 --optimizer paged_lion8bit
    python benchmarks/bench_memory.py --device cuda --resolution 1024 --optimizer adamw8bit
    python benchmarks/bench_memory.py --layers 2            # a quick check of the script
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import subprocess
import sys
import time

import torch

from bench_transformer import peak_rss, reset_peak_rss

BASES = ("bf16", "int8", "nf4")


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def trim() -> None:
    """Give freed heap pages back to the OS (glibc), so RSS reflects live memory."""
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def tensor_bytes(tensors) -> int:
    seen, total = set(), 0
    for t in tensors:
        if not torch.is_tensor(t):
            continue
        key = (t.untyped_storage().data_ptr(), t.device)
        if key in seen:
            continue
        seen.add(key)
        total += t.untyped_storage().nbytes()
    return total


def build(args):
    from sanakit.adapters import apply_adapter
    from sanakit.adapters.spec import LoraSpec
    from sanakit.models import SanaTransformer
    from sanakit.presets import get_preset
    from sanakit.quantize import quantize_layers

    overrides = {"sample_size": args.resolution // 32}
    if args.layers:
        overrides["num_layers"] = args.layers
    config = get_preset(args.preset).replace(**overrides)
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # built in bf16: never holds the fp32 model
    try:
        model = SanaTransformer(config)
    finally:
        torch.set_default_dtype(default)
    model.requires_grad_(False)
    model.set_gradient_checkpointing(args.checkpointing)
    if args.base != "bf16":
        quantize_layers(model, args.base, via="cpu", device=args.device)
    model.to(args.device)
    trim()
    adapter = apply_adapter(model, LoraSpec(rank=args.rank), seed=0)
    return model, adapter, config


def child(args) -> dict:
    from sanakit.quantize import weight_bytes
    from sanakit.train.optim import build_optimizer

    cuda = args.device.startswith("cuda")
    with contextlib.suppress(ImportError):
        import bitsandbytes  # noqa: F401  (its libraries count in every base's baseline alike)
    rss_start = rss()
    model, adapter, config = build(args)
    sizes = weight_bytes(model)
    adapter_bytes = sum(p.numel() * p.element_size() for p in adapter.trainable_parameters())
    base_bytes = sizes["quantized"] + sizes["full"] - adapter_bytes
    optimizer = build_optimizer(adapter.trainable_parameters(), args.optimizer, lr=1e-4)
    g = torch.Generator().manual_seed(0)
    side = args.resolution // 32
    x = torch.randn(args.batch, config.in_channels, side, side, generator=g).to(args.device)
    target = torch.randn(x.shape, generator=g).to(args.device)
    text = torch.randn(args.batch, args.text_len, config.caption_channels, generator=g)
    text = text.to(args.device, torch.bfloat16)
    mask = torch.ones(args.batch, args.text_len, dtype=torch.long, device=args.device)
    t = torch.full((args.batch,), 500.0, device=args.device)
    saved: list[torch.Tensor] = []

    def step(record: bool) -> float:
        def pack(tensor):
            if record:
                saved.append(tensor)
            return tensor

        with (
            torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor),
            torch.autocast(x.device.type, dtype=torch.bfloat16),
        ):
            out = model(x, t, text, mask)
            loss = (out.float() - target).pow(2).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss)

    step(record=False)  # warm-up: creates the optimizer state and the allocator's pools
    trim()
    optimizer_bytes = tensor_bytes(v for state in optimizer.state.values() for v in state.values())
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    before = rss()
    reset_peak_rss()
    start = time.perf_counter()
    step(record=True)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() if cuda else peak_rss() - rss_start
    growth = (torch.cuda.max_memory_allocated() if cuda else peak_rss()) - (0 if cuda else before)
    activation_bytes = tensor_bytes(saved)
    saved.clear()
    return {
        "base": args.base,
        "base_bytes": base_bytes,
        "base_quantized_bytes": sizes["quantized"],
        "adapter_bytes": adapter_bytes,
        "optimizer_bytes": optimizer_bytes,
        "saved_activation_bytes": activation_bytes,
        "step_peak_bytes": peak,
        "step_growth_bytes": growth,
        "step_seconds": round(seconds, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="sana-1600m")
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--text-len", type=int, default=300)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--optimizer", default="adamw8bit")
    parser.add_argument("--no-checkpointing", dest="checkpointing", action="store_false")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--layers", type=int, default=0, help="override num_layers (0: preset)")
    parser.add_argument("--bases", default=",".join(BASES))
    parser.add_argument("--base", help=argparse.SUPPRESS)  # the child's base
    args = parser.parse_args()
    if args.base:
        print(json.dumps(child(args)))
        return
    common = {
        "preset": args.preset,
        "layers": args.layers or None,
        "resolution": args.resolution,
        "batch": args.batch,
        "text_len": args.text_len,
        "rank": args.rank,
        "optimizer": args.optimizer,
        "checkpointing": args.checkpointing,
        "device": args.device,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    # glibc raises its mmap threshold after large frees (up to 32 MB), after which freed
    # temporaries (a quantised layer's dequantised weight) stay in the heap and in the RSS; a fixed
    # threshold returns them, so the RSS follows the live tensors (the same for every base)
    env = {"MALLOC_MMAP_THRESHOLD_": "131072", **os.environ}
    common["malloc_mmap_threshold"] = env["MALLOC_MMAP_THRESHOLD_"]
    rows = {}
    for base in args.bases.split(","):
        cmd = [sys.executable, __file__, *sys.argv[1:], "--base", base]
        out = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if out.returncode != 0:
            raise SystemExit(f"{base}: child failed\n{out.stderr[-3000:]}")
        rows[base] = json.loads(out.stdout.strip().splitlines()[-1])
        print(json.dumps({**common, **rows[base]}), flush=True)
    if "bf16" in rows:
        ref = rows["bf16"]
        summary = {
            f"{base}_{key}_vs_bf16": round(row[key] / ref[key], 3)
            for base, row in rows.items()
            if base != "bf16"
            for key in ("base_bytes", "step_peak_bytes")
        }
        print(json.dumps({**common, "summary": summary}))


if __name__ == "__main__":
    main()
