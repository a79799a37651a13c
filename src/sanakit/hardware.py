"""What this processor runs fast, and how its threads wait: the two CPU facts that decide whether
a CPU run takes minutes or hours.

- **Mixed precision.** bf16 autocast is fast only where the CPU has bf16 instructions (x86:
  AVX-512-BF16 or AMX-BF16; ARM: the BF16 extension). Without them every bf16 op is emulated and
  a training step is ~20x slower than fp32 (measured: demo model fwd+bwd at batch 32 on an
  AVX2-only AMD EPYC, 12.6 s bf16 vs 0.64 s fp32). :func:`resolve_mixed_precision` turns the
  setting ``"auto"`` into ``"bf16"`` or ``"no"`` by what the CPU has.
- **OpenMP wait policy.** OpenMP worker threads spin between parallel regions (libgomp, the
  runtime of torch's Linux wheels: 300,000 spins by default). With another process on the
  cores, a spinning thread holds a core that the working thread of the same op waits for, and
  small ops slow down 20-600x (measured here: 500 x matmul + layer_norm on 32x64x128 beside
  another torch job, 7.8 s default vs 0.34 s quiet). :func:`configure_thread_policy` sets a
  short spin before torch is imported, unless the user chose a policy: ``GOMP_SPINCOUNT=10000``
  (as fast as the default on a quiet machine, as robust as ``OMP_WAIT_POLICY=PASSIVE`` on a
  busy one, which costs ~10-20% on a quiet one; benchmarks/bench_contention.py) and
  ``KMP_BLOCKTIME=0`` for the LLVM/Intel runtimes (macOS wheels), which read no GOMP variable.

This module imports torch only inside functions: the CLI calls
:func:`configure_thread_policy` before anything imports torch.
"""

from __future__ import annotations

import functools
import logging
import os
import platform
import subprocess
from collections.abc import MutableMapping
from dataclasses import dataclass

log = logging.getLogger("sanakit")

# Variables that already choose how OpenMP threads wait (GNU libgomp and Intel's libiomp read
# OMP_WAIT_POLICY; GOMP_SPINCOUNT and KMP_BLOCKTIME are their own finer knobs).
WAIT_POLICY_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")
# libgomp: spin 10,000 times, then sleep; LLVM/Intel OpenMP: sleep at once (times in ms).
THREAD_POLICY = {"GOMP_SPINCOUNT": "10000", "KMP_BLOCKTIME": "0"}

# x86 /proc/cpuinfo flags of native bf16 arithmetic; ARM's "Features" line says "bf16".
X86_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
ARM_BF16_FLAGS = ("bf16",)

PRECISIONS = ("auto", "bf16", "fp16", "no")


def configure_thread_policy(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Set :data:`THREAD_POLICY` unless a wait-policy variable is already set; returns what it
    set (empty when the user's choice stands). Takes effect only if torch (OpenMP) has not been
    loaded yet, so the CLI calls it first thing."""
    env = os.environ if environ is None else environ
    if any(name in env for name in WAIT_POLICY_VARIABLES):
        return {}
    env.update(THREAD_POLICY)
    return dict(THREAD_POLICY)


@dataclass(frozen=True)
class CpuInfo:
    """``model``: the processor's name; ``flags``: its feature flags (lower case);
    ``native_bf16``: True/False when known, None when this platform cannot tell."""

    model: str
    flags: frozenset[str]
    native_bf16: bool | None

    def describe(self) -> str:
        """One phrase for logs and benchmark rows, e.g. ``'Intel Xeon (native bf16: AMX-BF16)'``."""
        if self.native_bf16 is None:
            return f"{self.model} (bf16 support unknown)"
        found = [
            f.upper().replace("_", "-")
            for f in (*X86_BF16_FLAGS, *ARM_BF16_FLAGS)
            if f in self.flags
        ]
        if self.native_bf16:
            return f"{self.model} (native bf16: {', '.join(found) or 'yes'})"
        best = next(
            (f.upper() for f in ("avx512f", "avx2", "avx", "neon", "asimd") if f in self.flags), ""
        )
        return f"{self.model} (no native bf16{'; ' + best if best else ''})"


def parse_cpuinfo(text: str, machine: str) -> CpuInfo:
    """:class:`CpuInfo` from the text of Linux's ``/proc/cpuinfo`` on ``machine`` (``uname -m``)."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        key = key.strip().lower()
        if sep and key not in fields:
            fields[key] = value.strip()
    flags = frozenset((fields.get("flags") or fields.get("features") or "").lower().split())
    model = fields.get("model name") or fields.get("cpu model") or fields.get("hardware") or machine
    if machine.lower() in ("x86_64", "amd64", "i686", "i386"):
        native = any(f in flags for f in X86_BF16_FLAGS)
    elif machine.lower() in ("aarch64", "arm64"):
        native = any(f in flags for f in ARM_BF16_FLAGS)
    else:
        native = None
    return CpuInfo(model=model, flags=flags, native_bf16=native if flags else None)


def _sysctl(name: str) -> str:
    try:
        return subprocess.run(
            ["sysctl", "-n", name], capture_output=True, text=True, timeout=5, check=False
        ).stdout.strip()
    except OSError:
        return ""


@functools.cache
def cpu_info() -> CpuInfo:
    """This machine's :class:`CpuInfo` (Linux: /proc/cpuinfo; macOS: sysctl; elsewhere the
    processor name only, bf16 unknown). Cached for the process."""
    machine = platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            return parse_cpuinfo(f.read(), machine)
    except OSError:
        pass
    if platform.system() == "Darwin":
        model = _sysctl("machdep.cpu.brand_string") or machine
        if machine == "arm64":  # Apple M2 and later have FEAT_BF16
            native = _sysctl("hw.optional.arm.FEAT_BF16") == "1"
            return CpuInfo(model, frozenset({"bf16"} if native else set()), native)
        flags = frozenset(_sysctl("machdep.cpu.leaf7_features").lower().split())
        return CpuInfo(model, flags, any(f.replace("_", "") in flags for f in ("avx512bf16",)))
    return CpuInfo(platform.processor() or machine, frozenset(), None)


def resolve_mixed_precision(requested: str, device_type: str, *, key: str) -> str:
    """The precision a run uses: ``"auto"`` -> ``"bf16"`` on a GPU that supports it (else
    ``"fp16"``), and on the CPU ``"bf16"`` only with native bf16 instructions (else ``"no"``,
    fp32). An explicit setting always wins; bf16 on a CPU without bf16 instructions logs one
    line saying it will be slow. ``key`` names the setting in that line."""
    if requested not in PRECISIONS:
        raise ValueError(f"{key} must be one of {PRECISIONS}, got {requested!r}")
    if device_type == "cuda":
        if requested != "auto":
            return requested
        import torch

        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    info = cpu_info()
    if requested == "auto":
        return "bf16" if info.native_bf16 else "no"
    if requested == "bf16" and info.native_bf16 is False:
        log.warning(
            "%s = 'bf16' on a CPU without native bf16 instructions (%s): bf16 is emulated and "
            "steps run ~10-20x slower than fp32; set it to 'auto' or 'no'",
            key,
            info.describe(),
        )
    return requested
