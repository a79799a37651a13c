"""SimpleTuner's ``multidatabackend.json`` -> sanakit's ``[data]`` and ``[[data.datasets]]``.

SimpleTuner's per-dataset defaults are applied where an entry leaves a key out (they differ from
sanakit's): ``crop`` false, ``crop_aspect`` "square", ``crop_style`` "random", ``resolution`` /
``resolution_type`` / ``minimum_image_size`` / ``caption_strategy`` from config.json (SimpleTuner:
1024, "pixel_area", none, "filename"). With ``resolution_type = "pixel_area"`` SimpleTuner reads
sizes <= 10 as megapixels; they become pixel edges sqrt(MP * 1e6) here. ``repeats`` has the same
meaning in both (every image is seen 1 + repeats times per epoch).

SimpleTuner keeps a VAE cache per dataset (``cache_dir_vae``) and a text cache per
``text_embeds`` entry; sanakit keeps one content-keyed cache for both, ``data.cache_dir``: the
folder ``sanakit`` inside the common parent of those folders.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import re
from pathlib import Path
from typing import Any

from sanakit.compat.simpletuner.captions import captions
from sanakit.compat.simpletuner.common import (
    BackendEntry,
    Context,
    PathResolver,
    as_bool,
    as_float,
    as_int,
    as_str,
    is_off,
)
from sanakit.errors import SanakitError

_IGNORED = {
    "skip_file_discovery": "sanakit re-reads only changed files (by size and modification time)",
    "preserve_data_backend_cache": "sanakit re-reads only changed files",
    "metadata_update_interval": "sanakit lists each dataset once per run",
    "hash_filenames": "cache naming only",
    "text_embeds": "sanakit keeps all text embeddings in data.cache_dir",
    "image_embeds": "sanakit keeps all latents in data.cache_dir",
    "delete_problematic_images": "sanakit never deletes files; bad images are skipped and listed "
    "in cache_report.json",
    "delete_unwanted_images": "sanakit never deletes files; filtered images are skipped and listed",
    "vae_cache_ondemand": "sanakit always caches latents before training",
    "vae_cache_disable": "sanakit always caches latents before training",
    "ignore_epochs": "deprecated in SimpleTuner; does nothing",
    "probability": "SimpleTuner uses up every dataset once per epoch (probability only orders "
    "them within the epoch); sanakit's default weights images x (1 + repeats) give the same "
    "per-epoch mix, while a sanakit probability would change it",
}
_OFF_ONLY = {
    "minimum_aspect_ratio": "sanakit has no aspect-ratio filter",
    "maximum_aspect_ratio": "sanakit has no aspect-ratio filter",
    "max_upscale_threshold": "sanakit has no upscale limit (use minimum_image_size)",
    "max_num_samples": "sanakit uses every image of a dataset",
    "timestep_sampling_offset": "sanakit samples timesteps the same way for every dataset",
    "caption_shuffle": "caption shuffling is not implemented",
    "caption_filter_list": "caption filtering is not implemented",
    "disable_multiline_split": "sanakit reads one caption per line of a caption file",
    "start_epoch": "datasets are active for the whole run",
    "start_step": "datasets are active for the whole run",
    "end_epoch": "datasets are active for the whole run",
    "end_step": "datasets are active for the whole run",
    "conditioning": "sanakit trains text-to-image only",
    "conditioning_data": "sanakit trains text-to-image only",
    "conditioning_type": "sanakit trains text-to-image only",
    "slider_strength": "slider training is not implemented",
    "crop_aspect_buckets": "sanakit's crop_aspect 'closest' uses Sana's own aspect table",
    "prepend_instance_prompt": "sanakit does not prepend; write the trigger word into the "
    "captions or use caption_strategy 'instanceprompt'",
    "fallback_caption_column": "sanakit has no fallback caption column",
}
_MAPPED = {
    "id",
    "type",
    "dataset_type",
    "instance_data_dir",
    "caption_strategy",
    "instance_prompt",
    "only_instance_prompt",
    "crop",
    "crop_style",
    "crop_aspect",
    "resolution",
    "resolution_type",
    "minimum_image_size",
    "maximum_image_size",
    "target_downsample_size",
    "repeats",
    "is_regularisation_data",
    "is_regularization_data",
    "disabled",
    "disable",
    "caption_dropout_probability",
    "cache_dir_vae",
    "metadata_backend",
    "parquet",
    "vae_cache_clear_each_epoch",
    "train_batch_size",
    "cache_dir",
    "default",
    "write_batch_size",
    "text_encoder_batch_size",
    "text_cache_ondemand",
    "text_cache_disable",
}
KNOWN = _MAPPED | set(_IGNORED) | set(_OFF_ONLY)
# The keys of SimpleTuner's other backend types (its documentation/DATALOADER.md, "aws" and
# "csv" sections, and documentation/data_presets/HUGGINGFACE_DATASETS.md). sanakit reads local
# folders only, so an entry of these types is dropped whole; its keys are real, never typos.
BACKEND_KEYS: dict[str, frozenset[str]] = {
    "aws": frozenset(
        {
            "aws_bucket_name",
            "aws_region_name",
            "aws_endpoint_url",
            "aws_access_key_id",
            "aws_secret_access_key",
            "aws_data_prefix",
            "aws_max_pool_connections",
        }
    ),
    "csv": frozenset({"csv_file", "csv_cache_dir", "csv_caption_column", "csv_url_column"}),
    "huggingface": frozenset(
        {
            "dataset_name",
            "split",
            "revision",
            "image_column",
            "caption_column",
            "video_column",
            "streaming",
            "huggingface",
        }
    ),
}
_OTHER_SOURCES = (
    "sanakit reads local folders here; for other sources write a sanakit [[data.datasets]] "
    "(manifest/hf/webdataset)"
)
_CACHE_KEYS = ("cache_dir", "default", "write_batch_size", "text_encoder_batch_size")
_CACHE_KEYS += ("text_cache_ondemand", "text_cache_disable")
_SIZES = ("minimum_image_size", "maximum_image_size", "target_downsample_size")
# SimpleTuner's area remap (helpers/image_manipulation/training_sample.py, _set_resolution):
# these megapixel values (within 0.05) train at the listed square edge, not sqrt(MP * 1e6)
AREA_EDGES = {0.25: 512, 0.5: 768, 1.0: 1024, 2.0: 1536, 4.0: 2048}
# SimpleTuner's caption_dropout_probability when config.json leaves it out: its field registry
# registers the key twice (sections/data.py None, then sections/advanced.py 0.1) and the later
# registration wins (registry._add_field overwrites), so the argument defaults to 0.1
CAPTION_DROPOUT_DEFAULT = 0.1


def import_backends(
    file: Path,
    ctx: Context,
    paths: PathResolver,
    defaults: dict[str, Any],
    *,
    method: str,
    batch_size: int,
) -> dict[str, Any]:
    """Read ``file`` and return the ``[data]`` table (datasets + cache_dir).

    ``defaults`` holds config.json's dataset-wide keys (``resolution``, ``resolution_type``,
    ``minimum_image_size``, ``caption_strategy``, ``caption_dropout_probability``).
    """
    try:
        backends = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SanakitError(f"{file}: cannot read the data backend config: {err}") from None
    if not isinstance(backends, list) or not all(isinstance(b, dict) for b in backends):
        raise SanakitError(f"{file}: a multidatabackend config must be a JSON list of objects")
    datasets: list[dict[str, Any]] = []
    caches: list[Path] = []
    for i, entry in enumerate(backends):
        label = f"{file.name}[{i}]"
        _check_keys(file, label, entry)
        kind = entry.get("dataset_type", "image")
        if kind in ("text_embeds", "image_embeds"):
            caches += _cache_entry(file, label, entry, kind, ctx, paths)
            continue
        if kind != "image":
            ctx.unsupported(file, f"{label}.dataset_type", kind, "sanakit trains on images only")
            continue
        where = f"data.datasets[{len(datasets)}]"
        image = BackendEntry(file, label, where, entry, ctx, paths, defaults)
        ds = _image_entry(image, method, batch_size)
        if ds is None:
            continue
        if "cache_dir_vae" in entry:
            path, how = paths.place(as_str(file, "cache_dir_vae", entry["cache_dir_vae"]))
            caches.append(path)
            ctx.mapped(f"{label}.cache_dir_vae", entry["cache_dir_vae"], "data.cache_dir", how)
        datasets.append(ds)
    if not datasets:
        raise SanakitError(f"{file}: no image dataset (every entry is a cache or was dropped)")
    return {"datasets": datasets, "cache_dir": str(_one_cache_dir(caches, paths))}


def _check_keys(file: Path, label: str, entry: dict[str, Any]) -> None:
    """A key that is neither a known option nor one of the entry's backend type is a typo."""
    backend = entry.get("type", "local")
    known = KNOWN | BACKEND_KEYS.get(backend, frozenset())
    if backend != "local" and backend not in BACKEND_KEYS:
        return  # a backend type sanakit does not know: the whole entry is dropped anyway
    for key in entry:
        if key in known:
            continue
        owner = [name for name, keys in BACKEND_KEYS.items() if key in keys]
        if owner:
            raise SanakitError(
                f"{file}: {label}.{key} is a key of type {owner[0]!r} backends, but this entry "
                f"has type {backend!r}"
            )
        near = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6)
        hint = f"did you mean {near[0]!r}?" if near else "see docs/simpletuner.md"
        raise SanakitError(f"{file}: unknown key {label}.{key}; {hint}")


