"""``sanakit train CONFIG [--set key=value ...] [--resume latest|PATH] [--output-dir DIR]``."""

from __future__ import annotations

import argparse
import json
import logging

from sanakit.config import to_dict


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="fine-tune Sana (full, LoRA, LoKr) from a TOML/JSON config",
        description="Train from a sanakit TOML/JSON config (see docs/configuration.md). "
        "Caches latents and text embeddings first when needed.",
    )
    p.add_argument("config", help="sanakit .toml/.json config, or a SimpleTuner config.json")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a key, e.g. train.lr=2e-5 (repeatable)",
    )
    p.add_argument(
        "--resume",
        metavar="latest|PATH",
        help="continue from the latest checkpoint or a checkpoint folder",
    )
    p.add_argument("--output-dir", help="override output.dir")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.add_argument(
        "--allow-unsupported",
        action="store_true",
        help="SimpleTuner config.json: drop settings sanakit cannot honour (with a warning)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sanakit.compat.simpletuner import import_config, is_simpletuner_config
    from sanakit.train.config import load_run_config
    from sanakit.train.trainer import Trainer

    logging.basicConfig(level=args.log_level, format="%(levelname)s %(name)s: %(message)s")
    resume = args.resume
    if is_simpletuner_config(args.config):  # SimpleTuner's config.json: import, show the mapping
        imported = import_config(
            args.config, allow_unsupported=args.allow_unsupported, overrides=tuple(args.overrides)
        )
        print(imported.summary())
        config = imported.config
        resume = resume or imported.resume_for(args.output_dir or config.output.dir)
    else:
        config = load_run_config(args.config, tuple(args.overrides))
    print("resolved config:\n" + json.dumps(to_dict(config), indent=2))
    trainer = Trainer(config, output_dir=args.output_dir, resume=resume)
    final = trainer.fit()
    if final is not None:
        print(f"done: {trainer.step} steps; final weights in {final}")
    return 0
