"""Merge an exported adapter file into a model's weights for inference (``sanakit generate
--lora``): a LoRA in the diffusers/PEFT layout or a LoKr in LyCORIS' layout, W += scale * delta."""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from sanakit.adapters.inject import has_adapter
from sanakit.adapters.lokr import LOKR_WEIGHT_NAME, LYCORIS_PREFIX, lycoris_name, merge_lokr_file
from sanakit.adapters.lora import LORA_WEIGHT_NAME, merge_lora_file, split_lora_file
from sanakit.errors import SanakitError


@dataclasses.dataclass(frozen=True)
class LoadedAdapter:
    """What `load_adapter_into` merged: kind ("lora" | "lokr"), file, module names, scale."""

    method: str
    path: Path
    modules: tuple[str, ...]
    scale: float


def find_adapter_file(path: str | os.PathLike) -> Path:
    """``path`` itself, or inside a folder: pytorch_lora_weights / lokr_weights / the only
    ``*.safetensors``."""
    p = Path(path)
    if p.is_dir():
        for name in (LORA_WEIGHT_NAME, LOKR_WEIGHT_NAME):
            if (p / name).is_file():
                return p / name
        found = sorted(p.glob("*.safetensors"))
        if len(found) == 1:
            return found[0]
        raise SanakitError(
            f"{p}: expected {LORA_WEIGHT_NAME}, {LOKR_WEIGHT_NAME} or a single .safetensors file, "
            f"found {len(found)}"
        )
    if not p.is_file():
        raise SanakitError(f"{p}: no such adapter file")
    return p


def _read(file: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    try:
        with safe_open(str(file), framework="pt", device="cpu") as reader:
            metadata = reader.metadata() or {}
            tensors = {key: reader.get_tensor(key) for key in reader.keys()}  # noqa: SIM118
    except (SafetensorError, OSError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise SanakitError(f"{file}: not a readable safetensors file ({reason})") from err
    return tensors, metadata


def _match_modules(file: Path, wanted: dict[str, str], model: nn.Module) -> dict[str, nn.Module]:
    """``wanted``: file entry -> model module name; errors name the first unmatched entry."""
    named = dict(model.named_modules())
    missing = sorted(key for key, name in wanted.items() if name not in named)
    if missing:
        raise SanakitError(
            f"{file}: {len(missing)} adapter entries match no module of this transformer (e.g. "
            f"{missing[0]!r}); was it trained for another model?"
        )
    return {key: named[name] for key, name in wanted.items()}


def load_adapter_into(
    model: nn.Module, path: str | os.PathLike, *, scale: float = 1.0
) -> LoadedAdapter:
    """Merge a LoRA (diffusers/PEFT file) or LoKr (LyCORIS file) into ``model``'s weights.

    W += scale * delta for every adapted module (LoRA: delta = (alpha / r) B A from the file's
    metadata, alpha = r without it, as diffusers; LoKr: s * kron(W1, W2)), deltas in fp32, so
    inference runs at base speed. Calling it again stacks adapters. Raises `SanakitError` for an
    unreadable or unrecognised file, or entries that match no module or do not fit it; nothing
    is changed then.
    """
    if isinstance(scale, bool) or not isinstance(scale, int | float) or not math.isfinite(scale):
        raise SanakitError(f"adapter scale must be a finite number, got {scale!r}")
    if has_adapter(model):
        raise SanakitError("the model carries a training adapter; merge it first (handle.merge())")
    file = find_adapter_file(path)
    tensors, metadata = _read(file)
    if any(key.startswith(LYCORIS_PREFIX + "_") for key in tensors):
        by_name = {lycoris_name(name): name for name, _ in model.named_modules() if name}
        entries = sorted({key.split(".", 1)[0] for key in tensors})
        wanted = {entry: by_name.get(entry, entry) for entry in entries}
        merge_lokr_file(file, tensors, _match_modules(file, wanted, model), float(scale))
        return LoadedAdapter("lokr", file, tuple(wanted.values()), float(scale))
    if any(".lora_A." in key or ".lora_B." in key for key in tensors):
        tensors, wanted = split_lora_file(file, tensors)
        modules = _match_modules(file, wanted, model)
        names = merge_lora_file(model, file, tensors, metadata, modules, float(scale))
        return LoadedAdapter("lora", file, names, float(scale))
    if any(".lora_down." in key or ".lora_up." in key for key in tensors):
        raise SanakitError(
            f"{file}: kohya-style LoRA (lora_down/lora_up) is not supported; export it in the "
            f"diffusers/PEFT layout (transformer.<module>.lora_A/lora_B.weight)"
        )
    first = next(iter(tensors), "<no tensors>")
    raise SanakitError(
        f"{file}: not a LoRA (transformer.*.lora_A/B) or LyCORIS (lycoris_*) file (first key "
        f"{first!r})"
    )
