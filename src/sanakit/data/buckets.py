"""Aspect-ratio buckets: Sana's resolution tables, bucket choice per image, small-bucket merging
and the resize/crop geometry that turns an image into its bucket.

Sana (like PixArt-Sigma) trains on multi-aspect buckets of roughly equal area ``base**2`` with
height and width multiples of 32 (the DC-AE downsampling factor). The tables below are the
released ones: ``ASPECT_RATIO_{512,1024,2048,4096}_BIN`` in diffusers' PixArt/Sana pipelines;
the 512 table is the 1024 table halved and the 4096 table the 2048 table doubled. Keys are the
nominal ``height / width`` ratios, values ``(height, width)`` in pixels.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Sequence
from functools import lru_cache
from typing import NamedTuple

from sanakit.config import DatasetConfig

__all__ = [
    "BUCKET_MULTIPLE",
    "SANA_BASE_RESOLUTIONS",
    "Geometry",
    "bucket_table",
    "closest_bucket",
    "image_measure",
    "merge_small_buckets",
    "plan_geometry",
    "target_bucket",
]

BUCKET_MULTIPLE = 32  # DC-AE downsamples 32x: every bucket side is a multiple of 32
SANA_BASE_RESOLUTIONS = (512, 1024, 2048, 4096)

# fmt: off
_SANA_1024: dict[float, tuple[int, int]] = {
    0.25: (512, 2048), 0.28: (512, 1856), 0.32: (576, 1792), 0.33: (576, 1728),
    0.35: (576, 1664), 0.4: (640, 1600), 0.42: (640, 1536), 0.48: (704, 1472),
    0.5: (704, 1408), 0.52: (704, 1344), 0.57: (768, 1344), 0.6: (768, 1280),
    0.68: (832, 1216), 0.72: (832, 1152), 0.78: (896, 1152), 0.82: (896, 1088),
    0.88: (960, 1088), 0.94: (960, 1024), 1.0: (1024, 1024), 1.07: (1024, 960),
    1.13: (1088, 960), 1.21: (1088, 896), 1.29: (1152, 896), 1.38: (1152, 832),
    1.46: (1216, 832), 1.67: (1280, 768), 1.75: (1344, 768), 2.0: (1408, 704),
    2.09: (1472, 704), 2.4: (1536, 640), 2.5: (1600, 640), 3.0: (1728, 576),
    4.0: (2048, 512),
}
_SANA_2048: dict[float, tuple[int, int]] = {
    0.25: (1024, 4096), 0.26: (1024, 3968), 0.27: (1024, 3840), 0.28: (1024, 3712),
    0.32: (1152, 3584), 0.33: (1152, 3456), 0.35: (1152, 3328), 0.4: (1280, 3200),
    0.42: (1280, 3072), 0.48: (1408, 2944), 0.5: (1408, 2816), 0.52: (1408, 2688),
    0.57: (1536, 2688), 0.6: (1536, 2560), 0.68: (1664, 2432), 0.72: (1664, 2304),
    0.78: (1792, 2304), 0.82: (1792, 2176), 0.88: (1920, 2176), 0.94: (1920, 2048),
    1.0: (2048, 2048), 1.07: (2048, 1920), 1.13: (2176, 1920), 1.21: (2176, 1792),
    1.29: (2304, 1792), 1.38: (2304, 1664), 1.46: (2432, 1664), 1.67: (2560, 1536),
    1.75: (2688, 1536), 2.0: (2816, 1408), 2.09: (2944, 1408), 2.4: (3072, 1280),
    2.5: (3200, 1280), 2.89: (3328, 1152), 3.0: (3456, 1152), 3.11: (3584, 1152),
    3.62: (3712, 1024), 3.75: (3840, 1024), 3.88: (3968, 1024), 4.0: (4096, 1024),
}
# fmt: on


def _round_to(x: float, multiple: int) -> int:
    """Nearest multiple of ``multiple`` (halves round up), at least one multiple."""
    return max(multiple, int(math.floor(x / multiple + 0.5)) * multiple)


@lru_cache(maxsize=64)
def _table(base: float, multiple: int) -> tuple[tuple[float, tuple[int, int]], ...]:
    source, source_base = (
        (_SANA_1024, 1024) if base < math.sqrt(1024 * 2048) else (_SANA_2048, 2048)
    )
    scale = base / source_base
    return tuple(
        (ratio, (_round_to(h * scale, multiple), _round_to(w * scale, multiple)))
        for ratio, (h, w) in source.items()
    )


def bucket_table(
    base_resolution: float = 1024, multiple: int = BUCKET_MULTIPLE
) -> dict[float, tuple[int, int]]:
    """Aspect buckets ``{height/width: (height, width)}`` of area about ``base_resolution**2``.

    For 512, 1024, 2048 and 4096 this is exactly Sana's table (diffusers' ``ASPECT_RATIO_*_BIN``).
    Any other base scales the nearer of the 1024/2048 tables by ``base / 1024`` (or ``/ 2048``)
    and rounds each side to ``multiple`` (tests use tiny bases such as 128).
    """
    if not base_resolution > 0:
        raise ValueError(f"base_resolution must be > 0, got {base_resolution}")
    return dict(_table(float(base_resolution), int(multiple)))


def closest_bucket(
    height: float, width: float, base_resolution: float = 1024, multiple: int = BUCKET_MULTIPLE
) -> tuple[int, int]:
    """The bucket ``(h, w)`` whose nominal ratio is nearest ``height / width`` in absolute
    difference (the rule of diffusers' ``classify_height_width_bin``; ties go to the smaller
    ratio), from :func:`bucket_table`."""
    ratio = height / width
    table = _table(float(base_resolution), int(multiple))
    return min(table, key=lambda item: abs(item[0] - ratio))[1]


def image_measure(height: int, width: int, resolution_type: str) -> float:
    """An image's size in the unit of ``resolution_type``: ``pixel`` = short edge,
    ``area`` = megapixels, ``pixel_area`` = sqrt(height x width) pixels."""
    if resolution_type == "pixel":
        return float(min(height, width))
    if resolution_type == "area":
        return height * width / 1e6
    return math.sqrt(height * width)


def _base_pixels(cfg: DatasetConfig) -> float:
    """The bucket base in pixels: ``resolution`` or sqrt(megapixels x 1e6) for ``area``."""
    if cfg.resolution_type == "area":
        return math.sqrt(cfg.resolution * 1e6)
    return cfg.resolution


def target_bucket(height: int, width: int, cfg: DatasetConfig) -> tuple[int, int]:
    """The bucket ``(h, w)`` (multiples of 32) an image of ``height x width`` is trained at,
    before small buckets are merged.

    - ``square``: ``(S, S)`` with ``S = base`` rounded to 32.
    - ``closest``: the nearest-ratio entry of Sana's table for ``base`` (area ``base**2``);
      for ``resolution_type = 'pixel'`` the entry is rescaled so its short edge is ``base``.
    - ``preserve`` (also ``crop = false``): the image's own aspect at area ``base**2`` (or short
      edge ``base`` for ``pixel``), each side rounded to 32, so at most 16 px per side is cropped.
    """
    base = _base_pixels(cfg)
    m = BUCKET_MULTIPLE
    aspect = cfg.aspect
    if aspect == "square":
        side = _round_to(base, m)
        return side, side
    if aspect == "closest":
        bh, bw = closest_bucket(height, width, base)
        if cfg.resolution_type != "pixel":
            return bh, bw
        scale = base / min(bh, bw)
        return _round_to(bh * scale, m), _round_to(bw * scale, m)
    ratio = height / width
    if cfg.resolution_type == "pixel":
        if height <= width:
            return _round_to(base, m), _round_to(base / ratio, m)
        return _round_to(base * ratio, m), _round_to(base, m)
    return _round_to(base * math.sqrt(ratio), m), _round_to(base / math.sqrt(ratio), m)


def merge_small_buckets(
    buckets: Sequence[tuple[int, int]], min_count: int
) -> dict[tuple[int, int], tuple[int, int]]:
    """Maps each bucket to the bucket its images are trained in, merging every bucket with fewer
    than ``min_count`` images into the nearest aspect ratio (|log(h/w)| distance; ties go to the
    fuller bucket, then the smaller key) instead of dropping it. The smallest bucket is merged
    first, repeatedly, until every bucket has ``min_count`` images or one bucket remains.
    Deterministic: depends only on the multiset of buckets.
    """
    counts = Counter(tuple(b) for b in buckets)
    mapping = {b: b for b in counts}
    while len(counts) > 1:
        small = [b for b, n in counts.items() if n < min_count]
        if not small:
            break
        victim = min(small, key=lambda b: (counts[b], b))
        log_ratio = math.log(victim[0] / victim[1])
        target = min(
            (b for b in counts if b != victim),
            key=lambda b: (abs(math.log(b[0] / b[1]) - log_ratio), -counts[b], b),
        )
        counts[target] += counts.pop(victim)
        for key, value in mapping.items():
            if value == victim:
                mapping[key] = target
    return mapping


class Geometry(NamedTuple):
    """How an image becomes a ``bucket_h x bucket_w`` crop: resize the (EXIF-oriented) image to
    ``resize_h x resize_w`` (LANCZOS), then crop the window at ``(top, left)``."""

    bucket_h: int
    bucket_w: int
    resize_h: int
    resize_w: int
    top: int
    left: int


def _unit_seed(*parts: object) -> float:
    """A number in [0, 1) from a hash of ``parts`` (stable across runs and platforms)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64


