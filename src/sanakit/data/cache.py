"""Building the latent + text-embedding cache (``sanakit cache CONFIG``, also run before training).

Every entry is keyed by a digest of what determines it, so a changed input recomputes exactly
the affected entries and nothing stale is ever read:

- latent key = H(autoencoder fingerprint, its dtype and factor, stored dtype, image content hash,
  resize/crop geometry (bucket, resize size, crop window), flip, mask content hash);
- text key   = H(text-encoder fingerprint (weights, instruction, max length), caption text,
  stored dtype).

Folder layout of ``DataConfig.cache_dir``: ``shards/`` (a :class:`~sanakit.data.store.ShardStore`),
``datasets/<id>.json`` (the samples of a dataset: id, bucket, latent keys, text keys),
``scan/<id>.json`` (content hashes and sizes keyed by file size + mtime, so unchanged files are
not re-read) and ``cache_report.json``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from sanakit.config import DataConfig, DatasetConfig, to_dict
from sanakit.data.buckets import (
    Geometry,
    image_measure,
    merge_small_buckets,
    plan_geometry,
    target_bucket,
)
from sanakit.data.encode import LatentJob, encode_latents, encode_texts
from sanakit.data.encoders import AutoencoderLike, TextEncoderLike
from sanakit.data.images import BadImage, probe_image
from sanakit.data.report import CacheReport, DatasetStats
from sanakit.data.sources import SourceItem, discover
from sanakit.data.store import ShardStore, ShardWriter
from sanakit.errors import SanakitError

__all__ = ["build_cache", "dataset_digest", "digest", "fingerprints"]

log = logging.getLogger("sanakit.data")
_TRANSFORM_VERSION = "pil-lanczos-cover-crop-v1"  # bump when rendering changes pixels
MANIFEST_VERSION = 1


def digest(*parts: Any) -> str:
    """32-hex-digit BLAKE2b of a JSON rendering of ``parts`` (stable across runs)."""
    blob = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.blake2b(blob.encode(), digest_size=16).hexdigest()


# Options read by the loader at training time; changing them needs no re-cache.
RUNTIME_OPTIONS = frozenset(
    {
        "caption_dropout",
        "caption_selection",
        "caption_temperature",
        "repeats",
        "probability",
        "is_regularisation_data",
        "loss_weight",
        "disabled",
    }
)


def dataset_digest(cfg: DatasetConfig) -> str:
    """Digest of the dataset options that shape its cache entries (everything except
    :data:`RUNTIME_OPTIONS`), stored in its sample list so the loader refuses a stale cache."""
    return digest({k: v for k, v in to_dict(cfg).items() if k not in RUNTIME_OPTIONS})


@dataclass
class _Sample:
    cfg: DatasetConfig
    item: SourceItem
    content: str
    height: int
    width: int
    fixes: tuple[str, ...]
    mask_hash: str | None
    bucket: tuple[int, int] = (0, 0)
    geometry: Geometry | None = None
    latent_key: str = ""
    flip_key: str | None = None
    text_keys: list[str] = field(default_factory=list)

    @property
    def sample_id(self) -> str:
        return f"{self.cfg.id}/{self.item.name}"


class _BuildLock:
    """``cache.lock`` holding the builder's pid; a live holder makes a second build fail."""

    def __init__(self, root: Path) -> None:
        self.path = root / "cache.lock"

    def __enter__(self) -> _BuildLock:
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                try:
                    pid = int(self.path.read_text().strip() or 0)
                except (OSError, ValueError):
                    pid = 0
                if pid and pid != os.getpid() and _alive(pid):
                    raise SanakitError(
                        f"cache {self.path.parent} is being built by process {pid}; wait for it "
                        f"or delete {self.path} if that process is gone"
                    ) from None
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as fh:
                fh.write(str(os.getpid()))
            return self
        raise SanakitError(f"cannot lock cache {self.path.parent}; delete {self.path}")

    def __exit__(self, *exc: object) -> None:
        self.path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ----------------------------------------------------------------------------- scanning
