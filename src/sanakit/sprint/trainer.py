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

import dataclasses
import logging
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
from sanakit.sprint.scm import ScmTerms, scm_loss
from sanakit.sprint.student import SprintStudent
from sanakit.sprint.trigflow import SIGMA_DATA, sample_trigflow_times
from sanakit.train import components
from sanakit.train.config import RunConfig
from sanakit.train.export import export_final
from sanakit.train.objective import step_generator
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
    def compute_loss(self, batch: dict[str, Any], micro: int) -> tuple[torch.Tensor, torch.Tensor]:
        d = self.distill
        size = len(batch["ids"])
        first = self.rank * size
        gens = [
            step_generator(self.config.train.seed, self.step, micro, first + i) for i in range(size)
        ]
        x0 = batch["latents"].to(self.device, torch.float32) * SIGMA_DATA
        times, noises, scales = [], [], []
        for g in gens:
            times.append(sample_trigflow_times(1, d.p_mean, d.p_std, generator=g))
            noises.append(torch.randn(x0.shape[1:], generator=g))
            scales.append(d.cfg_scales[int(torch.randint(len(d.cfg_scales), (1,), generator=g))])
        t = torch.cat(times).to(self.device)
        z = torch.stack(noises).to(self.device) * SIGMA_DATA
        cfg_scale = torch.tensor(scales, dtype=torch.float32, device=self.device)
        guidance = cfg_scale * self.model.config.guidance_embeds_scale
        cond = (batch["text"].to(self.device), batch["text_mask"].to(self.device))
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
        self.last_terms: ScmTerms = terms
        return d.scm_lambda * terms.loss, terms.g_norm

    def on_step_end(self, stats: dict[str, Any]) -> None:
        terms = self.last_terms
        self.accelerator.log(
            {
                "scm/g_norm": float(terms.g_norm.mean()),
                "scm/logvar": float(terms.logvar.mean()),
                "scm/tangent_warmup": self.distill.warmup_ratio(self.step - 1),
            },
            step=self.step,
        )

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
        return {**super().parts(), "logvar": self.student.logvar_linear}

    def export(self) -> Path:
        """``final/``: a ``SanaSprintPipeline`` folder (full), or the adapter, which applies on
        the Sprint model ``[model]`` names."""
        final = export_final(self.config, self.model, adapter=self.adapter)
        return final if self.adapter is not None else make_sprint_pipeline(final)


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
