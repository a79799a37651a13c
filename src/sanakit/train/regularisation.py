"""Regularisation data in the training objective: DreamBooth prior preservation.

A dataset with ``is_regularisation_data = true`` marks its samples (``batch["is_regularisation"]``,
``(B,)`` bool). Two ``[train]`` settings act on them:

- ``prior_loss_weight`` λ multiplies their per-sample loss, on top of the dataset's
  ``loss_weight``: DreamBooth's prior-preservation loss L = E[ℓ(x)] + λ E[ℓ(x_pr)] (Ruiz et al.
  2023, eq. 2; diffusers' ``train_dreambooth.py --prior_loss_weight``, default 1).
- ``regularisation_target = "base_model"`` (LoRA/LoKr only): their target is the base model's
  own prediction for the same noisy latent, time and text with the adapter disabled, instead of
  ε − x0, so the adapter learns to leave such prompts as the base model has them. This is what
  SimpleTuner does with ``is_regularisation_data`` when it trains a LoRA or LyCORIS adapter
  (documentation/DATALOADER.md "parent-teacher training"; ``Trainer.
  _prepare_regularisation_parent_targets``: a no-grad prediction with the adapter disabled —
  LyCORIS multiplier 0, peft ``disable_lora`` — becomes the target; same loss otherwise).
  ``"data"`` (the default) trains them towards their own images, as ordinary data.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

import torch

from sanakit.errors import SanakitError

if TYPE_CHECKING:
    from sanakit.train.config import TrainSection


def sample_weights(
    batch: dict[str, Any], train: TrainSection, device: torch.device
) -> torch.Tensor:
    """``(B,)`` float32 loss weight of each sample: the dataset's ``loss_weight``, times
    ``train.prior_loss_weight`` for regularisation samples."""
    weights = batch["loss_weight"].to(device, torch.float32)
    reg = batch["is_regularisation"].to(device)
    return torch.where(reg, weights * train.prior_loss_weight, weights)


def regularisation_target(
    target: torch.Tensor,
    batch: dict[str, Any],
    train: TrainSection,
    predict: Callable[[], torch.Tensor],
    adapter_off: Callable[[], AbstractContextManager[Any]] | None,
) -> torch.Tensor:
    """``target`` ``(B, C, h, w)`` with the rows of regularisation samples replaced by the base
    model's prediction when ``train.regularisation_target == "base_model"`` (else unchanged).

    ``predict()`` runs the model on this step's inputs (noisy latents, model time, text);
    ``adapter_off()`` is a context in which the model runs without its adapter
    (:meth:`sanakit.adapters.AdapterHandle.disabled`). The prediction is made without gradient.
    """
    if train.regularisation_target != "base_model":
        return target
    reg = batch["is_regularisation"].to(target.device)
    if not bool(reg.any()):
        return target
    if adapter_off is None:
        raise SanakitError(
            "train.regularisation_target = 'base_model' needs the model's adapter (method lora or "
            "lokr) to predict with it disabled"
        )
    with torch.no_grad(), adapter_off():
        base = predict().float()
    return torch.where(reg.view(-1, *[1] * (target.ndim - 1)), base, target)
