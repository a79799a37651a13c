"""Named model configs: the released Sana checkpoints (as in their diffusers ``config.json``)
and a ``tiny`` config for tests and the demo. Plain functions returning `ModelConfig`.

Sources: diffusers' ``scripts/convert_sana_to_diffusers.py`` (layer counts, widths, qk_norm,
interpolation_scale per resolution: None at 512/1024 px, 1.0 at 2K, 2.0 at 4K) and the
Sana-Sprint teacher note (qk_norm + dense time, timestep_scale 0.001).
"""

from __future__ import annotations

from collections.abc import Callable

from sanakit.errors import SanakitError
from sanakit.models.config import ModelConfig

# Sana-1600M: 20 blocks of width 2240 (70 heads x 32); cross-attention 20 x 112.
_WIDE = dict(
    num_attention_heads=70,
    attention_head_dim=32,
    num_cross_attention_heads=20,
    cross_attention_head_dim=112,
    cross_attention_dim=2240,
)
# Sana-600M: 28 blocks of width 1152 (36 heads x 32); cross-attention 16 x 72.
_NARROW = dict(
    num_attention_heads=36,
    attention_head_dim=32,
    num_cross_attention_heads=16,
    cross_attention_head_dim=72,
    cross_attention_dim=1152,
)
_QK = "rms_norm_across_heads"


def sana_600m(resolution: int = 1024) -> ModelConfig:
    return ModelConfig(**_NARROW, num_layers=28, sample_size=resolution // 32)


def sana_1600m(resolution: int = 1024) -> ModelConfig:
    return ModelConfig(**_WIDE, num_layers=20, sample_size=resolution // 32)


def sana_1600m_2k() -> ModelConfig:
    return ModelConfig(**_WIDE, num_layers=20, sample_size=64, interpolation_scale=1.0)


def sana_1600m_4k() -> ModelConfig:
    return ModelConfig(**_WIDE, num_layers=20, sample_size=128, interpolation_scale=2.0)


def sana_15_1600m() -> ModelConfig:
    return ModelConfig(**_WIDE, num_layers=20, sample_size=32, qk_norm=_QK)


def sana_15_4800m() -> ModelConfig:
    return ModelConfig(**_WIDE, num_layers=60, sample_size=32, qk_norm=_QK)


def sana_sprint_600m() -> ModelConfig:
    return ModelConfig(**_NARROW, num_layers=28, sample_size=32, qk_norm=_QK, guidance_embeds=True)


def sana_sprint_1600m() -> ModelConfig:
    return ModelConfig(**_WIDE, num_layers=20, sample_size=32, qk_norm=_QK, guidance_embeds=True)


def sana_sprint_teacher_1600m() -> ModelConfig:
    """The Sana-Sprint teacher: Sana-1600M with qk_norm and dense time (``timestep_scale`` 0.001:
    the embedder sees the flow time in [0, 1], NVlabs' ``timestep_norm_scale_factor`` 1000)."""
    return sana_15_1600m().replace(timestep_scale=0.001)


def tiny(in_channels: int = 32, caption_channels: int = 32) -> ModelConfig:
    """A few-layer model for tests and the CPU demo (patch 1, hidden 64 = 2 heads x 32)."""
    return ModelConfig(
        in_channels=in_channels,
        out_channels=in_channels,
        num_attention_heads=2,
        attention_head_dim=32,
        num_layers=2,
        num_cross_attention_heads=2,
        cross_attention_head_dim=32,
        cross_attention_dim=64,
        caption_channels=caption_channels,
        sample_size=8,
    )


def demo(in_channels: int = 48, caption_channels: int = 64) -> ModelConfig:
    """The ``sanakit demo`` model: 4 layers, hidden 128 (4 heads x 32), patch 1, for 8x8x48
    pixel-shuffled 32 px images; ~1.2M parameters, trains on 2 CPU cores in minutes. It adds
    the 2D sin-cos position embedding (``interpolation_scale`` 1.0, as Sana's 2K/4K models):
    with so few layers, the Mix-FFN convolutions alone place shapes too slowly."""
    return ModelConfig(
        in_channels=in_channels,
        out_channels=in_channels,
        num_attention_heads=4,
        attention_head_dim=32,
        num_layers=4,
        num_cross_attention_heads=4,
        cross_attention_head_dim=32,
        cross_attention_dim=128,
        caption_channels=caption_channels,
        sample_size=8,
        interpolation_scale=1.0,
    )


PRESETS: dict[str, Callable[[], ModelConfig]] = {
    "sana-600m": sana_600m,
    "sana-1600m": sana_1600m,
    "sana-1600m-2k": sana_1600m_2k,
    "sana-1600m-4k": sana_1600m_4k,
    "sana-1.5-1600m": sana_15_1600m,
    "sana-1.5-4800m": sana_15_4800m,
    "sana-sprint-600m": sana_sprint_600m,
    "sana-sprint-1600m": sana_sprint_1600m,
    "sana-sprint-teacher-1600m": sana_sprint_teacher_1600m,
    "tiny": tiny,
    "demo": demo,
}


def get_preset(name: str) -> ModelConfig:
    if name not in PRESETS:
        raise SanakitError(f"unknown model preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]()
