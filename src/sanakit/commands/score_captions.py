"""``sanakit score-captions CONFIG --clip-model PATH``: fill in the CLIP scores of the captions of
a training config's folder datasets (``image.json`` sidecars; :mod:`sanakit.metrics.captions`),
for ``caption_selection = "clip_weighted"``. Resumable: scored images are skipped."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "score-captions",
        help="CLIP-score the captions of a config's datasets (for clip_weighted selection)",
        description="For every image of the config's folder datasets, CLIP-score the captions "
        "that have no score yet and write them with their scores to the image.json sidecar "
        "(existing scores are kept; an interrupted run continues where it stopped).",
    )
    p.add_argument("config", help="sanakit .toml/.json config")
    p.add_argument("--clip-model", required=True, help="local CLIP folder (transformers CLIPModel)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key (as in sanakit train)",
    )
    p.add_argument("--batch-size", type=int, default=32, help="CLIP batch (default 32)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sanakit.commands.generate import device_and_dtype
    from sanakit.errors import SanakitError
    from sanakit.metrics.captions import check_dataset, score_captions
    from sanakit.metrics.clip import ClipModel
    from sanakit.train.config import load_run_config

    if args.batch_size < 1:
        raise SanakitError(f"--batch-size must be >= 1, got {args.batch_size}")
    config = load_run_config(args.config, tuple(args.overrides))
    for index, cfg in enumerate(config.data.datasets):
        if not cfg.disabled:
            check_dataset(cfg, f"data.datasets[{index}]")
    device, _ = device_and_dtype(args.device, None)
    clip = ClipModel.load(args.clip_model, device=device, what="--clip-model")
    report = score_captions(config.data, clip, batch_size=args.batch_size)
    for problem in report.problems[:10]:
        print(f"skipped {problem}")
    print(
        f"{report.images} images: {report.complete} already scored, {report.scored} captions "
        f"scored now, {report.written} sidecars written, {len(report.problems)} skipped"
    )
    return 0