def _scan(
    cfg: DatasetConfig, items: list[SourceItem], root: Path, data: DataConfig,
    report: CacheReport, progress: bool,
) -> list[_Sample]:  # fmt: skip
    """Hashes and probes every item (reusing ``scan/<id>.json`` for unchanged local files) and
    drops unusable ones into the report."""
    scan_path = root / "scan" / f"{cfg.id}.json"
    try:
        old = json.loads(scan_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        old = {}
    new: dict[str, list[Any]] = {}
    samples = []
    stats = report.datasets.setdefault(cfg.id, DatasetStats())
    for item in tqdm(items, desc=f"scan {cfg.id}", unit="img", disable=not progress):
        report.images += 1
        stats.images += 1
        if item.problem:
            report.skip(cfg.id, item.location, item.problem)
            continue
        entry = old.get(item.name)
        if item.stat is not None and entry is not None and entry[:2] == list(item.stat):
            content, height, width, fixes = entry[2], entry[3], entry[4], tuple(entry[5])
            if height * width > data.max_image_pixels:
                limit = data.max_image_pixels
                reason = f"decompression bomb: {width}x{height} exceeds max_image_pixels = {limit}"
                report.skip(cfg.id, item.location, reason)
                continue
        else:
            try:
                raw = item.read()
            except OSError as err:
                report.skip(cfg.id, item.location, f"unreadable file: {err.strerror or err}")
                continue
            try:
                probe = probe_image(raw, data.max_image_pixels)
            except BadImage as err:
                report.skip(cfg.id, item.location, err.reason)
                continue
            content = hashlib.blake2b(raw, digest_size=16).hexdigest()
            height, width, fixes = probe.height, probe.width, probe.fixes
        if item.stat is not None:
            new[item.name] = [*item.stat, content, height, width, list(fixes)]
        minimum = cfg.minimum_image_size
        if minimum and image_measure(height, width, cfg.resolution_type) < minimum:
            report.skip(
                cfg.id, item.location,
                f"below minimum_image_size: {width}x{height} is under {minimum:g} "
                f"({cfg.resolution_type})",
            )  # fmt: skip
            continue
        mask_hash = None
        if item.read_mask is not None:
            try:
                mask_hash = hashlib.blake2b(item.read_mask(), digest_size=16).hexdigest()
            except OSError as err:
                report.skip(cfg.id, item.location, f"unreadable mask: {err.strerror or err}")
                continue
        samples.append(_Sample(cfg, item, content, height, width, fixes, mask_hash))
    scan_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = scan_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(new, separators=(",", ":")), encoding="utf-8")
    os.replace(tmp, scan_path)
    return samples


def _assign(samples: list[_Sample], cfg: DatasetConfig, min_count: int, seed: int) -> None:
    """Buckets (merged so each holds at least ``min_count`` images) and crop geometry."""
    targets = [target_bucket(s.height, s.width, cfg) for s in samples]
    mapping = merge_small_buckets(targets, min_count)
    for sample, target in zip(samples, targets):
        sample.bucket = mapping[target]
        sample.geometry = plan_geometry(
            sample.height, sample.width, sample.bucket, cfg, crop_seed=(seed, sample.content)
        )


# ----------------------------------------------------------------------------- entry point
def fingerprints(
    autoencoder: AutoencoderLike, text_encoder: TextEncoderLike, data: DataConfig
) -> tuple[str, str]:
    """``(latent fingerprint, text fingerprint)``: the encoder identities, dtypes and rendering
    version that every latent / text key of this cache is derived from."""
    latent_fp = digest(
        "latent", autoencoder.fingerprint(), str(autoencoder.dtype), int(autoencoder.downsample_factor),
        int(autoencoder.latent_channels), data.latent_dtype, _TRANSFORM_VERSION,
    )  # fmt: skip
    text_fp = digest(
        "text", text_encoder.fingerprint(), int(text_encoder.max_length),
        int(text_encoder.hidden_size), data.text_dtype,
    )  # fmt: skip
    return latent_fp, text_fp


def _manifest(
    cfg: DatasetConfig,
    samples: list[_Sample],
    min_count: int,
    latent_fp: str,
    text_fp: str,
    empty_key: str,
    autoencoder: AutoencoderLike,
) -> dict[str, Any]:
    """The sample list of one dataset (``datasets/<id>.json``)."""
    return {
        "version": MANIFEST_VERSION,
        "id": cfg.id,
        "config_digest": dataset_digest(cfg),
        "min_bucket": min_count,
        "latent_fingerprint": latent_fp,
        "text_fingerprint": text_fp,
        "latent_channels": int(autoencoder.latent_channels),
        "downsample_factor": int(autoencoder.downsample_factor),
        "empty_text": empty_key,
        "samples": [
            {
                "id": s.sample_id,
                "path": s.item.location,
                "bucket": list(s.bucket),
                "geometry": list(s.geometry or ()),  # bucket h, w, resize h, w, crop top, left
                "latent": s.latent_key,
                "latent_flip": s.flip_key,
                "texts": s.text_keys,
                "captions": list(s.item.captions),
                "caption_scores": list(s.item.caption_scores),
                "mask": s.mask_hash is not None,
            }
            for s in samples
        ],
    }


