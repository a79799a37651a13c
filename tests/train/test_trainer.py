"""The training loop on tiny components: learning, exact resume, NaN guard, crash safety."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file

from sanakit.cli import main as cli_main
from sanakit.data import make_loader, open_cache
from sanakit.errors import SanakitError
from sanakit.train.config import run_config_from_dict
from sanakit.train.objective import eval_loss
from sanakit.train.trainer import NonFiniteLossError, Trainer


def fixed_noise_loss(trainer: Trainer) -> float:
    """Loss over every training image at fixed σ and fixed noise (independent of the loop)."""
    data = trainer.config.data
    loader = make_loader(data, open_cache(data), batch_size=2, seed=0)
    model = trainer.accelerator.unwrap_model(trainer.ddp_model)
    total = 0.0
    for _ in range(loader.planner.total_batches_per_epoch):
        batch = next(loader)
        total += sum(
            float(v)
            for v in eval_loss(
                model,
                batch,
                (0.3, 0.6, 0.9),
                0,
                trainer.device,
                timestep_scale=model.config.timestep_scale,
            ).values()
        )
    return total


def test_full_finetune_learns_and_writes_outputs(run_dict) -> None:
    run_dict["train"]["max_steps"] = 30
    run_dict["train"]["ema"] = {"decay": 0.9}
    run_dict["output"]["checkpoint_every"] = 10
    trainer = Trainer(run_config_from_dict(run_dict))
    before = fixed_noise_loss(trainer)
    final = trainer.fit()
    after = fixed_noise_loss(trainer)
    assert after < 0.8 * before, (before, after)
    out = trainer.out
    assert (final / "transformer" / "config.json").is_file()
    assert (out / "final-ema" / "transformer" / "diffusion_pytorch_model.safetensors").is_file()
    assert json.loads((final / "sanakit.json").read_text())["autoencoder"] == "pixel-shuffle"
    assert [p.name for p in trainer.checkpointer.complete_checkpoints()] == [
        "step-00000010",
        "step-00000020",
        "step-00000030",
    ]
    assert json.loads((out / "config.json").read_text())["train"]["max_steps"] == 30


def test_second_run_does_not_load_encoders(run_dict, monkeypatch) -> None:
    Trainer(run_config_from_dict(run_dict))
    from sanakit.train import components

    def boom(*a, **k):
        raise AssertionError("encoder loaded although the cache is complete")

    monkeypatch.setattr(components, "load_text_encoder", boom)
    monkeypatch.setattr(components, "load_frozen_autoencoder", boom)
    run_dict["output"]["dir"] += "-2"
    Trainer(run_config_from_dict(run_dict)).fit()


RESUME_SCRIPT = textwrap.dedent(
    """
    import json, os, signal, sys
    from sanakit.train.config import run_config_from_dict
    from sanakit.train.trainer import Trainer

    config = run_config_from_dict(json.loads(sys.argv[1]))
    kill_at, resume = int(sys.argv[2]), sys.argv[3] or None

    class Killed(Trainer):
        def on_step_end(self, stats):
            if self.step == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)

    Killed(config, resume=resume).fit()
    """
)


def _run(config: dict, kill_at: int, resume: str = "") -> int:
    cmd = [sys.executable, "-c", RESUME_SCRIPT, json.dumps(config), str(kill_at), resume]
    return subprocess.run(
        cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}
    ).returncode


def test_resume_after_sigkill_is_bit_identical(run_dict, tmp_path) -> None:
    run_dict["train"].update(max_steps=6, ema={"decay": 0.8}, lr_scheduler="cosine", warmup_steps=2)
    straight = json.loads(json.dumps(run_dict))
    straight["output"]["dir"] = str(tmp_path / "straight")
    assert _run(straight, kill_at=-1) == 0
    broken = json.loads(json.dumps(run_dict))
    broken["output"]["dir"] = str(tmp_path / "broken")
    assert _run(broken, kill_at=4) == -9  # SIGKILL after step 4; latest checkpoint is step 3
    assert _run(broken, kill_at=-1, resume="latest") == 0
    a = tmp_path / "straight" / "checkpoints" / "step-00000006"
    b = tmp_path / "broken" / "checkpoints" / "step-00000006"
    for name in ("weights.safetensors", "ema.safetensors"):
        ta, tb = load_file(str(a / name)), load_file(str(b / name))
        assert ta.keys() == tb.keys()
        assert all(torch.equal(ta[k], tb[k]) for k in ta), name
    oa, ob = torch.load(a / "optimizer.pt"), torch.load(b / "optimizer.pt")
    for key, state in oa["state"].items():
        for field, value in state.items():
            assert torch.equal(value, ob["state"][key][field]), (key, field)


def test_nan_guard_skips_steps_then_reloads_with_half_lr(run_dict) -> None:
    run_dict["train"].update(max_steps=8, max_consecutive_nonfinite=3, lr=1e-3)
    run_dict["output"]["checkpoint_every"] = 2
    bad_calls = {4, 7, 8, 9}  # train_step calls (1-based) whose loss is NaN

    class Injected(Trainer):
        calls = 0

        def compute_loss(self, batch, micro):
            Injected.calls += 1
            loss, per = super().compute_loss(batch, micro)
            return (loss * math.nan, per) if Injected.calls in bad_calls else (loss, per)

        def on_step_end(self, stats):
            assert all(torch.isfinite(p).all() for p in self.model.parameters())

    trainer = Injected(run_config_from_dict(run_dict))
    trainer.fit()
    # call 4 skipped alone; calls 7, 8, 9 (three in a row) trigger a reload of step-4 and lr / 2
    assert trainer.state.recoveries == 1
    assert trainer.state.lr_scale == 0.5
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(5e-4)
    assert trainer.step == 8
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_nan_forever_stops_with_a_diagnosis(run_dict) -> None:
    run_dict["train"].update(max_steps=8, max_consecutive_nonfinite=2, max_nonfinite_recoveries=1)
    run_dict["output"]["checkpoint_every"] = 1

    class AlwaysNan(Trainer):
        def compute_loss(self, batch, micro):
            loss, per = super().compute_loss(batch, micro)
            return (loss * math.nan if self.step >= 2 else loss), per

    with pytest.raises(NonFiniteLossError, match="learning rate too high.*gave up after 1 reloads"):
        AlwaysNan(run_config_from_dict(run_dict)).fit()


def test_crash_while_checkpointing_keeps_previous_latest(run_dict, monkeypatch) -> None:
    run_dict["train"]["max_steps"] = 6
    trainer = Trainer(run_config_from_dict(run_dict))
    import sanakit.train.state as module

    real = module.save_file

    def failing(tensors, path, *a, **k):
        if trainer.step == 6:
            raise OSError(28, "No space left on device")
        return real(tensors, path, *a, **k)

    monkeypatch.setattr(module, "save_file", failing)
    with pytest.raises(
        SanakitError, match=r"No space left on device\); latest is still step-00000003"
    ):
        trainer.fit()
    assert trainer.checkpointer.latest().name == "step-00000003"


def test_gradient_checkpointing_and_bf16_stay_finite(run_dict) -> None:
    run_dict["train"].update(
        max_steps=3,
        mixed_precision="bf16",
        gradient_checkpointing=True,
        gradient_checkpointing_interval=2,
    )
    trainer = Trainer(run_config_from_dict(run_dict))
    assert (
        trainer.model.gradient_checkpointing and trainer.model.gradient_checkpointing_interval == 2
    )
    trainer.fit()
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_cli_rejects_bad_config_in_one_line(tmp_path, capsys) -> None:
    config = tmp_path / "c.toml"
    config.write_text(
        '[model]\nbase = "x"\n[[data.datasets]]\nid = "a"\npath = "p"\n[train]\nmax_step = 3\n'
    )
    assert cli_main(["train", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "unknown key train.max_step; did you mean 'max_steps'?" in err


def test_two_processes_match_one_process_with_the_same_global_batch(run_dict, tmp_path) -> None:
    """accelerate launch --num_processes 2 (gloo on the CPU), batch 2 each == 1 process, batch 4."""
    run_dict["train"].update(max_steps=3, batch_size=4)
    run_dict["output"]["checkpoint_every"] = 3
    one = json.loads(json.dumps(run_dict))
    one["output"]["dir"] = str(tmp_path / "one")
    Trainer(run_config_from_dict(one)).fit()
    two = json.loads(json.dumps(run_dict))
    two["train"]["batch_size"] = 2
    two["output"]["dir"] = str(tmp_path / "two")
    config = tmp_path / "two.json"
    config.write_text(json.dumps(two))
    cmd = ["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1"]
    cmd += [
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "-m",
        "sanakit.cli",
        "train",
        str(config),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    a = load_file(str(tmp_path / "one" / "checkpoints" / "step-00000003" / "weights.safetensors"))
    b = load_file(str(tmp_path / "two" / "checkpoints" / "step-00000003" / "weights.safetensors"))
    # atol covers the cross-attention key biases: their gradient is analytically zero (softmax
    # is shift-invariant), so they carry only round-off of the all-reduce order.
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5, msg=key)
    assert (
        json.loads(
            (tmp_path / "two" / "checkpoints" / "step-00000003" / "manifest.json").read_text()
        )["world_size"]
        == 2
    )
