"""Trainer features beyond the core loop: held-out eval loss, loss masks, TensorBoard logs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from sanakit.errors import SanakitError
from sanakit.train.config import run_config_from_dict
from sanakit.train.objective import flow_matching_step, step_generator
from sanakit.train.trainer import Trainer
from tests.train.conftest import write_images


def test_eval_loss_on_held_out_dataset_is_fixed_and_logged(run_dict, tmp_path) -> None:
    held = write_images(tmp_path / "held", count=4)
    run_dict["data"]["datasets"].append(
        {"id": "held", "path": str(held), "resolution": 32, "resolution_type": "pixel"}
    )
    run_dict["validation"] = {
        "eval_datasets": ["held"],
        "eval_sigmas": [0.25, 0.75],
        "every_steps": 2,
    }
    run_dict["train"]["max_steps"] = 4
    run_dict["output"]["log_with"] = "tensorboard"
    trainer = Trainer(run_config_from_dict(run_dict))
    # the held-out images never reach the training loader
    for _ in range(6):
        assert all(not i.startswith("held/") for i in next(trainer.loader)["ids"])
    first, again = trainer.evaluate(), trainer.evaluate()
    assert first == again  # fixed σ and fixed noise: the same weights give the same loss
    assert set(first) == {0.25, 0.75} and all(v > 0 for v in first.values())
    trainer.fit()
    assert trainer.last_eval != first  # training moved it
    events = list((trainer.out / "logs").rglob("events.out.tfevents.*"))
    assert events, "no TensorBoard event file"


def test_eval_datasets_cannot_hold_out_everything(run_dict) -> None:
    run_dict["validation"] = {"eval_datasets": ["shapes"]}
    with pytest.raises(SanakitError, match="holds out every dataset"):
        run_config_from_dict(run_dict)


def test_loss_masks_restrict_the_loss(run_dict, tmp_path) -> None:
    images = tmp_path / "images"
    for path in sorted(images.glob("*.png")):
        mask = np.zeros((32, 32), np.uint8)
        mask[:, :16] = 255  # only the left half counts
        Image.fromarray(mask).save(path.with_name(path.stem + ".mask.png"))
    run_dict["data"]["datasets"][0]["masks"] = True
    run_dict["train"]["max_steps"] = 1
    trainer = Trainer(run_config_from_dict(run_dict))
    batch = next(trainer.loader)
    assert batch["mask"] is not None and batch["mask"].shape[-2:] == batch["latents"].shape[-2:]
    assert (
        float(batch["mask"][..., :4].mean()) == 1.0 and float(batch["mask"][..., 4:].mean()) == 0.0
    )

    # with a model whose output ignores its input, the loss only sees the target ε − x0 on the
    # masked-in half: changing x0 outside the mask leaves it unchanged, inside it does not
    def zero_model(x, t, text, mask):
        return torch.zeros_like(x)

    def loss_of(b):
        gens = [step_generator(0, 0, 0, i) for i in range(len(b["ids"]))]
        return flow_matching_step(
            zero_model, b, trainer.config.train, gens, torch.device("cpu"), timestep_scale=1.0
        )[0]

    base = loss_of(batch)
    outside = {**batch, "latents": batch["latents"].clone()}
    outside["latents"][..., 4:] += 100.0
    assert torch.equal(loss_of(outside), base)
    inside = {**batch, "latents": batch["latents"].clone()}
    inside["latents"][..., :4] += 1.0
    assert not torch.equal(loss_of(inside), base)
    assert not torch.equal(loss_of({**batch, "mask": None}), base)


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)`")
@pytest.mark.parametrize(
    ("method", "limit"), [("value", 1e-4), ("norm", 1e-4), ("value", 0.0), ("norm", 0.0)]
)
def test_grad_clip_method_value_clamps_elements_norm_rescales(
    run_dict, method, limit, monkeypatch
) -> None:
    run_dict["train"] |= {"max_steps": 1, "grad_clip": limit, "grad_clip_method": method}
    trainer = Trainer(run_config_from_dict(run_dict))
    seen: list[torch.Tensor] = []

    def step(optimizer) -> None:  # the gradients the optimizer would apply
        seen.append(torch.cat([p.grad.flatten() for p in trainer.params if p.grad is not None]))

    monkeypatch.setattr(trainer.scaler, "step", step)
    stats = trainer.train_step()
    (grads,) = seen
    unclipped = stats["grad_norm"]  # the global norm before clipping, whatever the method
    assert unclipped > 1e-3
    if limit == 0:  # no clipping
        assert float(grads.norm()) == pytest.approx(unclipped, rel=1e-4)
    elif method == "value":  # torch.nn.utils.clip_grad_value_: every element in [-c, c]
        assert float(grads.abs().max()) == pytest.approx(limit)
        assert float((grads.abs() == grads.abs().max()).float().mean()) < 1  # not all at c
    else:  # one factor for all: global norm c
        assert float(grads.norm()) == pytest.approx(limit, rel=1e-4)
        assert float(grads.abs().max()) < limit


def test_grad_clip_method_is_checked(run_dict) -> None:
    run_dict["train"]["grad_clip_method"] = "clip"
    with pytest.raises(SanakitError, match="grad_clip_method"):
        run_config_from_dict(run_dict)
