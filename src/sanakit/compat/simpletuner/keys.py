"""Tables of SimpleTuner keys sanakit knows but does not map to a setting.

- ``IGNORED``: harmless whatever the value (speed, memory, file-keeping or naming options); the
  reason is printed in the mapping.
- ``OFF_ONLY``: harmless while off (false/0/empty/null, or the listed off values); when on they are
  unsupported and the detail says what to do instead.
- ``OTHER_OPTIONS``: further documented SimpleTuner options without a sanakit equivalent: off ->
  ignored, on -> unsupported. They are listed so that a real option is told apart from a typo.

The keys that *are* mapped are handled in :mod:`sanakit.compat.simpletuner.trainer`,
:mod:`sanakit.compat.simpletuner.datasets` and :mod:`sanakit.compat.simpletuner.lycoris`.
"""

from __future__ import annotations

from sanakit.compat.simpletuner.common import words

_CACHE = "sanakit always caches latents and text embeddings before training (content-keyed)"
_NO_QUANT = (
    "sanakit quantises frozen weights only (model.quantize), not activations; compute follows "
    "mixed_precision"
)

IGNORED: dict[str, str] = {
    "vae_batch_size": "only sets how many images SimpleTuner encodes at once (speed/memory)",
    "write_batch_size": "only sets how many cache entries SimpleTuner writes at once",
    "text_encoder_batch_size": "only sets how many captions are encoded at once (speed/memory)",
    "aspect_bucket_rounding": "SimpleTuner's bucket-key rounding; sanakit uses Sana's aspect table",
    "aspect_bucket_alignment": "SimpleTuner overrides it to 64 px for Sana whatever the value "
    "(helpers/models/sana/model.py), so it changes nothing there; sanakit rounds bucket sides "
    "to multiples of 32 px (the DC-AE factor), not 64",
    "disable_bucket_pruning": "sanakit never drops small buckets; it merges them into the nearest "
    "aspect",
    "compress_disk_cache": "a SimpleTuner cache-format option; sanakit's cache has its own format",
    "delete_problematic_images": "sanakit never deletes files: bad images are skipped and listed "
    "in cache_report.json",
    "delete_unwanted_images": "sanakit never deletes files: filtered images are skipped and "
    "listed in cache_report.json",
    "disable_benchmark": "SimpleTuner's base-model benchmark before training; no effect on "
    "training",
    "validation_torch_compile": "only compiles the validation pipeline (speed)",
    "tracker_project_name": "naming only; sanakit logs under project 'sanakit' in output.dir/logs",
    "tracker_run_name": "naming only; sanakit logs under project 'sanakit' in output.dir/logs",
    "hub_model_id": "only names the Hub repository; sanakit does not upload",
    "vae_enable_tiling": "a memory option of the VAE; sanakit tiles the DC-AE itself",
    "vae_enable_slicing": "a memory option of the VAE",
    "vae_cache_disable": _CACHE,
    "vae_cache_ondemand": _CACHE,
    "text_cache_disable": _CACHE,
    "text_cache_ondemand": _CACHE,
    "vae_cache_scan_behaviour": _CACHE,
    "skip_file_discovery": "sanakit re-reads only changed files (by size and modification time)",
    "preserve_data_backend_cache": "sanakit re-reads only changed files (by size and "
    "modification time)",
    "override_dataset_config": "sanakit keys its cache by content and settings, so changed "
    "dataset settings are always picked up",
    "metadata_update_interval": "sanakit lists the dataset once per run",
    "validation_preview_steps": "only used by validation_preview",
    "offload_during_startup": "a memory option while caching",
    "logging_dir": "sanakit logs to output.dir/logs",
    "attention_mechanism": "sanakit computes Sana's linear attention itself (fp32 accumulation)",
    "fuse_qkv_projections": "a speed option",
    "gradient_checkpointing_backend": "a memory option; sanakit uses torch.utils.checkpoint",
    "trust_remote_code": "sanakit loads no remote code",
    "num_processes": "launch sanakit with `accelerate launch` to choose the process count",
    "dataloader_prefetch": "a speed option (sanakit: data.num_workers)",
    "dataloader_prefetch_qlen": "a speed option (sanakit: data.num_workers)",
    "lr_end": "only used by SimpleTuner's polynomial/cosine/sine schedules",
    "lr_num_cycles": "only used by SimpleTuner's cosine_with_restarts schedule",
    "lr_power": "only used by SimpleTuner's polynomial schedule",
    "strict_epoch_limit": "sanakit stops at train.max_steps or train.epochs, whichever is set",
    "validation_image_format": "sanakit writes PNG validation images",
    "validation_image_quality": "sanakit writes PNG validation images",
    "max_workers": "a speed option",
    "read_batch_size": "a speed option",
    "image_processing_batch_size": "a speed option",
    "allow_tf32": "a speed option of the GPU matmul precision",
    "disable_tf32": "a speed option of the GPU matmul precision",
    "data_backend_sampling": "SimpleTuner uses up every dataset once per epoch whatever the "
    "weights; sanakit's default weights (images x (1 + repeats)) give the same per-epoch mix",
}

