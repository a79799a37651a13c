"""`Trainer`: the ``sanakit train`` loop (full fine-tune, LoRA, LoKr) on accelerate.

One object holds the model, optimizer, LR schedule, EMA, data iterator, step counter and
checkpointer; nothing is global. The same code runs on the CPU, one GPU, or
``accelerate launch --num_processes N`` (DDP; each rank reads its own slice of every batch).

Guarantees:
- a step whose loss or gradient is not finite changes nothing (no update, no EMA), is logged
  with its sample ids; after ``max_consecutive_nonfinite`` such steps in a row the run reloads
  the last good checkpoint, halves the learning rate and continues, and it stops with a
  diagnosis after ``max_nonfinite_recoveries`` reloads;
- checkpoints are atomic (see :mod:`sanakit.train.checkpoint`) and hold everything needed for a
  bit-identical continuation: the named parts of :meth:`Trainer.parts` (weights or adapter, EMA,
  optimizer, LR schedule, loader position, RNG states, counters; :mod:`sanakit.train.state`)
  and the resolved config;
- a run is never overwritten (an output folder with a checkpoint needs ``resume``), and every
  ``fit()`` logs into its own folder ``OUTPUT/logs/<start time>[-from-step-N]``;
- the first Ctrl-C checkpoints the current step and stops (:mod:`sanakit.train.interrupt`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from sanakit.config import to_dict
from sanakit.data import build_cache, make_loader, open_cache
from sanakit.errors import SanakitError
from sanakit.hardware import resolve_mixed_precision
from sanakit.train import components
from sanakit.train.checkpoint import Checkpointer, step_name
from sanakit.train.config import RunConfig
from sanakit.train.ema import EMA
from sanakit.train.export import export_final
from sanakit.train.interrupt import StopRequest, TrainingInterrupted
from sanakit.train.objective import eval_loss, flow_matching_step, step_generator
from sanakit.train.optim import build_optimizer, build_scheduler
from sanakit.train.state import RNGState, Stateful, TrainState, load_parts, save_parts
from sanakit.train.tracking import start_trackers
from sanakit.train.validation import (
    eval_mode,
    prompt_embeddings,
    run_validation,
    score_validation,
)

log = logging.getLogger("sanakit.train")

AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16, "no": None}


class NonFiniteLossError(SanakitError):
    """The run stopped because the loss kept becoming NaN/Inf."""


class Trainer:
    """Build with a validated :class:`RunConfig`; ``fit()`` trains to ``max_steps``.

    ``output_dir`` replaces ``output.dir`` (also in the ``config.json`` written to the folder);
    ``resume`` is ``"latest"`` or a checkpoint folder. Without ``resume``, an output folder that
    already holds a checkpoint raises :class:`~sanakit.train.checkpoint.RunExistsError`.
    Subclasses (Sana-Sprint distillation) replace ``_build_model``, ``compute_loss``,
    ``validate``, ``parts`` and ``export``.
    """

    caption_dropout: float | None = None  # None: each dataset's caption_dropout

    def __init__(
        self, config: RunConfig, *, output_dir: str | None = None, resume: str | None = None
    ) -> None:
        from accelerate import Accelerator

        if output_dir:
            config = dataclasses.replace(
                config, output=dataclasses.replace(config.output, dir=str(output_dir))
            )
        self.config = config
        self.out = Path(config.output.dir)
        self.checkpointer = Checkpointer(self.out, keep_last=config.output.keep_last)
        if not resume:
            self.checkpointer.refuse_existing_run()  # before the (possibly long) cache build
        self.log_dir: Path | None = None  # this fit()'s TensorBoard folder
        t = config.train
        if t.mixed_precision == "fp16" and not torch.cuda.is_available():
            raise SanakitError(
                "train.mixed_precision = 'fp16' needs a GPU; use 'auto', 'bf16' or 'no' on the CPU"
            )
        # "auto": bf16 on a GPU, and on the CPU only where it has bf16 instructions
        self.precision = resolve_mixed_precision(
            t.mixed_precision,
            "cuda" if torch.cuda.is_available() else "cpu",
            key="train.mixed_precision",
        )
        log_with = None if config.output.log_with == "none" else config.output.log_with
        # accelerate keeps its mixed-precision setting in a process-wide singleton, so the
        # Trainer does its own autocast (self.autocast) and fp16 loss scaling (self.scaler):
        # a second Trainer in one process (demo, tests, notebooks) chooses its own precision.
        self.accelerator = Accelerator(
            mixed_precision="no",
            log_with=log_with,
            project_dir=str(self.out / "logs"),
            cpu=not torch.cuda.is_available(),  # without it a CPU launch is N separate runs
        )
        self.device = self.accelerator.device
        self.rank = self.accelerator.process_index
        self.world = self.accelerator.num_processes
        self.autocast_dtype = AUTOCAST[self.precision]
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        self.state = TrainState()
        self._text_encoder = None
        self._autoencoder = None
        self.scorer = None  # [validation] metric models (sanakit.metrics.validation), on first use
        self._prepare_data()
        self._build_model()
        if resume:
            self.load_checkpoint(self.checkpointer.resolve(resume))

    # ------------------------------------------------------------------ setup
    def _prepare_data(self) -> None:
        """Build (or verify) the cache on the main process, then open the loaders."""
        cfg, t = self.config, self.config.train
        eval_ids = set(cfg.validation.eval_datasets)
        memo = components.EncoderMemo(cfg)
        if self.accelerator.is_main_process:
            found = memo.lookup_built()
            if found is None:
                self._autoencoder = components.load_frozen_autoencoder(cfg, self.device)
                self._text_encoder = components.load_text_encoder(cfg, self.device)
                build_cache(
                    cfg.data,
                    self._autoencoder,
                    self._text_encoder,
                    batch_size=t.batch_size,
                    world_size=self.world,
                )  # build_cache logs its one-line summary
                found = memo.record(self._autoencoder, self._text_encoder)
                # freed before training, as when the cache was complete: validation loads them
                # again only if it needs them (low VRAM, docs/low-vram.md)
                self._autoencoder = self._text_encoder = None
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
            else:
                log.info(
                    "cache complete for these encoders: text encoder and autoencoder not loaded"
                )
        self.accelerator.wait_for_everyone()
        self.memo = memo.lookup()
        train_data = components.with_disabled(cfg.data, eval_ids)
        self.loader = make_loader(
            train_data,
            batch_size=t.batch_size,
            seed=t.seed,
            rank=self.rank,
            world_size=self.world,
            caption_dropout=self.caption_dropout,
        )
        self.eval_data = (
            components.with_disabled(cfg.data, {d.id for d in cfg.data.datasets} - eval_ids)
            if eval_ids
            else None
        )
        per_epoch = self.loader.planner.total_batches_per_epoch
        self.steps_per_epoch = max(1, per_epoch // t.gradient_accumulation)
        self.max_steps = t.max_steps or t.epochs * self.steps_per_epoch

    def _build_model(self) -> None:
        cfg, t = self.config, self.config.train
        model = components.build_transformer(
            cfg,
            latent_channels=self.memo["latent_channels"],
            text_channels=self.memo["text_hidden_size"],
            device=self.device,
        )
        self.adapter = None
        spec = t.adapter_spec()
        if spec is not None:
            from sanakit.adapters import apply_adapter

            self.adapter = apply_adapter(model, spec, seed=t.seed)
            params = list(self.adapter.trainable_parameters())
        else:
            params = [p for p in model.parameters() if p.requires_grad]
        self.model = model.to(self.device)
        self._build_optimization(params, self.model)

    def _build_optimization(
        self, params: list[torch.nn.Parameter], module: torch.nn.Module
    ) -> None:
        """Optimizer and LR schedule over ``params``, EMA of ``self.model``, and ``module`` (what
        the loss runs through) prepared by accelerate as ``self.ddp_model``."""
        t = self.config.train
        optimizer = build_optimizer(
            params,
            t.optimizer,
            lr=t.learning_rate,
            betas=t.betas,
            weight_decay=t.weight_decay,
            eps=t.eps,
        )
        scheduler = build_scheduler(
            optimizer,
            t.lr_scheduler,
            warmup_steps=t.warmup_steps,
            total_steps=self.max_steps,
            lr_end=t.polynomial_lr_end,
            lr_power=t.polynomial_power,
        )
        self.ema = None
        if t.ema is not None:
            device = "cpu" if t.ema.on_cpu else None
            self.ema = EMA(
                self.model.named_parameters(),
                decay=t.ema.decay,
                update_every=t.ema.update_every,
                device=device,
            )
        # the scheduler is not prepared: accelerate would step it once per process
        self.ddp_model, self.optimizer = self.accelerator.prepare(module, optimizer)
        self.scheduler = scheduler
        self.params = params

    # ------------------------------------------------------------------ frozen parts
    def text_encoder(self):
        if self._text_encoder is None:
            self._text_encoder = components.load_text_encoder(self.config, self.device)
        return self._text_encoder

    def autoencoder(self):
        if self._autoencoder is None:
            self._autoencoder = components.load_frozen_autoencoder(self.config, self.device)
        return self._autoencoder

    @property
    def step(self) -> int:
        """Optimizer steps taken (``self.state.step``)."""
        return self.state.step

    def autocast(self) -> torch.autocast:
        """The run's mixed precision (``self.precision``) for the model's forward."""
        dtype = self.autocast_dtype
        return torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None)

    # ------------------------------------------------------------------ one step
    def compute_loss(self, batch: dict[str, Any], micro: int) -> tuple[torch.Tensor, torch.Tensor]:
        size = len(batch["ids"])
        first = self.rank * size  # this rank's slice of the global micro-batch
        gens = [
            step_generator(self.config.train.seed, self.step, micro, first + i) for i in range(size)
        ]
        with self.autocast():
            return flow_matching_step(
                self.ddp_model,
                batch,
                self.config.train,
                gens,
                self.device,
                timestep_scale=self.model.config.timestep_scale,
                adapter_off=self.adapter.disabled if self.adapter is not None else None,
            )

    def train_step(self) -> dict[str, Any]:
        """One optimizer step over ``gradient_accumulation`` micro-batches."""
        t = self.config.train
        accum = t.gradient_accumulation
        total, ids, images = 0.0, [], 0
        for micro in range(accum):
            batch = next(self.loader)
            ids += batch["ids"]
            images += len(batch["ids"])
            sync = micro == accum - 1
            ctx = self.accelerator.no_sync(self.ddp_model) if not sync else nullcontext()
            with ctx:
                loss, _ = self.compute_loss(batch, micro)
                self.accelerator.backward(self.scaler.scale(loss / accum))
            total += float(loss.detach()) / accum
        self.scaler.unscale_(self.optimizer)  # fp16: the true gradients, before clipping
        # the global norm of the unclipped gradients (logged, and the non-finite check: value
        # clipping would turn an Inf into the limit); grad_clip_method "norm" also rescales them
        by_norm = t.grad_clip if t.grad_clip_method == "norm" and t.grad_clip > 0 else math.inf
        grad_norm = self.accelerator.clip_grad_norm_(self.params, by_norm)
        if t.grad_clip_method == "value" and t.grad_clip > 0:
            torch.nn.utils.clip_grad_value_(self.params, t.grad_clip)  # each element in [-c, c]
        flags = [not math.isfinite(total), not bool(torch.isfinite(grad_norm))]  # on any process
        flags = torch.tensor(flags, dtype=torch.float32, device=self.device)
        bad_loss, bad_grad = (bool(v > 0) for v in self.accelerator.reduce(flags, reduction="sum"))
        finite, s = not (bad_loss or bad_grad), self.state
        if finite:
            self.scaler.step(self.optimizer)
            self.scheduler.step()
            s.step += 1
            if self.ema is not None:
                self.ema.step(s.step)
            s.nonfinite_streak = 0
        elif bad_grad and not bad_loss and self.scaler.is_enabled():
            log.info("step %d: fp16 gradient overflow, loss scale lowered", s.step + 1)
        else:
            s.nonfinite_total += 1
            s.nonfinite_streak += 1
            log.warning(
                "step %d: non-finite loss/gradient, update skipped (samples: %s)",
                s.step + 1,
                ", ".join(ids[:8]),
            )
        self.scaler.update()  # fp16: lowers the scale after an overflow, raises it slowly
        self.optimizer.zero_grad(set_to_none=True)
        return {
            "loss": total,
            "grad_norm": float(grad_norm),
            "finite": finite,
            "images": images * self.world,
        }

    def _recover(self) -> None:
        t, s = self.config.train, self.state
        latest = self.checkpointer.latest()
        cause = (
            f"the loss was NaN/Inf for {t.max_consecutive_nonfinite} steps in a row; likely causes: a learning "
            f"rate too high (train.lr = {t.learning_rate * s.lr_scale:g}), fp16 overflow (use bf16), or bad data"
        )
        if latest is None:
            raise NonFiniteLossError(
                f"{cause}; no checkpoint to go back to yet (lower output.checkpoint_every)"
            )
        if s.recoveries >= t.max_nonfinite_recoveries:
            raise NonFiniteLossError(
                f"{cause}; gave up after {s.recoveries} reloads with halved learning rates"
            )
        recoveries, scale = s.recoveries + 1, s.lr_scale * 0.5
        self.load_checkpoint(latest)
        s.recoveries, s.nonfinite_streak = recoveries, 0
        self._set_lr_scale(scale)
        log.warning("reloaded %s and halved the learning rate (x%g)", latest.name, scale)

    def _set_lr_scale(self, scale: float) -> None:
        """Multiply the schedule's base learning rate by ``scale`` from now on."""
        self.state.lr_scale = scale
        base = self.config.train.learning_rate * scale
        self.scheduler.base_lrs = [base] * len(self.scheduler.base_lrs)
        factor = self.scheduler.lr_lambdas[0](self.scheduler.last_epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = base * factor

    # ------------------------------------------------------------------ loop
    def fit(self) -> Path | None:
        """Train to ``max_steps``, validate and export; returns the final weights' folder (main
        process). Ctrl-C: :class:`~sanakit.train.interrupt.TrainingInterrupted` after a checkpoint."""
        cfg = self.config
        log_dir = None
        if self.accelerator.is_main_process:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "config.json").write_text(json.dumps(to_dict(cfg), indent=2))
            log_dir = start_trackers(self.accelerator, cfg, self.step)
        self.log_dir = log_dir
        bar = tqdm(
            total=self.max_steps,
            initial=self.step,
            desc="train",
            disable=not self.accelerator.is_main_process,
            dynamic_ncols=True,
        )
        with StopRequest() as stop, bar:
            self._train_loop(bar, stop)
        self.validate()
        self.report_best()
        final = self.export() if self.accelerator.is_main_process else None
        self.accelerator.wait_for_everyone()
        self.accelerator.end_training()
        return final

    def export(self) -> Path:
        """Write ``final/`` (main process): the pipeline, or the adapter (:func:`export_final`)."""
        return export_final(self.config, self.model, adapter=self.adapter, ema=self.ema)

    def _train_loop(self, bar: tqdm, stop: StopRequest) -> None:
        cfg = self.config
        start = time.perf_counter()
        seen = 0
        while self.step < self.max_steps:
            before = self.step
            stats = self.train_step()
            seen += stats["images"]
            if not stats["finite"]:
                if self.state.nonfinite_streak >= cfg.train.max_consecutive_nonfinite:
                    self._recover()
                    bar.n = self.step
                self._stop_if_requested(stop)
                continue
            rate = seen / max(1e-9, time.perf_counter() - start)
            lr = self.optimizer.param_groups[0]["lr"]
            bar.update(self.step - before)
            bar.set_postfix(
                loss=f"{stats['loss']:.4f}",
                lr=f"{lr:.2e}",
                gnorm=f"{stats['grad_norm']:.2f}",
                img_s=f"{rate:.1f}",
            )
            self.accelerator.log(
                {
                    "loss": stats["loss"],
                    "lr": lr,
                    "grad_norm": stats["grad_norm"],
                    "images_per_s": rate,
                },
                step=self.step,
            )
            self.on_step_end(stats)
            self._stop_if_requested(stop)
            if self.step % cfg.output.checkpoint_every == 0 or self.step == self.max_steps:
                self.save_checkpoint()
            every = cfg.validation.every_steps
            if every and self.step % every == 0 and self.step != self.max_steps:
                self.validate()

    def _stop_if_requested(self, stop: StopRequest) -> None:
        """After each step: if Ctrl-C was pressed (on any process), save this step and raise."""
        requested = stop.requested
        if self.world > 1:  # every process must stop at the same step: checkpointing is collective
            flag = torch.tensor([float(requested)], device=self.device)
            requested = float(self.accelerator.reduce(flag, reduction="sum")) > 0
        if not requested:
            return
        latest = self.checkpointer.latest()
        if latest is None or latest.name != step_name(self.step):
            latest = self.save_checkpoint()
        for tracker in self.accelerator.trackers:
            tracker.finish()  # flush this run's logs; the process is about to exit
        raise TrainingInterrupted(self.step, latest)

    def on_step_end(self, stats: dict[str, Any]) -> None:
        """Hook for subclasses and tests (called after every finite optimizer step)."""

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        cfg = self.config
        if self.accelerator.is_main_process and cfg.validation.prompt_items():
            embeds = prompt_embeddings(
                cfg.validation, cfg.data.cache_dir, self.memo["text_fingerprint"], self.text_encoder
            )
            model = self.accelerator.unwrap_model(self.ddp_model)
            out = self.out / "validation" / f"step-{self.step:08d}"
            kw = dict(train=cfg.train, autocast_dtype=self.autocast_dtype)
            _, grid = run_validation(model, self.autoencoder(), embeds, cfg.validation, out, **kw)
            self._log_image("validation", grid)
            self._score_round(model, embeds, out, "")
            if self.ema is not None:
                with self.ema.swapped_in(model):
                    _, grid = run_validation(
                        model, self.autoencoder(), embeds, cfg.validation, out / "ema", **kw
                    )
                    self._score_round(model, embeds, out / "ema", "_ema")
                self._log_image("validation_ema", grid)
        if self.eval_data is not None:
            self.evaluate()
        self.accelerator.wait_for_everyone()

    def _score_round(self, model: torch.nn.Module, embeds: Any, out: Path, suffix: str) -> None:
        """CLIP score / FID / KID of a validation round: ``out/scores.json`` and the logger."""
        cfg = self.config
        if cfg.validation.scored_metric is None:
            return
        from sanakit.metrics.validation import RoundScorer, scalars

        if self.scorer is None:
            self.scorer = RoundScorer(cfg.validation, self.device)
        kw = dict(train=cfg.train, autocast_dtype=self.autocast_dtype)
        scores = score_validation(
            self.scorer, model, self.autoencoder(), embeds, out, self.step, **kw
        )
        self.accelerator.log(scalars(scores, suffix), step=self.step)

    def report_best(self) -> dict[str, Any] | None:
        """The best validation round by ``[validation] best_metric``: printed and written to
        ``OUTPUT/validation/best.json`` (main process; None without scores)."""
        metric = self.config.validation.scored_metric
        if metric is None or not self.accelerator.is_main_process:
            return None
        from sanakit.metrics.validation import best_round

        best = best_round(self.out / "validation", metric)
        if best is not None:
            (self.out / "validation" / "best.json").write_text(json.dumps(best, indent=2) + "\n")
            print(
                f"best validation step {best['step']}: {metric} {best['value']:.4g} "
                f"(of {best['rounds']} rounds)"
            )
        return best

    def _log_image(self, tag: str, grid: np.ndarray) -> None:
        for tracker in self.accelerator.trackers:
            if tracker.name == "tensorboard":
                tracker.writer.add_image(tag, grid, self.step, dataformats="HWC")

    @torch.no_grad()
    def evaluate(self) -> dict[float, float]:
        """Mean eval loss per σ over one pass of the held-out datasets (fixed noise)."""
        cfg = self.config
        cache = open_cache(self.eval_data)
        loader = make_loader(
            self.eval_data, cache, batch_size=1, seed=0, rank=self.rank, world_size=self.world
        )
        sums = dict.fromkeys(cfg.validation.eval_sigmas, 0.0)
        count = 0
        with eval_mode(self.accelerator.unwrap_model(self.ddp_model)) as model:
            for _ in range(loader.planner.total_batches_per_epoch):
                batch = next(loader)
                with self.autocast():
                    for s, v in eval_loss(
                        model,
                        batch,
                        cfg.validation.eval_sigmas,
                        cfg.train.seed,
                        self.device,
                        timestep_scale=model.config.timestep_scale,
                    ).items():
                        sums[s] += float(v)
                count += len(batch["ids"])
        result = {s: v / max(1, count) for s, v in sums.items()}
        self.accelerator.log(
            {f"eval_loss/sigma_{s:g}": v for s, v in result.items()}
            | {"eval_loss": float(np.mean(list(result.values())))},
            step=self.step,
        )
        self.last_eval = result
        return result

    # ------------------------------------------------------------------ checkpoints
    def parts(self) -> dict[str, Stateful]:
        """Everything a bit-identical continuation needs, by name (see :mod:`.state`)."""
        parts: dict[str, Stateful] = {
            "weights": self.adapter if self.adapter is not None else self.model,
            "optimizer": self.optimizer,
            "scheduler": self.scheduler,
            "loader": self.loader,
            "trainer": self.state,
        }
        if self.ema is not None:
            parts["ema"] = self.ema
        if self.scaler.is_enabled():
            parts["scaler"] = self.scaler
        parts["rng"] = RNGState(self.rank, self.world)
        return parts

    def save_checkpoint(self) -> Path | None:
        """Write a checkpoint of the current step (every process calls it; the main process
        writes and returns the folder)."""
        extra = {"method": self.config.train.method, "world_size": self.world}
        main, config = self.accelerator.is_main_process, to_dict(self.config)
        folder = save_parts(
            self.parts(), self.checkpointer, self.step, main=main, config=config, extra=extra
        )
        self.accelerator.wait_for_everyone()
        return folder

    def load_checkpoint(self, folder: Path) -> None:
        load_parts(self.parts(), folder)
        log.info("resumed from %s (step %d)", folder, self.step)
