"""The cache report: what was found, cached, skipped (and why) and fixed, per bucket.

Written to ``cache_report.json`` in the cache folder::

    {"images": N, "cached": N, "skipped": [{"path", "reason", "dataset"}],
     "fixed": [{"path", "fix", "dataset"}], "buckets": {"HxW": count},
     "datasets": {id: {"images", "cached", "skipped", "buckets"}},
     "encoded": {"latents", "texts"}, "reused": {"latents", "texts"},
     "encoder_calls": {"autoencoder", "text"}, "rebuilt_shards": [...], "seconds": s}
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["CacheReport", "DatasetStats"]

REPORT_NAME = "cache_report.json"


@dataclass
class DatasetStats:
    """Per-dataset counts: images found, samples cached, images skipped, samples per bucket."""

    images: int = 0
    cached: int = 0
    skipped: int = 0
    buckets: dict[str, int] = field(default_factory=dict)


@dataclass
class CacheReport:
    """Result of :func:`sanakit.data.build_cache`. ``cached`` counts images with a latent and
    every caption's text embedding in the cache (flipped copies are not counted separately)."""

    cache_dir: str
    images: int = 0
    cached: int = 0
    skipped: list[dict[str, str]] = field(default_factory=list)
    fixed: list[dict[str, str]] = field(default_factory=list)
    buckets: dict[str, int] = field(default_factory=dict)
    datasets: dict[str, DatasetStats] = field(default_factory=dict)
    encoded: dict[str, int] = field(default_factory=lambda: {"latents": 0, "texts": 0})
    reused: dict[str, int] = field(default_factory=lambda: {"latents": 0, "texts": 0})
    encoder_calls: dict[str, int] = field(default_factory=lambda: {"autoencoder": 0, "text": 0})
    rebuilt_shards: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def skip(self, dataset: str, path: str, reason: str) -> None:
        """Records an image that will not be trained on."""
        self.skipped.append({"path": path, "reason": reason, "dataset": dataset})
        self.datasets.setdefault(dataset, DatasetStats()).skipped += 1

    def fix(self, dataset: str, path: str, fix: str) -> None:
        """Records a repaired image (colour mode, orientation, transparency)."""
        self.fixed.append({"path": path, "fix": fix, "dataset": dataset})

    def add_bucket(self, dataset: str, bucket: tuple[int, int]) -> None:
        """Counts one cached sample in bucket ``(h, w)``."""
        name = f"{bucket[0]}x{bucket[1]}"
        self.buckets[name] = self.buckets.get(name, 0) + 1
        stats = self.datasets.setdefault(dataset, DatasetStats())
        stats.buckets[name] = stats.buckets.get(name, 0) + 1
        stats.cached += 1
        self.cached += 1

    def summary(self) -> str:
        """One line, e.g. ``cache: 120 images, 117 cached in 5 buckets, 3 skipped (2 corrupt
        or truncated image, 1 below minimum_image_size); encoded 40 latents + 12 texts, reused
        77 + 0 -> cache/cache_report.json``."""
        reasons = Counter(item["reason"].split(":")[0] for item in self.skipped)
        skipped = f", {len(self.skipped)} skipped"
        if reasons:
            skipped += " (" + ", ".join(f"{n} {r}" for r, n in reasons.most_common(4))
            skipped += ", ..." if len(reasons) > 4 else ""
            skipped += ")"
        fixed = f", {len(self.fixed)} fixed" if self.fixed else ""
        return (
            f"cache: {self.images} images, {self.cached} cached in {len(self.buckets)} buckets"
            f"{skipped}{fixed}; encoded {self.encoded['latents']} latents + "
            f"{self.encoded['texts']} texts, reused {self.reused['latents']} + "
            f"{self.reused['texts']} -> {Path(self.cache_dir) / REPORT_NAME}"
        )

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("cache_dir")
        return data

    def write(self) -> Path:
        """Writes ``cache_report.json`` atomically (temp file + rename) and returns its path."""
        path = Path(self.cache_dir) / REPORT_NAME
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=1, sort_keys=True), encoding="utf-8")
        os.replace(tmp, path)
        return path
