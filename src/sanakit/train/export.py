"""Final outputs of a run, in the formats other tools read.

- full fine-tune: ``OUTPUT/final/`` is a diffusers Sana pipeline folder (``model_index.json``,
  ``transformer/``, ``vae/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``) loadable by
  ``diffusers.SanaPipeline.from_pretrained`` and ``sanakit generate``; the frozen parts are
  hard-linked (or copied) from the base folders; the scheduler config gets the flow shift the
  run validated with (:func:`scheduler_shift`). With EMA, ``OUTPUT/final-ema/`` holds the EMA
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
from typing import Any, Protocol

import torch

from sanakit.models import SanaTransformer, save_transformer
from sanakit.pipeline import read_dc_ae_config
from sanakit.train.config import RunConfig, parse_resolution
from sanakit.train.ema import EMA
from sanakit.train.validation import validation_shift

EXPORT_DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
# Sana's released scheduler: Flow-DPM-Solver (diffusers' scheduler_config.json); its flow_shift
# (3.0 in the release) is the one the run validated with (scheduler_shift).
SCHEDULER_CONFIG = {
    "_class_name": "DPMSolverMultistepScheduler",
    "algorithm_type": "dpmsolver++",
    "final_sigmas_type": "zero",
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


def link_tree(src: Path, dst: Path) -> None:
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


# The key that holds the flow shift in each flow scheduler's config (SCMScheduler has none).
SHIFT_KEYS = {
    "DPMSolverMultistepScheduler": "flow_shift",
    "FlowMatchEulerDiscreteScheduler": "shift",
}


def scheduler_shift(config: RunConfig, model: SanaTransformer, downsample_factor: int) -> float:
    """The flow shift validation samples the first of ``validation.resolutions`` with
    (:func:`sanakit.train.validation.validation_shift`; the model's native square when there are
    none), which the exported scheduler config gets so ``sanakit generate`` and diffusers sample
    as validation did."""
    v = config.validation
    if v.resolutions:
        height, width = parse_resolution(v.resolutions[0])
    else:
        height = width = model.config.sample_size * downsample_factor
    return validation_shift(v, config.train, height, width, downsample_factor)


def _write_scheduler(folder: Path, scheduler: dict[str, Any], shift: float) -> None:
    key = SHIFT_KEYS.get(scheduler.get("_class_name", ""))
    scheduler = {**scheduler, key: shift} if key else scheduler
    (folder / "scheduler").mkdir(parents=True, exist_ok=True)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler, indent=2))


def write_pipeline(
    config: RunConfig,
    model: SanaTransformer,
    folder: Path,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write a full pipeline folder whose transformer holds the model (or ``state_dict``)."""
    m = config.model
    dtype = EXPORT_DTYPES[config.output.export_dtype]
    folder.mkdir(parents=True, exist_ok=True)
    save_transformer(model, folder / "transformer", dtype=dtype, state_dict=state_dict)
    if m.autoencoder == "pixel-shuffle":
        from sanakit.text import DEFAULT_INSTRUCTION

        instruction = (m.instruction or DEFAULT_INSTRUCTION) if m.use_instruction else None
        info = {
            "autoencoder": "pixel-shuffle",
            "pixel_shuffle_factor": m.pixel_shuffle_factor,
            "text_encoder": m.text_encoder,
            # what sanakit.pipeline.TextToImage needs to load this folder like a pipeline
            "instruction": None if instruction is None else list(instruction),
            "text_max_length": m.text_max_length,
            "flow_shift": scheduler_shift(config, model, m.pixel_shuffle_factor),
        }
        (folder / "sanakit.json").write_text(json.dumps(info, indent=2))
        return folder
    vae = Path(m.base) / "vae" if m.base else Path(m.vae)
    shift = scheduler_shift(config, model, read_dc_ae_config(vae)[0])
    if m.base:
        base = Path(m.base)
        for part in ("vae", "text_encoder", "tokenizer"):
            link_tree(base / part, folder / part)
        scheduler = json.loads((base / "scheduler" / "scheduler_config.json").read_text())
        _write_scheduler(folder, scheduler, shift)
        shutil.copy2(base / "model_index.json", folder / "model_index.json")
        return folder
    link_tree(vae, folder / "vae")
    text = Path(m.text_encoder)
    te_dir, tok_dir = (
        (text / "text_encoder", text / "tokenizer")
        if (text / "text_encoder").is_dir()
        else (text, text)
    )
    link_tree(te_dir, folder / "text_encoder")
    link_tree(tok_dir, folder / "tokenizer")
    _write_scheduler(folder, SCHEDULER_CONFIG, shift)
    (folder / "model_index.json").write_text(json.dumps(MODEL_INDEX, indent=2))
    return folder


class SavesAdapter(Protocol):
    """What the export needs of an adapter handle (:mod:`sanakit.adapters`)."""

    def save(self, folder: Path) -> Any: ...


def export_final(
    config: RunConfig,
    model: SanaTransformer,
    *,
    adapter: SavesAdapter | None = None,
    ema: EMA | None = None,
) -> Path:
    """Write ``final/`` (and ``final-ema/`` with ``ema``) under ``config.output.dir``: the pipeline
    of ``model``, or only ``adapter`` when given; returns ``final/``."""
    out = Path(config.output.dir)
    final = out / "final"
    if adapter is None:
        write_pipeline(config, model, final)
        if ema is not None:
            with ema.swapped_in(model):
                write_pipeline(config, model, out / "final-ema")
        return final
    adapter.save(final)
    if ema is not None:
        with ema.swapped_in(model):
            adapter.save(out / "final-ema")
    return final
