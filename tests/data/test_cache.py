"""The cache: hits, exact invalidation, resume after a kill, corrupt shards, the bad-input corpus."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from sanakit.config import DataConfig, from_dict
from sanakit.data import build_cache, open_cache
from sanakit.data.store import INDEX_NAME
from sanakit.errors import SanakitError
from tests.data.fakes import (
    FakeAutoencoder,
    FakeTextEncoder,
    SimulatedKill,
    noise_image,
    write_image,
)
from tests.data.test_images import png_header_bomb

SIZES = [(64, 64), (96, 64), (64, 96), (128, 64), (64, 128)]


def make_folder(root: Path, n: int, seed: int = 0, sizes: list[tuple[int, int]] = SIZES) -> Path:
    for i in range(n):
        w, h = sizes[i % len(sizes)]
        write_image(
            root / f"img_{i:03d}.png",
            w,
            h,
            seed=seed * 1000 + i,
            caption=f"photo {seed} number {i}",
        )
    return root


def config(tmp: Path, datasets: list[dict], **data: object) -> DataConfig:
    raw = {"cache_dir": str(tmp / "cache"), "shard_size_mb": 0.001, **data}
    raw["datasets"] = [{"resolution": 64, **d} for d in datasets]
    return from_dict(DataConfig, raw, where="data")


def shard_files(cfg: DataConfig) -> dict[str, dict]:
    return json.loads((Path(cfg.cache_dir) / "shards" / INDEX_NAME).read_text())["shards"]


def all_latents(cfg: DataConfig) -> dict[str, torch.Tensor]:
    cache = open_cache(cfg)
    return {
        s["id"]: cache.reader.get(s["latent"], "latent").clone()
        for _, samples in cache.datasets
        for s in samples
    }


def test_second_run_is_a_full_hit(tmp_path: Path) -> None:
    cfg = config(
        tmp_path, [{"id": "a", "path": str(make_folder(tmp_path / "a", 10)), "flip": True}]
    )
    ae, te = FakeAutoencoder(), FakeTextEncoder()
    first = build_cache(cfg, ae, te, batch_size=2, progress=False)
    assert first.cached == 10 and ae.images == 20  # plain + flipped
    assert first.encoded == {"latents": 20, "texts": 11}  # 10 captions + the empty prompt
    shards = shard_files(cfg)
    ae2, te2 = FakeAutoencoder(), FakeTextEncoder()
    second = build_cache(cfg, ae2, te2, batch_size=2, progress=False)
    assert (ae2.calls, te2.calls) == (0, 0)
    assert second.encoded == {"latents": 0, "texts": 0}
    assert second.reused == {"latents": 20, "texts": 10} and second.cached == 10
    assert shard_files(cfg) == shards
    on_disk = json.loads((tmp_path / "cache" / "cache_report.json").read_text())
    assert on_disk["images"] == 10 and on_disk["cached"] == 10 and on_disk["skipped"] == []
    assert sum(on_disk["buckets"].values()) == 10


def test_latent_values_and_flip_are_exact(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "a", 3, sizes=[(64, 64)])
    cfg = config(
        tmp_path,
        [{"id": "a", "path": str(folder), "flip": True, "crop": False}],
        latent_dtype="fp32",
    )
    build_cache(cfg, FakeAutoencoder(), FakeTextEncoder(), batch_size=2, progress=False)
    cache = open_cache(cfg)
    for s in cache.datasets[0][1]:
        img = np.asarray(Image.open(folder / s["id"].split("/", 1)[1]), dtype=np.float32)
        x = torch.from_numpy(img).permute(2, 0, 1)[None] / 127.5 - 1  # no resize: 64x64 bucket
        pooled = F.avg_pool2d(x, 8)[0]
        expect = torch.stack([pooled[0], pooled[1], pooled[2], 2 * pooled[0]])
        torch.testing.assert_close(cache.reader.get(s["latent"], "latent"), expect)
        torch.testing.assert_close(cache.reader.get(s["latent_flip"], "latent"), expect.flip(-1))


def test_instruction_change_recomputes_only_text(tmp_path: Path) -> None:
    cfg = config(tmp_path, [{"id": "a", "path": str(make_folder(tmp_path / "a", 6))}])
    build_cache(cfg, FakeAutoencoder(), FakeTextEncoder(), batch_size=2, progress=False)
    ae, te = FakeAutoencoder(), FakeTextEncoder(instruction="Another instruction:")
    report = build_cache(cfg, ae, te, batch_size=2, progress=False)
    assert ae.calls == 0
    assert sorted(te.prompts) == sorted(f"photo 0 number {i}" for i in range(6))
    assert report.encoded["texts"] == 7 and report.reused["latents"] == 6


def test_resolution_change_recomputes_only_that_dataset(tmp_path: Path) -> None:
    a, b = make_folder(tmp_path / "a", 6, seed=1), make_folder(tmp_path / "b", 4, seed=2)
    cfg = config(tmp_path, [{"id": "a", "path": str(a)}, {"id": "b", "path": str(b)}])
    build_cache(cfg, FakeAutoencoder(), FakeTextEncoder(), batch_size=2, progress=False)
    before = all_latents(cfg)
    changed = config(
        tmp_path, [{"id": "a", "path": str(a)}, {"id": "b", "path": str(b), "resolution": 128}]
    )
    ae, te = FakeAutoencoder(), FakeTextEncoder()
    build_cache(changed, ae, te, batch_size=2, progress=False)
    assert ae.images == 4 and te.calls == 0
    after = all_latents(changed)
    assert all(torch.equal(after[k], before[k]) for k in before if k.startswith("a/"))
    assert all(after[k].shape[-1] > before[k].shape[-1] for k in before if k.startswith("b/"))


def test_autoencoder_change_recomputes_all_latents_only(tmp_path: Path) -> None:
    cfg = config(tmp_path, [{"id": "a", "path": str(make_folder(tmp_path / "a", 5))}])
    build_cache(cfg, FakeAutoencoder(), FakeTextEncoder(), batch_size=2, progress=False)
    ae, te = FakeAutoencoder(tag="fake-ae-v2"), FakeTextEncoder()
    build_cache(cfg, ae, te, batch_size=2, progress=False)
    assert ae.images == 5 and te.calls == 0
    with pytest.raises(SanakitError, match="built with a different autoencoder"):
        open_cache(cfg).check_encoders(FakeAutoencoder(), te)
    open_cache(cfg).check_encoders(ae, te)


def test_interrupted_build_resumes_without_recomputing_shards(tmp_path: Path) -> None:
    cfg = config(
        tmp_path, [{"id": "a", "path": str(make_folder(tmp_path / "a", 12, sizes=[(64, 64)]))}]
    )
    with pytest.raises(SimulatedKill):
        build_cache(
            cfg, FakeAutoencoder(fail_after=3), FakeTextEncoder(), batch_size=2, progress=False
        )
    finished = shard_files(cfg)
    done = sum(len(info["keys"]) for info in finished.values() if info["kind"] == "latents")
    assert 0 < done < 12
    bytes_before = {name: (Path(cfg.cache_dir) / "shards" / name).read_bytes() for name in finished}
    ae = FakeAutoencoder()
    report = build_cache(cfg, ae, FakeTextEncoder(), batch_size=2, progress=False)
    assert ae.images == 12 - done and report.reused["latents"] == done and report.cached == 12
    for name, data in bytes_before.items():  # finished shards untouched
        assert (Path(cfg.cache_dir) / "shards" / name).read_bytes() == data
    assert not (Path(cfg.cache_dir) / "cache.lock").exists()


def test_corrupted_shard_is_detected_and_rebuilt(tmp_path: Path) -> None:
    cfg = config(
        tmp_path, [{"id": "a", "path": str(make_folder(tmp_path / "a", 8, sizes=[(64, 64)]))}]
    )
    build_cache(cfg, FakeAutoencoder(), FakeTextEncoder(), batch_size=2, progress=False)
    before = all_latents(cfg)
    name, info = next((n, i) for n, i in sorted(shard_files(cfg).items()) if i["kind"] == "latents")
    path = Path(cfg.cache_dir) / "shards" / name
    data = bytearray(path.read_bytes())
    data[-8:] = bytes(255 - b for b in data[-8:])  # same size, different tensor bytes
    path.write_bytes(bytes(data))
    ae = FakeAutoencoder()
    report = build_cache(cfg, ae, FakeTextEncoder(), batch_size=2, progress=False)
    assert report.rebuilt_shards == [name]
    assert ae.images == len(info["keys"])
    after = all_latents(cfg)
    assert all(torch.equal(after[k], before[k]) for k in before)


def _bad_corpus(root: Path) -> dict[str, str]:
    """Writes one file per bad-input kind; returns {file name: expected reason or fix}."""
    root.mkdir(parents=True)

    def ok(name: str, img: Image.Image, **kw: object) -> None:  # image + caption file
        img.save(root / name, **kw)
        (root / name).with_suffix(".txt").write_text(name)

    for i in range(4):
        ok(f"good_{i}.png", noise_image(64, 64, seed=i))
    jpeg = root / "truncated.jpg"
    ok("truncated.jpg", noise_image(64, 64, seed=9))
    jpeg.write_bytes(jpeg.read_bytes()[:2000])  # header intact, scan data cut
    png = root / "corrupt.png"
    ok("corrupt.png", noise_image(64, 64, seed=10))
    raw = png.read_bytes()
    png.write_bytes(raw[:100] + bytes(b ^ 0x5A for b in raw[100:600]) + raw[600:])
    (root / "zero.png").write_bytes(b"")
    (root / "zero.txt").write_text("zero")
    (root / "text.jpg").write_text("I am not a JPEG")
    (root / "text.txt").write_text("text")
    ok("cmyk.jpg", noise_image(64, 64, seed=11).convert("CMYK"))
    ok("deep.png", Image.fromarray((np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)))
    pal = Image.new("P", (64, 64), 1)
    pal.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    ok("palette.png", pal, transparency=0)
    ok("alpha.png", Image.new("RGBA", (64, 64), (10, 20, 30, 100)))
    exif = Image.Exif()
    exif[0x0112] = 8
    ok("rotated.jpg", noise_image(128, 64, seed=12), exif=exif.tobytes())
    ok("small.png", noise_image(24, 24, seed=13))
    noise_image(64, 64, seed=14).save(root / "uncaptioned.png")
    os.symlink(root / "does-not-exist.png", root / "dangling.png")
    (root / "dangling.txt").write_text("dangling")
    (root / "bomb.png").write_bytes(png_header_bomb(30000, 30000))
    (root / "bomb.txt").write_text("bomb")
    return {
        "truncated.jpg": "corrupt or truncated",
        "corrupt.png": "corrupt or truncated",
        "zero.png": "zero-byte file",
        "text.jpg": "not an image",
        "small.png": "below minimum_image_size",
        "uncaptioned.png": "missing caption file",
        "dangling.png": "unreadable file",
        "bomb.png": "decompression bomb",
    }


def test_bad_input_corpus_never_crashes_and_is_reported(tmp_path: Path) -> None:
    expected = _bad_corpus(tmp_path / "bad")
    cfg = config(tmp_path, [{"id": "bad", "path": str(tmp_path / "bad"), "minimum_image_size": 48}])
    report = build_cache(cfg, FakeAutoencoder(), FakeTextEncoder(), batch_size=1, progress=False)
    skipped = {Path(s["path"]).name: s["reason"] for s in report.skipped}
    assert set(skipped) == set(expected)
    for name, reason in expected.items():
        assert reason in skipped[name], (name, skipped[name])
    fixed = {(Path(f["path"]).name, f["fix"].split(" ")[0]) for f in report.fixed}
    assert {("cmyk.jpg", "converted"), ("deep.png", "reduced"), ("palette.png", "composited"),
            ("alpha.png", "composited"), ("rotated.jpg", "applied")} <= fixed  # fmt: skip
    assert report.images == 17 and report.cached == 9
    on_disk = json.loads((tmp_path / "cache" / "cache_report.json").read_text())
    assert {Path(s["path"]).name for s in on_disk["skipped"]} == set(expected)
    assert "8 skipped" in report.summary()
    cache = open_cache(cfg)
    rotated = next(s for s in cache.datasets[0][1] if s["id"] == "bad/rotated.jpg")
    assert rotated["bucket"] == [96, 32]  # stored 128 wide x 64 high, shown 64 wide x 128 high
    again = build_cache(cfg, FakeAutoencoder(), FakeTextEncoder(), batch_size=1, progress=False)
    assert {Path(s["path"]).name for s in again.skipped} == set(expected)
    assert again.encoder_calls == {"autoencoder": 0, "text": 0} and again.cached == 9


def test_masks_are_cached_at_latent_resolution(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    write_image(folder / "a.png", 64, 64, caption="a")
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))
    mask.save(folder / "a.mask.png")
    cfg = config(tmp_path, [{"id": "m", "path": str(folder), "masks": True}])
    build_cache(cfg, FakeAutoencoder(), FakeTextEncoder(), batch_size=1, progress=False)
    cache = open_cache(cfg)
    sample = cache.datasets[0][1][0]
    expect = torch.zeros(1, 8, 8)
    expect[..., :4] = 1.0
    torch.testing.assert_close(cache.reader.get(sample["latent"], "mask"), expect)


def test_stale_config_and_concurrent_build_refused(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "a", 3)
    cfg = config(tmp_path, [{"id": "a", "path": str(folder)}])
    with pytest.raises(SanakitError, match=r"data\.datasets\[0\] \('a'\) is not cached"):
        open_cache(cfg)
    build_cache(cfg, FakeAutoencoder(), FakeTextEncoder(), batch_size=1, progress=False)
    open_cache(cfg)
    with pytest.raises(
        SanakitError, match=r"\('a'\) changed since it was cached; run `sanakit cache CONFIG`"
    ):
        open_cache(config(tmp_path, [{"id": "a", "path": str(folder), "resolution": 96}]))
    open_cache(
        config(tmp_path, [{"id": "a", "path": str(folder), "repeats": 3}])
    )  # loader-only option
    (Path(cfg.cache_dir) / "cache.lock").write_text(str(os.getppid()))
    with pytest.raises(SanakitError, match=r"is being built by process"):
        build_cache(cfg, FakeAutoencoder(), FakeTextEncoder(), batch_size=1, progress=False)


def test_random_crops_are_reproducible_and_seeded(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "a", 6, sizes=[(128, 64), (64, 128)])
    runs = {}
    for name, seed in (("one", 0), ("two", 0), ("other", 1)):
        raw = {"cache_dir": str(tmp_path / name), "seed": seed}
        raw["datasets"] = [
            {
                "id": "a",
                "path": str(folder),
                "resolution": 64,
                "crop_aspect": "square",
                "crop_style": "random",
            }
        ]
        cfg = from_dict(DataConfig, raw)
        build_cache(cfg, FakeAutoencoder(), FakeTextEncoder(), batch_size=1, progress=False)
        runs[name] = {s["id"]: (s["geometry"], s["latent"]) for s in open_cache(cfg).datasets[0][1]}
    assert runs["one"] == runs["two"]  # a rebuild from scratch gives the same crops and keys
    offsets = [g[4:] for g, _ in runs["one"].values()]
    assert (
        all(g[:2] == [64, 64] for g, _ in runs["one"].values())
        and len(set(map(tuple, offsets))) > 1
    )
    assert any(runs["other"][k][0] != runs["one"][k][0] for k in runs["one"])


def test_identical_images_are_encoded_once_across_datasets(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "a", 4, sizes=[(64, 64)])
    cfg = config(
        tmp_path,
        [
            {"id": "plain", "path": str(folder)},
            {"id": "flipped", "path": str(folder), "flip": True},
        ],
    )
    ae = FakeAutoencoder()
    report = build_cache(cfg, ae, FakeTextEncoder(), batch_size=2, progress=False)
    assert ae.images == 8 and report.cached == 8  # 4 shared plain latents + 4 mirrored ones
    plain, flipped = (samples for _, samples in open_cache(cfg).datasets)
    assert [s["latent"] for s in plain] == [s["latent"] for s in flipped]
