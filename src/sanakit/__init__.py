"""sanakit: train, fine-tune, distil and run NVIDIA's Sana text-to-image models."""

from sanakit.errors import SanakitError

__version__ = "0.1.0"

__all__ = ["SanakitError", "__version__"]
