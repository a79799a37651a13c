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
from sanakit.errors import SanakitError
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


@pytest.fixture()
def no_weights(monkeypatch):
    """Loading a pipeline's weights fails the test: the checks must come first."""

    def refuse(*args, **kwargs):
        raise AssertionError("weights were loaded before the arguments were checked")

    monkeypatch.setattr(TextToImage, "from_pretrained", refuse)
    monkeypatch.setattr("sanakit.pipeline.load_transformer", refuse)


def _stop_loading(*args, **kwargs):
    raise SanakitError("sentinel: loading reached")


@pytest.fixture()
def loading_stops(monkeypatch):
    """Loading raises a sentinel error, to show a request got past every check."""
    monkeypatch.setattr(TextToImage, "from_pretrained", _stop_loading)


@pytest.mark.parametrize(
    ("model", "extra", "needle"),
    [
        ("flow", ["--sampler", "scm"], "--sampler 'scm' needs a Sana-Sprint model"),
        ("sprint", ["--sampler", "euler"], "--sampler 'euler' needs a flow model"),
        ("sprint", ["--flow-shift", "2"], "--flow-shift applies to the dpm/euler samplers"),
        (
            "flow",
            ["--guidance", "1", "--negative-prompt", "ugly"],
            "--negative-prompt is only used with classifier-free guidance "
            "(a dpm/euler sampler and --guidance > 1)",
        ),
        ("sprint", ["--negative-prompt", "ugly"], "--negative-prompt is only used"),
        ("flow", ["--flow-shift", "0"], "--flow-shift must be > 0"),
    ],
)
def test_model_mismatches_are_flag_named_errors_before_weights_load(
    tiny_pipeline_dir, tiny_sprint_pipeline_dir, tmp_path, capsys, no_weights, model, extra, needle
):
    folder = tiny_pipeline_dir if model == "flow" else tiny_sprint_pipeline_dir
    args = ["a cat", "--model", str(folder), "--out", str(tmp_path / "o"), *extra]
    code, _, err = run_cli(args, capsys)
    _one_line_error(code, err, needle)
    assert "negative_prompt" not in err and "guidance_scale" not in err
    assert not (tmp_path / "o").exists()


def test_size_beyond_the_largest_bucket_is_refused_unless_forced(
    tiny_pipeline_dir, capsys, monkeypatch
):
    big = ["--height", "4096", "--width", "4096", "--no-resolution-binning"]
    args = ["a cat", "--model", str(tiny_pipeline_dir), "--device", "cpu", *big]
    monkeypatch.setattr("sanakit.commands.generate.available_memory", lambda device: None)
    monkeypatch.setattr(TextToImage, "from_pretrained", _stop_loading)
    code, _, err = run_cli(args, capsys)
    _one_line_error(code, err, "--height 4096 --width 4096: 16.0x the area")
    assert "largest bucket (1024x1024)" in err and "--force" in err
    # 2048x2048 (4x the area) is allowed; --force lets 4096x4096 through to loading.
    for extra in (["--height", "2048", "--width", "2048"], ["--force"]):
        code, _, err = run_cli([*args, *extra], capsys)
        _one_line_error(code, err, "sentinel: loading reached")


def test_images_that_cannot_fit_in_memory_are_refused_before_loading(
    tiny_pipeline_dir, capsys, monkeypatch, no_weights
):
    # Binning samples at the 512x2048 bucket, then resizes to 500000x2000000 before cropping:
    # terabytes, on any machine.
    args = ["a cat", "--model", str(tiny_pipeline_dir), "--device", "cpu"]
    code, _, err = run_cli([*args, "--height", "64", "--width", "2000000"], capsys)
    _one_line_error(code, err, "--height 64 --width 2000000 with --num-images 1: about")
    assert "GiB needed" in err and "cpu has" in err and "--force" in err
    # An ordinary size on a device with 1 MiB free is refused too, naming --num-images.
    monkeypatch.setattr("sanakit.commands.generate.available_memory", lambda device: 2**20)
    code, _, err = run_cli([*args, *SIZE, "--num-images", "3"], capsys)
    _one_line_error(code, err, "--height 64 --width 96 with --num-images 3")


