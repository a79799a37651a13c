"""``sanakit generate``: PNGs with metadata on a tiny pipeline folder; bad input is a one-line
error with exit code 2 and no traceback."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sanakit.cli import main
from sanakit.pipeline import TextToImage

SIZE = ["--height", "64", "--width", "96", "--no-resolution-binning"]


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    code = main(["generate", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_writes_png_with_metadata_equal_to_the_library(tiny_pipeline_dir, tmp_path, capsys):
    out = tmp_path / "cat.png"
    args = [
        "a red cat",
        "--model",
        str(tiny_pipeline_dir),
        "--out",
        str(out),
        "--seed",
        "3",
        "--steps",
        "2",
        "--guidance",
        "3.5",
        "--negative-prompt",
        "blurry",
        *SIZE,
    ]
    args += ["--device", "cpu"]
    code, stdout, _ = run_cli(args, capsys)
    assert code == 0
    assert f"wrote 1 image to {out}" in stdout
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size == (96, 64) and image.mode == "RGB"
        meta = dict(image.text)
        pixels = np.asarray(image)
    assert meta["prompt"] == "a red cat" and meta["seed"] == "3"
    assert meta["steps"] == "2" and meta["guidance_scale"] == "3.5"
    assert meta["sampler"] == "dpm" and meta["flow_shift"] == "3.0"
    assert meta["negative_prompt"] == "blurry" and meta["dtype"] == "fp32"
    assert json.loads(meta["parameters"])["height"] == 64
    pipe = TextToImage.from_pretrained(tiny_pipeline_dir, dtype=torch.float32)
    want = pipe(
        "a red cat",
        height=64,
        width=96,
        steps=2,
        guidance_scale=3.5,
        negative_prompt="blurry",
        seed=3,
        use_resolution_binning=False,
    )[0]
    assert np.array_equal(pixels, np.asarray(want))


def test_prompts_file_and_num_images_name_files_by_prompt_and_seed(
    tiny_sprint_pipeline_dir, tmp_path, capsys
):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a blue dog\n\n  a green tree  \n")
    out = tmp_path / "images"
    args = ["--prompts-file", str(prompts), "--model", str(tiny_sprint_pipeline_dir)]
    args += ["--out", str(out), "--seed", "10", "--num-images", "2", *SIZE]
    code, stdout, _ = run_cli(args, capsys)
    assert code == 0 and "wrote 4 images" in stdout
    names = sorted(p.name for p in out.iterdir())
    assert names == ["0000-10.png", "0000-11.png", "0001-10.png", "0001-11.png"]
    with Image.open(out / "0001-11.png") as image:
        assert image.text["prompt"] == "a green tree" and image.text["seed"] == "11"
        assert image.text["sampler"] == "scm" and image.text["steps"] == "2"
    with Image.open(out / "0000-10.png") as a, Image.open(out / "0000-11.png") as b:
        assert np.abs(np.asarray(a, dtype=int) - np.asarray(b, dtype=int)).mean() > 5


def _one_line_error(code: int, err: str, needle: str, *, after_load: bool = False) -> None:
    """Exit code 2, no traceback, the error on one line. Errors found before loading the model
    are the only output; later ones follow the model-loading progress bars."""
    assert code == 2
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    errors = [line for line in lines if line.startswith("sanakit: error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], err
    assert needle in errors[0]
    if not after_load:
        assert len(lines) == 1, err


def test_missing_folder(tmp_path, capsys):
    code, _, err = run_cli(["a cat", "--model", str(tmp_path / "nope")], capsys)
    _one_line_error(code, err, "no such folder")


def test_folder_without_transformer(tiny_pipeline_dir, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_pipeline_dir, broken, ignore=shutil.ignore_patterns("transformer"))
    code, _, err = run_cli(["a cat", "--model", str(broken)], capsys)
    _one_line_error(code, err, "no transformer/ subfolder")


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--height", "100", "--no-resolution-binning"], "--height 100 is not a multiple of 32"),
        (["--width", "0"], "--width must be >= 1"),
        (["--steps", "0"], "--steps must be >= 1"),
        (["--num-images", "3", "--out", "x.png"], "names one file but 3 images"),
    ],
)
def test_bad_options(tiny_pipeline_dir, capsys, extra, needle):
    args = ["a cat", "--model", str(tiny_pipeline_dir), "--device", "cpu", *extra]
    code, _, err = run_cli(args, capsys)
    _one_line_error(code, err, needle)


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--sampler", "scm"], "needs a Sana-Sprint model"),
        (["--guidance", "1", "--negative-prompt", "ugly"], "classifier-free guidance"),
    ],
)
def test_options_the_model_cannot_use(tiny_pipeline_dir, tmp_path, capsys, extra, needle):
    args = ["a cat", "--model", str(tiny_pipeline_dir), "--out", str(tmp_path), *extra]
    code, _, err = run_cli(args, capsys)
    _one_line_error(code, err, needle, after_load=True)
    assert not list(tmp_path.iterdir())


def test_empty_prompts_file(tiny_pipeline_dir, tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n   \n")
    code, _, err = run_cli(
        ["--prompts-file", str(empty), "--model", str(tiny_pipeline_dir)], capsys
    )
    _one_line_error(code, err, "has no non-blank line")
    code, _, err = run_cli(["--model", str(tiny_pipeline_dir)], capsys)
    _one_line_error(code, err, "no prompt given")


def test_console_script_is_installed(tmp_path):
    script = Path(sys.executable).parent / "sanakit"
    assert script.is_file(), "the sanakit console script is not installed (pip install -e .)"
    result = subprocess.run(
        [str(script), "generate", "a cat", "--model", str(tmp_path / "missing")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    _one_line_error(result.returncode, result.stderr, "no such folder")
