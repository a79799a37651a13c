"""Samplers: closed-form Gaussian convergence tests and diffusers' schedulers as the oracle."""

import math

import numpy as np
import pytest
import torch
from diffusers import DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler, SCMScheduler

from sanakit.errors import SanakitError
from sanakit.sample import (
    flow_dpm_solver,
    flow_euler,
    flow_sigmas,
    flow_timesteps,
    scm,
    scm_timesteps,
)

# diffusers' DPM scheduler builds a numpy array from a tensor in a way numpy 2 warns about
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

B, C, H, W, L = 2, 4, 3, 5, 6  # tiny latents (B, C, H, W) and text (B, L, D = C)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _dpm_scheduler(shift: float) -> DPMSolverMultistepScheduler:
    """Sana's scheduler config (scheduler/scheduler_config.json of the diffusers checkpoints)."""
    return DPMSolverMultistepScheduler(
        algorithm_type="dpmsolver++",
        solver_order=2,
        solver_type="midpoint",
        lower_order_final=True,
        final_sigmas_type="zero",
        use_flow_sigmas=True,
        prediction_type="flow_prediction",
        flow_shift=shift,
        num_train_timesteps=1000,
        timestep_spacing="linspace",
        euler_at_final=False,
    )


class FakeModel:
    """Deterministic, nonlinear ``v(x, t, text, mask)`` that uses every input; records the times."""

    def __init__(self, t_scale: float = 1000.0) -> None:
        self.t_scale = t_scale
        self.times: list[torch.Tensor] = []

    def __call__(self, x, t, text, mask, guidance=None):
        self.times.append(t.detach().clone())
        m = mask.float()
        pooled = (text * m[..., None]).sum(1) / m.sum(1, keepdim=True)  # (B, D = C)
        tt = (t.float() / self.t_scale).view(-1, 1, 1, 1)
        v = 0.8 * x - 0.3 * torch.tanh(x) * tt + pooled[:, :, None, None] * (1 + tt)
        if guidance is not None:
            v = v + 0.05 * guidance.view(-1, 1, 1, 1) * torch.sin(x)
        return v


def _conditioning():
    text = torch.randn(B, L, C, generator=_gen(1))
    mask = torch.ones(B, L)
    mask[1, 4:] = 0
    uncond = torch.randn(B, L, C, generator=_gen(2))
    umask = torch.zeros(B, L)
    umask[:, 0] = 1  # only BOS unmasked, as Sana's empty prompt
    return text, mask, uncond, umask


def _diffusers_flow_loop(scheduler, model, noise, text, mask, uncond, umask, g):
    """SanaPipeline's denoising loop (CFG on cat([uncond, cond]), t * timestep_scale 1.0)."""
    latents = noise.clone()
    do_cfg = g > 1.0
    text_in = torch.cat([uncond, text]) if do_cfg else text
    mask_in = torch.cat([umask, mask]) if do_cfg else mask
    for t in scheduler.timesteps:
        x_in = torch.cat([latents] * 2) if do_cfg else latents
        v = model(x_in, t.expand(x_in.shape[0]) * 1.0, text_in, mask_in).float()
        if do_cfg:
            v_u, v_c = v.chunk(2)
            v = v_u + g * (v_c - v_u)
        latents = scheduler.step(v, t, latents, return_dict=False)[0]
    return latents


# --- grids vs diffusers --------------------------------------------------------------------------


@pytest.mark.parametrize("shift", [1.0, 3.0, 4.5])
@pytest.mark.parametrize("steps", [1, 2, 3, 5, 14, 15, 20, 28])
def test_grids_equal_diffusers(steps, shift):
    dpm = _dpm_scheduler(shift)
    dpm.set_timesteps(steps)
    torch.testing.assert_close(flow_sigmas(steps, shift, "dpm"), dpm.sigmas, rtol=0, atol=1e-7)
    assert flow_sigmas(steps, shift, "dpm")[-1].item() == 0.0
    torch.testing.assert_close(flow_timesteps(steps, shift, "dpm"), dpm.timesteps.float())
    torch.testing.assert_close(
        flow_timesteps(steps, shift, "dpm", timestep_scale=0.001), dpm.timesteps.float() * 0.001
    )
    euler = FlowMatchEulerDiscreteScheduler(shift=shift)
    euler.set_timesteps(steps)
    torch.testing.assert_close(flow_sigmas(steps, shift, "euler"), euler.sigmas, rtol=0, atol=1e-6)
    torch.testing.assert_close(
        flow_timesteps(steps, shift, "euler"), euler.timesteps, rtol=1e-6, atol=1e-4
    )


def test_grid_rejects_bad_arguments():
    with pytest.raises(SanakitError):
        flow_sigmas(0, 1.0)
    with pytest.raises(SanakitError):
        flow_sigmas(4, -1.0)
    with pytest.raises(SanakitError):
        flow_sigmas(4, 1.0, "heun")  # type: ignore[arg-type]


# --- full trajectories vs diffusers --------------------------------------------------------------


