"""config.json keys of the training loop -> ``[train]``: run length, optimizer, learning-rate
schedule, gradient clipping, timestep shift, EMA, batch size, precision and checkpointing.
(Functions of a :class:`~sanakit.compat.simpletuner.common.KeyReader`; see :mod:`.trainer`.)
"""

from __future__ import annotations

from typing import Any

from sanakit.compat.simpletuner.common import (
    ABSENT,
    KeyReader,
    as_bool,
    as_float,
    as_int,
    as_str,
    is_off,
)
from sanakit.errors import SanakitError

_BNB32 = (
    "bitsandbytes' 32-bit {algo}; sanakit runs {ours} (the same update with 32-bit state{paged})"
)
_PAGED = ", the paged state not needed"
# SimpleTuner name -> (sanakit optimizer, SimpleTuner's default settings for it, note)
OPTIMIZERS: dict[str, tuple[str, dict[str, Any], str]] = {
    "optimi-adamw": (
        "optimi-adamw",
        {"betas": [0.9, 0.99], "eps": 1e-6, "weight_decay": 0.0},
        "torch-optimi AdamW with SimpleTuner's settings",
    ),
    "adamw_bf16": (
        "adamw",
        {"betas": [0.9, 0.999], "eps": 1e-6, "weight_decay": 1e-2},
        "SimpleTuner's AdamW for pure-bf16 weights (stochastic rounding); sanakit runs torch "
        "AdamW with the same settings on fp32 weights under mixed-precision autocast",
    ),
    "torch-adamw": ("adamw", {"betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 1e-2}, ""),
    "adamw": ("adamw", {"betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 1e-2}, "torch AdamW"),
    "bnb-adamw8bit": ("adamw8bit", {"betas": [0.9, 0.999], "eps": 1e-6, "weight_decay": 1e-2}, ""),
    "bnb-adamw8bit-paged": (
        "paged_adamw8bit",
        {"betas": [0.9, 0.999], "eps": 1e-6, "weight_decay": 1e-2},
        "",
    ),
    "bnb-lion8bit": ("lion8bit", {"betas": [0.9, 0.99], "weight_decay": 0.0}, ""),
    "bnb-lion8bit-paged": ("paged_lion8bit", {"betas": [0.9, 0.99], "weight_decay": 0.0}, ""),
    "bnb-adamw": (
        "adamw",
        {"betas": [0.9, 0.999], "eps": 1e-6, "weight_decay": 1e-2},
        _BNB32.format(algo="AdamW", ours="torch AdamW", paged=""),
    ),
    "bnb-adamw-paged": (
        "adamw",
        {"betas": [0.9, 0.999], "eps": 1e-6, "weight_decay": 1e-2},
        _BNB32.format(algo="AdamW", ours="torch AdamW", paged=_PAGED),
    ),
    "bnb-lion": (
        "optimi-lion",
        {"betas": [0.9, 0.99], "weight_decay": 0.0},
        _BNB32.format(algo="Lion", ours="torch-optimi's Lion", paged=""),
    ),
    "bnb-lion-paged": (
        "optimi-lion",
        {"betas": [0.9, 0.99], "weight_decay": 0.0},
        _BNB32.format(algo="Lion", ours="torch-optimi's Lion", paged=_PAGED),
    ),
    "optimi-lion": (
        "optimi-lion",
        {"betas": [0.9, 0.99], "weight_decay": 0.0},
        "torch-optimi Lion with SimpleTuner's settings (its kahan_sum only acts on bf16 weights; "
        "sanakit trains fp32 weights under autocast)",
    ),
}
# SimpleTuner's defaults for its polynomial schedule (field registry: --lr_end 4e-7,
# --lr_power 0.8); it calls transformers' get_polynomial_decay_schedule_with_warmup, as sanakit
_POLY_DEFAULTS = {"lr_end": 4e-7, "lr_power": 0.8}
_SHIFT_NOTE = (
    "sanakit really shifts the training timestep distribution (SimpleTuner ignores this for "
    "Sana and uses the scheduler's own table)"
)


# ------------------------------------------------------------------ schedule
def run_length(k: KeyReader) -> None:
    """max_train_steps / num_train_epochs (0 = unset) -> train.max_steps / train.epochs."""
    steps, epochs = k.take("max_train_steps"), k.take("num_train_epochs")
    steps = None if steps is ABSENT or is_off(steps) else as_int(k.file, "max_train_steps", steps)
    epochs = (
        None if epochs is ABSENT or is_off(epochs) else as_int(k.file, "num_train_epochs", epochs)
    )
    if steps is not None:
        k.put("max_train_steps", "train.max_steps", steps)
        if epochs is not None:
            k.ctx.unsupported(
                k.file,
                "num_train_epochs",
                epochs,
                "SimpleTuner stops at "
                "whichever limit comes first; sanakit takes one: set "
                "num_train_epochs to 0",
            )
        elif "num_train_epochs" in k.raw:
            k.ctx.ignored("num_train_epochs", k.raw["num_train_epochs"], "0: steps rule")
        return
    if epochs is None and "num_train_epochs" in k.raw:
        raise SanakitError(f"{k.file}: set max_train_steps or num_train_epochs above 0")
    if "max_train_steps" in k.raw:
        k.ctx.ignored("max_train_steps", k.raw["max_train_steps"], "0: epochs rule")
    k.put(
        "num_train_epochs",
        "train.epochs",
        epochs or 1,
        "" if epochs else "SimpleTuner's default: 1 epoch",
    )


def optimizer(k: KeyReader) -> None:
    """optimizer (+ SimpleTuner's betas/eps/weight_decay for it), optimizer_config,
    learning_rate, lr_scheduler, lr_warmup_steps, then gradient clipping."""
    name = k.take("optimizer")
    if name is not ABSENT:
        if name not in OPTIMIZERS:
            ours = ", ".join(sorted(OPTIMIZERS))
            k.ctx.unsupported(k.file, "optimizer", name, f"sanakit maps {ours}")
        else:
            target, settings, note = OPTIMIZERS[name]
            k.put("optimizer", "train.optimizer", target, note)
            for key, value in settings.items():
                k.assign(f"train.{key}", value)
            text = ", ".join(f"{key}={value}" for key, value in settings.items())
            k.ctx.mapped(
                "optimizer",
                name,
                "train." + "/".join(settings),
                f"SimpleTuner's defaults for {name}: {text}",
            )
    config = k.take("optimizer_config")
    if config is not ABSENT and not is_off(config):
        for item in as_str(k.file, "optimizer_config", config).split(","):
            key, _, value = item.partition("=")
            key = key.strip()
            if key in ("weight_decay", "eps"):
                k.assign(f"train.{key}", as_float(k.file, f"optimizer_config.{key}", value))
                k.ctx.mapped(f"optimizer_config.{key}", value, f"train.{key}")
            else:
                k.ctx.unsupported(
                    k.file,
                    f"optimizer_config.{key}",
                    value,
                    "sanakit reads weight_decay and eps only",
                )
    elif config is not ABSENT:
        k.ctx.ignored("optimizer_config", config, "empty")
    k.direct("learning_rate", "train.lr", as_float)
    warmup = k.direct("lr_warmup_steps", "train.warmup_steps", as_int)
    schedule = k.take("lr_scheduler")
    if schedule is ABSENT:
        if warmup not in (ABSENT, 0):
            k.put(
                "lr_scheduler",
                "train.lr_scheduler",
                "constant_with_warmup",
                "SimpleTuner's default",
            )
    elif schedule == "constant" and warmup not in (ABSENT, 0):
        k.put(
            "lr_scheduler",
            "train.lr_scheduler",
            "constant_with_warmup",
            "SimpleTuner turns constant + lr_warmup_steps into constant_with_warmup",
        )
    elif schedule in ("constant", "constant_with_warmup", "linear"):
        k.put("lr_scheduler", "train.lr_scheduler", schedule, "same schedule")
    elif schedule == "polynomial":
        k.put("lr_scheduler", "train.lr_scheduler", schedule, "same schedule (transformers')")
        for key, default in _POLY_DEFAULTS.items():
            value = k.take(key)
            if value is ABSENT:
                k.put(key, f"train.{key}", default, f"SimpleTuner's default {default}")
            else:
                k.put(key, f"train.{key}", as_float(k.file, key, value))
    else:
        detail = (
            "SimpleTuner's cosine is a restarting cosine with period lr_warmup_steps"
            if schedule == "cosine"
            else "no sanakit equivalent"
        )
        k.ctx.unsupported(
            k.file,
            "lr_scheduler",
            schedule,
            f"{detail}; use constant, constant_with_warmup, linear or polynomial",
        )
        if warmup not in (ABSENT, 0):  # dropped: keep the warm-up with a constant rate after it
            k.assign("train.lr_scheduler", "constant_with_warmup")
    clip(k)


def clip(k: KeyReader) -> None:
    """max_grad_norm + grad_clip_method -> train.grad_clip + train.grad_clip_method, with
    SimpleTuner's defaults when left out: method "value" (each gradient element clamped to
    [-max_grad_norm, max_grad_norm]) at 2.0 (its cmd_args.py: ``--max_grad_norm`` default 2.0,
    ``--grad_clip_method`` default "value"). SimpleTuner clips only when max_grad_norm > 0."""
    norm, method = k.take("max_grad_norm"), k.take("grad_clip_method")
    how = "value" if method is ABSENT else method
    if how not in ("value", "norm"):
        raise SanakitError(f"{k.file}: grad_clip_method = {method!r}: use 'value' or 'norm'")
    notes = {
        "value": "each gradient element clamped to [-max_grad_norm, max_grad_norm]",
        "norm": "global-norm clipping",
    }
    note = notes[how] + ("" if method is not ABSENT else " (SimpleTuner's default method)")
    k.put("grad_clip_method", "train.grad_clip_method", how, note)
    if norm is ABSENT:
        k.put("max_grad_norm", "train.grad_clip", 2.0, "SimpleTuner's default 2.0")
        return
    value = as_float(k.file, "max_grad_norm", norm)
    note = "" if value > 0 else "no clipping (SimpleTuner clips only when max_grad_norm > 0)"
    k.put("max_grad_norm", "train.grad_clip", max(value, 0.0), note)


def flow(k: KeyReader) -> None:
    """Timestep options: sigma' = s*sigma / (1 + (s-1)*sigma) with s = flow_schedule_shift, or
    s = exp(mu(tokens)) with flow_schedule_auto_shift; uniform sampling."""
    auto = k.take("flow_schedule_auto_shift")
    auto = False if auto is ABSENT else as_bool(k.file, "flow_schedule_auto_shift", auto)
    if auto:
        k.put(
            "flow_schedule_auto_shift",
            "train.auto_shift",
            True,
            _SHIFT_NOTE + "; shift = exp(mu), mu linear in the latent token count",
        )
    elif "flow_schedule_auto_shift" in k.raw:
        k.ctx.ignored("flow_schedule_auto_shift", k.raw["flow_schedule_auto_shift"], "off")
    shift = k.take("flow_schedule_shift")
    if shift is not ABSENT and shift is not None:
        if auto:
            k.ctx.ignored("flow_schedule_shift", shift, "flow_schedule_auto_shift wins")
        else:
            value = as_float(k.file, "flow_schedule_shift", shift)
            k.put("flow_schedule_shift", "train.flow_shift", value, _SHIFT_NOTE)
    uniform = k.take("flow_use_uniform_schedule")
    if uniform is not ABSENT:
        if as_bool(k.file, "flow_use_uniform_schedule", uniform):
            k.put(
                "flow_use_uniform_schedule",
                "train.timestep_sampling",
                "uniform",
                _SHIFT_NOTE.replace("shifts", "changes"),
            )
        else:
            k.ctx.ignored("flow_use_uniform_schedule", uniform, "off: logit-normal")


def ema(k: KeyReader) -> None:
    """use_ema and its settings -> [train.ema] (shadow <- d*shadow + (1-d)*w)."""
    on = k.take("use_ema")
    on = False if on is ABSENT else as_bool(k.file, "use_ema", on)
    keys = ("ema_decay", "ema_update_interval", "ema_cpu_only", "ema_device", "ema_validation")
    if not on:
        for key in keys:
            if k.take(key) is not ABSENT:
                k.ctx.ignored(key, k.raw[key], "use_ema is off")
        if "use_ema" in k.raw:
            k.ctx.ignored("use_ema", k.raw["use_ema"], "off")
        return
    k.assign("train.ema", {})
    k.ctx.mapped("use_ema", k.raw["use_ema"], "train.ema", "EMA on")
    if k.direct("ema_decay", "train.ema.decay", as_float) is ABSENT:
        k.put(
            "ema_decay",
            "train.ema.decay",
            0.995,
            "SimpleTuner's default "
            "0.995; SimpleTuner ramps it as min(decay, (1+n)/(10+n)), sanakit "
            "uses it from the first step",
        )
    k.direct("ema_update_interval", "train.ema.update_every", as_int)
    for key in ("ema_cpu_only", "ema_device"):
        value = k.take(key)
        if value is not ABSENT:
            if key == "ema_device":
                cpu = str(value).lower() == "cpu"
            else:
                cpu = as_bool(k.file, key, value)
            ema = k.tables["train"]["ema"]
            ema["on_cpu"] = cpu or ema.get("on_cpu", False)
            k.ctx.mapped(key, value, "train.ema.on_cpu")
    mode = k.take("ema_validation")
    if mode is not ABSENT:
        if mode == "comparison":
            k.ctx.ignored(
                "ema_validation",
                mode,
                "sanakit validates both the trained and the EMA weights when EMA is on",
            )
        else:
            k.ctx.unsupported(
                k.file,
                "ema_validation",
                mode,
                "sanakit validates both the trained and the EMA weights (comparison)",
            )


def simple(k: KeyReader) -> None:
    """Batch size, accumulation, precision and gradient checkpointing (+ interval)."""
    k.direct("train_batch_size", "train.batch_size", as_int)
    k.direct("gradient_accumulation_steps", "train.gradient_accumulation", as_int)
    precision = k.take("mixed_precision")
    if precision is not ABSENT:
        if precision in ("bf16", "fp16", "no"):
            k.put("mixed_precision", "train.mixed_precision", precision)
        else:
            k.ctx.unsupported(k.file, "mixed_precision", precision, "use bf16, fp16 or no")
    on = k.direct("gradient_checkpointing", "train.gradient_checkpointing", as_bool)
    interval = k.take("gradient_checkpointing_interval")
    if interval is ABSENT:
        return
    if is_off(interval) or as_int(k.file, "gradient_checkpointing_interval", interval) == 1:
        k.ctx.ignored("gradient_checkpointing_interval", interval, "every block (default)")
    elif on is not True:
        k.ctx.ignored(
            "gradient_checkpointing_interval",
            interval,
            "no effect without gradient_checkpointing",
        )
    else:
        k.put(
            "gradient_checkpointing_interval",
            "train.gradient_checkpointing_interval",
            as_int(k.file, "gradient_checkpointing_interval", interval),
            "checkpoint every n-th block",
        )
