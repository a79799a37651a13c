"""Gradient checkpointing, bf16 and fp32 accumulation of the linear attention."""

from __future__ import annotations

import pytest
import torch

from sanakit.models import SanaTransformer
from sanakit.models.layers import LinearAttention, LinearAttentionCore
from sanakit.presets import tiny

CONFIG = tiny(in_channels=4, caption_channels=16).replace(num_layers=4)


def _batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 4, 6, 8, generator=g)
    t = torch.tensor([100.0, 900.0])
    text = torch.randn(2, 5, 16, generator=g)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    return x, t, text, mask


def _grads(model: SanaTransformer) -> dict[str, torch.Tensor]:
    model.zero_grad()
    x, t, text, mask = _batch()
    model(x, t, text, mask).square().mean().backward()
    return {k: p.grad.clone() for k, p in model.named_parameters()}


@pytest.mark.parametrize("interval", [1, 2, 3])
def test_gradient_checkpointing_gives_the_same_gradients(interval: int) -> None:
    torch.manual_seed(0)
    model = SanaTransformer(CONFIG)
    reference = _grads(model)
    model.set_gradient_checkpointing(True, interval)
    checkpointed_blocks = []
    for i, block in enumerate(model.transformer_blocks):
        # count forward runs (module hooks are not re-fired by the checkpoint recomputation)
        def counting(*args, _i=i, _forward=block.forward):
            checkpointed_blocks.append(_i)
            return _forward(*args)

        block.forward = counting
    grads = _grads(model)
    # a checkpointed block runs its forward twice (once more during backward)
    recomputed = [i for i in range(CONFIG.num_layers) if checkpointed_blocks.count(i) == 2]
    assert recomputed == [i for i in range(CONFIG.num_layers) if i % interval == 0]
    for key, grad in reference.items():
        torch.testing.assert_close(grads[key], grad, rtol=1e-5, atol=1e-7, msg=key)


def test_gradient_checkpointing_is_a_model_setting_not_config() -> None:
    model = SanaTransformer(CONFIG)
    assert not model.gradient_checkpointing  # off until the trainer turns it on
    model.set_gradient_checkpointing(True, 2)
    assert model.gradient_checkpointing and model.gradient_checkpointing_interval == 2
    with pytest.raises(TypeError):
        CONFIG.replace(gradient_checkpointing=True)


def test_bf16_model_is_finite_and_close_to_fp32() -> None:
    torch.manual_seed(0)
    model = SanaTransformer(CONFIG).eval()
    x, t, text, mask = _batch()
    with torch.no_grad():
        ref = model(x, t, text, mask)
        out = model.to(torch.bfloat16)(x.bfloat16(), t, text.bfloat16(), mask)
    assert out.dtype == torch.bfloat16
    assert torch.isfinite(out).all()
    rel = (out.float() - ref).norm() / ref.norm()
    assert rel < 0.05


def test_bf16_autocast_training_step_is_finite() -> None:
    torch.manual_seed(0)
    model = SanaTransformer(CONFIG)
    x, t, text, mask = _batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(x, t, text, mask).float().square().mean()
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_linear_attention_accumulates_in_fp32_under_autocast() -> None:
    """Under bf16 autocast the projections run in bf16 but both reductions over N tokens must
    run in fp32: the result equals an fp32 computation on the bf16 q, k, v."""
    torch.manual_seed(0)
    dim, heads, n = 64, 2, 4096
    attn = LinearAttention(dim, heads, bias=False, qk_norm=None, eps=1e-15)
    x = torch.randn(1, n, dim)
    captured = {}
    attn.to_out[0].register_forward_pre_hook(lambda mod, args: captured.update(core=args[0]))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        attn(x)
        q, k, v = attn.to_q(x), attn.to_k(x), attn.to_v(x)
    assert q.dtype == torch.bfloat16
    q, k, v = (t.float().reshape(1, n, heads, 32).transpose(1, 2) for t in (q, k, v))
    q, k = q.relu(), k.relu()
    expected = (q @ (k.transpose(-1, -2) @ v)) / (
        (q * k.sum(2, keepdim=True)).sum(-1, keepdim=True) + 1e-15
    )
    expected = expected.transpose(1, 2).reshape(1, n, dim)
    # only the final cast to bf16 may differ: <= 1 bf16 ulp (2^-8 relative)
    torch.testing.assert_close(captured["core"].float(), expected, rtol=2**-8, atol=1e-6)


def test_linear_attention_backward_matches_finite_differences() -> None:
    """The hand-written backward (recomputing fp32 intermediates) is the true gradient."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (
        torch.randn(2, 3, 7, 4, dtype=torch.float64, generator=g).requires_grad_() for _ in range(3)
    )
    assert torch.autograd.gradcheck(
        lambda a, b, c: LinearAttentionCore.apply(a, b, c, 1e-6), (q, k, v)
    )


def test_linear_attention_saves_only_its_inputs() -> None:
    """Memory: the core keeps q, k, v (in their own dtype) for backward and nothing in fp32."""
    q, k, v = (
        torch.randn(1, 2, 64, 32, dtype=torch.bfloat16, requires_grad=True) for _ in range(3)
    )
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        LinearAttentionCore.apply(q, k, v, 1e-15)
    assert len(saved) == 3 and all(t.dtype == torch.bfloat16 for t in saved)
