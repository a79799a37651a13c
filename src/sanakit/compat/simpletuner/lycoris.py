"""SimpleTuner's ``lycoris_config`` JSON -> sanakit's ``[train.lokr]``.

SimpleTuner calls ``create_lycoris(transformer, multiplier, linear_dim, linear_alpha, **rest)``
with ``linear_dim`` 4 and ``linear_alpha`` 1 when absent, after ``LycorisNetwork.apply_preset``.
LyCORIS' ``factor`` defaults to -1 (as square as possible). ``apply_preset.target_module`` names
*classes* of diffusers' ``SanaTransformer2DModel``; every Linear/Conv inside them is wrapped:

- ``Attention`` (attn1, attn2): ``to_q``, ``to_k``, ``to_v``, ``to_out.0``
- ``GLUMBConv`` (the Mix-FFN): ``conv_inverted``, ``conv_depth`` (3x3 depthwise), ``conv_point``
- ``SanaTransformerBlock``: both of the above
- ``FeedForward`` and other classes that Sana does not use match nothing (SimpleTuner trains
  nothing for them either).

sanakit names the same modules by suffix (``[train.lokr] target_modules``); it cannot adapt the
grouped ``conv_depth``. LoKr on W (out, in): W' = W + s * kron(W1, W2), s = alpha / rank unless
both factors are full matrices (then LyCORIS fixes s = 1 and alpha does nothing).
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any

from sanakit.compat.simpletuner.common import Context, as_bool, as_float, as_int, is_off
from sanakit.errors import SanakitError

ATTENTION = ("to_q", "to_k", "to_v", "to_out.0")
MIX_FFN = ("conv_inverted", "conv_point")
CLASS_TARGETS: dict[str, tuple[str, ...]] = {
    "Attention": ATTENTION,
    "GLUMBConv": MIX_FFN,
    "SanaTransformerBlock": ATTENTION + MIX_FFN,
}
# classes that exist in Sana but hold layers sanakit does not adapt from a LyCORIS preset
UNSUPPORTED_CLASSES = {
    "SanaTransformer2DModel": "every layer of the model (embedders, caption projection, proj_out)",
    "Linear": "every Linear layer, including embedders and the caption projection",
    "Conv2d": "every Conv2d, including the depthwise conv_depth and the patch embedding",
    "PixArtAlphaTextProjection": "the caption projection",
    "TimestepEmbedding": "the timestep embedder",
    "AdaLayerNormSingle": "the adaLN-single timestep projection",
    "PatchEmbed": "the patch embedding",
}
# LyCORIS' other classes, absent from Sana: wrapping them wraps nothing
ABSENT_CLASSES = {
    "FeedForward",
    "Transformer2DModel",
    "ResnetBlock2D",
    "Downsample2D",
    "Upsample2D",
    "CLIPAttention",
    "CLIPMLP",
    "BasicTransformerBlock",
    "JointTransformerBlock",
}
# A LoKr rank this large gives full-matrix factors for every Sana layer (the larger Kronecker
# side of any Sana weight is < 20000, and LyCORIS decomposes W2 only when rank < side / 2).
FULL_RANK = 10000

_OFF_KEYS = {
    "dropout": "LyCORIS LoKr dropout is not supported by sanakit",
    "rank_dropout": "rank dropout is not supported by sanakit",
    "module_dropout": "module dropout is not supported by sanakit",
    "use_tucker": "Tucker decomposition is not supported by sanakit",
    "use_cp": "Tucker decomposition is not supported by sanakit",
    "use_conv_cp": "Tucker decomposition is not supported by sanakit",
    "use_scalar": "a trained scalar is not supported by sanakit",
    "train_norm": "sanakit does not adapt norm layers",
    "dora_wd": "DoRA is not supported by sanakit",
    "weight_decompose": "DoRA is not supported by sanakit",
    "rescaled": "rescaled LoKr is not supported by sanakit",
    "constraint": "norm constraints are not supported by sanakit",
    "unbalanced_factorization": "sanakit uses LyCORIS' balanced factorization",
    "train_llm_adapter": "not applicable to Sana",
}
_KNOWN = {"algo", "factor", "linear_dim", "linear_alpha", "full_matrix", "decompose_both"}
_KNOWN |= {"multiplier"}
_KNOWN |= {"bypass_mode", "apply_preset", "conv_dim", "conv_alpha", "disable_conv_cp"}
_KNOWN |= set(_OFF_KEYS)
_PRESET_KEYS = {"target_module", "module_algo_map", "target_name", "name_algo_map"}
_PRESET_KEYS |= {"enable_conv", "use_fnmatch", "exclude_name", "lora_prefix"}


def import_lycoris(file: Path, ctx: Context) -> dict[str, Any]:
    """Read a LyCORIS config and return the ``[train.lokr]`` table (see the module docstring)."""
    try:
        raw = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SanakitError(f"{file}: cannot read the LyCORIS config: {err}") from None
    if not isinstance(raw, dict):
        raise SanakitError(f"{file}: a LyCORIS config must be a JSON object")
    label = f"{file.name}:"
    for key in raw:
        if key not in _KNOWN:
            near = difflib.get_close_matches(key, sorted(_KNOWN), n=1)
            hint = f"did you mean {near[0]!r}?" if near else f"known: {', '.join(sorted(_KNOWN))}"
            raise SanakitError(f"{file}: unknown LyCORIS key {key!r}; {hint}")
    algo = str(raw.get("algo", "lora")).lower()
    if algo != "lokr":
        raise SanakitError(
            f"{file}: algo = {algo!r}: sanakit trains LyCORIS LoKr only; set algo to 'lokr' "
            f"(or use lora_type 'standard' for a peft LoRA)"
        )
    ctx.mapped(label + "algo", raw["algo"], "train.method", "LoKr")
    for key, detail in _OFF_KEYS.items():
        if key in raw:
            if is_off(raw[key]):
                ctx.ignored(label + key, raw[key], "off (the LyCORIS default)")
            else:
                ctx.unsupported(file, label + key, raw[key], detail)
    if "multiplier" in raw:
        if as_float(file, "multiplier", raw["multiplier"]) == 1.0:
            ctx.ignored(label + "multiplier", raw["multiplier"], "1.0 is the full adapter")
        else:
            ctx.unsupported(file, label + "multiplier", raw["multiplier"], "sanakit trains at 1.0")
    if "bypass_mode" in raw:
        reason = "only changes how LyCORIS computes W x + dW x (same result)"
        ctx.ignored(label + "bypass_mode", raw["bypass_mode"], reason)
    targets, overrides = _preset(file, raw.get("apply_preset"), ctx, label)
    out: dict[str, Any] = {"target_modules": list(targets)}
    out["factor"] = _factor(file, raw, overrides, ctx, label)
    uses_conv = any(t in MIX_FFN for t in targets)
    out |= _shape(file, raw, ctx, label, uses_conv)
    return out


def _factor(
    file: Path, raw: dict[str, Any], overrides: dict[str, int | None], ctx: Context, label: str
) -> int:
    """One LoKr factor: module_algo_map's per-class factor, else ``factor`` (LyCORIS: -1)."""
    default = as_int(file, "factor", raw["factor"]) if "factor" in raw else -1
    effective = {cls: default if f is None else f for cls, f in overrides.items()}
    if len(set(effective.values())) > 1:
        ctx.unsupported(
            file,
            label + "apply_preset.module_algo_map",
            effective,
            "different LoKr factors per class; sanakit uses one factor for all targets",
        )
        effective = {}
    factor = next(iter(effective.values())) if effective else default
    where = "train.lokr.factor"
    if "factor" not in raw:
        note = "LyCORIS default -1 (as square as possible)"
        if factor == default:
            ctx.mapped(label + "factor", "(not set)", where, note)
    elif factor == default:
        ctx.mapped(label + "factor", raw["factor"], where)
    else:
        ctx.ignored(
            label + "factor",
            raw["factor"],
            "apply_preset.module_algo_map sets the factor of every targeted class",
        )
    return factor


