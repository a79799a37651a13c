"""The trainer's state as named parts (EDM2 style), one loop that saves them, one that restores.

``Trainer.parts()`` maps a name to an object with ``state_dict()`` / ``load_state_dict()``:
``weights`` (the model, or only the adapter), ``optimizer``, ``scheduler``, ``loader`` (the data
position), ``trainer`` (:class:`TrainState`: step, LR scale, NaN-guard counters), ``rng``
(:class:`RNGState`), and ``ema`` / ``scaler`` (fp16 loss scale) when the run has them.

A checkpoint folder holds one file per part, named after it, in the first format that fits its
state: ``NAME.safetensors`` (a flat dict of tensors), ``NAME.json`` (plain JSON values),
``NAME.pt`` (anything else, ``torch.save``); plus ``config.json`` (the resolved run config) and
the manifest written last by :class:`~sanakit.train.checkpoint.Checkpointer` (atomic write).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from sanakit.errors import SanakitError
from sanakit.train.checkpoint import Checkpointer, Writer

log = logging.getLogger("sanakit.train")


class Stateful(Protocol):
    def state_dict(self) -> Mapping[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any], /) -> Any: ...


@dataclasses.dataclass
class TrainState:
    """The trainer's counters (``trainer.json``)."""

    step: int = 0  # optimizer steps taken
    lr_scale: float = 1.0  # factor on train.lr, halved by every NaN recovery
    nonfinite_total: int = 0  # steps skipped for a non-finite loss or gradient
    nonfinite_streak: int = 0  # ... in a row, up to now
    recoveries: int = 0  # reloads of the last checkpoint after a streak

    def state_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for field in dataclasses.fields(self):
            setattr(self, field.name, type(field.default)(state[field.name]))


def _rng_state() -> dict[str, Any]:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


class RNGState:
    """Python, numpy, torch and CUDA RNG states of every process (``state_dict`` is collective:
    every process calls it); each process restores its own, or process 0's when the checkpoint
    was written by fewer processes."""

    def __init__(self, rank: int = 0, world: int = 1) -> None:
        self.rank, self.world = rank, world

    def state_dict(self) -> dict[str, Any]:
        from accelerate.utils import gather_object

        return {"ranks": gather_object([_rng_state()])}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        ranks = state["ranks"]
        if len(ranks) != self.world:
            log.warning(
                "checkpoint written by %d processes, resuming with %d", len(ranks), self.world
            )
        mine = ranks[self.rank] if self.rank < len(ranks) else ranks[0]
        random.setstate(mine["python"])
        np.random.set_state(mine["numpy"])
        torch.set_rng_state(mine["torch"])
        if mine["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(mine["cuda"])


def _is_json(value: Any) -> bool:
    """True for values that survive a JSON round trip unchanged (no tuples, no int keys)."""
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_json(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_is_json(v) for v in value)
    return value is None or isinstance(value, str | int | float | bool)


def _suffix(state: Mapping[str, Any]) -> str:
    if state and all(isinstance(v, torch.Tensor) for v in state.values()):
        return ".safetensors"
    return ".json" if _is_json(state) else ".pt"


def _write_tensors(state: Mapping[str, torch.Tensor], path: Path) -> None:
    save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(path))


_WRITERS: dict[str, Callable[[Any, Path], None]] = {
    ".safetensors": _write_tensors,
    ".json": lambda state, path: path.write_text(json.dumps(state)),
    ".pt": lambda state, path: torch.save(state, path),
}
_READERS: dict[str, Callable[[Path], Any]] = {
    ".safetensors": lambda path: load_file(str(path)),
    ".json": lambda path: json.loads(path.read_text()),
    ".pt": lambda path: torch.load(path, weights_only=False),  # numpy RNG state, optimizer
}


def save_parts(
    parts: Mapping[str, Stateful],
    checkpointer: Checkpointer,
    step: int,
    *,
    main: bool,
    config: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> Path | None:
    """Write a checkpoint of ``parts`` for ``step``. Every process calls it (a part's
    ``state_dict`` may be collective); the main process writes the folder and returns it."""
    states = {name: part.state_dict() for name, part in parts.items()}
    if not main:
        return None
    writers: dict[str, Writer] = {}
    for name, state in states.items():
        suffix = _suffix(state)
        writers[name + suffix] = lambda path, s=state, w=_WRITERS[suffix]: w(s, path)
    writers["config.json"] = lambda path: path.write_text(json.dumps(config, indent=2))
    return checkpointer.save(step, writers, extra=extra)


def load_parts(parts: Mapping[str, Stateful], folder: Path) -> None:
    """Restore every part from the checkpoint ``folder`` (all files are found before any part
    changes; a part the checkpoint lacks is an error naming it)."""
    files = {}
    for name in parts:
        found = [folder / (name + s) for s in _READERS if (folder / (name + s)).is_file()]
        if not found:
            raise SanakitError(
                f"checkpoint {folder} has no {name!r} part; it was written by a run with other "
                "settings (train.method, train.ema, train.mixed_precision)"
            )
        files[name] = found[0]
    for name, part in parts.items():
        part.load_state_dict(_READERS[files[name].suffix](files[name]))
