"""Caption strategies: text files beside images, cleaned file names, a fixed instance prompt,
or a manifest column. Every function returns a tuple of one or more captions (several captions
per image are allowed; the loader picks one per epoch) or raises :class:`CaptionProblem` with a
reason for the cache report."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "CAPTION_EXTENSIONS",
    "CaptionProblem",
    "caption_file_for",
    "captions_from_value",
    "filename_caption",
    "parse_caption_text",
    "read_caption_file",
]

CAPTION_EXTENSIONS = (".txt", ".caption")  # image.txt is preferred over image.caption

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
