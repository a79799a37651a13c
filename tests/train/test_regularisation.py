"""Regularisation data: ``prior_loss_weight`` scales the loss of regularisation samples, and
``regularisation_target = "base_model"`` trains them towards the prediction with the adapter off
(SimpleTuner's parent-teacher regularisation); the options are refused where they do nothing."""

from __future__ import annotations

import contextlib
import copy

import pytest
import torch
from torch import nn

from sanakit.adapters import LokrSpec, LoraSpec, apply_adapter
from sanakit.errors import SanakitError
from sanakit.models import SanaTransformer
from sanakit.presets import tiny
from sanakit.train.config import TrainSection, run_config_from_dict
from sanakit.train.objective import flow_matching_step, step_generator
from sanakit.train.trainer import Trainer

B = 4
CPU = torch.device("cpu")


class Toy(nn.Module):
    """v = scale * x + offset; ``offset`` plays the adapter (0 with the adapter off)."""

    def __init__(self, offset: float) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(0.7))
        self.offset = offset

    def forward(self, x, t, text, mask):
        return self.scale * x + self.offset

    @contextlib.contextmanager
    def adapter_off(self):
        saved, self.offset = self.offset, 0.0
        try:
            yield
        finally:
            self.offset = saved


def _batch(reg: list[bool], loss_weight: float = 1.0) -> dict:
    g = torch.Generator().manual_seed(3)
    return {
        "latents": torch.randn(B, 2, 4, 4, generator=g),
        "text": torch.randn(B, 3, 8, generator=g),
        "text_mask": torch.ones(B, 3, dtype=torch.long),
        "loss_weight": torch.full((B,), loss_weight),
        "is_regularisation": torch.tensor(reg),
        "mask": None,
        "ids": [f"d/{i}" for i in range(B)],
    }


def _step(model, batch, train, adapter_off=None):
    gens = [step_generator(0, 5, 0, i) for i in range(B)]  # the same σ and noise every call
    return flow_matching_step(
        model, batch, train, gens, CPU, timestep_scale=1.0, adapter_off=adapter_off
    )


def test_prior_loss_weight_multiplies_the_loss_of_regularisation_samples() -> None:
    model = Toy(offset=0.0)
    plain = TrainSection(max_steps=1)
    _, ref = _step(model, _batch([False] * B), plain)  # per-sample losses ℓ_i, target ε − x0
    assert ref.min() > 0
    weighted = TrainSection(max_steps=1, prior_loss_weight=2.5)
    # a batch of one regularisation dataset (what the loader makes): λ · mean ℓ, not mean ℓ
    loss, per = _step(model, _batch([True] * B), weighted)
    torch.testing.assert_close(per, ref)
    torch.testing.assert_close(loss, 2.5 * ref.mean())
    # per sample, with the dataset's loss_weight on top: Σ_i w_i λ_i ℓ_i / B
    reg = [True, False, True, False]
    loss, _ = _step(model, _batch(reg, loss_weight=0.5), weighted)
    expected = sum(0.5 * (2.5 if r else 1.0) * float(v) for r, v in zip(reg, ref)) / B
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    # λ does not touch ordinary samples
    loss, _ = _step(model, _batch([False] * B), weighted)
    torch.testing.assert_close(loss, ref.mean())


def test_base_model_target_is_the_prediction_with_the_adapter_off() -> None:
    model = Toy(offset=0.5)
    data = TrainSection(max_steps=1, method="lora")
    _, ref = _step(model, _batch([False] * B), data)
    train = TrainSection(max_steps=1, method="lora", regularisation_target="base_model")
    reg = [True, False, True, False]
    loss, per = _step(model, _batch(reg), train, model.adapter_off)
    # regularisation rows: (scale x + 0.5 - scale x)^2 = 0.25 everywhere; others as before
    torch.testing.assert_close(per[[0, 2]], torch.full((2,), 0.25))
    torch.testing.assert_close(per[[1, 3]], ref[[1, 3]])
    assert loss.item() == pytest.approx((0.5 + float(ref[1] + ref[3])) / B, rel=1e-6)
    assert model.offset == 0.5  # the adapter is back on
    loss.backward()  # the target carries no graph; the gradient flows through the prediction
    assert model.scale.grad is not None and torch.isfinite(model.scale.grad)
    with pytest.raises(SanakitError, match="needs the model's adapter"):
        _step(model, _batch(reg), train)


