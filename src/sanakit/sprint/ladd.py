"""LADD: latent adversarial distillation with a discriminator on the frozen teacher's features
(Sauer et al. 2024, "Fast high-resolution image synthesis with latent adversarial diffusion
distillation"; Sana-Sprint §3.3; NVlabs ``sana_ladd.py`` / ``ladd_blocks.py``, spec §5).

The discriminator runs the frozen teacher (the one the sCM branch uses: one copy in memory) on a
noisy latent, captures the outputs of blocks ``head_block_ids`` with forward hooks, and puts one
small head on each: spectral-norm 1-D convolutions over the token sequence (kernel 1, then a
residual kernel-9 circular one) with grouped batch-norm and LeakyReLU(0.2), ending in one logit
per token. Only the heads train.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from sanakit.models import SanaTransformer
from sanakit.sprint.trigflow import SIGMA_DATA, noisy_state


class BatchNormLocal(nn.Module):
    """Batch-norm over groups of at most ``virtual_bs`` samples (``ceil(B / virtual_bs)`` groups
    of near-equal size, consecutive samples): statistics per channel over (group, tokens), no
    running statistics (train and eval alike), affine. x: (B, C, N)."""

    def __init__(self, channels: int, virtual_bs: int = 8, eps: float = 1e-5) -> None:
        super().__init__()
        self.virtual_bs, self.eps = virtual_bs, eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        groups = math.ceil(x.shape[0] / self.virtual_bs)
        parts = []
        for part in torch.tensor_split(x, groups, dim=0):
            mean = part.mean(dim=(0, 2), keepdim=True)
            var = part.var(dim=(0, 2), keepdim=True, unbiased=False)
            parts.append((part - mean) / torch.sqrt(var + self.eps))
        return torch.cat(parts) * self.weight[:, None] + self.bias[:, None]


def _spectral_conv(c_in: int, c_out: int, kernel: int) -> nn.Module:
    conv = nn.Conv1d(c_in, c_out, kernel, padding=kernel // 2, padding_mode="circular")
    return spectral_norm(conv, n_power_iterations=1, eps=1e-12, dim=0)


def _block(channels: int, kernel: int) -> nn.Sequential:
    return nn.Sequential(
        _spectral_conv(channels, channels, kernel),
        BatchNormLocal(channels),
        nn.LeakyReLU(0.2),
    )


class _Residual(nn.Module):
    def __init__(self, fn: nn.Module) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.fn(x) + x) / math.sqrt(2)


class DiscriminatorHead(nn.Module):
    """(B, N, C) teacher block output -> (B, N) logits (one per token)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.main = nn.Sequential(_block(channels, 1), _Residual(_block(channels, 9)))
        self.cls = _spectral_conv(channels, 1, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = features.transpose(1, 2)  # (B, C, N): tokens as a row-major 1-D sequence
        return self.cls(self.main(x)).squeeze(1)


def clip_block_ids(block_ids: Sequence[int], depth: int) -> tuple[int, ...]:
    """``head_block_ids`` on a model of ``depth`` blocks: ids past the last block become the last
    one (duplicates dropped, order kept): ``[2, 8, 14, 19]`` on 4 blocks -> ``(2, 3)``."""
    out: list[int] = []
    for i in block_ids:
        i = min(int(i), depth - 1)
        if i not in out:
            out.append(i)
    return tuple(out)


class TeacherFeatureDiscriminator(nn.Module):
    """``disc(disc.features_of(x_in, t, text, mask)) -> (B, N * n_heads)`` logits.

    ``features_of`` runs the teacher (TrigFlow-wrapped; its output is discarded) and returns the
    hooked blocks' outputs; calling the module runs the heads on them (so a DDP wrapper of the
    heads syncs their gradients). Only ``heads`` are parameters of this
    module: the teacher is held by reference, frozen, and never saved with it.
    """

    def __init__(
        self,
        teacher: SanaTransformer,
        block_ids: Sequence[int],
        run_teacher: Callable[..., torch.Tensor],
    ) -> None:
        super().__init__()
        self.block_ids = clip_block_ids(block_ids, teacher.config.num_layers)
        self.heads = nn.ModuleList(
            DiscriminatorHead(teacher.config.hidden_size) for _ in self.block_ids
        )
        self._teacher = [teacher]  # a list: not registered as a submodule
        self._run_teacher = run_teacher
        self._captured: dict[int, torch.Tensor] = {}
        self._capturing = False
        for i in self.block_ids:
            teacher.transformer_blocks[i].register_forward_hook(self._hook(i))

    def _hook(self, index: int):
        def hook(module, inputs, output):
            if self._capturing:
                self._captured[index] = output

        return hook

    def features_of(
        self, x_in: torch.Tensor, t: torch.Tensor, text: torch.Tensor, mask: torch.Tensor | None
    ) -> list[torch.Tensor]:
        self._captured = {}
        self._capturing = True
        try:
            self._run_teacher(x_in, t, text, mask)
        finally:
            self._capturing = False
        return [self._captured[i] for i in self.block_ids]

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """Head logits ``(B, N * n_heads)`` of the features of :meth:`features_of`."""
        return torch.cat([head(f.float()) for head, f in zip(self.heads, features)], dim=1)


class DiscriminatorBatch(NamedTuple):
    """The discriminator's inputs: ``(x_in, t, text, mask)`` for the real and the fake branch."""

    real: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]
    fake: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]


