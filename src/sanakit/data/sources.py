"""Image sources: a folder tree, a jsonl/csv/parquet manifest, a Hugging Face ``datasets``
dataset saved with ``save_to_disk``, and webdataset ``.tar`` shards (read with ``tarfile``).

:func:`discover` lists a dataset's images as :class:`SourceItem` records in a deterministic
order. Image bytes are read lazily through small readers; captions are resolved now, and an item
whose caption (or mask) is unusable carries the ``problem`` that the cache report will show.
Configuration-level problems (missing folder, missing column) raise :class:`SanakitError`.
"""

from __future__ import annotations

import csv
import glob
import json
import numbers
import os
import re
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sanakit.config import DatasetConfig
from sanakit.data.captions import (
    CaptionProblem,
    captions_from_bytes,
    captions_from_value,
    filename_caption,
    read_caption_file,
    read_caption_sidecar,
    scores_from_value,
)
from sanakit.data.images import IMAGE_EXTENSIONS
from sanakit.errors import SanakitError

__all__ = ["SourceItem", "discover"]

MASK_SUFFIX = ".mask.png"  # folder masks: photo.jpg -> photo.mask.png


class FileBytes:
    """Reads a whole local file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __call__(self) -> bytes:
        return self.path.read_bytes()


class TarMemberBytes:
    """Reads one member of an uncompressed tar by offset (random access, no re-scan)."""

    def __init__(self, path: Path, offset: int, size: int) -> None:
        self.path, self.offset, self.size = path, offset, size

    def __call__(self) -> bytes:
        with open(self.path, "rb") as fh:
            fh.seek(self.offset)
            data = fh.read(self.size)
        if len(data) != self.size:
            raise OSError(f"tar member truncated ({len(data)} of {self.size} bytes)")
        return data


class ValueBytes:
    """Bytes already in memory (manifest cells holding image bytes)."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __call__(self) -> bytes:
        return self.data


class HFBytes:
    """Reads an image cell of a Hugging Face dataset row (``{"bytes", "path"}`` or a path)."""

    def __init__(self, dataset: Any, index: int, column: str) -> None:
        self.dataset, self.index, self.column = dataset, index, column

    def __call__(self) -> bytes:
        return _cell_bytes(self.dataset[self.index][self.column], None)


@dataclass(frozen=True)
class SourceItem:
    """One image of a dataset.

    ``name`` identifies it in ids and reports (a path relative to the dataset, ``shard.tar/key``
    or ``split[i]``); ``location`` is the full path shown in the report; ``read`` returns the
    encoded bytes; ``stat`` is ``(size, mtime_ns)`` when the bytes live in a local file (lets the
    cache skip re-hashing unchanged files); ``captions`` is one or more captions unless
    ``problem`` says why the item must be skipped; ``read_mask`` returns the mask bytes;
    ``caption_scores`` the captions' CLIP scores (None where unknown; empty when no source gives
    scores).
    """

    name: str
    location: str
    read: Callable[[], bytes]
    stat: tuple[int, int] | None = None
    captions: tuple[str, ...] = ()
    problem: str | None = None
    read_mask: Callable[[], bytes] | None = None
    caption_scores: tuple[float | None, ...] = ()


