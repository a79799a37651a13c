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


def test_polynomial_schedule_closed_form_and_transformers() -> None:
    from transformers import get_polynomial_decay_schedule_with_warmup

    lr, lr_end, power, warmup, total = 1e-4, 4e-7, 0.8, 10, 110

    def closed(step: int) -> float:  # lr(step) / lr, transformers' definition
        if step < warmup:
            return step / warmup
        if step > total:
            return lr_end / lr
        remaining = 1 - (step - warmup) / (total - warmup)
        return ((lr - lr_end) * remaining**power + lr_end) / lr

    ours = [
        lr_multiplier("polynomial", s, warmup, total, end_factor=lr_end / lr, power=power)
        for s in range(0, 130)
    ]
    assert ours == pytest.approx([closed(s) for s in range(0, 130)], rel=1e-12)
    assert ours[60] == pytest.approx(((lr - lr_end) * 0.5**0.8 + lr_end) / lr)
    p = torch.nn.Parameter(torch.zeros(2))
    opt, ref_opt = (build_optimizer([p], "adamw", lr=lr) for _ in range(2))
    sched = build_scheduler(
        opt, "polynomial", warmup_steps=warmup, total_steps=total, lr_end=lr_end, lr_power=power
    )
    ref = get_polynomial_decay_schedule_with_warmup(ref_opt, warmup, total, lr_end, power)
    for _ in range(125):
        assert opt.param_groups[0]["lr"] == pytest.approx(ref_opt.param_groups[0]["lr"], rel=1e-12)
        for o, s in ((opt, sched), (ref_opt, ref)):
            o.step()
            s.step()
    with pytest.raises(SanakitError, match="lr_end=0.001 must be >= 0 and below train.lr"):
        build_scheduler(opt, "polynomial", warmup_steps=0, total_steps=10, lr_end=1e-3)


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"lr_end": 1e-7}, "lr_end.*only used with lr_scheduler = 'polynomial' \\(not 'linear'\\)"),
        ({"lr_power": 2.0}, "lr_power.*only used with lr_scheduler = 'polynomial'"),
        ({"lr_scheduler": "polynomial", "lr": 1e-5, "lr_end": 1e-5}, "lr_end.*below the learning"),
        ({"lr_scheduler": "polynomial", "lr_power": 0}, "lr_power.*must be > 0"),
    ],
)
def test_polynomial_options_are_checked(keys, message) -> None:
    with pytest.raises(SanakitError, match=message):
        from_dict(TrainSection, {"max_steps": 10, "lr_scheduler": "linear", **keys})
    good = {"max_steps": 10, "lr_scheduler": "polynomial", "lr_end": 2e-7, "lr_power": 0.8}
    t = from_dict(TrainSection, good)
    assert (t.polynomial_lr_end, t.polynomial_power) == (2e-7, 0.8)
    t = from_dict(TrainSection, {"max_steps": 10, "lr_scheduler": "polynomial"})
    assert (t.polynomial_lr_end, t.polynomial_power) == (1e-7, 1.0)  # transformers' defaults


def test_trainer_runs_the_polynomial_schedule(run_dict) -> None:
    from sanakit.train.config import run_config_from_dict
    from sanakit.train.trainer import Trainer

    run_dict["train"] |= {"max_steps": 4, "lr": 1e-3, "lr_scheduler": "polynomial"}
    run_dict["train"] |= {"warmup_steps": 1, "lr_end": 1e-4, "lr_power": 2.0}
    trainer = Trainer(run_config_from_dict(run_dict))
    fn = trainer.scheduler.lr_lambdas[0]
    expected = [0.0] + [0.1 + 0.9 * (1 - (s - 1) / 3) ** 2 for s in (1, 2, 3, 4)]
    assert [fn(s) for s in range(5)] == pytest.approx(expected)


def test_optimi_lion_step_and_missing_package(monkeypatch) -> None:
    """Lion's first step from zero momentum: p <- p - lr * sign((1 - beta1) * g)."""
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5]))
    p.grad = torch.tensor([0.3, -0.1, 0.0])
    with pytest.raises(
        SanakitError, match="train.eps does nothing with train.optimizer = 'optimi-lion'"
    ):
        from_dict(
            TrainSection, {"max_steps": 1, "optimizer": "optimi-lion", "eps": 1e-6}, where="train"
        )
    with monkeypatch.context() as m:
        m.setitem(__import__("sys").modules, "optimi", None)  # as if not installed
        with pytest.raises(SanakitError) as err:
            build_optimizer([p], "optimi-lion", lr=0.1)
        assert str(err.value) == (
            "train.optimizer='optimi-lion' needs the 'torch-optimi' package: pip install torch-optimi"
        )
    pytest.importorskip("optimi")
    opt = build_optimizer([p], "optimi-lion", lr=0.1, betas=(0.9, 0.99), weight_decay=0.0)
    assert type(opt).__module__.startswith("optimi") and type(opt).__name__ == "Lion"
    opt.step()
    torch.testing.assert_close(p.detach(), torch.tensor([0.9, -1.9, 0.5]))
