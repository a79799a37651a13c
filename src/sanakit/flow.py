"""Flow-matching math for Sana: time shift, training-time sampling, interpolation, loss, TrigFlow.

Conventions (rectified flow, Liu et al. 2022; Esser et al. 2024 "SD3"; Sana, Xie et al. 2024):

* ``x0`` is a clean latent, ``eps ~ N(0, I)`` is noise and ``sigma`` in [0, 1] is the flow time.
* The noisy state is ``x_sigma = (1 - sigma) * x0 + sigma * eps`` and the network predicts the
  velocity ``v = d x_sigma / d sigma = eps - x0``.
* Sana-Sprint (Chen et al. 2025) uses TrigFlow (Lu & Song 2024, "sCM") with ``sigma_d = 0.5``:
  ``x_t = cos(t) * x0_trig + sin(t) * z`` with ``z ~ N(0, sigma_d^2 I)`` and ``t`` in [0, pi/2].
  The TrigFlow data space is the flow latent space scaled by ``sigma_d``: ``x0_trig = sigma_d * x0``
  and ``z = sigma_d * eps``. See :func:`trigflow_to_flow_state` for the derivation.

All functions are pure; tensors keep their device, shapes are given in the docstrings.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal, TypeVar

import torch

from sanakit.errors import SanakitError

T = TypeVar("T", torch.Tensor, float)

SIGMA_METHODS = ("logit_normal", "uniform", "mode")
NUM_TRAIN_TIMESTEPS = 1000  # Sana's training grid; diffusers' ``num_train_timesteps``


def time_shift(sigma: T, shift: float) -> T:
    """Shift flow times (towards noise for ``s > 1``): ``s * sigma / (1 + (s - 1) * sigma)``.

    This is the SD3 resolution shift (Esser et al. 2024, sec. 5.3.2) used by Sana's ``flow_shift``.
    It maps 0 -> 0 and 1 -> 1, is monotone for ``s > 0`` and is the identity for ``s = 1``.
    Works on floats and on tensors of any shape (element-wise). ``shift`` is validated where it
    enters (the config sections, the scheduler config, the ``flow_shift`` argument); this guard
    only stops a caller that bypassed them.
    """
    if not shift > 0:
        raise SanakitError(f"flow shift must be > 0, got {shift}; use 1.0 for no shift")
    return shift * sigma / (1.0 + (shift - 1.0) * sigma)


def model_time(sigma: T, timestep_scale: float, *, discrete: bool = False) -> T:
    """The time a Sana network is fed for flow time ``sigma``: ``sigma * 1000 * timestep_scale``.

    The one rule used by training, evaluation, validation, generation and the samplers, as
    diffusers' ``SanaPipeline`` feeds ``t * transformer.config.timestep_scale`` with
    ``t = 1000 sigma``. Sana: ``timestep_scale = 1`` (t in [0, 1000]); a dense-time model
    (Sana-Sprint teacher) has 0.001 and sees ``t = sigma``. Continuous and fp32-exact for training;
    ``discrete=True`` is Flow-DPM-Solver's integer grid, ``floor(1000 sigma) * timestep_scale``
    (diffusers' ``DPMSolverMultistepScheduler`` keeps integer timesteps).
    ``sigma``: a float or a tensor of any shape (element-wise, in its dtype).
    """
    if discrete:
        t = sigma * NUM_TRAIN_TIMESTEPS
        t = float(math.floor(t)) if isinstance(t, float) else torch.floor(t)
        return t * timestep_scale
    # one product: 1000 * 0.001 == 1.0 exactly, so a dense-time model sees sigma itself
    return sigma * (NUM_TRAIN_TIMESTEPS * timestep_scale)


def auto_shift(
    num_latent_tokens: int,
    base_tokens: int = 256,
    max_tokens: int = 4096,
    base_shift: float = 0.5,
    max_shift: float = 1.15,
) -> float:
    """Resolution-dependent shift ``exp(mu)``, mu linear in the number of latent tokens.

    ``mu = base_shift + (max_shift - base_shift) * (n - base_tokens) / (max_tokens - base_tokens)``
    (the SD3/Flux ``calculate_shift`` rule that SimpleTuner's ``--flow_schedule_auto_shift`` uses).
    For Sana (patch size 1) a latent of ``h x w`` has ``n = h * w`` tokens, e.g. 32 x 32 at 1024 px.
    Note ``exp(mu) * sigma / (exp(mu) * sigma + 1 - sigma)`` equals :func:`time_shift` with
    ``shift = exp(mu)``.
    """
    if max_tokens == base_tokens:
        raise SanakitError(
            "auto_shift: max_tokens must differ from base_tokens; set two token counts"
        )
    slope = (max_shift - base_shift) / (max_tokens - base_tokens)
    mu = base_shift + slope * (num_latent_tokens - base_tokens)
    return math.exp(mu)


def sample_training_sigmas(
    batch: int,
    *,
    method: Literal["logit_normal", "uniform", "mode"] = "logit_normal",
    mean: float = 0.0,
    std: float = 1.0,
    mode_scale: float = 1.29,
    shift: float = 1.0,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Draw training flow times, shape ``(batch,)`` float32, values in [0, 1].

    * ``"uniform"``: ``sigma ~ U(0, 1)``.
    * ``"logit_normal"``: ``sigma = sigmoid(u)``, ``u ~ N(mean, std^2)`` (SD3 sec. 3.1; the median
      is ``sigmoid(mean)``).
    * ``"mode"``: ``u ~ U(0, 1)``, ``sigma = 1 - u - s * (cos^2(pi u / 2) - 1 + u)`` with
      ``s = mode_scale`` (SD3 sec. 3.1, "mode sampling with heavy tails").

    The shift is applied afterwards: ``sigma <- time_shift(sigma, shift)``. Random numbers are drawn
    on the generator's device (CPU when no generator) and moved to ``device``.
    """
    if method not in SIGMA_METHODS:
        raise SanakitError(
            f"unknown timestep sampling method {method!r}; use one of {', '.join(SIGMA_METHODS)}"
        )
    rand_device = generator.device if generator is not None else device
    if method == "logit_normal":
        if not std > 0:
            raise SanakitError(f"logit-normal std must be > 0, got {std}")
        u = torch.randn(batch, generator=generator, device=rand_device, dtype=torch.float32)
        sigma = torch.sigmoid(u * std + mean)
    elif method == "uniform":
        sigma = torch.rand(batch, generator=generator, device=rand_device, dtype=torch.float32)
    else:
        u = torch.rand(batch, generator=generator, device=rand_device, dtype=torch.float32)
        sigma = 1.0 - u - mode_scale * (torch.cos(math.pi * u / 2.0) ** 2 - 1.0 + u)
    sigma = time_shift(sigma, shift).clamp(0.0, 1.0)
    return sigma.to(device) if device is not None else sigma


def _per_sample(value: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor | float:
    """View a ``(B,)`` tensor as ``(B, 1, ..., 1)`` to broadcast over ``like``; scalars pass."""
    if isinstance(value, torch.Tensor) and value.ndim == 1 and like.ndim > 1:
        return value.view(-1, *([1] * (like.ndim - 1)))
    return value


def interpolate(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
    """Noisy state ``x_sigma = (1 - sigma) * x0 + sigma * eps``.

    ``x0``, ``noise``: ``(B, C, H, W)``; ``sigma``: ``(B,)`` (broadcast per sample) or a float.
    """
    s = _per_sample(sigma, x0)
    return (1.0 - s) * x0 + s * noise


def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Flow-matching regression target ``v = d x_sigma / d sigma = eps - x0`` (same shape as x0)."""
    return noise - x0


def flow_matching_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    weights: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean squared error of the velocity, computed in fp32: ``(batch loss, per-sample losses)``.

    ``pred``, ``target``: ``(B, C, H, W)``. Per sample ``l_b = mean_{c,h,w} (pred - target)^2``;
    with ``mask`` (``(B, 1, H, W)`` or ``(B, H, W)``, 1 = valid) the mean runs over valid elements
    only: ``l_b = sum(m * d^2) / (C * sum(m))``. The batch loss is the scalar
    ``sum_b w_b l_b / n`` over the n samples with a valid element (``w = 1`` when ``weights``,
    shape ``(B,)``, is None); a sample whose mask is all zero has ``l_b = 0`` and takes no part in
    it. Divided by n, not by ``sum_b w_b``: a training batch never mixes datasets, so a weighted
    mean would cancel a dataset's ``loss_weight`` and ``train.prior_loss_weight``; with ``w = 1``
    both are the plain mean. Returns ``(scalar, (B,))``.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
    sq = (pred.float() - target.float()).square()  # (B, C, H, W)
    batch = sq.shape[0]
    if mask is None:
        per_sample = sq.reshape(batch, -1).mean(dim=1)
        valid = torch.ones(batch, device=sq.device, dtype=torch.float32)
    else:
        m = mask.float()
        if m.ndim == sq.ndim - 1:
            m = m.unsqueeze(1)  # (B, H, W) -> (B, 1, H, W)
        m = m.expand_as(sq)
        count = m.reshape(batch, -1).sum(dim=1)  # (B,) valid elements incl. channels
        per_sample = (sq * m).reshape(batch, -1).sum(dim=1) / count.clamp_min(1.0)
        valid = (count > 0).float()
    w = valid if weights is None else weights.float().to(sq.device) * valid
    loss = (w * per_sample).sum() / valid.sum().clamp_min(1.0)
    return loss, per_sample


# --- TrigFlow (Sana-Sprint) <-> flow matching ----------------------------------------------------


def _t(value: torch.Tensor | float) -> torch.Tensor:
    return value if isinstance(value, torch.Tensor) else torch.tensor(value, dtype=torch.float64)


def trigflow_to_flow_time(t: torch.Tensor | float) -> torch.Tensor:
    """Flow time of a TrigFlow time: ``s = sin t / (sin t + cos t)``; [0, pi/2] -> [0, 1]."""
    t = _t(t)
    return torch.sin(t) / (torch.sin(t) + torch.cos(t))


def flow_to_trigflow_time(s: torch.Tensor | float) -> torch.Tensor:
    """TrigFlow time of a flow time: ``t = atan2(s, 1 - s)`` (inverse of trigflow_to_flow_time)."""
    s = _t(s)
    return torch.atan2(s, 1.0 - s)


def _flow_norm(s: torch.Tensor) -> torch.Tensor:
    """``sqrt(s^2 + (1 - s)^2)``, which equals ``1 / (sin t + cos t)`` for ``s = s(t)``."""
    return torch.sqrt(s * s + (1.0 - s) * (1.0 - s))


def trigflow_to_flow_state(
    x_trig: torch.Tensor, t: torch.Tensor | float, sigma_data: float = 0.5
) -> torch.Tensor:
    """Flow state equal to a TrigFlow state: ``x_s = x_t / sigma_d * sqrt(s^2 + (1 - s)^2)``.

    Derivation: with ``x0_trig = sigma_d x0`` and ``z = sigma_d eps``,
    ``x_t / sigma_d = cos t x0 + sin t eps``; dividing by ``sin t + cos t`` gives
    ``(1 - s) x0 + s eps = x_s`` with ``s = sin t / (sin t + cos t)``, and
    ``1 / (sin t + cos t) = sqrt(s^2 + (1 - s)^2)``.
    ``x_trig``: ``(B, ...)``; ``t``: ``(B,)`` or scalar.
    """
    s = trigflow_to_flow_time(t)
    return x_trig / sigma_data * _per_sample(_flow_norm(s), x_trig)


def flow_to_trigflow_state(
    x_flow: torch.Tensor, s: torch.Tensor | float, sigma_data: float = 0.5
) -> torch.Tensor:
    """Inverse of :func:`trigflow_to_flow_state`: ``x_t = sigma_d x_s / sqrt(s^2 + (1 - s)^2)``."""
    return sigma_data * x_flow / _per_sample(_flow_norm(_t(s)), x_flow)


def flow_velocity_to_trigflow(
    x_flow_input: torch.Tensor, v: torch.Tensor, s: torch.Tensor | float
) -> torch.Tensor:
    """TrigFlow output from a flow velocity, as diffusers' ``SanaSprintPipeline`` computes it.

    ``F = ((1 - 2s) x_s + (1 - 2s + 2s^2) v) / sqrt(s^2 + (1 - s)^2)``, which equals
    ``cos t eps - sin t x0`` for ``x_s = (1 - s) x0 + s eps`` and ``v = eps - x0``: use
    ``eps = x_s + (1 - s) v``, ``x0 = x_s - s v`` and
    ``(cos t, sin t) = (1 - s, s) / sqrt(s^2 + (1 - s)^2)``.
    The TrigFlow model output ``d x_t / dt = cos t z - sin t x0_trig`` is ``sigma_d * F``.
    ``x_flow_input``, ``v``: ``(B, C, H, W)``; ``s``: ``(B,)`` or scalar.
    """
    s = _per_sample(_t(s), x_flow_input)
    q = s * s + (1.0 - s) * (1.0 - s)  # = 1 - 2s + 2s^2
    return ((1.0 - 2.0 * s) * x_flow_input + q * v) / torch.sqrt(q)


def trigflow_to_flow_velocity(
    x_flow_input: torch.Tensor, f: torch.Tensor, s: torch.Tensor | float
) -> torch.Tensor:
    """Inverse of :func:`flow_velocity_to_trigflow`: ``v = (F sqrt(q) - (1 - 2s) x_s) / q``.

    ``q = s^2 + (1 - s)^2``; ``f`` is the TrigFlow output divided by ``sigma_d``.
    """
    s = _per_sample(_t(s), x_flow_input)
    q = s * s + (1.0 - s) * (1.0 - s)
    return (f * torch.sqrt(q) - (1.0 - 2.0 * s) * x_flow_input) / q


def trigflow_output(
    velocity: Callable[..., torch.Tensor],
    x_in: torch.Tensor,
    t: torch.Tensor,
    *args: Any,
    **kwargs: Any,
) -> torch.Tensor:
    """The training-free Flow -> TrigFlow wrapper (Sana-Sprint; NVlabs ``SanaMSCM.forward``,
    diffusers ``SanaSprintPipeline``): the TrigFlow output ``F`` of a flow-velocity network.

    ``x_in = x_t / sigma_d`` ``(B, C, H, W)``, TrigFlow time ``t`` ``(B,)``; the network is called as
    ``velocity(x_s, s, *args, **kwargs)`` with the flow time ``s = sin t / (sin t + cos t)`` fed
    as it is (dense time: a Sprint student, or a teacher with ``timestep_scale`` 0.001) and the
    flow state ``x_s = x_in sqrt(s^2 + (1 - s)^2)``; returns
    ``F = ((1 - 2s) x_s + (1 - 2s + 2s^2) v) / sqrt(s^2 + (1 - s)^2)`` in ``t``'s precision (fp32
    or fp64; the network's output is upcast), so ``dx_t/dt = sigma_d F`` and
    ``cos t x_t - sin t sigma_d F = sigma_d (x_s - s v)``. Plain differentiable ops: forward-mode
    AD through ``t`` reaches the time embedding (the sCM tangent).
    """
    s = trigflow_to_flow_time(t)
    x_flow = trigflow_to_flow_state(x_in, t, sigma_data=1.0)
    v = velocity(x_flow, s, *args, **kwargs)
    return flow_velocity_to_trigflow(x_flow, v.to(x_flow.dtype), s)
