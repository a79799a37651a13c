"""LoRA / LoKr on an int8 / nf4 base through the trainer (issue 15): the loss falls, the base
stays quantised, the adapter resumes bit-exactly and its export loads on the ordinary
full-precision base (diffusers' SanaPipeline for LoRA, sanakit's loader for LoKr)."""

from __future__ import annotations

import copy

import pytest
import torch
from diffusers import SanaPipeline
from safetensors.torch import load_file

from sanakit.adapters import load_adapter_into
from sanakit.models import load_transformer
from sanakit.quantize import QuantizedConv1x1, quantized_layers
from sanakit.train.config import run_config_from_dict
from sanakit.train.trainer import Trainer
from tests.train.test_export_pipeline import _config
from tests.train.test_trainer import fixed_noise_loss

pytest.importorskip("bitsandbytes")

STORAGE = {"nf4": torch.uint8, "int8": torch.int8}


def _storage_dtypes(model: torch.nn.Module) -> set[torch.dtype]:
    """dtypes of the bitsandbytes weights inside the quantised layers."""
    import bitsandbytes as bnb

    return {
        m.weight.dtype
        for m in model.modules()
        if isinstance(m, bnb.nn.Linear4bit | bnb.nn.Linear8bitLt)
    }


@pytest.mark.parametrize("kind", ["nf4", "int8"])
@pytest.mark.parametrize("method", ["lora", "lokr"])
def test_adapter_on_quantized_base(tiny_pipeline_dir, tmp_path, method, kind) -> None:
    raw = _config(tiny_pipeline_dir, tmp_path, method)
    raw["model"]["quantize"] = kind
    raw["train"].update(max_steps=6, lr=2e-2)
    raw["validation"] = {"prompts": ["a red square"], "resolutions": ["64x64"], "steps": 1}
    raw["output"]["checkpoint_every"] = 3
    trainer = Trainer(run_config_from_dict(raw))
    model = trainer.model
    layers = quantized_layers(model)
    blocks = [name for name in layers if name.startswith("transformer_blocks.")]
    assert len(blocks) == 10 * len(model.transformer_blocks)  # 8 attention + 2 FFN 1x1 convs
    assert not any(name.startswith(("patch_embed", "proj_out")) for name in layers)
    assert set(layers.values()) == {kind}
    before = fixed_noise_loss(trainer)
    final = trainer.fit()
    assert fixed_noise_loss(trainer) < before
    assert len(list((trainer.out / "validation").rglob("*.png"))) >= 1  # sampling works too
    assert _storage_dtypes(model) == {STORAGE[kind]}  # still quantised after training
    assert sum(isinstance(m, QuantizedConv1x1) for m in model.modules()) == 2 * len(
        model.transformer_blocks
    )

    # resume: 3 steps, then `resume latest` to 6, equals the straight run bit for bit
    split = copy.deepcopy(raw)
    split["output"]["dir"] = str(tmp_path / "split")
    split["train"]["max_steps"] = 3
    Trainer(run_config_from_dict(split)).fit()
    split["train"]["max_steps"] = 6
    Trainer(run_config_from_dict(split), resume="latest").fit()
    step = "checkpoints/step-00000006"
    a = load_file(str(trainer.out / step / "weights.safetensors"))
    b = load_file(str(tmp_path / "split" / step / "weights.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    # the full-precision export loads on the unquantised base and changes its output
    base = load_transformer(tiny_pipeline_dir / "transformer", torch_dtype=torch.float32).eval()
    c = base.config
    x = torch.randn(1, c.in_channels, 2, 2, generator=torch.Generator().manual_seed(0))
    text = torch.randn(1, 4, c.caption_channels, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([500.0])
    with torch.no_grad():
        plain = base(x, t, text)
        load_adapter_into(base, final)
        assert not torch.allclose(base(x, t, text), plain)
    if method == "lora":
        pipe = SanaPipeline.from_pretrained(tiny_pipeline_dir, torch_dtype=torch.float32)
        hidden = torch.randn(1, c.in_channels, 2, 2)
        enc = torch.randn(1, 4, c.caption_channels)
        kw = dict(encoder_hidden_states=enc, timestep=t, return_dict=False)
        with torch.no_grad():
            plain = pipe.transformer(hidden, **kw)[0]
            pipe.load_lora_weights(final)
            assert not torch.allclose(pipe.transformer(hidden, **kw)[0], plain)
