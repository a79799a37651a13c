"""Low-VRAM options around the trainer (issue 15): the encoders are freed once the cache is
built, a quantised text encoder, autoencoder tiling while caching, and the config refusals."""

from __future__ import annotations

import copy

import pytest
import torch

from sanakit.errors import SanakitError
from sanakit.train import components
from sanakit.train.config import run_config_from_dict
from sanakit.train.trainer import Trainer

bnb = pytest.importorskip("bitsandbytes")


def test_encoders_are_freed_after_building_the_cache(run_dict, monkeypatch) -> None:
    run_dict["train"].update(method="lora", max_steps=1)
    run_dict["model"]["text_encoder_quantize"] = "int8"
    loaded = []
    real = components.load_text_encoder

    def spy(config, device="cpu"):
        encoder = real(config, device)
        loaded.append(encoder)
        return encoder

    monkeypatch.setattr(components, "load_text_encoder", spy)
    trainer = Trainer(run_config_from_dict(run_dict))
    assert len(loaded) == 1  # the cache was built with it ...
    assert trainer._text_encoder is None and trainer._autoencoder is None  # ... and let go
    linears = [m for m in loaded[0].model.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(isinstance(m, bnb.nn.Linear8bitLt) for m in linears)
    trainer.fit()


def test_quantised_text_encoder_is_a_different_cache_key(run_dict) -> None:
    plain = run_config_from_dict(run_dict)
    run_dict["model"]["text_encoder_quantize"] = "nf4"
    quantised = run_config_from_dict(run_dict)
    assert components.encoder_source_key(plain) != components.encoder_source_key(quantised)
    a, b = components.load_text_encoder(plain), components.load_text_encoder(quantised)
    assert any(isinstance(m, bnb.nn.LinearNF4) for m in b.model.modules())
    assert a.fingerprint() != b.fingerprint()
    embeds_a, mask_a = a.encode(["a red square"])
    embeds_b, mask_b = b.encode(["a red square"])
    assert torch.equal(mask_a, mask_b) and embeds_a.shape == embeds_b.shape
    error = (embeds_b - embeds_a).norm() / embeds_a.norm()
    assert 0 < float(error) < 0.5  # nf4 changes the features a little, not wholesale


def test_vae_tiling_reaches_the_autoencoder(tiny_pipeline_dir, run_dict) -> None:
    raw = copy.deepcopy(run_dict)
    raw["model"] = {"base": str(tiny_pipeline_dir), "vae_tiling": True, "encoder_dtype": "fp32"}
    config = run_config_from_dict(raw)
    autoencoder = components.load_frozen_autoencoder(config)
    assert autoencoder._tiling == (512, 448) and autoencoder.vae.use_tiling
    raw["model"]["vae_tiling"] = False
    assert components.encoder_source_key(config) != components.encoder_source_key(
        run_config_from_dict(raw)
    )


@pytest.mark.parametrize(
    "model, train, message",
    [
        (
            {"quantize": "nf4"},
            {"method": "full"},
            "model.quantize needs train.method 'lora' or 'lokr': a full fine-tune updates the "
            "base weights, which a quantised model cannot train",
        ),
        (
            {"quantize_via": "device"},
            {"method": "lora"},
            "model.quantize_via does nothing: quantize and text_encoder_quantize are 'none'",
        ),
        ({"vae_tiling": True}, {}, "model.vae_tiling applies to autoencoder = 'dc-ae' only"),
        ({"quantize": "int4"}, {"method": "lora"}, "model.quantize"),
    ],
)
def test_config_refusals(run_dict, model, train, message) -> None:
    run_dict["model"].update(model)
    run_dict["train"].update(train)
    with pytest.raises(SanakitError) as err:
        run_config_from_dict(run_dict)
    assert str(err.value).startswith(message)


def test_missing_bitsandbytes_is_named(run_dict, monkeypatch) -> None:
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda m, *a: None if m == "bitsandbytes" else find_spec(m, *a),
    )
    run_dict["model"]["quantize"] = "nf4"
    run_dict["train"]["method"] = "lokr"
    with pytest.raises(SanakitError) as err:
        run_config_from_dict(run_dict)
    assert str(err.value) == (
        "model.quantize needs the 'bitsandbytes' package: pip install bitsandbytes"
    )
