"""Config mistakes reach the user as one line naming the key and the fix, before any model is
loaded: SimpleTuner option names, values of the wrong key, output folders that are files and
``[model]`` folders that are missing or of the wrong kind (``sanakit train`` and ``sanakit cache``)."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest

from sanakit.cli import main
from sanakit.compat.simpletuner import datasets, trainer
from sanakit.config import SIMPLETUNER_NAMES, DatasetConfig
from sanakit.train.config import RunConfig

CONFIG = """
[model]
base = "{base}"
[[data.datasets]]
id = "a"
path = "{images}"
[data]
cache_dir = "{cache}"
[train]
max_steps = 3
[output]
dir = "{out}"
log_with = "none"
"""


@pytest.fixture()
def config_file(tmp_path: Path):
    """``make(base=...) -> path`` of a small valid config (base defaults to a missing folder)."""

    def make(base: Path | str = "models/not-downloaded") -> Path:
        (tmp_path / "images").mkdir(exist_ok=True)
        path = tmp_path / "run.toml"
        path.write_text(
            CONFIG.format(
                base=base,
                images=tmp_path / "images",
                cache=tmp_path / "cache",
                out=tmp_path / "out",
            )
        )
        return path

    return make


@pytest.fixture()
def no_models(monkeypatch):
    """Any attempt to load a model part fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the config was checked")

    monkeypatch.setattr("sanakit.train.components.load_transformer", refuse)
    monkeypatch.setattr("sanakit.train.components.load_autoencoder", refuse)
    monkeypatch.setattr("sanakit.text.TextEncoder.from_pretrained", refuse)


def _one_line_error(code: int, err: str, needle: str) -> str:
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    errors = [line for line in lines if line.startswith("sanakit: error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], err
    assert needle in errors[0], errors[0]
    return errors[0]


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("learning_rate=1e-4", "unknown key learning_rate; that is SimpleTuner's name; here it is train.lr"),
        ("train.num_train_epochs=2", "train.num_train_epochs; that is SimpleTuner's name; here it is train.epochs"),
        ("train.train_batch_size=4", "here it is train.batch_size"),
        ("train.gradient_accumulation_steps=2", "here it is train.gradient_accumulation"),
        ("train.max_train_steps=10", "here it is train.max_steps"),
        ("output.output_dir=x", "here it is output.dir"),
        ("mixed_precision=no", "unknown key mixed_precision; it belongs in [train]: train.mixed_precision"),
    ],
)  # fmt: skip
def test_simpletuner_names_get_the_sanakit_key(config_file, capsys, override, needle) -> None:
    code = main(["train", str(config_file()), "--set", override])
    _one_line_error(code, capsys.readouterr().err, needle)


def _has_key(dotted: str) -> bool:
    """Whether ``train.lora.rank`` / ``data.datasets[].path`` is a key of :class:`RunConfig`."""
    cls: typing.Any = RunConfig
    for part in dotted.split("."):
        if part.endswith("[]"):
            part = part[:-2]
        fields = {f.name: f for f in dataclasses.fields(cls)}
        if part not in fields:
            return False
        hint = typing.get_type_hints(cls)[part]
        inner = [a for a in typing.get_args(hint) if dataclasses.is_dataclass(a)]
        if part == "datasets":
            inner = [DatasetConfig]
        cls = inner[0] if inner else (hint if dataclasses.is_dataclass(hint) else None)
        if cls is None:
            return part == dotted.split(".")[-1].removesuffix("[]")
    return True


