"""The ``sanakit`` command: parses arguments and calls library functions (thin by design)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from sanakit import __version__
from sanakit.errors import SanakitError
from sanakit.hardware import configure_thread_policy

# Sub-command modules (see ``sanakit.commands``), in the order ``sanakit --help`` lists them.
_COMMAND_MODULES: tuple[str, ...] = (
    "sanakit.commands.train",
    "sanakit.commands.sprint_teacher",
    "sanakit.commands.distill",
    "sanakit.commands.cache",
    "sanakit.commands.score_captions",
    "sanakit.commands.generate",
    "sanakit.commands.eval",
    "sanakit.commands.bench",
    "sanakit.commands.convert",
    "sanakit.commands.import_simpletuner",
    "sanakit.commands.configure",
    "sanakit.commands.demo",
)


def _load_commands() -> list[Callable[[argparse._SubParsersAction], None]]:
    import importlib

    return [importlib.import_module(name).add_parser for name in _COMMAND_MODULES]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sanakit", description="Train, fine-tune, distil and run Sana text-to-image models."
    )
    parser.add_argument("--version", action="version", version=f"sanakit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add_parser in _load_commands():
        add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # before any sub-command imports torch: OpenMP reads its wait policy once, at load time
    configure_thread_policy()
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except SanakitError as err:
        print(f"sanakit: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sanakit: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
