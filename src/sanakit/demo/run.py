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
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from sanakit.demo.report import loss_plot, sample_grid
from sanakit.demo.score import classify, score_predictions
from sanakit.demo.settings import DemoSettings
from sanakit.demo.shapes import BACKGROUNDS, COLORS, SHAPES, caption, dataset_specs, write_dataset
from sanakit.demo.stack import INSTRUCTION, build_text_encoder, to_toml
from sanakit.errors import SanakitError
from sanakit.train.checkpoint import Checkpointer
from sanakit.train.config import RunConfig, ValidationSection, load_run_config
from sanakit.train.trainer import Trainer
from sanakit.train.validation import (
    PromptEmbeddings,
    eval_mode,
    prompt_embeddings,
    sample_images,
    to_pil,
)

log = logging.getLogger("sanakit.demo")

STATE_FILE = "demo.json"


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
    (out / "config.toml").write_text(to_toml(run_config_dict(settings)))
    log.info("demo data: %d images in %s", count, out / "data" / "shapes")
    return load_run_config(out / "config.toml")


class _StopRequest:
    """SIGINT handler for the training loop: the first Ctrl-C asks for a clean stop after the
    current step, the second raises KeyboardInterrupt at once. Only in the main thread."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print(
            "\nsanakit demo: stopping after this step to save a checkpoint (Ctrl-C again to quit now)",
            file=sys.stderr,
        )

    def __enter__(self) -> _StopRequest:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


class DemoTrainer(Trainer):
    """The trainer plus three things in :meth:`on_step_end`: the per-step loss is appended to
    ``loss.jsonl`` (``{"step", "loss", "seconds"}``, seconds = training time over all
    invocations), training stops early once ``deadline`` (a ``time.perf_counter`` value)
    passes, and a requested stop saves a checkpoint and raises KeyboardInterrupt."""

    def __init__(
        self,
        config: RunConfig,
        *,
        resume: str | None,
        loss_log: Path,
        stop: _StopRequest,
        budget_seconds: float | None,
    ) -> None:
        super().__init__(config, resume=resume)
        self.loss_log = loss_log
        self.stop = stop
        self.budget_seconds = budget_seconds
        self.history = [r for r in read_loss_log(loss_log) if r["step"] <= self.step]
        self.seconds_before = self.history[-1]["seconds"] if self.history else 0.0
        loss_log.write_text("".join(json.dumps(r) + "\n" for r in self.history))
        self.started = time.perf_counter()

    @property
    def train_seconds(self) -> float:
        """Training wall time over every invocation of this demo folder."""
        return self.seconds_before + (time.perf_counter() - self.started)

    def on_step_end(self, stats: dict[str, Any]) -> None:
        record = {"step": self.step, "loss": stats["loss"], "seconds": round(self.train_seconds, 3)}
        self.history.append(record)
        with self.loss_log.open("a") as f:
            f.write(json.dumps(record) + "\n")
        elapsed = time.perf_counter() - self.started
        if (
            self.budget_seconds is not None
            and elapsed > self.budget_seconds
            and self.step < self.max_steps
        ):
            log.info("time budget spent: stopping at step %d", self.step)
            self.max_steps = self.step  # fit() saves the checkpoint for step == max_steps
        if self.stop.requested:
            self.save_checkpoint()
            raise KeyboardInterrupt


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
) -> list[Image.Image]:
    """One image per prompt of ``embeds`` (Flow-DPM-Solver + CFG), from noise seeded ``seed``."""
    batch = sample_images(
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
        device=trainer.device,
        autocast_dtype=trainer.autocast_dtype,
    )
    return to_pil(batch)


@torch.no_grad()
def sample_and_score(trainer: Trainer, settings: DemoSettings) -> dict[str, Any]:
    """Samples every prompt of :func:`eval_prompts` with ``seeds_per_prompt`` seeds, writes
    ``samples/``, ``samples.jsonl`` and ``grid.png``; returns the classifier's scores."""
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
    with eval_mode(model), weights:
        # one batch per seed: every prompt starts from the same noise
        columns = [_sample(trainer, model, embeds, settings, seed) for seed in seeds]
    (out / "samples").mkdir(exist_ok=True)
    rows, judged, lines = [], [], []
    for i, (color, shape, prompt) in enumerate(prompts):
        row = [column[i] for column in columns]
        rows.append(row)
        for seed, image in zip(seeds, row):
            name = f"samples/{color}-{shape}-seed{seed}.png"
            image.save(out / name)
            pred = classify(image)
            judged.append((color, shape, pred))
            lines.append(
                {
                    "prompt": prompt,
                    "color": color,
                    "shape": shape,
                    "seed": seed,
                    "file": name,
                    "predicted_color": pred.color,
                    "predicted_shape": pred.shape,
                }
            )
    (out / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    sample_grid(rows, [p for _, _, p in prompts]).save(out / "grid.png")
    return score_predictions(judged)


def run_demo(settings: DemoSettings) -> dict[str, Any]:
    """The whole demo (see the module doc); returns the contents of ``score.json``."""
    if settings.threads:
        torch.set_num_threads(settings.threads)
    config = prepare(settings)
    out = settings.out
    latest = Checkpointer(out).latest()
    if latest is not None:
        print(f"sanakit demo: resuming from {latest}")
    budget = settings.minutes * 60.0 if settings.minutes is not None else None
    with _StopRequest() as stop:
        trainer = DemoTrainer(
            config,
            resume=str(latest) if latest else None,
            loss_log=out / "loss.jsonl",
            stop=stop,
            budget_seconds=budget,
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
    train_seconds = history[-1]["seconds"] if history else 0.0
    loss_plot(
        [r["step"] for r in history],
        [r["loss"] for r in history],
        title=f"training loss, {trainer.step} steps, {train_seconds:.0f} s",
    ).save(out / "loss.png")
    scores = sample_and_score(trainer, settings)
    result = {**scores, "train_seconds": round(train_seconds, 1), "steps": trainer.step}
    (out / "score.json").write_text(json.dumps(result, indent=2) + "\n")
    return result
