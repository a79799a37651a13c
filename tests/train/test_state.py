"""The trainer's state as named parts: one file per part, one save loop, one load loop."""

from __future__ import annotations

import json

import pytest
import torch

from sanakit.errors import SanakitError
from sanakit.train import components
from sanakit.train.checkpoint import Checkpointer
from sanakit.train.config import run_config_from_dict
from sanakit.train.state import TrainState, load_parts, save_parts
from sanakit.train.trainer import Trainer


class Box:
    """A minimal stateful part."""

    def __init__(self, state) -> None:
        self.state = state

    def state_dict(self):
        return self.state

    def load_state_dict(self, state) -> None:
        self.state = state


def test_one_file_per_part_in_the_format_that_fits(tmp_path) -> None:
    parts = {
        "weights": Box({"a": torch.arange(3.0), "b": torch.ones(2, 2)}),
        "counters": Box({"step": 3, "xs": [1.5, None], "name": "x"}),
        "other": Box({"pair": (1, 2), 0: "int key", "t": torch.zeros(1)}),
    }
    folder = save_parts(parts, Checkpointer(tmp_path), 3, main=True, config={"seed": 1})
    names = sorted(p.name for p in folder.iterdir())
    assert names == [
        "config.json",
        "counters.json",
        "manifest.json",
        "other.pt",
        "weights.safetensors",
    ]
    assert json.loads((folder / "config.json").read_text()) == {"seed": 1}
    fresh = {name: Box(None) for name in parts}
    load_parts(fresh, folder)
    assert fresh["weights"].state.keys() == {"a", "b"}
    assert torch.equal(fresh["weights"].state["a"], torch.arange(3.0))
    assert fresh["counters"].state == {"step": 3, "xs": [1.5, None], "name": "x"}
    assert fresh["other"].state["pair"] == (1, 2) and fresh["other"].state[0] == "int key"


def test_a_missing_part_is_named_and_nothing_is_restored(tmp_path) -> None:
    folder = save_parts(
        {"weights": Box({"a": torch.ones(1)})}, Checkpointer(tmp_path), 1, main=True, config={}
    )
    weights, ema = Box("untouched"), Box(None)
    with pytest.raises(SanakitError, match=r"has no 'ema' part; .*train.ema"):
        load_parts({"weights": weights, "ema": ema}, folder)
    assert weights.state == "untouched"


def test_only_the_main_process_writes(tmp_path) -> None:
    calls = []

    class Collective(Box):
        def state_dict(self):
            calls.append("state_dict")  # every process must take part (e.g. an RNG gather)
            return super().state_dict()

    checkpointer = Checkpointer(tmp_path)
    assert save_parts({"rng": Collective({"x": 1})}, checkpointer, 1, main=False, config={}) is None
    assert calls == ["state_dict"] and checkpointer.latest() is None


def test_train_state_round_trip_keeps_types() -> None:
    state = TrainState(step=7, lr_scale=0.25, nonfinite_total=3, nonfinite_streak=1, recoveries=2)
    restored = TrainState()
    restored.load_state_dict(json.loads(json.dumps(state.state_dict())))
    assert restored == state and isinstance(restored.lr_scale, float)


def test_trainer_parts_and_resume(run_dict) -> None:
    run_dict["train"].update(max_steps=3, ema={"decay": 0.9}, method="lora", lora={"rank": 4})
    config = run_config_from_dict(run_dict)
    trainer = Trainer(config)
    assert list(trainer.parts()) == [
        "weights", "optimizer", "scheduler", "loader", "trainer", "ema", "rng",
    ]  # fmt: skip
    assert trainer.parts()["weights"] is trainer.adapter
    trainer.fit()
    folder = trainer.checkpointer.latest()
    assert {p.name for p in folder.iterdir()} == {
        "weights.safetensors", "ema.safetensors", "optimizer.pt", "scheduler.json",
        "loader.json", "trainer.json", "rng.pt", "config.json", "manifest.json",
    }  # fmt: skip
    assert set(load_file_keys(folder / "weights.safetensors")) == set(trainer.adapter.state_dict())
    resumed = Trainer(config, resume="latest")
    assert resumed.state == trainer.state and resumed.step == 3
    assert resumed.loader.state_dict() == trainer.loader.state_dict()
    assert resumed.scheduler.state_dict() == trainer.scheduler.state_dict()
    for key, value in trainer.ema.state_dict().items():
        assert torch.equal(resumed.ema.state_dict()[key], value), key


def load_file_keys(path) -> list[str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return list(f.keys())


def test_encoder_memo_stands_in_only_for_a_cache_built_with_it(run_dict) -> None:
    Trainer(run_config_from_dict(run_dict))  # builds the cache and records the memo
    memo = components.EncoderMemo(run_config_from_dict(run_dict))
    assert memo.lookup_built() is not None
    raw = json.loads(memo.path.read_text())
    memo.path.write_text(json.dumps(raw | {"text_fingerprint": "another text encoder"}))
    assert memo.lookup() is not None  # same encoder files ...
    assert memo.lookup_built() is None  # ... but the cache was built with other fingerprints
