"""LR schedules against closed forms; optimizer errors; EMA update rule."""

from __future__ import annotations

import math

import pytest
import torch

from sanakit.config import from_dict
from sanakit.errors import SanakitError
from sanakit.train.config import TrainSection
from sanakit.train.ema import EMA
from sanakit.train.optim import build_optimizer, build_scheduler, lr_multiplier


def test_schedules_closed_form() -> None:
    assert lr_multiplier("constant", 5, 10, 100) == 1.0
    assert lr_multiplier("constant_with_warmup", 5, 10, 100) == 0.5
    assert lr_multiplier("constant_with_warmup", 50, 10, 100) == 1.0
    assert lr_multiplier("linear", 55, 10, 100) == pytest.approx(0.5)
    assert lr_multiplier("linear", 100, 10, 100) == 0.0
    assert lr_multiplier("cosine", 10, 10, 110) == pytest.approx(1.0)
    assert lr_multiplier("cosine", 60, 10, 110) == pytest.approx(0.5)
    assert lr_multiplier("cosine", 35, 10, 110) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    with pytest.raises(SanakitError, match="lr_scheduler='cosin'"):
        lr_multiplier("cosin", 0, 0, 1)


def test_scheduler_drives_the_optimizer() -> None:
    p = torch.nn.Parameter(torch.zeros(2))
    opt = build_optimizer([p], "adamw", lr=1.0)
    sched = build_scheduler(opt, "linear", warmup_steps=2, total_steps=4)
    lrs = []
    for _ in range(4):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.0, 0.5, 1.0, 0.5])


def test_optimizer_errors() -> None:
    p = torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(SanakitError, match="not one of"):
        build_optimizer([p], "sgd9", lr=1.0)
    with pytest.raises(SanakitError, match="no trainable parameters"):
        build_optimizer([torch.nn.Parameter(torch.zeros(1), requires_grad=False)], "adamw", lr=1.0)


def test_lion8bit_rejects_an_eps_it_would_drop() -> None:
    """bitsandbytes' Lion8bit has no eps: a train.eps with it is an error, not ignored."""
    raw = {"max_steps": 1, "optimizer": "lion8bit", "eps": 1e-6}
    with pytest.raises(SanakitError) as err:
        from_dict(TrainSection, raw, where="train")
    assert str(err.value) == (
        "train.eps does nothing with train.optimizer = 'lion8bit' (Lion has no eps)"
    )
    assert from_dict(TrainSection, {**raw, "eps": 1e-8}).optimizer == "lion8bit"  # the default
    assert from_dict(TrainSection, {**raw, "optimizer": "adamw8bit"}).eps == 1e-6


def test_ema_update_rule_and_interval() -> None:
    model = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = EMA(model.named_parameters(), decay=0.9, update_every=2)
    with torch.no_grad():
        model.weight.fill_(1.0)
    assert not ema.step(1)
    assert ema.step(2)
    torch.testing.assert_close(ema.shadow["weight"], torch.full((1, 2), 0.1))
    ema.step(4)
    torch.testing.assert_close(ema.shadow["weight"], torch.full((1, 2), 0.19))
    with ema.swapped_in(model):
        torch.testing.assert_close(model.weight.detach(), torch.full((1, 2), 0.19))
    assert torch.equal(model.weight.detach(), torch.ones(1, 2))
    clone = EMA(model.named_parameters(), decay=0.9)
    clone.load_state_dict(ema.state_dict())
    assert clone.num_updates == 2 and torch.equal(clone.shadow["weight"], ema.shadow["weight"])
