"""Strict config machinery and the data sections: messages name the dotted key and the fix."""

from __future__ import annotations

import dataclasses
import json
from typing import Literal

import pytest

from sanakit.config import (
    DataConfig,
    DatasetConfig,
    apply_overrides,
    check_output_folder,
    from_dict,
    load_config_file,
    to_dict,
)
from sanakit.errors import SanakitError


def _data(**dataset: object) -> dict:
    return {"cache_dir": "c", "datasets": [{"id": "a", "path": "p", **dataset}]}


@dataclasses.dataclass(frozen=True)
class _Inner:
    size: int = 1


@dataclasses.dataclass(frozen=True)
class _Outer:
    name: str
    mode: Literal["a", "b"] = "a"
    ratio: float | None = None
    inner: _Inner = _Inner()
    items: tuple[_Inner, ...] = ()
    tags: tuple[str, ...] = ()


def test_unknown_key_names_dotted_key_and_nearest() -> None:
    with pytest.raises(SanakitError) as err:
        from_dict(DataConfig, _data(resolutoin=512), where="data")
    assert str(err.value) == "unknown key data.datasets[0].resolutoin; did you mean 'resolution'?"
    with pytest.raises(SanakitError, match=r"unknown key x\.zzz; valid keys: name, mode"):
        from_dict(_Outer, {"name": "n", "zzz": 1}, where="x")


def test_simpletuner_names_get_the_sanakit_key() -> None:
    with pytest.raises(SanakitError) as err:
        from_dict(DataConfig, _data(instance_data_dir="imgs"), where="data")
    assert str(err.value) == (
        "unknown key data.datasets[0].instance_data_dir; that is SimpleTuner's name; "
        "here it is data.datasets[].path"
    )
    with pytest.raises(SanakitError) as err:
        from_dict(_Outer, {"name": "n", "learning_rate": 1e-4}, where="x")
    assert str(err.value) == (
        "unknown key x.learning_rate; that is SimpleTuner's name; here it is train.lr"
    )
    with pytest.raises(SanakitError) as err:
        from_dict(_Outer, {"name": "n", "mixed_precision": "bf16"})
    assert str(err.value) == (
        "unknown key mixed_precision; it belongs in [train]: train.mixed_precision"
    )


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"name": "n", "ratio": "2e-5"},
            "x.ratio must be float, got '2e-5' (str); write it without quotes",
        ),
        ({"name": "n", "inner": {"size": " 3 "}}, "write it without quotes"),
        ({"name": "n", "inner": {"size": "3.5"}}, "x.inner.size must be int, got '3.5' (str)"),
        ({"name": "true"}, None),
    ],
)
def test_quoted_numbers_are_told_to_drop_the_quotes(data: dict, message: str | None) -> None:
    if message is None:  # a str key takes the quoted text as it is
        assert from_dict(_Outer, data, where="x").name == "true"
        return
    with pytest.raises(SanakitError) as err:
        from_dict(_Outer, data, where="x")
    assert message in str(err.value)
    if "3.5" in message:  # not an int even without quotes: no such hint
        assert "quotes" not in str(err.value)


def test_check_output_folder(tmp_path) -> None:
    check_output_folder(tmp_path, "output.dir")  # an existing folder
    check_output_folder(tmp_path / "new" / "deeper", "output.dir")  # creatable
    a_file = tmp_path / "f"
    a_file.write_text("")
    with pytest.raises(SanakitError, match=r"^output\.dir .*/f is a file, not a folder; "):
        check_output_folder(a_file, "output.dir")
    with pytest.raises(SanakitError, match=r"^--out .*/f/sub cannot be created: .*/f is a file"):
        check_output_folder(a_file / "sub", "--out")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"name": 3}, "x.name must be str, got 3 (int)"),
        ({"name": "n", "mode": "c"}, "x.mode must be one of 'a', 'b', got 'c'"),
        ({"name": "n", "ratio": "big"}, "x.ratio must be float, got 'big' (str)"),
        ({"name": "n", "inner": {"size": True}}, "x.inner.size must be int, got True (bool)"),
        (
            {"name": "n", "items": [{"size": 1}, {"size": "2"}]},
            "x.items[1].size must be int, got '2' (str); write it without quotes",
        ),
        ({"name": "n", "tags": "solo"}, "x.tags must be list of str, got 'solo' (str)"),
        ({}, "missing required key x.name (str)"),
    ],
)
def test_wrong_types_name_key_type_and_value(data: dict, message: str) -> None:
    with pytest.raises(SanakitError) as err:
        from_dict(_Outer, data, where="x")
    assert str(err.value) == message


def test_conversions_and_roundtrip() -> None:
    out = from_dict(_Outer, {"name": "n", "ratio": 2, "items": [{"size": 3}], "tags": ["t"]})
    assert out.ratio == 2.0 and isinstance(out.ratio, float)
    assert out.items == (_Inner(3),) and out.tags == ("t",)
    assert from_dict(_Outer, to_dict(out)) == out
    cfg = from_dict(DataConfig, _data(flip=True, resolution=512), where="data")
    assert from_dict(DataConfig, json.loads(json.dumps(to_dict(cfg)))) == cfg


def test_literal_choice_suggests_nearest() -> None:
    with pytest.raises(
        SanakitError,
        match=r"data\.datasets\[0\]\.crop_style must be one of 'center', 'random', got 'centre'; did you mean 'center'\?",
    ):
        from_dict(DataConfig, _data(crop_style="centre"), where="data")


