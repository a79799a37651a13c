"""`sanakit train config/config.json` on a SimpleTuner tree: import, print the mapping, train a
tiny random diffusers-format Sana on the CPU for a few steps, and resume like SimpleTuner."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tests.compat import seed_blocks
from tests.compat.conftest import write_tree
from tests.helpers.tiny_pipeline import write_tiny_pipeline

from sanakit.cli import main

COLOURS = {"red": (220, 30, 30), "blue": (40, 60, 220)}


def _images(folder: Path, count: int = 4, size: int = 64) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        name = list(COLOURS)[i % 2]
        arr = np.full((size, size, 3), 245, np.uint8)
        y, x = rng.integers(0, size - 24, 2)
        arr[y : y + 24, x : x + 24] = COLOURS[name]
        Image.fromarray(arr).save(folder / f"img{i}.png")
        (folder / f"img{i}.txt").write_text(f"a {name} square on a white background")


CONFIG = {
    "--model_type": "full",
    "--model_family": "sana",
    "--pretrained_model_name_or_path": "models/tiny-sana",
    "--data_backend_config": "config/multidatabackend.json",
    "--output_dir": "output/tiny",
    "--max_train_steps": 2,
    "--train_batch_size": 2,
    "--learning_rate": "1e-4",
    "--mixed_precision": "no",
    "--flow_schedule_shift": 3.0,
    "--checkpointing_steps": 2,
    "--checkpoints_total_limit": 2,
    "--report_to": "none",
    "--resume_from_checkpoint": "latest",
    "--use_ema": "false",
    "--validation_prompt": "a red square",
    "--validation_resolution": "64x64",
    "--validation_num_inference_steps": "2",
    "--seed": 0,
}
BACKENDS = [
    {
        "id": "subject",
        "type": "local",
        "instance_data_dir": "datasets/subject",
        "crop": True,
        "crop_aspect": "square",
        "crop_style": "center",
        "resolution": 64,
        "resolution_type": "pixel",
        "minimum_image_size": 64,
        "caption_strategy": "textfile",
        "cache_dir_vae": "cache/vae/subject",
        "metadata_backend": "discovery",
        "repeats": 1,
    },
    {
        "id": "text-embeds",
        "dataset_type": "text_embeds",
        "default": True,
        "type": "local",
        "cache_dir": "cache/text",
        "write_batch_size": 128,
    },
]


@pytest.mark.slow
def test_train_simpletuner_config_on_cpu_and_resume(root, capsys) -> None:
    write_tiny_pipeline(root / "models" / "tiny-sana")
    _images(root / "datasets" / "subject")
    write_tree(root, CONFIG, BACKENDS, library=None, lycoris=None)
    assert main(["train", "config/config.json", "--log-level", "WARNING"]) == 0
    out = capsys.readouterr().out
    assert "flow_schedule_shift = 3.0" in out and "-> train.flow_shift" in out
    assert "done: 2 steps" in out
    run = root / "output" / "tiny"
    resolved = json.loads((run / "config.json").read_text())  # written there, not printed
    assert resolved["train"]["flow_shift"] == 3.0 and resolved["train"]["lr"] == 1e-4
    assert resolved["data"]["cache_dir"] == str(root / "cache" / "sanakit")
    assert resolved["output"]["dir"] == str(run)
    assert list(run.glob("validation/**/*.png"))
    assert (root / "cache" / "sanakit").is_dir()
    # resume_from_checkpoint = latest: the second run continues from step 2
    more = ["--set", "train.max_steps=3", "--set", "validation.prompts=[]"]
    assert main(["train", "config/config.json", *more]) == 0
    assert "done: 3 steps" in capsys.readouterr().out
    # without resume_from_checkpoint, the same rule as a sanakit config: no silent overwrite
    plain = {k: v for k, v in CONFIG.items() if k != "--resume_from_checkpoint"}
    write_tree(root, plain, BACKENDS, library=None, lycoris=None)
    assert main(["train", "config/config.json", *more]) == 2
    err = capsys.readouterr().err.strip()
    assert f"{run} already holds a run (checkpoint step-00000003)" in err and "\n" not in err
    assert main(["train", "config/config.json", *more, "--resume", "latest"]) == 0
    assert "done: 3 steps" in capsys.readouterr().out


@pytest.mark.slow
def test_train_seed_lokr_example_config_on_cpu(root, capsys) -> None:
    """SimpleTuner's Sana LoKr example (lycoris_config with apply_preset) trains in sanakit."""
    write_tiny_pipeline(root / "models" / "tiny-sana")
    _images(root / "datasets" / "subject")
    config = {
        **CONFIG,
        "--model_type": "lora",
        "--lora_type": "lycoris",
        "--lycoris_config": "config/lycoris_config.json",
        "--max_train_steps": 1,
        "--validation_prompt": "",
    }
    write_tree(root, config, BACKENDS, library=None, lycoris=seed_blocks.SANA_LYCORIS_CONFIG)
    assert main(["train", "config/config.json", "--log-level", "WARNING"]) == 0
    out = capsys.readouterr().out
    assert "-> train.lokr.factor" in out and "done: 1 steps" in out
    assert list((root / "output" / "tiny").rglob("lokr_weights.safetensors"))
