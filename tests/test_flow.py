"""Closed-form tests of sanakit.flow: shift, training sigmas, interpolation, loss, TrigFlow."""

import math

import pytest
import torch

from sanakit.errors import SanakitError
from sanakit.flow import (
    auto_shift,
    flow_matching_loss,
    flow_to_trigflow_state,
    flow_to_trigflow_time,
    flow_velocity_to_trigflow,
    interpolate,
    model_time,
    sample_training_sigmas,
    time_shift,
    trigflow_to_flow_state,
    trigflow_to_flow_time,
    trigflow_to_flow_velocity,
    velocity_target,
)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- time shift ----------------------------------------------------------------------------------


def test_time_shift_identity_endpoints_monotone():
    sigma = torch.linspace(0, 1, 101, dtype=torch.float64)
    torch.testing.assert_close(time_shift(sigma, 1.0), sigma)
    for shift in (0.5, 3.0, 4.5):
        out = time_shift(sigma, shift)
        assert out[0].item() == 0.0 and out[-1].item() == pytest.approx(1.0, abs=1e-15)
        assert bool((out[1:] > out[:-1]).all())
        # shift > 1 moves every interior time towards noise, shift < 1 towards data
        assert bool(((out[1:-1] > sigma[1:-1]) == (shift > 1)).all())
    assert time_shift(0.5, 3.0) == pytest.approx(0.75)  # 3 * 0.5 / (1 + 2 * 0.5)
    assert isinstance(time_shift(0.25, 2.0), float)


def test_time_shift_composes_multiplicatively():
    # shift_a(shift_b(s)) == shift_{a*b}(s): the map is a Moebius scaling of the odds s / (1 - s)
    s = torch.rand(50, dtype=torch.float64, generator=_gen())
    torch.testing.assert_close(time_shift(time_shift(s, 2.0), 1.5), time_shift(s, 3.0))


def test_auto_shift_endpoints_and_linear_mu():
    assert auto_shift(256) == pytest.approx(math.exp(0.5))
    assert auto_shift(4096) == pytest.approx(math.exp(1.15))
    mid = (256 + 4096) // 2
    assert math.log(auto_shift(mid)) == pytest.approx((0.5 + 1.15) / 2)
    assert auto_shift(32 * 32, base_tokens=0, max_tokens=2048, base_shift=0.0, max_shift=2.0) == (
        pytest.approx(math.e)
    )
    with pytest.raises(SanakitError):
        auto_shift(100, base_tokens=10, max_tokens=10)


# --- training-time sigma sampling ----------------------------------------------------------------


def test_logit_normal_median_and_shift():
    n = 20000
    for mean in (0.0, 0.5, -0.7):
        sig = sample_training_sigmas(
            n, method="logit_normal", mean=mean, std=1.0, generator=_gen(1)
        )
        assert sig.shape == (n,) and sig.dtype == torch.float32
        assert bool(((sig >= 0) & (sig <= 1)).all())
        med = 1 / (1 + math.exp(-mean))
        assert sig.median().item() == pytest.approx(med, abs=0.01)
        # logit(sigma) ~ N(mean, 1)
        logit = torch.log(sig / (1 - sig))
        assert logit.mean().item() == pytest.approx(mean, abs=0.03)
        assert logit.std().item() == pytest.approx(1.0, abs=0.03)
    # a monotone shift moves every quantile as the formula says
    shifted = sample_training_sigmas(
        n, method="logit_normal", mean=0.3, shift=3.0, generator=_gen(2)
    )
    med = time_shift(1 / (1 + math.exp(-0.3)), 3.0)
    assert shifted.median().item() == pytest.approx(med, abs=0.01)


