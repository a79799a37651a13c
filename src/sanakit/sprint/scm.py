"""The sCM generator loss (Lu & Song 2024, "Simplifying, stabilizing and scaling continuous-time
consistency models", eq. 8-9 + §4; Sana-Sprint §3; NVlabs ``train_scm_ladd.py`` phase G).

For data ``x0`` (TrigFlow units), noise ``z``, time ``t`` and the teacher's CFG velocity
``dx_t/dt = sigma_d (F_u + w (F_c - F_u))``::

    (F-, dF-, _) = jvp(student, (x_t / sigma_d, t), (cos t sin t dx_t/dt / sigma_d, cos t sin t))
    g = -cos^2 t (sigma_d F- - dx_t/dt) - r (cos t sin t x_t + sigma_d dF-)     (r: tangent warm-up)
    g = g / (||g|| + c)                                                          (per sample)
    L = mean( exp(-logvar) / (sigma_d tan t) * (F - F- - g)^2 + logvar )

With ``r = 1``, ``g = cos t d f/dt`` along the teacher's ODE for the consistency function
``f = cos t x_t - sin t sigma_d F``, so ``g = 0`` for an exact consistency function; the value of
``(F - F- - g)^2`` is ``||g||^2`` and its gradient ``-2 w g dF/dtheta`` (the JVP rearrangement).
Everything on the time path, the tangents, ``g``, the weights and the loss are fp32 (or fp64).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch

from sanakit.sprint.trigflow import noisy_state

# teacher(x_in, t, text, mask) -> F;  student(x_in, t, text, mask, guidance) -> (F, logvar)
Teacher = Callable[..., torch.Tensor]
Student = Callable[..., tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class ScmTerms:
    """The loss and what is worth logging about it."""

    loss: torch.Tensor  # scalar, differentiable w.r.t. the student
    g_norm: torch.Tensor  # (B,) tangent norm before normalisation
    logvar: torch.Tensor  # (B,)
    x0_hat: torch.Tensor  # (B, C, H, W) the student's x0 estimate at t (TrigFlow units), no grad


def _view(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t.view((-1,) + (1,) * (like.dim() - 1))


def _padded(
    text: torch.Tensor, mask: torch.Tensor | None, batch: int, length: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(batch, length, D)`` text and ``(batch, length)`` mask: rows broadcast, masked zero
    padding at the end (a padded key gets no attention weight, so outputs are unchanged)."""
    if mask is None:
        mask = torch.ones(text.shape[:2], dtype=torch.long, device=text.device)
    extra = length - text.shape[1]
    text = torch.nn.functional.pad(text, (0, 0, 0, extra)).expand(batch, -1, -1)
    mask = torch.nn.functional.pad(mask, (0, extra)).expand(batch, -1)
    return text, mask


def teacher_cfg_velocity(
    teacher: Teacher,
    x_t: torch.Tensor,
    t: torch.Tensor,
    cond: tuple[torch.Tensor, torch.Tensor | None],
    null: tuple[torch.Tensor, torch.Tensor | None],
    cfg_scale: torch.Tensor,
    sigma_d: float,
) -> torch.Tensor:
    """``dx_t/dt = sigma_d (F_u + w (F_c - F_u))`` ``(B, C, H, W)`` from one batched teacher call
    on ``[null, cond]``; ``null`` rows are ``(1, L', D)`` (broadcast) or ``(B, L', D)``, padded to
    a common length with masked zeros."""
    batch = x_t.shape[0]
    length = max(cond[0].shape[1], null[0].shape[1])
    text, mask = _padded(*cond, batch, length)
    null_text, null_mask = _padded(*null, batch, length)
    both_text, both_mask = torch.cat([null_text, text]), torch.cat([null_mask, mask])
    x_in = torch.cat([x_t, x_t]) / sigma_d
    f_u, f_c = teacher(x_in, torch.cat([t, t]), both_text, both_mask).chunk(2)
    return sigma_d * (f_u + _view(cfg_scale, f_u) * (f_c - f_u))


def scm_loss(
    student: Student,
    teacher: Teacher,
    x0: torch.Tensor,
    z: torch.Tensor,
    t: torch.Tensor,
    cond: tuple[torch.Tensor, torch.Tensor | None],
    null: tuple[torch.Tensor, torch.Tensor | None],
    cfg_scale: torch.Tensor,
    guidance: torch.Tensor,
    *,
    warmup_ratio: float,
    tangent_norm_c: float = 0.1,
    sigma_d: float = 0.5,
    forward_ad: Callable[[], AbstractContextManager[object]] = contextlib.nullcontext,
    trained: Student | None = None,
) -> ScmTerms:
    """One sCM generator loss (module docstring).

    Args:
        x0: clean data in TrigFlow units (``sigma_d`` x flow latents) ``(B, C, H, W)`` fp32.
        z: noise in TrigFlow units (``sigma_d`` x standard normal), same shape.
        t: TrigFlow times ``(B,)`` fp32 in (0, pi/2].
        cond / null: text ``(B, L, D)`` and mask of the captions / of the empty prompt.
        cfg_scale: the teacher's CFG scale per sample ``(B,)``; ``guidance`` is what the student
            embeds (``cfg_scale * guidance_embeds_scale``).
        warmup_ratio: ``r = min(1, step / tangent_warmup_steps)``.
        forward_ad: a context in which the student supports ``torch.func.jvp`` (the transformer's
            ``forward_ad_compatible``; also bypasses gradient checkpointing).
        trained: the student as the gradient pass calls it (a DDP wrapper; default ``student``,
            which the JVP always calls unwrapped).
    """
    x_t = noisy_state(x0, z, t)
    cos, sin = _view(torch.cos(t), x_t), _view(torch.sin(t), x_t)
    text, mask = cond
    with torch.no_grad():
        dxdt = teacher_cfg_velocity(teacher, x_t, t, cond, null, cfg_scale, sigma_d)
        tangents = (cos * sin * dxdt / sigma_d, torch.cos(t) * torch.sin(t))
        with forward_ad():
            f_minus, df, _ = torch.func.jvp(
                lambda x, tt: student(x, tt, text, mask, guidance),
                (x_t / sigma_d, t),
                tangents,
                has_aux=True,
            )
    f, logvar = (trained or student)(x_t / sigma_d, t, text, mask, guidance)
    f = f.to(x_t.dtype)
    g = -cos * cos * (sigma_d * f_minus - dxdt) - warmup_ratio * (cos * sin * x_t + sigma_d * df)
    g_norm = torch.linalg.vector_norm(g.flatten(1), dim=1)  # (B,)
    g = g / (_view(g_norm, g) + tangent_norm_c)
    weight = 1.0 / (sigma_d * torch.tan(t))  # (B,): the 1/sigma prior weight
    lv = _view(logvar, f)
    loss = (_view(weight, f) / torch.exp(lv) * (f - f_minus - g) ** 2 + lv).mean()
    x0_hat = (cos * x_t - sin * sigma_d * f_minus).detach()
    return ScmTerms(loss, g_norm.detach(), logvar.detach(), x0_hat)
