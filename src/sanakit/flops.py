"""Model FLOPs of the Sana transformer (analytic) and the peak throughput of known accelerators,
for MFU (model FLOPs utilisation: model FLOPs per second / the device's peak, PaLM's definition,
Chowdhery et al. 2022, App. B).

FLOPs count the matrix products only, 2 per multiply-add, as ``torch.utils.flop_counter`` does
(linear layers, convolutions, batched matmuls, attention; no elementwise work, norms or
softmax): tests check :func:`forward_flops` against the counter on a real forward. A training
step is 3x the forward (each product's backward is two products of the same size); activation
recomputation (gradient checkpointing, the recomputed norms) is not model work and is not
counted, so MFU stays comparable across memory settings.
"""

from __future__ import annotations

from dataclasses import dataclass

from sanakit.models.config import ModelConfig

TIMESTEP_FREQ_DIM = 256  # the sinusoidal embedding's width (layers.TimestepMLP)


def forward_flops(
    config: ModelConfig, batch: int, latent_height: int, latent_width: int, text_len: int
) -> int:
    """FLOPs of one forward on ``batch`` latents of ``latent_height x latent_width`` with
    ``text_len`` text tokens (after trimming)."""
    c, p = config.hidden_size, config.patch_size
    n = (latent_height // p) * (latent_width // p)  # image tokens
    length = text_len
    cross = config.num_cross_attention_heads * config.cross_attention_head_dim
    heads, head_dim = config.num_attention_heads, config.attention_head_dim
    hidden = int(config.mlp_ratio * c)  # the Mix-FFN's gated width H (2H before the gate)

    embedders = 2 if config.guidance_embeds else 1  # timestep (and guidance) MLPs
    per_sample = embedders * (TIMESTEP_FREQ_DIM * c + c * c) + c * 6 * c  # + the adaLN linear
    per_sample += length * (config.caption_channels * c + c * c)  # caption projection

    block = 4 * n * c * c  # self-attention q, k, v, out
    block += 2 * heads * n * head_dim * (head_dim + 1)  # ReLU(k)^T [v, 1] and ReLU(q) S
    block += n * c * cross + 2 * length * c * cross + n * cross * c  # cross q, k, v, out
    block += 2 * n * length * cross  # softmax attention: q k^T and attn v
    block += n * c * 2 * hidden + n * 2 * hidden * 9 + n * hidden * c  # Mix-FFN 1x1, 3x3 dw, 1x1
    per_sample += n * config.in_channels * p * p * c  # patch embedding
    per_sample += config.num_layers * block
    per_sample += n * c * p * p * config.output_channels  # final projection
    return 2 * batch * per_sample  # multiply-adds -> FLOPs


def training_flops(
    config: ModelConfig, batch: int, latent_height: int, latent_width: int, text_len: int
) -> int:
    """Model FLOPs of one training step (forward + backward): 3x :func:`forward_flops`."""
    return 3 * forward_flops(config, batch, latent_height, latent_width, text_len)


@dataclass(frozen=True)
class Peak:
    """Dense (no sparsity) peak tensor throughput of a device, TFLOP/s, by compute dtype."""

    name: str
    bf16: float
    fp32: float  # plain FP32 (CUDA cores); TF32 matmuls can run faster than this

    def tflops(self, dtype: str) -> float:
        return self.bf16 if dtype in ("bf16", "fp16") else self.fp32


# Vendor datasheet numbers, dense. Matched in order against torch.cuda.get_device_name(), so the
# more specific names come first ("H100 PCIe" before "H100", "L40S" before "L4").
PEAKS: tuple[tuple[str, Peak], ...] = (
    ("H100 PCIe", Peak("NVIDIA H100 PCIe", 756.0, 51.2)),
    ("H100 NVL", Peak("NVIDIA H100 NVL", 835.0, 60.0)),
    ("H100", Peak("NVIDIA H100 SXM", 989.4, 66.9)),
    ("H200", Peak("NVIDIA H200", 989.4, 66.9)),
    ("GH200", Peak("NVIDIA GH200", 989.4, 66.9)),
    ("A100", Peak("NVIDIA A100", 312.0, 19.5)),
    ("A800", Peak("NVIDIA A800", 312.0, 19.5)),
    ("L40S", Peak("NVIDIA L40S", 362.1, 91.6)),
    ("L40", Peak("NVIDIA L40", 181.0, 90.5)),
    ("L4", Peak("NVIDIA L4", 121.0, 30.3)),
    ("A10G", Peak("NVIDIA A10G", 70.0, 31.2)),
    ("A10", Peak("NVIDIA A10", 125.0, 31.2)),
    ("RTX 6000 Ada", Peak("NVIDIA RTX 6000 Ada", 364.2, 91.1)),
    ("RTX A6000", Peak("NVIDIA RTX A6000", 154.8, 38.7)),
    ("RTX 4090", Peak("NVIDIA GeForce RTX 4090", 165.2, 82.6)),
    ("RTX 3090", Peak("NVIDIA GeForce RTX 3090", 71.0, 35.6)),
    ("V100", Peak("NVIDIA V100", 125.0, 15.7)),  # fp16 tensor cores; no bf16
    ("T4", Peak("NVIDIA T4", 65.0, 8.1)),  # fp16 tensor cores; no bf16
)


def known_peak(device_name: str) -> Peak | None:
    """The :data:`PEAKS` entry whose key occurs in ``device_name``, or None."""
    for key, peak in PEAKS:
        if key in device_name:
            return peak
    return None


def mfu(flops: float, seconds: float, peak_tflops: float | None) -> float | None:
    """Model FLOPs utilisation in [0, 1]: ``flops / seconds / peak``; None without a peak."""
    if peak_tflops is None or seconds <= 0:
        return None
    return flops / seconds / (peak_tflops * 1e12)
