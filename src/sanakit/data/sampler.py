"""Deterministic batch planning across datasets and buckets, with an exact resumable position.

Each dataset cycles through its own epochs. An epoch of dataset ``d`` (seeded by ``(seed,
id(d), epoch)``) repeats every sample ``1 + repeats`` times, shuffles each bucket's occurrences,
cuts them into global batches of ``batch_size x world_size`` (the incomplete remainder of a
bucket is left for the next epoch's shuffle), draws per occurrence the caption variant (uniform
``floor(u n)``, or the first index whose cumulative probability ``caption_cdf`` exceeds ``u``),
caption dropout and flip, and shuffles the batch order. At global step ``s`` the dataset is drawn with
probability ``w_d / sum(w)`` from a generator seeded by ``(seed, s)``; ``w_d`` is the
dataset's ``probability`` or, by default, ``images x (1 + repeats)``. Rank ``r`` takes rows
``[r B, (r + 1) B)`` of the global batch, so ranks see disjoint occurrences of the same bucket.
The position is ``(step, epoch_d, position_d)``; everything else is recomputed from the seed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from sanakit.errors import SanakitError

__all__ = ["BatchPlanner", "DatasetPlan", "PlannedBatch"]

_CHOICE_STREAM = 0x5A4E_A217  # separates the dataset-choice generator from the epoch ones


def _stable_int(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


@dataclass(frozen=True)
class DatasetPlan:
    """What the planner needs of one dataset: ``buckets`` maps ``(h, w)`` to sorted sample
    indices; ``n_captions[i]`` is the number of caption variants of sample ``i``;
    ``fingerprint`` identifies the sample list (checked on resume); ``caption_cdf`` (N, C_max),
    when given, holds each sample's cumulative caption probabilities (padded with 1), else the
    caption is uniform."""

    id: str
    buckets: dict[tuple[int, int], np.ndarray]
    n_captions: np.ndarray
    repeats: int
    weight: float
    caption_dropout: float
    flip: bool
    fingerprint: str
    caption_cdf: np.ndarray | None = None


class PlannedBatch(NamedTuple):
    """One global batch: ``rows`` is ``(batch_size x world_size, 3)`` int64 of ``(sample index,
    caption index or -1 for the empty prompt, flipped 0/1)``."""

    step: int
    dataset: int
    bucket: tuple[int, int]
    rows: np.ndarray


class BatchPlanner:
    """Yields :class:`PlannedBatch` es forever; :meth:`state_dict` is the exact position."""

    def __init__(
        self, datasets: list[DatasetPlan], batch_size: int, world_size: int, seed: int
    ) -> None:
        if batch_size < 1 or world_size < 1:
            raise SanakitError(
                f"batch_size and world_size must be >= 1, got {batch_size}, {world_size}"
            )
        self.datasets = datasets
        self.batch_size, self.world_size, self.seed = batch_size, world_size, seed
        self.global_batch = batch_size * world_size
        self.step = 0
        self.epochs = [0] * len(datasets)
        self.positions = [0] * len(datasets)
        self._plans: dict[int, tuple[int, list[tuple[tuple[int, int], np.ndarray]]]] = {}
        weights = np.array([d.weight for d in datasets], dtype=np.float64)
        for d, w in zip(datasets, weights, strict=True):
            if not (np.isfinite(w) and w >= 0):
                raise SanakitError(f"dataset {d.id!r}: sampling weight {w} must be finite and >= 0")
        total = float(weights.sum())
        # None when no dataset has a sample (every weight 0): `choose` raises then, so that
        # check_dataset_size can first name the empty dataset (and numpy never sees 0 / 0)
        self._cum: np.ndarray | None = np.cumsum(weights / total) if total > 0 else None

    # -------------------------------------------------------------------- sizes
    def batches_per_epoch(self, index: int) -> int:
        """Global batches in one epoch of dataset ``index``."""
        d = self.datasets[index]
        return sum(len(idx) * (1 + d.repeats) // self.global_batch for idx in d.buckets.values())

    def dropped_per_epoch(self, index: int) -> int:
        """Occurrences per epoch of dataset ``index`` in buckets too small for one global batch
        (never trained on: rebuild the cache with the training batch size to merge them)."""
        d = self.datasets[index]
        return sum(
            len(idx) * (1 + d.repeats)
            for idx in d.buckets.values()
            if len(idx) * (1 + d.repeats) < self.global_batch
        )

    @property
    def total_batches_per_epoch(self) -> int:
        return sum(self.batches_per_epoch(i) for i in range(len(self.datasets)))

    # -------------------------------------------------------------------- planning
    def epoch_plan(self, index: int, epoch: int) -> list[tuple[tuple[int, int], np.ndarray]]:
        """The ordered global batches ``[(bucket, rows)]`` of epoch ``epoch`` of dataset ``index``."""
        cached = self._plans.get(index)
        if cached is not None and cached[0] == epoch:
            return cached[1]
        d = self.datasets[index]
        rng = np.random.default_rng([self.seed, _stable_int(d.id), epoch])
        g = self.global_batch
        batches: list[tuple[tuple[int, int], np.ndarray]] = []
        for bucket in sorted(d.buckets):
            occ = rng.permutation(np.repeat(d.buckets[bucket], 1 + d.repeats))
            n = len(occ) // g * g
            occ = occ[:n]
            u = rng.random(n)
            if d.caption_cdf is None:
                caption = np.floor(u * d.n_captions[occ]).astype(np.int64)
            else:  # the first caption whose cumulative probability exceeds u
                caption = (u[:, None] >= d.caption_cdf[occ]).sum(axis=1).astype(np.int64)
                caption = np.minimum(caption, d.n_captions[occ] - 1)
            if d.caption_dropout > 0:
                caption[rng.random(n) < d.caption_dropout] = -1
            flip = (rng.random(n) < 0.5) if d.flip else np.zeros(n, dtype=bool)
            rows = np.stack([occ.astype(np.int64), caption, flip.astype(np.int64)], axis=1)
            batches.extend((bucket, block) for block in rows.reshape(-1, g, 3))
        order = rng.permutation(len(batches))
        plan = [batches[i] for i in order]
        self._plans[index] = (epoch, plan)
        return plan

    def choose(self, step: int) -> int:
        """Dataset drawn at global step ``step`` (independent of the history)."""
        if self._cum is None:
            raise SanakitError("no dataset has a sample to train on (every sampling weight is 0)")
        u = np.random.default_rng([self.seed, _CHOICE_STREAM, step]).random()
        return int(min(np.searchsorted(self._cum, u, side="right"), len(self.datasets) - 1))

    def next(self) -> PlannedBatch:
        """The next global batch; advances the position."""
        index = self.choose(self.step)
        if self.batches_per_epoch(index) == 0:
            raise SanakitError(
                f"dataset {self.datasets[index].id!r} has no complete batch (check_dataset_size)"
            )
        plan = self.epoch_plan(index, self.epochs[index])
        bucket, rows = plan[self.positions[index]]
        out = PlannedBatch(self.step, index, bucket, rows)
        self.step += 1
        self.positions[index] += 1
        if self.positions[index] == len(plan):
            self.epochs[index] += 1
            self.positions[index] = 0
        return out

    # -------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """``{"step", "seed", "batch_size", "world_size", "datasets": {id: {"epoch",
        "position", "fingerprint"}}}`` (plain ints and strings)."""
        return {
            "step": self.step,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "world_size": self.world_size,
            "datasets": {
                d.id: {
                    "epoch": self.epochs[i],
                    "position": self.positions[i],
                    "fingerprint": d.fingerprint,
                }
                for i, d in enumerate(self.datasets)
            },
        }

    def load_state_dict(self, state: dict[str, Any], strict: bool = True) -> None:
        """Restores a position. ``strict`` requires the same seed, batch size, world size and
        sample lists (so the next batch is exactly the one that would have come); with
        ``strict=False`` a changed dataset restarts its current epoch from the beginning."""
        for key in ("seed", "batch_size", "world_size"):
            if state.get(key) != getattr(self, key) and strict:
                raise SanakitError(
                    f"data loader state has {key} = {state.get(key)}, this run {getattr(self, key)}; "
                    "exact resume needs the same value (or load with strict=False)"
                )
        saved = state.get("datasets", {})
        changed = [
            d.id for d in self.datasets if saved.get(d.id, {}).get("fingerprint") != d.fingerprint
        ]
        if changed and strict:
            raise SanakitError(
                f"dataset {changed[0]!r} changed since the checkpoint (images added, removed or "
                "re-cached); exact resume is impossible (load with strict=False)"
            )
        self.step = int(state["step"])
        for i, d in enumerate(self.datasets):
            entry = saved.get(d.id)
            if d.id in changed:  # restart its current epoch
                self.epochs[i], self.positions[i] = (int(entry["epoch"]) if entry else 0), 0
                continue
            self.epochs[i], self.positions[i] = int(entry["epoch"]), int(entry["position"])
            if self.positions[i] >= max(1, len(self.epoch_plan(i, self.epochs[i]))):
                self.epochs[i], self.positions[i] = self.epochs[i] + 1, 0