def test_memory_estimate_grows_with_images_and_counts_the_resize(tiny_pipeline_dir):
    from sanakit.pipeline import PipelineSpec, estimate_memory

    spec = PipelineSpec.read(tiny_pipeline_dir)
    assert spec.downsample_factor == 32 and spec.base_resolution == 1024
    assert spec.weight_bytes > 0
    exact = spec.resolve(height=64, width=96, use_resolution_binning=False)
    one = estimate_memory(exact, spec, 1, 4, weights=False)
    assert estimate_memory(exact, spec, 4, 4, weights=False) == 4 * one
    assert estimate_memory(exact, spec, 1, 4) == one + spec.weight_bytes
    binned = spec.resolve(height=64, width=2_000_000)
    assert binned.sample_size == (512, 2048)
    # the bilinear resize to 500000 x 2000000 (3 channels, fp32) before the crop
    assert estimate_memory(binned, spec, 1, 4, weights=False) >= 3 * 4 * 500_000 * 2_000_000


def test_out_that_is_a_file_is_refused_before_loading(
    tiny_pipeline_dir, tmp_path, capsys, no_weights
):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("x")
    base = ["a cat", "--model", str(tiny_pipeline_dir), *SIZE]
    cases = [
        (["--out", str(a_file)], f"--out {a_file} is an existing file"),
        (["--out", str(a_file / "images")], f"cannot be created: {a_file} is a file"),
        (["--out", str(a_file / "cat.png")], f"cannot be created: {a_file} is a file"),
    ]
    for extra, needle in cases:
        code, _, err = run_cli([*base, *extra], capsys)
        _one_line_error(code, err, needle)
    assert a_file.read_text() == "x"


def test_binning_note_when_the_bucket_is_much_larger(tiny_pipeline_dir, capsys, loading_stops):
    args = ["a cat", "--model", str(tiny_pipeline_dir), "--device", "cpu"]
    code, _, err = run_cli([*args, "--height", "64", "--width", "96"], capsys)
    _one_line_error(code, err, "sentinel: loading reached", after_load=True)
    notes = [line for line in err.splitlines() if line.startswith("sanakit: note:")]
    assert len(notes) == 1, err
    assert "64x96 is sampled at the model's 832x1216 bucket" in notes[0]
    assert "pass --no-resolution-binning to sample at 64x96" in notes[0]
    # A request near a bucket's size, or without binning, gets no note.
    for extra in (["--height", "800", "--width", "800"], SIZE):
        code, _, err = run_cli([*args, *extra], capsys)
        _one_line_error(code, err, "sentinel: loading reached")
        assert "note:" not in err


@pytest.mark.parametrize(
    ("size", "sampled", "needle"),
    [
        ((64, 96), (832, 1216), "(165x the pixels) and resized down; pass --no-resolution-binning to"),
        ((50, 70), (832, 1152), "pass --no-resolution-binning --height 64 --width 64 to sample at 64x64"),
        ((500, 500), (1024, 1024), "(4.19x the pixels)"),
        ((512, 512), (1024, 1024), None),  # 4x: a common downscale, no note
        ((2048, 2048), (1024, 1024), None),  # sampled smaller than asked
    ],
)  # fmt: skip
def test_binning_note_threshold_and_wording(size, sampled, needle):
    from sanakit.commands.generate import binning_note
    from sanakit.pipeline import Plan

    note = binning_note(Plan("dpm", 20, 4.5, 3.0, True, size, sampled, (1, 1)))
    if needle is None:
        assert note is None
    else:
        assert note is not None and "\n" not in note and needle in note
