"""SimpleTuner's evaluation_type: clip (+ pretrained_evaluation_model_name_or_path,
eval_dataset_id, num_eval_images) -> [validation] clip_model / eval_datasets (issue 17)."""

from __future__ import annotations

import shutil

import pytest
from tests.compat.conftest import MINIMAL, write_tree
from tests.compat.test_simpletuner_sana_example import BACKENDS

from sanakit.compat import import_config
from sanakit.errors import SanakitError

HELD = {**BACKENDS[0], "id": "held", "instance_data_dir": "datasets/held"}


def _config(**keys) -> dict:
    return {**MINIMAL, "validation_prompt": "a red square", **keys}


def test_clip_evaluation_maps_to_clip_model_and_held_out_datasets(root, tiny_clip_dir) -> None:
    shutil.copytree(tiny_clip_dir, root / "models" / "clip")
    keys = {
        "evaluation_type": "clip",
        "pretrained_evaluation_model_name_or_path": "models/clip",
        "eval_dataset_id": "held",
        "num_eval_images": 4,
    }
    write_tree(root, _config(**keys), [BACKENDS[0], HELD, BACKENDS[1]])
    result = import_config("config/config.json")
    assert result.warnings == []
    v = result.config.validation
    assert v.clip_model == str(root / "models" / "clip") and v.eval_datasets == ("held",)
    assert v.scored_metric == "clip_score"
    notes = {e.key: (e.target, e.note) for e in result.mapping if e.key in keys}
    assert notes["pretrained_evaluation_model_name_or_path"][0] == "validation.clip_model"
    assert notes["eval_dataset_id"][0] == "validation.eval_datasets"
    assert notes["num_eval_images"] == (
        None,
        "ignored: sanakit CLIP-scores every validation image and evaluates every held-out image",
    )


def test_the_default_clip_id_is_taken_from_the_local_hf_cache(
    root, tiny_clip_dir, monkeypatch
) -> None:
    import huggingface_hub.constants

    cache = root.parent / "hf-cache"  # the compat conftest's fake cache
    repo = cache / "models--openai--clip-vit-large-patch14-336"
    commit = "89abcdef0123456789abcdef0123456789abcdef"
    shutil.copytree(tiny_clip_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    assert str(cache) == huggingface_hub.constants.HF_HUB_CACHE
    write_tree(root, _config(evaluation_type="clip"), BACKENDS)
    result = import_config("config/config.json")
    assert result.config.validation.clip_model == str(repo / "snapshots" / commit)
    entry = next(e for e in result.mapping if e.target == "validation.clip_model")
    assert entry.key == "evaluation_type" and "SimpleTuner's default" in entry.note


def test_a_missing_clip_model_says_how_to_get_it(root) -> None:
    keys = {"evaluation_type": "clip", "pretrained_evaluation_model_name_or_path": "org/clip-x"}
    write_tree(root, _config(**keys, eval_dataset_id="held"), BACKENDS)
    with pytest.raises(SanakitError) as err:
        import_config("config/config.json")
    message = str(err.value)
    assert "needs the CLIP model 'org/clip-x' on disk" in message
    assert "hf download org/clip-x --local-dir models/clip-x" in message
    result = import_config("config/config.json", allow_unsupported=True)
    assert result.config.validation.clip_model is None
    assert result.config.validation.eval_datasets == ()
    notes = {e.key: e.note for e in result.mapping}
    assert notes["eval_dataset_id"] == "ignored: only used by evaluation_type, dropped with it"


def test_other_evaluation_types_are_unsupported(root) -> None:
    write_tree(root, _config(evaluation_type="fid"), BACKENDS)
    with pytest.raises(SanakitError, match="SimpleTuner's only evaluation is 'clip'"):
        import_config("config/config.json")
