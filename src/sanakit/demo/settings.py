"""Settings of a ``sanakit demo`` run (kept free of heavy imports: the CLI reads the defaults
to build its help text)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from sanakit.demo.stack import TextStack
from sanakit.errors import SanakitError


@dataclass(frozen=True)
class DemoSettings:
    """Everything a demo run depends on. ``steps``/``minutes``: train until ``steps`` optimizer
    steps, or stop earlier so that the whole invocation (data, training and sampling) ends
    within ``minutes`` (None: no time limit). The defaults reach prompt adherence >= 0.8 on 2
    CPU cores in minutes."""

    out: Path = Path("sanakit-demo")
    steps: int = 2500
    minutes: float | None = 9.0
    seed: int = 0
    image_size: int = 32
    per_combo: int = 24  # images per colour x shape x background (36 combinations)
    pixel_shuffle_factor: int = 4  # 32x32x3 image -> 8x8x48 latent
    preset: str = "demo"
    batch_size: int = 32
    lr: float = 2e-3  # 1e-3 and cosine decay learn shapes later; 3e-3 is worse
    warmup_steps: int = 50
    lr_scheduler: str = "constant_with_warmup"
    train_shift: float = 3.0  # sigma shift while training: more steps at high noise, where the
    # prompt decides the picture (Sana trains with 3); without it shape words are learned late
    sample_shift: float = 1.0
    caption_dropout: float = 0.1
    # fp32: at this size (hidden 128) bf16 autocast costs more than it saves even with AMX
    # (bench_contention: 1.34x fp32's step time), and ~20x without native bf16
    mixed_precision: str = "no"
    ema_decay: float | None = None  # None: no EMA (0.995 scored lower); else EMA weights sample
    checkpoint_every: int = 100
    validation_every: int = 200
    guidance: float = 1.5
    sample_steps: int = 20
    seeds_per_prompt: int = 8  # 96 samples: 4 per prompt moved the score by +-0.06
    threads: int | None = 2
    # --sprint: the model is a Sana-Sprint teacher (RMS qk-norm, dense time), then distilled
    # into a few-step student (sanakit.demo.sprint) within the same --minutes
    sprint: bool = False
    teacher_share: float = 0.6  # of the --minutes budget: teacher training ends by then
    distill_steps: int = 600
    distill_lr: float = 1e-4  # spec §10.1 (the tiny model needs far more than Sprint's 2e-6)
    distill_batch_size: int = 32
    # Sana-Sprint distils CFG at Sana's scales (4-5), where the teacher's few-step samples fail
    # (at 1.5 its 2-step DPM samples already score as well as its 20-step ones)
    distill_cfg_scales: tuple[float, ...] = (4.0, 4.5, 5.0)
    sprint_guidance: float = 4.5  # teacher CFG and student guidance of the scored samples
    tangent_warmup_steps: int = 100
    sprint_steps: tuple[int, ...] = (1, 2, 4)  # student SCM steps scored
    teacher_steps: tuple[int, ...] = (20, 2)  # teacher DPM steps scored
    text: TextStack = field(default_factory=TextStack)

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise SanakitError(f"sanakit demo: --steps must be >= 1, got {self.steps}")
        if self.minutes is not None and not self.minutes > 0:
            raise SanakitError(f"sanakit demo: --minutes must be > 0, got {self.minutes}")
        if self.distill_steps < 1:
            raise SanakitError(
                f"sanakit demo: --distill-steps must be >= 1, got {self.distill_steps}"
            )
        if not 0.0 < self.teacher_share < 1.0:
            raise SanakitError(f"teacher_share must be in (0, 1), got {self.teacher_share}")
