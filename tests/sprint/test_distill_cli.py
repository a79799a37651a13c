"""``sanakit distill`` end to end on tiny diffusers folders (DC-AE, Gemma2, tiny transformer).

- full student: the teacher is ``sanakit sprint-teacher`` of the tiny SanaPipeline; ``final/`` is
  a ``SanaSprintPipeline`` folder (``SCMScheduler``) and ``sanakit generate`` draws the same pixels
  as diffusers' ``SanaSprintPipeline`` on it (same seed, 2 steps, max |diff| <= 2/255);
- LoRA student on the tiny Sprint pipeline: ``final/`` holds the LoRA file, which
  ``SanaSprintPipeline.load_lora_weights`` applies (and it changes the images) and
  ``sanakit generate --lora`` draws the same pixels as that diffusers pipeline; a LoKr student
  applies with ``sanakit generate --lora``;
- SIGKILL during ``sanakit distill`` + ``--resume latest``: bit-identical weights;
- config errors: one line each, exit 2.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import SanaSprintPipeline, SanaTransformer2DModel
from PIL import Image
from safetensors.torch import load_file

from sanakit import tomlwriter
from sanakit.cli import main
from sanakit.models import load_transformer, save_transformer
from tests.helpers.tiny_pipeline import random_transformer, tiny_transformer_config
from tests.train.conftest import write_images

PROMPT = "a red square on a white background"
SEED, STEPS, GUIDANCE, SIZE = 3, 2, 4.5, 64
MAX_DIFF = 2  # uint8 levels: 2/255
LOADING_PROBLEMS = ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs")
KILL_AT = 3  # SIGKILL after step 3 of 4; the latest checkpoint is step 2


def _cli(argv: list[str]) -> tuple[int, str, str]:
    """``sanakit ARGV`` in this process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def _one_line_error(argv: list[str]) -> str:
    """The error line of a refused ``sanakit ARGV`` (exit 2; progress bars may precede it on
    stderr, a traceback may not)."""
    code, _, stderr = _cli(argv)
    assert code == 2, stderr
    assert "Traceback" not in stderr
    line = stderr.strip().splitlines()[-1]
    assert line.startswith("sanakit: error: "), stderr
    return line


def _write(path: Path, config: dict) -> Path:
    path.write_text(tomlwriter.dumps(config))
    return path


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("distill")


@pytest.fixture(scope="module")
def teacher(tiny_pipeline_dir, work) -> Path:
    """The dense-time, qk-normed teacher pipeline: ``sanakit sprint-teacher`` of the tiny Sana."""
    out = work / "teacher"
    code, _, stderr = _cli(["sprint-teacher", str(tiny_pipeline_dir), "--out", str(out)])
    assert code == 0, stderr
    return out


@pytest.fixture(scope="module")
def config(work, teacher) -> dict:
    """A 4-step full distillation of ``teacher`` on 4 images of 64 px (one shared cache)."""
    images = write_images(work / "images", count=4, size=SIZE)
    return {
        "model": {"base": str(teacher), "encoder_dtype": "fp32", "text_max_length": 12},
        "data": {
            "datasets": [
                {
                    "id": "shapes",
                    "path": str(images),
                    "resolution": SIZE,
                    "resolution_type": "pixel",
                }
            ],
            "cache_dir": str(work / "cache"),
            "latent_dtype": "fp32",
            "text_dtype": "fp32",
        },
        "train": {"max_steps": 4, "batch_size": 2, "lr": 1e-3, "mixed_precision": "no", "seed": 0},
        "output": {
            "dir": str(work / "full"),
            "checkpoint_every": 2,
            "log_with": "none",
            "export_dtype": "fp32",
        },
        "distill": {"tangent_warmup_steps": 2, "cfg_scales": [3.0, 4.5]},
    }


@pytest.fixture(scope="module")
def full_run(work, config) -> tuple[Path, str]:
    """``sanakit distill`` of the full student: (output folder, stdout)."""
    code, stdout, stderr = _cli(["distill", str(_write(work / "full.toml", config))])
    assert code == 0, stderr
    return Path(config["output"]["dir"]), stdout


