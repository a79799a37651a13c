"""``sanakit demo`` end to end through the CLI: every output file, Ctrl-C, and resume."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
from PIL import Image

from sanakit.cli import main
from sanakit.demo.run import DemoTrainer, eval_prompts
from sanakit.demo.settings import DemoSettings
from sanakit.demo.shapes import COLORS, SHAPES


def _loss_steps(out: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (out / "loss.jsonl").read_text().splitlines()]


def _check_outputs(out: Path, steps: int) -> None:
    seeds = DemoSettings().seeds_per_prompt
    score = json.loads((out / "score.json").read_text())
    for key in ("prompt_adherence", "color_accuracy", "shape_accuracy"):
        assert 0.0 <= score[key] <= 1.0
    assert score["steps"] == steps and score["train_seconds"] > 0
    assert score["prompt_adherence"] <= min(score["color_accuracy"], score["shape_accuracy"])

    lines = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(lines) == len(COLORS) * len(SHAPES) * seeds == score["samples"]
    assert {(r["color"], r["shape"]) for r in lines} == {(c, s) for c in COLORS for s in SHAPES}
    prompts = {p for _, _, p in eval_prompts()}
    for record in lines:
        assert {"prompt", "color", "shape", "seed", "file"} <= record.keys()
        assert record["prompt"] in prompts and record["color"] in record["prompt"]
        with Image.open(out / record["file"]) as image:
            assert image.size == (32, 32) and image.mode == "RGB"
    assert len(list((out / "samples").glob("*.png"))) == len(lines)

    with Image.open(out / "grid.png") as grid:  # 12 rows of `seeds` samples, 3x + label strip
        assert grid.size == (seeds * 96, 12 * (96 + 14))
    with Image.open(out / "loss.png") as plot:
        assert plot.size == (640, 360)
    config = (out / "config.toml").read_text()
    assert 'preset = "demo"' in config and f"max_steps = {steps}" in config
    assert (out / "checkpoints" / "latest").is_file()
    assert (out / "final" / "transformer").is_dir()
    assert list((out / "validation").glob("step-*/grid.png"))


@pytest.mark.slow
def test_demo_runs_end_to_end_survives_ctrl_c_and_resumes(tmp_path, monkeypatch, capsys):
    out = tmp_path / "demo"
    original = DemoTrainer.on_step_end

    def interrupt_at_step_20(self, stats):
        if self.step == 20:
            signal.raise_signal(signal.SIGINT)  # as if the user pressed Ctrl-C during step 20
        original(self, stats)

    # 1) Ctrl-C: the step finishes, a checkpoint is saved, exit status 130.
    monkeypatch.setattr(DemoTrainer, "on_step_end", interrupt_at_step_20)
    assert main(["demo", "--steps", "30", "--out", str(out)]) == 130
    err = capsys.readouterr().err
    assert "s/step over 10 steps" in err and "steps to go + sampling" in err  # the pace line
    assert (out / "checkpoints" / "latest").read_text().strip() == "step-00000020"
    assert _loss_steps(out) == list(range(1, 21))
    assert not (out / "score.json").exists()
    monkeypatch.setattr(DemoTrainer, "on_step_end", original)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored

    # 2) the same command resumes from step 20 and writes every output.
    capsys.readouterr()
    assert main(["demo", "--steps", "30", "--out", str(out)]) == 0
    assert "resuming from" in capsys.readouterr().out
    assert _loss_steps(out) == list(range(1, 31))
    _check_outputs(out, 30)

    # 3) more steps continue from 30, not from 0.
    assert main(["demo", "--steps", "40", "--out", str(out)]) == 0
    assert "step-00000030" in capsys.readouterr().out
    assert _loss_steps(out) == list(range(1, 41))
    _check_outputs(out, 40)


def test_demo_refuses_a_folder_made_with_another_seed(tmp_path, capsys):
    out = tmp_path / "demo"
    out.mkdir()
    (out / "demo.json").write_text(json.dumps({"seed": 1, "image_size": 32, "per_combo": 1}))
    assert main(["demo", "--steps", "1", "--seed", "2", "--out", str(out)]) == 2
    assert "another --out" in capsys.readouterr().err


def test_demo_rejects_bad_arguments(capsys):
    assert main(["demo", "--steps", "0"]) == 2
    assert "--steps" in capsys.readouterr().err


def test_demo_minutes_budget_stops_training_early_and_the_next_run_continues(tmp_path, capsys):
    out = tmp_path / "demo"
    # a budget spent after the first step: training stops there, the run is still scored
    assert main(["demo", "--steps", "500", "--minutes", "0.0001", "--out", str(out)]) == 0
    score = json.loads((out / "score.json").read_text())
    assert score["steps"] == 1 and _loss_steps(out) == [1]
    # the budget covers sampling too: past it, one seed per prompt is sampled and scored
    assert score["samples"] == len(COLORS) * len(SHAPES)
    err = capsys.readouterr().err
    assert "budget stops training at step 1" in err and "scoring 1 of 8 seeds" in err
    assert (out / "checkpoints" / "latest").read_text().strip() == "step-00000001"
    # the same command continues from that checkpoint (one more step per budget)
    capsys.readouterr()
    assert main(["demo", "--steps", "500", "--minutes", "0.0001", "--out", str(out)]) == 0
    assert "step-00000001" in capsys.readouterr().out
    assert json.loads((out / "score.json").read_text())["steps"] == 2
    assert _loss_steps(out) == [1, 2]
