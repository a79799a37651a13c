"""TextEncoder against diffusers' SanaPipeline.encode_prompt (oracle), on tiny random parts."""

from __future__ import annotations

import inspect

import pytest
import torch
from diffusers import DPMSolverMultistepScheduler, SanaPipeline, SanaTransformer2DModel

from sanakit.errors import SanakitError
from sanakit.text import DEFAULT_INSTRUCTION, TextEncoder, weights_checksum
from sanakit.tiny import (
    build_dc_autoencoder,
    build_text_model,
    build_tokenizer,
    save_text_components,
)

HIDDEN = 32
PROMPTS = [
    "A small red circle above a blue square",
    "  a fluffy WHITE cat sleeping on a warm windowsill  ",
    "dragon",
]
# ~60 tokens: longer than the small max_length below, so truncation/selection is exercised.
LONG_PROMPT = " ".join(["a huge glowing purple hexagon next to a wooden chair at night"] * 6)


@pytest.fixture(scope="module")
def parts():
    tokenizer = build_tokenizer()
    model = build_text_model(tokenizer.vocab_size, hidden_size=HIDDEN, seed=0)
    return model, tokenizer  # TextEncoder's argument order


@pytest.fixture(scope="module")
def pipe(parts):
    model, tokenizer = parts
    transformer = SanaTransformer2DModel(
        in_channels=4,
        out_channels=4,
        num_attention_heads=2,
        attention_head_dim=8,
        num_layers=1,
        num_cross_attention_heads=2,
        cross_attention_head_dim=8,
        cross_attention_dim=16,
        caption_channels=HIDDEN,
        sample_size=32,
    )
    scheduler = DPMSolverMultistepScheduler(
        flow_shift=3.0, use_flow_sigmas=True, prediction_type="flow_prediction"
    )
    return SanaPipeline(
        tokenizer=tokenizer,
        text_encoder=model,
        vae=build_dc_autoencoder(latent_channels=4),
        transformer=transformer,
        scheduler=scheduler,
    )


def oracle(pipe, prompts, instruction, max_length=300, negative=""):
    with torch.no_grad():
        return pipe.encode_prompt(
            prompts,
            do_classifier_free_guidance=True,
            negative_prompt=negative,
            device=torch.device("cpu"),
            max_sequence_length=max_length,
            complex_human_instruction=instruction,
        )


def assert_same(ours, theirs):
    embeds, mask = ours
    ref_embeds, ref_mask = theirs
    assert embeds.shape == ref_embeds.shape and embeds.dtype == ref_embeds.dtype
    assert mask.dtype == torch.int64 and torch.equal(mask, ref_mask.to(torch.int64))
    torch.testing.assert_close(embeds, ref_embeds, rtol=0, atol=0)


def test_default_instruction_is_the_pipelines():
    default = inspect.signature(SanaPipeline.__call__).parameters["complex_human_instruction"]
    assert list(DEFAULT_INSTRUCTION) == default.default


def test_encode_with_default_instruction_matches_diffusers(parts, pipe):
    encoder = TextEncoder(*parts)
    ref = oracle(pipe, PROMPTS, list(DEFAULT_INSTRUCTION))
    ours = encoder.encode(PROMPTS)
    assert ours[0].shape == (3, 300, HIDDEN)
    assert_same(ours, ref[:2])
    # The instruction changes the features of the kept prompt tokens.
    plain = TextEncoder(*parts, instruction=None).encode(PROMPTS)
    assert not torch.allclose(ours[0], plain[0])
    # Chunked batching gives the same result up to float reassociation.
    chunked = encoder.encode(PROMPTS, batch_size=1)
    assert torch.equal(chunked[1], ours[1])
    torch.testing.assert_close(chunked[0], ours[0], rtol=1e-5, atol=1e-5)
    # Unconditional branch: "" without instruction, only BOS unmasked.
    empty = encoder.encode_empty(len(PROMPTS))
    assert_same(empty, ref[2:])
    assert empty[1].sum(dim=1).tolist() == [1, 1, 1] and empty[1][:, 0].tolist() == [1, 1, 1]


def test_encode_with_custom_instruction_and_negative_prompts(parts, pipe):
    lines = ["Describe the picture precisely:", "Prompt: "]
    encoder = TextEncoder(*parts, instruction=lines)
    negatives = ["blurry, ugly", "low quality", "  WATERMARK "]
    ref = oracle(pipe, PROMPTS, lines, negative=negatives)
    assert_same(encoder.encode(PROMPTS), ref[:2])
    assert_same(encoder.encode_negative(negatives), ref[2:])
    # A single string is one instruction line, the same as a one-element list.
    single = TextEncoder(*parts, instruction="Describe: ").encode("a cat")
    assert_same(single, oracle(pipe, ["a cat"], ["Describe: "])[:2])


def test_encode_without_instruction_matches_diffusers(parts, pipe):
    ref = oracle(pipe, PROMPTS, None)
    for disabled in (None, []):
        assert_same(TextEncoder(*parts, instruction=disabled).encode(PROMPTS), ref[:2])