def _generate(model: Path, out: Path, *extra: str, steps: int = STEPS) -> np.ndarray:
    argv = ["generate", PROMPT, "--model", str(model), "--out", str(out), "--seed", str(SEED)]
    argv += ["--steps", str(steps), "--guidance", str(GUIDANCE), "--height", str(SIZE)]
    argv += ["--width", str(SIZE), "--no-resolution-binning", "--device", "cpu", *extra]
    code, _, stderr = _cli(argv)
    assert code == 0, stderr
    with Image.open(out) as image:
        return np.asarray(image).astype(np.int32)


def _diffusers_sprint(pipe: SanaSprintPipeline, steps: int = STEPS) -> np.ndarray:
    image = pipe(
        PROMPT,
        num_inference_steps=steps,
        # diffusers' 2-step default [1.5708, 1.3, 0]; other counts: linspace(1.5708, 0, n + 1)
        intermediate_timesteps=1.3 if steps == 2 else None,
        guidance_scale=GUIDANCE,
        height=SIZE,
        width=SIZE,
        generator=torch.Generator("cpu").manual_seed(SEED),
        use_resolution_binning=False,
    ).images[0]
    return np.asarray(image).astype(np.int32)


def _sprint_pipeline(folder: Path) -> SanaSprintPipeline:
    pipe = SanaSprintPipeline.from_pretrained(folder, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_full_student_is_a_sana_sprint_pipeline_that_generate_samples_as_diffusers(
    full_run, teacher, tmp_path
):
    out, stdout = full_run
    assert "sanakit distill" in stdout and "done: 4 steps" in stdout
    final = out / "final"
    index = json.loads((final / "model_index.json").read_text())
    assert index["_class_name"] == "SanaSprintPipeline"
    assert index["scheduler"] == ["diffusers", "SCMScheduler"]
    scheduler = json.loads((final / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["_class_name"] == "SCMScheduler"
    assert scheduler["prediction_type"] == "trigflow" and scheduler["sigma_data"] == 0.5

    ref, info = SanaTransformer2DModel.from_pretrained(
        final / "transformer", output_loading_info=True
    )
    assert not any(info[k] for k in LOADING_PROBLEMS), info
    assert ref.config.guidance_embeds and ref.config.qk_norm == "rms_norm_across_heads"
    (weights,) = (final / "transformer").glob("*.safetensors")
    student = load_file(str(weights))
    assert not any("logvar" in k for k in student)  # the training-only head is dropped
    # the distillation trained the student: its guidance embedding left zero, weights moved
    assert student["time_embed.guidance_embedder.linear_2.bias"].abs().max() > 0
    (teacher_file,) = (teacher / "transformer").glob("*.safetensors")
    start = load_file(str(teacher_file))
    assert not torch.equal(student["proj_out.weight"], start["proj_out.weight"])

    pipe = _sprint_pipeline(final)
    assert type(pipe.scheduler).__name__ == "SCMScheduler"
    images = {}
    for steps in (1, 2, 4):
        want = _diffusers_sprint(pipe, steps)
        images[steps] = got = _generate(final, tmp_path / f"student-{steps}.png", steps=steps)
        assert got.shape == want.shape == (SIZE, SIZE, 3)
        assert np.abs(got - want).max() <= MAX_DIFF, steps
        assert want.std() > 10  # a real image, not a flat one
        with Image.open(tmp_path / f"student-{steps}.png") as image:
            assert image.text["sampler"] == "scm" and image.text["steps"] == str(steps)
    assert np.abs(images[1] - images[2]).max() > 10 * MAX_DIFF  # the step count matters


def test_lora_student_applies_with_diffusers_and_generate(
    config, teacher, tiny_sprint_pipeline_dir, work, tmp_path
):
    base = tiny_sprint_pipeline_dir  # same architecture as the teacher, plus guidance embedding
    lora = copy.deepcopy(config)
    lora["model"]["base"] = str(base)
    lora["distill"]["teacher"] = str(teacher)
    lora["train"].update(method="lora", lora={"rank": 4}, max_steps=3, lr=1e-2)
    lora["output"].update(dir=str(work / "lora"), checkpoint_every=3)
    code, stdout, stderr = _cli(["distill", str(_write(work / "lora.toml", lora))])
    assert code == 0, stderr
    final = work / "lora" / "final"
    assert sorted(p.name for p in final.iterdir()) == ["pytorch_lora_weights.safetensors"]

    pipe = _sprint_pipeline(base)
    plain = _diffusers_sprint(pipe)
    pipe.load_lora_weights(final)
    assert any("lora" in name for name, _ in pipe.transformer.named_parameters())
    want = _diffusers_sprint(pipe)
    assert np.abs(want - plain).max() > 10 * MAX_DIFF  # the LoRA changes the images
    got = _generate(base, tmp_path / "lora.png", "--lora", str(final))
    assert np.abs(got - want).max() <= MAX_DIFF


def test_lokr_student_applies_with_generate_lora(
    config, teacher, tiny_sprint_pipeline_dir, work, tmp_path
):
    base = tiny_sprint_pipeline_dir
    lokr = copy.deepcopy(config)
    lokr["model"]["base"] = str(base)
    lokr["distill"]["teacher"] = str(teacher)
    lokr["train"].update(method="lokr", lokr={"factor": 4, "rank": 4}, max_steps=2, lr=1e-2)
    lokr["output"].update(dir=str(work / "lokr"), checkpoint_every=2)
    code, _, stderr = _cli(["distill", str(_write(work / "lokr.toml", lokr))])
    assert code == 0, stderr
    final = work / "lokr" / "final"
    assert (final / "lokr_weights.safetensors").is_file()
    plain = _generate(base, tmp_path / "plain.png")
    adapted = _generate(base, tmp_path / "lokr.png", "--lora", str(final))
    assert np.abs(adapted - plain).max() > 10 * MAX_DIFF


def test_distillation_makes_the_student_depend_on_the_guidance_scale(full_run):
    (weights,) = (full_run[0] / "final" / "transformer").glob("*.safetensors")
    student = load_transformer(weights.parent, torch_dtype=torch.float32).eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 2, 2, generator=g)  # (B, C, H, W) latents
    text = torch.randn(2, 5, student.config.caption_channels, generator=g)
    t = torch.tensor([0.4, 0.9])  # flow time: the Sprint student is fed it as it is
    scale = student.config.guidance_embeds_scale
    with torch.no_grad():
        low, high = (student(x, t, text, None, torch.full((2,), w * scale)) for w in (3.0, 4.5))
    assert not torch.equal(low, high)


KILLED_DISTILL = textwrap.dedent(
    """
    import os, signal, sys
    from sanakit.cli import main
    from sanakit.sprint.trainer import DistillTrainer

    original = DistillTrainer.on_step_end

    def on_step_end(self, stats):
        original(self, stats)
        if self.step == int(sys.argv[2]):
            os.kill(os.getpid(), signal.SIGKILL)

    DistillTrainer.on_step_end = on_step_end
    sys.exit(main(["distill", sys.argv[1]]))
    """
)


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for file in sorted(folder.rglob("*.safetensors")):
        tensors.update({f"{file.relative_to(folder)}:{k}": v for k, v in load_file(file).items()})
    return tensors


@pytest.mark.slow  # a subprocess (imports torch, diffusers) that SIGKILLs itself: ~5-8 s
def test_sigkill_then_resume_latest_is_bit_identical(full_run, config, work):
    straight, _ = full_run
    broken = copy.deepcopy(config)
    broken["output"]["dir"] = str(work / "broken")
    path = _write(work / "broken.toml", broken)
    # the same thread count as this process, so both runs do the same float reductions
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_DISTILL, str(path), str(KILL_AT)],
        capture_output=True,
        text=True,
        env=env,
    )
    assert killed.returncode == -9, killed.stderr[-2000:]
    out = work / "broken"
    assert (out / "checkpoints" / "latest").read_text().strip() == "step-00000002"
    assert not (out / "final").exists()
    code, stdout, stderr = _cli(["distill", str(path), "--resume", "latest"])
    assert code == 0, stderr
    assert "done: 4 steps" in stdout

    step = Path("checkpoints") / "step-00000004"
    a, b = _tensors(straight / step), _tensors(out / step)
    assert a and a.keys() == b.keys()
    assert any("logvar" in k for k in a)  # the logvar head is part of the state
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
    oa, ob = torch.load(straight / step / "optimizer.pt"), torch.load(out / step / "optimizer.pt")
    for key, state in oa["state"].items():
        for field, value in state.items():
            assert torch.equal(value, ob["state"][key][field]), (key, field)
    fa, fb = _tensors(straight / "final"), _tensors(out / "final")
    assert fa and fa.keys() == fb.keys() and all(torch.equal(fa[k], fb[k]) for k in fa)


