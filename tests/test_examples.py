"""Every example config in examples/ is valid."""

from __future__ import annotations

from pathlib import Path

import pytest

from sanakit.train.config import load_run_config

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.toml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_config_validates(path: Path) -> None:
    config = load_run_config(path)
    assert config.model.base and config.data.datasets
