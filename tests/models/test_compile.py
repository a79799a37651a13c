"""The sync-free forward (issue 19): text trimmed outside the model, fullgraph torch.compile with
no graph breaks (one block and the whole model, forward + backward, padded mask, LoRA on),
compiled ~ eager numerics, forward-mode AD past compiled blocks, leaner saved activations.

Compile tests use the tiny preset and the cheap ``aot_eager*`` backends (dynamo + AOTAutograd,
no C++ code generation: inductor's CPU compile takes minutes on 2 cores). ``aot_eager`` traces
forward and backward graphs exactly as inductor receives them; ``aot_eager_decomp_partition``
adds inductor's decompositions and its min-cut recomputation partitioner.
"""

from __future__ import annotations

import pytest
import torch
import torch._dynamo
from torch._dynamo.testing import CompileCounterWithBackend
from torch._dynamo.utils import counters
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from sanakit.adapters import LoraSpec, apply_adapter
from sanakit.models.sana import SanaTransformer, text_window, trim_text_padding
from sanakit.presets import tiny

CONFIG = tiny(in_channels=4, caption_channels=24)


def _model(seed: int = 0) -> SanaTransformer:
    torch.manual_seed(seed)
    return SanaTransformer(CONFIG)


def _inputs(lengths=(3, 7), window: int = 12, size=(6, 4)):
    g = torch.Generator().manual_seed(1)
    batch = len(lengths)
    x = torch.randn(batch, CONFIG.in_channels, *size, generator=g)
    t = torch.rand(batch, generator=g) * 1000
    text = torch.randn(batch, window, CONFIG.caption_channels, generator=g)
    mask = torch.zeros(batch, window, dtype=torch.long)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    return x, t, text, mask


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


def _assert_grads_close(got: dict, want: dict, rtol: float) -> None:
    assert got.keys() == want.keys()
    # analytically zero gradients (a key bias under softmax) against the overall scale
    floor = 1e-3 * max(g.abs().max() for g in want.values())
    for key, grad in want.items():
        err = (got[key] - grad).abs().max()
        assert err <= rtol * max(grad.abs().max(), floor), key


@pytest.mark.parametrize(
    "lengths", [(3, 7), (12, 12), (5, 5), (0, 4)], ids=["padded", "full", "equal", "empty_row"]
)
def test_trimming_outside_the_model_is_bit_identical_to_the_old_in_model_rule(lengths) -> None:
    model = _model().eval()
    x, t, text, mask = _inputs(lengths)
    # the rule SanaTransformer.forward applied before issue 19, restated: keep up to the last
    # valid position unless a row is empty, drop an all-ones mask
    keep = mask.shape[1] if min(lengths) == 0 else max(lengths)
    old_mask = None if bool(mask[:, :keep].all()) else mask[:, :keep]
    with torch.no_grad():
        reference = model(x, t, text[:, :keep], old_mask)
        trimmed = model(x, t, *trim_text_padding(text, mask))
        untrimmed = model(x, t, text, mask)  # no pre-trimming: still correct, only slower
    assert torch.equal(trimmed, reference)
    torch.testing.assert_close(untrimmed, reference, rtol=1e-5, atol=1e-6)
    assert text_window(mask) == ((None if min(lengths) == 0 else keep), old_mask is None)


def test_one_block_compiles_fullgraph_once_for_all_blocks_and_every_bucket() -> None:
    model = _model()
    x, t, text, mask = _inputs()
    text, mask = trim_text_padding(text, mask)
    model(x, t, text, mask).square().mean().backward()
    want = _grads(model)
    model.zero_grad()
    counter = CompileCounterWithBackend("aot_eager")
    model.compile_blocks(backend=counter)
    out = model(x, t, text, mask)
    out.square().mean().backward()
    assert counter.frame_count == 1  # one graph serves both blocks (regional compilation)
    assert not counters["graph_break"]
    _assert_grads_close(_grads(model), want, 1e-5)
    # automatic dynamic shapes: the second bucket recompiles once with the latent size symbolic,
    # the third reuses that graph
    with torch.no_grad():
        for size, frames in (((4, 8), 2), ((10, 2), 2)):
            model(torch.randn(2, CONFIG.in_channels, *size), t, text, mask)
            assert counter.frame_count == frames


