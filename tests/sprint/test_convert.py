"""Teacher and student conversion (spec U7, U10)."""

from __future__ import annotations

import pytest
import torch

from sanakit.errors import SanakitError
from sanakit.flow import trigflow_output
from sanakit.models import SanaTransformer
from sanakit.models.layers import CrossAttention, LinearAttention
from sanakit.presets import tiny
from sanakit.sampling import velocity_model
from sanakit.sprint.convert import make_sprint_teacher, student_from_teacher
from sanakit.sprint.student import SprintStudent
from tests.sprint.test_trigflow import _flow_model, _inputs


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_u7_ones_init_q_norm_is_an_identity_on_linear_attention_k_norm_is_not() -> None:
    torch.manual_seed(0)
    plain = LinearAttention(64, 2, False, None, 1e-15).double()
    normed = LinearAttention(64, 2, False, "rms_norm_across_heads", 1e-15).double()
    normed.load_state_dict(plain.state_dict(), strict=False)  # norms stay at ones
    x = torch.randn(2, 9, 64, dtype=torch.float64)
    with torch.no_grad():
        reference = plain(x)
        norm_k, normed.norm_k = normed.norm_k, torch.nn.Identity()
        # q-norm alone: ReLU is positively homogeneous, the per-token scale cancels in num/den
        assert _rel(normed(x), reference) <= 1e-6
        normed.norm_k, normed.norm_q = norm_k, torch.nn.Identity()  # k-norm re-weights tokens
        assert _rel(normed(x), reference) > 1e-3
    cross_plain = CrossAttention(64, 2, 32, None).double()
    cross = CrossAttention(64, 2, 32, "rms_norm_across_heads").double()
    cross.load_state_dict(cross_plain.state_dict(), strict=False)
    text = torch.randn(2, 5, 64, dtype=torch.float64)
    with torch.no_grad():
        assert _rel(cross(x, text, None), cross_plain(x, text, None)) > 1e-3


def test_sprint_teacher_conversion_adds_ones_norms_and_dense_time() -> None:
    torch.manual_seed(0)
    model = SanaTransformer(tiny(in_channels=4, caption_channels=8))
    teacher, changes = make_sprint_teacher(model)
    assert teacher.config.qk_norm == "rms_norm_across_heads"
    assert teacher.config.timestep_scale == 0.001
    assert len(changes) == 2 and "qk_norm" in changes[0] and "dense time" in changes[1]
    norms = {k: v for k, v in teacher.state_dict().items() if ".norm_q." in k or ".norm_k." in k}
    assert len(norms) == 4 * model.config.num_layers
    assert all(torch.equal(v, torch.ones_like(v)) for v in norms.values())
    for key, value in model.state_dict().items():  # every old weight kept (shared)
        assert teacher.state_dict()[key].data_ptr() == value.data_ptr()
    assert make_sprint_teacher(teacher)[1] == []  # idempotent
    with pytest.raises(SanakitError, match="Sprint student"):
        make_sprint_teacher(student_from_teacher(teacher))


@pytest.mark.parametrize("share", [False, True])
def test_u10_zero_guidance_student_equals_the_wrapped_teacher(share: bool) -> None:
    teacher = _flow_model()
    student = SprintStudent(student_from_teacher(teacher, share=share)).double()
    _, eps, text, mask, t = _inputs()
    x_in = eps
    with torch.no_grad():
        expected = trigflow_output(velocity_model(teacher), x_in, t, text, mask)
        for w in (0.0, 4.5, 10.0):
            guidance = torch.full((3,), w * 0.1, dtype=torch.float64)
            f, logvar = student(x_in, t, text, mask, guidance)
            assert torch.equal(f, expected)
            assert logvar.shape == (3,) and torch.isfinite(logvar).all()
    weight = student.transformer.time_embed.timestep_embedder.linear_1.weight
    source = teacher.time_embed.emb.timestep_embedder.linear_1.weight
    assert (weight.data_ptr() == source.data_ptr()) == share
    assert student.transformer.time_embed.guidance_embedder.linear_2.weight.abs().sum() == 0
