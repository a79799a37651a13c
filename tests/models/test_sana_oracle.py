"""Our SanaTransformer vs diffusers' SanaTransformer2DModel on the same random weights (fp32)."""

from __future__ import annotations

import pytest
import torch
from diffusers import SanaTransformer2DModel

from sanakit.models import ModelConfig, load_transformer, save_transformer
from sanakit.presets import tiny
from tests.models.oracle import diffusers_model

BASE = tiny(in_channels=4, caption_channels=24).replace(num_layers=2, sample_size=8)

CASES = {
    "square": (BASE, (8, 8), 1, False),
    "non_square_padded_mask": (BASE, (6, 10), 2, True),
    "qk_norm_batch3": (BASE.replace(qk_norm="rms_norm_across_heads"), (8, 8), 3, True),
    "guidance_embeds": (
        BASE.replace(qk_norm="rms_norm_across_heads", guidance_embeds=True),
        (4, 6),
        2,
        True,
    ),
    "interpolation_scale": (BASE.replace(interpolation_scale=1.0), (8, 12), 2, True),
    "interpolation_scale_default_grid": (BASE.replace(interpolation_scale=2.0), (8, 8), 1, False),
    "patch2_bias_wide_cross": (
        BASE.replace(
            patch_size=2,
            attention_bias=True,
            num_cross_attention_heads=4,
            cross_attention_head_dim=16,
        ),
        (8, 4),
        2,
        True,
    ),
}


def _inputs(config: ModelConfig, size: tuple[int, int], batch: int, padded: bool, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, config.in_channels, *size, generator=g)
    t = torch.rand(batch, generator=g) * 1000
    text = torch.randn(batch, 7, config.caption_channels, generator=g)
    mask = torch.ones(batch, 7, dtype=torch.long)
    if padded:
        for i in range(batch):
            mask[i, 2 + i :] = 0
    guidance = torch.rand(batch, generator=g) * 5 if config.guidance_embeds else None
    return x, t, text, mask, guidance


def _reference_forward(ref: SanaTransformer2DModel, x, t, text, mask, guidance):
    return ref(
        x, encoder_hidden_states=text, timestep=t, guidance=guidance, encoder_attention_mask=mask
    ).sample


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def _randomise(model: torch.nn.Module, seed: int) -> None:
    """Perturb every parameter so zero-initialised ones (biases) are exercised too."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)


@pytest.mark.parametrize("name", list(CASES))
def test_diffusers_checkpoint_loads_and_matches(name: str, tmp_path) -> None:
    config, size, batch, padded = CASES[name]
    torch.manual_seed(0)
    ref = diffusers_model(config).eval()
    _randomise(ref, 1)
    ref.save_pretrained(tmp_path)
    ours = load_transformer(tmp_path).eval()

    x, t, text, mask, guidance = _inputs(config, size, batch, padded)
    out_ref = _reference_forward(ref, x, t, text, mask, guidance)
    out = ours(x, t, text, mask, guidance)
    assert out.shape == (batch, config.in_channels, *size)
    assert _rel(out, out_ref) <= 1e-5

    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(3))
    (out_ref * weight).sum().backward()
    (out * weight).sum().backward()
    ref_grads = {k: p.grad for k, p in ref.named_parameters()}
    # Some gradients are analytically zero (e.g. a key bias under softmax); measure those
    # against the model's gradient scale instead of their own round-off.
    floor = 1e-3 * max(g.abs().max() for g in ref_grads.values())
    for key, param in ours.named_parameters():
        assert param.grad is not None, key
        err = (param.grad - ref_grads[key]).abs().max()
        assert err <= 1e-4 * max(ref_grads[key].abs().max(), floor), key


@pytest.mark.parametrize(
    "name", ["non_square_padded_mask", "guidance_embeds", "interpolation_scale"]
)
def test_our_save_loads_in_diffusers(name: str, tmp_path) -> None:
    config, size, batch, padded = CASES[name]
    torch.manual_seed(0)
    ours = load_transformer_free(config)
    save_transformer(ours, tmp_path)
    ref, info = SanaTransformer2DModel.from_pretrained(tmp_path, output_loading_info=True)
    assert not any(
        info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs")
    )
    x, t, text, mask, guidance = _inputs(config, size, batch, padded, seed=5)
    with torch.no_grad():
        assert (
            _rel(
                ours.eval()(x, t, text, mask, guidance),
                _reference_forward(ref.eval(), x, t, text, mask, guidance),
            )
            <= 1e-5
        )


def load_transformer_free(config: ModelConfig):
    from sanakit.models import SanaTransformer

    model = SanaTransformer(config)
    _randomise(model, 2)
    return model


def test_dense_time_config_is_only_a_pipeline_setting() -> None:
    """timestep_scale (dense time) is applied by the caller (flow.model_time, as diffusers'
    SanaPipeline does), never inside the network: the same weights give the same output."""
    torch.manual_seed(0)
    dense = load_transformer_free(BASE.replace(timestep_scale=0.001)).eval()
    plain = load_transformer_free(BASE).eval()
    plain.load_state_dict(dense.state_dict())
    x, t, text, mask, _ = _inputs(BASE, (8, 8), 2, True)
    with torch.no_grad():
        torch.testing.assert_close(dense(x, t, text, mask), plain(x, t, text, mask), rtol=0, atol=0)
