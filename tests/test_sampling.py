"""The one sampling path (sanakit.sampling): generation and validation give the same images,
and a dense-time model (timestep_scale 0.001) samples as diffusers' SanaPipeline samples it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import SanaPipeline

from sanakit.pipeline import TextToImage
from sanakit.sample import flow_timesteps
from sanakit.train.validation import PromptEmbeddings, sample_images
from tests.helpers.tiny_pipeline import tiny_transformer_config, write_tiny_pipeline
from tests.test_pipeline import PROMPTS, _diff, _gens, _load_ref, assert_same_images

SIZE = dict(height=64, width=96, use_resolution_binning=False)


@pytest.fixture(scope="module")
def dense_dir(tmp_path_factory):
    """The tiny Sana pipeline with timestep_scale 0.001 (Sana-Sprint teacher's dense time)."""
    config = tiny_transformer_config().replace(timestep_scale=0.001)
    return write_tiny_pipeline(tmp_path_factory.mktemp("dense"), transformer_config=config)


@pytest.fixture(scope="module")
def dense(dense_dir):
    return TextToImage.from_pretrained(dense_dir, dtype=torch.float32)


def _record_times(model: torch.nn.Module) -> tuple[list[torch.Tensor], object]:
    times: list[torch.Tensor] = []
    handle = model.register_forward_pre_hook(lambda m, args: times.append(args[1].clone()))
    return times, handle


def test_dense_time_model_matches_diffusers(dense, dense_dir):
    ref = _load_ref(SanaPipeline, dense_dir)
    assert ref.transformer.config.timestep_scale == 0.001
    times, handle = _record_times(dense.transformer)
    try:
        got = dense(PROMPTS, steps=4, seed=[3, 4], guidance_scale=4.5, **SIZE)
    finally:
        handle.remove()
    want = ref(
        PROMPTS, num_inference_steps=4, generator=_gens([3, 4]), guidance_scale=4.5, **SIZE
    ).images
    assert_same_images(got, want)
    # the network saw t = floor(1000 sigma) * 0.001 in [0, 1], not 1000 sigma
    expected = flow_timesteps(4, 3.0, "dpm", timestep_scale=0.001)
    assert len(times) == 4 and float(max(t.max() for t in times)) <= 1.0
    for t, e in zip(times, expected):
        torch.testing.assert_close(t, e.expand_as(t))


def test_dense_time_is_not_the_sana_time(dense, tiny_pipeline_dir):
    # sensitivity: the same weights (same seed) fed 1000 sigma (timestep_scale 1) differ
    ours = TextToImage.from_pretrained(tiny_pipeline_dir, dtype=torch.float32)
    kwargs = dict(steps=4, seed=3, guidance_scale=4.5, **SIZE)
    assert _diff(ours(PROMPTS[0], **kwargs)[0], dense(PROMPTS[0], **kwargs)[0])[0] > 2


@pytest.mark.parametrize("guidance", [1.0, 4.5])
def test_validation_samples_what_generate_samples(dense, guidance):
    # validation (and the demo) pass cached embeddings to the same sampling path: with the
    # embeddings generate computes, the same seed gives the same pixels
    encoder = dense.text_encoder
    text, mask = encoder.encode(PROMPTS)
    u_text, u_mask = encoder.encode_negative([""])
    embeds = PromptEmbeddings(["a", "b"], PROMPTS, text, mask, u_text, u_mask)
    times, handle = _record_times(dense.transformer)
    try:
        ours = sample_images(
            dense.transformer,
            dense.autoencoder,
            embeds,
            height=64,
            width=96,
            steps=3,
            guidance=guidance,
            seed=5,
            sampler="dpm",
            shift=3.0,
        )
    finally:
        handle.remove()
    want = dense(PROMPTS, steps=3, seed=[5, 5], guidance_scale=guidance, **SIZE)
    for a, b in zip(ours, want, strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    assert float(max(t.max() for t in times)) <= 1.0  # dense time in validation too
