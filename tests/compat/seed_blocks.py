"""The JSON blocks of the SimpleTuner Sana quickstart seed (shared/seeds/001_f8117b6cf920ad95.txt),
verbatim, plus the config.json the quickstart describes key by key and SimpleTuner's own example
files that the quickstart tells users to copy (config/config.json.example, the Sana LyCORIS
example). Tests write them into a SimpleTuner-like tree: config/, datasets/, models/.
"""

# "The example config file config/user_prompt_library.json.example contains the following format"
PROMPT_LIBRARY_FORMAT = r"""{
  "nickname": "the prompt goes here",
  "another_nickname": "another prompt goes here"
}
"""

# "add it to TRAINER_EXTRA_ARGS by adding a new line at the end of config.json"
PROMPT_LIBRARY_LINE = r"""  "--user_prompt_library": "config/user_prompt_library.json",
"""

# the 15-prompt library of the quickstart
PROMPT_LIBRARY = r"""{
    "anime_<token>": "a breathtaking anime-style portrait of <token>, capturing her essence with vibrant colors and expressive features",
    "chef_<token>": "a high-quality, detailed photograph of <token> as a sous-chef, immersed in the art of culinary creation",
    "just_<token>": "a lifelike and intimate portrait of <token>, showcasing her unique personality and charm",
    "cinematic_<token>": "a cinematic, visually stunning photo of <token>, emphasizing her dramatic and captivating presence",
    "elegant_<token>": "an elegant and timeless portrait of <token>, exuding grace and sophistication",
    "adventurous_<token>": "a dynamic and adventurous photo of <token>, captured in an exciting, action-filled moment",
    "mysterious_<token>": "a mysterious and enigmatic portrait of <token>, shrouded in shadows and intrigue",
    "vintage_<token>": "a vintage-style portrait of <token>, evoking the charm and nostalgia of a bygone era",
    "artistic_<token>": "an artistic and abstract representation of <token>, blending creativity with visual storytelling",
    "futuristic_<token>": "a futuristic and cutting-edge portrayal of <token>, set against a backdrop of advanced technology",
    "woman": "a beautifully crafted portrait of a woman, highlighting her natural beauty and unique features",
    "man": "a powerful and striking portrait of a man, capturing his strength and character",
    "boy": "a playful and spirited portrait of a boy, capturing youthful energy and innocence",
    "girl": "a charming and vibrant portrait of a girl, emphasizing her bright personality and joy",
    "family": "a heartwarming and cohesive family portrait, showcasing the bonds and connections between loved ones"
}
"""

# "Create a --data_backend_config (config/multidatabackend.json) document containing this"
MULTIDATABACKEND = r"""[
  {
    "id": "pseudo-camera-10k-sana",
    "type": "local",
    "crop": true,
    "crop_aspect": "square",
    "crop_style": "center",
    "resolution": 512,
    "minimum_image_size": 512,
    "maximum_image_size": 512,
    "target_downsample_size": 512,
    "resolution_type": "pixel_area",
    "cache_dir_vae": "cache/vae/sana/pseudo-camera-10k",
    "instance_data_dir": "datasets/pseudo-camera-10k",
    "disabled": false,
    "skip_file_discovery": "",
    "caption_strategy": "filename",
    "metadata_backend": "discovery",
    "repeats": 0,
    "is_regularisation_data": true
  },
  {
    "id": "dreambooth-subject",
    "type": "local",
    "crop": false,
    "resolution": 1024,
    "minimum_image_size": 1024,
    "maximum_image_size": 1024,
    "target_downsample_size": 1024,
    "resolution_type": "pixel_area",
    "cache_dir_vae": "cache/vae/sana/dreambooth-subject",
    "instance_data_dir": "datasets/dreambooth-subject",
    "caption_strategy": "instanceprompt",
    "instance_prompt": "the name of your subject goes here",
    "metadata_backend": "discovery",
    "repeats": 1000
  },
  {
    "id": "dreambooth-subject-512",
    "type": "local",
    "crop": false,
    "resolution": 512,
    "minimum_image_size": 512,
    "maximum_image_size": 512,
    "target_downsample_size": 512,
    "resolution_type": "pixel_area",
    "cache_dir_vae": "cache/vae/sana/dreambooth-subject-512",
    "instance_data_dir": "datasets/dreambooth-subject",
    "caption_strategy": "instanceprompt",
    "instance_prompt": "the name of your subject goes here",
    "metadata_backend": "discovery",
    "repeats": 1000
  },
  {
    "id": "text-embeds",
    "type": "local",
    "dataset_type": "text_embeds",
    "default": true,
    "cache_dir": "cache/text/sana",
    "disabled": false,
    "write_batch_size": 128
  }
]
"""