def test_base_model_target_without_regularisation_samples_runs_no_extra_forward() -> None:
    model = Toy(offset=0.5)

    @contextlib.contextmanager
    def forbidden():
        raise AssertionError("the base model ran for a batch without regularisation samples")
        yield

    train = TrainSection(max_steps=1, method="lora", regularisation_target="base_model")
    loss, _ = _step(model, _batch([False] * B), train, forbidden)
    _, ref = _step(model, _batch([False] * B), TrainSection(max_steps=1, method="lora"))
    torch.testing.assert_close(loss, ref.mean())


@pytest.mark.parametrize(
    "spec",
    [LoraSpec(rank=4, alpha=8.0), LokrSpec(rank=2, alpha=4.0, factor=8)],
    ids=["lora", "lokr"],
)
def test_adapter_handle_disabled_gives_the_base_output(spec) -> None:
    torch.manual_seed(0)
    base = SanaTransformer(tiny(in_channels=4, caption_channels=16)).eval()
    g = torch.Generator().manual_seed(1)
    x, t = torch.randn(2, 4, 8, 8, generator=g), torch.tensor([250.0, 750.0])
    text = torch.randn(2, 6, 16, generator=g)
    with torch.no_grad():
        expected = base(x, t, text)
    model = copy.deepcopy(base)
    handle = apply_adapter(model, spec)
    with torch.no_grad():
        for p in handle.trainable_parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
        adapted = model(x, t, text)
        assert not torch.allclose(adapted, expected, atol=1e-4)
        with handle.disabled():
            assert torch.equal(model(x, t, text), expected)
        assert torch.equal(model(x, t, text), adapted)
        with pytest.raises(RuntimeError, match="inside"), handle.disabled():
            raise RuntimeError("inside")
        assert torch.equal(model(x, t, text), adapted)
    assert all(p.requires_grad for p in handle.trainable_parameters())


@pytest.mark.parametrize("method", ["lora", "lokr"])
def test_trainer_trains_regularisation_towards_the_base_model(run_dict, method) -> None:
    run_dict["data"]["datasets"][0]["is_regularisation_data"] = True
    run_dict["train"].update(method=method, regularisation_target="base_model")
    run_dict["train"]["prior_loss_weight"] = 3.0
    if method == "lokr":
        run_dict["train"]["lokr"] = {"factor": 4, "rank": 4}
    trainer = Trainer(run_config_from_dict(run_dict))
    batch = next(trainer.loader)
    assert batch["is_regularisation"].all()
    # a new adapter adds nothing (LoRA B = 0, LoKr W2 = 0): the model is its base, loss 0
    loss, per = trainer.compute_loss(batch, 0)
    assert loss.item() == 0.0 and not per.any()
    with torch.no_grad():
        g = torch.Generator().manual_seed(0)
        for p in trainer.adapter.trainable_parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    loss, per = trainer.compute_loss(batch, 0)
    assert per.min() > 0
    torch.testing.assert_close(loss, 3.0 * per.mean())
    # an optimizer step through the base-model forward: the adapter is trainable again after it
    before = [p.detach().clone() for p in trainer.adapter.trainable_parameters()]
    stats = trainer.train_step()
    assert stats["finite"] and stats["loss"] > 0
    after = trainer.adapter.trainable_parameters()
    assert all(p.requires_grad for p in after)
    assert any(not torch.equal(a, b) for a, b in zip(after, before))
    loss, _ = trainer.compute_loss(batch, 0)
    # the same batch towards its images gives another loss
    data = copy.deepcopy(run_dict)
    data["train"]["regularisation_target"] = "data"
    trainer.config = run_config_from_dict(data)
    other, _ = trainer.compute_loss(batch, 0)
    assert abs(other.item() - loss.item()) > 1e-3 * loss.item()


def test_config_refuses_regularisation_settings_that_do_nothing(run_dict) -> None:
    run_dict["train"]["regularisation_target"] = "base_model"  # method full
    with pytest.raises(SanakitError, match="regularisation_target.*needs an adapter"):
        run_config_from_dict(run_dict)
    run_dict["train"]["method"] = "lora"
    with pytest.raises(SanakitError, match="no active dataset sets is_regularisation_data"):
        run_config_from_dict(run_dict)
    run_dict["train"].pop("regularisation_target")
    run_dict["train"]["prior_loss_weight"] = 2.0
    with pytest.raises(SanakitError, match="prior_loss_weight.*does nothing"):
        run_config_from_dict(run_dict)
    run_dict["data"]["datasets"][0]["is_regularisation_data"] = True
    assert run_config_from_dict(run_dict).train.prior_loss_weight == 2.0
    run_dict["train"]["prior_loss_weight"] = -1.0
    with pytest.raises(SanakitError, match="prior_loss_weight.*must be >= 0"):
        run_config_from_dict(run_dict)
