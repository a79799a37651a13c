"""Tiny in-process components: tokenizer contract, determinism, offline save/load, DC-AE shape."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModel, AutoTokenizer

from sanakit.errors import SanakitError
from sanakit.tiny import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    UNK_ID,
    build_dc_autoencoder,
    build_text_model,
    build_tokenizer,
    default_corpus,
    save_text_components,
)


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


def test_default_corpus_is_deterministic_and_large():
    corpus = default_corpus()
    assert corpus == default_corpus()
    assert corpus != default_corpus(seed=1)
    assert sum(len(line.split()) for line in corpus) > 3000


def test_tokenizer_special_ids_template_and_padding(tokenizer):
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id) == (PAD_ID, EOS_ID)
    assert (tokenizer.bos_token_id, tokenizer.unk_token_id) == (BOS_ID, UNK_ID) == (2, 3)
    assert tokenizer.vocab_size > 500
    assert tokenizer("")["input_ids"] == [BOS_ID]
    ids = tokenizer("a red circle above a blue square")["input_ids"]
    assert ids[0] == BOS_ID and UNK_ID not in ids and len(ids) <= 9  # whole words are tokens
    # Any printable ASCII text tokenizes without <unk> (base alphabet), and decodes back.
    odd = "Zebra #42 {quux} ~ 'ok'\nnext"
    odd_ids = tokenizer(odd)["input_ids"]
    assert UNK_ID not in odd_ids
    assert tokenizer.decode(odd_ids, skip_special_tokens=True) == odd
    batch = tokenizer(["a cat", "a small red circle"], padding="max_length", max_length=8)
    assert batch["input_ids"][0][-1] == PAD_ID and batch["attention_mask"][0][0] == 1
    assert batch["attention_mask"][0][-1] == 0  # right padding
    assert build_tokenizer().get_vocab() == tokenizer.get_vocab()  # deterministic training
    with pytest.raises(SanakitError, match="empty"):
        build_tokenizer([])


def test_text_model_is_seeded_and_eager(tokenizer):
    state = torch.random.get_rng_state()
    a = build_text_model(tokenizer.vocab_size, hidden_size=16, layers=1, heads=2, seed=0)
    assert torch.equal(torch.random.get_rng_state(), state)  # global RNG untouched
    b = build_text_model(tokenizer.vocab_size, hidden_size=16, layers=1, heads=2, seed=0)
    c = build_text_model(tokenizer.vocab_size, hidden_size=16, layers=1, heads=2, seed=1)
    assert type(a).__name__ == "Gemma2Model" and a.config._attn_implementation == "eager"
    assert a.config.hidden_size == 16 and a.config.num_hidden_layers == 1
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name
    assert not torch.equal(a.embed_tokens.weight, c.embed_tokens.weight)
    ids = torch.tensor([tokenizer("a cat")["input_ids"]])
    with torch.no_grad():
        out = a(input_ids=ids).last_hidden_state
    assert out.shape == (1, ids.shape[1], 16) and torch.isfinite(out).all()


def test_save_text_components_loads_offline(tokenizer, tmp_path):
    model = build_text_model(tokenizer.vocab_size, hidden_size=16, layers=1, seed=0)
    root = save_text_components(tmp_path / "pipe", tokenizer, model)
    loaded_tok = AutoTokenizer.from_pretrained(root / "tokenizer", local_files_only=True)
    loaded = AutoModel.from_pretrained(root / "text_encoder", local_files_only=True)
    text = ["a fluffy white cat", "a dragon above a castle at night"]
    kwargs = {"padding": "max_length", "max_length": 12, "return_tensors": "pt"}
    ref, got = tokenizer(text, **kwargs), loaded_tok(text, **kwargs)
    assert torch.equal(ref["input_ids"], got["input_ids"])
    assert loaded_tok.padding_side == "right" and loaded_tok.bos_token_id == BOS_ID
    with torch.no_grad():
        expected = model(**ref).last_hidden_state
        actual = loaded(**got).last_hidden_state
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)


def test_dc_autoencoder_contract():
    vae = build_dc_autoencoder(seed=0, latent_channels=8, channels=8)
    assert vae.spatial_compression_ratio == 32 and vae.config.latent_channels == 8
    assert vae.config.scaling_factor == pytest.approx(0.41407)
    assert sum(p.numel() for p in vae.parameters()) < 100_000
    again = build_dc_autoencoder(seed=0, latent_channels=8, channels=8)
    for (name, pa), pb in zip(vae.state_dict().items(), again.state_dict().values()):
        assert torch.equal(pa, pb), name
    with torch.no_grad():
        z = vae.encode(torch.zeros(1, 3, 32, 64)).latent
        x = vae.decode(z).sample
    assert z.shape == (1, 8, 1, 2) and x.shape == (1, 3, 32, 64)
    with pytest.raises(SanakitError, match="multiple"):
        build_dc_autoencoder(latent_channels=3)
