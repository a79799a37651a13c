"""``sanakit bench`` (issue 19.4): runs on the CPU, prints every column, and its model FLOPs are
the analytic formula, which equals ``torch.utils.flop_counter`` on a real forward."""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from sanakit.cli import main
from sanakit.flops import forward_flops, known_peak, mfu, training_flops
from sanakit.models.sana import SanaTransformer
from sanakit.presets import tiny

TINY_ARGS = ["bench", "--preset", "tiny", "--steps", "2", "--device", "cpu"]
TINY_ARGS += ["--resolution", "256", "--sample-steps", "2", "--warmup", "1"]


def counted_forward_flops(config, batch: int, height: int, width: int, text_len: int) -> int:
    """torch.utils.flop_counter over one forward. Attention runs as explicit matmuls
    (forward_ad_compatible), since the counter has no formula for the fused CPU SDPA kernel."""
    model = SanaTransformer(config)
    x = torch.randn(batch, config.in_channels, height, width)
    text = torch.randn(batch, text_len, config.caption_channels)
    guidance = torch.rand(batch) if config.guidance_embeds else None
    with torch.no_grad(), model.forward_ad_compatible(), FlopCounterMode(display=False) as fc:
        model(x, torch.rand(batch) * 1000, text, None, guidance)
    return fc.get_total_flops()


@pytest.mark.parametrize(
    "config",
    [
        tiny(),
        tiny(in_channels=4, caption_channels=24).replace(
            patch_size=2, guidance_embeds=True, qk_norm="rms_norm_across_heads", mlp_ratio=3.0
        ),
    ],
    ids=["tiny", "patch2_guidance_qknorm"],
)
def test_analytic_forward_flops_equal_the_flop_counter(config) -> None:
    assert forward_flops(config, 2, 8, 12, 7) == counted_forward_flops(config, 2, 8, 12, 7)


def test_bench_tiny_prints_every_column(capsys) -> None:
    assert main(TINY_ARGS) == 0
    text = capsys.readouterr().out
    for column in ("s/step", "img/s", "s/image", "samples/s", "TFLOP/s", "MFU", "FLOPs"):
        assert column in text
    assert "n/a (pass --peak-tflops)" in text  # a CPU has no table entry

    assert main([*TINY_ARGS, "--json", "--peak-tflops", "0.5"]) == 0
    row = json.loads(capsys.readouterr().out)
    optional = {"compile_s", "train_peak_memory_gb"}  # compiled runs / CUDA only
    assert all(row[k] is not None for k in row if k not in optional)
    assert row["latent"] == 8 and row["tokens"] == 64 and row["peak_source"] == "--peak-tflops"
    # the step's model FLOPs: 3 x the counted forward of the tiny model at 8x8, 300 tokens
    counted = counted_forward_flops(tiny(), 1, 8, 8, 300)
    assert row["train_flops_per_step"] == 3 * counted
    assert row["sample_flops_per_image"] == 2 * 2 * counted  # 2 steps x CFG's 2 rows
    assert row["train_mfu"] == pytest.approx(row["train_tflops"] / 0.5)
    assert row["train_img_per_s"] == pytest.approx(1 / row["train_s_per_step"])


def test_bench_rejects_bad_settings(capsys) -> None:
    assert main([*TINY_ARGS, "--resolution", "100"]) == 2
    assert "multiple of 32" in capsys.readouterr().err


def test_peak_table_and_mfu() -> None:
    assert known_peak("NVIDIA H100 PCIe").bf16 == 756.0
    assert known_peak("NVIDIA H100 80GB HBM3").bf16 == 989.4
    assert known_peak("NVIDIA L40S").name == "NVIDIA L40S"
    assert known_peak("NVIDIA L4").name == "NVIDIA L4"
    assert known_peak("NVIDIA A100-SXM4-80GB").tflops("fp32") == 19.5
    assert known_peak("Some Future GPU") is None
    config = tiny().replace(num_layers=1)
    assert training_flops(config, 2, 8, 8, 5) == 3 * forward_flops(config, 2, 8, 8, 5)
    assert mfu(2e12, 1.0, 4.0) == 0.5 and mfu(1e12, 1.0, None) is None
