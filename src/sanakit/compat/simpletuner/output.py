"""config.json keys of validation and output -> ``[validation]`` and ``[output]``.
(Functions of a :class:`~sanakit.compat.simpletuner.common.KeyReader`; see :mod:`.trainer`.)
"""

from __future__ import annotations

from sanakit.compat.simpletuner.common import (
    ABSENT,
    KeyReader,
    as_bool,
    as_float,
    as_int,
    as_str,
    is_off,
)


# ------------------------------------------------------------------ validation/output
def validation(k: KeyReader) -> None:
    """validation_* keys and user_prompt_library -> [validation]."""
    prompt = k.take("validation_prompt")
    if prompt is not ABSENT and not is_off(prompt):
        k.put(
            "validation_prompt",
            "validation.prompts",
            [as_str(k.file, "validation_prompt", prompt)],
        )
    elif prompt is not ABSENT:
        k.ctx.ignored("validation_prompt", prompt, "empty")
    library = k.take("user_prompt_library")
    if library is not ABSENT and not is_off(library):
        _, path, how = k.existing_path("user_prompt_library", library)
        k.put(
            "user_prompt_library",
            "validation.prompt_library",
            str(path),
            f"read {how}; nicknames name the image files",
        )
    res = k.take("validation_resolution")
    if res is not ABSENT:
        items = [r.strip() for r in str(res).split(",") if r.strip()]
        items = [r if "x" in r.lower() else f"{r}x{r}" for r in items]
        k.put(
            "validation_resolution",
            "validation.resolutions",
            items,
            "one validation image per prompt and resolution (WIDTHxHEIGHT)",
        )
    k.direct("validation_guidance", "validation.guidance", as_float)
    k.direct("validation_num_inference_steps", "validation.steps", as_int)
    k.direct("validation_negative_prompt", "validation.negative_prompt", as_str)
    seed = k.take("validation_seed")
    if seed is not ABSENT and seed is not None:
        k.put("validation_seed", "validation.seed", as_int(k.file, "validation_seed", seed))
    elif seed is not ABSENT:
        k.ctx.ignored("validation_seed", seed, "null: validation.seed stays 0")
    for key in ("validation_steps", "validation_step_interval"):
        k.direct(key, "validation.every_steps", as_int)
    off = k.take("validation_disable")
    if off is not ABSENT and as_bool(k.file, "validation_disable", off):
        k.tables["validation"].pop("prompts", None)
        k.tables["validation"].pop("prompt_library", None)
        k.ctx.mapped(
            "validation_disable",
            off,
            "validation.prompts",
            "no prompts: sanakit makes no validation images",
        )
    elif off is not ABSENT:
        k.ctx.ignored("validation_disable", off, "off")


_EVAL_OFF = "only used by SimpleTuner's evaluation_type, which is off"


def evaluation(k: KeyReader) -> None:
    """evaluation_type (SimpleTuner's CLIP-score evaluation), num_eval_images, eval_dataset_id:
    accepted while evaluation is off; evaluation_type 'clip' is not implemented (one reason,
    the other two follow it)."""
    kind = k.take("evaluation_type")
    on = kind is not ABSENT and not is_off(kind)
    if on:
        k.ctx.unsupported(
            k.file,
            "evaluation_type",
            kind,
            "CLIP-score evaluation is not implemented yet in sanakit (held-out eval loss is: "
            "[validation] eval_datasets)",
        )
    elif kind is not ABSENT:
        k.ctx.ignored("evaluation_type", kind, "off (SimpleTuner's default behaviour)")
    for key in ("num_eval_images", "eval_dataset_id"):
        value = k.take(key)
        if value is not ABSENT:
            why = "only used by evaluation_type, dropped with it" if on else _EVAL_OFF
            k.ctx.ignored(key, value, why)


def output(k: KeyReader) -> None:
    """output_dir, checkpoint interval/limit, report_to -> [output]; resume_from_checkpoint
    is kept as a run option (``KeyReader.resume``)."""
    value = k.take("output_dir")
    if value is not ABSENT:
        path, how = k.paths.place(as_str(k.file, "output_dir", value))
        k.put("output_dir", "output.dir", str(path), how)
    for key in ("checkpointing_steps", "checkpoint_step_interval"):
        value = k.take(key)
        if value is ABSENT:
            continue
        if is_off(value):
            k.ctx.unsupported(
                k.file,
                key,
                value,
                "sanakit always checkpoints; set a large interval instead",
            )
        else:
            k.put(key, "output.checkpoint_every", as_int(k.file, key, value))
    limit = k.take("checkpoints_total_limit")
    if limit is not ABSENT:
        if is_off(limit):
            k.ctx.unsupported(
                k.file,
                "checkpoints_total_limit",
                limit,
                "sanakit keeps a fixed number of checkpoints; set one",
            )
        else:
            k.put(
                "checkpoints_total_limit",
                "output.keep_last",
                as_int(k.file, "checkpoints_total_limit", limit),
            )
    report = k.take("report_to")
    if report is not ABSENT:
        name = "none" if report is None else str(report).lower()
        if name in ("wandb", "tensorboard", "none"):
            k.put("report_to", "output.log_with", name)
        else:
            k.ctx.unsupported(
                k.file, "report_to", report, "sanakit logs to wandb, tensorboard or none"
            )
    resume = k.take("resume_from_checkpoint")
    if resume is not ABSENT and not is_off(resume):
        k.resume = str(resume)
        k.ctx.ignored(
            "resume_from_checkpoint",
            resume,
            "a run option: `sanakit train` on "
            "this file resumes it when a checkpoint exists; with the TOML pass "
            f"--resume {resume}",
        )
    elif resume is not ABSENT:
        k.ctx.ignored("resume_from_checkpoint", resume, "off")
