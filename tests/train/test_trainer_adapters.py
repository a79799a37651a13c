"""LoRA and LoKr through the trainer: learning, frozen base, exact adapter resume, export."""

from __future__ import annotations

import pytest
import torch

from sanakit.adapters import load_adapter_into
from sanakit.models import SanaTransformer
from sanakit.train.config import run_config_from_dict
from sanakit.train.trainer import Trainer
from tests.train.test_trainer import fixed_noise_loss


@pytest.mark.parametrize(
    "method, section, lr",
    [
        ("lora", {"rank": 4, "alpha": 8.0}, 3e-3),
        ("lokr", {"factor": 4, "rank": 4, "alpha": 2.0}, 2e-2),
    ],
)
def test_adapter_training_learns_and_keeps_base_frozen(run_dict, method, section, lr) -> None:
    run_dict["train"].update(method=method, max_steps=25, lr=lr, ema={"decay": 0.9})
    run_dict["train"][method] = section
    run_dict["output"]["checkpoint_every"] = 25
    trainer = Trainer(run_config_from_dict(run_dict))
    base = {
        k: v.clone()
        for k, v in trainer.model.state_dict().items()
        if "lora_" not in k and "lycoris" not in k
    }
    before = fixed_noise_loss(trainer)
    final = trainer.fit()
    after = fixed_noise_loss(trainer)
    assert after < 0.9 * before, (before, after)
    now = trainer.model.state_dict()
    for key, value in base.items():
        assert torch.equal(now[key], value), key  # base weights untouched
    # the exported adapter applied to a fresh base reproduces the trained model
    fresh = SanaTransformer(trainer.model.config)
    fresh.load_state_dict(_base_state(base))
    load_adapter_into(fresh, final)
    x = torch.randn(2, trainer.model.config.in_channels, 8, 8)
    t = torch.tensor([300.0, 700.0])
    text = torch.randn(2, 5, trainer.model.config.caption_channels)
    with torch.no_grad():
        expected = trainer.model.eval()(x, t, text)
        torch.testing.assert_close(fresh.eval()(x, t, text), expected, rtol=1e-4, atol=1e-5)
        assert not torch.allclose(
            SanaTransformer(trainer.model.config).eval()(x, t, text), expected
        )
    assert (trainer.out / "final-ema").is_dir()


def _base_state(base: dict) -> dict:
    """Base weights under the plain model's key names (adapter wrappers add a base_layer level)."""
    plain = {}
    for key, value in base.items():
        plain[key.replace(".base_layer", "")] = value
    return plain
