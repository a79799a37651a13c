"""SimpleTuner's own Sana example (simpletuner/examples/sana.lycoris-lokr: its config.json as
published, its LoKr lycoris_config.json and a multidatabackend for a tiny local folder) imports
with no edits and trains 2 steps on a tiny pipeline (issue 16, proof). Only the two keys that
need what sanakit does not have (a local CLIP model; SimpleTuner's built-in prompt library) are
dropped, each with its one-line reason."""

from __future__ import annotations

import json

import pytest
from tests.compat import seed_blocks
from tests.compat.conftest import MINIMAL, write_tree
from tests.compat.test_simpletuner_train import _images
from tests.helpers.tiny_pipeline import write_tiny_pipeline

from sanakit.cli import main
from sanakit.compat import import_config
from sanakit.errors import SanakitError

BACKEND_FILE = "config/examples/multidatabackend-small-dreambooth-1024px.json"
LYCORIS_FILE = "config/examples/sana.lycoris-lokr/lycoris_config.json"
# simpletuner/examples/sana.lycoris-lokr/config.json as published, except the base model: the
# tiny local pipeline instead of terminusresearch/sana-1.6b-1024px
EXAMPLE = {**seed_blocks.SANA_LOKR_EXAMPLE, "pretrained_model_name_or_path": "models/tiny-sana"}
# a small dreambooth set as in SimpleTuner's multidatabackend examples, at 64 px for the CPU
BACKENDS = [
    {
        "id": "subject",
        "type": "local",
        "instance_data_dir": "datasets/subject",
        "crop": False,
        "resolution": 64,
        "resolution_type": "pixel",
        "minimum_image_size": 64,
        "caption_strategy": "textfile",
        "cache_dir_vae": "cache/vae/sana/subject",
        "repeats": 1,
    },
    {
        "id": "text-embeds",
        "dataset_type": "text_embeds",
        "default": True,
        "type": "local",
        "cache_dir": "cache/text/sana",
    },
]
DROPPED = [
    "evaluation_type = 'clip' dropped: CLIP-score evaluation needs the CLIP model "
    "'openai/clip-vit-large-patch14-336' on disk (sanakit downloads nothing): run `hf download "
    "openai/clip-vit-large-patch14-336 --local-dir models/clip-vit-large-patch14-336` and set "
    "pretrained_evaluation_model_name_or_path to models/clip-vit-large-patch14-336",
    "validation_prompt_library = True dropped: SimpleTuner's built-in prompt library (its "
    "helpers/prompts.py, validated in addition to validation_prompt) is not shipped with "
    "sanakit; list those prompts in a user_prompt_library file (-> validation.prompt_library)",
]


def _tree(root) -> None:
    write_tiny_pipeline(root / "models" / "tiny-sana")
    _images(root / "datasets" / "subject")
    (root / "config" / "examples" / "sana.lycoris-lokr").mkdir(parents=True)
    (root / "config" / "config.json").write_text(json.dumps(EXAMPLE, indent=4))
    (root / BACKEND_FILE).write_text(json.dumps(BACKENDS, indent=4))
    (root / LYCORIS_FILE).write_text(seed_blocks.SANA_LYCORIS_CONFIG)


def test_sana_example_imports_dropping_only_the_unlanded_features(root) -> None:
    _tree(root)
    with pytest.raises(SanakitError) as err:
        import_config("config/config.json")
    first, *items = str(err.value).splitlines()
    assert "2 SimpleTuner settings are not supported" in first
    assert items == [
        f"  {i}. {line.replace(' dropped:', ' is not supported:')}"
        for i, line in enumerate(DROPPED, 1)
    ]
    result = import_config("config/config.json", allow_unsupported=True)
    assert result.warnings == DROPPED
    cfg = result.config
    t = cfg.train
    assert (t.grad_clip_method, t.grad_clip) == ("value", 1.0)
    assert (t.lr, t.lr_scheduler, t.warmup_steps, t.max_steps) == (
        2e-5,
        "constant_with_warmup",
        100,
        100,
    )
    assert t.flow_shift == 3.0 and t.method == "lokr" and t.lokr.full_matrix
    assert t.ema is not None and t.ema.update_every == 25


@pytest.mark.slow
def test_sana_example_trains_two_steps_on_a_tiny_pipeline(root, capsys) -> None:
    _tree(root)
    fast = ["train.max_steps=2", "validation.resolutions=['64x64']", "validation.steps=2"]
    args = ["train", "config/config.json", "--allow-unsupported", "--log-level", "WARNING"]
    assert main([*args, *(x for s in fast for x in ("--set", s))]) == 0
    out = capsys.readouterr().out
    assert "done: 2 steps" in out
    run = root / "output" / "examples" / "sana.lycoris-lokr"
    assert list(run.rglob("lokr_weights.safetensors"))
    assert list(run.glob("validation/**/*.png"))


@pytest.mark.parametrize("kind", [None, "none", False, ""])
def test_eval_keys_are_accepted_while_evaluation_is_off(root, kind) -> None:
    keys = {"evaluation_type": kind, "num_eval_images": 4, "eval_dataset_id": "subject"}
    write_tree(root, {**MINIMAL, **keys}, BACKENDS)
    result = import_config("config/config.json")
    assert result.warnings == [] and result.config.validation.eval_datasets == ()
    notes = {e.key: e.note for e in result.mapping if e.key in keys}
    assert notes == {
        "evaluation_type": "ignored: off (SimpleTuner's default behaviour)",
        "num_eval_images": "ignored: only used by SimpleTuner's evaluation_type, which is off",
        "eval_dataset_id": "ignored: only used by SimpleTuner's evaluation_type, which is off",
    }


def test_clip_evaluation_is_one_precise_reason(root) -> None:
    keys = {"--evaluation_type": "clip", "--num_eval_images": 4, "--eval_dataset_id": "subject"}
    write_tree(root, {**MINIMAL, **keys}, BACKENDS)
    with pytest.raises(SanakitError) as err:
        import_config("config/config.json")
    assert str(err.value) == (
        f"config/config.json: {DROPPED[0].replace(' dropped:', ' is not supported:')}"
        "; remove it (or pass --allow-unsupported to drop it with a warning)"
    )
    result = import_config("config/config.json", allow_unsupported=True)
    assert result.warnings == DROPPED[:1]
    notes = {
        e.key: e.note for e in result.mapping if e.key in ("num_eval_images", "eval_dataset_id")
    }
    assert set(notes.values()) == {"ignored: only used by evaluation_type, dropped with it"}
