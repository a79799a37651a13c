"""A SimpleTuner-like tree for the importer tests: config/ with the seed's files, and the seed's
Hub model id present in a fake local Hugging Face cache (nothing is downloaded)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.compat import seed_blocks

HUB_ID = "terminusresearch/sana-1.6b-1024px"
# the smallest config.json the importer takes (the tests add the keys they check)
MINIMAL = {
    "model_family": "sana",
    "model_type": "full",
    "pretrained_model_name_or_path": HUB_ID,
    "data_backend_config": "config/multidatabackend.json",
    "max_train_steps": 10,
}


def write_tree(
    root: Path,
    config: str | dict,
    backends: str | list = seed_blocks.MULTIDATABACKEND,
    library: str | None = seed_blocks.PROMPT_LIBRARY,
    lycoris: str | None = seed_blocks.SANA_LYCORIS_CONFIG,
) -> Path:
    """Write root/config/{config,multidatabackend,user_prompt_library,lycoris_config}.json."""
    folder = root / "config"
    folder.mkdir(parents=True, exist_ok=True)
    texts = {"config.json": config, "multidatabackend.json": backends}
    texts |= {"user_prompt_library.json": library, "lycoris_config.json": lycoris}
    for name, text in texts.items():
        if text is not None:
            body = text if isinstance(text, str) else json.dumps(text, indent=2)
            (folder / name).write_text(body, encoding="utf-8")
    return folder / "config.json"


@pytest.fixture()
def hub_cache(tmp_path, monkeypatch) -> Path:
    """A local HF cache holding HUB_ID as a (skeleton) diffusers Sana folder."""
    import huggingface_hub.constants

    cache = tmp_path / "hf-cache"
    repo = cache / ("models--" + HUB_ID.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = repo / "snapshots" / commit
    (snapshot / "transformer").mkdir(parents=True)
    (snapshot / "model_index.json").write_text('{"_class_name": "SanaPipeline"}')
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return snapshot


@pytest.fixture()
def root(tmp_path, monkeypatch, hub_cache) -> Path:
    """The SimpleTuner repository root (the current directory, as when running train.sh)."""
    folder = tmp_path / "SimpleTuner"
    folder.mkdir()
    monkeypatch.chdir(folder)
    return folder
