"""LADD plumbing (spec U8): discriminator shapes and gradients, grouped batch-norm, hinge
values, the misaligned-pairs batch layout."""

from __future__ import annotations

import pytest
import torch

from sanakit.flow import trigflow_output
from sanakit.sampling import velocity_model
from sanakit.sprint.ladd import (
    BatchNormLocal,
    TeacherFeatureDiscriminator,
    clip_block_ids,
    hinge_d_loss,
    hinge_g_loss,
    r1_penalty,
)
from tests.sprint.test_trigflow import _flow_model, _inputs


def _disc(block_ids=(0, 1, 5)):
    teacher = _flow_model().float().requires_grad_(False)

    def run(x_in, t, text, mask):
        return trigflow_output(velocity_model(teacher), x_in, t, text, mask)

    torch.manual_seed(0)
    return teacher, TeacherFeatureDiscriminator(teacher, block_ids, run)


def _batch():
    _, eps, text, mask, t = _inputs()
    return eps.float(), t.float(), text.float(), mask


def test_u8_output_shape_and_block_clipping() -> None:
    teacher, disc = _disc()
    assert disc.block_ids == (0, 1)  # 5 is past the 2-block model: clipped, deduplicated
    assert clip_block_ids([2, 8, 14, 19], 4) == (2, 3)
    x, t, text, mask = _batch()
    logits = disc(disc.features_of(x, t, text, mask))
    assert logits.shape == (3, 16 * 2)  # one logit per token (4x4 latent) per head
    names = {n for n, _ in disc.named_parameters()}
    assert names and all(n.startswith("heads.") for n in names)  # the teacher is not part of it
    assert not [k for k in disc.state_dict() if "transformer_blocks" in k]


def test_u8_generator_gradient_reaches_x0_but_not_the_teacher() -> None:
    teacher, disc = _disc()
    disc.requires_grad_(False).eval()
    x, t, text, mask = _batch()
    x0_hat = x.clone().requires_grad_(True)
    loss = hinge_g_loss(disc(disc.features_of(x0_hat, t, text, mask)))
    loss.backward()
    assert x0_hat.grad is not None and x0_hat.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is None for p in disc.parameters())


def test_u8_discriminator_step_changes_only_the_heads() -> None:
    teacher, disc = _disc()
    before_teacher = {k: v.clone() for k, v in teacher.state_dict().items()}
    before_heads = {k: v.clone() for k, v in disc.state_dict().items()}
    optimizer = torch.optim.SGD(disc.parameters(), lr=0.1)
    x, t, text, mask = _batch()
    with torch.no_grad():
        real = disc.features_of(x, t, text, mask)
        fake = disc.features_of(x.flip(0), t, text, mask)
    loss = hinge_d_loss(disc(real), disc(fake))
    loss.backward()
    optimizer.step()
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in before_teacher.items())
    changed = [k for k, v in disc.state_dict().items() if not torch.equal(v, before_heads[k])]
    assert any(k.endswith("weight.original") or k.endswith(".bias") for k in changed)


@pytest.mark.parametrize("batch", [3, 8, 17])
def test_u8_grouped_batch_norm(batch: int) -> None:
    norm = BatchNormLocal(4, virtual_bs=8)
    x = torch.randn(batch, 4, 6) * 3 + 2
    out = norm(x)
    groups = -(-batch // 8)
    sizes = [len(p) for p in torch.tensor_split(torch.arange(batch), groups)]
    assert max(sizes) <= 8 and max(sizes) - min(sizes) <= 1
    start = 0
    for size in sizes:  # every group is normalised on its own statistics
        part = out[start : start + size]
        torch.testing.assert_close(part.mean(dim=(0, 2)), torch.zeros(4), atol=1e-5, rtol=0)
        torch.testing.assert_close(
            part.var(dim=(0, 2), unbiased=False), torch.ones(4), atol=1e-3, rtol=0
        )
        start += size
    torch.testing.assert_close(norm.eval()(x), out)  # no running statistics


def test_u8_hinge_values() -> None:
    ones, zeros = torch.ones(4, 5), torch.zeros(4, 5)
    assert float(hinge_d_loss(ones * 2, -ones * 2)) == 0.0  # confident and right
    assert float(hinge_d_loss(zeros, zeros)) == 1.0
    assert float(hinge_d_loss(-ones, ones)) == 2.0
    assert float(hinge_g_loss(ones * 0.5)) == -0.5


def test_r1_penalty_is_differentiable_and_positive() -> None:
    _, disc = _disc()
    x, t, text, mask = _batch()
    with torch.no_grad():
        features = disc.features_of(x, t, text, mask)
    penalty = r1_penalty(disc, features)
    assert float(penalty) > 0
    penalty.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in disc.parameters())


def test_u8_misaligned_pairs_layout() -> None:
    from sanakit.sprint.ladd import discriminator_batch
    from sanakit.sprint.trigflow import SIGMA_DATA as SD

    b = 3
    x0 = torch.arange(b, dtype=torch.float32).view(b, 1, 1, 1).expand(b, 2, 2, 2) + 1.0
    x0_hat = -x0
    text = torch.arange(b, dtype=torch.float32).view(b, 1, 1).expand(b, 4, 5)
    mask = torch.ones(b, 4, dtype=torch.long)
    zero = torch.zeros(b, 2, 2, 2)
    draws = {
        "t_fake": torch.full((b,), 0.3),
        "t_real": torch.full((b,), 0.7),
        "t_mis": torch.full((b,), 0.5),
        "z_fake": zero,
        "z_real": zero,
        "z_mis": zero,
    }
    batch = discriminator_batch(
        x0, x0_hat, (text, mask), draws, misaligned_pairs=True, separate_times=True
    )
    real_x, real_t, real_text, real_mask = batch.real
    fake_x, fake_t, fake_text, fake_mask = batch.fake
    assert real_x.shape[0] == b and real_text.shape[0] == b and real_mask.shape[0] == b
    assert fake_x.shape[0] == 2 * b and fake_text.shape[0] == 2 * b and fake_mask.shape[0] == 2 * b
    cos = torch.cos
    torch.testing.assert_close(real_x, cos(torch.tensor(0.7)) * x0 / SD)
    torch.testing.assert_close(fake_x[:b], cos(torch.tensor(0.3)) * x0_hat / SD)
    # the extra fakes: image i-1 with caption i (rolled images, original captions)
    torch.testing.assert_close(fake_x[b:], cos(torch.tensor(0.5)) * torch.roll(x0, 1, 0) / SD)
    torch.testing.assert_close(fake_text, torch.cat([text, text]))
    assert torch.equal(real_text, text) and torch.equal(real_t, draws["t_real"])
    assert torch.equal(fake_t, torch.cat([draws["t_fake"], draws["t_mis"]]))
    shared = discriminator_batch(
        x0, x0_hat, (text, mask), draws, misaligned_pairs=False, separate_times=False
    )
    assert shared.fake[0].shape[0] == b and torch.equal(shared.real[1], draws["t_fake"])
