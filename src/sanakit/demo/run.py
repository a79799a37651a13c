"""``sanakit demo``: train a tiny Sana from scratch on the CPU and measure prompt adherence.

Steps (all under ``settings.out``):

1. ``data/shapes/``: the synthetic captioned dataset (:mod:`sanakit.demo.shapes`);
2. ``text_encoder/``: the random Gemma-2 + in-process tokenizer (:mod:`sanakit.demo.stack`);
3. ``config.toml``: the run configuration, loaded back through the strict loader;
4. training with the real :class:`~sanakit.train.trainer.Trainer` (cache, checkpoints every
   ``checkpoint_every`` steps, validation grids, final export), stopped early when the
   ``minutes`` budget is spent; the loss of every step goes to ``loss.jsonl``;
5. every colour x shape prompt sampled with ``seeds_per_prompt`` seeds (Flow-DPM-Solver with
   classifier-free guidance): ``samples/*.png``, ``samples.jsonl``, ``grid.png``, ``loss.png``
   and ``score.json`` (judged by :mod:`sanakit.demo.score`).

The first Ctrl-C finishes the current step, saves a checkpoint and exits (130); running again
with the same ``out`` resumes from it. A second Ctrl-C stops at once (the last periodic
checkpoint stays).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from tqdm.auto import tqdm

from sanakit import tomlwriter
from sanakit.demo.pace import (
    REFERENCE_CPU,
    SLOW_FACTOR,
    Pace,
    PaceSample,
    minutes,
    model_call_seconds,
)
from sanakit.demo.report import loss_plot, sample_grid
from sanakit.demo.score import classify, score_predictions
from sanakit.demo.settings import DemoSettings
from sanakit.demo.shapes import BACKGROUNDS, COLORS, SHAPES, caption, dataset_specs, write_dataset
from sanakit.demo.stack import INSTRUCTION, build_text_encoder
from sanakit.errors import SanakitError
from sanakit.train.checkpoint import Checkpointer
from sanakit.train.config import RunConfig, ValidationSection, load_run_config
from sanakit.train.trainer import Trainer
from sanakit.train.validation import PromptEmbeddings, eval_mode, prompt_embeddings, sample_images

log = logging.getLogger("sanakit.demo")

STATE_FILE = "demo.json"
PACE_WARMUP = 3  # untimed steps of an invocation (kernel set-up, allocator warm-up)
PACE_STEPS = 10  # then timed steps, after which the pace and expected total are printed


# a Sana-Sprint teacher from the start (sanakit.sprint.convert: RMS qk-norm, dense time)
SPRINT_TEACHER_OVERRIDES = {"qk_norm": "rms_norm_across_heads", "timestep_scale": 0.001}


def eval_prompts() -> list[tuple[str, str, str]]:
    """(colour, shape, prompt) for every colour x shape; the background is the (colour index +
    shape index)-th one (mod 3), so every colour and every shape is asked on every background."""
    backgrounds = list(BACKGROUNDS)
    rows = []
    for ci, color in enumerate(COLORS):
        for si, shape in enumerate(SHAPES):
            background = backgrounds[(ci + si) % len(backgrounds)]
            rows.append((color, shape, caption(color, shape, background)))
    return rows


def run_config_dict(settings: DemoSettings) -> dict[str, Any]:
    """The ``RunConfig`` of the demo as plain data (written to ``config.toml``)."""
    out = settings.out.resolve()
    # validation grid: one prompt per colour, each with another shape
    val_prompts = [p for c, s, p in eval_prompts() if SHAPES.index(s) == list(COLORS).index(c) % 3]
    return {
        "model": {
            "preset": settings.preset,
            **({"preset_overrides": SPRINT_TEACHER_OVERRIDES} if settings.sprint else {}),
            "autoencoder": "pixel-shuffle",
            "pixel_shuffle_factor": settings.pixel_shuffle_factor,
            "text_encoder": str(out / "text_encoder"),
            "instruction": list(INSTRUCTION),
            "text_max_length": settings.text.max_length,
            "encoder_dtype": "fp32",
        },
        "data": {
            "cache_dir": str(out / "cache"),
            "latent_dtype": "fp32",
            "text_dtype": "fp32",
            "seed": settings.seed,
            "datasets": [
                {
                    "id": "shapes",
                    "path": str(out / "data" / "shapes"),
                    "resolution": settings.image_size,
                    "resolution_type": "pixel",
                    "crop_aspect": "square",
                    "caption_dropout": settings.caption_dropout,
                }
            ],
        },
        "train": {
            "max_steps": settings.steps,
            "batch_size": settings.batch_size,
            "lr": settings.lr,
            "lr_scheduler": settings.lr_scheduler,
            "warmup_steps": settings.warmup_steps,
            "flow_shift": settings.train_shift,
            "mixed_precision": settings.mixed_precision,
            "seed": settings.seed,
            **({"ema": {"decay": settings.ema_decay}} if settings.ema_decay else {}),
        },
        "validation": {
            "prompts": val_prompts,
            "every_steps": settings.validation_every,
            "sampler": "dpm",
            "steps": settings.sample_steps,
            "guidance": settings.guidance,
            "resolutions": [f"{settings.image_size}x{settings.image_size}"],
            "seed": settings.seed,
        },
        "output": {
            "dir": str(out),
            "checkpoint_every": settings.checkpoint_every,
            "keep_last": 2,
            "log_with": "none",
            "export_dtype": "fp32",
        },
    }


def prepare(settings: DemoSettings) -> RunConfig:
    """Writes the dataset, the text encoder and ``config.toml`` (steps 1-3); returns the config
    as the strict loader reads it back. Refuses an ``out`` folder made with another seed."""
    out = settings.out
    out.mkdir(parents=True, exist_ok=True)
    state_path = out / STATE_FILE
    identity = {
        "seed": settings.seed,
        "image_size": settings.image_size,
        "per_combo": settings.per_combo,
        **({"sprint": True} if settings.sprint else {}),  # a Sprint teacher: another model
    }
    if state_path.is_file():
        before = json.loads(state_path.read_text())
        if before != identity:
            raise SanakitError(
                f"{out} holds a demo made with {before}; pass the same --seed or another --out"
            )
    state_path.write_text(json.dumps(identity))
    count = write_dataset(
        out / "data" / "shapes", settings.per_combo, settings.seed, settings.image_size
    )
    captions = [
        s.caption for s in dataset_specs(settings.per_combo, settings.seed, settings.image_size)
    ]
    build_text_encoder(out / "text_encoder", captions, settings.text, settings.seed)
    (out / "config.toml").write_text(tomlwriter.dumps(run_config_dict(settings)))
    log.info("demo data: %d images in %s", count, out / "data" / "shapes")
    return load_run_config(out / "config.toml")


class DemoTrainer(Trainer):
    """The trainer plus three things in :meth:`on_step_end`: the per-step loss is appended to
    ``loss.jsonl`` (``{"step", "loss", "seconds"}``, seconds = training time over all
    invocations); after ``PACE_WARMUP + PACE_STEPS`` steps the measured pace and the expected total are
    printed (with one line saying why when the machine is far slower than expected); and
    training stops early when the next step and the sampling that follows would not end before
    ``deadline`` (a ``time.perf_counter`` value; None: no limit). Ctrl-C is the Trainer's
    (:mod:`sanakit.train.interrupt`): a checkpoint of the current step, then KeyboardInterrupt."""

    def __init__(
        self,
        config: RunConfig,
        *,
        resume: str | None,
        loss_log: Path,
        deadline: float | None,
        settings: DemoSettings,
    ) -> None:
        super().__init__(config, resume=resume)
        self.loss_log = loss_log
        self.deadline = deadline
        self.settings = settings
        self.sampling_seconds = 0.0  # estimated with the pace report
        self.history = [r for r in read_loss_log(loss_log) if r["step"] <= self.step]
        self.seconds_before = self.history[-1]["seconds"] if self.history else 0.0
        loss_log.write_text("".join(json.dumps(r) + "\n" for r in self.history))
        self.started = time.perf_counter()
        self.first_step = self.step
        self.pace_start: PaceSample | None = None
        self.pace: Pace | None = None

    @property
    def train_seconds_logged(self) -> float:
        """Training seconds at the last logged step (over every invocation)."""
        return self.history[-1]["seconds"] if self.history else 0.0

    @property
    def train_seconds(self) -> float:
        """Training wall time over every invocation of this demo folder."""
        return self.seconds_before + (time.perf_counter() - self.started)

    def on_step_end(self, stats: dict[str, Any]) -> None:
        record = {"step": self.step, "loss": stats["loss"], "seconds": round(self.train_seconds, 3)}
        self.history.append(record)
        with self.loss_log.open("a") as f:
            f.write(json.dumps(record) + "\n")
        done = self.step - self.first_step
        if done == PACE_WARMUP:  # the first steps pay one-off costs: the pace is measured after
            self.pace_start = PaceSample.now()
        elif done == PACE_WARMUP + PACE_STEPS and self.pace_start is not None:
            self.pace = Pace.between(self.pace_start, PaceSample.now(), PACE_STEPS, self.precision)
            # --sprint: the teacher's deadline already leaves time for distilling and scoring
            if not self.settings.sprint:
                self.sampling_seconds = estimate_sampling_seconds(self, self.settings)
            self.report_pace(self.pace)
        if self.deadline is not None and self.step < self.max_steps:
            step_seconds = (time.perf_counter() - self.started) / max(1, done)
            if time.perf_counter() + step_seconds + self.sampling_seconds > self.deadline:
                share = "the teacher's share of " if self.settings.sprint else ""
                more = "" if self.settings.sprint else "; the same command continues"
                print(
                    f"sanakit demo: {share}the {self.settings.minutes:g}-minute budget stops "
                    f"training at step {self.step} of {self.max_steps}{more}",
                    file=sys.stderr,
                )
                self.max_steps = self.step  # fit() saves the checkpoint for step == max_steps

    def report_pace(self, pace: Pace) -> None:
        """Prints the measured pace and the expected time to the end (and, when the machine is
        far slower than the reference, one line saying why)."""
        todo = self.max_steps - self.step
        total = todo * pace.step_seconds + self.sampling_seconds
        sprint = self.settings.sprint  # the deadline is the teacher's share of --minutes
        line = (
            f"sanakit demo: {pace.step_seconds:.3f} s/step over {pace.steps} steps "
            f"({'bf16' if pace.precision == 'bf16' else 'fp32'}); {todo} "
            f"{'teacher steps to go' if sprint else 'steps to go + sampling'}: ~{minutes(total)}"
        )
        if self.deadline is not None:
            left = self.deadline - time.perf_counter()
            budget = "the teacher's share of --minutes" if sprint else "the --minutes budget"
            line += f" ({minutes(max(0.0, left))} left of {budget})"
            if total > left:
                fits = self.step + max(0, int((left - self.sampling_seconds) / pace.step_seconds))
                whole = (time.perf_counter() - self.started + total) / 60
                whole = math.ceil((whole / self.settings.teacher_share if sprint else whole) + 0.5)
                again = "" if sprint else "run the same command again to continue, or "
                line += (
                    f"; training will stop near step {fits} (fewer steps score lower: "
                    f"{again}pass --minutes {whole})"
                )
        print(line, file=sys.stderr)
        if pace.slowdown() > SLOW_FACTOR:
            print(
                f"sanakit demo: warning: {pace.slowdown():.0f}x slower than expected "
                f"({pace.reference_seconds:.2f} s/step on {REFERENCE_CPU}): "
                f"{pace.reason()}",
                file=sys.stderr,
            )


def estimate_sampling_seconds(trainer: Trainer, settings: DemoSettings) -> float:
    """Seconds :func:`sample_and_score` will take: one batched CFG model call (2 x prompts) per
    sampler step and seed, timed once on this machine, plus 10% for the solver and decoding."""
    model = trainer.accelerator.unwrap_model(trainer.ddp_model)
    latent = settings.image_size // settings.pixel_shuffle_factor
    call = model_call_seconds(
        model,
        batch=2 * len(eval_prompts()),
        latent_shape=(model.config.in_channels, latent, latent),
        text_shape=(settings.text.max_length, trainer.memo["text_hidden_size"]),
        device=trainer.device,
        autocast_dtype=trainer.autocast_dtype,
    )
    return 1.1 * call * settings.sample_steps * settings.seeds_per_prompt


def read_loss_log(path: Path) -> list[dict[str, Any]]:
    """The records of ``loss.jsonl`` (missing file: none; a torn last line is dropped)."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return records


