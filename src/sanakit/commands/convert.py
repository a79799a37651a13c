"""``sanakit convert CHECKPOINT.pth --out DIR``: an original NVlabs/Sana checkpoint to a
diffusers-format transformer folder (loadable by diffusers and by sanakit)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert",
        help="convert an NVlabs Sana .pth checkpoint to a diffusers transformer folder",
        description="Convert an original NVlabs/Sana checkpoint (e.g. Sana_1600M_1024px.pth, or a "
        "Sana-Sprint teacher) to a diffusers SanaTransformer2DModel folder. The architecture is "
        "read from the tensors; --resolution sets sample_size and the positional embedding.",
    )
    p.add_argument("checkpoint", type=Path, help="the NVlabs .pth file")
    p.add_argument("--out", type=Path, required=True, help="output transformer folder")
    p.add_argument("--resolution", type=int, default=1024, choices=[512, 1024, 2048, 4096])
    p.add_argument(
        "--dtype", default="bf16", choices=["bf16", "fp32"], help="saved dtype (default bf16)"
    )
    p.add_argument(
        "--timestep-norm-scale-factor",
        type=float,
        default=1.0,
        help="NVlabs' scheduler.timestep_norm_scale_factor: 1000 for a Sana-Sprint teacher "
        "(dense time; written as timestep_scale = 1/1000 in config.json)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from sanakit.models import save_transformer
    from sanakit.models.convert import load_nvlabs_checkpoint

    model = load_nvlabs_checkpoint(
        args.checkpoint,
        resolution=args.resolution,
        timestep_norm_scale_factor=args.timestep_norm_scale_factor,
    )
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    folder = save_transformer(model, args.out, dtype=dtype)
    cfg = model.config
    print(
        f"wrote {folder}: {cfg.num_layers} blocks x {cfg.hidden_size} wide, qk_norm={cfg.qk_norm}, "
        f"guidance_embeds={cfg.guidance_embeds}, {model.num_parameters() / 1e6:.1f}M parameters"
    )
    return 0
