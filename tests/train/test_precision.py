"""The trainer's CPU precision: ``mixed_precision = "auto"`` (the default) follows the CPU."""

from __future__ import annotations

import json
import math

import pytest
import torch

from sanakit import hardware
from sanakit.hardware import CpuInfo
from sanakit.train.config import TrainSection, run_config_from_dict
from sanakit.train.trainer import Trainer


def test_auto_is_the_default():
    assert TrainSection(max_steps=1).mixed_precision == "auto"


@pytest.mark.parametrize(
    ("native", "precision", "dtype"), [(False, "no", None), (True, "bf16", torch.bfloat16)]
)
def test_trainer_resolves_auto_by_the_cpu(monkeypatch, run_dict, native, precision, dtype):
    flags = frozenset({"avx512_bf16"} if native else {"avx2"})
    monkeypatch.setattr(hardware, "cpu_info", lambda: CpuInfo("Mock CPU", flags, native))
    del run_dict["train"]["mixed_precision"]
    trainer = Trainer(run_config_from_dict(run_dict))
    assert trainer.precision == precision
    assert trainer.autocast_dtype is dtype
    # the model runs in that precision (each Trainer chooses its own, also the second in a process)
    seen = []
    trainer.model.proj_out.register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    assert trainer.train_step()["finite"]
    assert seen == [dtype or torch.float32]


def test_loss_scaler_overflow_skips_the_step_without_counting_it(run_dict):
    """fp16's loss scaler (GPU only; here its CPU twin): an overflowing gradient skips the update
    and halves the scale, and is not a NaN step; the scale is a checkpoint part."""
    run_dict["train"]["max_steps"] = 2
    trainer = Trainer(run_config_from_dict(run_dict))
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    param = trainer.model.proj_out.weight
    before = param.detach().clone()
    hook = param.register_hook(lambda grad: grad * math.inf)  # finite loss, overflowing gradient
    stats = trainer.train_step()
    hook.remove()
    assert not stats["finite"] and math.isfinite(stats["loss"])
    assert trainer.step == 0 and trainer.state.nonfinite_total == 0
    assert torch.equal(param, before) and trainer.scaler.get_scale() == 2.0**15
    assert trainer.train_step()["finite"] and trainer.step == 1
    assert not torch.equal(param, before)
    folder = trainer.save_checkpoint()
    assert json.loads((folder / "scaler.json").read_text())["scale"] == 2.0**15
