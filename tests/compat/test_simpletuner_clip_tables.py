"""SimpleTuner's own files, as they are: gradient clipping (its defaults: method "value" at 2.0),
table-valued keys such as ``tread_config`` (reported with their real reason) and numeric strings
that mean "off". The fixtures hold the values of SimpleTuner's files (written here by hand)."""

from __future__ import annotations

import json

import pytest
from tests.compat import seed_blocks
from tests.compat.conftest import MINIMAL, write_tree

from sanakit.compat import import_config
from sanakit.errors import SanakitError

# SimpleTuner's TREAD documentation (TREAD.md, the model quickstarts): its config.json block
TREAD = {"routes": [{"selection_ratio": 0.5, "start_layer_idx": 2, "end_layer_idx": -2}]}
_MY_KEYS = ("grad_clip_method", "max_grad_norm", "validation_guidance_rescale")


def _entry(result, key: str):
    (entry,) = [e for e in result.mapping if e.key == key]
    return entry


def test_sana_example_clips_values_as_simpletuner_does(root) -> None:
    examples = root / "config" / "examples"
    (examples / "sana.lycoris-lokr").mkdir(parents=True)
    (examples / "sana.lycoris-lokr" / "config.json").write_text(
        json.dumps(seed_blocks.SANA_LOKR_EXAMPLE)
    )
    (examples / "sana.lycoris-lokr" / "lycoris_config.json").write_text(
        seed_blocks.SANA_LYCORIS_CONFIG
    )
    (examples / "multidatabackend-small-dreambooth-1024px.json").write_text(
        seed_blocks.MULTIDATABACKEND
    )
    path = "config/examples/sana.lycoris-lokr/config.json"
    try:
        import_config(path)
    except SanakitError as err:  # other keys of the example may still be reported...
        assert not any(key in str(err) for key in _MY_KEYS), str(err)  # ...but not these
    result = import_config(path, allow_unsupported=True)  # no "read but not reported" crash
    t = result.config.train
    assert (t.grad_clip_method, t.grad_clip) == ("value", 1.0)
    assert not any(key in w for w in result.warnings for key in _MY_KEYS)
    assert _entry(result, "grad_clip_method").target == "train.grad_clip_method"
    assert _entry(result, "max_grad_norm")[1:3] == (1, "train.grad_clip")
    rescale = _entry(result, "validation_guidance_rescale")
    assert (
        rescale.target is None and rescale.note == "ignored: off (SimpleTuner's default behaviour)"
    )


@pytest.mark.parametrize(
    ("keys", "method", "limit"),
    [
        ({}, "value", 2.0),  # SimpleTuner's defaults (cmd_args.py): value at 2.0
        ({"grad_clip_method": "norm"}, "norm", 2.0),
        ({"max_grad_norm": 0.01}, "value", 0.01),
        ({"--grad_clip_method": "value", "--max_grad_norm": 0}, "value", 0.0),  # clips nothing
        ({"grad_clip_method": "value", "max_grad_norm": "0.0"}, "value", 0.0),
        ({"--grad_clip_method": "norm", "--max_grad_norm": "1.5"}, "norm", 1.5),
        ({"max_grad_norm": -1}, "value", 0.0),  # SimpleTuner clips only when > 0
    ],
)
def test_grad_clip_maps_simpletuner_meaning_and_defaults(root, keys, method, limit) -> None:
    write_tree(root, {**MINIMAL, **keys})
    result = import_config("config/config.json")
    assert result.warnings == []
    assert (result.config.train.grad_clip_method, result.config.train.grad_clip) == (method, limit)
    assert f'grad_clip_method = "{method}"' in result.toml()  # written, not left to the default


def test_grad_clip_method_typo_is_one_line(root) -> None:
    write_tree(root, {**MINIMAL, "grad_clip_method": "Value"})
    with pytest.raises(SanakitError) as err:
        import_config("config/config.json")
    assert str(err.value).endswith("config.json: grad_clip_method = 'Value': use 'value' or 'norm'")


def test_tread_config_table_is_reported_with_its_reason(root) -> None:
    write_tree(root, {**MINIMAL, "tread_config": TREAD})
    with pytest.raises(SanakitError) as err:
        import_config("config/config.json")
    assert str(err.value) == (
        f"config/config.json: tread_config = {TREAD!r} is not supported: TREAD routing is not "
        f"implemented; remove it (or pass --allow-unsupported to drop it with a warning)"
    )
    result = import_config("config/config.json", allow_unsupported=True)
    assert result.warnings == [
        f"tread_config = {TREAD!r} dropped: TREAD routing is not implemented"
    ]
    assert _entry(result, "tread_config").target is None
    write_tree(root, {**MINIMAL, "--tread_config": {}})  # an empty table is off
    assert _entry(import_config("config/config.json"), "tread_config").note.startswith("ignored")


def test_sanakit_tables_are_not_a_simpletuner_config(root) -> None:
    write_tree(root, {"model": {"base": "models/x"}, "train": {"max_steps": 3}})
    with pytest.raises(SanakitError, match=r"\[model\] is a sanakit table: .*`sanakit train`"):
        import_config("config/config.json")


@pytest.mark.parametrize(
    ("value", "outcome"),
    [
        ("0.0", "ignored: off (SimpleTuner's default behaviour)"),  # config.json.example
        (0.0, "ignored: off (SimpleTuner's default behaviour)"),  # examples/*/config.json
        ("0", "ignored: off (SimpleTuner's default behaviour)"),
        ("0.7", "UNSUPPORTED, dropped: guidance rescale is not implemented in sanakit"),
    ],
)
def test_validation_guidance_rescale_numeric_string_zero_is_off(root, value, outcome) -> None:
    write_tree(root, {**MINIMAL, "--validation_guidance_rescale": value})
    result = import_config("config/config.json", allow_unsupported=True)
    assert _entry(result, "validation_guidance_rescale").note == outcome
    assert bool(result.warnings) == outcome.startswith("UNSUPPORTED")