def test_sanakit_train_refuses_a_distill_config(config, work):
    bad = copy.deepcopy(config)
    bad["output"]["dir"] = str(work / "train-distill")
    line = _one_line_error(["train", str(_write(work / "train-distill.toml", bad))])
    assert "[distill] is read by `sanakit distill CONFIG`" in line
    assert not (work / "train-distill").exists()  # refused before anything is written


@pytest.mark.parametrize("route", ["model.base", "distill.teacher"])
def test_a_non_dense_time_teacher_is_refused_with_the_sprint_teacher_hint(
    config, tiny_pipeline_dir, tiny_sprint_pipeline_dir, work, route
):
    bad = copy.deepcopy(config)
    if route == "model.base":  # [model] is the teacher: a Sana flow model, timestep_scale 1
        bad["model"]["base"] = str(tiny_pipeline_dir)
    else:  # a Sprint student distilled from a Sana flow model
        bad["model"]["base"] = str(tiny_sprint_pipeline_dir)
        bad["distill"]["teacher"] = str(tiny_pipeline_dir)
    bad["output"]["dir"] = str(work / f"not-dense-{route}")
    line = _one_line_error(["distill", str(_write(work / f"not-dense-{route}.toml", bad))])
    assert "not a dense-time model" in line and "sanakit sprint-teacher" in line
    assert not (work / f"not-dense-{route}" / "checkpoints").exists()