def _backend_subject(label: str, entry: dict[str, Any]) -> str:
    """``multidatabackend.json[1] (id 'remote'): type 'aws'``: one backend, named in messages."""
    name = f" (id {entry['id']!r})" if "id" in entry else ""
    return f"{label}{name}: type {entry.get('type')!r}"


def _one_cache_dir(caches: list[Path], paths: PathResolver) -> Path:
    """``sanakit`` inside the common parent of SimpleTuner's cache folders (or ``cache``)."""
    if not caches:
        return paths.place("cache")[0] / "sanakit"
    common = Path(os.path.commonpath([str(c) for c in caches]))
    if common == paths.root[1] or common == Path(common.anchor):
        common = caches[-1]
    return common / "sanakit"


def _cache_entry(
    file: Path, label: str, entry: dict[str, Any], kind: str, ctx: Context, paths: PathResolver
) -> list[Path]:
    found: list[Path] = []
    backend = entry.get("type", "local")
    if backend not in ("local", "memory"):
        detail = "sanakit keeps its cache on a local disk (data.cache_dir)"
        subject = _backend_subject(label, entry)
        ctx.unsupported(file, f"{label}.type", backend, detail, subject=subject)
        for key, value in entry.items():  # the whole entry is dropped
            if key != "type":
                ctx.ignored(
                    f"{label}.{key}", value, f"its {kind} entry (type {backend!r}) is dropped"
                )
        return found
    for key, value in entry.items():
        where = f"{label}.{key}"
        if key == "type":
            ctx.ignored(where, value, "a local cache")
        elif key == "cache_dir":
            path, how = paths.place(as_str(file, where, value))
            found.append(path)
            what = "text embeddings" if kind == "text_embeds" else "latents"
            ctx.mapped(where, value, "data.cache_dir", f"{what} go to data.cache_dir ({how})")
        elif key in ("disabled", "disable"):
            ctx.ignored(where, value, "sanakit always keeps its cache in data.cache_dir")
        else:
            why = {
                "id": f"the {kind} entry; sanakit keeps these in data.cache_dir",
                "dataset_type": f"{kind}: sanakit keeps one cache for latents and text embeddings",
                "default": "sanakit keeps all text embeddings (validation prompts too) in one cache",
            }.get(key, "a cache speed/storage option")
            ctx.ignored(where, value, why)
    return found


