"""[validation] clip_model / fid_reference: scores.json per round, TensorBoard scalars, the best
step at the end; a missing metric model stops the run before anything is trained or written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sanakit.cli import main
from sanakit.metrics.clip import ClipModel
from sanakit.train.config import run_config_from_dict
from sanakit.train.trainer import Trainer


def _scored(run_dict: dict, clip: Path, reference: Path) -> dict:
    run_dict["train"]["max_steps"] = 4
    run_dict["output"]["log_with"] = "tensorboard"
    run_dict["output"]["checkpoint_every"] = 4
    run_dict["validation"] = {
        "prompts": ["a red square on a white background", "a blue square on a white background"],
        "every_steps": 2,
        "steps": 2,
        "guidance": 1.0,
        "resolutions": ["32x32"],
        "clip_model": str(clip),
        "fid_reference": str(reference),
        "fid_images": 3,
    }
    return run_dict


def test_rounds_write_scores_and_tensorboard_scalars_and_the_best_step(
    run_dict, tiny_clip_dir, capsys
):
    reference = Path(run_dict["data"]["datasets"][0]["path"])
    trainer = Trainer(run_config_from_dict(_scored(run_dict, tiny_clip_dir, reference)))
    trainer.fit()
    out = Path(run_dict["output"]["dir"]) / "validation"
    clip = ClipModel.load(tiny_clip_dir)
    rounds = {}
    for step in (2, 4):
        folder = out / f"step-{step:08d}"
        scores = json.loads((folder / "scores.json").read_text())
        assert scores["step"] == step and scores["fid_images"] == 3
        assert set(scores["prompts"]) == {"prompt-00", "prompt-01"}
        assert scores["fid"] >= 0 and "kid" in scores
        # the per-image score is CLIP's score of the saved PNG against its prompt
        from PIL import Image

        image = Image.open(folder / "prompt-01_32x32.png").convert("RGB")
        want = float(clip.score([image], ["a blue square on a white background"])[0])
        assert scores["images"]["prompt-01_32x32"] == pytest.approx(want, abs=1e-4)
        assert scores["clip_score"] == pytest.approx(sum(scores["prompts"].values()) / 2)
        rounds[step] = scores["clip_score"]
    best = json.loads((out / "best.json").read_text())
    assert best["metric"] == "clip_score" and best["rounds"] == 2
    assert best["value"] == pytest.approx(max(rounds.values()))
    assert rounds[best["step"]] == best["value"]
    assert f"best validation step {best['step']}" in capsys.readouterr().out

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(trainer.log_dir))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert {"clip_score", "clip_score/prompt-00", "fid", "kid"} <= set(tags)
    logged = {e.step: e.value for e in events.Scalars("clip_score")}
    assert logged == pytest.approx(rounds)


def test_missing_clip_model_stops_before_training(run_dict, tmp_path, capsys):
    reference = Path(run_dict["data"]["datasets"][0]["path"])
    raw = _scored(run_dict, tmp_path / "no-clip", reference)
    config = tmp_path / "run.json"
    config.write_text(json.dumps(raw))
    assert main(["train", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "validation.clip_model" in err and "no-clip" in err
    assert not Path(raw["output"]["dir"]).exists() and not Path(raw["data"]["cache_dir"]).exists()


@pytest.mark.parametrize(
    ("validation", "needle"),
    [
        ({"fid_images": 8}, "fid_images does nothing without clip_model or fid_reference"),
        ({"clip_model": "CLIP", "fid_images": 8}, "fid_images does nothing without fid_reference"),
        ({"clip_model": "CLIP", "best_metric": "fid"}, "'fid' needs fid_reference"),
        ({"clip_model": "CLIP", "prompts": []}, "needs validation prompts"),
        ({"fid_reference": "REF"}, "needs features"),
        ({"clip_model": "CLIP", "fid_reference": "REF", "fid_model": "x.pth"}, "not found"),
    ],
)
def test_score_options_that_cannot_work_are_rejected(run_dict, tiny_clip_dir, validation, needle):
    from sanakit.errors import SanakitError

    reference = run_dict["data"]["datasets"][0]["path"]
    swap = {"CLIP": str(tiny_clip_dir), "REF": reference}
    section = {"prompts": ["a red square"]} | {
        k: swap.get(v, v) if isinstance(v, str) else v for k, v in validation.items()
    }
    with pytest.raises(SanakitError, match=needle):
        run_config_from_dict(run_dict | {"validation": section})
