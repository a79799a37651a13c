"""LoKr through LyCORIS, in LyCORIS' own file layout (a backend of `sanakit.adapters`).

LoKr (LyCORIS; Yeh et al., 2023, arXiv:2309.14859) on a weight W (out, in[, kh, kw]):
    W' = W + s * kron(W1, W2),   W1 (a, c), W2 (b, d[, kh, kw]), out = a*b, in = c*d,
with (a, b) = factorization(out, factor), (c, d) = factorization(in, factor) (the smaller side
is at most ``factor``). W2 = W2a @ W2b of rank r when r < max(b, d) / 2, else a full matrix;
with ``decompose_both`` W1 = W1a @ W1b too when r < max(a, c) / 2. s = alpha / r, except that
LyCORIS fixes s = 1 where W1 and W2 are both full matrices. W2 (or W2b) starts at 0, so LoKr
starts exactly at the base model (unless ``init_lokr_norm`` is used).

File: ``lokr_weights.safetensors`` written by ``LycorisNetwork.save_weights``: keys
``lycoris_<module name, dots as underscores>.{lokr_w1, lokr_w1_a, lokr_w1_b, lokr_w2, lokr_w2_a,
lokr_w2_b, alpha}``, loadable with ``lycoris.create_lycoris_from_weights``.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sanakit.adapters.spec import LokrSpec
from sanakit.errors import SanakitError
from sanakit.quantize import dequantized_weight, is_quantized_layer

LOKR_WEIGHT_NAME = "lokr_weights.safetensors"
LYCORIS_PREFIX = "lycoris"
LYCORIS_ATTR = "lycoris"  # the LycorisNetwork is registered on the model under this name

log = logging.getLogger("sanakit.adapters")


def lycoris_name(module_name: str) -> str:
    """LyCORIS' name for a module: ``a.b.to_q`` -> ``lycoris_a_b_to_q``."""
    return f"{LYCORIS_PREFIX}_{module_name}".replace(".", "_")


class _NoFullMatrixNotice(logging.Filter):
    """Drops LyCORIS' "lora_dim N is too large for dim=... using full matrix mode" warning
    (ANSI-coloured, on stdout, one per layer shape); `inject_lokr` reports it once itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "is too large for" not in record.getMessage()


@contextlib.contextmanager
def _quiet_lycoris() -> Iterator[None]:
    """LyCORIS' logger without its info messages and its full-matrix notice."""
    from lycoris.logging import logger

    level, notice = logger.level, _NoFullMatrixNotice()
    logger.setLevel(logging.WARNING)
    logger.addFilter(notice)
    try:
        yield
    finally:
        logger.removeFilter(notice)
        logger.setLevel(level)


@contextlib.contextmanager
def _lycoris_targets(modules: tuple[str, ...]) -> Iterator[Any]:
    """Point LyCORIS (whose presets are class attributes) at exactly ``modules``, quietly, and
    restore its class state afterwards so no setting leaks into other LyCORIS users."""
    from lycoris import LycorisNetwork

    attrs = ("ENABLE_CONV", "TARGET_REPLACE_MODULE", "TARGET_REPLACE_NAME", "MODULE_ALGO_MAP")
    attrs += ("NAME_ALGO_MAP", "USE_FNMATCH", "LORA_PREFIX", "TARGET_EXCLUDE_NAME")
    saved = {a: getattr(LycorisNetwork, a) for a in attrs if hasattr(LycorisNetwork, a)}
    preset = {
        "enable_conv": True,
        "target_module": [],
        "target_name": [re.escape(name) + "$" for name in modules],  # exact full names
        "module_algo_map": {},
        "name_algo_map": {},
        "use_fnmatch": False,
        "lora_prefix": LYCORIS_PREFIX,
    }
    if "TARGET_EXCLUDE_NAME" in saved:
        preset["exclude_name"] = []
    try:
        with _quiet_lycoris():
            LycorisNetwork.apply_preset(preset)
            yield LycorisNetwork
    finally:
        for attr, value in saved.items():
            setattr(LycorisNetwork, attr, value)


