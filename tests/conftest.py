"""Shared pytest fixtures.

Tiny diffusers-format Sana pipeline folders (see :mod:`tests.helpers.tiny_pipeline`) are written
once per test session and shared by every test file; treat them as read-only (copy one with
``shutil.copytree`` before modifying it).
"""

from __future__ import annotations

from sanakit.hardware import configure_thread_policy

# Before torch is imported (tests.helpers imports it): OpenMP threads that spin long between
# ops make the suite 20x+ slower when anything else runs on the cores (see sanakit.hardware).
configure_thread_policy()

from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from tests.helpers.tiny_pipeline import write_tiny_pipeline  # noqa: E402


@pytest.fixture(scope="session")
def tiny_pipeline_factory(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """``factory(sprint=False, scheduler=None) -> Path``: a cached tiny pipeline folder per
    (sprint, scheduler) pair, written on first use (~0.3 s each)."""
    cache: dict[tuple[bool, str | None], Path] = {}

    def factory(sprint: bool = False, scheduler: str | None = None) -> Path:
        key = (sprint, scheduler)
        if key not in cache:
            name = f"tiny-{'sprint' if sprint else 'sana'}-{scheduler or 'default'}"
            folder = tmp_path_factory.mktemp(name)
            cache[key] = write_tiny_pipeline(folder, sprint=sprint, scheduler=scheduler)
        return cache[key]

    return factory


@pytest.fixture(scope="session")
def tiny_pipeline_dir(tiny_pipeline_factory: Callable[..., Path]) -> Path:
    """A tiny Sana pipeline with Sana's DPMSolverMultistepScheduler (flow_shift 3)."""
    return tiny_pipeline_factory()


@pytest.fixture(scope="session")
def tiny_euler_pipeline_dir(tiny_pipeline_factory: Callable[..., Path]) -> Path:
    """The same tiny Sana with FlowMatchEulerDiscreteScheduler(shift=3)."""
    return tiny_pipeline_factory(scheduler="euler")


@pytest.fixture(scope="session")
def tiny_sprint_pipeline_dir(tiny_pipeline_factory: Callable[..., Path]) -> Path:
    """A tiny Sana-Sprint pipeline (guidance embedding, RMS qk-norm, SCMScheduler)."""
    return tiny_pipeline_factory(sprint=True)


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random CLIP folder (32 px images, 16-d projections; :mod:`tests.helpers.tiny_clip`)."""
    from tests.helpers.tiny_clip import write_tiny_clip

    return write_tiny_clip(tmp_path_factory.mktemp("clip") / "clip")
