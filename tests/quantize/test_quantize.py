"""sanakit.quantize: which layers are quantised, that they compute with the right weights
(nf4 against a bound derived from the NF4 code book), and what refuses a quantised base."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sanakit.adapters import apply_adapter
from sanakit.adapters.spec import LoraSpec
from sanakit.errors import SanakitError
from sanakit.models import SanaTransformer
from sanakit.presets import get_preset
from sanakit.quantize import (
    KEEP,
    NF4_BLOCKSIZE,
    QuantizedConv1x1,
    dequantized_weight,
    quantize_layers,
    quantized_layers,
    weight_bytes,
)

bnb = pytest.importorskip("bitsandbytes")

# The 16 NF4 values (QLoRA, arXiv:2305.14314, Appendix E): quantiles of N(0, 1) scaled to [-1, 1].
NF4 = torch.tensor(
    [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
     -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
     0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
     0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0]
)  # fmt: skip
HALF_GAP = float((NF4[1:] - NF4[:-1]).max()) / 2  # 0.152: the farthest a value is from a code


def _blocky_weight(out_features: int, in_features: int) -> torch.Tensor:
    """Gaussian weights whose 64-weight blocks have scales spread over a decade, so a scale
    applied to the wrong block shows."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(out_features, in_features, generator=g)
    scales = 10 ** (torch.rand(w.numel() // NF4_BLOCKSIZE, generator=g) - 0.5)
    return (w.view(-1, NF4_BLOCKSIZE) * scales[:, None]).view_as(w)


def _nf4_error_bound(weight: torch.Tensor, layer: nn.Module) -> torch.Tensor:
    """Per-weight bound on |W - dequant(W)|: each weight w of a block with absmax a is stored as
    the NF4 code c nearest to w / a, times the stored scale a' (a after double quantisation):
    |w - c a'| <= |w - c a| + |c| |a - a'| <= HALF_GAP * a + |a - a'|."""
    state = layer.weight.quant_state
    true = weight.reshape(-1, NF4_BLOCKSIZE).abs().amax(dim=1)
    stored = state.absmax
    if state.nested:  # bitsandbytes' double quantisation: 8-bit absmax around an offset
        stored = bnb.functional.dequantize_blockwise(stored, state.state2) + state.offset
    per_block = HALF_GAP * true + (true - stored.float()).abs()
    return per_block[:, None].expand(-1, NF4_BLOCKSIZE).reshape_as(weight)


def _within(y_q: torch.Tensor, y: torch.Tensor, x: torch.Tensor, bound: torch.Tensor) -> bool:
    """|y_q - y| <= |x| @ bound^T elementwise (|sum_k dW_jk x_k| <= sum_k |dW_jk| |x_k|), plus
    fp32 rounding of the two matmuls."""
    limit = x.abs() @ bound.T + 1e-5 * (x.abs() @ y.new_ones(bound.shape).T) * y.abs().max()
    return bool(((y_q - y).abs() <= limit).all())


def test_nf4_forward_is_within_the_nf4_resolution_bound() -> None:
    weight = _blocky_weight(96, 256)
    bias = torch.randn(96)
    linear = nn.Linear(256, 96)
    conv = nn.Conv2d(256, 96, 1)
    with torch.no_grad():
        linear.weight.copy_(weight), linear.bias.copy_(bias)
        conv.weight.copy_(weight[:, :, None, None]), conv.bias.copy_(bias)
    model = nn.Sequential(linear, conv)
    quantize_layers(model, "nf4", keep=())
    q_linear, q_conv = model[0], model[1]
    assert isinstance(q_linear, bnb.nn.LinearNF4) and isinstance(q_conv, QuantizedConv1x1)
    assert q_linear.weight.dtype == torch.uint8 and q_linear.weight.numel() == weight.numel() // 2
    bound = _nf4_error_bound(weight, q_linear)
    absmax = weight.view(-1, 64).abs().amax(1).repeat_interleave(64).view_as(weight)
    assert float((bound / absmax).max()) < 0.25  # 0.152 + the 8-bit scale error (a few %)
    x = torch.randn(8, 256, generator=torch.Generator().manual_seed(1))
    y = x @ weight.T + bias
    with torch.no_grad():
        w_q = dequantized_weight(q_linear)
        # the dequantised weight is within the NF4 bound of the original, element by element
        assert bool(((w_q - weight).abs() <= bound + 1e-6).all())
        # the forward computes with exactly that weight, so its error obeys the bound too
        torch.testing.assert_close(q_linear(x), x @ w_q.T + bias, rtol=1e-5, atol=1e-5)
        assert _within(q_linear(x), y, x, bound)
        image = x.T.reshape(1, 256, 2, 4)  # 8 pixels of 256 channels
        out = q_conv(image).reshape(96, 8).T
        assert _within(out, y, x, _nf4_error_bound(weight, q_conv.linear))
        assert dequantized_weight(q_conv).shape == (96, 256, 1, 1)
        torch.testing.assert_close(out, x @ dequantized_weight(q_conv)[:, :, 0, 0].T + bias)
        # a wrong dequantisation breaks the bound: scales of the neighbouring block, codes
        # without scales, the weight read transposed
        blocks = w_q.view(-1, 64)
        scales = blocks.abs().amax(1, keepdim=True).clamp_min(1e-12)
        rolled = (blocks / scales * scales.roll(1, 0)).view_as(weight)
        unscaled = (blocks / scales).view_as(weight)
        transposed = w_q.reshape(256, 96).T
        for wrong in (rolled, unscaled, transposed):
            assert not bool(((wrong - weight).abs() <= bound + 1e-6).all())


def test_tiny_sana_layers_quantised_and_kept() -> None:
    torch.manual_seed(0)
    model = SanaTransformer(get_preset("tiny"))
    x = torch.randn(2, 32, 4, 4)
    t = torch.tensor([300.0, 700.0])
    text = torch.randn(2, 5, 32)
    with torch.no_grad():
        ref = model(x, t, text)
    full_bytes = weight_bytes(model)["full"]
    names = quantize_layers(model, "int8")
    assert not any(n.startswith(KEEP) for n in names)
    assert type(model.patch_embed.proj) is nn.Conv2d and type(model.proj_out) is nn.Linear
    assert type(model.transformer_blocks[0].ff.conv_depth) is nn.Conv2d  # grouped 3x3
    assert isinstance(model.transformer_blocks[0].ff.conv_point, QuantizedConv1x1)
    assert isinstance(model.transformer_blocks[0].attn2.to_k, bnb.nn.Linear8bitLt)
    assert quantized_layers(model) == dict.fromkeys(names, "int8")
    assert not any(p.requires_grad for p in model.parameters())
    sizes = weight_bytes(model)
    assert sizes["quantized"] > 0 and sizes["quantized"] + sizes["full"] < 0.5 * full_bytes
    with torch.no_grad():
        out = model(x, t, text)
    assert float((out - ref).norm() / ref.norm()) < 0.02  # int8: ~0.4 % per weight
    assert quantize_layers(model, "int8") == []  # already quantised: nothing left to do


def test_quantize_via_device_equals_via_cpu() -> None:
    outs = []
    for via in ("cpu", "device"):
        torch.manual_seed(0)
        model = SanaTransformer(get_preset("tiny"))
        quantize_layers(model, "nf4", via=via, device="cpu")
        with torch.no_grad():
            outs.append(model(torch.ones(1, 32, 2, 2), torch.tensor([500.0]), torch.ones(1, 3, 32)))
    assert torch.equal(*outs)


def test_refusals() -> None:
    model = SanaTransformer(get_preset("tiny"))
    with pytest.raises(SanakitError, match="quantise with 'int8' or 'nf4'"):
        quantize_layers(model, "fp8")
    with pytest.raises(SanakitError, match="quantize_via='gpu'"):
        quantize_layers(model, "nf4", via="gpu")
    quantize_layers(model, "nf4")
    handle = apply_adapter(model, LoraSpec(rank=2))
    with pytest.raises(SanakitError, match="cannot merge an adapter into a quantised base"):
        handle.merge()


def test_int8_is_weight_only_and_saves_only_its_codes() -> None:
    """int8 computes x W^T + b with W = q * scale / 127 and keeps only q and the scales for the
    backward (as saved tensors, which checkpointing can drop) -- not its input."""
    linear = nn.Linear(64, 32)
    model = nn.Sequential(linear)
    weight, bias = linear.weight.detach().clone(), linear.bias.detach().clone()
    quantize_layers(model, "int8", keep=())
    layer = model[0]
    assert isinstance(layer, bnb.nn.Linear8bitLt) and layer.weight.dtype == torch.int8
    w_q = dequantized_weight(layer)
    # half a step of the row's scale absmax / 127, plus bitsandbytes' fp16 rounding of W first
    row_max = weight.abs().amax(dim=1, keepdim=True)
    assert bool(((w_q - weight).abs() <= row_max / 254 + row_max * 2.0**-10).all())
    x = torch.randn(4, 64, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = layer(x)
    assert [t.dtype for t in saved] == [torch.int8, torch.float32]
    torch.testing.assert_close(y, x @ w_q.T + bias)
    y.square().sum().backward()
    torch.testing.assert_close(x.grad, (2 * y.detach()) @ w_q)
