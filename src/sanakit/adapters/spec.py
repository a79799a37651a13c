"""What an adapter trains: the LoRA and LoKr settings, which ARE the config tables
``[train.lora]`` and ``[train.lokr]`` (`sanakit.train.config.TrainSection` holds them as they are).

Validated once, here: the strict loader (:func:`sanakit.config.from_dict`) checks the types and
names the key in its errors (``train.lokr.factor must be >= 1 ...``), ``__post_init__`` the
values and the combinations that would make a setting do nothing. `apply_adapter` adds only
what depends on the model: that the targets exist, and LoKr options that the layer shapes make
ineffective. This module imports neither torch nor the adapter libraries, so loading a config
stays light.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

from sanakit.config import ConfigValueError, to_dict

# Default targets for both methods: every matmul inside a Sana block -- q/k/v/out of the linear
# self-attention (attn1) and of the cross-attention (attn2), plus the two 1x1 convolutions of the
# Mix-FFN (conv_inverted C -> 2*2.5C, conv_point 2.5C -> C), which together hold ~all of a
# block's weights. Left out: the depthwise 3x3 conv_depth (9 weights per channel, grouped, so
# no low-rank structure to exploit), and the shared embedders / caption projection / proj_out,
# which are not per-block and are best left frozen when adapting a style or subject. LyCORIS'
# own presets name diffusers classes (Attention, FeedForward), not ours, so LoKr uses this list.
DEFAULT_TARGET_MODULES = ("to_q", "to_k", "to_v", "to_out.0", "conv_inverted", "conv_point")


def _check_common(spec: LoraSpec | LokrSpec) -> None:
    """rank, alpha and target_modules, alike for both methods."""
    if spec.rank < 1:
        raise ConfigValueError(spec, "rank", f"must be >= 1, got {spec.rank}")
    if spec.alpha is not None and not (math.isfinite(spec.alpha) and spec.alpha > 0):
        raise ConfigValueError(spec, "alpha", f"must be > 0 (or left out), got {spec.alpha}")
    targets = spec.target_modules
    if targets is not None and (
        not targets
        or not all(isinstance(t, str) and t.strip(".") for t in targets)
        or len(set(targets)) != len(targets)
    ):
        raise ConfigValueError(
            spec,
            "target_modules",
            f"must be a non-empty list of distinct module-name suffixes such as "
            f"['to_q', 'to_v'], got {list(targets)!r}",
        )


class _Targets:
    """What LoRA and LoKr settings derive alike from ``target_modules``, ``alpha`` and ``rank``."""

    target_modules: tuple[str, ...] | None
    alpha: float | None
    rank: int

    @property
    def targets(self) -> tuple[str, ...]:
        return self.target_modules or DEFAULT_TARGET_MODULES

    @property
    def scale_alpha(self) -> float:
        return float(self.alpha) if self.alpha is not None else float(self.rank)


@dataclasses.dataclass(frozen=True)
class LoraSpec(_Targets):
    """``[train.lora]``: peft LoRA (Hu et al., 2021, arXiv:2106.09685), W + (alpha / rank) B A.

    rank: r. alpha: the scale numerator, scale = alpha / rank; None = rank (scale 1).
    dropout: LoRA dropout on the adapter input.
    target_modules: module-name suffixes to adapt (``to_q`` matches every
        ``transformer_blocks.N.attn{1,2}.to_q``); None = `DEFAULT_TARGET_MODULES`. Targets must be
        ``nn.Linear`` or non-grouped ``nn.Conv2d``.
    """

    method: ClassVar[str] = "lora"

    rank: int = 16
    alpha: float | None = None  # default: rank (scale 1)
    dropout: float = 0.0
    target_modules: tuple[str, ...] | None = None  # default: attention projections + FFN 1x1 convs

    def __post_init__(self) -> None:
        _check_common(self)
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigValueError(self, "dropout", f"must be in [0, 1), got {self.dropout}")


@dataclasses.dataclass(frozen=True)
class LokrSpec(_Targets):
    """``[train.lokr]``: LyCORIS LoKr, W + s * kron(W1, W2) factorised with ``factor``
    (`sanakit.adapters.lokr` has the shapes; the names are LyCORIS' ``create_lycoris`` kwargs).

    factor: Kronecker factor (SimpleTuner's LyCORIS example: 16; -1 = as square as possible).
    rank: LyCORIS ``linear_dim``: W2 = W2a W2b of this rank where rank < max(W2's sides) / 2,
        else a full matrix; the default 10000 keeps every factor of a Sana layer full.
    alpha: LyCORIS ``linear_alpha``; s = alpha / rank where a factor is decomposed (LyCORIS
        fixes s = 1 where W1 and W2 are both full). None = rank.
    target_modules: as for LoRA.
    full_matrix: W1 and W2 full matrices whatever the rank (scale 1).
    decompose_both: also W1 = W1a W1b where rank < max(W1's sides) / 2.
    init_lokr_norm: SimpleTuner's ``--init_lokr_norm``: W1 = 1 and W2 drawn normal with the base
        weight's mean and std times this value, so training starts from a small perturbation
        instead of exactly the base model; needs ``full_matrix``.
    """

    method: ClassVar[str] = "lokr"

    factor: int = 16
    rank: int = 10000
    alpha: float | None = None
    target_modules: tuple[str, ...] | None = None
    full_matrix: bool = False
    decompose_both: bool = False
    init_lokr_norm: float | None = None

    def __post_init__(self) -> None:
        _check_common(self)
        if self.factor < 1 and self.factor != -1:
            raise ConfigValueError(self, "factor", f"must be >= 1 or -1, got {self.factor}")
        if self.full_matrix and self.decompose_both:
            raise ConfigValueError(
                self, "decompose_both", "does nothing with full_matrix = true; pick one"
            )
        if self.full_matrix and self.alpha is not None and self.alpha != self.rank:
            raise ConfigValueError(
                self, "alpha", "does nothing with full_matrix = true (LyCORIS fixes the scale to 1)"
            )
        if self.init_lokr_norm is not None:
            if not (math.isfinite(self.init_lokr_norm) and self.init_lokr_norm > 0):
                raise ConfigValueError(
                    self, "init_lokr_norm", f"must be > 0, got {self.init_lokr_norm}"
                )
            if not self.full_matrix:
                raise ConfigValueError(
                    self, "init_lokr_norm", "needs full_matrix = true (W1 = 1, W2 full)"
                )


AdapterSpec = LoraSpec | LokrSpec


def spec_record(spec: AdapterSpec, seed: int) -> dict[str, Any]:
    """What an exported adapter records of its settings (safetensors header, LoKr sidecar):
    ``{"method": ..., "seed": ..., <the table's keys>}``, the targets spelled out."""
    return {
        "method": spec.method,
        "seed": seed,
        **to_dict(spec),
        "target_modules": list(spec.targets),
    }
