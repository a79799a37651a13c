"""Validation during training: sample the prompt library at each resolution with fixed seeds
(DPM-Solver or Euler, CFG against the empty prompt) and save PNGs plus a labelled grid.

Prompt embeddings are computed once and stored in the cache folder keyed by the text-encoder
fingerprint, so a resumed run (or one whose cache is complete) needs no text encoder.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from safetensors.torch import load_file, save_file

from sanakit.autoencoder import Autoencoder
from sanakit.sample import StepCallback, flow_dpm_solver, flow_euler
from sanakit.text import TextEncoder
from sanakit.train.config import ValidationSection, parse_resolution


@dataclass
class PromptEmbeddings:
    names: list[str]
    prompts: list[str]
    text: torch.Tensor  # (P, L, D)
    mask: torch.Tensor  # (P, L)
    uncond_text: torch.Tensor  # (1, L, D)
    uncond_mask: torch.Tensor  # (1, L)


def _store_path(cache_dir: str, text_fingerprint: str, prompts: list[str], negative: str) -> Path:
    key = hashlib.blake2b(
        json.dumps([text_fingerprint, prompts, negative]).encode(), digest_size=12
    ).hexdigest()
    return Path(cache_dir).expanduser() / "validation" / f"{key}.safetensors"


def prompt_embeddings(
    validation: ValidationSection,
    cache_dir: str,
    text_fingerprint: str,
    text_encoder_factory,
) -> PromptEmbeddings | None:
    """Embeddings of the validation prompts (None without prompts); loads the text encoder via
    ``text_encoder_factory()`` only when they are not stored yet."""
    items = validation.prompt_items()
    if not items:
        return None
    names, prompts = [n for n, _ in items], [p for _, p in items]
    path = _store_path(cache_dir, text_fingerprint, prompts, validation.negative_prompt)
    if path.is_file():
        t = load_file(str(path))
    else:
        encoder: TextEncoder = text_encoder_factory()
        text, mask = encoder.encode(prompts)
        if validation.negative_prompt:
            u_text, u_mask = encoder.encode_negative([validation.negative_prompt])
        else:
            u_text, u_mask = encoder.encode_empty(1)
        t = {
            "text": text.float(),
            "mask": mask,
            "uncond_text": u_text.float(),
            "uncond_mask": u_mask,
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in t.items()}, str(path))
    return PromptEmbeddings(
        names, prompts, t["text"], t["mask"], t["uncond_text"], t["uncond_mask"]
    )


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """(B, 3, H, W) in [-1, 1] -> PIL images (round to nearest uint8)."""
    arr = ((images.float() / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
    return [Image.fromarray(a.permute(1, 2, 0).cpu().numpy()) for a in arr]


def labelled_grid(images: list[Image.Image], labels: list[str], columns: int) -> Image.Image:
    """Tile images in rows of ``columns`` with a text label above each row's first image."""
    w = max(i.width for i in images)
    h = max(i.height for i in images)
    rows = (len(images) + columns - 1) // columns
    pad = 14
    grid = Image.new("RGB", (columns * w, rows * (h + pad)), "white")
    draw = ImageDraw.Draw(grid)
    for k, (img, label) in enumerate(zip(images, labels)):
        r, c = divmod(k, columns)
        grid.paste(img, (c * w, r * (h + pad) + pad))
        if c == 0:
            draw.text((2, r * (h + pad)), label[: max(8, columns * w // 6)], fill="black")
    return grid


@torch.no_grad()
def sample_images(
    model: torch.nn.Module,
    autoencoder: Autoencoder,
    embeds: PromptEmbeddings,
    *,
    height: int,
    width: int,
    steps: int,
    guidance: float,
    seed: int,
    sampler: str = "dpm",
    shift: float = 1.0,
    device: torch.device | str = "cpu",
    autocast_dtype: torch.dtype | None = None,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """(P, 3, H, W) images in [-1, 1], one per prompt, noise from CPU generators seeded ``seed``;
    ``callback(i, steps, x)`` after every sampler step (progress bars)."""
    f = autoencoder.downsample_factor
    channels = autoencoder.latent_channels
    noise = torch.cat(
        [
            torch.randn(
                (1, channels, height // f, width // f),
                generator=torch.Generator().manual_seed(seed),
            )
            for _ in embeds.prompts
        ]
    ).to(device)
    device_type = torch.device(device).type

    def velocity(x, t, text, mask, guidance=None):
        with torch.autocast(
            device_type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None
        ):
            return model(x, t, text, mask).float()

    solver = flow_dpm_solver if sampler == "dpm" else flow_euler
    latents = solver(
        velocity,
        noise,
        embeds.text.to(device),
        embeds.mask.to(device),
        steps=steps,
        shift=shift,
        guidance_scale=guidance,
        uncond_text=embeds.uncond_text.to(device),
        uncond_mask=embeds.uncond_mask.to(device),
        callback=callback,
    )
    return autoencoder.decode(latents.to(autoencoder.device, autoencoder.dtype)).float().cpu()


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """``model`` in eval mode for the block, then back in the mode it had (also on errors)."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def run_validation(
    model: torch.nn.Module,
    autoencoder: Autoencoder,
    embeds: PromptEmbeddings,
    validation: ValidationSection,
    out_dir: Path,
    *,
    shift: float,
    device: torch.device | str,
    autocast_dtype: torch.dtype | None,
) -> tuple[Path, np.ndarray]:
    """Writes ``out_dir/{nickname}_{W}x{H}.png`` and ``out_dir/grid.png``; returns the grid path
    and the grid as an (H, W, 3) uint8 array for the logger."""
    out_dir.mkdir(parents=True, exist_ok=True)
    images, labels = [], []
    with eval_mode(model):
        for res in validation.resolutions:
            height, width = parse_resolution(res)
            batch = sample_images(
                model,
                autoencoder,
                embeds,
                height=height,
                width=width,
                steps=validation.steps,
                guidance=validation.guidance,
                seed=validation.seed,
                sampler=validation.sampler,
                shift=shift,
                device=device,
                autocast_dtype=autocast_dtype,
            )
            for name, image in zip(embeds.names, to_pil(batch)):
                image.save(out_dir / f"{name}_{width}x{height}.png")
                images.append(image)
                labels.append(f"{name} {width}x{height}")
    columns = len(embeds.names)
    grid = labelled_grid(images, labels, columns)
    grid.save(out_dir / "grid.png")
    return out_dir / "grid.png", np.asarray(grid)
