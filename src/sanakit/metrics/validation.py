"""Scores of validation rounds: the metric models of ``[validation]`` (loaded once, on first
use), ``scores.json`` per round, and the best round at the end of training.

A round's ``scores.json``::

    {"step": 1000, "clip_score": 31.2, "prompts": {"cat": 30.9, ...},
     "images": {"cat_1024x1024": 30.9, ...}, "fid": 41.0, "kid": 0.012, "kid_std": 0.001,
     "fid_images": 64, "fid_features": "clip:/models/clip"}

The best round is found by reading every ``step-*/scores.json`` under ``OUTPUT/validation`` (so a
resumed run still sees the rounds before the restart): the highest ``clip_score`` or the lowest
``fid`` / ``kid``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from sanakit.metrics.clip import ClipModel
from sanakit.metrics.fid import (
    FeatureSpace,
    clip_features,
    fid_kid,
    folder_features,
    inception_features,
)
from sanakit.train.config import ValidationSection

HIGHER_IS_BETTER = {"clip_score": True, "fid": False, "kid": False}
DEFAULT_FID_IMAGES = 64


class RoundScorer:
    """The metric models of one ``[validation]`` section, loaded on first use."""

    def __init__(self, validation: ValidationSection, device: str | torch.device = "cpu") -> None:
        self.validation = validation
        self.device = device
        self._clip: ClipModel | None = None
        self._features: FeatureSpace | None = None
        self._reference: torch.Tensor | None = None

    @property
    def fid_images(self) -> int:
        return self.validation.fid_images or DEFAULT_FID_IMAGES

    def clip(self) -> ClipModel:
        if self._clip is None:
            path = self.validation.clip_model
            self._clip = ClipModel.load(path, device=self.device, what="validation.clip_model")
        return self._clip

    def features(self) -> FeatureSpace:
        if self._features is None:
            v = self.validation
            self._features = (
                inception_features(v.fid_model) if v.fid_model else clip_features(self.clip())
            )
        return self._features

    def reference(self) -> torch.Tensor:
        """(N, D) features of the reference folder (computed once)."""
        if self._reference is None:
            self._reference = folder_features(self.validation.fid_reference, self.features())
        return self._reference

    def score(
        self,
        images: dict[str, Image.Image],
        prompts: dict[str, str],
        fid_batch: Sequence[Image.Image] = (),
    ) -> dict[str, Any]:
        """``images``: ``{"{nickname}_{W}x{H}": image}``; ``prompts``: nickname -> prompt.
        Returns the round's scores (the module doc's layout, without ``step``)."""
        out: dict[str, Any] = {}
        if self.validation.clip_model:
            keys = list(images)
            names = [k.rsplit("_", 1)[0] for k in keys]
            values = self.clip().score([images[k] for k in keys], [prompts[n] for n in names])
            per_image = dict(zip(keys, values.tolist()))
            per_prompt: dict[str, list[float]] = {}
            for name, value in zip(names, per_image.values()):
                per_prompt.setdefault(name, []).append(value)
            out["clip_score"] = float(values.mean())
            out["prompts"] = {n: sum(v) / len(v) for n, v in per_prompt.items()}
            out["images"] = per_image
        if self.validation.fid_reference:
            out.update(fid_kid(self.reference(), self.features().extract(list(fid_batch))))
            out["fid_images"] = len(fid_batch)
            out["fid_features"] = self.features().name
        return out


def scalars(scores: dict[str, Any], suffix: str = "") -> dict[str, float]:
    """The TensorBoard scalars of a round: ``clip_score``, ``clip_score/{nickname}``, ``fid``,
    ``kid`` (each name + ``suffix``, e.g. ``_ema``)."""
    out = {f"{k}{suffix}": float(scores[k]) for k in ("clip_score", "fid", "kid") if k in scores}
    for name, value in scores.get("prompts", {}).items():
        out[f"clip_score{suffix}/{name}"] = float(value)
    return out


def write_scores(folder: Path, step: int, scores: dict[str, Any]) -> Path:
    path = folder / "scores.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"step": step, **scores}, indent=2) + "\n")
    tmp.replace(path)
    return path


def best_round(validation_dir: Path, metric: str) -> dict[str, Any] | None:
    """``{"metric", "step", "value", "rounds"}`` of the best ``step-*/scores.json`` (the main
    weights; ties: the earliest step), or None when no round has ``metric``."""
    rounds = []
    for path in sorted(Path(validation_dir).glob("step-*/scores.json")):
        scores = json.loads(path.read_text())
        if metric in scores:
            rounds.append((int(scores["step"]), float(scores[metric])))
    if not rounds:
        return None
    sign = -1.0 if HIGHER_IS_BETTER[metric] else 1.0
    step, value = min(rounds, key=lambda r: (sign * r[1], r[0]))
    return {"metric": metric, "step": step, "value": value, "rounds": len(rounds)}
