"""How fast the demo runs on this machine: the measured seconds per step, the sampling time it
must leave room for, and the one-line explanation when the machine is far slower than the one
the defaults were tuned on (no native bf16, a busy CPU, or simply a slower processor)."""

from __future__ import annotations

import os
import resource
import time
from dataclasses import dataclass

import torch

from sanakit.hardware import cpu_info

# The development machine: a quiet 2-core Intel Xeon VM (Sapphire Rapids: AVX-512, AMX), demo
# training step at batch 32 (benchmarks/bench_contention.py, 2026-11-29; docs/benchmarks.md).
REFERENCE_STEP_SECONDS = {"no": 0.20, "bf16": 0.27}
REFERENCE_CPU = "a quiet 2-core Xeon"
SLOW_FACTOR = 2.0  # slower than this x the reference: say why in one line
BUSY_SHARE = 0.6  # this process got less than this share of its threads' cores: a busy CPU


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass
class PaceSample:
    """Wall and CPU seconds of this process at one moment."""

    wall: float
    cpu: float

    @classmethod
    def now(cls) -> PaceSample:
        return cls(time.perf_counter(), _cpu_seconds())


@dataclass(frozen=True)
class Pace:
    """``step_seconds`` over ``steps`` steps; ``core_share``: the CPU time this process got per
    wall second, divided by its thread count (about 1 on a quiet machine, lower when other
    processes take the cores)."""

    step_seconds: float
    steps: int
    core_share: float
    precision: str

    @classmethod
    def between(cls, start: PaceSample, end: PaceSample, steps: int, precision: str) -> Pace:
        wall = max(1e-9, end.wall - start.wall)
        share = (end.cpu - start.cpu) / wall / max(1, torch.get_num_threads())
        return cls(wall / max(1, steps), steps, share, precision)

    @property
    def reference_seconds(self) -> float:
        """The reference machine's step time for this precision."""
        return REFERENCE_STEP_SECONDS.get(self.precision, REFERENCE_STEP_SECONDS["no"])

    def slowdown(self) -> float:
        """This machine's step time over the reference machine's for the same precision."""
        return self.step_seconds / self.reference_seconds

    def reason(self) -> str:
        """Why this machine is slow, in the user's words (for the one-line warning)."""
        info = cpu_info()
        if self.precision == "bf16" and info.native_bf16 is False:
            return (
                f"bf16 is emulated on this CPU ({info.describe()}); "
                "set train.mixed_precision = 'auto' or 'no'"
            )
        if self.core_share < BUSY_SHARE:
            load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
            return (
                f"the CPU is busy: this process got {self.core_share:.0%} of its "
                f"{torch.get_num_threads()} threads' time (1-min load average {load:.1f} on "
                f"{os.cpu_count()} cores); other jobs on this machine slow it down"
            )
        return f"this processor is slower than the reference ({info.describe()})"


@torch.no_grad()
def model_call_seconds(
    model: torch.nn.Module,
    *,
    batch: int,
    latent_shape: tuple[int, int, int],
    text_shape: tuple[int, int],
    device: torch.device,
    autocast_dtype: torch.dtype | None,
) -> float:
    """Seconds of one eval-mode model call at ``batch`` (the second of two: the first pays for
    one-off kernel set-up). Random inputs: the time does not depend on their values."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn((batch, *latent_shape), generator=gen).to(device)
    text = torch.randn((batch, *text_shape), generator=gen).to(device)
    mask = torch.ones(batch, text_shape[0], dtype=torch.long, device=device)
    t = torch.full((batch,), 500.0, device=device)
    was_training = model.training
    model.eval()
    try:
        seconds = 0.0
        for _ in range(2):
            start = time.perf_counter()
            with torch.autocast(
                device.type,
                dtype=autocast_dtype or torch.float32,
                enabled=autocast_dtype is not None,
            ):
                model(x, t, text, mask)
            seconds = time.perf_counter() - start
    finally:
        model.train(was_training)
    return seconds


def minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"
