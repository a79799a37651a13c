"""The configuration reference documents every key the config accepts."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from sanakit.adapters import LokrSpec, LoraSpec
from sanakit.config import DataConfig, DatasetConfig
from sanakit.sprint.config import DistillSection
from sanakit.train.config import (
    EmaSection,
    ModelSection,
    OutputSection,
    TrainSection,
    ValidationSection,
)

DOC = (Path(__file__).resolve().parents[1] / "docs" / "configuration.md").read_text()
SECTIONS = [
    ModelSection,
    TrainSection,
    LoraSpec,
    LokrSpec,
    EmaSection,
    ValidationSection,
    OutputSection,
    DistillSection,
]


@pytest.mark.parametrize(
    "section", [*SECTIONS, DataConfig, DatasetConfig], ids=lambda c: c.__name__
)
def test_every_config_key_is_documented(section) -> None:
    missing = [f.name for f in dataclasses.fields(section) if f"`{f.name}`" not in DOC]
    assert not missing, f"undocumented {section.__name__} keys: {missing}"
