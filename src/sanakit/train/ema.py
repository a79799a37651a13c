"""Exponential moving average of trainable parameters (Polyak averaging).

shadow <- decay * shadow + (1 - decay) * param, applied every ``update_every`` optimizer steps,
kept in fp32 (optionally on the CPU to save accelerator memory).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from sanakit.errors import SanakitError


class EMA:
    """EMA of named parameters; ``state_dict()`` holds the shadow weights and the update count."""

    def __init__(
        self,
        named_parameters: Iterable[tuple[str, nn.Parameter]],
        *,
        decay: float = 0.9999,
        update_every: int = 1,
        device: str | torch.device | None = None,
    ) -> None:
        if not 0.0 < decay < 1.0:
            raise SanakitError(f"train.ema.decay must be in (0, 1), got {decay}")
        if update_every < 1:
            raise SanakitError(f"train.ema.update_every must be >= 1, got {update_every}")
        self.decay = decay
        self.update_every = update_every
        self.params = {name: p for name, p in named_parameters if p.requires_grad}
        self.shadow = {
            name: p.detach().to(device=device or p.device, dtype=torch.float32, copy=True)
            for name, p in self.params.items()
        }
        self.num_updates = 0

    @torch.no_grad()
    def step(self, optimizer_step: int) -> bool:
        """Update after optimizer step number ``optimizer_step`` (1-based); True if it updated."""
        if optimizer_step % self.update_every:
            return False
        for name, param in self.params.items():
            shadow = self.shadow[name]
            shadow.lerp_(param.detach().to(shadow.device, torch.float32), 1.0 - self.decay)
        self.num_updates += 1
        return True

    @torch.no_grad()
    def copy_to(self, named_parameters: Iterable[tuple[str, nn.Parameter]]) -> None:
        for name, param in named_parameters:
            if name in self.shadow:
                param.copy_(self.shadow[name].to(param.device, param.dtype))

    @contextmanager
    def swapped_in(self, model: nn.Module) -> Iterator[None]:
        """Temporarily load the EMA weights into ``model`` (for validation), then restore."""
        backup = {n: p.detach().clone() for n, p in model.named_parameters() if n in self.shadow}
        self.copy_to(model.named_parameters())
        try:
            yield
        finally:
            with torch.no_grad():
                for name, param in model.named_parameters():
                    if name in backup:
                        param.copy_(backup[name])

    def state_dict(self) -> dict[str, torch.Tensor]:
        state = {f"shadow.{k}": v for k, v in self.shadow.items()}
        state["num_updates"] = torch.tensor(self.num_updates)
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        names = {k.removeprefix("shadow.") for k in state if k.startswith("shadow.")}
        if names != set(self.shadow):
            missing = sorted(set(self.shadow) - names)[:3]
            raise SanakitError(f"EMA checkpoint does not match the model (e.g. missing {missing})")
        for name in names:
            self.shadow[name].copy_(state[f"shadow.{name}"])
        self.num_updates = int(state["num_updates"])
