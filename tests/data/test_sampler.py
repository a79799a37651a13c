"""The batch planner's edge cases: no numpy warning leaks before the clean error when every
dataset is empty (all images skipped), and bad sampling weights are rejected in one line."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from sanakit.data import build_cache, check_dataset_size, make_loader
from sanakit.data.sampler import BatchPlanner, DatasetPlan
from sanakit.errors import SanakitError
from tests.data.fakes import FakeAutoencoder, FakeTextEncoder
from tests.data.test_cache import config


def _plan(id: str, samples: int, weight: float) -> DatasetPlan:
    buckets = {(64, 64): np.arange(samples, dtype=np.int64)} if samples else {}
    return DatasetPlan(
        id=id,
        buckets=buckets,
        n_captions=np.ones(samples, dtype=np.int64),
        repeats=0,
        weight=weight,
        caption_dropout=0.0,
        flip=False,
        fingerprint=id,
    )


def test_all_images_skipped_gives_the_error_without_numpy_warnings(tmp_path: Path) -> None:
    folder = tmp_path / "broken"
    folder.mkdir()
    for i in range(3):
        (folder / f"img{i}.png").write_bytes(b"not an image")
        (folder / f"img{i}.txt").write_text("a caption")
    cfg = config(tmp_path, [{"id": "broken", "path": str(folder)}])
    build_cache(cfg, FakeAutoencoder(), FakeTextEncoder(), batch_size=2, progress=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(SanakitError, match=r"\('broken'\) has no usable images"):
            check_dataset_size(cfg, batch_size=2)
        with pytest.raises(SanakitError, match="no usable images"):
            make_loader(cfg, batch_size=2)
    assert [str(w.message) for w in caught] == []


def test_planner_with_only_zero_weights_raises_cleanly() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any RuntimeWarning fails the test
        planner = BatchPlanner([_plan("empty", 0, 0.0)], batch_size=1, world_size=1, seed=0)
        assert planner.total_batches_per_epoch == 0
        with pytest.raises(SanakitError, match="every sampling weight is 0"):
            planner.next()


def test_zero_weight_dataset_is_never_drawn() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        planner = BatchPlanner(
            [_plan("empty", 0, 0.0), _plan("full", 4, 4.0)], batch_size=2, world_size=1, seed=3
        )
        assert {planner.next().dataset for _ in range(20)} == {1}


@pytest.mark.parametrize("weight", [-1.0, float("nan"), float("inf")])
def test_bad_weights_are_rejected(weight: float) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(SanakitError, match=r"dataset 'x': sampling weight .* finite and >= 0"):
            BatchPlanner([_plan("x", 2, weight)], batch_size=1, world_size=1, seed=0)
