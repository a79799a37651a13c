"""LyCORIS' full_matrix / decompose_both and SimpleTuner's init_lokr_norm import into the
``[train.lokr]`` keys of the same names (see docs/simpletuner.md)."""

from __future__ import annotations

import json

import pytest
from tests.compat import seed_blocks
from tests.compat.conftest import MINIMAL, write_tree

from sanakit.compat import import_config
from sanakit.errors import SanakitError

LYCORIS = {"algo": "lokr", "factor": 8, "apply_preset": {"target_module": ["Attention"]}}
LOKR_RUN = {**MINIMAL, "model_type": "lora", "lora_type": "lycoris"}
LOKR_RUN["lycoris_config"] = "config/lycoris_config.json"


def _import(root, lycoris: dict, **config):
    backends = json.loads(seed_blocks.MULTIDATABACKEND)
    backends[0].pop("is_regularisation_data", None)
    lyco = json.dumps({**LYCORIS, **lycoris})
    write_tree(root, {**LOKR_RUN, **config}, backends, lycoris=lyco)
    result = import_config("config/config.json")
    return result.config.train.lokr, {e.key: e for e in result.mapping}


def test_full_matrix_and_init_lokr_norm(root) -> None:
    raw = {"full_matrix": True, "linear_dim": 10000, "linear_alpha": 1, "decompose_both": True}
    lokr, mapping = _import(root, raw, init_lokr_norm=1e-3)
    assert (lokr.full_matrix, lokr.decompose_both, lokr.init_lokr_norm) == (True, False, 1e-3)
    assert (lokr.rank, lokr.alpha) == (10000, None)  # unused with full matrices: not written
    assert mapping["lycoris_config.json:full_matrix"].target == "train.lokr.full_matrix"
    assert mapping["init_lokr_norm"].target == "train.lokr.init_lokr_norm"
    for key in ("linear_dim", "linear_alpha", "decompose_both"):  # LyCORIS ignores them too
        assert "does nothing with full_matrix" in mapping[f"lycoris_config.json:{key}"].note


def test_decompose_both(root) -> None:
    lokr, mapping = _import(root, {"linear_dim": 2, "linear_alpha": 4, "decompose_both": True})
    assert (lokr.rank, lokr.alpha, lokr.decompose_both, lokr.full_matrix) == (2, 4.0, True, False)
    assert mapping["lycoris_config.json:decompose_both"].target == "train.lokr.decompose_both"
    lokr, _ = _import(root, {"linear_dim": 2, "decompose_both": False})
    assert lokr.decompose_both is False


def test_init_lokr_norm_needs_full_matrix_and_is_lokr_only(root) -> None:
    with pytest.raises(SanakitError, match="train.lokr.init_lokr_norm needs full_matrix = true"):
        _import(root, {"linear_dim": 2}, init_lokr_norm=1e-3)
    lokr, mapping = _import(root, {"full_matrix": True}, init_lokr_norm=None)
    assert lokr.init_lokr_norm is None and mapping["init_lokr_norm"].target is None
    write_tree(root, {**MINIMAL, "model_type": "lora", "init_lokr_norm": 1e-3})
    result = import_config("config/config.json", allow_unsupported=True)
    assert result.config.train.lora is not None and result.config.train.lokr is None
    assert "lora_type standard" in {e.key: e for e in result.mapping}["init_lokr_norm"].note
