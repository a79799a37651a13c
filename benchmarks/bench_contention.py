"""The demo's training step on a quiet and on a busy CPU: OpenMP wait policy and precision.

Each row runs the real ``sanakit demo`` training step (loader + forward + backward + AdamW of the
demo model at batch 32, through the Trainer) in a fresh subprocess, so the OpenMP wait policy is
set before torch loads. Busy rows start 1 or 2 competing processes (a pure-Python spin loop each,
one core each, killed by this script and bounded by their own deadline). Prints one JSON row per
configuration and a summary row with the ratios:

- ``busy1_over_quiet``: one competing process, passive policy, vs quiet (target <= 3);
- ``busy1_default_over_quiet``: the same with OpenMP's default (spinning) policy;
- ``passive_over_default_quiet``: what the passive policy costs on a quiet machine;
- ``bf16_over_fp32``: bf16 autocast vs fp32 step time on this CPU.

    python benchmarks/bench_contention.py
    python benchmarks/bench_contention.py --steps 30 --warmup 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SPIN = "import time\nend = time.time() + {limit}\nwhile time.time() < end:\n    pass\n"


def worker(args: argparse.Namespace) -> None:
    """One configuration: ``args.steps`` timed steps after ``args.warmup`` untimed ones."""
    import dataclasses

    import torch

    from sanakit.demo.run import prepare
    from sanakit.demo.settings import DemoSettings
    from sanakit.train.trainer import Trainer

    torch.set_num_threads(args.threads)
    settings = DemoSettings(out=Path(args.root))
    config = prepare(settings)
    train = dataclasses.replace(config.train, mixed_precision=args.precision)
    output = dataclasses.replace(config.output, dir=str(Path(args.root) / f"run-{os.getpid()}"))
    trainer = Trainer(dataclasses.replace(config, train=train, output=output))
    times = []
    for k in range(args.warmup + args.steps):
        start = time.perf_counter()
        trainer.train_step()
        if k >= args.warmup:
            times.append(time.perf_counter() - start)
    print(
        json.dumps(
            {
                "precision": trainer.precision,
                "step_s_median": round(statistics.median(times), 4),
                "step_s_min": round(min(times), 4),
            }
        )
    )


def run_row(
    args: argparse.Namespace, root: Path, *, busy: int, policy: str, precision: str
) -> dict:
    env = dict(os.environ)
    for name in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME"):
        env.pop(name, None)
    if policy == "passive":
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    limit = args.row_timeout
    spinners = [
        subprocess.Popen([sys.executable, "-c", SPIN.format(limit=limit)]) for _ in range(busy)
    ]
    try:
        cmd = [
            sys.executable,
            __file__,
            "--worker",
            "--root",
            str(root),
            "--precision",
            precision,
            "--steps",
            str(args.steps),
            "--warmup",
            str(args.warmup),
            "--threads",
            str(args.threads),
        ]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=limit)
    finally:
        for p in spinners:
            p.kill()
            p.wait()
    if done.returncode != 0:
        raise SystemExit(f"worker failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return {"busy_processes": busy, "wait_policy": policy, "requested": precision, **result}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=20, help="timed steps per row")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps per row")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the demo's 2)")
    parser.add_argument("--row-timeout", type=float, default=600.0, help="seconds per row")
    parser.add_argument("--root", help="demo folder to reuse (default: a temp folder)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--precision", default="auto", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    from sanakit.hardware import cpu_info

    root = Path(args.root or tempfile.mkdtemp(prefix="bench-contention-"))
    rows = []
    plan = [
        (0, "passive", "no"),
        (0, "passive", "bf16"),
        (0, "passive", "auto"),
        (0, "default", "auto"),
        (1, "passive", "auto"),
        (1, "default", "auto"),
        (2, "passive", "auto"),
    ]
    for busy, policy, precision in plan:
        row = run_row(args, root, busy=busy, policy=policy, precision=precision)
        rows.append(row)
        print(json.dumps(row), flush=True)

    def step(busy: int, policy: str, requested: str = "auto") -> float:
        return next(
            r["step_s_median"]
            for r in rows
            if (r["busy_processes"], r["wait_policy"], r["requested"]) == (busy, policy, requested)
        )

    quiet = step(0, "passive")
    summary = {
        "cpu": cpu_info().describe(),
        "auto_precision": rows[2]["precision"],
        "quiet_step_s": quiet,
        "busy1_over_quiet": round(step(1, "passive") / quiet, 2),
        "busy1_default_over_quiet": round(step(1, "default") / quiet, 2),
        "busy2_over_quiet": round(step(2, "passive") / quiet, 2),
        "passive_over_default_quiet": round(quiet / step(0, "default"), 3),
        "bf16_over_fp32": round(step(0, "passive", "bf16") / step(0, "passive", "no"), 2),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
