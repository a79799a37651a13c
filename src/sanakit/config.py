"""Strict configuration: frozen dataclasses loaded from TOML/JSON with dotted-key error messages.

Machinery (section-agnostic):

- :func:`from_dict` builds a frozen dataclass from a plain mapping. Unknown keys, missing required
  keys and wrong types raise a one-line :class:`~sanakit.errors.SanakitError` that names the dotted
  key (``data.datasets[0].resolutoin``), the expected type or choices, the value given and, for
  typos, the nearest valid key (``difflib``).
- :func:`load_config_file` reads TOML (``tomllib``) or JSON into a dict.
- :func:`apply_overrides` applies ``--set key.path=value`` overrides; values parse as TOML
  literals (``2e-5``, ``true``, ``[1, 2]``, ``"text"``) and fall back to a plain string.
- :func:`to_dict` turns a dataclass back into plain data (``None`` values omitted, tuples as
  lists) so the resolved configuration can be written next to checkpoints.
- :func:`check_output_folder` rejects a folder to be written that is a file (or lies under one),
  before any work is done.

An unknown key that is a SimpleTuner option name (``learning_rate``, ``train_batch_size``, ...)
gets the sanakit key in its message (:data:`SIMPLETUNER_NAMES`).

Sections defined here: :class:`DatasetConfig` (one ``[[data.datasets]]`` entry, SimpleTuner's
``multidatabackend.json`` keys) and :class:`DataConfig` (the ``[data]`` table). Other sections are
added by the modules that own them.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import json
import math
import re
import tomllib
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

from sanakit.config_hints import SIMPLETUNER_NAMES, unknown_key_hint
from sanakit.errors import SanakitError

T = TypeVar("T")

__all__ = [
    "ConfigValueError",
    "DataConfig",
    "DatasetConfig",
    "SIMPLETUNER_NAMES",
    "apply_overrides",
    "check_output_folder",
    "from_dict",
    "load_config_file",
    "to_dict",
]


class ConfigValueError(SanakitError):
    """An invalid value found by a dataclass's own checks; :func:`from_dict` re-raises it with
    the full dotted key (``data.datasets[1].repeats``) in place of the class name."""

    def __init__(self, owner: object, key: str, detail: str) -> None:
        self.key = key
        self.detail = detail
        super().__init__(f"{type(owner).__name__}.{key} {detail}")


# ----------------------------------------------------------------------------- machinery
def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(c) for c in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin in (tuple, list):
        args = typing.get_args(tp)
        return f"list of {_type_name(args[0])}" if args else "list"
    if origin is dict:
        return f"table of {_type_name(typing.get_args(tp)[1])}"
    if tp is type(None):
        return "none"
    if dataclasses.is_dataclass(tp):
        return "table"
    return getattr(tp, "__name__", str(tp))


def _fail(key: str, tp: Any, value: Any) -> SanakitError:
    hint = ""
    if isinstance(value, str) and _parses_as(value, tp):
        hint = "; write it without quotes"
    return SanakitError(
        f"{key} must be {_type_name(tp)}, got {value!r} ({type(value).__name__}){hint}"
    )


def _parses_as(text: str, tp: Any) -> bool:
    """Whether the quoted ``text`` would be a valid ``tp`` written as a TOML literal
    (``"2e-5"`` for a float, ``"true"`` for a bool)."""
    if tp not in (int, float, bool):
        return False
    try:
        value = tomllib.loads(f"v = {text.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        return False
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, int | float) and not isinstance(value, bool)


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Checks ``value`` against the annotation ``tp`` and converts containers to tuples."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise _fail(key, tp, value)
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:  # Optional[X]: X's own message (e.g. the Literal choices)
            return _convert(value, options[0], key)
        for arg in options:
            try:
                return _convert(value, arg, key)
            except SanakitError:
                continue
        raise _fail(key, tp, value)
    if origin is Literal:
        choices = typing.get_args(tp)
        for choice in choices:
            if type(value) is type(choice) and value == choice:
                return value
        near = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        raise SanakitError(
            f"{key} must be one of {', '.join(repr(c) for c in choices)}, got {value!r}{hint}"
        )
    if origin in (tuple, list):
        if isinstance(value, str | bytes) or not isinstance(value, Sequence):
            raise _fail(key, tp, value)
        args = typing.get_args(tp)
        item_tp = args[0] if args else Any
        return tuple(_convert(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, Mapping):
            raise _fail(key, tp, value)
        key_tp, val_tp = typing.get_args(tp)
        return {
            _convert(k, key_tp, key): _convert(v, val_tp, f"{key}.{k}") for k, v in value.items()
        }
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        return from_dict(tp, value, where=key)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _fail(key, tp, value)
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _fail(key, tp, value)
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise _fail(key, tp, value)
    if tp is str:
        if isinstance(value, str):
            return value
        raise _fail(key, tp, value)
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise _fail(key, tp, value)


def from_dict(cls: type[T], data: Mapping[str, Any], where: str = "") -> T:
    """Builds the frozen dataclass ``cls`` from ``data`` (a dict from TOML/JSON).

    ``where`` is the dotted prefix used in messages (``"data.datasets[0]"``). Raises
    :class:`SanakitError` on unknown keys (with the nearest valid key), missing required keys,
    wrong types (naming key, expected type and value) and on the class's own value checks.
    """
    prefix = f"{where}." if where else ""
    if not isinstance(data, Mapping):
        raise SanakitError(
            f"{where or cls.__name__} must be a table, got {data!r} ({type(data).__name__})"
        )
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    hints = typing.get_type_hints(cls)
    for name in data:
        if name not in fields:
            hint = unknown_key_hint(str(name), list(fields))
            raise SanakitError(f"unknown key {prefix}{name}; {hint}")
    kwargs: dict[str, Any] = {}
    for name, field in fields.items():
        if name in data:
            kwargs[name] = _convert(data[name], hints[name], f"{prefix}{name}")
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise SanakitError(f"missing required key {prefix}{name} ({_type_name(hints[name])})")
    try:
        return cls(**kwargs)
    except ConfigValueError as err:
        raise SanakitError(f"{prefix}{err.key} {err.detail}") from None


def to_dict(obj: Any) -> Any:
    """Inverse of :func:`from_dict`: dataclasses become dicts (``None`` fields omitted, since
    TOML has no null), tuples become lists. ``from_dict(type(c), to_dict(c)) == c``."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out = {}
        for field in dataclasses.fields(obj):
            value = getattr(obj, field.name)
            if value is not None:
                out[field.name] = to_dict(value)
        return out
    if isinstance(obj, tuple | list):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Reads a ``.toml`` (tomllib) or ``.json`` configuration file into a dict."""
    path = Path(path)
    if not path.is_file():
        raise SanakitError(f"config file {path} not found")
    suffix = path.suffix.lower()
    try:
        if suffix == ".toml":
            return tomllib.loads(path.read_text(encoding="utf-8"))
        if suffix == ".json":
            data = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(data, dict):
                raise SanakitError(f"config file {path} must hold a JSON object at the top level")
            return data
    except tomllib.TOMLDecodeError as err:
        raise SanakitError(f"config file {path} is not valid TOML: {err}") from None
    except json.JSONDecodeError as err:
        raise SanakitError(f"config file {path} is not valid JSON: {err}") from None
    except UnicodeDecodeError as err:
        raise SanakitError(f"config file {path} is not UTF-8 text: {err}") from None
    raise SanakitError(f"config file {path} must end in .toml or .json")


def check_output_folder(path: str | Path, what: str) -> None:
    """Raises a one-line :class:`SanakitError` naming ``what`` (a config key or a flag, e.g.
    ``output.dir`` or ``--out``) when the folder ``path`` cannot be created because it, or the
    nearest existing folder above it, is a file. Does not create anything."""
    folder = Path(path).expanduser()
    for existing in (folder, *folder.parents):
        if existing.exists():
            break
    else:
        return
    if existing.is_dir():
        return
    if existing == folder:
        raise SanakitError(f"{what} {path} is a file, not a folder; pass a folder to write into")
    raise SanakitError(
        f"{what} {path} cannot be created: {existing} is a file; pass a folder outside it"
    )


_PATH_PART = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def _parse_path(dotted: str) -> list[str | int]:
    parts: list[str | int] = []
    pos = 0
    for match in _PATH_PART.finditer(dotted):
        gap = dotted[pos : match.start()]
        if gap not in ("", "."):
            break
        name, index = match.groups()
        parts.append(int(index) if index is not None else name)
        pos = match.end()
    if not parts or pos != len(dotted) or isinstance(parts[0], int):
        raise SanakitError(f"override key {dotted!r} must look like train.lr or data.datasets[0].x")
    return parts


def _parse_literal(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(data: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Returns a deep copy of ``data`` with ``["train.lr=2e-5", "data.datasets[0].repeats=3"]``
    applied. Values are TOML literals when they parse as one, else plain strings; missing tables
    are created, list indices must exist. Types are checked later by :func:`from_dict`."""
    out: dict[str, Any] = copy.deepcopy(dict(data))
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise SanakitError(f"override {item!r} must look like key.path=value")
        parts = _parse_path(key)
        node: Any = out
        for depth, part in enumerate(parts[:-1]):
            nxt = parts[depth + 1]
            if isinstance(part, int):
                if not isinstance(node, list) or part >= len(node):
                    raise SanakitError(f"override {key}: index [{part}] does not exist")
                node = node[part]
                continue
            if not isinstance(node, dict):
                raise SanakitError(f"override {key}: {part!r} is not inside a table")
            if part not in node:
                if isinstance(nxt, int):
                    raise SanakitError(f"override {key}: {part} has no list to index")
                node[part] = {}
            node = node[part]
        last = parts[-1]
        value = _parse_literal(raw.strip())
        if isinstance(last, int):
            if not isinstance(node, list) or last >= len(node):
                raise SanakitError(f"override {key}: index [{last}] does not exist")
            node[last] = value
        elif isinstance(node, dict):
            node[last] = value
        else:
            raise SanakitError(f"override {key}: {last!r} is not inside a table")
    return out


