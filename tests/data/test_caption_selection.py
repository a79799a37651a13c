"""Several captions per image: sidecar/manifest scores, first / uniform / clip_weighted selection
(frequencies against the softmax, exact resume), every caption encoded once (issue 17)."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from sanakit.config import DataConfig, from_dict
from sanakit.data import build_cache, make_loader, open_cache
from sanakit.data.captions import CaptionProblem, read_caption_sidecar
from sanakit.data.loader import caption_cdf
from sanakit.data.sampler import BatchPlanner, DatasetPlan
from sanakit.errors import SanakitError
from tests.data.fakes import FakeAutoencoder, FakeTextEncoder, write_image

SCORES = [31.0, 30.0, 28.5]  # CLIP scores of the three captions of every image


def _softmax(scores: list[float], temperature: float) -> np.ndarray:
    z = np.exp((np.asarray(scores) - max(scores)) / temperature)
    return z / z.sum()


def _plan(selection: str, temperature: float = 1.0, n: int = 100) -> DatasetPlan:
    from sanakit.config import DatasetConfig

    cfg = DatasetConfig(
        id="d",
        path="x",
        caption_selection=selection,
        caption_temperature=temperature,
    )
    samples = [{"id": str(i), "texts": ["a", "b", "c"], "caption_scores": SCORES} for i in range(n)]
    return DatasetPlan(
        id="d",
        buckets={(64, 64): np.arange(n)},
        n_captions=np.full(n, 3),
        repeats=0,
        weight=1.0,
        caption_dropout=0.0,
        flip=False,
        fingerprint="f",
        caption_cdf=caption_cdf(cfg, samples),
    )


def _draws(plan: DatasetPlan, steps: int, batch: int = 10) -> np.ndarray:
    planner = BatchPlanner([plan], batch, 1, seed=7)
    return np.concatenate([planner.next().rows[:, 1] for _ in range(steps)])


@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_clip_weighted_frequencies_match_the_softmax(temperature):
    draws = _draws(_plan("clip_weighted", temperature), 2000)  # 20k draws
    n = len(draws)
    assert n == 20_000
    p = _softmax(SCORES, temperature)
    counts = np.bincount(draws, minlength=3)
    for k in range(3):
        se = math.sqrt(p[k] * (1 - p[k]) / n)
        assert abs(counts[k] / n - p[k]) < 3 * se, (k, counts[k] / n, p[k])


def test_first_and_uniform():
    assert set(_draws(_plan("first"), 50).tolist()) == {0}
    counts = np.bincount(_draws(_plan("uniform"), 600), minlength=3) / 6000
    assert np.all(np.abs(counts - 1 / 3) < 3 * math.sqrt(2 / 9 / 6000))


def test_resume_mid_epoch_reproduces_the_caption_choices():
    plan = _plan("clip_weighted")
    planner = BatchPlanner([plan], 10, 1, seed=3)
    for _ in range(4):  # an epoch is 10 batches: stop in the middle
        planner.next()
    state = json.loads(json.dumps(planner.state_dict()))
    after = [planner.next().rows for _ in range(12)]  # into the next epoch
    resumed = BatchPlanner([_plan("clip_weighted")], 10, 1, seed=3)
    resumed.load_state_dict(state)
    for want in after:
        assert np.array_equal(resumed.next().rows, want)


def test_uniform_keeps_the_old_draws():
    """Uniform is the planner's original floor(u n) on the epoch generator's stream (plans
    without caption_cdf draw as before: golden losses and old checkpoints are unchanged)."""
    from sanakit.data.sampler import _stable_int

    plan = _plan("uniform", n=20)
    assert plan.caption_cdf is None
    rng = np.random.default_rng([5, _stable_int("d"), 0])
    occ = rng.permutation(np.arange(20))
    want = np.floor(rng.random(20) * 3).astype(np.int64)
    rows = np.concatenate([r for _, r in BatchPlanner([plan], 10, 1, seed=5).epoch_plan(0, 0)])
    got = dict(zip(rows[:, 0].tolist(), rows[:, 1].tolist()))
    assert got == dict(zip(occ.tolist(), want.tolist()))


def test_sidecar_parsing(tmp_path):
    image = tmp_path / "a.png"
    sidecar = tmp_path / "a.json"
    sidecar.write_text(json.dumps({"captions": [{"text": " x ", "clip_score": 3}, "y"]}))
    assert read_caption_sidecar(image) == (("x", "y"), (3.0, None))
    sidecar.write_text(json.dumps({"width": 3}))  # other metadata: not a caption sidecar
    assert read_caption_sidecar(image) is None
    sidecar.write_text(json.dumps({"captions": [{"text": "x", "clip_score": "high"}]}))
    with pytest.raises(CaptionProblem, match="not a number"):
        read_caption_sidecar(image)


def _dataset(root: Path, scored: bool = True) -> Path:
    """6 images, each with 3 captions; captions 'shared a/b' appear on several images."""
    for i in range(6):
        path = write_image(root / f"img{i}.png", 64, 64, seed=i)
        texts = [f"image {i} long caption", "shared a" if i % 2 else "shared b", f"tags {i}"]
        entries = [
            {"text": t, **({"clip_score": s} if scored else {})} for t, s in zip(texts, SCORES)
        ]
        path.with_suffix(".json").write_text(json.dumps({"captions": entries}))
    return root


def _config(tmp_path: Path, **dataset) -> DataConfig:
    raw = {
        "cache_dir": str(tmp_path / "cache"),
        "datasets": [{"id": "s", "path": str(tmp_path / "img"), "resolution": 64, **dataset}],
    }
    return from_dict(DataConfig, raw, where="data")


def test_every_caption_is_encoded_once_and_weighted_loading_works(tmp_path):
    _dataset(tmp_path / "img")
    cfg = _config(tmp_path, caption_selection="clip_weighted", caption_temperature=0.5)
    te = FakeTextEncoder()
    build_cache(cfg, FakeAutoencoder(), te, batch_size=2, progress=False)
    distinct = {f"image {i} long caption" for i in range(6)} | {f"tags {i}" for i in range(6)}
    distinct |= {"shared a", "shared b"}
    assert Counter(te.prompts) == Counter(distinct)  # each once, the shared ones too
    cache = open_cache(cfg)
    ((_, samples),) = cache.datasets
    assert all(s["caption_scores"] == SCORES and len(s["texts"]) == 3 for s in samples)
    keys = {k for s in samples for k in s["texts"]}
    assert len(keys) == len(distinct)
    te2 = FakeTextEncoder()  # a rebuild (e.g. after a temperature change) encodes nothing
    build_cache(
        _config(tmp_path, caption_selection="uniform"), FakeAutoencoder(), te2, batch_size=2,
        progress=False,
    )  # fmt: skip
    assert te2.prompts == []
    loader = make_loader(cfg, batch_size=2, seed=0)
    batch = next(loader)
    assert batch["latents"].shape[0] == 2


def test_clip_weighted_with_unscored_captions_is_refused_with_the_fix(tmp_path):
    _dataset(tmp_path / "img", scored=False)
    cfg = _config(tmp_path, caption_selection="clip_weighted")
    build_cache(cfg, FakeAutoencoder(), FakeTextEncoder(), batch_size=2, progress=False)
    with pytest.raises(
        SanakitError, match="6 images have captions without a clip_score.*score-captions"
    ):
        make_loader(cfg, batch_size=2, seed=0)


@pytest.mark.parametrize(
    ("dataset", "needle"),
    [
        ({"caption_temperature": 2.0}, "only used with caption_selection = 'clip_weighted'"),
        ({"caption_selection": "clip_weighted", "caption_temperature": 0.0}, "must be > 0"),
        ({"caption_score_column": "scores"}, "caption_score_column is only used with type"),
    ],
)
def test_selection_options_that_cannot_work_are_rejected(tmp_path, dataset, needle):
    with pytest.raises(SanakitError, match=needle):
        _config(tmp_path, **dataset)


def test_manifest_score_column(tmp_path):
    from sanakit.data.sources import discover

    for i in range(2):
        write_image(tmp_path / f"m{i}.png", 64, 64, seed=i)
    rows = [
        {"image": "m0.png", "caption": ["a", "b"], "scores": [1.0, 2.0]},
        {"image": "m1.png", "caption": ["c", "d"], "scores": [1.0]},
    ]
    (tmp_path / "meta.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    raw = {"id": "m", "path": str(tmp_path / "meta.jsonl"), "type": "manifest"}
    from sanakit.config import DatasetConfig

    items = discover(from_dict(DatasetConfig, {**raw, "caption_score_column": "scores"}))
    assert items[0].caption_scores == (1.0, 2.0) and items[0].problem is None
    assert items[1].problem == "column 'scores' has 1 scores for 2 captions"


def test_loader_resume_mid_epoch_gives_the_same_weighted_captions(tmp_path):
    _dataset(tmp_path / "img")
    cfg = _config(tmp_path, caption_selection="clip_weighted", caption_temperature=0.7)
    build_cache(cfg, FakeAutoencoder(), FakeTextEncoder(), batch_size=2, progress=False)
    loader = make_loader(cfg, batch_size=2, seed=1)
    for _ in range(2):  # 3 batches per epoch: stop inside the first
        next(loader)
    state = json.loads(json.dumps(loader.state_dict()))
    want = [next(loader)["text"] for _ in range(5)]  # into the next epochs
    resumed = make_loader(cfg, batch_size=2, seed=1)
    resumed.load_state_dict(state)
    for text in want:
        assert torch.equal(next(resumed)["text"], text)
