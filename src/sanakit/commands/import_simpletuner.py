"""``sanakit import-simpletuner CONFIG.json -o sanakit.toml [--allow-unsupported] [--force]``."""

from __future__ import annotations

import argparse
from pathlib import Path

from sanakit.errors import SanakitError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "import-simpletuner",
        help="turn a SimpleTuner config.json + multidatabackend.json into a sanakit TOML",
        description="Read a SimpleTuner Sana config (config.json and the multidatabackend, "
        "prompt-library and LyCORIS files it names), print how every key maps, and write the "
        "equivalent commented sanakit TOML (see docs/simpletuner.md).",
    )
    p.add_argument("config", help="SimpleTuner config.json (e.g. config/config.json)")
    p.add_argument("-o", "--output", default="sanakit.toml", help="TOML to write (sanakit.toml)")
    p.add_argument(
        "--allow-unsupported",
        action="store_true",
        help="drop settings sanakit cannot honour with a warning instead of failing",
    )
    p.add_argument("--force", action="store_true", help="overwrite an existing output file")
    p.add_argument("--quiet", action="store_true", help="do not print the key-by-key mapping")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sanakit.compat.simpletuner import import_config
    from sanakit.train.config import load_run_config

    out = Path(args.output)
    if out.suffix.lower() != ".toml":
        raise SanakitError(f"--output {out}: the sanakit config must end in .toml")
    if out.exists() and not args.force:
        raise SanakitError(f"--output {out} exists; pass --force to overwrite it")
    result = import_config(args.config, allow_unsupported=args.allow_unsupported)
    if not args.quiet:
        print(result.summary())
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.tmp.toml")
    tmp.write_text(result.toml(), encoding="utf-8")
    if load_run_config(tmp) != result.config:
        tmp.unlink()
        raise SanakitError(f"{out}: the written TOML does not reload to the imported config")
    tmp.replace(out)
    print(f"wrote {out}; train with: sanakit train {out}")
    return 0