def _dataset_id(e: BackendEntry) -> str:
    if "id" not in e.entry:
        raise SanakitError(f"{e.file}: {e.label} has no 'id'")
    raw = str(e.entry["id"])
    clean = re.sub(r"[^A-Za-z0-9._-]+", "-", raw).strip("-._") or e.label.replace("[", "-")[:-1]
    note = "" if clean == raw else "sanakit ids use letters, digits, '.', '_' and '-'"
    e.mapped("id", raw, "id", note)
    return clean


def _image_entry(e: BackendEntry, method: str, batch_size: int) -> dict[str, Any] | None:
    """One image dataset (None when its backend type is unsupported and dropped)."""
    e.ds["id"] = _dataset_id(e)
    kind = e.entry.get("type", "local")
    if kind != "local":
        e.ctx.unsupported(
            e.file,
            f"{e.label}.type",
            kind,
            _OTHER_SOURCES,
            subject=_backend_subject(e.label, e.entry),
        )
        for key, value in e.entry.items():  # the whole dataset is dropped
            if key != "type":
                e.ignored(key, value, f"its dataset (type {kind!r}) is dropped")
        return None
    e.mapped("type", kind, "type", "local -> folder")
    if "dataset_type" in e.entry:
        e.ignored("dataset_type", e.entry["dataset_type"], "image, the default")
    if "instance_data_dir" not in e.entry:
        raise SanakitError(f"{e.file}: {e.label} has no instance_data_dir")
    folder, how = e.paths.locate(as_str(e.file, "instance_data_dir", e.entry["instance_data_dir"]))
    e.put("instance_data_dir", str(folder), "path", how)
    captions(e, folder)
    _crop(e)
    _sizes(e)
    repeats = e.entry.get("repeats")
    if "repeats" in e.entry:
        e.put(
            "repeats",
            as_int(e.file, "repeats", repeats) if repeats else 0,
            "repeats",
            "same meaning: every image is seen 1 + repeats times per epoch",
        )
    for key in ("is_regularisation_data", "is_regularization_data"):
        if key in e.entry:
            value = as_bool(e.file, key, e.entry[key])
            if value and method != "full":
                note = (
                    "with an adapter SimpleTuner trains these samples towards the base model's "
                    "prediction (adapter disabled): train.regularisation_target = 'base_model'"
                )
            else:
                note = (
                    "full fine-tune: trained as ordinary data in both (SimpleTuner only logs "
                    "its loss separately)"
                )
            e.put(key, value, "is_regularisation_data", note)
    for key in ("disabled", "disable"):
        if key in e.entry:
            e.put(key, as_bool(e.file, key, e.entry[key]), "disabled")
    drop = e.pick("caption_dropout_probability", CAPTION_DROPOUT_DEFAULT)
    if not is_off(drop):
        note = (
            ""
            if "caption_dropout_probability" in e.entry
            else "from config.json"
            if "caption_dropout_probability" in e.defaults
            else f"SimpleTuner's default {CAPTION_DROPOUT_DEFAULT}"
        )
        e.put(
            "caption_dropout_probability",
            as_float(e.file, "caption_dropout_probability", drop),
            "caption_dropout",
            note,
            shown=drop,
        )
    elif "caption_dropout_probability" in e.entry:
        e.ignored("caption_dropout_probability", drop, "0: no caption dropout")
    for key, value in e.entry.items():
        _other(e, key, value, batch_size)
    return e.ds