def discriminator_batch(
    x0: torch.Tensor,
    x0_hat: torch.Tensor,
    cond: tuple[torch.Tensor, torch.Tensor | None],
    draws: dict[str, torch.Tensor],
    *,
    misaligned_pairs: bool,
    separate_times: bool,
    sigma_d: float = SIGMA_DATA,
) -> DiscriminatorBatch:
    """Real = data ``x0`` noised at ``t_real`` (or ``t_fake`` without ``separate_times``) with its
    own B captions; fake = the student's ``x0_hat`` noised at ``t_fake``, plus, with
    ``misaligned_pairs`` and B > 1, the real images rolled by one (``roll(x0, 1)``: image i-1 with
    caption i) noised at ``t_mis`` as B more fakes with the *original* captions (NVlabs; the
    diffusers script also doubles the real branch's captions, a batch mismatch). TrigFlow units
    in, network inputs (``/ sigma_d``) out; ``draws`` holds ``t_*`` (B,) and ``z_*`` (standard
    normal, shaped like ``x0``)."""
    text, mask = cond
    t_fake = draws["t_fake"]
    t_real = draws["t_real"] if separate_times else t_fake
    fake = noisy_state(x0_hat, draws["z_fake"] * sigma_d, t_fake)
    real = noisy_state(x0, draws["z_real"] * sigma_d, t_real)
    fake_text, fake_mask = text, mask
    if misaligned_pairs and x0.shape[0] > 1:
        wrong = noisy_state(torch.roll(x0, 1, dims=0), draws["z_mis"] * sigma_d, draws["t_mis"])
        fake, t_fake = torch.cat([fake, wrong]), torch.cat([t_fake, draws["t_mis"]])
        fake_text = torch.cat([text, text])
        fake_mask = torch.cat([mask, mask]) if mask is not None else None
    return DiscriminatorBatch(
        real=(real / sigma_d, t_real, text, mask),
        fake=(fake / sigma_d, t_fake, fake_text, fake_mask),
    )


def hinge_d_loss(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """Discriminator hinge loss ``(mean relu(1 - D(real)) + mean relu(1 + D(fake))) / 2``."""
    return 0.5 * (torch.relu(1.0 - real).mean() + torch.relu(1.0 + fake).mean())


def hinge_g_loss(fake: torch.Tensor) -> torch.Tensor:
    """Generator hinge loss ``-mean D(fake)``."""
    return -fake.mean()


def r1_penalty(disc: TeacherFeatureDiscriminator, features: Sequence[torch.Tensor]) -> torch.Tensor:
    """R1 on the heads' inputs (NVlabs' optional ``r1_penalty``): mean over samples of
    ``sum_heads ||d head(f) / d f||^2`` divided by the number of heads (differentiable)."""
    inputs = [f.detach().float().requires_grad_(True) for f in features]
    out = disc(inputs)
    grads = torch.autograd.grad(out.sum(), inputs, create_graph=True)
    per_sample = sum(g.pow(2).flatten(1).sum(1) for g in grads)
    return per_sample.mean() / len(inputs)