def _is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _stat(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def _scored_captions(
    cfg: DatasetConfig, stem: str, image_path: Path | None
) -> tuple[tuple[str, ...], tuple[float | None, ...]]:
    """(captions, scores) of strategies without a manifest cell: with ``textfile``, a
    ``stem.json`` sidecar (captions and CLIP scores) is preferred over ``stem.txt``."""
    if cfg.captions == "textfile" and image_path is not None:
        scored = read_caption_sidecar(image_path)
        if scored is not None:
            return scored
    return _fixed_captions(cfg, stem, image_path), ()


def _fixed_captions(cfg: DatasetConfig, stem: str, image_path: Path | None) -> tuple[str, ...]:
    """Captions for strategies that do not need a manifest cell."""
    strategy = cfg.captions
    if strategy == "instance_prompt":
        return (str(cfg.instance_prompt),)
    if strategy == "filename":
        return (filename_caption(stem),)
    if strategy == "textfile" and image_path is not None:
        return read_caption_file(image_path)
    raise CaptionProblem(f"caption_strategy {strategy!r} needs a caption source")


# ----------------------------------------------------------------------------- folder
def _folder(cfg: DatasetConfig, root: Path, where: str) -> list[SourceItem]:
    if not root.is_dir():
        raise SanakitError(f"{where}.path: folder {root} not found")
    items = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for filename in sorted(filenames):
            lower = filename.lower()
            if filename.startswith(".") or not _is_image_name(filename):
                continue
            if cfg.masks and lower.endswith(MASK_SUFFIX):
                continue
            path = Path(dirpath) / filename
            rel = path.relative_to(root).as_posix()
            problem, captions, scores, read_mask = None, (), (), None
            try:
                captions, scores = _scored_captions(cfg, path.stem, path)
            except CaptionProblem as err:
                problem = err.reason
            if cfg.masks:
                mask_path = path.with_name(path.stem + MASK_SUFFIX)
                if mask_path.is_file():
                    read_mask = FileBytes(mask_path)
                elif problem is None:
                    problem = f"missing mask file {mask_path.name}"
            items.append(
                SourceItem(
                    rel,
                    str(path),
                    FileBytes(path),
                    _stat(path),
                    captions,
                    problem,
                    read_mask,
                    scores,
                )
            )
    if not items:
        exts = ", ".join(IMAGE_EXTENSIONS)
        raise SanakitError(f"{where}.path: no images ({exts}) found in folder {root}")
    return items


# ----------------------------------------------------------------------------- manifest
def _manifest_rows(path: Path, where: str) -> tuple[list[dict[str, Any]], list[str]]:
    suffix = path.suffix.lower()
    try:
        if suffix in (".jsonl", ".json"):
            text = path.read_text(encoding="utf-8")
            if suffix == ".json":
                rows = json.loads(text)
                if not isinstance(rows, list):
                    raise SanakitError(f"{where}.path: {path} must hold a JSON list of objects")
            else:
                rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        elif suffix == ".csv":
            with open(path, newline="", encoding="utf-8") as fh:
                rows = list(csv.DictReader(fh))
        elif suffix == ".parquet":
            try:
                import pyarrow.parquet as pq
            except ImportError:
                raise SanakitError(
                    f"{where}.path: reading {path.name} needs pyarrow: pip install pyarrow"
                ) from None
            rows = pq.read_table(path).to_pylist()
        else:
            raise SanakitError(
                f"{where}.path: manifest {path} must be .jsonl, .json, .csv or .parquet"
            )
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, csv.Error) as err:
        raise SanakitError(f"{where}.path: cannot read manifest {path}: {err}") from None
    if not all(isinstance(r, dict) for r in rows):
        raise SanakitError(f"{where}.path: every row of {path} must be an object")
    columns = sorted({k for r in rows for k in r})
    return rows, columns


def _require_column(column: str, columns: list[str], key: str, where: str, what: str) -> None:
    if column not in columns:
        raise SanakitError(
            f"{where}.{key}: {what} has no column {column!r} (columns: {', '.join(columns) or 'none'})"
        )


def _cell_bytes(value: Any, base: Path | None) -> bytes:
    """Image bytes from a cell: bytes, ``{"bytes": ..., "path": ...}`` or a local path."""
    if isinstance(value, dict):
        if value.get("bytes"):
            return bytes(value["bytes"])
        value = value.get("path")
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    if isinstance(value, str) and value:
        path = Path(value)
        if base is not None and not path.is_absolute():
            path = base / path
        return path.read_bytes()
    raise OSError(f"empty image cell {value!r}")


def _with_extension(path: Path, index: dict[Path, dict[str, list[str]]]) -> Path:
    """``path`` itself, or the one image file named ``path`` plus an image extension when
    ``path`` does not exist (manifest ids without extension, as SimpleTuner's parquet
    ``identifier_includes_extension: false``). ``index`` caches each folder's listing."""
    if path.exists() or _is_image_name(path.name):
        return path
    folder = path.parent
    if folder not in index:
        names: dict[str, list[str]] = {}
        try:
            entries = sorted(os.listdir(folder))
        except OSError:
            entries = []
        for name in entries:
            if _is_image_name(name):
                names.setdefault(os.path.splitext(name)[0], []).append(name)
        index[folder] = names
    found = index[folder].get(path.name, [])
    if len(found) > 1:
        raise CaptionProblem(f"{path} names several images ({', '.join(found)}); add the extension")
    return folder / found[0] if found else path