@pytest.mark.parametrize(
    ("dataset", "message"),
    [
        (
            {"caption_strategy": "instance_prompt"},
            r"data\.datasets\[0\]\.instance_prompt is required when caption_strategy = 'instance_prompt'",
        ),
        (
            {"instance_prompt": "sks"},
            r"instance_prompt is only used with caption_strategy = 'instance_prompt'",
        ),
        (
            {"caption_strategy": "manifest"},
            r"caption_strategy 'manifest' does not work with type = 'folder'",
        ),
        (
            {"caption_column": "text"},
            r"caption_column is only used with caption_strategy = 'manifest'",
        ),
        (
            {"crop": False, "crop_style": "random"},
            r"crop is false, so crop_style/crop_aspect do nothing",
        ),
        (
            {"maximum_image_size": 2048},
            r"target_downsample_size and maximum_image_size must be set together",
        ),
        (
            {"maximum_image_size": 1024, "target_downsample_size": 2048},
            r"must not exceed maximum_image_size",
        ),
        (
            {"resolution": 1024, "resolution_type": "area"},
            r"in megapixels for resolution_type = 'area'",
        ),
        ({"resolution": 1.05}, r"below one 32-pixel latent cell"),
        ({"repeats": -1}, r"repeats must be >= 0"),
        ({"probability": 0.0}, r"probability must be > 0"),
        ({"caption_dropout": 1.0}, r"caption_dropout must be in \[0, 1\)"),
        ({"split": "train"}, r"split is only used with type = 'hf'"),
        ({"id": "a/b"}, r"id must be a simple name"),
    ],
)
def test_impossible_combinations_rejected(dataset: dict, message: str) -> None:
    with pytest.raises(SanakitError, match=message):
        from_dict(DataConfig, _data(**dataset), where="data")


def test_data_config_checks() -> None:
    two = {"cache_dir": "c", "datasets": [{"id": "a", "path": "p"}, {"id": "a", "path": "q"}]}
    with pytest.raises(SanakitError, match=r"data\.datasets\[1\]\.id 'a' is used twice"):
        from_dict(DataConfig, two, where="data")
    with pytest.raises(SanakitError, match=r"data\.datasets is empty"):
        from_dict(DataConfig, {"datasets": []}, where="data")
    with pytest.raises(SanakitError, match=r"DatasetConfig\.repeats must be >= 0"):
        DatasetConfig(id="a", path="p", repeats=-2)


def test_resolved_defaults() -> None:
    folder = DatasetConfig(id="a", path="p")
    assert (folder.captions, folder.style, folder.aspect) == ("textfile", "center", "closest")
    assert DatasetConfig(id="m", path="p.jsonl", type="manifest").captions == "manifest"
    assert DatasetConfig(id="n", path="p", crop=False).aspect == "preserve"


def test_load_config_file_toml_json_and_errors(tmp_path) -> None:
    toml = tmp_path / "c.toml"
    toml.write_text(
        '[data]\ncache_dir = "x"\n[[data.datasets]]\nid = "a"\npath = "imgs"\nrepeats = 2\n'
    )
    raw = load_config_file(toml)
    cfg = from_dict(DataConfig, raw["data"], where="data")
    assert cfg.datasets[0].repeats == 2 and cfg.cache_dir == "x"
    js = tmp_path / "c.json"
    js.write_text(json.dumps(raw))
    assert load_config_file(js) == raw
    bad = tmp_path / "bad.toml"
    bad.write_text("data = [\n")
    with pytest.raises(SanakitError, match=r"bad\.toml is not valid TOML"):
        load_config_file(bad)
    with pytest.raises(SanakitError, match="not found"):
        load_config_file(tmp_path / "missing.toml")
    with pytest.raises(SanakitError, match=r"must end in \.toml or \.json"):
        (tmp_path / "c.yaml").write_text("a: 1")
        load_config_file(tmp_path / "c.yaml")


def test_apply_overrides() -> None:
    raw = {"train": {"lr": 1e-4}, "data": {"datasets": [{"id": "a", "path": "p"}]}}
    out = apply_overrides(
        raw,
        ["train.lr=2e-5", "data.datasets[0].repeats=3", "data.datasets[0].path=my dir/x",
         "train.betas=[0.9, 0.99]", "new.flag=true", 'data.datasets[0].instance_prompt="a b"'],
    )  # fmt: skip
    assert out["train"]["lr"] == 2e-5 and raw["train"]["lr"] == 1e-4  # copy, not in place
    assert out["data"]["datasets"][0]["repeats"] == 3
    assert out["data"]["datasets"][0]["path"] == "my dir/x"  # not TOML: plain string
    assert out["train"]["betas"] == [0.9, 0.99] and out["new"]["flag"] is True
    assert out["data"]["datasets"][0]["instance_prompt"] == "a b"
    with pytest.raises(SanakitError, match=r"index \[4\] does not exist"):
        apply_overrides(raw, ["data.datasets[4].repeats=1"])
    with pytest.raises(SanakitError, match="must look like key.path=value"):
        apply_overrides(raw, ["train.lr"])
    with pytest.raises(SanakitError, match="must look like train.lr"):
        apply_overrides(raw, ["train..lr=1"])