def test_a_sprint_base_needs_a_teacher_of_the_same_architecture(
    config, tiny_sprint_pipeline_dir, work
):
    bad = copy.deepcopy(config)
    bad["model"]["base"] = str(tiny_sprint_pipeline_dir)
    bad["output"]["dir"] = str(work / "no-teacher")
    line = _one_line_error(["distill", str(_write(work / "no-teacher.toml", bad))])
    assert "set distill.teacher" in line

    other = tiny_transformer_config().replace(
        num_layers=1, qk_norm="rms_norm_across_heads", timestep_scale=0.001
    )
    save_transformer(random_transformer(other), work / "one-block-teacher")
    bad["distill"]["teacher"] = str(work / "one-block-teacher")
    line = _one_line_error(["distill", str(_write(work / "no-teacher.toml", bad))])
    assert "differ in num_layers" in line


def test_a_lora_student_on_a_flow_model_is_refused(config, work):
    bad = copy.deepcopy(config)
    bad["train"].update(method="lora", lora={"rank": 4})
    bad["output"]["dir"] = str(work / "lora-on-flow")
    line = _one_line_error(["distill", str(_write(work / "lora-on-flow.toml", bad))])
    assert "train.method = 'lora'" in line and "Sana-Sprint model" in line


def test_an_unknown_distill_key_says_did_you_mean(config, work):
    bad = copy.deepcopy(config)
    bad["distill"]["tangent_warmup_step"] = 2
    line = _one_line_error(["distill", str(_write(work / "typo.toml", bad))])
    assert "tangent_warmup_step" in line and "did you mean 'tangent_warmup_steps'" in line