def inject_lokr(
    model: nn.Module, spec: LokrSpec, modules: tuple[str, ...]
) -> tuple[nn.Module, dict[str, nn.Parameter]]:
    """Freeze ``model``, hook a LoKr module on each of ``modules`` and register the network as
    ``model.lycoris`` (so ``model.to``, ``model.parameters()`` and DDP see it). Returns the
    network and export key (``lycoris_<module>.lokr_w1``...) -> fp32 parameter."""
    alpha = spec.scale_alpha
    # a quantised base (sanakit.quantize): LyCORIS' bypass forward, W x + s kron(W1, W2) x,
    # which never rebuilds W (it does so itself for bnb Linears, not for QuantizedConv1x1)
    quantized = any(is_quantized_layer(model.get_submodule(m)) for m in modules)
    extra = {"bypass_mode": True} if quantized else {}
    with _lycoris_targets(modules) as network_cls:
        network = network_cls(
            model,
            multiplier=1.0,
            lora_dim=spec.rank,
            alpha=alpha,
            conv_lora_dim=spec.rank,
            conv_alpha=alpha,
            dropout=0.0,
            network_module="lokr",
            factor=spec.factor,
            decompose_both=spec.decompose_both,
            full_matrix=spec.full_matrix,
            **extra,
        )
    loras = network.loras
    if sorted(lora.lora_name for lora in loras) != sorted(lycoris_name(m) for m in modules):
        raise SanakitError(f"LyCORIS wrapped {len(loras)} modules, expected {len(modules)}")
    where = f"rank {spec.rank} and factor {spec.factor}"
    if spec.decompose_both and all(lora.use_w1 for lora in loras):
        raise SanakitError(
            f"train.lokr.decompose_both does nothing with {where} (W1 is too small to decompose); "
            f"use a rank below factor/2 or drop decompose_both"
        )
    alpha_matters = any(not (lora.use_w1 and lora.use_w2) for lora in loras)
    if spec.alpha is not None and spec.alpha != spec.rank and not alpha_matters:
        raise SanakitError(
            f"train.lokr.alpha does nothing with {where}: every LoKr factor is a full matrix "
            f"(scale fixed to 1); lower the rank or leave alpha unset"
        )
    full_w2 = 0 if spec.full_matrix else sum(lora.use_w2 for lora in loras)
    if full_w2:
        layers = f"all {len(loras)}" if full_w2 == len(loras) else f"{full_w2} of {len(loras)}"
        log.info(
            "LoKr: rank %d is at least half of W2's larger side in %s layers (factor %d); those "
            "layers train W2 as a full matrix",
            spec.rank, layers, spec.factor,
        )  # fmt: skip
    if spec.init_lokr_norm is not None:
        _init_lokr_norm(loras, spec.init_lokr_norm)
    model.requires_grad_(False)
    network.apply_to()
    network.to(device=next(model.parameters()).device, dtype=torch.float32)
    model.add_module(LYCORIS_ATTR, network)
    params = {}
    for lora in loras:
        for name, param in lora.named_parameters():
            param.requires_grad_(True)
            params[f"{lora.lora_name}.{name}"] = param
    return network, params


@torch.no_grad()
def _init_lokr_norm(loras: list[nn.Module], scale: float) -> None:
    """W1 = 1 and W2 = scale * (mean(W) + std(W) * z), z standardised normal noise, so the first
    delta kron(1, W2) tiles a small copy of the base weight statistics (SimpleTuner's option)."""
    for lora in loras:
        base = dequantized_weight(lora.org_module[0])  # a quantised base's real weights
        noise = torch.randn_like(lora.lokr_w2)
        noise = (noise - noise.mean()) / noise.std()
        lora.lokr_w1.fill_(1.0)
        lora.lokr_w2.copy_(scale * (base.mean() + base.std() * noise))


@torch.no_grad()
def merge_lokr_module(lora: nn.Module, scale: float) -> None:
    """W += scale * s * kron(W1, W2), computed in fp32.

    Uses ``get_weight`` (already times s = alpha / r), the delta LyCORIS' own forward adds; its
    ``merge_to`` / ``get_diff_weight`` multiply by s a second time (lycoris-lora 4.1.3), which
    is wrong whenever alpha != rank, so they are not used.
    """
    weight = lora.org_module[0].weight
    delta = lora.get_weight(lora.shape).to(device=weight.device, dtype=torch.float32)
    weight.copy_((weight.float() + scale * delta).to(weight.dtype))


def unhook_lokr(model: nn.Module, network: nn.Module) -> None:
    """Remove the LoKr hooks and ``model.lycoris``, leaving the plain modules."""
    network.restore()
    for lora in network.loras:
        module = lora.org_module[0]
        for attr in ("forward", "_lycoris_original_forward", "_lycoris_wrappers"):
            module.__dict__.pop(attr, None)
    delattr(model, LYCORIS_ATTR)


@torch.no_grad()
def merge_lokr_file(
    file: Path,
    tensors: dict[str, torch.Tensor],
    modules: dict[str, nn.Module],
    scale: float,
) -> None:
    """W += scale * s * kron(W1, W2) for each ``lycoris_<name>`` entry; ``modules`` maps the
    LyCORIS names to modules. Every entry is built and checked before any weight changes."""
    from lycoris.modules import get_module, make_module
    from lycoris.modules.lokr import LokrModule

    loras = []
    for name, module in modules.items():
        kind, params = get_module(tensors, name)
        if kind is not LokrModule:
            found = getattr(kind, "__name__", "unknown tensors")
            raise SanakitError(f"{file}: {name!r} is {found}, only LyCORIS LoKr is supported")
        if f"{name}.dora_scale" in tensors:
            raise SanakitError(f"{file}: {name!r} uses DoRA (dora_scale); not supported")
        try:
            with _quiet_lycoris():
                lora = make_module(kind, params, name, module)
            lora.get_weight(lora.shape)
        except (RuntimeError, TypeError, ValueError) as err:
            reason = str(err).strip().splitlines()[0]
            raise SanakitError(
                f"{file}: LoKr entry {name!r} does not fit its module ({reason}); "
                f"was it trained for another model?"
            ) from err
        loras.append(lora)
    for lora in loras:
        merge_lokr_module(lora, scale)
