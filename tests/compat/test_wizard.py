"""`sanakit configure` driven through stdin: checked answers, re-asked when wrong, a TOML that
loads and validates, and a clean error when the input ends early."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from sanakit.adapters import LokrSpec, LoraSpec
from sanakit.cli import main
from sanakit.train.config import EmaSection, load_run_config


def _base(folder: Path) -> Path:
    (folder / "transformer").mkdir(parents=True)
    (folder / "model_index.json").write_text('{"_class_name": "SanaPipeline"}')
    return folder


def _images(folder: Path, count: int, captions: bool) -> Path:
    folder.mkdir(parents=True)
    for i in range(count):
        Image.new("RGB", (40, 40), (10 * i, 100, 200)).save(folder / f"photo_{i}.png")
        if captions:
            (folder / f"photo_{i}.txt").write_text(f"a blue photo number {i}")
    return folder


def _run(monkeypatch, capsys, answers: list[str], output: Path) -> tuple[int, str, str]:
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(answers) + "\n"))
    code = main(["configure", "-o", str(output)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_wizard_writes_a_valid_config_and_reasks_bad_answers(tmp_path, monkeypatch, capsys):
    base = _base(tmp_path / "models" / "sana")
    images = _images(tmp_path / "data" / "subject", 3, captions=True)
    answers = [
        str(tmp_path / "nowhere"),  # not a folder -> asked again
        str(base),
        "lokr",
        "0",  # LoKr factor 0 -> asked again
        "4",
        "",  # LoKr rank: the default 10000
        "",  # output folder: default output/sana-lokr
        "64",
        "4",
        "",  # learning rate: the LoKr default 1e-4
        "30",
        "",  # EMA: yes
        "n",  # no gradient checkpointing
        "a blue photo",
        "",  # end of prompts
        "10",
        str(tmp_path / "missing"),  # not a folder -> asked again
        str(images),
        "",  # captions: textfile (caption files found)
        "0",  # 3 images x 1 < batch 4 -> asked again
        "",  # the suggested minimum, 1
        "n",
        "1",  # caption dropout 1 -> asked again (must be below 1)
        "0.05",
        "",  # cache: default
    ]
    code, out, err = _run(monkeypatch, capsys, answers, tmp_path / "sanakit.toml")
    assert code == 0, err
    assert out.count("try again") == 5
    assert "the factor must be >= 1, or -1 for automatic" in out and "it must be below 1.0" in out
    assert "use repeats >= 1" in out and "3 images found" in out
    config = load_run_config(tmp_path / "sanakit.toml")
    t = config.train
    assert (t.method, t.lr, t.batch_size, t.max_steps) == ("lokr", 1e-4, 4, 30)
    assert t.ema == EmaSection(decay=0.995) and t.gradient_checkpointing is False
    assert t.lokr == LokrSpec(factor=4, rank=10000) and t.lora is None
    assert t.adapter_spec().factor == 4
    assert config.model.base == str(base.resolve())
    assert (config.validation.prompts, config.validation.every_steps) == (("a blue photo",), 10)
    assert config.validation.resolutions == ("64x64",)
    (ds,) = config.data.datasets
    assert (ds.id, ds.path, ds.caption_strategy, ds.repeats) == (
        "subject",
        str(images.resolve()),
        "textfile",
        1,
    )
    assert (ds.resolution, ds.resolution_type) == (64.0, "pixel_area")
    assert ds.caption_dropout == 0.05
    text = (tmp_path / "sanakit.toml").read_text()
    assert "# Sana: ~1e-5 full fine-tune; 1e-4 LoKr with AdamW" in text


def test_wizard_checks_captions_and_takes_an_instance_prompt(tmp_path, monkeypatch, capsys):
    base = _base(tmp_path / "sana")
    images = _images(tmp_path / "subject", 2, captions=False)
    answers = [str(base), "", "", "1000", "", "", "", "", "", "", "", str(images), "textfile"]
    answers += ["instance_prompt", "a photo of sks person", "", "", "", ""]
    code, out, err = _run(monkeypatch, capsys, answers, tmp_path / "run.toml")
    assert code == 0, err
    assert "none of the 2 images has a usable caption with textfile" in out
    config = load_run_config(tmp_path / "run.toml")
    assert (config.train.method, config.train.lr, config.train.max_steps) == ("full", 1e-5, 1000)
    assert config.validation.resolutions == ("992x992",)  # nearest multiple of 32
    (ds,) = config.data.datasets
    assert (ds.caption_strategy, ds.instance_prompt) == ("instance_prompt", "a photo of sks person")
    assert ds.caption_dropout == 0.1  # the default
    assert config.train.lora is None and config.train.lokr is None
    assert "LoRA rank" not in out and "LoKr" not in out  # no adapter questions for full


def test_wizard_asks_the_lora_rank(tmp_path, monkeypatch, capsys):
    base = _base(tmp_path / "sana")
    images = _images(tmp_path / "subject", 4, captions=True)
    answers = [str(base), "lora", "2.5", "-3", "8", "", "64", "", "", "20", "", "", ""]
    answers += ["", str(images), "", "", "", "nan", "0", ""]
    code, out, err = _run(monkeypatch, capsys, answers, tmp_path / "lora.toml")
    assert code == 0, err
    assert "'2.5' is not a whole number" in out and "it must be at least 1" in out
    assert "'nan' is not a finite number" in out
    config = load_run_config(tmp_path / "lora.toml")
    assert config.train.method == "lora" and config.train.lora == LoraSpec(rank=8)
    assert config.train.adapter_spec().rank == 8
    (ds,) = config.data.datasets
    assert ds.caption_dropout == 0.0
    assert "[train.lora]" in (tmp_path / "lora.toml").read_text()


@pytest.mark.parametrize("answers", [[], ["/nonexistent/folder"]])
def test_wizard_fails_cleanly_when_input_ends(tmp_path, monkeypatch, capsys, answers):
    monkeypatch.setattr("sys.stdin", io.StringIO("".join(a + "\n" for a in answers)))
    assert main(["configure", "-o", str(tmp_path / "x.toml")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sanakit: error: configure: input ended") and "\n" not in err
    assert not (tmp_path / "x.toml").exists()
