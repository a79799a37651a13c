"""``sanakit demo --sprint``: the demo model trained as a Sana-Sprint teacher (qk-norm, dense
time), distilled into a few-step student with ``sanakit distill``'s trainer, and every model
scored by the demo's classifier (a CPU proof that few-step distillation works).

Budget (``--minutes``): teacher training ends by ``teacher_share`` of it, distillation by the time
the scoring needs before the end. Outputs under ``OUT/sprint/``: ``score.json`` (``prompt_adherence``,
``color_accuracy``, ``shape_accuracy`` per model and steps), ``grid.png`` (rows = prompts; column
groups = teacher DPM 20 | teacher DPM 2 | student SCM 1 | 2 | 4 steps, labelled; the first
``GRID_SEEDS`` seeds),
``samples.jsonl``, ``samples/``, ``final/`` (the student, a Sprint folder) and checkpoints.
Ctrl-C saves a checkpoint; the same command resumes (once distillation has started, the teacher
is frozen: a rerun only continues the distillation).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from sanakit.demo.pace import minutes
from sanakit.demo.run import eval_prompts, judge_sample, run_config_dict, train_demo
from sanakit.demo.score import score_predictions
from sanakit.demo.settings import DemoSettings
from sanakit.sprint.trainer import DistillTrainer
from sanakit.train.checkpoint import Checkpointer
from sanakit.train.config import RunConfig, ValidationSection, run_config_from_dict
from sanakit.train.validation import eval_mode, prompt_embeddings, sample_images

# scoring time per image and model call (demo model, 2 threads; measured 20-45 s for the default
# 5 columns x 8 seeds x 12 prompts on the 2-core development VM): reserved at the end of --minutes
SCORE_SECONDS_PER_IMAGE_STEP = 0.008
GRID_SEEDS = 3  # seeds per column group in grid.png (all seeds are scored)


@dataclass(frozen=True)
class Column:
    """One scored (model, sampler, steps) group of the grid."""

    model: str  # "teacher" | "student"
    sampler: str  # "dpm" | "scm"
    steps: int

    @property
    def tag(self) -> str:
        return f"{self.model}-{self.sampler}{self.steps}"

    @property
    def label(self) -> str:
        return f"{self.model} {self.sampler.upper()} {self.steps}"


def columns(settings: DemoSettings) -> list[Column]:
    teacher = [Column("teacher", "dpm", n) for n in settings.teacher_steps]
    return teacher + [Column("student", "scm", n) for n in settings.sprint_steps]


def distill_config(settings: DemoSettings) -> RunConfig:
    """The ``sanakit distill`` config of the demo: student = the demo's final teacher."""
    base = run_config_dict(settings)
    out = settings.out.resolve()
    model = {k: v for k, v in base["model"].items() if k not in ("preset", "preset_overrides")}
    raw = {
        "model": {**model, "transformer": str(out / "final")},
        "data": base["data"],
        "train": {
            "max_steps": settings.distill_steps,
            "batch_size": settings.distill_batch_size,
            "lr": settings.distill_lr,
            "lr_scheduler": "constant_with_warmup",
            "warmup_steps": 20,
            "mixed_precision": settings.mixed_precision,
            "seed": settings.seed,
        },
        "output": {
            "dir": str(out / "sprint"),
            "checkpoint_every": 50,
            "keep_last": 2,
            "log_with": "none",
            "export_dtype": "fp32",
        },
        "distill": {
            "cfg_scales": list(settings.distill_cfg_scales),
            "tangent_warmup_steps": settings.tangent_warmup_steps,
        },
    }
    return run_config_from_dict(raw)


class DemoDistiller(DistillTrainer):
    """The distillation trainer with the demo's budget: stops (and checkpoints) when the next
    step would end after ``deadline``; logs ``sprint/loss.jsonl``."""

    def __init__(self, config: RunConfig, *, resume: str | None, deadline: float | None) -> None:
        super().__init__(config, resume=resume)
        self.deadline = deadline
        self.started = time.perf_counter()
        self.first_step = self.step
        self.loss_log = self.out / "loss.jsonl"

    def on_step_end(self, stats: dict[str, Any]) -> None:
        super().on_step_end(stats)
        with self.loss_log.open("a") as f:
            f.write(json.dumps({"step": self.step, "loss": stats["loss"]}) + "\n")
        if self.deadline is None or self.step >= self.max_steps:
            return
        per_step = (time.perf_counter() - self.started) / max(1, self.step - self.first_step)
        if time.perf_counter() + per_step > self.deadline:
            print(
                f"sanakit demo: the budget stops distillation at step {self.step} of "
                f"{self.max_steps}; the same command continues",
                file=sys.stderr,
            )
            self.max_steps = self.step


def _labelled_groups(rows: list[list[list[Image.Image]]], groups: list[str], prompts: list[str]):
    """rows[p][g] = the images of prompt p in group g; one labelled header per column group."""
    scale, pad, gap, head = 3, 12, 6, 14
    sample = rows[0][0][0]
    w, h = sample.width * scale, sample.height * scale
    per_group = [len(g) for g in rows[0]]
    width = sum(n * w for n in per_group) + gap * (len(groups) - 1)
    grid = Image.new("RGB", (width, head + len(rows) * (h + pad)), "white")
    draw = ImageDraw.Draw(grid)
    x = 0
    for g, name in enumerate(groups):
        draw.text((x + 2, 1), name, fill="black")
        x += per_group[g] * w + gap
    for r, (prompt, groups_row) in enumerate(zip(prompts, rows)):
        y = head + r * (h + pad)
        draw.text((2, y), prompt[:120], fill="black")
        x = 0
        for images in groups_row:
            for image in images:
                grid.paste(image.resize((w, h), Image.NEAREST), (x, y + pad))
                x += w
            x += gap
    return grid