def build_cache(
    data_config: DataConfig,
    autoencoder: AutoencoderLike,
    text_encoder: TextEncoderLike,
    *,
    batch_size: int = 8,
    world_size: int = 1,
    encode_batch_size: int | None = None,
    progress: bool = True,
) -> CacheReport:
    """Encodes every image (latents, flipped copies, loss masks) and caption (plus the empty
    prompt) of the enabled datasets that is not cached yet, and writes the sample lists and
    ``cache_report.json``. Idempotent: a second run with nothing changed makes zero encoder calls.

    ``batch_size`` x ``world_size`` is the smallest bucket kept: buckets with fewer images are
    merged into the nearest aspect ratio, so pass the training batch size per process and the
    number of processes (a different value changes the merging, hence some crops and keys).
    ``encode_batch_size`` (default ``batch_size``) is the autoencoder / text-encoder batch.
    Call it on one process only (a lock file refuses concurrent builds). An interrupted build keeps every completed shard; a shard whose
    checksum fails (``verify_checksums``) is deleted and its entries recomputed.
    Returns the :class:`CacheReport` (also logged as a one-line summary).
    """
    if batch_size < 1 or world_size < 1:
        raise SanakitError(
            f"batch_size and world_size must be >= 1, got {batch_size}, {world_size}"
        )
    start = time.perf_counter()
    root = Path(data_config.cache_dir).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    report = CacheReport(cache_dir=str(root))
    min_count = batch_size * world_size
    encode_batch = encode_batch_size or batch_size
    factor = int(autoencoder.downsample_factor)
    shard_bytes = int(data_config.shard_size_mb * 2**20)
    with _BuildLock(root):
        store = ShardStore(root / "shards")
        report.rebuilt_shards = store.verify(full=data_config.verify_checksums)
        for name in report.rebuilt_shards:
            log.warning("cache shard %s failed its check and will be rebuilt", name)
        latent_fp, text_fp = fingerprints(autoencoder, text_encoder, data_config)
        per_dataset: list[tuple[DatasetConfig, list[_Sample]]] = []
        for index, cfg in enumerate(data_config.datasets):
            if cfg.disabled:
                continue
            items = discover(cfg, where=f"data.datasets[{index}]")
            samples = _scan(cfg, items, root, data_config, report, progress)
            _assign(samples, cfg, min_count, data_config.seed)
            for s in samples:
                if s.bucket[0] % factor or s.bucket[1] % factor:
                    raise SanakitError(
                        f"data.datasets[{index}]: bucket {s.bucket[0]}x{s.bucket[1]} is not divisible "
                        f"by the autoencoder's downsample factor {factor}"
                    )
                base = (latent_fp, s.content, tuple(s.geometry or ()), s.mask_hash)
                s.latent_key = digest(*base, False)
                s.flip_key = digest(*base, True) if cfg.flip else None
                s.text_keys = [digest(text_fp, caption) for caption in s.item.captions]
            per_dataset.append((cfg, samples))

        # Latents: one job per distinct image + geometry, listing the orientations still missing.
        jobs: dict[str, LatentJob] = {}
        for _, samples in per_dataset:
            for s in samples:
                for flip, key in ((False, s.latent_key), (True, s.flip_key)):
                    if key is None:
                        continue
                    if key in store:
                        report.reused["latents"] += 1
                        continue
                    assert s.geometry is not None
                    job = jobs.setdefault(
                        s.latent_key,
                        LatentJob(s.latent_key, s.item.read, s.item.read_mask, s.geometry, []),
                    )
                    if (flip, key) not in job.outputs:
                        job.outputs.append((flip, key))
        writer = ShardWriter(store, "latents", shard_bytes)
        failures = encode_latents(
            list(jobs.values()), autoencoder, writer, batch_size=encode_batch,
            latent_dtype=data_config.latent_dtype, max_pixels=data_config.max_image_pixels,
            num_workers=data_config.num_workers, report=report, progress=progress,
        )  # fmt: skip
        writer.close()

        # Drop samples whose image failed to decode (all samples sharing that image + geometry).
        kept: list[tuple[DatasetConfig, list[_Sample]]] = []
        for cfg, samples in per_dataset:
            for s in samples:
                if s.latent_key in failures:
                    report.skip(cfg.id, s.item.location, failures[s.latent_key])
            kept.append((cfg, [s for s in samples if s.latent_key not in failures]))

        # Text embeddings: each distinct caption once, plus the empty prompt for dropout.
        empty_key = digest(text_fp, None, "<empty prompt>")
        todo: dict[str, str] = {}
        for _, samples in kept:
            for s in samples:
                for key, caption in zip(s.text_keys, s.item.captions):
                    if key in store:
                        report.reused["texts"] += 1
                    else:
                        todo.setdefault(key, caption)
        writer = ShardWriter(store, "text", shard_bytes)
        encode_texts(
            todo, None if empty_key in store else empty_key, text_encoder, writer,
            batch_size=encode_batch, text_dtype=data_config.text_dtype,
            report=report, progress=progress,
        )  # fmt: skip
        writer.close()

        datasets_dir = root / "datasets"
        datasets_dir.mkdir(exist_ok=True)
        for cfg, samples in kept:
            manifest = _manifest(
                cfg, samples, min_count, latent_fp, text_fp, empty_key, autoencoder
            )
            tmp = datasets_dir / f".{cfg.id}.json.tmp"
            tmp.write_text(json.dumps(manifest, separators=(",", ":")), encoding="utf-8")
            os.replace(tmp, datasets_dir / f"{cfg.id}.json")
            for s in samples:
                report.add_bucket(cfg.id, s.bucket)
                for fix in s.fixes:
                    report.fix(cfg.id, s.item.location, fix)
        report.seconds = round(time.perf_counter() - start, 3)
        report.write()
    log.info(report.summary())
    return report
