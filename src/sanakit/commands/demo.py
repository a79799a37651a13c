"""``sanakit demo [--out DIR] [--minutes M] [--steps N] [--seed S]``: train a tiny Sana from
scratch on synthetic shapes (CPU, minutes, nothing downloaded) and score its prompt adherence."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path


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
        default=defaults.out,
        help=f"output folder (default: {defaults.out})",
    )
    p.add_argument(
        "--minutes",
        type=float,
        default=defaults.minutes,
        help="time budget of this invocation in minutes: training stops early so that it and "
        f"the sampling that follows end within it (default: {defaults.minutes:g})",
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
    from sanakit.demo.run import run_demo
    from sanakit.demo.settings import DemoSettings

    logging.basicConfig(level=args.log_level, format="%(levelname)s %(name)s: %(message)s")
    settings = DemoSettings(out=args.out, steps=args.steps, minutes=args.minutes, seed=args.seed)
    score = run_demo(settings)
    print(json.dumps(score, indent=2))
    print(f"grid: {args.out / 'grid.png'}  loss curve: {args.out / 'loss.png'}")
    return 0
