"""``sanakit eval``: the generate code path, --compare columns and paired differences, resume,
and errors before any work."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sanakit.cli import main
from sanakit.pipeline import TextToImage
from tests.helpers.tiny_pipeline import write_tiny_pipeline

SIZE = ["--height", "32", "--width", "32", "--no-resolution-binning", "--device", "cpu"]
PROMPTS = ["a red circle", "a blue square on grass"]


@pytest.fixture(scope="module")
def second_pipeline(tmp_path_factory) -> Path:
    """Another tiny Sana (other random weights): the --compare model."""
    return write_tiny_pipeline(tmp_path_factory.mktemp("other"), seed=1)


def _setup(tmp_path: Path) -> tuple[Path, Path]:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n\n")
    reference = tmp_path / "reference"
    reference.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(
            reference / f"{i}.png"
        )
    return prompts, reference


def test_compare_writes_both_columns_and_resumes(
    tiny_pipeline_dir, second_pipeline, tiny_clip_dir, tmp_path, capsys, monkeypatch
):
    prompts, reference = _setup(tmp_path)
    out = tmp_path / "eval" / "report.json"
    args = ["eval", "--model", str(tiny_pipeline_dir), "--compare", str(second_pipeline)]
    args += ["--prompts", str(prompts), "--clip-model", str(tiny_clip_dir)]
    args += ["--reference", str(reference), "--seeds", "2", "--seed", "5", "--steps", "2"]
    args += ["--out", str(out), *SIZE]
    assert main(args) == 0
    assert "model - compare: clip_score" in capsys.readouterr().out
    report = json.loads(out.read_text())
    rows = list(csv.DictReader(out.with_suffix(".csv").open()))
    assert len(rows) == 4 and [r["seed"] for r in rows] == ["5", "6", "5", "6"]
    for label in ("model", "compare"):
        model = report["models"][label]
        scores = [float(r[f"{label}_clip_score"]) for r in rows]
        assert model["clip_score"] == pytest.approx(np.mean(scores), rel=1e-5)
        assert model["clip_score_se"] == pytest.approx(np.std(scores, ddof=1) / 2, rel=1e-4)
        assert model["fid"] >= 0 and "kid" in model and model["images"] == 4
    assert report["settings"]["fid_features"].startswith("clip:")
    d = [float(r["model_clip_score"]) - float(r["compare_clip_score"]) for r in rows]
    diff = report["difference"]["clip_score"]
    assert diff["mean"] == pytest.approx(np.mean(d), abs=1e-4)
    assert diff["se"] == pytest.approx(np.std(d, ddof=1) / math.sqrt(4), abs=1e-4)
    assert report["difference"]["fid"]["value"] == pytest.approx(
        report["models"]["model"]["fid"] - report["models"]["compare"]["fid"]
    )
    # the images are sanakit generate's: same pipeline call, same seed, same pixels
    first = Path(rows[1]["model_file"])
    pipe = TextToImage.from_pretrained(tiny_pipeline_dir, dtype=torch.float32)
    want = pipe(PROMPTS[0], height=32, width=32, steps=2, seed=6, use_resolution_binning=False)
    with Image.open(first) as image:
        assert np.array_equal(np.asarray(image), np.asarray(want[0]))
        assert json.loads(image.text["parameters"])["seed"] == 6
    assert not np.array_equal(np.asarray(Image.open(rows[1]["compare_file"])), np.asarray(want[0]))

    # resume: every image is reused, nothing is sampled again; the report is the same
    def no_sampling(*a, **k):
        raise AssertionError("an existing image was generated again")

    monkeypatch.setattr(TextToImage, "__call__", no_sampling)
    assert main(args) == 0
    assert json.loads(out.read_text()) == report
    # a changed request (more seeds) generates only the new images
    monkeypatch.undo()
    calls = []
    original = TextToImage.__call__

    def counting(self, prompt, **kw):
        calls.append(kw["seed"])
        return original(self, prompt, **kw)

    monkeypatch.setattr(TextToImage, "__call__", counting)
    assert main([*args[: -len(SIZE) - 2], "--seeds", "3", "--out", str(out), *SIZE]) == 0
    assert calls == [[7], [7], [7], [7]]  # 2 prompts x 2 models, only seed 7 is new


def test_missing_clip_model_is_one_error_before_any_work(tiny_pipeline_dir, tmp_path, capsys):
    prompts, _ = _setup(tmp_path)
    out = tmp_path / "eval" / "report.json"
    args = ["eval", "--model", str(tiny_pipeline_dir), "--prompts", str(prompts)]
    args += ["--clip-model", str(tmp_path / "no-clip"), "--out", str(out), *SIZE]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--clip-model" in err and "no such folder" in err
    assert not (tmp_path / "eval").exists()


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        ([], "no metric chosen"),
        (["--demo-score"], "not a demo prompt"),
        (["--reference", "REF"], "--reference needs features"),
        (["--reference", "REF", "--fid-model", "nope.pth"], "InceptionV3 weights not found"),
        (["--compare-lora", "x"], "no such file"),
        (["--seeds", "0"], "--seeds must be >= 1"),
    ],
)
def test_bad_requests_are_refused_before_generating(
    tiny_pipeline_dir, tmp_path, capsys, extra, needle
):
    prompts, reference = _setup(tmp_path)
    extra = [str(reference) if e == "REF" else e for e in extra]
    out = tmp_path / "eval" / "report.json"
    args = ["eval", "--model", str(tiny_pipeline_dir), "--prompts", str(prompts)]
    assert main([*args, "--out", str(out), *SIZE, *extra]) == 2
    assert needle in capsys.readouterr().err
    assert not (tmp_path / "eval").exists()


def test_scoring_in_chunks_gives_the_same_scores(tiny_clip_dir, tmp_path):
    from sanakit.metrics.clip import ClipModel
    from sanakit.metrics.evaluate import Scorers, score_images
    from sanakit.metrics.fid import clip_features

    _, reference = _setup(tmp_path)
    paths = sorted(reference.glob("*.png"))
    prompts = [f"prompt {i}" for i in range(len(paths))]
    clip = ClipModel.load(tiny_clip_dir)
    features = clip_features(clip)
    ref = features.extract([Image.open(p).convert("RGB") for p in paths[:3]])
    scorers = Scorers(clip=clip, features=features, reference=ref)
    seen = []
    chunked = score_images(paths, prompts, scorers, chunk=3, progress=seen.append)
    whole = score_images(paths, prompts, scorers)
    assert seen == [3, 1]
    assert chunked["clip_score"] == pytest.approx(whole["clip_score"], abs=1e-5)
    assert chunked["fid"] == pytest.approx(whole["fid"], rel=1e-6)


def test_a_sprint_student_against_its_teacher_each_with_its_own_sampler(
    tiny_pipeline_dir, tiny_sprint_pipeline_dir, tiny_clip_dir, tmp_path, capsys
):
    prompts, _ = _setup(tmp_path)
    out = tmp_path / "eval" / "report.json"
    args = ["eval", "--model", str(tiny_sprint_pipeline_dir), "--compare", str(tiny_pipeline_dir)]
    args += ["--prompts", str(prompts), "--clip-model", str(tiny_clip_dir), "--seeds", "1"]
    assert main([*args, "--out", str(out), *SIZE]) == 0
    models = json.loads(out.read_text())["models"]
    assert (models["model"]["sampler"], models["model"]["steps"]) == ("scm", 2)
    assert (models["compare"]["sampler"], models["compare"]["steps"]) == ("dpm", 20)
    with Image.open(out.parent / "report-images" / "model" / "0000-0.png") as image:
        assert json.loads(image.text["parameters"])["sampler"] == "scm"
