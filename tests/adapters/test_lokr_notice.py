"""LyCORIS' per-layer "lora_dim N is too large ... using full matrix mode" warnings (ANSI-coloured,
on stdout) are swallowed; sanakit reports the full-matrix layers once, in its own words."""

from __future__ import annotations

import copy
import logging

import pytest
import torch

from sanakit.adapters import LokrSpec, apply_adapter, load_adapter_into
from sanakit.models import SanaTransformer
from sanakit.presets import tiny


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture()
def lycoris_records():
    """Everything LyCORIS' own logger (propagate = False, so caplog misses it) emits; its
    full-matrix warning is functools.cache'd per shape, so the cache is cleared first."""
    from lycoris.logging import logger
    from lycoris.modules.lokr import logging_force_full_matrix

    logging_force_full_matrix.cache_clear()
    handler = _Records()
    logger.addHandler(handler)
    yield handler.messages
    logger.removeHandler(handler)


@pytest.fixture(scope="module")
def base() -> SanaTransformer:
    torch.manual_seed(0)
    return SanaTransformer(tiny(in_channels=4, caption_channels=16)).eval()


def _ours(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "sanakit.adapters"]


def test_full_matrix_layers_are_reported_once_in_our_words(
    base, lycoris_records, caplog, capsys, tmp_path
) -> None:
    caplog.set_level(logging.INFO, logger="sanakit.adapters")
    # hidden 64, factor 4: W2 (16, 16) in the 64 x 64 layers (20 >= 16 / 2: full matrix), but
    # (80, 16) in conv_inverted (64 -> 320; 20 < 80 / 2: decomposed)
    handle = apply_adapter(copy.deepcopy(base), LokrSpec(rank=20, factor=4))
    full = sum(lora.use_w2 for lora in handle.model.lycoris.loras)
    assert 0 < full < len(handle.modules)
    assert _ours(caplog) == [
        f"LoKr: rank 20 is at least half of W2's larger side in {full} of {len(handle.modules)} "
        "layers (factor 4); those layers train W2 as a full matrix"
    ]
    assert not [m for m in lycoris_records if "too large" in m]
    assert "too large" not in capsys.readouterr().out

    file = handle.save(tmp_path)
    caplog.clear()
    load_adapter_into(copy.deepcopy(base), file)  # building LoKr modules from the file: quiet too
    assert not [m for m in lycoris_records if "too large" in m]
    assert "\x1b[" not in capsys.readouterr().out


def test_default_rank_reports_all_layers(base, lycoris_records, caplog) -> None:
    caplog.set_level(logging.INFO, logger="sanakit.adapters")
    handle = apply_adapter(copy.deepcopy(base), LokrSpec(rank=10000))
    (message,) = _ours(caplog)
    assert f"in all {len(handle.modules)} layers (factor 16)" in message
    assert lycoris_records == []


def test_no_notice_when_the_rank_decomposes_every_layer_or_full_matrix_is_asked(
    base, lycoris_records, caplog
) -> None:
    caplog.set_level(logging.INFO, logger="sanakit.adapters")
    apply_adapter(copy.deepcopy(base), LokrSpec(rank=2, factor=8))
    apply_adapter(copy.deepcopy(base), LokrSpec(rank=2, factor=8, full_matrix=True))
    assert _ours(caplog) == []
    assert lycoris_records == []
