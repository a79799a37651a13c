"""Checkpoint I/O: sharding, pipeline folders, dtype, and one-line errors for bad checkpoints."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import SanaTransformer2DModel
from safetensors.torch import load_file, save_file

from sanakit.errors import SanakitError
from sanakit.models import SanaTransformer, load_transformer, save_transformer
from sanakit.models.io import INDEX_NAME, WEIGHTS_NAME
from sanakit.presets import tiny

CONFIG = tiny(in_channels=4, caption_channels=16)


@pytest.fixture()
def saved(tmp_path):
    torch.manual_seed(0)
    model = SanaTransformer(CONFIG)
    save_transformer(model, tmp_path / "m")
    return model, tmp_path / "m"


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sb = b.state_dict()
    for key, value in a.state_dict().items():
        assert torch.equal(value, sb[key]), key


def test_round_trip_is_exact_and_not_on_meta(saved) -> None:
    model, folder = saved
    loaded = load_transformer(folder)
    assert all(p.device.type == "cpu" for p in loaded.parameters())
    _same_weights(model, loaded)
    assert loaded.config == model.config


def test_sharded_save_loads_in_both(tmp_path) -> None:
    torch.manual_seed(0)
    model = SanaTransformer(CONFIG)
    save_transformer(model, tmp_path, max_shard_bytes=64 * 1024)
    index = json.loads((tmp_path / INDEX_NAME).read_text())
    assert len(set(index["weight_map"].values())) > 1
    assert not (tmp_path / WEIGHTS_NAME).exists()
    _same_weights(model, load_transformer(tmp_path))
    ref = SanaTransformer2DModel.from_pretrained(tmp_path)
    assert set(ref.state_dict()) == set(model.state_dict())


def test_pipeline_folder_and_dtype(saved, tmp_path) -> None:
    model, folder = saved
    pipe = tmp_path / "pipe"
    (pipe / "transformer").mkdir(parents=True)
    for f in folder.iterdir():
        (pipe / "transformer" / f.name).write_bytes(f.read_bytes())
    (pipe / "model_index.json").write_text("{}")
    loaded = load_transformer(pipe, torch_dtype=torch.bfloat16)
    assert loaded.dtype == torch.bfloat16
    assert torch.equal(loaded.proj_out.weight, model.proj_out.weight.bfloat16())


def test_legacy_timestep_norm_scale_factor_becomes_timestep_scale(saved) -> None:
    _, folder = saved
    raw = json.loads((folder / "config.json").read_text())
    raw["_sanakit"]["timestep_norm_scale_factor"] = 1000.0
    (folder / "config.json").write_text(json.dumps(raw))
    assert load_transformer(folder).config.timestep_scale == 0.001


def test_training_settings_are_not_in_the_saved_config(saved) -> None:
    model, folder = saved
    model.set_gradient_checkpointing(True, 2)
    save_transformer(model, folder)
    raw = json.loads((folder / "config.json").read_text())
    assert not [k for k in raw | raw["_sanakit"] if "checkpointing" in k]
    assert not load_transformer(folder).gradient_checkpointing
    ref = SanaTransformer2DModel.from_pretrained(folder)  # diffusers takes every key
    assert ref.config.num_layers == CONFIG.num_layers


def test_sanakit_only_fields_survive_a_save(tmp_path) -> None:
    model = SanaTransformer(CONFIG.replace(timestep_scale=0.001, linear_attention_eps=1e-8))
    save_transformer(model, tmp_path)
    loaded = load_transformer(tmp_path)
    assert loaded.config.timestep_scale == 0.001
    assert loaded.config.linear_attention_eps == 1e-8


def test_missing_and_unexpected_keys_are_named(saved) -> None:
    _, folder = saved
    state = load_file(str(folder / WEIGHTS_NAME))
    state.pop("proj_out.bias")
    state["extra.weight"] = torch.zeros(1)
    save_file(state, str(folder / WEIGHTS_NAME))
    with pytest.raises(
        SanakitError, match=r"missing keys: proj_out.bias.*unexpected keys: extra.weight"
    ):
        load_transformer(folder)


def test_shape_mismatch_is_named(saved) -> None:
    _, folder = saved
    state = load_file(str(folder / WEIGHTS_NAME))
    state["proj_out.bias"] = torch.zeros(3)
    save_file(state, str(folder / WEIGHTS_NAME))
    with pytest.raises(SanakitError, match=r"shape mismatch for proj_out.bias"):
        load_transformer(folder)


def test_bad_folders_give_one_line_errors(saved, tmp_path) -> None:
    _, folder = saved
    with pytest.raises(SanakitError, match="no such folder"):
        load_transformer(tmp_path / "absent")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "model_index.json").write_text("{}")
    with pytest.raises(SanakitError, match="no transformer/"):
        load_transformer(empty)
    config = json.loads((folder / "config.json").read_text())
    config["num_layerz"] = 3
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(SanakitError, match="unknown transformer config key 'num_layerz'") as err:
        load_transformer(folder)
    assert "\n" not in str(err.value)
