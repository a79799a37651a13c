"""LoRA through peft, in the diffusers/PEFT file layout (a backend of `sanakit.adapters`).

LoRA (Hu et al., 2021, arXiv:2106.09685) on a Linear / Conv2d with weight W (out, in[, kh, kw]):
    W' = W + (alpha / r) * B @ A,   A (r, in[, kh, kw]) Kaiming-uniform, B (out, r[, 1, 1]) = 0
at init, so the adapted model starts exactly at the base model.

File: ``pytorch_lora_weights.safetensors``, keys ``transformer.<module>.lora_A.weight`` /
``.lora_B.weight``, and the safetensors metadata ``lora_adapter_metadata`` = JSON of the
``transformer.``-prefixed ``peft.LoraConfig`` arguments: the layout diffusers'
``SanaLoraLoaderMixin`` (``SanaPipeline.load_lora_weights``) reads. With that metadata diffusers
builds the LoraConfig from it, so an alpha different from the rank is honoured.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, set_peft_model_state_dict
from peft.tuners.lora import LoraLayer, LoraModel
from safetensors.torch import save_file
from torch import nn

from sanakit.errors import SanakitError

LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
LORA_METADATA_KEY = "lora_adapter_metadata"  # diffusers' LORA_ADAPTER_METADATA_KEY
PREFIX = "transformer."  # diffusers' SanaLoraLoaderMixin.transformer_name + "."
ADAPTER = "default"  # peft adapter name while training
LOADED = "sanakit_loaded"  # peft adapter name while merging a file


def lora_kwargs(rank: int, alpha: float, dropout: float, modules: tuple[str, ...]) -> dict:
    """``peft.LoraConfig`` arguments, also written as the diffusers ``lora_adapter_metadata``.
    Targets are the full module names, so diffusers wraps exactly the modules in the file."""
    return {
        "r": rank,
        "lora_alpha": float(alpha),
        "lora_dropout": float(dropout),
        "target_modules": list(modules),
        "bias": "none",
        "use_dora": False,
        "use_rslora": False,
        "init_lora_weights": True,
        "rank_pattern": {},
        "alpha_pattern": {},
    }


def _fp32_adapter(model: nn.Module, adapter: str) -> dict[str, nn.Parameter]:
    """peft creates adapter weights in the base dtype; keep them fp32 (master weights).
    Returns export key (``<module>.lora_A.weight``) -> parameter, in model order."""
    params = {}
    for name, param in model.named_parameters():
        if f".{adapter}." in name and ".lora_" in name:
            if param.dtype != torch.float32:
                param.data = param.data.float()
            params[name.replace(f".{adapter}.", ".")] = param
    return params


def inject_lora(model: nn.Module, kwargs: dict) -> tuple[LoraModel, dict[str, nn.Parameter]]:
    """Wrap the target modules with peft LoRA layers (in place); only they require grad."""
    model.requires_grad_(False)
    tuner = LoraModel(model, LoraConfig(**kwargs), ADAPTER)
    params = _fp32_adapter(model, ADAPTER)
    for param in params.values():
        param.requires_grad_(True)
    return tuner, params


def save_lora_file(
    path: Path,
    params: dict[str, nn.Parameter],
    kwargs: dict,
    extra_metadata: dict[str, str],
    dtype: torch.dtype | None,
) -> None:
    """Write the diffusers/PEFT LoRA file (``extra_metadata`` joins the safetensors header)."""
    tensors = {}
    for key, param in params.items():
        tensor = param.detach() if dtype is None else param.detach().to(dtype)
        tensors[PREFIX + key] = tensor.contiguous().cpu()
    config = {PREFIX + key: value for key, value in kwargs.items()}
    metadata = {"format": "pt", LORA_METADATA_KEY: json.dumps(config, indent=2, sort_keys=True)}
    save_file(tensors, str(path), metadata=metadata | extra_metadata)


def drop_peft_config(model: nn.Module) -> None:
    if hasattr(model, "peft_config"):
        del model.peft_config


def split_lora_file(
    file: Path, tensors: dict[str, torch.Tensor]
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Strip the ``transformer.`` prefix (optional in bare PEFT files); returns the tensors and
    key -> module name (``a.b.lora_A.weight`` -> ``a.b``)."""
    if any(key.startswith(PREFIX) for key in tensors):
        foreign = [key for key in tensors if not key.startswith(PREFIX)]
        if foreign:
            raise SanakitError(f"{file}: holds non-transformer weights (e.g. {foreign[0]!r})")
        tensors = {key[len(PREFIX) :]: value for key, value in tensors.items()}
    not_lora = [key for key in tensors if ".lora_" not in key]
    if not_lora:
        raise SanakitError(f"{file}: {not_lora[0]!r} is not a LoRA tensor")
    return tensors, {key: key.rpartition(".lora_")[0] for key in tensors}