def _other(e: BackendEntry, key: str, value: Any, batch: int) -> None:
    """The keys not mapped above: ignored, off-only, or small special cases."""
    if key in _IGNORED:
        e.ignored(key, value, _IGNORED[key])
    elif key in _OFF_ONLY:
        if is_off(value):
            e.ignored(key, value, "off")
        else:
            e.unsupported(key, value, _OFF_ONLY[key])
    elif key == "metadata_backend":
        if value in ("discovery", "parquet", None):
            e.ignored(key, value, "sanakit reads image sizes from the files itself")
        else:
            e.unsupported(key, value, "sanakit reads local folders and parquet files")
    elif key == "vae_cache_clear_each_epoch":
        random = e.ds.get("crop") and e.ds.get("crop_style") == "random"
        if is_off(value) or not random:
            e.ignored(key, value, "crops are fixed, so re-encoding gives the same latents")
        else:
            e.unsupported(
                key,
                value,
                "sanakit caches one seeded random crop per image; "
                "SimpleTuner re-draws crops every epoch with this on",
            )
    elif key in _CACHE_KEYS:
        e.ignored(key, value, "only used by text_embeds / image_embeds entries")
    elif key == "train_batch_size":
        if as_int(e.file, key, value) == batch:
            e.ignored(key, value, "equals train_batch_size")
        else:
            e.unsupported(key, value, "sanakit uses one batch size for all datasets")


