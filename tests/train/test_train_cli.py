"""``sanakit train`` through the CLI: a run is never overwritten, Ctrl-C saves a checkpoint and
says how to resume, every run logs into its own TensorBoard folder, relative paths follow the
config file, and the start prints a short summary while the resolved config goes to the output
folder."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
from pathlib import Path

import torch
from safetensors.torch import load_file

from sanakit.cli import main
from sanakit.train.config import load_run_config
from sanakit.train.trainer import Trainer
from tests.train.conftest import write_images


def _write(path: Path, run_dict: dict) -> Path:
    path.write_text(json.dumps(run_dict))
    return path


def _latest(out: Path) -> str:
    return (out / "checkpoints" / "latest").read_text().strip()


def _logged_steps(folder: Path) -> list[int]:
    """The steps of the ``loss`` scalars in the TensorBoard event files of ``folder``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return [e.step for e in events.Scalars("loss")]


def test_second_train_is_refused_resume_continues_and_logs_do_not_mix(run_dict, tmp_path, capsys):
    run_dict["train"]["max_steps"] = 3
    run_dict["output"]["log_with"] = "tensorboard"
    config = _write(tmp_path / "run.json", run_dict)
    out = Path(run_dict["output"]["dir"])
    assert main(["train", str(config)]) == 0
    capsys.readouterr()
    checkpoints = sorted(p.name for p in (out / "checkpoints").iterdir())

    # the same command again would overwrite the run: refused in one line, nothing touched
    assert main(["train", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    assert f"{out} already holds a run (checkpoint step-00000003)" in err
    assert "--resume latest" in err and "--output-dir" in err
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == checkpoints

    assert main(["train", str(config), "--resume", "latest", "--set", "train.max_steps=5"]) == 0
    assert "done: 5 steps" in capsys.readouterr().out
    assert _latest(out) == "step-00000005"
    first, second = sorted((out / "logs").iterdir())  # start times sort in run order
    assert second.name.endswith("-from-step-3")
    assert _logged_steps(first) == [1, 2, 3]
    assert _logged_steps(second) == [4, 5]


def test_ctrl_c_saves_that_step_prints_how_to_resume_and_exits_130(
    run_dict, tmp_path, capsys, monkeypatch
):
    run_dict["train"]["max_steps"] = 5  # checkpoint_every = 3: step 2 is not a periodic one
    config = _write(tmp_path / "run.json", run_dict)
    out = Path(run_dict["output"]["dir"])
    straight = tmp_path / "straight"
    assert main(["train", str(config), "--output-dir", str(straight)]) == 0

    original = Trainer.on_step_end

    def ctrl_c_at_step_2(self, stats):
        original(self, stats)
        if self.step == 2:
            os.kill(os.getpid(), signal.SIGINT)  # as if the user pressed Ctrl-C during step 2

    monkeypatch.setattr(Trainer, "on_step_end", ctrl_c_at_step_2)
    capsys.readouterr()
    assert main(["train", str(config), "--set", "train.lr=1e-3"]) == 130
    err = capsys.readouterr().err
    assert f"stopped at step 2; saved {out / 'checkpoints' / 'step-00000002'}" in err
    assert f"continue with: sanakit train {config} --set train.lr=1e-3 --resume latest" in err
    assert _latest(out) == "step-00000002"
    assert not (out / "final").exists()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored

    # the printed command continues, and ends exactly where the uninterrupted run did
    monkeypatch.setattr(Trainer, "on_step_end", original)
    assert main(["train", str(config), "--set", "train.lr=1e-3", "--resume", "latest"]) == 0
    a = load_file(str(straight / "checkpoints" / "step-00000005" / "weights.safetensors"))
    b = load_file(str(out / "checkpoints" / "step-00000005" / "weights.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_second_ctrl_c_stops_at_once_and_names_the_last_checkpoint(
    run_dict, tmp_path, capsys, monkeypatch
):
    run_dict["train"]["max_steps"] = 5
    config = _write(tmp_path / "run.json", run_dict)
    out = Path(run_dict["output"]["dir"])
    original = Trainer.on_step_end

    def ctrl_c_twice_at_step_4(self, stats):
        original(self, stats)
        if self.step == 4:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(Trainer, "on_step_end", ctrl_c_twice_at_step_4)
    assert main(["train", str(config)]) == 130
    err = capsys.readouterr().err
    assert f"stopped at once; the last checkpoint is {out / 'checkpoints' / 'step-00000003'}" in err
    assert "--resume latest" in err
    assert _latest(out) == "step-00000003"  # no checkpoint of step 4
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_start_prints_a_short_summary_and_writes_the_resolved_config(
    run_dict, tmp_path, capsys, monkeypatch
):
    run_dict["train"]["max_steps"] = 1
    config = _write(tmp_path / "run.json", run_dict)
    monkeypatch.chdir(tmp_path)
    assert main(["train", str(config), "--output-dir", "elsewhere"]) == 0  # relative to cwd
    lines = capsys.readouterr().out.splitlines()
    out = tmp_path / "elsewhere"
    assert lines[0] == f"sanakit train {config}"
    summary = "\n".join(lines[:6])
    assert "model   preset tiny (random init)" in summary
    assert "data    shapes (8 images); cache " + run_dict["data"]["cache_dir"] in summary
    assert "method  full, adamw lr 0.001 (constant), batch 2 x 1 accumulation" in summary
    assert "steps   to 1 (4 per epoch)" in summary
    assert f"output  {out} (resolved config: config.json)" in summary
    assert lines[6].startswith("done: 1 steps") and len(lines) == 7  # no JSON dump
    # the resolved config names the folder it is in, so it alone continues the run
    written = load_run_config(out / "config.json")
    expected = load_run_config(config)
    assert written == dataclasses.replace(
        expected, output=dataclasses.replace(expected.output, dir=str(out))
    )


TOML = """
[model]
preset = "tiny"
autoencoder = "pixel-shuffle"
pixel_shuffle_factor = 4
text_encoder = "{text_encoder}"
text_max_length = 16
instruction = ["Describe the image:"]
encoder_dtype = "fp32"

[[data.datasets]]
id = "shapes"
path = "data/shapes"
resolution = 32
resolution_type = "pixel"

[data]
latent_dtype = "fp32"
text_dtype = "fp32"

[train]
max_steps = 2
batch_size = 2
lr = 1e-3
mixed_precision = "no"

[validation]
prompt_library = "prompts.json"
resolutions = ["32x32"]
steps = 2

[output]
dir = "runs/one"
log_with = "none"
"""


def test_relative_paths_follow_the_config_file_from_any_directory(
    tmp_path, text_encoder_dir, monkeypatch, capsys
):
    project = tmp_path / "project"
    project.mkdir()
    (project / "run.toml").write_text(TOML.format(text_encoder=text_encoder_dir))
    (project / "prompts.json").write_text(json.dumps({"red": "a red square"}))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    # an error about a path names where it was looked for: the config's folder
    assert main(["train", "../project/run.toml"]) == 2
    assert str(project / "data" / "shapes") in capsys.readouterr().err
    write_images(project / "data" / "shapes")
    assert main(["train", "../project/run.toml"]) == 0
    run = project / "runs" / "one"
    assert _latest(run) == "step-00000002"
    assert (project / "cache" / "encoders.json").is_file()  # cache_dir's default, "cache"
    assert list((run / "validation").rglob("red_32x32.png"))  # the library beside the config
    assert sorted(p.name for p in elsewhere.iterdir()) == []  # nothing written in the cwd


def test_config_paths_resolve_against_the_file_folder_and_set_against_cwd(tmp_path, monkeypatch):
    folder = tmp_path / "configs"
    folder.mkdir()
    (folder / "run.toml").write_text(
        '[model]\nbase = "../models/sana"\n[train]\nmax_steps = 1\n'
        '[[data.datasets]]\nid = "a"\npath = "data/a"\n'
        '[[data.datasets]]\nid = "b"\npath = "/srv/b"\n'
        '[[data.datasets]]\nid = "c"\npath = "~/c"\n'
        '[validation]\nprompt_library = "prompts.json"\n'
    )
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    config = load_run_config("../configs/run.toml")
    assert config.model.base == str(tmp_path / "models" / "sana")
    assert [d.path for d in config.data.datasets] == [
        str(folder / "data" / "a"),
        "/srv/b",
        str(Path.home() / "c"),
    ]
    assert config.validation.prompt_library == str(folder / "prompts.json")
    # keys left out take their defaults in the config's folder too
    assert config.output.dir == str(folder / "output")
    assert config.data.cache_dir == str(folder / "cache")
    # --set values are typed on the command line: relative to the current directory
    changed = load_run_config(
        folder / "run.toml", ("data.cache_dir=mine", "data.datasets[1].path=here")
    )
    assert changed.data.cache_dir == str(cwd / "mine")
    assert [d.path for d in changed.data.datasets][:2] == [
        str(folder / "data" / "a"),
        str(cwd / "here"),
    ]
