"""The demo's pace report: why a machine is slow, in one line."""

from __future__ import annotations

import pytest

from sanakit import hardware
from sanakit.demo.pace import REFERENCE_STEP_SECONDS, Pace, PaceSample
from sanakit.hardware import CpuInfo


@pytest.fixture()
def avx2_only(monkeypatch):
    monkeypatch.setattr(
        hardware, "cpu_info", lambda: CpuInfo("AMD EPYC", frozenset({"avx2"}), False)
    )
    monkeypatch.setattr("sanakit.demo.pace.cpu_info", hardware.cpu_info)


def test_pace_between_two_samples():
    pace = Pace.between(PaceSample(10.0, 3.0), PaceSample(12.0, 5.0), 10, "no")
    assert pace.step_seconds == pytest.approx(0.2)
    assert pace.slowdown() == pytest.approx(0.2 / REFERENCE_STEP_SECONDS["no"])
    assert 0 < pace.core_share <= 1.0


def test_reason_names_emulated_bf16_first(avx2_only):
    reason = Pace(5.0, 10, 0.2, "bf16").reason()
    assert "bf16 is emulated" in reason and "'auto'" in reason and "\n" not in reason


def test_reason_names_a_busy_cpu(avx2_only):
    reason = Pace(5.0, 10, 0.3, "no").reason()
    assert reason.startswith("the CPU is busy: this process got 30%") and "load average" in reason


def test_reason_names_a_slower_processor(avx2_only):
    reason = Pace(5.0, 10, 0.95, "no").reason()
    assert reason.startswith("this processor is slower") and "AMD EPYC" in reason
