"""The encoder interfaces the cache needs, as structural protocols, so the data package never
imports model code. ``sanakit.autoencoder`` and ``sanakit.text`` implement them; tests use small
fakes."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

__all__ = ["AutoencoderLike", "TextEncoderLike"]


@runtime_checkable
class AutoencoderLike(Protocol):
    """Maps images ``(B, 3, H, W)`` in [-1, 1] to latents ``(B, latent_channels, H / f, W / f)``
    with ``f = downsample_factor`` (32 for DC-AE), already multiplied by the scaling factor."""

    latent_channels: int
    downsample_factor: int

    @property
    def dtype(self) -> torch.dtype: ...

    @property
    def device(self) -> torch.device: ...

    def encode(self, images: torch.Tensor) -> torch.Tensor: ...

    def fingerprint(self) -> str:
        """Identity of everything that changes ``encode`` (class, config, weights, dtype)."""
        ...


@runtime_checkable
class TextEncoderLike(Protocol):
    """Maps prompts to ``embeds (B, max_length, hidden_size)`` and ``mask (B, max_length)``
    int64 (1 = real token)."""

    @property
    def max_length(self) -> int: ...

    @property
    def hidden_size(self) -> int: ...

    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]: ...

    def encode_empty(self, batch: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """The empty-prompt embedding used for caption dropout / unconditional guidance."""
        ...

    def fingerprint(self) -> str:
        """Identity of everything that changes ``encode`` (weights, instruction, max length)."""
        ...
