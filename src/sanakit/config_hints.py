"""Words for an unknown config key: the sanakit key of a SimpleTuner name ("that is
SimpleTuner's name; here it is train.lr"), else the nearest valid key, else the valid keys."""

from __future__ import annotations

import difflib
from collections.abc import Sequence

# SimpleTuner config.json / multidatabackend.json names -> the sanakit key that does the same
# (`sanakit import-simpletuner` converts whole files; this table only words the error of a key
# written by hand). Keys SimpleTuner spells like sanakit but at the top level are included so
# the message says which table they belong in.
SIMPLETUNER_NAMES: dict[str, str] = {
    "pretrained_model_name_or_path": "model.base",
    "learning_rate": "train.lr",
    "num_train_epochs": "train.epochs",
    "max_train_steps": "train.max_steps",
    "train_batch_size": "train.batch_size",
    "gradient_accumulation_steps": "train.gradient_accumulation",
    "lr_warmup_steps": "train.warmup_steps",
    "max_grad_norm": "train.grad_clip",
    "grad_clip_method": "train.grad_clip_method",
    "adam_beta1": "train.betas",
    "adam_beta2": "train.betas",
    "adam_epsilon": "train.eps",
    "adam_weight_decay": "train.weight_decay",
    "flow_schedule_shift": "train.flow_shift",
    "flow_schedule_auto_shift": "train.auto_shift",
    "model_type": "train.method",
    "lora_type": "train.method",
    "lora_rank": "train.lora.rank",
    "lora_alpha": "train.lora.alpha",
    "lora_dropout": "train.lora.dropout",
    "lycoris_config": "train.lokr",
    "use_ema": "train.ema",
    "ema_decay": "train.ema.decay",
    "ema_update_interval": "train.ema.update_every",
    "ema_cpu_only": "train.ema.on_cpu",
    "optimizer": "train.optimizer",
    "lr_scheduler": "train.lr_scheduler",
    "mixed_precision": "train.mixed_precision",
    "gradient_checkpointing": "train.gradient_checkpointing",
    "gradient_checkpointing_interval": "train.gradient_checkpointing_interval",
    "validation_prompt": "validation.prompts",
    "user_prompt_library": "validation.prompt_library",
    "validation_steps": "validation.every_steps",
    "validation_step_interval": "validation.every_steps",
    "validation_num_inference_steps": "validation.steps",
    "validation_guidance": "validation.guidance",
    "validation_negative_prompt": "validation.negative_prompt",
    "validation_resolution": "validation.resolutions",
    "validation_seed": "validation.seed",
    "evaluation_type": "validation.clip_model",
    "pretrained_evaluation_model_name_or_path": "validation.clip_model",
    "eval_dataset_id": "validation.eval_datasets",
    "output_dir": "output.dir",
    "checkpointing_steps": "output.checkpoint_every",
    "checkpoint_step_interval": "output.checkpoint_every",
    "checkpoints_total_limit": "output.keep_last",
    "report_to": "output.log_with",
    "data_backend_config": "data.datasets",
    "cache_dir_vae": "data.cache_dir",
    "instance_data_dir": "data.datasets[].path",
    "caption_dropout_probability": "data.datasets[].caption_dropout",
}


def unknown_key_hint(name: str, fields: Sequence[str]) -> str:
    """The part of an unknown-key message after the key: the sanakit key of a SimpleTuner
    name, else the nearest valid key, else the valid keys."""
    target = SIMPLETUNER_NAMES.get(name)
    if target is not None:
        if target.rsplit(".", 1)[-1] == name:
            return f"it belongs in [{target.rsplit('.', 1)[0]}]: {target}"
        return f"that is SimpleTuner's name; here it is {target}"
    near = difflib.get_close_matches(name, list(fields), n=1)
    return f"did you mean {near[0]!r}?" if near else f"valid keys: {', '.join(fields)}"
