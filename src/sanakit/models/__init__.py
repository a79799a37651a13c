"""The Sana linear diffusion transformer (diffusers-compatible) and its checkpoint I/O."""

from sanakit.models.config import ModelConfig
from sanakit.models.io import load_transformer, save_transformer
from sanakit.models.sana import SanaTransformer

__all__ = ["ModelConfig", "SanaTransformer", "load_transformer", "save_transformer"]