def _cell_reader(
    value: Any,
    base: Path | None,
    row: int,
    label: str,
    index: dict[Path, dict[str, list[str]]] | None = None,
) -> tuple[Callable[[], bytes], str, Path | None]:
    """A reader for a cell, its report location and its local path (for caption files).
    With ``index``, a path without extension resolves to its image file (:func:`_with_extension`)
    and an integer cell is such a path (SimpleTuner's numeric ``id`` columns)."""
    if index is not None and isinstance(value, numbers.Integral) and not isinstance(value, bool):
        value = str(value)
    if isinstance(value, dict) and value.get("bytes"):
        return ValueBytes(bytes(value["bytes"])), f"{label}[{row}]", None
    if isinstance(value, dict):
        value = value.get("path")
    if isinstance(value, bytes | bytearray):
        return ValueBytes(bytes(value)), f"{label}[{row}]", None
    if isinstance(value, str) and value:
        if re.match(r"^[a-z][a-z0-9+.-]*://", value, re.IGNORECASE):
            raise CaptionProblem(f"URL {value} is not supported; download the images first")
        path = Path(value)
        if base is not None and not path.is_absolute():
            path = base / path
        if index is not None:
            path = _with_extension(path, index)
        return FileBytes(path), str(path), path
    raise CaptionProblem("empty image cell")


def _manifest(cfg: DatasetConfig, path: Path, where: str) -> list[SourceItem]:
    if not path.is_file():
        raise SanakitError(f"{where}.path: manifest {path} not found")
    rows, columns = _manifest_rows(path, where)
    _require_column(cfg.image_key, columns, "image_column", where, f"manifest {path.name}")
    if cfg.captions == "manifest":
        _require_column(cfg.caption_key, columns, "caption_column", where, f"manifest {path.name}")
    if cfg.caption_score_column is not None:
        _require_column(
            cfg.caption_score_column,
            columns,
            "caption_score_column",
            where,
            f"manifest {path.name}",
        )
    if cfg.fallback_caption_column is not None:
        _require_column(
            cfg.fallback_caption_column,
            columns,
            "fallback_caption_column",
            where,
            f"manifest {path.name}",
        )
    if cfg.masks:
        _require_column(cfg.mask_key, columns, "mask_column", where, f"manifest {path.name}")
    base = path.parent
    items, index = [], {}
    for i, row in enumerate(rows):
        items.append(_row_item(cfg, row, i, base, path.name, index))
    return items


def _manifest_captions(cfg: DatasetConfig, row: dict[str, Any]) -> tuple[str, ...]:
    """The caption column's captions; where it is missing or empty, the fallback column's."""
    try:
        return captions_from_value(row.get(cfg.caption_key), cfg.caption_key)
    except CaptionProblem as err:
        fallback = cfg.fallback_caption_column
        if fallback is None:
            raise
        try:
            return captions_from_value(row.get(fallback), fallback)
        except CaptionProblem:
            raise CaptionProblem(f"{err.reason} and in fallback column {fallback!r}") from None


def _has_captions(value: Any, column: str) -> bool:
    """Whether the caption column itself gave the captions (not the fallback column)."""
    try:
        captions_from_value(value, column)
    except CaptionProblem:
        return False
    return True


