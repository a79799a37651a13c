"""Every example config in examples/ is valid, and its relative paths are read against the
example's own folder (where a user copies it: next to models/ and data/)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sanakit.config import load_config_file
from sanakit.train.config import load_run_config

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.toml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_config_validates(path: Path, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # from any directory
    config = load_run_config(path)
    raw = load_config_file(path)
    assert config.model.base == str(path.parent / raw["model"]["base"])
    assert config.data.datasets[0].path == str(path.parent / raw["data"]["datasets"][0]["path"])
    assert config.output.dir == str(path.parent / raw["output"]["dir"])
