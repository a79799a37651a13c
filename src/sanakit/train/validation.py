"""Validation during training: sample the prompt library at each resolution with fixed seeds
(DPM-Solver or Euler, CFG against the empty prompt) and save PNGs plus a labelled grid.

Sampling goes through :func:`sanakit.sampling.sample_latents`, the path ``sanakit generate``
uses, with the same model time, noise and rounding; the flow shift is
``[validation] flow_shift``, by default the training shift at the validation resolution
(:func:`validation_shift`), which the export writes into the pipeline's scheduler config.

With ``clip_model`` / ``fid_reference`` (:func:`score_validation`), each round's images are scored
(CLIP score; FID/KID of extra images from :func:`fid_batch`) into ``scores.json``.

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
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from safetensors.torch import load_file, save_file

from sanakit.autoencoder import Autoencoder
from sanakit.pipeline import resolve_plan
from sanakit.sample import StepCallback
from sanakit.sampling import SamplerSettings, sample_latents, seed_generators, to_pil
from sanakit.text import TextEncoder
from sanakit.train.config import TrainSection, ValidationSection, parse_resolution
from sanakit.train.objective import training_shift

if TYPE_CHECKING:
    from sanakit.metrics.validation import RoundScorer


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


def validation_shift(
    validation: ValidationSection,
    train: TrainSection,
    height: int,
    width: int,
    downsample_factor: int,
) -> float:
    """The flow shift validation samples ``height x width`` with: ``validation.flow_shift``, else
    the training shift (``train.flow_shift``, or with ``train.auto_shift`` its value for the
    latent of this resolution, :func:`sanakit.train.objective.training_shift`)."""
    if validation.flow_shift is not None:
        return validation.flow_shift
    f = downsample_factor
    return training_shift(train, (height // f, width // f))


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
    autocast_dtype: torch.dtype | None = None,
    callback: StepCallback | None = None,
) -> list[Image.Image]:
    """One image per prompt of ``embeds`` (the model's config, dtype and device), every prompt
    from the noise of a CPU generator seeded ``seed``, CFG against the stored negative/empty
    prompt when ``guidance > 1``; ``callback(i, steps, x)`` after every sampler step."""
    settings = SamplerSettings(sampler, flow_shift=shift)
    plan = resolve_plan(
        model.config,
        settings,
        autoencoder.downsample_factor,
        height=height,
        width=width,
        steps=steps,
        guidance_scale=guidance,
        use_resolution_binning=False,
    )
    latents = sample_latents(
        model,
        (embeds.text, embeds.mask),
        (embeds.uncond_text, embeds.uncond_mask),
        plan,
        seed_generators([seed] * len(embeds.prompts)),
        autocast_dtype=autocast_dtype,
        callback=callback,
    )
    return to_pil(autoencoder.decode(latents))


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
    train: TrainSection,
    autocast_dtype: torch.dtype | None,
) -> tuple[Path, np.ndarray]:
    """Writes ``out_dir/{nickname}_{W}x{H}.png`` and ``out_dir/grid.png`` (flow shift:
    :func:`validation_shift`); returns the grid path and the grid as an (H, W, 3) uint8 array
    for the logger."""
    out_dir.mkdir(parents=True, exist_ok=True)
    images, labels = [], []
    with eval_mode(model):
        for res in validation.resolutions:
            height, width = parse_resolution(res)
            shift = validation_shift(
                validation, train, height, width, autoencoder.downsample_factor
            )
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
                autocast_dtype=autocast_dtype,
            )
            for name, image in zip(embeds.names, batch):
                image.save(out_dir / f"{name}_{width}x{height}.png")
                images.append(image)
                labels.append(f"{name} {width}x{height}")
    columns = len(embeds.names)
    grid = labelled_grid(images, labels, columns)
    grid.save(out_dir / "grid.png")
    return out_dir / "grid.png", np.asarray(grid)


def fid_batch(
    model: torch.nn.Module,
    autoencoder: Autoencoder,
    embeds: PromptEmbeddings,
    validation: ValidationSection,
    count: int,
    *,
    train: TrainSection,
    autocast_dtype: torch.dtype | None,
) -> list[Image.Image]:
    """``count`` images for FID/KID at the first validation resolution: the prompts cycled, one
    batch of every prompt per seed ``seed, seed + 1, ...`` (:func:`sample_images`)."""
    height, width = parse_resolution(validation.resolutions[0])
    shift = validation_shift(validation, train, height, width, autoencoder.downsample_factor)
    images: list[Image.Image] = []
    seed = validation.seed
    with eval_mode(model):
        while len(images) < count:
            images += sample_images(
                model,
                autoencoder,
                embeds,
                height=height,
                width=width,
                steps=validation.steps,
                guidance=validation.guidance,
                seed=seed,
                sampler=validation.sampler,
                shift=shift,
                autocast_dtype=autocast_dtype,
            )
            seed += 1
    return images[:count]


def score_validation(
    scorer: RoundScorer,
    model: torch.nn.Module,
    autoencoder: Autoencoder,
    embeds: PromptEmbeddings,
    out_dir: Path,
    step: int,
    *,
    train: TrainSection,
    autocast_dtype: torch.dtype | None,
) -> dict[str, Any]:
    """Scores the round :func:`run_validation` wrote to ``out_dir`` (its PNGs, read back
    losslessly) plus, with ``fid_reference``, a :func:`fid_batch`; writes ``out_dir/scores.json``
    and returns the scores (:mod:`sanakit.metrics.validation`)."""
    from sanakit.metrics.validation import write_scores

    validation = scorer.validation
    images = {}
    for res in validation.resolutions:
        height, width = parse_resolution(res)
        for name in embeds.names:
            with Image.open(out_dir / f"{name}_{width}x{height}.png") as image:
                images[f"{name}_{width}x{height}"] = image.convert("RGB")
    extra: list[Image.Image] = []
    if validation.fid_reference:
        extra = fid_batch(
            model,
            autoencoder,
            embeds,
            validation,
            scorer.fid_images,
            train=train,
            autocast_dtype=autocast_dtype,
        )
    scores = scorer.score(images, dict(zip(embeds.names, embeds.prompts)), extra)
    write_scores(out_dir, step, scores)
    return scores
