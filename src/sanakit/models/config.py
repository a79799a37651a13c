"""`ModelConfig`: the Sana transformer's hyper-parameters.

Field names and defaults are those of diffusers' ``SanaTransformer2DModel`` config, so a
diffusers ``config.json`` maps onto it one to one; the last two fields (``SANAKIT_FIELDS``) are
sanakit's own numerics, saved under ``_sanakit`` in the same file. Training settings such as
gradient checkpointing are not architecture and live on the model (``set_gradient_checkpointing``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from sanakit.errors import SanakitError

QK_NORMS = (None, "rms_norm_across_heads")

# diffusers config keys that carry no architecture information (bookkeeping written by
# ``save_pretrained``) and keys that exist in diffusers but must hold their default value
# for a Sana checkpoint; anything else unknown is an error.
_DIFFUSERS_BOOKKEEPING = {
    "_class_name",
    "_diffusers_version",
    "_name_or_path",
    "_use_default_values",
}
_DIFFUSERS_FIXED = {"dropout": 0.0, "norm_elementwise_affine": False}
# ModelConfig fields diffusers does not know (written under "_sanakit" in config.json).
SANAKIT_FIELDS = ("linear_attention_eps",)


@dataclass(frozen=True)
class ModelConfig:
    """Hyper-parameters of a Sana linear DiT (diffusers ``SanaTransformer2DModel`` names).

    Self-attention width is ``num_attention_heads * attention_head_dim`` (head dim 32 in every
    released model); cross-attention has its own head count and head dim.
    """

    in_channels: int = 32
    out_channels: int | None = 32
    num_attention_heads: int = 70
    attention_head_dim: int = 32
    num_layers: int = 20
    num_cross_attention_heads: int = 20
    cross_attention_head_dim: int = 112
    cross_attention_dim: int = 2240
    caption_channels: int = 2304
    mlp_ratio: float = 2.5
    attention_bias: bool = False
    sample_size: int = 32
    patch_size: int = 1
    norm_eps: float = 1e-6
    interpolation_scale: float | None = None
    guidance_embeds: bool = False
    guidance_embeds_scale: float = 0.1
    qk_norm: str | None = None
    timestep_scale: float = 1.0
    # sanakit's own fields (not in diffusers' config.json).
    linear_attention_eps: float = 1e-15

    def __post_init__(self) -> None:
        if self.qk_norm not in QK_NORMS:
            raise SanakitError(
                f"model.qk_norm={self.qk_norm!r} is not supported; use one of {QK_NORMS}"
            )
        if self.cross_attention_dim != self.hidden_size:
            raise SanakitError(
                f"model.cross_attention_dim ({self.cross_attention_dim}) must equal "
                f"num_attention_heads*attention_head_dim ({self.hidden_size}) in Sana"
            )
        if self.num_cross_attention_heads * self.cross_attention_head_dim != self.hidden_size:
            raise SanakitError(
                "model.num_cross_attention_heads*cross_attention_head_dim "
                f"({self.num_cross_attention_heads}*{self.cross_attention_head_dim}) must equal "
                f"the hidden size {self.hidden_size}"
            )
        if self.hidden_size % 4 != 0 and self.interpolation_scale is not None:
            raise SanakitError("model.interpolation_scale needs a hidden size divisible by 4")

    @property
    def hidden_size(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    @property
    def output_channels(self) -> int:
        return self.out_channels or self.in_channels

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    def to_diffusers(self) -> dict[str, Any]:
        """The ``config.json`` dict diffusers' ``SanaTransformer2DModel`` expects."""
        out: dict[str, Any] = {"_class_name": "SanaTransformer2DModel"}
        out.update({k: v for k, v in dataclasses.asdict(self).items() if k not in SANAKIT_FIELDS})
        out.update(_DIFFUSERS_FIXED)
        # sanakit-only numerics travel in the same file under a private key diffusers ignores.
        out["_sanakit"] = {k: getattr(self, k) for k in SANAKIT_FIELDS}
        return out

    @classmethod
    def from_diffusers(cls, config: dict[str, Any], *, source: str = "config.json") -> ModelConfig:
        """Build from a diffusers ``config.json`` dict; unknown keys are an error naming them."""
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in config.items():
            if key in _DIFFUSERS_BOOKKEEPING:
                continue
            if key == "_sanakit":
                kwargs.update({k: v for k, v in value.items() if k in names})
            elif key in _DIFFUSERS_FIXED:
                if value != _DIFFUSERS_FIXED[key]:
                    raise SanakitError(
                        f"{source}: {key}={value!r} is not supported (Sana uses {_DIFFUSERS_FIXED[key]!r})"
                    )
            elif key in names:
                kwargs[key] = value
            else:
                raise SanakitError(f"{source}: unknown transformer config key {key!r}")
        if kwargs.get("num_cross_attention_heads") is None:
            kwargs.pop("num_cross_attention_heads", None)
        # sanakit <= 0.1 saved NVlabs' timestep_norm_scale_factor f (the network divided its time
        # by f); the same model has timestep_scale / f.
        legacy = float(config.get("_sanakit", {}).get("timestep_norm_scale_factor", 1.0))
        if legacy != 1.0:
            kwargs["timestep_scale"] = kwargs.get("timestep_scale", 1.0) / legacy
        return cls(**kwargs)
