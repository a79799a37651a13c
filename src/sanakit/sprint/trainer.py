"""``sanakit distill``: Sana-Sprint sCM distillation on the ``sanakit train`` machinery.

:class:`DistillTrainer` is a :class:`~sanakit.train.trainer.Trainer` whose model is a Sprint
student distilled from a frozen dense-time teacher: same cache, accelerate, mixed precision with
fp32 master weights, NaN guard, atomic checkpoints, exact ``--resume``, TensorBoard and Ctrl-C
handling; what changes is the model (student + teacher), the loss (:func:`.scm.scm_loss`), the
validation grids (SCM sampler at ``distill.validation_steps``) and the export (a
``SanaSprintPipeline`` folder, or the adapter of a LoRA/LoKr student).

Randomness is stateless as in training: sample ``i`` of micro-batch ``m`` of step ``s`` draws its
TrigFlow time, noise and teacher CFG scale from ``step_generator(seed, s, m, i)``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from sanakit.data import open_cache
from sanakit.errors import SanakitError
from sanakit.flow import trigflow_output
from sanakit.models import SanaTransformer, load_transformer
from sanakit.sampling import velocity_model
from sanakit.sprint.config import DistillSection
from sanakit.sprint.convert import QK_NORM, is_dense_time, student_from_teacher
from sanakit.sprint.export import make_sprint_pipeline
from sanakit.sprint.ladd import (
    TeacherFeatureDiscriminator,
    discriminator_batch,
    hinge_d_loss,
    hinge_g_loss,
    r1_penalty,
)
from sanakit.sprint.scm import ScmTerms, scm_loss
from sanakit.sprint.student import SprintStudent
from sanakit.sprint.trigflow import (
    LARGEST_TIME,
    SIGMA_DATA,
    denoised,
    noisy_state,
    sample_trigflow_times,
)
from sanakit.train import components
from sanakit.train.config import OptimizerName, RunConfig
from sanakit.train.export import export_final
from sanakit.train.objective import step_generator
from sanakit.train.optim import build_optimizer
from sanakit.train.state import Stateful
from sanakit.train.trainer import Trainer
from sanakit.train.validation import prompt_embeddings, run_validation

log = logging.getLogger("sanakit.distill")

# architecture fields the teacher and the student must share
_SAME = (
    "in_channels",
    "num_layers",
    "num_attention_heads",
    "attention_head_dim",
    "caption_channels",
    "patch_size",
)


def check_distill_config(config: RunConfig) -> None:
    """What ``sanakit distill`` cannot honour, as one-line errors (before anything loads)."""
    t, v = config.train, config.validation
    if t.ema is not None:
        raise SanakitError(
            "train.ema is not used by sanakit distill (Sana-Sprint distils without EMA); remove it"
        )
    d = config.distill
    names = typing.get_args(OptimizerName)
    if d is not None and d.d_optimizer is not None and d.d_optimizer not in names:
        raise SanakitError(
            f"distill.d_optimizer = {d.d_optimizer!r} is not an optimizer; use one of "
            f"{', '.join(names)}"
        )
    if v.clip_model or v.fid_reference:
        raise SanakitError(
            "validation.clip_model / fid_reference: sanakit distill does not score its validation "
            "grids; score the student with `sanakit eval --model OUTPUT/final` (docs/evaluation.md)"
        )
    if v.eval_datasets:
        raise SanakitError(
            "validation.eval_datasets measures the flow loss, which a Sprint student has no "
            "meaning for; remove it (distillation validates with SCM sample grids)"
        )


class DistillTrainer(Trainer):
    """Sana-Sprint sCM distillation (``config.distill``; defaults when the section is absent)."""

    # the student learns conditional samples; CFG comes from the teacher (NVlabs: no dropout)
    caption_dropout = 0.0

    def __init__(
        self, config: RunConfig, *, output_dir: str | None = None, resume: str | None = None
    ) -> None:
        check_distill_config(config)
        self.distill = config.distill or DistillSection()
        super().__init__(config, output_dir=output_dir, resume=resume)

    # ------------------------------------------------------------------ setup
    def _build_model(self) -> None:
        cfg, t, d = self.config, self.config.train, self.distill
        model = components.build_transformer(
            cfg,
            latent_channels=self.memo["latent_channels"],
            text_channels=self.memo["text_hidden_size"],
        )
        spec = t.adapter_spec()
        if model.config.guidance_embeds:
            if not d.teacher:
                raise SanakitError(
                    "model is a Sana-Sprint model (guidance embedding): set distill.teacher to the "
                    "dense-time flow teacher to distil from"
                )
            net = model
        elif spec is not None:
            raise SanakitError(
                f"train.method = {t.method!r} distils into an adapter on a Sana-Sprint model: set "
                "model.base to a Sprint pipeline (e.g. Sana-Sprint 1.6B) and distill.teacher to "
                "the teacher (an adapter cannot learn a guidance embedding that starts at zero); "
                "or use train.method = 'full' to make a student from the teacher"
            )
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(t.seed)
                net = student_from_teacher(model)  # a copy: the teacher stays as it is
        if d.teacher:
            teacher = load_transformer(d.teacher, torch_dtype=torch.float32)
            source = d.teacher
        else:
            teacher, source = model, "model (the student's starting point)"
        _check_teacher(teacher, net, source)
        self.teacher = teacher.to(self.device).eval().requires_grad_(False)
        self.adapter = None
        if spec is not None:
            from sanakit.adapters import apply_adapter

            self.adapter = apply_adapter(net, spec, seed=t.seed)
        self.model = net.to(self.device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(t.seed)
            self.student = SprintStudent(self.model)
        if self.adapter is not None:
            params = list(self.adapter.trainable_parameters())
            params += list(self.student.logvar_linear.parameters())
        else:
            params = [p for p in self.student.parameters() if p.requires_grad]
        self._build_optimization(params, self.student)
        self.null_text, self.null_mask = self._empty_prompt()
        self.disc = None
        self._d_side = False
        if d.adversarial:
            self._build_discriminator()

    def _build_discriminator(self) -> None:
        """LADD heads on the teacher's blocks and their own optimizer (``distill.d_optimizer``,
        ``distill.d_lr``; no LR schedule, as NVlabs)."""
        t, d = self.config.train, self.distill
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(t.seed + 1)
            disc = TeacherFeatureDiscriminator(self.teacher, d.head_block_ids, self._teacher_f)
        self.disc = disc.to(self.device)
        self.d_params = list(self.disc.parameters())  # the heads only
        optimizer = build_optimizer(
            self.d_params,
            d.d_optimizer or t.optimizer,
            lr=d.d_lr or t.learning_rate,
            betas=t.betas,
            weight_decay=t.weight_decay,
            eps=t.eps,
        )
        self.ddp_disc, self.d_optimizer = self.accelerator.prepare(self.disc, optimizer)

    @property
    def phase(self) -> str:
        """``"G"`` or ``"D"``: with LADD, updates alternate G, D, G, ... and ``step`` counts both
        (NVlabs' ``global_step``), so the phase is the step's parity; a skipped (non-finite) step
        keeps it."""
        return "D" if self.disc is not None and self.step % 2 == 1 else "G"

    def train_step(self) -> dict[str, Any]:
        """One G or D update (the trainer's step: accumulation, clipping, NaN guard), on a
        fresh batch each. The LR schedule (G's) only advances on G steps."""
        phase = self.phase
        if phase == "G":
            if self.disc is not None:
                self.disc.requires_grad_(False)  # heads get no gradient from L_G
            stats = super().train_step()
        else:
            with self._discriminator_side():
                stats = super().train_step()
        return {**stats, "phase": phase}

    @contextlib.contextmanager
    def _discriminator_side(self) -> Iterator[None]:
        """Within the block the trainer's step updates the heads: D's optimizer and parameters,
        no LR schedule, D's loss."""
        saved = self.optimizer, self.params, self.scheduler
        self.optimizer, self.params, self.scheduler = self.d_optimizer, self.d_params, _NoSchedule()
        self.disc.requires_grad_(True)
        self._d_side = True
        try:
            yield
        finally:
            self.optimizer, self.params, self.scheduler = saved
            self._d_side = False

    def _empty_prompt(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The cached empty-prompt embedding ``(1, L, D)`` and its mask ``(1, L)``: the teacher's
        unconditional branch (sanakit's negative prompt; diffusers' convention of its own mask)."""
        cache = open_cache(components.with_disabled(self.config.data, set()))
        key = cache.manifests[0]["empty_text"]
        text = cache.reader.get(key, "embeds")[None].to(self.device, torch.float32)
        mask = cache.reader.get(key, "mask")[None].to(self.device)
        return text, mask

    def _teacher_f(self, x_in, t, text, mask) -> torch.Tensor:
        return trigflow_output(velocity_model(self.teacher), x_in, t, text, mask)

    # ------------------------------------------------------------------ one step
    def _draws(self, batch: dict[str, Any], micro: int) -> dict[str, torch.Tensor]:
        """Per-sample randomness of this step (stateless: see the module doc)."""
        d = self.distill
        size = len(batch["ids"])
        first = self.rank * size
        shape = batch["latents"].shape[1:]
        rows: dict[str, list[torch.Tensor]] = {}
        for i in range(size):
            g = step_generator(self.config.train.seed, self.step, micro, first + i)
            scale = d.cfg_scales[int(torch.randint(len(d.cfg_scales), (1,), generator=g))]
            values = dict(
                cfg_scale=torch.tensor([scale], dtype=torch.float32),
                t=sample_trigflow_times(1, d.p_mean, d.p_std, generator=g),
                z=torch.randn(shape, generator=g)[None],
                t_gen=sample_trigflow_times(1, d.p_mean, d.p_std, generator=g),
                largest=torch.rand(1, generator=g) < d.largest_time_prob,
                z_gen=torch.randn(shape, generator=g)[None],
                t_fake=sample_trigflow_times(1, d.d_p_mean, d.d_p_std, generator=g),
                z_fake=torch.randn(shape, generator=g)[None],
                t_real=sample_trigflow_times(1, d.d_p_mean, d.d_p_std, generator=g),
                z_real=torch.randn(shape, generator=g)[None],
                t_mis=sample_trigflow_times(1, d.d_p_mean, d.d_p_std, generator=g),
                z_mis=torch.randn(shape, generator=g)[None],
            )
            for key, value in values.items():
                rows.setdefault(key, []).append(value)
        return {key: torch.cat(value).to(self.device) for key, value in rows.items()}

    def compute_loss(self, batch: dict[str, Any], micro: int) -> tuple[torch.Tensor, torch.Tensor]:
        d = self.distill
        r = self._draws(batch, micro)
        x0 = batch["latents"].to(self.device, torch.float32) * SIGMA_DATA
        guidance = r["cfg_scale"] * self.model.config.guidance_embeds_scale
        cond = (batch["text"].to(self.device), batch["text_mask"].to(self.device))
        if self._d_side:
            with self.autocast():
                loss = self._discriminator_loss(x0, cond, guidance, r)
            return loss, loss.detach()
        t, z, cfg_scale = r["t"], r["z"] * SIGMA_DATA, r["cfg_scale"]
        with self.autocast():
            terms = scm_loss(
                self.student,
                self._teacher_f,
                x0,
                z,
                t,
                cond,
                (self.null_text, self.null_mask),
                cfg_scale,
                guidance,
                warmup_ratio=d.warmup_ratio(self.step),
                tangent_norm_c=d.tangent_norm_c,
                sigma_d=SIGMA_DATA,
                forward_ad=self.model.forward_ad_compatible,
                trained=self.ddp_model,
            )
            loss = d.scm_lambda * terms.loss
            self.last_adv = None
            if self.disc is not None:
                self.last_adv = self._adversarial_loss(x0, cond, guidance, r)
                loss = loss + d.adv_lambda * self.last_adv
        self.last_terms: ScmTerms = terms
        return loss, terms.g_norm

    def _generated_x0(self, x0, cond, guidance, r, student) -> torch.Tensor:
        """The student's one-step x0 from a fresh noisy sample at the generator time, replaced by
        t = 1.5708 (pure noise) with probability ``largest_time_prob`` (NVlabs'
        ``train_largest_timestep``; spec §5.2, not diffusers' 0.5 rad)."""
        t = torch.where(r["largest"], torch.full_like(r["t_gen"], LARGEST_TIME), r["t_gen"])
        x_t = noisy_state(x0, r["z_gen"] * SIGMA_DATA, t)
        f, _ = student(x_t / SIGMA_DATA, t, *cond, guidance)
        return denoised(x_t, f.to(x_t.dtype), t)

    def _adversarial_loss(self, x0, cond, guidance, r) -> torch.Tensor:
        """G's LADD term ``-mean D(x0_hat noised at t_D)``: the gradient reaches the student
        through the frozen teacher and heads (spectral norms frozen: eval mode)."""
        x0_hat = self._generated_x0(x0, cond, guidance, r, self.ddp_model)
        fake = noisy_state(x0_hat, r["z_fake"] * SIGMA_DATA, r["t_fake"])
        self.disc.eval()
        features = self.disc.features_of(fake / SIGMA_DATA, r["t_fake"], *cond)
        return hinge_g_loss(self.ddp_disc(features))

    def _discriminator_loss(self, x0, cond, guidance, r) -> torch.Tensor:
        """D's hinge loss: real = data noised at t_real; fake = the student's x0 noised at t_fake,
        plus (``misaligned_pairs``) real images with the batch's captions rolled by one."""
        d = self.distill
        with torch.no_grad():
            x0_hat = self._generated_x0(x0, cond, guidance, r, self.student)
        batch = discriminator_batch(
            x0,
            x0_hat,
            cond,
            r,
            misaligned_pairs=d.misaligned_pairs,
            separate_times=d.separate_real_fake_times,
        )
        self.disc.train()
        with torch.no_grad():
            fake_features = self.disc.features_of(*batch.fake)
            real_features = self.disc.features_of(*batch.real)
        loss = hinge_d_loss(self.ddp_disc(real_features), self.ddp_disc(fake_features))
        if d.r1_weight > 0:
            loss = loss + d.r1_weight * r1_penalty(self.disc, real_features)
        return loss

    def on_step_end(self, stats: dict[str, Any]) -> None:
        if stats["phase"] == "D":
            self.accelerator.log({"ladd/d_loss": stats["loss"]}, step=self.step)
            return
        terms = self.last_terms
        logs = {
            "scm/loss": float(terms.loss.detach()),
            "scm/g_norm": float(terms.g_norm.mean()),
            "scm/logvar": float(terms.logvar.mean()),
            "scm/tangent_warmup": self.distill.warmup_ratio(self.step - 1),
        }
        if self.last_adv is not None:
            logs["ladd/g_loss"] = float(self.last_adv.detach())
        self.accelerator.log(logs, step=self.step)

    # ------------------------------------------------------------------ validation, export
    def validate(self) -> None:
        cfg = self.config
        if self.accelerator.is_main_process and cfg.validation.prompt_items():
            embeds = prompt_embeddings(
                cfg.validation, cfg.data.cache_dir, self.memo["text_fingerprint"], self.text_encoder
            )
            out = self.out / "validation" / f"step-{self.step:08d}"
            for steps in self.distill.validation_steps:
                v = dataclasses.replace(cfg.validation, sampler="scm", steps=steps)
                _, grid = run_validation(
                    self.model,
                    self.autoencoder(),
                    embeds,
                    v,
                    out / f"scm-{steps}",
                    train=cfg.train,
                    autocast_dtype=self.autocast_dtype,
                )
                self._log_image(f"validation/scm_{steps}_steps", grid)
        self.accelerator.wait_for_everyone()

    def parts(self) -> dict[str, Stateful]:
        parts = {**super().parts(), "logvar": self.student.logvar_linear}
        if self.disc is not None:
            parts |= {"discriminator": self.disc, "optimizer_d": self.d_optimizer}
        return parts

    def export(self) -> Path:
        """``final/``: a ``SanaSprintPipeline`` folder (full), or the adapter, which applies on
        the Sprint model ``[model]`` names."""
        final = export_final(self.config, self.model, adapter=self.adapter)
        return final if self.adapter is not None else make_sprint_pipeline(final)


class _NoSchedule:
    """The discriminator's (absent) LR schedule while its step runs through the trainer's."""

    def step(self) -> None:
        pass


def _check_teacher(teacher: SanaTransformer, student: SanaTransformer, source: str) -> None:
    tc, sc = teacher.config, student.config
    if tc.guidance_embeds:
        raise SanakitError(f"distill.teacher ({source}) is a Sprint student, not a flow teacher")
    if not is_dense_time(teacher):
        raise SanakitError(
            f"the teacher ({source}) is not a dense-time model (timestep_scale "
            f"{tc.timestep_scale:g}, its time embedder sees 1000 t): make it with `sanakit "
            "sprint-teacher` and fine-tune it with `sanakit train` first (docs/sprint.md)"
        )
    different = [k for k in _SAME if getattr(tc, k) != getattr(sc, k)]
    if different:
        raise SanakitError(
            f"the teacher ({source}) and the student differ in {', '.join(different)}"
        )
    if tc.qk_norm != QK_NORM:
        log.warning(
            "the teacher has no qk-norm: Sana-Sprint distils qk-normed teachers (stabler JVPs); "
            "`sanakit sprint-teacher` adds it"
        )
