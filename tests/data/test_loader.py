"""The loader: batch contents, determinism, exact resume, ranks, repeats/probability frequencies,
caption dropout/variants and the dataset-size check."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch

from sanakit.config import DataConfig
from sanakit.data import build_cache, check_dataset_size, make_loader, open_cache
from sanakit.errors import SanakitError
from tests.data.fakes import FakeAutoencoder, FakeTextEncoder, write_image
from tests.data.test_cache import config, make_folder


def _build(cfg: DataConfig, batch_size: int = 2, world_size: int = 1) -> None:
    build_cache(
        cfg,
        FakeAutoencoder(),
        FakeTextEncoder(),
        batch_size=batch_size,
        world_size=world_size,
        progress=False,
    )


@pytest.fixture(scope="module")
def two_sets(tmp_path_factory: pytest.TempPathFactory) -> DataConfig:
    tmp = tmp_path_factory.mktemp("loader")
    a, b = make_folder(tmp / "a", 12, seed=1), make_folder(tmp / "b", 8, seed=2)
    cfg = config(
        tmp,
        [
            {"id": "a", "path": str(a), "flip": True, "resolution": 128},
            {"id": "b", "path": str(b), "loss_weight": 0.5, "is_regularisation_data": True},
        ],
    )
    _build(cfg)
    return cfg


def _key(batch: dict) -> tuple:
    return (
        batch["dataset"],
        tuple(batch["ids"]),
        batch["latents"].sum().item(),
        batch["text"].sum().item(),
    )


def test_batch_contents(two_sets: DataConfig) -> None:
    loader = make_loader(two_sets, batch_size=2, seed=0)
    cache = open_cache(two_sets)
    for _ in range(20):
        batch = next(loader)
        assert batch["latents"].dtype == torch.float32 and batch["latents"].shape[:2] == (2, 4)
        # the 12-token window trimmed to the batch's longest caption (text_window)
        length = batch["text"].shape[1]
        assert batch["text"].shape == (2, length, 16) and 1 <= length <= 12
        assert batch["text_mask"].shape == (2, length) and batch["text_mask"].dtype == torch.int64
        assert batch["text_mask"][:, -1].any() and batch["text"].is_contiguous()
        assert batch["mask"] is None and len(batch["ids"]) == 2
        assert all(i.startswith(batch["dataset"] + "/") for i in batch["ids"])
        samples = {s["id"]: s for s in cache.datasets[0 if batch["dataset"] == "a" else 1][1]}
        assert len({tuple(samples[i]["bucket"]) for i in batch["ids"]}) == 1  # one bucket per batch
        h, w = samples[batch["ids"][0]]["bucket"]
        assert batch["latents"].shape[2:] == (h // 8, w // 8)
        weight, reg = (0.5, True) if batch["dataset"] == "b" else (1.0, False)
        assert torch.equal(batch["loss_weight"], torch.full((2,), weight))
        assert torch.equal(batch["is_regularisation"], torch.full((2,), reg))


def test_deterministic_given_seed(two_sets: DataConfig) -> None:
    first = [_key(next(make_loader(two_sets, batch_size=2, seed=3))) for _ in range(1)]
    one, two = (
        make_loader(two_sets, batch_size=2, seed=3),
        make_loader(two_sets, batch_size=2, seed=3),
    )
    run1, run2 = [_key(next(one)) for _ in range(30)], [_key(next(two)) for _ in range(30)]
    assert run1 == run2 and run1[0] == first[0]
    other = make_loader(two_sets, batch_size=2, seed=4)
    assert [_key(next(other)) for _ in range(30)] != run1


def test_state_dict_resume_gives_the_same_next_batches(two_sets: DataConfig) -> None:
    reference = make_loader(two_sets, batch_size=2, seed=5)
    expected = [_key(next(reference)) for _ in range(40)]  # crosses epoch boundaries
    interrupted = make_loader(two_sets, batch_size=2, seed=5)
    for _ in range(17):
        next(interrupted)
    state = json.loads(json.dumps(interrupted.state_dict()))  # survives a JSON checkpoint
    resumed = make_loader(two_sets, batch_size=2, seed=5)
    resumed.load_state_dict(state)
    assert resumed.step == 17
    assert [_key(next(resumed)) for _ in range(23)] == expected[17:]
    with pytest.raises(
        SanakitError, match="seed = 5, this run 6; exact resume needs the same value"
    ):
        make_loader(two_sets, batch_size=2, seed=6).load_state_dict(state)
    relaxed = make_loader(two_sets, batch_size=2, seed=6)
    relaxed.load_state_dict(state, strict=False)
    assert relaxed.step == 17
    changed = json.loads(json.dumps(state))
    changed["datasets"]["a"]["fingerprint"] = "0" * 32
    with pytest.raises(SanakitError, match="dataset 'a' changed since the checkpoint"):
        make_loader(two_sets, batch_size=2, seed=5).load_state_dict(changed)
    restarted = make_loader(two_sets, batch_size=2, seed=5)
    restarted.load_state_dict(changed, strict=False)
    assert restarted.state_dict()["datasets"]["a"]["position"] == 0
    assert restarted.state_dict()["datasets"]["b"] == state["datasets"]["b"]


def test_epochs_advance_and_reshuffle(two_sets: DataConfig) -> None:
    loader = make_loader(two_sets, batch_size=2, seed=0)
    per_epoch = loader.planner.total_batches_per_epoch
    buckets = [
        Counter(tuple(s["bucket"]) for s in samples) for _, samples in open_cache(two_sets).datasets
    ]
    assert per_epoch == sum(
        n // 2 for counts in buckets for n in counts.values()
    )  # remainders wait
    for _ in range(per_epoch):
        next(loader)
    assert loader.epoch == 1
    a_epochs = [loader.planner.epoch_plan(0, e) for e in (0, 1)]
    assert [r.tolist() for _, r in a_epochs[0]] != [r.tolist() for _, r in a_epochs[1]]
    # with repeats = 0 a sample appears at most once per epoch; only bucket remainders wait
    ids = Counter(int(i) for _, rows in a_epochs[0] for i in rows[:, 0])
    assert set(ids.values()) == {1}
    assert len(ids) == 12 - sum(n % 2 for n in buckets[0].values())


def test_ranks_get_disjoint_samples_from_the_same_bucket(tmp_path: Path) -> None:
    cfg = config(
        tmp_path,
        [{"id": "a", "path": str(make_folder(tmp_path / "a", 24, sizes=[(64, 64), (128, 64)]))}],
    )
    _build(cfg, batch_size=2, world_size=3)
    loaders = [make_loader(cfg, batch_size=2, seed=1, rank=r, world_size=3) for r in range(3)]
    seen: list[str] = []
    for _ in range(4):  # one epoch: 24 images / (2 x 3)
        batches = [next(loader) for loader in loaders]
        assert len({b["latents"].shape for b in batches}) == 1  # same bucket on every rank
        for b in batches:
            seen += b["ids"]
    assert len(seen) == 24 and len(set(seen)) == 24


def test_repeats_and_probability_frequencies(tmp_path: Path) -> None:
    a, b = (
        make_folder(tmp_path / "a", 4, seed=1, sizes=[(64, 64)]),
        make_folder(tmp_path / "b", 4, seed=2, sizes=[(64, 64)]),
    )
    cfg = config(tmp_path, [{"id": "a", "path": str(a)}, {"id": "b", "path": str(b), "repeats": 3}])
    _build(cfg)
    loader = make_loader(cfg, batch_size=2, seed=0)
    counts = Counter(next(loader)["dataset"] for _ in range(2000))
    # default weights images x (1 + repeats): 4 : 16 -> b drawn with probability 0.8
    assert abs(counts["b"] / 2000 - 0.8) < 0.03  # 3.4 sigma
    per_sample = Counter(i for _ in range(400) for i in next(loader)["ids"] if i.startswith("b/"))
    assert max(per_sample.values()) - min(per_sample.values()) <= 0.25 * max(per_sample.values())
    weighted = config(
        tmp_path,
        [
            {"id": "a", "path": str(a), "probability": 3.0},
            {"id": "b", "path": str(b), "repeats": 3, "probability": 1.0},
        ],
    )
    loader = make_loader(weighted, batch_size=2, seed=0)
    counts = Counter(next(loader)["dataset"] for _ in range(2000))
    assert abs(counts["a"] / 2000 - 0.75) < 0.033


def test_caption_dropout_and_variants(tmp_path: Path) -> None:
    folder = tmp_path / "c"
    for i in range(4):
        write_image(folder / f"x{i}.png", 64, 64, seed=i, caption="first\nsecond\nthird")
    cfg = config(tmp_path, [{"id": "c", "path": str(folder), "caption_dropout": 0.3}])
    te = FakeTextEncoder()
    build_cache(cfg, FakeAutoencoder(), te, batch_size=2, progress=False)
    as_stored = lambda t: t.to(torch.bfloat16).float()  # noqa: E731  text_dtype = "bf16"
    empty = as_stored(te.encode_empty(1)[0])
    variants = {p: as_stored(te.encode([p])[0][0]) for p in ("first", "second", "third")}
    loader = make_loader(cfg, batch_size=2, seed=0)
    seen: Counter[str] = Counter()
    for _ in range(500):
        for text in next(loader)["text"]:  # the batch's trimmed window: compare that prefix
            n = text.shape[0]
            if torch.equal(text, empty[0][:n]):
                seen["empty"] += 1
            else:
                seen[next(p for p, v in variants.items() if torch.equal(text, v[:n]))] += 1
    assert abs(seen["empty"] / 1000 - 0.3) < 0.05
    assert all(abs(seen[p] / 1000 - 0.7 / 3) < 0.05 for p in variants)
    off = make_loader(cfg, batch_size=2, seed=0, caption_dropout=0.0)
    assert not any(
        torch.equal(t, empty[0][: t.shape[0]]) for _ in range(50) for t in next(off)["text"]
    )


def test_flip_draws_the_mirrored_latent(two_sets: DataConfig) -> None:
    cache = open_cache(two_sets)
    samples = {s["id"]: s for s in cache.datasets[0][1]}
    loader = make_loader(two_sets, batch_size=2, seed=0)
    flipped = plain = 0
    for _ in range(60):
        batch = next(loader)
        if batch["dataset"] != "a":
            continue
        for sid, latent in zip(batch["ids"], batch["latents"]):
            s = samples[sid]
            if torch.equal(latent, cache.reader.get(s["latent_flip"], "latent").float()):
                flipped += 1
            else:
                assert torch.equal(latent, cache.reader.get(s["latent"], "latent").float())
                plain += 1
    assert flipped > 10 and plain > 10


def test_dataset_too_small_says_how_to_fix(tmp_path: Path) -> None:
    cfg = config(tmp_path, [{"id": "tiny", "path": str(make_folder(tmp_path / "t", 3))}])
    _build(cfg, batch_size=4)
    with pytest.raises(
        SanakitError,
        match=r"data\.datasets\[0\] \('tiny'\) has 3 usable images .* = 8; set data\.datasets\[0\]\.repeats = 2 \(or more\)",
    ):
        check_dataset_size(cfg, batch_size=4, gradient_accumulation_steps=2)
    with pytest.raises(SanakitError, match=r"repeats = 1"):
        make_loader(cfg, batch_size=4)
    repeated = config(
        tmp_path, [{"id": "tiny", "path": str(make_folder(tmp_path / "t", 3)), "repeats": 2}]
    )
    check_dataset_size(repeated, batch_size=4, gradient_accumulation_steps=2)
    batch = next(make_loader(repeated, batch_size=4))
    assert len(batch["ids"]) == 4


def test_worker_processes_match_main_process(two_sets: DataConfig) -> None:
    main = make_loader(two_sets, batch_size=2, seed=9)
    workers = make_loader(two_sets, batch_size=2, seed=9, num_workers=1)
    try:
        expected = [_key(next(main)) for _ in range(12)]
        got = [_key(next(workers)) for _ in range(6)]
        state = workers.state_dict()
        assert state["step"] == 6
        workers.load_state_dict(state)
        got += [_key(next(workers)) for _ in range(6)]
        assert got == expected
    finally:
        workers.close()
