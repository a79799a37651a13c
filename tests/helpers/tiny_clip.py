"""Write a random CLIP model folder (transformers ``CLIPModel`` + ``CLIPProcessor``) for tests and
benchmarks: a byte-level BPE tokenizer with no merges (every character one token), a
``CLIPImageProcessor`` at ``image_size`` and random weights from ``seed``. Nothing is downloaded;
the folder loads with ``CLIPModel.from_pretrained(folder)`` like a downloaded
``openai/clip-vit-base-patch32``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table (CLIP's tokenizer uses it)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    chars, extra = list(printable), 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


def write_tiny_clip(
    folder: str | Path,
    *,
    hidden_size: int = 32,
    layers: int = 2,
    heads: int = 2,
    image_size: int = 32,
    patch_size: int = 8,
    projection_dim: int = 16,
    seed: int = 0,
    full_size: bool = False,
) -> Path:
    """A random CLIP at ``folder`` (created); the same arguments write the same weights.
    ``full_size``: transformers' default ``CLIPConfig`` sizes (OpenAI ViT-B/32: 224 px images,
    12-layer 768-wide vision and 512-wide text towers, 512-d projections) instead of the tiny
    ones, for benchmarks."""
    from transformers import (
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPProcessor,
        CLIPTokenizer,
    )

    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    chars = list(_bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars + [c + "</w>" for c in chars])}
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    (root / "vocab.json").write_text(json.dumps(vocab))
    (root / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(root / "vocab.json"), str(root / "merges.txt"))
    eos = vocab["<|endoftext|>"]
    special = {
        "vocab_size": len(vocab),
        "bos_token_id": vocab["<|startoftext|>"],
        "eos_token_id": eos,
        "pad_token_id": eos,
    }
    config = (
        CLIPConfig(text_config=special)
        if full_size
        else CLIPConfig(
            text_config={
                "vocab_size": len(vocab),
                "hidden_size": hidden_size,
                "intermediate_size": 2 * hidden_size,
                "num_hidden_layers": layers,
                "num_attention_heads": heads,
                "max_position_embeddings": 77,
                "bos_token_id": vocab["<|startoftext|>"],
                "eos_token_id": eos,
                "pad_token_id": eos,
            },
            vision_config={
                "hidden_size": hidden_size,
                "intermediate_size": 2 * hidden_size,
                "num_hidden_layers": layers,
                "num_attention_heads": heads,
                "image_size": image_size,
                "patch_size": patch_size,
            },
            projection_dim=projection_dim,
        )
    )
    torch.manual_seed(seed)
    CLIPModel(config).save_pretrained(root)
    side = config.vision_config.image_size
    images = CLIPImageProcessor(
        size={"shortest_edge": side}, crop_size={"height": side, "width": side}
    )
    CLIPProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(root)
    return root
