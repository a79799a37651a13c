"""Training batches from the cache: :func:`open_cache`, :class:`CachedDataset` (a
``torch.utils.data.Dataset`` of planned batches), :class:`CacheLoader` (the infinite, resumable
iterator) and :func:`make_loader` / :func:`check_dataset_size`.

A batch is a dict::

    latents      (B, C, h, w) float   cached autoencoder latents (flipped copy when drawn)
    text         (B, L, D) float      cached text embeddings (empty prompt when dropped); L is
                                      the window trimmed to the batch's longest caption
                                      (:func:`sanakit.models.sana.text_window`, decided here
                                      once per batch so the model's forward never syncs)
    text_mask    (B, L) int64
    loss_weight  (B,) float32         the dataset's loss_weight
    is_regularisation (B,) bool       the dataset's is_regularisation_data
    mask         (B, 1, h, w) float or None   loss mask at latent resolution (masks = true)
    ids          list[str]            "dataset/relative/path"
    dataset      str                  the dataset id (a batch never mixes datasets or buckets)
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from sanakit.config import DataConfig, DatasetConfig
from sanakit.data.cache import MANIFEST_VERSION, dataset_digest, digest, fingerprints
from sanakit.data.encoders import AutoencoderLike, TextEncoderLike
from sanakit.data.sampler import BatchPlanner, DatasetPlan, PlannedBatch
from sanakit.data.store import ShardReader, ShardStore
from sanakit.errors import SanakitError
from sanakit.models.sana import text_window

__all__ = [
    "Cache",
    "CacheLoader",
    "CachedDataset",
    "check_dataset_size",
    "make_loader",
    "open_cache",
]

log = logging.getLogger("sanakit.data")


class Cache:
    """The read side of a built cache: the sample lists of the enabled datasets and a reader.

    ``datasets`` pairs each enabled :class:`DatasetConfig` with its sample list (dicts with
    ``id``, ``bucket``, ``latent``, ``latent_flip``, ``texts``, ``captions``, ``mask``).
    """

    def __init__(
        self, data_config: DataConfig, manifests: list[dict[str, Any]], reader: ShardReader
    ) -> None:
        self.data_config = data_config
        self.manifests = manifests
        self.reader = reader
        self.datasets: list[tuple[DatasetConfig, list[dict[str, Any]]]] = [
            (cfg, m["samples"]) for cfg, m in zip(data_config.active, manifests)
        ]

    def check_encoders(self, autoencoder: AutoencoderLike, text_encoder: TextEncoderLike) -> None:
        """Raises :class:`SanakitError` if the cache was built with another autoencoder or text
        encoder (weights, dtype, instruction, max length) than the ones given."""
        self.check_fingerprints(*fingerprints(autoencoder, text_encoder, self.data_config))

    def check_fingerprints(self, latent_fp: str, text_fp: str) -> None:
        """Raises :class:`SanakitError` if a dataset was cached with other encoder fingerprints
        (see :func:`~sanakit.data.cache.fingerprints`; the trainer passes recorded ones and
        loads no encoder)."""
        for m in self.manifests:
            for which, built, now in (
                ("autoencoder", m["latent_fingerprint"], latent_fp),
                ("text encoder", m["text_fingerprint"], text_fp),
            ):
                if built != now:
                    raise SanakitError(
                        f"the cache of dataset {m['id']!r} was built with a different {which}; "
                        "run `sanakit cache CONFIG` (build_cache) again"
                    )


def open_cache(data_config: DataConfig) -> Cache:
    """Opens the cache of ``data_config`` for reading. Raises :class:`SanakitError` (with the
    fix: run ``sanakit cache``) if a dataset is not cached, was cached with other options, or
    an entry is missing."""
    root = Path(data_config.cache_dir).expanduser()
    store = ShardStore(root / "shards")
    manifests = []
    for index, cfg in enumerate(data_config.datasets):
        if cfg.disabled:
            continue
        path = root / "datasets" / f"{cfg.id}.json"
        fix = "run `sanakit cache CONFIG` (build_cache) first"
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise SanakitError(
                f"data.datasets[{index}] ({cfg.id!r}) is not cached in {root}; {fix}"
            ) from None
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
            raise SanakitError(f"cache file {path} is unreadable ({err}); {fix}") from None
        if manifest.get("version") != MANIFEST_VERSION or manifest.get(
            "config_digest"
        ) != dataset_digest(cfg):
            raise SanakitError(
                f"data.datasets[{index}] ({cfg.id!r}) changed since it was cached; {fix}"
            )
        keys = [manifest["empty_text"]]
        for s in manifest["samples"]:
            keys += [s["latent"], *s["texts"]] + ([s["latent_flip"]] if s["latent_flip"] else [])
        missing = [k for k in keys if k not in store]
        if missing:
            raise SanakitError(f"cache {root} lacks {len(missing)} entries of {cfg.id!r}; {fix}")
        manifests.append(manifest)
    return Cache(data_config, manifests, ShardReader.from_store(store))


class CachedDataset(Dataset):
    """Map-style dataset whose items are planned batches: ``dataset[(d, rows)]`` assembles the
    batch dict of dataset index ``d`` for ``rows`` (``(B, 3)``: sample, caption or -1, flip)."""

    def __init__(self, cache: Cache, *, dtype: torch.dtype = torch.float32) -> None:
        self.reader = cache.reader
        self.dtype = dtype
        self.configs = [cfg for cfg, _ in cache.datasets]
        self.samples = [samples for _, samples in cache.datasets]
        self.empty = [m["empty_text"] for m in cache.manifests]

    def __len__(self) -> int:
        return sum(len(s) for s in self.samples)

    def _gather(
        self, keys: list[str], field: str, dtype: torch.dtype | None, length: int | None = None
    ) -> torch.Tensor:
        """Stacks the cached tensors of ``keys`` into one (B, ...) tensor, converting dtype in
        the same pass (one copy out of the memory-mapped shards); repeated keys read once.
        ``length``: keep only the first ``length`` rows of each tensor (trimmed text)."""
        first: dict[str, torch.Tensor] = {}
        for key in keys:
            if key not in first:
                first[key] = self.reader.get(key, field)
        sample = first[keys[0]][:length]
        out = torch.empty((len(keys), *sample.shape), dtype=dtype or sample.dtype)
        for i, key in enumerate(keys):
            out[i].copy_(first[key][:length])
        return out

    def __getitem__(self, request: tuple[int, np.ndarray]) -> dict[str, Any]:
        index, rows = request
        cfg, samples = self.configs[index], self.samples[index]
        chosen = [samples[int(i)] for i in rows[:, 0]]
        latent_keys = [s["latent_flip"] if f else s["latent"] for s, f in zip(chosen, rows[:, 2])]
        text_keys = [
            s["texts"][int(c)] if c >= 0 else self.empty[index] for s, c in zip(chosen, rows[:, 1])
        ]
        text_mask = self._gather(text_keys, "mask", None)
        length = text_window(text_mask)[0]  # the padding trimmed once per batch, on the host
        batch: dict[str, Any] = {
            "latents": self._gather(latent_keys, "latent", self.dtype),
            "text": self._gather(text_keys, "embeds", self.dtype, length),
            "text_mask": text_mask[:, :length].contiguous(),
            "loss_weight": torch.full((len(rows),), cfg.loss_weight, dtype=torch.float32),
            "is_regularisation": torch.full(
                (len(rows),), cfg.is_regularisation_data, dtype=torch.bool
            ),
            "mask": self._gather(latent_keys, "mask", torch.float32) if cfg.masks else None,
            "ids": [s["id"] for s in chosen],
            "dataset": cfg.id,
        }
        return batch


class _Requests(torch.utils.data.Sampler):
    """Infinite sampler of ``((d, rows), state_after)`` for this rank. It advances the loader's
    planner ahead of the consumed position while workers prefetch; :meth:`CacheLoader.close`
    rewinds the planner to the last consumed state."""

    def __init__(self, planner: BatchPlanner, rank: int, batch_size: int) -> None:
        self.planner, self.rank, self.batch_size = planner, rank, batch_size

    def __iter__(self) -> Iterator[Any]:
        while True:
            planned: PlannedBatch = self.planner.next()
            rows = planned.rows[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]
            yield (planned.dataset, rows), self.planner.state_dict()


class _WithState(Dataset):
    def __init__(self, inner: CachedDataset) -> None:
        self.inner = inner

    def __getitem__(self, request: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        return self.inner[request[0]], request[1]


class CacheLoader:
    """Infinite iterator over training batches (see the module docstring for the dict).

    Deterministic given the seed; ``state_dict()`` is the position after the last batch
    returned, so ``load_state_dict`` makes the next batch exactly the one an uninterrupted run
    would produce. ``epoch`` counts nominal epochs (batches returned / batches in one pass over
    every dataset); ``dataset_epochs`` the epochs of each dataset.
    """

    def __init__(
        self, dataset: CachedDataset, planner: BatchPlanner, *, rank: int, num_workers: int
    ) -> None:
        self.dataset, self.planner = dataset, planner
        self.rank, self.num_workers = rank, num_workers
        self._state = planner.state_dict()
        self._iter: Iterator[tuple[dict[str, Any], dict[str, Any]]] | None = None

    def _start(self) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
        requests = _Requests(self.planner, self.rank, self.planner.batch_size)
        return iter(
            DataLoader(
                _WithState(self.dataset), sampler=requests, batch_size=None, num_workers=self.num_workers,
                collate_fn=_identity, prefetch_factor=4, persistent_workers=False,
            )
        )  # fmt: skip

    def __iter__(self) -> CacheLoader:
        return self

    def __next__(self) -> dict[str, Any]:
        if self.num_workers == 0:
            planned = self.planner.next()
            b = self.planner.batch_size
            batch = self.dataset[
                (planned.dataset, planned.rows[self.rank * b : (self.rank + 1) * b])
            ]
            self._state = self.planner.state_dict()
            return batch
        if self._iter is None:
            self._iter = self._start()
        batch, self._state = next(self._iter)
        return batch

    @property
    def step(self) -> int:
        """Batches returned so far (global steps)."""
        return int(self._state["step"])

    @property
    def epoch(self) -> int:
        return self.step // max(1, self.planner.total_batches_per_epoch)

    @property
    def dataset_epochs(self) -> dict[str, int]:
        return {k: v["epoch"] for k, v in self._state["datasets"].items()}

    def state_dict(self) -> dict[str, Any]:
        """Position after the last returned batch (JSON-serialisable)."""
        return json.loads(json.dumps(self._state))

    def load_state_dict(self, state: dict[str, Any], strict: bool = True) -> None:
        """Continues from ``state`` (see :meth:`BatchPlanner.load_state_dict`)."""
        self.close()
        self.planner.load_state_dict(state, strict=strict)
        self._state = self.planner.state_dict()

    def close(self) -> None:
        """Stops worker processes (if any); iteration restarts from the current state."""
        if self._iter is not None:
            self.planner.load_state_dict(self._state, strict=False)
            self._iter = None


def _identity(x: Any) -> Any:
    return x


def _plans(cache: Cache, caption_dropout: float | None) -> list[DatasetPlan]:
    plans = []
    for cfg, samples in cache.datasets:
        buckets: dict[tuple[int, int], list[int]] = {}
        for i, s in enumerate(samples):
            buckets.setdefault((int(s["bucket"][0]), int(s["bucket"][1])), []).append(i)
        repeats = cfg.repeats
        weight = cfg.probability if cfg.probability is not None else len(samples) * (1 + repeats)
        dropout = cfg.caption_dropout if caption_dropout is None else caption_dropout
        cdf = caption_cdf(cfg, samples)
        plans.append(
            DatasetPlan(
                id=cfg.id,
                buckets={b: np.asarray(idx, dtype=np.int64) for b, idx in buckets.items()},
                n_captions=np.asarray([len(s["texts"]) for s in samples], dtype=np.int64),
                repeats=repeats,
                weight=float(weight),
                caption_dropout=float(dropout),
                flip=cfg.flip,
                fingerprint=digest(
                    [(s["id"], s["bucket"], s["latent"], s["texts"]) for s in samples]
                )
                if cdf is None
                else digest(
                    [(s["id"], s["bucket"], s["latent"], s["texts"]) for s in samples],
                    cfg.caption_selection,
                    cdf.tolist(),
                ),
                caption_cdf=cdf,
            )
        )
    return plans


def caption_cdf(cfg: DatasetConfig, samples: list[dict[str, Any]]) -> np.ndarray | None:
    """(N, C_max) cumulative caption probabilities of ``cfg.caption_selection`` (padded with 1),
    or None for ``uniform``. ``first``: always caption 0. ``clip_weighted`` (Sana's multi-caption
    sampling): ``P(c) = exp(s_c / T) / sum_k exp(s_k / T)`` over an image's captions, ``s`` the
    CLIP scores, ``T`` = ``caption_temperature``; an image with several captions needs every
    score (``sanakit score-captions`` fills them in)."""
    if cfg.caption_selection == "uniform" or not samples:
        return None
    width = max(len(s["texts"]) for s in samples)
    cdf = np.ones((len(samples), width), dtype=np.float64)
    if cfg.caption_selection == "first":
        return cdf
    missing = []
    for i, s in enumerate(samples):
        n = len(s["texts"])
        scores = s.get("caption_scores") or [None] * n
        if n == 1:
            continue
        if any(v is None for v in scores):
            missing.append(s.get("path", s["id"]))
            continue
        z = np.asarray(scores, dtype=np.float64) / cfg.caption_temperature
        p = np.exp(z - z.max())
        cdf[i, :n] = np.cumsum(p / p.sum())
        cdf[i, n - 1 :] = 1.0
    if missing:
        raise SanakitError(
            f"dataset {cfg.id!r}: caption_selection = 'clip_weighted' but {len(missing)} images "
            f"have captions without a clip_score (first: {missing[0]}); run `sanakit "
            "score-captions CONFIG --clip-model PATH` (or use caption_selection = 'uniform')"
        )
    return cdf


def check_dataset_size(
    data_config: DataConfig,
    cache: Cache | None = None,
    *,
    batch_size: int,
    gradient_accumulation_steps: int = 1,
    world_size: int = 1,
) -> None:
    """Raises :class:`SanakitError` with the fix if a dataset cannot fill one optimizer step:
    ``images x (1 + repeats) < batch_size x gradient_accumulation_steps x world_size`` (raise
    ``repeats``), or if it has no usable image at all, or if its buckets are too fragmented for
    one global batch (re-run the cache with the training batch size)."""
    cache = cache if cache is not None else open_cache(data_config)
    need = batch_size * gradient_accumulation_steps * world_size
    planner = BatchPlanner(_plans(cache, None), batch_size, world_size, data_config.seed)
    index = {cfg.id: i for i, cfg in enumerate(data_config.datasets)}
    for d, (cfg, samples) in enumerate(cache.datasets):
        key = f"data.datasets[{index[cfg.id]}]"
        if not samples:
            raise SanakitError(
                f"{key} ({cfg.id!r}) has no usable images: every image was skipped "
                f"(see {Path(data_config.cache_dir) / 'cache_report.json'})"
            )
        have = len(samples) * (1 + cfg.repeats)
        if have < need:
            repeats = math.ceil(need / len(samples)) - 1
            raise SanakitError(
                f"{key} ({cfg.id!r}) has {len(samples)} usable images x (1 + repeats {cfg.repeats}) = "
                f"{have} samples, but one optimizer step needs batch_size {batch_size} x "
                f"gradient_accumulation_steps {gradient_accumulation_steps} x processes {world_size} "
                f"= {need}; set {key}.repeats = {repeats} (or more)"
            )
        if planner.batches_per_epoch(d) == 0:
            raise SanakitError(
                f"{key} ({cfg.id!r}) has no aspect bucket with {batch_size * world_size} samples; "
                f"re-run the cache with batch_size={batch_size}, world_size={world_size} so small "
                "buckets are merged"
            )
        dropped = planner.dropped_per_epoch(d)
        if dropped:
            log.warning(
                "dataset %r: %d samples per epoch sit in buckets smaller than one batch and are "
                "not trained on; re-run the cache with batch_size=%d, world_size=%d to merge them",
                cfg.id, dropped, batch_size, world_size,
            )  # fmt: skip


def make_loader(
    data_config: DataConfig,
    cache: Cache | None = None,
    *,
    batch_size: int,
    seed: int | None = None,
    rank: int = 0,
    world_size: int = 1,
    caption_dropout: float | None = None,
    dtype: torch.dtype = torch.float32,
    num_workers: int | None = None,
) -> CacheLoader:
    """The training iterator over the cache of ``data_config`` (opened if ``cache`` is None).

    ``batch_size`` is per process; process ``rank`` of ``world_size`` gets its own disjoint
    slice of each global batch. ``seed`` defaults to ``data_config.seed``; ``caption_dropout``
    overrides every dataset's value; ``dtype`` is the dtype of ``latents`` and ``text``;
    ``num_workers`` (default ``data_config.num_workers``) reads batches in worker processes.
    Checks the dataset sizes first (:func:`check_dataset_size`).
    """
    if not 0 <= rank < world_size:
        raise SanakitError(f"rank must be in [0, world_size = {world_size}), got {rank}")
    if caption_dropout is not None and not 0.0 <= caption_dropout < 1.0:
        raise SanakitError(f"caption_dropout must be in [0, 1), got {caption_dropout}")
    cache = cache if cache is not None else open_cache(data_config)
    check_dataset_size(data_config, cache, batch_size=batch_size, world_size=world_size)
    seed = data_config.seed if seed is None else seed
    planner = BatchPlanner(_plans(cache, caption_dropout), batch_size, world_size, seed)
    workers = data_config.num_workers if num_workers is None else num_workers
    return CacheLoader(CachedDataset(cache, dtype=dtype), planner, rank=rank, num_workers=workers)
