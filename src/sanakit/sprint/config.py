"""``[distill]``: Sana-Sprint distillation settings (read by ``sanakit distill``).

Defaults are NVlabs' Sana-Sprint configs (``SanaSprint_1600M_1024px_allqknorm_bf16_scm_ladd``)
and ``train_scm_ladd.py`` (spec §5.6). The student's optimizer, learning rate, schedule, batch,
precision and gradient clipping are ``[train]``'s (NVlabs: CAME lr 2e-6, 5000 warm-up steps,
clip 0.1; docs/sprint.md gives the recommended config).
"""

from __future__ import annotations

import dataclasses

from sanakit.config import ConfigValueError


@dataclasses.dataclass(frozen=True)
class DistillSection:
    """``[distill]``: the teacher, the sCM loss and the LADD discriminator.

    ``teacher`` is a dense-time Sana flow model (a pipeline or transformer folder, from
    ``sanakit sprint-teacher`` + ``sanakit train``); left out, ``[model]`` is the teacher and the
    student starts as its copy with a zero guidance embedding. When ``[model]`` is a Sana-Sprint
    model (guidance embedding), the student starts from it and ``teacher`` is required.
    """

    teacher: str | None = None
    cfg_scales: tuple[float, ...] = (4.0, 4.5, 5.0)  # teacher CFG scale, one drawn per sample
    p_mean: float = 0.2  # generator time density: log(sigma) ~ N(p_mean, p_std)
    p_std: float = 1.6
    tangent_warmup_steps: int = 4000  # r = min(1, step / this); steps count G (and D) updates
    tangent_norm_c: float = 0.1  # g / (||g|| + c)
    scm_lambda: float = 1.0
    validation_steps: tuple[int, ...] = (1, 2, 4)  # SCM sampler steps of the validation grids
    # LADD (spec §5): adversarial loss with a discriminator on the teacher's block outputs;
    # adv_lambda = 0 turns it off (sCM only, no discriminator steps)
    adv_lambda: float = 0.5
    head_block_ids: tuple[int, ...] = (2, 8, 14, 19)  # clipped to the model's depth
    d_p_mean: float = -0.6  # discriminator time density: log(sigma) ~ N(d_p_mean, d_p_std)
    d_p_std: float = 1.0
    largest_time_prob: float = 0.5  # adversarial samples generated from t = 1.5708 (pure noise)
    misaligned_pairs: bool = True  # real images with a rolled caption are extra fakes for D
    separate_real_fake_times: bool = True  # D draws real and fake noise times independently
    r1_weight: float = 0.0  # R1 penalty on the heads' inputs (NVlabs: off; 1e-5 when on)
    d_optimizer: str | None = None  # one of train.optimizer's names; None: train.optimizer
    d_lr: float | None = None  # None: train's learning rate (no schedule for D)

    def __post_init__(self) -> None:
        if not self.cfg_scales or any(w < 1.0 for w in self.cfg_scales):
            raise ConfigValueError(self, "cfg_scales", "must be a non-empty list of scales >= 1")
        if not self.p_std > 0:
            raise ConfigValueError(self, "p_std", f"must be > 0, got {self.p_std}")
        if self.tangent_warmup_steps < 0:
            raise ConfigValueError(self, "tangent_warmup_steps", "must be >= 0 (0: no warm-up)")
        if not self.tangent_norm_c > 0:
            raise ConfigValueError(self, "tangent_norm_c", "must be > 0")
        if not self.scm_lambda > 0:
            raise ConfigValueError(self, "scm_lambda", "must be > 0")
        if not self.validation_steps or any(n < 1 for n in self.validation_steps):
            raise ConfigValueError(self, "validation_steps", "must be a list of step counts >= 1")
        if self.adv_lambda < 0:
            raise ConfigValueError(self, "adv_lambda", "must be >= 0 (0: sCM only)")
        if not self.head_block_ids or any(i < 0 for i in self.head_block_ids):
            raise ConfigValueError(self, "head_block_ids", "must be a list of block indices >= 0")
        if not self.d_p_std > 0:
            raise ConfigValueError(self, "d_p_std", f"must be > 0, got {self.d_p_std}")
        if not 0.0 <= self.largest_time_prob <= 1.0:
            raise ConfigValueError(self, "largest_time_prob", "must be in [0, 1]")
        if self.r1_weight < 0:
            raise ConfigValueError(self, "r1_weight", "must be >= 0 (0: no R1 penalty)")
        if self.d_lr is not None and not self.d_lr > 0:
            raise ConfigValueError(self, "d_lr", "must be > 0")
        if not self.adversarial:
            ladd = ("d_optimizer", "d_lr")
            for key in ladd:
                if getattr(self, key) is not None:
                    raise ConfigValueError(self, key, "does nothing with adv_lambda = 0")

    @property
    def adversarial(self) -> bool:
        """LADD on: generator and discriminator steps alternate."""
        return self.adv_lambda > 0

    def warmup_ratio(self, step: int) -> float:
        """The tangent warm-up factor ``r = min(1, step / tangent_warmup_steps)``."""
        if self.tangent_warmup_steps == 0:
            return 1.0
        return min(1.0, step / self.tangent_warmup_steps)
