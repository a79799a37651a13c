"""Experiment trackers (TensorBoard, wandb via accelerate): one log folder per ``fit()``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from sanakit.config import to_dict
from sanakit.train.config import RunConfig


def start_trackers(accelerator: Any, config: RunConfig, step: int) -> Path | None:
    """Start TensorBoard/wandb on ``accelerator`` (an ``accelerate.Accelerator``) for a ``fit()``
    starting at ``step``; returns its TensorBoard folder (None: wandb or no logging)."""
    if config.output.log_with == "none":
        return None
    folder = new_log_dir(Path(config.output.dir) / "logs", step)
    accelerator.trackers = []  # a fit() after a Ctrl-C must not reopen the old folder
    # accelerate names the TensorBoard folder after the "project"; wandb keeps one project
    # and gets the folder's name as the run name
    wandb = config.output.log_with == "wandb"
    accelerator.init_trackers(
        "sanakit" if wandb else folder.name,
        config=flat(to_dict(config.train)),
        init_kwargs={"wandb": {"name": folder.name}},
    )
    return None if wandb else folder


def new_log_dir(root: Path, step: int) -> Path:
    """A log folder no earlier ``fit()`` into ``root`` used: the start time, plus the step a
    resumed run starts from (TensorBoard shows every folder as its own run)."""
    name = time.strftime("%Y%m%d-%H%M%S") + (f"-from-step-{step}" if step else "")
    folder, n = root / name, 1
    while folder.exists():  # two runs started within one second
        n += 1
        folder = root / f"{name}-{n}"
    return folder


def flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; values other than numbers and strings as ``str``."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flat(v, f"{prefix}{k}."))
        elif isinstance(v, int | float | str | bool):
            out[f"{prefix}{k}"] = v
        else:
            out[f"{prefix}{k}"] = str(v)
    return out