@torch.no_grad()
def merge_lora_file(
    model: nn.Module,
    file: Path,
    tensors: dict[str, torch.Tensor],
    metadata: dict[str, str],
    modules: dict[str, nn.Module],
    scale: float,
) -> tuple[str, ...]:
    """W += scale * (alpha / r) * B @ A for each module in the file, through peft's merge (the
    deltas in fp32); ``modules`` maps each key to its module. Returns the module names."""
    for key, value in tensors.items():
        weight = getattr(modules[key], "weight", None)
        axis = 1 if ".lora_A." in key else 0 if ".lora_B.weight" in key else None
        if axis is not None and (weight is None or value.shape[axis] != weight.shape[axis]):
            have = None if weight is None else tuple(weight.shape)
            raise SanakitError(
                f"{file}: {key!r} has shape {tuple(value.shape)}, incompatible with the module "
                f"weight {have}; was it trained for another model size?"
            )
    names = tuple(sorted({key.rpartition(".lora_")[0] for key in tensors}))
    try:
        config = LoraConfig(**_config_from(file, tensors, metadata, names))
    except (TypeError, ValueError) as err:
        raise SanakitError(f"{file}: LoRA metadata not understood by peft ({err})") from err
    tuner = LoraModel(model, config, LOADED)
    _fp32_adapter(model, LOADED)
    try:
        result = set_peft_model_state_dict(model, tensors, adapter_name=LOADED)
        unexpected = [k for k in result.unexpected_keys if ".lora_" in k]
        if unexpected:
            raise SanakitError(f"{file}: {unexpected[0]!r} was not loaded into any LoRA layer")
    except RuntimeError as err:  # a shape the pre-check cannot see (e.g. a conv kernel size)
        tuner.unload()
        drop_peft_config(model)
        reason = str(err).strip().splitlines()[-1].strip()
        raise SanakitError(f"{file}: LoRA weights do not fit this transformer ({reason})") from err
    except SanakitError:
        tuner.unload()
        drop_peft_config(model)
        raise
    for module in model.modules():
        if isinstance(module, LoraLayer):
            module.scale_layer(scale)
    tuner.merge_and_unload()
    drop_peft_config(model)
    return names


def _config_from(
    file: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str], names: tuple[str, ...]
) -> dict[str, Any]:
    """LoraConfig kwargs: the file's ``lora_adapter_metadata`` when present (what diffusers
    uses), else inferred as diffusers does: per-module rank from lora_B, alpha = rank."""
    raw = metadata.get(LORA_METADATA_KEY)
    if raw:
        config = json.loads(raw)
        if any(key.startswith(PREFIX) for key in config):
            config = {k[len(PREFIX) :]: v for k, v in config.items() if k.startswith(PREFIX)}
        return config
    ranks = {
        key.rpartition(".lora_B")[0]: value.shape[1]
        for key, value in tensors.items()
        if ".lora_B." in key and value.ndim > 1
    }
    if not ranks:
        raise SanakitError(f"{file}: no lora_B weights, so the LoRA rank is unknown")
    r = Counter(ranks.values()).most_common(1)[0][0]
    pattern = {f"^{re.escape(name)}$": rank for name, rank in ranks.items() if rank != r}
    return {
        "r": r,
        "lora_alpha": r,
        "target_modules": list(names),
        "rank_pattern": pattern,
        "alpha_pattern": dict(pattern),
        "use_dora": any("lora_magnitude_vector" in key for key in tensors),
    }
