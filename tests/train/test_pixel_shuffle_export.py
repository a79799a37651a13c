"""A pixel-shuffle run's final/ (transformer/ + sanakit.json, e.g. the demo's) loads in
TextToImage, so ``sanakit generate`` and ``sanakit eval`` sample it like a pipeline folder, and
reproduce the run's last validation images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from sanakit.cli import main
from sanakit.pipeline import PipelineSpec, TextToImage
from sanakit.train.config import run_config_from_dict
from sanakit.train.trainer import Trainer


def test_final_folder_samples_like_validation(run_dict, tmp_path, capsys):
    run_dict["train"]["max_steps"] = 2
    run_dict["output"]["export_dtype"] = "fp32"
    run_dict["validation"] = {
        "prompts": ["a red square on a white background"],
        "steps": 3,
        "guidance": 2.0,
        "resolutions": ["32x32"],
        "seed": 4,
    }
    final = Trainer(run_config_from_dict(run_dict)).fit()
    info = json.loads((final / "sanakit.json").read_text())
    assert info["instruction"] == ["Describe the image:"] and info["text_max_length"] == 16
    spec = PipelineSpec.read(final)
    assert spec.downsample_factor == 4 and spec.settings.sampler == "dpm"
    assert spec.settings.flow_shift == info["flow_shift"]
    out = tmp_path / "gen.png"
    args = ["generate", "a red square on a white background", "--model", str(final)]
    args += ["--out", str(out), "--seed", "4", "--steps", "3", "--guidance", "2.0"]
    args += ["--height", "32", "--width", "32", "--no-resolution-binning", "--device", "cpu"]
    assert main(args) == 0
    validation = Path(run_dict["output"]["dir"]) / "validation" / "step-00000002"
    want = np.asarray(Image.open(validation / "prompt-00_32x32.png"), dtype=np.int16)
    got = np.asarray(Image.open(out), dtype=np.int16)
    assert np.abs(got - want).max() <= 1  # same sampling path; at most a rounding step apart
    pipe = TextToImage.from_pretrained(final, dtype=__import__("torch").float32)
    assert pipe.text_encoder.max_length == 16
