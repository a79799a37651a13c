"""``sanakit score-captions``: missing caption scores filled in as CLIP's, existing ones kept,
resumable, one-line errors before any file is written (issue 17)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from sanakit.cli import main
from sanakit.metrics.clip import ClipModel


def _setup(run_dict: dict, tmp_path: Path) -> tuple[Path, Path]:
    images = Path(run_dict["data"]["datasets"][0]["path"])
    for i, txt in enumerate(sorted(images.glob("*.txt"))[:4]):
        txt.write_text(txt.read_text() + f"\nshape number {i}\n")  # two captions each
    first = images / "img00.json"  # one score known already: it must be kept
    first.write_text(
        json.dumps(
            {"captions": [{"text": "a red square", "clip_score": 99.0}, {"text": "red thing"}]}
        )
    )
    run_dict["data"]["datasets"][0]["caption_selection"] = "clip_weighted"
    config = tmp_path / "run.json"
    config.write_text(json.dumps(run_dict))
    return config, images


def test_fills_in_missing_scores_keeps_known_ones_and_resumes(
    run_dict, tmp_path, tiny_clip_dir, capsys
):
    config, images = _setup(run_dict, tmp_path)
    args = ["score-captions", str(config), "--clip-model", str(tiny_clip_dir)]
    assert main([*args, "--batch-size", "3"]) == 0
    assert "8 images: 0 already scored, 11 captions scored now, 8 sidecars written" in (
        capsys.readouterr().out
    )
    clip = ClipModel.load(tiny_clip_dir)
    kept = json.loads((images / "img00.json").read_text())["captions"]
    assert kept[0] == {"text": "a red square", "clip_score": 99.0}
    image = Image.open(images / "img00.png").convert("RGB")
    assert kept[1]["clip_score"] == pytest.approx(
        float(clip.score([image], ["red thing"])[0]), abs=1e-3
    )
    two = json.loads((images / "img02.json").read_text())["captions"]
    image = Image.open(images / "img02.png").convert("RGB")
    texts = [c["text"] for c in two]
    assert texts == (images / "img02.txt").read_text().strip().splitlines()
    want = clip.score([image, image], texts).tolist()
    assert [c["clip_score"] for c in two] == pytest.approx(want, abs=1e-3)
    # resumable: a second run scores nothing
    assert main(args) == 0
    assert "8 images: 8 already scored, 0 captions scored now" in capsys.readouterr().out


def test_missing_clip_model_and_unsupported_datasets_write_nothing(run_dict, tmp_path, capsys):
    config, images = _setup(run_dict, tmp_path)
    before = sorted(p.name for p in images.iterdir())
    assert main(["score-captions", str(config), "--clip-model", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--clip-model" in err and "no such folder" in err
    run_dict["data"]["datasets"][0]["caption_strategy"] = "filename"
    run_dict["data"]["datasets"][0].pop("caption_selection")
    config.write_text(json.dumps(run_dict))
    assert main(["score-captions", str(config), "--clip-model", str(tmp_path / "nope")]) == 2
    assert "sidecars beside the images of folder datasets" in capsys.readouterr().err
    assert sorted(p.name for p in images.iterdir()) == before
