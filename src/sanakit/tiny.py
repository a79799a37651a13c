"""Tiny random stand-ins for Sana's text encoder, tokenizer and DC-AE, built in-process.

Used by the tests and by ``sanakit demo``: nothing is downloaded. The tokenizer is a real BPE
tokenizer (``tokenizers``) with Gemma's special-token ids (pad 0, eos 1, bos 2, unk 3) and a
``<bos> $A`` template, wrapped in ``transformers.PreTrainedTokenizerFast``; the text model is a
randomly initialised ``Gemma2Model`` (eager attention); the autoencoder is a randomly
initialised ``diffusers.AutoencoderDC`` with the real 32x downsampling contract.
"""

from __future__ import annotations

import random
import string
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from sanakit.errors import SanakitError
from sanakit.text import DEFAULT_INSTRUCTION

if TYPE_CHECKING:
    from diffusers import AutoencoderDC
    from transformers import Gemma2Model, PreTrainedTokenizerFast

SPECIAL_TOKENS: tuple[str, ...] = ("<pad>", "<eos>", "<bos>", "<unk>")  # ids 0, 1, 2, 3
PAD_ID, EOS_ID, BOS_ID, UNK_ID = 0, 1, 2, 3

COLORS = (
    "red", "green", "blue", "yellow", "orange", "purple", "pink", "brown", "black", "white",
    "gray", "cyan", "magenta", "golden", "silver", "teal",
)  # fmt: skip
SHAPES = (
    "circle", "square", "triangle", "star", "hexagon", "diamond", "ring", "cross", "heart",
    "rectangle", "oval", "pentagon",
)  # fmt: skip
OBJECTS = (
    "cat", "dog", "bird", "horse", "fish", "car", "bus", "boat", "tree", "flower", "house",
    "castle", "mountain", "river", "lake", "cloud", "moon", "sun", "apple", "banana", "cup",
    "chair", "table", "lamp", "book", "clock", "robot", "dragon", "bicycle", "train", "bridge",
    "street", "city", "forest", "garden", "window", "hat", "umbrella", "guitar", "kite",
)  # fmt: skip
ADJECTIVES = (
    "small", "large", "tiny", "huge", "bright", "dark", "shiny", "fluffy", "old", "new",
    "glowing", "wooden", "metal", "glass", "soft", "striped", "dotted", "smooth", "rough",
    "round", "tall", "short", "happy", "quiet", "busy",
)  # fmt: skip
PLACES = (
    "above", "below", "next to", "behind", "in front of", "inside", "on top of", "near",
    "to the left of", "to the right of",
)  # fmt: skip
SCENES = (
    "on a white background", "at sunset", "at night", "in the rain", "in a snowy field",
    "on a sunny beach", "in a dense forest", "in a busy city", "under a blue sky",
    "in a quiet room", "in watercolor style", "as a pencil sketch", "in pixel art style",
    "as an oil painting", "in a photo",
)  # fmt: skip


def default_corpus(num_sentences: int = 600, seed: int = 0) -> list[str]:
    """A deterministic English corpus (~6k words) of captions built from colour / shape /
    object / adjective / position word lists, plus the default complex human instruction so
    its words get real tokens."""
    rng = random.Random(seed)
    sentences = ["\n".join(DEFAULT_INSTRUCTION)]
    for _ in range(num_sentences):
        first = f"{rng.choice(ADJECTIVES)} {rng.choice(COLORS)} {rng.choice(SHAPES + OBJECTS)}"
        second = f"{rng.choice(COLORS)} {rng.choice(SHAPES + OBJECTS)}"
        caption = f"a {first} {rng.choice(PLACES)} a {second} {rng.choice(SCENES)}"
        sentences.append(caption.capitalize() + "." if rng.random() < 0.3 else caption)
    return sentences