def _crop(e: BackendEntry) -> None:
    crop = as_bool(e.file, "crop", e.entry.get("crop", False))
    e.put("crop", crop, "crop", "" if "crop" in e.entry else "SimpleTuner's default false", False)
    if not crop:
        for key in ("crop_style", "crop_aspect"):
            if key in e.entry:
                e.ignored(key, e.entry[key], "crop is false")
        return
    style = e.entry.get("crop_style", "random")
    styles = {"center": "center", "centre": "center", "random": "random"}
    if style not in styles:
        e.unsupported("crop_style", style, "sanakit crops 'center' or 'random'")
    else:
        note = "one seeded random crop per image, cached" if style == "random" else ""
        if "crop_style" not in e.entry:
            note = f"SimpleTuner's default; {note}"
        e.put("crop_style", styles[style], "crop_style", note, style)
    aspect = e.entry.get("crop_aspect", "square")
    if aspect in ("square", "preserve", "closest"):
        note = "Sana's aspect-bucket table" if aspect == "closest" else ""
        note = note if "crop_aspect" in e.entry else "SimpleTuner's default"
        e.put("crop_aspect", aspect, "crop_aspect", note, aspect)
    else:
        e.unsupported("crop_aspect", aspect, "use square, preserve or closest")


def _area_edge(mp: float, origin: str) -> tuple[float, str, str]:
    """SimpleTuner's ``area`` resolution in megapixels -> sanakit's ``pixel_area`` edge: the
    remap table's edge for 0.25 / 0.5 / 1.0 / 2.0 / 4.0 MP (SimpleTuner trains 1.0 MP at
    1024x1024, not 1000x1000), else sqrt(MP * 1e6)."""
    for key, edge in AREA_EDGES.items():
        if abs(mp - key) < 0.05:
            note = f"{mp:g} MP = {edge}x{edge} (SimpleTuner's area remap table)"
            return float(edge), "pixel_area", "; ".join(x for x in (origin, note) if x)
    edge = math.sqrt(mp * 1e6)
    note = f"{mp:g} MP = {edge:.0f} px edge"
    return edge, "pixel_area", "; ".join(x for x in (origin, note) if x)


def _sizes(e: BackendEntry) -> None:
    res = as_float(e.file, "resolution", e.pick("resolution", 1024))
    kind = e.pick("resolution_type", "pixel_area")
    if kind not in ("pixel", "area", "pixel_area"):
        raise SanakitError(f"{e.file}: {e.label}.resolution_type must be pixel, area or pixel_area")
    origin = (
        ""
        if "resolution" in e.entry
        else "from config.json"
        if "resolution" in e.defaults
        else "SimpleTuner's default"
    )
    shown_kind = kind
    if kind == "area":
        res, kind, origin = _area_edge(res, origin)
    e.put("resolution", res, "resolution", origin, e.pick("resolution", 1024))
    origin = "" if "resolution_type" in e.entry else "default"
    if shown_kind == "area":
        origin = "area in megapixels becomes the pixel edge above"
    e.put("resolution_type", kind, "resolution_type", origin, shown_kind)
    sizes: dict[str, float] = {}
    for key in _SIZES:
        value = e.pick(key, None)
        if value is None or is_off(value):
            if key in e.entry:
                e.ignored(key, value, "0/none: no limit")
            continue
        size = as_float(e.file, key, value)
        note = "" if key in e.entry else "from config.json"
        if shown_kind == "area":
            size = math.sqrt(size * 1e6)
            note = f"{value} MP = {size:.0f} px edge (same image area)"
        elif kind == "pixel_area" and size <= 10:
            size = math.sqrt(size * 1e6)
            note = f"{value} MP (SimpleTuner reads sizes <= 10 as megapixels) = {size:.0f} px edge"
        sizes[key] = size
        if key == "minimum_image_size":
            e.put(key, size, key, note, value)
    maximum, target = sizes.get("maximum_image_size"), sizes.get("target_downsample_size")
    if maximum is None or target is None or not e.ds.get("crop"):
        why = (
            (
                "crop is false: the image is resized straight to its bucket, so the pre-crop "
                "downsample does nothing"
            )
            if not e.ds.get("crop")
            else (
                "SimpleTuner downsamples only when both maximum_image_size and "
                "target_downsample_size are set"
            )
        )
        for key in ("maximum_image_size", "target_downsample_size"):
            if key in sizes:
                e.ignored(key, e.pick(key, None), why)
        return
    e.put(
        "maximum_image_size", maximum, "maximum_image_size", "", e.entry.get("maximum_image_size")
    )
    e.put(
        "target_downsample_size",
        target,
        "target_downsample_size",
        "",
        e.entry.get("target_downsample_size"),
    )
