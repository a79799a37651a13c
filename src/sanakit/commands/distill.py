"""``sanakit distill CONFIG [--set key=value ...] [--resume latest|PATH] [--output-dir DIR]``."""

from __future__ import annotations

import argparse

from sanakit.commands.train import add_run_arguments, run_with


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "distill",
        help="distil a dense-time Sana teacher into a 1-4 step Sana-Sprint student (sCM)",
        description="Sana-Sprint distillation from a sanakit TOML/JSON config with a [distill] "
        "section (docs/sprint.md). [model] is where the student starts (a dense-time teacher, "
        "or a Sprint model with distill.teacher set); caches data as `sanakit train` does; "
        "final/ is a SanaSprintPipeline folder (or the adapter of a LoRA/LoKr student). "
        "Ctrl-C saves a checkpoint; --resume latest continues exactly.",
    )
    p.add_argument("config", help="sanakit .toml/.json config")
    add_run_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sanakit.sprint.trainer import DistillTrainer

    return run_with(args, DistillTrainer, "distill")