@torch.no_grad()
def score_models(trainer: DistillTrainer, settings: DemoSettings, seeds: int) -> dict[str, Any]:
    """Samples every prompt with ``seeds`` seeds per column; writes samples/, samples.jsonl and
    grid.png under OUT/sprint; returns {column label: scores}."""
    out = settings.out / "sprint"
    prompts = eval_prompts()
    section = ValidationSection(prompts=tuple(p for _, _, p in prompts))
    embeds = prompt_embeddings(
        section,
        trainer.config.data.cache_dir,
        trainer.memo["text_fingerprint"],
        trainer.text_encoder,
    )
    cols = columns(settings)
    rows: list[list[list[Image.Image]]] = [[[] for _ in cols] for _ in prompts]
    lines, result = [], {}
    (out / "samples").mkdir(parents=True, exist_ok=True)
    total = seeds * sum(c.steps for c in cols)
    with eval_mode(trainer.model), tqdm(total=total, desc="score", dynamic_ncols=True) as bar:
        for c, col in enumerate(cols):
            judged = []
            model = trainer.teacher if col.model == "teacher" else trainer.model
            for k in range(seeds):
                seed = settings.seed + k
                images = sample_images(
                    model,
                    trainer.autoencoder(),
                    embeds,
                    height=settings.image_size,
                    width=settings.image_size,
                    steps=col.steps,
                    guidance=settings.sprint_guidance,
                    seed=seed,
                    sampler=col.sampler,
                    shift=settings.sample_shift,
                    autocast_dtype=trainer.autocast_dtype,
                    callback=lambda i, n, x: bar.update(1),
                )
                for p, (row, image) in enumerate(zip(prompts, images)):
                    color, shape, _ = row
                    name = f"samples/{col.tag}-{color}-{shape}-seed{seed}.png"
                    record = judge_sample(out, name, image, row, seed)
                    judged.append((color, shape, record.pop("prediction")))
                    if k < GRID_SEEDS:
                        rows[p][c].append(image)
                    lines.append(
                        {**record, "model": col.model, "sampler": col.sampler, "steps": col.steps}
                    )
            result[col.label] = {
                "model": col.model,
                "sampler": col.sampler,
                "steps": col.steps,
                **score_predictions(judged),
            }
    (out / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    grid = _labelled_groups(rows, [c.label for c in cols], [p for _, _, p in prompts])
    grid.save(out / "grid.png")
    return result


def run_sprint_demo(settings: DemoSettings) -> dict[str, Any]:
    """The whole ``sanakit demo --sprint``; returns the contents of ``sprint/score.json``."""
    started = time.perf_counter()
    budget = settings.minutes * 60.0 if settings.minutes is not None else None
    out = settings.out
    distilling = Checkpointer(out / "sprint").latest()
    if distilling is None:
        teacher_deadline = started + settings.teacher_share * budget if budget else None
        teacher = train_demo(settings, teacher_deadline)
        teacher_steps, teacher_seconds = teacher.step, teacher.train_seconds_logged
        del teacher
        info = {"teacher_steps": teacher_steps, "teacher_seconds": round(teacher_seconds, 1)}
        (out / "sprint").mkdir(parents=True, exist_ok=True)
        (out / "sprint" / "teacher.json").write_text(json.dumps(info))
    else:  # distillation has started: its teacher (OUT/final) stays as it is
        print(f"sanakit demo: distillation resumes from {distilling}; the teacher is kept")
    info = json.loads((out / "sprint" / "teacher.json").read_text())
    seeds = settings.seeds_per_prompt
    score_reserve = _score_seconds(settings, seeds)
    deadline = started + budget - score_reserve if budget else None
    trainer = DemoDistiller(
        distill_config(settings),
        resume=str(distilling) if distilling else None,
        deadline=deadline,
    )
    d_started = time.perf_counter()
    try:
        trainer.fit()
    except KeyboardInterrupt:
        print(
            f"sanakit demo: interrupted at distillation step {trainer.step}; run the same "
            "command again to resume",
            file=sys.stderr,
        )
        raise
    distill_seconds = time.perf_counter() - d_started
    print(
        f"sanakit demo: distilled {trainer.step} steps in {minutes(distill_seconds)}; scoring",
        file=sys.stderr,
    )
    scores = score_models(trainer, settings, seeds)
    result = {
        "scores": scores,
        **info,
        "distill_steps": trainer.step,
        "distill_seconds_this_run": round(distill_seconds, 1),
        "wall_seconds_this_run": round(time.perf_counter() - started, 1),
    }
    (out / "sprint" / "score.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def _score_seconds(settings: DemoSettings, seeds: int) -> float:
    """Scoring time reserved at the end of the budget (model calls dominate; teacher DPM with
    CFG calls the model on 2x the prompts)."""
    calls = sum((2 if c.model == "teacher" else 1) * c.steps for c in columns(settings))
    return 20.0 + calls * seeds * len(eval_prompts()) * SCORE_SECONDS_PER_IMAGE_STEP
