"""TextToImage end to end against diffusers' SanaPipeline / SanaSprintPipeline (the oracle).

Both pipelines load the same tiny random folder (tests/helpers/tiny_pipeline.py) in fp32 and
get the same prompts, seeds (one CPU generator per image), steps and guidance; the final uint8
images must agree to mean |diff| <= 0.5 and max |diff| <= 3 (rounding of fp32 noise).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import SanaPipeline, SanaSprintPipeline
from diffusers.image_processor import PixArtImageProcessor

from sanakit.errors import SanakitError
from sanakit.pipeline import (
    SamplerSettings,
    TextToImage,
    read_scheduler_config,
    resize_and_center_crop,
    to_pil,
)

PROMPTS = ["a small red circle above a blue square", "A fluffy white cat at night"]
MEAN_TOL, MAX_TOL = 0.5, 3


def _gens(seeds):
    return [torch.Generator("cpu").manual_seed(s) for s in seeds]


def _diff(a, b) -> tuple[float, int]:
    d = np.abs(np.asarray(a, dtype=np.int32) - np.asarray(b, dtype=np.int32))
    return float(d.mean()), int(d.max())


def assert_same_images(ours, ref) -> None:
    assert len(ours) == len(ref)
    for a, b in zip(ours, ref):
        assert a.size == b.size
        mean, peak = _diff(a, b)
        assert mean <= MEAN_TOL and peak <= MAX_TOL, (mean, peak)
        assert np.asarray(a).std() > 10  # a real image, not a saturated/flat one


def _load_ref(cls, folder):
    pipe = cls.from_pretrained(folder, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def dpm(tiny_pipeline_dir):
    ours = TextToImage.from_pretrained(tiny_pipeline_dir, dtype=torch.float32)
    return ours, _load_ref(SanaPipeline, tiny_pipeline_dir)


@pytest.fixture(scope="module")
def euler(tiny_euler_pipeline_dir):
    ours = TextToImage.from_pretrained(tiny_euler_pipeline_dir, dtype=torch.float32)
    return ours, _load_ref(SanaPipeline, tiny_euler_pipeline_dir)


@pytest.fixture(scope="module")
def sprint(tiny_sprint_pipeline_dir):
    ours = TextToImage.from_pretrained(tiny_sprint_pipeline_dir, dtype=torch.float32)
    return ours, _load_ref(SanaSprintPipeline, tiny_sprint_pipeline_dir)


def test_settings_come_from_the_scheduler_config(dpm, euler, sprint):
    assert dpm[0].settings == SamplerSettings("dpm", flow_shift=3.0)
    assert euler[0].settings == SamplerSettings("euler", flow_shift=3.0)
    assert sprint[0].settings == SamplerSettings("scm", sigma_data=0.5)


def test_dpm_batch_cfg_matches_diffusers(dpm):
    ours, ref = dpm
    steps_seen = []
    kwargs = dict(height=96, width=128, guidance_scale=4.5, use_resolution_binning=False)
    got = ours(
        PROMPTS, steps=4, seed=7, callback=lambda i, n, x: steps_seen.append((i, n)), **kwargs
    )
    want = ref(PROMPTS, num_inference_steps=4, generator=_gens([7, 7]), **kwargs).images
    assert_same_images(got, want)
    assert got[0].size == (128, 96)
    assert steps_seen == [(i, 4) for i in range(4)]
    # Sensitivity: same seed, other prompt -> another image; wrong flow shift -> far off.
    assert _diff(got[0], got[1])[0] > 5
    shifted = ours(PROMPTS[:1], steps=4, seed=7, flow_shift=1.0, **kwargs)
    assert _diff(shifted[0], want[0])[0] > 2 * MEAN_TOL


def test_euler_with_negative_prompt_matches_diffusers(euler):
    ours, ref = euler
    kwargs = dict(height=64, width=96, guidance_scale=3.0, use_resolution_binning=False)
    negative = "blurry, low quality"
    got = ours(PROMPTS, steps=3, seed=[1, 2], negative_prompt=negative, **kwargs)
    want = ref(
        PROMPTS, num_inference_steps=3, generator=_gens([1, 2]), negative_prompt=negative, **kwargs
    ).images
    assert_same_images(got, want)
    plain = ours(PROMPTS[:1], steps=3, seed=1, **kwargs)
    assert _diff(plain[0], got[0])[0] > 2 * MEAN_TOL  # the negative prompt is used


def test_resolution_binning_matches_diffusers(dpm):
    # sample_size 32: both bin 200x160 (ratio 1.25) to the 1024-px table's (1088, 896), sample
    # there, then resize and centre-crop back to 200x160.
    ours, ref = dpm
    assert ours.binned_size(200, 160) == (1088, 896)
    got = ours(PROMPTS[:1], height=200, width=160, steps=2, seed=3)
    want = ref(PROMPTS[:1], height=200, width=160, num_inference_steps=2, generator=_gens([3]))
    assert got[0].size == (160, 200)
    assert_same_images(got, want.images)


def test_num_images_per_prompt_matches_diffusers(dpm):
    ours, ref = dpm
    kwargs = dict(height=64, width=64, use_resolution_binning=False)
    got = ours(PROMPTS[0], steps=2, seed=5, num_images_per_prompt=2, **kwargs)
    want = ref(
        PROMPTS[0],
        num_inference_steps=2,
        generator=_gens([5, 6]),
        num_images_per_prompt=2,
        **kwargs,
    ).images
    assert_same_images(got, want)


def test_a_seed_gives_the_same_image_in_any_batch(dpm):
    ours, _ = dpm
    kwargs = dict(height=64, width=64, steps=2, use_resolution_binning=False)
    alone = ours(PROMPTS[1], seed=11, **kwargs)[0]
    batched = ours(PROMPTS, seed=[4, 11], **kwargs)[1]
    assert _diff(alone, batched)[1] <= 1


def test_sprint_matches_diffusers(sprint):
    ours, ref = sprint
    kwargs = dict(height=96, width=64, guidance_scale=4.5, use_resolution_binning=False)
    got = ours(PROMPTS, seed=[0, 9], **kwargs)  # scm's default: 2 steps
    want = ref(PROMPTS, num_inference_steps=2, generator=_gens([0, 9]), **kwargs).images
    assert_same_images(got, want)
    # Guidance reaches the model as 4.5 * guidance_embeds_scale; unscaled (= 45 scaled) is far off.
    unscaled = ours(PROMPTS[:1], seed=0, **{**kwargs, "guidance_scale": 45.0})
    assert _diff(unscaled[0], want[0])[0] > 2 * MEAN_TOL


@pytest.mark.parametrize(
    ("which", "kwargs", "message"),
    [
        ("dpm", {"sampler": "scm"}, "needs a Sana-Sprint model"),
        ("sprint", {"sampler": "dpm"}, "samples with 'scm'"),
        ("sprint", {"negative_prompt": "ugly"}, "classifier-free guidance"),
        ("dpm", {"negative_prompt": "ugly", "guidance_scale": 1.0}, "classifier-free guidance"),
        ("sprint", {"flow_shift": 3.0}, "not to scm"),
        ("dpm", {"height": 100, "use_resolution_binning": False}, "multiple"),
        ("dpm", {"seed": 1, "generator": torch.Generator()}, "either seed or generator"),
        ("dpm", {"seed": [1, 2, 3]}, "3 seeds for 1 images"),
        ("dpm", {"steps": 0}, "steps must be a positive integer"),
        ("dpm", {"sampler": "heun"}, "unknown sampler"),
    ],
)
def test_bad_arguments_are_one_line_errors(dpm, sprint, which, kwargs, message):
    pipe = {"dpm": dpm, "sprint": sprint}[which][0]
    with pytest.raises(SanakitError, match=message):
        pipe("a cat", **{"height": 64, "width": 64, **kwargs})


def test_empty_prompt_list_is_an_error(dpm):
    with pytest.raises(SanakitError, match="no prompts"):
        dpm[0]([])


def test_from_pretrained_errors(tmp_path, tiny_pipeline_dir):
    with pytest.raises(SanakitError, match="model folder not found"):
        TextToImage.from_pretrained(tmp_path / "missing")
    (tmp_path / "vae").mkdir()
    with pytest.raises(SanakitError, match="no transformer/ subfolder"):
        TextToImage.from_pretrained(tmp_path)


def _write(tmp_path, config):
    (tmp_path / "scheduler_config.json").write_text(json.dumps(config))
    return tmp_path


def test_read_scheduler_config(tmp_path):
    dpm = {"_class_name": "DPMSolverMultistepScheduler", "use_flow_sigmas": True}
    dpm |= {"prediction_type": "flow_prediction", "flow_shift": 2.5}
    assert read_scheduler_config(_write(tmp_path, dpm)) == SamplerSettings("dpm", flow_shift=2.5)
    euler = {"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 6.0}
    assert read_scheduler_config(_write(tmp_path, euler)).flow_shift == 6.0
    scm = {"_class_name": "SCMScheduler", "sigma_data": 0.25}
    assert read_scheduler_config(_write(tmp_path, scm)) == SamplerSettings("scm", sigma_data=0.25)
    with pytest.raises(SanakitError, match="use_karras_sigmas=True"):
        read_scheduler_config(_write(tmp_path, {**dpm, "use_karras_sigmas": True}))
    with pytest.raises(SanakitError, match="use_flow_sigmas=False"):
        read_scheduler_config(_write(tmp_path, {"_class_name": "DPMSolverMultistepScheduler"}))
    with pytest.raises(SanakitError, match="'DDIMScheduler' is not supported"):
        read_scheduler_config(_write(tmp_path, {"_class_name": "DDIMScheduler"}))


@pytest.mark.parametrize(("height", "width"), [(40, 72), (96, 50), (33, 33)])
def test_resize_and_crop_and_to_pil_equal_diffusers(height, width):
    g = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, 64, 48, generator=g) * 1.2  # some values outside [-1, 1]
    ref = PixArtImageProcessor.resize_and_crop_tensor(images, width, height)
    got = resize_and_center_crop(images, height, width)
    assert got.shape == (2, 3, height, width)
    torch.testing.assert_close(got, ref, rtol=0, atol=0)
    want = PixArtImageProcessor(vae_scale_factor=32).postprocess(ref, output_type="pil")
    for a, b in zip(to_pil(got), want):
        assert np.array_equal(np.asarray(a), np.asarray(b))
