"""Caption strategies: text files beside images, cleaned file names, a fixed instance prompt,
or a manifest column. Every function returns a tuple of one or more captions (several captions
per image are allowed; the loader picks one per occurrence by the dataset's
``caption_selection``) or raises :class:`CaptionProblem` with a reason for the cache report.

Scored captions (Sana's multi-caption training, captions from several captioners chosen by their
CLIP score): a ``stem.json`` sidecar ``{"captions": [{"text": ..., "clip_score": ...}, ...]}``
beside an image replaces its ``.txt``; ``clip_score`` may be missing (``sanakit
score-captions`` fills it in)."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "CAPTION_EXTENSIONS",
    "CaptionProblem",
    "caption_file_for",
    "captions_from_value",
    "read_caption_sidecar",
    "scores_from_value",
    "filename_caption",
    "parse_caption_text",
    "read_caption_file",
]

CAPTION_EXTENSIONS = (".txt", ".caption")  # image.txt is preferred over image.caption
SIDECAR_EXTENSION = ".json"  # image.json {"captions": [...]} is preferred over both
Scores = tuple[float | None, ...]

_SEPARATORS = re.compile(r"[_\-]+")
_NUMERIC_SUFFIX = re.compile(r"(?:(?:^|\s+)(?:\(\d+\)|\[\d+\]|\d+))+$")
_SPACES = re.compile(r"\s+")


class CaptionProblem(Exception):
    """No usable caption; ``reason`` goes into the cache report."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def filename_caption(stem: str) -> str:
    """``"a_red-car_0003"`` -> ``"a red car"``: underscores/dashes become spaces and trailing
    numeric suffixes (``_12``, `` (3)``, ``[4]``) are dropped. Raises if nothing is left."""
    text = _SPACES.sub(" ", _SEPARATORS.sub(" ", stem)).strip()
    text = _NUMERIC_SUFFIX.sub("", text).strip()
    if not text:
        raise CaptionProblem(f"file name {stem!r} gives an empty caption")
    return text


def parse_caption_text(text: str) -> tuple[str, ...]:
    """One caption per non-blank line (a BOM and surrounding whitespace are stripped)."""
    lines = tuple(line.strip() for line in text.lstrip("\ufeff").splitlines())
    return tuple(line for line in lines if line)


def caption_file_for(image_path: Path) -> Path | None:
    """The caption file beside ``image_path`` (``stem.txt``, else ``stem.caption``) or None."""
    for ext in CAPTION_EXTENSIONS:
        candidate = image_path.with_suffix(ext)
        if candidate.is_file():
            return candidate
    return None


def read_caption_file(image_path: Path) -> tuple[str, ...]:
    """Captions for ``image_path`` from its ``.txt``/``.caption`` file (one per line)."""
    path = caption_file_for(image_path)
    if path is None:
        raise CaptionProblem(f"missing caption file {image_path.with_suffix('.txt').name}")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise CaptionProblem(f"unreadable caption file {path.name}: {err.strerror}") from None
    return captions_from_bytes(data, path.name)


def captions_from_bytes(data: bytes, name: str) -> tuple[str, ...]:
    """Captions from UTF-8 ``data`` (one per non-blank line); ``name`` labels errors."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise CaptionProblem(f"caption file {name} is not UTF-8 text") from None
    captions = parse_caption_text(text)
    if not captions:
        raise CaptionProblem(f"empty caption file {name}")
    return captions


def captions_from_value(value: Any, column: str) -> tuple[str, ...]:
    """Captions from a manifest/HF cell: a string (one caption) or a list of strings."""
    if value is None:
        raise CaptionProblem(f"missing caption in column {column!r}")
    if isinstance(value, str):
        items: Sequence[Any] = [value]
    elif isinstance(value, Sequence) or hasattr(value, "tolist"):
        items = list(value.tolist() if hasattr(value, "tolist") else value)
    else:
        raise CaptionProblem(f"caption in column {column!r} is {type(value).__name__}, not text")
    captions = tuple(str(v).strip() for v in items if isinstance(v, str) and v.strip())
    if not captions:
        raise CaptionProblem(f"empty caption in column {column!r}")
    return captions


def sidecar_for(image_path: Path) -> Path:
    """``stem.json`` beside ``image_path`` (it may not exist)."""
    return image_path.with_suffix(SIDECAR_EXTENSION)


def read_caption_sidecar(image_path: Path) -> tuple[tuple[str, ...], Scores] | None:
    """(captions, scores) from ``stem.json`` beside ``image_path``; None when there is none or
    it is JSON without a ``captions`` key (other metadata). Entries are ``{"text", "clip_score"}``
    objects (score optional) or plain strings."""
    path = sidecar_for(image_path)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CaptionProblem(f"unreadable caption sidecar {path.name}: {err}") from None
    if not isinstance(data, dict) or "captions" not in data:
        return None
    entries = data["captions"]
    if not isinstance(entries, list):
        raise CaptionProblem(f"{path.name}: 'captions' must be a list")
    captions: list[str] = []
    scores: list[float | None] = []
    for entry in entries:
        text, score = (entry, None) if isinstance(entry, str) else (None, None)
        if isinstance(entry, dict):
            text, score = entry.get("text"), entry.get("clip_score")
        if not isinstance(text, str) or not text.strip():
            raise CaptionProblem(f"{path.name}: every caption needs a non-empty 'text'")
        if score is not None and not (isinstance(score, int | float) and math.isfinite(score)):
            raise CaptionProblem(f"{path.name}: clip_score {score!r} is not a number")
        captions.append(text.strip())
        scores.append(None if score is None else float(score))
    if not captions:
        raise CaptionProblem(f"{path.name}: no captions")
    return tuple(captions), tuple(scores)


def scores_from_value(value: Any, column: str, count: int) -> Scores:
    """``count`` CLIP scores from a manifest cell (a number for one caption, or a list)."""
    if value is None:
        return (None,) * count
    items = (
        list(value.tolist() if hasattr(value, "tolist") else value)
        if not isinstance(value, int | float)
        else [value]
    )
    if len(items) != count:
        raise CaptionProblem(f"column {column!r} has {len(items)} scores for {count} captions")
    out: list[float | None] = []
    for item in items:
        if item is not None and not (isinstance(item, int | float) and math.isfinite(item)):
            raise CaptionProblem(f"column {column!r}: score {item!r} is not a number")
        out.append(None if item is None else float(item))
    return tuple(out)
