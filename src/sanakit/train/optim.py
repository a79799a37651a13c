"""Optimizers and learning-rate schedules.

Schedules are pure functions ``lr_multiplier(step) -> float`` (step = optimizer steps done),
wrapped in ``torch.optim.lr_scheduler.LambdaLR``:
- constant: 1
- constant_with_warmup: min(1, step / warmup)
- linear: warmup, then (total - step) / (total - warmup) down to 0
- cosine: warmup, then 0.5 * (1 + cos(pi * progress)), progress = (step - warmup) / (total - warmup)
- polynomial: warmup, then (lr_end + (lr - lr_end) * (1 - progress) ** power) / lr, staying at
  lr_end / lr after total (transformers' ``get_polynomial_decay_schedule_with_warmup``)
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Iterable

import torch

from sanakit.errors import SanakitError

OPTIMIZERS = ("adamw", "adamw8bit", "lion8bit", "optimi-adamw", "optimi-lion")
SCHEDULES = ("constant", "constant_with_warmup", "linear", "cosine", "polynomial")


def lr_multiplier(
    schedule: str,
    step: int,
    warmup_steps: int,
    total_steps: int,
    *,
    end_factor: float = 0.0,
    power: float = 1.0,
) -> float:
    """The learning-rate factor after ``step`` optimizer steps (see the module docstring).
    ``end_factor`` (lr_end / lr) and ``power`` are the polynomial schedule's."""
    if schedule not in SCHEDULES:
        raise SanakitError(f"train.lr_scheduler={schedule!r} is not one of {', '.join(SCHEDULES)}")
    if schedule == "constant":
        return 1.0
    if warmup_steps > 0 and step < warmup_steps:
        return step / warmup_steps
    if schedule == "constant_with_warmup":
        return 1.0
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    if schedule == "linear":
        return 1.0 - progress
    if schedule == "polynomial":
        return end_factor + (1.0 - end_factor) * (1.0 - progress) ** power
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def _import_optional(module: str, package: str, option: str):
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise SanakitError(
            f"train.optimizer={option!r} needs the {package!r} package: pip install {package}"
        ) from err


def build_optimizer(
    params: Iterable[torch.nn.Parameter],
    name: str,
    *,
    lr: float,
    betas: tuple[float, float] = (0.9, 0.999),
    weight_decay: float = 0.01,
    eps: float = 1e-8,
) -> torch.optim.Optimizer:
    """adamw (torch), adamw8bit / lion8bit (bitsandbytes), optimi-adamw / optimi-lion
    (torch-optimi)."""
    params = [p for p in params if p.requires_grad]
    if not params:
        raise SanakitError("no trainable parameters (check train.method and the adapter targets)")
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay, eps=eps)
    if name == "adamw8bit":
        bnb = _import_optional("bitsandbytes", "bitsandbytes", name)
        return bnb.optim.AdamW8bit(params, lr=lr, betas=betas, weight_decay=weight_decay, eps=eps)
    if name == "lion8bit":  # no eps: Lion has none, and TrainSection rejects a train.eps with it
        bnb = _import_optional("bitsandbytes", "bitsandbytes", name)
        return bnb.optim.Lion8bit(params, lr=lr, betas=betas, weight_decay=weight_decay)
    if name == "optimi-adamw":
        optimi = _import_optional("optimi", "torch-optimi", name)
        return optimi.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay, eps=eps)
    if name == "optimi-lion":  # no eps, as lion8bit
        optimi = _import_optional("optimi", "torch-optimi", name)
        return optimi.Lion(params, lr=lr, betas=betas, weight_decay=weight_decay)
    raise SanakitError(f"train.optimizer={name!r} is not one of {', '.join(OPTIMIZERS)}")


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    schedule: str,
    *,
    warmup_steps: int,
    total_steps: int,
    lr_end: float = 1e-7,
    lr_power: float = 1.0,
) -> torch.optim.lr_scheduler.LambdaLR:
    """``LambdaLR`` over :func:`lr_multiplier`; ``lr_end`` / ``lr_power``: the polynomial
    schedule's final learning rate (relative to the optimizer's ``lr``) and power."""
    lr_multiplier(schedule, 0, warmup_steps, total_steps)  # validates the name
    end_factor = lr_end / optimizer.defaults["lr"] if schedule == "polynomial" else 0.0
    if not 0.0 <= end_factor < 1.0:
        raise SanakitError(f"train.lr_end={lr_end} must be >= 0 and below train.lr")

    def fn(step: int) -> float:
        return lr_multiplier(
            schedule, step, warmup_steps, total_steps, end_factor=end_factor, power=lr_power
        )

    return torch.optim.lr_scheduler.LambdaLR(optimizer, fn)