@pytest.mark.parametrize("guidance_scale", [1.0, 4.5])
@pytest.mark.parametrize(("steps", "shift"), [(1, 1.0), (2, 3.0), (5, 1.0), (20, 3.0)])
def test_dpm_solver_trajectory_matches_diffusers(steps, shift, guidance_scale):
    text, mask, uncond, umask = _conditioning()
    noise = torch.randn(B, C, H, W, generator=_gen(0))
    ours_model, ref_model = FakeModel(), FakeModel()
    seen: list[int] = []
    ours = flow_dpm_solver(
        ours_model, noise, text, mask, steps=steps, shift=shift, guidance_scale=guidance_scale,
        uncond_text=uncond, uncond_mask=umask, callback=lambda i, n, x: seen.append(i),
    )  # fmt: skip
    sched = _dpm_scheduler(shift)
    sched.set_timesteps(steps)
    ref = _diffusers_flow_loop(sched, ref_model, noise, text, mask, uncond, umask, guidance_scale)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    assert seen == list(range(steps))
    for a, b in zip(ours_model.times, ref_model.times, strict=True):
        torch.testing.assert_close(a, b.float())


@pytest.mark.parametrize("guidance_scale", [1.0, 4.5])
@pytest.mark.parametrize(("steps", "shift"), [(1, 1.0), (4, 3.0), (20, 1.0), (28, 4.5)])
def test_euler_trajectory_matches_diffusers(steps, shift, guidance_scale):
    text, mask, uncond, umask = _conditioning()
    noise = torch.randn(B, C, H, W, generator=_gen(0))
    ours_model, ref_model = FakeModel(), FakeModel()
    ours = flow_euler(
        ours_model, noise, text, mask, steps=steps, shift=shift, guidance_scale=guidance_scale,
        uncond_text=uncond, uncond_mask=umask,
    )  # fmt: skip
    sched = FlowMatchEulerDiscreteScheduler(shift=shift)
    sched.set_timesteps(steps)
    ref = _diffusers_flow_loop(sched, ref_model, noise, text, mask, uncond, umask, guidance_scale)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    for a, b in zip(ours_model.times, ref_model.times, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-4)


def test_cfg_broadcasts_single_uncond_and_requires_it():
    text, mask, uncond, umask = _conditioning()
    noise = torch.randn(B, C, H, W, generator=_gen(3))
    kw = dict(steps=3, guidance_scale=3.0)
    one = flow_euler(
        FakeModel(), noise, text, mask, uncond_text=uncond[:1], uncond_mask=umask[:1], **kw
    )
    rep = flow_euler(
        FakeModel(), noise, text, mask, uncond_text=uncond[:1].expand(B, -1, -1),
        uncond_mask=umask[:1].expand(B, -1), **kw,
    )  # fmt: skip
    torch.testing.assert_close(one, rep)
    with pytest.raises(SanakitError, match="uncond_text"):
        flow_dpm_solver(FakeModel(), noise, text, mask, **kw)


# --- Sprint sCM vs diffusers' SCMScheduler -------------------------------------------------------


def _diffusers_scm(model, noise, text, mask, guidance, steps, generator, sigma_data=0.5):
    """SanaSprintPipeline's loop with SCMScheduler (trigflow), transformer replaced by ``model``."""
    sched = SCMScheduler(sigma_data=sigma_data)
    sched.set_timesteps(
        steps, max_timesteps=1.5708, intermediate_timesteps=1.3 if steps == 2 else None
    )
    sched.set_begin_index(0)
    latents = noise * sigma_data
    denoised = latents
    for t in sched.timesteps[:-1]:
        timestep = t.expand(latents.shape[0])
        x_in = latents / sigma_data
        s = torch.sin(timestep) / (torch.cos(timestep) + torch.sin(timestep))
        se = s.view(-1, 1, 1, 1)
        x_in = x_in * torch.sqrt(se**2 + (1 - se) ** 2)
        v = model(x_in, s, text, mask, guidance=guidance)
        f = ((1 - 2 * se) * x_in + (1 - 2 * se + 2 * se**2) * v) / torch.sqrt(se**2 + (1 - se) ** 2)
        f = f.float() * sigma_data
        latents, denoised = sched.step(f, timestep, latents, generator=generator, return_dict=False)
    return denoised / sigma_data


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_scm_matches_diffusers(steps):
    text, mask, _, _ = _conditioning()
    noise = torch.randn(B, C, H, W, generator=_gen(5))
    guidance = torch.full((B,), 4.5 * 0.1)
    g_ours, g_ref = _gen(42), _gen(42)
    ours_model, ref_model = FakeModel(t_scale=1.0), FakeModel(t_scale=1.0)
    ours = scm(ours_model, noise, text, mask, steps=steps, guidance=guidance, generator=g_ours)
    ref = _diffusers_scm(ref_model, noise, text, mask, guidance, steps, g_ref)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    for a, b in zip(ours_model.times, ref_model.times, strict=True):
        torch.testing.assert_close(a, b)
    # the generator advanced exactly as diffusers' (one draw per step, the last included)
    assert torch.equal(torch.randn(3, generator=g_ours), torch.randn(3, generator=g_ref))
    if steps > 1:  # fresh noise between steps matters
        other = scm(
            FakeModel(1.0), noise, text, mask, steps=steps, guidance=guidance, generator=_gen(7)
        )
        assert not torch.allclose(other, ours, atol=1e-4)


