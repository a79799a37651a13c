"""``sanakit cache CONFIG``: encode latents and text embeddings of the config's datasets."""

from __future__ import annotations

import argparse
import logging


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "cache",
        help="build the latent / text-embedding cache of a training config",
        description="Encode every image and caption of [[data.datasets]] that is not cached yet "
        "(sanakit train also does this). Images are decoded on data.num_workers threads (0 or 1 "
        "= one thread). Writes cache_report.json in data.cache_dir.",
    )
    p.add_argument("config", help="sanakit .toml/.json config")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. data.cache_dir=cache/run2 or data.num_workers=4; the "
        'value is a TOML literal (2e-5, true, [1, 2], "text") or else a plain string '
        "(repeatable; pass the same ones to sanakit train so it finds this cache)",
    )
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument(
        "--batch-size", type=int, default=None, help="encoder batch (default: train.batch_size)"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from sanakit.data import build_cache
    from sanakit.train import components
    from sanakit.train.config import load_run_config

    logging.basicConfig(level="INFO", format="%(levelname)s %(name)s: %(message)s")
    config = load_run_config(args.config, tuple(args.overrides))
    components.check_model_sources(config)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    autoencoder = components.load_frozen_autoencoder(config, device)
    text_encoder = components.load_text_encoder(config, device)
    report = build_cache(
        config.data,
        autoencoder,
        text_encoder,
        batch_size=args.batch_size or config.train.batch_size,
    )
    components.EncoderMemo(config).record(autoencoder, text_encoder)
    print(report.summary())
    return 0
