"""``sanakit demo [--out DIR] [--minutes M] [--steps N] [--seed S]``: train a tiny Sana from
scratch on synthetic shapes (CPU, minutes, nothing downloaded) and score its prompt adherence."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

SPRINT_OUT = Path("sanakit-demo-sprint")
SPRINT_MINUTES = 15.0


def add_parser(sub: argparse._SubParsersAction) -> None:
    from sanakit.demo.settings import DemoSettings

    defaults = DemoSettings()
    p = sub.add_parser(
        "demo",
        help="train a tiny Sana on synthetic shapes on the CPU and score it (no downloads)",
        description="Generates a captioned dataset of coloured shapes, trains a tiny Sana on it "
        "with the real trainer, samples every colour x shape prompt and writes grid.png, "
        "loss.png, samples.jsonl, samples/ and score.json into --out. Ctrl-C saves a "
        "checkpoint; the same command resumes. See docs/demo.md.",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"output folder (default: {defaults.out}; with --sprint: {SPRINT_OUT})",
    )
    p.add_argument(
        "--minutes",
        type=float,
        default=None,
        help="time budget of this invocation in minutes: training stops early so that it and "
        f"the sampling that follows end within it (default: {defaults.minutes:g}; with "
        f"--sprint: {SPRINT_MINUTES:g})",
    )
    p.add_argument(
        "--sprint",
        action="store_true",
        help="train the model as a Sana-Sprint teacher, distil it into a 1-4 step student "
        "(sanakit distill) and score teacher and student side by side (OUT/sprint/)",
    )
    p.add_argument(
        "--distill-steps",
        type=int,
        default=defaults.distill_steps,
        help=f"--sprint: distillation steps to train to (default: {defaults.distill_steps})",
    )
    p.add_argument(
        "--steps",
        type=int,
        default=defaults.steps,
        help=f"optimizer steps to train to (default: {defaults.steps})",
    )
    p.add_argument("--seed", type=int, default=defaults.seed, help="data, model and noise seed")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sanakit.demo.settings import DemoSettings

    logging.basicConfig(level=args.log_level, format="%(levelname)s %(name)s: %(message)s")
    out = args.out or (SPRINT_OUT if args.sprint else DemoSettings.out)
    budget = args.minutes or (SPRINT_MINUTES if args.sprint else DemoSettings.minutes)
    settings = DemoSettings(
        out=out,
        steps=args.steps,
        minutes=budget,
        seed=args.seed,
        sprint=args.sprint,
        distill_steps=args.distill_steps,
    )
    if args.sprint:
        from sanakit.demo.sprint import run_sprint_demo

        score = run_sprint_demo(settings)
        print(json.dumps(score, indent=2))
        print(f"grid: {out / 'sprint' / 'grid.png'}  student: {out / 'sprint' / 'final'}")
        return 0
    from sanakit.demo.run import run_demo

    score = run_demo(settings)
    print(json.dumps(score, indent=2))
    print(f"grid: {out / 'grid.png'}  loss curve: {out / 'loss.png'}")
    return 0