def _sample(
    trainer: Trainer,
    model: torch.nn.Module,
    embeds: PromptEmbeddings,
    settings: DemoSettings,
    seed: int,
    bar: tqdm,
) -> list[Image.Image]:
    """One image per prompt of ``embeds`` (Flow-DPM-Solver + CFG, the sampling path of validation
    and ``sanakit generate``), from noise seeded ``seed``; ``bar`` advances once per step."""
    return sample_images(
        model,
        trainer.autoencoder(),
        embeds,
        height=settings.image_size,
        width=settings.image_size,
        steps=settings.sample_steps,
        guidance=settings.guidance,
        seed=seed,
        sampler="dpm",
        shift=settings.sample_shift,
        autocast_dtype=trainer.autocast_dtype,
        callback=lambda i, steps, x: bar.update(1),
    )


def judge_sample(
    out: Path, name: str, image: Image.Image, prompt: tuple[str, str, str], seed: int
) -> dict[str, Any]:
    """Saves ``image`` as ``out/name``, classifies it and returns its ``samples.jsonl`` record
    (plus the :class:`~sanakit.demo.score.Prediction` under ``"prediction"``); ``prompt`` is a
    row of :func:`eval_prompts`."""
    color, shape, text = prompt
    image.save(out / name)
    pred = classify(image)
    return {
        "prompt": text,
        "color": color,
        "shape": shape,
        "seed": seed,
        "file": name,
        "predicted_color": pred.color,
        "predicted_shape": pred.shape,
        "prediction": pred,
    }


