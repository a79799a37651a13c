"""``sanakit configure [-o sanakit.toml] [--force]``: the interactive config wizard."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "configure",
        help="answer a few questions and get a commented sanakit.toml",
        description="Step-by-step questions (base model, method, resolution, batch size, "
        "learning rate, EMA, checkpointing, validation prompts, datasets) with defaults; "
        "answers are checked and asked again when wrong. Works over a pipe: one answer per "
        "line, an empty line takes the default.",
    )
    p.add_argument("-o", "--output", default="sanakit.toml", help="TOML to write (sanakit.toml)")
    p.add_argument("--force", action="store_true", help="overwrite the output without asking")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sanakit.wizard import Prompter, run_wizard

    run_wizard(Prompter(), Path(args.output), force=args.force)
    return 0