def _row_item(
    cfg: DatasetConfig,
    row: dict[str, Any],
    i: int,
    base: Path | None,
    label: str,
    index: dict[Path, dict[str, list[str]]] | None = None,
) -> SourceItem:
    name, location = f"{label}[{i}]", f"{label}[{i}]"
    try:
        read, location, local = _cell_reader(row.get(cfg.image_key), base, i, label, index)
    except CaptionProblem as err:
        return SourceItem(name, location, ValueBytes(b""), problem=err.reason)
    if local is not None and base is not None:
        try:
            name = local.relative_to(base).as_posix()
        except ValueError:
            name = local.as_posix()
    problem, captions, scores, read_mask = None, (), (), None
    try:
        if cfg.captions == "manifest":
            captions = _manifest_captions(cfg, row)
            column = cfg.caption_score_column
            if column is not None and _has_captions(row.get(cfg.caption_key), cfg.caption_key):
                scores = scores_from_value(row.get(column), column, len(captions))
        else:
            stem = local.stem if local is not None else f"{label}_{i}"
            captions, scores = _scored_captions(cfg, stem, local)
        if cfg.masks:
            read_mask, _, _ = _cell_reader(row.get(cfg.mask_key), base, i, label)
    except CaptionProblem as err:
        problem = err.reason
    stat = _stat(local) if local is not None else None
    return SourceItem(name, location, read, stat, captions, problem, read_mask, scores)


# ----------------------------------------------------------------------------- hf
def _hf(cfg: DatasetConfig, path: Path, where: str) -> list[SourceItem]:
    try:
        import datasets
    except ImportError:
        raise SanakitError(
            f"{where}.type: 'hf' needs the datasets package: pip install datasets "
            "(or pip install 'sanakit[data]')"
        ) from None
    if not path.exists():
        raise SanakitError(f"{where}.path: Hugging Face dataset folder {path} not found")
    try:
        ds = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError, OSError) as err:
        raise SanakitError(
            f"{where}.path: {path} is not a dataset saved with save_to_disk: {err}"
        ) from None
    split = cfg.split
    if isinstance(ds, datasets.DatasetDict):
        split = split or "train"
        if split not in ds:
            raise SanakitError(f"{where}.split: {split!r} not in {path} (splits: {', '.join(ds)})")
        ds = ds[split]
    elif split is not None:
        raise SanakitError(f"{where}.split: {path} holds a single split; remove split")
    columns = list(ds.column_names)
    _require_column(cfg.image_key, columns, "image_column", where, f"dataset {path.name}")
    if cfg.captions == "manifest":
        _require_column(cfg.caption_key, columns, "caption_column", where, f"dataset {path.name}")
    image_columns = [cfg.image_key] + ([cfg.mask_key] if cfg.masks else [])
    if cfg.masks:
        _require_column(cfg.mask_key, columns, "mask_column", where, f"dataset {path.name}")
    for column in image_columns:
        if isinstance(ds.features[column], datasets.Image):
            ds = ds.cast_column(column, datasets.Image(decode=False))
    label = f"{path.name}[{split}]" if split else path.name
    items = []
    text_columns = [cfg.caption_key] if cfg.captions == "manifest" else []
    for i, row in enumerate(ds.select_columns(text_columns) if text_columns else range(len(ds))):
        name = f"{split or 'data'}/{i:08d}"
        location = f"{path}[{split}][{i}]" if split else f"{path}[{i}]"
        problem, captions = None, ()
        try:
            if text_columns:
                captions = captions_from_value(row[cfg.caption_key], cfg.caption_key)
            else:
                captions = _fixed_captions(cfg, f"{label}_{i}", None)
        except CaptionProblem as err:
            problem = err.reason
        read_mask = HFBytes(ds, i, cfg.mask_key) if cfg.masks else None
        items.append(
            SourceItem(
                name, location, HFBytes(ds, i, cfg.image_key), None, captions, problem, read_mask
            )
        )
    if not items:
        raise SanakitError(f"{where}.path: dataset {path} has no rows")
    return items


# ----------------------------------------------------------------------------- webdataset
_BRACE = re.compile(r"\{(\d+)\.\.(\d+)\}")


def _expand_shards(spec: str) -> list[Path]:
    match = _BRACE.search(spec)
    if match:
        lo, hi = match.group(1), match.group(2)
        width = len(lo)
        out: list[Path] = []
        for n in range(int(lo), int(hi) + 1):
            out.extend(
                _expand_shards(spec[: match.start()] + str(n).zfill(width) + spec[match.end() :])
            )
        return out
    path = Path(spec)
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.name.endswith(".tar"))
    if any(c in spec for c in "*?["):
        return sorted(Path(p) for p in glob.glob(spec))
    return [path]