def build_tokenizer(
    texts: list[str] | None = None, vocab_size: int = 1000
) -> PreTrainedTokenizerFast:
    """Trains a BPE tokenizer on ``texts`` (default: :func:`default_corpus`).

    Metaspace pre-tokenizer, printable ASCII + newline as the base alphabet (so any English
    prompt tokenizes without ``<unk>``), special ids pad 0 / eos 1 / bos 2 / unk 3, every
    sequence prefixed by ``<bos>``, right padding. Deterministic for the same inputs; saves
    and loads offline with ``save_pretrained`` / ``AutoTokenizer.from_pretrained``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = default_corpus() if texts is None else list(texts)
    if not corpus:
        raise SanakitError("build_tokenizer: the training text list is empty; pass some captions")
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=sorted(set(string.printable) | {"\u2581"}),
        show_progress=False,
    )
    backend.train_from_iterator(corpus, trainer=trainer)
    backend.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A <bos> $B", special_tokens=[("<bos>", BOS_ID)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        eos_token="<eos>",
        bos_token="<bos>",
        unk_token="<unk>",
        padding_side="right",
    )


def build_text_model(
    vocab_size: int,
    hidden_size: int = 32,
    layers: int = 2,
    heads: int = 2,
    seed: int = 0,
) -> Gemma2Model:
    """A random ``transformers.Gemma2Model`` (eager attention, Gemma's special ids), in fp32.

    Head dim = hidden_size / heads, MLP width 2·hidden_size, 2048 positions (room for the
    instruction + 300 tokens). Weights depend only on ``seed`` (the global RNG is untouched).
    """
    from transformers import Gemma2Config, Gemma2Model

    if hidden_size % heads:
        raise SanakitError(f"build_text_model: hidden_size {hidden_size} not divisible by {heads}")
    config = Gemma2Config(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        head_dim=hidden_size // heads,
        max_position_embeddings=2048,
        pad_token_id=PAD_ID,
        eos_token_id=EOS_ID,
        bos_token_id=BOS_ID,
    )
    config._attn_implementation = "eager"  # Gemma2 here supports only eager (DESIGN pitfalls)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Gemma2Model(config)
    return model.eval()


def build_dc_autoencoder(
    seed: int = 0, latent_channels: int = 4, channels: int = 8
) -> AutoencoderDC:
    """A random ``diffusers.AutoencoderDC`` with the real DC-AE contract: 6 stages, so a
    32x spatial downsampling, 3 image channels, ``latent_channels`` latent channels, an
    EfficientViT (linear attention) block in the deepest stage and Sana's
    ``scaling_factor`` 0.41407. ~30k parameters with the defaults; fp32."""
    from diffusers import AutoencoderDC

    if channels % latent_channels or channels % 4:
        raise SanakitError(
            f"build_dc_autoencoder: channels {channels} must be a multiple of 4 and of "
            f"latent_channels {latent_channels}"
        )
    blocks = ("ResBlock",) * 5 + ("EfficientViTBlock",)
    scales = ((),) * 5 + ((5,),)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = AutoencoderDC(
            in_channels=3,
            latent_channels=latent_channels,
            attention_head_dim=4,
            encoder_block_types=blocks,
            decoder_block_types=blocks,
            encoder_block_out_channels=(channels,) * 6,
            decoder_block_out_channels=(channels,) * 6,
            encoder_layers_per_block=(1,) * 6,
            decoder_layers_per_block=(1,) * 6,
            encoder_qkv_multiscales=scales,
            decoder_qkv_multiscales=scales,
            scaling_factor=0.41407,
        )
    return vae.eval()


def save_text_components(
    folder: str | Path, tokenizer: PreTrainedTokenizerFast, model: torch.nn.Module
) -> Path:
    """Writes ``folder/tokenizer/`` and ``folder/text_encoder/`` (diffusers pipeline layout),
    loadable by :meth:`sanakit.text.TextEncoder.from_pretrained`. Returns ``folder``."""
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(root / "tokenizer")
    model.save_pretrained(root / "text_encoder")
    return root
