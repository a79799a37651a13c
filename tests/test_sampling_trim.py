"""sample_latents trims the text padding once per run (issue 19): the model sees the window cut
at the longest prompt of cond and uncond together, no mask when every kept token is valid, and
the latents equal sampling over the full window."""

from __future__ import annotations

import torch

from sanakit.models.sana import SanaTransformer
from sanakit.presets import tiny
from sanakit.sampling import Plan, sample_latents, seed_generators

CONFIG = tiny(in_channels=4, caption_channels=24)


def _plan(do_cfg: bool) -> Plan:
    return Plan("dpm", 3, 4.5 if do_cfg else 1.0, 3.0, do_cfg, (64, 64), (64, 64), (6, 4))


def _text(lengths, window: int = 10):
    g = torch.Generator().manual_seed(len(lengths))
    text = torch.randn(len(lengths), window, CONFIG.caption_channels, generator=g)
    mask = torch.zeros(len(lengths), window, dtype=torch.long)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    return text, mask


def _run(model, cond, uncond, do_cfg):
    seen = []
    forward = model.forward

    def spy(x, t, text, mask=None, guidance=None):
        seen.append((text.shape[1], None if mask is None else mask.shape[1]))
        return forward(x, t, text, mask, guidance)

    model.forward = spy
    try:
        latents = sample_latents(model, cond, uncond, _plan(do_cfg), seed_generators([1, 2]))
    finally:
        del model.forward
    return latents, seen


def test_sampler_trims_cond_and_uncond_once_and_matches_the_full_window() -> None:
    torch.manual_seed(0)
    model = SanaTransformer(CONFIG).eval()
    cond, uncond = _text([3, 6]), _text([2])  # uncond broadcast over the batch
    latents, seen = _run(model, cond, uncond, do_cfg=True)
    assert seen == [(6, 6)] * 3  # 3 steps, each one batched CFG call, window cut at 6

    # the same run with the full window: padding is masked, so the result is the same
    def untrimmed(x, t, text, mask=None, guidance=None):
        return SanaTransformer.forward(model, x, t, full_text, full_mask, guidance)

    full_text = torch.cat([uncond[0].expand(2, -1, -1), cond[0]])
    full_mask = torch.cat([uncond[1].expand(2, -1), cond[1]])
    model.forward = untrimmed
    try:
        reference = sample_latents(model, cond, uncond, _plan(True), seed_generators([1, 2]))
    finally:
        del model.forward
    torch.testing.assert_close(latents, reference, rtol=1e-5, atol=1e-5)


def test_all_valid_text_reaches_the_model_without_a_mask() -> None:
    torch.manual_seed(0)
    model = SanaTransformer(CONFIG).eval()
    _, seen = _run(model, _text([4, 4]), None, do_cfg=False)
    assert seen == [(4, None)] * 3
