"""Write a tiny, random, diffusers-format Sana pipeline folder for tests and benchmarks.

The folder has the layout of a downloaded ``Efficient-Large-Model/Sana_*_diffusers`` model and
loads both with :meth:`sanakit.pipeline.TextToImage.from_pretrained` and with diffusers'
``SanaPipeline`` / ``SanaSprintPipeline.from_pretrained``::

    folder/
      model_index.json      _class_name SanaPipeline (or SanaSprintPipeline) + component classes
      transformer/          sanakit SanaTransformer saved with save_transformer (diffusers format)
      vae/                  a random diffusers AutoencoderDC (32x downsampling, 4 latent channels)
      text_encoder/         a random Gemma2Model (eager attention)
      tokenizer/            a BPE tokenizer with Gemma's special ids (sanakit.tiny.build_tokenizer)
      scheduler/            DPMSolverMultistepScheduler (Sana's flow settings),
                            FlowMatchEulerDiscreteScheduler(shift) or SCMScheduler (Sprint)

Every weight is drawn from a fixed seed, so two calls with the same arguments write the same
folder. Nothing is downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from sanakit.models import ModelConfig, SanaTransformer, save_transformer
from sanakit.tiny import (
    build_dc_autoencoder,
    build_text_model,
    build_tokenizer,
    save_text_components,
)

DIFFUSERS_VERSION = "0.42.1"
LATENT_CHANNELS = 4

# Sana's released scheduler settings (Sana_1600M_1024px_diffusers/scheduler/scheduler_config.json),
# with flow_shift filled in by the caller.
_DPM_CONFIG = {
    "_class_name": "DPMSolverMultistepScheduler",
    "algorithm_type": "dpmsolver++",
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "beta_start": 0.0001,
    "dynamic_thresholding_ratio": 0.995,
    "euler_at_final": False,
    "final_sigmas_type": "zero",
    "lower_order_final": True,
    "num_train_timesteps": 1000,
    "prediction_type": "flow_prediction",
    "sample_max_value": 1.0,
    "solver_order": 2,
    "solver_type": "midpoint",
    "steps_offset": 0,
    "thresholding": False,
    "timestep_spacing": "linspace",
    "trained_betas": None,
    "use_beta_sigmas": False,
    "use_exponential_sigmas": False,
    "use_flow_sigmas": True,
    "use_karras_sigmas": False,
    "use_lu_lambdas": False,
    "variance_type": None,
}


def tiny_transformer_config(
    *, sprint: bool = False, caption_channels: int = 32, sample_size: int = 32
) -> ModelConfig:
    """2 blocks of width 64 (2 heads x 32), 4 latent channels. ``sample_size`` 32 costs nothing
    (no positional embedding without ``interpolation_scale``) and makes diffusers bin
    resolutions with its 1024-px table. Sprint: guidance embedding + RMS qk-norm."""
    return ModelConfig(
        in_channels=LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS,
        num_attention_heads=2,
        attention_head_dim=32,
        num_layers=2,
        num_cross_attention_heads=2,
        cross_attention_head_dim=32,
        cross_attention_dim=64,
        caption_channels=caption_channels,
        sample_size=sample_size,
        guidance_embeds=sprint,
        qk_norm="rms_norm_across_heads" if sprint else None,
    )


def random_transformer(config: ModelConfig, seed: int = 0, noise: float = 0.05) -> SanaTransformer:
    """A SanaTransformer with the official init plus N(0, noise²) on *every* parameter, so no
    weight is zero (zero-initialised biases/tables would hide wiring mistakes in oracle tests)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SanaTransformer(config)
        with torch.no_grad():
            for param in model.parameters():
                param.add_(torch.randn_like(param) * noise)
    return model.eval()


def _scheduler_config(scheduler: str, flow_shift: float) -> dict:
    if scheduler == "dpm":
        return {**_DPM_CONFIG, "flow_shift": flow_shift}
    if scheduler == "euler":
        return {
            "_class_name": "FlowMatchEulerDiscreteScheduler",
            "num_train_timesteps": 1000,
            "shift": flow_shift,
            "use_dynamic_shifting": False,
        }
    if scheduler == "scm":
        return {
            "_class_name": "SCMScheduler",
            "num_train_timesteps": 1000,
            "prediction_type": "trigflow",
            "sigma_data": 0.5,
        }
    raise ValueError(f"unknown scheduler {scheduler!r}; use 'dpm', 'euler' or 'scm'")


def write_tiny_pipeline(
    folder: str | Path,
    *,
    sprint: bool = False,
    scheduler: str | None = None,
    flow_shift: float = 3.0,
    transformer_config: ModelConfig | None = None,
    text_hidden_size: int = 32,
    vae_channels: int = 8,
    seed: int = 0,
) -> Path:
    """Write a tiny random Sana pipeline to ``folder`` (created) and return it.

    Args:
        sprint: a Sana-Sprint pipeline (guidance-embedding transformer, ``SCMScheduler``,
            ``model_index.json`` class ``SanaSprintPipeline``).
        scheduler: ``"dpm"`` (default for Sana), ``"euler"`` or ``"scm"`` (default and only
            choice for Sprint).
        flow_shift: ``flow_shift`` (DPM) / ``shift`` (Euler) in the scheduler config.
        transformer_config: replaces :func:`tiny_transformer_config` (its
            ``caption_channels`` must equal ``text_hidden_size``, its ``in_channels`` 4).
        text_hidden_size: width of the random Gemma2 text encoder.
        vae_channels: width of every DC-AE stage (a multiple of 4).
        seed: seed of every random weight.
    """
    scheduler = scheduler or ("scm" if sprint else "dpm")
    if sprint != (scheduler == "scm"):
        raise ValueError("Sprint pipelines use the 'scm' scheduler and only they do")
    config = transformer_config or tiny_transformer_config(
        sprint=sprint, caption_channels=text_hidden_size
    )
    if config.caption_channels != text_hidden_size or config.in_channels != LATENT_CHANNELS:
        raise ValueError(
            f"transformer caption_channels/in_channels must be {text_hidden_size}/{LATENT_CHANNELS}"
        )
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)

    tokenizer = build_tokenizer()
    text_model = build_text_model(len(tokenizer), hidden_size=text_hidden_size, seed=seed)
    save_text_components(root, tokenizer, text_model)
    vae = build_dc_autoencoder(seed=seed, latent_channels=LATENT_CHANNELS, channels=vae_channels)
    vae.save_pretrained(root / "vae")
    save_transformer(random_transformer(config, seed=seed), root / "transformer")
    (root / "scheduler").mkdir(exist_ok=True)
    sched = {**_scheduler_config(scheduler, flow_shift), "_diffusers_version": DIFFUSERS_VERSION}
    (root / "scheduler" / "scheduler_config.json").write_text(json.dumps(sched, indent=2))

    model_index = {
        "_class_name": "SanaSprintPipeline" if sprint else "SanaPipeline",
        "_diffusers_version": DIFFUSERS_VERSION,
        "scheduler": ["diffusers", sched["_class_name"]],
        "text_encoder": ["transformers", type(text_model).__name__],
        "tokenizer": ["transformers", type(tokenizer).__name__],
        "transformer": ["diffusers", "SanaTransformer2DModel"],
        "vae": ["diffusers", "AutoencoderDC"],
    }
    (root / "model_index.json").write_text(json.dumps(model_index, indent=2))
    return root
