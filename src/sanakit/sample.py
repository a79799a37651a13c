"""Model-agnostic samplers for Sana: flow Euler, Flow-DPM-Solver (DPM-Solver++ 2M) and Sprint sCM.

Every sampler takes a velocity model ``model(x, t, text, mask[, guidance=...]) -> v`` with
``x`` ``(B, C, h, w)``, ``t`` ``(B,)`` float32, ``text`` ``(B, L, D)``, ``mask`` ``(B, L)``; it runs
the update rule in fp32 and leaves any other casting to the model. The grids and update rules
reproduce diffusers' schedulers as used by ``SanaPipeline`` / ``SanaSprintPipeline`` (diffusers is
the test oracle), written against the math:

* flow state ``x_sigma = (1 - sigma) x0 + sigma eps``, model output ``v = eps - x0``;
* DPM-Solver++ (Lu et al. 2022, arXiv:2211.01095, Alg. 2, "midpoint" 2M) on
  ``alpha = 1 - sigma``, ``sigma``, ``lambda = log(alpha / sigma)``, data prediction
  ``x0 = x - sigma v``;
* sCM in TrigFlow (Lu & Song 2024; Sana-Sprint, Chen et al. 2025), see :mod:`sanakit.flow`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
import torch

from sanakit.errors import SanakitError
from sanakit.flow import (
    NUM_TRAIN_TIMESTEPS,
    model_time,
    time_shift,
    trigflow_output,
)

ModelFn = Callable[..., torch.Tensor]
StepCallback = Callable[[int, int, torch.Tensor], None]
Generators = torch.Generator | Sequence[torch.Generator] | None


def _check_steps(steps: int) -> None:
    if steps < 1:
        raise SanakitError(f"sampler steps must be >= 1, got {steps}")


def _shifted_grid(steps: int, shift: float, kind: str) -> np.ndarray:
    """Float64 sigma grid without the final 0, shape ``(steps,)``, descending."""
    n = NUM_TRAIN_TIMESTEPS
    if kind == "euler":
        # FlowMatchEulerDiscreteScheduler(shift): its training table runs over shift(k / n), so
        # linspace(sigma_max = 1, sigma_min = shift(1 / n), steps) is shifted once more.
        sigma_min = time_shift(1.0 / n, shift)
        return time_shift(np.linspace(1.0, sigma_min, steps), shift)
    if kind == "dpm":
        # DPMSolverMultistepScheduler(use_flow_sigmas): sigma = shift(1 - alpha) with
        # alpha = linspace(1, 1 / n, steps + 1); descending, the trailing 0 dropped.
        base = 1.0 - np.linspace(1.0, 1.0 / n, steps + 1)
        return np.flip(time_shift(base, shift))[:-1].copy()
    raise SanakitError(f"unknown sigma grid kind {kind!r}; use 'dpm' or 'euler'")


def flow_sigmas(
    steps: int, shift: float = 1.0, kind: Literal["dpm", "euler"] = "dpm"
) -> torch.Tensor:
    """Sampling sigma grid incl. the final 0, float32 ``(steps + 1,)``, descending.

    * ``"euler"``: ``sigma_i = shift(linspace(1, shift(1/1000), steps)_i)`` then 0 (diffusers'
      ``FlowMatchEulerDiscreteScheduler(shift=shift)``, which shifts the lower end twice).
    * ``"dpm"``: ``sigma_i = shift(0.999 * (1 - i / steps))`` for ``i < steps``, then exactly 0
      (diffusers' ``DPMSolverMultistepScheduler`` with ``use_flow_sigmas`` and
      ``final_sigmas_type="zero"``).
    """
    _check_steps(steps)
    grid = _shifted_grid(steps, shift, kind)
    return torch.from_numpy(np.concatenate([grid, [0.0]]).astype(np.float32))


def flow_timesteps(
    steps: int,
    shift: float = 1.0,
    kind: Literal["dpm", "euler"] = "dpm",
    timestep_scale: float = 1.0,
) -> torch.Tensor:
    """Model times the samplers pass, float32 ``(steps,)`` (:func:`sanakit.flow.model_time`).

    * ``"euler"``: ``t_i = 1000 sigma_i * timestep_scale`` (float32 ``sigma_i`` of
      :func:`flow_sigmas`).
    * ``"dpm"``: ``t_i = floor(1000 sigma_i) * timestep_scale``: diffusers' DPM-Solver keeps
      integer timesteps on the 1000-step training grid, so the model sees the time quantised.
    """
    _check_steps(steps)
    if kind == "euler":
        return model_time(flow_sigmas(steps, shift, "euler")[:-1], timestep_scale)
    grid = torch.from_numpy(_shifted_grid(steps, shift, kind))  # float64, as diffusers
    return model_time(grid, timestep_scale, discrete=True).float()


def _guided_velocity_fn(
    model: ModelFn,
    text: torch.Tensor,
    mask: torch.Tensor,
    guidance_scale: float,
    uncond_text: torch.Tensor | None,
    uncond_mask: torch.Tensor | None,
) -> Callable[[torch.Tensor, float], torch.Tensor]:
    """Return ``velocity(x, t) -> v`` (fp32), classifier-free guided when ``guidance_scale > 1``.

    CFG (Ho & Salimans 2022): one call on ``cat([uncond, cond])`` and ``v = v_u + g (v_c - v_u)``.
    ``guidance_scale <= 1`` means the conditional velocity only (as diffusers' pipelines).
    """
    do_cfg = guidance_scale > 1.0
    if do_cfg:
        if uncond_text is None or uncond_mask is None:
            raise SanakitError(
                f"guidance_scale={guidance_scale} > 1 needs uncond_text and uncond_mask "
                "(the empty/negative prompt embedding); pass them or use guidance_scale=1"
            )
        batch = text.shape[0]
        if uncond_text.shape[0] == 1 and batch > 1:
            uncond_text = uncond_text.expand(batch, *uncond_text.shape[1:])
            uncond_mask = uncond_mask.expand(batch, *uncond_mask.shape[1:])
        if uncond_text.shape != text.shape or uncond_mask.shape != mask.shape:
            raise SanakitError(
                f"uncond text {tuple(uncond_text.shape)}/mask {tuple(uncond_mask.shape)} "
                "must match "
                f"text {tuple(text.shape)}/mask {tuple(mask.shape)}; pad both to the same length"
            )
        text_in = torch.cat([uncond_text, text])  # (2B, L, D): uncond first, as diffusers
        mask_in = torch.cat([uncond_mask, mask])  # (2B, L)
    else:
        text_in, mask_in = text, mask

    def velocity(x: torch.Tensor, t: float) -> torch.Tensor:
        x_in = torch.cat([x, x]) if do_cfg else x
        t_in = torch.full((x_in.shape[0],), t, dtype=torch.float32, device=x.device)
        v = model(x_in, t_in, text_in, mask_in).float()
        if not do_cfg:
            return v
        v_uncond, v_cond = v.chunk(2)
        return v_uncond + guidance_scale * (v_cond - v_uncond)

    return velocity


def flow_euler(
    model: ModelFn,
    noise: torch.Tensor,
    text: torch.Tensor,
    mask: torch.Tensor,
    *,
    steps: int,
    shift: float = 1.0,
    guidance_scale: float = 1.0,
    uncond_text: torch.Tensor | None = None,
    uncond_mask: torch.Tensor | None = None,
    timestep_scale: float = 1.0,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """Euler on the flow ODE ``dx/dsigma = v``: ``x_{i+1} = x_i + (sigma_{i+1} - sigma_i) v_i``.

    ``v_i = v(x_i, t_i)``; ``noise``: ``(B, C, h, w)`` standard normal (the state at ``sigma = 1``).
    Grid: :func:`flow_sigmas` ``kind="euler"``; model time ``t_i = 1000 sigma_i * timestep_scale``
    (:func:`sanakit.flow.model_time`).
    ``callback(i, steps, x)`` runs after every step. Returns the fp32 ``x0`` estimate, shaped
    like ``noise``.
    """
    sigmas = flow_sigmas(steps, shift, "euler").tolist()
    times = flow_timesteps(steps, shift, "euler", timestep_scale).tolist()
    velocity = _guided_velocity_fn(model, text, mask, guidance_scale, uncond_text, uncond_mask)
    x = noise.float()
    for i in range(steps):
        v = velocity(x, times[i])
        x = x + (sigmas[i + 1] - sigmas[i]) * v
        if callback is not None:
            callback(i, steps, x)
    return x


def flow_dpm_solver(
    model: ModelFn,
    noise: torch.Tensor,
    text: torch.Tensor,
    mask: torch.Tensor,
    *,
    steps: int,
    shift: float = 1.0,
    guidance_scale: float = 1.0,
    uncond_text: torch.Tensor | None = None,
    uncond_mask: torch.Tensor | None = None,
    timestep_scale: float = 1.0,
    callback: StepCallback | None = None,
    discrete_timesteps: bool = True,
) -> torch.Tensor:
    """Flow-DPM-Solver: DPM-Solver++ multistep, order 2 (midpoint), data prediction.

    With ``alpha = 1 - sigma``, ``lambda = log(alpha / sigma)``, ``h_i = lambda_{i+1} - lambda_i``
    and the data prediction ``D_i = x_i - sigma_i v(x_i, t_i)``:

    * first step (order 1): ``x_{i+1} = sigma_{i+1}/sigma_i x_i - alpha_{i+1} (e^{-h_i} - 1) D_i``;
    * later steps (2M): the same with ``D_i + (D_i - D_{i-1}) / (2 r_i)``, ``r_i = h_{i-1} / h_i``;
    * last step (order 1 into ``sigma = 0``, where ``lambda = inf``): ``x_N = D_{N-1}``.

    Grid: :func:`flow_sigmas` ``kind="dpm"``; model time ``floor(1000 sigma_i) * timestep_scale``
    (see :func:`flow_timesteps`) or, with ``discrete_timesteps=False``, the continuous
    ``1000 sigma_i * timestep_scale`` (as the official Sana DPM-Solver). Matches diffusers'
    ``DPMSolverMultistepScheduler`` with Sana's config
    (dpmsolver++, order 2, midpoint, lower_order_final, final_sigmas_type "zero", flow sigmas).
    ``noise``: ``(B, C, h, w)``; returns fp32 ``x0``; ``callback(i, steps, x)`` after every step.
    """
    sigma_grid = flow_sigmas(steps, shift, "dpm")
    sigmas = sigma_grid.double().tolist()
    if discrete_timesteps:
        times = flow_timesteps(steps, shift, "dpm", timestep_scale).tolist()
    else:
        times = model_time(sigma_grid[:-1], timestep_scale).tolist()
    velocity = _guided_velocity_fn(model, text, mask, guidance_scale, uncond_text, uncond_mask)
    x = noise.float()
    prev_d: torch.Tensor | None = None
    prev_h = 0.0
    for i in range(steps):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        d = x - sigma * velocity(x, times[i])  # data prediction x0 = x - sigma v
        if sigma_next == 0.0:
            x = d  # exact limit of the first-order update at lambda = +inf
        else:
            alpha, alpha_next = 1.0 - sigma, 1.0 - sigma_next
            h = (math.log(alpha_next) - math.log(sigma_next)) - (math.log(alpha) - math.log(sigma))
            phi = alpha_next * math.expm1(-h)  # alpha_{i+1} (e^{-h} - 1)
            if prev_d is None:
                x = (sigma_next / sigma) * x - phi * d
            else:
                r = prev_h / h
                x = (sigma_next / sigma) * x - phi * d - 0.5 * phi * ((d - prev_d) / r)
            prev_h = h
        prev_d = d
        if callback is not None:
            callback(i, steps, x)
    return x


def randn(
    shape: Sequence[int], generator: Generators, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Standard normal ``shape`` float32, drawn as diffusers' ``randn_tensor`` does: the one
    seeded-noise function of sampling (initial noise and sCM's fresh noise).

    A list of generators draws sample ``b`` as ``randn((1, ...), generator=generator[b])`` (so a
    seed gives the same image in any batch; a list of one is used as a single generator); a single
    generator draws the whole batch at once. Draws happen on the generator's device and are moved
    to ``device``; ``None`` uses torch's global generator on ``device``.
    """
    if isinstance(generator, Sequence) and not isinstance(generator, torch.Generator):
        gens = list(generator)
        if len(gens) == 1:
            generator = gens[0]
        else:
            if len(gens) != shape[0]:
                raise SanakitError(
                    f"got {len(gens)} generators for a batch of {shape[0]}; pass one per image"
                )
            one = (1, *shape[1:])
            parts = [
                torch.randn(one, generator=g, device=g.device, dtype=torch.float32) for g in gens
            ]
            return torch.cat(parts).to(device)
    if generator is None:
        return torch.randn(tuple(shape), device=device, dtype=torch.float32)
    return torch.randn(
        tuple(shape), generator=generator, device=generator.device, dtype=torch.float32
    ).to(device)


def scm_timesteps(
    steps: int, max_timesteps: float = 1.5708, intermediate_timesteps: float | None = 1.3
) -> torch.Tensor:
    """TrigFlow times of sCM sampling, float32 ``(steps + 1,)`` ending at 0.

    ``[max, intermediate, 0]`` for 2 steps (when ``intermediate_timesteps`` is set), else
    ``linspace(max, 0, steps + 1)`` (diffusers' ``SCMScheduler.set_timesteps``).
    """
    if steps < 1:
        raise SanakitError(f"sampler steps must be >= 1, got {steps}")
    if steps == 2 and intermediate_timesteps is not None:
        if not 0.0 < intermediate_timesteps < max_timesteps:
            raise SanakitError(
                f"intermediate_timesteps={intermediate_timesteps} must lie in (0, {max_timesteps})"
            )
        return torch.tensor([max_timesteps, intermediate_timesteps, 0.0], dtype=torch.float32)
    return torch.linspace(max_timesteps, 0.0, steps + 1, dtype=torch.float32)


def scm(
    model: ModelFn,
    noise: torch.Tensor,
    text: torch.Tensor,
    mask: torch.Tensor,
    *,
    steps: int,
    max_timesteps: float = 1.5708,
    intermediate_timesteps: float | None = 1.3,
    sigma_data: float = 0.5,
    guidance: torch.Tensor | None = None,
    generator: Generators = None,
    callback: StepCallback | None = None,
) -> torch.Tensor:
    """Sana-Sprint few-step sampling (sCM in TrigFlow), as diffusers' ``SanaSprintPipeline``.

    Start ``x = sigma_d * noise`` at ``t_0 = max_timesteps``; at each TrigFlow time ``t_i``:

    1. flow time ``s = sin t / (sin t + cos t)`` and flow input
       ``x_s = x / sigma_d * sqrt(s^2 + (1 - s)^2)`` (:func:`sanakit.flow.trigflow_to_flow_state`);
    2. ``v = model(x_s, s, text, mask, guidance=guidance)`` (``s`` unscaled, ``(B,)``);
    3. TrigFlow output ``F = sigma_d * flow_velocity_to_trigflow(x_s, v, s)``;
    4. ``x0 = cos t x - sin t F``; fresh ``z = sigma_d * randn(generator)``;
       ``x = cos t_{i+1} x0 + sin t_{i+1} z`` (``SCMScheduler.step``, which draws ``z`` at every
       step, the last included, so the generator advances exactly as in diffusers).

    ``noise``: ``(B, C, h, w)`` standard normal; ``guidance``: ``(B,)`` passed through as the
    model's ``guidance=`` keyword (the caller applies ``guidance_embeds_scale``), omitted when None.
    Returns the final ``x0 / sigma_d`` (flow latent units), fp32.
    ``callback(i, steps, x / sigma_d)`` runs after every step.
    """
    times = scm_timesteps(steps, max_timesteps, intermediate_timesteps).to(noise.device)
    x = noise.float() * sigma_data
    batch = x.shape[0]
    extra = {} if guidance is None else {"guidance": guidance}
    x0 = x
    for i in range(steps):
        t, t_next = times[i], times[i + 1]
        t_vec = t.expand(batch)  # (B,)
        f = trigflow_output(model, x / sigma_data, t_vec, text, mask, **extra) * sigma_data
        x0 = torch.cos(t) * x - torch.sin(t) * f
        z = randn(x.shape, generator, x.device) * sigma_data
        x = torch.cos(t_next) * x0 + torch.sin(t_next) * z
        if callback is not None:
            callback(i, steps, x / sigma_data)
    return x0 / sigma_data
