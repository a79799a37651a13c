"""Adapters for `SanaTransformer`: LoRA (peft) and LoKr (LyCORIS), with export and merge in the
formats users' tools read.

- `spec`: the settings, `LoraSpec` / `LokrSpec`, which are the config tables ``[train.lora]`` /
  ``[train.lokr]`` themselves (validated once, there).
- `inject`: ``handle = apply_adapter(model, LoraSpec(rank=16), seed=0)`` freezes the base
  weights and injects the adapter; optimise ``handle.trainable_parameters()``; checkpoint with
  ``handle.state_dict()`` / ``handle.load_state_dict()`` (bit-exact resume); export with
  ``handle.save(folder)``:
  LoRA -> ``pytorch_lora_weights.safetensors`` (diffusers/PEFT layout with the LoraConfig in the
  metadata; ``diffusers.SanaPipeline.load_lora_weights(folder)`` reads it, alpha included);
  LoKr -> ``lokr_weights.safetensors`` (LyCORIS ``save_weights`` layout, read by
  ``lycoris.create_lycoris_from_weights``) + ``lokr_weights.json`` (the settings).
  Both start exactly at the base model (LoRA B = 0, LoKr W2 = 0; not with ``init_lokr_norm``).
- `merge`: ``load_adapter_into(model, file, scale=s)`` merges either file into the weights,
  W += s * delta, for inference.
- `lora`, `lokr`: the two backends.

The settings import eagerly (no torch); the rest loads on first use, so reading a config does
not import torch, peft or LyCORIS.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from sanakit.adapters.spec import DEFAULT_TARGET_MODULES, AdapterSpec, LokrSpec, LoraSpec

if TYPE_CHECKING:
    from sanakit.adapters.inject import AdapterHandle, apply_adapter, resolve_targets
    from sanakit.adapters.lokr import LOKR_WEIGHT_NAME
    from sanakit.adapters.lora import LORA_WEIGHT_NAME
    from sanakit.adapters.merge import LoadedAdapter, find_adapter_file, load_adapter_into

# public name -> the submodule defining it (imported on first access)
_LAZY = {
    "AdapterHandle": "inject",
    "apply_adapter": "inject",
    "resolve_targets": "inject",
    "LOKR_WEIGHT_NAME": "lokr",
    "LORA_WEIGHT_NAME": "lora",
    "LoadedAdapter": "merge",
    "find_adapter_file": "merge",
    "load_adapter_into": "merge",
}

__all__ = [
    "DEFAULT_TARGET_MODULES",
    "LOKR_WEIGHT_NAME",
    "LORA_WEIGHT_NAME",
    "AdapterHandle",
    "AdapterSpec",
    "LoadedAdapter",
    "LokrSpec",
    "LoraSpec",
    "apply_adapter",
    "find_adapter_file",
    "load_adapter_into",
    "resolve_targets",
]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
