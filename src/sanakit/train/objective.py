"""The flow-matching training objective on a cached batch (Sana §2.4; Lipman et al. 2023).

x_σ = (1 − σ) x0 + σ ε, target v = ε − x0, model time σ·1000·``timestep_scale``
(:func:`sanakit.flow.model_time`, the rule generation uses too), loss = per-sample MSE in fp32
(masked when the batch has loss masks) weighted by the dataset's loss weight
(:func:`sanakit.flow.flow_matching_loss`).

Randomness is stateless: the noise and σ of the sample at position ``i`` of the *global*
micro-batch ``m`` of optimizer step ``s`` come from a generator seeded with (seed, s, m, i). An
interrupted run that resumes from a checkpoint therefore draws exactly the same values as an
uninterrupted one, and N processes with batch B draw what one process with batch N·B draws.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import torch

from sanakit.flow import (
    auto_shift,
    flow_matching_loss,
    interpolate,
    model_time,
    sample_training_sigmas,
    velocity_target,
)
from sanakit.train.config import TrainSection
from sanakit.train.regularisation import regularisation_target, sample_weights


def step_generator(seed: int, step: int, micro: int, index: int) -> torch.Generator:
    """A CPU generator whose seed is a hash of (seed, step, micro, sample index)."""
    digest = hashlib.blake2b(f"{seed}/{step}/{micro}/{index}".encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") & ((1 << 63) - 1))


def training_shift(train: TrainSection, latent_size: tuple[int, int]) -> float:
    """The timestep shift at a latent size ``(h, w)``: ``train.flow_shift`` (default 1), or with
    ``train.auto_shift`` the resolution-dependent ``auto_shift(h * w)``."""
    if train.auto_shift:
        return auto_shift(latent_size[0] * latent_size[1])
    return train.shift


def batch_shift(train: TrainSection, latents: torch.Tensor) -> float:
    """The timestep shift for a batch of latents ``(B, C, h, w)`` (:func:`training_shift`)."""
    return training_shift(train, (latents.shape[-2], latents.shape[-1]))


def flow_matching_step(
    model: torch.nn.Module,
    batch: dict[str, Any],
    train: TrainSection,
    generators: list[torch.Generator],
    device: torch.device,
    *,
    timestep_scale: float,
    adapter_off: Callable[[], AbstractContextManager[Any]] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(scalar loss, per-sample losses (B,)) for one micro-batch, one generator per sample; the
    model (``timestep_scale`` from its config) runs under the caller's autocast. Regularisation
    samples: :mod:`sanakit.train.regularisation` (``adapter_off``: the adapter's ``disabled``)."""
    x0 = batch["latents"].to(device, torch.float32)
    shift = batch_shift(train, x0)
    sigmas, noises = [], []
    for g in generators:
        sigmas.append(
            sample_training_sigmas(
                1,
                method=train.timestep_sampling,
                mean=train.logit_mean,
                std=train.logit_std,
                mode_scale=train.mode_scale,
                shift=shift,
                generator=g,
            )
        )
        noises.append(torch.randn(x0.shape[1:], generator=g))
    sigma = torch.cat(sigmas).to(device)
    noise = torch.stack(noises).to(device)
    x_t = interpolate(x0, noise, sigma)
    text = batch["text"].to(device)
    text_mask = batch["text_mask"].to(device)
    predict = functools.partial(model, x_t, model_time(sigma, timestep_scale), text, text_mask)
    pred = predict()
    target = velocity_target(x0, noise)
    target = regularisation_target(target, batch, train, predict, adapter_off)
    mask = batch.get("mask")
    mask = mask.to(device) if mask is not None else None
    weights = sample_weights(batch, train, device)  # (B,) loss_weight x prior_loss_weight
    loss, per_sample = flow_matching_loss(pred, target, weights=weights, mask=mask)
    return loss, per_sample.detach()


@torch.no_grad()
def eval_loss(
    model: torch.nn.Module,
    batch: dict[str, Any],
    sigmas: tuple[float, ...],
    seed: int,
    device: torch.device,
    *,
    timestep_scale: float,
) -> dict[float, torch.Tensor]:
    """Per-σ summed loss of a held-out batch at fixed σ with noise fixed per sample id (model
    time as in training)."""
    x0 = batch["latents"].to(device, torch.float32)
    text, text_mask = batch["text"].to(device), batch["text_mask"].to(device)
    noise = torch.stack(
        [
            torch.randn(x0.shape[1:], generator=step_generator(seed, 0, 0, hash_id(i)))
            for i in batch["ids"]
        ]
    ).to(device)
    out = {}
    for s in sigmas:
        sigma = torch.full((x0.shape[0],), s, device=device)
        pred = model(
            interpolate(x0, noise, sigma), model_time(sigma, timestep_scale), text, text_mask
        )
        out[s] = flow_matching_loss(pred, velocity_target(x0, noise))[1].sum()
    return out


def hash_id(sample_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(sample_id.encode(), digest_size=4).digest(), "little")