def test_whole_model_compiles_fullgraph_with_lora_and_a_padded_mask() -> None:
    model = _model()
    apply_adapter(model, LoraSpec(rank=4), seed=0)
    for name, p in model.named_parameters():
        if "lora_B" in name:  # a non-zero adapter, so its path carries gradient and value
            torch.nn.init.normal_(p, std=0.02)
    x, t, text, mask = _inputs()
    text, mask = trim_text_padding(text, mask)
    assert mask is not None  # a padded mask really reaches the graph
    expected = model(x, t, text, mask)
    expected.square().mean().backward()
    want = _grads(model)
    model.zero_grad()
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(model, backend=counter, fullgraph=True)
    out = compiled(x, t, text, mask)
    out.square().mean().backward()
    assert counter.frame_count == 1 and not counters["graph_break"]
    assert any("lora" in k for k in want)
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)
    _assert_grads_close(_grads(model), want, 1e-5)


def test_compiled_blocks_match_eager_with_gradient_checkpointing() -> None:
    """Forward <= 1e-5 and gradients <= 1e-4 relative (fp32) through inductor's decompositions and
    partitioner, with block 0 checkpointed (the checkpoint wraps the compiled block)."""
    eager, compiled = _model(), _model()
    compiled.compile_blocks(backend="aot_eager_decomp_partition")
    for model in (eager, compiled):
        model.set_gradient_checkpointing(True, 2)
    x, t, text, mask = _inputs()
    text, mask = trim_text_padding(text, mask)
    outs = []
    for model in (eager, compiled):
        outs.append(model(x, t, text, mask))
        outs[-1].square().mean().backward()
    ref, out = outs
    assert ((out - ref).norm() / ref.norm()) <= 1e-5
    _assert_grads_close(_grads(compiled), _grads(eager), 1e-4)


def test_forward_ad_runs_compiled_blocks_eagerly() -> None:
    model = _model().double()
    model.compile_blocks(backend="eager")
    x, t, text, mask = (v.double() if v.is_floating_point() else v for v in _inputs())
    tangent = torch.randn_like(x)

    def f(latents: torch.Tensor) -> torch.Tensor:
        return model(latents, t, text, mask)

    with model.forward_ad_compatible():
        out, jvp = torch.func.jvp(f, (x,), (tangent,))
    eps = 1e-6  # central difference in float64
    numeric = (f(x + eps * tangent) - f(x - eps * tangent)) / (2 * eps)
    torch.testing.assert_close(jvp, numeric, rtol=1e-6, atol=1e-7)
    assert out.dtype == torch.float64


class _Allocations(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.storages: dict[int, tuple[StorageWeakRef, int]] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor):
                s = tensor.untyped_storage()
                self.storages.setdefault(s.data_ptr(), (StorageWeakRef(s), s.nbytes()))
        return out


def _held_bytes_and_grads(recompute: bool) -> tuple[int, dict[str, torch.Tensor]]:
    model = _model()
    for block in model.transformer_blocks:
        block.recompute = block.ff.recompute = recompute
    x, t, text, mask = _inputs(size=(16, 16))
    mode = _Allocations()
    with mode:
        out = model(x, t, *trim_text_padding(text, mask))
    ptr = out.untyped_storage().data_ptr()
    held = sum(n for p, (ref, n) in mode.storages.items() if p != ptr and not ref.expired())
    out.square().mean().backward()
    return held, _grads(model)


def test_recomputed_regions_hold_less_for_backward_and_give_the_same_gradients() -> None:
    lean, lean_grads = _held_bytes_and_grads(True)
    full, full_grads = _held_bytes_and_grads(False)
    # tiny: hidden 64, Mix-FFN 2 x 160 channels, 256 tokens x batch 2: LN outputs, SiLU(a), the
    # depthwise output and SiLU(gate) (2 x 64 + 320 + 320 + 160 fp32 channels a block) go
    assert full - lean >= 2 * 256 * 2 * (2 * 64 + 320 + 320 + 160) * 4 * 0.9
    for key, grad in full_grads.items():
        torch.testing.assert_close(lean_grads[key], grad, rtol=1e-6, atol=1e-9, msg=key)