def test_uniform_and_mode_statistics():
    n = 20000
    uni = sample_training_sigmas(n, method="uniform", generator=_gen(3))
    assert uni.mean().item() == pytest.approx(0.5, abs=0.01)
    assert uni.var().item() == pytest.approx(1 / 12, abs=0.005)
    scale = 1.29
    mode = sample_training_sigmas(n, method="mode", mode_scale=scale, generator=_gen(4))
    assert bool(((mode >= 0) & (mode <= 1)).all())

    def f(u: float) -> float:  # SD3 mode sampling, decreasing in u for this scale
        return 1 - u - scale * (math.cos(math.pi * u / 2) ** 2 - 1 + u)

    for q in (0.1, 0.25, 0.5, 0.75, 0.9):
        assert torch.quantile(mode, q).item() == pytest.approx(f(1 - q), abs=0.01)
    # mode_scale 0 is the uniform distribution: identical draws for the same generator
    torch.testing.assert_close(
        sample_training_sigmas(64, method="mode", mode_scale=0.0, generator=_gen(5)),
        1 - sample_training_sigmas(64, method="uniform", generator=_gen(5)),
    )


def test_sigma_sampling_reproducible_and_rejects_bad_input():
    a = sample_training_sigmas(8, generator=_gen(9))
    b = sample_training_sigmas(8, generator=_gen(9))
    assert torch.equal(a, b)
    with pytest.raises(SanakitError, match="unknown timestep sampling method"):
        sample_training_sigmas(4, method="cosmap")  # type: ignore[arg-type]
    with pytest.raises(SanakitError):
        sample_training_sigmas(4, std=0.0)
    with pytest.raises(SanakitError):
        sample_training_sigmas(4, shift=0.0)


def test_model_time_scales_and_quantises():
    sigma = torch.tensor([0.0, 0.25, 0.9996, 1.0])
    torch.testing.assert_close(model_time(sigma, 1.0), sigma * 1000)
    # dense time (Sana-Sprint teacher): the network sees the flow time itself
    # (bit-exact: 1000 * 0.001 is 1.0 in float64, so no fp32 rounding enters the time path)
    assert torch.equal(model_time(sigma, 0.001), sigma)
    # Flow-DPM-Solver's integer grid, then the scale: floor(1000 sigma) * timestep_scale
    torch.testing.assert_close(
        model_time(sigma, 1.0, discrete=True), torch.tensor([0, 250, 999, 1000.0])
    )
    torch.testing.assert_close(
        model_time(sigma, 0.001, discrete=True), torch.tensor([0, 0.25, 0.999, 1.0])
    )
    assert model_time(0.5, 2.0) == 1000.0 and model_time(0.0015, 1.0, discrete=True) == 1.0
    with pytest.raises(SanakitError, match="must be > 0"):
        time_shift(0.5, 0.0)


# --- interpolation, target, loss -----------------------------------------------------------------


def test_interpolate_and_velocity_identities():
    x0 = torch.randn(3, 4, 5, 6, generator=_gen(10))
    eps = torch.randn(3, 4, 5, 6, generator=_gen(11))
    torch.testing.assert_close(interpolate(x0, eps, torch.zeros(3)), x0)
    torch.testing.assert_close(interpolate(x0, eps, torch.ones(3)), eps)
    sigma = torch.tensor([0.1, 0.5, 0.9])
    out = interpolate(x0, eps, sigma)
    for b in range(3):
        s = sigma[b].item()
        torch.testing.assert_close(out[b], (1 - s) * x0[b] + s * eps[b])
    # the state is linear in sigma with slope v = eps - x0
    v = velocity_target(x0, eps)
    torch.testing.assert_close(interpolate(x0, eps, 0.7) - interpolate(x0, eps, 0.2), 0.5 * v)
    torch.testing.assert_close(x0 + v, eps)


