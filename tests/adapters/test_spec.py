"""The adapter settings are the config tables ``[train.lora]`` / ``[train.lokr]``: checked once
(errors name the key), and every LoKr option set there changes the injected LyCORIS modules."""

from __future__ import annotations

import copy

import pytest
import torch

from sanakit.adapters import LokrSpec, LoraSpec, apply_adapter, load_adapter_into
from sanakit.adapters.spec import spec_record
from sanakit.config import from_dict
from sanakit.errors import SanakitError
from sanakit.models import SanaTransformer
from sanakit.presets import tiny
from sanakit.train.config import TrainSection


def _train(method: str, table: dict | None = None) -> TrainSection:
    raw = {"method": method, "max_steps": 1} | ({method: table} if table is not None else {})
    return from_dict(TrainSection, raw, where="train")


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def base() -> SanaTransformer:
    torch.manual_seed(
        0
    )  # hidden 64: attention W (64, 64), conv_inverted (320, 64), conv_point (64, 160)
    return SanaTransformer(tiny(in_channels=4, caption_channels=16)).eval()


def _out(model: torch.nn.Module) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    x, text = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 6, 16, generator=g)
    with torch.no_grad():
        return model(x, torch.tensor([300.0, 700.0]), text)


def _lokr(base: SanaTransformer, table: dict):
    """Inject the ``[train.lokr]`` table as the trainer does; returns (model, LyCORIS modules)."""
    model = copy.deepcopy(base)
    handle = apply_adapter(model, _train("lokr", table).adapter_spec(), seed=0)
    return model, handle, model.lycoris.loras


def test_the_tables_are_the_settings() -> None:
    assert _train("lora", {"rank": 8, "alpha": 4.0}).adapter_spec() == LoraSpec(rank=8, alpha=4.0)
    assert _train("lora").adapter_spec() == LoraSpec()  # no table: the defaults
    spec = _train("lokr", {"factor": 4, "full_matrix": True, "init_lokr_norm": 1e-3}).adapter_spec()
    assert spec == LokrSpec(factor=4, full_matrix=True, init_lokr_norm=1e-3)
    assert _train("full").adapter_spec() is None
    assert spec_record(LoraSpec(rank=4), 7) == {
        "method": "lora",
        "seed": 7,
        "rank": 4,
        "dropout": 0.0,
        "target_modules": list(LoraSpec().targets),
    }


@pytest.mark.parametrize(
    "method, table, message",
    [
        ("lora", {"rank": 0}, "train.lora.rank must be >= 1, got 0"),
        ("lora", {"alpha": -1.0}, "train.lora.alpha must be > 0 (or left out), got -1.0"),
        ("lora", {"alpha": float("inf")}, "train.lora.alpha must be > 0"),
        ("lora", {"dropout": 1.0}, "train.lora.dropout must be in [0, 1), got 1.0"),
        ("lora", {"target_modules": []}, "train.lora.target_modules must be a non-empty list"),
        ("lora", {"target_modules": ["to_q", "to_q"]}, "train.lora.target_modules must be"),
        ("lora", {"factor": 8}, "unknown key train.lora.factor"),
        ("lokr", {"dropout": 0.1}, "unknown key train.lokr.dropout"),
        ("lokr", {"factor": 0}, "train.lokr.factor must be >= 1 or -1, got 0"),
        ("lokr", {"rank": 0}, "train.lokr.rank must be >= 1, got 0"),
        (
            "lokr",
            {"full_matrix": True, "decompose_both": True},
            "train.lokr.decompose_both does nothing with full_matrix = true; pick one",
        ),
        ("lokr", {"full_matrix": True, "alpha": 2.0}, "train.lokr.alpha does nothing with full"),
        ("lokr", {"init_lokr_norm": 1e-3}, "train.lokr.init_lokr_norm needs full_matrix = true"),
        ("lokr", {"full_matrix": True, "init_lokr_norm": 0.0}, "init_lokr_norm must be > 0"),
        ("lokr", {"full_matrix": 1}, "train.lokr.full_matrix must be bool"),
    ],
)
def test_impossible_settings_name_their_key(method, table, message) -> None:
    with pytest.raises(SanakitError) as err:
        _train(method, table)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_full_matrix_makes_both_factors_full_with_scale_one(base) -> None:
    # rank 2 < W2's larger side / 2 in every layer (factor 8): W2 = W2a W2b, scale alpha / rank
    _, handle, loras = _lokr(base, {"factor": 8, "rank": 2, "alpha": 4.0})
    assert all(m.use_w1 and not m.use_w2 and m.scale == 2.0 for m in loras)
    assert any(key.endswith(".lokr_w2_a") for key in handle.state_dict())
    model, handle, loras = _lokr(base, {"factor": 8, "rank": 2, "full_matrix": True})
    assert all(m.use_w1 and m.use_w2 and m.scale == 1.0 for m in loras)
    assert not any(key.endswith((".lokr_w2_a", ".lokr_w2_b")) for key in handle.state_dict())
    for m in loras:  # W2 (b, d) whole: out = a * b, in = c * d
        assert m.lokr_w1.shape[0] * m.lokr_w2.shape[0] == m.shape[0]
        assert m.lokr_w1.shape[1] * m.lokr_w2.shape[1] == m.shape[1]
    assert torch.equal(_out(model), _out(base))  # W2 = 0: starts at the base model


