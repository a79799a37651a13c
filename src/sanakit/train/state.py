"""What a checkpoint holds and how the trainer writes and restores it.

Files (see :class:`~sanakit.train.checkpoint.Checkpointer` for the atomic write):
``weights.safetensors`` (the full model, or only the adapter), ``ema.safetensors``,
``optimizer.pt``, ``scheduler.pt``, ``loader.json`` (the data position), ``rng.pt`` (python,
numpy, torch and CUDA RNG states of every rank), ``trainer.json`` (step, lr scale, NaN-guard
counters, world size) and ``config.json`` (the resolved run config).
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from sanakit.config import to_dict

if TYPE_CHECKING:
    from sanakit.train.trainer import Trainer

log = logging.getLogger("sanakit.train")


def _rng_state() -> dict:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def _weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    if trainer.adapter is not None:
        return trainer.adapter.state_dict()
    return trainer.accelerator.unwrap_model(trainer.ddp_model).state_dict()


def write_checkpoint(trainer: Trainer) -> Path | None:
    """Every rank contributes its RNG state; the main process writes the folder."""
    from accelerate.utils import gather_object

    all_rng = gather_object([_rng_state()])
    acc = trainer.accelerator
    if not acc.is_main_process:
        acc.wait_for_everyone()
        return None
    state = {
        "step": trainer.step,
        "lr_scale": trainer.lr_scale,
        "nonfinite_total": trainer.nonfinite_total,
        "recoveries": trainer.recoveries,
        "world_size": trainer.world,
    }

    def tensors(d: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.detach().contiguous().cpu() for k, v in d.items()}

    writers = {
        "weights.safetensors": lambda p: save_file(tensors(_weights(trainer)), str(p)),
        "optimizer.pt": lambda p: torch.save(trainer.optimizer.state_dict(), p),
        "scheduler.pt": lambda p: torch.save(trainer.scheduler.state_dict(), p),
        "loader.json": lambda p: p.write_text(json.dumps(trainer.loader.state_dict())),
        "rng.pt": lambda p: torch.save(all_rng, p),
        "trainer.json": lambda p: p.write_text(json.dumps(state)),
        "config.json": lambda p: p.write_text(json.dumps(to_dict(trainer.config), indent=2)),
    }
    if trainer.ema is not None:
        writers["ema.safetensors"] = lambda p: save_file(tensors(trainer.ema.state_dict()), str(p))
    folder = trainer.checkpointer.save(
        trainer.step, writers, extra={"method": trainer.config.train.method}
    )
    acc.wait_for_everyone()
    return folder


def read_checkpoint(trainer: Trainer, folder: Path) -> None:
    """Restore everything :func:`write_checkpoint` saved into a built trainer."""
    weights = load_file(str(folder / "weights.safetensors"))
    if trainer.adapter is not None:
        trainer.adapter.load_state_dict(weights)
    else:
        trainer.accelerator.unwrap_model(trainer.ddp_model).load_state_dict(weights)
    trainer.optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=False))
    trainer.scheduler.load_state_dict(torch.load(folder / "scheduler.pt", weights_only=False))
    trainer.loader.load_state_dict(json.loads((folder / "loader.json").read_text()))
    if trainer.ema is not None:
        trainer.ema.load_state_dict(load_file(str(folder / "ema.safetensors")))
    state = json.loads((folder / "trainer.json").read_text())
    if state["world_size"] != trainer.world:
        log.warning(
            "checkpoint written by %d processes, resuming with %d",
            state["world_size"],
            trainer.world,
        )
    rng = torch.load(folder / "rng.pt", weights_only=False)
    mine = rng[trainer.rank] if trainer.rank < len(rng) else rng[0]
    random.setstate(mine["python"])
    np.random.set_state(mine["numpy"])
    torch.set_rng_state(mine["torch"])
    if mine["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(mine["cuda"])
    trainer.step = state["step"]
    trainer.nonfinite_total = state["nonfinite_total"]
    trainer.recoveries = state["recoveries"]
    trainer.lr_scale = state["lr_scale"]