def test_loss_weights_mask_reduction_by_hand():
    pred = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]], [[[0.0, 0.0], [0.0, 2.0]]]])  # (2, 1, 2, 2)
    pred = pred.repeat(1, 2, 1, 1)  # (2, 2, 2, 2)
    target = torch.zeros_like(pred)
    # per sample mean of squares: (1 + 4 + 9 + 16) / 4 = 7.5 and 4 / 4 = 1
    loss, per = flow_matching_loss(pred, target)
    torch.testing.assert_close(per, torch.tensor([7.5, 1.0]))
    assert loss.item() == pytest.approx((7.5 + 1.0) / 2)
    w = torch.tensor([1.0, 3.0])
    # sum_b w_b l_b / n (not / sum w: per-dataset weights must not cancel in a one-dataset batch)
    assert flow_matching_loss(pred, target, weights=w)[0].item() == pytest.approx((7.5 + 3.0) / 2)
    mask = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[0.0, 0.0], [1.0, 1.0]]])  # (2, H, W)
    # masked means: (1 + 16) / 2 = 8.5 and (0 + 4) / 2 = 2
    per = flow_matching_loss(pred, target, mask=mask)[1]
    torch.testing.assert_close(per, torch.tensor([8.5, 2.0]))
    torch.testing.assert_close(flow_matching_loss(pred, target, mask=mask.unsqueeze(1))[1], per)
    assert flow_matching_loss(pred, target, weights=w, mask=mask)[0].item() == pytest.approx(
        (8.5 + 3 * 2.0) / 2
    )
    # a sample with nothing valid contributes nothing
    mask[1] = 0
    assert flow_matching_loss(pred, target, weights=w, mask=mask)[0].item() == pytest.approx(8.5)
    with pytest.raises(ValueError, match="pred shape"):
        flow_matching_loss(pred, target[:, :1])


def test_loss_is_fp32_and_differentiable():
    pred = (torch.randn(2, 3, 4, 4, generator=_gen(12)) * 3).bfloat16().requires_grad_()
    target = torch.randn(2, 3, 4, 4, generator=_gen(13)).bfloat16()
    loss, _ = flow_matching_loss(pred, target)
    assert loss.dtype == torch.float32
    ref = (pred.float() - target.float()).square().mean()
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)
    loss.backward()
    assert pred.grad is not None and pred.grad.dtype == torch.bfloat16


# --- TrigFlow <-> flow ---------------------------------------------------------------------------


def test_trigflow_time_round_trip_and_endpoints():
    t = torch.linspace(0, math.pi / 2, 33, dtype=torch.float64)
    s = trigflow_to_flow_time(t)
    assert s[0].item() == 0.0 and s[-1].item() == pytest.approx(1.0)
    assert trigflow_to_flow_time(math.pi / 4).item() == pytest.approx(0.5)
    assert bool((s[1:] > s[:-1]).all())
    torch.testing.assert_close(flow_to_trigflow_time(s), t)
    u = torch.linspace(0, 1, 17, dtype=torch.float64)
    torch.testing.assert_close(trigflow_to_flow_time(flow_to_trigflow_time(u)), u)


def test_trigflow_state_and_velocity_closed_form():
    sd = 0.5
    x0 = torch.randn(4, 2, 3, 3, dtype=torch.float64, generator=_gen(20))  # flow latents
    eps = torch.randn(4, 2, 3, 3, dtype=torch.float64, generator=_gen(21))
    t = torch.tensor([0.05, 0.4, 1.0, 1.5], dtype=torch.float64)
    tb = t.view(-1, 1, 1, 1)
    # TrigFlow: x_t = cos t * x0_trig + sin t * z with x0_trig = sd * x0 and z = sd * eps
    x_trig = torch.cos(tb) * sd * x0 + torch.sin(tb) * sd * eps
    s = trigflow_to_flow_time(t)
    x_flow = trigflow_to_flow_state(x_trig, t, sd)
    torch.testing.assert_close(x_flow, interpolate(x0, eps, s))
    torch.testing.assert_close(flow_to_trigflow_state(x_flow, s, sd), x_trig)
    # the exact flow velocity maps to the exact TrigFlow velocity (dx_t/dt) / sd
    f = flow_velocity_to_trigflow(x_flow, velocity_target(x0, eps), s)
    torch.testing.assert_close(f, torch.cos(tb) * eps - torch.sin(tb) * x0)
    torch.testing.assert_close(sd * f, torch.cos(tb) * sd * eps - torch.sin(tb) * sd * x0)
    # and the TrigFlow denoiser recovers x0: cos t x_t - sin t (sd F) = x0_trig
    torch.testing.assert_close(torch.cos(tb) * x_trig - torch.sin(tb) * sd * f, sd * x0)
    torch.testing.assert_close(trigflow_to_flow_velocity(x_flow, f, s), eps - x0)
