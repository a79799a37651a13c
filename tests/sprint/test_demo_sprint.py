"""``sanakit demo --sprint`` end to end at a tiny budget: every file, scores in range, Ctrl-C
during distillation, and the rerun that resumes it with the teacher kept."""

from __future__ import annotations

import json
import signal

import pytest
from PIL import Image

from sanakit.cli import main
from sanakit.demo.run import eval_prompts
from sanakit.demo.settings import DemoSettings
from sanakit.demo.sprint import GRID_SEEDS, DemoDistiller, columns, run_sprint_demo

SMALL = dict(
    steps=8,
    distill_steps=6,
    minutes=None,
    per_combo=2,
    seeds_per_prompt=1,
    teacher_steps=(3, 2),
    sprint_steps=(1, 2),
    distill_batch_size=8,
    batch_size=8,
    checkpoint_every=4,
    validation_every=100,
    sprint=True,
)


@pytest.mark.slow
def test_demo_sprint_survives_ctrl_c_and_resumes(tmp_path, monkeypatch, capsys):
    settings = DemoSettings(out=tmp_path / "demo", **SMALL)
    original = DemoDistiller.on_step_end

    def interrupt_at_step_3(self, stats):
        original(self, stats)
        if self.step == 3:
            signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(DemoDistiller, "on_step_end", interrupt_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        run_sprint_demo(settings)
    monkeypatch.setattr(DemoDistiller, "on_step_end", original)
    sprint = settings.out / "sprint"
    assert (sprint / "checkpoints" / "latest").read_text().strip() == "step-00000003"
    assert not (sprint / "score.json").exists()
    teacher = json.loads((sprint / "teacher.json").read_text())
    assert teacher["teacher_steps"] == 8
    weights = next((settings.out / "final" / "transformer").glob("*.safetensors"))
    stamp = weights.stat().st_mtime_ns

    result = run_sprint_demo(settings)  # the same command: resumes the distillation
    assert "distillation resumes" in capsys.readouterr().out
    assert weights.stat().st_mtime_ns == stamp  # the teacher is kept as it was
    assert result["distill_steps"] == 6 and result["teacher_steps"] == 8
    saved = json.loads((sprint / "score.json").read_text())
    assert saved == result
    cols = columns(settings)
    assert set(result["scores"]) == {c.label for c in cols}
    for col in cols:
        score = result["scores"][col.label]
        assert score["model"] == col.model and score["steps"] == col.steps
        assert score["samples"] == len(eval_prompts())
        for key in ("prompt_adherence", "color_accuracy", "shape_accuracy"):
            assert 0.0 <= score[key] <= 1.0
        assert score["prompt_adherence"] <= min(score["color_accuracy"], score["shape_accuracy"])
    lines = [json.loads(x) for x in (sprint / "samples.jsonl").read_text().splitlines()]
    assert len(lines) == len(cols) * len(eval_prompts())
    for record in lines[:3]:
        assert {"prompt", "color", "shape", "seed", "file", "model", "steps"} <= record.keys()
        with Image.open(sprint / record["file"]) as image:
            assert image.size == (32, 32)
    with Image.open(sprint / "grid.png") as grid:
        per_group = min(GRID_SEEDS, settings.seeds_per_prompt)
        assert grid.width >= len(cols) * per_group * 96 and grid.height > 12 * 96
    final = sprint / "final"
    assert json.loads((final / "sanakit.json").read_text())["sampler"] == "scm"
    config = json.loads((final / "transformer" / "config.json").read_text())
    assert config["guidance_embeds"] is True


def test_demo_sprint_arguments(capsys):
    assert main(["demo", "--sprint", "--distill-steps", "0"]) == 2
    assert "distill" in capsys.readouterr().err