def _shape(
    file: Path, raw: dict[str, Any], ctx: Context, label: str, uses_conv: bool
) -> dict[str, Any]:
    """linear_dim / linear_alpha / full_matrix / decompose_both -> the ``[train.lokr]`` keys
    rank, alpha, full_matrix, decompose_both that give the same LoKr weights."""
    dim = as_int(file, "linear_dim", raw.get("linear_dim", 4))
    alpha = as_float(file, "linear_alpha", raw.get("linear_alpha", 1))
    full = as_bool(file, "full_matrix", raw.get("full_matrix", False))
    both = as_bool(file, "decompose_both", raw.get("decompose_both", False))
    for key in ("conv_dim", "conv_alpha"):
        if key in raw:
            linear = raw.get(key.replace("conv", "linear"), raw[key])
            if not uses_conv:
                ctx.ignored(label + key, raw[key], "no convolution is targeted")
            elif raw[key] == linear or full:
                ctx.ignored(label + key, raw[key], "same LoKr weights as the linear setting")
            else:
                ctx.unsupported(file, label + key, raw[key], "sanakit uses one rank and alpha")
    if "disable_conv_cp" in raw:
        ctx.ignored(label + "disable_conv_cp", raw["disable_conv_cp"], "Tucker stays off")
    if full:
        ctx.mapped(label + "full_matrix", raw["full_matrix"], "train.lokr.full_matrix")
        note = "full_matrix: W1 and W2 are full matrices with the scale fixed to 1 (LyCORIS)"
        for key in ("linear_dim", "linear_alpha", "decompose_both"):
            if key in raw:
                ctx.ignored(label + key, raw[key], f"does nothing with {note}")
        return {"full_matrix": True}
    if "full_matrix" in raw:
        ctx.ignored(label + "full_matrix", raw["full_matrix"], "false (the LyCORIS default)")
    if dim >= FULL_RANK:
        note = (
            f"linear_dim {dim} >= {FULL_RANK}: both Kronecker factors are full matrices, so "
            f"LyCORIS fixes the scale to 1 and linear_alpha does nothing; sanakit writes this as "
            f"rank = alpha = {FULL_RANK}"
        )
        ctx.mapped(label + "linear_dim", raw["linear_dim"], "train.lokr.rank", note)
        for key in ("linear_alpha", "decompose_both"):
            if key in raw:
                ctx.ignored(label + key, raw[key], note)
        return {"rank": FULL_RANK, "alpha": float(FULL_RANK)}
    for key, target, default in (("linear_dim", "rank", 4), ("linear_alpha", "alpha", 1)):
        note = "" if key in raw else f"SimpleTuner's default {default}"
        ctx.mapped(label + key, raw.get(key, "(not set)"), f"train.lokr.{target}", note)
    out: dict[str, Any] = {"rank": dim, "alpha": alpha}
    if both:
        ctx.mapped(label + "decompose_both", raw["decompose_both"], "train.lokr.decompose_both")
        out["decompose_both"] = True
    elif "decompose_both" in raw:
        ctx.ignored(label + "decompose_both", raw["decompose_both"], "off (the LyCORIS default)")
    return out


