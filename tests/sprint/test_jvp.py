"""Forward-mode AD through the wrapped Sprint student (spec U3): ``torch.func.jvp`` against
central finite differences in float64, including the pure-time tangent."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sanakit.models.layers import explicit_attention
from sanakit.sprint.convert import student_from_teacher
from sanakit.sprint.student import SprintStudent
from tests.sprint.test_trigflow import _flow_model, _inputs

H = 1e-5


def _student(seed: int = 0) -> SprintStudent:
    torch.manual_seed(seed)
    net = student_from_teacher(_flow_model(seed))
    with torch.no_grad():  # a trained student: a non-zero guidance embedding
        for p in net.time_embed.guidance_embedder.parameters():
            p.copy_(torch.randn_like(p) * 0.05)
    return SprintStudent(net).double()


def _jvp_and_fd(student: SprintStudent, tangent_x: torch.Tensor, tangent_t: torch.Tensor):
    _, _, text, mask, t = _inputs()
    x = torch.randn(3, 4, 4, 4, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    guidance = torch.tensor([0.0, 0.45, 1.0], dtype=torch.float64)

    def f(x_in, tt):
        return student(x_in, tt, text, mask, guidance)

    with torch.no_grad():
        reference = f(x, t)[0]
        with student.transformer.forward_ad_compatible():
            primal, tangent, logvar = torch.func.jvp(
                f, (x, t), (tangent_x, tangent_t), has_aux=True
            )
        fd = (
            f(x + H * tangent_x, t + H * tangent_t)[0] - f(x - H * tangent_x, t - H * tangent_t)[0]
        ) / (2 * H)
    return reference, primal, tangent, fd, logvar


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_u3_jvp_matches_central_differences() -> None:
    student = _student()
    g = torch.Generator().manual_seed(3)
    tx = torch.randn(3, 4, 4, 4, generator=g, dtype=torch.float64)
    tt = torch.rand(3, generator=g, dtype=torch.float64)
    reference, primal, tangent, fd, logvar = _jvp_and_fd(student, tx, tt)
    assert (primal - reference).abs().max() <= 1e-12  # the JVP's primal is the forward
    assert logvar.shape == (3,)
    assert _rel(tangent, fd) < 1e-6


def test_u3_pure_time_tangent_is_nonzero_and_exact() -> None:
    """Catches any rounding (.long()), bf16 cast or detach on the time path."""
    student = _student()
    _, _, tangent, fd, _ = _jvp_and_fd(
        student, torch.zeros(3, 4, 4, 4, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    )
    assert tangent.abs().amax(dim=(1, 2, 3)).min() > 1e-4  # every sample moves with t
    assert _rel(tangent, fd) < 1e-6


def test_u3_jvp_bypasses_gradient_checkpointing_and_restores_it() -> None:
    student = _student()
    student.transformer.set_gradient_checkpointing(True)
    g = torch.Generator().manual_seed(4)
    tx = torch.randn(3, 4, 4, 4, generator=g, dtype=torch.float64)
    _, _, tangent, fd, _ = _jvp_and_fd(student, tx, torch.ones(3, dtype=torch.float64))
    assert _rel(tangent, fd) < 1e-6
    assert student.transformer.gradient_checkpointing  # back on after the block


def test_u3_jvp_through_a_lora_student() -> None:
    from sanakit.adapters import apply_adapter
    from sanakit.adapters.spec import LoraSpec

    student = _student()
    handle = apply_adapter(student.transformer, LoraSpec(rank=2), seed=0)
    with torch.no_grad():
        for p in handle.trainable_parameters():
            p.add_(torch.randn_like(p) * 0.05)  # lora_B starts at zero
    student.double()
    g = torch.Generator().manual_seed(6)
    tx = torch.randn(3, 4, 4, 4, generator=g, dtype=torch.float64)
    _, _, tangent, fd, _ = _jvp_and_fd(student, tx, torch.ones(3, dtype=torch.float64))
    assert _rel(tangent, fd) < 1e-6


def test_explicit_attention_equals_sdpa() -> None:
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 3, 7, 8, generator=g)
    k, v = torch.randn(2, 3, 5, 8, generator=g), torch.randn(2, 3, 5, 8, generator=g)
    bias = torch.zeros(2, 1, 1, 5)
    bias[0, ..., 3:] = -10000.0
    torch.testing.assert_close(
        explicit_attention(q, k, v, bias),
        F.scaled_dot_product_attention(q, k, v, attn_mask=bias),
        rtol=1e-6,
        atol=1e-6,
    )


def test_the_fused_path_has_no_forward_ad() -> None:
    """Why forward_ad_compatible exists: outside it, jvp through the model fails (if a future
    torch adds the formulas, this test says the plain path may be dropped)."""
    student = _student()
    _, _, text, mask, t = _inputs()
    x = torch.randn(3, 4, 4, 4, dtype=torch.float64)
    guidance = torch.zeros(3, dtype=torch.float64)
    with torch.no_grad(), pytest.raises(RuntimeError):
        torch.func.jvp(
            lambda xx: student(xx, t, text, mask, guidance)[0], (x,), (torch.ones_like(x),)
        )
