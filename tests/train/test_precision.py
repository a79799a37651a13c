"""The trainer's CPU precision: ``mixed_precision = "auto"`` (the default) follows the CPU."""

from __future__ import annotations

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