# ----------------------------------------------------------------------------- data section
SourceType = Literal["folder", "manifest", "hf", "webdataset"]
CaptionStrategy = Literal["textfile", "filename", "instance_prompt", "manifest"]
ResolutionType = Literal["pixel", "area", "pixel_area"]
CacheDType = Literal["bf16", "fp32"]

_CAPTION_STRATEGIES: dict[str, tuple[str, ...]] = {
    # source type -> allowed caption strategies (the first is the default)
    "folder": ("textfile", "filename", "instance_prompt"),
    "manifest": ("manifest", "textfile", "filename", "instance_prompt"),
    "hf": ("manifest", "instance_prompt"),
    "webdataset": ("textfile", "manifest", "filename", "instance_prompt"),
}
_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclasses.dataclass(frozen=True)
class DatasetConfig:
    """One ``[[data.datasets]]`` entry. Sizes use the unit of ``resolution_type``: ``pixel`` =
    short edge in pixels, ``area`` = megapixels, ``pixel_area`` = sqrt(area) in pixels (so 1024
    means about 1024x1024 = 1.05 MP). Optional fields left unset take the documented default.

    Images are resized (LANCZOS, antialiased) to cover their aspect bucket and cropped to it; if
    ``maximum_image_size`` and ``target_downsample_size`` are set, an image larger than the
    maximum is only downsampled to the target size and the bucket is cropped from it at that scale
    (SimpleTuner's behaviour: larger targets give tighter, more detailed crops).
    """

    id: str
    path: str
    type: SourceType = "folder"
    caption_strategy: CaptionStrategy | None = None  # default: textfile (manifest: manifest)
    instance_prompt: str | None = None  # required by caption_strategy = "instance_prompt"
    caption_column: str | None = None  # manifest/hf column or webdataset json field ("caption")
    fallback_caption_column: str | None = None  # manifest: used where caption_column is empty
    image_column: str | None = None  # manifest/hf column with the image ("image")
    mask_column: str | None = None  # manifest/hf column with the mask image ("mask")
    split: str | None = None  # hf DatasetDict split ("train")
    caption_dropout: float = 0.0  # probability of the empty-prompt embedding instead
    resolution: float = 1024.0
    resolution_type: ResolutionType = "pixel_area"
    crop: bool = True
    crop_style: Literal["center", "random"] | None = None  # default "center" (crop = true only)
    crop_aspect: Literal["square", "preserve", "closest"] | None = None  # default "closest"
    minimum_image_size: float | None = None  # smaller images are skipped and reported
    maximum_image_size: float | None = None  # with target_downsample_size: pre-crop downsample
    target_downsample_size: float | None = None
    repeats: int = 0  # extra passes per epoch: every image is seen 1 + repeats times
    probability: float | None = None  # sampling weight; default images x (1 + repeats)
    is_regularisation_data: bool = False  # passed to the trainer per sample
    loss_weight: float = 1.0
    flip: bool = False  # random horizontal flip; flipped latents are cached separately
    masks: bool = False  # loss masks: image.mask.png beside images (or mask_column/member)
    disabled: bool = False
    # several captions per image: which one a step uses (see docs/data.md)
    caption_selection: Literal["first", "uniform", "clip_weighted"] = "uniform"
    caption_temperature: float = 1.0  # clip_weighted: P(caption) ~ exp(clip_score / temperature)
    caption_score_column: str | None = None  # manifest: list column of the captions' CLIP scores

    def __post_init__(self) -> None:
        strategy, allowed = self.captions, _CAPTION_STRATEGIES[self.type]
        res, kind = self.resolution, self.resolution_type
        maximum, target = self.maximum_image_size, self.target_downsample_size
        sizes = {
            k: getattr(self, k)
            for k in ("minimum_image_size", "maximum_image_size", "target_downsample_size")
        }
        checks: list[tuple[bool, str, str]] = [
            (bool(_ID_PATTERN.match(self.id)), "id", f"must be a simple name ([A-Za-z0-9._-]), got {self.id!r}"),
            (bool(self.path), "path", "must not be empty"),
            (self.caption_strategy in (None, *allowed), "caption_strategy",
             f"{self.caption_strategy!r} does not work with type = {self.type!r}; use one of {allowed}"),
            (strategy != "instance_prompt" or bool(self.instance_prompt), "instance_prompt",
             "is required when caption_strategy = 'instance_prompt'"),
            (strategy == "instance_prompt" or self.instance_prompt is None, "instance_prompt",
             "is only used with caption_strategy = 'instance_prompt'"),
            (strategy == "manifest" or self.caption_column is None, "caption_column",
             "is only used with caption_strategy = 'manifest'"),
            (self.type == "manifest" and strategy == "manifest" or self.fallback_caption_column is None,
             "fallback_caption_column", "is only used with type = 'manifest' and caption_strategy = 'manifest'"),
            (self.type in ("manifest", "hf") or self.image_column is None, "image_column",
             "is only used with type = 'manifest' or 'hf'"),
            (self.type in ("manifest", "hf") or self.mask_column is None, "mask_column",
             "is only used with type = 'manifest' or 'hf'"),
            (self.masks or self.mask_column is None, "mask_column", "is only used with masks = true"),
            (self.type == "hf" or self.split is None, "split", "is only used with type = 'hf'"),
            (0.0 <= self.caption_dropout < 1.0, "caption_dropout", f"must be in [0, 1), got {self.caption_dropout}"),
            (res > 0 and math.isfinite(res), "resolution", f"must be > 0, got {res}"),
            (kind != "area" or res <= 64, "resolution", f"{res} is in megapixels for resolution_type = "
             "'area'; for pixels use resolution_type = 'pixel_area' or 'pixel'"),
            (kind == "area" or res >= 32, "resolution", f"{res} pixels is below one 32-pixel latent "
             "cell; for megapixels use resolution_type = 'area'"),
            *((v is None or (v >= 0 and math.isfinite(v)), k, f"must be >= 0, got {v}") for k, v in sizes.items()),
            ((maximum is None) == (target is None), "target_downsample_size", "and maximum_image_size must be set together"),
            (maximum is None or target is None or target <= maximum, "target_downsample_size",
             f"({target}) must not exceed maximum_image_size ({maximum})"),
            (maximum is None or self.crop, "maximum_image_size", "only changes the crop, so it needs crop = true"),
            (self.crop or (self.crop_style is None and self.crop_aspect is None), "crop",
             "is false, so crop_style/crop_aspect do nothing; remove them or set crop = true"),
            (self.repeats >= 0, "repeats", f"must be >= 0, got {self.repeats}"),
            (self.probability is None or (self.probability > 0 and math.isfinite(self.probability)),
             "probability", f"must be > 0, got {self.probability} (use disabled = true to skip)"),
            (self.loss_weight >= 0 and math.isfinite(self.loss_weight), "loss_weight",
             f"must be >= 0, got {self.loss_weight}"),
            (self.caption_temperature > 0 and math.isfinite(self.caption_temperature),
             "caption_temperature", f"must be > 0, got {self.caption_temperature}"),
            (self.caption_selection == "clip_weighted" or self.caption_temperature == 1.0,
             "caption_temperature", "is only used with caption_selection = 'clip_weighted'"),
            (self.type == "manifest" and strategy == "manifest" or self.caption_score_column is None,
             "caption_score_column", "is only used with type = 'manifest' and caption_strategy = 'manifest'"),
        ]  # fmt: skip
        for ok, key, detail in checks:
            if not ok:
                raise ConfigValueError(self, key, detail)

    # resolved defaults --------------------------------------------------------------
    @property
    def captions(self) -> str:
        """The caption strategy in effect (``caption_strategy`` or the source type's default)."""
        return self.caption_strategy or _CAPTION_STRATEGIES[self.type][0]

    @property
    def style(self) -> str:
        """Crop style in effect: ``center`` or ``random`` (``center`` when crop is false)."""
        return self.crop_style or "center"

    @property
    def aspect(self) -> str:
        """Bucket rule in effect: ``square``, ``closest`` (Sana table) or ``preserve`` (own
        aspect rounded to multiples of 32; used when crop is false)."""
        if not self.crop:
            return "preserve"
        return self.crop_aspect or "closest"

    @property
    def caption_key(self) -> str:
        return self.caption_column or "caption"

    @property
    def image_key(self) -> str:
        return self.image_column or "image"

    @property
    def mask_key(self) -> str:
        return self.mask_column or "mask"


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """The ``[data]`` table: the datasets and options shared by the cache and the loader.

    ``cache_dir`` holds safetensors shards of latents and text embeddings, ``index.json``,
    per-dataset sample lists and ``cache_report.json``. ``latent_dtype``/``text_dtype`` choose
    the stored precision (``bf16`` halves the disk size). ``shard_size_mb`` is the target shard
    size. ``max_image_pixels`` is the decompression-bomb limit (width x height): larger images
    are skipped and reported. ``num_workers`` is the number of threads that decode images while
    caching (0 or 1: one thread) and of worker processes that read batches while training (0: the
    main process reads them). ``seed`` fixes random crops.
    """

    datasets: tuple[DatasetConfig, ...]
    cache_dir: str = "cache"
    latent_dtype: CacheDType = "bf16"
    text_dtype: CacheDType = "bf16"
    shard_size_mb: float = 256.0
    verify_checksums: bool = True
    max_image_pixels: int = 89_478_485  # PIL's default Image.MAX_IMAGE_PIXELS
    num_workers: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.datasets:
            raise ConfigValueError(self, "datasets", "is empty; add at least one [[data.datasets]]")
        seen: set[str] = set()
        for i, ds in enumerate(self.datasets):
            if ds.id in seen:
                raise ConfigValueError(self, f"datasets[{i}].id", f"{ds.id!r} is used twice")
            seen.add(ds.id)
        if all(ds.disabled for ds in self.datasets):
            raise ConfigValueError(self, "datasets", "are all disabled; enable at least one")
        if not self.cache_dir:
            raise ConfigValueError(self, "cache_dir", "must not be empty")
        if not (self.shard_size_mb > 0 and math.isfinite(self.shard_size_mb)):
            raise ConfigValueError(self, "shard_size_mb", f"must be > 0, got {self.shard_size_mb}")
        if self.max_image_pixels <= 0:
            raise ConfigValueError(
                self, "max_image_pixels", f"must be > 0, got {self.max_image_pixels}"
            )
        if self.num_workers < 0:
            raise ConfigValueError(self, "num_workers", f"must be >= 0, got {self.num_workers}")

    @property
    def active(self) -> tuple[DatasetConfig, ...]:
        """The datasets that are not ``disabled``, in config order."""
        return tuple(ds for ds in self.datasets if not ds.disabled)
