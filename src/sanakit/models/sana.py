"""`SanaTransformer`: the Sana linear DiT assembled from `layers.py` (assembly only).

Forward contract: ``model(x, timestep, text, text_mask=None, guidance=None) -> v`` with
x (B, C, H, W) latents (any H, W divisible by the patch size), timestep (B,) float,
text (B, L, caption_channels), text_mask (B, L) of 0/1, guidance (B,) (Sprint models only).
The forward has no host syncs and no data-dependent Python control flow (it compiles with
``fullgraph=True``): trailing text padding is trimmed by the caller, once per batch
(:func:`trim_text_padding`; the data loader and the sampler do), and untrimmed text gives the
same outputs, only slower.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from torch.utils.checkpoint import checkpoint

from sanakit.errors import SanakitError
from sanakit.models.config import ModelConfig
from sanakit.models.layers import (
    MASK_BIAS,
    AdaLNSingle,
    CaptionProjection,
    CrossAttention,
    GLUMBConv,
    LinearAttention,
    PatchEmbed,
    RMSNorm,
    modulated_layer_norm,
    recomputed,
)


def text_window(*masks: torch.Tensor | None) -> tuple[int | None, bool]:
    """How much of a text window to keep: ``(length, all_valid)`` for masks (B_i, L) of 0/1.

    ``length`` is one past the last position valid in any row of any mask (every mask must have
    the same L), or None (keep all L) when there is no mask or some row has no valid token at all
    (the reference attends uniformly over the whole window there). ``all_valid``: every kept
    position of every mask is valid, so the mask can be dropped. Decided once per batch outside
    the model (the data loader, the sampler): it reads the masks' values, a device->host sync if
    they live on an accelerator, which the transformer's forward therefore never does.
    """
    masks = tuple(m for m in masks if m is not None)
    if not masks:
        return None, True
    valid = torch.cat([m.reshape(-1, m.shape[-1]).bool() for m in masks])  # (sum B_i, L)
    if not bool(valid.any(dim=1).all()):
        return None, bool(valid.all())
    positions = torch.arange(1, valid.shape[1] + 1, device=valid.device)
    length = int((valid * positions).amax())
    return length, bool(valid[:, :length].all())


def trim_text_padding(
    text: torch.Tensor, text_mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Drop trailing text positions that are masked in every sample; (B, L, D) -> (B, L', D).

    A masked key gets the additive bias -1e4, so its softmax weight exp(-1e4 - max) is exactly 0
    in fp32/bf16: removing it changes neither outputs nor gradients, but saves the caption
    projection and cross-attention work on padding (a 300-token window usually holds far fewer
    prompt tokens). A row with no valid token keeps the full window (uniform attention, as the
    reference computes it). A mask left all-ones is dropped. Call it outside the model, once per
    batch (:func:`text_window`); the model accepts untrimmed text too (same outputs, slower).
    """
    if text_mask is None:
        return text, None
    length, all_valid = text_window(text_mask)
    if length is not None:
        text, text_mask = text[:, :length], text_mask[:, :length]
    return text, None if all_valid else text_mask


