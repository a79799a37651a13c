"""``sanakit sprint-teacher`` on tiny diffusers folders: the teacher loads in diffusers'
``SanaPipeline`` / ``SanaTransformer2DModel`` with no missing or unexpected keys, has RMS qk-norm
and dense time (``timestep_scale`` 0.001), and diffusers and sanakit agree on it (transformer
<= 1e-5 relative on the same dense-time inputs; sampled images as tests/test_pipeline.py
compares them). The summary names what changed; bad targets are one-line errors (exit 2)."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import pytest
import torch
from diffusers import SanaPipeline, SanaTransformer2DModel
from safetensors.torch import load_file

from sanakit.cli import main
from sanakit.models import load_transformer, save_transformer
from sanakit.pipeline import TextToImage
from tests.helpers.tiny_pipeline import random_transformer, tiny_transformer_config
from tests.test_pipeline import PROMPTS, _gens, _load_ref, assert_same_images

LOADING_PROBLEMS = ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs")
# the 4 RMSNorm weights per block that conversion adds (diffusers' SanaAttnProcessor2_0 names)
NEW_NORMS = ("attn1.norm_q", "attn1.norm_k", "attn2.norm_q", "attn2.norm_k")


def _cli(argv: list[str]) -> tuple[int, str, str]:
    """``sanakit ARGV`` in this process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    (file,) = folder.glob("*.safetensors")
    return load_file(str(file))


@pytest.fixture(scope="module")
def converted(tiny_pipeline_dir, tmp_path_factory) -> tuple[Path, str]:
    """``sanakit sprint-teacher`` on the tiny SanaPipeline folder: (teacher folder, stdout)."""
    out = tmp_path_factory.mktemp("teacher") / "teacher"
    code, stdout, stderr = _cli(["sprint-teacher", str(tiny_pipeline_dir), "--out", str(out)])
    assert code == 0, stderr
    return out, stdout


def test_teacher_loads_in_diffusers_with_qk_norm_and_dense_time(converted, tiny_pipeline_dir):
    teacher, _ = converted
    assert sorted(p.name for p in teacher.iterdir()) == sorted(
        p.name for p in tiny_pipeline_dir.iterdir()
    )
    index = json.loads((teacher / "model_index.json").read_text())
    assert index["_class_name"] == "SanaPipeline"
    config = json.loads((teacher / "transformer" / "config.json").read_text())
    assert config["qk_norm"] == "rms_norm_across_heads"
    assert config["timestep_scale"] == 0.001
    assert config["guidance_embeds"] is False

    ref, info = SanaTransformer2DModel.from_pretrained(
        teacher / "transformer", output_loading_info=True
    )
    assert not any(info[k] for k in LOADING_PROBLEMS), info
    assert ref.config.qk_norm == "rms_norm_across_heads" and ref.config.timestep_scale == 0.001
    pipe = SanaPipeline.from_pretrained(teacher, dtype=torch.float32)
    assert pipe.transformer.config.timestep_scale == 0.001

    # the base's weights are kept as they are; the new norm weights are ones
    base, new = _weights(tiny_pipeline_dir / "transformer"), _weights(teacher / "transformer")
    added = {f"transformer_blocks.{i}.{n}.weight" for i in range(2) for n in NEW_NORMS}
    assert set(new) - set(base) == added and not set(base) - set(new)
    assert all(torch.equal(new[k], base[k]) for k in base)
    assert all(torch.equal(new[k], torch.ones_like(new[k])) for k in added)


def test_diffusers_and_sanakit_agree_on_the_teacher_in_dense_time(converted):
    teacher, _ = converted
    ours = load_transformer(teacher / "transformer", torch_dtype=torch.float32).eval()
    ref = SanaTransformer2DModel.from_pretrained(teacher / "transformer").eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 4, 6, generator=g)
    text = torch.randn(2, 7, ours.config.caption_channels, generator=g)
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, 3:] = 0
    t = torch.tensor([0.13, 0.87])  # dense time: the flow time itself, in [0, 1]
    with torch.no_grad():
        got = ours(x, t, text, mask)
        want = ref(x, encoder_hidden_states=text, timestep=t, encoder_attention_mask=mask).sample
        # sensitivity: the dense time matters (the same network fed 1000 t is far off)
        sana_time = ours(x, t * 1000, text, mask)
    scale = want.abs().max()
    assert float((got - want).abs().max() / scale) <= 1e-5
    assert float((sana_time - want).abs().max() / scale) > 1e-2


def test_teacher_samples_as_diffusers_sana_pipeline_samples_it(converted):
    teacher, _ = converted
    ours = TextToImage.from_pretrained(teacher, dtype=torch.float32)
    ref = _load_ref(SanaPipeline, teacher)
    seen: list[torch.Tensor] = []
    handle = ref.transformer.register_forward_pre_hook(
        lambda m, args, kwargs: seen.append(kwargs["timestep"].clone()), with_kwargs=True
    )
    kwargs = dict(height=64, width=64, guidance_scale=4.5, use_resolution_binning=False)
    try:
        want = ref(PROMPTS, num_inference_steps=2, generator=_gens([1, 2]), **kwargs).images
    finally:
        handle.remove()
    got = ours(PROMPTS, steps=2, seed=[1, 2], **kwargs)
    assert_same_images(got, want)
    assert seen and all(float(t.max()) <= 1.0 for t in seen)  # diffusers fed dense time too


