"""Text conditioning for Sana: a Hugging Face decoder LM (Gemma-2-2b-it by default) as encoder.

Sana (Xie et al. 2024, §3.1) conditions on the last hidden states of a decoder-only LM. The
prompt is lower-cased, stripped and prefixed with a "complex human instruction" (CHI); the
tokenized sequence is right-padded to ``n_chi + max_length - 2`` tokens, and the features kept
are the BOS token plus the last ``max_length - 1`` positions, so the result always has
``max_length`` (300) tokens whatever the instruction length. Negative / empty prompts used for
classifier-free guidance are encoded *without* the instruction (the empty prompt leaves only
BOS unmasked). This reproduces ``diffusers.SanaPipeline.encode_prompt`` exactly.

``transformers`` is imported lazily (only by :meth:`TextEncoder.from_pretrained`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sanakit.errors import SanakitError

# The default complex human instruction, verbatim from diffusers' ``SanaPipeline.__call__``
# (same text as the official Sana inference configs).
DEFAULT_INSTRUCTION: tuple[str, ...] = (
    "Given a user prompt, generate an 'Enhanced prompt' that provides detailed visual descriptions suitable for image generation. Evaluate the level of detail in the user prompt:",
    "- If the prompt is simple, focus on adding specifics about colors, shapes, sizes, textures, and spatial relationships to create vivid and concrete scenes.",
    "- If the prompt is already detailed, refine and enhance the existing details slightly without overcomplicating.",
    "Here are examples of how to transform or refine prompts:",
    "- User Prompt: A cat sleeping -> Enhanced: A small, fluffy white cat curled up in a round shape, sleeping peacefully on a warm sunny windowsill, surrounded by pots of blooming red flowers.",
    "- User Prompt: A busy city street -> Enhanced: A bustling city street scene at dusk, featuring glowing street lamps, a diverse crowd of people in colorful clothing, and a double-decker bus passing by towering glass skyscrapers.",
    "Please generate only the enhanced description for the prompt below and avoid including any additional commentary or evaluations:",
    "User Prompt: ",
)

# Config keys that do not change the hidden states (paths, versions, bookkeeping, dtype which is
# hashed separately) and are left out of the fingerprint so a saved/reloaded model keeps its key.
_CONFIG_KEYS_IGNORED = frozenset(
    {"architectures", "dtype", "torch_dtype", "transformers_version", "use_cache", "return_dict"}
)
_FINGERPRINT_VERSION = 1
_SAMPLE_PER_TENSOR = 1024


def weights_checksum(module: nn.Module) -> str:
    """A cheap, exact checksum of a module's state dict (hex sha256), fit for a cache key.

    For every tensor (sorted by name) it hashes the name, shape, dtype, the wrap-around int64
    sum of its raw bytes read as 64-bit words (integer addition is associative, so the result
    is the same on any device or thread count, unlike a float sum) and up to 1024 evenly
    strided words (position-sensitive). One vectorised pass: ~0.1 s per GB on a CPU.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}|".encode())
        if tensor.is_meta or tensor.numel() == 0:
            continue
        raw = tensor.detach().reshape(-1).contiguous().view(torch.uint8)
        if raw.storage_offset() % 8:
            raw = raw.clone()  # int64 views need 8-byte alignment
        n_words = raw.numel() // 8
        words = raw[: n_words * 8].view(torch.int64)
        step = max(1, n_words // _SAMPLE_PER_TENSOR)
        digest.update(str(int(words.sum())).encode())
        digest.update(words[::step][:_SAMPLE_PER_TENSOR].cpu().numpy().tobytes())
        digest.update(raw[n_words * 8 :].cpu().numpy().tobytes())
    return digest.hexdigest()


def _normalize_instruction(instruction: Sequence[str] | str | None) -> tuple[str, ...] | None:
    """``None`` or an empty list disables the instruction; a string is one line."""
    if instruction is None:
        return None
    lines = (instruction,) if isinstance(instruction, str) else tuple(instruction)
    if not lines:
        return None
    if not all(isinstance(line, str) for line in lines):
        raise SanakitError("text instruction: every line must be a string; pass a list of str")
    return lines


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _preprocess(prompt: str) -> str:
    """Caption preprocessing of ``SanaPipeline`` with ``clean_caption=False``."""
    if not isinstance(prompt, str):
        raise SanakitError(f"prompt must be a string, got {type(prompt).__name__}")
    return prompt.lower().strip()


class TextEncoder:
    """Encodes prompts into Sana's text conditioning ``(embeds (B, L, C), mask (B, L))``.

    Args:
        model: a Hugging Face decoder LM (``transformers.AutoModel``, e.g. ``Gemma2Model``);
            a ``*ForCausalLM`` is accepted and its base decoder used. Put in eval mode and
            frozen (``requires_grad_(False)``): Sana never trains its text encoder.
        tokenizer: the matching tokenizer; right padding is used whatever its default.
        instruction: complex human instruction lines (joined with ``"\\n"`` and prepended to
            every prompt); ``None`` or ``[]`` disables it.
        max_length: number of text tokens L kept per prompt (300 for Sana).
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        *,
        instruction: Sequence[str] | str | None = DEFAULT_INSTRUCTION,
        max_length: int = 300,
    ) -> None:
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
            raise SanakitError(f"text max_length must be an integer >= 2, got {max_length!r}")
        base = getattr(model, "base_model", model)
        self._model = base.eval().requires_grad_(False)
        self._tokenizer = tokenizer
        self._instruction = _normalize_instruction(instruction)
        self._max_length = max_length
        # Tokens of the instruction alone, BOS included (diffusers: len(tokenizer.encode(chi))).
        self._num_instruction_tokens = (
            len(tokenizer(self.instruction_text)["input_ids"]) if self._instruction else 0
        )

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        dtype: torch.dtype = torch.bfloat16,
        device: str | torch.device = "cpu",
        instruction: Sequence[str] | str | None = DEFAULT_INSTRUCTION,
        max_length: int = 300,
    ) -> TextEncoder:
        """Loads from a pipeline folder (``text_encoder/`` + ``tokenizer/``) or a folder holding
        both the model (``config.json`` + weights) and tokenizer files. Never downloads."""
        from transformers import AutoModel, AutoTokenizer

        root = Path(path)
        if not root.is_dir():
            raise SanakitError(
                f"{root}: text encoder folder not found; pass a Sana pipeline folder"
            )
        if (root / "text_encoder").is_dir():
            model_dir, tok_dir = root / "text_encoder", root / "tokenizer"
            if not tok_dir.is_dir():
                raise SanakitError(
                    f"{tok_dir}: tokenizer folder missing next to text_encoder/; copy it from "
                    "the model's pipeline folder"
                )
        elif (root / "config.json").is_file():
            model_dir = tok_dir = root
        else:
            raise SanakitError(
                f"{root}: no text_encoder/ subfolder and no config.json; pass a Sana pipeline "
                "folder or a folder holding a language model and its tokenizer"
            )
        tok_files = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")
        if not any((tok_dir / name).is_file() for name in tok_files):
            raise SanakitError(f"{tok_dir}: no tokenizer files (tokenizer.json or tokenizer.model)")
        try:
            tokenizer = AutoTokenizer.from_pretrained(tok_dir, local_files_only=True)
        except (OSError, ValueError) as err:
            raise SanakitError(f"{tok_dir}: cannot load the tokenizer: {_first_line(err)}") from err
        try:
            model = AutoModel.from_pretrained(model_dir, dtype=dtype, local_files_only=True)
        except (OSError, ValueError) as err:
            raise SanakitError(
                f"{model_dir}: cannot load the text encoder: {_first_line(err)}"
            ) from err
        encoder = cls(model, tokenizer, instruction=instruction, max_length=max_length)
        return encoder.to(device, dtype)  # explicit cast: older transformers ignore `dtype=`

    # ------------------------------------------------------------------ properties
    @property
    def model(self) -> nn.Module:
        return self._model

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    @property
    def instruction(self) -> tuple[str, ...] | None:
        return self._instruction

    @property
    def instruction_text(self) -> str:
        """The prefix added to every prompt: ``"\\n".join(lines)`` ("" when disabled)."""
        return "\n".join(self._instruction) if self._instruction else ""

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def hidden_size(self) -> int:
        """C, the feature width (Gemma-2-2b: 2304); the transformer's ``caption_channels``."""
        return int(self._model.config.hidden_size)

    @property
    def device(self) -> torch.device:
        return next(self._model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self._model.parameters()).dtype

    def to(
        self, device: str | torch.device | None = None, dtype: torch.dtype | None = None
    ) -> TextEncoder:
        """Moves/casts the language model in place; returns ``self``."""
        self._model.to(device=device, dtype=dtype)
        return self

    # ------------------------------------------------------------------ encoding
    def _run(
        self, texts: list[str], total_length: int, select: torch.Tensor | None, batch_size: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokenizes ``texts`` right-padded/truncated to ``total_length``, runs the LM in chunks
        of ``batch_size`` and keeps the ``select`` positions. Returns ((B, L, C), (B, L))."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise SanakitError(f"text batch_size must be a positive integer, got {batch_size!r}")
        device = self.device
        length = total_length if select is None else len(select)
        if not texts:
            empty = torch.empty(0, length, self.hidden_size, dtype=self.dtype, device=device)
            return empty, torch.empty(0, length, dtype=torch.int64, device=device)
        embeds, masks = [], []
        with torch.no_grad():
            for start in range(0, len(texts), batch_size):
                tokens = self._tokenizer(
                    texts[start : start + batch_size],
                    padding="max_length",
                    max_length=total_length,
                    truncation=True,
                    add_special_tokens=True,
                    padding_side="right",
                    return_tensors="pt",
                )
                ids = tokens["input_ids"].to(device)
                mask = tokens["attention_mask"].to(device=device, dtype=torch.int64)
                hidden = self._model(input_ids=ids, attention_mask=mask, use_cache=False)
                hidden = hidden.last_hidden_state.to(self.dtype)  # (b, total_length, C)
                if select is not None:
                    index = select.to(device)
                    hidden, mask = hidden[:, index], mask[:, index]  # (b, L, C), (b, L)
                embeds.append(hidden)
                masks.append(mask)
        return torch.cat(embeds), torch.cat(masks)

    def encode(
        self, prompts: Sequence[str] | str, *, batch_size: int = 16
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Encodes prompts with the instruction (if enabled).

        Returns ``embeds`` (B, max_length, C) in the encoder dtype and ``mask`` (B, max_length)
        int64 (1 = real token), both on the encoder device. With the instruction the text is
        ``"\\n".join(lines) + prompt.lower().strip()`` tokenized to ``n_chi + max_length - 2``
        tokens, of which BOS and the last ``max_length - 1`` positions are kept (Sana §3.1).
        """
        texts = [_preprocess(p) for p in ([prompts] if isinstance(prompts, str) else prompts)]
        if not self._instruction:
            return self._run(texts, self._max_length, None, batch_size)
        total = self._num_instruction_tokens + self._max_length - 2
        # Positions [0, -(L-1), ..., -1]: BOS + the last L-1 tokens of the padded sequence.
        select = torch.tensor([0, *range(-self._max_length + 1, 0)], dtype=torch.long)
        texts = [self.instruction_text + text for text in texts]
        return self._run(texts, total, select, batch_size)

    def encode_negative(
        self, prompts: Sequence[str] | str, *, batch_size: int = 16
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Encodes negative prompts for classifier-free guidance: *no* instruction, plain
        ``max_length`` tokens (as ``SanaPipeline`` does with ``complex_human_instruction=False``).
        Returns ((B, max_length, C), (B, max_length) int64)."""
        texts = [_preprocess(p) for p in ([prompts] if isinstance(prompts, str) else prompts)]
        return self._run(texts, self._max_length, None, batch_size)

    def encode_empty(self, batch: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """The empty prompt ``""`` without instruction (only BOS unmasked), repeated ``batch``
        times: the unconditional input of classifier-free guidance. ((B, L, C), (B, L))."""
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 0:
            raise SanakitError(f"encode_empty batch must be a non-negative integer, got {batch!r}")
        embeds, mask = self.encode_negative([""])
        return embeds.expand(batch, -1, -1).clone(), mask.expand(batch, -1).clone()

    # ------------------------------------------------------------------ cache key
    def _tokenizer_digest(self) -> str:
        backend = getattr(self._tokenizer, "backend_tokenizer", None)
        if backend is not None:
            spec = json.loads(backend.to_str())
            # Padding/truncation state is mutated by every call; it is not part of identity.
            spec.pop("padding", None)
            spec.pop("truncation", None)
            text = json.dumps(spec, sort_keys=True)
        else:
            text = json.dumps(sorted(self._tokenizer.get_vocab().items()))
        special = json.dumps(getattr(self._tokenizer, "special_tokens_map", {}), sort_keys=True)
        return hashlib.sha256((text + special).encode()).hexdigest()

    def fingerprint(self) -> str:
        """A 16-hex-digit key of everything that changes :meth:`encode`'s output: encoder
        class, config, weights checksum, dtype, attention implementation, instruction text,
        max_length, tokenizer definition and the preprocessing/selection rules."""
        config = self._model.config.to_dict()
        config = {
            k: v
            for k, v in config.items()
            if not k.startswith("_") and k not in _CONFIG_KEYS_IGNORED
        }
        record = {
            "version": _FINGERPRINT_VERSION,
            "encoder": type(self._model).__name__,
            "config": config,
            "attn": getattr(self._model.config, "_attn_implementation", None),
            "weights": weights_checksum(self._model),
            "dtype": str(self.dtype),
            "instruction": self.instruction_text if self._instruction else None,
            "max_length": self._max_length,
            "tokenizer": self._tokenizer_digest(),
            "rules": "lower-strip; right-pad; bos+last(L-1) with instruction",
        }
        blob = json.dumps(record, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]
