"""Put an adapter on a `SanaTransformer` for training: `apply_adapter` freezes the base weights,
injects LoRA (peft, `sanakit.adapters.lora`) or LoKr (LyCORIS, `sanakit.adapters.lokr`) seeded
by ``seed`` alone, and returns an `AdapterHandle` (trainable parameters, exact state, export,
merge). Exported files record the settings (`spec_record`) under ``sanakit_adapter`` in the
safetensors header, whose metadata keys are written sorted, so equal adapters give equal bytes.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from sanakit.adapters.lokr import (
    LOKR_WEIGHT_NAME,
    LYCORIS_ATTR,
    inject_lokr,
    merge_lokr_module,
    unhook_lokr,
)
from sanakit.adapters.lora import (
    LORA_WEIGHT_NAME,
    drop_peft_config,
    inject_lora,
    lora_kwargs,
    save_lora_file,
)
from sanakit.adapters.spec import DEFAULT_TARGET_MODULES, AdapterSpec, LoraSpec, spec_record
from sanakit.errors import SanakitError
from sanakit.quantize import quantized_layers

SPEC_METADATA_KEY = "sanakit_adapter"  # spec_record as JSON in the safetensors header


def resolve_targets(
    model: nn.Module, suffixes: tuple[str, ...], *, key: str = "target_modules"
) -> tuple[str, ...]:
    """Full names of the modules whose name equals or ends with ``.suffix`` (model order);
    errors name ``key`` (the config key the suffixes come from)."""
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
                f"{key}: {name!r} is a {kind}; adapters wrap Linear and "
                f"non-grouped Conv2d layers only (e.g. {', '.join(DEFAULT_TARGET_MODULES)})"
            )
        names.append(name)
        used |= hits
    missing = [s for s in suffixes if s not in used]
    if missing:
        raise SanakitError(
            f"{key}: {missing[0]!r} matches no module of the transformer "
            f"(valid suffixes include {', '.join(DEFAULT_TARGET_MODULES)}, proj_out)"
        )
    return tuple(names)


def has_adapter(model: nn.Module) -> bool:
    """Whether ``model`` carries a training adapter (peft LoRA or a LyCORIS network)."""
    return hasattr(model, "peft_config") or isinstance(
        getattr(model, LYCORIS_ATTR, None), nn.Module
    )


class AdapterHandle:
    """A live adapter on a model: trainable parameters, exact state, export and merge.

    ``state_dict()`` keys are the export keys without the ``transformer.`` prefix (LoRA:
    ``<module>.lora_A.weight``; LoKr: ``lycoris_<module>.lokr_w1``...), values detached copies.
    ``seed`` is the one the initial weights were drawn with (recorded in exports).
    """

    def __init__(
        self,
        spec: AdapterSpec,
        seed: int,
        model: nn.Module,
        modules: tuple[str, ...],
        params: dict[str, nn.Parameter],
        backend: nn.Module,
    ) -> None:
        self.spec = spec
        self.seed = seed
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
        record = spec_record(self.spec, self.seed)
        spec = {SPEC_METADATA_KEY: json.dumps(record, sort_keys=True)}
        if isinstance(self.spec, LoraSpec):
            kwargs = lora_kwargs(
                self.spec.rank, self.spec.scale_alpha, self.spec.dropout, self.modules
            )
            save_lora_file(tmp, self._params, kwargs, spec, dtype)
        else:
            dtype = dtype or next(iter(self._params.values())).dtype
            self._backend.save_weights(str(tmp), dtype, spec)
            sidecar = {"format": "lycoris", "algo": "lokr", "weights": file.name}
            sidecar |= {"spec": record, "modules": list(self.modules)}
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
        quantized = quantized_layers(self.model)
        if quantized:
            raise SanakitError(
                f"cannot merge an adapter into a quantised base ({len(quantized)} layers, e.g. "
                f"{next(iter(quantized))}); save it and merge into the full-precision model"
            )
        if isinstance(self.spec, LoraSpec):
            self._backend.merge_and_unload()
            drop_peft_config(self.model)
        else:
            for lora in self._backend.loras:
                merge_lokr_module(lora, 1.0)
            unhook_lokr(self.model, self._backend)
        self._merged = True
        return self.model

    @contextlib.contextmanager
    def disabled(self) -> Iterator[None]:
        """Run the model without the adapter inside the block (its exact base output): peft's
        adapter layers switched off (``disable_adapter_layers``), LyCORIS' multiplier 0 (as
        SimpleTuner predicts its regularisation targets); switched back on afterwards."""
        self._live()
        if isinstance(self.spec, LoraSpec):
            self._backend.disable_adapter_layers()
            try:
                yield
            finally:
                self._backend.enable_adapter_layers()
        else:
            multiplier = self._backend.multiplier
            self._backend.set_multiplier(0.0)
            try:
                yield
            finally:
                self._backend.set_multiplier(multiplier)


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


def apply_adapter(model: nn.Module, spec: AdapterSpec, *, seed: int = 0) -> AdapterHandle:
    """Freeze every base weight of ``model`` and inject the adapter of ``spec``; in place.

    Adapter parameters are fp32 on the model's device whatever the base dtype (apply after
    casting the base model; ``model.to(device)`` afterwards moves them too). LoRA wraps the
    targets with peft layers; LoKr hooks LyCORIS modules and registers the network as
    ``model.lycoris``. ``seed`` seeds the random initial weights (LoRA A, LoKr W1 / W2a,
    ``init_lokr_norm``'s noise) on a forked RNG, so the same seed gives bit-identical adapters
    whatever the global RNG state (the trainer passes ``train.seed``). Nothing is changed when
    a check fails.
    """
    if has_adapter(model):
        raise SanakitError("the model already carries an adapter; merge it before adding another")
    modules = resolve_targets(model, spec.targets, key=f"train.{spec.method}.target_modules")
    device = next(model.parameters()).device
    with _seeded(seed, device):
        if isinstance(spec, LoraSpec):
            kwargs = lora_kwargs(spec.rank, spec.scale_alpha, spec.dropout, modules)
            backend, params = inject_lora(model, kwargs)
        else:
            backend, params = inject_lokr(model, spec, modules)
    return AdapterHandle(spec, seed, model, modules, params, backend)


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
