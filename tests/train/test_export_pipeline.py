"""A run on a (tiny) real diffusers Sana pipeline folder: the full fine-tune's final/ loads in
diffusers' SanaPipeline and in `sanakit generate`; a LoRA/LoKr final/ loads with
`sanakit generate --lora` and in diffusers' load_lora_weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import SanaPipeline
from PIL import Image

from sanakit.cli import main
from sanakit.train.config import run_config_from_dict
from sanakit.train.trainer import Trainer
from tests.train.conftest import write_images


def _config(base, tmp_path, method: str) -> dict:
    images = write_images(tmp_path / "images", count=8, size=64)
    config = {
        "model": {"base": str(base), "encoder_dtype": "fp32", "text_max_length": 12},
        "data": {
            "datasets": [
                {"id": "shapes", "path": str(images), "resolution": 64, "resolution_type": "pixel"}
            ],
            "cache_dir": str(tmp_path / "cache"),
            "latent_dtype": "fp32",
            "text_dtype": "fp32",
        },
        "train": {
            "method": method,
            "max_steps": 2,
            "batch_size": 2,
            "lr": 1e-2,
            "mixed_precision": "no",
        },
        "output": {
            "dir": str(tmp_path / "out"),
            "checkpoint_every": 2,
            "log_with": "none",
            "export_dtype": "fp32",
        },
    }
    if method == "lora":
        config["train"]["lora"] = {"rank": 4}
    if method == "lokr":
        config["train"]["lokr"] = {"factor": 4, "rank": 4}
    return config


def _generate(capsys, model, out, *extra) -> np.ndarray:
    args = ["generate", "a red square", "--model", str(model), "--out", str(out), "--steps", "2"]
    args += [
        "--height",
        "64",
        "--width",
        "64",
        "--no-resolution-binning",
        "--device",
        "cpu",
        *extra,
    ]
    assert main(args) == 0, capsys.readouterr().err
    with Image.open(out) as image:
        return np.asarray(image).astype(np.int16)


def test_full_finetune_exports_a_diffusers_pipeline(tiny_pipeline_dir, tmp_path, capsys) -> None:
    final = Trainer(run_config_from_dict(_config(tiny_pipeline_dir, tmp_path, "full"))).fit()
    pipe = SanaPipeline.from_pretrained(final)
    assert pipe.transformer.config.num_layers >= 1
    trained = _generate(capsys, final, tmp_path / "trained.png")
    base = _generate(capsys, tiny_pipeline_dir, tmp_path / "base.png")
    assert np.abs(trained - base).max() > 0  # the fine-tune changed the model


@pytest.mark.parametrize("method", ["lora", "lokr"])
def test_adapter_export_applies_with_generate_lora(
    tiny_pipeline_dir, tmp_path, capsys, method
) -> None:
    final = Trainer(run_config_from_dict(_config(tiny_pipeline_dir, tmp_path, method))).fit()
    base = _generate(capsys, tiny_pipeline_dir, tmp_path / "base.png")
    adapted = _generate(capsys, tiny_pipeline_dir, tmp_path / "adapted.png", "--lora", str(final))
    assert np.abs(adapted - base).max() > 0
    with Image.open(tmp_path / "adapted.png") as image:
        assert image.text["lora"] == str(final)
    if method == "lora":
        pipe = SanaPipeline.from_pretrained(tiny_pipeline_dir, torch_dtype=torch.float32)
        pipe.load_lora_weights(final)
        assert any("lora" in name for name, _ in pipe.transformer.named_parameters())


def test_generate_lora_missing_file_is_one_line(tiny_pipeline_dir, tmp_path, capsys) -> None:
    args = ["generate", "x", "--model", str(tiny_pipeline_dir), "--lora", str(tmp_path / "nope")]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("sanakit: error: --lora") and "no such file" in err[-1]
