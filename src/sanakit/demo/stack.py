"""The demo's tiny stack and the run configuration that wires it into the real trainer.

- text encoder: a BPE tokenizer trained in-process on the dataset's captions and the demo's
  short instruction (every caption word becomes one token), and a randomly initialised
  ``Gemma2Model`` (seeded) saved as ``text_encoder/`` + ``tokenizer/`` — the same folder layout
  a Sana pipeline has, so :class:`sanakit.text.TextEncoder` loads it the normal way;
- autoencoder: the parameter-free pixel-shuffle autoencoder (32x32x3 image -> 8x8x48 latent);
- transformer: the ``demo`` preset (:func:`sanakit.presets.demo`), patch 1;
- the ``RunConfig`` as a plain dict, written as TOML (:func:`sanakit.tomlwriter.dumps`) and
  read back through the strict loader, so ``DIR/config.toml`` is exactly what ran.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from sanakit.demo.shapes import BACKGROUNDS, COLORS, SHAPES, caption

# A short complex human instruction: the real prefix path runs, scaled to a 16-token window.
INSTRUCTION: tuple[str, ...] = (
    "Draw the picture the user prompt describes: one shape, its colour, the background.",
    "User Prompt: ",
)
STAMP = "demo-text-encoder.json"


@dataclass(frozen=True)
class TextStack:
    """Size of the random text encoder (Gemma-2 layout) and of its token window."""

    hidden_size: int = 64
    layers: int = 2
    heads: int = 2
    vocab_size: int = 256
    max_length: int = 16  # BOS + 15 tokens: the instruction's tail, the prompt, padding


def tokenizer_corpus(captions: list[str]) -> list[str]:
    """Training text of the demo tokenizer: the instruction, every caption of the dataset and
    every colour x shape x background caption (so prompts never fall back to characters)."""
    every = [caption(c, s, b) for c in COLORS for s in SHAPES for b in BACKGROUNDS]
    return ["\n".join(INSTRUCTION), *captions, *every]


def build_text_encoder(folder: Path, captions: list[str], stack: TextStack, seed: int) -> Path:
    """Writes ``folder/tokenizer`` and ``folder/text_encoder`` once; a stamp file records
    ``(stack, seed)`` and a folder with the same stamp is reused untouched (its file times are
    part of the cache's encoder key, so rebuilding would re-fingerprint the cache)."""
    from sanakit.tiny import build_text_model, build_tokenizer, save_text_components

    stamp = {"stack": stack.__dict__, "seed": seed, "instruction": list(INSTRUCTION)}
    stamp_path = folder / STAMP
    if stamp_path.is_file() and json.loads(stamp_path.read_text()) == stamp:
        return folder
    tokenizer = build_tokenizer(tokenizer_corpus(captions), vocab_size=stack.vocab_size)
    model = build_text_model(
        tokenizer.vocab_size,
        hidden_size=stack.hidden_size,
        layers=stack.layers,
        heads=stack.heads,
        seed=seed,
    )
    save_text_components(folder, tokenizer, model)
    stamp_path.write_text(json.dumps(stamp, indent=2))
    return folder