# config/config.json as the quickstart describes it: its listed keys (model_type ...
# gradient_checkpointing_interval), the data backend, the prompt-library line, the Sana time-shift
# option, and the keys its notes mention (gradient_accumulation_steps, vae_batch_size,
# --report_to=wandb, push_to_hub; the Chinese seed adds validation_preview(_steps) and
# vae_cache_disable). The run length comes from config.json.example.
QUICKSTART_CONFIG = (
    """{
  "model_type": "full",
  "model_family": "sana",
  "pretrained_model_name_or_path": "terminusresearch/sana-1.6b-1024px",
  "output_dir": "output/models",
  "train_batch_size": 6,
  "validation_resolution": "1024x1024,1280x768,2048x2048",
  "validation_guidance": 4.5,
  "validation_num_inference_steps": 50,
  "use_ema": true,
  "optimizer": "optimi-adamw",
  "mixed_precision": "bf16",
  "gradient_checkpointing": true,
  "gradient_checkpointing_interval": 2,
  "data_backend_config": "config/multidatabackend.json",
  "--flow_schedule_auto_shift": true,
  "--max_train_steps": 10000,
  "--num_train_epochs": 0,
  "gradient_accumulation_steps": 1,
  "vae_batch_size": 4,
  "--report_to": "wandb",
  "--push_to_hub": false,
  "validation_preview": false,
  "validation_preview_steps": 1,
  "vae_cache_disable": false,
"""
    + PROMPT_LIBRARY_LINE
    + """  "--seed": 42
}
"""
)

# "Lowest VRAM config" of the quickstart, as a LoKr run (--lora_type=lycoris, 1e-4 with AdamW)
LOWEST_VRAM_CONFIG = """{
  "--model_type": "lora",
  "--lora_type": "lycoris",
  "--lycoris_config": "config/lycoris_config.json",
  "--model_family": "sana",
  "--pretrained_model_name_or_path": "terminusresearch/sana-1.6b-1024px",
  "--data_backend_config": "config/multidatabackend.json",
  "--base_model_precision": "nf4-bnb",
  "--optimizer": "bnb-lion8bit-paged",
  "--learning_rate": "2e-5",
  "--resolution": 1024,
  "--train_batch_size": 1,
  "--quantize_via": "cpu",
  "--gradient_checkpointing": "true",
  "--max_train_steps": 100
}
"""

# SimpleTuner's config/config.json.example, which the quickstart says to copy first (verbatim)
CONFIG_JSON_EXAMPLE = """{
    "--resume_from_checkpoint": "latest",
    "--data_backend_config": "config/multidatabackend.json",
    "--aspect_bucket_rounding": 2,
    "--seed": 42,
    "--minimum_image_size": 0,
    "--output_dir": "output/models",
    "--lora_type": "lycoris",
    "--lycoris_config": "config/lycoris_config.json",
    "--max_train_steps": 10000,
    "--num_train_epochs": 0,
    "--checkpointing_steps": 500,
    "--checkpoints_total_limit": 5,
    "--hub_model_id": "simpletuner-lora",
    "--push_to_hub": "true",
    "--push_checkpoints_to_hub": "true",
    "--tracker_project_name": "lora-training",
    "--tracker_run_name": "simpletuner-lora",
    "--report_to": "wandb",
    "--model_type": "lora",
    "--pretrained_model_name_or_path": "black-forest-labs/FLUX.1-dev",
    "--model_family": "flux",
    "--train_batch_size": 1,
    "--gradient_checkpointing": "true",
    "--caption_dropout_probability": 0.1,
    "--resolution_type": "pixel_area",
    "--resolution": 1024,
    "--validation_seed": 42,
    "--validation_steps": 500,
    "--validation_resolution": "1024x1024",
    "--validation_guidance": 3.0,
    "--validation_guidance_rescale": "0.0",
    "--validation_num_inference_steps": "20",
    "--validation_prompt": "A photo-realistic image of a cat",
    "--mixed_precision": "bf16",
    "--optimizer": "adamw_bf16",
    "--learning_rate": "1e-4",
    "--lr_scheduler": "polynomial",
    "--lr_warmup_steps": 100,
    "--validation_torch_compile": "false",
    "--disable_benchmark": "false"
}
"""

