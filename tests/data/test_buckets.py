"""Bucket tables (diffusers as oracle), bucket choice, merging and resize/crop geometry."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from diffusers.image_processor import PixArtImageProcessor
from diffusers.pipelines.pixart_alpha.pipeline_pixart_alpha import (
    ASPECT_RATIO_512_BIN,
    ASPECT_RATIO_1024_BIN,
)
from diffusers.pipelines.pixart_alpha.pipeline_pixart_sigma import ASPECT_RATIO_2048_BIN
from diffusers.pipelines.sana.pipeline_sana import ASPECT_RATIO_4096_BIN

from sanakit.config import DatasetConfig
from sanakit.data.buckets import (
    bucket_table,
    closest_bucket,
    image_measure,
    merge_small_buckets,
    plan_geometry,
    target_bucket,
)

ORACLE = {
    512: ASPECT_RATIO_512_BIN,
    1024: ASPECT_RATIO_1024_BIN,
    2048: ASPECT_RATIO_2048_BIN,
    4096: ASPECT_RATIO_4096_BIN,
}


@pytest.mark.parametrize("base", [512, 1024, 2048, 4096])
def test_tables_equal_sana_release(base: int) -> None:
    ours = bucket_table(base)
    assert ours == {float(k): (int(v[0]), int(v[1])) for k, v in ORACLE[base].items()}
    assert all(h % 32 == 0 and w % 32 == 0 for h, w in ours.values())
    # Equal-area buckets: within 10% below base**2 (the released tables' own spread).
    assert all(0.9 <= h * w / base**2 <= 1.0 for h, w in ours.values())


@pytest.mark.parametrize("base", [512, 1024, 2048, 4096])
def test_closest_bucket_matches_diffusers_binning(base: int) -> None:
    rng = random.Random(base)
    for _ in range(300):
        h, w = rng.randint(64, 5000), rng.randint(64, 5000)
        assert closest_bucket(h, w, base) == PixArtImageProcessor.classify_height_width_bin(
            h, w, ORACLE[base]
        )


@pytest.mark.parametrize("base", [512, 1024, 2048, 4096, 128, 768])
def test_aspect_error_is_bounded(base: int) -> None:
    """Closed-form bound: with keys k_i and real ratios r_i = h_i / w_i, an aspect r between
    k_i and k_{i+1} goes to the nearer key, so its log error is at most
    max(log(m / r_i), log(r_{i+1} / m)) with m = (k_i + k_{i+1}) / 2 (plus the table ends)."""
    table = sorted(bucket_table(base).items())
    bound = 0.0
    for (k0, (h0, w0)), (k1, (h1, w1)) in zip(table, table[1:]):
        mid = (k0 + k1) / 2
        bound = max(bound, abs(math.log(mid / (h0 / w0))), abs(math.log((h1 / w1) / mid)))
    for k, (h, w) in (table[0], table[-1]):
        bound = max(bound, abs(math.log(k / (h / w))))
    worst = 0.0
    for r in np.exp(np.linspace(math.log(0.25), math.log(4.0), 1501)):
        bh, bw = closest_bucket(r * 1000.0, 1000.0, base)
        assert bh % 32 == 0 and bw % 32 == 0
        worst = max(worst, abs(math.log(bh / bw) - math.log(r)))
    assert worst <= bound + 1e-9
    if base in (512, 1024, 2048, 4096):
        assert bound < 0.16  # Sana's tables: at most ~17% aspect distortion in [1/4, 4]


def test_custom_base_scales_nearest_table() -> None:
    table = bucket_table(128)
    assert table[1.0] == (128, 128) and table[0.25] == (64, 256)
    assert all(h % 32 == 0 and w % 32 == 0 and h >= 32 and w >= 32 for h, w in table.values())
    assert bucket_table(1024 * 1.0007) == bucket_table(1024)  # area = 1.05 MP -> Sana's table


def _cfg(**kw: object) -> DatasetConfig:
    return DatasetConfig(id="d", path="p", **kw)


def test_target_bucket_rules() -> None:
    assert target_bucket(600, 1000, _cfg(resolution=512, crop_aspect="square")) == (512, 512)
    # closest: Sana's 1024 table, ratio 0.6 -> (768, 1280)
    assert target_bucket(600, 1000, _cfg(resolution=1024)) == (768, 1280)
    # area in megapixels: 1.05 MP ~ 1024**2 -> same table
    assert target_bucket(600, 1000, _cfg(resolution=1.05, resolution_type="area")) == (768, 1280)
    # pixel: the table entry rescaled so its short edge is the resolution
    assert target_bucket(600, 1000, _cfg(resolution=512, resolution_type="pixel")) == (512, 864)
    # preserve: own aspect at area 512**2, sides rounded to 32: 512*sqrt(0.6)=396.6 -> 384
    assert target_bucket(600, 1000, _cfg(resolution=512, crop_aspect="preserve")) == (384, 672)
    assert target_bucket(600, 1000, _cfg(resolution=512, crop=False)) == (384, 672)
    assert target_bucket(1000, 600, _cfg(resolution=512, resolution_type="pixel", crop=False)) == (
        864,
        512,
    )


def test_image_measure_units() -> None:
    assert image_measure(600, 1000, "pixel") == 600
    assert image_measure(600, 1000, "area") == pytest.approx(0.6)
    assert image_measure(600, 1000, "pixel_area") == pytest.approx(math.sqrt(600_000))


def test_merge_small_buckets_into_nearest_aspect() -> None:
    buckets = [(64, 64)] * 5 + [(64, 96)] * 1 + [(32, 128)] * 2 + [(96, 64)] * 4
    mapping = merge_small_buckets(buckets, min_count=3)
    # (64, 96): log-ratio -0.405, nearest is (64, 64) at 0.405 (32x128 is 0.98 away)
    assert mapping[(64, 96)] == (64, 64)
    # (32, 128) then merges into the nearest remaining: (64, 64)
    assert mapping[(32, 128)] == (64, 64)
    assert mapping[(96, 64)] == (96, 64) and mapping[(64, 64)] == (64, 64)
    shuffled = buckets[:]
    random.Random(0).shuffle(shuffled)
    assert merge_small_buckets(shuffled, 3) == mapping  # order-independent
    # everything too small: all merge into one bucket, nothing dropped
    tiny = merge_small_buckets([(64, 64), (64, 96), (96, 64)], min_count=8)
    assert len(set(tiny.values())) == 1
    assert merge_small_buckets(buckets, 1) == {b: b for b in set(buckets)}


def test_geometry_cover_and_center_crop() -> None:
    geo = plan_geometry(600, 1000, (512, 512), _cfg(resolution=512), crop_seed=0)
    # scale = max(512/600, 512/1000) = 0.8533 -> 512 x 853
    assert geo == (512, 512, 512, 853, 0, (853 - 512) // 2)


def test_geometry_random_crop_is_seeded_and_in_bounds() -> None:
    cfg = _cfg(resolution=512, crop_style="random")
    geos = [plan_geometry(600, 1000, (512, 512), cfg, crop_seed=(0, s)) for s in range(50)]
    assert all(0 <= g.left <= g.resize_w - 512 and g.top == 0 for g in geos)
    assert len({g.left for g in geos}) > 30  # spread over the 342 possible offsets
    assert plan_geometry(600, 1000, (512, 512), cfg, crop_seed=(0, 7)) == geos[7]


def test_geometry_maximum_and_target_downsample() -> None:
    cfg = _cfg(
        resolution=512,
        resolution_type="pixel",
        maximum_image_size=1536,
        target_downsample_size=1024,
    )
    # 2000x3000 (short edge 2000 > 1536) -> short edge 1024, then cropped at that scale
    assert plan_geometry(2000, 3000, (512, 512), cfg, crop_seed=0) == (
        512,
        512,
        1024,
        1536,
        256,
        512,
    )
    # 1200x1300 is under the maximum: cropped at native scale, no resize
    assert plan_geometry(1200, 1300, (512, 512), cfg, crop_seed=0)[2:4] == (1200, 1300)
    # smaller than the bucket: resized to cover it
    assert plan_geometry(400, 300, (512, 512), cfg, crop_seed=0)[2:4] == (683, 512)
