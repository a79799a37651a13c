"""Building blocks of the Sana linear DiT (Xie et al., 2024, arXiv:2410.10629).

Module and parameter names mirror diffusers' ``SanaTransformer2DModel`` so that its
checkpoints load with ``strict=True``. Tokens are kept in (B, N, C) layout throughout; the
Mix-FFN sees them as a channels-last image of the real (H, W) grid, which avoids the
NCHW<->NLC copies.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from torch.utils.checkpoint import checkpoint

# Additive bias for masked text tokens, as diffusers uses (not -inf, so an all-masked row
# stays finite and matches the reference).
MASK_BIAS = -10000.0


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * weight, statistics in fp32 (diffusers' RMSNorm semantics;
    fp64 for fp64 inputs, so float64 checks such as the Sprint JVP tests see no fp32 rounding)."""

    def __init__(self, dim: int, eps: float = 1e-5, weight_init: float = 1.0) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.full((dim,), float(weight_init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        variance = x.to(torch.promote_types(x.dtype, torch.float32)).pow(2).mean(-1, keepdim=True)
        x = x * torch.rsqrt(variance + self.eps)
        if self.weight.dtype in (torch.float16, torch.bfloat16):
            x = x.to(self.weight.dtype)
        return x * self.weight


def sinusoidal_embedding(
    t: torch.Tensor, dim: int = 256, max_period: float = 10000.0
) -> torch.Tensor:
    """(B,) -> (B, dim) embedding [cos(t*f_i), sin(t*f_i)], f_i = max_period^(-i/(dim/2)).

    The cos-first order is diffusers' ``flip_sin_to_cos=True`` with ``downscale_freq_shift=0``
    (the DiT / PixArt convention Sana inherits). Computed in fp32 (fp64 for an fp64 ``t``); never
    rounded, so d/dt of the embedding is exact (the Sprint JVP's pure-time tangent).
    """
    half = dim // 2
    dtype = torch.promote_types(t.dtype, torch.float32)
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half
    ).to(dtype)
    args = t.to(dtype)[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def sincos_pos_embed_2d(
    dim: int, height: int, width: int, base_size: int, interpolation_scale: float
) -> torch.Tensor:
    """(H*W, dim) fixed 2D sin-cos position embedding, row-major over (H, W).

    Positions are rescaled so that the grid spans ``base_size`` cells whatever its size
    (pos = index / (size / base_size) / interpolation_scale), the rule diffusers' PatchEmbed uses
    for the 2K/4K Sana models. The first dim/2 channels encode the column (w), the rest the row
    (h); each half is [sin(pos*w_k), cos(pos*w_k)] with w_k = 10000^(-k/(dim/4)), in float64.
    """
    ys = torch.arange(height, dtype=torch.float32) / (height / base_size) / interpolation_scale
    xs = torch.arange(width, dtype=torch.float32) / (width / base_size) / interpolation_scale
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")  # (H, W) each

    def embed_1d(pos: torch.Tensor) -> torch.Tensor:
        omega = torch.arange(dim // 4, dtype=torch.float64) / (dim / 4.0)
        out = pos.reshape(-1).double()[:, None] * (1.0 / 10000**omega)[None]
        return torch.cat([torch.sin(out), torch.cos(out)], dim=1)

    return torch.cat([embed_1d(grid_x), embed_1d(grid_y)], dim=1).float()


class PatchEmbed(nn.Module):
    """(B, C_in, H, W) latents -> (B, H/p * W/p, C) tokens, plus 2D sin-cos PE when enabled."""

    def __init__(
        self,
        in_channels: int,
        dim: int,
        patch_size: int,
        sample_size: int,
        interpolation_scale: float | None,
    ) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=patch_size)
        self.base_size = sample_size // patch_size
        self.interpolation_scale = interpolation_scale
        self._pe_cache: dict[tuple[int, int, torch.device], torch.Tensor] = {}

    def pos_embed(self, height: int, width: int, device: torch.device) -> torch.Tensor:
        key = (height, width, device)
        if key not in self._pe_cache:
            pe = sincos_pos_embed_2d(
                self.proj.out_channels, height, width, self.base_size, self.interpolation_scale
            )
            self._pe_cache[key] = pe.to(device)
        return self._pe_cache[key]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.patch_size == 1:
            # a 1x1 stride-1 conv is a matmul over channels: (B, C_in, H, W) -> (B, HW, C)
            w = self.proj.weight.flatten(1)
            tokens = F.linear(x.flatten(2).transpose(1, 2), w, self.proj.bias)
        else:
            tokens = self.proj(x).flatten(2).transpose(1, 2)
        if self.interpolation_scale is None:
            return tokens
        h, w = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
        return (tokens + self.pos_embed(h, w, x.device)).to(tokens.dtype)


class TimestepMLP(nn.Module):
    """Linear(256, C) - SiLU - Linear(C, C) on the sinusoidal embedding (diffusers' TimestepEmbedding)."""

    def __init__(self, dim: int, freq_dim: int = 256) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        self.linear_1 = nn.Linear(freq_dim, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        emb = sinusoidal_embedding(t, self.freq_dim).to(dtype)
        return self.linear_2(F.silu(self.linear_1(emb)))


class _TimestepOnly(nn.Module):
    """Container matching diffusers' ``PixArtAlphaCombinedTimestepSizeEmbeddings`` key layout."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.timestep_embedder = TimestepMLP(dim)


class AdaLNSingle(nn.Module):
    """adaLN-single (PixArt-alpha): one t-projection to 6C shared by all blocks.

    Returns (modulation (B, 6C), embedded timestep (B, C)); with ``guidance`` the guidance
    scale gets its own MLP and is added to the timestep embedding (Sana-Sprint).
    """

    def __init__(self, dim: int, guidance_embeds: bool) -> None:
        super().__init__()
        self.guidance_embeds = guidance_embeds
        if guidance_embeds:
            self.timestep_embedder = TimestepMLP(dim)
            self.guidance_embedder = TimestepMLP(dim)
        else:
            self.emb = _TimestepOnly(dim)
        self.linear = nn.Linear(dim, 6 * dim)

    def forward(
        self, t: torch.Tensor, guidance: torch.Tensor | None, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.guidance_embeds:
            emb = self.timestep_embedder(t, dtype) + self.guidance_embedder(guidance, dtype)
        else:
            emb = self.emb.timestep_embedder(t, dtype)
        return self.linear(F.silu(emb)), emb


class CaptionProjection(nn.Module):
    """Linear(caption_channels, C) - GELU(tanh) - Linear(C, C) (PixArt's y-projection)."""

    def __init__(self, in_features: int, dim: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(in_features, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.gelu(self.linear_1(y), approximate="tanh"))


class LinearAttentionCore(torch.autograd.Function):
    """y = ReLU(q) (ReLU(k)^T [v, 1]) -> y_i = num_i / (den_i + eps), per (batch, head), in fp32.

    Inputs (B, h, N, d) in any dtype (the projections' outputs, pre-ReLU); output fp32. Only
    the three inputs are saved for backward (in their own dtype, bf16 under autocast): the fp32
    intermediates (ReLU outputs, the padded value, the (N, d+1) products) are recomputed, which
    costs two small (d x d+1) matmuls and saves ~3 fp32 (B, N, C) activations per block.

    Backward, with K = [ReLU(k)], V1 = [v, 1], S = K^T V1 (d, d+1), o = ReLU(q) S:
      g_o = [g_y / (den + eps), -sum(g_y * y) / (den + eps)]
      g_q = (g_o S^T) * 1[q > 0];  g_S = ReLU(q)^T g_o;  g_k = (V1 g_S^T) * 1[k > 0];  g_v = (K g_S)[:, :d]
    """

    @staticmethod
    def _products(q, k, v, eps):
        dtype = torch.promote_types(q.dtype, torch.float32)  # fp32, or fp64 for gradcheck
        qr, kr = F.relu(q.to(dtype)), F.relu(k.to(dtype))
        v1 = F.pad(v.to(dtype), (0, 1), value=1.0)  # (B, h, N, d+1)
        s = kr.transpose(-1, -2) @ v1  # (B, h, d, d+1)
        o = qr @ s  # (B, h, N, d+1)
        den = o[..., -1:] + eps
        return qr, kr, v1, s, o[..., :-1] / den, den

    @staticmethod
    def forward(ctx, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eps: float) -> torch.Tensor:
        with torch.autocast(device_type=q.device.type, enabled=False):
            y = LinearAttentionCore._products(q, k, v, eps)[4]
        ctx.save_for_backward(q, k, v)
        ctx.eps = eps
        return y

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor):
        q, k, v = ctx.saved_tensors
        with torch.autocast(device_type=q.device.type, enabled=False):
            qr, kr, v1, s, y, den = LinearAttentionCore._products(q, k, v, ctx.eps)
            grad_y = grad_y.to(y.dtype)
            grad_num = grad_y / den
            grad_den = -(grad_y * y).sum(-1, keepdim=True) / den
            grad_o = torch.cat([grad_num, grad_den], dim=-1)  # (B, h, N, d+1)
            grad_q = (grad_o @ s.transpose(-1, -2)) * (qr > 0)
            grad_s = qr.transpose(-1, -2) @ grad_o  # (B, h, d, d+1)
            grad_k = (v1 @ grad_s.transpose(-1, -2)) * (kr > 0)
            grad_v = (kr @ grad_s)[..., :-1]
        return grad_q.to(q.dtype), grad_k.to(k.dtype), grad_v.to(v.dtype), None


class LinearAttention(nn.Module):
    """ReLU-kernel linear self-attention (Katharopoulos et al., 2020; Sana §2.2).

    out_i = sum_j v_j (k_j . q_i) / (sum_j k_j . q_i + eps) per head, with q, k = ReLU(.).
    Cost O(N d^2) instead of O(N^2 d). The two reductions run in fp32 with autocast off,
    whatever the input dtype, then the result is cast back.
    """

    def __init__(self, dim: int, heads: int, bias: bool, qk_norm: str | None, eps: float) -> None:
        super().__init__()
        self.heads = heads
        self.eps = eps
        # True inside SanaTransformer.forward_ad_compatible(): the same fp32 products in plain
        # torch ops, which forward-mode AD (torch.func.jvp, sCM's tangent) can differentiate.
        self.forward_ad = False
        self.to_q = nn.Linear(dim, dim, bias=bias)
        self.to_k = nn.Linear(dim, dim, bias=bias)
        self.to_v = nn.Linear(dim, dim, bias=bias)
        if qk_norm is not None:
            self.norm_q = RMSNorm(dim, eps=1e-5)
            self.norm_k = RMSNorm(dim, eps=1e-5)
        else:
            self.norm_q = self.norm_k = None
        self.to_out = nn.ModuleList([nn.Linear(dim, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        q, k, v = self.to_q(x), self.to_k(x), self.to_v(x)
        if self.norm_q is not None:
            q, k = self.norm_q(q), self.norm_k(k)
        # (B, N, C) -> (B, h, N, d)
        q, k, v = (rearrange(t, "b n (h d) -> b h n d", h=self.heads) for t in (q, k, v))
        if self.forward_ad:
            with torch.autocast(device_type=q.device.type, enabled=False):
                out = LinearAttentionCore._products(q, k, v, self.eps)[4]
        else:
            out = LinearAttentionCore.apply(q, k, v, self.eps)
        out = rearrange(out, "b h n d -> b n (h d)").to(dtype)
        out = self.to_out[0](out)
        if dtype == torch.float16:
            out = out.clip(-65504, 65504)
        return out


def explicit_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask_bias: torch.Tensor | None
) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + mask_bias) v in fp32 plain ops; q (B, h, N, d), k, v (B, h, L, d),
    mask_bias (B, 1, 1, L) additive. Equals ``scaled_dot_product_attention`` and, unlike its fused
    kernels, supports forward-mode AD (the Sprint student's JVP, NVlabs' "vanilla" attention)."""
    with torch.autocast(device_type=q.device.type, enabled=False):
        dtype = torch.promote_types(q.dtype, torch.float32)
        scores = q.to(dtype) @ k.to(dtype).transpose(-1, -2) * q.shape[-1] ** -0.5  # (B, h, N, L)
        if mask_bias is not None:
            scores = scores + mask_bias.to(dtype)
        return scores.softmax(dim=-1) @ v.to(dtype)


class CrossAttention(nn.Module):
    """Softmax cross-attention from image tokens (B, N, C) to text tokens (B, L, C).

    Sana's cross-attention is neither pre-normed nor gated. ``mask_bias`` is (B, 1, 1, L) additive.
    """

    def __init__(self, dim: int, heads: int, head_dim: int, qk_norm: str | None) -> None:
        super().__init__()
        self.heads = heads
        # True inside SanaTransformer.forward_ad_compatible(): explicit fp32 softmax attention
        # (torch 2.13's fused CPU/CUDA SDPA kernels have no forward-mode AD formula).
        self.forward_ad = False
        self.to_q = nn.Linear(dim, heads * head_dim)
        self.to_k = nn.Linear(dim, heads * head_dim)
        self.to_v = nn.Linear(dim, heads * head_dim)
        if qk_norm is not None:
            self.norm_q = RMSNorm(heads * head_dim, eps=1e-5)
            self.norm_k = RMSNorm(heads * head_dim, eps=1e-5)
        else:
            self.norm_q = self.norm_k = None
        self.to_out = nn.ModuleList([nn.Linear(heads * head_dim, dim)])

    def forward(
        self, x: torch.Tensor, context: torch.Tensor, mask_bias: torch.Tensor | None
    ) -> torch.Tensor:
        q, k, v = self.to_q(x), self.to_k(context), self.to_v(context)
        if self.norm_q is not None:
            q, k = self.norm_q(q), self.norm_k(k)
        q, k, v = (rearrange(t, "b n (h d) -> b h n d", h=self.heads) for t in (q, k, v))
        if self.forward_ad:
            out = explicit_attention(q, k, v, mask_bias)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask_bias)
        out = rearrange(out, "b h n d -> b n (h d)").to(q.dtype)
        return self.to_out[0](out)


def recomputed(fn, *args):
    """``fn(*args)``, keeping only ``args`` for backward and recomputing ``fn``'s intermediates
    there (non-reentrant ``torch.utils.checkpoint``; no RNG in these regions). For cheap
    elementwise/depthwise regions whose intermediates are large: the saved-activation diet of
    issue 19 (the forward's values and the gradients are the same as a plain call)."""
    return checkpoint(fn, *args, use_reentrant=False, preserve_rng_state=False)


def modulated_layer_norm(
    x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float
) -> torch.Tensor:
    """adaLN modulate: LN(x) * (1 + scale) + shift, LN without affine over the last dim;
    x (B, N, C), shift/scale (B, 1, C)."""
    return torch.addcmul(shift, F.layer_norm(x, (x.shape[-1],), eps=eps), 1 + scale)


def gated_depthwise(conv_depth: nn.Conv2d, a: torch.Tensor) -> torch.Tensor:
    """The middle of the Mix-FFN: depthwise 3x3 over SiLU(a), split [y, gate] -> y * SiLU(gate);
    a (B, 2H, h, w) -> (B, H, h, w)."""
    y, gate = conv_depth(F.silu(a)).chunk(2, dim=1)
    return y * F.silu(gate)


class GLUMBConv(nn.Module):
    """Mix-FFN (Sana §2.2): 1x1 conv + SiLU -> 3x3 depthwise -> [x, gate] -> x*SiLU(gate) -> 1x1.

    Works on (B, N, C) tokens: they are viewed as a channels-last (B, C, h, w) image of the real
    latent grid (no copy), so non-square latents work and the convolutions take oneDNN's
    channels-last path instead of diffusers' NCHW permute-and-copy round trip.

    Saved for backward: the block input, ``a = conv_inverted(x)`` (2H channels) and the gated
    product (H channels); SiLU(a), the depthwise output and SiLU(gate) (another 2H + 2H + H
    channels, ~12.5 C per token at mlp_ratio 2.5) are recomputed in backward (:func:`recomputed`:
    elementwise and depthwise work, ~1 % of the block's FLOPs).
    """

    def __init__(self, dim: int, mlp_ratio: float) -> None:
        super().__init__()
        hidden = int(mlp_ratio * dim)
        self.conv_inverted = nn.Conv2d(dim, 2 * hidden, 1)
        self.conv_depth = nn.Conv2d(2 * hidden, 2 * hidden, 3, padding=1, groups=2 * hidden)
        self.conv_point = nn.Conv2d(hidden, dim, 1, bias=False)
        # False inside forward_ad_compatible() and when the whole block is checkpointed
        self.recompute = True

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        y = rearrange(x, "b (h w) c -> b c h w", h=height, w=width)  # channels-last view
        a = self.conv_inverted(y)  # (B, 2H, h, w)
        if self.recompute and torch.is_grad_enabled():
            y = recomputed(gated_depthwise, self.conv_depth, a)  # (B, H, h, w)
        else:
            y = gated_depthwise(self.conv_depth, a)
        y = self.conv_point(y)  # (B, C, h, w)
        return rearrange(y, "b c h w -> b (h w) c")