def _preset(
    file: Path, preset: Any, ctx: Context, label: str
) -> tuple[tuple[str, ...], dict[str, int | None]]:
    """apply_preset -> (sanakit target suffixes, {targeted class: module_algo_map factor})."""
    key = f"{label}apply_preset"
    if preset is None or preset == {}:
        ctx.unsupported(
            file,
            key,
            preset,
            "without apply_preset LyCORIS wraps every Linear and Conv layer of the transformer, "
            "including the depthwise conv_depth that sanakit cannot adapt; add apply_preset "
            '{"target_module": ["Attention"]} as in SimpleTuner\'s Sana example',
        )
        return ATTENTION + MIX_FFN, {}  # dropped: sanakit's default targets
    if not isinstance(preset, dict):
        raise SanakitError(f"{file}: apply_preset must be a JSON object, got {preset!r}")
    for name, value in preset.items():
        if name not in _PRESET_KEYS:
            raise SanakitError(f"{file}: unknown apply_preset key {name!r}")
        if name in ("target_name", "name_algo_map", "exclude_name"):
            if is_off(value):
                ctx.ignored(f"{key}.{name}", value, "empty")
            else:
                detail = "sanakit selects modules by class (target_module) only"
                ctx.unsupported(file, f"{key}.{name}", value, detail)
        elif name in ("use_fnmatch", "lora_prefix"):
            ctx.ignored(f"{key}.{name}", value, "only affects name matching / saved key names")
    enable_conv = as_bool(file, "apply_preset.enable_conv", preset.get("enable_conv", True))
    if "enable_conv" in preset:
        note = "true keeps the Mix-FFN 1x1 convolutions" if enable_conv else "drops convolutions"
        ctx.mapped(f"{key}.enable_conv", preset["enable_conv"], "train.lokr.target_modules", note)
    classes = preset.get("target_module", [])
    algo_map = preset.get("module_algo_map") or {}
    if isinstance(classes, str) or not isinstance(classes, list):
        raise SanakitError(f"{file}: apply_preset.target_module must be a list of class names")
    if not isinstance(algo_map, dict):
        raise SanakitError(f"{file}: apply_preset.module_algo_map must be a JSON object")
    known = sorted(set(CLASS_TARGETS) | set(UNSUPPORTED_CLASSES) | ABSENT_CLASSES)
    targets: list[str] = []
    overrides: dict[str, int | None] = {}
    for name in classes:
        where = f"{key}.target_module[{name}]"
        if name in CLASS_TARGETS:
            if name != "Attention" and enable_conv:
                detail = (
                    "sanakit cannot adapt the grouped 3x3 depthwise conv_depth of the Mix-FFN "
                    "(it adapts conv_inverted and conv_point); list 'Attention' alone"
                )
                ctx.unsupported(file, where, name, detail)
            mods = [m for m in CLASS_TARGETS[name] if enable_conv or m not in MIX_FFN]
            targets += [m for m in mods if m not in targets]
            ctx.mapped(where, name, "train.lokr.target_modules", f"-> {', '.join(mods)}")
            overrides[name] = _algo_override(file, name, algo_map.get(name, {}), ctx, label)
        elif name in UNSUPPORTED_CLASSES:
            detail = f"it targets {UNSUPPORTED_CLASSES[name]}; sanakit adapts blocks only"
            ctx.unsupported(file, where, name, detail)
        elif name in ABSENT_CLASSES or not difflib.get_close_matches(name, known, 1, 0.8):
            reason = (
                "no module of Sana has this class, so SimpleTuner wraps nothing for it either "
                "(Sana's FFN class is GLUMBConv)"
            )
            ctx.ignored(where, name, reason)
        else:
            near = difflib.get_close_matches(name, known, 1, 0.8)[0]
            raise SanakitError(
                f"{file}: apply_preset.target_module {name!r}; did you mean {near!r}?"
            )
    for name, value in algo_map.items():
        if name not in overrides:
            reason = "its class is not a targeted Sana class"
            ctx.ignored(f"{key}.module_algo_map.{name}", value, reason)
    if not targets:
        raise SanakitError(
            f"{file}: apply_preset.target_module {classes!r} matches no module of Sana "
            f'(SimpleTuner would train nothing); use ["Attention"]'
        )
    return tuple(targets), overrides


def _algo_override(file: Path, name: str, override: Any, ctx: Context, label: str) -> int | None:
    """module_algo_map[name] -> its factor (None if unset); other settings are unsupported."""
    if not isinstance(override, dict):
        raise SanakitError(f"{file}: apply_preset.module_algo_map.{name} must be a JSON object")
    key = f"{label}apply_preset.module_algo_map.{name}"
    factor = None
    for setting, value in override.items():
        if setting == "factor":
            factor = as_int(file, f"{key}.factor", value)
            ctx.mapped(f"{key}.factor", value, "train.lokr.factor", f"factor of {name} layers")
        elif setting == "algo" and str(value).lower() == "lokr":
            ctx.ignored(f"{key}.algo", value, "LoKr, as everywhere")
        else:
            detail = "sanakit applies one LoKr setting to all targets"
            ctx.unsupported(file, f"{key}.{setting}", value, detail)
    return factor
