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
import logging
import math
import typing
from collections.abc import Iterable

import torch

from sanakit.errors import SanakitError
from sanakit.train.config import OPTIMIZER_PACKAGES, OptimizerName

log = logging.getLogger("sanakit.train")

OPTIMIZERS: tuple[str, ...] = typing.get_args(OptimizerName)
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


def _import_optional(option: str):
    module, package = OPTIMIZER_PACKAGES[option]
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise SanakitError(
            f"train.optimizer={option!r} needs the {package!r} package: pip install {package}"
        ) from err


def _bnb_optim(name: str, params: list[torch.nn.Parameter]):
    """bitsandbytes' optimizer module; paged variants keep their state in CUDA unified memory,
    which pages to CPU RAM under pressure (bitsandbytes' paged optimizers): on the CPU there is
    nothing to page to, and bitsandbytes runs them unpaged (said once in the log)."""
    bnb = _import_optional(name)
    if name.startswith("paged_") and all(p.device.type == "cpu" for p in params):
        log.info(
            "train.optimizer=%r on the CPU: paging needs CUDA, so it runs as %s", name, name[6:]
        )
    return bnb.optim


def build_optimizer(
    params: Iterable[torch.nn.Parameter],
    name: str,
    *,
    lr: float,
    betas: tuple[float, float] = (0.9, 0.999),
    weight_decay: float = 0.01,
    eps: float = 1e-8,
) -> torch.optim.Optimizer:
    """adamw (torch); adamw8bit / lion8bit and their paged_ variants (bitsandbytes: 8-bit
    blockwise state, Dettmers et al., 2022, arXiv:2110.02861); optimi-adamw / optimi-lion
    (torch-optimi); adafactor (torch's: factored second moment, no momentum, steps relative
    to the parameter RMS, min(lr, 1/sqrt(t)) * max(1e-3, RMS(p)); Shazeer & Stern, 2018); came (came-pytorch: confidence-guided Adafactor, Luo et al., 2023, its third beta
    left at 0.9999). Lion, Adafactor and CAME take no ``eps`` (TrainSection rejects one)."""
    params = [p for p in params if p.requires_grad]
    if not params:
        raise SanakitError("no trainable parameters (check train.method and the adapter targets)")
    kw = dict(lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, betas=betas, eps=eps, **kw)
    if name in ("adamw8bit", "paged_adamw8bit"):
        cls = "AdamW8bit" if name == "adamw8bit" else "PagedAdamW8bit"
        return getattr(_bnb_optim(name, params), cls)(params, betas=betas, eps=eps, **kw)
    if name in ("lion8bit", "paged_lion8bit"):
        cls = "Lion8bit" if name == "lion8bit" else "PagedLion8bit"
        return getattr(_bnb_optim(name, params), cls)(params, betas=betas, **kw)
    if name == "optimi-adamw":
        return _import_optional(name).AdamW(params, betas=betas, eps=eps, **kw)
    if name == "optimi-lion":
        return _import_optional(name).Lion(params, betas=betas, **kw)
    if name == "adafactor":
        return torch.optim.Adafactor(params, **kw)
    if name == "came":
        return _import_optional(name).CAME(params, betas=(*betas, 0.9999), **kw)
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
