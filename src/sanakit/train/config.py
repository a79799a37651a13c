"""The training configuration: ``[model]``, ``[train]``, ``[validation]``, ``[output]`` and
``[data]`` (see :mod:`sanakit.config` for the strict loader and the data section).

Every option here changes what a run does; combinations that would make an option do nothing
(LoKr settings with ``method = "full"``, ``flow_shift`` with ``auto_shift``) are rejected.

Paths (:data:`PATH_KEYS`): :func:`load_run_config` makes every one absolute. A relative path in
the config, written or the default of a key left out (``output.dir = "output"``,
``data.cache_dir = "cache"``), is relative to the file's folder, so a config means the same
from any directory; a ``--set`` value is typed on the command line: relative to the current one.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import math
import os
from pathlib import Path
from typing import Any, Literal

from sanakit.adapters.spec import AdapterSpec, LokrSpec, LoraSpec
from sanakit.config import (
    ConfigValueError,
    DataConfig,
    apply_overrides,
    check_output_folder,
    from_dict,
    load_config_file,
    to_dict,
)
from sanakit.errors import SanakitError
from sanakit.sprint.config import DistillSection

Precision = Literal["auto", "bf16", "fp16", "no"]  # auto: see sanakit.hardware
# train.optimizer's names (sanakit.train.optim builds them; distill.d_optimizer takes them too)
OptimizerName = Literal[
    "adamw",
    "adamw8bit",
    "lion8bit",
    "paged_adamw8bit",
    "paged_lion8bit",
    "optimi-adamw",
    "optimi-lion",
    "adafactor",
    "came",
]
DType = Literal["bf16", "fp16", "fp32"]

# Sana-1600M's fine-tuning defaults (NVlabs configs, SimpleTuner quickstart): 1e-5 for full
# rank; adapters train a small fraction of the weights and take ~10x more.
DEFAULT_LR = {"full": 1e-5, "lora": 1e-4, "lokr": 1e-4}
DEFAULT_EPS = 1e-8  # torch AdamW's
# train.optimizer -> (module, pip package) for the ones that need an optional package
OPTIMIZER_PACKAGES = {
    "adamw8bit": ("bitsandbytes", "bitsandbytes"),
    "lion8bit": ("bitsandbytes", "bitsandbytes"),
    "paged_adamw8bit": ("bitsandbytes", "bitsandbytes"),
    "paged_lion8bit": ("bitsandbytes", "bitsandbytes"),
    "optimi-adamw": ("optimi", "torch-optimi"),
    "optimi-lion": ("optimi", "torch-optimi"),
    "came": ("came_pytorch", "came-pytorch"),
}
NO_EPS_OPTIMIZERS = {
    "lion8bit": "Lion has no eps",
    "paged_lion8bit": "Lion has no eps",
    "optimi-lion": "Lion has no eps",
    "adafactor": "Adafactor keeps its own eps pair",
    "came": "CAME keeps its own eps pair",
}


def missing_package(what: str, module: str, package: str) -> None:
    """A one-line error when ``module`` cannot be imported: ``what`` needs ``package``."""
    if importlib.util.find_spec(module) is None:
        raise SanakitError(f"{what} needs the {package!r} package: pip install {package}")


@dataclasses.dataclass(frozen=True)
class ModelSection:
    """``[model]``: where the weights come from.

    ``base`` is a diffusers-format Sana pipeline folder (transformer/, vae/, text_encoder/,
    tokenizer/). Alternatively ``transformer`` (a transformer folder, or ``preset`` for a fresh
    randomly initialised model) plus ``vae`` / ``text_encoder`` folders. ``autoencoder =
    "pixel-shuffle"`` replaces the DC-AE with the parameter-free pixel-unshuffle (demo, tests).
    """

    base: str | None = None
    transformer: str | None = None
    preset: str | None = None
    preset_overrides: dict[str, int | float | bool | str] | None = None  # e.g. {num_layers = 4}
    vae: str | None = None
    text_encoder: str | None = None
    autoencoder: Literal["dc-ae", "pixel-shuffle"] = "dc-ae"
    pixel_shuffle_factor: int | None = None
    instruction: tuple[str, ...] | None = None  # default: Sana's complex human instruction
    use_instruction: bool = True
    text_max_length: int = 300
    encoder_dtype: DType = "bf16"  # frozen text encoder / autoencoder while caching
    # low VRAM (docs/low-vram.md, sanakit.quantize): the frozen base of a LoRA/LoKr run stored in
    # 8 or 4 bits, quantised layer by layer on the CPU (default) or on the training device
    quantize: Literal["none", "int8", "nf4"] = "none"
    quantize_via: Literal["cpu", "device"] | None = None  # default "cpu"; needs quantize
    text_encoder_quantize: Literal["none", "int8", "nf4"] = "none"  # while caching only
    vae_tiling: bool = False  # DC-AE encodes large images in 512-px tiles while caching

    def __post_init__(self) -> None:
        sources = [k for k in ("base", "transformer", "preset") if getattr(self, k)]
        if len(sources) != 1:
            raise ConfigValueError(
                self, "base", "set exactly one of model.base, model.transformer, model.preset"
            )
        if self.preset_overrides is not None and not self.preset:
            raise ConfigValueError(self, "preset_overrides", "is only used with model.preset")
        if self.autoencoder == "pixel-shuffle":
            if not self.pixel_shuffle_factor or self.pixel_shuffle_factor < 1:
                raise ConfigValueError(
                    self, "pixel_shuffle_factor", "must be >= 1 with autoencoder = 'pixel-shuffle'"
                )
            if self.vae:
                raise ConfigValueError(
                    self, "vae", "is not used with autoencoder = 'pixel-shuffle'"
                )
        elif self.pixel_shuffle_factor is not None:
            raise ConfigValueError(
                self, "pixel_shuffle_factor", "is only used with autoencoder = 'pixel-shuffle'"
            )
        if not self.base and not self.text_encoder:
            raise ConfigValueError(self, "text_encoder", "is required without model.base")
        if not self.base and self.autoencoder == "dc-ae" and not self.vae:
            raise ConfigValueError(
                self, "vae", "is required without model.base (or use autoencoder = 'pixel-shuffle')"
            )
        if self.instruction is not None and not self.use_instruction:
            raise ConfigValueError(self, "instruction", "is set but use_instruction = false")
        if self.text_max_length < 2:
            raise ConfigValueError(self, "text_max_length", "must be >= 2")
        if self.quantize_via is not None and self.quantize == self.text_encoder_quantize == "none":
            raise ConfigValueError(
                self, "quantize_via", "does nothing: quantize and text_encoder_quantize are 'none'"
            )
        if self.vae_tiling and self.autoencoder != "dc-ae":
            raise ConfigValueError(self, "vae_tiling", "applies to autoencoder = 'dc-ae' only")
        for key in ("quantize", "text_encoder_quantize"):
            if getattr(self, key) != "none":
                missing_package(f"model.{key}", "bitsandbytes", "bitsandbytes")


@dataclasses.dataclass(frozen=True)
class EmaSection:
    """``[train.ema]``: present = on. shadow <- decay*shadow + (1-decay)*w every n steps."""

    decay: float = 0.9999
    update_every: int = 1
    on_cpu: bool = False

    def __post_init__(self) -> None:
        if not 0.0 < self.decay < 1.0:
            raise ConfigValueError(self, "decay", "must be in (0, 1)")
        if self.update_every < 1:
            raise ConfigValueError(self, "update_every", "must be >= 1")


@dataclasses.dataclass(frozen=True)
class TrainSection:
    """``[train]``: method, optimisation and the flow-matching objective."""

    method: Literal["full", "lora", "lokr"] = "full"
    lora: LoraSpec | None = None  # sanakit.adapters.spec: the adapter settings themselves
    lokr: LokrSpec | None = None
    lr: float | None = None  # default by method: 1e-5 full, 1e-4 lora/lokr
    optimizer: OptimizerName = "adamw"
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    eps: float = DEFAULT_EPS  # adamw* only (Lion has none)
    lr_scheduler: Literal["constant", "constant_with_warmup", "linear", "cosine", "polynomial"] = (
        "constant"
    )
    warmup_steps: int = 0
    # polynomial only: lr decays to lr_end as (1 - progress) ** lr_power (transformers' defaults)
    lr_end: float | None = None  # default 1e-7
    lr_power: float | None = None  # default 1.0
    batch_size: int = 1
    gradient_accumulation: int = 1
    max_steps: int | None = None
    epochs: int | None = None
    grad_clip: float = 1.0  # the clipping limit; 0 = no clipping
    # norm: scale all gradients so their global L2 norm is <= grad_clip; value: clamp every
    # gradient element to [-grad_clip, grad_clip] (torch.nn.utils.clip_grad_value_)
    grad_clip_method: Literal["norm", "value"] = "norm"
    mixed_precision: Precision = "auto"  # GPU: bf16; CPU: bf16 only with native bf16, else no
    gradient_checkpointing: bool = False
    gradient_checkpointing_interval: int = 1
    # regional torch.compile of the transformer blocks (SanaTransformer.compile_blocks)
    compile: bool = False
    timestep_sampling: Literal["logit_normal", "uniform", "mode"] = "logit_normal"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    mode_scale: float = 1.29
    flow_shift: float | None = None  # default 1.0; Sana's 1024 px pre-training used 3.0
    auto_shift: bool = False  # resolution-dependent shift from the latent token count
    # regularisation datasets (is_regularisation_data): DreamBooth prior preservation
    prior_loss_weight: float = 1.0  # x the per-sample loss of regularisation samples
    regularisation_target: Literal["data", "base_model"] = "data"  # base_model: adapters only
    ema: EmaSection | None = None
    seed: int = 0
    max_consecutive_nonfinite: int = 5
    max_nonfinite_recoveries: int = 3

    def __post_init__(self) -> None:
        if self.lora is not None and self.method != "lora":
            raise ConfigValueError(
                self, "lora", f"settings do nothing with method = {self.method!r}"
            )
        if self.lokr is not None and self.method != "lokr":
            raise ConfigValueError(
                self, "lokr", f"settings do nothing with method = {self.method!r}"
            )
        if (self.max_steps is None) == (self.epochs is None):
            raise ConfigValueError(
                self, "max_steps", "set exactly one of train.max_steps and train.epochs"
            )
        for key in ("max_steps", "epochs"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ConfigValueError(self, key, "must be >= 1")
        if self.lr is not None and not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigValueError(self, "lr", f"must be > 0, got {self.lr}")
        for key in ("batch_size", "gradient_accumulation"):
            if getattr(self, key) < 1:
                raise ConfigValueError(self, key, f"must be >= 1, got {getattr(self, key)}")
        if self.gradient_checkpointing_interval < 1:
            raise ConfigValueError(self, "gradient_checkpointing_interval", "must be >= 1")
        if self.gradient_checkpointing_interval != 1 and not self.gradient_checkpointing:
            raise ConfigValueError(
                self, "gradient_checkpointing_interval", "needs gradient_checkpointing = true"
            )
        if self.auto_shift and self.flow_shift is not None:
            raise ConfigValueError(self, "flow_shift", "and auto_shift are exclusive; remove one")
        if self.flow_shift is not None and not self.flow_shift > 0:
            raise ConfigValueError(self, "flow_shift", "must be > 0")
        if not self.grad_clip >= 0:
            raise ConfigValueError(self, "grad_clip", "must be >= 0 (0 disables clipping)")
        if not (self.prior_loss_weight >= 0 and math.isfinite(self.prior_loss_weight)):
            raise ConfigValueError(
                self, "prior_loss_weight", f"must be >= 0, got {self.prior_loss_weight}"
            )
        if self.regularisation_target == "base_model" and self.method == "full":
            raise ConfigValueError(
                self,
                "regularisation_target",
                "'base_model' needs an adapter to disable (method 'lora' or 'lokr'); a full "
                "fine-tune has no separate base model: use 'data'",
            )
        if self.warmup_steps < 0:
            raise ConfigValueError(self, "warmup_steps", "must be >= 0")
        for key in ("lr_end", "lr_power"):
            if getattr(self, key) is not None and self.lr_scheduler != "polynomial":
                raise ConfigValueError(
                    self,
                    key,
                    f"is only used with lr_scheduler = 'polynomial' (not {self.lr_scheduler!r})",
                )
        if (
            self.lr_scheduler == "polynomial"
            and not 0 <= self.polynomial_lr_end < self.learning_rate
        ):
            raise ConfigValueError(
                self, "lr_end", f"must be >= 0 and below the learning rate {self.learning_rate}"
            )
        if not (self.polynomial_power > 0 and math.isfinite(self.polynomial_power)):
            raise ConfigValueError(self, "lr_power", f"must be > 0, got {self.lr_power}")
        if self.warmup_steps and self.lr_scheduler == "constant":
            raise ConfigValueError(
                self,
                "warmup_steps",
                "does nothing with lr_scheduler = 'constant'; use 'constant_with_warmup'",
            )
        if self.max_consecutive_nonfinite < 1:
            raise ConfigValueError(
                self,
                "max_consecutive_nonfinite",
                f"must be >= 1, got {self.max_consecutive_nonfinite}",
            )
        if self.max_nonfinite_recoveries < 0:
            raise ConfigValueError(
                self,
                "max_nonfinite_recoveries",
                f"must be >= 0, got {self.max_nonfinite_recoveries}",
            )
        if self.optimizer in NO_EPS_OPTIMIZERS and self.eps != DEFAULT_EPS:
            # Lion (bitsandbytes, optimi) has no eps (no denominator to guard); Adafactor and
            # CAME keep their own pair of regularisation constants
            raise ConfigValueError(
                self,
                "eps",
                f"does nothing with train.optimizer = {self.optimizer!r} "
                f"({NO_EPS_OPTIMIZERS[self.optimizer]})",
            )
        if self.optimizer == "adafactor" and self.betas != (0.9, 0.999):
            raise ConfigValueError(
                self, "betas", "does nothing with train.optimizer = 'adafactor' (no momentum)"
            )
        if self.optimizer in OPTIMIZER_PACKAGES:
            what = f"train.optimizer = {self.optimizer!r}"
            missing_package(what, *OPTIMIZER_PACKAGES[self.optimizer])
        if not -(2**63) <= self.seed < 2**64:  # torch.manual_seed's range
            raise ConfigValueError(self, "seed", f"must be a 64-bit integer, got {self.seed}")

    def adapter_spec(self) -> AdapterSpec | None:
        """The adapter settings: ``[train.lora]`` / ``[train.lokr]`` as written (their defaults
        when the table is absent); None for method full. The trainer applies them with
        ``seed = train.seed``."""
        if self.method == "lora":
            return self.lora or LoraSpec()
        if self.method == "lokr":
            return self.lokr or LokrSpec()
        return None

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.method]

    @property
    def polynomial_lr_end(self) -> float:
        """The polynomial schedule's final learning rate (transformers' default 1e-7)."""
        return 1e-7 if self.lr_end is None else self.lr_end

    @property
    def polynomial_power(self) -> float:
        return 1.0 if self.lr_power is None else self.lr_power

    @property
    def shift(self) -> float:
        return 1.0 if self.flow_shift is None else self.flow_shift


@dataclasses.dataclass(frozen=True)
class ValidationSection:
    """``[validation]``: sample images and a stable evaluation loss every ``every_steps`` steps.

    ``prompt_library`` is a JSON file ``{"nickname": "prompt"}`` (SimpleTuner's
    user_prompt_library); nicknames name the image files. ``eval_datasets`` are dataset ids
    held out from training whose loss is measured at the fixed ``eval_sigmas`` with fixed noise.
    ``flow_shift`` (default: the training shift, with ``train.auto_shift`` its value at each
    validation resolution) is also the shift the exported pipeline's scheduler gets.

    Scores (:mod:`sanakit.metrics.validation`): with ``clip_model`` (a local CLIP folder) every
    round's images get their CLIP score; with ``fid_reference`` (an image folder) ``fid_images``
    extra images (the prompts cycled, seeds ``seed, seed + 1, ...``) get FID/KID against it, in
    the features of ``fid_model`` (InceptionV3 weights file) or else of ``clip_model``.
    ``best_metric`` (default: clip_score with ``clip_model``, else fid) picks the step reported
    best at the end.
    """

    prompts: tuple[str, ...] = ()
    prompt_library: str | None = None
    every_steps: int = 0  # 0 = only at the end
    sampler: Literal["dpm", "euler"] = "dpm"
    steps: int = 20
    guidance: float = 4.5
    negative_prompt: str = ""
    flow_shift: float | None = None  # default: the training shift (see the class doc)
    resolutions: tuple[str, ...] = ("1024x1024",)
    seed: int = 0
    eval_datasets: tuple[str, ...] = ()
    eval_sigmas: tuple[float, ...] = (0.1, 0.3, 0.5, 0.7, 0.9)
    clip_model: str | None = None
    fid_reference: str | None = None
    fid_images: int | None = None  # default 64 with fid_reference
    fid_model: str | None = None
    best_metric: Literal["clip_score", "fid", "kid"] | None = None

    def __post_init__(self) -> None:
        for res in self.resolutions:
            parse_resolution(res)
        self._check_scores()
        if self.every_steps < 0:
            raise ConfigValueError(self, "every_steps", f"must be >= 0, got {self.every_steps}")
        if self.steps < 1:
            raise ConfigValueError(self, "steps", f"must be >= 1, got {self.steps}")
        if self.flow_shift is not None and not self.flow_shift > 0:
            raise ConfigValueError(self, "flow_shift", "must be > 0 (1.0 means no shift)")
        if not all(0.0 < s <= 1.0 for s in self.eval_sigmas):
            raise ConfigValueError(self, "eval_sigmas", "must lie in (0, 1]")

    def _check_scores(self) -> None:
        if not (self.clip_model or self.fid_reference):
            for key in ("fid_images", "fid_model", "best_metric"):
                if getattr(self, key) is not None:
                    raise ConfigValueError(
                        self, key, "does nothing without clip_model or fid_reference"
                    )
            return
        if not (self.prompts or self.prompt_library):
            raise ConfigValueError(
                self,
                "clip_model" if self.clip_model else "fid_reference",
                "needs validation prompts (prompts or prompt_library) to score",
            )
        if not self.fid_reference:
            for key in ("fid_images", "fid_model"):
                if getattr(self, key) is not None:
                    raise ConfigValueError(self, key, "does nothing without fid_reference")
        elif not (self.fid_model or self.clip_model):
            raise ConfigValueError(
                self,
                "fid_reference",
                "needs features: fid_model (InceptionV3 weights) or clip_model",
            )
        if self.fid_images is not None and self.fid_images < 2:
            raise ConfigValueError(self, "fid_images", f"must be >= 2, got {self.fid_images}")
        needs = {
            "clip_score": self.clip_model,
            "fid": self.fid_reference,
            "kid": self.fid_reference,
        }
        if self.best_metric is not None and not needs[self.best_metric]:
            what = "clip_model" if self.best_metric == "clip_score" else "fid_reference"
            raise ConfigValueError(self, "best_metric", f"{self.best_metric!r} needs {what}")
        if self.clip_model:
            from sanakit.metrics.clip import check_clip_folder

            check_clip_folder(self.clip_model, "validation.clip_model")
        if self.fid_reference and not Path(self.fid_reference).is_dir():
            raise ConfigValueError(self, "fid_reference", f"{self.fid_reference}: no such folder")
        if self.fid_model and not Path(self.fid_model).exists():
            from sanakit.metrics.fid import INCEPTION_URL

            raise ConfigValueError(
                self, "fid_model", f"{self.fid_model}: not found; download {INCEPTION_URL}"
            )

    @property
    def scored_metric(self) -> str | None:
        """The metric the best step is chosen by (see the class doc); None without scores."""
        if self.best_metric:
            return self.best_metric
        return "clip_score" if self.clip_model else ("fid" if self.fid_reference else None)

    def prompt_items(self) -> list[tuple[str, str]]:
        """(nickname, prompt) pairs: inline prompts as prompt-NN, then the library."""
        items = [(f"prompt-{i:02d}", p) for i, p in enumerate(self.prompts)]
        if self.prompt_library:
            items += load_prompt_library(self.prompt_library)
        return items


@dataclasses.dataclass(frozen=True)
class OutputSection:
    """``[output]``: where checkpoints, logs, validation images and final weights go."""

    dir: str = "output"
    checkpoint_every: int = 500
    keep_last: int = 3
    log_with: Literal["tensorboard", "wandb", "none"] = "tensorboard"
    export_dtype: Literal["bf16", "fp32"] = "bf16"

    def __post_init__(self) -> None:
        for key in ("checkpoint_every", "keep_last"):
            if getattr(self, key) < 1:
                raise ConfigValueError(self, key, f"must be >= 1, got {getattr(self, key)}")


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """The whole ``sanakit train`` configuration file."""

    model: ModelSection
    data: DataConfig
    train: TrainSection
    validation: ValidationSection = dataclasses.field(default_factory=lambda: ValidationSection())
    output: OutputSection = dataclasses.field(default_factory=lambda: OutputSection())
    distill: DistillSection | None = None  # Sana-Sprint distillation (`sanakit distill` only)

    def __post_init__(self) -> None:
        ids = {ds.id for ds in self.data.datasets}
        for name in self.validation.eval_datasets:
            if name not in ids:
                raise ConfigValueError(
                    self, "validation.eval_datasets", f"names unknown dataset {name!r}"
                )
        if not [ds for ds in self.data.active if ds.id not in self.validation.eval_datasets]:
            raise ConfigValueError(
                self,
                "validation.eval_datasets",
                "holds out every dataset; nothing left to train on",
            )
        t = self.train
        if self.model.quantize != "none" and t.method == "full":
            raise ConfigValueError(
                self,
                "model.quantize",
                "needs train.method 'lora' or 'lokr': a full fine-tune updates the base weights, "
                "which a quantised model cannot train",
            )
        if not any(ds.is_regularisation_data for ds in self.data.active):
            for key, default in (("prior_loss_weight", 1.0), ("regularisation_target", "data")):
                if getattr(t, key) != default:
                    raise ConfigValueError(
                        self,
                        f"train.{key}",
                        "does nothing: no active dataset sets is_regularisation_data = true",
                    )


def parse_resolution(text: str) -> tuple[int, int]:
    """'1280x768' (WIDTHxHEIGHT, as SimpleTuner writes it) -> (height, width) = (768, 1280)."""
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise SanakitError(
            f"validation.resolutions: {text!r} must look like 1024x1024 (width x height)"
        ) from None
    if width % 32 or height % 32 or width <= 0 or height <= 0:
        raise SanakitError(f"validation.resolutions: {text!r} must be positive multiples of 32")
    return height, width


def load_prompt_library(path: str) -> list[tuple[str, str]]:
    """A JSON object ``{"nickname": "prompt"}`` -> [(nickname, prompt)]."""
    data = load_config_file(path) if path.endswith(".json") else None
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise SanakitError(f"{path}: a prompt library must be a JSON object of nickname -> prompt")
    return list(data.items())


def load_run_config(path: str | Path, overrides: tuple[str, ...] = ()) -> RunConfig:
    """Read a TOML/JSON config file, apply ``--set`` overrides and validate it strictly
    (:func:`run_config_from_dict`)."""
    folder = os.path.dirname(os.path.abspath(path))
    raw = absolute_paths(load_config_file(path), folder)
    # the paths still relative after the overrides are --set values: the current directory's
    raw = absolute_paths(apply_overrides(raw, list(overrides)), os.getcwd())
    # and the defaults of keys left out belong to the file's folder too
    return run_config_from_dict(absolute_paths(to_dict(from_dict(RunConfig, raw)), folder))


def run_config_from_dict(raw: dict[str, Any]) -> RunConfig:
    """The validated :class:`RunConfig` of a plain dict. Besides the key/type/value checks, the
    folders the run writes (``output.dir``, ``data.cache_dir``) must not be files, so such a
    mistake stops the run before any model is loaded. Model folders are checked when the parts
    are loaded (:func:`sanakit.train.components.check_model_sources`): a config may be written
    before its model is downloaded."""
    config = from_dict(RunConfig, raw)
    check_output_folder(config.output.dir, "output.dir")
    check_output_folder(config.data.cache_dir, "data.cache_dir")
    return config


def run_config_to_dict(config: RunConfig) -> dict[str, Any]:
    return to_dict(config)


# The keys that hold a file or folder path ("[]": every item of the list).
PATH_KEYS: tuple[str, ...] = (
    "model.base",
    "model.transformer",
    "model.vae",
    "model.text_encoder",
    "data.cache_dir",
    "data.datasets[].path",
    "validation.prompt_library",
    "validation.clip_model",
    "validation.fid_reference",
    "validation.fid_model",
    "output.dir",
    "distill.teacher",
)


def _join(base: str | Path, value: str) -> str:
    path = os.path.expanduser(value)
    return path if os.path.isabs(path) else os.path.normpath(os.path.join(base, path))


def absolute_paths(raw: dict[str, Any], base: str | Path) -> dict[str, Any]:
    """A copy of the config dict ``raw`` whose relative paths (:data:`PATH_KEYS`, ``~``
    expanded) are joined to the folder ``base``. Absolute paths, absent keys, empty strings and
    values of the wrong type (the strict loader reports those) are left as they are."""
    out = copy.deepcopy(raw)
    for key in PATH_KEYS:
        *parents, name = key.split(".")
        tables: list[Any] = [out]
        for part in parents:
            step = part.removesuffix("[]")
            tables = [t.get(step) for t in tables if isinstance(t, dict)]
            if part.endswith("[]"):
                tables = [item for t in tables if isinstance(t, list) for item in t]
        for table in tables:
            if isinstance(table, dict) and isinstance(table.get(name), str) and table[name]:
                table[name] = _join(base, table[name])
    return out


def with_absolute_paths(config: RunConfig, base: str | Path) -> RunConfig:
    """``config`` with every relative path, including defaults, joined to the folder ``base``."""
    return run_config_from_dict(absolute_paths(to_dict(config), base))
