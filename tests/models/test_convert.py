"""NVlabs .pth -> diffusers layout: exact outputs after conversion, architecture inference."""

from __future__ import annotations

import re

import pytest
import torch
from diffusers import SanaTransformer2DModel

from sanakit.cli import main
from sanakit.errors import SanakitError
from sanakit.models import SanaTransformer
from sanakit.models.config import ModelConfig

# A narrow model with the released 600M layout rules (width 1152 = 36 x 32, cross 16 x 72).
SMALL = ModelConfig(
    in_channels=8, out_channels=8, num_attention_heads=36, attention_head_dim=32, num_layers=2,
    num_cross_attention_heads=16, cross_attention_head_dim=72, cross_attention_dim=1152,
    caption_channels=16, sample_size=32,
)  # fmt: skip


def to_nvlabs(state: dict[str, torch.Tensor], guidance: bool) -> dict[str, torch.Tensor]:
    """The NVlabs naming of a diffusers-layout state dict (written from the NVlabs model code:
    fused attn.qkv and cross_attn.kv_linear, t_embedder.mlp.{0,2}, final_layer.*)."""
    out: dict[str, torch.Tensor] = {
        "pos_embed": torch.zeros(1),
        "y_embedder.y_embedding": torch.zeros(1),
    }
    flat = {
        "patch_embed.proj": "x_embedder.proj", "caption_projection.linear_1": "y_embedder.y_proj.fc1",
        "caption_projection.linear_2": "y_embedder.y_proj.fc2", "time_embed.linear": "t_block.1",
        "caption_norm": "attention_y_norm", "proj_out": "final_layer.linear",
    }  # fmt: skip
    block = {
        "attn1.to_out.0": "attn.proj", "attn1.norm_q": "attn.q_norm", "attn1.norm_k": "attn.k_norm",
        "attn2.to_q": "cross_attn.q_linear", "attn2.to_out.0": "cross_attn.proj",
        "attn2.norm_q": "cross_attn.q_norm", "attn2.norm_k": "cross_attn.k_norm",
        "ff.conv_inverted": "mlp.inverted_conv.conv", "ff.conv_depth": "mlp.depth_conv.conv",
        "ff.conv_point": "mlp.point_conv.conv",
    }  # fmt: skip
    for key, value in state.items():
        if key == "scale_shift_table":
            out["final_layer.scale_shift_table"] = value
            continue
        m = re.match(
            r"time_embed\.(?:emb\.)?(timestep|guidance)_embedder\.linear_(1|2)\.(\w+)", key
        )
        if m:
            name = "t_embedder" if m.group(1) == "timestep" else "cfg_embedder"
            out[f"{name}.mlp.{0 if m.group(2) == '1' else 2}.{m.group(3)}"] = value
            continue
        m = re.match(r"transformer_blocks\.(\d+)\.(.+)\.(weight|bias)$", key)
        if m:
            i, mod, param = m.groups()
            if mod in ("attn1.to_q", "attn1.to_k", "attn1.to_v"):
                if mod == "attn1.to_q":
                    parts = [state[f"transformer_blocks.{i}.attn1.to_{n}.{param}"] for n in "qkv"]
                    out[f"blocks.{i}.attn.qkv.{param}"] = torch.cat(parts)
                continue
            if mod in ("attn2.to_k", "attn2.to_v"):
                if mod == "attn2.to_k":
                    parts = [state[f"transformer_blocks.{i}.attn2.to_{n}.{param}"] for n in "kv"]
                    out[f"blocks.{i}.cross_attn.kv_linear.{param}"] = torch.cat(parts)
                continue
            out[f"blocks.{i}.{block[mod]}.{param}"] = value
            continue
        m = re.match(r"transformer_blocks\.(\d+)\.scale_shift_table$", key)
        if m:
            out[f"blocks.{m.group(1)}.scale_shift_table"] = value
            continue
        mod, _, param = key.rpartition(".")
        out[f"{flat[mod]}.{param}"] = value
    return out


@pytest.mark.parametrize("variant", ["sana", "sprint"])
def test_nvlabs_checkpoint_converts_exactly(tmp_path, capsys, variant) -> None:
    config = (
        SMALL
        if variant == "sana"
        else SMALL.replace(qk_norm="rms_norm_across_heads", guidance_embeds=True)
    )
    torch.manual_seed(0)
    original = SanaTransformer(config).eval()
    path = tmp_path / "Sana.pth"
    torch.save({"state_dict": to_nvlabs(original.state_dict(), config.guidance_embeds)}, path)
    assert main(["convert", str(path), "--out", str(tmp_path / "out"), "--dtype", "fp32"]) == 0
    assert "wrote" in capsys.readouterr().out
    converted = SanaTransformer2DModel.from_pretrained(
        tmp_path / "out"
    ).eval()  # diffusers loads it
    x, t, text = torch.randn(1, 8, 4, 4), torch.tensor([500.0]), torch.randn(1, 3, 16)
    guidance = torch.tensor([4.5]) if config.guidance_embeds else None
    with torch.no_grad():
        expected = original(x, t, text, guidance=guidance)
        got = converted(x, encoder_hidden_states=text, timestep=t, guidance=guidance).sample
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_not_a_sana_checkpoint(tmp_path, capsys) -> None:
    path = tmp_path / "x.pth"
    torch.save({"state_dict": {"foo": torch.zeros(1)}}, path)
    assert main(["convert", str(path), "--out", str(tmp_path / "o")]) == 2
    assert "no NVlabs Sana state dict" in capsys.readouterr().err
    with pytest.raises(SanakitError, match="no such checkpoint"):
        from sanakit.models.convert import load_nvlabs_checkpoint

        load_nvlabs_checkpoint(tmp_path / "missing.pth")
