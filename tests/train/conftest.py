"""Tiny training setups built in the test: a tiny Gemma2 text encoder + tokenizer saved to a
folder, a folder of small captioned images, and a RunConfig dict on the pixel-shuffle AE."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sanakit.tiny import build_text_model, build_tokenizer, save_text_components

COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 180, 60),
    "blue": (40, 60, 220),
    "yellow": (230, 210, 40),
}


@pytest.fixture(scope="session")
def text_encoder_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("text")
    tokenizer = build_tokenizer()
    model = build_text_model(tokenizer.vocab_size, hidden_size=32, layers=1, heads=2, seed=0)
    save_text_components(folder, tokenizer, model)
    return folder


def write_images(folder: Path, count: int = 8, size: int = 32) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    names = list(COLOURS)
    for i in range(count):
        colour = names[i % len(names)]
        arr = np.full((size, size, 3), 245, np.uint8)
        y, x = rng.integers(4, size - 12, 2)
        arr[y : y + 10, x : x + 10] = COLOURS[colour]
        Image.fromarray(arr).save(folder / f"img{i:02d}.png")
        (folder / f"img{i:02d}.txt").write_text(f"a {colour} square on a white background")
    return folder


@pytest.fixture()
def run_dict(tmp_path, text_encoder_dir):
    """A RunConfig dict for a tiny full fine-tune on 8 images (edit before use)."""
    images = write_images(tmp_path / "images")
    return {
        "model": {
            "preset": "tiny",
            "autoencoder": "pixel-shuffle",
            "pixel_shuffle_factor": 4,
            "text_encoder": str(text_encoder_dir),
            "text_max_length": 16,
            "instruction": ["Describe the image:"],
            "encoder_dtype": "fp32",
        },
        "data": {
            "datasets": [
                {"id": "shapes", "path": str(images), "resolution": 32, "resolution_type": "pixel"}
            ],
            "cache_dir": str(tmp_path / "cache"),
            "latent_dtype": "fp32",
            "text_dtype": "fp32",
        },
        "train": {
            "max_steps": 6,
            "batch_size": 2,
            "lr": 1e-3,
            "mixed_precision": "no",
            "seed": 0,
        },
        "output": {"dir": str(tmp_path / "out"), "checkpoint_every": 3, "log_with": "none"},
    }