def test_decompose_both_factors_w1_too(base) -> None:
    # factor 16 on 64: (a, c) = (4, 4), so rank 1 < 4 / 2 decomposes W1 in every layer
    _, handle, loras = _lokr(base, {"factor": 16, "rank": 1})
    assert all(m.use_w1 for m in loras)
    model, handle, loras = _lokr(base, {"factor": 16, "rank": 1, "decompose_both": True})
    assert not any(m.use_w1 for m in loras)
    keys = handle.state_dict()
    assert not any(k.endswith(".lokr_w1") for k in keys)
    assert sum(k.endswith(".lokr_w1_a") for k in keys) == len(loras)
    assert torch.equal(_out(model), _out(base))
    with pytest.raises(SanakitError, match="train.lokr.decompose_both does nothing with rank 8"):
        _lokr(base, {"factor": 16, "rank": 8, "decompose_both": True})  # 8 >= 4 / 2: W1 stays


def test_init_lokr_norm_starts_from_a_small_copy_of_the_weight_statistics(base, tmp_path) -> None:
    plain, _, loras = _lokr(base, {"factor": 8, "full_matrix": True})
    assert all(torch.equal(m.lokr_w2, torch.zeros_like(m.lokr_w2)) for m in loras)
    model, handle, loras = _lokr(base, {"factor": 8, "full_matrix": True, "init_lokr_norm": 1e-3})
    for m in loras:
        w = m.org_weight.float()
        assert torch.equal(m.lokr_w1, torch.ones_like(m.lokr_w1))
        torch.testing.assert_close(m.lokr_w2.mean(), 1e-3 * w.mean(), rtol=1e-4, atol=1e-9)
        torch.testing.assert_close(m.lokr_w2.std(), 1e-3 * w.std(), rtol=1e-4, atol=1e-9)
    ref = _out(base)
    assert torch.equal(_out(plain), ref)
    change = float((_out(model) - ref).abs().max() / ref.abs().max())
    assert 0 < change < 0.1  # a small perturbation, not zero
    fresh = copy.deepcopy(base)  # the full-matrix factors round-trip through the LyCORIS file
    load_adapter_into(fresh, handle.save(tmp_path))
    torch.testing.assert_close(_out(fresh), _out(model), rtol=1e-5, atol=1e-6)


def test_alpha_that_the_layer_shapes_make_useless_is_rejected(base) -> None:
    with pytest.raises(SanakitError, match="train.lokr.alpha does nothing with rank 10000"):
        _lokr(base, {"rank": 10000, "alpha": 1.0})
