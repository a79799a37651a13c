"""Every train.optimizer takes a step on a tiny model, or config validation names the missing
package (issue 15)."""

from __future__ import annotations

import importlib.util
import sys
import typing

import pytest
import torch

from sanakit.config import from_dict
from sanakit.errors import SanakitError
from sanakit.train.config import OPTIMIZER_PACKAGES, TrainSection
from sanakit.train.optim import OPTIMIZERS, build_optimizer


def _installed(name: str) -> bool:
    return name not in OPTIMIZER_PACKAGES or bool(
        importlib.util.find_spec(OPTIMIZER_PACKAGES[name][0])
    )


def test_the_config_and_the_builder_know_the_same_optimizers() -> None:
    literal = typing.get_type_hints(TrainSection)["optimizer"]
    assert typing.get_args(literal) == OPTIMIZERS


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_one_step_on_a_tiny_model(name) -> None:
    if not _installed(name):
        pytest.skip(f"{OPTIMIZER_PACKAGES[name][1]} not installed (the error is tested below)")
    from_dict(TrainSection, {"max_steps": 1, "optimizer": name})  # validates
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Linear(64, 1))
    before = [p.detach().clone() for p in model.parameters()]
    opt = build_optimizer(model.parameters(), name, lr=1e-2, weight_decay=0.0)
    loss = model(torch.randn(16, 64)).pow(2).mean()
    loss.backward()
    opt.step()
    assert all(not torch.equal(a, b.detach()) for a, b in zip(before, model.parameters()))
    assert all(opt.state[p] for p in model.parameters())  # it keeps per-parameter state
    if name.endswith("8bit"):  # 8-bit blockwise state (bitsandbytes)
        state = opt.state[model[0].weight].values()  # 64 x 64: bnb's minimum size for 8 bits
        assert any(torch.is_tensor(v) and v.dtype == torch.uint8 for v in state)
    assert len(opt.state_dict()["state"]) == 4  # checkpointable


@pytest.mark.parametrize("name", sorted(OPTIMIZER_PACKAGES))
def test_a_missing_package_is_named_in_config_validation(name, monkeypatch) -> None:
    module, package = OPTIMIZER_PACKAGES[name]
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda m, *a: None if m == module else find_spec(m, *a)
    )
    with pytest.raises(SanakitError) as err:
        from_dict(TrainSection, {"max_steps": 1, "optimizer": name}, where="train")
    assert str(err.value) == (
        f"train.optimizer = {name!r} needs the {package!r} package: pip install {package}"
    )
    monkeypatch.setitem(sys.modules, module, None)  # and the builder says the same
    with pytest.raises(SanakitError, match=f"pip install {package}"):
        build_optimizer([torch.nn.Parameter(torch.zeros(2))], name, lr=1.0)


@pytest.mark.parametrize("name", ["paged_lion8bit", "adafactor", "came"])
def test_an_eps_they_would_drop_is_an_error(name) -> None:
    with pytest.raises(
        SanakitError, match=f"train.eps does nothing with train.optimizer = '{name}'"
    ):
        from_dict(TrainSection, {"max_steps": 1, "optimizer": name, "eps": 1e-6}, where="train")


def test_adafactor_rejects_betas() -> None:
    with pytest.raises(SanakitError, match="betas does nothing with train.optimizer = 'adafactor'"):
        from_dict(TrainSection, {"max_steps": 1, "optimizer": "adafactor", "betas": [0.8, 0.9]})


def test_adafactor_first_step_closed_form() -> None:
    """torch's Adafactor (Shazeer & Stern, 2018, Alg. 4): the step is relative to the parameter
    scale, rho_t * max(eps2, RMS(p)) with rho_t = min(lr, 1 / sqrt(t)); at t = 1 its second
    moment is g^2, so the update g / sqrt(g^2) = sign(g) (RMS 1: no clipping)."""
    p = torch.nn.Parameter(torch.full((5,), 2.0))
    opt = build_optimizer([p], "adafactor", lr=0.1, weight_decay=0.0)
    p.grad = torch.tensor([1.0, -2.0, 3.0, -4.0, 0.5])
    opt.step()
    expected = 2.0 - 0.1 * 2.0 * torch.sign(p.grad)
    torch.testing.assert_close(p.detach(), expected, rtol=1e-4, atol=1e-6)