def plan_geometry(
    height: int, width: int, bucket: tuple[int, int], cfg: DatasetConfig, crop_seed: object
) -> Geometry:
    """Resize and crop for an image of ``height x width`` trained in ``bucket``.

    By default the image is scaled by ``s = max(bh / h, bw / w)`` so it just covers the bucket.
    With ``maximum_image_size``/``target_downsample_size`` (crop only), an image whose
    :func:`image_measure` exceeds the maximum is first scaled to the target size, and an image
    that then covers the bucket is cropped at that scale without further resizing. The window is
    centred (``crop_style = 'center'``) or placed by a uniform draw seeded by ``crop_seed``
    (``'random'``), so re-caching gives the same crop.
    """
    bh, bw = bucket
    h, w = float(height), float(width)
    if cfg.maximum_image_size is not None and cfg.target_downsample_size is not None:
        measure = image_measure(height, width, cfg.resolution_type)
        if measure > cfg.maximum_image_size:
            factor = cfg.target_downsample_size / measure
            if cfg.resolution_type == "area":
                factor = math.sqrt(factor)
            h, w = h * factor, w * factor
        if h >= bh and w >= bw:
            rh, rw = max(bh, round(h)), max(bw, round(w))
        else:
            rh, rw = _cover(h, w, bh, bw)
    else:
        rh, rw = _cover(h, w, bh, bw)
    if cfg.style == "random":
        top = int(_unit_seed("top", crop_seed, bucket) * (rh - bh + 1))
        left = int(_unit_seed("left", crop_seed, bucket) * (rw - bw + 1))
    else:
        top, left = (rh - bh) // 2, (rw - bw) // 2
    return Geometry(bh, bw, rh, rw, top, left)


def _cover(h: float, w: float, bh: int, bw: int) -> tuple[int, int]:
    """Smallest aspect-preserving size (rounded) that covers ``bh x bw``."""
    scale = max(bh / h, bw / w)
    return max(bh, round(h * scale)), max(bw, round(w * scale))
