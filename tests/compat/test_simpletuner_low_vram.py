"""SimpleTuner's quantisation keys and low-memory optimizers (issue 15): base_model_precision,
text_encoder_1_precision, quantize_via and the bnb optimizer names map onto sanakit's options
or are rejected with the nearest one named; the quickstart's lowest-VRAM recipe trains."""

from __future__ import annotations

import json
import shutil

import pytest
from tests.compat import seed_blocks
from tests.compat.conftest import MINIMAL, write_tree
from tests.compat.test_simpletuner_train import BACKENDS, CONFIG, _images

from sanakit.cli import main
from sanakit.compat.simpletuner import import_config
from sanakit.errors import SanakitError

pytest.importorskip("bitsandbytes")
LORA = {**MINIMAL, "model_type": "lora"}


@pytest.mark.parametrize(
    ("value", "quantize"),
    [("nf4-bnb", "nf4"), ("int8-quanto", "int8"), ("int8-torchao", "int8"), ("no_change", "none")],
)
def test_base_model_precision_maps(root, value, quantize) -> None:
    write_tree(root, {**LORA, "--base_model_precision": value})
    result = import_config("config/config.json")
    assert result.config.model.quantize == quantize
    assert result.config.model.quantize_via is None  # sanakit's default: cpu


@pytest.mark.parametrize(
    ("value", "nearest", "ours"),
    [
        ("int4-quanto", "nf4-bnb", "nf4"),
        ("int2-quanto", "nf4-bnb", "nf4"),
        ("fp8-torchao", "int8-torchao", "int8"),
        ("fp8-quanto", "int8-quanto", "int8"),
    ],
)
def test_formats_sanakit_lacks_name_the_nearest(root, value, nearest, ours) -> None:
    write_tree(root, {**LORA, "--base_model_precision": value})
    with pytest.raises(SanakitError) as err:
        import_config("config/config.json")
    assert (
        f"base_model_precision = {value!r} is not supported: sanakit has no "
        f"{value.split('-')[0]} quantisation; the nearest it has is {nearest!r} "
        f"(-> model.quantize = {ours!r})"
    ) in str(err.value)
    result = import_config("config/config.json", allow_unsupported=True)
    assert result.config.model.quantize == "none" and len(result.warnings) == 1


def test_full_finetune_with_a_quantised_base_is_rejected(root) -> None:
    write_tree(root, {**MINIMAL, "model_type": "full", "--base_model_precision": "nf4-bnb"})
    with pytest.raises(SanakitError, match="a quantised base trains adapters only"):
        import_config("config/config.json")


def test_text_encoder_precision_and_quantize_via(root) -> None:
    keys = {"--text_encoder_1_precision": "int8-quanto", "--quantize_via": "accelerator"}
    write_tree(root, {**LORA, **keys})
    model = import_config("config/config.json").config.model
    assert (model.quantize, model.text_encoder_quantize, model.quantize_via) == (
        "none",
        "int8",
        "device",
    )
    write_tree(root, {**LORA, "--quantize_via": "cpu"})  # nothing quantised: ignored
    result = import_config("config/config.json")
    assert result.config.model.quantize_via is None
    assert {e.key: e.note for e in result.mapping}["quantize_via"] == (
        "ignored: nothing is quantised"
    )


@pytest.mark.parametrize(
    ("name", "ours"),
    [
        ("bnb-adamw8bit-paged", "paged_adamw8bit"),
        ("bnb-lion8bit-paged", "paged_lion8bit"),
        ("bnb-lion8bit", "lion8bit"),
        ("bnb-adamw", "adamw"),
        ("bnb-lion-paged", "optimi-lion"),
        ("optimi-lion", "optimi-lion"),
    ],
)
def test_low_memory_optimizer_names(root, name, ours) -> None:
    write_tree(root, {**LORA, "--optimizer": name})
    assert import_config("config/config.json").config.train.optimizer == ours


def test_lowest_vram_recipe_trains_two_steps(root, capsys, tiny_pipeline_dir) -> None:
    """The quickstart's "Lowest VRAM config" (nf4-bnb, bnb-lion8bit-paged, quantize_via cpu,
    gradient checkpointing; LoKr) on a tiny random Sana, on the CPU."""
    shutil.copytree(tiny_pipeline_dir, root / "models" / "tiny-sana")  # the session's copy
    _images(root / "datasets" / "subject")
    recipe = json.loads(seed_blocks.LOWEST_VRAM_CONFIG)
    recipe |= {
        key: CONFIG[key]
        for key in ("--pretrained_model_name_or_path", "--output_dir", "--report_to", "--seed")
    }
    recipe |= {"--max_train_steps": 2, "--mixed_precision": "no", "--checkpointing_steps": 2}
    write_tree(root, recipe, BACKENDS, library=None, lycoris=seed_blocks.SANA_LYCORIS_CONFIG)
    assert main(["train", "config/config.json", "--log-level", "WARNING"]) == 0
    out = capsys.readouterr().out
    assert "-> model.quantize" in out and "-> train.optimizer" in out
    assert "done: 2 steps" in out
    resolved = json.loads((root / "output" / "tiny" / "config.json").read_text())
    assert resolved["model"]["quantize"] == "nf4"
    assert resolved["train"]["optimizer"] == "paged_lion8bit"
    assert list((root / "output" / "tiny").rglob("lokr_weights.safetensors"))
