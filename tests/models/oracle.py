"""diffusers as a test-only oracle: build its SanaTransformer2DModel from our ModelConfig."""

from __future__ import annotations

from diffusers import SanaTransformer2DModel

from sanakit.models import ModelConfig


def diffusers_kwargs(config: ModelConfig) -> dict:
    return {k: v for k, v in config.to_diffusers().items() if not k.startswith("_")}


def diffusers_model(config: ModelConfig) -> SanaTransformer2DModel:
    return SanaTransformer2DModel(**diffusers_kwargs(config))
