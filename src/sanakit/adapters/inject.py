"""Adapters for `SanaTransformer`: LoRA (via peft, `sanakit.train.lora`) and LoKr (via LyCORIS,
`sanakit.train.lokr`), with export/import in the formats users' tools read.

Training: ``handle = apply_adapter(model, AdapterSpec("lora", rank=16))`` freezes the base
weights and injects the adapter; optimise ``handle.trainable_parameters()``; checkpoint with
``handle.state_dict()`` / ``handle.load_state_dict()`` (bit-exact resume); export with
``handle.save(folder)``:
- LoRA -> ``pytorch_lora_weights.safetensors`` (diffusers/PEFT layout with the LoraConfig in the
  metadata; ``diffusers.SanaPipeline.load_lora_weights(folder)`` reads it, alpha included);
- LoKr -> ``lokr_weights.safetensors`` (LyCORIS ``save_weights`` layout, read by
  ``lycoris.create_lycoris_from_weights``) + ``lokr_weights.json`` (the spec).
Both start exactly at the base model (LoRA B = 0, LoKr W2 = 0). Inference:
``load_adapter_into(model, file, scale=s)`` merges either file into the weights, W += s * delta.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from sanakit.errors import SanakitError
from sanakit.train.lokr import (
    LOKR_WEIGHT_NAME,
    LYCORIS_ATTR,
    LYCORIS_PREFIX,
    inject_lokr,
    lycoris_name,
    merge_lokr_file,
    merge_lokr_module,
    unhook_lokr,
)
from sanakit.train.lora import (
    LORA_WEIGHT_NAME,
    drop_peft_config,
    inject_lora,
    lora_kwargs,
    merge_lora_file,
    save_lora_file,
    split_lora_file,
)

__all__ = [
    "DEFAULT_TARGET_MODULES",
    "LOKR_WEIGHT_NAME",
    "LORA_WEIGHT_NAME",
    "AdapterHandle",
    "AdapterSpec",
    "LoadedAdapter",
    "apply_adapter",
    "find_adapter_file",
    "load_adapter_into",
    "resolve_targets",
]

SPEC_METADATA_KEY = "sanakit_adapter"  # the spec as JSON in the safetensors header

# Default targets for both methods: every matmul inside a Sana block -- q/k/v/out of the linear
# self-attention (attn1) and of the cross-attention (attn2), plus the two 1x1 convolutions of the
# Mix-FFN (conv_inverted C -> 2*2.5C, conv_point 2.5C -> C), which together hold ~all of a
# block's weights. Left out: the depthwise 3x3 conv_depth (9 weights per channel, grouped, so
# no low-rank structure to exploit), and the shared embedders / caption projection / proj_out,
# which are not per-block and are best left frozen when adapting a style or subject. LyCORIS'
# own presets name diffusers classes (Attention, FeedForward), not ours, so LoKr uses this list.
DEFAULT_TARGET_MODULES = ("to_q", "to_k", "to_v", "to_out.0", "conv_inverted", "conv_point")
DEFAULT_LOKR_FACTOR = 16  # SimpleTuner's LyCORIS example config (factor 16)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclasses.dataclass(frozen=True)
class AdapterSpec:
    """What to train: ``method`` "lora" (peft) or "lokr" (LyCORIS).

    rank: LoRA r, or LoKr ``linear_dim`` (rank of the W2 / W1 decompositions).
    alpha: scale numerator, scale = alpha / rank; None = rank (scale 1). For LoKr it only acts
        on modules whose W2 (or W1) is rank-decomposed; setting it where every module ends up with
        full-matrix factors is rejected at `apply_adapter`.
    dropout: LoRA dropout on the adapter input (LyCORIS LoKr has none, so LoKr requires 0).
    target_modules: module-name suffixes to adapt (``to_q`` matches every
        ``transformer_blocks.N.attn{1,2}.to_q``); None = `DEFAULT_TARGET_MODULES`. Targets must be
        ``nn.Linear`` or non-grouped ``nn.Conv2d``.
    factor: LoKr Kronecker factor (None = 16; -1 = as square as possible); LoKr only.
    full_matrix: LoKr with W1 and W2 as full matrices whatever the rank (scale 1); LoKr only.
    decompose_both: LoKr also factor W1 = W1a W1b (needs rank < max(a, c) / 2 somewhere).
    init_lokr_norm: LoKr init of SimpleTuner's ``--init_lokr_norm``: W1 = 1, and W2 drawn normal
        with the base weight's mean and std times this value, so training starts from a small
        perturbation instead of zero; requires ``full_matrix``.
    seed: seeds the random initial weights (LoRA A, LoKr W1 / W2a, ``init_lokr_norm``'s noise),
        so the same seed gives bit-identical adapters whatever the global RNG state (the
        trainer passes ``train.seed``).
    """

    method: str = "lora"
    rank: int = 16
    alpha: float | None = None
    dropout: float = 0.0
    target_modules: tuple[str, ...] | None = None
    factor: int | None = None
    full_matrix: bool = False
    decompose_both: bool = False
    init_lokr_norm: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.target_modules, list):
            object.__setattr__(self, "target_modules", tuple(self.target_modules))
        if self.method not in ("lora", "lokr"):
            raise SanakitError(f"adapter method must be 'lora' or 'lokr', got {self.method!r}")
        if not _integer(self.rank) or self.rank < 1:
            raise SanakitError(f"adapter rank must be an integer >= 1, got {self.rank!r}")
        if self.alpha is not None and not (
            _number(self.alpha) and math.isfinite(self.alpha) and self.alpha > 0
        ):
            raise SanakitError(f"adapter alpha must be a number > 0 (or unset), got {self.alpha!r}")
        if not (_number(self.dropout) and 0.0 <= self.dropout < 1.0):
            raise SanakitError(f"adapter dropout must be in [0, 1), got {self.dropout!r}")
        if not (_integer(self.seed) and -(2**63) <= self.seed < 2**64):
            raise SanakitError(f"adapter seed must be a 64-bit integer, got {self.seed!r}")
        targets = self.target_modules
        if targets is not None and (
            not isinstance(targets, tuple)
            or not targets
            or not all(isinstance(t, str) and t.strip(".") for t in targets)
            or len(set(targets)) != len(targets)
        ):
            raise SanakitError(
                f"adapter target_modules must be a non-empty list of distinct module-name "
                f"suffixes such as ['to_q', 'to_v'], got {targets!r}"
            )
        for key in ("full_matrix", "decompose_both"):
            if not isinstance(getattr(self, key), bool):
                raise SanakitError(
                    f"adapter {key} must be true or false, got {getattr(self, key)!r}"
                )
        lokr_only = {
            "factor": self.factor is not None,
            "full_matrix": self.full_matrix,
            "decompose_both": self.decompose_both,
            "init_lokr_norm": self.init_lokr_norm is not None,
        }
        if self.method == "lora":
            for key, is_set in lokr_only.items():
                if is_set:
                    raise SanakitError(f"adapter {key} is a LoKr option; remove it or use lokr")
            return
        if self.dropout:
            raise SanakitError("adapter dropout is LoRA-only (LyCORIS LoKr has no dropout)")
        if self.factor is not None and (
            not _integer(self.factor) or (self.factor < 1 and self.factor != -1)
        ):
            raise SanakitError(f"adapter factor must be >= 1 or -1, got {self.factor!r}")
        if self.full_matrix and self.decompose_both:
            raise SanakitError("adapter decompose_both has no effect with full_matrix; pick one")
        if self.full_matrix and self.alpha is not None and self.alpha != self.rank:
            raise SanakitError(
                "adapter alpha has no effect with full_matrix (LyCORIS fixes the scale to 1)"
            )
        if self.init_lokr_norm is not None:
            if not (_number(self.init_lokr_norm) and self.init_lokr_norm > 0):
                raise SanakitError(f"adapter init_lokr_norm must be > 0, got {self.init_lokr_norm}")
            if not self.full_matrix:
                raise SanakitError("adapter init_lokr_norm needs full_matrix = true (W1, W2 full)")

    @property
    def targets(self) -> tuple[str, ...]:
        return self.target_modules or DEFAULT_TARGET_MODULES

    @property
    def lokr_factor(self) -> int:
        return self.factor if self.factor is not None else DEFAULT_LOKR_FACTOR

    @property
    def scale_alpha(self) -> float:
        return float(self.alpha) if self.alpha is not None else float(self.rank)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["target_modules"] = list(self.targets)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AdapterSpec:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SanakitError(f"unknown adapter setting {unknown[0]!r}; valid: {sorted(known)}")
        return cls(**data)


def resolve_targets(model: nn.Module, suffixes: tuple[str, ...]) -> tuple[str, ...]:
    """Full names of the modules whose name equals or ends with ``.suffix`` (model order)."""
    names, used = [], set()
    for name, module in model.named_modules():
        hits = {s for s in suffixes if name == s or name.endswith("." + s)}
        if not hits:
            continue
        if not isinstance(module, nn.Linear) and not (
            isinstance(module, nn.Conv2d) and module.groups == 1
        ):
            kind = type(module).__name__ + (" (grouped)" if isinstance(module, nn.Conv2d) else "")
            raise SanakitError(
                f"adapter target_modules: {name!r} is a {kind}; adapters wrap Linear and "
                f"non-grouped Conv2d layers only (e.g. {', '.join(DEFAULT_TARGET_MODULES)})"
            )
        names.append(name)
        used |= hits
    missing = [s for s in suffixes if s not in used]
    if missing:
        raise SanakitError(
            f"adapter target_modules: {missing[0]!r} matches no module of the transformer "
            f"(valid suffixes include {', '.join(DEFAULT_TARGET_MODULES)}, proj_out)"
        )
    return tuple(names)


def _has_adapter(model: nn.Module) -> bool:
    return hasattr(model, "peft_config") or isinstance(
        getattr(model, LYCORIS_ATTR, None), nn.Module
    )


class AdapterHandle:
    """A live adapter on a model: trainable parameters, exact state, export and merge.

    ``state_dict()`` keys are the export keys without the ``transformer.`` prefix (LoRA:
    ``<module>.lora_A.weight``; LoKr: ``lycoris_<module>.lokr_w1``...), values detached copies.
    """

    def __init__(
        self,
        spec: AdapterSpec,
        model: nn.Module,
        modules: tuple[str, ...],
        params: dict[str, nn.Parameter],
        backend: nn.Module,
    ) -> None:
        self.spec = spec
        self.model = model
        self.modules = modules
        self._params = params
        self._backend = backend  # peft LoraModel or LycorisNetwork
        self._merged = False

    def _live(self) -> None:
        if self._merged:
            raise SanakitError("this adapter was merged into the model; apply a new one to train")

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The adapter parameters (the only ones with requires_grad), in model order."""
        self._live()
        return list(self._params.values())

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self._params.values())

    def state_dict(self) -> dict[str, torch.Tensor]:
        self._live()
        return {key: p.detach().clone() for key, p in self._params.items()}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Copy ``state`` into the adapter parameters in place (bit-exact; strict keys/shapes)."""
        self._live()
        missing = sorted(set(self._params) - set(state))
        unexpected = sorted(set(state) - set(self._params))
        if missing or unexpected:
            key = (missing or unexpected)[0]
            what = "missing" if missing else "unexpected"
            raise SanakitError(
                f"adapter state does not match this {self.spec.method} adapter ({what} key {key!r}"
                f", {len(missing)} missing, {len(unexpected)} unexpected); check rank/targets"
            )
        for key, param in self._params.items():
            if state[key].shape != param.shape:
                raise SanakitError(
                    f"adapter state {key!r} has shape {tuple(state[key].shape)}, "
                    f"expected {tuple(param.shape)}; check rank/factor"
                )
            param.copy_(state[key])

    def save(self, path: str | os.PathLike, *, dtype: torch.dtype | None = None) -> Path:
        """Export to a folder (default file name inside) or a ``.safetensors`` path; returns the
        file. Written under a temporary name and renamed. ``dtype`` casts the tensors."""
        self._live()
        target = Path(path)
        default = LORA_WEIGHT_NAME if self.spec.method == "lora" else LOKR_WEIGHT_NAME
        file = target if target.suffix == ".safetensors" else target / default
        file.parent.mkdir(parents=True, exist_ok=True)
        tmp = file.with_name(f".tmp-{file.name}")
        spec = {SPEC_METADATA_KEY: json.dumps(self.spec.to_dict(), sort_keys=True)}
        if self.spec.method == "lora":
            kwargs = lora_kwargs(
                self.spec.rank, self.spec.scale_alpha, self.spec.dropout, self.modules
            )
            save_lora_file(tmp, self._params, kwargs, spec, dtype)
        else:
            dtype = dtype or next(iter(self._params.values())).dtype
            self._backend.save_weights(str(tmp), dtype, spec)
            sidecar = {"format": "lycoris", "algo": "lokr", "weights": file.name}
            sidecar |= {"spec": self.spec.to_dict(), "modules": list(self.modules)}
            file.with_suffix(".json").write_text(json.dumps(sidecar, indent=2) + "\n")
        _sort_metadata(tmp)
        os.replace(tmp, file)
        return file

    @torch.no_grad()
    def merge(self) -> nn.Module:
        """Fold the adapter into the base weights (W += delta), remove it, return the plain model.

        Afterwards the model's state_dict has the base keys again (``save_transformer`` works)
        and this handle is closed.
        """
        self._live()
        if self.spec.method == "lora":
            self._backend.merge_and_unload()
            drop_peft_config(self.model)
        else:
            for lora in self._backend.loras:
                merge_lokr_module(lora, 1.0)
            unhook_lokr(self.model, self._backend)
        self._merged = True
        return self.model


def _sort_metadata(file: Path) -> None:
    """Rewrite the safetensors header of ``file`` with its ``__metadata__`` keys sorted, in place.

    safetensors writes the metadata map in a random order (a Rust HashMap), so the same adapter
    saved twice differed in its header bytes; sorted, equal adapters give equal files. The
    header keeps its length (padded with spaces, as safetensors pads), so the tensor data does
    not move; a header that would grow is left as written.
    """
    with open(file, "r+b") as f:
        size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(size))
        metadata = header.pop("__metadata__", None)
        if not metadata or len(metadata) < 2:
            return
        ordered = {"__metadata__": dict(sorted(metadata.items())), **header}
        text = json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode()
        if len(text) <= size:
            f.seek(8)
            f.write(text.ljust(size, b" "))


def apply_adapter(model: nn.Module, spec: AdapterSpec) -> AdapterHandle:
    """Freeze every base weight of ``model`` and inject the adapter of ``spec``; in place.

    Adapter parameters are fp32 on the model's device whatever the base dtype (apply after
    casting the base model; ``model.to(device)`` afterwards moves them too). LoRA wraps the
    targets with peft layers; LoKr hooks LyCORIS modules and registers the network as
    ``model.lycoris``. Nothing is changed when a check fails.
    """
    if _has_adapter(model):
        raise SanakitError("the model already carries an adapter; merge it before adding another")
    modules = resolve_targets(model, spec.targets)
    device = next(model.parameters()).device
    with _seeded(spec.seed, device):
        if spec.method == "lora":
            kwargs = lora_kwargs(spec.rank, spec.scale_alpha, spec.dropout, modules)
            backend, params = inject_lora(model, kwargs)
        else:
            backend, params = inject_lokr(model, spec, modules)
    return AdapterHandle(spec, model, modules, params, backend)


@contextlib.contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Run the injection on the global RNG seeded with ``seed``, then restore it: peft and
    LyCORIS draw their initial weights from torch's global generator (on the CPU, before moving
    them to the model's device; a CUDA model's generator is forked and seeded too), so this
    makes the init a function of the seed alone and leaves the caller's random stream as it was.
    """
    cuda = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.default_generator.manual_seed(seed)
        for dev in cuda:
            with torch.cuda.device(dev):
                torch.cuda.manual_seed(seed)
        yield


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
    if not (_number(scale) and math.isfinite(scale)):
        raise SanakitError(f"adapter scale must be a finite number, got {scale!r}")
    if _has_adapter(model):
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
