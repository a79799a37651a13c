"""TrigFlow time and the consistency function (Lu & Song 2024, "sCM"; Sana-Sprint §3).

Notation as in :mod:`sanakit.flow`: TrigFlow time ``t`` in [0, pi/2], flow time
``s = sin t / (sin t + cos t)``, ``sigma_d = 0.5``; TrigFlow data ``x0_trig = sigma_d x0`` (flow
latents ``x0``), noise ``z = sigma_d eps``, state ``x_t = cos t x0_trig + sin t z``. A network
output ``F`` (:func:`sanakit.flow.trigflow_output`) gives ``dx_t/dt = sigma_d F``.
"""

from __future__ import annotations

import torch

SIGMA_DATA = 0.5
# NVlabs' max_timesteps / largest_timestep: slightly above pi/2 (cos = -3.7e-6), harmless.
LARGEST_TIME = 1.5708


def sample_trigflow_times(
    n: int,
    p_mean: float,
    p_std: float,
    *,
    sigma_data: float = SIGMA_DATA,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``(n,)`` fp32 TrigFlow times ``t = atan(sigma / sigma_d)`` with ``log sigma ~ N(P_mean,
    P_std^2)`` (sCM's training density; NVlabs ``logit_normal_trigflow``). Sana-Sprint: generator
    (0.2, 1.6), discriminator (-0.6, 1.0)."""
    normal = torch.randn(n, generator=generator, dtype=torch.float32)
    return torch.atan(torch.exp(normal * p_std + p_mean) / sigma_data)


def noisy_state(x0_trig: torch.Tensor, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``x_t = cos t x0 + sin t z`` for ``x0_trig``, ``z`` ``(B, ...)`` and ``t`` ``(B,)``."""
    shape = (-1,) + (1,) * (x0_trig.dim() - 1)
    return torch.cos(t).view(shape) * x0_trig + torch.sin(t).view(shape) * z


def denoised(
    x_t: torch.Tensor, f: torch.Tensor, t: torch.Tensor, sigma_data: float = SIGMA_DATA
) -> torch.Tensor:
    """The consistency function ``cos t x_t - sin t sigma_d F`` (the TrigFlow x0 estimate)."""
    shape = (-1,) + (1,) * (x_t.dim() - 1)
    return torch.cos(t).view(shape) * x_t - torch.sin(t).view(shape) * sigma_data * f
