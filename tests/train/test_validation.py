"""sanakit.train.validation: eval mode, the flow shift validation and the export use, and the
model time training feeds (the same rule as generation, tests/test_sampling.py)."""

from __future__ import annotations

import json

import pytest
import torch

from sanakit.errors import SanakitError
from sanakit.flow import auto_shift, sample_training_sigmas
from sanakit.models import load_transformer
from sanakit.pipeline import read_scheduler_config
from sanakit.train import validation as validation_module
from sanakit.train.config import TrainSection, ValidationSection, run_config_from_dict
from sanakit.train.export import write_pipeline
from sanakit.train.objective import eval_loss, step_generator
from sanakit.train.trainer import Trainer
from sanakit.train.validation import eval_mode, validation_shift


@pytest.mark.parametrize("training", [True, False])
def test_eval_mode_restores_the_previous_mode_even_on_errors(training):
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.5))
    model.train(training)
    with eval_mode(model) as inside:
        assert inside is model and not model.training and not model[1].training
    assert model.training is training and model[1].training is training
    with pytest.raises(RuntimeError), eval_mode(model):
        raise RuntimeError("sampling failed")
    assert model.training is training and model[1].training is training


# --- one flow shift: validation and the exported scheduler ---------------------------------------


def test_validation_shift_defaults_to_the_training_shift():
    assert validation_shift(ValidationSection(), TrainSection(max_steps=1), 64, 64, 32) == 1.0
    fixed = TrainSection(max_steps=1, flow_shift=3.0)
    assert validation_shift(ValidationSection(), fixed, 1024, 1024, 32) == 3.0
    assert validation_shift(ValidationSection(flow_shift=2.0), fixed, 1024, 1024, 32) == 2.0
    # auto_shift: the resolution-dependent value of the validation latent, not 1.0
    auto = TrainSection(max_steps=1, auto_shift=True)
    assert validation_shift(ValidationSection(), auto, 1024, 512, 32) == auto_shift(32 * 16)
    assert validation_shift(ValidationSection(), auto, 2048, 2048, 32) == auto_shift(64 * 64)
    with pytest.raises(SanakitError, match="flow_shift must be > 0"):
        ValidationSection(flow_shift=0.0)


def test_trainer_validates_with_the_auto_shift(run_dict, monkeypatch):
    run_dict["train"].update(max_steps=1, auto_shift=True)
    run_dict["validation"] = {"prompts": ["a red square"], "steps": 2, "resolutions": ["32x64"]}
    shifts = []
    real = validation_module.sample_images

    def spy(*args, **kwargs):
        shifts.append(kwargs["shift"])
        return real(*args, **kwargs)

    monkeypatch.setattr(validation_module, "sample_images", spy)
    trainer = Trainer(run_config_from_dict(run_dict))
    trainer.fit()
    # pixel-shuffle factor 4: a 64x32 (HxW) image is an 16x8 latent
    assert shifts == [auto_shift(16 * 8)] and shifts[0] != 1.0
    assert (trainer.out / "validation" / "step-00000001" / "prompt-00_32x64.png").is_file()


@pytest.mark.parametrize(
    ("validation", "train", "expected"),
    [
        ({}, {}, 1.0),
        ({"flow_shift": 2.5}, {"flow_shift": 4.0}, 2.5),
        ({}, {"flow_shift": 4.0}, 4.0),
        ({"resolutions": ["512x256", "64x64"]}, {"auto_shift": True}, auto_shift(16 * 8)),
    ],
)
def test_export_scheduler_gets_the_validation_shift(
    tiny_pipeline_dir, tmp_path, validation, train, expected
):
    config = run_config_from_dict(
        {
            "model": {"base": str(tiny_pipeline_dir)},
            "data": {"datasets": [{"id": "x", "path": str(tmp_path)}]},
            "train": {"max_steps": 1, **train},
            "validation": validation,
            "output": {"dir": str(tmp_path / "out"), "export_dtype": "fp32"},
        }
    )
    model = load_transformer(tiny_pipeline_dir / "transformer")
    folder = write_pipeline(config, model, tmp_path / "final")
    written = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    base = json.loads((tiny_pipeline_dir / "scheduler" / "scheduler_config.json").read_text())
    assert base["flow_shift"] == 3.0  # the base's own shift is not what the run validated with
    assert written == {**base, "flow_shift": pytest.approx(expected)}
    assert read_scheduler_config(folder / "scheduler").flow_shift == pytest.approx(expected)


# --- one model time: training feeds a dense-time model t = sigma -----------------------------------


@pytest.mark.parametrize("timestep_scale", [1.0, 0.001])
def test_training_feeds_the_model_time_of_timestep_scale(run_dict, timestep_scale):
    run_dict["model"]["preset_overrides"] = {"timestep_scale": timestep_scale}
    run_dict["train"]["flow_shift"] = 2.0
    trainer = Trainer(run_config_from_dict(run_dict))
    assert trainer.model.config.timestep_scale == timestep_scale
    seen = []
    handle = trainer.model.register_forward_pre_hook(lambda m, args: seen.append(args[1]))
    batch = next(trainer.loader)
    try:
        trainer.compute_loss(batch, 0)
        with eval_mode(trainer.model):
            trainer_eval = eval_loss(
                trainer.model,
                batch,
                (0.25,),
                0,
                trainer.device,
                timestep_scale=trainer.model.config.timestep_scale,
            )
    finally:
        handle.remove()
    t = trainer.config.train
    sigmas = torch.cat(
        [
            sample_training_sigmas(
                1, method=t.timestep_sampling, shift=2.0, generator=step_generator(0, 0, 0, i)
            )
            for i in range(len(batch["ids"]))
        ]
    )
    torch.testing.assert_close(seen[0], sigmas * 1000 * timestep_scale)
    torch.testing.assert_close(seen[1], torch.full_like(sigmas, 250 * timestep_scale))
    assert set(trainer_eval) == {0.25}