# SimpleTuner's Sana LoKr example lycoris_config.json (simpletuner/examples/sana.lycoris-lokr)
SANA_LYCORIS_CONFIG = """{
    "bypass_mode": true,
    "algo": "lokr",
    "multiplier": 1.0,
    "full_matrix": true,
    "linear_dim": 10000,
    "linear_alpha": 1,
    "factor": 4,
    "apply_preset": {
        "target_module": [
            "Attention", "FeedForward"
        ],
        "module_algo_map": {
            "FeedForward": {
                "factor": 4
            },
            "Attention": {
                "factor": 2
            }
        }
    }
}
"""

# SimpleTuner simpletuner/examples/sana.lycoris-lokr/config.json (every key and value as published)
SANA_LOKR_EXAMPLE = {
    "aspect_bucket_rounding": 2,
    "base_model_precision": "no_change",
    "caption_dropout_probability": 0.1,
    "checkpointing_steps": 50,
    "checkpoints_total_limit": 5,
    "compress_disk_cache": True,
    "data_backend_config": "config/examples/multidatabackend-small-dreambooth-1024px.json",
    "delete_problematic_images": True,
    "disable_benchmark": False,
    "disable_bucket_pruning": True,
    "ema_update_interval": 25,
    "ema_validation": "comparison",
    "evaluation_type": "clip",
    "flow_schedule_shift": 3,
    "grad_clip_method": "value",
    "gradient_accumulation_steps": 1,
    "gradient_checkpointing": True,
    "gradient_checkpointing_interval": 1,
    "hub_model_id": "simpletuner-example-sana-lycoris-lokr",
    "learning_rate": 2e-5,
    "lora_alpha": 128,
    "lora_rank": 128,
    "lora_type": "lycoris",
    "lr_scheduler": "constant_with_warmup",
    "lr_warmup_steps": 100,
    "lycoris_config": "config/examples/sana.lycoris-lokr/lycoris_config.json",
    "max_grad_norm": 1,
    "max_train_steps": 100,
    "minimum_image_size": 0,
    "mixed_precision": "bf16",
    "model_family": "sana",
    "model_type": "lora",
    "num_train_epochs": 0,
    "optimizer": "adamw_bf16",
    "output_dir": "output/examples/sana.lycoris-lokr",
    "pretrained_model_name_or_path": "terminusresearch/sana-1.6b-1024px",
    "push_checkpoints_to_hub": False,
    "push_to_hub": False,
    "quantize_via": "cpu",
    "report_to": "none",
    "resolution": 1024,
    "resolution_type": "pixel_area",
    "resume_from_checkpoint": "latest",
    "seed": 42,
    "skip_file_discovery": False,
    "tracker_project_name": "lycoris-training",
    "tracker_run_name": "example-training-run",
    "train_batch_size": 4,
    "use_ema": True,
    "vae_batch_size": 1,
    "validation_guidance": 4.5,
    "validation_guidance_rescale": 0.0,
    "validation_lycoris_strength": 1.0,
    "validation_negative_prompt": "ugly, cropped, blurry, low-quality, mediocre average",
    "validation_num_inference_steps": 20,
    "validation_prompt": "A photo-realistic image of a cat holding a sign that reads 'HELLO WORLD'.",
    "validation_prompt_library": True,
    "validation_resolution": "1024x1024",
    "validation_seed": 42,
    "validation_steps": 50,
    "validation_torch_compile": False,
}