def _tar_groups(path: Path) -> Iterator[tuple[str, dict[str, tarfile.TarInfo]]]:
    """``(key, {extension: member})`` groups of a tar: webdataset's key is the member path up to
    the first dot of its file name; the extension is the rest (``jpg``, ``txt``, ``mask.png``)."""
    groups: dict[str, dict[str, tarfile.TarInfo]] = {}
    with tarfile.open(path, mode="r:") as tar:
        for member in tar:
            if not member.isfile():
                continue
            head, _, base = member.name.rpartition("/")
            stem, dot, ext = base.partition(".")
            if not dot or stem.startswith("."):
                continue
            key = f"{head}/{stem}" if head else stem
            groups.setdefault(key, {})[ext.lower()] = member
    yield from sorted(groups.items())


def _webdataset(cfg: DatasetConfig, spec: str, where: str) -> list[SourceItem]:
    shards = _expand_shards(spec)
    missing = [p for p in shards if not p.is_file()]
    if not shards or missing:
        raise SanakitError(
            f"{where}.path: no tar shards found at {missing[0] if missing else spec}"
        )
    items = []
    for shard in shards:
        try:
            groups = list(_tar_groups(shard))
        except (tarfile.TarError, OSError) as err:
            raise SanakitError(
                f"{where}.path: cannot read {shard} as an uncompressed tar ({err}); "
                "webdataset shards must be plain .tar files"
            ) from None
        for key, members in groups:
            image_ext = next(
                (e for e in members if _is_image_name("." + e) and e != "mask.png"), None
            )
            if image_ext is None:
                continue
            member = members[image_ext]
            read = TarMemberBytes(shard, member.offset_data, member.size)
            name = f"{shard.name}/{key}"
            problem, captions, read_mask = None, (), None
            try:
                captions = _tar_captions(cfg, shard, key, members)
                if cfg.masks:
                    if "mask.png" not in members:
                        raise CaptionProblem(f"missing mask member {key}.mask.png")
                    m = members["mask.png"]
                    read_mask = TarMemberBytes(shard, m.offset_data, m.size)
            except CaptionProblem as err:
                problem = err.reason
            items.append(
                SourceItem(
                    name, f"{shard}:{key}.{image_ext}", read, None, captions, problem, read_mask
                )
            )
    if not items:
        raise SanakitError(f"{where}.path: no images found in the tar shards at {spec}")
    return items


def _tar_captions(
    cfg: DatasetConfig, shard: Path, key: str, members: dict[str, tarfile.TarInfo]
) -> tuple[str, ...]:
    strategy = cfg.captions
    if strategy == "textfile":
        for ext in ("txt", "caption"):
            if ext in members:
                m = members[ext]
                return captions_from_bytes(
                    TarMemberBytes(shard, m.offset_data, m.size)(), f"{key}.{ext}"
                )
        raise CaptionProblem(f"missing caption member {key}.txt")
    if strategy == "manifest":
        if "json" not in members:
            raise CaptionProblem(f"missing metadata member {key}.json")
        m = members["json"]
        try:
            meta = json.loads(TarMemberBytes(shard, m.offset_data, m.size)())
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise CaptionProblem(f"metadata member {key}.json is not valid JSON") from None
        if not isinstance(meta, dict):
            raise CaptionProblem(f"metadata member {key}.json is not an object")
        return captions_from_value(meta.get(cfg.caption_key), cfg.caption_key)
    return _fixed_captions(cfg, key.rpartition("/")[2], None)


# ----------------------------------------------------------------------------- entry
def discover(cfg: DatasetConfig, where: str = "data.datasets[0]") -> list[SourceItem]:
    """Lists the images of one dataset in a deterministic order (sorted paths/rows/members).

    ``where`` is the config key used in error messages. Raises :class:`SanakitError` when the
    source cannot be used at all; per-image problems are carried in ``SourceItem.problem``.
    """
    path = Path(cfg.path).expanduser()
    if cfg.type == "folder":
        return _folder(cfg, path, where)
    if cfg.type == "manifest":
        return _manifest(cfg, path, where)
    if cfg.type == "hf":
        return _hf(cfg, path, where)
    return _webdataset(cfg, os.path.expanduser(cfg.path), where)