def test_summary_names_what_changed(converted):
    teacher, stdout = converted
    assert f"wrote the Sana-Sprint teacher {teacher} (pipeline)" in stdout
    assert "qk_norm: None -> rms_norm_across_heads" in stdout
    assert "8 new RMSNorm weights, all ones" in stdout
    assert "timestep_scale: 1 -> 0.001" in stdout
    assert "sanakit train" in stdout and "sanakit distill" in stdout


def test_rerun_into_a_non_empty_out_is_a_one_line_error(converted, tiny_pipeline_dir):
    teacher, _ = converted
    before = {p: p.stat().st_mtime_ns for p in teacher.rglob("*")}
    code, stdout, stderr = _cli(["sprint-teacher", str(tiny_pipeline_dir), "--out", str(teacher)])
    assert code == 2 and stdout == ""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"sanakit: error: --out {teacher}: exists")
    assert {p: p.stat().st_mtime_ns for p in teacher.rglob("*")} == before  # nothing touched


def test_transformer_only_folder(tiny_pipeline_dir, tmp_path):
    out = tmp_path / "teacher-transformer"
    source = tiny_pipeline_dir / "transformer"
    code, stdout, stderr = _cli(["sprint-teacher", str(source), "--out", str(out)])
    assert code == 0, stderr
    assert f"wrote the Sana-Sprint teacher {out} (transformer)" in stdout
    assert "timestep_scale: 1 -> 0.001" in stdout
    assert not (out / "model_index.json").exists() and (out / "config.json").is_file()
    ref, info = SanaTransformer2DModel.from_pretrained(out, output_loading_info=True)
    assert not any(info[k] for k in LOADING_PROBLEMS), info
    assert ref.config.qk_norm == "rms_norm_across_heads" and ref.config.timestep_scale == 0.001
    ours = load_transformer(out, torch_dtype=torch.float32)
    assert ours.config.timestep_scale == 0.001

    # a teacher converts to itself, and the summary says nothing changed
    again = tmp_path / "again"
    code, stdout, stderr = _cli(["sprint-teacher", str(out), "--out", str(again)])
    assert code == 0, stderr
    assert "nothing changed: it already has qk-norm and dense time" in stdout
    assert "qk_norm:" not in stdout and "timestep_scale:" not in stdout
    first, second = _weights(out), _weights(again)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_an_empty_out_folder_is_accepted(tiny_pipeline_dir, tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    code, _, stderr = _cli(
        ["sprint-teacher", str(tiny_pipeline_dir / "transformer"), "--out", str(out)]
    )
    assert code == 0, stderr
    assert (out / "config.json").is_file()


def test_a_sprint_model_is_refused(tiny_sprint_pipeline_dir, tmp_path):
    out = tmp_path / "out"
    code, _, stderr = _cli(["sprint-teacher", str(tiny_sprint_pipeline_dir), "--out", str(out)])
    assert code == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "guidance_embeds = true" in lines[0]
    assert not out.exists() or not any(out.iterdir())  # nothing written


def test_a_refused_pipeline_class_writes_nothing(tiny_pipeline_dir, tmp_path):
    base = tmp_path / "other"
    shutil.copytree(tiny_pipeline_dir, base)
    index = json.loads((base / "model_index.json").read_text())
    (base / "model_index.json").write_text(json.dumps({**index, "_class_name": "OtherPipeline"}))
    out = tmp_path / "out"
    code, _, stderr = _cli(["sprint-teacher", str(base), "--out", str(out)])
    assert code == 2 and "OtherPipeline" in stderr
    assert not out.exists() or not any(out.iterdir())


def test_a_pixel_shuffle_export_keeps_its_layout(tiny_pipeline_dir, tmp_path):
    # the layout of a pixel-shuffle run's final/ (sanakit.train.export.write_pipeline)
    base = tmp_path / "final"
    config = tiny_transformer_config().replace(in_channels=48, out_channels=48)  # 3 x 4^2
    save_transformer(random_transformer(config), base / "transformer")
    info = {
        "autoencoder": "pixel-shuffle",
        "pixel_shuffle_factor": 4,
        "text_encoder": str(tiny_pipeline_dir),
        "instruction": ["Describe the image:"],
        "text_max_length": 12,
        "flow_shift": 1.0,
    }
    (base / "sanakit.json").write_text(json.dumps(info))
    generate = ["generate", "a red square", "--steps", "2", "--height", "32", "--width", "32"]
    generate += ["--no-resolution-binning", "--device", "cpu"]
    code, _, stderr = _cli([*generate, "--model", str(base), "--out", str(tmp_path / "a.png")])
    assert code == 0, stderr  # the base samples

    out = tmp_path / "teacher"
    code, _, stderr = _cli(["sprint-teacher", str(base), "--out", str(out)])
    assert code == 0, stderr
    assert sorted(p.name for p in out.iterdir()) == ["sanakit.json", "transformer"]
    assert json.loads((out / "sanakit.json").read_text()) == info
    assert json.loads((out / "transformer" / "config.json").read_text())["timestep_scale"] == 0.001
    code, _, stderr = _cli([*generate, "--model", str(out), "--out", str(tmp_path / "b.png")])
    assert code == 0, stderr
