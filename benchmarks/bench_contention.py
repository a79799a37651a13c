"""The demo's training step on a quiet and on a busy CPU: OpenMP wait policy and precision.

Each row runs the real ``sanakit demo`` training step (loader + forward + backward + AdamW of the
demo model at batch 32, through the Trainer) in a fresh subprocess, so the OpenMP wait policy is
set before torch loads: ``default`` (nothing set: libgomp spins 300,000 times), ``sanakit``
(what the ``sanakit`` command sets, :data:`sanakit.hardware.THREAD_POLICY`) or ``passive``
(``OMP_WAIT_POLICY=PASSIVE``). Busy rows start 1 or 2 competing processes, killed by this script
and bounded by their own deadline: ``--competitor torch`` (default) is another torch job with
OpenMP's default policy (a small-op loop on 2 threads, like a test suite or a second training
run); ``--competitor spin`` is a pure-Python spin loop (one core each). Prints one JSON row per
configuration and a summary row with the ratios:

- ``busy1_over_quiet``: one competing process, sanakit's policy, vs quiet (target <= 3);
- ``busy1_default_over_quiet`` / ``busy1_passive_over_quiet``: the same with the other policies;
- ``quiet_sanakit_over_default`` / ``quiet_passive_over_default``: what a policy costs on a
  quiet machine (target: within a few percent);
- ``bf16_over_fp32``: bf16 autocast vs fp32 step time of the demo model on this CPU.

    python benchmarks/bench_contention.py
    python benchmarks/bench_contention.py --steps 30 --warmup 5 --competitor spin
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

COMPETITORS = {
    "spin": "import time\nend = time.time() + {limit}\nwhile time.time() < end:\n    pass\n",
    "torch": (
        "import time, torch\n"
        "x, w = torch.randn(32, 64, 128), torch.randn(128, 128)\n"
        "norm = torch.nn.LayerNorm(128)\n"
        "end = time.time() + {limit}\n"
        "while time.time() < end:\n"
        "    norm(x @ w)\n"
    ),
}


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
    from sanakit.hardware import THREAD_POLICY, WAIT_POLICY_VARIABLES

    env = {k: v for k, v in os.environ.items() if k not in WAIT_POLICY_VARIABLES}
    # the competitors keep OpenMP's default policy, as most jobs do
    limit = args.row_timeout
    code = COMPETITORS[args.competitor].format(limit=limit)
    spinners = [subprocess.Popen([sys.executable, "-c", code], env=env) for _ in range(busy)]
    if policy == "passive":
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    elif policy == "sanakit":
        env.update(THREAD_POLICY)
    time.sleep(1.0 if busy else 0.0)  # let the competitors start
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
    parser.add_argument("--repeats", type=int, default=3, help="runs of every row, round robin")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the demo's 2)")
    parser.add_argument("--row-timeout", type=float, default=600.0, help="seconds per row")
    parser.add_argument("--root", help="demo folder to reuse (default: a temp folder)")
    parser.add_argument("--competitor", choices=sorted(COMPETITORS), default="torch")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--precision", default="no", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    from sanakit.hardware import cpu_info

    root = Path(args.root or tempfile.mkdtemp(prefix="bench-contention-"))
    rows = []
    plan = [  # the demo trains in fp32 ("no")
        (0, "sanakit", "no"),
        (0, "default", "no"),
        (0, "passive", "no"),
        (0, "sanakit", "bf16"),
        (1, "sanakit", "no"),
        (1, "default", "no"),
        (1, "passive", "no"),
        (2, "sanakit", "no"),
    ]
    runs: dict[tuple, list[dict]] = {}
    for _ in range(args.repeats):  # round robin: slow drifts of the machine hit every row
        for busy, policy, precision in plan:
            row = run_row(args, root, busy=busy, policy=policy, precision=precision)
            runs.setdefault((busy, policy, precision), []).append(row)
            print(json.dumps(row), flush=True)
    for repeats in runs.values():  # per row: the median over repeats of the median step
        row = dict(repeats[0], step_s_median=statistics.median(r["step_s_median"] for r in repeats))
        row["step_s_min"] = min(r["step_s_min"] for r in repeats)
        row["repeats"] = len(repeats)
        rows.append(row)

    def step(busy: int, policy: str, requested: str = "no") -> float:
        return next(
            r["step_s_median"]
            for r in rows
            if (r["busy_processes"], r["wait_policy"], r["requested"]) == (busy, policy, requested)
        )

    quiet = step(0, "sanakit")
    summary = {
        "cpu": cpu_info().describe(),
        "competitor": args.competitor,
        "quiet_step_s": quiet,
        "busy1_over_quiet": round(step(1, "sanakit") / quiet, 2),
        "busy1_default_over_quiet": round(step(1, "default") / quiet, 2),
        "busy1_passive_over_quiet": round(step(1, "passive") / quiet, 2),
        "busy2_over_quiet": round(step(2, "sanakit") / quiet, 2),
        "quiet_sanakit_over_default": round(quiet / step(0, "default"), 3),
        "quiet_passive_over_default": round(step(0, "passive") / step(0, "default"), 3),
        "bf16_over_fp32": round(step(0, "sanakit", "bf16") / quiet, 2),
    }
    print(json.dumps({"rows": rows}))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
