"""The one sampling path: conditioning + a resolved plan + per-image generators -> latents.

Generation (:class:`sanakit.pipeline.TextToImage`), validation during training
(:func:`sanakit.train.validation.sample_images`), the demo and distillation all sample through
:func:`sample_latents`, so they share

* the seeded noise: ``(N, C, h, w)`` drawn image by image from one CPU generator per image
  (:func:`sanakit.sample.randn`, diffusers' ``randn_tensor``), so a seed gives the same image as
  diffusers whatever the batch;
* the model wrapper (:func:`velocity_model`): inputs cast to the model's dtype, optional
  autocast, the first ``in_channels`` output channels kept;
* the model time (:func:`sanakit.flow.model_time`, honouring ``timestep_scale``);
* and, after decoding, one :func:`to_pil` (diffusers' ``VaeImageProcessor`` rounding).

A pipeline folder's default sampler comes from its ``scheduler_config.json``
(:func:`read_scheduler_config`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image

from sanakit.errors import SanakitError
from sanakit.flow import NUM_TRAIN_TIMESTEPS
from sanakit.models.sana import text_window
from sanakit.sample import (
    Generators,
    ModelFn,
    StepCallback,
    flow_dpm_solver,
    flow_euler,
    randn,
    scm,
)

SamplerName = Literal["dpm", "euler", "scm"]
SAMPLERS: tuple[str, ...] = ("dpm", "euler", "scm")


@dataclass(frozen=True)
class SamplerSettings:
    """The default sampler of a pipeline and its settings (from ``scheduler_config.json``).

    ``flow_shift`` applies to ``dpm``/``euler``; ``sigma_data``, ``max_timesteps`` (TrigFlow start
    time) and ``intermediate_timesteps`` (the middle time of 2-step sampling) to ``scm``, whose
    values default to ``SanaSprintPipeline``'s.
    """

    sampler: SamplerName = "dpm"
    flow_shift: float = 1.0
    sigma_data: float = 0.5
    max_timesteps: float = 1.5708
    intermediate_timesteps: float | None = 1.3

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise SanakitError(
                f"unknown sampler {self.sampler!r}; use one of {', '.join(SAMPLERS)}"
            )
        if not self.flow_shift > 0:
            raise SanakitError(f"flow_shift must be > 0, got {self.flow_shift}")


@dataclass(frozen=True)
class Plan:
    """A validated sampling request (:func:`sanakit.pipeline.resolve_plan`): sampler, steps,
    guidance, flow shift (None for scm), whether CFG runs, and the output / sampled (binned) /
    latent sizes as (height, width)."""

    sampler: SamplerName
    steps: int
    guidance_scale: float
    flow_shift: float | None
    do_cfg: bool
    size: tuple[int, int]
    sample_size: tuple[int, int]
    latent_size: tuple[int, int]


# Scheduler settings our samplers reproduce: (key, diffusers default when absent, required value).
_FIXED: dict[str, tuple[tuple[str, Any, Any], ...]] = {
    "DPMSolverMultistepScheduler": (
        ("use_flow_sigmas", False, True),
        ("prediction_type", "epsilon", "flow_prediction"),
        ("algorithm_type", "dpmsolver++", "dpmsolver++"),
        ("solver_order", 2, 2),
        ("solver_type", "midpoint", "midpoint"),
        ("final_sigmas_type", "zero", "zero"),
        ("thresholding", False, False),
        ("use_karras_sigmas", False, False),
        ("use_lu_lambdas", False, False),
        ("use_exponential_sigmas", False, False),
        ("use_beta_sigmas", False, False),
        ("use_dynamic_shifting", False, False),
        ("num_train_timesteps", 1000, NUM_TRAIN_TIMESTEPS),
    ),
    "FlowMatchEulerDiscreteScheduler": (
        ("use_dynamic_shifting", False, False),
        ("invert_sigmas", False, False),
        ("shift_terminal", None, None),
        ("stochastic_sampling", False, False),
        ("use_karras_sigmas", False, False),
        ("use_exponential_sigmas", False, False),
        ("use_beta_sigmas", False, False),
        ("num_train_timesteps", 1000, NUM_TRAIN_TIMESTEPS),
    ),
    "SCMScheduler": (("prediction_type", "trigflow", "trigflow"),),
}


def read_scheduler_config(path: str | Path) -> SamplerSettings:
    """Maps a diffusers ``scheduler_config.json`` (or its folder) onto :class:`SamplerSettings`.

    ``DPMSolverMultistepScheduler`` → ``dpm`` + ``flow_shift``; ``FlowMatchEulerDiscreteScheduler``
    → ``euler`` + ``shift``; ``SCMScheduler`` → ``scm`` + ``sigma_data``. Settings the samplers do
    not implement (Karras sigmas, dynamic shifting, epsilon prediction, ...) are an error naming
    the key, never silently ignored.
    """
    file = Path(path)
    if file.is_dir():
        file = file / "scheduler_config.json"
    try:
        config = json.loads(file.read_text())
    except FileNotFoundError as err:
        raise SanakitError(f"{file}: scheduler config not found") from err
    except (OSError, json.JSONDecodeError) as err:
        raise SanakitError(f"{file}: unreadable scheduler config ({err})") from err
    name = config.get("_class_name")
    if name not in _FIXED:
        raise SanakitError(
            f"{file}: scheduler {name!r} is not supported; sanakit samples with "
            f"{', '.join(_FIXED)} settings (pass --sampler to choose one)"
        )
    for key, default, required in _FIXED[name]:
        value = config.get(key, default)
        if value != required:
            raise SanakitError(
                f"{file}: {key}={value!r} is not supported by sanakit's samplers "
                f"(needs {required!r})"
            )
    if name == "DPMSolverMultistepScheduler":
        return SamplerSettings("dpm", flow_shift=float(config.get("flow_shift", 1.0)))
    if name == "FlowMatchEulerDiscreteScheduler":
        return SamplerSettings("euler", flow_shift=float(config.get("shift", 1.0)))
    return SamplerSettings("scm", sigma_data=float(config.get("sigma_data", 0.5)))


def seed_generators(seeds: Sequence[int]) -> list[torch.Generator]:
    """One CPU generator per image: ``torch.Generator("cpu").manual_seed(s)``."""
    return [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """(B, 3, H, W) decoder output in [-1, 1] → RGB images, ``round(255 * clamp(x/2 + 1/2, 0, 1))``
    with the clamp in the tensor's dtype, then numpy float32 (diffusers' ``VaeImageProcessor``:
    ``denormalize``, ``pt_to_numpy``, ``numpy_to_pil``), so images equal diffusers' pixel for
    pixel."""
    unit = (images * 0.5 + 0.5).clamp(0, 1)
    array = unit.cpu().permute(0, 2, 3, 1).float().numpy()  # (B, H, W, 3)
    pixels = (array * 255).round().astype(np.uint8)
    return [Image.fromarray(pixel) for pixel in pixels]


def velocity_model(
    model: Any, *, autocast_dtype: torch.dtype | None = None, use_mask: bool = True
) -> ModelFn:
    """The sampler-facing model of a Sana transformer (anything with ``config``, ``dtype``):
    casts ``x`` and the text to the model's dtype, runs under ``autocast_dtype`` when given (mixed
    precision training), and keeps the first ``in_channels`` output channels (a learned-sigma
    model predicts 2C). ``use_mask=False``: the text is known to be all valid (decided once by
    :func:`sample_latents`), so the model gets no mask."""
    dtype, channels = model.dtype, model.config.in_channels

    def velocity(
        x: torch.Tensor, t: torch.Tensor, text: torch.Tensor, mask: torch.Tensor, **kwargs: Any
    ) -> torch.Tensor:
        with torch.autocast(
            x.device.type,
            dtype=autocast_dtype or torch.float32,
            enabled=autocast_dtype is not None,
        ):
            v = model(x.to(dtype), t, text.to(dtype), mask if use_mask else None, **kwargs)
        return v[:, :channels]

    return velocity


def sample_latents(
    model: Any,
    cond: tuple[torch.Tensor, torch.Tensor],
    uncond: tuple[torch.Tensor, torch.Tensor] | None,
    plan: Plan,
    generators: Generators,
    *,
    settings: SamplerSettings | None = None,
    autocast_dtype: torch.dtype | None = None,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """Samples ``N`` latents ``(N, C, h, w)`` fp32 on the model's device.

    Args:
        model: a Sana transformer (``config``, ``dtype``, ``device``), wrapped by
            :func:`velocity_model`.
        cond: text features ``(N, L, D)`` and mask ``(N, L)`` (one row per image).
        uncond: the negative/empty prompt's ``(N or 1, L, D)``, ``(N or 1, L)``; needed when
            ``plan.do_cfg``, unused otherwise.
        plan: sampler, steps, guidance, flow shift and latent size.
        generators: one CPU generator per image (or a single one for the whole batch).
        settings: sCM's ``sigma_data`` / ``max_timesteps`` / ``intermediate_timesteps``
            (default: ``SanaSprintPipeline``'s).
        autocast_dtype: run the model under autocast in this dtype (None: no autocast).
        callback: ``callback(step, steps, latents)`` after every sampler step.
    """
    config, device = model.config, model.device
    if plan.sampler == "scm" or not plan.do_cfg:
        uncond = None
    # The text padding is trimmed once for the whole run, on the host-side masks (cond and
    # uncond alike: CFG batches them together), so the model's forward never syncs.
    length, all_valid = text_window(cond[1], uncond[1] if uncond is not None else None)
    cond = (cond[0][:, :length], cond[1][:, :length])
    if uncond is not None:
        uncond = (uncond[0][:, :length], uncond[1][:, :length])
    text, mask = cond[0].to(device), cond[1].to(device)
    h, w = plan.latent_size
    noise = randn((text.shape[0], config.in_channels, h, w), generators, device)
    velocity = velocity_model(model, autocast_dtype=autocast_dtype, use_mask=not all_valid)
    if plan.sampler == "scm":
        s = settings or SamplerSettings("scm")
        # SanaSprintPipeline: guidance in the text dtype, times guidance_embeds_scale.
        guidance = torch.full((text.shape[0],), plan.guidance_scale, dtype=text.dtype)
        return scm(
            velocity,
            noise,
            text,
            mask,
            steps=plan.steps,
            max_timesteps=s.max_timesteps,
            intermediate_timesteps=s.intermediate_timesteps,
            sigma_data=s.sigma_data,
            guidance=guidance.to(device) * config.guidance_embeds_scale,
            generator=generators,
            callback=callback,
        )
    if plan.do_cfg and uncond is None:
        raise SanakitError("classifier-free guidance needs the negative/empty prompt's features")
    u_text, u_mask = (
        (uncond[0].to(device), uncond[1].to(device)) if uncond is not None else (None, None)
    )
    solver = flow_dpm_solver if plan.sampler == "dpm" else flow_euler
    return solver(
        velocity,
        noise,
        text,
        mask,
        steps=plan.steps,
        shift=plan.flow_shift,
        guidance_scale=plan.guidance_scale if plan.do_cfg else 1.0,
        uncond_text=u_text,
        uncond_mask=u_mask,
        timestep_scale=config.timestep_scale,
        callback=callback,
    )