class SanaBlock(nn.Module):
    """One Sana block: adaLN-modulated linear self-attention, plain cross-attention, Mix-FFN.

    x = x + g1 * LinAttn(LN(x) * (1 + s1) + b1)
    x = x + CrossAttn(x, text)
    x = x + g2 * MixFFN(LN(x) * (1 + s2) + b2)
    where (b1, s1, g1, b2, s2, g2) = table (6, C) + t-modulation (B, 6, C).
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        dim = config.hidden_size
        self.norm_eps = config.norm_eps
        self.attn1 = LinearAttention(
            dim,
            config.num_attention_heads,
            config.attention_bias,
            config.qk_norm,
            config.linear_attention_eps,
        )
        self.attn2 = CrossAttention(
            dim, config.num_cross_attention_heads, config.cross_attention_head_dim, config.qk_norm
        )
        self.ff = GLUMBConv(dim, config.mlp_ratio)
        self.scale_shift_table = nn.Parameter(torch.randn(6, dim) / dim**0.5)
        # Recompute the two modulated norms and the Mix-FFN's elementwise middle in backward
        # instead of saving them (layers.recomputed); off inside forward_ad_compatible() and
        # for a block that gradient checkpointing recomputes whole anyway.
        self.recompute = True

    def modulate(self, x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """LN(x) * (1 + scale) + shift; with ``recompute`` LN(x) is not kept for backward."""
        if self.recompute and torch.is_grad_enabled():
            return recomputed(modulated_layer_norm, x, shift, scale, self.norm_eps)
        return modulated_layer_norm(x, shift, scale, self.norm_eps)

    def forward(
        self,
        x: torch.Tensor,
        text: torch.Tensor,
        mask_bias: torch.Tensor | None,
        modulation: torch.Tensor,
        height: int,
        width: int,
    ) -> torch.Tensor:
        dim = x.shape[-1]
        mods = self.scale_shift_table[None] + modulation.reshape(x.shape[0], 6, dim)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mods.chunk(6, dim=1)

        h = self.modulate(x, shift_msa, scale_msa).to(x.dtype)
        x = x + gate_msa * self.attn1(h)

        x = x + self.attn2(x, text, mask_bias)

        h = self.modulate(x, shift_mlp, scale_mlp)
        return x + gate_mlp * self.ff(h, height, width)


class SanaTransformer(nn.Module):
    """The Sana text-to-image linear diffusion transformer (diffusers-compatible state dict)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        dim = config.hidden_size
        self.patch_embed = PatchEmbed(
            config.in_channels,
            dim,
            config.patch_size,
            config.sample_size,
            config.interpolation_scale,
        )
        self.time_embed = AdaLNSingle(dim, config.guidance_embeds)
        self.caption_projection = CaptionProjection(config.caption_channels, dim)
        # Sana §2.3: text features are RMS-normalised with a learnable scale starting at 0.01.
        self.caption_norm = RMSNorm(dim, eps=1e-5, weight_init=0.01)
        self.transformer_blocks = nn.ModuleList(SanaBlock(config) for _ in range(config.num_layers))
        self.scale_shift_table = nn.Parameter(torch.randn(2, dim) / dim**0.5)
        self.proj_out = nn.Linear(dim, config.patch_size**2 * config.output_channels)
        self.gradient_checkpointing = False  # a training setting: set_gradient_checkpointing()
        self.gradient_checkpointing_interval = 1
        self.forward_ad = False  # True inside forward_ad_compatible()
        self.compiled = False  # compile_blocks()
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Official Sana/PixArt init: xavier-uniform linears (patch conv as a linear), zero biases,
        N(0, 0.02) for the timestep, guidance, t-block and caption MLPs."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        for block in self.transformer_blocks:
            for conv in (block.ff.conv_inverted, block.ff.conv_point):
                nn.init.xavier_uniform_(conv.weight.view(conv.weight.shape[0], -1))
                if conv.bias is not None:
                    nn.init.zeros_(conv.bias)
        proj = self.patch_embed.proj
        nn.init.xavier_uniform_(proj.weight.view(proj.weight.shape[0], -1))
        nn.init.zeros_(proj.bias)
        te = self.time_embed
        mlps = (
            [te.timestep_embedder, te.guidance_embedder]
            if te.guidance_embeds
            else [te.emb.timestep_embedder]
        )
        for mlp in mlps:
            nn.init.normal_(mlp.linear_1.weight, std=0.02)
            nn.init.normal_(mlp.linear_2.weight, std=0.02)
        nn.init.normal_(te.linear.weight, std=0.02)
        nn.init.normal_(self.caption_projection.linear_1.weight, std=0.02)
        nn.init.normal_(self.caption_projection.linear_2.weight, std=0.02)

    @property
    def dtype(self) -> torch.dtype:
        return self.proj_out.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.proj_out.weight.device

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def set_gradient_checkpointing(self, enabled: bool, interval: int = 1) -> None:
        """Checkpoint every ``interval``-th block (1 = all blocks, 2 = half, ...)."""
        if interval < 1:
            raise SanakitError("gradient_checkpointing_interval must be >= 1")
        self.gradient_checkpointing = enabled
        self.gradient_checkpointing_interval = interval
        self._set_recompute()

    def _checkpointed(self, index: int) -> bool:
        return (
            self.gradient_checkpointing
            and not self.forward_ad
            and index % self.gradient_checkpointing_interval == 0
        )

    def _set_recompute(self) -> None:
        """Per-region recomputation (SanaBlock.recompute) is on unless the whole block is
        checkpointed (recomputed anyway) or forward-mode AD runs (checkpoint has no JVP)."""
        for index, block in enumerate(self.transformer_blocks):
            block.recompute = block.ff.recompute = not (
                self.forward_ad or self._checkpointed(index)
            )

    def compile_blocks(self, **options) -> None:
        """Regional ``torch.compile``: every SanaBlock is compiled with ``fullgraph=True`` and
        PyTorch's automatic dynamic shapes (``dynamic=None``). The blocks share one code object
        and dynamo lifts their parameters to graph inputs, so one compiled graph serves all
        blocks (compiled once, not once per block). The text length (trimmed per batch) is
        symbolic from the first compile; the latent grid and batch size are compiled static
        first and, when one changes (another aspect bucket, a smaller last batch), recompiled
        once with that dimension symbolic, a graph that then serves every later value: a
        bounded cache of at most 1 + the number of varying dimensions graphs, not one per
        bucket. A block whose input differs in dtype or requires_grad gets its own graph: under
        autocast the first block sees the bf16 patch embedding and the others the fp32
        residual stream; with a frozen base (adapters) the first block's input needs no grad.
        Works with gradient checkpointing (the checkpoint wraps the compiled block), autocast
        and LoRA/LoKr layers injected before or after this call (they are traced at the first
        call). Inside forward_ad_compatible() the blocks run eagerly (dynamo does not trace a
        compiled function under an outer torch.func.jvp). ``options`` go to ``torch.compile``
        (e.g. ``mode``, ``backend``)."""
        options = {"fullgraph": True, "dynamic": None, **options}
        for block in self.transformer_blocks:
            block.compile(**options)
        self.compiled = True

    @contextmanager
    def forward_ad_compatible(self) -> Iterator[None]:
        """Within the block, the forward supports forward-mode AD (``torch.func.jvp``): attention
        runs in plain fp32 ops instead of the custom-backward linear-attention kernel and the
        fused SDPA, gradient checkpointing and the per-region recomputation are bypassed, and
        compiled blocks run eagerly (sCM's tangent, Sana-Sprint §4.5).
        Same outputs as the normal path up to fp32 rounding."""
        attention = [m for m in self.modules() if isinstance(m, LinearAttention | CrossAttention)]
        for module in attention:
            module.forward_ad = True
        self.forward_ad = True  # no checkpointing, no region recomputation, eager blocks
        self._set_recompute()
        try:
            yield
        finally:
            for module in attention:
                module.forward_ad = False
            self.forward_ad = False
            self._set_recompute()

    def forward(
        self,
        x: torch.Tensor,
        timestep: torch.Tensor,
        text: torch.Tensor,
        text_mask: torch.Tensor | None = None,
        guidance: torch.Tensor | None = None,
    ) -> torch.Tensor:
        cfg = self.config
        batch, _, height, width = x.shape
        p = cfg.patch_size
        if height % p or width % p:
            raise SanakitError(f"latent size {height}x{width} is not divisible by patch size {p}")
        if cfg.guidance_embeds and guidance is None:
            raise SanakitError("this model has guidance_embeds=True: pass guidance (B,)")
        h, w = height // p, width // p

        tokens = self.patch_embed(x)  # (B, h*w, C)
        dtype = tokens.dtype
        timestep = timestep.reshape(-1).expand(batch)
        if guidance is not None:
            guidance = guidance.reshape(-1).expand(batch)
        modulation, t_emb = self.time_embed(
            timestep, guidance if cfg.guidance_embeds else None, dtype
        )

        # No trimming here: the forward reads no tensor value on the host (no sync, no graph break);
        # callers pass text trimmed once per batch (trim_text_padding), or the full window.
        context = self.caption_norm(self.caption_projection(text))  # (B, L', C)
        mask_bias = None
        if text_mask is not None:
            mask_bias = ((1 - text_mask.to(dtype)) * MASK_BIAS)[:, None, None, :]  # (B, 1, 1, L')
        if self.compiled and not torch.compiler.is_compiling():
            # the trimmed text length changes from batch to batch: compile it symbolic at once
            # instead of recompiling the blocks when the second length shows up
            torch._dynamo.maybe_mark_dynamic(context, 1)
            if mask_bias is not None:
                torch._dynamo.maybe_mark_dynamic(mask_bias, 3)

        for index, block in enumerate(self.transformer_blocks):
            args = (tokens, context, mask_bias, modulation, h, w)
            run = block.forward if self.forward_ad else block  # .forward: never the compiled one
            if self._checkpointed(index) and torch.is_grad_enabled():
                tokens = checkpoint(run, *args, use_reentrant=False)
            else:
                tokens = run(*args)

        shift, scale = (self.scale_shift_table[None] + t_emb[:, None]).chunk(2, dim=1)
        tokens = F.layer_norm(tokens, (tokens.shape[-1],), eps=1e-6) * (1 + scale) + shift
        out = self.proj_out(tokens)  # (B, h*w, p*p*C_out)
        return rearrange(out, "b (h w) (p q c) -> b c (h p) (w q)", h=h, w=w, p=p, q=p)