def test_scm_generator_list_and_timesteps():
    text, mask, _, _ = _conditioning()
    noise = torch.randn(B, C, H, W, generator=_gen(6))
    ours = scm(FakeModel(1.0), noise, text, mask, steps=3, generator=[_gen(1), _gen(2)])
    ref = _diffusers_scm(FakeModel(1.0), noise, text, mask, None, 3, [_gen(1), _gen(2)])
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(scm_timesteps(2), torch.tensor([1.5708, 1.3, 0.0]))
    torch.testing.assert_close(scm_timesteps(4), torch.linspace(1.5708, 0, 5))
    with pytest.raises(SanakitError):
        scm(FakeModel(1.0), noise, text, mask, steps=3, generator=[_gen(1)] * 3)


# --- Gaussian data: the exact velocity field and the exact ODE map -------------------------------

MU, STD = 0.7, 0.3


def _var(s: float) -> float:
    """Var of x_sigma = (1 - s) x0 + s eps for x0 ~ N(MU, STD^2)."""
    return (1 - s) ** 2 * STD**2 + s**2


def _exact_model(x, t, text, mask):
    """E[eps - x0 | x_sigma] = -MU + (s - (1 - s) STD^2) / V(s) * (x - (1 - s) MU), s = t / 1000."""
    s = (t.double() / 1000).view(-1, 1, 1, 1)
    var = (1 - s) ** 2 * STD**2 + s**2
    return (-MU + (s - (1 - s) * STD**2) / var * (x.double() - (1 - s) * MU)).float()


def _gaussian_error(sampler, steps: int, kind: str, shift: float = 1.0, n: int = 256) -> float:
    """Max |sampler(z) - (MU + STD z)|, started from the exact state at the grid's first sigma."""
    z = torch.randn(1, 1, 1, n, generator=_gen(0))
    s0 = flow_sigmas(steps, shift, kind)[0].item()
    x_start = (1 - s0) * MU + math.sqrt(_var(s0)) * z  # exact ODE state at sigma_0 (1 for Euler)
    text, mask = torch.zeros(1, 1, 1), torch.ones(1, 1)
    extra = {"discrete_timesteps": False} if sampler is flow_dpm_solver else {}
    out = sampler(_exact_model, x_start, text, mask, steps=steps, shift=shift, **extra)
    return (out - (MU + STD * z)).abs().max().item()


def test_gaussian_samplers_converge_to_the_data_distribution():
    # started from pure noise z (the DPM grid starts at sigma = shift(0.999), close enough)
    z = torch.randn(1, 1, 64, 64, generator=_gen(11))
    text, mask = torch.zeros(1, 1, 1), torch.ones(1, 1)
    # the exact field needs the exact time: DPM without diffusers' integer timesteps
    runs = ((flow_euler, 500, {}), (flow_dpm_solver, 100, {"discrete_timesteps": False}))
    for sampler, steps, extra in runs:
        for shift in (1.0, 3.0):
            out = sampler(_exact_model, z, text, mask, steps=steps, shift=shift, **extra)
            assert out.mean().item() == pytest.approx(MU + STD * z.mean().item(), abs=1e-3)
            assert out.std().item() == pytest.approx(STD * z.std().item(), rel=1.5e-2)
            assert out.std().item() == pytest.approx(STD, rel=3e-2)
    # with a shifted grid too, from the exact start state
    err_20 = _gaussian_error(flow_dpm_solver, 20, "dpm", shift=3.0)
    assert _gaussian_error(flow_dpm_solver, 200, "dpm", shift=3.0) < min(err_20 / 10, 5e-3)


def test_dpm_solver_20_beats_euler_50():
    err_dpm = _gaussian_error(flow_dpm_solver, 20, "dpm")
    err_euler = _gaussian_error(flow_euler, 50, "euler")
    assert err_dpm < err_euler / 2


def test_convergence_orders():
    def slope(sampler, kind, steps):
        errs = [_gaussian_error(sampler, n, kind) for n in steps]
        assert all(b < a for a, b in zip(errs, errs[1:]))
        return -np.polyfit(np.log(steps), np.log(errs), 1)[0]

    assert 0.7 <= slope(flow_euler, "euler", [16, 32, 64, 128]) <= 1.3
    # on diffusers' grid (uniform in sigma from 0.999 to 0) the end steps in lambda shrink only
    # slowly, so the order approaches 2 from below (about 1.75 over this range)
    assert 1.6 <= slope(flow_dpm_solver, "dpm", [128, 256, 512, 1024]) <= 2.6
