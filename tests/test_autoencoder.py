"""Autoencoders: DC-AE wrapper against diffusers' AutoencoderDC, exact pixel-shuffle round trip."""

from __future__ import annotations

import pytest
import torch

from sanakit.autoencoder import (
    Autoencoder,
    DCAutoencoder,
    PixelShuffleAutoencoder,
    load_autoencoder,
)
from sanakit.errors import SanakitError
from sanakit.tiny import build_dc_autoencoder


@pytest.fixture(scope="module")
def vae():
    return build_dc_autoencoder(seed=0, latent_channels=4)


@pytest.fixture(scope="module")
def images():
    generator = torch.Generator().manual_seed(0)
    return torch.rand(2, 3, 64, 96, generator=generator) * 2 - 1


def test_dc_encode_decode_match_diffusers(vae, images):
    ae = DCAutoencoder(vae)
    assert isinstance(ae, Autoencoder)
    assert ae.latent_channels == 4 and ae.downsample_factor == 32
    assert ae.scaling_factor == pytest.approx(0.41407)
    latents = ae.encode(images)
    assert latents.shape == (2, 4, 2, 3) and not latents.requires_grad
    with torch.no_grad():
        expected = vae.encode(images).latent * vae.config.scaling_factor
        decoded_ref = vae.decode(latents / vae.config.scaling_factor).sample
    torch.testing.assert_close(latents, expected, rtol=0, atol=0)
    decoded = ae.decode(latents)
    assert decoded.shape == images.shape
    torch.testing.assert_close(decoded, decoded_ref, rtol=0, atol=0)
    # The scaling is the only transform: z / s is exactly the raw encoder output.
    torch.testing.assert_close(latents / ae.scaling_factor, vae.encoder(images), rtol=1e-6, atol=0)


def test_dc_tiled_matches_diffusers_tiling(images):
    vae = build_dc_autoencoder(seed=0, latent_channels=4)
    plain = DCAutoencoder(vae).encode(images)
    ae = DCAutoencoder(vae, tiling=True, tile_size=64, tile_stride=32)
    big = torch.cat([images, images.flip(-1)], dim=-1)  # (2, 3, 64, 192): 1 x 5 tiles
    latents = ae.encode(big)
    assert latents.shape == (2, 4, 2, 6)
    decoded = ae.decode(latents)
    assert decoded.shape == big.shape
    reference = build_dc_autoencoder(seed=0, latent_channels=4)
    reference.enable_tiling(64, 64, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(latents, reference.encode(big).latent * 0.41407)
        torch.testing.assert_close(decoded, reference.decode(latents / 0.41407).sample)
        untiled = reference.decoder(latents / 0.41407)
    assert not torch.allclose(decoded, untiled)  # the tiled path was really taken
    # An image that fits in one tile is encoded whole, identical to the untiled result.
    small = DCAutoencoder(vae, tiling=True, tile_size=96, tile_stride=64).encode(images)
    torch.testing.assert_close(small, plain, rtol=0, atol=0)
    with pytest.raises(SanakitError, match="multiples of 32"):
        DCAutoencoder(vae, tiling=True, tile_size=100, tile_stride=64)


def test_dc_from_pretrained_and_fingerprint(vae, images, tmp_path):
    vae.save_pretrained(tmp_path / "pipe" / "vae")
    for folder in (tmp_path / "pipe", tmp_path / "pipe" / "vae"):
        ae = load_autoencoder("dc-ae", path=folder)
        torch.testing.assert_close(ae.encode(images), DCAutoencoder(vae).encode(images))
    base = DCAutoencoder(vae).fingerprint()
    assert base == ae.fingerprint() and len(base) == 16
    assert DCAutoencoder(vae, tiling=True, tile_size=64, tile_stride=32).fingerprint() != base
    vae.disable_tiling()
    other = build_dc_autoencoder(seed=1, latent_channels=4)
    assert DCAutoencoder(other).fingerprint() != base
    half = DCAutoencoder.from_pretrained(tmp_path / "pipe", dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16 and half.fingerprint() != base
    assert half.encode(images).dtype == torch.bfloat16
    with pytest.raises(SanakitError, match="nowhere"):
        DCAutoencoder.from_pretrained(tmp_path / "nowhere")
    (tmp_path / "kl" / "vae").mkdir(parents=True)
    (tmp_path / "kl" / "vae" / "config.json").write_text('{"_class_name": "AutoencoderKL"}')
    with pytest.raises(SanakitError, match="AutoencoderKL"):
        DCAutoencoder.from_pretrained(tmp_path / "kl")


def test_dc_rejects_bad_sizes(vae):
    ae = DCAutoencoder(vae)
    with pytest.raises(SanakitError, match="multiple of 32"):
        ae.encode(torch.zeros(1, 3, 48, 64))
    with pytest.raises(SanakitError, match="latents"):
        ae.decode(torch.zeros(1, 8, 2, 2))
    with pytest.raises(SanakitError, match=r"expected images \(B, 3, H, W\)"):
        ae.encode(torch.zeros(1, 4, 32, 32))


@pytest.mark.parametrize("factor", [1, 2, 8])
def test_pixel_shuffle_round_trip_is_exact(factor, images):
    ae = PixelShuffleAutoencoder(factor)
    latents = ae.encode(images)
    assert ae.latent_channels == 3 * factor**2 and ae.downsample_factor == factor
    assert latents.shape == (2, 3 * factor**2, 64 // factor, 96 // factor)
    assert torch.equal(ae.decode(latents), images)
    # Channel ch·f² + i·f + j of latent cell (y, x) is pixel (y·f + i, x·f + j) of channel ch.
    ch, i, j, y, x = 2, factor - 1, 0, 1, 2
    assert (
        latents[1, ch * factor**2 + i * factor + j, y, x]
        == images[1, ch, y * factor + i, x * factor + j]
    )


def test_pixel_shuffle_dtype_fingerprint_and_factory(images):
    ae = load_autoencoder("pixel-shuffle", factor=4)
    assert isinstance(ae, PixelShuffleAutoencoder) and ae.latent_size(64, 96) == (16, 24)
    key = ae.fingerprint()
    assert key == PixelShuffleAutoencoder(4).fingerprint()
    assert key != PixelShuffleAutoencoder(8).fingerprint()
    ae.to(dtype=torch.bfloat16)
    assert ae.encode(images).dtype == torch.bfloat16 and ae.fingerprint() != key
    gray = PixelShuffleAutoencoder(2, image_channels=1)
    assert gray.latent_channels == 4
    with pytest.raises(SanakitError, match=r"expected images \(B, 1, H, W\)"):
        gray.encode(images)
    with pytest.raises(SanakitError, match="multiple of 8"):
        PixelShuffleAutoencoder(8).encode(torch.zeros(1, 3, 60, 64))
    with pytest.raises(SanakitError, match="unknown autoencoder kind"):
        load_autoencoder("vq")
    with pytest.raises(SanakitError, match="needs a factor"):
        load_autoencoder("pixel-shuffle")
    with pytest.raises(SanakitError, match="needs a path"):
        load_autoencoder("dc-ae")
    with pytest.raises(SanakitError, match="only to kind 'dc-ae'"):
        load_autoencoder("pixel-shuffle", factor=2, tiling=True)
    with pytest.raises(SanakitError, match="only to kind 'pixel-shuffle'"):
        load_autoencoder("dc-ae", path="x", factor=2)
