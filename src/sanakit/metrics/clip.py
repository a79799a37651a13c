"""CLIP score with a local transformers ``CLIPModel`` folder.

CLIP score (Hessel et al. 2021, "CLIPScore", with w = 100 as in torchmetrics' ``CLIPScore``):
``score(I, C) = 100 * max(cos(E_I, E_C), 0)`` with ``E_I`` / ``E_C`` CLIP's projected image / text
embeddings. The model and its preprocessing are transformers' (``CLIPModel``, ``CLIPProcessor``):
images are resized, centre-cropped and normalised by the folder's processor config, captions are
tokenized and cut at the text model's ``max_position_embeddings`` (77 for OpenAI CLIP) tokens.

torchmetrics' ``CLIPScore`` is not used: torchmetrics 1.9 divides ``get_image_features()`` by its
norm, and with transformers 5.x that call returns a ``BaseModelOutputWithPooling`` (the
projection in ``pooler_output``) rather than a tensor, so it fails; it also only reports the mean.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from sanakit.errors import SanakitError

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
HOW_TO_GET = (
    "save one locally, e.g. `hf download openai/clip-vit-large-patch14 --local-dir DIR` "
    "on a machine with internet, and pass DIR"
)


def clip_score_from_embeddings(images: torch.Tensor, texts: torch.Tensor) -> torch.Tensor:
    """(N, D), (N, D) -> (N,): ``100 * max(cos(image_n, text_n), 0)`` per pair."""
    cos = F.cosine_similarity(images.float(), texts.float(), dim=-1)
    return 100.0 * cos.clamp(min=0.0)


def check_clip_folder(path: str | Path, what: str = "clip_model") -> Path:
    """The folder of a local CLIP model, or a one-line error naming the missing file."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise SanakitError(f"{what} {folder}: no such folder; {HOW_TO_GET}")
    if not (folder / "config.json").is_file():
        raise SanakitError(f"{what} {folder}: no config.json; {HOW_TO_GET}")
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        raise SanakitError(
            f"{what} {folder}: no weights ({' or '.join(WEIGHT_FILES)}); {HOW_TO_GET}"
        )
    if not any(
        (folder / n).is_file() for n in ("preprocessor_config.json", "processor_config.json")
    ):
        raise SanakitError(
            f"{what} {folder}: no preprocessor_config.json / processor_config.json (the image "
            f"preprocessing); {HOW_TO_GET}"
        )
    return folder


def _pooled(output: torch.Tensor | object) -> torch.Tensor:
    """transformers 4.x returns the projected features; 5.x a ``BaseModelOutputWithPooling``
    whose ``pooler_output`` holds them."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output  # type: ignore[attr-defined]


class ClipModel:
    """A local CLIP: projected image and text embeddings, and the CLIP score of pairs."""

    def __init__(self, model: torch.nn.Module, processor: object, path: Path) -> None:
        self.model = model.eval()
        self.processor = processor
        self.path = path
        text_config = getattr(model.config, "text_config", None)
        self.max_tokens = int(getattr(text_config, "max_position_embeddings", 77))

    @classmethod
    def load(
        cls, path: str | Path, *, device: str | torch.device = "cpu", what: str = "clip_model"
    ) -> ClipModel:
        """Loads ``path`` (checked by :func:`check_clip_folder`) in fp32; never downloads."""
        folder = check_clip_folder(path, what)
        from transformers import CLIPModel, CLIPProcessor

        try:
            model = CLIPModel.from_pretrained(folder, local_files_only=True)
            processor = CLIPProcessor.from_pretrained(folder, local_files_only=True)
        except (OSError, ValueError, KeyError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise SanakitError(f"{what} {folder}: not a loadable CLIP model ({first})") from err
        return cls(model.to(device), processor, folder)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.inference_mode()
    def image_embeddings(self, images: Sequence[Image.Image], batch_size: int = 32) -> torch.Tensor:
        """(N, D) projected image embeddings (not normalised), fp32 on the CPU."""
        out = []
        for start in range(0, len(images), batch_size):
            chunk = [im.convert("RGB") for im in images[start : start + batch_size]]
            pixels = self.processor(images=chunk, return_tensors="pt")["pixel_values"]
            feats = self.model.get_image_features(pixel_values=pixels.to(self.device))
            out.append(_pooled(feats).float().cpu())
        return torch.cat(out) if out else torch.zeros(0, self.model.config.projection_dim)

    @torch.inference_mode()
    def text_embeddings(self, texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        """(N, D) projected text embeddings (not normalised); texts cut at ``max_tokens``."""
        out = []
        for start in range(0, len(texts), batch_size):
            tokens = self.processor(
                text=list(texts[start : start + batch_size]),
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=self.max_tokens,
            )
            feats = self.model.get_text_features(
                input_ids=tokens["input_ids"].to(self.device),
                attention_mask=tokens["attention_mask"].to(self.device),
            )
            out.append(_pooled(feats).float().cpu())
        return torch.cat(out) if out else torch.zeros(0, self.model.config.projection_dim)

    def score(
        self, images: Sequence[Image.Image], texts: Sequence[str], batch_size: int = 32
    ) -> torch.Tensor:
        """(N,) CLIP score of image n against text n (:func:`clip_score_from_embeddings`)."""
        if len(images) != len(texts):
            raise SanakitError(
                f"CLIP score needs one text per image, got {len(texts)} for {len(images)}"
            )
        return clip_score_from_embeddings(
            self.image_embeddings(images, batch_size), self.text_embeddings(texts, batch_size)
        )
