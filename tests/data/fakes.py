"""Small deterministic encoders implementing the data package's protocols, with call counters,
and image-file helpers for the data tests."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


class SimulatedKill(RuntimeError):
    """Raised by a fake encoder to simulate a process killed mid-build."""


class FakeAutoencoder:
    """Parameter-free 'autoencoder': latent channel c is the f x f average pool of image channel
    c % 3, scaled by (1 + c // 3). Counts calls and encoded images; ``fail_after`` raises
    :class:`SimulatedKill` on the call after that many calls."""

    def __init__(
        self,
        factor: int = 8,
        channels: int = 4,
        tag: str = "fake-ae-v1",
        fail_after: int | None = None,
    ) -> None:
        self.downsample_factor = factor
        self.latent_channels = channels
        self.tag = tag
        self.fail_after = fail_after
        self.calls = 0
        self.images = 0

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise SimulatedKill("simulated kill during caching")
        self.calls += 1
        self.images += images.shape[0]
        pooled = F.avg_pool2d(images.float(), self.downsample_factor)  # (B, 3, H/f, W/f)
        return torch.stack(
            [pooled[:, c % 3] * (1 + c // 3) for c in range(self.latent_channels)], 1
        )

    def fingerprint(self) -> str:
        return f"{self.tag}-f{self.downsample_factor}-c{self.latent_channels}"


def _text_seed(text: str) -> float:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=4).digest(), "little") / 2**32


class FakeTextEncoder:
    """Deterministic text encoder: token j of a prompt embeds as ``sin(s + j + k / D)`` over
    feature k, where ``s`` hashes instruction + prompt; the mask covers min(words + 1, L) tokens.
    The empty prompt (no instruction) has only its first token unmasked."""

    def __init__(
        self, max_length: int = 12, hidden: int = 16, instruction: str = "Describe:"
    ) -> None:
        self._max_length, self._hidden = max_length, hidden
        self.instruction = instruction
        self.calls = 0
        self.prompts: list[str] = []

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def hidden_size(self) -> int:
        return self._hidden

    def _embed(self, text: str, n_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        j = torch.arange(self._max_length, dtype=torch.float32)[:, None]
        k = torch.arange(self._hidden, dtype=torch.float32)[None, :] / self._hidden
        embeds = torch.sin(_text_seed(text) * 100 + j + k)
        mask = (torch.arange(self._max_length) < n_tokens).long()
        return embeds, mask

    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        self.calls += 1
        self.prompts.extend(prompts)
        out = [
            self._embed(self.instruction + p, min(len(p.split()) + 1, self._max_length))
            for p in prompts
        ]
        return torch.stack([e for e, _ in out]), torch.stack([m for _, m in out])

    def encode_empty(self, batch: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        self.calls += 1
        e, m = self._embed("", 1)
        return e.expand(batch, -1, -1).clone(), m.expand(batch, -1).clone()

    def fingerprint(self) -> str:
        return hashlib.sha256(
            f"{self.instruction}|{self._max_length}|{self._hidden}".encode()
        ).hexdigest()[:16]


def noise_image(width: int, height: int, seed: int = 0, mode: str = "RGB") -> Image.Image:
    """A random image (so resizes and crops are visible in the pixels)."""
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    img = Image.fromarray(arr, "RGB")
    return img if mode == "RGB" else img.convert(mode)


def write_image(
    path: Path, width: int, height: int, seed: int = 0, caption: str | None = None
) -> Path:
    """Writes a random image (format from the suffix) and, if given, ``stem.txt``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    noise_image(width, height, seed).save(path)
    if caption is not None:
        path.with_suffix(".txt").write_text(caption, encoding="utf-8")
    return path
