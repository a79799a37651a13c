"""SimpleTuner ``config.json`` keys -> sanakit's ``[model]``, ``[train]``, ``[validation]`` and
``[output]`` tables (the datasets are read by :mod:`sanakit.compat.simpletuner.datasets`).

Keys the file leaves out take sanakit's defaults, except where SimpleTuner's default changes what
is trained: the run length (SimpleTuner: one epoch), ``lora_dropout`` (0.1), the EMA decay
(0.995), gradient clipping (method "value" at 2.0) and the scheduler when only
``lr_warmup_steps`` is set (constant_with_warmup).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from sanakit.compat.simpletuner import optim, output, precision
from sanakit.compat.simpletuner.common import (
    ABSENT,
    Context,
    KeyReader,
    PathResolver,
    as_float,
    as_int,
    as_str,
    hub_cache,
    is_off,
    unknown_key,
    words,
)
from sanakit.compat.simpletuner.keys import IGNORED, OFF_ONLY, OTHER_OPTIONS
from sanakit.compat.simpletuner.lycoris import import_lycoris
from sanakit.errors import SanakitError

# SimpleTuner's Sana LoRA targets (helpers/models/sana/model.py DEFAULT_LORA_TARGET)
SIMPLETUNER_LORA_TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]
# config.json keys that set sanakit's per-dataset defaults (SimpleTuner's global arguments)
DATASET_DEFAULTS = (
    "resolution",
    "resolution_type",
    "minimum_image_size",
    "maximum_image_size",
    "target_downsample_size",
    "caption_strategy",
    "caption_dropout_probability",
)
HANDLED = words(
    """
    model_family model_flavour pretrained_model_name_or_path model_type lora_type lora_rank
    lora_alpha lora_dropout lycoris_config init_lokr_norm max_train_steps num_train_epochs optimizer
    optimizer_config learning_rate lr_scheduler lr_warmup_steps max_grad_norm grad_clip_method
    flow_schedule_shift flow_schedule_auto_shift flow_use_uniform_schedule use_ema ema_decay
    ema_update_interval ema_cpu_only ema_device ema_validation validation_prompt
    user_prompt_library validation_resolution validation_guidance validation_num_inference_steps
    validation_negative_prompt validation_seed validation_steps validation_step_interval
    validation_disable output_dir checkpointing_steps checkpoint_step_interval
    checkpoints_total_limit report_to resume_from_checkpoint data_backend_config seed
    train_batch_size gradient_accumulation_steps mixed_precision gradient_checkpointing
    gradient_checkpointing_interval crop crop_style crop_aspect evaluation_type num_eval_images
    base_model_precision text_encoder_1_precision quantize_via
    eval_dataset_id pretrained_evaluation_model_name_or_path
    """
) | frozenset(DATASET_DEFAULTS)
KNOWN = HANDLED | set(IGNORED) | set(OFF_ONLY) | OTHER_OPTIONS
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class TrainerKeys(KeyReader):
    """Reads one config.json; the ``model``/``train``/... dicts are the sanakit tables."""

    def __init__(self, file: Path, raw: dict[str, Any], ctx: Context, paths: PathResolver) -> None:
        super().__init__(file, raw, ctx, paths)
        self.dataset_defaults: dict[str, Any] = {}
        self.backend_file: Path | None = None
        self.seed: int | None = None

    def run(self) -> None:
        for key in self.raw:
            if key not in KNOWN:
                raise unknown_key(self.file, key, KNOWN)
        self._model()
        self._data_pointers()
        self._method()
        precision.precision(self)
        optim.run_length(self)
        optim.optimizer(self)
        optim.flow(self)
        optim.ema(self)
        output.validation(self)
        output.evaluation(self)
        output.output(self)
        optim.simple(self)
        for key in sorted(set(self.raw) - self.used):
            self._table_key(key, self.raw[key])

    def _table_key(self, key: str, value: Any) -> None:
        if key in IGNORED:
            self.ctx.ignored(key, value, IGNORED[key])
            return
        off_values, detail = OFF_ONLY.get(key, ((), "it has no sanakit equivalent"))
        if is_off(value) or value in off_values:
            self.ctx.ignored(key, value, "off (SimpleTuner's default behaviour)")
        else:
            self.ctx.unsupported(self.file, key, value, detail)

    # ------------------------------------------------------------------ model
    def _model(self) -> None:
        family = self.take("model_family")
        if family is ABSENT or str(family).lower() != "sana":
            raise SanakitError(
                f"{self.file}: model_family = {None if family is ABSENT else family!r}: sanakit "
                f"trains Sana only; set model_family to 'sana'"
            )
        self.ctx.ignored("model_family", family, "sanakit trains Sana")
        name = self.take("pretrained_model_name_or_path")
        flavour = self.take("model_flavour")
        if name is ABSENT:
            raise SanakitError(
                f"{self.file}: pretrained_model_name_or_path is required: sanakit needs a local "
                f"diffusers Sana folder (model_flavour {flavour!r} would download one)"
            )
        if flavour is not ABSENT:
            self.ctx.ignored("model_flavour", flavour, "pretrained_model_name_or_path is set")
        folder, how = self._model_folder(as_str(self.file, "pretrained_model_name_or_path", name))
        self.put("pretrained_model_name_or_path", "model.base", str(folder), how)

    def _model_folder(self, name: str) -> tuple[Path, str]:
        found = self.paths.find(name)
        if found is not None:
            folder, how = found
            if not ((folder / "model_index.json").is_file() or (folder / "transformer").is_dir()):
                raise SanakitError(
                    f"{self.file}: pretrained_model_name_or_path {folder} is not a diffusers Sana "
                    f"folder (no model_index.json or transformer/)"
                )
            return folder, how
        if _HUB_ID.match(name):
            cached = hub_cache(name)
            if cached is not None:
                return cached, "found in the local Hugging Face cache (nothing downloaded)"
            local = name.rsplit("/", 1)[1]
            raise SanakitError(
                f"{self.file}: pretrained_model_name_or_path {name!r} is a Hugging Face Hub id; "
                f"sanakit trains from a local diffusers folder: run `huggingface-cli download "
                f"{name} --local-dir models/{local}` and set it to models/{local}"
            )
        raise SanakitError(
            f"{self.file}: pretrained_model_name_or_path {name!r} not found "
            f"(tried {self.paths.tried(name)})"
        )

    # ------------------------------------------------------------------ data files
    def _data_pointers(self) -> None:
        value = self.take("data_backend_config")
        if value is ABSENT:
            raise SanakitError(f"{self.file}: data_backend_config is required (multidatabackend)")
        rel, self.backend_file, how = self.existing_path("data_backend_config", value)
        if not Path(rel).is_absolute():
            base = self.backend_file.parents[len(Path(rel).parts) - 1]
            self.paths.root = next((b for b in self.paths.bases if b[1] == base), self.paths.root)
        self.ctx.mapped("data_backend_config", value, "data.datasets", f"read {how}")
        for key in DATASET_DEFAULTS:
            value = self.take(key)
            if value is not ABSENT:
                self.dataset_defaults[key] = value
                note = "the default of every dataset that does not set it"
                self.ctx.mapped(key, value, "data.datasets[*]." + key, note)
        for key in ("crop", "crop_style", "crop_aspect"):
            if self.take(key) is not ABSENT:
                detail = "SimpleTuner reads crop settings from each multidatabackend entry"
                self.ctx.unsupported(self.file, key, self.raw[key], detail + "; set them there")
        seed = self.take("seed")
        if seed is not ABSENT and seed is not None:
            self.seed = as_int(self.file, "seed", seed)
            note = "also data.seed (crops, sample order)"
            self.put("seed", "train.seed", self.seed, note)

    # ------------------------------------------------------------------ method
    def _method(self) -> None:
        model_type = self.take("model_type")
        kind = "full" if model_type is ABSENT else str(model_type).lower()
        lora_type = self.take("lora_type")
        lora_kind = "standard" if lora_type is ABSENT else str(lora_type).lower()
        adapter_keys = (
            "lora_rank",
            "lora_alpha",
            "lora_dropout",
            "lycoris_config",
            "init_lokr_norm",
        )
        if kind == "full":
            self.put(
                "model_type",
                "train.method",
                "full",
                "" if model_type is not ABSENT else "SimpleTuner's default",
            )
            for key in ("lora_type", *adapter_keys):
                if self.take(key) is not ABSENT:
                    self.ctx.ignored(key, self.raw[key], "only used with model_type 'lora'")
            return
        if kind != "lora":
            raise SanakitError(f"{self.file}: model_type = {model_type!r}: use 'full' or 'lora'")
        if lora_kind == "standard":
            self.put(
                "lora_type",
                "train.method",
                "lora",
                "peft LoRA on SimpleTuner's Sana "
                "targets (its quickstart lists standard LoRA as unsupported for Sana)",
            )
            self.ctx.mapped("model_type", model_type, "train.method")
            self.assign("train.lora.target_modules", list(SIMPLETUNER_LORA_TARGETS))
            self.direct("lora_rank", "train.lora.rank", as_int)
            if self.raw.get("lora_alpha") is not None:
                self.direct("lora_alpha", "train.lora.alpha", as_float)
            elif self.take("lora_alpha") is not ABSENT:
                self.ctx.ignored("lora_alpha", None, "null: alpha = rank")
            if self.direct("lora_dropout", "train.lora.dropout", as_float) is ABSENT:
                self.put("lora_dropout", "train.lora.dropout", 0.1, "SimpleTuner's default 0.1")
            for key in ("lycoris_config", "init_lokr_norm"):
                if self.take(key) is not ABSENT:
                    self.ctx.ignored(key, self.raw[key], "lora_type standard")
            return
        if lora_kind != "lycoris":
            raise SanakitError(f"{self.file}: lora_type = {lora_type!r}: use standard or lycoris")
        self.ctx.mapped("model_type", model_type, "train.method")
        self.put("lora_type", "train.method", "lokr", "LyCORIS; see lycoris_config")
        for key in ("lora_rank", "lora_alpha", "lora_dropout"):
            if self.take(key) is not ABSENT:
                self.ctx.ignored(key, self.raw[key], "LyCORIS takes its sizes from lycoris_config")
        value = self.take("lycoris_config")
        if value is ABSENT:
            raise SanakitError(f"{self.file}: lora_type 'lycoris' needs lycoris_config")
        _, path, how = self.existing_path("lycoris_config", value)
        self.ctx.mapped("lycoris_config", value, "train.lokr", f"read {how}")
        self.assign("train.lokr", import_lycoris(path, self.ctx))
        norm = self.take("init_lokr_norm")  # SimpleTuner's perturbed-normal LoKr init
        if norm is not ABSENT and not is_off(norm):
            value = as_float(self.file, "init_lokr_norm", norm)
            self.put("init_lokr_norm", "train.lokr.init_lokr_norm", value)
        elif norm is not ABSENT:
            self.ctx.ignored("init_lokr_norm", norm, "off (SimpleTuner's default)")