@torch.no_grad()
def sample_and_score(
    trainer: Trainer, settings: DemoSettings, deadline: float | None = None
) -> dict[str, Any]:
    """Samples every prompt of :func:`eval_prompts` with ``seeds_per_prompt`` seeds (fewer when
    ``deadline``, a ``time.perf_counter`` value, passes: at least one), writes ``samples/``,
    ``samples.jsonl`` and ``grid.png``; returns the classifier's scores."""
    out = settings.out
    prompts = eval_prompts()
    section = ValidationSection(prompts=tuple(p for _, _, p in prompts))
    embeds = prompt_embeddings(
        section,
        trainer.config.data.cache_dir,
        trainer.memo["text_fingerprint"],
        trainer.text_encoder,
    )
    model = trainer.accelerator.unwrap_model(trainer.ddp_model)
    seeds = [settings.seed + k for k in range(settings.seeds_per_prompt)]
    # the EMA weights when the run keeps them (they give the cleaner samples)
    weights = trainer.ema.swapped_in(model) if trainer.ema is not None else contextlib.nullcontext()
    columns: list[list[Image.Image]] = []
    bar = tqdm(total=len(seeds) * settings.sample_steps, desc="sample", dynamic_ncols=True)
    with eval_mode(model), weights, bar:
        # one batch per seed: every prompt starts from the same noise
        for seed in seeds:
            if columns and deadline is not None and time.perf_counter() > deadline:
                print(
                    f"sanakit demo: the {settings.minutes:g}-minute budget is spent: scoring "
                    f"{len(columns)} of {len(seeds)} seeds per prompt",
                    file=sys.stderr,
                )
                break
            columns.append(_sample(trainer, model, embeds, settings, seed, bar))
    seeds = seeds[: len(columns)]
    (out / "samples").mkdir(exist_ok=True)
    rows, judged, lines = [], [], []
    for i, (color, shape, prompt) in enumerate(prompts):
        row = [column[i] for column in columns]
        rows.append(row)
        for seed, image in zip(seeds, row):
            name = f"samples/{color}-{shape}-seed{seed}.png"
            record = judge_sample(out, name, image, (color, shape, prompt), seed)
            judged.append((color, shape, record.pop("prediction")))
            lines.append(record)
    (out / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    sample_grid(rows, [p for _, _, p in prompts]).save(out / "grid.png")
    return score_predictions(judged)


def train_demo(settings: DemoSettings, deadline: float | None) -> DemoTrainer:
    """Steps 1-4 of the demo: data, text encoder, config, then training (resumed from the last
    checkpoint when there is one) until ``settings.steps`` or ``deadline``; writes ``loss.png``
    and ``final/``. Returns the trainer (the scoring samples from it)."""
    if settings.threads:
        torch.set_num_threads(settings.threads)
    config = prepare(settings)
    out = settings.out
    latest = Checkpointer(out).latest()
    if latest is not None:
        print(f"sanakit demo: resuming from {latest}")
    trainer = DemoTrainer(
        config,
        resume=str(latest) if latest else None,
        loss_log=out / "loss.jsonl",
        deadline=deadline,
        settings=settings,
    )
    try:
        trainer.fit()
    except KeyboardInterrupt:
        print(
            f"sanakit demo: interrupted at step {trainer.step}; run the same command again "
            "to resume from the last checkpoint",
            file=sys.stderr,
        )
        raise
    history = trainer.history
    loss_plot(
        [r["step"] for r in history],
        [r["loss"] for r in history],
        title=f"training loss, {trainer.step} steps, {trainer.train_seconds_logged:.0f} s",
    ).save(out / "loss.png")
    return trainer


def run_demo(settings: DemoSettings) -> dict[str, Any]:
    """The whole demo (see the module doc); returns the contents of ``score.json``."""
    started = time.perf_counter()
    deadline = started + settings.minutes * 60.0 if settings.minutes is not None else None
    trainer = train_demo(settings, deadline)
    scores = sample_and_score(trainer, settings, deadline)
    train_seconds = trainer.train_seconds_logged
    result = {**scores, "train_seconds": round(train_seconds, 1), "steps": trainer.step}
    (settings.out / "score.json").write_text(json.dumps(result, indent=2) + "\n")
    return result
