"""Convert an original NVlabs/Sana ``.pth`` checkpoint to sanakit's (= diffusers') layout.

NVlabs names (``x_embedder``, ``t_embedder.mlp``, ``blocks.N.attn.qkv``, ``cross_attn.kv_linear``,
``mlp.inverted_conv.conv``, ``final_layer``, ...) map to diffusers' ``SanaTransformer2DModel``
keys; fused q/k/v and k/v projections are split. The key map is the one diffusers'
``scripts/convert_sana_to_diffusers.py`` applies. The architecture is read off the tensors
(width, depth, qk-norm, guidance embedder); the cross-attention head split, which the shapes do
not determine, comes from the matching released model (1152 wide: 16 x 72, 2240 wide: 20 x 112).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from sanakit.errors import SanakitError
from sanakit.models.config import ModelConfig
from sanakit.models.sana import SanaTransformer

# width -> cross-attention heads x head dim of the released Sana models
_CROSS_HEADS = {1152: (16, 72), 2240: (20, 112)}
# checkpoint resolution -> positional-embedding interpolation scale (None: no PE)
INTERPOLATION = {512: None, 1024: None, 2048: 1.0, 4096: 2.0}
# NVlabs keys without a diffusers counterpart (buffers recomputed on the fly, unused heads)
_DROPPED = ("pos_embed", "y_embedder.y_embedding", "logvar_linear.weight", "logvar_linear.bias")

_FLAT = {
    "x_embedder.proj": "patch_embed.proj",
    "y_embedder.y_proj.fc1": "caption_projection.linear_1",
    "y_embedder.y_proj.fc2": "caption_projection.linear_2",
    "t_block.1": "time_embed.linear",
    "attention_y_norm": "caption_norm",
    "final_layer.linear": "proj_out",
    "final_layer.scale_shift_table": "scale_shift_table",
}
_BLOCK = {
    "attn.proj": "attn1.to_out.0",
    "attn.q_norm": "attn1.norm_q",
    "attn.k_norm": "attn1.norm_k",
    "cross_attn.q_linear": "attn2.to_q",
    "cross_attn.proj": "attn2.to_out.0",
    "cross_attn.q_norm": "attn2.norm_q",
    "cross_attn.k_norm": "attn2.norm_k",
    "mlp.inverted_conv.conv": "ff.conv_inverted",
    "mlp.depth_conv.conv": "ff.conv_depth",
    "mlp.point_conv.conv": "ff.conv_point",
}


def _rename(key: str, guidance: bool) -> str:
    for old, new in _FLAT.items():
        if key == old or key.startswith(old + "."):
            return new + key[len(old) :]
    m = re.match(r"(t_embedder|cfg_embedder)\.mlp\.(0|2)\.(weight|bias)$", key)
    if m:
        which = "timestep_embedder" if m.group(1) == "t_embedder" else "guidance_embedder"
        layer = "linear_1" if m.group(2) == "0" else "linear_2"
        prefix = "time_embed." if guidance else "time_embed.emb."
        return f"{prefix}{which}.{layer}.{m.group(3)}"
    m = re.match(r"blocks\.(\d+)\.(.+)$", key)
    if m:
        rest = m.group(2)
        if rest == "scale_shift_table":
            return f"transformer_blocks.{m.group(1)}.scale_shift_table"
        for old, new in _BLOCK.items():
            if rest.startswith(old + "."):
                return f"transformer_blocks.{m.group(1)}.{new}{rest[len(old) :]}"
    raise SanakitError(f"unknown NVlabs checkpoint key {key!r}; is this a Sana checkpoint?")


def convert_nvlabs_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """NVlabs Sana state dict -> diffusers/sanakit keys (q/k/v and k/v split)."""
    guidance = any(k.startswith("cfg_embedder.") for k in state)
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        if key in _DROPPED:
            continue
        m = re.match(r"blocks\.(\d+)\.(attn\.qkv|cross_attn\.kv_linear)\.(weight|bias)$", key)
        if m:
            block, kind, param = m.groups()
            if kind == "attn.qkv":
                names, parts = ("to_q", "to_k", "to_v"), torch.chunk(tensor, 3, dim=0)
                prefix = f"transformer_blocks.{block}.attn1"
            else:
                names, parts = ("to_k", "to_v"), torch.chunk(tensor, 2, dim=0)
                prefix = f"transformer_blocks.{block}.attn2"
            for name, part in zip(names, parts):
                out[f"{prefix}.{name}.{param}"] = part.clone()
            continue
        out[_rename(key, guidance)] = tensor
    return out


def infer_config(state: dict[str, torch.Tensor], resolution: int = 1024) -> ModelConfig:
    """The ModelConfig of a converted state dict, from its tensor shapes."""
    if resolution not in INTERPOLATION:
        raise SanakitError(f"--resolution {resolution}: use one of {sorted(INTERPOLATION)}")
    proj = state["patch_embed.proj.weight"]  # (C, C_in, p, p)
    width, in_channels, patch = proj.shape[0], proj.shape[1], proj.shape[-1]
    if width not in _CROSS_HEADS:
        raise SanakitError(f"hidden size {width} matches no released Sana model (1152 or 2240)")
    heads, head_dim = _CROSS_HEADS[width]
    layers = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("transformer_blocks."))
    mlp_hidden = state["transformer_blocks.0.ff.conv_point.weight"].shape[1]
    return ModelConfig(
        in_channels=in_channels,
        out_channels=state["proj_out.weight"].shape[0] // (patch * patch),
        num_attention_heads=width // 32,
        attention_head_dim=32,
        num_layers=layers,
        num_cross_attention_heads=heads,
        cross_attention_head_dim=head_dim,
        cross_attention_dim=width,
        caption_channels=state["caption_projection.linear_1.weight"].shape[1],
        mlp_ratio=mlp_hidden / width,
        attention_bias="transformer_blocks.0.attn1.to_q.bias" in state,
        sample_size=resolution // 32,
        patch_size=patch,
        interpolation_scale=INTERPOLATION[resolution],
        guidance_embeds="time_embed.guidance_embedder.linear_1.weight" in state,
        qk_norm="rms_norm_across_heads"
        if "transformer_blocks.0.attn1.norm_q.weight" in state
        else None,
    )


def load_nvlabs_checkpoint(
    path: str | Path, *, resolution: int = 1024, timestep_norm_scale_factor: float = 1.0
) -> SanaTransformer:
    """An NVlabs ``.pth`` (``{"state_dict": ...}`` or a bare state dict) as a SanaTransformer."""
    path = Path(path)
    if not path.is_file():
        raise SanakitError(f"{path}: no such checkpoint file")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (RuntimeError, OSError, ValueError) as err:
        raise SanakitError(f"{path}: not a readable PyTorch checkpoint ({err})") from err
    state = raw.get("state_dict", raw) if isinstance(raw, dict) else None
    if not isinstance(state, dict) or "x_embedder.proj.weight" not in state:
        raise SanakitError(f"{path}: no NVlabs Sana state dict (x_embedder.proj.weight missing)")
    converted = convert_nvlabs_state_dict(state)
    # NVlabs divides its [0, 1000) time by timestep_norm_scale_factor; diffusers' SanaPipeline
    # multiplies it by timestep_scale: the same model has timestep_scale = 1 / factor.
    config = infer_config(converted, resolution).replace(
        timestep_scale=1.0 / timestep_norm_scale_factor
    )
    with torch.device("meta"):
        model = SanaTransformer(config)
    expected = set(model.state_dict())
    missing, unexpected = expected - set(converted), set(converted) - expected
    if missing or unexpected:
        raise SanakitError(
            f"{path}: converted keys do not match the inferred model (missing {sorted(missing)[:3]}, "
            f"unexpected {sorted(unexpected)[:3]})"
        )
    model.load_state_dict(converted, strict=True, assign=True)
    return model
