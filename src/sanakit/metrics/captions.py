"""CLIP scores for the captions of a training config's datasets (``sanakit score-captions``).

For every image of a folder dataset (``caption_strategy = "textfile"``) whose captions lack a
score, the missing ``(image, caption)`` pairs are CLIP-scored in batches
(:meth:`sanakit.metrics.clip.ClipModel.score`) and the image's ``stem.json`` sidecar
(:mod:`sanakit.data.captions`) is written atomically with every caption and score: existing
scores are kept, and an interrupted run continues with the images still missing scores.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from sanakit.config import DataConfig, DatasetConfig
from sanakit.data.captions import sidecar_for
from sanakit.data.sources import SourceItem, discover
from sanakit.errors import SanakitError
from sanakit.metrics.clip import ClipModel


@dataclass
class ScoreReport:
    """Counts of one ``score-captions`` run."""

    images: int = 0  # images with captions
    complete: int = 0  # already fully scored (skipped)
    scored: int = 0  # captions scored now
    written: int = 0  # sidecars written
    problems: list[str] = field(default_factory=list)  # "path: reason" of skipped images


def check_dataset(cfg: DatasetConfig, where: str) -> None:
    """Only folder datasets with caption files can take sidecars."""
    if cfg.type != "folder" or cfg.captions != "textfile":
        raise SanakitError(
            f"{where} (id {cfg.id!r}): score-captions writes image.json sidecars beside the "
            f"images of folder datasets with caption_strategy 'textfile'; this one is "
            f"type {cfg.type!r} with captions {cfg.captions!r} (give a manifest's scores in "
            "caption_score_column)"
        )


def _write_sidecar(path: Path, captions: Iterable[str], scores: Iterable[float | None]) -> None:
    body = {
        "captions": [
            {"text": t, **({} if s is None else {"clip_score": round(float(s), 4)})}
            for t, s in zip(captions, scores, strict=True)
        ]
    }
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(body, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def score_captions(
    data: DataConfig,
    clip: ClipModel,
    *,
    batch_size: int = 32,
    progress: bool = True,
) -> ScoreReport:
    """Fills in the missing caption scores of every enabled dataset of ``data``."""
    from tqdm.auto import tqdm

    report = ScoreReport()
    todo: list[tuple[SourceItem, list[float | None]]] = []
    datasets = [(i, cfg) for i, cfg in enumerate(data.datasets) if not cfg.disabled]
    for index, cfg in datasets:
        check_dataset(cfg, f"data.datasets[{index}]")
    for index, cfg in datasets:
        for item in discover(cfg, where=f"data.datasets[{index}]"):
            if item.problem is not None:
                report.problems.append(f"{item.location}: {item.problem}")
                continue
            report.images += 1
            scores = list(item.caption_scores or (None,) * len(item.captions))
            if all(s is not None for s in scores):
                report.complete += 1
            else:
                todo.append((item, scores))
    total = sum(s.count(None) for _, s in todo)
    pending: list[tuple[int, int, Image.Image, str]] = []  # (todo index, caption index, ...)
    written = 0  # todo[:written] are done (sidecar written, or the image was unreadable)
    unreadable: set[int] = set()
    bar = tqdm(total=total, desc="score-captions", unit="caption", disable=not progress)

    def flush(upto: int) -> None:
        """Scores the pending pairs, then writes the sidecars of todo[written:upto]."""
        nonlocal pending, written
        if pending:
            images, texts = [p[2] for p in pending], [p[3] for p in pending]
            values = clip.score(images, texts, batch_size=batch_size).tolist()
            for (i, c, _, _), value in zip(pending, values):
                todo[i][1][c] = value
            report.scored += len(values)
            bar.update(len(values))
            pending = []
        for i in range(written, upto):
            if i not in unreadable:
                item, scores = todo[i]
                _write_sidecar(sidecar_for(Path(item.location)), item.captions, scores)
                report.written += 1
        written = upto

    with bar:
        for t, (item, scores) in enumerate(todo):
            try:
                with Image.open(io.BytesIO(item.read())) as im:
                    image = im.convert("RGB")
            except (OSError, UnidentifiedImageError) as err:
                report.problems.append(f"{item.location}: unreadable image ({err})")
                unreadable.add(t)
                bar.update(scores.count(None))
                continue
            pending += [(t, c, image, item.captions[c]) for c, v in enumerate(scores) if v is None]
            if len(pending) >= batch_size:
                flush(t + 1)
        flush(len(todo))
    return report
