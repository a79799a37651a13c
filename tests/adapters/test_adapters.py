"""LoRA (peft) and LoKr (LyCORIS) adapters on a tiny Sana: training only touches the adapter,
exports load in diffusers / LyCORIS / `load_adapter_into` with the same outputs, exact state."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from diffusers import SanaPipeline, SanaTransformer2DModel
from safetensors.torch import load_file, save_file

from sanakit.adapters import (
    DEFAULT_TARGET_MODULES,
    LOKR_WEIGHT_NAME,
    LORA_WEIGHT_NAME,
    LokrSpec,
    LoraSpec,
    apply_adapter,
    load_adapter_into,
)
from sanakit.config import from_dict
from sanakit.errors import SanakitError
from sanakit.models import SanaTransformer, load_transformer, save_transformer
from sanakit.presets import tiny

CONFIG = tiny(in_channels=4, caption_channels=16)
# 2 blocks x (q, k, v, out of attn1 and attn2 + conv_inverted + conv_point)
N_TARGETS = 2 * 10
LORA = LoraSpec(rank=4, alpha=8.0)  # scale alpha / r = 2
# hidden 64 -> factorization(64, 8) = (8, 8): W2 (8, 8) decomposed at rank 2, so alpha matters
LOKR = LokrSpec(rank=2, alpha=4.0, factor=8)
SPECS = {"lora": LORA, "lokr": LOKR}


def _inputs() -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 8, 8, generator=g)
    t = torch.rand(2, generator=g) * 1000
    text = torch.randn(2, 6, 16, generator=g)
    mask = torch.ones(2, 6, dtype=torch.long)
    mask[1, 3:] = 0
    target = torch.randn(2, 4, 8, 8, generator=g)
    return x, t, text, mask, target


X, T, TEXT, MASK, TARGET = _inputs()


def _out(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(X, T, TEXT, MASK)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny tensors gain nothing from threads, and two OpenMP threads on the shared 2-core
    machine stall each other (a step goes from ~40 ms to seconds under load)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """(base model in eval mode, its diffusers folder)."""
    torch.manual_seed(0)
    model = SanaTransformer(CONFIG).eval()
    folder = save_transformer(model, tmp_path_factory.mktemp("base") / "transformer")
    return model, folder


def _train(model: torch.nn.Module, handle, steps: int = 6) -> list[float]:
    optimizer = torch.optim.Adam(handle.trainable_parameters(), lr=1e-2)
    x, text, target = (v.to(model.dtype) for v in (X, TEXT, TARGET))
    losses = []
    for _ in range(steps):
        loss = F.mse_loss(model(x, T, text, MASK).float(), target.float())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def _trained(base_model, spec: LoraSpec | LokrSpec):
    model = copy.deepcopy(base_model)
    handle = apply_adapter(model, spec)
    _train(model, handle)
    return model, handle


@pytest.mark.parametrize("method", ["lora", "lokr"])
def test_training_touches_only_the_adapter(base, method) -> None:
    base_model, _ = base
    model = copy.deepcopy(base_model)
    frozen = {id(p): p.detach().clone() for p in model.parameters()}
    handle = apply_adapter(model, SPECS[method])

    assert len(handle.modules) == N_TARGETS
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in handle.trainable_parameters()}
    assert not trainable & set(frozen)
    assert all(p.dtype == torch.float32 for p in handle.trainable_parameters())
    # B = 0 (LoRA) / W2b = 0 (LoKr) at init: the adapted model is exactly the base model
    assert torch.equal(_out(model), _out(base_model))

    losses = _train(model, handle)
    assert losses[-1] < 0.95 * losses[0], losses
    assert all(b < a for a, b in zip(losses, losses[1:])), losses
    for p in model.parameters():
        if id(p) in frozen:
            assert torch.equal(p, frozen[id(p)]) and p.grad is None
    assert _rel(_out(model), _out(base_model)) > 1e-3


def test_state_dict_keys_are_the_library_formats(base) -> None:
    from peft import get_peft_model_state_dict

    model, handle = _trained(base[0], LORA)
    assert set(handle.state_dict()) == set(get_peft_model_state_dict(model))
    model, handle = _trained(base[0], LOKR)
    lycoris_keys = {k for k in model.lycoris.state_dict() if not k.endswith(".alpha")}
    assert set(handle.state_dict()) == lycoris_keys


@pytest.mark.parametrize("method", ["lora", "lokr"])
def test_state_dict_round_trip_is_exact(base, method, tmp_path) -> None:
    model, handle = _trained(base[0], SPECS[method])
    save_file(handle.state_dict(), str(tmp_path / "w.safetensors"))  # the checkpoint path

    fresh = copy.deepcopy(base[0])
    other = apply_adapter(fresh, SPECS[method])
    other.load_state_dict(load_file(str(tmp_path / "w.safetensors")))
    for key, value in handle.state_dict().items():
        assert torch.equal(other.state_dict()[key], value), key
    assert torch.equal(_out(fresh), _out(model))

    state = handle.state_dict()
    state.pop(next(iter(state)))
    with pytest.raises(SanakitError, match="missing key"):
        other.load_state_dict(state)


def test_lora_export_loads_in_diffusers_with_alpha(base) -> None:
    base_model, base_folder = base
    model, handle = _trained(base_model, LORA)
    folder = handle.save(base_folder.parent / "lora").parent

    state, metadata = SanaPipeline.lora_state_dict(folder, return_lora_metadata=True)
    assert state and all(k.startswith("transformer.") and "lora" in k for k in state)
    assert metadata["transformer.lora_alpha"] == 8.0 and metadata["transformer.r"] == 4

    ref = SanaTransformer2DModel.from_pretrained(base_folder).eval()

    def ref_out() -> torch.Tensor:
        with torch.no_grad():
            return ref(
                X, encoder_hidden_states=TEXT, timestep=T, encoder_attention_mask=MASK
            ).sample

    before = ref_out()
    # the calls SanaPipeline.load_lora_weights makes
    SanaPipeline.load_lora_into_transformer(state, transformer=ref, metadata=metadata)
    ours = _out(model)
    assert _rel(ref_out(), ours) < 1e-5
    assert _rel(before, ours) > 1e-3


def test_lora_export_loads_with_sana_pipeline_load_lora_weights(tiny_pipeline_dir, tmp_path):
    model = load_transformer(tiny_pipeline_dir).eval()
    handle = apply_adapter(model, LORA)
    torch.manual_seed(3)  # a non-trivial adapter: random A and B
    handle.load_state_dict({k: torch.randn_like(v) * 0.1 for k, v in handle.state_dict().items()})
    folder = handle.save(tmp_path).parent

    pipe = SanaPipeline.from_pretrained(tiny_pipeline_dir, dtype=torch.float32)
    cfg = model.config
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, cfg.in_channels, 8, 8, generator=g)
    text = torch.randn(1, 5, cfg.caption_channels, generator=g)
    t = torch.tensor([500.0])

    def ref() -> torch.Tensor:
        with torch.no_grad():
            return pipe.transformer(x, encoder_hidden_states=text, timestep=t).sample

    before = ref()
    pipe.load_lora_weights(folder)
    with torch.no_grad():
        ours = model(x, t, text)
    assert _rel(ref(), ours) < 1e-5
    assert _rel(before, ours) > 1e-3


def test_lora_file_merges_into_a_fresh_model_with_scale(base) -> None:
    base_model, base_folder = base
    model, handle = _trained(base_model, LORA)
    file = handle.save(base_folder.parent / "lora-merge" / "my_lora.safetensors")
    assert file.name == "my_lora.safetensors"

    fresh = load_transformer(base_folder).eval()
    info = load_adapter_into(fresh, file)
    assert info.method == "lora" and len(info.modules) == N_TARGETS
    assert _rel(_out(fresh), _out(model)) < 1e-5
    assert set(fresh.state_dict()) == set(base_model.state_dict())  # plain model again

    half = load_transformer(base_folder)
    load_adapter_into(half, file, scale=0.5)
    name = "transformer_blocks.1.ff.conv_inverted.weight"
    w0, w1, wh = (m.state_dict()[name] for m in (base_model, fresh, half))
    torch.testing.assert_close(wh, (w0 + w1) / 2, rtol=0, atol=1e-6)
    load_adapter_into(half, file.parent, scale=0.5)  # stacking: 0.5 + 0.5 = 1
    torch.testing.assert_close(half.state_dict()[name], w1, rtol=0, atol=1e-6)


def test_lokr_export_round_trip_and_lycoris_loader(base) -> None:
    from lycoris import create_lycoris_from_weights

    base_model, base_folder = base
    model, handle = _trained(base_model, LOKR)
    file = handle.save(base_folder.parent / "lokr")
    assert file.name == LOKR_WEIGHT_NAME
    sidecar = json.loads(file.with_suffix(".json").read_text())
    assert sidecar["spec"] == {
        "method": "lokr",
        "seed": 0,
        "factor": 8,
        "rank": 2,
        "alpha": 4.0,
        "target_modules": list(DEFAULT_TARGET_MODULES),
        "full_matrix": False,
        "decompose_both": False,
    }
    table = {k: v for k, v in sidecar["spec"].items() if k not in ("method", "seed")}
    assert from_dict(LokrSpec, table) == LokrSpec(**{**table, "target_modules": LOKR.targets})
    assert any(k.endswith(".lokr_w2_a") for k in load_file(str(file)))
    ours = _out(model)

    fresh = load_transformer(base_folder).eval()
    info = load_adapter_into(fresh, file.parent)
    assert info.method == "lokr" and len(info.modules) == N_TARGETS
    assert _rel(_out(fresh), ours) < 1e-5

    hooked = load_transformer(base_folder).eval()  # LyCORIS' own loader reads our file
    network, _ = create_lycoris_from_weights(1.0, str(file), hooked)
    assert len(network.loras) == N_TARGETS
    network.apply_to()
    assert _rel(_out(hooked), ours) < 1e-5

    half = load_transformer(base_folder)
    load_adapter_into(half, file, scale=0.5)
    name = "transformer_blocks.0.attn2.to_k.weight"
    w0, w1, wh = (m.state_dict()[name] for m in (base_model, fresh, half))
    torch.testing.assert_close(wh, (w0 + w1) / 2, rtol=0, atol=1e-6)


@pytest.mark.parametrize("method", ["lora", "lokr"])
def test_merge_folds_adapter_into_plain_model(base, method, tmp_path) -> None:
    model, handle = _trained(base[0], SPECS[method])
    hooked = _out(model)
    merged = handle.merge()
    assert set(merged.state_dict()) == set(base[0].state_dict())
    assert _rel(_out(merged), hooked) < 1e-5
    assert torch.equal(_out(load_transformer(save_transformer(merged, tmp_path))), _out(merged))
    with pytest.raises(SanakitError, match="merged"):
        handle.state_dict()


@pytest.mark.parametrize("method", ["lora", "lokr"])
def test_bf16_base_keeps_fp32_adapter(base, method, tmp_path) -> None:
    model = copy.deepcopy(base[0]).to(torch.bfloat16)
    handle = apply_adapter(model, SPECS[method])
    _train(model, handle, steps=2)  # the toy loss in bf16; the optimizer updates fp32 weights
    params = handle.trainable_parameters()
    assert all(p.dtype == torch.float32 and torch.isfinite(p.grad).all() for p in params)
    file = handle.save(tmp_path, dtype=torch.bfloat16)
    assert all(v.dtype == torch.bfloat16 for v in load_file(str(file)).values())

    merged_fp32 = copy.deepcopy(base[0])
    merged_bf16 = copy.deepcopy(base[0]).to(torch.bfloat16)
    load_adapter_into(merged_fp32, file)
    load_adapter_into(merged_bf16, file)
    name = "transformer_blocks.0.attn1.to_v.weight"
    w0 = base[0].state_dict()[name]
    delta = merged_fp32.state_dict()[name] - w0
    got = merged_bf16.state_dict()[name].float()
    assert delta.abs().max() > 0.05 * w0.abs().max()  # well above the bf16 spacing
    # W_bf16 + delta in fp32, rounded once to bf16: within one bf16 ulp (2^-7 relative)
    torch.testing.assert_close(got, w0.to(torch.bfloat16).float() + delta, rtol=2**-7, atol=1e-6)


@pytest.mark.parametrize(
    "targets, match",
    [
        (("conv_depth",), r"^train\.lora\.target_modules: .*conv_depth. is a Conv2d \(grouped\)"),
        (("attn1",), r"^train\.lora\.target_modules: .*attn1. is a LinearAttention"),
        (("to_qq",), r"^train\.lora\.target_modules: .to_qq. matches no module"),
    ],
)
def test_bad_targets(base, targets, match) -> None:
    with pytest.raises(SanakitError, match=match):
        apply_adapter(copy.deepcopy(base[0]), LoraSpec(target_modules=targets))


def test_bad_adapter_files(base, tmp_path) -> None:
    base_model, base_folder = base
    model = load_transformer(base_folder)
    a, b = torch.zeros(4, 64), torch.zeros(64, 4)

    def check(tensors_or_text, match: str, name: str = "x.safetensors") -> None:
        path = tmp_path / name
        if isinstance(tensors_or_text, str):
            path.write_text(tensors_or_text)
        else:
            save_file(tensors_or_text, str(path))
        with pytest.raises(SanakitError, match=match):
            load_adapter_into(model, path)
        path.unlink()

    check("not a tensor file", "not a readable safetensors")
    check({"proj_out.weight": torch.zeros(4, 64)}, "not a LoRA")
    check({"lora_unet_x.lora_down.weight": a}, "kohya")
    q = "transformer.transformer_blocks.7.attn1.to_q"
    check({f"{q}.lora_A.weight": a, f"{q}.lora_B.weight": b}, "match no module")
    q = "transformer.transformer_blocks.0.attn1.to_q"
    bad = torch.zeros(4, 10)
    check({f"{q}.lora_A.weight": bad, f"{q}.lora_B.weight": b}, "shape")
    check({"lycoris_transformer_blocks_9_attn1_to_q.lokr_w1": a}, "match no module")
    with pytest.raises(SanakitError, match="no such adapter"):
        load_adapter_into(model, tmp_path / "missing.safetensors")
    with pytest.raises(SanakitError, match="expected"):
        load_adapter_into(model, tmp_path)  # a folder without adapter files
    assert torch.equal(_out(model), _out(base_model))  # nothing was half-applied

    adapted = copy.deepcopy(base_model)
    handle = apply_adapter(adapted, LORA)
    file = handle.save(tmp_path / "ok")
    assert file.name == LORA_WEIGHT_NAME
    with pytest.raises(SanakitError, match="training adapter"):
        load_adapter_into(adapted, file)
    with pytest.raises(SanakitError, match="already carries"):
        apply_adapter(adapted, LORA)
