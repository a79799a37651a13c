"""Final outputs of a run, in the formats other tools read.

- full fine-tune: ``OUTPUT/final/`` is a diffusers Sana pipeline folder (``model_index.json``,
  ``transformer/``, ``vae/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``) loadable by
  ``diffusers.SanaPipeline.from_pretrained`` and ``sanakit generate``; the frozen parts are
  hard-linked (or copied) from the base folders. With EMA, ``OUTPUT/final-ema/`` holds the EMA
  transformer the same way. A run on the pixel-shuffle autoencoder (demo) has no diffusers VAE:
  its ``final/`` holds ``transformer/`` plus ``sanakit.json`` describing the autoencoder.
- LoRA: ``final/pytorch_lora_weights.safetensors`` (diffusers/PEFT format); LoKr: a LyCORIS
  file; EMA adapters in ``final-ema/``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from sanakit.models import save_transformer

if TYPE_CHECKING:
    from sanakit.train.trainer import Trainer

EXPORT_DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
# Sana's released scheduler: Flow-DPM-Solver with shift 3 (diffusers' scheduler_config.json).
SCHEDULER_CONFIG = {
    "_class_name": "DPMSolverMultistepScheduler",
    "algorithm_type": "dpmsolver++",
    "final_sigmas_type": "zero",
    "flow_shift": 3.0,
    "lower_order_final": True,
    "num_train_timesteps": 1000,
    "prediction_type": "flow_prediction",
    "solver_order": 2,
    "solver_type": "midpoint",
    "timestep_spacing": "linspace",
    "use_flow_sigmas": True,
}
MODEL_INDEX = {
    "_class_name": "SanaPipeline",
    "scheduler": ["diffusers", "DPMSolverMultistepScheduler"],
    "text_encoder": ["transformers", "Gemma2Model"],
    "tokenizer": ["transformers", "GemmaTokenizerFast"],
    "transformer": ["diffusers", "SanaTransformer2DModel"],
    "vae": ["diffusers", "AutoencoderDC"],
}


def _link_tree(src: Path, dst: Path) -> None:
    """Mirror ``src`` into ``dst`` with hard links (copies across file systems)."""
    for path in src.rglob("*"):
        target = dst / path.relative_to(src)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            target.unlink()
        try:
            os.link(path, target)
        except OSError:
            shutil.copy2(path, target)


def write_pipeline(
    trainer: Trainer, folder: Path, state_dict: dict[str, torch.Tensor] | None = None
) -> Path:
    """Write a full pipeline folder whose transformer holds the model (or ``state_dict``)."""
    m = trainer.config.model
    dtype = EXPORT_DTYPES[trainer.config.output.export_dtype]
    folder.mkdir(parents=True, exist_ok=True)
    model = trainer.accelerator.unwrap_model(trainer.ddp_model)
    save_transformer(model, folder / "transformer", dtype=dtype, state_dict=state_dict)
    if m.autoencoder == "pixel-shuffle":
        info = {
            "autoencoder": "pixel-shuffle",
            "pixel_shuffle_factor": m.pixel_shuffle_factor,
            "text_encoder": m.text_encoder,
        }
        (folder / "sanakit.json").write_text(json.dumps(info, indent=2))
        return folder
    if m.base:
        base = Path(m.base)
        for part in ("vae", "text_encoder", "tokenizer", "scheduler"):
            _link_tree(base / part, folder / part)
        shutil.copy2(base / "model_index.json", folder / "model_index.json")
        return folder
    _link_tree(Path(m.vae), folder / "vae")
    text = Path(m.text_encoder)
    te_dir, tok_dir = (
        (text / "text_encoder", text / "tokenizer")
        if (text / "text_encoder").is_dir()
        else (text, text)
    )
    _link_tree(te_dir, folder / "text_encoder")
    _link_tree(tok_dir, folder / "tokenizer")
    (folder / "scheduler").mkdir(exist_ok=True)
    (folder / "scheduler" / "scheduler_config.json").write_text(
        json.dumps(SCHEDULER_CONFIG, indent=2)
    )
    (folder / "model_index.json").write_text(json.dumps(MODEL_INDEX, indent=2))
    return folder


def export_final(trainer: Trainer) -> Path:
    """Write ``final/`` (and ``final-ema/``) for the run's method; returns ``final/``."""
    out = trainer.out
    final = out / "final"
    if trainer.adapter is None:
        write_pipeline(trainer, final)
        if trainer.ema is not None:
            model = trainer.accelerator.unwrap_model(trainer.ddp_model)
            with trainer.ema.swapped_in(model):
                write_pipeline(trainer, out / "final-ema")
        return final
    trainer.adapter.save(final)
    if trainer.ema is not None:
        model = trainer.accelerator.unwrap_model(trainer.ddp_model)
        with trainer.ema.swapped_in(model):
            trainer.adapter.save(out / "final-ema")
    return final