@pytest.mark.parametrize("instruction", [None, list(DEFAULT_INSTRUCTION)])
def test_long_prompts_truncate_like_diffusers(parts, pipe, instruction):
    prompts = [LONG_PROMPT, "a cat"]
    encoder = TextEncoder(*parts, instruction=instruction, max_length=20)
    ref = oracle(pipe, prompts, instruction, max_length=20)
    ours = encoder.encode(prompts)
    assert ours[0].shape == (2, 20, HIDDEN)
    assert_same(ours, ref[:2])
    assert ours[1][0].sum() == 20  # the long prompt fills the window
    assert_same(encoder.encode_empty(2), ref[2:])
    if instruction:
        # Independent check of the rule on the truncated row: tokenize chi + prompt to
        # n_chi + 18 tokens, run the LM, keep BOS + the last 19 positions.
        model, tokenizer = parts
        chi = "\n".join(instruction)
        n_chi = len(tokenizer(chi)["input_ids"])
        ids = tokenizer([chi + LONG_PROMPT])["input_ids"][0][: n_chi + 18]
        assert ids[0] == 2  # <bos>
        with torch.no_grad():
            full = model(input_ids=torch.tensor([ids])).last_hidden_state[0]
        index = [0, *range(len(ids) - 19, len(ids))]
        torch.testing.assert_close(ours[0][0], full[index], rtol=1e-5, atol=1e-5)


def test_causal_lm_uses_its_base_decoder(parts):
    from transformers import Gemma2ForCausalLM

    model, tokenizer = parts
    causal = Gemma2ForCausalLM(model.config)
    causal.model.load_state_dict(model.state_dict())
    ours = TextEncoder(causal, tokenizer).encode(PROMPTS[:1])
    assert_same(ours, TextEncoder(model, tokenizer).encode(PROMPTS[:1]))


def test_from_pretrained_pipeline_folder(parts, pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "pipe")
    loaded = TextEncoder.from_pretrained(tmp_path / "pipe", dtype=torch.float32)
    reference = TextEncoder(*parts)
    assert loaded.hidden_size == HIDDEN and loaded.max_length == 300
    assert loaded.dtype == torch.float32 and loaded.device.type == "cpu"
    assert_same(loaded.encode(PROMPTS), reference.encode(PROMPTS))
    # Saving and reloading does not change the cache key.
    assert loaded.fingerprint() == reference.fingerprint()
    # A folder holding both model and tokenizer files works too.
    model, tokenizer = parts
    save_text_components(tmp_path / "parts", tokenizer, model)
    both = tmp_path / "parts" / "text_encoder"
    tokenizer.save_pretrained(both)
    flat = TextEncoder.from_pretrained(both, dtype=torch.float32, instruction=None)
    assert_same(flat.encode(PROMPTS), TextEncoder(*parts, instruction=None).encode(PROMPTS))
    bf16 = TextEncoder.from_pretrained(tmp_path / "parts", max_length=40)
    embeds, mask = bf16.encode(["a cat"])
    assert embeds.dtype == torch.bfloat16 and embeds.shape == (1, 40, HIDDEN)


def test_from_pretrained_errors_name_the_path(parts, tmp_path):
    with pytest.raises(SanakitError, match="nowhere"):
        TextEncoder.from_pretrained(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SanakitError, match="empty"):
        TextEncoder.from_pretrained(tmp_path / "empty")
    parts[0].save_pretrained(tmp_path / "half" / "text_encoder")
    with pytest.raises(SanakitError, match="tokenizer"):
        TextEncoder.from_pretrained(tmp_path / "half")
    with pytest.raises(SanakitError, match="max_length"):
        TextEncoder(*parts, max_length=1)


def test_fingerprint_tracks_everything_that_changes_the_output(parts):
    model, tokenizer = parts
    base = TextEncoder(tokenizer=tokenizer, model=model)
    key = base.fingerprint()
    assert len(key) == 16 and key == base.fingerprint()
    base.encode(["a cat"])  # tokenizer padding state is mutated by calls, key is not
    assert base.fingerprint() == key
    assert TextEncoder(model, tokenizer).fingerprint() == key
    assert TextEncoder(model, tokenizer, instruction=["Other: "]).fingerprint() != key
    assert TextEncoder(model, tokenizer, instruction=None).fingerprint() != key
    assert TextEncoder(model, tokenizer, max_length=299).fingerprint() != key
    other_seed = build_text_model(tokenizer.vocab_size, hidden_size=HIDDEN, seed=1)
    assert TextEncoder(other_seed, tokenizer).fingerprint() != key
    other_tok = build_tokenizer(vocab_size=500)
    assert TextEncoder(model, other_tok).fingerprint() != key
    copy = build_text_model(tokenizer.vocab_size, hidden_size=HIDDEN, seed=0)
    with torch.no_grad():
        copy.layers[0].mlp.up_proj.weight[3, 5] += 1e-3  # one weight changed
    assert TextEncoder(copy, tokenizer).fingerprint() != key
    copy.to(torch.bfloat16)
    assert TextEncoder(copy, tokenizer).fingerprint() != key


def test_weights_checksum_is_exact_and_positional():
    a = torch.nn.Linear(4, 4)
    b = torch.nn.Linear(4, 4)
    b.load_state_dict(a.state_dict())
    assert weights_checksum(a) == weights_checksum(b)
    with torch.no_grad():
        b.weight.copy_(a.weight.flip(0))  # same multiset of values, other positions
    assert weights_checksum(a) != weights_checksum(b)
