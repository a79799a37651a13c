"""Presets: exact state-dict layout of the released checkpoints, parameter counts."""

from __future__ import annotations

import pytest
import torch
from accelerate import init_empty_weights

from sanakit.errors import SanakitError
from sanakit.models import SanaTransformer
from sanakit.presets import PRESETS, get_preset
from tests.models.oracle import diffusers_model

EXPECTED_PARAMS = {  # billions, from the model names
    "sana-600m": 0.6,
    "sana-1600m": 1.6,
    "sana-1600m-2k": 1.6,
    "sana-1600m-4k": 1.6,
    "sana-1.5-1600m": 1.6,
    "sana-1.5-4800m": 4.8,
    "sana-sprint-600m": 0.6,
    "sana-sprint-1600m": 1.6,
    "sana-sprint-teacher-1600m": 1.6,
}


@pytest.mark.parametrize("name", sorted(EXPECTED_PARAMS))
def test_preset_matches_diffusers_layout_and_size(name: str) -> None:
    config = get_preset(name)
    with torch.device("meta"):
        ours = SanaTransformer(config)
    with init_empty_weights():
        ref = diffusers_model(config)
    ours_shapes = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    ref_shapes = {
        k: tuple(v.shape) for k, v in ref.state_dict().items() if k != "patch_embed.pos_embed"
    }
    assert ours_shapes == ref_shapes
    count = ours.num_parameters()
    print(f"{name}: {count / 1e9:.3f}e9 parameters")
    assert abs(count / 1e9 - EXPECTED_PARAMS[name]) / EXPECTED_PARAMS[name] < 0.1


def test_tiny_preset_runs() -> None:
    model = SanaTransformer(get_preset("tiny"))
    out = model(torch.randn(1, 32, 8, 8), torch.tensor([500.0]), torch.randn(1, 4, 32))
    assert out.shape == (1, 32, 8, 8)


def test_unknown_preset() -> None:
    assert "tiny" in PRESETS
    with pytest.raises(SanakitError, match="unknown model preset 'sana-9b'"):
        get_preset("sana-9b")
