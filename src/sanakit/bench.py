"""Throughput and MFU of a Sana transformer on this machine, with random weights (``sanakit bench``).

Training: full fine-tune steps (forward, flow-matching MSE, backward, AdamW) on random latents
and text, fp32 master weights under autocast in the chosen dtype. Sampling: 20-step
Flow-DPM-Solver with classifier-free guidance (one batched call on [uncond, cond] per step, as
``sanakit generate``) through :func:`sanakit.sampling.velocity_model`; the transformer only (the
text encoder and the DC-AE decoder are not timed). Model FLOPs are analytic
(:mod:`sanakit.flops`, checked against ``torch.utils.flop_counter`` in the tests).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from sanakit.errors import SanakitError
from sanakit.flops import forward_flops, known_peak, mfu, training_flops
from sanakit.models.config import ModelConfig
from sanakit.models.sana import SanaTransformer

AUTOENCODER_FACTOR = 32  # DC-AE f32c32: pixels per latent cell
_DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


@dataclass(frozen=True)
class BenchSettings:
    preset: str = "sana-1600m"
    resolution: int = 1024
    batch: int = 1
    dtype: str = "bf16"  # autocast dtype of the forward (weights stay fp32 for training)
    compile: bool = False
    device: str = "cpu"
    steps: int = 5  # timed training steps (after warmup)
    warmup: int = 2  # untimed steps first (the compile happens here)
    sample_steps: int = 20
    sample_runs: int = 1  # timed sampling runs (after one untimed warm-up run)
    guidance: float = 4.5
    text_len: int = 300  # valid text tokens (Sana's 300-token window, all used)
    peak_tflops: float | None = None  # overrides the table (sanakit.flops.PEAKS)
    sampling: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if self.resolution % AUTOENCODER_FACTOR:
            raise SanakitError(f"--resolution {self.resolution} is not a multiple of 32")
        for key in ("batch", "steps", "sample_steps", "sample_runs", "text_len"):
            if getattr(self, key) < 1:
                raise SanakitError(f"--{key.replace('_', '-')} must be >= 1")
        if self.warmup < 0:
            raise SanakitError("--warmup must be >= 0")
        if self.dtype not in _DTYPES:
            raise SanakitError(f"--dtype {self.dtype!r}: use bf16 or fp32")
        if self.peak_tflops is not None and not self.peak_tflops > 0:
            raise SanakitError("--peak-tflops must be > 0")


@dataclass(frozen=True)
class BenchResult:
    """One row: settings, device, timings (seconds), throughput, model FLOPs and MFU (0-1)."""

    preset: str
    resolution: int
    latent: int
    tokens: int
    batch: int
    dtype: str
    compiled: bool
    device: str
    device_name: str
    peak_tflops: float | None
    peak_source: str  # "table", "--peak-tflops" or "unknown"
    train_s_per_step: float
    train_img_per_s: float
    train_flops_per_step: int
    train_tflops: float
    train_mfu: float | None
    sample_steps: int
    sample_s_per_image: float | None
    sample_samples_per_s: float | None
    sample_flops_per_image: int | None
    sample_tflops: float | None
    sample_mfu: float | None
    compile_s: float | None  # first (warm-up) step minus a steady step, when compiled
    train_peak_memory_gb: float | None  # CUDA: max_memory_allocated over the training steps
    flops_method: str = "analytic (sanakit.flops; checked against torch.utils.flop_counter)"

    def as_dict(self) -> dict:
        return asdict(self)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    from sanakit.hardware import cpu_info

    return cpu_info().model


def _timed(fn: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def run_bench(settings: BenchSettings, config: ModelConfig) -> BenchResult:
    """Runs the training and sampling benchmark of ``config`` (see the module docstring)."""
    from sanakit.sampling import Plan, sample_latents, seed_generators

    s = settings
    device = torch.device(s.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SanakitError(f"--device {s.device}: CUDA is not available; use --device cpu")
    latent = s.resolution // AUTOENCODER_FACTOR
    tokens = (latent // config.patch_size) ** 2
    torch.manual_seed(s.seed)
    model = SanaTransformer(config.replace(sample_size=latent)).to(device)
    if s.compile:
        model.compile_blocks()
    autocast_dtype = _DTYPES[s.dtype] if s.dtype != "fp32" else None
    g = torch.Generator().manual_seed(s.seed)
    b, c = s.batch, config.in_channels
    x = torch.randn(b, c, latent, latent, generator=g).to(device)
    target = torch.randn(b, c, latent, latent, generator=g).to(device)
    t = (torch.rand(b, generator=g) * 1000).to(device)
    text = torch.randn(b, s.text_len, config.caption_channels, generator=g).to(device)
    guidance = torch.full((b,), s.guidance, device=device) if config.guidance_embeds else None
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)

    def train_step() -> None:
        with torch.autocast(device.type, dtype=autocast_dtype or torch.float32,
                            enabled=autocast_dtype is not None):  # fmt: skip
            v = model(x, t, text, None, guidance)
        loss = torch.nn.functional.mse_loss(v.float(), target)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    warm = [_timed(train_step, device) for _ in range(s.warmup)]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = [_timed(train_step, device) for _ in range(s.steps)]
    memory = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    step_s = statistics.median(times)
    compile_s = max(0.0, warm[0] - step_s) if s.compile and warm else None
    train_flops = training_flops(config, b, latent, latent, s.text_len)

    if device.type == "cuda":
        name = _device_name(device)
        peak = known_peak(name)
        table = peak.tflops(s.dtype) if peak is not None else None
    else:
        name, table = _device_name(device), None
    peak_tflops = s.peak_tflops if s.peak_tflops is not None else table
    source = "--peak-tflops" if s.peak_tflops is not None else "table" if table else "unknown"

    sample_s = sample_flops = None
    if s.sampling:
        model.eval().requires_grad_(False)
        cfg = s.guidance > 1 and not config.guidance_embeds
        plan = Plan(
            sampler="dpm",
            steps=s.sample_steps,
            guidance_scale=s.guidance,
            flow_shift=3.0,
            do_cfg=cfg,
            size=(s.resolution, s.resolution),
            sample_size=(s.resolution, s.resolution),
            latent_size=(latent, latent),
        )
        mask = torch.ones(b, s.text_len, dtype=torch.long)
        uncond = (torch.zeros(1, s.text_len, config.caption_channels), mask[:1])
        cond = (text.cpu(), mask)

        def sample() -> None:
            with torch.no_grad():
                sample_latents(
                    model,
                    cond,
                    uncond,
                    plan,
                    seed_generators(range(b)),
                    autocast_dtype=autocast_dtype,
                )

        _timed(sample, device)  # warm-up (compiles the no-grad graph when compiled)
        sample_s = statistics.median(_timed(sample, device) for _ in range(s.sample_runs)) / b
        calls = s.sample_steps * (2 if cfg else 1)
        sample_flops = calls * forward_flops(config, 1, latent, latent, s.text_len)

    return BenchResult(
        preset=s.preset,
        resolution=s.resolution,
        latent=latent,
        tokens=tokens,
        batch=b,
        dtype=s.dtype,
        compiled=s.compile,
        device=str(device),
        device_name=name,
        peak_tflops=peak_tflops,
        peak_source=source,
        train_s_per_step=step_s,
        train_img_per_s=b / step_s,
        train_flops_per_step=train_flops,
        train_tflops=train_flops / step_s / 1e12,
        train_mfu=mfu(train_flops, step_s, peak_tflops),
        sample_steps=s.sample_steps,
        sample_s_per_image=sample_s,
        sample_samples_per_s=1 / sample_s if sample_s else None,
        sample_flops_per_image=sample_flops,
        sample_tflops=sample_flops / sample_s / 1e12 if sample_s else None,
        sample_mfu=mfu(sample_flops, sample_s, peak_tflops) if sample_s else None,
        compile_s=compile_s,
        train_peak_memory_gb=memory,
    )


def format_result(r: BenchResult) -> str:
    """The human-readable report: a header line and one line per benchmark."""

    def pct(value: float | None) -> str:
        return f"{100 * value:.1f}%" if value is not None else "n/a (pass --peak-tflops)"

    peak = f"{r.peak_tflops:g} TFLOP/s ({r.peak_source})" if r.peak_tflops else "unknown"
    lines = [
        f"sanakit bench: {r.preset} at {r.resolution}px (latent {r.latent}x{r.latent}, "
        f"{r.tokens} tokens), batch {r.batch}, {r.dtype}, "
        f"{'compiled' if r.compiled else 'eager'}, {r.device_name} [{r.device}], peak {peak}",
        f"train   {r.train_s_per_step:.4f} s/step  {r.train_img_per_s:.3f} img/s  "
        f"{r.train_tflops:.3f} TFLOP/s  MFU {pct(r.train_mfu)}  "
        f"({r.train_flops_per_step:.3e} model FLOPs/step)",
    ]
    if r.sample_s_per_image is not None:
        lines.append(
            f"sample  {r.sample_s_per_image:.4f} s/image ({r.sample_steps} steps)  "
            f"{r.sample_samples_per_s:.3f} samples/s  {r.sample_tflops:.3f} TFLOP/s  "
            f"MFU {pct(r.sample_mfu)}  ({r.sample_flops_per_image:.3e} model FLOPs/image)"
        )
    if r.train_peak_memory_gb is not None:
        lines.append(f"memory  {r.train_peak_memory_gb:.2f} GiB peak allocated (training)")
    if r.compile_s is not None:
        lines.append(f"compile {r.compile_s:.1f} s (first step minus a steady step)")
    lines.append(f"FLOPs: {r.flops_method}; training = 3 x forward")
    return "\n".join(lines)
