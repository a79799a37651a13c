"""Quantised frozen base weights for adapter training (QLoRA-style), through bitsandbytes.

``quantize_layers(model, "nf4" | "int8")`` replaces, in place, the large matmul layers of a
frozen model by bitsandbytes layers that store their weights in 4 or 8 bits:

- ``nf4``: ``bnb.nn.LinearNF4`` -- 4-bit NormalFloat codes (Dettmers et al., 2023, QLoRA,
  arXiv:2305.14314) in blocks of 64 weights, each block scaled by its absolute maximum, the
  absmax values themselves quantised to 8 bits (double quantisation): ~4.13 bits per weight.
- ``int8``: ``bnb.nn.Linear8bitLt`` storage without fp16 weights -- one int8 per weight and one
  fp32 scale per output row (absmax / 127), LLM.int8()'s format (arXiv:2208.07339) -- computed
  weight-only (W rebuilt per call, see :class:`_Int8WeightOnlyMatmul`).

Why bitsandbytes: peft's LoRA dispatches ``bnb.nn.Linear4bit`` / ``Linear8bitLt`` to its own
quantisation-aware layers, and LyCORIS (LoKr) recognises both and switches to its bypass
forward (W x + delta(x), never reading W); bitsandbytes >= 0.45 also runs them on the CPU.
torchao's tensor subclasses are wrapped by peft only for Linear and not recognised by LyCORIS;
optimum-quanto is recognised by LyCORIS but not by peft. docs/low-vram.md has the comparison.

Which layers: Sana's 1x1 convolutions of the Mix-FFN (``conv_inverted``, ``conv_point``) hold
~half the weights, and bitsandbytes has only Linear layers, so a 1x1 convolution becomes a
:class:`QuantizedConv1x1` (a ``Conv2d`` whose matmul is a bnb Linear over the channels).
Kept in full precision (:data:`KEEP`): the patch embedding (the latent input projection, 32 x C)
and ``proj_out`` (the velocity output, C x 32), both tiny and on the path of every token without
a residual to absorb their error; the timestep MLP (``time_embed.emb``, ~2.2 % of Sana-1.6B,
whose output conditions every block); every norm, the ``scale_shift_table`` parameters and
biases (not matmul weights); the grouped 3x3 ``conv_depth`` (9 weights per channel).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from sanakit.errors import SanakitError

Quantize = Literal["none", "int8", "nf4"]
QUANTIZE = ("none", "int8", "nf4")
QUANTIZE_VIA = ("cpu", "device")
NF4_BLOCKSIZE = 64  # weights per absmax scale (bitsandbytes' default, QLoRA's)
# module-name prefixes never quantised (see the module docstring for why)
KEEP = ("patch_embed", "proj_out", "time_embed.emb")


def bitsandbytes(key: str):
    """The ``bitsandbytes`` module, or a one-line error naming the config ``key``."""
    try:
        return importlib.import_module("bitsandbytes")
    except ImportError as err:
        raise SanakitError(
            f"{key} needs the 'bitsandbytes' package: pip install bitsandbytes"
        ) from err


def _is_pointwise_conv(module: nn.Module) -> bool:
    return (
        isinstance(module, nn.Conv2d)
        and module.kernel_size == (1, 1)
        and module.stride == (1, 1)
        and module.padding in ((0, 0), "valid")
        and module.dilation == (1, 1)
        and module.groups == 1
    )


def quantizable_layers(model: nn.Module, keep: Iterable[str] = KEEP) -> list[str]:
    """Names of the ``nn.Linear`` and 1x1 ``nn.Conv2d`` layers of ``model`` outside ``keep``
    (name prefixes), in model order; layers already quantised are not listed."""
    keep = tuple(keep)
    names = []
    for name, module in model.named_modules():
        if any(name == k or name.startswith(k + ".") for k in keep):
            continue
        if is_quantized_layer(module) or _inside_quantized(model, name):
            continue
        if type(module) is nn.Linear or (type(module) is nn.Conv2d and _is_pointwise_conv(module)):
            names.append(name)
    return names


def _inside_quantized(model: nn.Module, name: str) -> bool:
    parent = name.rpartition(".")[0]
    return bool(name) and isinstance(model.get_submodule(parent), QuantizedConv1x1)


def is_quantized_layer(module: nn.Module) -> bool:
    """A bitsandbytes 4/8-bit Linear or a :class:`QuantizedConv1x1`."""
    if isinstance(module, QuantizedConv1x1):
        return True
    bnb = _bnb_if_loaded()
    return bnb is not None and isinstance(module, bnb.nn.Linear4bit | bnb.nn.Linear8bitLt)


def quantized_layers(model: nn.Module) -> dict[str, str]:
    """name -> ``"nf4"`` / ``"int8"`` for every quantised layer of ``model`` (outer modules
    only: a :class:`QuantizedConv1x1`'s inner Linear is not listed separately)."""
    found = {}
    for name, module in model.named_modules():
        if isinstance(module, QuantizedConv1x1):
            found[name] = module.kind
        elif is_quantized_layer(module) and not _inside_quantized(model, name):
            found[name] = _kind(module)
    return found


def _bnb_if_loaded():
    import sys

    return sys.modules.get("bitsandbytes")


def _kind(linear: nn.Module) -> str:
    bnb = _bnb_if_loaded()
    return "nf4" if isinstance(linear, bnb.nn.Linear4bit) else "int8"


def _bnb_linear(weight: torch.Tensor, bias: torch.Tensor | None, kind: str, key: str) -> nn.Module:
    """An unquantised bnb Linear holding ``weight`` (out, in) and ``bias``; moving it to a
    device (``.to``) quantises it there."""
    bnb = bitsandbytes(key)
    out_features, in_features = weight.shape
    weight = weight.detach().to(torch.float32)
    if kind == "nf4":
        layer = bnb.nn.LinearNF4(
            in_features,
            out_features,
            bias=bias is not None,
            compute_dtype=torch.float32,
            compress_statistics=True,  # double quantisation of the absmax values (QLoRA)
            device="meta",
        )
        layer.weight = bnb.nn.Params4bit(
            weight,
            requires_grad=False,
            blocksize=NF4_BLOCKSIZE,
            compress_statistics=True,
            quant_type="nf4",
        )
        # bitsandbytes repacks 4-bit weights in place for its CPU inference kernel (eval mode,
        # no grad, AVX512-BF16: bf16 scales, no double quantisation) and fails on layers whose
        # in_features is not a multiple of 64; validation must compute as training does
        layer.support_avx512bf16_for_cpu = False
    elif kind == "int8":
        # has_fp16_weights=False: int8 storage, frozen; threshold 0: no fp16 outlier columns
        layer = _int8_linear_class(bnb)(
            in_features,
            out_features,
            bias=bias is not None,
            has_fp16_weights=False,
            threshold=0.0,
            device="meta",
        )
        layer.weight = bnb.nn.Int8Params(weight, requires_grad=False, has_fp16_weights=False)
    else:
        raise SanakitError(f"{key}={kind!r} is not one of {', '.join(QUANTIZE)}")
    if bias is not None:
        layer.bias = nn.Parameter(bias.detach().clone(), requires_grad=False)
    return layer


class _Int8WeightOnlyMatmul(torch.autograd.Function):
    """y = x W^T + b with W = q * scale / 127 rebuilt on the fly, for a frozen int8 weight.

    Only the int8 codes and row scales are saved for the backward (dL/dx = dL/dy W), through
    ``save_for_backward``, so gradient checkpointing can drop them like any saved tensor.
    bitsandbytes' own int8 matmuls keep their input on ``ctx`` (``ctx.A`` on the CPU,
    ``ctx.tensors`` on CUDA), outside autograd's saved tensors: with checkpointing that held
    every block's layer inputs until the backward (measured by benchmarks/bench_memory.py).
    """

    @staticmethod
    def forward(ctx, x, codes, scale, bias):
        dtype = x.dtype
        if torch.is_autocast_enabled(x.device.type):
            dtype = torch.get_autocast_dtype(x.device.type)
        weight = codes.to(dtype) * (scale.to(dtype) / 127.0)[:, None]
        ctx.save_for_backward(codes, scale)
        ctx.dtype = dtype
        bias = None if bias is None else bias.to(dtype)
        return F.linear(x.to(dtype), weight, bias)

    @staticmethod
    def backward(ctx, grad):
        codes, scale = ctx.saved_tensors
        weight = codes.to(ctx.dtype) * (scale.to(ctx.dtype) / 127.0)[:, None]
        return grad.to(ctx.dtype) @ weight, None, None, None


_INT8_CLASS = {}


def _int8_linear_class(bnb):
    """``bnb.nn.Linear8bitLt`` (peft and LyCORIS recognise it) whose forward is
    :class:`_Int8WeightOnlyMatmul` (weight-only int8, like optimum-quanto's and torchao's)."""
    if "cls" not in _INT8_CLASS:

        class Int8Linear(bnb.nn.Linear8bitLt):
            def forward(self, x: torch.Tensor) -> torch.Tensor:
                weight = self.weight
                scale = getattr(weight, "SCB", None)
                if scale is None:
                    scale = self.state.SCB
                return _Int8WeightOnlyMatmul.apply(x, weight.data, scale, self.bias)

        _INT8_CLASS["cls"] = Int8Linear
    return _INT8_CLASS["cls"]


class QuantizedConv1x1(nn.Conv2d):
    """A frozen 1x1 ``Conv2d`` whose weight is stored by a bnb Linear (``self.linear``) over
    the channel axis: ``(B, C_in, H, W) -> (B, C_out, H, W)`` through ``(B, H, W, C_in)``.

    It stays a ``Conv2d`` (in/out_channels, kernel_size...), so peft's Conv2d LoRA layer and
    LyCORIS' conv LoKr wrap it exactly as they wrap the full-precision layer, giving the same
    adapter keys and shapes (an adapter trained on it loads on the unquantised model).
    ``weight`` is the dequantised ``(C_out, C_in, 1, 1)`` fp32 tensor, computed on access.
    """

    def __new__(cls, *args, **kwargs):
        # peft's Conv2d LoRA layer builds its factors as type(base_layer)(in, r, kernel, ...):
        # those are ordinary trainable convolutions, not quantised ones
        if args or kwargs:
            return nn.Conv2d(*args, **kwargs)
        return super().__new__(cls)

    def __init__(self) -> None:  # built by from_conv
        nn.Module.__init__(self)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, kind: str, key: str = "model.quantize") -> QuantizedConv1x1:
        self = cls()
        for attr in ("in_channels", "out_channels", "kernel_size", "stride", "padding"):
            setattr(self, attr, getattr(conv, attr))
        for attr in ("dilation", "groups", "padding_mode", "transposed", "output_padding"):
            setattr(self, attr, getattr(conv, attr))
        self._reversed_padding_repeated_twice = conv._reversed_padding_repeated_twice
        self.kind = kind
        self.linear = _bnb_linear(conv.weight.flatten(1), conv.bias, kind, key)
        self.register_parameter("bias", None)  # the bias lives in self.linear
        return self

    @property
    def weight(self) -> torch.Tensor:
        w = dequantized_weight(self.linear)
        return w.view(self.out_channels, self.in_channels, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, kernel_size=(1, 1), {self.kind}"


def dequantized_weight(layer: nn.Module) -> torch.Tensor:
    """The fp32 weight a quantised layer computes with (a plain layer's weight as fp32):
    nf4: code * absmax per block (bitsandbytes' ``dequantize_4bit``); int8: q * scale / 127 per
    output row. Shape (out, in) for Linear, (out, in, 1, 1) for a 1x1 convolution."""
    if isinstance(layer, QuantizedConv1x1):
        return layer.weight
    bnb = _bnb_if_loaded()
    weight = layer.weight
    if bnb is not None and isinstance(weight, bnb.nn.Params4bit) and weight.quant_state:
        return bnb.functional.dequantize_4bit(weight.data, weight.quant_state).float()
    if bnb is not None and isinstance(weight, bnb.nn.Int8Params) and weight.dtype == torch.int8:
        scale = getattr(weight, "SCB", None)
        if scale is None:
            scale = layer.state.SCB
        return weight.data.float() * (scale.float()[:, None] / 127.0)
    return weight.detach().float()


def quantize_layers(
    model: nn.Module,
    kind: str,
    *,
    via: str = "cpu",
    device: torch.device | str | None = None,
    keep: Iterable[str] = KEEP,
    key: str = "model.quantize",
) -> list[str]:
    """Replace, in place and one layer at a time, every layer of :func:`quantizable_layers`
    by its ``kind`` ("int8" / "nf4") quantised version on ``device`` (default: where the layer
    is). ``via="cpu"``: each layer is quantised on the CPU, then moved (a small GPU never holds
    more than one full-precision layer); ``"device"``: moved first, quantised there (faster on
    a GPU). Freezes the model (quantised weights cannot train). Returns the replaced names."""
    if kind not in ("int8", "nf4"):
        raise SanakitError(f"{key}={kind!r}: quantise with 'int8' or 'nf4'")
    if via not in QUANTIZE_VIA:
        raise SanakitError(f"{key}_via={via!r} is not one of {', '.join(QUANTIZE_VIA)}")
    bitsandbytes(key)
    model.requires_grad_(False)
    names = quantizable_layers(model, keep)
    for name in names:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        old = getattr(parent, attr)
        target = torch.device(device) if device is not None else old.weight.device
        where = torch.device("cpu") if via == "cpu" else target
        with torch.no_grad():
            if isinstance(old, nn.Conv2d):
                new = QuantizedConv1x1.from_conv(old.to(where), kind, key)
                new.linear.to(where)  # bnb quantises when the layer is moved to a device
            else:
                new = _bnb_linear(old.weight.to(where), _bias(old, where), kind, key).to(where)
            new.to(target)
        setattr(parent, attr, new)
        del old
    return names


def _bias(layer: nn.Module, device: torch.device) -> torch.Tensor | None:
    return None if layer.bias is None else layer.bias.to(device)


def weight_bytes(model: nn.Module) -> dict[str, int]:
    """Bytes of ``model``'s weights: ``quantized`` (codes + scales of quantised layers, incl.
    their quantisation state) and ``full`` (every other parameter and buffer)."""
    bnb = _bnb_if_loaded()
    quantized = full = 0
    seen: set[int] = set()
    for _, module in model.named_modules():
        for tensor in list(module.parameters(recurse=False)) + list(module.buffers(recurse=False)):
            if id(tensor) in seen:
                continue
            seen.add(id(tensor))
            size = tensor.numel() * tensor.element_size()
            if bnb is not None and isinstance(tensor, bnb.nn.Params4bit | bnb.nn.Int8Params):
                quantized += size + _state_bytes(tensor, module)
            else:
                full += size
    return {"quantized": quantized, "full": full}


def _state_bytes(weight: torch.Tensor, module: nn.Module) -> int:
    """Bytes of a quantised weight's scales (nf4 quant state, int8 row scales)."""
    state = getattr(weight, "quant_state", None)
    if state is not None:
        total = state.absmax.numel() * state.absmax.element_size()
        total += state.code.numel() * state.code.element_size()
        if state.nested:
            total += state.state2.absmax.numel() * state.state2.absmax.element_size()
            total += state.state2.code.numel() * state.state2.code.element_size()
        return total
    scale = getattr(weight, "SCB", None)
    if scale is None and hasattr(module, "state"):
        scale = module.state.SCB
    return 0 if scale is None else scale.numel() * scale.element_size()
