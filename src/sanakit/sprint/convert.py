"""Sana flow model -> Sana-Sprint teacher -> student (Sana-Sprint §2.1, §4.1; spec §2, §4.1).

- Teacher: RMS qk-norm across heads in self- and cross-attention (new norm weights at ones, as
  NVlabs' ``RMSNorm`` and diffusers' initialise them) and dense time (``timestep_scale`` 0.001:
  the time embedder sees the flow time in [0, 1], NVlabs' ``timestep_norm_scale_factor`` 1000).
  A ones-init ``norm_q`` is an exact identity on ReLU linear attention (ReLU is positively
  homogeneous, so a per-token rescale of q cancels in num/den); ``norm_k`` and the cross-attention
  norms are not, so the converted model must be fine-tuned (``sanakit train``).
- Student: the teacher's architecture with a guidance embedding (diffusers'
  ``SanaCombinedTimestepGuidanceEmbeddings``) whose output layer starts at zero, so the student
  equals the wrapped teacher at step 0. Its first layer starts random (N(0, 0.02), the model's
  init of time MLPs): diffusers' research script zeroes all four tensors, a saddle where every
  weight gradient is zero (only the last bias can learn), so that student never depends on the
  guidance scale; NVlabs' all-random init makes the student differ from the teacher at step 0.
"""

from __future__ import annotations

import torch

from sanakit.errors import SanakitError
from sanakit.models import SanaTransformer

QK_NORM = "rms_norm_across_heads"
DENSE_TIMESTEP_SCALE = 0.001  # model_time(sigma) = sigma: the embedder sees t in [0, 1]


def is_dense_time(model: SanaTransformer) -> bool:
    return model.config.timestep_scale == DENSE_TIMESTEP_SCALE


def _rebuild(
    model: SanaTransformer, config, state: dict[str, torch.Tensor], fill: float
) -> SanaTransformer:
    """A model of ``config`` holding ``state``; keys ``state`` lacks are filled with ``fill``."""
    with torch.device("meta"):
        new = SanaTransformer(config)
    expected = new.state_dict()
    dtype = next(iter(state.values())).dtype
    for key, meta in expected.items():
        if key not in state:
            state[key] = torch.full(meta.shape, fill, dtype=dtype, device=model.device)
    unexpected = set(state) - set(expected)
    if unexpected:
        raise SanakitError(f"cannot convert: unexpected weights {sorted(unexpected)[:3]}")
    new.load_state_dict(state, strict=True, assign=True)
    new.train(model.training)
    return new


def make_sprint_teacher(model: SanaTransformer) -> tuple[SanaTransformer, list[str]]:
    """The Sprint teacher of a Sana flow model and a list of what changed (empty: already one).

    Weights are kept (shared with ``model``); the new q/k norm weights are ones.
    """
    cfg = model.config
    if cfg.guidance_embeds:
        raise SanakitError(
            "this is a Sana-Sprint student (guidance_embeds = true), not a flow model: "
            "sprint-teacher converts a Sana flow model (e.g. Sana 1.6B or a `sanakit train` final/)"
        )
    changes = []
    if cfg.qk_norm != QK_NORM:
        blocks = cfg.num_layers
        changes.append(
            f"qk_norm: {cfg.qk_norm} -> {QK_NORM} (self- and cross-attention of {blocks} blocks: "
            f"{4 * blocks} new RMSNorm weights, all ones)"
        )
    if cfg.timestep_scale != DENSE_TIMESTEP_SCALE:
        changes.append(
            f"timestep_scale: {cfg.timestep_scale:g} -> {DENSE_TIMESTEP_SCALE:g} (dense time: the "
            "time embedder sees the flow time t in [0, 1] instead of 1000 t)"
        )
    new_cfg = cfg.replace(qk_norm=QK_NORM, timestep_scale=DENSE_TIMESTEP_SCALE)
    return _rebuild(model, new_cfg, dict(model.state_dict()), fill=1.0), changes


def student_from_teacher(teacher: SanaTransformer, *, share: bool = False) -> SanaTransformer:
    """The Sprint student of a dense-time teacher: same weights plus a guidance embedding whose
    output is zero (first layer drawn from the global RNG: seed it for a reproducible student).

    ``share``: the student's tensors are the teacher's (one copy in memory, for a frozen base
    under an adapter); else a copy. diffusers' key layout: the teacher's
    ``time_embed.emb.timestep_embedder.*`` is the student's ``time_embed.timestep_embedder.*``.
    """
    if teacher.config.guidance_embeds:
        raise SanakitError("the teacher already has a guidance embedding (a Sprint model)")
    state = {}
    for key, tensor in teacher.state_dict().items():
        key = key.replace("time_embed.emb.timestep_embedder.", "time_embed.timestep_embedder.")
        state[key] = tensor if share else tensor.clone()
    student = _rebuild(teacher, teacher.config.replace(guidance_embeds=True), state, fill=0.0)
    with torch.no_grad():  # linear_2 stays zero: the guidance term is 0 at step 0
        first = student.time_embed.guidance_embedder.linear_1.weight
        first.copy_(torch.randn(first.shape, dtype=torch.float32).to(first) * 0.02)
    return student
