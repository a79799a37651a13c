"""Build the run's model parts from ``[model]``: the transformer to train, and the frozen
autoencoder and text encoder, loaded only when something needs them.

The frozen encoders are the largest parts of a Sana setup (Gemma-2-2B, DC-AE). When the cache
is complete the trainer must not load them, but it must still be sure the cache was built with
the same encoders. ``EncoderMemo`` records, in the cache folder, the cache fingerprints last
computed for a *source key* (folders, weight-file sizes and mtimes, dtype, instruction, max
length); when the key is unchanged the recorded fingerprints stand in for loading the models.

``check_model_sources`` validates the ``[model]`` folders from their files alone (exists, is a
folder, is the right kind of folder) and runs before any part is loaded or any folder is
fingerprinted, so a wrong path is one line naming the key, not a loader's traceback.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import torch

from sanakit.autoencoder import Autoencoder, load_autoencoder
from sanakit.config import DataConfig
from sanakit.data.cache import fingerprints
from sanakit.data.loader import open_cache
from sanakit.errors import SanakitError
from sanakit.models import SanaTransformer, load_transformer
from sanakit.presets import get_preset
from sanakit.text import DEFAULT_INSTRUCTION, TextEncoder
from sanakit.train.config import RunConfig

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
MEMO_NAME = "encoders.json"
_PIPELINE_HINT = (
    "pass a diffusers-format Sana pipeline folder (transformer/, vae/, text_encoder/, tokenizer/)"
)


def _folder_kind(folder: Path) -> str | None:
    """What a model folder holds, from its config files: ``pipeline`` (model_index.json),
    ``transformer``, ``vae``, ``text encoder`` (a transformers config.json), or None."""
    if (folder / "model_index.json").is_file():
        return "pipeline"
    try:
        raw = json.loads((folder / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(raw, dict):
        return None
    name = raw.get("_class_name")
    if name == "SanaTransformer2DModel":
        return "transformer"
    if name == "AutoencoderDC":
        return "vae"
    if "model_type" in raw or "architectures" in raw:
        return "text encoder"
    return None


def _existing_folder(key: str, value: str, what: str) -> Path:
    folder = Path(value).expanduser()
    if not folder.exists():
        raise SanakitError(f"{key} {value} does not exist; {what}")
    if not folder.is_dir():
        raise SanakitError(f"{key} {value} is a file, not a folder; {what}")
    return folder


def check_model_sources(config: RunConfig) -> None:
    """One-line errors naming the ``[model]`` key whose folder is missing, a file, the wrong
    kind of folder (a transformer folder given as ``model.base``) or lacks a part the run uses.
    Reads only directory listings and config.json files."""
    m = config.model
    if m.base:
        base = _existing_folder("model.base", m.base, _PIPELINE_HINT)
        kind = _folder_kind(base)
        if kind in ("transformer", "vae", "text encoder"):
            parent = base.parent if _folder_kind(base.parent) == "pipeline" else None
            fix = f"pass the pipeline folder ({parent})" if parent else "pass the pipeline folder"
            if kind == "transformer":
                fix += (
                    ", or replace model.base by model.transformer, model.vae and model.text_encoder"
                )
            raise SanakitError(f"model.base {m.base} is a {kind} folder; {fix}")
        if not (base / "transformer").is_dir():
            inside = sorted(p for p in base.iterdir() if _folder_kind(p) == "pipeline")
            hint = f"did you mean {inside[0]}?" if inside else _PIPELINE_HINT
            raise SanakitError(f"model.base {m.base} has no transformer/ subfolder; {hint}")
        needed: dict[str, str] = {}
        if m.autoencoder == "dc-ae" and not m.vae:
            needed["vae"] = "model.vae"
        if not m.text_encoder:
            needed["text_encoder"] = needed["tokenizer"] = "model.text_encoder"
        missing = [part for part in needed if not (base / part).is_dir()]
        if missing:
            names = ", ".join(f"{part}/" for part in missing)
            keys = " / ".join(dict.fromkeys(needed[part] for part in missing))
            raise SanakitError(
                f"model.base {m.base} has no {names}; copy it from the model's diffusers "
                f"pipeline folder or set {keys}"
            )
    wrong_kinds = {
        "transformer": ("vae", "text encoder"),
        "vae": ("transformer", "text encoder"),
        "text_encoder": ("transformer", "vae"),
    }
    hints = {
        "transformer": "pass a transformer folder (config.json + safetensors) or a pipeline folder",
        "vae": "pass a DC-AE folder (a pipeline's vae/) or use model.base",
        "text_encoder": "pass a folder with a language model and its tokenizer, or a pipeline folder",
    }
    for name, bad in wrong_kinds.items():
        value = getattr(m, name)
        if not value:
            continue
        folder = _existing_folder(f"model.{name}", value, hints[name])
        kind = _folder_kind(folder)
        if kind in bad:
            raise SanakitError(f"model.{name} {value} is a {kind} folder; {hints[name]}")


def transformer_source(config: RunConfig) -> str | None:
    m = config.model
    return m.transformer or m.base


def build_transformer(
    config: RunConfig,
    *,
    latent_channels: int,
    text_channels: int,
    device: str | torch.device = "cpu",
) -> SanaTransformer:
    """The model to train in fp32 (master weights), with gradient checkpointing and regional
    compilation (``train.compile``, :meth:`SanaTransformer.compile_blocks`) as configured.

    With ``model.quantize`` (adapter runs only) the frozen base's large layers are replaced by
    int8 / nf4 ones (:func:`sanakit.quantize.quantize_layers`), one layer at a time, on the CPU
    or on ``device`` (``model.quantize_via``), and placed on ``device``; the rest of the model
    stays where it was built (the trainer moves it)."""
    model = _new_or_loaded_transformer(config, latent_channels, text_channels)
    t, m = config.train, config.model
    model.set_gradient_checkpointing(t.gradient_checkpointing, t.gradient_checkpointing_interval)
    if m.quantize != "none":
        from sanakit.quantize import quantize_layers

        quantize_layers(model, m.quantize, via=m.quantize_via or "cpu", device=device)
    if t.compile:
        model.compile_blocks()  # traced at the first call, after any adapter is injected
    return model


def _new_or_loaded_transformer(
    config: RunConfig, latent_channels: int, text_channels: int
) -> SanaTransformer:
    m, t = config.model, config.train
    check_model_sources(config)
    if m.preset:
        preset = get_preset(m.preset)
        unknown = set(m.preset_overrides or {}) - set(preset.__dataclass_fields__)
        if unknown:
            raise SanakitError(
                f"model.preset_overrides: unknown model field(s) {', '.join(sorted(unknown))}"
            )
        cfg = preset.replace(**(m.preset_overrides or {})).replace(
            in_channels=latent_channels,
            out_channels=latent_channels,
            caption_channels=text_channels,
        )
        torch.manual_seed(t.seed)
        return SanaTransformer(cfg)
    model = load_transformer(transformer_source(config), torch_dtype=torch.float32)
    if (
        model.config.in_channels != latent_channels
        or model.config.caption_channels != text_channels
    ):
        raise SanakitError(
            f"the transformer takes {model.config.in_channels} latent / {model.config.caption_channels} text "
            f"channels but the autoencoder gives {latent_channels} and the text encoder {text_channels}"
        )
    return model


def load_text_encoder(config: RunConfig, device: str | torch.device = "cpu") -> TextEncoder:
    """The frozen text encoder on ``device``; with ``model.text_encoder_quantize`` its linear
    layers are int8 / nf4 (:func:`sanakit.quantize.quantize_layers`): loaded on the CPU,
    quantised layer by layer (on the CPU or on ``device``, ``model.quantize_via``), then moved,
    so the device never holds the full-precision encoder (Gemma-2-2B: ~5 GB in bf16)."""
    check_model_sources(config)
    m = config.model
    instruction = (m.instruction or DEFAULT_INSTRUCTION) if m.use_instruction else None
    quantize = m.text_encoder_quantize != "none"
    encoder = TextEncoder.from_pretrained(
        m.text_encoder or m.base,
        dtype=DTYPES[m.encoder_dtype],
        device="cpu" if quantize else device,
        instruction=instruction,
        max_length=m.text_max_length,
    )
    if quantize:
        from sanakit.quantize import quantize_layers

        kind, via = m.text_encoder_quantize, m.quantize_via or "cpu"
        quantize_layers(
            encoder.model, kind, via=via, device=device, keep=(), key="model.text_encoder_quantize"
        )
        encoder.to(device)
    return encoder


def load_frozen_autoencoder(config: RunConfig, device: str | torch.device = "cpu") -> Autoencoder:
    check_model_sources(config)
    m = config.model
    if m.autoencoder == "pixel-shuffle":
        return load_autoencoder("pixel-shuffle", factor=m.pixel_shuffle_factor, device=device)
    dtype = DTYPES[m.encoder_dtype] if m.encoder_dtype != "fp16" else torch.float32
    return load_autoencoder(
        "dc-ae", path=m.vae or m.base, dtype=dtype, device=device, tiling=m.vae_tiling
    )


def _files_key(folder: str | None) -> list[Any]:
    if not folder:
        return []
    root = Path(folder)
    entries = []
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.suffix in {".json", ".safetensors", ".bin", ".model", ".txt"}:
            stat = path.stat()
            entries.append([str(path.relative_to(root)), stat.st_size, int(stat.st_mtime)])
    return [str(root.resolve()), entries]


def encoder_source_key(config: RunConfig) -> str:
    """A cheap identity of the frozen encoders (no weights read); checks the model folders
    first, since a missing folder would only give an empty identity."""
    check_model_sources(config)
    m, d = config.model, config.data
    parts = {
        "autoencoder": m.autoencoder,
        "factor": m.pixel_shuffle_factor,
        "vae": _files_key(
            None if m.autoencoder == "pixel-shuffle" else (m.vae or os.path.join(m.base, "vae"))
        ),
        "text": _files_key(m.text_encoder or os.path.join(m.base, "text_encoder")),
        "tokenizer": _files_key(None if m.text_encoder else os.path.join(m.base, "tokenizer")),
        "instruction": list(m.instruction or DEFAULT_INSTRUCTION) if m.use_instruction else None,
        "max_length": m.text_max_length,
        "encoder_dtype": m.encoder_dtype,
        "text_encoder_quantize": m.text_encoder_quantize,
        "vae_tiling": m.vae_tiling,
        "latent_dtype": d.latent_dtype,
        "text_dtype": d.text_dtype,
    }
    return json.dumps(parts, sort_keys=True)


class EncoderMemo:
    """``cache_dir/encoders.json``: source key -> (latent fingerprint, text fingerprint, info)."""

    def __init__(self, config: RunConfig) -> None:
        self.path = Path(config.data.cache_dir).expanduser() / MEMO_NAME
        self.key = encoder_source_key(config)
        self.data_config = config.data

    def lookup(self) -> dict[str, Any] | None:
        try:
            memo = json.loads(self.path.read_text())
        except (OSError, json.JSONDecodeError):
            return None
        return memo if memo.get("key") == self.key else None

    def lookup_built(self) -> dict[str, Any] | None:
        """The memo when the cache of every enabled dataset is complete and was built with the
        recorded fingerprints (so the encoders need not be loaded), else None."""
        memo = self.lookup()
        if memo is None:
            return None
        try:
            open_cache(self.data_config).check_fingerprints(
                memo["latent_fingerprint"], memo["text_fingerprint"]
            )
        except SanakitError:
            return None
        return memo

    def record(self, autoencoder: Autoencoder, text_encoder: TextEncoder) -> dict[str, Any]:
        latent_fp, text_fp = fingerprints(autoencoder, text_encoder, self.data_config)
        memo = {
            "key": self.key,
            "latent_fingerprint": latent_fp,
            "text_fingerprint": text_fp,
            "latent_channels": int(autoencoder.latent_channels),
            "downsample_factor": int(autoencoder.downsample_factor),
            "text_hidden_size": int(text_encoder.hidden_size),
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(memo, indent=2))
        os.replace(tmp, self.path)
        return memo


def with_disabled(data: DataConfig, ids: set[str]) -> DataConfig:
    """``data`` with the datasets named in ``ids`` disabled (train/eval splits of ``[data]``)."""
    return dataclasses.replace(
        data,
        datasets=tuple(
            dataclasses.replace(d, disabled=True) if d.id in ids else d for d in data.datasets
        ),
    )