# key -> (extra off values besides false/0/empty/null, what to do when it is on)
OFF_ONLY: dict[str, tuple[tuple[object, ...], str]] = {
    "push_to_hub": ((), "sanakit does not upload; run `huggingface-cli upload` on output.dir"),
    "push_checkpoints_to_hub": ((), "sanakit does not upload checkpoints"),
    "push_to_hub_background": ((), "sanakit does not upload"),
    "validation_preview": ((), "sanakit writes only the final validation images (no previews)"),
    "validation_prompt_library": (
        (),
        "SimpleTuner's built-in prompt library (its helpers/prompts.py, validated in addition to "
        "validation_prompt) is not shipped with sanakit; list those prompts in a "
        "user_prompt_library file (-> validation.prompt_library)",
    ),
    "validation_guidance_rescale": ((), "guidance rescale is not implemented in sanakit"),
    "validation_guidance_real": ((1, 1.0), "sanakit's validation uses plain CFG"),
    "validation_disable_unconditional": ((), "sanakit's validation always uses CFG"),
    "validation_lycoris_strength": ((1, 1.0), "sanakit validates adapters at full strength"),
    "validation_using_datasets": ((), "sanakit validates from prompts only"),
    "eval_steps_interval": ((), "sanakit measures the eval loss every validation.every_steps"),
    "init_lora": ((), "start from an existing adapter is not supported by sanakit train"),
    "lora_init_type": (("default",), "sanakit uses peft's default LoRA init"),
    "use_dora": ((), "sanakit has no DoRA"),
    "controlnet": ((), "sanakit trains text-to-image only"),
    "train_text_encoder": ((), "sanakit keeps the text encoder frozen"),
    "noise_offset": ((), "flow-matching noise offset is not implemented"),
    "noise_offset_probability": ((), "flow-matching noise offset is not implemented"),
    "input_perturbation": ((), "input perturbation is not implemented"),
    "snr_gamma": ((), "SNR weighting is for epsilon models; sanakit's flow loss is unweighted"),
    "use_soft_min_snr": ((), "SNR weighting is for epsilon models"),
    "loss_type": (("l2", "mse"), "sanakit trains with the L2 (MSE) flow loss only"),
    "flow_use_beta_schedule": ((), "use train.timestep_sampling in the sanakit config"),
    "flow_sigmoid_scale": ((1, 1.0), "set train.logit_std in the sanakit config"),
    "masked_loss_probability": ((1, 1.0), "sanakit applies loss masks always when masks = true"),
    "caption_dropout_probability_override": ((), "set caption_dropout per dataset"),
    "ema_foreach_disable": ((), "a speed option of SimpleTuner's EMA"),
    "ema_warmup_steps": ((), "sanakit's EMA has no warm-up copy phase"),
    "fused_optimizer": ((), "sanakit has no fused optimizer step"),
    "optimizer_cpu_offload_method": (("none",), "sanakit keeps the optimizer on the device"),
    "optimizer_offload_gradients": ((), "sanakit keeps the optimizer on the device"),
    "enable_group_offload": ((), "sanakit does not offload transformer blocks"),
    "ramtorch": ((), "sanakit does not offload weights to CPU RAM"),
    "musubi_blocks_to_swap": ((), "sanakit does not swap transformer blocks"),
    "quantize_activations": ((), _NO_QUANT),
    "use_fsdp": ((), "launch sanakit with accelerate's FSDP config instead"),
    "deepspeed_config": ((), "launch sanakit with accelerate's DeepSpeed config instead"),
    "scheduled_sampling_max_step_offset": ((), "scheduled sampling is not implemented"),
    "webhook_config": ((), "sanakit has no webhooks"),
    "allow_dataset_oversubscription": (
        (),
        "sanakit reports the repeats a too-small dataset needs instead; set repeats",
    ),
    "refiner_training": ((), "sanakit trains full-range models only"),
    "distillation_method": ((), "use `sanakit distill` for Sana-Sprint distillation"),
    "layersync_enabled": ((), "not implemented"),
    "crepa_enabled": ((), "not implemented"),
    "urepa_enabled": ((), "not implemented"),
    "mixflow_enabled": ((), "not implemented"),
    "tread_config": ((), "TREAD routing is not implemented"),
}

# Further SimpleTuner options (documented in its OPTIONS.md / examples): off -> ignored,
# on -> unsupported with a generic message.
OTHER_OPTIONS: frozenset[str] = words(
    """
    adam_beta1 adam_beta2 adam_epsilon adam_weight_decay checkpoint_epoch_interval
    checkpointing_rolling_steps checkpointing_use_tempdir conditioning_multidataset_sampling
    delete_model_after_load disable_accelerator disable_multiline_split enable_xformers_memory_efficient_attention
    framerate freeze_encoder freeze_encoder_after freeze_encoder_before ignore_final_epochs
    keep_vae_loaded local_rank max_grounding_entities model_card_note model_card_safe_for_work
    modelspec_comment offload_during_save peft_lora_mode post_checkpoint_script
    post_upload_script prediction_type pretrained_t5_model_name_or_path pretrained_gemma_model_name_or_path
    prodigy_steps publishing_config quantization_config rescale_betas_zero_snr revision
    sana_complex_human_instruction save_text_encoder skip_checkpoint_save slider_lora_target
    t5_padding text_encoder_limit timestep_bias_begin timestep_bias_end timestep_bias_multiplier
    timestep_bias_portion timestep_bias_strategy tokenizer_max_length training_scheduler_timestep_spacing
    inference_scheduler_timestep_spacing twinflow_enabled use_stableadamw user_prompt_library_path
    validation_adapter_path validation_adapter_config validation_adapter_name validation_adapter_mode
    validation_adapter_strength validation_method validation_external_script validation_external_background
    validation_noise_scheduler validation_num_video_frames validation_on_startup validation_randomize
    validation_input validation_multigpu variant vae_dtype vae_path pretrained_vae_model_name_or_path
    pretrained_transformer_model_name_or_path pretrained_transformer_subfolder pretrained_unet_model_name_or_path
    disk_low_action disk_low_threshold disk_low_script delete_invalid_checkpoints
    sdxl_validation_pipeline_mode gradient_checkpointing_offload_attention
    """
)
