"""Load and save Sana transformers in diffusers' folder format.

A folder holds ``config.json`` (diffusers ``SanaTransformer2DModel`` config) and
``diffusion_pytorch_model.safetensors`` or shards listed in
``diffusion_pytorch_model.safetensors.index.json``. A pipeline folder (``model_index.json``
beside ``transformer/``) is accepted too. Loading builds the model on the meta device and
assigns tensors straight from the memory-mapped safetensors files, so a 1.6B checkpoint never
needs two full copies in memory.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from sanakit.errors import SanakitError
from sanakit.models.config import ModelConfig
from sanakit.models.sana import SanaTransformer

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
INDEX_NAME = "diffusion_pytorch_model.safetensors.index.json"
CONFIG_NAME = "config.json"
DIFFUSERS_VERSION = "0.42.1"


def resolve_transformer_dir(path: str | os.PathLike) -> Path:
    """The folder holding the transformer's config.json: ``path`` or ``path/transformer``."""
    root = Path(path)
    if not root.exists():
        raise SanakitError(
            f"{root}: no such folder (expected a diffusers Sana transformer or pipeline folder)"
        )
    for candidate in (root, root / "transformer"):
        if (candidate / CONFIG_NAME).is_file() and _weight_files(candidate, required=False):
            return candidate
    if (root / "model_index.json").is_file():
        raise SanakitError(
            f"{root}: pipeline folder has no transformer/ with config.json and safetensors weights"
        )
    raise SanakitError(
        f"{root}: no config.json + {WEIGHTS_NAME} (or a transformer/ subfolder) found"
    )


def _weight_files(folder: Path, required: bool = True) -> list[Path]:
    index = folder / INDEX_NAME
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return [folder / name for name in sorted(set(weight_map.values()))]
    single = folder / WEIGHTS_NAME
    if single.is_file():
        return [single]
    if required:
        raise SanakitError(f"{folder}: neither {WEIGHTS_NAME} nor {INDEX_NAME} found")
    return []


def read_config(folder: str | os.PathLike) -> ModelConfig:
    path = Path(folder) / CONFIG_NAME
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise SanakitError(f"{path}: invalid JSON ({err.msg} at line {err.lineno})") from err
    if raw.get("_class_name", "SanaTransformer2DModel") != "SanaTransformer2DModel":
        raise SanakitError(
            f"{path}: _class_name is {raw['_class_name']!r}, expected 'SanaTransformer2DModel'"
        )
    return ModelConfig.from_diffusers(raw, source=str(path))


def _summarise(keys: set[str], limit: int = 6) -> str:
    names = sorted(keys)
    more = f" (+{len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def load_transformer(
    path: str | os.PathLike,
    *,
    torch_dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
) -> SanaTransformer:
    """Load a diffusers-format Sana transformer (strict: every key must match by name and shape).

    ``torch_dtype`` casts floating tensors (default: keep the stored dtype).
    """
    folder = resolve_transformer_dir(path)
    config = read_config(folder)
    with torch.device("meta"):
        model = SanaTransformer(config)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    state: dict[str, torch.Tensor] = {}
    for file in _weight_files(folder):
        with safe_open(str(file), framework="pt", device=str(device)) as reader:
            for key in reader.keys():  # noqa: SIM118 (safe_open is not iterable)
                tensor = reader.get_tensor(key)
                if torch_dtype is not None and tensor.is_floating_point():
                    tensor = tensor.to(torch_dtype)
                state[key] = tensor
    missing, unexpected = set(expected) - set(state), set(state) - set(expected)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys: {_summarise(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_summarise(unexpected)}")
        raise SanakitError(
            f"{folder}: checkpoint does not match its config.json ({'; '.join(parts)})"
        )
    wrong = {k for k, t in state.items() if t.shape != expected[k]}
    if wrong:
        k = sorted(wrong)[0]
        raise SanakitError(
            f"{folder}: shape mismatch for {_summarise(wrong)} (e.g. {k}: checkpoint {tuple(state[k].shape)}, "
            f"config {tuple(expected[k])})"
        )
    model.load_state_dict(state, strict=True, assign=True)
    return model.to(device)


def _shards(state: dict[str, torch.Tensor], max_shard_bytes: int) -> list[dict[str, torch.Tensor]]:
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = tensor
        size += nbytes
    return shards


def save_transformer(
    model: SanaTransformer,
    path: str | os.PathLike,
    *,
    dtype: torch.dtype | None = None,
    max_shard_bytes: int = 5 * 1024**3,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write ``model`` as a diffusers ``SanaTransformer2DModel`` folder; returns the folder.

    Files are written under temporary names and renamed, so an interrupted save never leaves
    a truncated weights file under the final name.
    """
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    source = state_dict if state_dict is not None else model.state_dict()
    state = {}
    for key, tensor in source.items():
        tensor = tensor.detach()
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        state[key] = tensor.contiguous().cpu()
    shards = _shards(state, max_shard_bytes)
    for stale in [
        folder / WEIGHTS_NAME,
        folder / INDEX_NAME,
        *folder.glob("diffusion_pytorch_model-*.safetensors"),
    ]:
        stale.unlink(missing_ok=True)
    if len(shards) == 1:
        names = [WEIGHTS_NAME]
    else:
        names = [
            f"diffusion_pytorch_model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            for i in range(len(shards))
        ]
    for name, shard in zip(names, shards):
        tmp = folder / f".{name}.tmp"
        save_file(shard, str(tmp), metadata={"format": "pt"})
        os.replace(tmp, folder / name)
    if len(shards) > 1:
        total = sum(t.numel() * t.element_size() for t in state.values())
        weight_map = {key: name for name, shard in zip(names, shards) for key in shard}
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (folder / INDEX_NAME).write_text(json.dumps(index, indent=2))
    config = model.config.to_diffusers()
    config["_diffusers_version"] = DIFFUSERS_VERSION
    (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return folder
