"""config.json keys of validation and output -> ``[validation]`` and ``[output]``.
(Functions of a :class:`~sanakit.compat.simpletuner.common.KeyReader`; see :mod:`.trainer`.)
"""

from __future__ import annotations

from pathlib import Path

from sanakit.compat.simpletuner.common import (
    ABSENT,
    KeyReader,
    as_bool,
    as_float,
    as_int,
    as_str,
    hub_cache,
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
# SimpleTuner's default pretrained_evaluation_model_name_or_path (its field registry,
# simpletuner_sdk/server/services/field_registry/sections/validation.py)
CLIP_DEFAULT = "openai/clip-vit-large-patch14-336"


def evaluation(k: KeyReader) -> None:
    """SimpleTuner's evaluation keys -> [validation]:

    - ``evaluation_type: clip`` + ``pretrained_evaluation_model_name_or_path`` (default
      openai/clip-vit-large-patch14-336) -> ``validation.clip_model``: a local folder, or the Hub
      id found in the local Hugging Face cache; otherwise unsupported with how to get it;
    - ``eval_dataset_id`` (SimpleTuner leaves those datasets out of training and evaluates on
      them) -> ``validation.eval_datasets`` (held-out loss at fixed sigmas);
    - ``num_eval_images`` (how many samples SimpleTuner draws from the eval datasets): ignored,
      sanakit scores every validation image and evaluates every held-out image.
    Without evaluation all three are accepted and ignored (SimpleTuner's default)."""
    kind = k.take("evaluation_type")
    model = k.take("pretrained_evaluation_model_name_or_path")
    requested = kind is not ABSENT and not is_off(kind)
    on = requested and _map_clip(k, kind, model)
    if kind is not ABSENT and not requested:
        k.ctx.ignored("evaluation_type", kind, "off (SimpleTuner's default behaviour)")
    off = "only used by evaluation_type, dropped with it" if requested else _EVAL_OFF
    if not on and model is not ABSENT:
        k.ctx.ignored("pretrained_evaluation_model_name_or_path", model, off)
    ids = k.take("eval_dataset_id")
    if ids is not ABSENT and on and not is_off(ids):
        items = [ids] if isinstance(ids, str) else list(ids)
        k.put(
            "eval_dataset_id",
            "validation.eval_datasets",
            [as_str(k.file, "eval_dataset_id", i) for i in items],
            "held out of training; their loss is logged at fixed sigmas",
        )
    elif ids is not ABSENT:
        k.ctx.ignored("eval_dataset_id", ids, "empty" if on else off)
    count = k.take("num_eval_images")
    if count is not ABSENT:
        every = "sanakit CLIP-scores every validation image and evaluates every held-out image"
        k.ctx.ignored("num_eval_images", count, every if on else off)


def _map_clip(k: KeyReader, kind: object, model: object) -> bool:
    """Maps ``evaluation_type`` (on) to ``validation.clip_model``; False when unsupported."""
    if str(kind).lower() != "clip":
        k.ctx.unsupported(
            k.file, "evaluation_type", kind, "SimpleTuner's only evaluation is 'clip'"
        )
        return False
    given = model is not ABSENT and not is_off(model)
    key = "pretrained_evaluation_model_name_or_path"
    name = as_str(k.file, key, model) if given else CLIP_DEFAULT
    found = _clip_folder(k, name)
    if found is None:
        local = name.rsplit("/", 1)[-1]
        k.ctx.unsupported(
            k.file,
            "evaluation_type",
            kind,
            f"CLIP-score evaluation needs the CLIP model {name!r} on disk (sanakit downloads "
            f"nothing): run `hf download {name} --local-dir models/{local}` and set {key} to "
            f"models/{local}",
        )
        return False
    folder, how = found
    default = "" if given else f"; {CLIP_DEFAULT} (SimpleTuner's default) {how}"
    k.put("evaluation_type", "validation.clip_model", str(folder), f"CLIP score{default}")
    if given:
        k.ctx.mapped(key, model, "validation.clip_model", how)
    if model is not ABSENT and not given:
        k.ctx.ignored(key, model, f"empty: SimpleTuner's default {CLIP_DEFAULT}")
    return True


def _clip_folder(k: KeyReader, name: str) -> tuple[Path, str] | None:
    """(folder, how it was found) of a CLIP model named by path or Hub id, never downloading."""
    found = k.paths.find(name)
    if found is not None:
        return found
    cached = hub_cache(name) if "/" in name else None
    return (
        (cached, "found in the local Hugging Face cache (nothing downloaded)") if cached else None
    )


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
