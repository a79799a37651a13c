"""A distilled student as a diffusers ``SanaSprintPipeline`` folder (``sanakit generate`` and
``SanaSprintPipeline.from_pretrained`` read it): the student transformer (guidance embedding;
the logvar head is training-only and is not written), ``SCMScheduler`` and the teacher's VAE,
text encoder and tokenizer (hard-linked by :func:`sanakit.train.export.write_pipeline`)."""

from __future__ import annotations

import json
from pathlib import Path

from sanakit.sprint.trigflow import SIGMA_DATA

# diffusers' SCMScheduler config (its times, max 1.5708 and the 2-step intermediate 1.3, are
# SanaSprintPipeline's call defaults, which sanakit's SCM sampler shares).
SCM_SCHEDULER_CONFIG = {
    "_class_name": "SCMScheduler",
    "num_train_timesteps": 1000,
    "prediction_type": "trigflow",
    "sigma_data": SIGMA_DATA,
}


def make_sprint_pipeline(folder: Path) -> Path:
    """Turn a pipeline folder written by ``write_pipeline`` into a ``SanaSprintPipeline`` one:
    SCM scheduler and the model index's class (pixel-shuffle folders get the sampler in
    ``sanakit.json``)."""
    info = folder / "sanakit.json"
    if info.is_file():  # the demo's pixel-shuffle autoencoder: no diffusers pipeline
        data = json.loads(info.read_text())
        info.write_text(json.dumps({**data, "sampler": "scm"}, indent=2))
        return folder
    (folder / "scheduler").mkdir(parents=True, exist_ok=True)
    config = json.dumps(SCM_SCHEDULER_CONFIG, indent=2)
    (folder / "scheduler" / "scheduler_config.json").write_text(config)
    index_path = folder / "model_index.json"
    index = json.loads(index_path.read_text())
    index.update(_class_name="SanaSprintPipeline", scheduler=["diffusers", "SCMScheduler"])
    index_path.write_text(json.dumps(index, indent=2))
    return folder
