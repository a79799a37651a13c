"""CPU precision choice and the OpenMP wait policy (sanakit.hardware), with mocked CPUs."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap

import pytest

from sanakit import hardware
from sanakit.hardware import CpuInfo, configure_thread_policy, parse_cpuinfo

SAPPHIRE_RAPIDS = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse2 avx avx2 fma avx512f avx512bw avx512_bf16 amx_bf16 amx_tile
"""
EPYC_AVX2 = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B12
flags\t\t: fpu sse2 avx avx2 fma
"""
GRAVITON3 = """processor\t: 0
BogoMIPS\t: 2100.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp bf16 i8mm sve
CPU implementer\t: 0x41
"""
GRAVITON2 = """processor\t: 0
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp
"""


@pytest.mark.parametrize(
    ("text", "machine", "native", "phrase"),
    [
        (SAPPHIRE_RAPIDS, "x86_64", True, "native bf16: AVX512-BF16, AMX-BF16"),
        (EPYC_AVX2, "x86_64", False, "no native bf16; AVX2"),
        (GRAVITON3, "aarch64", True, "native bf16: BF16"),
        (GRAVITON2, "aarch64", False, "no native bf16; ASIMD"),
        (EPYC_AVX2, "riscv64", None, "bf16 support unknown"),
        ("processor\t: 0\n", "x86_64", None, "bf16 support unknown"),
    ],
)
def test_parse_cpuinfo_detects_native_bf16(text, machine, native, phrase):
    info = parse_cpuinfo(text, machine)
    assert info.native_bf16 is native
    assert phrase in info.describe()


def _mock_cpu(monkeypatch, native: bool | None) -> None:
    flags = frozenset({"avx2", "avx512_bf16"} if native else {"avx2"})
    monkeypatch.setattr(hardware, "cpu_info", lambda: CpuInfo("Mock CPU", flags, native))


@pytest.mark.parametrize(("native", "expected"), [(True, "bf16"), (False, "no"), (None, "no")])
def test_auto_precision_on_the_cpu_follows_native_bf16(monkeypatch, native, expected):
    _mock_cpu(monkeypatch, native)
    assert hardware.resolve_mixed_precision("auto", "cpu", key="k") == expected


def test_explicit_precision_wins_with_one_line_note_when_slow(monkeypatch, caplog):
    _mock_cpu(monkeypatch, False)
    with caplog.at_level(logging.WARNING, logger="sanakit"):
        assert hardware.resolve_mixed_precision("bf16", "cpu", key="train.mixed_precision") == (
            "bf16"
        )
    [record] = caplog.records
    message = record.getMessage()
    assert "train.mixed_precision = 'bf16'" in message and "slower" in message
    assert "\n" not in message
    caplog.clear()
    assert hardware.resolve_mixed_precision("no", "cpu", key="k") == "no"
    _mock_cpu(monkeypatch, True)
    assert hardware.resolve_mixed_precision("bf16", "cpu", key="k") == "bf16"
    assert not caplog.records  # fast hardware, or fp32: nothing to say


def test_gpu_precision_is_not_decided_by_the_cpu(monkeypatch):
    _mock_cpu(monkeypatch, False)
    assert hardware.resolve_mixed_precision("fp16", "cuda", key="k") == "fp16"
    assert hardware.resolve_mixed_precision("bf16", "cuda", key="k") == "bf16"


def test_thread_policy_is_set_unless_the_user_chose_one():
    env: dict[str, str] = {"PATH": "/bin"}
    assert configure_thread_policy(env) == {"GOMP_SPINCOUNT": "10000", "KMP_BLOCKTIME": "0"}
    assert env == {"PATH": "/bin", "GOMP_SPINCOUNT": "10000", "KMP_BLOCKTIME": "0"}
    for name in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME"):
        env = {name: "ACTIVE" if name == "OMP_WAIT_POLICY" else "123"}
        before = dict(env)
        assert configure_thread_policy(env) == {}
        assert env == before  # the user's choice stands, nothing added


CHECK_ORDER = textwrap.dedent(
    """
    import importlib.abc, json, os, sys
    seen = {}
    class Watch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name == "torch" and "torch" not in seen:
                names = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")
                seen["torch"] = {k: os.environ[k] for k in names if k in os.environ}
            return None
    sys.meta_path.insert(0, Watch())
    from sanakit.cli import main
    code = main(["demo", "--steps", "0"])  # rejects --steps 0 (torch may not be loaded yet)
    import torch  # the first torch import after the CLI ran, if the command did not load it
    print(json.dumps({"code": code, "policy_at_torch_import": seen.get("torch", "not imported")}))
    """
)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ({}, {"GOMP_SPINCOUNT": "10000", "KMP_BLOCKTIME": "0"}),
        ({"OMP_WAIT_POLICY": "ACTIVE"}, {"OMP_WAIT_POLICY": "ACTIVE"}),
    ],
)
def test_cli_sets_the_wait_policy_before_torch_is_imported(given, expected):
    env = {k: v for k, v in os.environ.items() if k not in hardware.WAIT_POLICY_VARIABLES}
    env.update(given)
    done = subprocess.run(
        [sys.executable, "-c", CHECK_ORDER], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {"code": 2, "policy_at_torch_import": expected}


def test_the_test_suite_runs_with_a_passive_or_user_chosen_policy():
    # tests/conftest.py sets it before torch is imported (or the user's choice stands)
    assert any(name in os.environ for name in hardware.WAIT_POLICY_VARIABLES)
