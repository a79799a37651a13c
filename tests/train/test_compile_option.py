"""``[train] compile = true``: the trainer's transformer gets regional torch.compile (issue 19)."""

from __future__ import annotations

from sanakit.train import components
from sanakit.train.config import run_config_from_dict


def test_train_compile_compiles_every_block_and_only_when_asked(run_dict) -> None:
    run_dict["train"].update(compile=True, gradient_checkpointing=True)
    config = run_config_from_dict(run_dict)
    assert config.train.compile
    model = components.build_transformer(config, latent_channels=48, text_channels=32)
    assert model.compiled and model.gradient_checkpointing
    # nn.Module.compile(): each block call goes through its compiled wrapper (traced lazily)
    assert all(block._compiled_call_impl is not None for block in model.transformer_blocks)

    run_dict["train"]["compile"] = False
    plain = components.build_transformer(
        run_config_from_dict(run_dict), latent_channels=48, text_channels=32
    )
    assert not plain.compiled
    assert all(block._compiled_call_impl is None for block in plain.transformer_blocks)
