"""The cache and loader with sanakit's real encoders: ``PixelShuffleAutoencoder`` (exactly
invertible) and ``TextEncoder`` over a tiny random Gemma-2, so the protocols are checked against
the implementations and the cached values against direct encoder calls."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from sanakit.data import build_cache, make_loader, open_cache
from tests.data.fakes import write_image
from tests.data.test_cache import config

autoencoder = pytest.importorskip("sanakit.autoencoder")
text = pytest.importorskip("sanakit.text")
tiny = pytest.importorskip("sanakit.tiny")


@pytest.fixture(scope="module")
def text_parts() -> tuple:
    tokenizer = tiny.build_tokenizer(tiny.default_corpus(80), vocab_size=300)
    return tiny.build_text_model(tokenizer.vocab_size, hidden_size=16, layers=1, seed=0), tokenizer


def test_real_encoders_cache_and_load(tmp_path: Path, text_parts: tuple) -> None:
    folder = tmp_path / "imgs"
    captions = ["a red circle on a table", "a blue square", "a green star in the sky", "a cat"]
    for i, caption in enumerate(captions):
        write_image(folder / f"{i}.png", 64, 64, seed=i, caption=caption)
    cfg = config(
        tmp_path,
        [{"id": "s", "path": str(folder), "crop": False}],
        latent_dtype="fp32",
        text_dtype="fp32",
    )
    ae = autoencoder.PixelShuffleAutoencoder(8)
    te = text.TextEncoder(*text_parts, instruction=["Describe the image:"], max_length=16)
    report = build_cache(cfg, ae, te, batch_size=2, progress=False)
    assert report.cached == 4 and report.encoded == {"latents": 4, "texts": 5}

    cache = open_cache(cfg)
    cache.check_encoders(ae, te)
    for sample in cache.datasets[0][1]:
        # pixel_shuffle inverts the cached latent back to the image in [-1, 1] exactly
        image = F.pixel_shuffle(cache.reader.get(sample["latent"], "latent")[None], 8)[0]
        pixels = np.asarray(Image.open(folder / sample["id"].split("/", 1)[1]), dtype=np.float32)
        torch.testing.assert_close(image, torch.from_numpy(pixels).permute(2, 0, 1) / 127.5 - 1)
        embeds, mask = te.encode([sample["captions"][0]])
        torch.testing.assert_close(cache.reader.get(sample["texts"][0], "embeds"), embeds[0])
        assert torch.equal(cache.reader.get(sample["texts"][0], "mask"), mask[0])

    batch = next(make_loader(cfg, batch_size=2))
    assert batch["latents"].shape == (2, 3 * 64, 8, 8)
    # the 16-token window trimmed to the batch's longest caption (one decision per batch)
    length = int(batch["text_mask"].sum(1).max())
    assert batch["text"].shape == (2, length, 16) and length < 16

    other = text.TextEncoder(*text_parts, instruction=["Another instruction:"], max_length=16)
    again = build_cache(
        cfg, autoencoder.PixelShuffleAutoencoder(8), other, batch_size=2, progress=False
    )
    assert again.encoder_calls["autoencoder"] == 0 and again.encoded["texts"] == 5
