"""The sCM generator loss on a Gaussian toy with a closed-form PF-ODE (spec U4, U5).

Data x0 ~ N(0, s_x^2) (TrigFlow units), s_x = 1 != sigma_d: with v(t) = cos^2 t s_x^2 +
sin^2 t sigma_d^2 the teacher is dx/dt = sin t cos t (sigma_d^2 - s_x^2) / v(t) x and the exact
consistency function is f*(x, t) = x s_x / sqrt(v(t)) (constant along each trajectory).
"""

from __future__ import annotations

import math

import torch

from sanakit.sprint.scm import scm_loss
from sanakit.sprint.trigflow import SIGMA_DATA

SD, SX = SIGMA_DATA, 1.0


def _v(t):
    return torch.cos(t) ** 2 * SX**2 + torch.sin(t) ** 2 * SD**2


def _b(t, like):
    return t.view((-1,) + (1,) * (like.dim() - 1))


def teacher(x_in, t, text=None, mask=None):
    """F of the exact PF-ODE: dx/dt / sigma_d."""
    x = SD * x_in
    return _b(torch.sin(t) * torch.cos(t) * (SD**2 - SX**2) / _v(t), x) * x / SD


def exact_f(x_in, t):
    """F* with cos t x - sin t sigma_d F* = f*(x, t)."""
    x = SD * x_in
    f_star = x * _b(SX / torch.sqrt(_v(t)), x)
    return (_b(torch.cos(t), x) * x - f_star) / (SD * _b(torch.sin(t), x))


def _batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(6, 1, 8, 8, generator=g, dtype=torch.float64) * SX
    z = torch.randn(6, 1, 8, 8, generator=g, dtype=torch.float64) * SD
    t = torch.linspace(0.1, 1.5, 6, dtype=torch.float64)
    return x0, z, t


def _loss(student, x0, z, t, r=1.0):
    text = torch.zeros(6, 1, 2, dtype=torch.float64)
    w = torch.full((6,), 4.5, dtype=torch.float64)
    return scm_loss(
        student, teacher, x0, z, t, (text, None), (text[:1], None), w, w * 0.1, warmup_ratio=r
    )


def test_u4_exact_consistency_function_has_zero_tangent() -> None:
    x0, z, t = _batch()
    terms = _loss(lambda x, tt, *_: (exact_f(x, tt), torch.zeros_like(tt)), x0, z, t)
    assert float(terms.g_norm.max()) < 1e-10  # ||g|| ~ 1e-14 with exact forward-mode AD
    assert abs(float(terms.loss)) < 1e-18  # = mean(logvar) = 0


def test_u4_perturbed_tangent_is_cos_t_df_dt_along_the_ode() -> None:
    x0, z, t = _batch()

    def perturbed(x, tt, *_):
        return exact_f(x, tt) + 0.3 * _b(torch.sin(3 * tt), x) * x, torch.zeros_like(tt)

    terms = _loss(perturbed, x0, z, t)
    assert float(terms.g_norm.min()) > 0.01 and float(terms.g_norm.mean()) > 0.5  # not consistent
    # f(x(t), t) along the exact trajectory x(t') = x(t) sqrt(v(t') / v(t)), central difference
    x_t = _b(torch.cos(t), x0) * x0 + _b(torch.sin(t), z) * z
    h = 1e-5

    def f_along(dt):
        tt = t + dt
        x = x_t * _b(torch.sqrt(_v(tt) / _v(t)), x_t)
        return _b(torch.cos(tt), x) * x - _b(torch.sin(tt), x) * SD * perturbed(x / SD, tt)[0]

    df_dt = (f_along(h) - f_along(-h)) / (2 * h)
    expected = torch.linalg.vector_norm((_b(torch.cos(t), x_t) * df_dt).flatten(1), dim=1)
    torch.testing.assert_close(terms.g_norm, expected, rtol=1e-6, atol=0)


def test_u4_without_warmup_only_the_velocity_mismatch_is_left() -> None:
    """r = 0: g = -cos^2 t (sigma_d F - dx/dt)."""
    x0, z, t = _batch()

    def perturbed(x, tt, *_):
        return exact_f(x, tt) + 0.3 * x, torch.zeros_like(tt)

    terms = _loss(perturbed, x0, z, t, r=0.0)
    x_t = _b(torch.cos(t), x0) * x0 + _b(torch.sin(t), z) * z
    f = perturbed(x_t / SD, t)[0]
    g = -_b(torch.cos(t) ** 2, x_t) * (SD * f - SD * teacher(x_t / SD, t))
    torch.testing.assert_close(terms.g_norm, torch.linalg.vector_norm(g.flatten(1), dim=1))


def test_u5_gradient_descent_on_the_loss_finds_the_consistency_function() -> None:
    theta = torch.nn.Parameter(torch.tensor(0.5, dtype=torch.float64))

    def student(x, tt, *_):
        return exact_f(x, tt) + theta * x, torch.zeros_like(tt)

    optimizer = torch.optim.SGD([theta], lr=0.05)
    values = []
    for step in range(30):
        x0, z, t = _batch(step)
        loss = _loss(student, x0, z, t).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        values.append(abs(float(theta.detach())))
    assert values[-1] < 0.1 * values[0] and not math.isnan(values[-1])
