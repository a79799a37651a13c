"""G/D alternation bookkeeping of LADD distillation (spec U11) on a tiny run."""

from __future__ import annotations

import math

import pytest
import torch

from sanakit.sprint.trainer import DistillTrainer
from sanakit.tiny import build_text_model, build_tokenizer, save_text_components
from sanakit.train.config import run_config_from_dict
from tests.train.conftest import write_images


@pytest.fixture(scope="module")
def trainer(tmp_path_factory) -> DistillTrainer:
    root = tmp_path_factory.mktemp("alternation")
    tokenizer = build_tokenizer()
    text = build_text_model(tokenizer.vocab_size, hidden_size=32, layers=1, heads=2, seed=0)
    save_text_components(root / "text", tokenizer, text)
    config = run_config_from_dict(
        {
            "model": {
                "preset": "tiny",
                "preset_overrides": {"qk_norm": "rms_norm_across_heads", "timestep_scale": 0.001},
                "autoencoder": "pixel-shuffle",
                "pixel_shuffle_factor": 4,
                "text_encoder": str(root / "text"),
                "text_max_length": 16,
                "instruction": ["Describe the image:"],
                "encoder_dtype": "fp32",
            },
            "data": {
                "datasets": [
                    {
                        "id": "shapes",
                        "path": str(write_images(root / "images")),
                        "resolution": 32,
                        "resolution_type": "pixel",
                    }
                ],
                "cache_dir": str(root / "cache"),
                "latent_dtype": "fp32",
                "text_dtype": "fp32",
            },
            "train": {
                "max_steps": 100,
                "batch_size": 2,
                "lr": 1e-4,
                "lr_scheduler": "linear",
                "warmup_steps": 0,
                "mixed_precision": "no",
                "seed": 0,
            },
            "output": {"dir": str(root / "out"), "log_with": "none"},
            "distill": {"tangent_warmup_steps": 4, "head_block_ids": [0, 1]},
        }
    )
    return DistillTrainer(config)


def _d_steps(trainer: DistillTrainer) -> int:
    states = trainer.d_optimizer.state.values()
    return max((int(s["step"]) for s in states if "step" in s), default=0)


def test_u11_updates_alternate_and_only_g_moves_the_schedule(trainer: DistillTrainer) -> None:
    phases, schedule, d_steps = [], [], []
    for _ in range(10):
        phases.append(trainer.phase)
        stats = trainer.train_step()
        assert stats["finite"] and stats["phase"] == phases[-1]
        schedule.append(trainer.scheduler.last_epoch)
        d_steps.append(_d_steps(trainer))
    assert phases == ["G", "D"] * 5
    assert trainer.step == 10  # global step counts G and D updates
    assert schedule == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]  # the LR schedule steps on G only
    assert d_steps == [0, 1, 1, 2, 2, 3, 3, 4, 4, 5]
    assert all(p.grad is None for p in trainer.params + trainer.d_params)


def test_u11_a_non_finite_step_skips_both_sides_and_keeps_the_phase(
    trainer: DistillTrainer, monkeypatch
) -> None:
    for _ in range(2):
        step, phase = trainer.step, trainer.phase
        # parameters (spectral norm's power-iteration vectors may move in a D forward)
        heads = {k: v.detach().clone() for k, v in trainer.disc.named_parameters()}
        student = {k: v.clone() for k, v in trainer.student.state_dict().items()}
        real = DistillTrainer.compute_loss

        def nan_loss(self, batch, micro, real=real):
            loss, extra = real(self, batch, micro)
            return loss * math.nan, extra

        monkeypatch.setattr(DistillTrainer, "compute_loss", nan_loss)
        stats = trainer.train_step()
        monkeypatch.undo()
        assert not stats["finite"] and stats["phase"] == phase
        assert trainer.step == step and trainer.phase == phase
        assert all(p.grad is None for p in trainer.params + trainer.d_params)
        now = dict(trainer.disc.named_parameters())
        assert all(torch.equal(v, now[k]) for k, v in heads.items())
        assert all(torch.equal(v, trainer.student.state_dict()[k]) for k, v in student.items())
        trainer.train_step()  # a finite step moves on to the other phase
        assert trainer.step == step + 1 and trainer.phase != phase
