from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.tiny_clip import write_tiny_clip


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random CLIP folder (32 px images, 16-d projections), written once per session."""
    return write_tiny_clip(tmp_path_factory.mktemp("clip") / "clip")
