"""``sanakit train CONFIG [--set key=value ...] [--resume latest|PATH] [--output-dir DIR]``."""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sanakit.train.trainer import Trainer


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="fine-tune Sana (full, LoRA, LoKr) from a TOML/JSON config",
        description="Train from a sanakit TOML/JSON config (see docs/configuration.md). "
        "Caches latents and text embeddings first when needed. An output folder that already "
        "holds a run is only continued with --resume; Ctrl-C saves a checkpoint and stops.",
    )
    p.add_argument("config", help="sanakit .toml/.json config, or a SimpleTuner config.json")
    add_run_arguments(p)
    p.add_argument(
        "--allow-unsupported",
        action="store_true",
        help="SimpleTuner config.json: drop settings sanakit cannot honour (with a warning)",
    )
    p.set_defaults(func=run)


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    """The options ``sanakit train`` and ``sanakit distill`` share."""
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a key, e.g. train.lr=2e-5 (repeatable; paths relative to the current "
        "directory)",
    )
    p.add_argument(
        "--resume",
        metavar="latest|PATH",
        help="continue from the latest checkpoint or a checkpoint folder",
    )
    p.add_argument("--output-dir", help="override output.dir (relative to the current directory)")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])


def run(args: argparse.Namespace) -> int:
    from sanakit.train.trainer import Trainer

    return run_with(args, Trainer)


def run_with(args: argparse.Namespace, trainer_cls: type[Trainer], command: str = "train") -> int:
    """Load the config, build ``trainer_cls``, print the summary, train, handle Ctrl-C."""
    from sanakit.compat.simpletuner import import_config, is_simpletuner_config
    from sanakit.config import check_output_folder
    from sanakit.errors import SanakitError
    from sanakit.train.config import load_run_config

    logging.basicConfig(level=args.log_level, format="%(levelname)s %(name)s: %(message)s")
    # typed on the command line: relative to the current directory (config paths are not)
    output_dir = os.path.abspath(os.path.expanduser(args.output_dir)) if args.output_dir else None
    if output_dir:
        check_output_folder(output_dir, "--output-dir")
    resume = args.resume
    if command == "train" and is_simpletuner_config(
        args.config
    ):  # SimpleTuner's config.json: import, show the mapping
        imported = import_config(
            args.config, allow_unsupported=args.allow_unsupported, overrides=tuple(args.overrides)
        )
        print(imported.summary())
        config = imported.config
        # SimpleTuner's resume_from_checkpoint asks to resume (when there is a checkpoint)
        resume = resume or imported.resume_for(output_dir or config.output.dir)
    else:
        config = load_run_config(args.config, tuple(args.overrides))
    if command == "train" and config.distill is not None:
        raise SanakitError(
            f"{args.config}: [distill] is read by `sanakit distill CONFIG`; `sanakit train` "
            "trains a flow model (remove the section, or run sanakit distill)"
        )
    trainer = trainer_cls(config, output_dir=output_dir, resume=resume)
    main = trainer.accelerator.is_main_process  # one summary under `accelerate launch`
    if main:
        print(summary(trainer, args.config, command))
    try:
        final = trainer.fit()
    except KeyboardInterrupt as stop:
        if main:
            message = interrupted_message(trainer, stop, resume_command(args, command), command)
            print(message, file=sys.stderr)
        raise
    if final is not None:
        print(f"done: {trainer.step} steps; final weights in {final}")
    return 0


def summary(trainer: Trainer, source: str, command: str = "train") -> str:
    """A few lines on what the run does; the whole resolved config goes to OUTPUT/config.json."""
    cfg, t = trainer.config, trainer.config.train
    m = cfg.model
    if m.base:
        model = f"base {m.base}"
    elif m.transformer:
        model = f"transformer {m.transformer}"
    else:
        model = f"preset {m.preset} (random init)"
    trainable = sum(p.numel() for p in trainer.params)
    method = t.method
    if trainer.adapter is not None:
        spec = t.adapter_spec()
        method += f" rank {spec.rank}" + (f" factor {spec.factor}" if t.method == "lokr" else "")
    plans = trainer.loader.planner.datasets
    data = ", ".join(f"{d.id} ({sum(len(i) for i in d.buckets.values())} images)" for d in plans)
    procs = f"{trainer.world} process" + ("es" if trainer.world > 1 else "")
    batch = f"batch {t.batch_size} x {t.gradient_accumulation} accumulation x {procs}"
    ema = f", EMA {t.ema.decay:g}" if t.ema else ""
    start = f"from step {trainer.step} " if trainer.step else ""
    logs = cfg.output.log_with
    if logs == "tensorboard":
        logs = f"tensorboard --logdir {trainer.out / 'logs'}"
    lines = [
        f"sanakit {command} {source}",
        f"  model   {model}; {trainable / 1e6:.2f}M trainable parameters",
        f"  data    {data}; cache {cfg.data.cache_dir}",
        f"  method  {method}, {t.optimizer} lr {t.learning_rate:g} ({t.lr_scheduler}), {batch}, "
        f"mixed precision {trainer.precision}{ema}",
        f"  steps   {start}to {trainer.max_steps} ({trainer.steps_per_epoch} per epoch)",
        f"  output  {trainer.out} (resolved config: config.json); logs: {logs}",
    ]
    return "\n".join(lines)


def resume_command(args: argparse.Namespace, command: str = "train") -> str:
    """The command that continues this run (same config, overrides and output folder)."""
    cmd = ["sanakit", command, args.config]
    for override in args.overrides:
        cmd += ["--set", override]
    if args.output_dir:
        cmd += ["--output-dir", args.output_dir]
    if getattr(args, "allow_unsupported", False):
        cmd.append("--allow-unsupported")
    return shlex.join([*cmd, "--resume", "latest"])


def interrupted_message(
    trainer: Trainer, stop: KeyboardInterrupt, command: str, name: str = "train"
) -> str:
    """What a Ctrl-C left behind and how to continue."""
    from sanakit.train.interrupt import TrainingInterrupted

    if isinstance(stop, TrainingInterrupted):
        done = f"stopped at step {stop.step}; saved {stop.checkpoint}"
    elif (latest := trainer.checkpointer.latest()) is not None:  # a second Ctrl-C: at once
        done = f"stopped at once; the last checkpoint is {latest}"
    else:
        return f"sanakit {name}: stopped before the first checkpoint; nothing to resume"
    return f"sanakit {name}: {done}; continue with: {command}"
