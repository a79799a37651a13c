"""Flow <-> TrigFlow wrapper and time samplers (Sana-Sprint spec §3, §5.2; unit checks U1, U2,
U6, U9), in float64 where exactness is claimed."""

from __future__ import annotations

import math

import torch

from sanakit.flow import trigflow_output, trigflow_to_flow_time
from sanakit.models import SanaTransformer
from sanakit.presets import tiny
from sanakit.sample import scm
from sanakit.sampling import velocity_model
from sanakit.sprint.trigflow import SIGMA_DATA, denoised, noisy_state, sample_trigflow_times

SD = SIGMA_DATA


def _flow_model(seed: int = 0) -> SanaTransformer:
    torch.manual_seed(seed)
    config = tiny(in_channels=4, caption_channels=8).replace(
        qk_norm="rms_norm_across_heads", timestep_scale=0.001
    )
    model = SanaTransformer(config).double().eval()
    with torch.no_grad():  # break the init's zeros so every path matters
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def _inputs(batch: int = 3, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(batch, 4, 4, 4, generator=g, dtype=torch.float64)
    eps = torch.randn(batch, 4, 4, 4, generator=g, dtype=torch.float64)
    text = torch.randn(batch, 5, 8, generator=g, dtype=torch.float64)
    mask = torch.ones(batch, 5, dtype=torch.long)
    mask[0, 3:] = 0
    t = torch.tensor([0.05, 0.8, math.pi / 2][:batch], dtype=torch.float64)
    return x0, eps, text, mask, t


def test_u1_wrapper_is_the_flow_x0_prediction_for_any_network() -> None:
    """cos t x_t - sin t sigma_d F(x_t / sigma_d, t) == sigma_d (x_s - s v(x_s, s))."""
    model = _flow_model()
    velocity = velocity_model(model)
    x0, eps, text, mask, t = _inputs()
    x_t = noisy_state(SD * x0, SD * eps, t)
    with torch.no_grad():
        f = trigflow_output(velocity, x_t / SD, t, text, mask)
        s = trigflow_to_flow_time(t)
        x_s = (1 - s).view(-1, 1, 1, 1) * x0 + s.view(-1, 1, 1, 1) * eps  # the same flow state
        v = velocity(x_s, s, text, mask)
    torch.testing.assert_close(x_s, x_t / SD / (torch.cos(t) + torch.sin(t)).view(-1, 1, 1, 1))
    lhs = denoised(x_t, f, t)
    rhs = SD * (x_s - s.view(-1, 1, 1, 1) * v)
    assert (lhs - rhs).abs().max() <= 1e-10
    # the simplified form F = ((cos - sin) x_in + v) / (cos + sin) and its inverse
    c, sn = torch.cos(t).view(-1, 1, 1, 1), torch.sin(t).view(-1, 1, 1, 1)
    assert (f - ((c - sn) * x_t / SD + v) / (c + sn)).abs().max() <= 1e-10
    assert (v - ((c + sn) * f - (c - sn) * x_t / SD)).abs().max() <= 1e-10


def test_u2_exact_flow_velocity_gives_the_trigflow_ode() -> None:
    """L ~ N(0, a^2): the closed-form flow velocity, wrapped, is dx_t/dt of TrigFlow's PF-ODE."""
    a = 2.0
    sx = SD * a

    def v_star(x, s, *_):
        s = s.view(-1, 1)
        return (s - (1 - s) * a**2) / ((1 - s) ** 2 * a**2 + s**2) * x

    x = torch.randn(5, 7, dtype=torch.float64)
    t = torch.linspace(0.05, 1.5, 5, dtype=torch.float64)
    f = trigflow_output(v_star, x / SD, t)
    c, s = torch.cos(t).view(-1, 1), torch.sin(t).view(-1, 1)
    dxdt = s * c * (SD**2 - sx**2) / (c**2 * sx**2 + s**2 * SD**2) * x
    assert (SD * f - dxdt).abs().max() <= 1e-12


def test_u6_time_sampler_quantiles() -> None:
    g = torch.Generator().manual_seed(0)
    cases = {
        (0.2, 1.6): (0.174, 0.693, 1.183, 1.433, 1.541),  # generator (sCM)
        (-0.6, 1.0): (0.208, 0.511, 0.832, 1.138, 1.397),  # discriminator (LADD)
    }
    q = torch.tensor([0.05, 0.25, 0.5, 0.75, 0.95], dtype=torch.float64)
    for (mean, std), expected in cases.items():
        t = sample_trigflow_times(200_000, mean, std, generator=g)
        assert t.dtype == torch.float32 and float(t.min()) > 0 and float(t.max()) < math.pi / 2
        got = torch.quantile(t.double(), q)
        assert (got - torch.tensor(expected, dtype=torch.float64)).abs().max() < 0.01, got


def test_u9_one_step_scm_of_the_wrapped_teacher_is_its_flow_x0_prediction() -> None:
    model = _flow_model()
    velocity = velocity_model(model)
    _, eps, text, mask, _ = _inputs()
    t_max = torch.full((3,), 1.5708, dtype=torch.float64)
    with torch.no_grad():
        out = scm(velocity, eps, text, mask, steps=1, generator=torch.Generator().manual_seed(0))
        # at t_max the flow state is eps (up to cos t_max = -3.7e-6) and x0 = x_s - s v
        s = trigflow_to_flow_time(t_max)
        x_s = eps * torch.sqrt(s**2 + (1 - s) ** 2).view(-1, 1, 1, 1)
        expected = x_s - s.view(-1, 1, 1, 1) * velocity(x_s, s, text, mask)
    # scm() runs in fp32 on the float64 model: fp32 rounding only
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)
