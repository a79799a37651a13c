"""Image autoencoders: images in [-1, 1] (B, 3, H, W) ⇄ latents (B, C, H/f, W/f).

- :class:`DCAutoencoder`: Sana's Deep Compression Autoencoder (DC-AE, f = 32, C = 32) through
  ``diffusers.AutoencoderDC``. Latents are the (deterministic) encoder output times
  ``config.scaling_factor`` (0.41407 for Sana), nothing else: no shift, no extra factor.
- :class:`PixelShuffleAutoencoder`: parameter-free pixel-unshuffle by f (C = 3·f²), an exact
  round trip, for tests and the CPU demo.

``diffusers`` is imported lazily (only by :meth:`DCAutoencoder.from_pretrained`).
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from sanakit.errors import SanakitError
from sanakit.text import weights_checksum

AUTOENCODER_KINDS: tuple[str, ...] = ("dc-ae", "pixel-shuffle")


def _digest(record: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()[:16]


class Autoencoder(ABC):
    """Interface shared by all autoencoders (encode/decode under ``torch.no_grad``)."""

    @property
    @abstractmethod
    def latent_channels(self) -> int:
        """C, the number of latent channels."""

    @property
    @abstractmethod
    def downsample_factor(self) -> int:
        """f, the spatial compression: latents are (H/f, W/f)."""

    @property
    @abstractmethod
    def dtype(self) -> torch.dtype: ...

    @property
    @abstractmethod
    def device(self) -> torch.device: ...

    @abstractmethod
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] → latents (B, C, H/f, W/f) in this autoencoder's dtype."""

    @abstractmethod
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) → images (B, 3, h·f, w·f), nominally in [-1, 1] (not clamped)."""

    @abstractmethod
    def fingerprint(self) -> str:
        """A short stable hash of everything that changes the latents (cache key)."""

    @abstractmethod
    def to(
        self, device: str | torch.device | None = None, dtype: torch.dtype | None = None
    ) -> Autoencoder:
        """Moves/casts in place; returns ``self``."""

    def latent_size(self, height: int, width: int) -> tuple[int, int]:
        """(H/f, W/f); raises :class:`SanakitError` if H or W is not a multiple of f."""
        f = self.downsample_factor
        if height % f or width % f or height <= 0 or width <= 0:
            raise SanakitError(
                f"image size {height}x{width} is not a positive multiple of the autoencoder's "
                f"downsample factor {f}; resize or crop to a multiple of {f}"
            )
        return height // f, width // f

    @property
    def image_channels(self) -> int:
        """Channels of the images (3 for RGB)."""
        return 3

    def _check_images(self, images: torch.Tensor) -> None:
        if images.ndim != 4 or images.shape[1] != self.image_channels:
            raise SanakitError(
                f"autoencoder: expected images (B, {self.image_channels}, H, W), "
                f"got {tuple(images.shape)}"
            )
        self.latent_size(images.shape[-2], images.shape[-1])

    def _check_latents(self, latents: torch.Tensor) -> None:
        if latents.ndim != 4 or latents.shape[1] != self.latent_channels:
            raise SanakitError(
                f"autoencoder: expected latents (B, {self.latent_channels}, h, w), "
                f"got {tuple(latents.shape)}"
            )


class DCAutoencoder(Autoencoder):
    """DC-AE through ``diffusers.AutoencoderDC``.

    ``encode(x) = vae.encode(x).latent · s`` and ``decode(z) = vae.decode(z / s).sample`` with
    ``s = vae.config.scaling_factor``. With ``tiling`` the VAE works on overlapping
    ``tile_size``-pixel tiles placed every ``tile_stride`` pixels, blended linearly over the
    overlap (diffusers' tiled encode/decode), for 2K/4K images; images no larger than one tile
    are processed whole. The wrapped ``vae`` is put in eval mode, frozen, and its tiling state
    set to match ``tiling``.
    """

    def __init__(
        self,
        vae: torch.nn.Module,
        *,
        tiling: bool = False,
        tile_size: int = 512,
        tile_stride: int = 448,
    ) -> None:
        self._vae = vae.eval().requires_grad_(False)
        self._scale = float(vae.config.scaling_factor)
        f = self.downsample_factor
        if tiling:
            if tile_size % f or tile_stride % f or not 0 < tile_stride <= tile_size:
                raise SanakitError(
                    f"autoencoder tiling: tile_size {tile_size} and tile_stride {tile_stride} "
                    f"must be multiples of {f} with 0 < tile_stride <= tile_size"
                )
            vae.enable_tiling(
                tile_sample_min_height=tile_size,
                tile_sample_min_width=tile_size,
                tile_sample_stride_height=tile_stride,
                tile_sample_stride_width=tile_stride,
            )
        else:
            vae.disable_tiling()
        self._tiling = (tile_size, tile_stride) if tiling else None

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
        tiling: bool = False,
        tile_size: int = 512,
        tile_stride: int = 448,
    ) -> DCAutoencoder:
        """Loads a ``vae/`` folder or a pipeline folder containing ``vae/``. Never downloads."""
        from diffusers import AutoencoderDC

        root = Path(path)
        folder = root / "vae" if (root / "vae").is_dir() else root
        config_file = folder / "config.json"
        if not config_file.is_file():
            raise SanakitError(
                f"{root}: no vae/config.json or config.json; pass a Sana pipeline folder or its vae/"
            )
        try:
            class_name = json.loads(config_file.read_text()).get("_class_name", "AutoencoderDC")
        except (OSError, json.JSONDecodeError) as err:
            raise SanakitError(f"{config_file}: unreadable JSON ({err})") from err
        if class_name != "AutoencoderDC":
            raise SanakitError(
                f"{config_file}: the autoencoder is a {class_name}, not a DC-AE (AutoencoderDC)"
            )
        try:
            vae = AutoencoderDC.from_pretrained(folder, torch_dtype=dtype, local_files_only=True)
        except (OSError, ValueError) as err:
            first_line = (
                str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            )
            raise SanakitError(f"{folder}: cannot load the DC-AE: {first_line}") from err
        vae.to(device)
        return cls(vae, tiling=tiling, tile_size=tile_size, tile_stride=tile_stride)

    @property
    def vae(self) -> torch.nn.Module:
        return self._vae

    @property
    def scaling_factor(self) -> float:
        return self._scale

    @property
    def image_channels(self) -> int:
        return int(self._vae.config.in_channels)

    @property
    def latent_channels(self) -> int:
        return int(self._vae.config.latent_channels)

    @property
    def downsample_factor(self) -> int:
        # 2^(stages - 1): 32 for Sana's f32c32 DC-AE.
        return 2 ** (len(self._vae.config.encoder_block_out_channels) - 1)

    @property
    def dtype(self) -> torch.dtype:
        return next(self._vae.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self._vae.parameters()).device

    def to(
        self, device: str | torch.device | None = None, dtype: torch.dtype | None = None
    ) -> DCAutoencoder:
        self._vae.to(device=device, dtype=dtype)
        return self

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] → (B, C, H/32, W/32) = encoder(x) · scaling_factor."""
        self._check_images(images)
        with torch.no_grad():
            latent = self._vae.encode(images.to(device=self.device, dtype=self.dtype)).latent
        return latent * self._scale

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) → (B, 3, 32h, 32w) = decoder(z / scaling_factor)."""
        self._check_latents(latents)
        z = latents.to(device=self.device, dtype=self.dtype) / self._scale
        with torch.no_grad():
            return self._vae.decode(z).sample

    def fingerprint(self) -> str:
        config = {k: v for k, v in dict(self._vae.config).items() if not k.startswith("_")}
        return _digest(
            {
                "kind": "dc-ae",
                "config": config,
                "weights": weights_checksum(self._vae),
                "dtype": str(self.dtype),
                "tiling": self._tiling,
            }
        )


class PixelShuffleAutoencoder(Autoencoder):
    """Parameter-free autoencoder: ``encode = pixel_unshuffle(x, f)``, ``decode =
    pixel_shuffle(z, f)``; (B, c, H, W) ⇄ (B, c·f², H/f, W/f), channel index
    ``ch·f² + i·f + j`` for the pixel (i, j) of each f×f cell. Exact round trip."""

    def __init__(
        self,
        factor: int,
        image_channels: int = 3,
        *,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
    ) -> None:
        for name, value in (("factor", factor), ("image_channels", image_channels)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise SanakitError(f"pixel-shuffle autoencoder: {name} must be a positive integer")
        self._factor = factor
        self._channels = image_channels
        self._dtype = dtype
        self._device = torch.device(device)

    @property
    def image_channels(self) -> int:
        return self._channels

    @property
    def latent_channels(self) -> int:
        return self._channels * self._factor**2

    @property
    def downsample_factor(self) -> int:
        return self._factor

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    @property
    def device(self) -> torch.device:
        return self._device

    def to(
        self, device: str | torch.device | None = None, dtype: torch.dtype | None = None
    ) -> PixelShuffleAutoencoder:
        if device is not None:
            self._device = torch.device(device)
        if dtype is not None:
            self._dtype = dtype
        return self

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        self._check_images(images)
        return F.pixel_unshuffle(images.to(device=self._device, dtype=self._dtype), self._factor)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        self._check_latents(latents)
        return F.pixel_shuffle(latents.to(device=self._device, dtype=self._dtype), self._factor)

    def fingerprint(self) -> str:
        return _digest(
            {
                "kind": "pixel-shuffle",
                "factor": self._factor,
                "image_channels": self._channels,
                "dtype": str(self._dtype),
            }
        )


def load_autoencoder(
    kind: str,
    *,
    path: str | Path | None = None,
    factor: int | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    tiling: bool = False,
    tile_size: int = 512,
    tile_stride: int = 448,
) -> Autoencoder:
    """Builds an autoencoder from a config spec.

    ``kind="dc-ae"`` needs ``path`` (a pipeline folder or its ``vae/``; tiling options apply);
    ``kind="pixel-shuffle"`` needs ``factor``. Options that do not apply to ``kind`` are
    rejected rather than silently ignored.
    """
    if kind == "dc-ae":
        if path is None:
            raise SanakitError("autoencoder kind 'dc-ae' needs a path (pipeline or vae folder)")
        if factor is not None:
            raise SanakitError("autoencoder 'factor' applies only to kind 'pixel-shuffle'")
        return DCAutoencoder.from_pretrained(
            path,
            dtype=dtype,
            device=device,
            tiling=tiling,
            tile_size=tile_size,
            tile_stride=tile_stride,
        )
    if kind == "pixel-shuffle":
        if factor is None:
            raise SanakitError("autoencoder kind 'pixel-shuffle' needs a factor (e.g. 8)")
        if path is not None or tiling:
            raise SanakitError("autoencoder 'path' and 'tiling' apply only to kind 'dc-ae'")
        return PixelShuffleAutoencoder(factor, dtype=dtype, device=device)
    raise SanakitError(
        f"unknown autoencoder kind {kind!r}; choose one of {', '.join(AUTOENCODER_KINDS)}"
    )