def test_every_simpletuner_name_is_a_simpletuner_key_with_a_real_sanakit_key() -> None:
    simpletuner = trainer.KNOWN | datasets.KNOWN
    assert not [name for name in SIMPLETUNER_NAMES if name not in simpletuner]
    assert not [target for target in SIMPLETUNER_NAMES.values() if not _has_key(target)]
    assert not _has_key("train.learning_rate") and not _has_key("train.lora.rnak")


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("train.gradient_accumulation=0", "train.gradient_accumulation must be >= 1, got 0"),
        ("train.batch_size=0", "train.batch_size must be >= 1, got 0"),
        ("output.keep_last=0", "output.keep_last must be >= 1, got 0"),
        ("output.checkpoint_every=0", "output.checkpoint_every must be >= 1, got 0"),
        ("validation.steps=0", "validation.steps must be >= 1, got 0"),
        ("validation.every_steps=-1", "validation.every_steps must be >= 0, got -1"),
        ("train.max_nonfinite_recoveries=-1", "train.max_nonfinite_recoveries must be >= 0, got -1"),
        ('train.lr="2e-5"', "train.lr must be float, got '2e-5' (str); write it without quotes"),
    ],
)  # fmt: skip
def test_value_errors_name_the_key_at_fault(config_file, capsys, override, needle) -> None:
    code = main(["train", str(config_file()), "--set", override])
    error = _one_line_error(code, capsys.readouterr().err, needle)
    assert error.count(" must ") == 1


@pytest.mark.parametrize("command", ["train", "cache"])
@pytest.mark.parametrize(
    ("key", "inside"),
    [("output.dir", False), ("output.dir", True), ("data.cache_dir", False)],
)
def test_output_folders_that_are_files_stop_before_any_model(
    config_file, tmp_path, capsys, no_models, tiny_pipeline_dir, command, key, inside
) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("keep me")
    target = a_file / "sub" if inside else a_file
    code = main([command, str(config_file(tiny_pipeline_dir)), "--set", f"{key}={target}"])
    if inside:
        needle = f"{key} {target} cannot be created: {a_file} is a file"
    else:
        needle = f"{key} {a_file} is a file, not a folder"
    _one_line_error(code, capsys.readouterr().err, needle)
    assert a_file.read_text() == "keep me"


def _link_pipeline(tiny: Path, to: Path, skip: tuple[str, ...] = ()) -> Path:
    """A pipeline folder at ``to`` made of links to the tiny pipeline's parts (minus ``skip``)."""
    to.mkdir(parents=True)
    for part in tiny.iterdir():
        if part.name not in skip:
            (to / part.name).symlink_to(part)
    return to


@pytest.mark.parametrize(
    ("case", "needle"),
    [
        ("missing", "model.base {base} does not exist; pass a diffusers-format Sana pipeline folder"),
        ("file", "model.base {base} is a file, not a folder"),
        ("transformer", "model.base {base} is a transformer folder; pass the pipeline folder ({pipe})"),
        ("vae", "model.base {base} is a vae folder; pass the pipeline folder ({pipe})"),
        ("parent", "model.base {base} has no transformer/ subfolder; did you mean {pipe}?"),
        ("no-vae", "model.base {base} has no vae/; copy it from the model's diffusers pipeline folder or set model.vae"),
    ],
)  # fmt: skip
def test_model_base_errors_name_the_key_and_the_problem(
    config_file, tmp_path, capsys, no_models, tiny_pipeline_dir, case, needle
) -> None:
    pipe = _link_pipeline(tiny_pipeline_dir, tmp_path / "models" / "sana")
    base = {
        "missing": tmp_path / "models" / "sana-1600m",
        "file": tmp_path / "run.toml",
        "transformer": pipe / "transformer",
        "vae": pipe / "vae",
        "parent": tmp_path / "models",
        "no-vae": _link_pipeline(tiny_pipeline_dir, tmp_path / "partial", skip=("vae",)),
    }[case]
    code = main(["cache", str(config_file(base))])
    error = _one_line_error(code, capsys.readouterr().err, needle.format(base=base, pipe=pipe))
    assert "config.json" not in error


def test_train_checks_model_base_before_loading_anything(
    config_file, tmp_path, capsys, no_models, tiny_pipeline_dir
) -> None:
    base = tiny_pipeline_dir / "transformer"
    code = main(["train", str(config_file(base))])
    _one_line_error(code, capsys.readouterr().err, f"model.base {base} is a transformer folder")
    assert not (tmp_path / "cache").exists()


def test_output_dir_flag_that_is_a_file_stops_before_any_model(
    config_file, tmp_path, capsys, no_models, tiny_pipeline_dir
) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("keep me")
    code = main(["train", str(config_file(tiny_pipeline_dir)), "--output-dir", str(a_file)])
    _one_line_error(code, capsys.readouterr().err, f"--output-dir {a_file} is a file, not a folder")
    assert a_file.read_text() == "keep me"
