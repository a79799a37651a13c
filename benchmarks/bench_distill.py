"""Cost of Sana-Sprint distillation: one sCM generator step (teacher CFG pass + JVP + student
forward/backward), one LADD generator step (+ the adversarial branch) and one LADD discriminator
step, against one plain flow-matching training step of the same model, same run.

Every step is the real trainer's ``train_step`` on the same cached data (bench_train's tiny-but-
real setup: 128 px pixel-shuffle latents = 1024 tokens, a 1-layer Gemma-2 of Sana's width):
``Trainer`` for the plain step, ``DistillTrainer`` (adv_lambda 0) for sCM, ``DistillTrainer``
(adv_lambda 0.5; G and D alternate) for LADD. The model is a dense-time, qk-normed teacher of
the chosen preset; the student starts as its copy. Step times alternate in one process (median);
peak memory per kind is measured in a fresh subprocess (CPU: RSS growth over the step; CUDA:
``torch.cuda.max_memory_allocated``). Prints one JSON row.

    python benchmarks/bench_distill.py                      # CPU, the bench_train model
    python benchmarks/bench_distill.py --precision no --steps 4
    python benchmarks/bench_distill.py --device cuda --preset sana-1600m
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench_train import MODEL, setup
from bench_train import config as train_config
from bench_transformer import peak_rss, reset_peak_rss
from sanakit.sprint.trainer import DistillTrainer
from sanakit.train.config import run_config_from_dict
from sanakit.train.trainer import Trainer

KINDS = ("plain", "scm", "ladd_g", "ladd_d")
SPRINT = {"qk_norm": "rms_norm_across_heads", "timestep_scale": 0.001}


def config(root: Path, args, kind: str) -> dict:
    """bench_train's config with a dense-time qk-normed model (of ``--preset``) and, for the
    distillation kinds, a ``[distill]`` section."""
    args.compile = False
    raw = train_config(root, args)
    model = raw["model"]
    model["preset"] = args.preset
    model["preset_overrides"] = {**(MODEL if args.preset == "tiny" else {}), **SPRINT}
    raw["train"].update(lr=1e-5, gradient_checkpointing=args.checkpointing)
    raw["output"]["dir"] = str(root / f"out-{kind}")
    if kind != "plain":
        raw["distill"] = {
            "adv_lambda": 0.0 if kind == "scm" else 0.5,
            "head_block_ids": [1, 3],
            "tangent_warmup_steps": 10,
        }
    return raw


def build(root: Path, args, kind: str) -> Trainer:
    cls = Trainer if kind == "plain" else DistillTrainer
    return cls(run_config_from_dict(config(root, args, kind)))


def align_phase(trainer: Trainer, kind: str) -> None:
    """Before a measured LADD step: run the other half (G or D) untimed and unmeasured when the
    alternation is on it, so the next ``train_step`` is the half ``kind`` names."""
    want = {"ladd_g": "G", "ladd_d": "D"}.get(kind)
    if want is not None and trainer.phase != want:
        trainer.train_step()


def memory_child(args) -> None:
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    kind = args.memory_child
    trainer = build(Path(args.root), args, kind)
    align_phase(trainer, kind)
    trainer.train_step()  # warm-up
    align_phase(trainer, kind)
    if args.device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        trainer.train_step()
        torch.cuda.synchronize()
        print(torch.cuda.max_memory_allocated() - base)
        return
    base = reset_peak_rss()
    trainer.train_step()
    print(peak_rss() - base)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny", help="model preset (tiny: bench_train's)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--precision", default="bf16", choices=["bf16", "no"])
    parser.add_argument("--checkpointing", action="store_true")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--root", default=None)
    parser.add_argument("--memory-child", choices=KINDS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.memory_child:
        memory_child(args)
        return
    root = Path(args.root or tempfile.mkdtemp(prefix="sanakit-bench-distill-"))
    args.root = str(root)
    setup(root)
    trainers = {kind: build(root, args, kind) for kind in ("plain", "scm", "ladd_g")}
    trainers["ladd_d"] = trainers["ladd_g"]
    times: dict[str, list[float]] = {kind: [] for kind in KINDS}
    for i in range(args.steps + 1):
        for kind in KINDS:
            align_phase(trainers[kind], kind)
            start = time.perf_counter()
            trainers[kind].train_step()
            if i:  # the first round is warm-up
                times[kind].append(time.perf_counter() - start)
    med = {kind: statistics.median(v) for kind, v in times.items()}
    memory = {}
    for kind in KINDS:
        cmd = [sys.executable, __file__, "--memory-child", kind, "--root", str(root)]
        for key in ("preset", "batch", "precision", "threads", "device"):
            cmd += [f"--{key}", str(getattr(args, key))]
        if args.checkpointing:
            cmd.append("--checkpointing")
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        memory[kind] = int(out.strip().splitlines()[-1])
    row = {
        "preset": args.preset,
        "batch": args.batch,
        "precision": args.precision,
        "device": args.device,
        "threads": args.threads,
        **{f"{k}_s": round(v, 4) for k, v in med.items()},
        **{f"{k}_vs_plain_time": round(med[k] / med["plain"], 2) for k in KINDS[1:]},
        **{f"{k}_peak_bytes": v for k, v in memory.items()},
        **{
            f"{k}_vs_plain_memory": round(memory[k] / max(1, memory["plain"]), 2) for k in KINDS[1:]
        },
    }
    print(json.dumps(row))


if __name__ == "__main__":
    main()
